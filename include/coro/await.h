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
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "coro/coro.h"

int await_sleep(struct coro_sched *sched, uint64_t ms);

/* On success *res is a list the caller frees with uv_freeaddrinfo(). */
int await_getaddrinfo(struct coro_sched *sched, const char *node, const char *service,
                      const struct addrinfo *hints, struct addrinfo **res, uint64_t timeout_ms);

/* tcp must be initialised (uv_tcp_init) by the caller, who also closes it. */
int await_tcp_connect(struct coro_sched *sched, uv_tcp_t *tcp, const struct sockaddr *addr,
                      uint64_t timeout_ms);

/*
 * Reads at most cap bytes from a stream handle: > 0 bytes read, 0 at end of
 * stream, < 0 on error. Bytes the handle delivered beyond cap are kept in
 * `pending` for the next call, so nothing is lost between calls.
 */
struct await_reader {
    uv_stream_t *handle;
    char *pending; /* owned; bytes received but not yet returned */
    size_t pending_len, pending_off, pending_cap;
    int eof_or_error; /* sticky: 0, UV_EOF or a negative error */
    struct coro *waiter;
    uv_timer_t *timer; /* lazily created, owned */
};
void await_reader_init(struct await_reader *r, uv_stream_t *handle);
/* Stops reading and frees owned memory; the handle itself is not closed. */
void await_reader_fini(struct await_reader *r);
ssize_t await_read(struct coro_sched *sched, struct await_reader *r, void *buf, size_t cap,
                   uint64_t timeout_ms);

/* Writes all len bytes; returns 0 or a negative error. */
int await_write(struct coro_sched *sched, uv_stream_t *handle, const void *buf, size_t len,
                uint64_t timeout_ms);

/* Closes a handle and waits for its close callback (so it may be freed). */
void await_close(struct coro_sched *sched, uv_handle_t *handle);

#endif
