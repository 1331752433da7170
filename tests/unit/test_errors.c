/*
 * Unit tests of the error codes (src/errors.c): every ERR_* code has a
 * description of its own, none falls through to "unknown error", the codes
 * stay clear of errno values, and errno values keep their system text.
 */
#include "check.h"
#include "errors.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

/* The codes and the names they were declared with, from the same list the
 * enum comes from. */
#define ERR_TABLE_ITEM(name, text) {name, #name},
static const struct {
    int code;
    const char *name;
} err_table[] = {ERR_LIST(ERR_TABLE_ITEM)};
#undef ERR_TABLE_ITEM

enum { ERR_COUNT = sizeof err_table / sizeof err_table[0] };

static void test_every_code_described(void)
{
    /* the list is not empty: the loops below check something */
    CHECK(ERR_COUNT >= 13);
    for (int i = 0; i < ERR_COUNT; i++) {
        const char *s = err_str(err_table[i].code);
        if (!CHECK(s != NULL && s[0] != '\0' && strcmp(s, "unknown error") != 0))
            fprintf(stderr, "  %s has no description\n", err_table[i].name);
        /* below the errno range that err_str hands to libuv */
        if (!CHECK(err_table[i].code <= -4096))
            fprintf(stderr, "  %s = %d overlaps errno values\n", err_table[i].name,
                    err_table[i].code);
    }
}

static void test_codes_and_descriptions_distinct(void)
{
    for (int i = 0; i < ERR_COUNT; i++) {
        for (int j = i + 1; j < ERR_COUNT; j++) {
            if (!CHECK(err_table[i].code != err_table[j].code))
                fprintf(stderr, "  %s and %s share a code\n", err_table[i].name, err_table[j].name);
            if (!CHECK(strcmp(err_str(err_table[i].code), err_str(err_table[j].code)) != 0))
                fprintf(stderr, "  %s and %s share the description \"%s\"\n", err_table[i].name,
                        err_table[j].name, err_str(err_table[i].code));
        }
    }
}

static void test_outside_the_list(void)
{
    /* the enum counts up from ERR_BASE: just outside it on both ends is
     * no code of ours */
    CHECK_STR(err_str(ERR_BASE), "unknown error");
    CHECK_STR(err_str(ERR_BASE + ERR_COUNT + 1), "unknown error");
    CHECK_STR(err_str(0), "unknown error");
    CHECK_STR(err_str(1), "unknown error");
    /* an errno value gets the system's text, not one of ours */
    const char *enoent = err_str(-ENOENT);
    CHECK(strcmp(enoent, "unknown error") != 0);
    for (int i = 0; i < ERR_COUNT; i++)
        CHECK(strcmp(enoent, err_str(err_table[i].code)) != 0);
}

int main(void)
{
    test_every_code_described();
    test_codes_and_descriptions_distinct();
    test_outside_the_list();
    return check_finish();
}
