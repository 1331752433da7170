/* The TCP transport against listeners of our own on loopback (IPv4 and,
 * where the machine has it, IPv6), each on a random port. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "check.h"
#include "coro/await.h"
#include "coro/coro.h"
#include "errors.h"
#include "net/stream.h"
#include "net/transport.h"

enum server_mode {
    SERVE_ECHO,   /* greeting, then echo */
    SERVE_SILENT, /* say nothing for a while */
    SERVE_RESET,  /* abort the connection at once */
    SERVE_CLOSE,  /* close it cleanly at once */
};

struct server {
    struct coro_sched *sched;
    uv_tcp_t listener;
    enum server_mode mode;
    char port[8];
    int accepted;
};

struct conn {
    struct server *sv;
    uv_tcp_t tcp;
};

static void conn_free_cb(uv_handle_t *h)
{
    free(h->data);
}

static void serve_main(struct coro *self, void *arg)
{
    struct conn *c = arg;
    struct coro_sched *sched = c->sv->sched;
    uv_stream_t *h = (uv_stream_t *)&c->tcp;
    if (c->sv->mode == SERVE_ECHO) {
        static const char greeting[] = "* OK ready\r\n";
        CHECK_INT(await_write(sched, h, greeting, sizeof greeting - 1, 5000), 0);
        struct await_reader r;
        await_reader_init(&r, h);
        char buf[512];
        ssize_t n;
        while ((n = await_read(sched, &r, buf, sizeof buf, 5000)) > 0)
            CHECK_INT(await_write(sched, h, buf, (size_t)n, 5000), 0);
        await_reader_fini(&r);
    } else if (c->sv->mode == SERVE_SILENT) {
        await_sleep(sched, 500);
    } else if (c->sv->mode == SERVE_RESET) {
        c->tcp.data = c;
        uv_tcp_close_reset(&c->tcp, conn_free_cb);
        return;
    }
    await_close(sched, (uv_handle_t *)&c->tcp);
    free(c);
}

static void on_connection(uv_stream_t *listener, int status)
{
    struct server *sv = listener->data;
    CHECK_INT(status, 0);
    struct conn *c = calloc(1, sizeof *c);
    c->sv = sv;
    uv_tcp_init(listener->loop, &c->tcp);
    CHECK_INT(uv_accept(listener, (uv_stream_t *)&c->tcp), 0);
    sv->accepted++;
    coro_detach(coro_spawn(sv->sched, serve_main, c, 0));
}

/* Listens on ip (port 0: the kernel picks one); false if the address is not
 * available here (no IPv6). */
static bool server_start(struct server *sv, struct coro_sched *sched, const char *ip,
                         enum server_mode mode)
{
    struct sockaddr_storage ss;
    memset(sv, 0, sizeof *sv);
    sv->sched = sched;
    sv->mode = mode;
    if (strchr(ip, ':'))
        CHECK_INT(uv_ip6_addr(ip, 0, (struct sockaddr_in6 *)&ss), 0);
    else
        CHECK_INT(uv_ip4_addr(ip, 0, (struct sockaddr_in *)&ss), 0);
    uv_tcp_init(coro_sched_loop(sched), &sv->listener);
    sv->listener.data = sv;
    int r = uv_tcp_bind(&sv->listener, (struct sockaddr *)&ss, 0);
    if (r == 0)
        r = uv_listen((uv_stream_t *)&sv->listener, 16, on_connection);
    if (r < 0) {
        fprintf(stderr, "cannot listen on %s: %s\n", ip, uv_strerror(r));
        await_close(sched, (uv_handle_t *)&sv->listener);
        return false;
    }
    int len = sizeof ss;
    CHECK_INT(uv_tcp_getsockname(&sv->listener, (struct sockaddr *)&ss, &len), 0);
    int port = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                        : ntohs(((struct sockaddr_in *)&ss)->sin_port);
    snprintf(sv->port, sizeof sv->port, "%d", port);
    return true;
}

static void server_stop(struct server *sv)
{
    await_close(sv->sched, (uv_handle_t *)&sv->listener);
}

static int sockopt_int(struct stream *s, int level, int name)
{
    int fd = transport_socket_fd(s);
    CHECK(fd >= 0);
    int v = -1;
    socklen_t len = sizeof v;
    CHECK_INT(getsockopt(fd, level, name, &v, &len), 0);
    return v;
}

