/*
 * The checks every C unit test uses. A failed check prints file:line, the
 * expression and (for the typed variants) both values, marks the test
 * failed and lets it go on, so one run reports every failure. The test's
 * main ends with `return check_finish();`, which fails the test if any check
 * failed or if none ran at all: a test that checked nothing has not passed.
 *
 * Each check is an expression giving true when it held, so a test can add
 * context or skip what depends on it: `if (!CHECK(p != NULL)) return;`.
 * The counters live in check.c, shared by every file of one test program.
 */
#ifndef INTERIMAP_TESTS_CHECK_H
#define INTERIMAP_TESTS_CHECK_H

#include <stdbool.h>
#include <stddef.h>

#define CHECK(cond) check_true((cond) ? true : false, __FILE__, __LINE__, #cond)

/* Signed and unsigned integers of any width, compared exactly. */
#define CHECK_INT(got, want)                                                                       \
    check_int((long long)(got), (long long)(want), __FILE__, __LINE__, #got, #want)
#define CHECK_UINT(got, want)                                                                      \
    check_uint((unsigned long long)(got), (unsigned long long)(want), __FILE__, __LINE__, #got,    \
               #want)

/* NUL-terminated strings; NULL equals only NULL. */
#define CHECK_STR(got, want) check_str((got), (want), __FILE__, __LINE__, #got, #want)

/* A failure found by other means than one expression, with a message. */
#define CHECK_FAIL(...) check_failf(__FILE__, __LINE__, __VA_ARGS__)

bool check_true(bool ok, const char *file, int line, const char *expr);
bool check_int(long long got, long long want, const char *file, int line, const char *got_expr,
               const char *want_expr);
bool check_uint(unsigned long long got, unsigned long long want, const char *file, int line,
                const char *got_expr, const char *want_expr);
bool check_str(const char *got, const char *want, const char *file, int line, const char *got_expr,
               const char *want_expr);
/* Always counts as one failed check; returns false. */
__attribute__((format(printf, 3, 4))) bool check_failf(const char *file, int line, const char *fmt,
                                                       ...);

/* Failed checks so far, to tell whether a stretch of checks went wrong. */
int check_failures(void);

/* Prints the tally; returns the exit status: 0 only if at least one check
 * ran and none failed. */
int check_finish(void);

#endif
