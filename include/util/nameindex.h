/*
 * An index of names (byte strings, NUL allowed) to their positions in an
 * array the caller owns, for finding one among thousands without
 * comparing it with each: open addressing over a hash of the bytes. The
 * index holds positions only; the caller says how to read the name at a
 * position, which the index needs when it grows.
 */
#ifndef INTERIMAP_UTIL_NAMEINDEX_H
#define INTERIMAP_UTIL_NAMEINDEX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The name at position pos of the caller's array (ctx), and its length. */
typedef const char *(*nameindex_name_fn)(const void *ctx, size_t pos, size_t *len);

struct nameindex {
    uint32_t *slots; /* position + 1; 0 is an empty slot */
    size_t nslots;   /* a power of two, or 0 */
    size_t count;    /* positions 0 .. count-1 are indexed */
    bool failed;     /* out of memory once: the caller searches without it */
    nameindex_name_fn name;
    const void *ctx;
};

void nameindex_init(struct nameindex *ix, nameindex_name_fn name, const void *ctx);
void nameindex_fini(struct nameindex *ix);
/* Indexes position ix->count (the array's next element, whose name is
 * already readable). Returns 0, or -ENOMEM: the index is then dropped and
 * ix->failed set for good; the caller must search its array itself. */
int nameindex_add(struct nameindex *ix);
/*
 * The positions holding name, one per call: *cursor starts at 0, and
 * SIZE_MAX is returned when there are no more. Several positions may hold
 * the same name; they come in no particular order.
 */
size_t nameindex_next(const struct nameindex *ix, const char *name, size_t len, size_t *cursor);

#endif
