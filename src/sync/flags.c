/*
 * Flag lists as the engine compares and stores them: normalized (sorted,
 * without duplicates or \Recent), compared, and merged on conflict.
 */
#include "sync/flags.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "util/array.h"

static int cmp_flag(const void *a, const void *b)
{
    return strcasecmp(*(char *const *)a, *(char *const *)b);
}

/* Joins a sorted, de-duplicated array of flags. */
static char *flags_join(char **v, size_t n)
{
    size_t len = 1;
    for (size_t i = 0; i < n; i++)
        len += strlen(v[i]) + 1;
    char *out = malloc(len);
    if (!out)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (i && strcasecmp(v[i], v[i - 1]) == 0)
            continue;
        if (o)
            out[o++] = ' ';
        size_t l = strlen(v[i]);
        memcpy(out + o, v[i], l);
        o += l;
    }
    out[o] = '\0';
    return out;
}

static char *flags_from_words(char *copy)
{
    size_t cap = 16, n = 0;
    char **v = malloc(cap * sizeof *v);
    if (!v)
        return NULL;
    char *save = NULL;
    for (char *w = strtok_r(copy, " ", &save); w; w = strtok_r(NULL, " ", &save)) {
        if (strcasecmp(w, "\\Recent") == 0)
            continue;
        char **nv = array_reserve(v, &cap, n + 1, sizeof *nv, 8);
        if (!nv) {
            free(v);
            return NULL;
        }
        v = nv;
        v[n++] = w;
    }
    qsort(v, n, sizeof *v, cmp_flag);
    char *out = flags_join(v, n);
    free(v);
    return out;
}

char *flags_normalize(const struct imap_value *list)
{
    size_t len = 1;
    for (size_t i = 0; i < list->count; i++)
        len += list->items[i].len + 1;
    char *copy = malloc(len);
    if (!copy)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < list->count; i++) {
        const char *s;
        size_t l;
        if (!imap_value_string(&list->items[i], &s, &l))
            continue;
        if (o)
            copy[o++] = ' ';
        memcpy(copy + o, s, l);
        o += l;
    }
    copy[o] = '\0';
    char *out = flags_from_words(copy);
    free(copy);
    return out;
}

char *flags_union(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    char *copy = malloc(la + lb + 2);
    if (!copy)
        return NULL;
    memcpy(copy, a, la + 1);
    copy[la] = ' ';
    memcpy(copy + la + 1, b, lb + 1);
    char *out = flags_from_words(copy);
    free(copy);
    return out;
}

static int cmp_flag_bytes(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

char *flags_display(const char *canonical)
{
    /* as many words as blanks plus one, at most */
    size_t words = 1;
    for (const char *p = canonical; *p; p++)
        words += *p == ' ';
    char *copy = strdup(canonical);
    char **v = malloc(words * sizeof *v);
    char *out = malloc(strlen(canonical) + 1);
    if (!copy || !v || !out) {
        free(out);
        out = NULL;
        goto done;
    }
    size_t n = 0;
    char *save = NULL;
    for (char *w = strtok_r(copy, " ", &save); w; w = strtok_r(NULL, " ", &save))
        v[n++] = w;
    qsort(v, n, sizeof *v, cmp_flag_bytes);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(v[i]);
        if (i)
            out[o++] = ' ';
        memcpy(out + o, v[i], l);
        o += l;
    }
    out[o] = '\0';
done:
    free(v);
    free(copy);
    return out;
}

bool flags_equal(const char *a, const char *b)
{
    return strcasecmp(a, b) == 0;
}
