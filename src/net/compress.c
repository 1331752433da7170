/*
 * COMPRESS=DEFLATE (RFC 4978): raw DEFLATE streams (no zlib header, 32 KiB
 * window) in both directions over the stream below.
 *
 * Reading inflates straight into the caller's buffer, so however well the
 * peer's data compresses, one read produces at most `cap` bytes and the
 * layer allocates nothing per read. Writing deflates in chunks and ends
 * every write with Z_SYNC_FLUSH, so the server can act on a command without
 * waiting for more input. The two directions use separate z_streams and may
 * run in different coroutines at the same time.
 *
 * Deflate adapts to what it is given. Most of an initial sync's bytes are
 * base64 attachments of already compressed files: string matching finds
 * next to nothing there, and Huffman coding alone gets the same
 * 6-bits-per-byte ratio at a quarter of the CPU (and as few bytes as level
 * 6 does, where level 1's matches cost a little). Text is the opposite:
 * Huffman coding alone leaves two thirds of it, string matching a third or
 * less. So each sizeable write is looked at before it is deflated: one
 * made almost only of the base64 alphabet and line ends is deflated with
 * Huffman coding alone, anything else (text has spaces and punctuation)
 * with string matching. Each write ends with a sync flush, so a switch
 * never splits pending input.
 *
 * The effort adapts to what limits the writes, between level 0 (stored
 * blocks: next to no CPU for us and for the server's inflate, about the
 * input's size on the wire) and 9. When the link is slower than the writer,
 * a higher level costs no time and saves bytes that the link would otherwise
 * carry; that shows as bytes written but not sent, piling up below
 * (stream_backlog), many and worth more than a moment of what the link
 * carried lately, or as writes that keep the writer waiting most of the time
 * and far longer than deflate keeps it computing. When they have for two
 * windows of input in a row (a server that stops reading for a moment is not
 * a slow link), the level goes up a step per window: a pile hides deflate's
 * time however busy the process is, if the machine has a core to spare
 * (where it has none, deflating more takes from someone else: the servers
 * may run on it too); waits do if the process has time to spare. When
 * deflate takes longer than the waits, nothing piles up and the process has
 * no time to spare, the CPU is the limit and the level goes down (slowly: a
 * link that has just drained has nothing piled up for a moment; more slowly
 * to 0, and more slowly again each time a pile took the level back up from
 * there, so that it does not go to 0 and back for ever). A stream starts at
 * zlib's default, 6, and does not go down during its first few megabytes:
 * until the buffers on the way fill, a slow link looks like a fast one. The
 * times are the CPU time of each write's deflate calls, the wall time of its
 * writes below and what the kernel says of the process and of the machine's
 * idle cores, summed over a window of input so that one short wait does not
 * move the level. The kernel's socket buffer can hold megabytes, so on a
 * slow link the writes themselves may not wait at all for a long time. With
 * level 0, the strategy does not matter: Huffman coding is for levels 1 and
 * up.
 */
#include "net/compress.h"

#include "errors.h"
#include "net/stream.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>
#include <zlib.h>

#define COMPRESS_CHUNK (64 * 1024)

/* The smallest write whose content chooses the strategy (commands are short
 * and say little about the data that follows), and the share of bytes from
 * outside the base64 alphabet and line ends (1 in BASE64_OTHER_MAX) below
 * which a write counts as base64: a base64 body has none but its '='
 * padding, text about one in six (spaces, punctuation). */
#define ADAPT_MIN_INPUT  (8 * 1024)
#define BASE64_OTHER_MAX 50

/* The deflate levels the effort moves between, and the input that makes a
 * window. Level 0 (stored blocks) costs us and the server's inflate next to
 * nothing; 9 takes a little more than 6 on mail and saves a little more,
 * which pays only where the bytes wait for the link anyway. A stream
 * starts at zlib's default, 6: until its buffers fill, a slow link looks
 * like a fast one, and the first windows would otherwise go out at the
 * cheapest level exactly where bytes cost the most. */
