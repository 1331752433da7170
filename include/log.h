/*
 * Logging: informational messages and warnings to standard error or the
 * configured logfile, each line prefixed by the log-prefix template
 * (%n component, %m mailbox, %?X?then&else? conditionals); debug lines
 * (IMAP traffic) only with --debug.
 *
 * A struct logger is owned by main() and passed down; there is no global.
 */
#ifndef INTERIMAP_LOG_H
#define INTERIMAP_LOG_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>

struct logger;

/* prefix NULL means the default "%?n?%?m?%n(%m)&%n?: ?". Returns NULL with
 * err set if the template is malformed or the logfile cannot be opened. */
struct logger *logger_new(const char *logfile, const char *prefix, char *err, size_t errlen);
void logger_free(struct logger **lg);

void logger_set_quiet(struct logger *lg, bool quiet);
/* 0: off, 1: traffic with credentials redacted, 2+: everything. */
void logger_set_debug(struct logger *lg, int level);
int logger_debug_level(const struct logger *lg);

/* component: "local", "remote", "database" or NULL; mailbox may be NULL. */
void log_info(struct logger *lg, const char *component, const char *mailbox, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void log_warn(struct logger *lg, const char *component, const char *mailbox, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Errors are printed even with -q. */
void log_error(struct logger *lg, const char *component, const char *mailbox, const char *fmt,
               ...) __attribute__((format(printf, 4, 5)));
void log_debug(struct logger *lg, const char *component, const char *mailbox, const char *fmt,
               ...) __attribute__((format(printf, 4, 5)));

/* Expands a log-prefix template (exposed for tests). Returns the number of
 * bytes written (truncated to buflen-1), or -1 if the template is invalid. */
int log_prefix_expand(const char *tmpl, const char *component, const char *mailbox, char *buf,
                      size_t buflen);

#endif
