/*
 * Transports under every stream: TCP connections (with the connect
 * timeout and address fallback) and tunnel commands run as a child process.
 */
#include "net/transport.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>
#ifdef __linux__
#include <linux/sockios.h>
#endif

#include "coro/await.h"
#include "coro/coro.h"
#include "errors.h"
#include "net/stream.h"

/* A tunnel command still running once its connection is closed gets
 * this long to exit on its own (it sees end of file), then SIGTERM, then
 * this long again before SIGKILL: a command that ignores both its input
 * closing and TERM cannot keep us running. */
#define TUNNEL_EXIT_GRACE_MS 1000
#define TUNNEL_TERM_GRACE_MS 2000

/* Kept unread by keep-alive probes before the first one (as the reference
 * implementation does), in seconds. */
#define KEEPALIVE_IDLE_S 60
/* Then one probe every 10 s, and the connection is dead after 6 without an
 * answer: a link that died in silence (a laptop that slept, a NAT that
 * forgot us) shows itself within two minutes, not the system's default of
 * eleven or more. */
#define KEEPALIVE_INTERVAL_S 10
#define KEEPALIVE_COUNT      6
/* A local socket pair has no autotuning: give it room for a whole FETCH
 * burst so that the tunnel command rarely blocks on us. */
#define TUNNEL_SOCKBUF (1 << 20)

enum transport_kind {
    TRANSPORT_TCP,
    TRANSPORT_TUNNEL,
};

struct transport {
    struct stream base; /* first: the stream functions get a struct stream * */
    enum transport_kind kind;
    bool handle_open; /* the libuv handle was initialised and needs closing */
    union {
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } h;
    struct await_reader reader;
    struct tunnel_child *child; /* while it runs; it outlives us if need be */
    char peer[192];             /* "host:port" or "tunnel 'command'", for messages */
};

static uv_stream_t *transport_handle(struct transport *t)
{
    return t->kind == TRANSPORT_TCP ? (uv_stream_t *)&t->h.tcp : (uv_stream_t *)&t->h.pipe;
}

static void format_duration(uint64_t ms, char *buf, size_t len)
{
    if (ms % 1000 == 0)
        snprintf(buf, len, "%" PRIu64 " s", ms / 1000);
    else
        snprintf(buf, len, "%" PRIu64 " ms", ms);
}

static ssize_t transport_read(struct stream *s, void *buf, size_t cap)
{
    struct transport *t = (struct transport *)s;
    bool by_deadline;
    uint64_t wait = stream_wait_ms(s, s->read_timeout_ms, &by_deadline);
    ssize_t n = await_read(s->sched, &t->reader, buf, cap, wait);
    if (n >= 0)
        return n;
    s->deadline_passed = n == -ETIMEDOUT && by_deadline;
    if (n == -ETIMEDOUT && by_deadline) {
        stream_set_error(s, "gave up waiting for data from %s (time limit reached)", t->peer);
    } else if (n == -ETIMEDOUT) {
        char d[32];
        format_duration(s->read_timeout_ms, d, sizeof d);
        stream_set_error(s, "timed out after %s waiting for data from %s", d, t->peer);
    } else {
        stream_set_error(s, "read from %s: %s", t->peer, err_str((int)n));
    }
    return n;
}

static int transport_write(struct stream *s, const void *buf, size_t len)
{
    struct transport *t = (struct transport *)s;
    bool by_deadline;
    uint64_t wait = stream_wait_ms(s, s->write_timeout_ms, &by_deadline);
    int r = await_write(s->sched, transport_handle(t), buf, len, wait);
    if (r >= 0)
        return 0;
    s->deadline_passed = r == -ETIMEDOUT && by_deadline;
    if (r == -ETIMEDOUT && by_deadline) {
        stream_set_error(s, "gave up writing to %s (time limit reached)", t->peer);
    } else if (r == -ETIMEDOUT) {
        char d[32];
        format_duration(s->write_timeout_ms, d, sizeof d);
        stream_set_error(s, "timed out after %s writing to %s", d, t->peer);
    } else {
        stream_set_error(s, "write to %s: %s", t->peer, err_str(r));
    }
    return r;
}

