/*
 * COMPRESS layer against a zlib peer in a thread: raw DEFLATE both ways,
 * tiny and large writes, corrupt input, and a decompression bomb whose
 * output must come out in bounded pieces without the layer allocating more.
 *
 * The layer's memory is counted, not guessed from the process: meson
 * compiles src/net/compress.c for this test with its calloc, malloc,
 * realloc and free, and zlib's inflateInit2_ and deflateInit2_, renamed to
 * the counted_* functions below (see meson.build). Those call the real
 * ones, count live bytes, and give each z_stream of the layer zalloc/zfree
 * hooks that count zlib's own allocations for it. The peer's zlib, built
 * here without the renaming, is not counted.
 *
 * The layer's clocks are the test's too (uv_hrtime and clock_gettime are
 * renamed the same way): each reading of the wall clock moves it on by
 * clocks.wall_step and each reading of the CPU clock by clocks.cpu_step,
 * so every write below seems to wait wall_step and every deflate call to
 * cost cpu_step, whatever the machine is doing. Both steps are 0 but in
 * the test of the deflate level. What the scheduler says of the process
 * (whether it waits for a core) is read from COMPRESS_SCHEDSTAT, a file
 * the test writes (see meson.build).
 */
#include "errors.h"
#include "net/compress.h"
#include "testutil.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <string.h>
#include <malloc.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

/* ---- the layer's clocks ---- */

static struct {
    uint64_t wall, cpu;
    uint64_t wall_step, cpu_step;
} clocks;

uint64_t fake_hrtime(void);
int fake_clock_gettime(clockid_t id, struct timespec *ts);

uint64_t fake_hrtime(void)
{
    return clocks.wall += clocks.wall_step;
}

int fake_clock_gettime(clockid_t id, struct timespec *ts)
{
    (void)id;
    clocks.cpu += clocks.cpu_step;
    ts->tv_sec = (time_t)(clocks.cpu / 1000000000u);
    ts->tv_nsec = (long)(clocks.cpu % 1000000000u);
    return 0;
}

/* What the layer reads of the scheduler: the process ran 200 us more
 * since the last reading, and waited `queued_us` more for a core. */
static void sched_advance(unsigned queued_us)
{
    static unsigned long long run, queued;
    run += 200000;
    queued += queued_us * 1000ull;
    FILE *f = fopen(COMPRESS_SCHEDSTAT, "w");
    if (!f)
        abort();
    fprintf(f, "%llu %llu 1\n", run, queued);
    fclose(f);
}

/* ---- the layer's memory ---- */

static struct {
    size_t live, peak;    /* bytes the layer and its zlib streams hold */
    unsigned long zalloc; /* allocations zlib made through the hooks */
    unsigned long inits;  /* z_streams the layer initialised */
} mem;

void *counted_malloc(size_t n);
void *counted_calloc(size_t n, size_t size);
void *counted_realloc(void *p, size_t n);
void counted_free(void *p);
int counted_inflateInit2_(z_streamp z, int bits, const char *version, int size);
int counted_deflateInit2_(z_streamp z, int level, int method, int bits, int mem_level, int strategy,
                          const char *version, int size);

static void *mem_add(void *p)
{
    if (p != NULL) {
        mem.live += malloc_usable_size(p);
        if (mem.live > mem.peak)
            mem.peak = mem.live;
    }
    return p;
}

void *counted_malloc(size_t n)
{
    return mem_add(malloc(n));
}

void *counted_calloc(size_t n, size_t size)
{
    return mem_add(calloc(n, size));
}

void *counted_realloc(void *p, size_t n)
{
    size_t old = p != NULL ? malloc_usable_size(p) : 0;
    void *q = realloc(p, n);
    if (q == NULL)
        return NULL;
    mem.live -= old;
    return mem_add(q);
}

void counted_free(void *p)
{
    if (p != NULL)
        mem.live -= malloc_usable_size(p);
    free(p);
}

static voidpf count_zalloc(voidpf opaque, uInt items, uInt size)
{
    mem.zalloc++;
    return counted_calloc(items, size);
}

