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
 * renamed the same way): each reading of the CPU clock moves it on by
 * clocks.cpu_step, and the wall clock by half as much, so every deflate
 * call costs cpu_step of both; the wall clock moves on besides only in
 * the tests' link layer below, whose writes take link.wait_ns each,
 * whatever the machine is doing. The step is 0 but in the tests of the
 * deflate level. What the scheduler says of the process (how long it ran
 * and waited for a core) and of the machine (how long its cores were
 * idle) is read from COMPRESS_SCHEDSTAT and COMPRESS_PROCSTAT, files the
 * test writes (see meson.build).
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
    uint64_t cpu_step;
} clocks;

uint64_t fake_hrtime(void);
int fake_clock_gettime(clockid_t id, struct timespec *ts);

uint64_t fake_hrtime(void)
{
    return clocks.wall;
}

int fake_clock_gettime(clockid_t id, struct timespec *ts)
{
    (void)id;
    clocks.cpu += clocks.cpu_step;
    clocks.wall += clocks.cpu_step / 2;
    ts->tv_sec = (time_t)(clocks.cpu / 1000000000u);
    ts->tv_nsec = (long)(clocks.cpu % 1000000000u);
    return 0;
}

/* What the layer reads of the scheduler: the process ran `run_us` more
 * since the last reading and waited `queued_us` more for a core, and the
 * machine's cores were idle `idle_us` more. */