struct tunnel_child;
static void tunnel_child_abandon(struct tunnel_child *ch);

static void transport_closed_cb(uv_handle_t *h)
{
    free(h->data);
}

static void transport_free(struct stream *s)
{
    struct transport *t = (struct transport *)s;
    await_reader_fini(&t->reader);
    if (t->child)
        tunnel_child_abandon(t->child); /* it may exit after we are gone */
    if (!t->handle_open) {
        free(t);
        return;
    }
    /* The handle lives inside t: t goes when libuv is done with it. Pending
     * writes fail with UV_ECANCELED and free their own requests. */
    uv_handle_t *h = (uv_handle_t *)transport_handle(t);
    h->data = t;
    uv_close(h, transport_closed_cb);
}

/* What libuv still holds, plus what the kernel has not sent yet (for TCP:
 * bytes sent but not acknowledged are on their way, and a long link holds
 * many of them without being the bottleneck). */
static size_t transport_backlog(const struct stream *s)
{
    const struct transport *t = (const struct transport *)s;
    if (!t->handle_open)
        return 0;
    uv_stream_t *h = transport_handle((struct transport *)t);
    size_t n = uv_stream_get_write_queue_size(h);
#ifdef SIOCOUTQNSD
    uv_os_fd_t fd;
    int unsent = 0;
    if (t->kind == TRANSPORT_TCP && uv_fileno((uv_handle_t *)h, &fd) == 0 &&
        ioctl(fd, SIOCOUTQNSD, &unsent) == 0 && unsent > 0)
        n += (size_t)unsent;
#endif
    return n;
}

static const struct stream_ops transport_ops = {
    .read = transport_read,
    .write = transport_write,
    .free = transport_free,
    .backlog = transport_backlog,
};

static struct transport *transport_new(struct coro_sched *sched, enum transport_kind kind)
{
    struct transport *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    stream_init(&t->base, &transport_ops, NULL, sched);
    t->kind = kind;
    return t;
}

bool transport_host_is_literal(const char *host, char *buf, size_t buflen)
{
    size_t len = strlen(host);
    bool literal = len >= 2 && host[0] == '[' && host[len - 1] == ']';
    if (literal) {
        host++;
        len -= 2;
    }
    if (buflen) {
        if (len >= buflen)
            len = buflen - 1;
        memcpy(buf, host, len);
        buf[len] = '\0';
    }
    return literal;
}

/* ---- TCP ----------------------------------------------------------------- */