static const int compress_levels[] = {0, 1, 3, 6, 9};
#define COMPRESS_LEVELS (sizeof compress_levels / sizeof compress_levels[0])
#define LEVEL_START     3
#define LEVEL_WINDOW    (256 * 1024)
/* Writes that waited more than LEVEL_UP_WAIT times what deflate took, and
 * most of the window's time, say the link is the limit; so does a pile
 * (below). The level goes up once they have said so for LEVEL_UP_WINDOWS
 * windows in a row: a server that stops reading for a moment (it commits
 * a mailbox's messages before answering their APPEND) makes one write
 * wait and leaves a pile, on a link that is fast. */
#define LEVEL_UP_WAIT    4
#define LEVEL_UP_WINDOWS 2
/* Windows in a row that the CPU must limit before the level goes down a
 * step: a link that just drained (the writer waited for an answer) has
 * nothing piled up for a moment, and the level would drop at every such
 * pause. The step to level 0 takes more (LEVEL_ZERO_WINDOWS), and twice
 * as many again each time a pile made the level leave 0, up to
 * LEVEL_ZERO_WINDOWS_MAX: a link about as fast as the writer at level 0
 * would otherwise have it go to 0 and back for ever. */
#define LEVEL_DOWN_WINDOWS     4
#define LEVEL_ZERO_WINDOWS     8
#define LEVEL_ZERO_WINDOWS_MAX 128
/* Windows at the start during which the level does not go down: the
 * socket's buffer, and those on the way, take megabytes before a slow
 * link shows as a pile. */
#define LEVEL_SETTLE_WINDOWS 16
/* Unsent bytes above which the link may be the limit (a quarter of a
 * second at 8 Mbit/s), and below which it surely is not. It is the limit
 * if the pile is also worth more than PILE_NS of what the link carried
 * lately: on a fast link, a burst of writes leaves a pile that is gone a
 * moment later. */
#define BACKLOG_HIGH (256 * 1024)
#define BACKLOG_LOW  (64 * 1024)
#define PILE_NS      50000000.0

/* Where the kernel tells how long this process ran and how long it waited
 * to run, in nanoseconds (Linux; elsewhere the file does not exist). */
#ifndef COMPRESS_SCHEDSTAT
#define COMPRESS_SCHEDSTAT "/proc/self/schedstat"
#endif
/* ... and how long the machine's cores were idle, in clock ticks, on its
 * first line (Linux). A tick is 10 ms, longer than a window may take: the
 * machine is looked at once in IDLE_SAMPLE_NS at most. */
#ifndef COMPRESS_PROCSTAT
#define COMPRESS_PROCSTAT "/proc/stat"
#endif
#define IDLE_SAMPLE_NS 100000000u

struct compress_stream {
    struct stream base;
    z_stream in;           /* inflate: lower -> caller */
    z_stream out;          /* deflate: caller -> lower */
    bool in_end;           /* the peer finished its DEFLATE stream */
    bool huffman;          /* deflating with Z_HUFFMAN_ONLY (see the top) */
    unsigned level;        /* index in compress_levels (see the top) */
    unsigned level_next;   /* the level the next write asks for */
    unsigned cpu_windows;  /* windows in a row that the CPU limited */
    unsigned link_windows; /* ... that the link limited */
    unsigned zero_windows; /* ... that it takes to go down to level 0 */
    unsigned windows;      /* windows so far, up to LEVEL_SETTLE_WINDOWS */
    /* the scheduler's times for this process, and the machine's idle
     * time, at the last window's end */
    unsigned long long sched_run, sched_queued;
    bool sched_known;
    /* the machine's idle time when it was last looked at, and when; and
     * whether it had a core to spare then (see compress_cpu_room) */
    unsigned long long machine_idle;
    uint64_t idle_at;
    bool idle_known, spare;
    uint64_t win_start; /* wall clock at the window's start */
    /* decaying sums (see compress_cpu_room), and of the bytes the link
     * carried and the time it took (see compress_pile) */
    uint64_t busy_ns, wall_ns, carried, link_ns;
    size_t backlog; /* unsent bytes at the last window's end */
    size_t win_out; /* bytes written below in the current window */
    size_t win_in;  /* input of the current window */
    uint64_t win_deflate_ns, win_wait_ns;
    int in_err;
    int out_err;
    unsigned char inbuf[COMPRESS_CHUNK];
    unsigned char outbuf[COMPRESS_CHUNK];
};

