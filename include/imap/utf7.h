/*
 * Modified UTF-7 for mailbox names (RFC 3501 section 5.1.3).
 *
 * Both functions allocate the result (NUL-terminated, free() it) and return
 * NULL with errno set to EINVAL when the input is not valid for the
 * direction asked (malformed UTF-8, or a non-canonical or broken modified
 * UTF-7 sequence), or ENOMEM.
 */
#ifndef INTERIMAP_IMAP_UTF7_H
#define INTERIMAP_IMAP_UTF7_H

#include <stddef.h>

char *utf7_encode(const char *utf8, size_t len);
char *utf7_decode(const char *mutf7, size_t len);

#endif
