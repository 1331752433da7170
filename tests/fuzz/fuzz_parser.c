/*
 * Fuzz target for the IMAP response parser.
 *
 * Besides looking for crashes and over-reads, it checks that the parser's
 * answer does not depend on how the input is cut: the input is parsed whole,
 * one byte at a time, and split in two at a position taken from the input,
 * streaming the odd-sized literals and keeping the others, and the rendered
 * responses must be identical. Small limits make the limit paths reachable.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imap/parser.h"
#include "parse_harness.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void compare(const struct dstr *a, const struct dstr *b, const char *what)
{
    const char *sa = a->s ? a->s : "", *sb = b->s ? b->s : "";
    if (strcmp(sa, sb) != 0) {
        fprintf(stderr, "parse differs (%s):\n%s--- whole:\n%s", what, sb, sa);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const struct imap_parser_limits lim = {
        .max_line = 2048,
        .max_inline_literal = 512,
        .max_depth = 8,
        .max_values = 300,
    };
    const char *in = (const char *)data;
    size_t split = size ? (size_t)data[0] * 7 % size : 0;

    struct dstr whole = {0}, bytes = {0}, two = {0};
    harness_run(in, size, &lim, HARNESS_WHOLE, 0, HARNESS_ALTERNATE, &whole);
    harness_run(in, size, &lim, HARNESS_BYTES, 0, HARNESS_ALTERNATE, &bytes);
    harness_run(in, size, &lim, HARNESS_SPLIT, split, HARNESS_ALTERNATE, &two);
    compare(&whole, &bytes, "one byte at a time");
    compare(&whole, &two, "split in two");
    dstr_free(&whole);
    dstr_free(&bytes);
    dstr_free(&two);

    /* default limits, everything streamed */
    harness_run(in, size, NULL, HARNESS_WHOLE, 0, HARNESS_STREAM, &whole);
    dstr_free(&whole);
    return 0;
}