static void count_zfree(voidpf opaque, voidpf p)
{
    counted_free(p);
}

int counted_inflateInit2_(z_streamp z, int bits, const char *version, int size)
{
    mem.inits++;
    z->zalloc = count_zalloc;
    z->zfree = count_zfree;
    return inflateInit2_(z, bits, version, size);
}

int counted_deflateInit2_(z_streamp z, int level, int method, int bits, int mem_level, int strategy,
                          const char *version, int size)
{
    mem.inits++;
    z->zalloc = count_zalloc;
    z->zfree = count_zfree;
    return deflateInit2_(z, level, method, bits, mem_level, strategy, version, size);
}

/* ---- the peer ---- */

enum peer_mode {
    PEER_ECHO,    /* inflate what comes, deflate it back, until EOF */
    PEER_BOMB,    /* send `bomb` zero bytes, compressed */
    PEER_GARBAGE, /* send bytes that are not DEFLATE */
    PEER_SINK,    /* inflate what comes, send nothing */
};

struct peer {
    int fd;
    enum peer_mode mode;
    size_t bomb;
    pthread_t thread;
    size_t received; /* plaintext bytes inflated */
    size_t wire_in;  /* compressed bytes received */
    uLong crc;       /* PEER_SINK: CRC-32 of the plaintext */
    bool ok;
};

static bool peer_send(int fd, z_stream *z, const unsigned char *p, size_t n, int flush)
{
    unsigned char out[65536];
    z->next_in = (unsigned char *)p;
    z->avail_in = (uInt)n;
    do {
        z->next_out = out;
        z->avail_out = sizeof out;
        if (deflate(z, flush) == Z_STREAM_ERROR)
            return false;
        if (test_write_all(fd, out, sizeof out - z->avail_out) < 0)
            return false;
    } while (z->avail_out == 0);
    return true;
}

static void *peer_main(void *arg)
{
    struct peer *pe = arg;
    z_stream in = {0}, out = {0};
    inflateInit2(&in, -15);
    deflateInit2(&out, 9, Z_DEFLATED, -15, 9, Z_DEFAULT_STRATEGY);
    pe->ok = true;
    if (pe->mode == PEER_BOMB) {
        static unsigned char zeros[1 << 20];
        for (size_t off = 0; off < pe->bomb && pe->ok; off += sizeof zeros)
            pe->ok = peer_send(pe->fd, &out, zeros, sizeof zeros, Z_NO_FLUSH);
        pe->ok = pe->ok && peer_send(pe->fd, &out, NULL, 0, Z_SYNC_FLUSH);
    } else if (pe->mode == PEER_GARBAGE) {
        /* a block header with the reserved type 11 */
        static const unsigned char bad[] = {0x07, 0xff, 0xff, 0xff};
        test_write_all(pe->fd, bad, sizeof bad);
    } else {
        static unsigned char wire[65536], plain[65536];
        pe->crc = crc32(0, Z_NULL, 0);
        for (;;) {
            ssize_t n = read(pe->fd, wire, sizeof wire);
            if (n <= 0)
                break;
            __atomic_fetch_add(&pe->wire_in, (size_t)n, __ATOMIC_RELEASE);
            in.next_in = wire;
            in.avail_in = (uInt)n;
            do {
                in.next_out = plain;
                in.avail_out = sizeof plain;
                int z = inflate(&in, Z_SYNC_FLUSH);
                if (z != Z_OK && z != Z_BUF_ERROR) {
                    pe->ok = false;
                    goto done;
                }
                size_t have = sizeof plain - in.avail_out;
                pe->received += have;
                pe->crc = crc32(pe->crc, plain, (uInt)have);
                if (pe->mode == PEER_SINK)
                    continue;
                /* echo each piece back, flushed */
                if (have && !peer_send(pe->fd, &out, plain, have, Z_SYNC_FLUSH)) {
                    pe->ok = false;
                    goto done;
                }
            } while (in.avail_out == 0);
        }
    }
done:
    inflateEnd(&in);
    deflateEnd(&out);
    shutdown(pe->fd, SHUT_WR);
    if (pe->mode != PEER_ECHO) {
        char sink[4096];
        while (read(pe->fd, sink, sizeof sink) > 0)
            ;
    }
    close(pe->fd);
    return NULL;
}

