/* The scheduler: ordering of many coroutines, wake-ups from coroutines and
 * from callbacks, cancellation, join, detach and deadlock handling. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>

#include "check.h"
#include "context.h"
#include "coro/await.h"
#include "coro/coro.h"

#define N 1000

/* ---- a token passed around a ring of N coroutines, by coro_wake only ---- */

struct ring {
    struct coro_sched *sched;
    struct coro *co[N];
    int turn;
    int rounds;
    int *log;
    size_t log_len;
};

struct ring_member {
    struct ring *ring;
    int id;
};

static void ring_main(struct coro *self, void *arg)
{
    struct ring_member *m = arg;
    struct ring *ring = m->ring;
    for (int round = 0; round < ring->rounds; round++) {
        while (ring->turn != m->id)
            CHECK_INT(coro_suspend(self), 0);
        ring->log[ring->log_len++] = m->id;
        ring->turn = (m->id + 1) % N;
        /* the next one may not have started yet: then this is a no-op and it
         * sees the turn when it first runs */
        coro_wake(ring->co[ring->turn]);
    }
}

static void test_ring(uv_loop_t *loop)
{
    struct ring ring = {.rounds = 5};
    struct ring_member members[N];
    ring.sched = coro_sched_new(loop);
    ring.log = calloc((size_t)N * (size_t)ring.rounds, sizeof *ring.log);
    for (int i = 0; i < N; i++) {
        members[i] = (struct ring_member){&ring, i};
        ring.co[i] = coro_spawn(ring.sched, ring_main, &members[i], 64 * 1024);
        CHECK(ring.co[i]);
    }
    CHECK_INT(coro_sched_count(ring.sched), N);
    CHECK_INT(coro_sched_run(ring.sched), 0);
    /* not detached earlier: the last one wakes the first, which has
     * finished by then (a no-op, as long as it has not been released) */
    CHECK_INT(coro_sched_count(ring.sched), N);
    for (int i = 0; i < N; i++)
        coro_detach(ring.co[i]);
    CHECK_INT(coro_sched_count(ring.sched), 0);
    CHECK_INT(ring.log_len, (size_t)N * (size_t)ring.rounds);
    for (size_t i = 0; i < ring.log_len; i++)
        CHECK_INT(ring.log[i], (int)(i % N));
    free(ring.log);
    coro_sched_free(&ring.sched);
    uv_run(loop, UV_RUN_DEFAULT);
}

/* ---- N coroutines sleeping different delays: timer order is exact ---- */

struct sleepers {
    struct coro_sched *sched;
    int log[2 * N];
    size_t log_len;
};

struct sleeper {
    struct sleepers *all;
    int id;
};

static void sleeper_main(struct coro *self, void *arg)
{
    struct sleeper *s = arg;
    CHECK_INT(await_sleep(s->all->sched, (uint64_t)(s->id % 7)), 0);
    s->all->log[s->all->log_len++] = s->id;
    CHECK_INT(await_sleep(s->all->sched, 20), 0);
    s->all->log[s->all->log_len++] = s->id;
}

static void test_sleep_order(uv_loop_t *loop)
{
    struct sleepers all = {.sched = coro_sched_new(loop)};
    struct sleeper sl[N];
    struct coro *co[N];
    for (int i = 0; i < N; i++) {
        sl[i] = (struct sleeper){&all, i};
        co[i] = coro_spawn(all.sched, sleeper_main, &sl[i], 0);
        CHECK(co[i]);
    }
    CHECK_INT(coro_sched_run(all.sched), 0);
    CHECK_INT(all.log_len, 2 * N);
    /* first phase: by delay, then by start order (they all started in one
     * pass of the ready queue, at one loop time) */
    size_t k = 0;
    for (int d = 0; d < 7; d++)
        for (int i = d; i < N; i += 7)
            CHECK_INT(all.log[k++], i);
    /* second phase: every one came back exactly once */
    char seen[N] = {0};
    for (; k < 2 * N; k++) {
        CHECK(!seen[all.log[k]]);
        seen[all.log[k]] = 1;
    }
    /* finished coroutines wait for their join */
    CHECK_INT(coro_sched_count(all.sched), N);
    for (int i = 0; i < N; i++)
        coro_detach(co[i]);
    CHECK_INT(coro_sched_count(all.sched), 0);
    coro_sched_free(&all.sched);
    uv_run(loop, UV_RUN_DEFAULT);
}

/* ---- pairs ping-ponging: one side wakes, the other sleeps then wakes ---- */

struct pair {
    struct coro_sched *sched;
    struct coro *a, *b;
    int ball; /* 0: a's turn, 1: b's turn */
    char trace[64];
    size_t trace_len;
};

