/*
 * Logger tests: log-prefix expansion (the default template, conditionals,
 * escapes, invalid templates), where each kind of line goes, the logfile
 * timestamp, quiet and debug levels, protocol trace lines.
 *
 * With --reference, compares the expander with the reference
 * implementation's (Perl) on generated templates instead; exits 77 (skip)
 * when perl or its module is missing.
 */
#include "check.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_PREFIX "%?n?%?m?%n(%m)&%n?: ?"

/* ---- expansion ---- */

struct expand_case {
    const char *tmpl, *component, *mailbox;
    const char *want; /* NULL: the template is invalid */
};

static const struct expand_case expand_cases[] = {
    /* The default template. */
    {DEFAULT_PREFIX, NULL, NULL, ""},
    {DEFAULT_PREFIX, "local", NULL, "local: "},
    {DEFAULT_PREFIX, "remote", "INBOX", "remote(INBOX): "},
    {DEFAULT_PREFIX, NULL, "INBOX", ""},
    {DEFAULT_PREFIX, "", "INBOX", ""},
    {DEFAULT_PREFIX, "local", "", "local: "},
    /* Plain specifiers. */
    {"", "local", "x", ""},
    {"%n", NULL, NULL, ""},
    {"[%n] %m: ", "local", "a/b", "[local] a/b: "},
    {"100%% %n%%", "remote", NULL, "100% remote%"},
    {"%%n", "local", NULL, "%n"},
    {"%%%n", "local", NULL, "%local"},
    /* Values are never re-read as template text. */
    {"%n %m", "%n", "\\&?%", "%n \\&?%"},
    /* Conditionals. */
    {"%?m?[%m]&-?", "x", "INBOX", "[INBOX]"},
    {"%?m?[%m]&-?", "x", NULL, "-"},
    {"%?m?[%m]?", "x", NULL, ""},
    {"%?x?yes&no?", "x", "y", "no"},
    {"%?n?%?m?A&B?&C?", "n", "m", "A"},
    {"%?n?%?m?A&B?&C?", "n", NULL, "B"},
    {"%?n?%?m?A&B?&C?", NULL, "m", "C"},
    {"%?n?&empty then?", "n", NULL, ""},
    {"%?n?&empty then?", NULL, NULL, "empty then"},
    {"%?n??", "n", NULL, ""},
    {"a%?n?b?c%?m?d?e", "n", "m", "abcde"},
    /* Escapes: inside and outside conditionals. */
    {"%?n?a\\&b\\?c\\\\d?", "n", NULL, "a&b?c\\d"},
    {"%?n?x&a\\&b?", NULL, NULL, "a&b"},
    {"x\\&y\\?z\\\\w", NULL, NULL, "x&y?z\\w"},
    {"\\q\\", NULL, NULL, "\\q\\"},
    {"what? & why", NULL, NULL, "what? & why"},
    /* "%%" inside a branch is kept as a pair and printed once. */
    {"%?n?%%&-?", "n", NULL, "%"},
    /* Invalid: a '%' that would be printed as is. */
    {"%x", "n", "m", NULL},
    {"%", NULL, NULL, NULL},
    {"abc%", NULL, NULL, NULL},
    {"%?n?abc", "n", NULL, NULL},
    {"%?n?abc&def", "n", NULL, NULL},
    {"%?1?a?", "n", NULL, NULL},
    {"%?n?a&b&c?", "n", NULL, NULL},
    {"%?n?a\\qb?", "n", NULL, NULL},
    {"%?n?%&?", NULL, NULL, NULL},   /* valid only when n is absent */
    {"%?n?ok&%y?", "n", NULL, NULL}, /* valid only when n is present */
    {"%%?n?a?", "n", NULL, NULL},    /* the conditional eats the second '%' */
    {"%?n?x?\x01", "n", NULL, NULL}, /* control character */
};

static void test_expand(void)
{
    char buf[256];

    for (size_t i = 0; i < sizeof(expand_cases) / sizeof(expand_cases[0]); i++) {
        const struct expand_case *c = &expand_cases[i];
        int n = log_prefix_expand(c->tmpl, c->component, c->mailbox, buf, sizeof(buf));
        if (c->want == NULL) {
            CHECK(n == -1);
            CHECK(log_prefix_check(c->tmpl) == -1);
            if (n != -1)
                fprintf(stderr, "  template '%s' accepted: '%s'\n", c->tmpl, buf);
        } else {
            CHECK(n == (int)strlen(c->want));
            CHECK(log_prefix_check(c->tmpl) == 0);
            if (n >= 0)
                CHECK_STR(buf, c->want);
            else
                fprintf(stderr, "  template '%s' refused\n", c->tmpl);
        }
    }
    /* Truncation. */
    CHECK(log_prefix_expand("%n: ", "remote", NULL, buf, 4) == 3);
    CHECK_STR(buf, "rem");
}