/* Connects, reads the greeting, checks an echo round trip. */
static void echo_check(struct coro_sched *sched, const char *host, const char *port, bool keepalive)
{
    struct stream *s = NULL;
    char err[256] = "";
    int r = transport_tcp_connect(sched, host, port, keepalive, 5000, &s, err, sizeof err);
    if (r < 0)
        fprintf(stderr, "%s: %s\n", host, err);
    CHECK_INT(r, 0);
    CHECK(s && s->sched == sched && s->lower == NULL);
    CHECK(sockopt_int(s, IPPROTO_TCP, TCP_NODELAY) != 0);
    CHECK_INT(sockopt_int(s, SOL_SOCKET, SO_KEEPALIVE) != 0, keepalive);
    if (keepalive) {
        CHECK_INT(sockopt_int(s, IPPROTO_TCP, TCP_KEEPIDLE), 60);
        CHECK_INT(sockopt_int(s, IPPROTO_TCP, TCP_KEEPINTVL), 10);
        CHECK_INT(sockopt_int(s, IPPROTO_TCP, TCP_KEEPCNT), 6);
    }
    stream_set_timeouts(s, 5000, 5000);
    char buf[64];
    size_t got = 0;
    while (got < 12) {
        ssize_t n = stream_read(s, buf + got, sizeof buf - got);
        CHECK(n > 0);
        got += (size_t)n;
    }
    CHECK(memcmp(buf, "* OK ready\r\n", 12) == 0);
    CHECK_INT(stream_write(s, "a1 NOOP\r\n", 9), 0);
    for (got = 0; got < 9;) {
        ssize_t n = stream_read(s, buf + got, sizeof buf - got);
        CHECK(n > 0);
        got += (size_t)n;
    }
    CHECK(memcmp(buf, "a1 NOOP\r\n", 9) == 0);
    stream_free(&s);
    CHECK(s == NULL);
}

/* Writes a pile larger than every buffer on the way to a server that
 * reads nothing; ends when the server hangs up. */
struct pile_job {
    struct stream *s;
    int result;
};

static void pile_main(struct coro *self, void *arg)
{
    (void)self;
    struct pile_job *job = arg;
    size_t len = (size_t)32 << 20;
    char *pile = calloc(1, len);
    if (!pile)
        abort();
    job->result = stream_write(job->s, pile, len);
    free(pile);
}

/* What is written to a server that does not read piles up below the
 * stream, and stream_backlog says how much. */
static void check_backlog(struct coro *self, struct coro_sched *sched)
{
    struct server sv;
    struct stream *s = NULL;
    char err[256];
    CHECK(server_start(&sv, sched, "127.0.0.1", SERVE_SILENT));
    CHECK_INT(transport_tcp_connect(sched, "127.0.0.1", sv.port, false, 5000, &s, err, sizeof err),
              0);
    if (!s)
        return;
    stream_set_timeouts(s, 5000, 5000);
    CHECK(stream_backlog(s) == 0);
    struct pile_job job = {s, 1};
    struct coro *w = coro_spawn(sched, pile_main, &job, 0);
    CHECK(w != NULL);
    await_sleep(sched, 200);
    size_t pile = stream_backlog(s);
    CHECK(pile > (size_t)4 << 20);
    if (pile <= (size_t)4 << 20)
        fprintf(stderr, "  backlog %zu bytes\n", pile);
    /* the server hangs up after its pause: the pile never goes */
    if (w)
        coro_join(self, w);
    CHECK(job.result < 0);
    stream_free(&s);
    server_stop(&sv);
}

