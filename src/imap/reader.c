/*
 * Receiving from the server: reads under the time limits, literals,
 * whole responses from the parser, the dispatch of each response (to its
 * command, a waiting writer, the handler, the news callback), the
 * watchdog and the reader coroutine.
 */
#include "client_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config.h"
#include "coro/coro.h"
#include "errors.h"
#include "imap/trace.h"
#include "log.h"
#include "net/stream.h"
#include "util/array.h"

/* Untagged responses the server may send between two tagged ones, per
 * command in flight: a FETCH of new messages gives one per message, and
 * no mailbox we can handle holds more than this many. A server that keeps
 * talking without ever completing a command is cut off here. */
#define MAX_UNTAGGED_PER_COMMAND (4u << 20)

static char *xstrdup(const char *s)
{
    return s ? strdup(s) : NULL;
}

static void dbg_flush(struct imap_client *c)
{
    if (c->dbg_len == 0)
        return;
    while (c->dbg_len && (c->dbg[c->dbg_len - 1] == '\n' || c->dbg[c->dbg_len - 1] == '\r'))
        c->dbg_len--;
    c->dbg[c->dbg_len] = '\0';
    imap_trace_line(c->log, c->cfg->name, true, c->dbg, c->dbg_len, false);
    c->dbg_len = 0;
}

static void dbg_capture(struct imap_client *c, const char *buf, size_t len)
{
    if (logger_debug_level(c->log) < 1)
        return;
    for (size_t i = 0; i < len; i++) {
        if (c->dbg_skip) {
            uint64_t take = c->dbg_skip < len - i ? c->dbg_skip : len - i;
            c->dbg_skip -= take;
            i += take - 1;
            continue;
        }
        if (c->dbg_len < sizeof c->dbg - 4)
            c->dbg[c->dbg_len++] = buf[i];
        if (buf[i] == '\n')
            dbg_flush(c);
    }
}

/*
 * Every read from the server goes through here: it keeps the accounts the
 * watchdog checks, and words the failures. During the opening sequence
 * the stream's own timeouts and the login deadline limit the wait; after
 * it, the read waits as long as it takes (nothing may be due: IDLE,
 * NOTIFY) and the watchdog cancels it when a due reply does not come.
 */
static ssize_t client_read_some(struct imap_client *c, void *buf, size_t cap)
{
    if (c->broken)
        return c->broken_code;
    if (!c->stream)
        return -ENOTCONN;
    /* the write timeout stays what the last writer set (client_write_now) */
    uint64_t write_ms = c->stream->write_timeout_ms;
    if (c->opening) {
        stream_set_timeouts(c->stream, c->timeout_ms, write_ms);
        stream_set_deadline(c->stream, c->login_deadline);
    } else {
        stream_set_timeouts(c->stream, 0, write_ms);
        stream_set_deadline(c->stream, 0);
    }
    uint64_t start = stream_clock_ms();
    c->read_since = start;
    ssize_t n = stream_read(c->stream, buf, cap);
    uint64_t now = stream_clock_ms();
    c->read_since = 0;
    if (n < 0 && c->watchdog && c->watchdog->fired)
        return -ETIMEDOUT; /* its explanation is in c->error */
    if (client_due(c)) {
        uint64_t from = start > c->due_since ? start : c->due_since;
        c->wait_ms += now > from ? now - from : 0;
    }
    if (n > 0) {
        c->progress_bytes += (uint64_t)n;
        return n;
    }
    if (n == 0 || c->broken)
        return n == 0 ? 0 : c->broken_code; /* the watchdog said why */
    const struct server_config *cfg = c->cfg;
    if (n == -ETIMEDOUT && c->opening && stream_deadline_passed(c->stream))
        client_set_error(c, "%s: no usable session after %u s (login-timeout)", cfg->name,
                         cfg->login_timeout);
    else if (n == -ETIMEDOUT)
        client_set_error(c, "%s: no answer from the server for %u s (timeout)", cfg->name,
                         cfg->timeout);
    else
        client_set_error(c, "%s: read failed: %s", cfg->name,
                         c->stream->error[0] ? c->stream->error : err_str((int)n));
    return n;
}

