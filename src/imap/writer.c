/*
 * Sending to the server: the write lock, command lines with their tags,
 * literals and their continuations, output gathered while a long command
 * is written, and IDLE.
 */
#include "client_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config.h"
#include "coro/await.h"
#include "coro/coro.h"
#include "errors.h"
#include "imap/command.h"
#include "imap/trace.h"
#include "log.h"
#include "net/stream.h"

static void dbg_client_line(struct imap_client *c, const char *line, size_t len)
{
    if (logger_debug_level(c->log) < 1)
        return;
    while (len && (line[len - 1] == '\n' || line[len - 1] == '\r'))
        len--;
    imap_trace_line(c->log, c->cfg->name, false, line, len, false);
}

/*
 * A server that closes the connection usually says why first (BYE), and
 * pipelined commands can hit the closed socket before that line is read.
 * While responses are read in the caller (the opening sequence), read what
 * arrived so that the server's words, not "broken pipe", explain the
 * failure (with the reader coroutine running, wait a little for it to
 * read them). Returns whether that broke the connection.
 */
static bool client_read_last_words(struct imap_client *c)
{
    if (c->reader_running) {
        /* the reader coroutine reads them: give it a moment (bounded) */
        for (int i = 0; i < 20 && !c->broken && c->reader_running; i++)
            if (await_sleep(c->sched, 10) < 0)
                break;
        return c->broken;
    }
    for (int i = 0; i < 1000 && !c->broken; i++) {
        const struct imap_response *r;
        int rc = client_read_response(c, &r);
        if (rc == 0)
            rc = client_dispatch(c, r);
        if (rc == ERR_BYE) {
            client_break(c, rc);
            return true;
        }
        if (rc < 0)
            break;
    }
    return c->broken;
}

static int client_write_now(struct imap_client *c, const void *buf, size_t len)
{
    if (c->broken)
        return c->broken_code;
    /* a server that stops reading fails the write: it gets `timeout` plus
     * the time the bytes take at min-rate (the opening sequence keeps its
     * deadline as well) */
    uint64_t write_ms = c->timeout_ms + (uint64_t)len * 1000 / c->cfg->min_rate;
    stream_set_timeouts(c->stream, c->opening ? c->timeout_ms : 0, write_ms);
    int r = stream_write(c->stream, buf, len);
    if (r == 0)
        c->bytes_out += len;
    if (r < 0) {
        char why[sizeof c->error];
        snprintf(why, sizeof why, "%s: write failed: %s", c->cfg->name,
                 c->stream->error[0] ? c->stream->error : err_str(r));
        if ((r == -EPIPE || r == -ECONNRESET) && client_read_last_words(c))
            return c->broken_code;
        client_set_error(c, "%s", why);
        client_break(c, r);
    }
    return r;
}

static int client_flush(struct imap_client *c)
{
    if (c->olen == 0)
        return c->broken ? c->broken_code : 0;
    size_t n = c->olen;
    c->olen = 0;
    return client_write_now(c, c->obuf, n);
}

/*
 * While a long command is being written (APPEND of many messages), small
 * pieces - each message's flags, date and literal header, small bodies -
 * are gathered into one buffer, so the layers below (COMPRESS flushes,
 * TLS records, system calls) see a few large writes instead of many tiny
 * ones. Otherwise, and for large pieces, bytes go out at once.
 */
int client_write(struct imap_client *c, const void *buf, size_t len)
{
    if ((!c->corked && !c->held) || len >= OBUF_SIZE / 2) {
        int r = client_flush(c);
        return r < 0 ? r : client_write_now(c, buf, len);
    }
    if (c->olen + len > OBUF_SIZE) {
        int r = client_flush(c);
        if (r < 0)
            return r;
    }
    memcpy(c->obuf + c->olen, buf, len);
    c->olen += len;
    return c->broken ? c->broken_code : 0;
}

int imap_client_lock_write(struct imap_client *c)
{
    struct coro *self = coro_current(c->sched);
    while (c->write_owner && c->write_owner != self) {
        if (c->write_waiters_count == MAX_WAITERS)
            return -EAGAIN;
        size_t slot = (c->write_waiters_head + c->write_waiters_count) % MAX_WAITERS;
        c->write_waiters[slot] = self;
        c->write_waiters_count++;
        int r = coro_suspend(self);
        if (r < 0)
            return r;
    }
    c->write_owner = self;
    return c->broken ? c->broken_code : 0;
}

