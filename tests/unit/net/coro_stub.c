/*
 * The TLS layer waits on a coroutine only when two coroutines contend for
 * the lower stream's write side, which cannot happen over the blocking test
 * stream (its sched is NULL). These stand-ins keep the unit tests free of
 * the coroutine runtime and fail loudly if that assumption ever breaks.
 */
#include "coro/coro.h"

#include <stdio.h>
#include <stdlib.h>

struct coro *coro_current(const struct coro_sched *sched)
{
    (void)sched;
    return NULL;
}

int coro_suspend(struct coro *self)
{
    (void)self;
    fprintf(stderr, "coro_suspend called in a unit test without coroutines\n");
    abort();
}

void coro_wake(struct coro *co)
{
    (void)co;
    fprintf(stderr, "coro_wake called in a unit test without coroutines\n");
    abort();
}
