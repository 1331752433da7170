/*
 * Names to positions (see util/nameindex.h): linear probing over FNV-1a
 * hashes, at most half full, rebuilt from the caller's array when it
 * grows.
 */
#include "util/nameindex.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static uint64_t name_hash(const char *s, size_t len)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

void nameindex_init(struct nameindex *ix, nameindex_name_fn name, const void *ctx)
{
    *ix = (struct nameindex){.name = name, .ctx = ctx};
}

void nameindex_fini(struct nameindex *ix)
{
    free(ix->slots);
    ix->slots = NULL;
    ix->nslots = 0;
    ix->count = 0;
}

static void slots_put(uint32_t *slots, size_t nslots, uint64_t h, size_t pos)
{
    size_t i = (size_t)h & (nslots - 1);
    while (slots[i])
        i = (i + 1) & (nslots - 1);
    slots[i] = (uint32_t)(pos + 1);
}

int nameindex_add(struct nameindex *ix)
{
    size_t pos = ix->count;
    if (ix->failed)
        return -ENOMEM;
    if (pos >= UINT32_MAX - 1)
        goto fail;
    if ((pos + 1) * 2 > ix->nslots) {
        size_t n = ix->nslots ? ix->nslots * 2 : 64;
        uint32_t *slots = calloc(n, sizeof *slots);
        if (!slots)
            goto fail;
        for (size_t p = 0; p < pos; p++) {
            size_t len;
            const char *s = ix->name(ix->ctx, p, &len);
            slots_put(slots, n, name_hash(s, len), p);
        }
        free(ix->slots);
        ix->slots = slots;
        ix->nslots = n;
    }
    size_t len;
    const char *s = ix->name(ix->ctx, pos, &len);
    slots_put(ix->slots, ix->nslots, name_hash(s, len), pos);
    ix->count++;
    return 0;
fail:
    nameindex_fini(ix);
    ix->failed = true;
    return -ENOMEM;
}

size_t nameindex_next(const struct nameindex *ix, const char *name, size_t len, size_t *cursor)
{
    if (!ix->nslots)
        return SIZE_MAX;
    size_t mask = ix->nslots - 1;
    /* *cursor: how many slots of the probe sequence were looked at */
    size_t i = ((size_t)name_hash(name, len) + *cursor) & mask;
    while (*cursor < ix->nslots && ix->slots[i]) {
        size_t pos = ix->slots[i] - 1;
        ++*cursor;
        i = (i + 1) & mask;
        size_t plen;
        const char *s = ix->name(ix->ctx, pos, &plen);
        if (plen == len && memcmp(s, name, len) == 0)
            return pos;
    }
    *cursor = ix->nslots;
    return SIZE_MAX;
}
