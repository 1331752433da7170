/*
 * Growable arrays: one place that decides how an array of any element type
 * grows (doubling, overflow-checked), so that the modules holding arrays
 * only say how many elements they need room for.
 */
#ifndef INTERIMAP_UTIL_ARRAY_H
#define INTERIMAP_UTIL_ARRAY_H

#include <stddef.h>

/*
 * Returns items, reallocated if needed so that it holds at least `need`
 * elements of `size` bytes; *cap is the capacity in elements and is
 * updated. Grows by doubling from at least `min` elements. Returns NULL on
 * allocation failure or overflow; items and *cap are then unchanged and
 * still owned by the caller.
 */
void *array_reserve(void *items, size_t *cap, size_t need, size_t size, size_t min);

#endif
