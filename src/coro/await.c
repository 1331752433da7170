/*
 * libuv operations awaited from a coroutine: timers, connects, writes, process
 * exits, and the buffered reader with back-pressure (see coro/await.h).
 */
#include "coro/await.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* Unread bytes beyond which the reader stops the handle (back-pressure),
 * and the level below which it starts reading again. */
#define READER_HIGH_WATER (256u * 1024u)
#define READER_LOW_WATER  (64u * 1024u)
/* Free room the pending buffer offers to each read(2). */
#define READER_CHUNK (64u * 1024u)

static void handle_free_cb(uv_handle_t *h)
{
    free(h);
}

/*
 * The deadline of one wait. libuv handles may be freed only from their close
 * callback, so the timer lives on the heap and frees itself; its data points
 * at this struct only while it may still fire (uv_close stops it at once).
 */
struct deadline {
    uv_timer_t *timer;
    struct coro *co;
    bool fired;
};

static void deadline_cb(uv_timer_t *t)
{
    struct deadline *d = t->data;
    d->fired = true;
    coro_wake(d->co);
}

static int deadline_start(struct deadline *d, struct coro_sched *sched, struct coro *co,
                          uint64_t ms)
{
    d->timer = NULL;
    d->co = co;
    d->fired = false;
    if (!ms)
        return 0;
    d->timer = malloc(sizeof *d->timer);
    if (!d->timer)
        return -ENOMEM;
    uv_timer_init(coro_sched_loop(sched), d->timer);
    d->timer->data = d;
    uv_timer_start(d->timer, deadline_cb, ms, 0);
    return 0;
}

static void deadline_stop(struct deadline *d)
{
    if (d->timer)
        uv_close((uv_handle_t *)d->timer, handle_free_cb);
    d->timer = NULL;
}

/*
 * What a wait for a libuv request shares with the request's callback. The
 * record lives on the heap next to the request: when the wait ends early
 * (timeout, cancellation) the coroutine clears `waiter` and leaves, and the
 * callback, which libuv will still call, frees the record.
 */
struct req_wait {
    struct coro *waiter; /* NULL once abandoned */
    bool done;
    int status;
};

/* Suspends until w->done, the deadline or a cancellation; returns 0, or
 * -ETIMEDOUT / -ECANCELED with the request abandoned (w->waiter cleared). */
static int req_wait_run(struct coro_sched *sched, struct req_wait *w, uint64_t timeout_ms)
{
    struct deadline dl;
    int r = deadline_start(&dl, sched, w->waiter, timeout_ms);
    while (r == 0 && !w->done) {
        int s = coro_suspend(w->waiter);
        if (w->done)
            break;
        if (s < 0)
            r = s;
        else if (dl.fired)
            r = -ETIMEDOUT;
        /* anything else was a stray wake-up: keep waiting */
    }
    deadline_stop(&dl);
    if (!w->done)
        w->waiter = NULL;
    return r;
}

int await_sleep(struct coro_sched *sched, uint64_t ms)
{
    struct coro *self = coro_current(sched);
    if (!self)
        return -EPERM;
    struct deadline dl;
    uv_timer_t *timer = malloc(sizeof *timer);
    if (!timer)
        return -ENOMEM;
    uv_timer_init(coro_sched_loop(sched), timer);
    dl.timer = timer;
    dl.co = self;
    dl.fired = false;
    timer->data = &dl;
    uv_timer_start(timer, deadline_cb, ms, 0);
    /* One suspension: whoever wakes us first (the timer or someone with
     * news) ends the sleep. */
    int r = coro_suspend(self);
    deadline_stop(&dl);
    return r;
}

/* ---- getaddrinfo ------------------------------------------------------- */

struct gai_req {
    uv_getaddrinfo_t req;
    struct req_wait w;
    struct addrinfo *res;
};

static void gai_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct gai_req *g = req->data;
    if (!g->w.waiter) {
        if (res)
            uv_freeaddrinfo(res);
        free(g);
        return;
    }
    g->w.done = true;
    g->w.status = status;
    g->res = res;
    coro_wake(g->w.waiter);
}

int await_getaddrinfo(struct coro_sched *sched, const char *node, const char *service,
                      const struct addrinfo *hints, struct addrinfo **res, uint64_t timeout_ms)
{
    *res = NULL;
    struct coro *self = coro_current(sched);
    if (!self)
        return -EPERM;
    struct gai_req *g = calloc(1, sizeof *g);
    if (!g)
        return -ENOMEM;
    g->req.data = g;
    g->w.waiter = self;
    /* libuv copies node, service and hints: nothing of ours outlives us */
    int r = uv_getaddrinfo(coro_sched_loop(sched), &g->req, gai_cb, node, service, hints);
    if (r < 0) {
        free(g);
        return r;
    }
    r = req_wait_run(sched, &g->w, timeout_ms);
    if (r < 0) {
        /* stops it if it has not started; the callback frees g either way */
        uv_cancel((uv_req_t *)&g->req);
        return r;
    }
    r = g->w.status;
    *res = g->res;
    free(g);
    if (r < 0 && *res) {
        uv_freeaddrinfo(*res);
        *res = NULL;
    }
    return r;
}