static ssize_t compress_read(struct stream *s, void *buf, size_t cap)
{
    struct compress_stream *cs = (struct compress_stream *)s;
    if (cs->in_err)
        return cs->in_err;
    if (cap > COMPRESS_CHUNK * 16)
        cap = COMPRESS_CHUNK * 16; /* avail_out is a uInt */
    for (;;) {
        if (cs->in_end)
            return 0;
        if (cs->in.avail_in > 0) {
            cs->in.next_out = buf;
            cs->in.avail_out = (uInt)cap;
            int z = inflate(&cs->in, Z_SYNC_FLUSH);
            size_t produced = cap - cs->in.avail_out;
            if (z == Z_STREAM_END)
                cs->in_end = true;
            else if (z != Z_OK && z != Z_BUF_ERROR) {
                stream_set_error(s, "COMPRESS: invalid compressed data from the server: %s",
                                 cs->in.msg ? cs->in.msg : zError(z));
                return cs->in_err = ERR_PROTOCOL;
            }
            if (produced > 0)
                return (ssize_t)produced;
            if (cs->in_end)
                return 0;
            /* room was left in buf, so inflate must have taken all input */
            if (cs->in.avail_in > 0) {
                stream_set_error(s, "COMPRESS: inflate made no progress");
                return cs->in_err = ERR_PROTOCOL;
            }
        }
        ssize_t n = stream_read(s->lower, cs->inbuf, sizeof cs->inbuf);
        if (n < 0) {
            stream_take_error(s, "COMPRESS");
            return cs->in_err = (int)n;
        }
        if (n == 0)
            return 0;
        cs->in.next_in = cs->inbuf;
        cs->in.avail_in = (uInt)n;
    }
}

/* The thread's CPU time: what deflate costs, however busy the machine (a
 * deflate call never yields, so nothing else runs on the thread meanwhile).
 * The waits are measured in wall time. */
static uint64_t compress_cpu_ns(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0)
        return 0;
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Writes the first `have` bytes of outbuf to the stream below. */
static int compress_send(struct compress_stream *cs, size_t have)
{
    if (have == 0)
        return 0;
    uint64_t t0 = uv_hrtime();
    int rc = stream_write(cs->base.lower, cs->outbuf, have);
    cs->win_wait_ns += uv_hrtime() - t0;
    cs->win_out += have;
    if (rc < 0) {
        stream_take_error(&cs->base, "COMPRESS");
        return cs->out_err = rc;
    }
    return 0;
}

/* The start of a file of the kernel's, as a string in buf (size bytes).
 * False where it cannot be read. */
static bool compress_read_proc(const char *path, char *buf, size_t size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    ssize_t n = read(fd, buf, size - 1);
    close(fd);
    if (n <= 0)
        return false;
    buf[n] = '\0';
    return true;
}

/* The kernel's figures for this process: nanoseconds it ran and waited to
 * run. False where they cannot be read. */
static bool compress_schedstat(unsigned long long *run, unsigned long long *queued)
{
    char buf[128];
    if (!compress_read_proc(COMPRESS_SCHEDSTAT, buf, sizeof buf))
        return false;
    char *end;
    errno = 0;
    *run = strtoull(buf, &end, 10);
    if (end == buf)
        return false;
    char *p = end;
    *queued = strtoull(p, &end, 10);
    return end != p && errno == 0;
}

/* The time the machine's cores have been idle (or waiting for a disk),
 * in nanoseconds summed over the cores. False where it cannot be read. */
