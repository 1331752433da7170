/*
 * Unit tests of --debug trace redaction (src/imap/trace.c): which parts of
 * the lines we send are credentials, and what reaches the log at debug
 * levels 0, 1 and 2.
 */
#include "check.h"
#include "imap/trace.h"
#include "log.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Standard error goes to an unnamed temporary file for the duration of a
 * test, then comes back as one string (caller frees). */
static FILE *captured;
static int saved_stderr = -1;

static void capture_stderr(void)
{
    captured = tmpfile();
    if (captured == NULL) {
        perror("tmpfile");
        exit(1);
    }
    fflush(stderr);
    saved_stderr = dup(STDERR_FILENO);
    dup2(fileno(captured), STDERR_FILENO);
}

static char *release_stderr(void)
{
    fflush(stderr);
    dup2(saved_stderr, STDERR_FILENO);
    close(saved_stderr);
    long n = ftell(captured);
    char *text = calloc(1, n > 0 ? (size_t)n + 1 : 1);
    rewind(captured);
    if (text != NULL && n > 0 && fread(text, 1, (size_t)n, captured) != (size_t)n)
        text[0] = '\0';
    fclose(captured);
    return text;
}

struct redact_case {
    const char *line;
    bool sensitive;
    const char *want;
};

static const struct redact_case redact_cases[] = {
    {"a1 LOGIN joe secret", false, "a1 LOGIN [REDACTED]"},
    {"a1 login \"joe\" \"s p\"", false, "a1 login [REDACTED]"},
    {"a1 LOGIN {3+}", false, "a1 LOGIN [REDACTED]"},
    {"a2 AUTHENTICATE PLAIN AGpvZQBzZWNyZXQ=", false, "a2 AUTHENTICATE PLAIN [REDACTED]"},
    {"a2 authenticate plain =", false, "a2 authenticate plain [REDACTED]"},
    {"a2 AUTHENTICATE PLAIN", false, "a2 AUTHENTICATE PLAIN"},
    {"AGpvZQBzZWNyZXQ=", true, "[REDACTED]"},
    {"a3 SELECT INBOX", false, "a3 SELECT INBOX"},
    {"a3 LOGINX foo", false, "a3 LOGINX foo"},
    {"LOGIN", false, "LOGIN"},
    {"", false, ""},
};

static void test_redact(void)
{
    char buf[128], small[8];

    for (size_t i = 0; i < sizeof(redact_cases) / sizeof(redact_cases[0]); i++) {
        const struct redact_case *c = &redact_cases[i];
        size_t n = imap_trace_redact(c->line, strlen(c->line), c->sensitive, buf, sizeof(buf));
        CHECK_UINT(n, strlen(c->want));
        CHECK_STR(buf, c->want);
    }
    /* Truncated output, full length returned; the secret never appears. */
    CHECK(imap_trace_redact("a1 LOGIN u p", 12, false, small, sizeof(small)) == 19);
    CHECK_STR(small, "a1 LOGI");
    CHECK(imap_trace_redact("a1 LOGIN u p", 12, false, NULL, 0) == 19);
}

static void test_traffic(void)
{
    char err[128];
    struct logger *lg = logger_new(NULL, NULL, err, sizeof(err));
    char *out;

    CHECK(lg != NULL);
    capture_stderr();
    imap_trace_line(lg, "remote", false, "a1 LOGIN u p", 12, false); /* level 0: nothing */
    logger_set_debug(lg, 1);
    imap_trace_line(lg, "remote", false, "a1 LOGIN u p", 12, false);
    imap_trace_line(lg, "remote", true, "a1 OK done", 10, false);
    imap_trace_line(lg, "remote", false, "c2VjcmV0", 8, true);
    imap_trace_line(lg, "remote", true, "+ chall", 7, true);
    logger_set_debug(lg, 2);
    imap_trace_line(lg, "local", false, "a1 LOGIN u p", 12, false);
    imap_trace_line(lg, "local", false, "c2VjcmV0", 8, true);
    out = release_stderr();
    CHECK_STR(out, "remote: C: a1 LOGIN [REDACTED]\n"
                   "remote: S: a1 OK done\n"
                   "remote: C: [REDACTED]\n"
                   "remote: S: [REDACTED]\n"
                   "local: C: a1 LOGIN u p\n"
                   "local: C: c2VjcmV0\n");
    free(out);
    logger_free(&lg);
}

int main(void)
{
    test_redact();
    test_traffic();
    return check_finish();
}