ssize_t imap_literal_read(struct imap_literal *lit, void *buf, size_t cap)
{
    struct imap_client *c = lit->client;
    if (lit->remaining == 0)
        return 0;
    if (cap > lit->remaining)
        cap = (size_t)lit->remaining;
    if (c->roff < c->rlen) {
        size_t n = c->rlen - c->roff;
        if (n > cap)
            n = cap;
        memcpy(buf, c->rbuf + c->roff, n);
        c->roff += n;
        lit->remaining -= n;
        return (ssize_t)n;
    }
    ssize_t n = client_read_some(c, buf, cap);
    if (n == 0) {
        client_set_error(c, "%s: connection closed in the middle of a literal", c->cfg->name);
        return ERR_EOF;
    }
    if (n < 0)
        return (int)n;
    lit->remaining -= (uint64_t)n;
    c->bytes_in += (uint64_t)n;
    return n;
}

uint64_t imap_literal_remaining(const struct imap_literal *lit)
{
    return lit->remaining;
}

static int client_fill(struct imap_client *c)
{
    if (c->roff == c->rlen)
        c->roff = c->rlen = 0;
    if (c->rcap - c->rlen < READ_CHUNK / 4) {
        if (c->roff) {
            memmove(c->rbuf, c->rbuf + c->roff, c->rlen - c->roff);
            c->rlen -= c->roff;
            c->roff = 0;
        }
    }
    if (c->rlen == c->rcap) {
        client_set_error(c, "%s: read buffer full", c->cfg->name);
        return ERR_TOO_BIG;
    }
    ssize_t n = client_read_some(c, c->rbuf + c->rlen, c->rcap - c->rlen);
    if (n == 0) {
        client_set_error(c, "%s: connection closed by the server", c->cfg->name);
        return ERR_EOF;
    }
    if (n < 0)
        return (int)n;
    c->rlen += (size_t)n;
    c->bytes_in += (uint64_t)n;
    return 0;
}

/* Reads one whole response; literals inside untagged responses are offered
 * to the handler first. */
int client_read_response(struct imap_client *c, const struct imap_response **out)
{
    for (;;) {
        if (c->roff == c->rlen) {
            int r = client_fill(c);
            if (r < 0)
                return r;
        }
        size_t used = 0;
        enum imap_parse_result pr =
            imap_parser_feed(c->parser, c->rbuf + c->roff, c->rlen - c->roff, &used);
        dbg_capture(c, c->rbuf + c->roff, used);
        c->roff += used;
        switch (pr) {
        case IMAP_PARSE_NEED_MORE:
            continue;
        case IMAP_PARSE_DONE:
            *out = imap_parser_response(c->parser);
            return 0;
        case IMAP_PARSE_LITERAL: {
            uint64_t size = imap_parser_literal_size(c->parser);
            const struct imap_response *partial = imap_parser_partial(c->parser);
            if (c->handler && c->handler->literal && partial->kind == IMAP_RESP_UNTAGGED) {
                struct imap_literal lit = {c, size};
                if (c->handler->literal(c->handler_ctx, partial, size, &lit)) {
                    char sink[8192];
                    while (lit.remaining) {
                        ssize_t n = imap_literal_read(&lit, sink, sizeof sink);
                        if (n < 0)
                            return (int)n;
                    }
                    imap_parser_literal_streamed(c->parser);
                    continue;
                }
            }
            c->dbg_skip = size;
            if (imap_parser_literal_inline(c->parser) == IMAP_PARSE_ERROR) {
                client_set_error(c, "%s: %s", c->cfg->name, imap_parser_error(c->parser));
                return ERR_TOO_BIG;
            }
            continue;
        }
        case IMAP_PARSE_ERROR:
        default:
            client_set_error(c, "%s: malformed response from the server: %s", c->cfg->name,
                             imap_parser_error(c->parser));
            return ERR_PROTOCOL;
        }
    }
}

/* A growable text buffer for building command lines. */
struct linebuf {
    char *data;
    size_t len, cap;
    bool oom;
};

