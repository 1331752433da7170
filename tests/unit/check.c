/* The counters and failure messages behind check.h. */
#include "check.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static int checks_run, checks_failed;

static bool check_count(bool ok)
{
    checks_run++;
    if (!ok)
        checks_failed++;
    return ok;
}

bool check_true(bool ok, const char *file, int line, const char *expr)
{
    if (!check_count(ok))
        fprintf(stderr, "%s:%d: check failed: %s\n", file, line, expr);
    return ok;
}

bool check_int(long long got, long long want, const char *file, int line, const char *got_expr,
               const char *want_expr)
{
    bool ok = check_count(got == want);
    if (!ok)
        fprintf(stderr, "%s:%d: check failed: %s == %s (%lld, expected %lld)\n", file, line,
                got_expr, want_expr, got, want);
    return ok;
}

bool check_uint(unsigned long long got, unsigned long long want, const char *file, int line,
                const char *got_expr, const char *want_expr)
{
    bool ok = check_count(got == want);
    if (!ok)
        fprintf(stderr, "%s:%d: check failed: %s == %s (%llu, expected %llu)\n", file, line,
                got_expr, want_expr, got, want);
    return ok;
}

bool check_str(const char *got, const char *want, const char *file, int line, const char *got_expr,
               const char *want_expr)
{
    bool same = got == NULL || want == NULL ? got == want : strcmp(got, want) == 0;
    if (!check_count(same))
        fprintf(stderr, "%s:%d: check failed: %s equals %s (\"%s\", expected \"%s\")\n", file, line,
                got_expr, want_expr, got ? got : "(null)", want ? want : "(null)");
    return same;
}

bool check_failf(const char *file, int line, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    check_count(false);
    fprintf(stderr, "%s:%d: check failed: %s\n", file, line, msg);
    return false;
}

int check_failures(void)
{
    return checks_failed;
}

int check_finish(void)
{
    if (checks_run == 0) {
        fprintf(stderr, "no check ran: the test tested nothing\n");
        return 1;
    }
    printf("%d checks, %d failed\n", checks_run, checks_failed);
    fflush(stdout);
    return checks_failed ? 1 : 0;
}
