/* The await wrappers over a real socket pair: buffered reads, timeouts,
 * cancellation, back-pressure, a reader and a writer on one handle, EOF. */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "check.h"
#include "coro/await.h"
#include "coro/coro.h"

/* Two libuv pipes over the two ends of a socket pair. */
struct pair {
    struct coro_sched *sched;
    uv_pipe_t a, b;
    struct await_reader ra, rb;
};

static void pair_open(struct pair *p, uv_loop_t *loop)
{
    int sv[2];
    CHECK_INT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    p->sched = coro_sched_new(loop);
    CHECK_INT(uv_pipe_init(loop, &p->a, 0), 0);
    CHECK_INT(uv_pipe_init(loop, &p->b, 0), 0);
    CHECK_INT(uv_pipe_open(&p->a, sv[0]), 0);
    CHECK_INT(uv_pipe_open(&p->b, sv[1]), 0);
    await_reader_init(&p->ra, (uv_stream_t *)&p->a);
    await_reader_init(&p->rb, (uv_stream_t *)&p->b);
}

/* Called from a coroutine: closes both ends properly. */
static void pair_close(struct pair *p)
{
    await_reader_fini(&p->ra);
    await_reader_fini(&p->rb);
    await_close(p->sched, (uv_handle_t *)&p->a);
    await_close(p->sched, (uv_handle_t *)&p->b);
}

static void pair_finish(struct pair *p, uv_loop_t *loop)
{
    CHECK_INT(coro_sched_run(p->sched), 0);
    CHECK_INT(coro_sched_count(p->sched), 0);
    coro_sched_free(&p->sched);
    uv_run(loop, UV_RUN_DEFAULT);
}

static uint64_t ms_since(uint64_t t0)
{
    return (uv_hrtime() - t0) / 1000000;
}

/* ---- small reads take from pending in order; timeouts; reuse after ---- */

static void late_writer(struct coro *self, void *arg)
{
    struct pair *p = arg;
    CHECK_INT(await_sleep(p->sched, 150), 0);
    CHECK_INT(await_write(p->sched, (uv_stream_t *)&p->b, "late", 4, 1000), 0);
}

static void test_pending_and_timeout_main(struct coro *self, void *arg)
{
    struct pair *p = arg;
    char buf[16];
    CHECK_INT(await_write(p->sched, (uv_stream_t *)&p->b, "abcdefghij", 10, 1000), 0);
    /* the first read receives everything; 3 go to the caller, 7 stay */
    CHECK_INT(await_read(p->sched, &p->ra, buf, 3, 1000), 3);
    CHECK(memcmp(buf, "abc", 3) == 0);
    CHECK_INT(await_read(p->sched, &p->ra, buf, 4, 1000), 4);
    CHECK(memcmp(buf, "defg", 4) == 0);
    CHECK_INT(await_read(p->sched, &p->ra, buf, sizeof buf, 1000), 3);
    CHECK(memcmp(buf, "hij", 3) == 0);

    struct coro *w = coro_spawn(p->sched, late_writer, p, 0);
    uint64_t t0 = uv_hrtime();
    memset(buf, 'x', sizeof buf);
    CHECK_INT(await_read(p->sched, &p->ra, buf, sizeof buf, 50), -ETIMEDOUT);
    uint64_t el = ms_since(t0);
    CHECK(el >= 45 && el < 1000);
    CHECK(buf[0] == 'x');
    /* the reader still works after a timeout, and the data is not lost */
    CHECK_INT(await_read(p->sched, &p->ra, buf, sizeof buf, 2000), 4);
    CHECK(memcmp(buf, "late", 4) == 0);
    coro_join(self, w);
    pair_close(p);
}

static void test_pending_and_timeout(uv_loop_t *loop)
{
    struct pair p;
    pair_open(&p, loop);
    coro_detach(coro_spawn(p.sched, test_pending_and_timeout_main, &p, 0));
    pair_finish(&p, loop);
}

/* ---- cancellation of a read without deadline; buffer left alone after ---- */

struct cancel_read {
    struct pair *p;
    struct coro *reader;
    char buf[8];
    ssize_t result;
};

static void cancel_read_reader(struct coro *self, void *arg)
{
    struct cancel_read *c = arg;
    c->result = await_read(c->p->sched, &c->p->ra, c->buf, sizeof c->buf, 0);
}

static void cancel_read_main(struct coro *self, void *arg)
{
    struct cancel_read *c = arg;
    struct pair *p = c->p;
    memset(c->buf, 'x', sizeof c->buf);
    c->reader = coro_spawn(p->sched, cancel_read_reader, c, 0);
    CHECK_INT(await_sleep(p->sched, 20), 0);
    coro_cancel(c->reader);
    coro_join(self, c->reader);
    CHECK_INT(c->result, -ECANCELED);
    /* data arriving now must land in pending, not in the old buffer */
    CHECK_INT(await_write(p->sched, (uv_stream_t *)&p->b, "after", 5, 1000), 0);
    CHECK_INT(await_sleep(p->sched, 20), 0);
    CHECK(memcmp(c->buf, "xxxxxxxx", 8) == 0);
    char buf[8];
    CHECK_INT(await_read(p->sched, &p->ra, buf, sizeof buf, 1000), 5);
    CHECK(memcmp(buf, "after", 5) == 0);
    pair_close(p);
}