/* ---- output ---- */

static char tmpdir[256];

static char *slurp(const char *path)
{
    static char buf[8192];
    int fd = open(path, O_RDONLY);
    ssize_t n = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : -1;
    if (fd >= 0)
        close(fd);
    buf[n > 0 ? n : 0] = '\0';
    return buf;
}

static bool matches(const char *text, const char *pattern)
{
    regex_t re;
    bool ok;

    if (regcomp(&re, pattern, REG_EXTENDED | REG_NOSUB) != 0)
        return false;
    ok = regexec(&re, text, 0, NULL, 0) == 0;
    regfree(&re);
    if (!ok)
        fprintf(stderr, "  text does not match /%s/:\n%s", pattern, text);
    return ok;
}

/* Standard error goes to a file for the duration of a test. */
static int saved_stderr = -1;
static char errpath[512];

static void capture_stderr(void)
{
    int fd;
    snprintf(errpath, sizeof(errpath), "%s/stderr", tmpdir);
    fd = open(errpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    fflush(stderr);
    saved_stderr = dup(STDERR_FILENO);
    dup2(fd, STDERR_FILENO);
    close(fd);
}

static const char *release_stderr(void)
{
    dup2(saved_stderr, STDERR_FILENO);
    close(saved_stderr);
    return slurp(errpath);
}

#define TS "[A-Z][a-z][a-z] [ 123][0-9] [0-2][0-9]:[0-5][0-9]:[0-6][0-9]\\.[0-9]{6} "

static void test_output_stderr_only(void)
{
    char err[256];
    struct logger *lg = logger_new(NULL, NULL, err, sizeof(err));
    const char *out;

    CHECK(lg != NULL);
    capture_stderr();
    log_info(lg, "local", "INBOX", "UID %d from <%s>", 7, "a@b");
    log_info(lg, NULL, NULL, "no prefix");
    log_debug(lg, "remote", NULL, "hidden at level 0");
    logger_set_debug(lg, 1);
    log_debug(lg, "remote", NULL, "debug %s", "shown");
    log_warn(lg, "database", NULL, "careful");
    logger_set_quiet(lg, true);
    log_info(lg, "local", NULL, "dropped by -q");
    log_warn(lg, "local", NULL, "kept by -q");
    log_error(lg, NULL, NULL, "fatal");
    /* A NULL logger prints with the default prefix. */
    log_info(NULL, "remote", "Sent", "without logger");
    log_debug(NULL, "remote", NULL, "no debug without logger");
    out = release_stderr();
    CHECK_STR(out, "local(INBOX): UID 7 from <a@b>\n"
                   "no prefix\n"
                   "remote: debug shown\n"
                   "database: WARNING: careful\n"
                   "local: WARNING: kept by -q\n"
                   "ERROR: fatal\n"
                   "remote(Sent): without logger\n");
    CHECK(logger_debug_level(lg) == 1);
    logger_free(&lg);
    CHECK(lg == NULL);
    logger_free(&lg);
    logger_free(NULL);
}

static void test_output_logfile(void)
{
    char err[256], path[512];
    struct logger *lg;
    struct stat st;
    const char *out, *file;

    snprintf(path, sizeof(path), "%s/new.log", tmpdir);
    lg = logger_new(path, "[%n] ", err, sizeof(err));
    CHECK(lg != NULL);
    if (lg == NULL)
        return;
    CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600);
    logger_set_debug(lg, 1);
    capture_stderr();
    log_info(lg, "local", NULL, "info line");
    log_debug(lg, "remote", NULL, "debug line");
    log_error(lg, "remote", NULL, "bad");
    out = release_stderr();
    /* Debug lines go to the logfile only; the rest to both, without the
     * timestamp on standard error. */
    CHECK_STR(out, "[local] info line\n[remote] ERROR: bad\n");
    file = slurp(path);
    CHECK(matches(file, "^" TS "\\[local\\] info line\n" TS "\\[remote\\] debug line\n" TS
                        "\\[remote\\] ERROR: bad\n$"));
    logger_free(&lg);

    /* Appends to an existing file. */
    lg = logger_new(path, NULL, err, sizeof(err));
    CHECK(lg != NULL);
    capture_stderr();
    log_warn(lg, NULL, NULL, "again");
    release_stderr();
    file = slurp(path);
    CHECK(matches(file, "^" TS "\\[local\\] info line\n(.*\n){2}" TS "WARNING: again\n$"));
    logger_free(&lg);

    lg = logger_new("/nonexistent-dir/x.log", NULL, err, sizeof(err));
    CHECK(lg == NULL);
    CHECK_STR(err, "cannot open /nonexistent-dir/x.log: No such file or directory");
    lg = logger_new(NULL, "%?n?oops", err, sizeof(err));
    CHECK(lg == NULL);
    CHECK_STR(err, "invalid log-prefix template");
}