/* ---- connect ----------------------------------------------------------- */

struct connect_req {
    uv_connect_t req;
    struct req_wait w;
};

static void connect_cb(uv_connect_t *req, int status)
{
    struct connect_req *c = req->data;
    if (!c->w.waiter) {
        free(c);
        return;
    }
    c->w.done = true;
    c->w.status = status;
    coro_wake(c->w.waiter);
}

int await_tcp_connect(struct coro_sched *sched, uv_tcp_t *tcp, const struct sockaddr *addr,
                      uint64_t timeout_ms)
{
    struct coro *self = coro_current(sched);
    if (!self)
        return -EPERM;
    struct connect_req *c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    c->req.data = c;
    c->w.waiter = self;
    int r = uv_tcp_connect(&c->req, tcp, addr, connect_cb);
    if (r < 0) {
        free(c);
        return r;
    }
    r = req_wait_run(sched, &c->w, timeout_ms);
    if (r < 0)
        return r; /* closing tcp will call connect_cb, which frees c */
    r = c->w.status;
    free(c);
    return r;
}

/* ---- write ------------------------------------------------------------- */

struct write_req {
    uv_write_t req;
    struct req_wait w;
    char data[]; /* the bytes still to send, owned by the request */
};

static void write_cb(uv_write_t *req, int status)
{
    struct write_req *wr = req->data;
    if (!wr->w.waiter) {
        free(wr);
        return;
    }
    wr->w.done = true;
    wr->w.status = status;
    coro_wake(wr->w.waiter);
}

int await_write(struct coro_sched *sched, uv_stream_t *handle, const void *buf, size_t len,
                uint64_t timeout_ms)
{
    if (len == 0)
        return 0;
    struct coro *self = coro_current(sched);
    if (!self)
        return -EPERM;
    if (coro_is_canceled(self))
        return -ECANCELED;
    if (len > (1u << 30)) {
        /* uv_buf_t lengths are unsigned int: send huge buffers in pieces */
        for (size_t off = 0; off < len; off += 1u << 30) {
            size_t piece = len - off < (1u << 30) ? len - off : (1u << 30);
            int r = await_write(sched, handle, (const char *)buf + off, piece, timeout_ms);
            if (r < 0)
                return r;
        }
        return 0;
    }
    /* Most writes fit in the socket buffer: no request, no copy, no wait.
     * libuv refuses (EAGAIN) while earlier writes are queued, so order holds. */
    uv_buf_t b = uv_buf_init((char *)buf, (unsigned)len);
    int n = uv_try_write(handle, &b, 1);
    if (n < 0 && n != UV_EAGAIN && n != UV_ENOSYS)
        return n;
    size_t done = n > 0 ? (size_t)n : 0;
    if (done == len)
        return 0;
    size_t rest = len - done;
    struct write_req *wr = malloc(sizeof *wr + rest);
    if (!wr)
        return -ENOMEM;
    memset(wr, 0, sizeof *wr);
    memcpy(wr->data, (const char *)buf + done, rest);
    wr->req.data = wr;
    wr->w.waiter = self;
    b = uv_buf_init(wr->data, (unsigned)rest);
    int r = uv_write(&wr->req, handle, &b, 1, write_cb);
    if (r < 0) {
        free(wr);
        return r;
    }
    r = req_wait_run(sched, &wr->w, timeout_ms);
    if (r < 0)
        return r; /* write_cb frees wr when libuv is done with it */
    r = wr->w.status;
    free(wr);
    return r;
}

/* ---- close ------------------------------------------------------------- */

struct close_wait {
    struct coro *co;
    bool done;
};

static void close_cb(uv_handle_t *h)
{
    struct close_wait *cw = h->data;
    cw->done = true;
    coro_wake(cw->co);
}

void await_close(struct coro_sched *sched, uv_handle_t *handle)
{
    if (uv_is_closing(handle))
        return; /* someone else closes it and owns the callback */
    struct coro *self = coro_current(sched);
    if (!self) {
        uv_close(handle, NULL);
        return;
    }
    struct close_wait cw = {.co = self};
    handle->data = &cw;
    uv_close(handle, close_cb);
    while (!cw.done)
        coro_suspend_shielded(self);
}

/* ---- buffered reader --------------------------------------------------- */

static size_t reader_avail(const struct await_reader *r)
{
    return r->pending_len - r->pending_off;
}