static struct stream *start(struct peer *pe)
{
    int fds[2];
    test_socketpair(fds);
    pe->fd = fds[1];
    if (pthread_create(&pe->thread, NULL, peer_main, pe) != 0)
        abort();
    struct stream *low = fd_stream_new(fds[0]), *s = NULL;
    char err[128];
    CHECK(compress_stream_new(low, &s, err, sizeof err) == 0);
    if (!s)
        abort();
    return s;
}

/* Reads exactly len bytes through s. */
static size_t read_exact(struct stream *s, unsigned char *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = stream_read(s, buf + got, len - got);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    return got;
}

static void test_small(void)
{
    struct peer pe = {.mode = PEER_ECHO};
    struct stream *s = start(&pe);
    /* each command goes out whole, flushed, so the peer answers at once */
    for (int i = 0; i < 200; i++) {
        char cmd[64], back[64];
        int n = snprintf(cmd, sizeof cmd, "a%03d NOOP\r\n", i);
        CHECK(stream_write(s, cmd, (size_t)n) == 0);
        CHECK(read_exact(s, (unsigned char *)back, (size_t)n) == (size_t)n);
        CHECK(memcmp(cmd, back, (size_t)n) == 0);
    }
    /* one-byte writes and a zero-length write */
    CHECK(stream_write(s, "", 0) == 0);
    for (int i = 0; i < 10; i++) {
        char c = (char)('0' + i), back = 0;
        CHECK(stream_write(s, &c, 1) == 0);
        CHECK(stream_read(s, &back, 1) == 1 && back == c);
    }
    stream_free(&s);
    pthread_join(pe.thread, NULL);
    CHECK(pe.ok);
    CHECK(pe.received == 200 * 11 + 10);
}

static void test_large(void)
{
    /* half compressible text, half noise; several MB in odd-sized writes */
    const size_t total = 9 * 1024 * 1024 + 77;
    static unsigned char buf[1 << 20], want[1 << 20];
    struct peer pe = {.mode = PEER_ECHO};
    struct stream *s = start(&pe);
    /* write and read in turns, since the peer echoes as it inflates */
    size_t off = 0, got = 0, step = 1000;
    bool same = true;
    while (off < total) {
        size_t n = total - off < step ? total - off : step;
        for (size_t i = 0; i < n; i++)
            buf[i] = ((off + i) / 4096) % 2 ? (unsigned char)('a' + (off + i) % 26) : 0;
        test_pattern(3, off, want, n);
        for (size_t i = 0; i < n; i++)
            if (buf[i] == 0)
                buf[i] = want[i];
        if (stream_write(s, buf, n) != 0)
            break;
        size_t r = read_exact(s, want, n);
        if (r != n || memcmp(want, buf, n) != 0)
            same = false;
        got += r;
        off += n;
        /* the echo must fit in the socket buffers while we still write:
         * steps stay below ~100 KB, though above the layer's 64 KiB chunk */
        step = step * 2 + 1;
        if (step > 100000)
            step = 333;
    }
    CHECK(off == total && got == total && same);
    stream_free(&s);
    pthread_join(pe.thread, NULL);
    CHECK(pe.ok && pe.received == total);
    /* the compressible half did shrink on the wire */
    CHECK(pe.wire_in < total * 3 / 4);
}

