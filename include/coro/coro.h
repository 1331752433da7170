/*
 * Stackful coroutines on a libuv loop.
 *
 * A coroutine runs on its own mmap'd stack (with a PROT_NONE guard page
 * below it) and gives control back to the loop whenever it waits: it calls
 * coro_suspend() after arranging for some callback to call coro_wake() on
 * it. Straight-line code such as `n = stream_read(...)` therefore runs while
 * other coroutines (the other server's connection) make progress.
 *
 * One struct coro_sched exists per loop; it knows the running coroutine, so
 * that the await_* helpers and the byte streams can find it. Nothing here is
 * thread-safe: one loop, one thread.
 *
 * Ownership: coro_sched_new() returns a scheduler the caller frees with
 * coro_sched_free() once every coroutine has finished. A coroutine's memory
 * belongs to the scheduler; it is released after the coroutine returns and
 * has been joined (coro_join) or, for a detached one, when it returns.
 *
 * Running a coroutine: all resumptions happen on the loop's own stack, from
 * the ready queue (run by an idle handle) or straight from a libuv callback
 * that calls coro_wake. Coroutines never switch directly to one another.
 * After coro_sched_free() the loop must be run once more (uv_run) so that the
 * scheduler's idle handle finishes closing before uv_loop_close().
 */
#ifndef INTERIMAP_CORO_CORO_H
#define INTERIMAP_CORO_CORO_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

struct coro;
struct coro_sched;

typedef void coro_fn(struct coro *self, void *arg);

struct coro_sched *coro_sched_new(uv_loop_t *loop);
/* Accepts NULL; clears the pointer. */
void coro_sched_free(struct coro_sched **ps);
uv_loop_t *coro_sched_loop(const struct coro_sched *sched);

/* The running coroutine, or NULL when called from the loop itself. */
struct coro *coro_current(const struct coro_sched *sched);
struct coro_sched *coro_sched_of(const struct coro *co);

/*
 * Creates a coroutine that will call fn(self, arg) and makes it runnable; it
 * starts from the loop, not inside this call. stack_size 0 means the default
 * (256 KiB). Returns NULL when memory or a stack cannot be had.
 */
struct coro *coro_spawn(struct coro_sched *sched, coro_fn *fn, void *arg, size_t stack_size);

/*
 * Suspends `self` (which must be running) until coro_wake(self). Returns 0,
 * or -ECANCELED if the coroutine was cancelled before or while suspended.
 * May yield (obviously).
 */
int coro_suspend(struct coro *self);

/*
 * Makes a suspended coroutine runnable. From a libuv callback the coroutine
 * is resumed before this returns; from another coroutine it is queued and
 * resumed from the loop. Waking a coroutine that is not suspended is a no-op.
 */
void coro_wake(struct coro *co);

/* Requests cancellation: the pending (and every later) coro_suspend of co
 * returns -ECANCELED. The coroutine is expected to unwind and return. */
void coro_cancel(struct coro *co);
bool coro_is_canceled(const struct coro *co);

/* Waits until `other` has returned, then releases it. May yield. */
void coro_join(struct coro *self, struct coro *other);

/* Releases `co` automatically once it returns; it must not be joined. */
void coro_detach(struct coro *co);

/*
 * Runs the loop until no coroutine is left and no handle is active. If
 * coroutines remain suspended once nothing can wake them any more (a
 * deadlock), they are cancelled so that they unwind, and the result is
 * -EDEADLK; otherwise 0.
 */
int coro_sched_run(struct coro_sched *sched);

/*
 * Like coro_suspend, but a cancellation does not end the wait early: for
 * cleanup that must complete (waiting for a close callback before freeing
 * the handle). The coroutine may still be woken by anyone, so the caller
 * loops until its own condition holds.
 */
void coro_suspend_shielded(struct coro *self);

/* Coroutines spawned and not yet released (finished and joined/detached). */
size_t coro_sched_count(const struct coro_sched *sched);

/* Whether addr lies in the PROT_NONE guard (64 KiB) under co's stack (for the
 * stack overflow test and for diagnosing a crash). */
bool coro_addr_in_guard(const struct coro *co, const void *addr);

#endif
