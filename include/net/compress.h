/*
 * COMPRESS=DEFLATE (RFC 4978) as a stream layer: raw DEFLATE both ways, each
 * write flushed with Z_SYNC_FLUSH so the server sees whole commands.
 * On success *out owns `lower`; on failure `lower` is untouched.
 * Decompression output is bounded per read, so a small compressed input
 * cannot force a large allocation. Invalid compressed data fails reads with
 * ERR_PROTOCOL ("COMPRESS: invalid compressed data from the server: ...");
 * errors from below are prefixed with "COMPRESS: ".
 */
#ifndef INTERIMAP_NET_COMPRESS_H
#define INTERIMAP_NET_COMPRESS_H

#include <stddef.h>
#include <stdint.h>

struct stream;

int compress_stream_new(struct stream *lower, struct stream **out, char *err, size_t errlen);

/* Compressed bytes read from and written to the stream below so far. `s`
 * must be a stream made by compress_stream_new(). Does not yield. */
void compress_stream_totals(const struct stream *s, uint64_t *raw_in, uint64_t *raw_out);

/* The deflate level the next write uses (it follows what limits the
 * writes: see compress.c). Does not yield. */
int compress_stream_level(const struct stream *s);

#endif