static void test_cancel_read(uv_loop_t *loop)
{
    struct pair p;
    pair_open(&p, loop);
    struct cancel_read c = {.p = &p};
    coro_detach(coro_spawn(p.sched, cancel_read_main, &c, 0));
    pair_finish(&p, loop);
}

/* ---- back-pressure: a slow reader keeps memory bounded ---- */

#define BIG (8u << 20)

static unsigned char pattern(size_t i)
{
    return (unsigned char)(i * 131u + (i >> 13));
}

struct pressure {
    struct pair *p;
    bool writer_done;
};

static void pressure_writer(struct coro *self, void *arg)
{
    struct pressure *pr = arg;
    unsigned char *data = malloc(BIG);
    for (size_t i = 0; i < BIG; i++)
        data[i] = pattern(i);
    /* in 64 KiB pieces, as a layer above would write */
    for (size_t off = 0; off < BIG; off += 65536)
        CHECK_INT(await_write(pr->p->sched, (uv_stream_t *)&pr->p->b, data + off, 65536, 5000), 0);
    free(data);
    pr->writer_done = true;
}

static void pressure_main(struct coro *self, void *arg)
{
    struct pressure *pr = arg;
    struct pair *p = pr->p;
    struct coro *w = coro_spawn(p->sched, pressure_writer, pr, 0);
    /* one read starts the background reading, then we stay away a while */
    unsigned char buf[1000];
    ssize_t n = await_read(p->sched, &p->ra, buf, 1, 1000);
    CHECK_INT(n, 1);
    CHECK(buf[0] == pattern(0));
    CHECK_INT(await_sleep(p->sched, 200), 0);
    CHECK(!pr->writer_done);
    CHECK(!p->ra.reading); /* stopped above the high-water mark */
    size_t unread = p->ra.pending_len - p->ra.pending_off;
    CHECK(unread > 256 * 1024 && unread <= 256 * 1024 + 256 * 1024);
    CHECK(p->ra.pending_cap <= 1024 * 1024);
    size_t got = 1;
    while (got < BIG) {
        n = await_read(p->sched, &p->ra, buf, sizeof buf, 5000);
        CHECK(n > 0);
        for (ssize_t i = 0; i < n; i++)
            if (buf[i] != pattern(got + (size_t)i)) {
                fprintf(stderr, "byte %zu differs\n", got + (size_t)i);
                CHECK(0);
            }
        got += (size_t)n;
        CHECK(p->ra.pending_cap <= 1024 * 1024);
    }
    coro_join(self, w);
    CHECK(pr->writer_done);
    pair_close(p);
}

static void test_back_pressure(uv_loop_t *loop)
{
    struct pair p;
    pair_open(&p, loop);
    struct pressure pr = {.p = &p};
    coro_detach(coro_spawn(p.sched, pressure_main, &pr, 0));
    pair_finish(&p, loop);
}

/* ---- a reader and a writer coroutine on the same handle at once ---- */

struct duplex {
    struct pair *p;
    size_t echoed, received;
};

static void shutdown_done(uv_shutdown_t *req, int status)
{
    free(req);
}

/* the far end echoes everything back */
static void duplex_echo(struct coro *self, void *arg)
{
    struct duplex *d = arg;
    char buf[4096];
    ssize_t n;
    while ((n = await_read(d->p->sched, &d->p->rb, buf, sizeof buf, 5000)) > 0) {
        CHECK_INT(await_write(d->p->sched, (uv_stream_t *)&d->p->b, buf, (size_t)n, 5000), 0);
        d->echoed += (size_t)n;
    }
    CHECK_INT(n, 0);
    uv_shutdown_t *req = malloc(sizeof *req);
    CHECK_INT(uv_shutdown(req, (uv_stream_t *)&d->p->b, shutdown_done), 0);
}

static void duplex_reader(struct coro *self, void *arg)
{
    struct duplex *d = arg;
    unsigned char buf[3000];
    ssize_t n;
    while ((n = await_read(d->p->sched, &d->p->ra, buf, sizeof buf, 5000)) > 0) {
        for (ssize_t i = 0; i < n; i++)
            CHECK(buf[i] == pattern(d->received + (size_t)i));
        d->received += (size_t)n;
    }
    CHECK_INT(n, 0);
    /* end of stream is sticky */
    CHECK_INT(await_read(d->p->sched, &d->p->ra, buf, sizeof buf, 5000), 0);
}