/* The guard records its calls in a string: '<' before a write to
 * standard error, '>' after. */
static void record_guard(void *ctx, bool before)
{
    char *calls = ctx;
    size_t n = strlen(calls);
    if (n + 1 < 16) {
        calls[n] = before ? '<' : '>';
        calls[n + 1] = '\0';
    }
}

static void test_tty_guard(void)
{
    char err[256], path[512], calls[16] = "";
    snprintf(path, sizeof(path), "%s/guard.log", tmpdir);
    struct logger *lg = logger_new(path, NULL, err, sizeof(err));
    CHECK(lg != NULL);
    if (lg == NULL)
        return;
    logger_set_tty_guard(lg, record_guard, calls);
    logger_set_debug(lg, 1);
    capture_stderr();
    log_info(lg, "local", NULL, "one");
    CHECK_STR(calls, "<>");
    /* a debug line goes to the logfile only: the terminal is not touched */
    log_debug(lg, "local", NULL, "two");
    CHECK_STR(calls, "<>");
    log_error(lg, NULL, NULL, "three");
    CHECK_STR(calls, "<><>");
    logger_set_tty_guard(lg, NULL, NULL);
    log_warn(lg, NULL, NULL, "four");
    CHECK_STR(calls, "<><>");
    release_stderr();
    logger_free(&lg);
}

/* Mailbox names and messages carry what servers sent: control bytes,
 * bytes that are not UTF-8 and C1 controls come out as \xHH, so a server
 * can neither forge a log line nor drive the terminal. */
static void test_escape(void)
{
    char err[256];
    struct logger *lg = logger_new(NULL, NULL, err, sizeof(err));
    const char *out;

    CHECK(lg != NULL);
    capture_stderr();
    log_error(lg, "remote", "a\r\nERROR: forged", "name \x1b[31mred\x07 tab\there");
    log_info(lg, "local", "caf\xc3\xa9", "UTF-8 kept: \xe2\x82\xac, \xf0\x9f\x93\xa7");
    log_info(lg, NULL, NULL, "bad: \xff \xc3( \xc2\x9b \xe0\x80\x80 \xed\xa0\x80 \x7f end");
    log_info(lg, NULL, NULL, "truncated at the end \xe2\x82");
    out = release_stderr();
    CHECK_STR(out, "remote(a\\x0D\\x0AERROR: forged): ERROR: name \\x1B[31mred\\x07 "
                   "tab\\x09here\n"
                   "local(caf\xc3\xa9): UTF-8 kept: \xe2\x82\xac, \xf0\x9f\x93\xa7\n"
                   "bad: \\xFF \\xC3( \\xC2\\x9B \\xE0\\x80\\x80 \\xED\\xA0\\x80 "
                   "\\x7F end\n"
                   "truncated at the end \\xE2\\x82\n");
    logger_free(&lg);
}

static void test_timestamp(void)
{
    char buf[64];

    setenv("TZ", "UTC", 1);
    tzset();
    CHECK(log_timestamp_format(0, 5000, buf, sizeof(buf)) == 22);
    CHECK_STR(buf, "Jan  1 00:00:00.000005");
    CHECK(log_timestamp_format(1700000000, 123456789, buf, sizeof(buf)) > 0);
    CHECK_STR(buf, "Nov 14 22:13:20.123456");
    CHECK(log_timestamp_format(0, 0, buf, 10) == -1);
}

/* ---- protocol traces ---- */

/* The logger prints trace lines as given: removing credentials is the IMAP
 * client's job (tests/unit/imap/test_trace.c). */
static void test_trace_line(void)
{
    char err[128];
    struct logger *lg = logger_new(NULL, NULL, err, sizeof(err));
    const char *out;

    CHECK(lg != NULL);
    capture_stderr();
    log_trace_line(lg, "remote", "C: ", "a1 NOOP", 7); /* level 0: nothing */
    logger_set_debug(lg, 1);
    log_trace_line(lg, "remote", "C: ", "a1 LOGIN u p", 12);
    log_trace_line(lg, "local", "S: ", "* OK ready, and more", 10);
    log_trace_line(lg, NULL, "", "bare", 4);
    out = release_stderr();
    CHECK_STR(out, "remote: C: a1 LOGIN u p\n"
                   "local: S: * OK ready\n"
                   "bare\n");
    logger_free(&lg);
}

/* ---- comparison with the reference implementation ---- */

static const char perl_script[] = "use strict; BEGIN { $SIG{__WARN__} = sub {} }\n"
                                  "use Net::IMAP::InterIMAP;\n"
                                  "while (my $l = <STDIN>) {\n"
                                  "  chomp $l; my ($t, $n, $m) = split /\\t/, $l, -1;\n"
                                  "  my %h = ('logger-prefix' => $t);\n"
                                  "  $h{name} = $n if $n ne ''; $h{mailbox} = $m if $m ne '';\n"
                                  "  print Net::IMAP::InterIMAP::_logger_prefix(\\%h), \"\\n\";\n"
                                  "}\n";

