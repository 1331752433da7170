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

static int parse_b(struct uidset *s, const char *text, const struct uidset_bounds *b)
{
    return uidset_parse_bounded(s, text, strlen(text), b);
}

/* Sets parsed from a server's words: merged before anything is
 * allocated, clipped, bounded in total. */
static void test_parse_bounded(void)
{
    struct uidset s;
    uidset_init(&s);
    const struct uidset_bounds merged = {.max_uid = 100, .max_count = 50};
    /* repeats and overlaps are merged; the result is sorted */
    CHECK(parse_b(&s, "9:7,1,3:4,8,2,1", &merged) == 0);
    CHECK(s.count == 7 && s.uids[0] == 1 && s.uids[3] == 4 && s.uids[4] == 7 && s.uids[6] == 9);
    /* merged with what the set holds */
    CHECK(parse_b(&s, "5:10", &merged) == 0);
    CHECK(s.count == 10 && s.uids[4] == 5 && s.uids[9] == 10);
    /* UIDs above max_uid are dropped, whatever their range says */
    CHECK(parse_b(&s, "95:4294967295,200", &merged) == 0);
    CHECK(s.count == 16 && s.uids[10] == 95 && s.uids[15] == 100);
    /* the same range a thousand times counts once */
    char text[16000];
    size_t len = 0;
    for (int i = 0; i < 1000; i++)
        len += (size_t)snprintf(text + len, sizeof text - len, "%s1:9999999", i ? "," : "");
    uidset_clear(&s);
    const struct uidset_bounds big = {.max_uid = UINT32_MAX, .max_count = 10000000};
    CHECK(uidset_parse_bounded(&s, text, len, &big) == 0);
    CHECK(s.count == 9999999 && s.uids[9999998] == 9999999);
    /* beyond max_count: refused, the set left as it was */
    CHECK(parse_b(&s, "10000000:10000001", &big) == -E2BIG);
    CHECK(s.count == 9999999);
    /* overlapping what is there is not counted twice */
    CHECK(parse_b(&s, "5:10000000", &big) == 0 && s.count == 10000000);
    uidset_clear(&s);
    const struct uidset_bounds small = {.max_uid = UINT32_MAX, .max_count = 1000};
    CHECK(parse_b(&s, "1:4294967295", &small) == -E2BIG && s.count == 0);
    CHECK(parse_b(&s, "1:*", &small) == -EINVAL && s.count == 0);
    CHECK(parse_b(&s, "", &small) == -EINVAL);
    uidset_fini(&s);

    /* in order: APPENDUID pairs the n-th UID with the n-th message */
    const struct uidset_bounds order = {.in_order = true, .max_uid = 1000, .max_count = 5};
    uidset_init(&s);
    CHECK(parse_b(&s, "7,3:5,2", &order) == 0);
    CHECK(s.count == 5 && s.uids[0] == 7 && s.uids[1] == 3 && s.uids[4] == 2);
    uidset_clear(&s);
    CHECK(parse_b(&s, "1:3,1:3", &order) == -E2BIG && s.count == 0);
    CHECK(parse_b(&s, "1001", &order) == -EINVAL && s.count == 0);
    /* repeated huge ranges: refused before any allocation */
    len = 0;
    for (int i = 0; i < 1000; i++)
        len += (size_t)snprintf(text + len, sizeof text - len, "%s1:16000000", i ? "," : "");
    const struct uidset_bounds order_big = {
        .in_order = true, .max_uid = UINT32_MAX, .max_count = 1000};
    uidset_fini(&s);
    CHECK(uidset_parse_bounded(&s, text, len, &order_big) == -E2BIG && s.count == 0 && s.cap == 0);
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
    test_parse_bounded();
    test_format_compacts_and_splits();
    test_format_list();
    return check_finish();
}