int transport_tcp_connect(struct coro_sched *sched, const char *host, const char *port,
                          bool keepalive, uint64_t timeout_ms, struct stream **out, char *err,
                          size_t errlen)
{
    *out = NULL;
    char bare[256], peer[192], d[32];
    bool literal = transport_host_is_literal(host, bare, sizeof bare);
    /* IPv6 addresses in brackets, so that the port stays readable */
    snprintf(peer, sizeof peer, strchr(bare, ':') ? "[%s]:%s" : "%s:%s", bare, port);
    format_duration(timeout_ms, d, sizeof d);

    struct addrinfo hints = {
        .ai_family = AF_UNSPEC,
        .ai_socktype = SOCK_STREAM,
        .ai_protocol = IPPROTO_TCP,
        .ai_flags = literal ? AI_NUMERICHOST : 0,
    };
    struct addrinfo *res = NULL;
    int r = await_getaddrinfo(sched, bare, port, &hints, &res, timeout_ms);
    if (r < 0) {
        if (r == -ETIMEDOUT)
            snprintf(err, errlen, "timed out after %s resolving host %s", d, bare);
        else if (literal)
            snprintf(err, errlen, "invalid address %s (port %s): %s", host, port, err_str(r));
        else
            snprintf(err, errlen, "cannot resolve host %s: %s", bare, err_str(r));
        return r;
    }

    struct transport *t = transport_new(sched, TRANSPORT_TCP);
    if (!t) {
        uv_freeaddrinfo(res);
        snprintf(err, errlen, "connection to %s: %s", peer, err_str(-ENOMEM));
        return -ENOMEM;
    }
    snprintf(t->peer, sizeof t->peer, "%s", peer);

    /* Every address in turn (IPv6 and IPv4 alike); the last failure is the
     * one reported, which for one refused host is "refused" either way. */
    r = -EADDRNOTAVAIL;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
            continue;
        uv_tcp_init(coro_sched_loop(sched), &t->h.tcp);
        r = await_tcp_connect(sched, &t->h.tcp, ai->ai_addr, timeout_ms);
        if (r == 0)
            break;
        /* also releases an abandoned connect request */
        await_close(sched, (uv_handle_t *)&t->h.tcp);
        if (r == -ECANCELED)
            break;
    }
    uv_freeaddrinfo(res);
    if (r < 0) {
        if (r == -ECONNREFUSED)
            snprintf(err, errlen, "connection to %s refused", peer);
        else if (r == -ETIMEDOUT)
            snprintf(err, errlen, "timed out after %s connecting to %s", d, peer);
        else
            snprintf(err, errlen, "connection to %s failed: %s", peer, err_str(r));
        free(t);
        return r;
    }
    t->handle_open = true;

    /* Commands are small and each waits for its answer: never let Nagle
     * hold one back. Socket buffers are left to the kernel, whose
     * autotuning grows them further than an explicit (capped) size would. */
    uv_tcp_nodelay(&t->h.tcp, 1);
    if (keepalive && (r = uv_tcp_keepalive(&t->h.tcp, 1, KEEPALIVE_IDLE_S)) < 0) {
        snprintf(err, errlen, "connection to %s: cannot enable keep-alive: %s", peer, err_str(r));
        struct stream *s = &t->base;
        stream_free(&s);
        return r;
    }
#if defined(TCP_KEEPINTVL) && defined(TCP_KEEPCNT)
    uv_os_fd_t fd;
    if (keepalive && uv_fileno((uv_handle_t *)&t->h.tcp, &fd) == 0) {
        /* best effort: the defaults still work, only later */
        int interval = KEEPALIVE_INTERVAL_S, count = KEEPALIVE_COUNT;
        (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof interval);
        (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof count);
    }
#endif
    await_reader_init(&t->reader, (uv_stream_t *)&t->h.tcp);
    *out = &t->base;
    return 0;
}

/* ---- tunnel ------------------------------------------------------------ */

/* Characters that mean nothing to the shell; anything else asks for one. */
static bool command_needs_shell(const char *command)
{
    for (const unsigned char *p = (const unsigned char *)command; *p; p++) {
        if (isalnum(*p) || isspace(*p) || strchr("_./=:,+@%-", *p))
            continue;
        return true;
    }
    return false;
}

/* Splits on white space into a NULL-terminated vector (one allocation). */
static char **command_split(const char *command)
{
    size_t len = strlen(command), words = 0;
    for (size_t i = 0; i < len; i++)
        if (!isspace((unsigned char)command[i]) &&
            (i == 0 || isspace((unsigned char)command[i - 1])))
            words++;
    char **argv = malloc((words + 1) * sizeof *argv + len + 1);
    if (!argv)
        return NULL;
    char *text = (char *)(argv + words + 1);
    memcpy(text, command, len + 1);
    size_t n = 0;
    for (char *p = text; *p;) {
        while (*p && isspace((unsigned char)*p))
            *p++ = '\0';
        if (!*p)
            break;
        argv[n++] = p;
        while (*p && !isspace((unsigned char)*p))
            p++;
    }
    argv[n] = NULL;
    return argv;
}

