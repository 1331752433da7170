/*
 * The IMAP side of --debug traces: which parts of the lines we send are
 * credentials, and their removal before the line reaches the log. The
 * logger itself knows nothing of IMAP.
 */
#ifndef INTERIMAP_IMAP_TRACE_H
#define INTERIMAP_IMAP_TRACE_H

#include <stdbool.h>
#include <stddef.h>

struct logger;

/*
 * Writes into buf (NUL-terminated, truncated like snprintf) the form of a
 * line the client sent that is safe to log below debug level 2, and returns
 * the length the full result needs:
 *   - "TAG LOGIN ..." becomes "TAG LOGIN [REDACTED]";
 *   - "TAG AUTHENTICATE MECH INITIAL-RESPONSE" becomes
 *     "TAG AUTHENTICATE MECH [REDACTED]";
 *   - a line the caller flags as sensitive (a SASL response sent after a
 *     "+" continuation, or a line that continues a LOGIN after a literal)
 *     becomes "[REDACTED]";
 *   - anything else is copied unchanged.
 * Command names are matched without regard to case.
 */
size_t imap_trace_redact(const char *line, size_t len, bool sensitive, char *buf, size_t buflen);

/*
 * Logs one line of IMAP traffic (without its CRLF) at debug level 1 or
 * more, as "C: line" (sent by us) or "S: line" (from the server). Below
 * level 2, lines we sent are passed through imap_trace_redact, and a
 * server line flagged sensitive is replaced by "[REDACTED]".
 */
void imap_trace_line(struct logger *lg, const char *component, bool from_server, const char *line,
                     size_t len, bool sensitive);

#endif