/* Small deterministic generator (no global state: the caller owns it). */
static unsigned next_rand(unsigned *s)
{
    *s = *s * 1103515245u + 12345u;
    return (*s >> 16) & 0x7fff;
}

static int test_reference(void)
{
    static const char *const pieces[] = {"%?n?", "%?m?", "%?x?", "?", "&", "%n", "%m", "%%", "\\&",
                                         "\\?",  "\\\\", "\\",   "%", "a", "(",  ": ", "%?"};
    static const char *const values[][2] = {{"", ""}, {"lo", ""}, {"", "mb"}, {"lo", "mb"}};
    enum { COUNT = 4000 };
    char script[512], in[512], outp[512], cmd[2048];
    char(*tmpl)[64] = calloc(COUNT, sizeof(*tmpl));
    FILE *f;
    unsigned seed = 12345;
    size_t compared = 0;

    if (tmpl == NULL)
        return 1;
    if (system("perl -MNet::IMAP::InterIMAP -e 1 >/dev/null 2>&1") != 0) {
        fprintf(stderr, "perl or Net::IMAP::InterIMAP missing: skipped\n");
        free(tmpl);
        return 77;
    }
    snprintf(script, sizeof(script), "%s/prefix.pl", tmpdir);
    snprintf(in, sizeof(in), "%s/prefix.in", tmpdir);
    snprintf(outp, sizeof(outp), "%s/prefix.out", tmpdir);
    f = fopen(script, "w");
    fputs(perl_script, f);
    fclose(f);

    /* Templates: the default one, then random concatenations of pieces,
     * each with the four presence combinations. */
    f = fopen(in, "w");
    for (int i = 0; i < COUNT; i++) {
        if (i == 0) {
            strcpy(tmpl[i], DEFAULT_PREFIX);
        } else {
            int k = 1 + (int)(next_rand(&seed) % 8);
            tmpl[i][0] = '\0';
            for (int j = 0; j < k; j++)
                strcat(tmpl[i], pieces[next_rand(&seed) % (sizeof(pieces) / sizeof(pieces[0]))]);
        }
        for (int v = 0; v < 4; v++)
            fprintf(f, "%s\t%s\t%s\n", tmpl[i], values[v][0], values[v][1]);
    }
    fclose(f);
    snprintf(cmd, sizeof(cmd), "perl '%s' < '%s' > '%s'", script, in, outp);
    if (system(cmd) != 0) {
        fprintf(stderr, "perl failed\n");
        free(tmpl);
        return 1;
    }
    f = fopen(outp, "r");
    for (int i = 0; i < COUNT; i++) {
        bool valid = log_prefix_check(tmpl[i]) == 0, percent_seen = false;
        for (int v = 0; v < 4; v++) {
            char want[512], got[512];
            if (fgets(want, sizeof(want), f) == NULL) {
                CHECK_FAIL("short output from perl");
                goto done;
            }
            want[strcspn(want, "\n")] = '\0';
            if (strchr(want, '%') != NULL)
                percent_seen = true;
            if (!valid)
                continue;
            log_prefix_expand(tmpl[i], values[v][0][0] ? values[v][0] : NULL,
                              values[v][1][0] ? values[v][1] : NULL, got, sizeof(got));
            compared++;
            if (!CHECK_STR(got, want))
                fprintf(stderr, "  template '%s' (n='%s' m='%s')\n", tmpl[i], values[v][0],
                        values[v][1]);
        }
        /* A template refused here prints a raw '%' there, for some values. */
        if (!valid) {
            CHECK(percent_seen);
            if (!percent_seen)
                fprintf(stderr, "  template '%s' refused but prints no '%%'\n", tmpl[i]);
        }
    }
done:
    fclose(f);
    free(tmpl);
    /* The generator must reach enough valid templates to mean something. */
    CHECK(compared > 2000);
    printf("%zu expansions compared\n", compared);
    return 0;
}

int main(int argc, char **argv)
{
    int r = 0;

    snprintf(tmpdir, sizeof(tmpdir), "%s/interimap-log-XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (mkdtemp(tmpdir) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    if (argc > 1 && strcmp(argv[1], "--reference") == 0) {
        r = test_reference();
    } else {
        test_expand();
        test_output_stderr_only();
        test_output_logfile();
        test_tty_guard();
        test_escape();
        test_timestamp();
        test_trace_line();
    }
    {
        char cmd[600];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", tmpdir);
    }
    if (r == 77)
        return 77;
    return check_finish() || r ? 1 : 0;
}
