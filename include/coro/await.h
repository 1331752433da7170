/*
 * Awaitable wrappers over libuv: each starts a libuv request, suspends the
 * running coroutine, and returns when the callback fired, the deadline
 * passed (-ETIMEDOUT) or the coroutine was cancelled (-ECANCELED). A
 * timeout of 0 means no deadline. All of them may yield and must be called
 * from a coroutine.
 */
#ifndef INTERIMAP_CORO_AWAIT_H
#define INTERIMAP_CORO_AWAIT_H

#include <netdb.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "coro/coro.h"

/* Returns 0 after ms milliseconds, or earlier if another party calls
 * coro_wake on the sleeper (a wake-up with a deadline); -ECANCELED. */
int await_sleep(struct coro_sched *sched, uint64_t ms);

/* On success *res is a list the caller frees with uv_freeaddrinfo(). */
int await_getaddrinfo(struct coro_sched *sched, const char *node, const char *service,
                      const struct addrinfo *hints, struct addrinfo **res, uint64_t timeout_ms);

/* tcp must be initialised (uv_tcp_init) by the caller, who also closes it;
 * after a timeout or cancellation, closing it is the only way to abandon the
 * attempt (the request is released by its callback, which then runs). */
int await_tcp_connect(struct coro_sched *sched, uv_tcp_t *tcp, const struct sockaddr *addr,
                      uint64_t timeout_ms);

/*
 * Reads at most cap bytes from a stream handle: > 0 bytes read, 0 at end of
 * stream, < 0 on error. Bytes the handle delivered beyond cap are kept in
 * `pending` for the next call, so nothing is lost between calls.
 *
 * Once the first read started it, the handle keeps reading in the
 * background (uv_read_start), so data arriving while the coroutine is busy
 * elsewhere is already here at its next call. Past 256 KiB of unread data
 * the reader stops the handle (the peer then sees TCP back-pressure) and
 * starts it again once the caller has drained it. When a waiting coroutine
 * exists, bytes go straight into its buffer, without a copy.
 *
 * One coroutine at a time may wait in await_read on a reader (-EBUSY
 * otherwise); writes on the same handle from another coroutine are fine.
 * The reader uses handle->data while it is initialised.
 */
struct await_reader {
    uv_stream_t *handle;
    char *pending; /* owned; bytes received but not yet returned */
    size_t pending_len, pending_off, pending_cap;
    int eof_or_error; /* sticky: 0, UV_EOF or a negative error */
    struct coro *waiter;
    uv_timer_t *timer; /* lazily created, owned */
    /* internal: the waiter's buffer, filled directly by the read callback */
    char *dst;
    size_t dst_cap, dst_len;
    bool reading;   /* uv_read_start is in effect */
    bool timed_out; /* the timer fired during the current wait */
};
void await_reader_init(struct await_reader *r, uv_stream_t *handle);
/* Stops reading and frees owned memory; the handle itself is not closed.
 * Must not be called while a coroutine waits on the reader. Never yields. */
void await_reader_fini(struct await_reader *r);
ssize_t await_read(struct coro_sched *sched, struct await_reader *r, void *buf, size_t cap,
                   uint64_t timeout_ms);

/*
 * Writes all len bytes; returns 0 or a negative error. What the socket does
 * not take at once (uv_try_write) is copied into the write request, so that
 * the caller's buffer is free again even when the wait ends by timeout or
 * cancellation while libuv still holds the request. Several coroutines may
 * write on one handle; each write is queued whole, in call order.
 */
int await_write(struct coro_sched *sched, uv_stream_t *handle, const void *buf, size_t len,
                uint64_t timeout_ms);

/* Closes a handle and waits for its close callback (so it may be freed);
 * cancellation does not shorten this wait. Uses handle->data. */
void await_close(struct coro_sched *sched, uv_handle_t *handle);

#endif
