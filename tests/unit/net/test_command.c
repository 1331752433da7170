/* Helper commands that print a secret: the first line, its line ending
 * removed; every way a command can fail gives a phrase and no output. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "coro/coro.h"
#include "errors.h"
#include "net/command.h"

static void expect_line(struct coro_sched *sched, const char *cmd, const char *want)
{
    char *out = NULL, err[256] = "";
    int r = command_read_line(sched, cmd, 10000, &out, err, sizeof err);
    if (r < 0)
        fprintf(stderr, "%s: %s\n", cmd, err);
    CHECK_INT(r, 0);
    CHECK(out != NULL);
    CHECK_STR(out, want);
    free(out);
}

static void expect_error(struct coro_sched *sched, const char *cmd, uint64_t timeout_ms,
                         const char *want)
{
    char *out = (char *)"untouched", err[256] = "";
    int r = command_read_line(sched, cmd, timeout_ms, &out, err, sizeof err);
    CHECK(r < 0);
    CHECK(out == NULL);
    CHECK_STR(err, want);
}

static void test_large_line(struct coro_sched *sched)
{
    /* a long token, well past one pipe read, then more output */
    char *out = NULL, err[256] = "";
    int r = command_read_line(sched, "head -c 20000 /dev/zero | tr '\\0' x; echo; echo more", 10000,
                              &out, err, sizeof err);
    CHECK_INT(r, 0);
    CHECK_INT(strlen(out), 20000);
    CHECK(strspn(out, "x") == 20000);
    free(out);
    /* output past the limit is read (the command must not block on a full
     * pipe) and dropped */
    expect_line(sched, "echo first; head -c 300000 /dev/zero", "first");
}

static void test_failures(struct coro_sched *sched)
{
    expect_error(sched, "echo s3cret; exit 3", 10000, "exited with status 3");
    expect_error(sched, "true", 10000, "printed nothing");
    expect_error(sched, "echo; echo second", 10000, "printed nothing");
    expect_error(sched, "printf '\\r\\n'", 10000, "printed nothing");
    expect_error(sched, "printf 'a\\000b\\n'", 10000, "printed a NUL byte");
    expect_error(sched, "head -c 70000 /dev/zero | tr '\\0' y", 10000,
                 "printed a first line longer than 65536 bytes");
    expect_error(sched, "kill -9 $$", 10000, "was killed by signal 9");
    expect_error(sched, "no-such-command-for-tests 2>/dev/null", 10000, "exited with status 127");
    /* the deadline ends a command that does not finish, output or not */
    expect_error(sched, "echo early; exec sleep 30", 300, "did not finish within 300 ms");
    expect_error(sched, "exec sleep 30 >/dev/null", 1000, "did not finish within 1 s");
}

static void command_main(struct coro *self, void *arg)
{
    struct coro_sched *sched = arg;
    (void)self;
    expect_line(sched, "echo s3cret", "s3cret");
    expect_line(sched, "printf 'tok en\\r\\nsecond line\\n'", "tok en");
    expect_line(sched, "printf no-newline", "no-newline");
    expect_line(sched, "echo \"$0\"", "/bin/sh");
    test_large_line(sched);
    test_failures(sched);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct coro_sched *sched = coro_sched_new(&loop);
    coro_detach(coro_spawn(sched, command_main, sched, 0));
    CHECK_INT(coro_sched_run(sched), 0);
    coro_sched_free(&sched);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_INT(uv_loop_close(&loop), 0);
    CHECK_INT(waitpid(-1, NULL, WNOHANG), -1);
    CHECK_INT(errno, ECHILD);
    return check_finish();
}
