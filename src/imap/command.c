/*
 * Typed encoders for command lines (see include/imap/command.h).
 *
 *   astring        = 1*ASTRING-CHAR / string      ; we write atoms or quoted
 *   quoted         = DQUOTE *QUOTED-CHAR DQUOTE
 *   QUOTED-CHAR    = <any TEXT-CHAR except quoted-specials> / "\" quoted-specials
 *   list-mailbox   = 1*list-char / string
 *   sequence-set   = (seq-number / seq-range) ["," sequence-set]
 */
#include "imap/command.h"

#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "imap/values.h"
#include "util/array.h"

void imap_cmdbuf_fini(struct imap_cmdbuf *b)
{
    free(b->data);
    memset(b, 0, sizeof *b);
}

static int put(struct imap_cmdbuf *b, const char *s, size_t n)
{
    char *d = array_reserve(b->data, &b->cap, b->len + n + 1, 1, 256);
    if (!d)
        return -ENOMEM;
    b->data = d;
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

static int puts_(struct imap_cmdbuf *b, const char *s)
{
    return put(b, s, strlen(s));
}

/* ATOM-CHAR: any CHAR except atom-specials ( ) { SP CTL % * " \ ] */
static bool is_atom_char(unsigned char ch)
{
    if (ch <= 0x20 || ch >= 0x7f)
        return false;
    return !strchr("(){%*\"\\]", ch);
}

/* Shows a refused value in an error message (the logger escapes it). */
static int refuse(char *err, size_t errlen, const char *what, const char *s, size_t n)
{
    if (n > 60)
        n = 60;
    snprintf(err, errlen, "%s '%.*s'", what, (int)n, s);
    return -EINVAL;
}

enum astring_kind { KIND_ASTRING, KIND_MAILBOX, KIND_PATTERN };

static int put_astring(struct imap_cmdbuf *b, const char *s, enum astring_kind kind, char *err,
                       size_t errlen)
{
    size_t n = strlen(s);
    bool atom = n > 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '\r' || ch == '\n' || ch >= 0x80)
            return refuse(err, errlen,
                          kind == KIND_ASTRING ? "cannot send a string holding line breaks or "
                                                 "8-bit bytes:"
                                               : "cannot send a mailbox name holding line breaks "
                                                 "or 8-bit bytes:",
                          s, n);
        if (kind != KIND_ASTRING && (ch < 0x20 || ch == 0x7f))
            return refuse(err, errlen, "cannot send a mailbox name holding control characters:", s,
                          n);
        if (!is_atom_char(ch) || kind == KIND_PATTERN)
            atom = false; /* patterns are always quoted */
    }
    if (atom && !(n == 3 && strncasecmp(s, "NIL", 3) == 0))
        return put(b, s, n);
    int r = put(b, "\"", 1);
    for (size_t i = 0; i < n && r == 0; i++) {
        if (s[i] == '"' || s[i] == '\\')
            r = put(b, "\\", 1);
        if (r == 0)
            r = put(b, &s[i], 1);
    }
    return r ? r : put(b, "\"", 1);
}

static int put_flags(struct imap_cmdbuf *b, const char *s, char *err, size_t errlen)
{
    size_t n = strlen(s);
    size_t start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && s[i] != ' ')
            continue;
        if (!imap_flag_valid(s + start, i - start) && !(n == 0 && i == 0))
            return refuse(err, errlen, "cannot send an invalid flag list:", s, n);
        start = i + 1;
    }
    return put(b, s, n);
}

bool imap_sequence_set_valid(const char *s, size_t len)
{
    /* seq-number = nz-number / "*"; nz-number = digit-nz *DIGIT */
    size_t i = 0;
    for (;;) {
        for (int part = 0; part < 2; part++) {
            if (i < len && s[i] == '*') {
                i++;
            } else {
                if (i >= len || s[i] < '1' || s[i] > '9')
                    return false;
                uint64_t v = 0;
                while (i < len && s[i] >= '0' && s[i] <= '9') {
                    v = v * 10 + (uint64_t)(s[i++] - '0');
                    if (v > UINT32_MAX)
                        return false;
                }
            }
            if (part == 0 && i < len && s[i] == ':')
                i++;
            else
                break;
        }
        if (i == len)
            return true;
        if (s[i++] != ',')
            return false;
    }
}

int imap_cmdbuf_vappend(struct imap_cmdbuf *b, char *err, size_t errlen, const char *fmt,
                        va_list ap)
{
    size_t start = b->len;
    int r = 0;
    if (errlen)
        err[0] = '\0';
    for (const char *p = fmt; *p && r == 0; p++) {
        if (*p != '%') {
            r = put(b, p, 1);
            continue;
        }
        char tmp[32];
        switch (*++p) {
        case 'a': {
            const char *s = va_arg(ap, const char *);
            if (strpbrk(s, "\r\n"))
                r = refuse(err, errlen, "cannot send text holding a line break:", s, strlen(s));
            else
                r = puts_(b, s);
            break;
        }
        case 's':
            r = put_astring(b, va_arg(ap, const char *), KIND_ASTRING, err, errlen);
            break;
        case 'm':
            r = put_astring(b, va_arg(ap, const char *), KIND_MAILBOX, err, errlen);
            break;
        case 'P':
            r = put_astring(b, va_arg(ap, const char *), KIND_PATTERN, err, errlen);
            break;
        case 'F':
            r = put_flags(b, va_arg(ap, const char *), err, errlen);
            break;
        case 'D': {
            const char *s = va_arg(ap, const char *);
            char canon[IMAP_DATE_TIME_LEN + 1];
            if (!imap_date_time_parse(s, strlen(s), canon)) {
                r = refuse(err, errlen, "cannot send an invalid date-time:", s, strlen(s));
                break;
            }
            r = put(b, "\"", 1);
            if (r == 0)
                r = puts_(b, canon);
            if (r == 0)
                r = put(b, "\"", 1);
            break;
        }
        case 'S': {
            const char *s = va_arg(ap, const char *);
            if (!imap_sequence_set_valid(s, strlen(s)))
                r = refuse(err, errlen, "cannot send an invalid sequence set:", s, strlen(s));
            else
                r = puts_(b, s);
            break;
        }
        case 'u':
            snprintf(tmp, sizeof tmp, "%" PRIu32, va_arg(ap, uint32_t));
            r = puts_(b, tmp);
            break;
        case 'U':
            snprintf(tmp, sizeof tmp, "%" PRIu64, va_arg(ap, uint64_t));
            r = puts_(b, tmp);
            break;
        case '%':
            r = put(b, "%", 1);
            break;
        default:
            snprintf(err, errlen, "unknown directive in a command template");
            r = -EINVAL;
            break;
        }
    }
    if (r == -ENOMEM)
        snprintf(err, errlen, "out of memory");
    if (r < 0) {
        b->len = start;
        if (b->data)
            b->data[start] = '\0';
    }
    return r;
}

int imap_cmdbuf_append(struct imap_cmdbuf *b, char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int r = imap_cmdbuf_vappend(b, err, errlen, fmt, ap);
    va_end(ap);
    return r;
}
