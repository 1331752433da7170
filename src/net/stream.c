/*
 * The byte-stream interface every layer implements (transport, SOCKS5,
 * TLS, COMPRESS): dispatch to a layer's operations, timeouts and the
 * deadline they share, error texts.
 */
#include "net/stream.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

void stream_init(struct stream *s, const struct stream_ops *ops, struct stream *lower,
                 struct coro_sched *sched)
{
    s->ops = ops;
    s->lower = lower;
    s->sched = sched;
    s->read_timeout_ms = lower ? lower->read_timeout_ms : 0;
    s->write_timeout_ms = lower ? lower->write_timeout_ms : 0;
    s->deadline_ms = lower ? lower->deadline_ms : 0;
    s->deadline_passed = false;
    s->error[0] = '\0';
}

void stream_free(struct stream **s)
{
    if (!s || !*s)
        return;
    (*s)->ops->free(*s);
    *s = NULL;
}

size_t stream_backlog(const struct stream *s)
{
    size_t n = 0;
    for (; s; s = s->lower)
        if (s->ops->backlog)
            n += s->ops->backlog(s);
    return n;
}

void stream_set_timeouts(struct stream *s, uint64_t read_ms, uint64_t write_ms)
{
    for (; s; s = s->lower) {
        s->read_timeout_ms = read_ms;
        s->write_timeout_ms = write_ms;
    }
}

void stream_set_deadline(struct stream *s, uint64_t deadline_ms)
{
    for (; s; s = s->lower)
        s->deadline_ms = deadline_ms;
}

bool stream_deadline_passed(const struct stream *s)
{
    for (; s; s = s->lower)
        if (s->deadline_passed)
            return true;
    return false;
}

uint64_t stream_clock_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

uint64_t stream_wait_ms(const struct stream *s, uint64_t timeout_ms, bool *by_deadline)
{
    *by_deadline = false;
    if (!s->deadline_ms)
        return timeout_ms;
    uint64_t now = stream_clock_ms();
    uint64_t left = s->deadline_ms > now ? s->deadline_ms - now : 1;
    if (timeout_ms && timeout_ms <= left)
        return timeout_ms;
    *by_deadline = true;
    return left;
}

void stream_set_error(struct stream *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->error, sizeof s->error, fmt, ap);
    va_end(ap);
}

void stream_take_error(struct stream *s, const char *what)
{
    if (!s->lower)
        return;
    /* leaves room for the prefix: a long explanation loses its end */
    char tmp[sizeof s->error - 8];
    snprintf(tmp, sizeof tmp, "%.*s", (int)sizeof tmp - 1, s->lower->error);
    if (what && *what)
        snprintf(s->error, sizeof s->error, "%s: %s", what, tmp);
    else
        snprintf(s->error, sizeof s->error, "%s", tmp);
}