/* The child process of a tunnel and the timer that ends it once its
 * transport is gone; freed when both handles are closed. */
struct tunnel_child {
    uv_process_t proc;
    uv_timer_t timer;
    struct transport *t; /* NULL once abandoned */
    bool term_sent;
    int open_handles;
};

static void tunnel_child_closed_cb(uv_handle_t *h)
{
    struct tunnel_child *ch = h->data;
    if (--ch->open_handles == 0)
        free(ch);
}

static void tunnel_child_close(struct tunnel_child *ch)
{
    uv_timer_stop(&ch->timer);
    uv_close((uv_handle_t *)&ch->proc, tunnel_child_closed_cb);
    uv_close((uv_handle_t *)&ch->timer, tunnel_child_closed_cb);
}

static void tunnel_exit_cb(uv_process_t *proc, int64_t status, int term_signal)
{
    struct tunnel_child *ch = proc->data;
    if (ch->t)
        ch->t->child = NULL;
    tunnel_child_close(ch);
}

static void tunnel_timer_cb(uv_timer_t *timer)
{
    struct tunnel_child *ch = timer->data;
    if (!ch->term_sent) {
        ch->term_sent = true;
        uv_process_kill(&ch->proc, SIGTERM);
        uv_timer_start(&ch->timer, tunnel_timer_cb, TUNNEL_TERM_GRACE_MS, 0);
    } else {
        uv_process_kill(&ch->proc, SIGKILL);
    }
}

static void tunnel_child_abandon(struct tunnel_child *ch)
{
    ch->t = NULL;
    uv_timer_start(&ch->timer, tunnel_timer_cb, TUNNEL_EXIT_GRACE_MS, 0);
}

/* The tunnel's argument vector: split from the command, or *shell_argv
 * when the command needs a shell. */
static int tunnel_argv(const char *command, char **shell_argv, char ***out, char *err,
                       size_t errlen)
{
    if (command_needs_shell(command)) {
        *out = shell_argv;
        return 0;
    }
    char **argv = command_split(command);
    if (!argv) {
        snprintf(err, errlen, "tunnel '%s': %s", command, err_str(-ENOMEM));
        return -ENOMEM;
    }
    *out = argv;
    if (!argv[0]) {
        snprintf(err, errlen, "empty tunnel command");
        return ERR_CONFIG;
    }
    return 0;
}

/* The socket pair between us (sv[0]) and the child (sv[1]), with large
 * buffers. */
