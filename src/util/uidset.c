/*
 * UID sets: growing, normalizing, searching, and the IMAP sequence-set
 * text in both directions, bounded when it comes from a server (see
 * util/uidset.h).
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

static int uid_key_cmp(const void *key, const void *elem)
{
    uint32_t k = *(const uint32_t *)key, u;
    memcpy(&u, elem, sizeof u);
    return (k > u) - (k < u);
}

const void *uid_find(const void *base, size_t n, size_t size, uint32_t uid)
{
    /* (bsearch must not be given a null array, even an empty one) */
    return n ? bsearch(&uid, base, n, size, uid_key_cmp) : NULL;
}

bool uidset_contains(const struct uidset *s, uint32_t uid)
{
    return uid_find(s->uids, s->count, sizeof *s->uids, uid) != NULL;
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

/* One range of a parsed sequence-set. */
struct range {
    uint32_t lo, hi;
};

static int cmp_range(const void *a, const void *b)
{
    const struct range *x = a, *y = b;
    return x->lo < y->lo ? -1 : x->lo > y->lo;
}

/* Parses text into ranges (lo <= hi), in the order written. *out is
 * malloc'd; its length is bounded by the text's. */
static int ranges_parse(const char *text, size_t len, struct range **out, size_t *n)
{
    const char *p = text, *end = text + len;
    *out = NULL;
    *n = 0;
    if (p == end)
        return -EINVAL;
    /* each range takes at least two bytes of text but the last */
    struct range *r = malloc((len / 2 + 1) * sizeof *r);
    if (!r)
        return -ENOMEM;
    size_t k = 0;
    while (p < end) {
        uint32_t lo, hi;
        if (!parse_u32(&p, end, &lo))
            goto bad;
        hi = lo;
        if (p < end && *p == ':') {
            p++;
            if (!parse_u32(&p, end, &hi))
                goto bad;
        }
        r[k++] = lo <= hi ? (struct range){lo, hi} : (struct range){hi, lo};
        if (p < end) {
            if (*p != ',')
                goto bad;
            p++;
            if (p == end)
                goto bad;
        }
    }
    *out = r;
    *n = k;
    return 0;
bad:
    free(r);
    return -EINVAL;
}

/* Number of UIDs of the normalized set s within [lo, hi]. */
static size_t count_within(const struct uidset *s, uint32_t lo, uint32_t hi)
{
    size_t a = 0, b = s->count;
    while (a < b) { /* first index with uid >= lo */
        size_t mid = a + (b - a) / 2;
        if (s->uids[mid] < lo)
            a = mid + 1;
        else
            b = mid;
    }
    size_t first = a;
    b = s->count;
    while (a < b) { /* first index with uid > hi */
        size_t mid = a + (b - a) / 2;
        if (s->uids[mid] <= hi)
            a = mid + 1;
        else
            b = mid;
    }
    return a - first;
}

static int parse_in_order(struct uidset *s, struct range *r, size_t n,
                          const struct uidset_bounds *b)
{
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (r[i].hi > b->max_uid)
            return -EINVAL;
        total += (uint64_t)(r[i].hi - r[i].lo) + 1;
    }
    if (total > b->max_count || s->count + total > b->max_count)
        return -E2BIG;
    if (uidset_reserve(s, (size_t)total) < 0)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++)
        for (uint64_t u = r[i].lo; u <= r[i].hi; u++)
            s->uids[s->count++] = (uint32_t)u;
    return 0;
}

static int parse_merged(struct uidset *s, struct range *r, size_t n, const struct uidset_bounds *b)
{
    /* drop what lies above max_uid, then sort and merge */
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (r[i].lo > b->max_uid)
            continue;
        if (r[i].hi > b->max_uid)
            r[i].hi = b->max_uid;
        r[k++] = r[i];
    }
    n = k;
    qsort(r, n, sizeof *r, cmp_range);
    k = 0;
    for (size_t i = 0; i < n; i++) {
        if (k && (uint64_t)r[i].lo <= (uint64_t)r[k - 1].hi + 1) {
            if (r[i].hi > r[k - 1].hi)
                r[k - 1].hi = r[i].hi;
        } else {
            r[k++] = r[i];
        }
    }
    n = k;
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += (uint64_t)(r[i].hi - r[i].lo) + 1;
    if (total > b->max_count)
        return -E2BIG;
    uidset_normalize(s);
    uint64_t common = 0;
    for (size_t i = 0; i < n; i++)
        common += count_within(s, r[i].lo, r[i].hi);
    uint64_t result = s->count + total - common;
    if (result > b->max_count)
        return -E2BIG;
    /* merge the sorted set with the sorted ranges into a new array */
    size_t cap = result ? (size_t)result : 1;
    uint32_t *u = malloc(cap * sizeof *u);
    if (!u)
        return -ENOMEM;
    size_t o = 0, j = 0;
    for (size_t i = 0; i < n; i++) {
        while (j < s->count && s->uids[j] < r[i].lo)
            u[o++] = s->uids[j++];
        for (uint64_t v = r[i].lo; v <= r[i].hi; v++)
            u[o++] = (uint32_t)v;
        while (j < s->count && s->uids[j] <= r[i].hi)
            j++; /* already written from the range */
    }
    while (j < s->count)
        u[o++] = s->uids[j++];
    free(s->uids);
    s->uids = u;
    s->count = o;
    s->cap = cap;
    return 0;
}

int uidset_parse_bounded(struct uidset *s, const char *text, size_t len,
                         const struct uidset_bounds *b)
{
    struct range *r;
    size_t n;
    int rc = ranges_parse(text, len, &r, &n);
    if (rc < 0)
        return rc;
    rc = b->in_order ? parse_in_order(s, r, n, b) : parse_merged(s, r, n, b);
    free(r);
    return rc;
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
        char *o = array_reserve(out, &cap, len + (size_t)n + 1, 1, 256);
        if (!o) {
            free(out);
            return NULL;
        }
        out = o;
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
    char *o = array_reserve(*out, cap, *len + (size_t)n + 1, 1, 64);
    if (!o)
        return -ENOMEM;
    *out = o;
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