/* Fills buf with base64 of noise (an attachment) or with words (text). */
static void fill_mail_like(bool base64, size_t offset, unsigned char *buf, size_t len)
{
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    static const char *const words[] = {"the ",     "meeting ", "report ", "budget ", "sync ",
                                        "mailbox ", "folder ",  "review ", "draft ",  "invoice ",
                                        "travel ",  "plan ",    "status ", "backup ", "kernel "};
    unsigned char noise[1];
    size_t i = 0;
    while (i < len) {
        size_t at = offset + i;
        if (base64) {
            test_pattern(7, at, noise, 1);
            buf[i++] =
                at % 78 >= 76 ? (at % 78 == 76 ? '\r' : '\n') : (unsigned char)b64[noise[0] % 64];
            continue;
        }
        test_pattern(9, at / 8, noise, 1);
        const char *w = words[noise[0] % 15];
        for (size_t k = 0; w[k] && i < len; k++)
            buf[i++] = (unsigned char)w[k];
    }
}

static size_t wire_in(struct peer *pe)
{
    return __atomic_load_n(&pe->wire_in, __ATOMIC_ACQUIRE);
}

static void test_adaptive(void)
{
    /* attachments and text in turns, in 60 KB writes like the client's:
     * every byte comes back intact across the strategy switches, and text
     * after an attachment is compressed with string matching again */
    static unsigned char buf[60000], back[60000];
    const size_t phase = 1200000;
    struct peer pe = {.mode = PEER_ECHO};
    struct stream *s = start(&pe);
    bool same = true;
    size_t off = 0;
    for (int k = 0; k < 6; k++) {
        bool base64 = k % 2 == 0;
        size_t wire_before = wire_in(&pe);
        for (size_t done = 0; done < phase; done += sizeof buf) {
            fill_mail_like(base64, off, buf, sizeof buf);
            off += sizeof buf;
            if (stream_write(s, buf, sizeof buf) != 0 ||
                read_exact(s, back, sizeof back) != sizeof back) {
                same = false;
                break;
            }
            if (memcmp(buf, back, sizeof buf) != 0)
                same = false;
        }
        size_t pct = (wire_in(&pe) - wire_before) * 100 / phase;
        CHECK(pct < (base64 ? 80u : 45u));
        if (pct >= (base64 ? 80u : 45u))
            fprintf(stderr, "  phase %d (%s): %zu%% on the wire\n", k, base64 ? "base64" : "text",
                    pct);
    }
    CHECK(same);
    stream_free(&s);
    pthread_join(pe.thread, NULL);
    CHECK(pe.ok && pe.received == off);
}

/* Writes `total` bytes of text through s in 60 KB writes; returns the
 * plaintext's CRC-32 continued from crc. */
static uLong write_text(struct stream *s, size_t *off, size_t total, uLong crc, unsigned queued_us)
{
    static unsigned char buf[60000];
    for (size_t done = 0; done < total; done += sizeof buf) {
        sched_advance(queued_us);
        fill_mail_like(false, *off, buf, sizeof buf);
        *off += sizeof buf;
        CHECK(stream_write(s, buf, sizeof buf) == 0);
        crc = crc32(crc, buf, sizeof buf);
    }
    return crc;
}

static void test_effort_follows_the_link(void)
{
    /* Writes that wait far longer than deflate computes (a slow link)
     * make the level climb to zlib's default; once deflate takes longer
     * than the waits (a fast link), it comes back down to 1. Every byte
     * arrives intact across the level changes, and the text takes fewer
     * bytes on the wire at the higher level. */
    struct peer pe = {.mode = PEER_SINK};
    struct stream *s = start(&pe);
    CHECK(compress_stream_level(s) == 1);
    size_t off = 0;
    uLong crc = crc32(0, Z_NULL, 0);
    /* each write below seems to wait 5 ms (its two readings of the wall
     * clock), each deflate call to take 50 us of CPU */
    clocks.wall_step = 5000000;
    clocks.cpu_step = 50000;
    crc = write_text(s, &off, 1200000, crc, 0);
    int slow_level = compress_stream_level(s);
    uint64_t in0, out0, out1;
    compress_stream_totals(s, &in0, &out0);
    crc = write_text(s, &off, 1200000, crc, 0);
    compress_stream_totals(s, &in0, &out1);
    size_t slow_wire = (size_t)(out1 - out0);
    CHECK(slow_level == 6 && compress_stream_level(s) == 6);
    clocks.wall_step = 0;
    /* (down one level every four windows of 256 KiB) */
    crc = write_text(s, &off, 3000000, crc, 0);
    int fast_level = compress_stream_level(s);
    compress_stream_totals(s, &in0, &out0);
    crc = write_text(s, &off, 1200000, crc, 0);
    compress_stream_totals(s, &in0, &out1);
    size_t fast_wire = (size_t)(out1 - out0);
    CHECK(fast_level == 1 && compress_stream_level(s) == 1);
    clocks.cpu_step = 0;
    stream_free(&s);
    pthread_join(pe.thread, NULL);
    CHECK(pe.ok && pe.received == off && pe.crc == crc);
    CHECK(slow_wire < fast_wire);
    if (slow_level != 6 || fast_level != 1 || slow_wire >= fast_wire)
        fprintf(stderr, "  levels %d then %d; text on the wire %zu then %zu bytes\n", slow_level,
                fast_level, slow_wire, fast_wire);
}

