/*
 * Transports: the bottom of a connection's stream stack.
 *
 * Both constructors may yield. On success *out is a new stream the caller
 * frees with stream_free(); on failure they return a negative code and write
 * a one-line explanation (naming the host, port or command) into err.
 *
 * The streams start with no timeouts (stream_set_timeouts). Their read and
 * write may run in two coroutines at once. Writing to a tunnel whose command
 * has exited raises SIGPIPE: the program must ignore that signal.
 */
#ifndef INTERIMAP_NET_TRANSPORT_H
#define INTERIMAP_NET_TRANSPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct coro_sched;
struct stream;

/*
 * TCP to host:port. host is a name (resolved asynchronously; every address
 * is tried in turn, IPv6 and IPv4) or "[addr]", an IP literal that is never
 * resolved. keepalive enables SO_KEEPALIVE (for --watch). The timeout bounds
 * the resolution and each connection attempt.
 */
int transport_tcp_connect(struct coro_sched *sched, const char *host, const char *port,
                          bool keepalive, uint64_t timeout_ms, struct stream **out, char *err,
                          size_t errlen);

/*
 * Runs command with its standard input and output connected to one end of
 * a socket pair. A command with shell metacharacters runs through
 * `/bin/sh -c`; otherwise it is split on white space and exec'd directly.
 * null_stderr sends the command's standard error to /dev/null. Freeing the
 * stream closes the socket; a child still running 1 s later gets SIGTERM,
 * then SIGKILL 2 s after that, and is reaped when it exits.
 */
int transport_tunnel_spawn(struct coro_sched *sched, const char *command, bool null_stderr,
                           struct stream **out, char *err, size_t errlen);

/* The OS socket under a transport stream (not a layer above it), for
 * socket options and tests; -EINVAL for any other stream. */
int transport_socket_fd(struct stream *s);

/* Removes surrounding [ ] from an IP literal; returns whether it had them.
 * buf receives the bare host (truncated to buflen). */
bool transport_host_is_literal(const char *host, char *buf, size_t buflen);

#endif
