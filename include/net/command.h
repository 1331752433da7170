/*
 * Helper commands that print a secret: the password of password-command,
 * the access token of oauth-token-command.
 *
 * command_read_line() runs a command through `/bin/sh -c` with the
 * program's standard input and standard error (so a helper can prompt or
 * explain itself), reads its standard output to the end and waits for it
 * to exit. It may yield and must run in a coroutine.
 *
 * On success it returns 0 and *out is the first line of the output, its
 * line ending (LF or CRLF) removed: a NUL-terminated string the caller
 * wipes (explicit_bzero) and frees. Otherwise it returns a negative code,
 * *out is NULL and err holds what went wrong as a phrase to follow the
 * option's name ("exited with status 1", "printed nothing", ...). The
 * output itself never appears in err.
 */
#ifndef INTERIMAP_NET_COMMAND_H
#define INTERIMAP_NET_COMMAND_H

#include <stddef.h>
#include <stdint.h>

struct coro_sched;

/* The output kept (a longer first line is an error). */
#define COMMAND_MAX_OUTPUT ((size_t)64 * 1024)

/* timeout_ms bounds the whole run; on expiry the command gets SIGTERM. */
int command_read_line(struct coro_sched *sched, const char *command, uint64_t timeout_ms,
                      char **out, char *err, size_t errlen);

#endif