void imap_client_unlock_write(struct imap_client *c)
{
    c->corked = false;
    if (!c->held)
        client_flush(c);
    c->write_owner = NULL;
    client_close_if_aborted(c);
    if (c->write_waiters_count) {
        struct coro *next = c->write_waiters[c->write_waiters_head];
        c->write_waiters_head = (c->write_waiters_head + 1) % MAX_WAITERS;
        c->write_waiters_count--;
        coro_wake(next);
    }
}

/* The kind of a command from its text (its first word). */
static enum cmd_kind cmd_kind_of(const char *text, size_t len)
{
    static const struct {
        const char *verb;
        enum cmd_kind kind;
    } kinds[] = {
        {"LIST", CMD_LISTING},   {"LSUB", CMD_LISTING},   {"STATUS", CMD_LISTING},
        {"SELECT", CMD_SELECT},  {"EXAMINE", CMD_SELECT}, {"UNSELECT", CMD_UNSELECT},
        {"CLOSE", CMD_UNSELECT}, {"IDLE", CMD_IDLE},
    };
    size_t n = 0;
    while (n < len && text[n] != ' ')
        n++;
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        if (strlen(kinds[i].verb) == n && strncasecmp(text, kinds[i].verb, n) == 0)
            return kinds[i].kind;
    return CMD_OTHER;
}

static struct imap_cmd *cmd_new(struct imap_client *c, enum cmd_kind kind)
{
    struct imap_cmd *cmd = calloc(1, sizeof *cmd);
    if (!cmd)
        return NULL;
    cmd->client = c;
    cmd->kind = kind;
    snprintf(cmd->tag, sizeof cmd->tag, "%u", ++c->next_tag);
    cmd->result = 1;
    if (kind != CMD_IDLE)
        c->busy++;
    if (kind == CMD_LISTING)
        c->listing++;
    /* in flight from now on: the reply may arrive as soon as bytes leave */
    bool was_due = client_due(c);
    c->ninflight++;
    if (!was_due)
        client_progress_restart(c);
    if (c->inflight_tail)
        c->inflight_tail->next = cmd;
    else
        c->inflight = cmd;
    c->inflight_tail = cmd;
    return cmd;
}

struct imap_cmd *client_cmd_failed(struct imap_client *c, int code)
{
    struct imap_cmd *cmd = calloc(1, sizeof *cmd);
    if (!cmd)
        return NULL;
    cmd->client = c;
    cmd->done = true;
    cmd->result = code;
    cmd->text = strdup(c->error);
    return cmd;
}

/* Starts a command: its tag and text, without the final CRLF; the caller
 * holds the write lock. Output stays gathered until imap_client_end. */
static struct imap_cmd *client_vbegin(struct imap_client *c, const char *fmt, va_list ap)
{
    if (c->broken)
        return client_cmd_failed(c, c->broken_code);
    /* the whole line is encoded before the command exists: a refused
     * value sends nothing */
    struct imap_cmdbuf line = {0};
    char why[200];
    int r = imap_cmdbuf_append(&line, why, sizeof why, "%a ", "0");
    if (r == 0)
        r = imap_cmdbuf_vappend(&line, why, sizeof why, fmt, ap);
    if (r < 0) {
        imap_cmdbuf_fini(&line);
        client_set_error(c, "%s: %s", c->cfg->name, why);
        return client_cmd_failed(c, r);
    }
    /* the text follows the tag placeholder ("0 ") */
    struct imap_cmd *cmd = cmd_new(c, cmd_kind_of(line.data + 2, line.len - 2));
    if (!cmd) {
        imap_cmdbuf_fini(&line);
        return NULL;
    }
    /* the tag replaces the placeholder */
    size_t taglen = strlen(cmd->tag);
    char *text = malloc(taglen + line.len);
    if (!text) {
        imap_cmdbuf_fini(&line);
        client_set_error(c, "%s: out of memory", c->cfg->name);
        client_break(c, -ENOMEM);
        return cmd;
    }
    memcpy(text, cmd->tag, taglen);
    memcpy(text + taglen, line.data + 1, line.len - 1);
    size_t len = taglen + line.len - 1;
    imap_cmdbuf_fini(&line);
    dbg_client_line(c, text, len);
    c->corked = true;
    client_write(c, text, len);
    free(text);
    c->writing = cmd;
    return cmd;
}

struct imap_cmd *client_vsend(struct imap_client *c, const char *fmt, va_list ap)
{
    if (c->broken)
        return client_cmd_failed(c, c->broken_code);
    int r = imap_client_lock_write(c);
    if (r < 0)
        return client_cmd_failed(c, r);
    struct imap_cmd *cmd = client_vbegin(c, fmt, ap);
    if (cmd && c->writing == cmd)
        imap_client_end(c, cmd);
    imap_client_unlock_write(c);
    return cmd;
}

