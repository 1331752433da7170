/* The tunnel transport with real commands: cat (echo), a shell command that
 * prints and exits (end of stream), standard error handling, failures. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "coro/coro.h"
#include "errors.h"
#include "net/stream.h"
#include "net/transport.h"

/* Reads until end of stream; returns the number of bytes. */
static size_t read_all(struct stream *s, char *buf, size_t cap)
{
    size_t got = 0;
    ssize_t n;
    while ((n = stream_read(s, buf + got, cap - got)) > 0)
        got += (size_t)n;
    if (n < 0)
        fprintf(stderr, "read: %s\n", s->error);
    CHECK_INT(n, 0);
    return got;
}

static struct stream *spawn_ok(struct coro_sched *sched, const char *cmd, bool null_stderr)
{
    struct stream *s = NULL;
    char err[256] = "";
    int r = transport_tunnel_spawn(sched, cmd, null_stderr, &s, err, sizeof err);
    if (r < 0)
        fprintf(stderr, "%s\n", err);
    CHECK_INT(r, 0);
    CHECK(s != NULL);
    stream_set_timeouts(s, 10000, 10000);
    return s;
}

#define BIG (2u << 20)

static unsigned char pattern(size_t i)
{
    return (unsigned char)(i * 7u + (i >> 11));
}

struct big {
    struct stream *s;
    size_t written;
};

/* writes while the main coroutine reads the same stream */
static void big_writer(struct coro *self, void *arg)
{
    struct big *b = arg;
    unsigned char chunk[16384];
    while (b->written < BIG) {
        for (size_t i = 0; i < sizeof chunk; i++)
            chunk[i] = pattern(b->written + i);
        CHECK_INT(stream_write(b->s, chunk, sizeof chunk), 0);
        b->written += sizeof chunk;
    }
}

static void test_cat(struct coro *self, struct coro_sched *sched)
{
    struct stream *s = spawn_ok(sched, "cat", false);
    char buf[64];
    CHECK_INT(stream_write(s, "hello\r\n", 7), 0);
    size_t got = 0;
    while (got < 7) {
        ssize_t n = stream_read(s, buf + got, sizeof buf - got);
        CHECK(n > 0);
        got += (size_t)n;
    }
    CHECK(memcmp(buf, "hello\r\n", 7) == 0);

    /* more than every buffer on the way holds: only works if reading and
     * writing really proceed at once */
    struct big b = {.s = s};
    struct coro *w = coro_spawn(sched, big_writer, &b, 0);
    unsigned char rbuf[5000];
    for (got = 0; got < BIG;) {
        ssize_t n = stream_read(s, rbuf, sizeof rbuf);
        CHECK(n > 0);
        for (ssize_t i = 0; i < n; i++)
            CHECK(rbuf[i] == pattern(got + (size_t)i));
        got += (size_t)n;
    }
    coro_join(self, w);

    /* a read deadline, and its message */
    stream_set_timeouts(s, 100, 100);
    CHECK_INT(stream_read(s, buf, sizeof buf), -ETIMEDOUT);
    CHECK_STR(s->error, "timed out after 100 ms waiting for data from tunnel 'cat'");
    stream_free(&s); /* cat sees end of input and exits; the loop reaps it */
}

static void test_exit(struct coro_sched *sched)
{
    struct stream *s = spawn_ok(sched, "printf '* OK hi\\r\\n'; exit 0", false);
    char buf[64];
    size_t n = read_all(s, buf, sizeof buf);
    CHECK_INT(n, 9);
    CHECK(memcmp(buf, "* OK hi\r\n", 9) == 0);
    /* the command is gone: writing fails with a clear message */
    CHECK_INT(stream_write(s, "x", 1), -EPIPE);
    CHECK_STR(s->error, "write to tunnel 'printf '* OK hi\\r\\n'; exit 0': broken pipe");
    stream_free(&s);
}

/* Runs a command that writes to stderr while our stderr is a file; returns
 * what reached that file. */
