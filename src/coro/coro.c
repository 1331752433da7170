/*
 * The coroutine scheduler: stacks from a pool with guard pages, start,
 * yield and resume, cancellation, and the AddressSanitizer fiber hooks.
 */
#include "coro/coro.h"

#include <assert.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "context.h"

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CORO_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) && !defined(CORO_ASAN)
#define CORO_ASAN 1
#endif

#ifdef CORO_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#define CORO_DEFAULT_STACK (256u * 1024u)
/* Inaccessible bytes under each stack. One page would do for small frames,
 * but a function with a large local array moves the stack pointer past a
 * single page in one step (more so when the compiler inlines it into its
 * caller), and its first store then lands below the guard, in some other
 * mapping. PROT_NONE address space costs no memory, so be generous. */
#define CORO_GUARD_SIZE (64u * 1024u)
/* Stacks kept for reuse: mmap + mprotect + munmap per connection is cheap,
 * but the pool also keeps the pages warm for short-lived helper coroutines. */
#define CORO_POOL_MAX 16

enum coro_state {
    CORO_READY,     /* in the ready queue (new, or woken from a coroutine) */
    CORO_RUNNING,   /* the current coroutine */
    CORO_SUSPENDED, /* waiting for coro_wake */
    CORO_DONE,      /* fn returned; waiting to be joined (or released) */
};

struct coro_stack {
    void *map;      /* the whole mapping, guard included */
    size_t map_len; /* guard + usable size */
    void *lo;       /* lowest usable address, just above the guard */
    size_t size;    /* usable bytes */
};

struct coro {
    struct coro_sched *sched;
    struct coro_ctx ctx;
    coro_fn *fn;
    void *arg;
    enum coro_state state;
    bool canceled;
    bool detached;
    struct coro *joiner;              /* the coroutine waiting in coro_join */
    struct coro *ready_next;          /* ready queue link */
    struct coro *all_prev, *all_next; /* every unreleased coroutine */
    struct coro_stack stack;
    void *asan_fake_stack; /* ASan's fake stack of this coroutine while away */
};

struct coro_sched {
    uv_loop_t *loop;
    uv_idle_t *idle; /* runs the ready queue; heap-allocated, freed by its close callback */
    struct coro *current;
    struct coro *ready_head, *ready_tail;
    struct coro *all;
    size_t count;      /* unreleased coroutines */
    size_t unfinished; /* coroutines whose fn has not returned */
    struct coro_ctx main_ctx;
    size_t page;
    struct coro_stack pool[CORO_POOL_MAX];
    size_t pool_len;
    /* the loop's stack as ASan knows it, learnt at the first switch */
    const void *main_stack_bottom;
    size_t main_stack_size;
    void *main_fake_stack;
};

/* ---- AddressSanitizer annotations ------------------------------------ */

/*
 * ASan keeps shadow state per stack; without these calls it believes the
 * loop's stack is still in use while a coroutine runs and reports false
 * stack-buffer-overflows (or misses real ones). Every switch announces the
 * destination stack (start) and, once there, confirms it (finish).
 */
static void asan_start(void **fake_save, const void *bottom, size_t size)
{
#ifdef CORO_ASAN
    __sanitizer_start_switch_fiber(fake_save, bottom, size);
#else
    (void)fake_save;
    (void)bottom;
    (void)size;
#endif
}

/* NOLINTNEXTLINE(readability-non-const-parameter): ASan's interface writes it */
static void asan_finish(void *fake_save, const void **bottom_old, size_t *size_old)
{
#ifdef CORO_ASAN
    __sanitizer_finish_switch_fiber(fake_save, bottom_old, size_old);
#else
    (void)fake_save;
    (void)bottom_old;
    (void)size_old;
#endif
}

/* ---- stacks ------------------------------------------------------------ */

static int stack_alloc(struct coro_sched *s, size_t size, struct coro_stack *st)
{
    size = (size + s->page - 1) / s->page * s->page;
    for (size_t i = 0; i < s->pool_len; i++) {
        if (s->pool[i].size == size) {
            *st = s->pool[i];
            s->pool[i] = s->pool[--s->pool_len];
#ifdef CORO_ASAN
            /* frames of the previous owner may have left poisoned shadow */
            ASAN_UNPOISON_MEMORY_REGION(st->lo, st->size);
#endif
            return 0;
        }
    }
    size_t guard = (CORO_GUARD_SIZE + s->page - 1) / s->page * s->page;
    size_t len = size + guard;
    void *map =
        mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (map == MAP_FAILED)
        return -errno;
    /* The guard page turns a stack overflow into SIGSEGV at the faulting
     * instruction instead of silent corruption of whatever lies below. */
    if (mprotect(map, guard, PROT_NONE) != 0) {
        int r = -errno;
        munmap(map, len);
        return r;
    }
    st->map = map;
    st->map_len = len;
    st->lo = (char *)map + guard;
    st->size = size;
    return 0;
}

