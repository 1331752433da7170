/*
 * UID sets: a growable array of UIDs, parsed from and written to the IMAP
 * sequence-set syntax ("1:4,7,9:12"). Memory belongs to the set;
 * uidset_fini releases it.
 */
#ifndef INTERIMAP_UTIL_UIDSET_H
#define INTERIMAP_UTIL_UIDSET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct uidset {
    uint32_t *uids;
    size_t count, cap;
};

void uidset_init(struct uidset *s);
void uidset_fini(struct uidset *s);
void uidset_clear(struct uidset *s);
int uidset_add(struct uidset *s, uint32_t uid);
int uidset_add_range(struct uidset *s, uint32_t lo, uint32_t hi);
/* Sorts and removes duplicates. */
void uidset_normalize(struct uidset *s);
/* Binary search; the set must be normalized. */
bool uidset_contains(const struct uidset *s, uint32_t uid);

/* In an array of n elements of `size` bytes sorted by UID, where each
 * element starts with its UID (a uint32_t), the element holding uid, or
 * NULL. */
const void *uid_find(const void *base, size_t n, size_t size, uint32_t uid);

/*
 * Parses a sequence-set of explicit UIDs ("*" is rejected), appending in
 * the order written (APPENDUID and COPYUID rely on that order). Ranges
 * larger than max_range UIDs are rejected. 0 or -EINVAL.
 */
int uidset_parse(struct uidset *s, const char *text, size_t len, size_t max_range);

/*
 * What a set parsed from a server's words may hold. A few bytes of text
 * ("1:4294967295") stand for billions of UIDs, and the same range may be
 * repeated: the bounds are checked on the merged ranges, before anything
 * is allocated.
 */
struct uidset_bounds {
    /* Keep the order written, repeats included (APPENDUID, COPYUID pair
     * the n-th UID with the n-th message): then a UID above max_uid makes
     * the set invalid. Otherwise the ranges are merged with each other and
     * with what the set holds (which ends up sorted, without repeats), and
     * UIDs above max_uid are dropped: they cannot name a message we know. */
    bool in_order;
    uint32_t max_uid;
    /* The most UIDs the set may hold afterwards. */
    size_t max_count;
};

/*
 * Adds the UIDs of a sequence-set within the bounds. Returns 0, -EINVAL
 * (not a sequence-set of nz-numbers, or a UID above max_uid in order),
 * -E2BIG (the set would exceed max_count: it keeps the UIDs it held) or
 * -ENOMEM.
 */
int uidset_parse_bounded(struct uidset *s, const char *text, size_t len,
                         const struct uidset_bounds *b);

/*
 * Writes the UIDs of a normalized set from index *pos on, compacted into
 * ranges, stopping before the text exceeds max_len bytes (so long sets can
 * be split over several commands). Returns a malloc'd string and advances
 * *pos, or NULL when nothing is left or on allocation failure.
 */
char *uidset_format(const struct uidset *s, size_t *pos, size_t max_len);

/*
 * Writes the UIDs in the order held, runs of consecutive UIDs going up or
 * down as ranges ("4:6,2,9:8"), the way the reference tool lists the
 * UIDs of an APPEND in its log: the direction is the one of the first two
 * UIDs. Returns a malloc'd string ("" for an empty set), NULL when out of
 * memory.
 */
char *uidset_format_list(const struct uidset *s);

#endif