static bool compress_machine_idle(unsigned long long *idle)
{
    char buf[256];
    if (!compress_read_proc(COMPRESS_PROCSTAT, buf, sizeof buf))
        return false;
    /* "cpu  user nice system idle iowait ..." */
    if (strncmp(buf, "cpu ", 4) != 0)
        return false;
    unsigned long long v[5];
    char *p = buf + 4;
    for (int i = 0; i < 5; i++) {
        char *end;
        errno = 0;
        v[i] = strtoull(p, &end, 10);
        if (end == p || errno != 0)
            return false;
        p = end;
    }
    long hz = sysconf(_SC_CLK_TCK);
    if (hz <= 0)
        return false;
    *idle = (v[3] + v[4]) * (1000000000ull / (unsigned long long)hz);
    return true;
}

/* What the kernel says of the process and the machine: whether the
 * process has time to spare (lately, each window's times weighing 1/8
 * less than the next one's, it ran or waited for a core at most half of
 * the wall time) and whether the machine has a core to spare (its cores
 * were idle for at least half of the wall time in all, over the last
 * IDLE_SAMPLE_NS or more: deflating more there takes nothing from anyone,
 * the servers included, which may run on the same machine). A link
 * slower than the writer shows as long idle stretches between bursts (the
 * writer waits for the server's answers while the link drains), during
 * which the window does not move: they count in the next window's time.
 * Where the kernel does not tell the time spent waiting for a core,
 * deflate's CPU time stands for the time busy; where it does not tell the
 * machine's idle time, the machine has a core to spare. Until it has been
 * looked at for long enough, it has none. */
static void compress_cpu_room(struct compress_stream *cs, uint64_t now, uint64_t wall, bool *room,
                              bool *spare)
{
    uint64_t busy = cs->win_deflate_ns;
    unsigned long long run, queued;
    if (compress_schedstat(&run, &queued)) {
        if (cs->sched_known)
            busy = (run - cs->sched_run) + (queued - cs->sched_queued);
        cs->sched_run = run;
        cs->sched_queued = queued;
        cs->sched_known = true;
    }
    cs->busy_ns = cs->busy_ns - cs->busy_ns / 8 + busy;
    cs->wall_ns = cs->wall_ns - cs->wall_ns / 8 + wall;
    *room = cs->busy_ns * 2 <= cs->wall_ns;
    /* (the file is not read more often than that: on a machine of many
     * cores it is long) */
    unsigned long long idle;
    if (cs->idle_known && now - cs->idle_at < IDLE_SAMPLE_NS) {
        /* the last verdict stands */
    } else if (!compress_machine_idle(&idle)) {
        cs->spare = true;
    } else if (!cs->idle_known) {
        cs->idle_known = true;
        cs->machine_idle = idle;
        cs->idle_at = now;
    } else {
        cs->spare = (idle - cs->machine_idle) * 2 >= now - cs->idle_at;
        cs->machine_idle = idle;
        cs->idle_at = now;
    }
    *spare = cs->spare;
}

/* Whether the bytes written but not sent yet, `backlog` at the end of a
 * window that took `wall`, say that the link is behind: there are many,
 * and they are worth more than PILE_NS at the rate the link took the
 * bytes lately (what was unsent at the last window's end and what was
 * written since, less what is unsent now). Only windows that began with
 * bytes unsent tell that rate: in the others the link may have been idle
 * part of the time (the writer waiting for an answer), and it would seem
 * slower than it is. A link that took nothing is as slow as can be. */
static bool compress_pile(struct compress_stream *cs, size_t backlog, uint64_t wall)
{
    if (cs->backlog > BACKLOG_LOW) {
        size_t before = cs->backlog + cs->win_out;
        uint64_t carried = before > backlog ? before - backlog : 0;
        cs->carried = cs->carried - cs->carried / 8 + carried;
        cs->link_ns = cs->link_ns - cs->link_ns / 8 + wall;
    }
    cs->backlog = backlog;
    return backlog > BACKLOG_HIGH && cs->link_ns > 0 &&
           (double)backlog * (double)cs->link_ns > PILE_NS * (double)cs->carried;
}