static void lb_put(struct linebuf *b, const char *s, size_t n)
{
    if (b->oom || n == 0)
        return;
    char *d = array_reserve(b->data, &b->cap, b->len + n + 1, 1, 256);
    if (!d) {
        b->oom = true;
        return;
    }
    b->data = d;
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static void lb_puts(struct linebuf *b, const char *s)
{
    lb_put(b, s, strlen(s));
}

/* Renders response-code arguments back to text ("38505 3955:3960"). */
static void render_values(struct linebuf *b, const struct imap_value *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (i)
            lb_put(b, " ", 1);
        switch (v[i].type) {
        case IMAP_NIL:
            lb_puts(b, "NIL");
            break;
        case IMAP_LIST:
            lb_put(b, "(", 1);
            render_values(b, v[i].items, v[i].count);
            lb_put(b, ")", 1);
            break;
        default:
            if (v[i].str)
                lb_put(b, v[i].str, v[i].len);
            break;
        }
    }
}

void client_selection_switch(struct imap_client *c)
{
    c->handler = c->next.handler;
    c->handler_ctx = c->next.ctx;
    c->mbox = c->next.mbox ? c->next.mbox : &c->unselected;
    memset(c->mbox, 0, sizeof *c->mbox);
    c->next.pending = false;
    c->next.cmd = NULL;
    c->next.after = NULL;
}

void client_note_status_code(struct imap_client *c, const struct imap_response *r)
{
    if (!r->code)
        return;
    struct imap_mailbox_state *m = c->mbox;
    const struct imap_value *a = r->code_args;
    if (strcasecmp(r->code, "CAPABILITY") == 0)
        client_caps_set(c, a, r->code_nargs);
    else if (strcasecmp(r->code, "UIDVALIDITY") == 0 && r->code_nargs >= 1)
        imap_value_u32(&a[0], &m->uidvalidity);
    else if (strcasecmp(r->code, "UIDNEXT") == 0 && r->code_nargs >= 1)
        imap_value_u32(&a[0], &m->uidnext);
    else if (strcasecmp(r->code, "HIGHESTMODSEQ") == 0 && r->code_nargs >= 1 &&
             imap_value_u64(&a[0], &m->highestmodseq) && !m->selected_hms)
        m->selected_hms = m->highestmodseq; /* the first since the selection: the SELECT's */
    else if (strcasecmp(r->code, "NOMODSEQ") == 0)
        m->nomodseq = true;
}

/*
 * Whether an untagged response (not a status text) answers none of our
 * commands: anything while only IDLE is in flight, STATUS and LIST while
 * no LIST, LSUB or STATUS is. Status texts (such as "* OK Still here",
 * IDLE's keep-alive) never count.
 */
static bool client_is_news(const struct imap_client *c, const struct imap_response *r)
{
    if (r->status != IMAP_STATUS_NONE || r->nargs < 1)
        return false;
    if (c->busy == 0)
        return true;
    return c->listing == 0 &&
           (imap_value_is_atom(&r->args[0], "STATUS") || imap_value_is_atom(&r->args[0], "LIST") ||
            imap_value_is_atom(&r->args[0], "LSUB"));
}

/* A command leaves the in-flight list: the counts of what is in flight. */
static void cmd_landed(struct imap_client *c, const struct imap_cmd *cmd)
{
    if (cmd->kind != CMD_IDLE && c->busy)
        c->busy--;
    if (cmd->kind == CMD_LISTING && c->listing)
        c->listing--;
}

/* Wakes the writer waiting for a continuation request, if any. */
static void client_wake_writer(struct imap_client *c)
{
    if (c->cont_waiter) {
        struct coro *w = c->cont_waiter;
        c->cont_waiter = NULL;
        coro_wake(w);
    }
}

/* Takes the command a tagged response answers out of the in-flight list;
 * NULL if no command in flight has that tag. */
static struct imap_cmd *inflight_take(struct imap_client *c, const char *tag)
{
    struct imap_cmd *prev = NULL, *cmd = c->inflight;
    while (cmd && strcmp(cmd->tag, tag) != 0) {
        prev = cmd;
        cmd = cmd->next;
    }
    if (!cmd)
        return NULL;
    if (prev)
        prev->next = cmd->next;
    else
        c->inflight = cmd->next;
    if (c->inflight_tail == cmd)
        c->inflight_tail = prev;
    cmd->next = NULL;
    c->ninflight--;
    cmd_landed(c, cmd);
    return cmd;
}