/* A layer that passes everything through and reports the backlog the
 * test sets. */
struct pile_stream {
    struct stream base;
    size_t backlog;
};

static ssize_t pile_read(struct stream *s, void *buf, size_t cap)
{
    return stream_read(s->lower, buf, cap);
}

static int pile_write(struct stream *s, const void *buf, size_t len)
{
    return stream_write(s->lower, buf, len);
}

static void pile_free(struct stream *s)
{
    stream_free(&s->lower);
    free(s);
}

static size_t pile_backlog(const struct stream *s)
{
    return ((const struct pile_stream *)s)->backlog;
}

static const struct stream_ops pile_ops = {
    .read = pile_read, .write = pile_write, .free = pile_free, .backlog = pile_backlog};

static void test_effort_follows_the_backlog(void)
{
    /* A link slower than the writer may never make a write wait (the
     * socket buffers hold megabytes), but what was written piles up below,
     * unsent: the level climbs. Once the pile is gone and deflate costs
     * more than the (absent) waits, it comes back down. */
    struct peer pe = {.mode = PEER_SINK};
    int fds[2];
    test_socketpair(fds);
    pe.fd = fds[1];
    if (pthread_create(&pe.thread, NULL, peer_main, &pe) != 0)
        abort();
    struct pile_stream *pile = calloc(1, sizeof *pile);
    if (!pile)
        abort();
    stream_init(&pile->base, &pile_ops, fd_stream_new(fds[0]), NULL);
    struct stream *s = NULL;
    char err[128];
    CHECK(compress_stream_new(&pile->base, &s, err, sizeof err) == 0);
    if (!s)
        abort();
    size_t off = 0;
    uLong crc = crc32(0, Z_NULL, 0);
    /* every write below waits 1 ms, every deflate call takes 1 ms of CPU:
     * the waits alone do not say the link is the limit */
    clocks.wall_step = 1000000;
    clocks.cpu_step = 1000000;
    pile->backlog = (size_t)1 << 20;
    /* a busy machine: the process waits 5 ms for a core at every write */
    crc = write_text(s, &off, 600000, crc, 5000);
    int busy_level = compress_stream_level(s);
    CHECK(busy_level == 1);
    /* (what the layer knows of the machine fades by 1/8 a window) */
    crc = write_text(s, &off, 4000000, crc, 0);
    int piled_level = compress_stream_level(s);
    CHECK(piled_level == 6);
    pile->backlog = 0;
    clocks.cpu_step = 3000000; /* deflate now takes longer than the waits */
    crc = write_text(s, &off, 3000000, crc, 0);
    int drained_level = compress_stream_level(s);
    CHECK(drained_level == 1);
    /* the pile again, the machine busy again: back down */
    pile->backlog = (size_t)1 << 20;
    clocks.cpu_step = 1000000;
    crc = write_text(s, &off, 1200000, crc, 0);
    CHECK(compress_stream_level(s) == 6);
    crc = write_text(s, &off, 3000000, crc, 5000);
    int busy_again = compress_stream_level(s);
    CHECK(busy_again == 1);
    if (busy_level != 1 || piled_level != 6 || drained_level != 1 || busy_again != 1)
        fprintf(stderr, "  levels %d busy, %d with a pile, %d without, %d busy again\n", busy_level,
                piled_level, drained_level, busy_again);
    clocks.cpu_step = clocks.wall_step = 0;
    stream_free(&s);
    pthread_join(pe.thread, NULL);
    CHECK(pe.ok && pe.received == off && pe.crc == crc);
}

