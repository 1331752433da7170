/*
 * Reading a message's Message-ID and INTERNALDATE for its fingerprint:
 * see include/sync/fptext.h.
 */
#include "sync/fptext.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* Whether line starts with the field name `name` followed by a colon. */
static bool field_is(const char *line, size_t len, const char *name)
{
    size_t n = strlen(name);
    if (len <= n || strncasecmp(line, name, n) != 0)
        return false;
    size_t i = n;
    while (i < len && (line[i] == ' ' || line[i] == '\t'))
        i++;
    return i < len && line[i] == ':';
}

size_t fp_msgid(const char *hdr, size_t len, char *out, size_t cap)
{
    size_t pos = 0, n = 0;
    bool in_field = false;
    while (pos < len) {
        const char *line = hdr + pos;
        const char *nl = memchr(line, '\n', len - pos);
        size_t ll = nl ? (size_t)(nl - line) + 1 : len - pos;
        pos += ll;
        size_t body = ll;
        while (body && (line[body - 1] == '\n' || line[body - 1] == '\r'))
            body--;
        if (body == 0)
            break; /* end of the header */
        if (in_field && (line[0] == ' ' || line[0] == '\t')) {
            /* a folded continuation of the field */
        } else if (in_field) {
            break;
        } else if (field_is(line, body, "Message-ID")) {
            in_field = true;
            const char *colon = memchr(line, ':', body);
            size_t skip = (size_t)(colon - line) + 1;
            line += skip;
            body -= skip;
        } else {
            continue;
        }
        for (size_t i = 0; i < body && n < cap; i++)
            if (!isspace((unsigned char)line[i]))
                out[n++] = line[i];
    }
    return n;
}

void fp_scan_reset(struct fp_scan *sc)
{
    sc->len = 0;
    sc->done = false;
}

void fp_scan_fini(struct fp_scan *sc)
{
    free(sc->buf);
    sc->buf = NULL;
    fp_scan_reset(sc);
}

/* Whether the collected text ends with an empty line (the header's end). */
static bool at_empty_line(const struct fp_scan *sc)
{
    const char *b = sc->buf;
    size_t n = sc->len;
    if (n == 0 || b[n - 1] != '\n')
        return false;
    if (n == 1 || (n == 2 && b[0] == '\r'))
        return true; /* no header at all */
    return b[n - 2] == '\n' || (n >= 3 && b[n - 2] == '\r' && b[n - 3] == '\n');
}

void fp_scan_feed(struct fp_scan *sc, const char *buf, size_t len)
{
    if (sc->done)
        return;
    if (!sc->buf && !(sc->buf = malloc(FP_SCAN_MAX))) {
        sc->done = true; /* no Message-ID then: size and date still count */
        return;
    }
    /* line by line, up to the empty line that ends the header: the body
     * is not copied */
    size_t room = FP_SCAN_MAX - sc->len;
    size_t take = len < room ? len : room;
    size_t i = 0;
    while (i < take && !sc->done) {
        const char *nl = memchr(buf + i, '\n', take - i);
        size_t upto = nl ? (size_t)(nl - buf) + 1 : take;
        memcpy(sc->buf + sc->len, buf + i, upto - i);
        sc->len += upto - i;
        i = upto;
        sc->done = nl && at_empty_line(sc);
    }
    if (sc->len == FP_SCAN_MAX)
        sc->done = true;
}

size_t fp_scan_msgid(const struct fp_scan *sc, char *out, size_t cap)
{
    return sc->buf ? fp_msgid(sc->buf, sc->len, out, cap) : 0;
}

/* Reads exactly n digits at *p; -1 if they are not there. Never moves
 * past the string's end. */
static int digits(const char **p, int n)
{
    int v = 0;
    for (int i = 0; i < n; i++, (*p)++) {
        if (**p < '0' || **p > '9')
            return -1;
        v = v * 10 + (**p - '0');
    }
    return v;
}

/* Moves past c if *p is c. */
static bool take(const char **p, char c)
{
    if (**p != c)
        return false;
    (*p)++;
    return true;
}

int64_t fp_date(const char *s)
{
    static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
    while (*s == ' ')
        s++;
    int day = digits(&s, 1);
    if (day >= 0 && *s >= '0' && *s <= '9')
        day = day * 10 + digits(&s, 1);
    if (day < 0 || !take(&s, '-'))
        return -1;
    int mon = -1;
    for (int i = 0; i < 12 && mon < 0; i++)
        if (strncasecmp(s, months + 3 * i, 3) == 0)
            mon = i;
    if (mon < 0)
        return -1;
    s += 3; /* three characters matched, none of them the end */
    int year = take(&s, '-') ? digits(&s, 4) : -1;
    int hh = year >= 0 && take(&s, ' ') ? digits(&s, 2) : -1;
    int mm = hh >= 0 && take(&s, ':') ? digits(&s, 2) : -1;
    int ss = mm >= 0 && take(&s, ':') ? digits(&s, 2) : -1;
    if (ss < 0 || !take(&s, ' ') || (*s != '+' && *s != '-'))
        return -1;
    char sign = *s++;
    int zone = digits(&s, 4);
    if (zone < 0)
        return -1;
    struct tm tm = {.tm_year = year - 1900,
                    .tm_mon = mon,
                    .tm_mday = day,
                    .tm_hour = hh,
                    .tm_min = mm,
                    .tm_sec = ss};
    int64_t t = (int64_t)timegm(&tm);
    int64_t off = (int64_t)(zone / 100) * 3600 + (int64_t)(zone % 100) * 60;
    return sign == '+' ? t - off : t + off;
}
