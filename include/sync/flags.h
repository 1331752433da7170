/*
 * Flag lists in canonical form: space-separated, sorted case-insensitively,
 * without duplicates and without \Recent (which a client cannot set). Two
 * lists are equal when their canonical strings are equal ignoring case.
 * Results are malloc'd; NULL means out of memory.
 */
#ifndef INTERIMAP_SYNC_FLAGS_H
#define INTERIMAP_SYNC_FLAGS_H

#include <stdbool.h>

#include "imap/parser.h"

char *flags_normalize(const struct imap_value *list);
char *flags_union(const char *a, const char *b);
bool flags_equal(const char *a, const char *b);
/* A canonical list as the reference tool prints it in its log lines:
 * sorted byte by byte ("$Todo Junk \\Seen"), where the canonical order
 * ignores case. */
char *flags_display(const char *canonical);

#endif