static void reader_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct await_reader *r = h->data;
    if (r->dst) {
        buf->base = r->dst;
        buf->len = r->dst_cap;
        return;
    }
    size_t avail = reader_avail(r);
    if (r->pending_off && (avail == 0 || r->pending_off >= r->pending_cap / 2)) {
        memmove(r->pending, r->pending + r->pending_off, avail);
        r->pending_off = 0;
        r->pending_len = avail;
    }
    if (r->pending_cap - r->pending_len < READER_CHUNK) {
        size_t cap = r->pending_cap ? r->pending_cap * 2 : 2 * READER_CHUNK;
        while (cap - r->pending_len < READER_CHUNK)
            cap *= 2;
        char *p = realloc(r->pending, cap);
        if (!p) {
            buf->base = NULL;
            buf->len = 0; /* libuv reports UV_ENOBUFS to the read callback */
            return;
        }
        r->pending = p;
        r->pending_cap = cap;
    }
    buf->base = r->pending + r->pending_len;
    buf->len = r->pending_cap - r->pending_len;
}

static void reader_stop(struct await_reader *r)
{
    if (r->reading)
        uv_read_stop(r->handle);
    r->reading = false;
}

static void reader_read_cb(uv_stream_t *h, ssize_t nread, const uv_buf_t *buf)
{
    struct await_reader *r = h->data;
    if (nread == 0)
        return; /* EAGAIN */
    if (nread > 0) {
        if (r->dst && buf->base == r->dst) {
            r->dst_len = (size_t)nread;
            r->dst = NULL; /* the rest of this wake-up's data goes to pending */
        } else {
            r->pending_len += (size_t)nread;
            if (reader_avail(r) > READER_HIGH_WATER)
                reader_stop(r);
        }
    } else {
        r->eof_or_error = (int)nread;
        reader_stop(r);
    }
    /* Last: the waiter runs right here and may free r. */
    if (r->waiter)
        coro_wake(r->waiter);
}

static void reader_timer_cb(uv_timer_t *t)
{
    struct await_reader *r = t->data;
    r->timed_out = true;
    coro_wake(r->waiter);
}

void await_reader_init(struct await_reader *r, uv_stream_t *handle)
{
    memset(r, 0, sizeof *r);
    r->handle = handle;
    handle->data = r;
}

void await_reader_fini(struct await_reader *r)
{
    if (!r->handle)
        return;
    if (!uv_is_closing((uv_handle_t *)r->handle))
        reader_stop(r);
    r->reading = false;
    if (r->handle->data == r)
        r->handle->data = NULL;
    if (r->timer)
        uv_close((uv_handle_t *)r->timer, handle_free_cb);
    free(r->pending);
    memset(r, 0, sizeof *r);
}

static size_t reader_take(struct await_reader *r, void *buf, size_t cap)
{
    size_t n = reader_avail(r);
    if (n > cap)
        n = cap;
    memcpy(buf, r->pending + r->pending_off, n);
    r->pending_off += n;
    if (r->pending_off == r->pending_len)
        r->pending_off = r->pending_len = 0;
    /* drained enough: let the peer send again */
    if (!r->reading && !r->eof_or_error && reader_avail(r) < READER_LOW_WATER &&
        uv_read_start(r->handle, reader_alloc_cb, reader_read_cb) == 0)
        r->reading = true;
    return n;
}

static ssize_t reader_end(const struct await_reader *r)
{
    return r->eof_or_error == UV_EOF ? 0 : r->eof_or_error;
}

ssize_t await_read(struct coro_sched *sched, struct await_reader *r, void *buf, size_t cap,
                   uint64_t timeout_ms)
{
    if (cap == 0)
        return -EINVAL;
    if (reader_avail(r))
        return (ssize_t)reader_take(r, buf, cap);
    if (r->eof_or_error)
        return reader_end(r);
    struct coro *self = coro_current(sched);
    if (!self)
        return -EPERM;
    if (r->waiter)
        return -EBUSY;
    if (!r->reading) {
        int s = uv_read_start(r->handle, reader_alloc_cb, reader_read_cb);
        if (s < 0)
            return s;
        r->reading = true;
    }
    if (timeout_ms) {
        if (!r->timer) {
            r->timer = malloc(sizeof *r->timer);
            if (!r->timer)
                return -ENOMEM;
            uv_timer_init(coro_sched_loop(sched), r->timer);
            r->timer->data = r;
        }
        uv_timer_start(r->timer, reader_timer_cb, timeout_ms, 0);
    }
    r->dst = buf;
    r->dst_cap = cap;
    r->dst_len = 0;
    r->waiter = self;
    r->timed_out = false;
    ssize_t result;
    for (;;) {
        int s = coro_suspend(self);
        if (r->dst_len) {
            result = (ssize_t)r->dst_len;
            break;
        }
        if (reader_avail(r)) {
            r->dst = NULL;
            result = (ssize_t)reader_take(r, buf, cap);
            break;
        }
        if (r->eof_or_error) {
            result = reader_end(r);
            break;
        }
        if (s < 0) {
            result = s;
            break;
        }
        if (r->timed_out) {
            result = -ETIMEDOUT;
            break;
        }
    }
    /* From here on the callbacks must not touch the caller's buffer. */
    r->dst = NULL;
    r->dst_cap = r->dst_len = 0;
    r->waiter = NULL;
    if (r->timer)
        uv_timer_stop(r->timer);
    return result;
}