/* What a completed command tells about the connection: whether a mailbox
 * is selected, whether IDLE ended. */
static void tagged_note_state(struct imap_client *c, const struct imap_cmd *cmd,
                              const struct imap_response *r)
{
    /* a failed SELECT leaves no mailbox selected (RFC 3501, 6.3.1) */
    if (cmd->kind == CMD_SELECT)
        c->selected = r->status == IMAP_STATUS_OK;
    else if (cmd->kind == CMD_UNSELECT && r->status == IMAP_STATUS_OK)
        c->selected = false;
    if (cmd == c->idle_cmd) {
        c->idling = false;
        c->idle_cmd = NULL;
    }
}

/* Keeps the tagged reply's response code, its arguments and its text
 * with the command. */
static void tagged_keep_reply(struct imap_cmd *cmd, const struct imap_response *r)
{
    if (r->code) {
        cmd->code = xstrdup(r->code);
        struct linebuf b = {0};
        render_values(&b, r->code_args, r->code_nargs);
        cmd->code_args = b.data ? b.data : strdup("");
    }
    cmd->text = xstrdup(r->text ? r->text : "");
}

static int dispatch_tagged(struct imap_client *c, const struct imap_response *r)
{
    struct imap_cmd *cmd = inflight_take(c, r->tag);
    if (!cmd) {
        client_set_error(c, "%s: server answered unknown tag '%s'", c->cfg->name, r->tag);
        return ERR_PROTOCOL;
    }
    tagged_note_state(c, cmd, r);
    client_progress_restart(c);
    bool switch_after = c->next.pending && c->next.after == cmd;
    if (c->next.pending && c->next.cmd == cmd) {
        /* no [CLOSED] came: what the SELECT said went to the old
         * handler, so the new one must select again */
        client_selection_switch(c);
        c->next.missed = true;
    }
    client_note_status_code(c, r);
    tagged_keep_reply(cmd, r);
    /* a command refused before its continuation: let the writer see it */
    client_wake_writer(c);
    int result = r->status == IMAP_STATUS_OK ? 0 : r->status == IMAP_STATUS_NO ? ERR_NO : ERR_BAD;
    client_cmd_complete(cmd, result);
    if (switch_after && c->next.pending)
        client_selection_switch(c);
    return 0;
}

/*
 * What the client itself takes from an untagged response before the
 * handler sees it. Returns whether the response stops here (capabilities,
 * ENABLED, the [CLOSED] boundary); a BYE outside LOGOUT is an error.
 */
static int untagged_note(struct imap_client *c, const struct imap_response *r, bool *consumed)
{
    *consumed = true;
    if (r->status == IMAP_STATUS_BYE) {
        client_set_error(c, "%s: server closed the session: %s", c->cfg->name,
                         r->text ? r->text : "");
        /* a BYE in answer to LOGOUT is expected: the tagged OK follows */
        return c->logging_out ? 0 : ERR_BYE;
    }
    if (r->status != IMAP_STATUS_NONE) {
        if (c->next.pending && r->code && strcasecmp(r->code, "CLOSED") == 0) {
            /* the boundary between the old mailbox's responses and
             * the new one's (RFC 7162 3.2.11); the old handler does
             * not need to see it */
            client_selection_switch(c);
            return 0;
        }
        client_note_status_code(c, r);
    } else if (r->nargs >= 1 && imap_value_is_atom(&r->args[0], "CAPABILITY")) {
        client_caps_set(c, r->args + 1, r->nargs - 1);
        return 0;
    } else if (r->nargs >= 2 && imap_value_is_atom(&r->args[1], "EXISTS")) {
        imap_value_u32(&r->args[0], &c->mbox->exists);
    } else if (r->nargs >= 1 && imap_value_is_atom(&r->args[0], "ENABLED")) {
        return 0;
    }
    *consumed = false;
    return 0;
}