static void sched_advance(unsigned run_us, unsigned queued_us, unsigned idle_us)
{
    static unsigned long long run, queued, idle;
    run += run_us * 1000ull;
    queued += queued_us * 1000ull;
    idle += idle_us;
    FILE *f = fopen(COMPRESS_SCHEDSTAT, "w");
    if (!f)
        abort();
    fprintf(f, "%llu %llu 1\n", run, queued);
    fclose(f);
    /* in clock ticks */
    unsigned long long us_per_tick = 1000000ull / (unsigned long long)sysconf(_SC_CLK_TCK);
    f = fopen(COMPRESS_PROCSTAT, "w");
    if (!f)
        abort();
    fprintf(f, "cpu  100 0 100 %llu 0 0 0 0 0 0\ncpu0 100 0 100 %llu 0 0 0 0 0 0\n",
            idle / us_per_tick, idle / us_per_tick);
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

/* ---- the deflate level ---- */

/* A link under the layer: passes everything through to a socket, and
 * reports the backlog the test sets; each write takes wait_ns of the wall
 * clock (a slow link makes the writer wait). */
struct link_stream {
    struct stream base;
    size_t backlog;
    uint64_t wait_ns;
};

static ssize_t link_read(struct stream *s, void *buf, size_t cap)
{
    return stream_read(s->lower, buf, cap);
}

static int link_write(struct stream *s, const void *buf, size_t len)
{
    clocks.wall += ((struct link_stream *)s)->wait_ns;
    return stream_write(s->lower, buf, len);
}

static void link_free(struct stream *s)
{
    stream_free(&s->lower);
    free(s);
}

static size_t link_backlog(const struct stream *s)
{
    return ((const struct link_stream *)s)->backlog;
}

static const struct stream_ops link_ops = {
    .read = link_read, .write = link_write, .free = link_free, .backlog = link_backlog};

/* A layer over the link over a socket to a sink peer. */
static struct stream *start_link(struct peer *pe, struct link_stream **link)
{
    int fds[2];
    test_socketpair(fds);
    pe->fd = fds[1];
    if (pthread_create(&pe->thread, NULL, peer_main, pe) != 0)
        abort();
    struct link_stream *l = calloc(1, sizeof *l);
    if (!l)
        abort();
    stream_init(&l->base, &link_ops, fd_stream_new(fds[0]), NULL);
    struct stream *s = NULL;
    char err[128];
    CHECK(compress_stream_new(&l->base, &s, err, sizeof err) == 0);
    if (!s)
        abort();
    *link = l;
    return s;
}

/* What the writes of one window do: per write, the process ran `run_us`
 * and waited `queued_us` for a core, spent `other_us` of the wall clock
 * on other work (reading what it writes, say) before it, and the
 * machine's cores were idle `idle_us` in all. */
struct window_load {
    unsigned run_us, queued_us, other_us, idle_us;
};

/* Where the text written so far ends, and its CRC-32. */
struct text_writer {
    size_t off;
    uLong crc;
};

/* Writes one window of text through s (five 60 KB writes: a window is 256
 * KiB of input, and what is beyond it does not carry over); returns the
 * level the next write gets. */
static int write_window(struct stream *s, struct text_writer *tw, struct window_load load)
{
    static unsigned char buf[60000];
    for (int i = 0; i < 5; i++) {
        sched_advance(load.run_us, load.queued_us, load.idle_us);
        clocks.wall += load.other_us * 1000ull;
        fill_mail_like(false, tw->off, buf, sizeof buf);
        tw->off += sizeof buf;
        CHECK(stream_write(s, buf, sizeof buf) == 0);
        tw->crc = crc32(tw->crc, buf, sizeof buf);
    }
    return compress_stream_level(s);
}

/* Writes windows until the level is `want` or `max` windows are written;
 * returns how many windows the level was `at` on the way. */
static unsigned write_until(struct stream *s, struct text_writer *tw, struct window_load load,
                            int want, unsigned max, int at)
{
    unsigned n = 0;
    for (unsigned i = 0; i < max && compress_stream_level(s) != want; i++)
        n += write_window(s, tw, load) == at;
    return n;
}

/* Compressed bytes the layer wrote for `windows` windows of text. */
static size_t wire_of(struct stream *s, struct text_writer *tw, struct window_load load,
                      unsigned windows)
{
    uint64_t in, out0, out1;
    compress_stream_totals(s, &in, &out0);
    for (unsigned i = 0; i < windows; i++)
        write_window(s, tw, load);
    compress_stream_totals(s, &in, &out1);
    return (size_t)(out1 - out0);
}

static void test_effort_follows_the_link(void)
{
    /* A stream starts at zlib's default level. Writes that keep the writer
     * waiting (a slow link) make it climb to 9; once deflate takes longer
     * than the writes and the process has no time to spare (a fast link,
     * the CPU the limit), it comes down step by step to 0, stored blocks
     * (more windows for the last step); a slow link takes it back up even
     * while the machine is short of a core for us. Every byte arrives
     * intact across the level changes. */
    struct peer pe = {.mode = PEER_SINK};
    struct link_stream *link;
    struct stream *s = start_link(&pe, &link);
    struct text_writer tw = {0, crc32(0, Z_NULL, 0)};
    CHECK_INT(compress_stream_level(s), 6);
    const size_t window_in = 300000;

    /* each write below waits 5 ms, each deflate call takes 50 us */
    link->wait_ns = 5000000;
    clocks.cpu_step = 50000;
    /* (the machine has a core and more to spare) */
    struct window_load idle = {200, 0, 0, 8000};
    write_until(s, &tw, idle, 9, 4, -1);
    int slow_level = compress_stream_level(s);
    CHECK_INT(slow_level, 9);
    size_t slow_wire = wire_of(s, &tw, idle, 4);

    /* writes that do not wait, deflate at 1 ms a call, the process busy
     * all the time: down to 0, through each level, 1 the longest */
    link->wait_ns = 0;
    clocks.cpu_step = 1000000;
    struct window_load busy = {1000, 0, 0, 0};
    int levels[80];
    unsigned nlevels = 0;
    while (nlevels < 80 && compress_stream_level(s) != 0)
        levels[nlevels++] = write_window(s, &tw, busy);
    bool down = true;
    unsigned at[10] = {0};
    for (unsigned i = 0; i < nlevels; i++) {
        if (i > 0 && levels[i] > levels[i - 1])
            down = false;
        at[levels[i]]++;
    }
    int fast_level = compress_stream_level(s);
    CHECK_INT(fast_level, 0);
    CHECK(down);
    /* every level on the way, and at least 8 windows at level 1 */
    CHECK(at[6] > 0 && at[3] > 0 && at[1] >= 8);
    size_t fast_wire = wire_of(s, &tw, busy, 2);
    /* stored blocks: the input and a little more */
    CHECK(fast_wire >= 2 * window_in && fast_wire < 2 * window_in + 1000);

    /* writes that take a little time (encryption, the system call) among
     * more time waiting for the servers: the level stays at 0, however
     * little deflate takes there */
    link->wait_ns = 200000;
    clocks.cpu_step = 10000;
    struct window_load working = {300, 0, 2000, 0};
    bool stayed = true;
    for (int i = 0; i < 8; i++)
        stayed = write_window(s, &tw, working) == 0 && stayed;
    CHECK(stayed);
    /* nor does one window whose writes wait long (a server that stops
     * reading while it commits a mailbox) */
    link->wait_ns = 60000000;
    stayed = write_window(s, &tw, idle) == 0 && stayed;
    link->wait_ns = 200000;
    for (int i = 0; i < 4; i++)
        stayed = write_window(s, &tw, working) == 0 && stayed;
    CHECK(stayed);

    /* the link slows down while the machine has no core to spare (the
     * process waits for one longer than it runs): back up, since the
     * writer waits most of the time */
    link->wait_ns = 5000000;
    clocks.cpu_step = 10000;
    struct window_load starved = {200, 1000, 0, 0};
    write_until(s, &tw, starved, 9, 40, -1);
    int slow_again = compress_stream_level(s);
    CHECK_INT(slow_again, 9);
    size_t slow_again_wire = wire_of(s, &tw, starved, 4);
    CHECK(slow_again_wire < 4 * window_in / 2);
    if (slow_level != 9 || fast_level != 0 || slow_again != 9 || slow_wire >= fast_wire)
        fprintf(stderr, "  levels %d, %d, %d; text on the wire %zu, %zu, %zu bytes\n", slow_level,
                fast_level, slow_again, slow_wire, fast_wire, slow_again_wire);
    clocks.cpu_step = 0;
    stream_free(&s);
    pthread_join(pe.thread, NULL);
    CHECK(pe.ok && pe.received == tw.off && pe.crc == tw.crc);
}

static void test_effort_settles(void)
{
    /* Until the buffers on the way have filled, a slow link looks like a
     * fast one: a new stream keeps zlib's default level for its first 16
     * windows (4 MiB), however busy the process, and only then goes down. */
    struct peer pe = {.mode = PEER_SINK};
    struct link_stream *link;
    struct stream *s = start_link(&pe, &link);
    struct text_writer tw = {0, crc32(0, Z_NULL, 0)};
    clocks.cpu_step = 1000000;
    struct window_load busy = {1000, 0, 0, 0};
    bool kept = true;
    for (int i = 0; i < 16; i++)
        kept = write_window(s, &tw, busy) == 6 && kept;
    CHECK(kept);
    write_until(s, &tw, busy, 3, 8, -1);
    CHECK_INT(compress_stream_level(s), 3);
    clocks.cpu_step = 0;
    stream_free(&s);
    pthread_join(pe.thread, NULL);
    CHECK(pe.ok && pe.received == tw.off && pe.crc == tw.crc);
}

static void test_effort_follows_the_backlog(void)
{
    /* A link slower than the writer may never make a write wait (the
     * socket buffers hold megabytes), but what was written piles up below,
     * unsent: the level climbs, unless the machine has no core to spare
     * (the link may be a server on the same machine). Once the pile is
     * gone and the CPU is the limit, it comes down to 0; there, a pile
     * that a fast link takes at once (a burst) does not move it, a lasting
     * one does, and the next way down to 0 takes longer (so that a link
     * about as fast as level 0 does not keep the level going to 0 and
     * back). */
    struct peer pe = {.mode = PEER_SINK};
    struct link_stream *link;
    struct stream *s = start_link(&pe, &link);
    struct text_writer tw = {0, crc32(0, Z_NULL, 0)};
    /* writes never wait, every deflate call takes 1 ms of CPU, and the
     * process runs all the time */
    clocks.cpu_step = 1000000;
    link->backlog = (size_t)4 << 20;
    /* the machine has no core to spare (and the process waits 5 ms for
     * one per write), for long enough to be looked at */
    struct window_load starved = {5000, 5000, 4000, 0};
    for (int i = 0; i < 6; i++)
        write_window(s, &tw, starved);
    int starved_level = compress_stream_level(s);
    CHECK_INT(starved_level, 6);
    /* it has (the other core is mostly idle): up (the layer looks at the
     * machine every 100 ms; a window takes 25 ms here) */
    struct window_load busy = {5000, 0, 4000, 4000};
    write_until(s, &tw, busy, 9, 16, -1);
    int piled_level = compress_stream_level(s);
    CHECK_INT(piled_level, 9);

    /* the pile is gone, the CPU the limit: down to 0 */
    link->backlog = 0;
    unsigned first_at_1 = write_until(s, &tw, busy, 0, 60, 1);
    int drained_level = compress_stream_level(s);
    CHECK_INT(drained_level, 0);
    CHECK(first_at_1 >= 8);

    /* a fast link, which takes what level 0 gives it (a few windows for
     * the layer to see that), then 1 MB unsent at the end of every other
     * window, gone by the next one */
    bool stayed = true;
    for (int i = 0; i < 8; i++)
        stayed = write_window(s, &tw, busy) == 0 && stayed;
    for (int i = 0; i < 20; i++) {
        link->backlog = i % 2 ? 0 : (size_t)1 << 20;
        stayed = write_window(s, &tw, busy) == 0 && stayed;
    }
    CHECK(stayed);

    /* a pile that lasts: back up */
    link->backlog = (size_t)4 << 20;
    write_until(s, &tw, busy, 9, 40, -1);
    int piled_again = compress_stream_level(s);
    CHECK_INT(piled_again, 9);

    /* and down again, longer at level 1 than the first time */
    link->backlog = 0;
    unsigned second_at_1 = write_until(s, &tw, busy, 0, 80, 1);
    CHECK_INT(compress_stream_level(s), 0);
    CHECK(second_at_1 > first_at_1);
    if (starved_level != 6 || piled_level != 9 || drained_level != 0 || !stayed ||
        piled_again != 9 || second_at_1 <= first_at_1)
        fprintf(stderr,
                "  levels %d without a core to spare, %d with a pile, %d without, %d again; %u "
                "then %u windows "
                "at 1\n",
                starved_level, piled_level, drained_level, piled_again, first_at_1, second_at_1);
    clocks.cpu_step = 0;
    stream_free(&s);
    pthread_join(pe.thread, NULL);
    CHECK(pe.ok && pe.received == tw.off && pe.crc == tw.crc);
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
    /* buffers and zlib's states (deflate at memory level 8, and
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
    sched_advance(0, 0, 0);
    /* a peer may write after the other end hung up, in failure cases */
    signal(SIGPIPE, SIG_IGN);
    test_small();
    test_large();
    test_adaptive();
    test_effort_settles();
    test_effort_follows_the_link();
    test_effort_follows_the_backlog();
    test_bomb();
    test_garbage();
    test_eof_and_lower_error();
    return check_finish();
}
