/*
 * Logger and log-prefix templates.
 *
 * The template language is the one of the reference implementation, whose
 * expander is a loop of regular-expression substitutions. To print the
 * same prefix for the same template, including odd ones, this file
 * reproduces that procedure step by step rather than a cleaner grammar:
 *
 *   1. Rewrite conditionals, scanning left to right and retrying at every
 *      byte, until a pass rewrites nothing. A conditional is
 *          cond := "%?" ALPHA "?" body [ "&" body ] "?"
 *          body := { run | cond }
 *          run  := 1*( any byte but % & ? \  |  "%" any byte but ?  |
 *                      "\" one of & ? \ )
 *      and is replaced by its first body when the letter's value is
 *      non-empty, by its second body (or nothing) otherwise. Only n and m
 *      have values. Bodies are copied raw: nested conditionals are
 *      rewritten by the next pass.
 *   2. Replace \&, \? and \\ by the character.
 *   3. Replace %%, %n and %m; any other '%' stays as it is, which is what
 *      log_prefix_check() rejects.
 */
#include "log.h"
#include "util/array.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_PREFIX "%?n?%?m?%n(%m)&%n?: ?"

/* Nesting deeper than this is treated as malformed (bounds the recursion;
 * real templates nest two or three levels). */
#define MAX_COND_DEPTH 32

struct logger {
    int fd; /* logfile, or -1 */
    char *prefix;
    bool quiet;
    int debug;
    logger_tty_guard_fn guard;
    void *guard_ctx;
    unsigned long errors; /* log_error calls so far */
};

/* ---- growable buffer ---- */

struct strbuf {
    char *data;
    size_t len, cap;
    bool failed; /* an allocation failed: contents are incomplete */
};

static void sb_add(struct strbuf *b, const char *s, size_t n)
{
    if (b->failed || n == 0)
        return;
    char *nd = array_reserve(b->data, &b->cap, b->len + n + 1, 1, 128);
    if (nd == NULL) {
        b->failed = true;
        return;
    }
    b->data = nd;
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static void sb_addc(struct strbuf *b, char c)
{
    sb_add(b, &c, 1);
}

static void sb_addz(struct strbuf *b, const char *s)
{
    sb_add(b, s, strlen(s));
}

static void sb_vprintf(struct strbuf *b, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));

static void sb_vprintf(struct strbuf *b, const char *fmt, va_list ap)
{
    va_list ap2;
    char small[256];
    int n;

    va_copy(ap2, ap);
    n = vsnprintf(small, sizeof(small), fmt, ap2);
    va_end(ap2);
    if (n < 0) {
        b->failed = true;
        return;
    }
    if ((size_t)n < sizeof(small)) {
        sb_add(b, small, (size_t)n);
        return;
    }
    /* Make room, then format again in place. */
    if (b->failed)
        return;
    char *nd = array_reserve(b->data, &b->cap, b->len + (size_t)n + 1, 1, 128);
    if (nd == NULL) {
        b->failed = true;
        return;
    }
    b->data = nd;
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    b->len += (size_t)n;
}

static void sb_free(struct strbuf *b)
{
    free(b->data);
    memset(b, 0, sizeof(*b));
}

/* ---- template expansion ---- */

/* [[:alpha:]] as Perl applies it to a byte string with Unicode rules:
 * ASCII letters and the Latin-1 letters. */
static bool is_template_alpha(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == 0xaa || c == 0xb5 ||
           c == 0xba || (c >= 0xc0 && c <= 0xd6) || (c >= 0xd8 && c <= 0xf6) || c >= 0xf8;
}

struct cond {
    unsigned char letter;
    size_t then_start, then_end;
    bool has_else;
    size_t else_start, else_end;
};

static size_t cond_match(const char *s, size_t len, size_t i, int depth, struct cond *c);

/* Longest body starting at j; returns where it ends. */
static size_t body_scan(const char *s, size_t len, size_t j, int depth)
{
    while (j < len) {
        char ch = s[j];
        if (ch == '%') {
            if (j + 1 >= len)
                break;
            if (s[j + 1] == '?') {
                struct cond inner;
                size_t e = cond_match(s, len, j, depth + 1, &inner);
                if (e == 0)
                    break;
                j = e;
            } else {
                j += 2;
            }
        } else if (ch == '\\') {
            if (j + 1 < len && (s[j + 1] == '&' || s[j + 1] == '?' || s[j + 1] == '\\'))
                j += 2;
            else
                break;
        } else if (ch == '&' || ch == '?') {
            break;
        } else {
            j++;
        }
    }
    return j;
}