static void duplex_main(struct coro *self, void *arg)
{
    struct duplex *d = arg;
    struct pair *p = d->p;
    struct coro *echo = coro_spawn(p->sched, duplex_echo, d, 0);
    struct coro *reader = coro_spawn(p->sched, duplex_reader, d, 0);
    /* this coroutine writes while `reader` reads the same handle */
    unsigned char *data = malloc(BIG / 2);
    for (size_t i = 0; i < BIG / 2; i++)
        data[i] = pattern(i);
    for (size_t off = 0; off < BIG / 2; off += 10000) {
        size_t len = BIG / 2 - off < 10000 ? BIG / 2 - off : 10000;
        CHECK_INT(await_write(p->sched, (uv_stream_t *)&p->a, data + off, len, 5000), 0);
    }
    free(data);
    uv_shutdown_t *req = malloc(sizeof *req);
    CHECK_INT(uv_shutdown(req, (uv_stream_t *)&p->a, shutdown_done), 0);
    coro_join(self, reader);
    coro_join(self, echo);
    CHECK_INT(d->echoed, BIG / 2);
    CHECK_INT(d->received, BIG / 2);
    pair_close(p);
}

static void test_duplex(uv_loop_t *loop)
{
    struct pair p;
    pair_open(&p, loop);
    struct duplex d = {.p = &p};
    coro_detach(coro_spawn(p.sched, duplex_main, &d, 0));
    pair_finish(&p, loop);
}

/* ---- a write nobody reads times out; the handle then closes cleanly ---- */

static void write_timeout_main(struct coro *self, void *arg)
{
    struct pair *p = arg;
    size_t len = 16u << 20;
    char *data = calloc(1, len);
    uint64_t t0 = uv_hrtime();
    CHECK_INT(await_write(p->sched, (uv_stream_t *)&p->a, data, len, 100), -ETIMEDOUT);
    uint64_t el = ms_since(t0);
    CHECK(el >= 95 && el < 1000);
    /* the request still in libuv's queue owns a copy: our buffer is free */
    memset(data, 'z', len);
    free(data);
    /* a second writer on the cancelled path: cancelled before it waits */
    coro_cancel(self);
    CHECK_INT(await_write(p->sched, (uv_stream_t *)&p->a, "x", 1, 100), -ECANCELED);
    /* await_close still waits for the close callback despite the cancel */
    pair_close(p);
    CHECK(uv_is_closing((uv_handle_t *)&p->a));
}

static void test_write_timeout(uv_loop_t *loop)
{
    struct pair p;
    pair_open(&p, loop);
    coro_detach(coro_spawn(p.sched, write_timeout_main, &p, 0));
    pair_finish(&p, loop);
}

/* ---- await_sleep is a wake-up with a deadline ---- */

struct early {
    struct coro_sched *sched;
    struct coro *sleeper;
    int result;
    uint64_t elapsed;
};

static void early_sleeper(struct coro *self, void *arg)
{
    struct early *e = arg;
    uint64_t t0 = uv_hrtime();
    e->result = await_sleep(e->sched, 10000);
    e->elapsed = ms_since(t0);
}

static void early_main(struct coro *self, void *arg)
{
    struct early *e = arg;
    e->sleeper = coro_spawn(e->sched, early_sleeper, e, 0);
    CHECK_INT(await_sleep(e->sched, 30), 0);
    coro_wake(e->sleeper);
    coro_join(self, e->sleeper);
    CHECK_INT(e->result, 0);
    CHECK(e->elapsed >= 25 && e->elapsed < 1000);
}

static void test_sleep_woken(uv_loop_t *loop)
{
    struct early e = {.sched = coro_sched_new(loop)};
    coro_detach(coro_spawn(e.sched, early_main, &e, 0));
    CHECK_INT(coro_sched_run(e.sched), 0);
    coro_sched_free(&e.sched);
    uv_run(loop, UV_RUN_DEFAULT);
}

/* ---- name resolution ---- */

static void resolve_main(struct coro *self, void *arg)
{
    struct coro_sched *sched = arg;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST};
    struct addrinfo *res = NULL;
    CHECK_INT(await_getaddrinfo(sched, "127.0.0.1", "143", &hints, &res, 5000), 0);
    CHECK(res && res->ai_family == AF_INET);
    CHECK_INT(ntohs(((struct sockaddr_in *)res->ai_addr)->sin_port), 143);
    uv_freeaddrinfo(res);
    int r = await_getaddrinfo(sched, "not an address", "143", &hints, &res, 5000);
    CHECK(r < 0 && res == NULL);
    CHECK_INT(r, UV_EAI_NONAME);
}

static void test_resolve(uv_loop_t *loop)
{
    struct coro_sched *sched = coro_sched_new(loop);
    coro_detach(coro_spawn(sched, resolve_main, sched, 0));
    CHECK_INT(coro_sched_run(sched), 0);
    coro_sched_free(&sched);
    uv_run(loop, UV_RUN_DEFAULT);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    uv_loop_t loop;
    uv_loop_init(&loop);
    test_pending_and_timeout(&loop);
    test_cancel_read(&loop);
    test_back_pressure(&loop);
    test_duplex(&loop);
    test_write_timeout(&loop);
    test_sleep_woken(&loop);
    test_resolve(&loop);
    CHECK_INT(uv_loop_close(&loop), 0);
    return check_finish();
}