struct imap_cmd *imap_client_send(struct imap_client *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    struct imap_cmd *cmd = client_vsend(c, fmt, ap);
    va_end(ap);
    return cmd;
}

struct imap_cmd *imap_client_begin(struct imap_client *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    struct imap_cmd *cmd = client_vbegin(c, fmt, ap);
    va_end(ap);
    return cmd;
}

int imap_client_write_fmt(struct imap_client *c, const char *fmt, ...)
{
    struct imap_cmdbuf b = {0};
    char why[200];
    va_list ap;
    va_start(ap, fmt);
    int r = imap_cmdbuf_vappend(&b, why, sizeof why, fmt, ap);
    va_end(ap);
    if (r < 0)
        client_set_error(c, "%s: %s", c->cfg->name, why);
    if (r == 0 && b.len) {
        dbg_client_line(c, b.data, b.len);
        r = client_write(c, b.data, b.len);
    }
    imap_cmdbuf_fini(&b);
    return r;
}

int imap_client_write_raw(struct imap_client *c, const void *buf, size_t len)
{
    return client_write(c, buf, len);
}

static int wait_continuation(struct imap_client *c)
{
    struct coro *self = coro_current(c->sched);
    int fr = client_flush(c); /* the server must see the literal header */
    if (fr < 0)
        return fr;
    while (!c->cont_pending) {
        if (c->broken)
            return c->broken_code;
        if (c->writing && c->writing->done) {
            client_set_error(c, "%s: %s", c->cfg->name, imap_cmd_text(c->writing));
            return c->writing->result < 0 ? c->writing->result : ERR_NO;
        }
        if (!c->reader_running) {
            client_set_error(c, "%s: no reader for continuation", c->cfg->name);
            return ERR_PROTOCOL;
        }
        c->cont_waiter = self;
        int r = coro_suspend(self);
        c->cont_waiter = NULL;
        if (r < 0)
            return r;
    }
    c->cont_pending = false;
    return c->broken ? c->broken_code : 0;
}

int imap_client_literal_begin(struct imap_client *c, uint64_t size)
{
    bool nonsync =
        imap_client_has_cap(c, "LITERAL+") || (imap_client_has_cap(c, "LITERAL-") && size <= 4096);
    char hdr[40];
    int n = snprintf(hdr, sizeof hdr, "{%" PRIu64 "%s}\r\n", size, nonsync ? "+" : "");
    dbg_client_line(c, hdr, (size_t)n);
    int r = client_write(c, hdr, (size_t)n);
    if (r < 0 || nonsync)
        return r;
    return wait_continuation(c);
}

struct imap_cmd *imap_client_end(struct imap_client *c, struct imap_cmd *cmd)
{
    client_write(c, "\r\n", 2);
    c->corked = false;
    if (!c->held)
        client_flush(c);
    c->writing = NULL;
    return cmd;
}

void imap_client_hold(struct imap_client *c)
{
    c->held++;
}

int imap_client_push(struct imap_client *c)
{
    if (c->held && --c->held)
        return 0;
    return client_flush(c);
}

struct imap_cmd *imap_client_idle_begin(struct imap_client *c)
{
    int r = imap_client_lock_write(c);
    if (r < 0)
        return client_cmd_failed(c, r);
    struct imap_cmd *cmd = imap_client_begin(c, "IDLE");
    if (cmd)
        imap_client_end(c, cmd);
    imap_client_unlock_write(c);
    if (!cmd)
        return NULL;
    /* the server answers "+ idling", or refuses with a tagged reply */
    struct coro *self = coro_current(c->sched);
    while (!c->cont_pending && !cmd->done && !c->broken) {
        c->cont_waiter = self;
        r = coro_suspend(self);
        c->cont_waiter = NULL;
        if (r < 0)
            break;
    }
    if (c->cont_pending && !cmd->done) {
        /* accepted: no reply is due until DONE */
        c->idle_cmd = cmd;
        c->idling = true;
    }
    c->cont_pending = false;
    return cmd;
}

int imap_client_idle_end(struct imap_client *c, struct imap_cmd *cmd)
{
    if (c->idle_cmd == cmd) {
        /* its reply is due from now on */
        c->idling = false;
        c->idle_cmd = NULL;
        client_progress_restart(c);
    }
    if (!cmd->done && !c->broken) {
        int r = imap_client_lock_write(c);
        if (r == 0) {
            dbg_client_line(c, "DONE", 4);
            client_write(c, "DONE\r\n", 6);
        }
        imap_client_unlock_write(c);
    }
    return imap_cmd_wait(cmd);
}