static void pair_a(struct coro *self, void *arg)
{
    struct pair *p = arg;
    for (int i = 0; i < 10; i++) {
        while (p->ball != 0)
            CHECK_INT(coro_suspend(self), 0);
        p->trace[p->trace_len++] = 'a';
        p->ball = 1;
        coro_wake(p->b);
    }
}

static void pair_b(struct coro *self, void *arg)
{
    struct pair *p = arg;
    for (int i = 0; i < 10; i++) {
        while (p->ball != 1)
            CHECK_INT(coro_suspend(self), 0);
        CHECK_INT(await_sleep(p->sched, 1), 0);
        p->trace[p->trace_len++] = 'b';
        p->ball = 0;
        coro_wake(p->a);
    }
}

static void test_pairs(uv_loop_t *loop)
{
    struct coro_sched *sched = coro_sched_new(loop);
    struct pair *pairs = calloc(N / 2, sizeof *pairs);
    for (int i = 0; i < N / 2; i++) {
        pairs[i].sched = sched;
        pairs[i].a = coro_spawn(sched, pair_a, &pairs[i], 0);
        pairs[i].b = coro_spawn(sched, pair_b, &pairs[i], 0);
    }
    uint64_t t0 = uv_hrtime();
    CHECK_INT(coro_sched_run(sched), 0);
    /* 10 sleeps of 1 ms in sequence per pair, all pairs at once */
    CHECK((uv_hrtime() - t0) / 1000000 < 5000);
    for (int i = 0; i < N / 2; i++) {
        CHECK_STR(pairs[i].trace, "abababababababababab");
        /* released only now: b's last wake-up reaches a finished a */
        coro_detach(pairs[i].a);
        coro_detach(pairs[i].b);
    }
    CHECK_INT(coro_sched_count(sched), 0);
    free(pairs);
    coro_sched_free(&sched);
    uv_run(loop, UV_RUN_DEFAULT);
}

/* ---- wake from a libuv callback resumes before coro_wake returns ---- */

struct immediate {
    struct coro *co;
    int stage;
    int seen_in_callback;
};

static void immediate_main(struct coro *self, void *arg)
{
    struct immediate *im = arg;
    im->stage = 1;
    CHECK_INT(coro_suspend(self), 0);
    im->stage = 2;
    CHECK_INT(coro_suspend(self), 0);
    im->stage = 3;
}

static void immediate_timer_cb(uv_timer_t *t)
{
    struct immediate *im = t->data;
    CHECK_INT(im->stage, 1);
    coro_wake(im->co);
    im->seen_in_callback = im->stage;
    coro_wake(im->co);
    /* waking a finished coroutine (not suspended) must do nothing */
    coro_wake(im->co);
    uv_close((uv_handle_t *)t, NULL);
}

static void test_wake_from_callback(uv_loop_t *loop)
{
    struct coro_sched *sched = coro_sched_new(loop);
    struct immediate im = {0};
    im.co = coro_spawn(sched, immediate_main, &im, 0);
    uv_timer_t timer;
    uv_timer_init(loop, &timer);
    timer.data = &im;
    uv_timer_start(&timer, immediate_timer_cb, 5, 0);
    CHECK_INT(coro_sched_run(sched), 0);
    CHECK_INT(im.seen_in_callback, 2);
    CHECK_INT(im.stage, 3);
    coro_detach(im.co); /* not before: the callback wakes it once finished */
    coro_sched_free(&sched);
    uv_run(loop, UV_RUN_DEFAULT);
}

/* ---- cancellation ---- */

struct victim {
    struct coro_sched *sched;
    int first, second, third;
    bool started, finished;
};

static void victim_main(struct coro *self, void *arg)
{
    struct victim *v = arg;
    v->started = true;
    v->first = await_sleep(v->sched, 60 * 1000);
    v->second = coro_suspend(self);
    v->third = await_sleep(v->sched, 1);
    v->finished = true;
}

struct canceller {
    struct coro_sched *sched;
    struct coro *victim;
};

static void canceller_main(struct coro *self, void *arg)
{
    struct canceller *c = arg;
    CHECK_INT(await_sleep(c->sched, 10), 0);
    CHECK(!coro_is_canceled(c->victim));
    coro_cancel(c->victim);
    CHECK(coro_is_canceled(c->victim));
    coro_join(self, c->victim);
}

