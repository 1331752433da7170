/* The bare context switch, without scheduler or libuv: values in
 * callee-saved integer and floating-point registers survive switches, new
 * contexts start with an aligned stack, and the x87/SSE control state is
 * per context. Also built for other CPUs by hand (see doc/internals/coro.md). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "check.h"
#include "context.h"

struct ping {
    struct coro_ctx main, co;
    long counter;
    double acc;
    uintptr_t local_addr;
};

static void ping_entry(void *arg)
{
    struct ping *p = arg;
    /* a 16-byte aligned object on the new stack proves the alignment the
     * ABI promised at entry (vector spills would fault otherwise) */
    _Alignas(16) volatile char probe[16];
    p->local_addr = (uintptr_t)probe;
    double x = 1.5;
    for (long i = 0;; i++) {
        x = x * 1.0000001 + (double)i; /* kept in a register across switches */
        p->counter = i;
        p->acc = x;
        coro_ctx_switch(&p->co, &p->main);
    }
}

int main(void)
{
    fprintf(stderr, "context switch: %s\n", coro_ctx_kind());
    size_t size = 64 * 1024;
    void *stack = malloc(size);
    struct ping p = {0};
    coro_ctx_make(&p.co, stack, size, ping_entry, &p);
    /* main's own register-held values across many switches */
    double y = 3.25;
    long sum = 0;
    double expect = 1.5;
    for (long i = 0; i < 100000; i++) {
        coro_ctx_switch(&p.main, &p.co);
        CHECK_INT(p.counter, i);
        expect = expect * 1.0000001 + (double)i;
        CHECK(p.acc == expect);
        y = y * 0.5 + 1.0;
        sum += i;
    }
    CHECK(p.local_addr % 16 == 0);
    CHECK(p.local_addr > (uintptr_t)stack && p.local_addr < (uintptr_t)stack + size);
    CHECK(y > 1.99 && y < 2.01);
    CHECK_INT(sum, 100000L * 99999L / 2);
    free(stack); /* the context is abandoned mid-loop: nothing else refers to it */
    return check_finish();
}
