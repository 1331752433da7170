/*
 * Growable arrays (see util/array.h).
 */
#include "util/array.h"

#include <stdint.h>
#include <stdlib.h>

void *array_reserve(void *items, size_t *cap, size_t need, size_t size, size_t min)
{
    if (need <= *cap && items)
        return items;
    size_t ncap = *cap > min ? *cap : (min ? min : 1);
    while (ncap < need) {
        if (ncap > SIZE_MAX / 2)
            return NULL;
        ncap *= 2;
    }
    if (size == 0 || ncap > SIZE_MAX / size)
        return NULL;
    void *n = realloc(items, ncap * size);
    if (!n)
        return NULL;
    *cap = ncap;
    return n;
}
