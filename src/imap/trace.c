/*
 * Credential redaction for --debug traces of the IMAP conversation.
 */
#include "imap/trace.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log.h"

/* Length of the word at s[i] (up to a space or the end). */
static size_t word_len(const char *s, size_t len, size_t i)
{
    size_t j = i;

    while (j < len && s[j] != ' ')
        j++;
    return j - i;
}

static size_t copy_out(char *buf, size_t buflen, const char *a, size_t alen, const char *b)
{
    size_t blen = b != NULL ? strlen(b) : 0, total = alen + blen, n;

    if (buflen == 0)
        return total;
    n = alen < buflen - 1 ? alen : buflen - 1;
    memcpy(buf, a, n);
    if (blen > 0 && n < buflen - 1) {
        size_t m = blen < buflen - 1 - n ? blen : buflen - 1 - n;
        memcpy(buf + n, b, m);
        n += m;
    }
    buf[n] = '\0';
    return total;
}

size_t imap_trace_redact(const char *line, size_t len, bool sensitive, char *buf, size_t buflen)
{
    static const char redacted[] = "[REDACTED]";
    size_t tag, cmd, at;

    if (sensitive)
        return copy_out(buf, buflen, redacted, sizeof(redacted) - 1, NULL);

    tag = word_len(line, len, 0);
    if (tag == 0 || tag >= len)
        goto unchanged;
    at = tag + 1;
    cmd = word_len(line, len, at);
    if (cmd == 5 && strncasecmp(line + at, "LOGIN", 5) == 0) {
        at += cmd;
        if (at >= len)
            goto unchanged;
        /* Keep "TAG LOGIN ", drop the credentials. */
        return copy_out(buf, buflen, line, at + 1, redacted);
    }
    if (cmd == 12 && strncasecmp(line + at, "AUTHENTICATE", 12) == 0) {
        at += cmd;
        if (at >= len)
            goto unchanged;
        at += 1 + word_len(line, len, at + 1); /* the mechanism */
        if (at >= len)
            goto unchanged; /* no initial response: nothing secret */
        return copy_out(buf, buflen, line, at + 1, redacted);
    }
unchanged:
    return copy_out(buf, buflen, line, len, NULL);
}

void imap_trace_line(struct logger *lg, const char *component, bool from_server, const char *line,
                     size_t len, bool sensitive)
{
    int level = logger_debug_level(lg);
    const char *prefix = from_server ? "S: " : "C: ";

    if (level < 1)
        return;
    if (level >= 2 || (from_server && !sensitive)) {
        log_trace_line(lg, component, prefix, line, len);
        return;
    }
    if (from_server) {
        log_trace_line(lg, component, prefix, "[REDACTED]", 10);
        return;
    }
    size_t need = imap_trace_redact(line, len, sensitive, NULL, 0);
    char *tmp = malloc(need + 1);
    if (tmp == NULL)
        return; /* a trace line lost, nothing else */
    imap_trace_redact(line, len, sensitive, tmp, need + 1);
    log_trace_line(lg, component, prefix, tmp, need);
    free(tmp);
}