static int dispatch_untagged(struct imap_client *c, const struct imap_response *r)
{
    if (++c->untagged > MAX_UNTAGGED_PER_COMMAND * (c->ninflight ? c->ninflight : 1)) {
        client_set_error(c,
                         "%s: the server sent more than %u responses without completing a "
                         "command; giving up",
                         c->cfg->name, MAX_UNTAGGED_PER_COMMAND);
        return ERR_TOO_BIG;
    }
    bool consumed;
    int rc = untagged_note(c, r, &consumed);
    if (rc < 0 || consumed)
        return rc;
    if (c->handler && c->handler->untagged)
        c->handler->untagged(c->handler_ctx, r);
    if (client_is_news(c, r)) {
        if (c->news_fn)
            c->news_fn(c->news_ctx, c, r);
        client_wake_news_waiter(c);
    }
    return 0;
}

int client_dispatch(struct imap_client *c, const struct imap_response *r)
{
    switch (r->kind) {
    case IMAP_RESP_CONTINUATION:
        c->cont_pending = true;
        client_wake_writer(c);
        return 0;
    case IMAP_RESP_TAGGED:
        return dispatch_tagged(c, r);
    case IMAP_RESP_UNTAGGED:
        return dispatch_untagged(c, r);
    }
    return 0;
}

static void watchdog_closed_cb(uv_handle_t *h)
{
    free(h->data);
}

static void watchdog_cb(uv_timer_t *timer)
{
    struct client_watchdog *wd = timer->data;
    struct imap_client *c = wd->c;
    if (!c || c->broken || !c->reader_running || !client_due(c) || !c->read_since)
        return;
    const struct server_config *cfg = c->cfg;
    uint64_t now = stream_clock_ms();
    uint64_t from = c->read_since > c->due_since ? c->read_since : c->due_since;
    uint64_t silent = now > from ? now - from : 0;
    uint64_t waited = c->wait_ms + silent;
    uint64_t allowed = c->timeout_ms + c->progress_bytes * 1000 / cfg->min_rate;
    if (silent >= c->timeout_ms)
        client_set_error(c, "%s: no answer from the server for %u s (timeout)", cfg->name,
                         cfg->timeout);
    else if (waited > allowed)
        client_set_error(c,
                         "%s: the server is too slow: %" PRIu64 " bytes in %" PRIu64
                         " s of waiting (min-rate is %u bytes/s)",
                         cfg->name, c->progress_bytes, waited / 1000, cfg->min_rate);
    else
        return;
    wd->fired = true;
    uv_timer_stop(&wd->timer);
    /* the reader unwinds now and breaks the connection; c is not touched
     * after this (the engine may run and free it) */
    coro_cancel(c->reader);
}

int client_watchdog_start(struct imap_client *c)
{
    struct client_watchdog *wd = calloc(1, sizeof *wd);
    if (!wd)
        return -ENOMEM;
    wd->c = c;
    wd->timer.data = wd;
    uv_timer_init(coro_sched_loop(c->sched), &wd->timer);
    /* checked a few times per timeout, at most every second */
    uint64_t tick = c->timeout_ms / 4;
    tick = tick < 50 ? 50 : tick > 1000 ? 1000 : tick;
    uv_timer_start(&wd->timer, watchdog_cb, tick, tick);
    c->watchdog = wd;
    return 0;
}

void client_watchdog_stop(struct imap_client *c)
{
    struct client_watchdog *wd = c->watchdog;
    if (!wd)
        return;
    c->watchdog = NULL;
    wd->c = NULL;
    uv_timer_stop(&wd->timer);
    uv_close((uv_handle_t *)&wd->timer, watchdog_closed_cb);
}

/* After the caller gave up on the connection (imap_client_abort): close
 * it once no coroutine is using the stream. */
void client_close_if_aborted(struct imap_client *c)
{
    if (c->aborted && !c->reader_running && !c->write_owner && c->stream)
        stream_free(&c->stream);
}

void client_reader_main(struct coro *self, void *arg)
{
    struct imap_client *c = arg;
    (void)self;
    while (!c->broken) {
        const struct imap_response *r;
        int rc = client_read_response(c, &r);
        if (rc == 0)
            rc = client_dispatch(c, r);
        if (rc < 0) {
            if (c->watchdog && c->watchdog->fired && !c->broken)
                rc = -ETIMEDOUT; /* its explanation is in c->error */
            else if (rc == -ECANCELED && !c->broken)
                client_set_error(c, "%s: connection closed", c->cfg->name);
            client_break(c, rc);
            break;
        }
    }
    c->reader_running = false;
    client_close_if_aborted(c);
}
