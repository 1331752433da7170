/*
 * UID sets: growing, normalizing, searching, and the IMAP sequence-set
 * text in both directions (see util/uidset.h).
 */
#include "util/uidset.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/array.h"

void uidset_init(struct uidset *s)
{
    memset(s, 0, sizeof *s);
}

void uidset_fini(struct uidset *s)
{
    free(s->uids);
    memset(s, 0, sizeof *s);
}

void uidset_clear(struct uidset *s)
{
    s->count = 0;
}

static int uidset_reserve(struct uidset *s, size_t extra)
{
    if (extra > SIZE_MAX - s->count)
        return -ENOMEM;
    uint32_t *u = array_reserve(s->uids, &s->cap, s->count + extra, sizeof *u, 64);
    if (!u)
        return -ENOMEM;
    s->uids = u;
    return 0;
}

int uidset_add(struct uidset *s, uint32_t uid)
{
    if (uidset_reserve(s, 1) < 0)
        return -ENOMEM;
    s->uids[s->count++] = uid;
    return 0;
}

int uidset_add_range(struct uidset *s, uint32_t lo, uint32_t hi)
{
    if (lo > hi) {
        uint32_t t = lo;
        lo = hi;
        hi = t;
    }
    if (uidset_reserve(s, (size_t)(hi - lo) + 1) < 0)
        return -ENOMEM;
    for (uint64_t u = lo; u <= hi; u++)
        s->uids[s->count++] = (uint32_t)u;
    return 0;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

void uidset_normalize(struct uidset *s)
{
    if (s->count < 2)
        return;
    qsort(s->uids, s->count, sizeof *s->uids, cmp_u32);
    size_t o = 1;
    for (size_t i = 1; i < s->count; i++)
        if (s->uids[i] != s->uids[o - 1])
            s->uids[o++] = s->uids[i];
    s->count = o;
}

bool uidset_contains(const struct uidset *s, uint32_t uid)
{
    size_t lo = 0, hi = s->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->uids[mid] == uid)
            return true;
        if (s->uids[mid] < uid)
            lo = mid + 1;
        else
            hi = mid;
    }
    return false;
}

static bool parse_u32(const char **p, const char *end, uint32_t *out)
{
    uint64_t v = 0;
    const char *q = *p;
    if (q == end || *q < '1' || *q > '9')
        return false;
    while (q < end && *q >= '0' && *q <= '9') {
        v = v * 10 + (uint64_t)(*q - '0');
        if (v > UINT32_MAX)
            return false;
        q++;
    }
    *p = q;
    *out = (uint32_t)v;
    return true;
}

int uidset_parse(struct uidset *s, const char *text, size_t len, size_t max_range)
{
    const char *p = text, *end = text + len;
    if (p == end)
        return -EINVAL;
    while (p < end) {
        uint32_t lo, hi;
        if (!parse_u32(&p, end, &lo))
            return -EINVAL;
        hi = lo;
        if (p < end && *p == ':') {
            p++;
            if (!parse_u32(&p, end, &hi))
                return -EINVAL;
        }
        uint32_t a = lo < hi ? lo : hi, b = lo < hi ? hi : lo;
        if ((size_t)(b - a) >= max_range)
            return -EINVAL;
        if (lo <= hi) {
            if (uidset_add_range(s, lo, hi) < 0)
                return -ENOMEM;
        } else {
            /* "5:3" lists the same UIDs; keep the server's ascending order */
            if (uidset_add_range(s, hi, lo) < 0)
                return -ENOMEM;
        }
        if (p < end) {
            if (*p != ',')
                return -EINVAL;
            p++;
            if (p == end)
                return -EINVAL;
        }
    }
    return 0;
}

char *uidset_format(const struct uidset *s, size_t *pos, size_t max_len)
{
    size_t i = *pos;
    if (i >= s->count)
        return NULL;
    size_t cap = 256, len = 0;
    char *out = malloc(cap);
    if (!out)
        return NULL;
    out[0] = '\0';
    while (i < s->count) {
        size_t j = i;
        while (j + 1 < s->count && s->uids[j + 1] == s->uids[j] + 1)
            j++;
        char item[32];
        int n;
        if (j == i)
            n = snprintf(item, sizeof item, "%s%" PRIu32, len ? "," : "", s->uids[i]);
        else
            n = snprintf(item, sizeof item, "%s%" PRIu32 ":%" PRIu32, len ? "," : "", s->uids[i],
                         s->uids[j]);
        if (len && len + (size_t)n > max_len)
            break;
        if (len + (size_t)n + 1 > cap) {
            cap = (len + (size_t)n + 1) * 2;
            char *o = realloc(out, cap);
            if (!o) {
                free(out);
                return NULL;
            }
            out = o;
        }
        memcpy(out + len, item, (size_t)n + 1);
        len += (size_t)n;
        i = j + 1;
    }
    *pos = i;
    return out;
}

static int list_item(char **out, size_t *len, size_t *cap, uint32_t from, uint32_t to)
{
    char item[32];
    int n = from == to
                ? snprintf(item, sizeof item, "%s%" PRIu32, *len ? "," : "", from)
                : snprintf(item, sizeof item, "%s%" PRIu32 ":%" PRIu32, *len ? "," : "", from, to);
    if (*len + (size_t)n + 1 > *cap) {
        size_t ncap = (*len + (size_t)n + 1) * 2;
        char *o = realloc(*out, ncap);
        if (!o)
            return -ENOMEM;
        *out = o;
        *cap = ncap;
    }
    memcpy(*out + *len, item, (size_t)n + 1);
    *len += (size_t)n;
    return 0;
}

char *uidset_format_list(const struct uidset *s)
{
    size_t cap = 64, len = 0;
    char *out = malloc(cap);
    if (!out)
        return NULL;
    out[0] = '\0';
    if (!s->count)
        return out;
    uint32_t from = s->uids[0], to = from;
    int dir = 0; /* fixed by the second UID, as in the reference tool */
    for (size_t i = 1; i < s->count; i++) {
        uint32_t k = s->uids[i];
        if (!dir)
            dir = k < to ? -1 : 1;
        if (k != to && (int64_t)k == (int64_t)to + dir) {
            to = k;
            continue;
        }
        if (list_item(&out, &len, &cap, from, to) < 0) {
            free(out);
            return NULL;
        }
        from = to = k;
    }
    if (list_item(&out, &len, &cap, from, to) < 0) {
        free(out);
        return NULL;
    }
    return out;
}
