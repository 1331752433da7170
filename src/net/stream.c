/*
 * The byte-stream interface every layer implements (transport, SOCKS5,
 * TLS, COMPRESS): dispatch to a layer's operations and error texts.
 */
#include "net/stream.h"

#include <stdio.h>
#include <string.h>

void stream_init(struct stream *s, const struct stream_ops *ops, struct stream *lower,
                 struct coro_sched *sched)
{
    s->ops = ops;
    s->lower = lower;
    s->sched = sched;
    s->read_timeout_ms = lower ? lower->read_timeout_ms : 0;
    s->write_timeout_ms = lower ? lower->write_timeout_ms : 0;
    s->error[0] = '\0';
}

void stream_free(struct stream **s)
{
    if (!s || !*s)
        return;
    (*s)->ops->free(*s);
    *s = NULL;
}

void stream_set_timeouts(struct stream *s, uint64_t read_ms, uint64_t write_ms)
{
    for (; s; s = s->lower) {
        s->read_timeout_ms = read_ms;
        s->write_timeout_ms = write_ms;
    }
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
