/*
 * The parts of a message's fingerprint read from text: the Message-ID
 * field of a header (streamed by, or as a server returns
 * BODY[HEADER.FIELDS (MESSAGE-ID)]) without its whitespace, and an IMAP
 * INTERNALDATE as an instant. Shared by the engine (src/sync/fingerprint.c)
 * and its tests; no I/O, no allocation but the scan buffer.
 */
#ifndef INTERIMAP_SYNC_FPTEXT_H
#define INTERIMAP_SYNC_FPTEXT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A header longer than FP_SCAN_MAX bytes is looked at up to there only;
 * a Message-ID longer than FP_MSGID_MAX bytes is cut (the same way on
 * both sides of a comparison). */
enum { FP_SCAN_MAX = 64 * 1024, FP_MSGID_MAX = 998 };

/* The value of the first Message-ID field of a header (which may be
 * followed by a body: reading stops at the empty line), folded lines
 * joined and every white-space character dropped; at most cap bytes go to
 * out. Returns the length, 0 when there is no such field. */
size_t fp_msgid(const char *hdr, size_t len, char *out, size_t cap);

/* "17-Jul-1996 02:44:25 -0700" (the day may be " 7" or "7") -> seconds
 * since the epoch, or -1 when it is not an INTERNALDATE. */
int64_t fp_date(const char *s);

/* Collects the start of a message as it streams by, until its header is
 * complete. Zero-initialized is empty; fp_scan_fini frees. */
struct fp_scan {
    char *buf; /* FP_SCAN_MAX bytes, allocated on first use */
    size_t len;
    bool done; /* the header is complete (or too long to look further) */
};
void fp_scan_reset(struct fp_scan *sc);
void fp_scan_fini(struct fp_scan *sc);
void fp_scan_feed(struct fp_scan *sc, const char *buf, size_t len);
/* fp_msgid of what was collected. */
size_t fp_scan_msgid(const struct fp_scan *sc, char *out, size_t cap);

#endif