static void stack_release(struct coro_sched *s, struct coro_stack *st)
{
    if (!st->map)
        return;
    if (st->size == CORO_DEFAULT_STACK && s->pool_len < CORO_POOL_MAX) {
        /* give the memory back but keep the mapping and its guard page */
        madvise(st->lo, st->size, MADV_DONTNEED);
        s->pool[s->pool_len++] = *st;
    } else {
        munmap(st->map, st->map_len);
    }
    st->map = NULL;
}

/* ---- ready queue ----------------------------------------------------- */

static void sched_idle_cb(uv_idle_t *idle);

static void ready_push(struct coro_sched *s, struct coro *co)
{
    co->state = CORO_READY;
    co->ready_next = NULL;
    if (s->ready_tail)
        s->ready_tail->ready_next = co;
    else
        s->ready_head = co;
    s->ready_tail = co;
    if (s->idle && !uv_is_active((uv_handle_t *)s->idle))
        uv_idle_start(s->idle, sched_idle_cb);
}

static struct coro *ready_pop(struct coro_sched *s)
{
    struct coro *co = s->ready_head;
    if (co) {
        s->ready_head = co->ready_next;
        if (!s->ready_head)
            s->ready_tail = NULL;
        co->ready_next = NULL;
    }
    return co;
}

/* ---- lifecycle --------------------------------------------------------- */

static void coro_release(struct coro *co)
{
    struct coro_sched *s = co->sched;
    if (co->all_prev)
        co->all_prev->all_next = co->all_next;
    else
        s->all = co->all_next;
    if (co->all_next)
        co->all_next->all_prev = co->all_prev;
    s->count--;
    stack_release(s, &co->stack);
    free(co);
}

/* Called on the loop's stack once co's function has returned. */
static void coro_finished(struct coro *co)
{
    struct coro_sched *s = co->sched;
    s->unfinished--;
    if (co->detached) {
        coro_release(co);
    } else if (co->joiner && co->joiner->state == CORO_SUSPENDED) {
        /* queued rather than resumed here, so that a chain of joins does
         * not nest resumptions on the loop's stack */
        ready_push(s, co->joiner);
    }
}

/* Switches from the loop's stack into co; returns when co suspends or ends. */
static void sched_resume(struct coro_sched *s, struct coro *co)
{
    assert(!s->current);
    co->state = CORO_RUNNING;
    s->current = co;
    asan_start(&s->main_fake_stack, co->stack.lo, co->stack.size);
    coro_ctx_switch(&s->main_ctx, &co->ctx);
    asan_finish(s->main_fake_stack, NULL, NULL);
    s->current = NULL;
    if (co->state == CORO_DONE)
        coro_finished(co);
}

static void coro_entry(void *arg)
{
    struct coro *co = arg;
    struct coro_sched *s = co->sched;
    asan_finish(NULL, &s->main_stack_bottom, &s->main_stack_size);
    co->fn(co, co->arg);
    co->state = CORO_DONE;
    /* NULL: this stack's ASan fake frames die with the coroutine */
    asan_start(NULL, s->main_stack_bottom, s->main_stack_size);
    coro_ctx_switch(&co->ctx, &s->main_ctx);
    abort(); /* a finished coroutine is never resumed */
}

static void sched_idle_cb(uv_idle_t *idle)
{
    struct coro_sched *s = idle->data;
    /* Only the coroutines queued before this pass run now; those they wake
     * wait for the next pass, so the loop still polls for I/O in between. */
    struct coro *last = s->ready_tail;
    struct coro *co;
    while ((co = ready_pop(s)) != NULL) {
        bool was_last = co == last;
        if (co->state == CORO_READY)
            sched_resume(s, co);
        if (was_last)
            break;
    }
    if (!s->ready_head)
        uv_idle_stop(s->idle);
}

struct coro_sched *coro_sched_new(uv_loop_t *loop)
{
    struct coro_sched *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->idle = malloc(sizeof *s->idle);
    if (!s->idle) {
        free(s);
        return NULL;
    }
    uv_idle_init(loop, s->idle);
    s->idle->data = s;
    s->loop = loop;
    long page = sysconf(_SC_PAGESIZE);
    s->page = page > 0 ? (size_t)page : 4096;
    return s;
}

static void sched_idle_closed(uv_handle_t *h)
{
    free(h);
}

