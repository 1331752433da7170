/*
 * Machine context switch for the coroutines (internal to src/coro).
 *
 * On x86-64 and aarch64 a switch saves the callee-saved registers on the
 * current stack and swaps stack pointers: the C calling convention already
 * spills everything else around the call, so this is all a switch needs and
 * it costs a few nanoseconds. Other CPUs use ucontext (makecontext /
 * swapcontext), which is slower (it saves the signal mask with a system
 * call) but portable. Defining CORO_CTX_UCONTEXT forces the fallback, which
 * lets the tests exercise it on any machine.
 */
#ifndef INTERIMAP_CORO_CONTEXT_H
#define INTERIMAP_CORO_CONTEXT_H

#include <stddef.h>

#if !defined(CORO_CTX_UCONTEXT) && !((defined(__x86_64__) && !defined(__ILP32__)) ||               \
                                     (defined(__aarch64__) && !defined(__ILP32__)))
#define CORO_CTX_UCONTEXT 1
#endif

#ifdef CORO_CTX_UCONTEXT
#include <ucontext.h>
#endif

struct coro_ctx {
#ifdef CORO_CTX_UCONTEXT
    ucontext_t uc;
#else
    void *sp; /* saved stack pointer; the registers sit on that stack */
#endif
};

/* The first function a new context runs; it must never return. */
typedef void coro_ctx_entry(void *arg);

/* Prepares ctx to run fn(arg) on the stack [lo, lo + size) at its first switch. */
void coro_ctx_make(struct coro_ctx *ctx, void *lo, size_t size, coro_ctx_entry *fn, void *arg);

/* Saves the running context into from and resumes to. Returns when some
 * later switch resumes from. from may be uninitialised (the loop's stack). */
void coro_ctx_switch(struct coro_ctx *from, struct coro_ctx *to);

/* Which implementation this build uses, for the documentation and tests. */
const char *coro_ctx_kind(void);

#endif