static void test_bomb(void)
{
    const size_t bomb = (size_t)512 << 20; /* 512 MiB of zeros, ~0.5 MiB compressed */
    struct peer pe = {.mode = PEER_BOMB, .bomb = bomb};
    CHECK_UINT(mem.live, 0); /* the earlier tests freed everything */
    mem.peak = 0;
    unsigned long inits = mem.inits;
    struct stream *s = start(&pe);
    /* both directions' z_streams went through the counting hooks */
    CHECK_UINT(mem.inits - inits, 2);
    static unsigned char buf[8192];
    size_t total = 0, largest = 0, peak_first = 0;
    bool zeros = true;
    for (;;) {
        ssize_t n = stream_read(s, buf, sizeof buf);
        if (n <= 0) {
            CHECK_INT(n, 0);
            break;
        }
        if (total == 0)
            peak_first = mem.peak;
        if ((size_t)n > largest)
            largest = (size_t)n;
        for (ssize_t i = 0; i < n; i++)
            if (buf[i])
                zeros = false;
        total += (size_t)n;
    }
    size_t peak = mem.peak;
    stream_free(&s);
    pthread_join(pe.thread, NULL);
    CHECK(pe.ok);
    CHECK_UINT(total, bomb);
    CHECK(zeros);
    CHECK(largest <= sizeof buf);
    /* the counting saw the layer: its two 64 KiB buffers at least, and
     * zlib's states and inflate window through the hooks */
    CHECK(peak_first >= 128 * 1024);
    CHECK(mem.zalloc >= 3);
    /* everything the layer holds was there after the first read: 512 MiB
     * of output later it has allocated nothing more */
    CHECK_UINT(peak, peak_first);
    /* buffers and zlib's states (deflate at level 1, memory level 8, and
     * inflate with its 32 KiB window) come to about 0.5 MiB */
    if (!CHECK(peak < 1024 * 1024))
        fprintf(stderr, "  the layer held %zu bytes at its peak\n", peak);
    /* and gave it all back */
    CHECK_UINT(mem.live, 0);
}

static void test_garbage(void)
{
    struct peer pe = {.mode = PEER_GARBAGE};
    struct stream *s = start(&pe);
    char buf[64];
    ssize_t n = stream_read(s, buf, sizeof buf);
    CHECK(n == ERR_PROTOCOL);
    CHECK(strncmp(s->error, "COMPRESS: invalid compressed data", 33) == 0);
    /* the failure sticks */
    CHECK(stream_read(s, buf, sizeof buf) == ERR_PROTOCOL);
    stream_free(&s);
    pthread_join(pe.thread, NULL);
}

static void test_eof_and_lower_error(void)
{
    int fds[2];
    test_socketpair(fds);
    struct stream *low = fd_stream_new(fds[0]), *s = NULL;
    char err[128];
    CHECK(compress_stream_new(low, &s, err, sizeof err) == 0);
    close(fds[1]);
    char buf[16];
    CHECK(stream_read(s, buf, sizeof buf) == 0);
    int rc = stream_write(s, "x", 1);
    CHECK(rc == -EPIPE);
    CHECK(strncmp(s->error, "COMPRESS: write: ", 17) == 0);
    stream_free(&s);
    CHECK(s == NULL);
}

int main(void)
{
    sched_advance(0);
    /* a peer may write after the other end hung up, in failure cases */
    signal(SIGPIPE, SIG_IGN);
    test_small();
    test_large();
    test_adaptive();
    test_effort_follows_the_link();
    test_effort_follows_the_backlog();
    test_bomb();
    test_garbage();
    test_eof_and_lower_error();
    return check_finish();
}
