/* Unit tests of UID sets and canonical flag lists. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imap/parser.h"
#include "util/uidset.h"
#include "sync/flags.h"

static int failures;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

static void check_format(const struct uidset *s, size_t max, const char *const *want)
{
    size_t pos = 0;
    char *text;
    size_t i = 0;
    while ((text = uidset_format(s, &pos, max))) {
        CHECK(want[i] != NULL);
        if (want[i]) {
            if (strcmp(text, want[i]) != 0)
                fprintf(stderr, "format: got '%s', want '%s'\n", text, want[i]);
            CHECK(strcmp(text, want[i]) == 0);
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
        if (r != -EINVAL)
            fprintf(stderr, "accepted bad set '%s'\n", bad[i]);
        CHECK(r == -EINVAL);
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

static struct imap_value atom(const char *s)
{
    struct imap_value v = {.type = IMAP_ATOM, .str = s, .len = strlen(s)};
    return v;
}

static void test_flags(void)
{
    struct imap_value items[] = {atom("\\Seen"), atom("$Label"), atom("\\Recent"),
                                 atom("\\answered"), atom("\\SEEN")};
    struct imap_value list = {.type = IMAP_LIST, .items = items, .count = 5};
    char *f = flags_normalize(&list);
    /* duplicates differing in case collapse to one (either spelling) */
    CHECK(f && flags_equal(f, "$Label \\answered \\Seen"));
    struct imap_value none = {.type = IMAP_LIST, .items = NULL, .count = 0};
    char *e = flags_normalize(&none);
    CHECK(e && strcmp(e, "") == 0);
    char *u = flags_union("\\Seen \\Flagged", "\\Answered \\seen");
    CHECK(u && strcmp(u, "\\Answered \\Flagged \\Seen") == 0);
    CHECK(flags_equal("\\Seen $A", "\\seen $a"));
    CHECK(!flags_equal("\\Seen", "\\Seen \\Flagged"));
    char *u2 = flags_union("", "");
    CHECK(u2 && *u2 == '\0');
    free(f);
    free(e);
    free(u);
    free(u2);
}

int main(void)
{
    test_parse_order_and_ranges();
    test_parse_rejects();
    test_format_compacts_and_splits();
    test_flags();
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("uidset and flags: all checks passed\n");
    return 0;
}
