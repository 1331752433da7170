/*
 * Helpers shared by the net unit tests: a stream over a blocking file
 * descriptor (the layers under test only need read/write/free), socket
 * pairs, blocking I/O and a deterministic byte pattern.
 */
#ifndef INTERIMAP_TEST_NET_UTIL_H
#define INTERIMAP_TEST_NET_UTIL_H

#include "check.h"
#include "net/stream.h"

#include <stdio.h>
#include <stdlib.h>

/* A stream over fd (owned: closed by free); sched is NULL. */
struct stream *fd_stream_new(int fd);
/* Number of read(2) calls made and the largest `cap` asked of this stream. */
size_t fd_stream_reads(const struct stream *s);

/* Creates a connected AF_UNIX stream socket pair; aborts on failure. */
void test_socketpair(int sv[2]);

/* Blocking helpers on raw descriptors; abort on error, return 0 at EOF. */
int test_write_all(int fd, const void *buf, size_t len);
size_t test_read_full(int fd, void *buf, size_t len);

/* Deterministic pseudo-random bytes from a seed and an offset. */
void test_pattern(unsigned seed, size_t offset, unsigned char *buf, size_t len);

#endif