/* Matches a conditional at s[i]; returns the index just past it, or 0. */
static size_t cond_match(const char *s, size_t len, size_t i, int depth, struct cond *c)
{
    size_t j;

    if (depth > MAX_COND_DEPTH || i + 4 > len || s[i] != '%' || s[i + 1] != '?' ||
        !is_template_alpha((unsigned char)s[i + 2]) || s[i + 3] != '?')
        return 0;
    c->letter = (unsigned char)s[i + 2];
    c->then_start = i + 4;
    j = body_scan(s, len, i + 4, depth);
    c->then_end = j;
    c->has_else = false;
    if (j < len && s[j] == '&') {
        size_t k = body_scan(s, len, j + 1, depth);
        if (k < len && s[k] == '?') {
            c->has_else = true;
            c->else_start = j + 1;
            c->else_end = k;
            return k + 1;
        }
        return 0;
    }
    if (j < len && s[j] == '?')
        return j + 1;
    return 0;
}

/*
 * Expands tmpl into out. Returns the number of '%' left unexpanded (0 for
 * a well-formed template) or -1 when out of memory.
 */
static int prefix_expand(const char *tmpl, const char *component, const char *mailbox,
                         struct strbuf *out)
{
    struct strbuf cur = {0}, next = {0};
    bool n_set = component != NULL && *component != '\0';
    bool m_set = mailbox != NULL && *mailbox != '\0';
    bool changed;
    int stray = 0;

    sb_addz(&cur, tmpl);
    sb_add(&cur, "", 0);
    do {
        changed = false;
        next.len = 0;
        sb_add(&next, "", 0);
        for (size_t i = 0; i < cur.len;) {
            struct cond c;
            size_t end = cond_match(cur.data, cur.len, i, 0, &c);
            if (end > 0) {
                bool set = c.letter == 'n' ? n_set : c.letter == 'm' ? m_set : false;
                if (set)
                    sb_add(&next, cur.data + c.then_start, c.then_end - c.then_start);
                else if (c.has_else)
                    sb_add(&next, cur.data + c.else_start, c.else_end - c.else_start);
                i = end;
                changed = true;
            } else {
                sb_addc(&next, cur.data[i]);
                i++;
            }
        }
        {
            struct strbuf t = cur;
            cur = next;
            next = t;
        }
    } while (changed && !cur.failed);

    /* Unescape, then replace the specifiers, in one left-to-right pass each. */
    next.len = 0;
    sb_add(&next, "", 0);
    for (size_t i = 0; i < cur.len; i++) {
        if (cur.data[i] == '\\' && i + 1 < cur.len &&
            (cur.data[i + 1] == '&' || cur.data[i + 1] == '?' || cur.data[i + 1] == '\\'))
            i++;
        sb_addc(&next, cur.data[i]);
    }
    for (size_t i = 0; i < next.len; i++) {
        char ch = next.data[i];
        if (ch == '%' && i + 1 < next.len) {
            char spec = next.data[i + 1];
            if (spec == '%' || spec == 'n' || spec == 'm') {
                if (spec == '%')
                    sb_addc(out, '%');
                else if (spec == 'n' && component != NULL)
                    sb_addz(out, component);
                else if (spec == 'm' && mailbox != NULL)
                    sb_addz(out, mailbox);
                i++;
                continue;
            }
        }
        if (ch == '%')
            stray++;
        sb_addc(out, ch);
    }
    if (cur.failed || next.failed || out->failed)
        stray = -1;
    sb_free(&cur);
    sb_free(&next);
    return stray;
}

int log_prefix_check(const char *tmpl)
{
    static const char *const values[] = {NULL, "x"};

    if (tmpl == NULL)
        return -1;
    for (const unsigned char *p = (const unsigned char *)tmpl; *p != '\0'; p++)
        if (*p < 0x20 || (*p >= 0x7f && *p <= 0x9f))
            return -1;
    for (int n = 0; n < 2; n++) {
        for (int m = 0; m < 2; m++) {
            struct strbuf out = {0};
            int stray = prefix_expand(tmpl, values[n], values[m], &out);
            sb_free(&out);
            if (stray != 0)
                return -1;
        }
    }
    return 0;
}

int log_prefix_expand(const char *tmpl, const char *component, const char *mailbox, char *buf,
                      size_t buflen)
{
    struct strbuf out = {0};
    size_t n;

    if (log_prefix_check(tmpl) < 0)
        return -1;
    if (prefix_expand(tmpl, component, mailbox, &out) < 0) {
        sb_free(&out);
        return -1;
    }
    n = out.len;
    if (buflen == 0) {
        sb_free(&out);
        return 0;
    }
    if (n > buflen - 1)
        n = buflen - 1;
    if (n > 0)
        memcpy(buf, out.data, n);
    buf[n] = '\0';
    sb_free(&out);
    return n > INT32_MAX ? INT32_MAX : (int)n;
}