static void client_main(struct coro *self, void *arg)
{
    struct coro_sched *sched = arg;
    struct server v4, v6;
    char err[256], expect[256];
    struct stream *s = NULL;
    int r;

    /* IPv4: a name, an unresolved literal, a bracketed literal */
    CHECK(server_start(&v4, sched, "127.0.0.1", SERVE_ECHO));
    echo_check(sched, "127.0.0.1", v4.port, false);
    echo_check(sched, "[127.0.0.1]", v4.port, true);
    echo_check(sched, "localhost", v4.port, false);
    CHECK_INT(v4.accepted, 3);
    server_stop(&v4);

    /* IPv6, where loopback has it */
    if (server_start(&v6, sched, "::1", SERVE_ECHO)) {
        echo_check(sched, "[::1]", v6.port, true);
        echo_check(sched, "::1", v6.port, false);
        server_stop(&v6);
        /* the port is free again: refused, with the address in brackets */
        r = transport_tcp_connect(sched, "[::1]", v6.port, false, 5000, &s, err, sizeof err);
        CHECK_INT(r, -ECONNREFUSED);
        snprintf(expect, sizeof expect, "connection to [::1]:%s refused", v6.port);
        CHECK_STR(err, expect);
    } else {
        fprintf(stderr, "no IPv6 loopback here: IPv6 part skipped\n");
    }

    /* refused: the listener is gone */
    r = transport_tcp_connect(sched, "127.0.0.1", v4.port, false, 5000, &s, err, sizeof err);
    CHECK_INT(r, -ECONNREFUSED);
    CHECK(s == NULL);
    snprintf(expect, sizeof expect, "connection to 127.0.0.1:%s refused", v4.port);
    CHECK_STR(err, expect);
    /* every address of localhost is tried and refused */
    r = transport_tcp_connect(sched, "localhost", v4.port, false, 5000, &s, err, sizeof err);
    CHECK_INT(r, -ECONNREFUSED);
    snprintf(expect, sizeof expect, "connection to localhost:%s refused", v4.port);
    CHECK_STR(err, expect);

    /* names that do not resolve, literals that do not parse */
    r = transport_tcp_connect(sched, "no-such-host.invalid", "143", false, 10000, &s, err,
                              sizeof err);
    CHECK(r < 0 && s == NULL);
    fprintf(stderr, "%s\n", err);
    CHECK(strncmp(err, "cannot resolve host no-such-host.invalid: ", 42) == 0 ||
          strncmp(err, "timed out after 10 s resolving host no-such-host.invalid", 56) == 0);
    r = transport_tcp_connect(sched, "[localhost]", "143", false, 5000, &s, err, sizeof err);
    CHECK(r < 0 && s == NULL);
    CHECK(strncmp(err, "invalid address [localhost] (port 143): ", 40) == 0);

    /* a silent server: the read deadline, with its message */
    CHECK(server_start(&v4, sched, "127.0.0.1", SERVE_SILENT));
    CHECK_INT(transport_tcp_connect(sched, "127.0.0.1", v4.port, false, 5000, &s, err, sizeof err),
              0);
    stream_set_timeouts(s, 100, 100);
    char buf[16];
    uint64_t t0 = uv_hrtime();
    CHECK_INT(stream_read(s, buf, sizeof buf), -ETIMEDOUT);
    CHECK((uv_hrtime() - t0) / 1000000 >= 95);
    snprintf(expect, sizeof expect, "timed out after 100 ms waiting for data from 127.0.0.1:%s",
             v4.port);
    CHECK_STR(s->error, expect);
    CHECK(!stream_deadline_passed(s));
    /* a deadline nearer than the timeout ends the wait, and says so */
    stream_set_timeouts(s, 30000, 30000);
    stream_set_deadline(s, stream_clock_ms() + 100);
    CHECK_INT(stream_read(s, buf, sizeof buf), -ETIMEDOUT);
    CHECK(stream_deadline_passed(s));
    snprintf(expect, sizeof expect,
             "gave up waiting for data from 127.0.0.1:%s (time limit reached)", v4.port);
    CHECK_STR(s->error, expect);
    stream_set_deadline(s, 0);
    /* the server closes after its pause: end of stream, not an error */
    CHECK_INT(stream_read(s, buf, sizeof buf), 0);
    stream_free(&s);
    server_stop(&v4);

    /* a reset connection */
    CHECK(server_start(&v4, sched, "127.0.0.1", SERVE_RESET));
    CHECK_INT(transport_tcp_connect(sched, "127.0.0.1", v4.port, false, 5000, &s, err, sizeof err),
              0);
    stream_set_timeouts(s, 5000, 5000);
    CHECK_INT(stream_read(s, buf, sizeof buf), -ECONNRESET);
    snprintf(expect, sizeof expect, "read from 127.0.0.1:%s: connection reset by peer", v4.port);
    CHECK_STR(s->error, expect);
    stream_free(&s);
    server_stop(&v4);

    /* a clean close */
    CHECK(server_start(&v4, sched, "127.0.0.1", SERVE_CLOSE));
    CHECK_INT(transport_tcp_connect(sched, "127.0.0.1", v4.port, false, 5000, &s, err, sizeof err),
              0);
    stream_set_timeouts(s, 5000, 5000);
    CHECK_INT(stream_read(s, buf, sizeof buf), 0);
    CHECK_INT(stream_read(s, buf, sizeof buf), 0);
    CHECK_STR(s->error, "");
    stream_free(&s);
    server_stop(&v4);

    char host[8];
    CHECK(transport_host_is_literal("[::1]", host, sizeof host));
    CHECK_STR(host, "::1");
    CHECK(!transport_host_is_literal("imap.example.org", host, sizeof host));
    CHECK_STR(host, "imap.ex"); /* truncated to the buffer */
    CHECK(!transport_host_is_literal("[", host, sizeof host));

    check_backlog(self, sched);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct coro_sched *sched = coro_sched_new(&loop);
    struct coro *co = coro_spawn(sched, client_main, sched, 0);
    coro_detach(co);
    CHECK_INT(coro_sched_run(sched), 0);
    CHECK_INT(coro_sched_count(sched), 0);
    coro_sched_free(&sched);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_INT(uv_loop_close(&loop), 0);
    return check_finish();
}
