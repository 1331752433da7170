/*
 * Test driver for the IMAP parser, shared by the unit tests and the fuzz
 * target: feeds an input in a chosen chunking, decides what to do with each
 * literal, and renders every response (and every literal announcement with
 * its partial response) as text, so that two runs can be compared.
 */
#ifndef INTERIMAP_TESTS_PARSE_HARNESS_H
#define INTERIMAP_TESTS_PARSE_HARNESS_H

#include <stddef.h>

#include "imap/parser.h"

struct dstr {
    char *s;
    size_t len, cap;
};

void dstr_put(struct dstr *d, const char *s, size_t n);
void dstr_puts(struct dstr *d, const char *s);
void dstr_free(struct dstr *d);

/* Appends one value / one response (with a final "\n") in a compact form:
 * atoms as they are, strings quoted with \" \\ and \xNN escapes, literals as
 * {N}"bytes" or {N}<streamed>, lists in parentheses. */
void harness_dump_value(struct dstr *d, const struct imap_value *v);
void harness_dump_response(struct dstr *d, const struct imap_response *r);

enum harness_chunks {
    HARNESS_WHOLE, /* everything at once */
    HARNESS_SPLIT, /* two pieces, cut at `split` */
    HARNESS_BYTES, /* one byte at a time */
};

enum harness_literals {
    HARNESS_INLINE,    /* keep every literal */
    HARNESS_STREAM,    /* stream every literal */
    HARNESS_ALTERNATE, /* stream the literals whose size is odd */
};

/* Parses all responses of in[0..len) into *out. A parse error appends
 * "ERROR: <message>\n" and stops; input ending inside a response appends
 * "INCOMPLETE\n". Returns the last result of imap_parser_feed. */
int harness_run(const char *in, size_t len, const struct imap_parser_limits *limits,
                enum harness_chunks chunks, size_t split, enum harness_literals literals,
                struct dstr *out);

#endif
