/*
 * Modified UTF-7 (RFC 3501 section 5.1.3).
 *
 * Printable US-ASCII (0x20-0x7e) stands for itself, "&" is written "&-",
 * and every run of other characters is written as "&", the modified BASE64
 * ("," instead of "/", no padding) of its UTF-16BE form, and "-".
 *
 * The decoder accepts exactly what the encoder produces, because a mailbox
 * name has to map to one spelling: two spellings of one name would make
 * two names on the other server. So it refuses printable ASCII or NUL
 * inside a shifted run, two runs back to back ("&AOk-&AOk-" is "&AOkA6Q-"),
 * a run that leaves bits (or non-zero padding bits) over, unpaired UTF-16
 * surrogates, a missing "-", and any byte outside 0x20-0x7e.
 */
#include "imap/utf7.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const char b64_chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == ',')
        return 63;
    return -1;
}

static bool is_direct(uint32_t cp)
{
    return cp >= 0x20 && cp <= 0x7e;
}

/* Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF.
 * Returns the length of the sequence at s, or 0 if it is invalid. */
static size_t utf8_next(const unsigned char *s, size_t len, uint32_t *cp)
{
    if (s[0] < 0x80) {
        *cp = s[0];
        return 1;
    }
    size_t n;
    uint32_t c, min;
    if ((s[0] & 0xe0) == 0xc0) {
        n = 2;
        c = s[0] & 0x1f;
        min = 0x80;
    } else if ((s[0] & 0xf0) == 0xe0) {
        n = 3;
        c = s[0] & 0x0f;
        min = 0x800;
    } else if ((s[0] & 0xf8) == 0xf0) {
        n = 4;
        c = s[0] & 0x07;
        min = 0x10000;
    } else {
        return 0;
    }
    if (len < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        c = (c << 6) | (s[i] & 0x3f);
    }
    if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
        return 0;
    *cp = c;
    return n;
}

static size_t utf8_put(char *out, uint32_t cp)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

struct b64_writer {
    char *out;
    size_t n;
    uint32_t bits;
    unsigned nbits;
};

static void b64_put16(struct b64_writer *w, uint32_t unit)
{
    w->bits = (w->bits << 16) | unit;
    w->nbits += 16;
    while (w->nbits >= 6) {
        w->nbits -= 6;
        w->out[w->n++] = b64_chars[(w->bits >> w->nbits) & 0x3f];
    }
    w->bits &= (1u << w->nbits) - 1;
}

static void b64_close(struct b64_writer *w)
{
    if (w->nbits)
        w->out[w->n++] = b64_chars[(w->bits << (6 - w->nbits)) & 0x3f];
    w->bits = 0;
    w->nbits = 0;
    w->out[w->n++] = '-';
}

char *utf7_encode(const char *utf8, size_t len)
{
    /* Worst case: a lone control byte becomes "&AAE-" (5 bytes); inside a
     * run every 16 bits take at most 3 characters. */
    if (len > (SIZE_MAX - 1) / 5) {
        errno = ENOMEM;
        return NULL;
    }
    char *out = malloc(len * 5 + 1);
    if (!out) {
        errno = ENOMEM;
        return NULL;
    }
    const unsigned char *s = (const unsigned char *)utf8;
    struct b64_writer w = {.out = out};
    bool shifted = false;
    size_t i = 0;
    while (i < len) {
        uint32_t cp;
        size_t n = utf8_next(s + i, len - i, &cp);
        if (n == 0 || cp == 0)
            goto invalid;
        i += n;
        if (is_direct(cp)) {
            if (shifted) {
                b64_close(&w);
                shifted = false;
            }
            out[w.n++] = (char)cp;
            if (cp == '&')
                out[w.n++] = '-';
            continue;
        }
        if (!shifted) {
            out[w.n++] = '&';
            shifted = true;
        }
        if (cp >= 0x10000) {
            cp -= 0x10000;
            b64_put16(&w, 0xd800 | (cp >> 10));
            b64_put16(&w, 0xdc00 | (cp & 0x3ff));
        } else {
            b64_put16(&w, cp);
        }
    }
    if (shifted)
        b64_close(&w);
    out[w.n] = '\0';
    return out;

invalid:
    free(out);
    errno = EINVAL;
    return NULL;
}

char *utf7_decode(const char *mutf7, size_t len)
{
    /* Direct characters and "&-" shrink or keep their size; a run spends
     * 16/6 characters per UTF-16 unit and gets at most 3 bytes out of it
     * (4 per surrogate pair), so the output is below 9/8 of the input. */
    if (len > (SIZE_MAX - 8) / 5 * 4) {
        errno = ENOMEM;
        return NULL;
    }
    char *out = malloc(len + len / 4 + 8);
    if (!out) {
        errno = ENOMEM;
        return NULL;
    }
    const unsigned char *s = (const unsigned char *)mutf7;
    size_t n = 0, i = 0;
    bool after_run = false; /* the previous byte closed a base64 run */
    while (i < len) {
        unsigned char c = s[i++];
        if (!is_direct(c))
            goto invalid;
        if (c != '&') {
            out[n++] = (char)c;
            after_run = false;
            continue;
        }
        if (i < len && s[i] == '-') {
            out[n++] = '&';
            i++;
            after_run = false;
            continue;
        }
        if (after_run)
            goto invalid; /* the encoder would have made one run */
        uint32_t bits = 0, high = 0;
        unsigned nbits = 0;
        size_t units = 0;
        for (;;) {
            if (i == len)
                goto invalid; /* no closing "-" */
            c = s[i++];
            if (c == '-')
                break;
            int v = b64_value(c);
            if (v < 0)
                goto invalid;
            bits = (bits << 6) | (uint32_t)v;
            nbits += 6;
            if (nbits < 16)
                continue;
            nbits -= 16;
            uint32_t unit = (bits >> nbits) & 0xffff;
            bits &= (1u << nbits) - 1;
            units++;
            if (high) {
                if (unit < 0xdc00 || unit > 0xdfff)
                    goto invalid;
                n += utf8_put(out + n, 0x10000 + ((high - 0xd800) << 10) + (unit - 0xdc00));
                high = 0;
            } else if (unit >= 0xd800 && unit <= 0xdbff) {
                high = unit;
            } else if ((unit >= 0xdc00 && unit <= 0xdfff) || unit == 0 || is_direct(unit)) {
                /* a lone low surrogate, or a character that must be written
                 * directly (or not at all) */
                goto invalid;
            } else {
                n += utf8_put(out + n, unit);
            }
        }
        /* what is left must be the zero padding of the last character */
        if (units == 0 || high || nbits >= 6 || bits != 0)
            goto invalid;
        after_run = true;
    }
    out[n] = '\0';
    return out;

invalid:
    free(out);
    errno = EINVAL;
    return NULL;
}
