/* Unit tests of the name index (src/util/nameindex.c): every name found
 * at its position through growth, names that differ only in a byte or a
 * NUL told apart, names held at several positions all found, absent
 * names not found. */
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "util/nameindex.h"

enum { NAMES = 5000 };

struct names {
    char text[NAMES][24];
    size_t len[NAMES];
};

static const char *names_at(const void *ctx, size_t pos, size_t *len)
{
    const struct names *n = ctx;
    *len = n->len[pos];
    return n->text[pos];
}

static struct names names;

static void test_found_through_growth(void)
{
    struct nameindex ix;
    nameindex_init(&ix, names_at, &names);
    for (size_t i = 0; i < NAMES; i++) {
        names.len[i] = (size_t)snprintf(names.text[i], sizeof names.text[i], "Folder.%04zu", i);
        /* every tenth a hierarchy name with NUL as its delimiter */
        if (i % 10 == 0)
            names.text[i][6] = '\0';
        CHECK_INT(nameindex_add(&ix), 0);
    }
    CHECK_UINT(ix.count, NAMES);
    CHECK(!ix.failed);
    CHECK(ix.nslots >= 2 * NAMES);
    size_t misses = 0;
    for (size_t i = 0; i < NAMES; i++) {
        size_t cursor = 0;
        size_t pos = nameindex_next(&ix, names.text[i], names.len[i], &cursor);
        misses += pos != i;
        /* one position each: nothing more */
        misses += nameindex_next(&ix, names.text[i], names.len[i], &cursor) != SIZE_MAX;
    }
    CHECK_UINT(misses, 0);
    /* a prefix, the same bytes with '/' for the NUL, another length */
    size_t cursor = 0;
    CHECK(nameindex_next(&ix, "Folder.001", 10, &cursor) == SIZE_MAX);
    cursor = 0;
    CHECK(nameindex_next(&ix, "Folder/0010", 11, &cursor) == SIZE_MAX);
    cursor = 0;
    CHECK(nameindex_next(&ix, "Folder.0011x", 12, &cursor) == SIZE_MAX);
    cursor = 0;
    CHECK_UINT(nameindex_next(&ix, "Folder.0011", 11, &cursor), 11);
    cursor = 0;
    CHECK_UINT(nameindex_next(&ix,
                              "Folder\0"
                              "0010",
                              11, &cursor),
               10);
    nameindex_fini(&ix);
    cursor = 0;
    CHECK(nameindex_next(&ix, names.text[1], names.len[1], &cursor) == SIZE_MAX);
}

static void test_same_name_at_several_positions(void)
{
    struct nameindex ix;
    nameindex_init(&ix, names_at, &names);
    for (size_t i = 0; i < 300; i++) {
        names.len[i] = (size_t)snprintf(names.text[i], sizeof names.text[i], "%s",
                                        i % 100 == 7 ? "INBOX" : "other");
        if (i % 100 != 7)
            names.len[i] = (size_t)snprintf(names.text[i], sizeof names.text[i], "box%zu", i);
        CHECK_INT(nameindex_add(&ix), 0);
    }
    size_t cursor = 0, pos, seen = 0, sum = 0;
    while ((pos = nameindex_next(&ix, "INBOX", 5, &cursor)) != SIZE_MAX) {
        seen++;
        sum += pos;
    }
    CHECK_UINT(seen, 3);
    CHECK_UINT(sum, 7 + 107 + 207);
    nameindex_fini(&ix);
}

int main(void)
{
    test_found_through_growth();
    test_same_name_at_several_positions();
    return check_finish();
}