static void stderr_check(struct coro_sched *sched, bool null_stderr, const char *expect)
{
    char path[] = "/tmp/interimap-tunnel-stderr-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    unlink(path);
    fflush(stderr);
    int saved = dup(STDERR_FILENO);
    dup2(fd, STDERR_FILENO);
    struct stream *s = spawn_ok(sched, "echo to-stderr >&2; echo to-stdout", null_stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);
    char buf[64];
    size_t n = read_all(s, buf, sizeof buf); /* end of stream: the command has finished */
    CHECK_INT(n, 10);
    CHECK(memcmp(buf, "to-stdout\n", 10) == 0);
    stream_free(&s);
    char got[64] = "";
    ssize_t len = pread(fd, got, sizeof got - 1, 0);
    CHECK(len >= 0);
    got[len] = '\0';
    CHECK_STR(got, expect);
    close(fd);
}

static void test_failures(struct coro_sched *sched)
{
    struct stream *s = NULL;
    char err[256];
    /* no shell metacharacters: exec'd directly, so a missing program is
     * reported at once (a shell would start, then exit 127) */
    int r = transport_tunnel_spawn(sched, "no-such-command-for-tests --flag=1", false, &s, err,
                                   sizeof err);
    CHECK_INT(r, -ENOENT);
    CHECK(s == NULL);
    CHECK_STR(err, "cannot run tunnel command 'no-such-command-for-tests --flag=1': no such file "
                   "or directory");
    r = transport_tunnel_spawn(sched, " \t ", false, &s, err, sizeof err);
    CHECK_INT(r, ERR_CONFIG);
    CHECK(s == NULL);
    /* through the shell it starts, and ends at once */
    s = spawn_ok(sched, "no-such-command-for-tests; exit 3", true);
    char buf[16];
    CHECK_INT(read_all(s, buf, sizeof buf), 0);
    stream_free(&s);
    /* words split on any white space, arguments passed as they are */
    s = spawn_ok(sched, "printf  %s,%s.\t a=1  b@c", false);
    CHECK_INT(read_all(s, buf, sizeof buf), 8);
    CHECK(memcmp(buf, "a=1,b@c.", 8) == 0);
    stream_free(&s);
}

/* Commands that outlive their connection: one ignores its input
 * closing, the other TERM as well. Both are ended (TERM, then KILL) once
 * the stream is freed, so the loop does not wait for them forever. */
static pid_t stubborn[2];

static void test_stubborn(struct coro_sched *sched)
{
    const char *cmds[2] = {
        "echo $$; exec 0<&- 1>&-; while :; do sleep 0.1; done",
        "trap '' TERM; echo $$; exec 0<&- 1>&-; while :; do sleep 0.1; done",
    };
    for (int i = 0; i < 2; i++) {
        struct stream *s = spawn_ok(sched, cmds[i], false);
        char buf[32] = "";
        size_t n = read_all(s, buf, sizeof buf - 1);
        CHECK(n > 1);
        stubborn[i] = (pid_t)atol(buf);
        CHECK(stubborn[i] > 1 && kill(stubborn[i], 0) == 0);
        stream_free(&s);
    }
}

static void tunnel_main(struct coro *self, void *arg)
{
    struct coro_sched *sched = arg;
    test_cat(self, sched);
    test_exit(sched);
    stderr_check(sched, true, "");
    stderr_check(sched, false, "to-stderr\n");
    test_failures(sched);
    test_stubborn(sched);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct coro_sched *sched = coro_sched_new(&loop);
    coro_detach(coro_spawn(sched, tunnel_main, sched, 0));
    /* returns once every child has exited and been reaped */
    CHECK_INT(coro_sched_run(sched), 0);
    CHECK_INT(coro_sched_count(sched), 0);
    coro_sched_free(&sched);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_INT(uv_loop_close(&loop), 0);
    /* the stubborn commands were ended and reaped */
    for (int i = 0; i < 2; i++)
        CHECK(stubborn[i] > 1 && kill(stubborn[i], 0) < 0 && errno == ESRCH);
    /* no child left behind, not even a zombie */
    CHECK_INT(waitpid(-1, NULL, WNOHANG), -1);
    CHECK_INT(errno, ECHILD);
    return check_finish();
}