/* ---- logger ---- */

struct logger *logger_new(const char *logfile, const char *prefix, char *err, size_t errlen)
{
    struct logger *lg;

    if (prefix == NULL)
        prefix = DEFAULT_PREFIX;
    if (log_prefix_check(prefix) < 0) {
        snprintf(err, errlen, "invalid log-prefix template");
        return NULL;
    }
    lg = calloc(1, sizeof(*lg));
    if (lg == NULL)
        goto fail_nomem;
    lg->fd = -1;
    lg->prefix = strdup(prefix);
    if (lg->prefix == NULL)
        goto fail_nomem;
    if (logfile != NULL) {
        lg->fd = open(logfile, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
        if (lg->fd < 0) {
            snprintf(err, errlen, "cannot open %s: %s", logfile, strerror(errno));
            goto fail;
        }
    }
    return lg;

fail_nomem:
    snprintf(err, errlen, "out of memory");
fail:
    logger_free(&lg);
    return NULL;
}

void logger_free(struct logger **lg)
{
    if (lg == NULL || *lg == NULL)
        return;
    if ((*lg)->fd >= 0)
        close((*lg)->fd);
    free((*lg)->prefix);
    free(*lg);
    *lg = NULL;
}

void logger_set_quiet(struct logger *lg, bool quiet)
{
    if (lg != NULL)
        lg->quiet = quiet;
}

void logger_set_tty_guard(struct logger *lg, logger_tty_guard_fn fn, void *ctx)
{
    if (lg != NULL) {
        lg->guard = fn;
        lg->guard_ctx = ctx;
    }
}

void logger_set_debug(struct logger *lg, int level)
{
    if (lg != NULL)
        lg->debug = level < 0 ? 0 : level;
}

int logger_debug_level(const struct logger *lg)
{
    return lg != NULL ? lg->debug : 0;
}

int log_timestamp_format(long long tv_sec, long tv_nsec, char *buf, size_t buflen)
{
    time_t t = (time_t)tv_sec;
    struct tm tm;
    size_t n;
    int m;

    if (localtime_r(&t, &tm) == NULL)
        return -1;
    /* Month abbreviations in English regardless of the environment: the
     * program never calls setlocale(), so strftime uses the C locale. */
    n = strftime(buf, buflen, "%b %e %H:%M:%S", &tm);
    if (n == 0)
        return -1;
    m = snprintf(buf + n, buflen - n, ".%06ld", tv_nsec / 1000);
    if (m < 0 || (size_t)m >= buflen - n)
        return -1;
    return (int)(n + (size_t)m);
}

/* Writes all of s[0..len), retrying on EINTR and short writes. Failures
 * are ignored: there is nowhere left to report them. */
static void write_all(int fd, const char *s, size_t len)
{
    while (len > 0) {
        ssize_t w = write(fd, s, len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        s += w;
        len -= (size_t)w;
    }
}

/*
 * Appends s[0..len) with everything that could end the line or drive a
 * terminal shown as \xHH: C0 controls (CR, LF, ESC, BEL, TAB...), DEL,
 * bytes that are not UTF-8, and UTF-8 encodings of C1 controls (U+0080 to
 * U+009F, which some terminals obey). Mailbox names, response texts and
 * protocol lines come from the servers: without this a server could
 * forge log lines or rewrite the user's terminal.
 */
static void sb_add_escaped(struct strbuf *b, const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0, run = 0;

    while (i < len) {
        unsigned char c = p[i];
        size_t n = 0; /* length of a valid, printable UTF-8 sequence at i */
        if (c >= 0x20 && c < 0x7f) {
            n = 1;
        } else if (c >= 0xc2 && c <= 0xf4) {
            size_t want = c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
            uint32_t cp = c & (want == 2 ? 0x1f : want == 3 ? 0x0f : 0x07);
            size_t k = 1;
            while (k < want && i + k < len && (p[i + k] & 0xc0) == 0x80)
                cp = cp << 6 | (p[i + k++] & 0x3f);
            bool ok = k == want && !(want == 3 && cp < 0x800) && !(want == 4 && cp < 0x10000) &&
                      cp <= 0x10ffff && !(cp >= 0xd800 && cp <= 0xdfff) &&
                      !(cp >= 0x80 && cp <= 0x9f);
            if (ok)
                n = want;
        }
        if (n) {
            run += n;
            i += n;
            continue;
        }
        sb_add(b, s + i - run, run);
        run = 0;
        char hex[5];
        snprintf(hex, sizeof(hex), "\\x%02X", c);
        sb_add(b, hex, 4);
        i++;
    }
    sb_add(b, s + len - run, run);
}

enum log_dest {
    DEST_BOTH,  /* logfile (if any) and standard error */
    DEST_DEBUG, /* logfile if any, else standard error */
};

static void log_emit(struct logger *lg, enum log_dest dest, const char *component,
                     const char *mailbox, const char *tag, const char *body, size_t body_len)
{
    struct strbuf line = {0};
    const char *tmpl = lg != NULL ? lg->prefix : DEFAULT_PREFIX;
    int fd = lg != NULL ? lg->fd : -1;

    /* The timestamp is only for the logfile: build "TS " then the rest,
     * and write the stderr copy from past the timestamp. */
    size_t ts_len = 0;
    if (fd >= 0) {
        struct timespec now;
        char ts[64];
        int n;
        clock_gettime(CLOCK_REALTIME, &now);
        n = log_timestamp_format((long long)now.tv_sec, now.tv_nsec, ts, sizeof(ts));
        if (n > 0) {
            sb_add(&line, ts, (size_t)n);
            sb_addc(&line, ' ');
            ts_len = line.len;
        }
    }
    /* the mailbox name and the message may hold what a server sent */
    struct strbuf safe_mailbox = {0};
    if (mailbox != NULL) {
        sb_add_escaped(&safe_mailbox, mailbox, strlen(mailbox));
        sb_add(&safe_mailbox, "", 0);
        if (safe_mailbox.failed)
            goto out;
        mailbox = safe_mailbox.data;
    }
    if (prefix_expand(tmpl, component, mailbox, &line) < 0)
        goto out;
    sb_addz(&line, tag);
    sb_add_escaped(&line, body, body_len);
    sb_addc(&line, '\n');
    if (line.failed)
        goto out;

    if (fd >= 0)
        write_all(fd, line.data, line.len);
    if (dest == DEST_BOTH || fd < 0) {
        if (lg != NULL && lg->guard != NULL)
            lg->guard(lg->guard_ctx, true);
        write_all(STDERR_FILENO, line.data + ts_len, line.len - ts_len);
        if (lg != NULL && lg->guard != NULL)
            lg->guard(lg->guard_ctx, false);
    }
out:
    sb_free(&safe_mailbox);
    sb_free(&line);
}

static void log_vemit(struct logger *lg, enum log_dest dest, const char *component,
                      const char *mailbox, const char *tag, const char *fmt, va_list ap)
    __attribute__((format(printf, 6, 0)));

static void log_vemit(struct logger *lg, enum log_dest dest, const char *component,
                      const char *mailbox, const char *tag, const char *fmt, va_list ap)
{
    struct strbuf msg = {0};

    sb_vprintf(&msg, fmt, ap);
    if (!msg.failed)
        log_emit(lg, dest, component, mailbox, tag, msg.data != NULL ? msg.data : "", msg.len);
    sb_free(&msg);
}

void log_info(struct logger *lg, const char *component, const char *mailbox, const char *fmt, ...)
{
    va_list ap;

    if (lg != NULL && lg->quiet)
        return;
    va_start(ap, fmt);
    log_vemit(lg, DEST_BOTH, component, mailbox, "", fmt, ap);
    va_end(ap);
}

void log_warn(struct logger *lg, const char *component, const char *mailbox, const char *fmt, ...)
{
    va_list ap;

    /* -q keeps warnings, as the reference tool does: they are about
     * something the user may have to act on */
    va_start(ap, fmt);
    log_vemit(lg, DEST_BOTH, component, mailbox, "WARNING: ", fmt, ap);
    va_end(ap);
}

void log_error(struct logger *lg, const char *component, const char *mailbox, const char *fmt, ...)
{
    va_list ap;

    if (lg != NULL)
        lg->errors++;
    va_start(ap, fmt);
    log_vemit(lg, DEST_BOTH, component, mailbox, "ERROR: ", fmt, ap);
    va_end(ap);
}

unsigned long logger_error_count(const struct logger *lg)
{
    return lg != NULL ? lg->errors : 0;
}

void log_debug(struct logger *lg, const char *component, const char *mailbox, const char *fmt, ...)
{
    va_list ap;

    if (logger_debug_level(lg) < 1)
        return;
    va_start(ap, fmt);
    log_vemit(lg, DEST_DEBUG, component, mailbox, "", fmt, ap);
    va_end(ap);
}

/* ---- protocol traces ---- */

void log_trace_line(struct logger *lg, const char *component, const char *prefix, const char *line,
                    size_t len)
{
    struct strbuf body = {0};

    if (logger_debug_level(lg) < 1)
        return;
    sb_addz(&body, prefix);
    sb_add(&body, line, len);
    if (!body.failed)
        log_emit(lg, DEST_DEBUG, component, NULL, "", body.data, body.len);
    sb_free(&body);
}
