/*
 * What a server sent, checked against its grammar before the engine sees
 * it. The parser (imap/parser.h) only splits responses into values and
 * accepts more than the grammar allows, because servers do; the values
 * that the engine carries into commands for the other server (flags,
 * dates, mailbox names) must be exactly what the grammar says, or a
 * server could smuggle text into the other server's command stream.
 *
 * Nothing here allocates except where stated; error texts are one line
 * (they may quote the server's bytes: the logger escapes them).
 */
#ifndef INTERIMAP_IMAP_VALUES_H
#define INTERIMAP_IMAP_VALUES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "imap/parser.h"

/* flag = "\" atom / atom (RFC 3501 flag-extension, flag-keyword and the
 * system flags; FETCH adds \Recent). ATOM-CHAR excludes ( ) { SP CTL % *
 * " \ ] and 8-bit bytes. */
bool imap_flag_valid(const char *s, size_t len);

/* date-time without its quotes: "dd-Mon-yyyy hh:mm:ss +zzzz", the day
 * written " 7", "07" (or, leniently, "7"), numbers in range, the month name
 * in any case. On success the canonical form (two-digit day, "Jan" case)
 * is written to out (27 bytes with the NUL). */
enum { IMAP_DATE_TIME_LEN = 26 };
bool imap_date_time_parse(const char *s, size_t len, char out[IMAP_DATE_TIME_LEN + 1]);

/*
 * A mailbox name as a server lists it: printable 7-bit bytes that form
 * valid modified UTF-7 (imap/utf7.h) and whose decoded form has no
 * control character (C0, DEL, C1). Returns NULL if valid, else a short
 * reason ("contains control characters").
 */
const char *imap_mailbox_name_problem(const char *s, size_t len);

/* The items of one FETCH response that the engine uses, validated. */
struct imap_fetch {
    uint32_t uid; /* 0 when absent */
    bool has_modseq;
    uint64_t modseq;
    const struct imap_value *flags; /* a LIST of valid flags, or NULL */
    bool has_date;
    char date[IMAP_DATE_TIME_LEN + 1]; /* INTERNALDATE, canonical */
    bool has_size;
    uint64_t size;                   /* RFC822.SIZE */
    const struct imap_value *body;   /* BODY[]: string, literal, NIL or streamed */
    const struct imap_value *header; /* BODY[HEADER...] */
};

/*
 * Reads the attribute list of a FETCH response ("UID 7 FLAGS (\Seen)
 * ..."). `partial`: the list is cut short at a literal, its last item
 * name still waiting for the value. Items the engine does not use are
 * skipped. Returns 0, or -EINVAL with err naming the first item that is
 * malformed (a flag that is not one, a date that is not a date-time, a
 * UID that is not a number, an item given twice).
 */
int imap_fetch_parse(const struct imap_value *list, bool partial, struct imap_fetch *f, char *err,
                     size_t errlen);

#endif
