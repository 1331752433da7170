/*
 * Fuzz target for UID sets parsed from a server's words. The first two
 * bytes choose the bounds, the rest is the sequence-set. Checked besides
 * crashes: a merged set is sorted, without repeats, within max_uid and
 * max_count, and survives formatting and parsing again unchanged; an
 * ordered set keeps the count the text says; a refused parse leaves the
 * set as it was.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/uidset.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fail(const char *what)
{
    fprintf(stderr, "%s\n", what);
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    struct uidset_bounds b = {
        .in_order = data[0] & 1,
        .max_uid = data[0] & 2 ? UINT32_MAX : (uint32_t)data[1] * 1000u + 1u,
        .max_count = (size_t)(data[1] % 64) * 1000u + 1u,
    };
    const char *text = (const char *)data + 2;
    size_t len = size - 2;

    struct uidset s;
    uidset_init(&s);
    /* something already in the set: merging must account for it */
    uidset_add(&s, 5);
    uidset_add(&s, 3);
    int r = uidset_parse_bounded(&s, text, len, &b);
    if (r < 0 && r != -EINVAL && r != -E2BIG && r != -ENOMEM)
        fail("unexpected error code");
    if (r == 0 && s.count > b.max_count)
        fail("more UIDs than max_count");
    if (r != 0 && (s.count != 2 ||
                   !((s.uids[0] == 5 && s.uids[1] == 3) || (s.uids[0] == 3 && s.uids[1] == 5))))
        fail("a refused parse changed what the set holds");
    if (r == 0 && !b.in_order) {
        for (size_t i = 0; i < s.count; i++) {
            if (s.uids[i] == 0 || (s.uids[i] > b.max_uid && s.uids[i] != 3 && s.uids[i] != 5))
                fail("a UID out of bounds");
            if (i && s.uids[i] <= s.uids[i - 1])
                fail("a merged set not sorted or with repeats");
        }
        /* formatted and parsed again: the same set */
        size_t pos = 0;
        char *t = uidset_format(&s, &pos, SIZE_MAX);
        if (t) {
            struct uidset again;
            uidset_init(&again);
            const struct uidset_bounds all = {.max_uid = UINT32_MAX, .max_count = s.count};
            if (uidset_parse_bounded(&again, t, strlen(t), &all) != 0 || again.count != s.count ||
                memcmp(again.uids, s.uids, s.count * sizeof *s.uids) != 0)
                fail("formatting then parsing changed the set");
            uidset_fini(&again);
            free(t);
        }
    }
    uidset_fini(&s);
    return 0;
}
