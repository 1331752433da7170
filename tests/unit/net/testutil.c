#include "testutil.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct fd_stream {
    struct stream base;
    int fd;
    size_t reads;
};

static ssize_t fd_stream_read(struct stream *s, void *buf, size_t cap)
{
    struct fd_stream *f = (struct fd_stream *)s;
    f->reads++;
    for (;;) {
        ssize_t n = read(f->fd, buf, cap);
        if (n >= 0)
            return n;
        if (errno == EINTR)
            continue;
        int e = errno;
        stream_set_error(s, "read: %s", strerror(e));
        return -e;
    }
}

static int fd_stream_write(struct stream *s, const void *buf, size_t len)
{
    struct fd_stream *f = (struct fd_stream *)s;
    const char *p = buf;
    while (len > 0) {
        ssize_t n = send(f->fd, p, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            int e = errno;
            stream_set_error(s, "write: %s", strerror(e));
            return -e;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static void fd_stream_free(struct stream *s)
{
    struct fd_stream *f = (struct fd_stream *)s;
    close(f->fd);
    free(f);
}

static const struct stream_ops fd_stream_ops = {
    .read = fd_stream_read,
    .write = fd_stream_write,
    .free = fd_stream_free,
};

struct stream *fd_stream_new(int fd)
{
    struct fd_stream *f = calloc(1, sizeof *f);
    if (!f)
        abort();
    stream_init(&f->base, &fd_stream_ops, NULL, NULL);
    f->fd = fd;
    return &f->base;
}

size_t fd_stream_reads(const struct stream *s)
{
    return ((const struct fd_stream *)s)->reads;
}

void test_socketpair(int sv[2])
{
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) {
        perror("socketpair");
        abort();
    }
}

int test_write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

size_t test_read_full(int fd, void *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(fd, (char *)buf + got, len - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    return got;
}

void test_pattern(unsigned seed, size_t offset, unsigned char *buf, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        uint64_t x = (uint64_t)(offset + i) * 0x9E3779B97F4A7C15u + seed;
        x ^= x >> 29;
        x *= 0xBF58476D1CE4E5B9u;
        x ^= x >> 32;
        buf[i] = (unsigned char)x;
    }
}
