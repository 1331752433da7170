/*
 * The byte stream every layer implements: TCP and tunnel transports at the
 * bottom; SOCKS5 (a handshake on a transport), TLS and COMPRESS stacked on
 * top in any order. A layer owns the stream below it.
 *
 * read and write may yield (they wait on the network through the bottom
 * transport); they must be called from a coroutine of the stream's
 * scheduler. One reader and one writer may use a stream at the same time
 * (different coroutines), which is how IMAP pipelining works.
 *
 * On failure a layer returns a negative code (errors.h) and leaves a
 * one-line explanation in s->error, copying the lower layer's explanation
 * when the failure came from below.
 */
#ifndef INTERIMAP_NET_STREAM_H
#define INTERIMAP_NET_STREAM_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct coro_sched;
struct stream;

struct stream_ops {
    /* > 0 bytes read, 0 at end of stream, < 0 error. */
    ssize_t (*read)(struct stream *s, void *buf, size_t cap);
    /* Writes all of buf (and, for COMPRESS, flushes it); 0 or < 0. */
    int (*write)(struct stream *s, const void *buf, size_t len);
    /* Releases this layer and the stream below it. Must not yield. */
    void (*free)(struct stream *s);
    /* Bytes written but not yet on their way (queued in this process or
     * not yet sent by the kernel). Optional: a layer without it has
     * nothing of its own queued. Must not yield. */
    size_t (*backlog)(const struct stream *s);
};

struct stream {
    const struct stream_ops *ops;
    struct stream *lower; /* NULL for a transport */
    struct coro_sched *sched;
    uint64_t read_timeout_ms;  /* 0: wait forever (IDLE, NOTIFY) */
    uint64_t write_timeout_ms; /* 0: wait forever */
    /* Absolute limit on every wait (stream_clock_ms), whatever the
     * timeouts allow: a peer that trickles bytes resets a timeout at each
     * one, never a deadline. 0: none. */
    uint64_t deadline_ms;
    bool deadline_passed; /* the last wait that timed out ended at the deadline */
    char error[256];      /* last failure, "" if none */
};

static inline ssize_t stream_read(struct stream *s, void *buf, size_t cap)
{
    return s->ops->read(s, buf, cap);
}

static inline int stream_write(struct stream *s, const void *buf, size_t len)
{
    return s->ops->write(s, buf, len);
}

/* Accepts NULL; clears the pointer. */
void stream_free(struct stream **s);

/* Bytes written through s that are still queued on this side of the link,
 * summed over the layers down to the transport: a large backlog means the
 * link (or the peer) is slower than the writer. Does not yield. */
size_t stream_backlog(const struct stream *s);

/* Sets up the common fields of a new layer above `lower` (may be NULL). */
void stream_init(struct stream *s, const struct stream_ops *ops, struct stream *lower,
                 struct coro_sched *sched);

/* The timeouts apply to every layer down to the transport, which waits. */
void stream_set_timeouts(struct stream *s, uint64_t read_ms, uint64_t write_ms);

/* Sets the deadline of every layer down to the transport (0: none). */
void stream_set_deadline(struct stream *s, uint64_t deadline_ms);

/* Whether the last wait below s that timed out was ended by the deadline
 * rather than by a timeout (the layer that waited knows; the clocks of the
 * event loop and of the caller may disagree by a few milliseconds). Does
 * not yield. */
bool stream_deadline_passed(const struct stream *s);

/* Monotonic milliseconds, the clock of deadlines. */
uint64_t stream_clock_ms(void);

/* How long a wait with this timeout (0: none) may last given the
 * deadline: at least 1 ms when one applies (a passed deadline times out at
 * once), 0 for no limit. *by_deadline tells whether the deadline is the
 * shorter. */
uint64_t stream_wait_ms(const struct stream *s, uint64_t timeout_ms, bool *by_deadline);

void stream_set_error(struct stream *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Copies the lower layer's message into s->error, prefixed by `what: `. */
void stream_take_error(struct stream *s, const char *what);

#endif
