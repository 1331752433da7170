/*
 * Progress line tests: the text of a line (counts, sizes, the rate once
 * bytes have flowed for a while, truncation to the terminal width) and
 * what is written to the terminal (a pipe here) when a mailbox starts,
 * when the line is hidden and shown again around a log line, and at the
 * end.
 */
#include "progress.h"
#include "check.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define ERASE "\r\033[K"

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Everything written to the pipe so far. */
static char *drain(int fd)
{
    static char buf[8192];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    buf[n > 0 ? n : 0] = '\0';
    return buf;
}

static bool starts_with(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

static void test_format(void)
{
    int fds[2];
    CHECK(pipe(fds) == 0);
    struct progress *p = progress_new(fds[1]);
    CHECK(p != NULL);
    char line[512];

    progress_mailbox(p, "Archive/2023", 2, 5);
    size_t n = progress_format(p, now_ns(), line, sizeof line, 200);
    CHECK(strcmp(line, "[2/5] Archive/2023: 0 message(s), 0 B | total 0 message(s), 0 B") == 0);
    CHECK(n == strlen(line));

    progress_copied(p, 1024 * 1024);
    progress_copied(p, 2 * 1024 * 1024);
    progress_copied(p, 512);
    progress_format(p, now_ns(), line, sizeof line, 200);
    /* no rate in the first half second: it would say nothing yet */
    CHECK(strcmp(line,
                 "[2/5] Archive/2023: 3 message(s), 3.00 MiB | total 3 message(s), 3.00 MiB") == 0);

    /* seconds later, a rate (its value depends on the clock) */
    progress_format(p, now_ns() + 2000000000u, line, sizeof line, 200);
    CHECK(starts_with(line, "[2/5] Archive/2023: 3 message(s), 3.00 MiB | total 3 message(s), "
                            "3.00 MiB, "));
    CHECK(strlen(line) > 6 && strcmp(line + strlen(line) - 6, " MiB/s") == 0);

    /* the next mailbox starts its own counts; the totals go on */
    progress_mailbox(p, "INBOX", 3, 5);
    progress_copied(p, 100);
    progress_format(p, now_ns(), line, sizeof line, 200);
    CHECK(starts_with(line, "[3/5] INBOX: 1 message(s), 100 B | total 4 message(s), 3.00 MiB"));

    /* one column short of the terminal */
    n = progress_format(p, now_ns(), line, sizeof line, 20);
    CHECK(n == 19 && strlen(line) == 19);
    CHECK(strcmp(line, "[3/5] INBOX: 1 mess") == 0);

    progress_free(&p);
    CHECK(p == NULL);
    progress_free(&p);
    progress_free(NULL);
    close(fds[0]);
    close(fds[1]);
}

static void test_drawing(void)
{
    int fds[2];
    CHECK(pipe(fds) == 0);
    fcntl(fds[0], F_SETFL, O_NONBLOCK);
    struct progress *p = progress_new(fds[1]);

    /* nothing to hide or show before a mailbox starts */
    progress_hide(p);
    progress_show(p);
    CHECK(strcmp(drain(fds[0]), "") == 0);

    progress_mailbox(p, "INBOX", 1, 1);
    const char *out = drain(fds[0]);
    CHECK(starts_with(out, ERASE "[1/1] INBOX: 0 message(s)"));
    CHECK(strchr(out, '\n') == NULL);

    /* a log line: out of the way, then back */
    progress_hide(p);
    CHECK(strcmp(drain(fds[0]), ERASE) == 0);
    progress_hide(p);
    CHECK(strcmp(drain(fds[0]), "") == 0);
    progress_show(p);
    CHECK(starts_with(drain(fds[0]), ERASE "[1/1] INBOX: "));

    /* copies within the interval are counted, not drawn */
    progress_copied(p, 10);
    progress_copied(p, 10);
    CHECK(strcmp(drain(fds[0]), "") == 0);

    /* the end draws the final counts and erases them */
    progress_end(p);
    out = drain(fds[0]);
    CHECK(starts_with(out, ERASE "[1/1] INBOX: 2 message(s), 20 B | total 2 message(s), 20 B"));
    CHECK(strlen(out) > strlen(ERASE) && strcmp(out + strlen(out) - strlen(ERASE), ERASE) == 0);
    /* after the end, a log line brings nothing back */
    progress_show(p);
    progress_end(p);
    CHECK(strcmp(drain(fds[0]), "") == 0);

    /* NULL does nothing */
    progress_mailbox(NULL, "x", 1, 1);
    progress_copied(NULL, 1);
    progress_hide(NULL);
    progress_show(NULL);
    progress_end(NULL);

    progress_free(&p);
    close(fds[0]);
    close(fds[1]);
}

int main(void)
{
    test_format();
    test_drawing();
    return check_finish();
}
