/*
 * Logging: informational messages and warnings to standard error or the
 * configured logfile, each line prefixed by the log-prefix template
 * (%n component, %m mailbox, %?X?then&else? conditionals); debug lines
 * (IMAP traffic) only with --debug.
 *
 * Where lines go, as in the reference implementation:
 *   - info, warnings and errors: standard error, and also the logfile
 *     (with a timestamp) when one is configured;
 *   - debug lines: the logfile when configured, otherwise standard error.
 * Logfile lines start with "Mon dd HH:MM:SS.uuuuuu " (local time, C
 * locale month names, microseconds zero-padded to six digits). Each line
 * is written with one write(2), so concurrent appenders do not interleave.
 *
 * A struct logger is owned by main() and passed down; there is no global.
 * Every log function accepts lg == NULL and then behaves as a logger with
 * the default prefix writing to standard error (useful before the
 * configuration is read). Logging never yields.
 */
#ifndef INTERIMAP_LOG_H
#define INTERIMAP_LOG_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>

struct logger;

/* prefix NULL means the default "%?n?%?m?%n(%m)&%n?: ?". Returns NULL with
 * err set if the template is malformed or the logfile cannot be opened.
 * The logfile is opened for appending (created with mode 0600 when
 * missing) and closed on exec. */
struct logger *logger_new(const char *logfile, const char *prefix, char *err, size_t errlen);
void logger_free(struct logger **lg);

/* Quiet (-q) drops informational messages: warnings and errors are still
 * printed, as by the reference tool. */
void logger_set_quiet(struct logger *lg, bool quiet);
/* fn(ctx, true) is called before a line is written to standard error and
 * fn(ctx, false) after: a display sharing the terminal (the progress line)
 * gets out of the way. NULL removes it. */
typedef void (*logger_tty_guard_fn)(void *ctx, bool before);
void logger_set_tty_guard(struct logger *lg, logger_tty_guard_fn fn, void *ctx);
/* 0: off, 1: traffic with credentials redacted, 2+: everything. */
void logger_set_debug(struct logger *lg, int level);
int logger_debug_level(const struct logger *lg);

/* component: "local", "remote", "database" or NULL; mailbox may be NULL. */
void log_info(struct logger *lg, const char *component, const char *mailbox, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void log_warn(struct logger *lg, const char *component, const char *mailbox, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* log_warn prefixes the message with "WARNING: ", log_error with
 * "ERROR: " (after the log-prefix). Both are printed even with -q. */
void log_error(struct logger *lg, const char *component, const char *mailbox, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void log_debug(struct logger *lg, const char *component, const char *mailbox, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* How many errors were logged so far (so a caller can tell whether a
 * failure was explained already). */
unsigned long logger_error_count(const struct logger *lg);

/* Expands a log-prefix template (exposed for tests). Returns the number of
 * bytes written (truncated to buflen-1), or -1 if the template is invalid.
 * An empty component or mailbox counts as absent in conditionals. */
int log_prefix_expand(const char *tmpl, const char *component, const char *mailbox, char *buf,
                      size_t buflen);

/*
 * 0 if tmpl is a valid log-prefix, -1 if not. The expansion follows the
 * reference implementation exactly (conditionals rewritten until none is
 * left, then \&, \? and \\ unescaped, then %%, %n and %m replaced); a
 * template is invalid when, for some combination of component and mailbox
 * being present or absent, a '%' would be printed as is (an unknown
 * specifier such as %x, a lone '%', an unterminated or malformed
 * conditional), or when it contains control characters.
 */
int log_prefix_check(const char *tmpl);

/*
 * Logs one line of a protocol trace at debug level 1 or more, as the prefix
 * followed by the line, unchanged: what must not appear (credentials) is
 * the caller's to remove (see imap/trace.h).
 */
void log_trace_line(struct logger *lg, const char *component, const char *prefix, const char *line,
                    size_t len);

/* Formats a logfile timestamp for the time tv_sec/tv_nsec (exposed for
 * tests). Returns the length written, or -1 if buflen is too small. */
int log_timestamp_format(long long tv_sec, long tv_nsec, char *buf, size_t buflen);

#endif