/* The level the window that ends asks for (see the top): up while the
 * link is the limit, down while the CPU is. */
static unsigned compress_next_level(struct compress_stream *cs, size_t in)
{
    unsigned level = cs->level_next;
    cs->win_in += in;
    if (cs->win_in < LEVEL_WINDOW)
        return level;
    /* (the first window's time would count the login and the round trips
     * before the first sizeable write: it is left out) */
    uint64_t now = uv_hrtime();
    uint64_t wall = cs->win_start ? now - cs->win_start : 0;
    cs->win_start = now;
    size_t backlog = stream_backlog(cs->base.lower);
    bool room, spare;
    compress_cpu_room(cs, now, wall, &room, &spare);
    /* Unsent bytes piling up say the link is behind, however busy the
     * process is: deflate's time is hidden behind the pile's, as long as
     * the machine has a core to spare for it (where it has none, the
     * link may be a server on the same machine, and the time we would
     * take is its). Without a pile, writes that kept the writer
     * waiting most of the window say the same (a tunnel has no kernel
     * buffer to pile up in; a TCP socket's may be small). */
    bool pile = compress_pile(cs, backlog, wall);
    bool waited =
        cs->win_wait_ns > LEVEL_UP_WAIT * cs->win_deflate_ns && cs->win_wait_ns * 2 > wall;
    bool link_bound = (pile && spare) || (waited && room);
    /* Deflate took longer than the writes waited, nothing piled up, and
     * the process had no time to spare: the CPU is the limit. */
    bool cpu_bound = backlog < BACKLOG_LOW && cs->win_wait_ns < cs->win_deflate_ns && !room;
    if (cs->windows < LEVEL_SETTLE_WINDOWS)
        cs->windows++;
    else
        cs->cpu_windows = cpu_bound ? cs->cpu_windows + 1 : 0;
    cs->link_windows = link_bound ? cs->link_windows + 1 : 0;
    if (cs->link_windows >= LEVEL_UP_WINDOWS) {
        if (level == 0 && cs->zero_windows < LEVEL_ZERO_WINDOWS_MAX)
            cs->zero_windows *= 2;
        if (level + 1 < COMPRESS_LEVELS)
            level++;
    } else if (level > 0 &&
               cs->cpu_windows >= (level == 1 ? cs->zero_windows : LEVEL_DOWN_WINDOWS)) {
        level--;
        cs->cpu_windows = 0;
    }
    cs->win_in = cs->win_out = 0;
    cs->win_deflate_ns = cs->win_wait_ns = 0;
    return level;
}

/* Whether the bytes are base64 text (an attachment): nearly all from its
 * alphabet or line ends. */
static bool compress_looks_base64(const unsigned char *p, size_t len)
{
    size_t other = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = p[i];
        bool b64 = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                   c == '+' || c == '/' || c == '=' || c == '\r' || c == '\n';
        other += !b64;
    }
    return other * BASE64_OTHER_MAX < len;
}

/* Sets the strategy and level the next write is deflated with; nothing is
 * pending after the previous write's sync flush. */
static int compress_set_params(struct compress_stream *cs, bool huffman, unsigned level)
{
    if (huffman == cs->huffman && level == cs->level)
        return 0;
    /* nothing is pending after the sync flush; should zlib still emit
     * something, it goes out rather than being lost */
    cs->out.next_out = cs->outbuf;
    cs->out.avail_out = sizeof cs->outbuf;
    int z = deflateParams(&cs->out, compress_levels[level],
                          huffman ? Z_HUFFMAN_ONLY : Z_DEFAULT_STRATEGY);
    int rc = compress_send(cs, sizeof cs->outbuf - cs->out.avail_out);
    if (rc == 0 && z == Z_OK) {
        cs->huffman = huffman;
        cs->level = level;
    }
    return rc;
}