static int tunnel_socketpair(const char *command, int sv[2], char *err, size_t errlen)
{
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
        int r = -errno;
        snprintf(err, errlen, "tunnel '%s': socketpair: %s", command, err_str(r));
        return r;
    }
    int size = TUNNEL_SOCKBUF;
    for (int i = 0; i < 2; i++) {
        /* best effort: the kernel caps it at net.core.[rw]mem_max */
        setsockopt(sv[i], SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
        setsockopt(sv[i], SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    }
    return 0;
}

/* Starts the child on its end of the pair (child_fd) and ties it to the
 * transport. */
static int tunnel_child_start(struct coro_sched *sched, struct transport *t, const char *command,
                              char **argv, int child_fd, int devnull, char *err, size_t errlen)
{
    /* The child gets the other end of the pair as stdin and stdout; libuv
     * dup2()s it into place (clearing close-on-exec on the copies only). */
    uv_stdio_container_t stdio[3] = {
        {.flags = UV_INHERIT_FD, .data.fd = child_fd},
        {.flags = UV_INHERIT_FD, .data.fd = child_fd},
        {.flags = UV_INHERIT_FD, .data.fd = devnull >= 0 ? devnull : STDERR_FILENO},
    };
    uv_process_options_t opts = {
        .exit_cb = tunnel_exit_cb,
        .file = argv[0],
        .args = argv,
        .stdio_count = 3,
        .stdio = stdio,
    };
    struct tunnel_child *child = calloc(1, sizeof *child);
    if (!child) {
        snprintf(err, errlen, "tunnel '%s': %s", command, err_str(-ENOMEM));
        return -ENOMEM;
    }
    child->proc.data = child;
    child->timer.data = child;
    int r = uv_spawn(coro_sched_loop(sched), &child->proc, &opts);
    if (r < 0) {
        snprintf(err, errlen, "cannot run tunnel command '%s': %s", command, err_str(r));
        /* a failed spawn still registered the handle with the loop */
        child->open_handles = 1;
        uv_close((uv_handle_t *)&child->proc, tunnel_child_closed_cb);
        return r;
    }
    uv_timer_init(coro_sched_loop(sched), &child->timer);
    child->open_handles = 2;
    child->t = t;
    t->child = child;
    return 0;
}

/* Our end of the pair becomes the transport's pipe handle, which owns it
 * on success. */
static int tunnel_pipe_open(struct coro_sched *sched, struct transport *t, const char *command,
                            int fd, char *err, size_t errlen)
{
    int r = uv_pipe_init(coro_sched_loop(sched), &t->h.pipe, 0);
    if (r == 0) {
        t->handle_open = true;
        r = uv_pipe_open(&t->h.pipe, fd);
    }
    if (r < 0) {
        snprintf(err, errlen, "tunnel '%s': %s", command, err_str(r));
        return r;
    }
    await_reader_init(&t->reader, (uv_stream_t *)&t->h.pipe);
    return 0;
}

int transport_tunnel_spawn(struct coro_sched *sched, const char *command, bool null_stderr,
                           struct stream **out, char *err, size_t errlen)
{
    *out = NULL;
    int r, sv[2] = {-1, -1}, devnull = -1;
    char **argv = NULL;
    char *shell_argv[] = {"/bin/sh", "-c", (char *)command, NULL};
    struct transport *t = transport_new(sched, TRANSPORT_TUNNEL);
    if (!t) {
        r = -ENOMEM;
        snprintf(err, errlen, "tunnel '%s': %s", command, err_str(r));
        return r;
    }
    snprintf(t->peer, sizeof t->peer, "tunnel '%s'", command);

    if ((r = tunnel_argv(command, shell_argv, &argv, err, errlen)) < 0)
        goto fail;
    if ((r = tunnel_socketpair(command, sv, err, errlen)) < 0)
        goto fail;
    if (null_stderr && (devnull = open("/dev/null", O_WRONLY | O_CLOEXEC)) < 0) {
        r = -errno;
        snprintf(err, errlen, "tunnel '%s': /dev/null: %s", command, err_str(r));
        goto fail;
    }
    if ((r = tunnel_child_start(sched, t, command, argv, sv[1], devnull, err, errlen)) < 0)
        goto fail;
    close(sv[1]);
    sv[1] = -1;
    /* on failure, the child sees EOF once sv[0] is closed and exits */
    if ((r = tunnel_pipe_open(sched, t, command, sv[0], err, errlen)) < 0)
        goto fail;
    sv[0] = -1; /* the pipe handle owns it now */
    if (argv != shell_argv)
        free(argv);
    if (devnull >= 0)
        close(devnull);
    *out = &t->base;
    return 0;

fail:
    for (int i = 0; i < 2; i++)
        if (sv[i] >= 0)
            close(sv[i]);
    if (devnull >= 0)
        close(devnull);
    if (argv != shell_argv)
        free(argv);
    struct stream *s = &t->base;
    stream_free(&s);
    return r;
}

int transport_socket_fd(struct stream *s)
{
    if (!s || s->ops != &transport_ops)
        return -EINVAL;
    struct transport *t = (struct transport *)s;
    uv_os_fd_t fd;
    int r = uv_fileno((uv_handle_t *)transport_handle(t), &fd);
    return r < 0 ? r : fd;
}
