/*
 * A coroutine that recurses without bound must die on the guard page under
 * its stack (SIGSEGV, fault address in the guard), not scribble over memory.
 *
 * The coroutine is created before fork(), so the parent holds an identical
 * copy of the scheduler and can ask coro_addr_in_guard() about the address
 * the child reports. The child's handler runs on an alternate stack (the
 * faulting one is full), writes the fault address to a pipe, restores the
 * default action and returns: the fault repeats and kills the child with
 * SIGSEGV, which the parent checks. This works with AddressSanitizer too
 * (its runtime lets a program install its own SIGSEGV handler).
 */
#include <signal.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "coro/coro.h"

#define REPORT_FD 100

static void segv_handler(int sig, siginfo_t *si, void *ctx)
{
    void *addr = si->si_addr;
    (void)!write(REPORT_FD, &addr, sizeof addr);
    signal(SIGSEGV, SIG_DFL);
}

/* not inlined: each call moves the stack pointer by about one frame */
__attribute__((noinline)) static unsigned recurse(volatile char *prev, unsigned depth,
                                                  unsigned limit)
{
    volatile char frame[1024];
    if (depth == limit) /* never: 64 KiB of stack end long before */
        return 0;
    frame[0] = (char)depth;
    frame[sizeof frame - 1] = prev ? prev[0] : 0;
    /* use the result so that this is not a tail call */
    return recurse(frame, depth + 1, limit) + frame[1];
}

struct overflow {
    unsigned limit;
    unsigned depth;
};

static void overflow_main(struct coro *self, void *arg)
{
    struct overflow *o = arg;
    o->depth = recurse(NULL, 0, o->limit);
}

int main(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct coro_sched *sched = coro_sched_new(&loop);
    struct overflow o = {.limit = 1u << 30};
    struct coro *co = coro_spawn(sched, overflow_main, &o, 64 * 1024);
    CHECK(co);

    int fds[2];
    CHECK_INT(pipe(fds), 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        if (fds[1] != REPORT_FD) {
            dup2(fds[1], REPORT_FD);
            close(fds[1]);
        }
        stack_t ss = {.ss_sp = malloc(64 * 1024), .ss_size = 64 * 1024};
        CHECK(ss.ss_sp);
        CHECK_INT(sigaltstack(&ss, NULL), 0);
        struct sigaction sa = {.sa_sigaction = segv_handler, .sa_flags = SA_SIGINFO | SA_ONSTACK};
        sigemptyset(&sa.sa_mask);
        CHECK_INT(sigaction(SIGSEGV, &sa, NULL), 0);
        uv_loop_fork(&loop);
        coro_sched_run(sched);
        _exit(0); /* reaching this means the overflow went unnoticed */
    }
    close(fds[1]);
    int status;
    CHECK_INT(waitpid(pid, &status, 0), pid);
    void *addr = NULL;
    ssize_t n = read(fds[0], &addr, sizeof addr);
    if (!WIFSIGNALED(status))
        fprintf(stderr, "child exited with status %d\n", WEXITSTATUS(status));
    CHECK(WIFSIGNALED(status));
    CHECK_INT(WTERMSIG(status), SIGSEGV);
    CHECK_INT(n, sizeof addr);
    fprintf(stderr, "fault at %p, stack variable of the test at %p\n", addr, (void *)&n);
    CHECK(coro_addr_in_guard(co, addr));
    /* and in its top part: the stack ran into it from above, one frame at
     * a time (16 KiB: a few frames, even with ASan's red zones) */
    CHECK(!coro_addr_in_guard(co, (char *)addr + 16384));

    /* the parent's copy never ran; freeing the scheduler releases it */
    coro_sched_free(&sched);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_INT(uv_loop_close(&loop), 0);
    return check_finish();
}
