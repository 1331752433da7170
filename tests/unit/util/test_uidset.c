/* Unit tests of UID sets (src/util/uidset.c): parsing sequence sets in the
 * order given, rejecting malformed or oversized ones, compact formatting,
 * and the order-keeping list of log lines. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "util/uidset.h"

static void check_format(const struct uidset *s, size_t max, const char *const *want)
{
    size_t pos = 0;
    char *text;
    size_t i = 0;
    while ((text = uidset_format(s, &pos, max))) {
        CHECK(want[i] != NULL);
        if (want[i]) {
            CHECK_STR(text, want[i]);
            i++;
        }
        free(text);
    }
    CHECK(want[i] == NULL);
}

static void test_parse_order_and_ranges(void)
{
    struct uidset s;
    uidset_init(&s);
    /* APPENDUID lists the new UIDs in the order the messages were sent */
    CHECK(uidset_parse(&s, "7,3:5,2", 7, 100) == 0);
    uint32_t want[] = {7, 3, 4, 5, 2};
    CHECK(s.count == 5);
    for (size_t i = 0; i < 5 && i < s.count; i++)
        CHECK(s.uids[i] == want[i]);
    uidset_normalize(&s);
    CHECK(s.count == 5 && s.uids[0] == 2 && s.uids[4] == 7);
    CHECK(uidset_contains(&s, 4) && !uidset_contains(&s, 6) && !uidset_contains(&s, 1));
    uidset_clear(&s);
    /* a reversed range means the same UIDs */
    CHECK(uidset_parse(&s, "9:7", 3, 100) == 0 && s.count == 3 && s.uids[0] == 7);
    uidset_fini(&s);
}

static void test_parse_rejects(void)
{
    const char *bad[] = {"",  "0",    "1,",         ",1",  "1:", "1:*", "*",
                         "a", "1::2", "4294967296", "1 2", "01", NULL};
    for (size_t i = 0; bad[i]; i++) {
        struct uidset s;
        uidset_init(&s);
        int r = uidset_parse(&s, bad[i], strlen(bad[i]), 100);
        if (!CHECK_INT(r, -EINVAL))
            fprintf(stderr, "  accepted bad set '%s'\n", bad[i]);
        uidset_fini(&s);
    }
    /* a hostile server cannot make us allocate billions of UIDs */
    struct uidset s;
    uidset_init(&s);
    CHECK(uidset_parse(&s, "1:4294967295", 12, 1000000) == -EINVAL);
    CHECK(s.count == 0);
    uidset_fini(&s);
}

static void test_format_compacts_and_splits(void)
{
    struct uidset s;
    uidset_init(&s);
    const char *empty[] = {NULL};
    check_format(&s, 100, empty);
    uidset_add_range(&s, 1, 4);
    uidset_add(&s, 9);
    uidset_add(&s, 7);
    uidset_add(&s, 7);
    uidset_add_range(&s, 11, 12);
    uidset_normalize(&s);
    const char *whole[] = {"1:4,7,9,11:12", NULL};
    check_format(&s, 100, whole);
    /* split without breaking a range, each piece within the limit when possible */
    const char *pieces[] = {"1:4,7", "9", "11:12", NULL};
    check_format(&s, 6, pieces);
    uidset_fini(&s);
}

static void check_list(const uint32_t *uids, size_t n, const char *want)
{
    struct uidset s;
    uidset_init(&s);
    for (size_t i = 0; i < n; i++)
        uidset_add(&s, uids[i]);
    char *text = uidset_format_list(&s);
    CHECK_STR(text, want);
    free(text);
    uidset_fini(&s);
}

/* The order is kept and runs go either way, with the direction set by
 * the first two UIDs (what the reference tool's compact_list prints). */
static void test_format_list(void)
{
    check_list(NULL, 0, "");
    check_list((const uint32_t[]){5}, 1, "5");
    check_list((const uint32_t[]){1, 2, 3}, 3, "1:3");
    check_list((const uint32_t[]){4, 5, 1, 2}, 4, "4:5,1:2");
    check_list((const uint32_t[]){9, 8, 7, 2}, 4, "9:7,2");
    /* down first: a later upward run is not a range */
    check_list((const uint32_t[]){3, 2, 5, 6}, 4, "3:2,5,6");
    check_list((const uint32_t[]){1, 2, 3, 7, 6}, 5, "1:3,7,6");
    check_list((const uint32_t[]){7, 7, 8}, 3, "7,7:8");
    check_list((const uint32_t[]){4294967294u, 4294967295u, 1}, 3, "4294967294:4294967295,1");
}

int main(void)
{
    test_parse_order_and_ranges();
    test_parse_rejects();
    test_format_compacts_and_splits();
    test_format_list();
    return check_finish();
}
