/*
 * Helper commands that print a secret (see include/net/command.h).
 */
#include "net/command.h"

#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "coro/await.h"
#include "coro/coro.h"
#include "errors.h"

/* What the exit callback tells the running coroutine. The record lives on
 * the coroutine's stack: the process handle points at it only while the
 * coroutine is there to read it. */
struct command_exit {
    struct coro *waiter; /* set while the coroutine sleeps until the exit */
    bool exited;
    int64_t status;
    int term_signal;
};

static void process_closed_cb(uv_handle_t *h)
{
    free(h);
}

static void command_exit_cb(uv_process_t *proc, int64_t status, int term_signal)
{
    struct command_exit *ex = proc->data;
    if (ex) {
        ex->exited = true;
        ex->status = status;
        ex->term_signal = term_signal;
        if (ex->waiter)
            coro_wake(ex->waiter);
    }
    uv_close((uv_handle_t *)proc, process_closed_cb);
}

static uint64_t now_ms(void)
{
    return uv_hrtime() / 1000000U;
}

/* Reads the whole output into buf (up to cap bytes; the rest is read and
 * dropped so the command never blocks on a full pipe). Returns 0 at end of
 * stream, or a negative code (-ETIMEDOUT at the deadline). */
static int command_drain(struct coro_sched *sched, struct await_reader *rd, char *buf, size_t cap,
                         size_t *len, uint64_t deadline)
{
    char sink[4096];
    for (;;) {
        uint64_t now = now_ms();
        if (now >= deadline)
            return -ETIMEDOUT;
        bool keep = *len < cap;
        ssize_t n = await_read(sched, rd, keep ? buf + *len : sink, keep ? cap - *len : sizeof sink,
                               deadline - now);
        if (n == 0)
            return 0;
        if (n < 0)
            return n == UV_EOF ? 0 : (int)n;
        if (keep)
            *len += (size_t)n;
    }
}

/* Sleeps until the command has exited or the deadline. */
static int command_wait_exit(struct coro_sched *sched, struct command_exit *ex, uint64_t deadline)
{
    ex->waiter = coro_current(sched);
    int r = 0;
    while (!ex->exited) {
        uint64_t now = now_ms();
        if (now >= deadline) {
            r = -ETIMEDOUT;
            break;
        }
        r = await_sleep(sched, deadline - now);
        if (r < 0)
            break;
    }
    ex->waiter = NULL;
    return ex->exited ? 0 : r;
}

static int command_check_output(const char *buf, size_t len, size_t *line_len, char *err,
                                size_t errlen)
{
    const char *nl = memchr(buf, '\n', len);
    if (!nl && len == COMMAND_MAX_OUTPUT) {
        snprintf(err, errlen, "printed a first line longer than %zu bytes", COMMAND_MAX_OUTPUT);
        return ERR_COMMAND;
    }
    size_t n = nl ? (size_t)(nl - buf) : len;
    if (n && buf[n - 1] == '\r')
        n--;
    if (n == 0) {
        snprintf(err, errlen, "printed nothing");
        return ERR_COMMAND;
    }
    if (memchr(buf, '\0', n)) {
        snprintf(err, errlen, "printed a NUL byte");
        return ERR_COMMAND;
    }
    *line_len = n;
    return 0;
}

int command_read_line(struct coro_sched *sched, const char *command, uint64_t timeout_ms,
                      char **out, char *err, size_t errlen)
{
    *out = NULL;
    uint64_t deadline = now_ms() + timeout_ms;
    uv_loop_t *loop = coro_sched_loop(sched);
    char *buf = malloc(COMMAND_MAX_OUTPUT);
    uv_process_t *proc = calloc(1, sizeof *proc);
    if (!buf || !proc) {
        free(buf);
        free(proc);
        snprintf(err, errlen, "could not be started: %s", err_str(-ENOMEM));
        return -ENOMEM;
    }

    uv_pipe_t pipe;
    uv_pipe_init(loop, &pipe, 0);
    uv_stdio_container_t stdio[3] = {
        {.flags = UV_INHERIT_FD, .data.fd = STDIN_FILENO},
        {.flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE, .data.stream = (uv_stream_t *)&pipe},
        {.flags = UV_INHERIT_FD, .data.fd = STDERR_FILENO},
    };
    char *argv[] = {"/bin/sh", "-c", (char *)command, NULL};
    uv_process_options_t opts = {
        .exit_cb = command_exit_cb,
        .file = argv[0],
        .args = argv,
        .stdio_count = 3,
        .stdio = stdio,
    };
    struct command_exit ex = {0};
    proc->data = &ex;
    int r = uv_spawn(loop, proc, &opts);
    if (r < 0) {
        snprintf(err, errlen, "could not be started: %s", err_str(r));
        uv_close((uv_handle_t *)proc, process_closed_cb); /* registered even so */
        await_close(sched, (uv_handle_t *)&pipe);
        free(buf);
        return r;
    }

    struct await_reader rd;
    await_reader_init(&rd, (uv_stream_t *)&pipe);
    size_t len = 0;
    r = command_drain(sched, &rd, buf, COMMAND_MAX_OUTPUT, &len, deadline);
    if (r == 0)
        r = command_wait_exit(sched, &ex, deadline);
    if (!ex.exited) {
        /* given up on (deadline, cancellation): the exit callback, which
         * still comes, frees the handle */
        proc->data = NULL;
        uv_process_kill(proc, SIGTERM);
    }
    await_reader_fini(&rd);
    await_close(sched, (uv_handle_t *)&pipe);

    size_t line = 0;
    if (r == -ETIMEDOUT) {
        if (timeout_ms % 1000)
            snprintf(err, errlen, "did not finish within %llu ms", (unsigned long long)timeout_ms);
        else
            snprintf(err, errlen, "did not finish within %llu s",
                     (unsigned long long)timeout_ms / 1000);
        r = ERR_COMMAND;
    } else if (r < 0) {
        snprintf(err, errlen, "could not be read: %s", err_str(r));
    } else if (ex.term_signal) {
        snprintf(err, errlen, "was killed by signal %d", ex.term_signal);
        r = ERR_COMMAND;
    } else if (ex.status != 0) {
        snprintf(err, errlen, "exited with status %d", (int)ex.status);
        r = ERR_COMMAND;
    } else {
        r = command_check_output(buf, len, &line, err, errlen);
    }
    if (r == 0) {
        *out = malloc(line + 1);
        if (*out) {
            memcpy(*out, buf, line);
            (*out)[line] = '\0';
        } else {
            snprintf(err, errlen, "could not be read: %s", err_str(-ENOMEM));
            r = -ENOMEM;
        }
    }
    explicit_bzero(buf, COMMAND_MAX_OUTPUT);
    free(buf);
    return r;
}