void coro_sched_free(struct coro_sched **ps)
{
    if (!ps || !*ps)
        return;
    struct coro_sched *s = *ps;
    *ps = NULL;
    /* Coroutines still here never finished (the caller gave up on them):
     * their stacks go, whatever their frames still referenced leaks. */
    while (s->all)
        coro_release(s->all); // NOLINT(clang-analyzer-unix.Malloc): it unlinks itself first
    for (size_t i = 0; i < s->pool_len; i++)
        munmap(s->pool[i].map, s->pool[i].map_len);
    uv_close((uv_handle_t *)s->idle, sched_idle_closed);
    free(s);
}

uv_loop_t *coro_sched_loop(const struct coro_sched *s)
{
    return s->loop;
}

struct coro *coro_current(const struct coro_sched *s)
{
    return s ? s->current : NULL;
}

struct coro_sched *coro_sched_of(const struct coro *co)
{
    return co->sched;
}

size_t coro_sched_count(const struct coro_sched *s)
{
    return s->count;
}

struct coro *coro_spawn(struct coro_sched *s, coro_fn *fn, void *arg, size_t stack_size)
{
    struct coro *co = calloc(1, sizeof *co);
    if (!co)
        return NULL;
    if (stack_alloc(s, stack_size ? stack_size : CORO_DEFAULT_STACK, &co->stack) < 0) {
        free(co);
        return NULL;
    }
    co->sched = s;
    co->fn = fn;
    co->arg = arg;
    coro_ctx_make(&co->ctx, co->stack.lo, co->stack.size, coro_entry, co);
    co->all_next = s->all;
    if (s->all)
        s->all->all_prev = co;
    s->all = co;
    s->count++;
    s->unfinished++;
    ready_push(s, co);
    return co;
}

/* Gives control back to the loop until some coro_wake (or a cancel). */
static void coro_switch_out(struct coro *self)
{
    struct coro_sched *s = self->sched;
    self->state = CORO_SUSPENDED;
    asan_start(&self->asan_fake_stack, s->main_stack_bottom, s->main_stack_size);
    coro_ctx_switch(&self->ctx, &s->main_ctx);
    asan_finish(self->asan_fake_stack, &s->main_stack_bottom, &s->main_stack_size);
}

int coro_suspend(struct coro *self)
{
    if (!self || self->sched->current != self)
        return -EPERM;
    if (self->canceled)
        return -ECANCELED;
    coro_switch_out(self);
    return self->canceled ? -ECANCELED : 0;
}

void coro_suspend_shielded(struct coro *self)
{
    if (!self || self->sched->current != self)
        return;
    coro_switch_out(self);
}

void coro_wake(struct coro *co)
{
    if (!co || co->state != CORO_SUSPENDED)
        return;
    struct coro_sched *s = co->sched;
    if (s->current)
        ready_push(s, co); /* a coroutine cannot resume another: queue it */
    else
        sched_resume(s, co);
}

void coro_cancel(struct coro *co)
{
    if (!co || co->state == CORO_DONE)
        return;
    co->canceled = true;
    coro_wake(co);
}

bool coro_is_canceled(const struct coro *co)
{
    return co && co->canceled;
}

void coro_join(struct coro *self, struct coro *other)
{
    if (!other)
        return;
    if (!self || self->sched->current != self) {
        /* not on a coroutine: cannot wait, so let it go when it ends */
        coro_detach(other);
        return;
    }
    assert(other != self && !other->detached);
    other->joiner = self;
    /* shielded: a cancelled joiner still must not free a live coroutine */
    while (other->state != CORO_DONE)
        coro_switch_out(self);
    coro_release(other);
}

void coro_detach(struct coro *co)
{
    if (!co)
        return;
    if (co->state == CORO_DONE)
        coro_release(co);
    else
        co->detached = true;
}

bool coro_addr_in_guard(const struct coro *co, const void *addr)
{
    uintptr_t a = (uintptr_t)addr, g = (uintptr_t)co->stack.map;
    return co->stack.map && a >= g && a < (uintptr_t)co->stack.lo;
}

int coro_sched_run(struct coro_sched *s)
{
    /* A few rounds: a cancelled coroutine may still need the loop to unwind
     * (closing handles), and may itself wait on another stuck one. */
    int result = 0;
    for (int round = 0; round < 4; round++) {
        uv_run(s->loop, UV_RUN_DEFAULT);
        if (s->unfinished == 0)
            return result;
        result = -EDEADLK;
        /* Nothing can wake the remaining coroutines any more. */
        for (struct coro *co = s->all; co; co = co->all_next) {
            if (co->state != CORO_DONE) {
                co->canceled = true;
                if (co->state == CORO_SUSPENDED)
                    ready_push(s, co);
            }
        }
    }
    return -EDEADLK;
}