static int compress_write(struct stream *s, const void *buf, size_t len)
{
    struct compress_stream *cs = (struct compress_stream *)s;
    const unsigned char *p = buf;
    if (cs->out_err)
        return cs->out_err;
    if (len == 0)
        return 0;
    bool huffman = len >= ADAPT_MIN_INPUT ? compress_looks_base64(p, len) : cs->huffman;
    int rc = compress_set_params(cs, huffman, cs->level_next);
    if (rc < 0)
        return rc;
    size_t in_total = len;
    do {
        size_t chunk = len > COMPRESS_CHUNK ? COMPRESS_CHUNK : len;
        int flush = chunk == len ? Z_SYNC_FLUSH : Z_NO_FLUSH;
        cs->out.next_in = (unsigned char *)p;
        cs->out.avail_in = (uInt)chunk;
        /* a full output buffer means deflate may have more to give */
        do {
            cs->out.next_out = cs->outbuf;
            cs->out.avail_out = sizeof cs->outbuf;
            uint64_t t0 = compress_cpu_ns();
            int z = deflate(&cs->out, flush);
            cs->win_deflate_ns += compress_cpu_ns() - t0;
            if (z != Z_OK && z != Z_BUF_ERROR) {
                stream_set_error(s, "COMPRESS: deflate failed: %s",
                                 cs->out.msg ? cs->out.msg : zError(z));
                return cs->out_err = ERR_PROTOCOL;
            }
            rc = compress_send(cs, sizeof cs->outbuf - cs->out.avail_out);
            if (rc < 0)
                return rc;
        } while (cs->out.avail_out == 0);
        p += chunk;
        len -= chunk;
    } while (len > 0);
    cs->level_next = compress_next_level(cs, in_total);
    return 0;
}

static void compress_destroy(struct compress_stream *cs)
{
    inflateEnd(&cs->in);
    deflateEnd(&cs->out);
    free(cs);
}

static void compress_free(struct stream *s)
{
    struct compress_stream *cs = (struct compress_stream *)s;
    stream_free(&cs->base.lower);
    compress_destroy(cs);
}

static const struct stream_ops compress_ops = {
    .read = compress_read,
    .write = compress_write,
    .free = compress_free,
};

int compress_stream_new(struct stream *lower, struct stream **out, char *err, size_t errlen)
{
    *out = NULL;
    struct compress_stream *cs = calloc(1, sizeof *cs);
    if (!cs) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    /* negative window bits: raw DEFLATE, as RFC 4978 requires */
    if (inflateInit2(&cs->in, -15) != Z_OK) {
        free(cs);
        snprintf(err, errlen, "COMPRESS: cannot initialise inflate");
        return -ENOMEM;
    }
    /* zlib's default level to begin with (see the top) */
    if (deflateInit2(&cs->out, compress_levels[LEVEL_START], Z_DEFLATED, -15, 8,
                     Z_DEFAULT_STRATEGY) != Z_OK) {
        inflateEnd(&cs->in);
        free(cs);
        snprintf(err, errlen, "COMPRESS: cannot initialise deflate");
        return -ENOMEM;
    }
    cs->level = cs->level_next = LEVEL_START;
    cs->zero_windows = LEVEL_ZERO_WINDOWS;
    stream_init(&cs->base, &compress_ops, lower, lower->sched);
    *out = &cs->base;
    return 0;
}

void compress_stream_totals(const struct stream *s, uint64_t *raw_in, uint64_t *raw_out)
{
    const struct compress_stream *cs = (const struct compress_stream *)s;
    /* zlib counts what inflate consumed and deflate produced: every byte
     * read from below is consumed, every byte produced is written */
    *raw_in = cs->in.total_in;
    *raw_out = cs->out.total_out;
}

int compress_stream_level(const struct stream *s)
{
    const struct compress_stream *cs = (const struct compress_stream *)s;
    return compress_levels[cs->level_next];
}
