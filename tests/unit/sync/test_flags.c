/* Unit tests of canonical flag lists (src/sync/flags.c): normalizing a FETCH
 * FLAGS list, the union of two lists, and comparison. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "imap/parser.h"
#include "sync/flags.h"

static struct imap_value atom(const char *s)
{
    struct imap_value v = {.type = IMAP_ATOM, .str = s, .len = strlen(s)};
    return v;
}

static void test_normalize(void)
{
    struct imap_value items[] = {atom("\\Seen"), atom("$Label"), atom("\\Recent"),
                                 atom("\\answered"), atom("\\SEEN")};
    struct imap_value list = {.type = IMAP_LIST, .items = items, .count = 5};
    char *f = flags_normalize(&list);
    /* sorted without regard to case, \Recent gone, and duplicates differing
     * in case collapse to one (either spelling: the sort is not stable) */
    CHECK(f && flags_equal(f, "$Label \\answered \\Seen"));
    CHECK(f && strlen(f) == strlen("$Label \\answered \\Seen"));
    free(f);

    struct imap_value none = {.type = IMAP_LIST, .items = NULL, .count = 0};
    char *e = flags_normalize(&none);
    CHECK_STR(e, "");
    free(e);

    /* only \Recent: nothing a client could set */
    struct imap_value recent[] = {atom("\\RECENT")};
    struct imap_value only_recent = {.type = IMAP_LIST, .items = recent, .count = 1};
    char *r = flags_normalize(&only_recent);
    CHECK_STR(r, "");
    free(r);

    /* a NIL among the items is not a flag and is skipped */
    struct imap_value mixed[] = {atom("\\Flagged"), {.type = IMAP_NIL}, atom("\\Draft")};
    struct imap_value with_nil = {.type = IMAP_LIST, .items = mixed, .count = 3};
    char *m = flags_normalize(&with_nil);
    CHECK_STR(m, "\\Draft \\Flagged");
    free(m);
}

static void test_union(void)
{
    char *u = flags_union("\\Seen \\Flagged", "\\Answered \\seen");
    CHECK(u && flags_equal(u, "\\Answered \\Flagged \\Seen"));
    free(u);
    char *empty = flags_union("", "");
    CHECK_STR(empty, "");
    free(empty);
    char *one = flags_union("", "$Junk \\Recent");
    CHECK_STR(one, "$Junk");
    free(one);
}

static void test_equal(void)
{
    CHECK(flags_equal("\\Seen $A", "\\seen $a"));
    CHECK(!flags_equal("\\Seen", "\\Seen \\Flagged"));
    CHECK(!flags_equal("", "\\Seen"));
    CHECK(flags_equal("", ""));
}

/* Log lines sort byte by byte, as the reference tool does. */
static void test_display(void)
{
    char *d = flags_display("$Todo \\Answered Junk \\Seen");
    CHECK_STR(d, "$Todo Junk \\Answered \\Seen");
    free(d);
    char *d0 = flags_display("");
    CHECK_STR(d0, "");
    free(d0);
}

int main(void)
{
    test_normalize();
    test_union();
    test_equal();
    test_display();
    return check_finish();
}