static void test_cancel(uv_loop_t *loop)
{
    struct coro_sched *sched = coro_sched_new(loop);
    struct victim v = {.sched = sched};
    struct canceller c = {.sched = sched};
    c.victim = coro_spawn(sched, victim_main, &v, 0);
    coro_detach(coro_spawn(sched, canceller_main, &c, 0));
    uint64_t t0 = uv_hrtime();
    CHECK_INT(coro_sched_run(sched), 0);
    CHECK((uv_hrtime() - t0) / 1000000 < 5000); /* the minute-long sleep was cut */
    CHECK(v.finished);
    CHECK_INT(v.first, -ECANCELED);
    CHECK_INT(v.second, -ECANCELED);
    CHECK_INT(v.third, -ECANCELED);
    CHECK_INT(coro_sched_count(sched), 0);

    /* cancelled before it even started: it runs, and its first wait fails */
    struct victim w = {.sched = sched};
    struct coro *co = coro_spawn(sched, victim_main, &w, 0);
    coro_cancel(co);
    coro_detach(co);
    CHECK(!w.started);
    CHECK_INT(coro_sched_run(sched), 0);
    CHECK(w.started && w.finished);
    CHECK_INT(w.first, -ECANCELED);
    CHECK_INT(coro_sched_count(sched), 0);
    coro_sched_free(&sched);
    uv_run(loop, UV_RUN_DEFAULT);
}

/* ---- join, and a cancelled joiner still waits ---- */

struct worker {
    struct coro_sched *sched;
    int result;
};

static void worker_main(struct coro *self, void *arg)
{
    struct worker *w = arg;
    for (int i = 0; i < 3; i++)
        await_sleep(w->sched, 5);
    w->result = 42;
}

struct boss {
    struct coro_sched *sched;
    struct worker w;
    int seen;
};

static void boss_main(struct coro *self, void *arg)
{
    struct boss *b = arg;
    b->w.sched = b->sched;
    struct coro *worker = coro_spawn(b->sched, worker_main, &b->w, 0);
    coro_cancel(self); /* even so, join must wait for the worker to finish */
    coro_join(self, worker);
    b->seen = b->w.result;
}

static void test_join(uv_loop_t *loop)
{
    struct coro_sched *sched = coro_sched_new(loop);
    struct boss b = {.sched = sched};
    struct coro *co = coro_spawn(sched, boss_main, &b, 0);
    CHECK_INT(coro_sched_run(sched), 0);
    CHECK_INT(b.seen, 42);
    CHECK_INT(coro_sched_count(sched), 1); /* boss: finished, not yet joined */
    coro_detach(co);
    CHECK_INT(coro_sched_count(sched), 0);
    coro_sched_free(&sched);
    uv_run(loop, UV_RUN_DEFAULT);
}

/* ---- a coroutine nobody will wake: the run cancels it and says so ---- */

struct stuck {
    int result;
};

static void stuck_main(struct coro *self, void *arg)
{
    struct stuck *s = arg;
    s->result = coro_suspend(self);
}

static void test_deadlock(uv_loop_t *loop)
{
    struct coro_sched *sched = coro_sched_new(loop);
    struct stuck s = {1};
    coro_detach(coro_spawn(sched, stuck_main, &s, 0));
    CHECK_INT(coro_sched_run(sched), -EDEADLK);
    CHECK_INT(s.result, -ECANCELED);
    CHECK_INT(coro_sched_count(sched), 0);
    coro_sched_free(&sched);
    uv_run(loop, UV_RUN_DEFAULT);
}

/* ---- misuse from outside a coroutine fails cleanly ---- */

static void test_outside(uv_loop_t *loop)
{
    struct coro_sched *sched = coro_sched_new(loop);
    CHECK(coro_current(sched) == NULL);
    CHECK_INT(await_sleep(sched, 1), -EPERM);
    struct stuck s = {1};
    struct coro *co = coro_spawn(sched, stuck_main, &s, 0);
    CHECK(coro_sched_of(co) == sched);
    CHECK(coro_sched_loop(sched) == loop);
    CHECK_INT(coro_suspend(co), -EPERM); /* not the running coroutine */
    coro_cancel(co);
    coro_detach(co);
    CHECK_INT(coro_sched_run(sched), 0);
    CHECK_INT(s.result, -ECANCELED);
    coro_sched_free(&sched);
    coro_sched_free(&sched); /* NULL is accepted */
    uv_run(loop, UV_RUN_DEFAULT);
}

int main(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    fprintf(stderr, "context switch: %s\n", coro_ctx_kind());
    test_ring(&loop);
    test_sleep_order(&loop);
    test_pairs(&loop);
    test_wake_from_callback(&loop);
    test_cancel(&loop);
    test_join(&loop);
    test_deadlock(&loop);
    test_outside(&loop);
    CHECK_INT(uv_loop_close(&loop), 0);
    return check_finish();
}
