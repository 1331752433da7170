/*
 * Progress display on a terminal (see include/progress.h): the counters,
 * the line they make, and drawing it in place.
 */
#include "progress.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

/* Carriage return and "erase to the end of the line" (ECMA-48 EL). */
#define ERASE "\r\033[K"

struct progress {
    int fd;
    char mailbox[256];
    size_t index, count;
    uint64_t mbox_messages, mbox_bytes; /* in the current mailbox */
    uint64_t messages, bytes;           /* since the display was made */
    uint64_t first_copy_ns;             /* when bytes started to flow */
    uint64_t last_draw_ns;
    bool shown;  /* the line is on the screen */
    bool active; /* between progress_mailbox() and progress_end() */
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void write_all(int fd, const char *s, size_t len)
{
    while (len > 0) {
        ssize_t w = write(fd, s, len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return; /* a display: nothing to report a failure to */
        }
        s += w;
        len -= (size_t)w;
    }
}

struct progress *progress_new(int fd)
{
    struct progress *p = calloc(1, sizeof *p);
    if (p)
        p->fd = fd;
    return p;
}

void progress_free(struct progress **p)
{
    if (!p || !*p)
        return;
    progress_end(*p);
    free(*p);
    *p = NULL;
}

/* "812", "4.50 MiB", "1.20 GiB" */
static void size_text(uint64_t n, char *buf, size_t len)
{
    if (n < 1024)
        snprintf(buf, len, "%llu B", (unsigned long long)n);
    else if (n < 1048576)
        snprintf(buf, len, "%.1f KiB", (double)n / 1024.);
    else if (n < 1073741824)
        snprintf(buf, len, "%.2f MiB", (double)n / 1048576.);
    else
        snprintf(buf, len, "%.2f GiB", (double)n / 1073741824.);
}

size_t progress_format(const struct progress *p, uint64_t now, char *buf, size_t len, size_t width)
{
    char mb[32], tb[32], rate[48] = "";
    size_text(p->mbox_bytes, mb, sizeof mb);
    size_text(p->bytes, tb, sizeof tb);
    if (p->first_copy_ns && now > p->first_copy_ns + 500000000u) {
        char rb[32];
        double secs = (double)(now - p->first_copy_ns) / 1e9;
        size_text((uint64_t)((double)p->bytes / secs), rb, sizeof rb);
        snprintf(rate, sizeof rate, ", %s/s", rb);
    }
    int n = snprintf(buf, len, "[%zu/%zu] %s: %llu message(s), %s | total %llu message(s), %s%s",
                     p->index, p->count, p->mailbox, (unsigned long long)p->mbox_messages, mb,
                     (unsigned long long)p->messages, tb, rate);
    if (n < 0)
        return 0;
    size_t out = (size_t)n < len ? (size_t)n : len - 1;
    /* one column short of the width: a line that fills it wraps on some
     * terminals, and the erase would then miss the wrapped part */
    if (width > 1 && out > width - 1) {
        out = width - 1;
        buf[out] = '\0';
    }
    return out;
}

static size_t terminal_width(int fd)
{
    struct winsize ws;
    if (ioctl(fd, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
        return ws.ws_col;
    return 80;
}

static void draw(struct progress *p, uint64_t now)
{
    char line[512 + sizeof ERASE];
    memcpy(line, ERASE, sizeof ERASE - 1);
    size_t n = progress_format(p, now, line + sizeof ERASE - 1, sizeof line - (sizeof ERASE - 1),
                               terminal_width(p->fd));
    write_all(p->fd, line, sizeof ERASE - 1 + n);
    p->shown = true;
    p->last_draw_ns = now;
}

void progress_mailbox(struct progress *p, const char *mailbox, size_t index, size_t count)
{
    if (!p)
        return;
    snprintf(p->mailbox, sizeof p->mailbox, "%s", mailbox);
    p->index = index;
    p->count = count;
    p->mbox_messages = p->mbox_bytes = 0;
    p->active = true;
    draw(p, now_ns());
}

void progress_copied(struct progress *p, uint64_t bytes)
{
    if (!p)
        return;
    uint64_t now = now_ns();
    if (!p->first_copy_ns)
        p->first_copy_ns = now;
    p->mbox_messages++;
    p->mbox_bytes += bytes;
    p->messages++;
    p->bytes += bytes;
    if (p->active && now - p->last_draw_ns >= PROGRESS_INTERVAL_MS * 1000000u)
        draw(p, now);
}

void progress_end(struct progress *p)
{
    if (!p || !p->active)
        return;
    /* the final counts, if the last ones came between two draws */
    draw(p, now_ns());
    progress_hide(p);
    p->active = false;
}

void progress_hide(struct progress *p)
{
    if (!p || !p->shown)
        return;
    write_all(p->fd, ERASE, sizeof ERASE - 1);
    p->shown = false;
}

void progress_show(struct progress *p)
{
    if (p && p->active && !p->shown)
        draw(p, now_ns());
}
