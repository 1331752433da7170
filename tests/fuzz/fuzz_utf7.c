/*
 * Fuzz target for the modified UTF-7 codec. The input is tried both ways:
 * whatever decodes must encode back to exactly the same bytes (the decoder
 * accepts only canonical spellings), and whatever encodes (valid UTF-8)
 * must decode back to itself.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imap/utf7.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_same(const char *got, const uint8_t *want, size_t len, const char *what)
{
    if (!got || strlen(got) != len || memcmp(got, want, len) != 0) {
        fprintf(stderr, "%s does not give the input back (got %s)\n", what, got ? got : "NULL");
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *in = (const char *)data;

    errno = 0;
    char *dec = utf7_decode(in, size);
    if (dec) {
        char *enc = utf7_encode(dec, strlen(dec));
        check_same(enc, data, size, "encode(decode(x))");
        free(enc);
        free(dec);
    } else if (errno != EINVAL) {
        abort();
    }

    errno = 0;
    char *enc = utf7_encode(in, size);
    if (enc) {
        for (const char *c = enc; *c; c++)
            if (*c < 0x20 || *c > 0x7e)
                abort();
        char *back = utf7_decode(enc, strlen(enc));
        check_same(back, data, size, "decode(encode(x))");
        free(back);
        free(enc);
    } else if (errno != EINVAL) {
        abort();
    }
    return 0;
}
