/*
 * The IMAP client object: its creation and release, its error, commands
 * completing and being waited for, and which handler receives the
 * selected mailbox's responses. The opening sequence is in connect.c,
 * sending in writer.c, receiving in reader.c (see client_internal.h).
 */
#include "client_internal.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "coro/coro.h"
#include "errors.h"
#include "imap/parser.h"
#include "net/compress.h"
#include "net/stream.h"

/*
 * What one server can make us hold or do. The time limits come from the
 * configuration (config.h); these bounds are fixed.
 */
static const struct imap_parser_limits client_parser_limits = {
    /* the longest line a server sends us in practice is a LIST-STATUS or
     * a FETCH with many keywords: a few kilobytes */
    .max_line = 1024 * 1024,
    /* message bodies are streamed from FETCH to APPEND; what stays in
     * memory is small (a Message-ID header, a body that a server sends
     * before its flags), and this much per response is allowed */
    .max_inline_literal = 16 * 1024 * 1024,
    /* no response we ask for nests deeper than a few levels */
    .max_depth = 32,
    /* a value costs about 50 bytes of memory: 100 000 is 5 MiB, and more
     * keywords or LIST items than that in one response is no real server */
    .max_values = 100000,
};

void client_set_error(struct imap_client *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->error, sizeof c->error, fmt, ap);
    va_end(ap);
    c->error_shown = false;
}

/* Something is due from the server: a command other than an accepted
 * IDLE is waiting for its reply. */
bool client_due(const struct imap_client *c)
{
    return c->ninflight > (c->idling ? 1u : 0u);
}

/* A new wait for a reply begins (a command went out when nothing was
 * due, or one completed): progress is measured from here. */
void client_progress_restart(struct imap_client *c)
{
    c->due_since = stream_clock_ms();
    c->wait_ms = 0;
    c->progress_bytes = 0;
    c->untagged = 0;
}

void client_wake_news_waiter(struct imap_client *c)
{
    if (c->news_waiter) {
        struct coro *w = c->news_waiter;
        c->news_waiter = NULL;
        coro_wake(w);
    }
}

void client_cmd_complete(struct imap_cmd *cmd, int result)
{
    cmd->done = true;
    cmd->result = result;
    if (cmd->orphan) {
        free(cmd->code);
        free(cmd->code_args);
        free(cmd->text);
        free(cmd);
        return;
    }
    if (cmd->waiter) {
        struct coro *w = cmd->waiter;
        cmd->waiter = NULL;
        coro_wake(w);
    }
}

/* Marks the connection unusable and fails every command in flight. */
void client_break(struct imap_client *c, int code)
{
    if (!c->broken) {
        c->broken = true;
        c->broken_code = code;
    }
    struct imap_cmd *cmd = c->inflight;
    c->inflight = c->inflight_tail = NULL;
    c->ninflight = 0;
    c->idling = false;
    c->idle_cmd = NULL;
    c->busy = c->listing = 0;
    c->selected = false;
    while (cmd) {
        struct imap_cmd *next = cmd->next;
        cmd->next = NULL;
        if (!cmd->text)
            cmd->text = strdup(c->error);
        client_cmd_complete(cmd, c->broken_code);
        cmd = next;
    }
    if (c->cont_waiter) {
        struct coro *w = c->cont_waiter;
        c->cont_waiter = NULL;
        coro_wake(w);
    }
    client_wake_news_waiter(c);
}

int imap_cmd_wait(struct imap_cmd *cmd)
{
    struct imap_client *c = cmd->client;
    if (!cmd->done && !c->reader_running) {
        /* opening sequence: read synchronously in the caller */
        while (!cmd->done && !c->broken) {
            const struct imap_response *r;
            int rc = client_read_response(c, &r);
            if (rc == 0)
                rc = client_dispatch(c, r);
            if (rc < 0)
                client_break(c, rc);
        }
    }
    while (!cmd->done) {
        cmd->waiter = coro_current(c->sched);
        int r = coro_suspend(cmd->waiter);
        cmd->waiter = NULL;
        if (r < 0 && !cmd->done)
            return r;
    }
    if (cmd->result == ERR_NO || cmd->result == ERR_BAD)
        client_set_error(c, "%s: %s", c->cfg->name, cmd->text ? cmd->text : "command failed");
    return cmd->result;
}

const char *imap_cmd_code(const struct imap_cmd *cmd)
{
    return cmd->code;
}

const char *imap_cmd_code_args(const struct imap_cmd *cmd)
{
    return cmd->code_args ? cmd->code_args : "";
}

const char *imap_cmd_text(const struct imap_cmd *cmd)
{
    return cmd->text ? cmd->text : "";
}

bool imap_cmd_done(const struct imap_cmd *cmd)
{
    return cmd->done;
}

int imap_cmd_result(const struct imap_cmd *cmd)
{
    return cmd->result;
}

void imap_cmd_free(struct imap_cmd **pcmd)
{
    if (!pcmd || !*pcmd)
        return;
    struct imap_cmd *cmd = *pcmd;
    *pcmd = NULL;
    if (!cmd->done) {
        cmd->orphan = true;
        cmd->waiter = NULL;
        return;
    }
    free(cmd->code);
    free(cmd->code_args);
    free(cmd->text);
    free(cmd);
}

int imap_client_run(struct imap_client *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    struct imap_cmd *cmd = client_vsend(c, fmt, ap);
    va_end(ap);
    if (!cmd)
        return -ENOMEM;
    int r = imap_cmd_wait(cmd);
    imap_cmd_free(&cmd);
    return r;
}

void imap_client_on_news(struct imap_client *c, imap_news_fn fn, void *ctx)
{
    c->news_fn = fn;
    c->news_ctx = ctx;
}

void imap_client_watch(struct imap_client *c, struct coro *waiter)
{
    c->news_waiter = waiter;
}

bool imap_client_selected(const struct imap_client *c)
{
    return c->selected;
}

struct imap_client *imap_client_new(struct coro_sched *sched, const struct server_config *cfg,
                                    struct logger *log, bool keepalive)
{
    struct imap_client *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->sched = sched;
    c->cfg = cfg;
    c->log = log;
    c->keepalive = keepalive;
    c->mbox = &c->unselected;
    c->rcap = 2 * READ_CHUNK;
    c->rbuf = malloc(c->rcap);
    c->obuf = malloc(OBUF_SIZE);
    c->parser = imap_parser_new(&client_parser_limits);
    if (!c->rbuf || !c->obuf || !c->parser) {
        imap_client_free(&c);
        return NULL;
    }
    return c;
}

void imap_client_free(struct imap_client **pc)
{
    if (!pc || !*pc)
        return;
    struct imap_client *c = *pc;
    *pc = NULL;
    if (c->reader) {
        if (c->reader_running)
            coro_cancel(c->reader);
        struct coro *self = coro_current(c->sched);
        if (self)
            coro_join(self, c->reader);
        else
            coro_detach(c->reader);
    }
    client_watchdog_stop(c);
    imap_cmd_free(&c->compress_cmd);
    client_break(c, -ECANCELED);
    stream_free(&c->stream);
    imap_parser_free(&c->parser);
    client_caps_clear(c);
    client_expected_clear(c);
    free(c->greeting_memory);
    free(c->greeting_seen);
    free(c->rbuf);
    free(c->obuf);
    free(c);
}

const char *imap_client_name(const struct imap_client *c)
{
    return c->cfg->name;
}

const char *imap_client_error(struct imap_client *c)
{
    c->error_shown = true;
    return c->error[0] ? c->error : "unknown error";
}

const char *imap_client_reason(struct imap_client *c)
{
    const char *e = imap_client_error(c);
    size_t n = strlen(c->cfg->name);
    if (strncmp(e, c->cfg->name, n) == 0 && e[n] == ':' && e[n + 1] == ' ')
        return e + n + 2;
    return e;
}

void imap_client_traffic(const struct imap_client *c, struct imap_traffic *t)
{
    t->in = c->bytes_in;
    t->out = c->bytes_out;
    t->compressed = c->zstream != NULL;
    t->raw_in = t->in;
    t->raw_out = t->out;
    if (c->zstream) {
        uint64_t zin, zout;
        compress_stream_totals(c->zstream, &zin, &zout);
        t->raw_in = c->raw_base_in + zin;
        t->raw_out = c->raw_base_out + zout;
    }
}

bool imap_client_error_unshown(const struct imap_client *c)
{
    return c->broken && !c->error_shown;
}

void imap_client_abort(struct imap_client *c, const char *why)
{
    if (!c->broken || why) {
        if (why)
            client_set_error(c, "%s: %s", c->cfg->name, why);
        client_break(c, c->broken ? c->broken_code : ERR_PROTOCOL);
    }
    c->aborted = true;
    c->error_shown = true; /* the caller's decision: it reports the cause */
    if (c->reader_running && coro_current(c->sched) != c->reader)
        coro_cancel(c->reader);
    client_close_if_aborted(c);
}

bool imap_client_is_broken(const struct imap_client *c)
{
    return c->broken;
}

void imap_client_select_at_close(struct imap_client *c, const struct imap_handler *h, void *ctx,
                                 struct imap_mailbox_state *ms)
{
    c->next.pending = true;
    c->next.missed = false;
    c->next.handler = h;
    c->next.ctx = ctx;
    c->next.mbox = ms;
    c->next.cmd = NULL;
    c->next.after = NULL;
}

void imap_client_select_now(struct imap_client *c, const struct imap_handler *h, void *ctx,
                            struct imap_mailbox_state *ms)
{
    imap_client_select_at_close(c, h, ctx, ms);
    client_selection_switch(c);
}

void imap_client_select_after(struct imap_client *c, struct imap_cmd *after,
                              const struct imap_handler *h, void *ctx,
                              struct imap_mailbox_state *ms)
{
    imap_client_select_at_close(c, h, ctx, ms);
    c->next.after = after;
}

void imap_client_select_cmd(struct imap_client *c, struct imap_cmd *cmd)
{
    if (c->next.pending)
        c->next.cmd = cmd;
}

bool imap_client_select_missed(struct imap_client *c)
{
    bool missed = c->next.missed;
    c->next.missed = false;
    return missed;
}

void imap_client_release(struct imap_client *c, void *ctx)
{
    if (c->handler_ctx == ctx) {
        c->handler = NULL;
        c->handler_ctx = NULL;
        c->mbox = &c->unselected;
    }
    if (c->next.pending && c->next.ctx == ctx) {
        c->next.pending = false;
        c->next.cmd = NULL;
        c->next.after = NULL;
    }
}

void imap_client_on_login(struct imap_client *c, imap_login_hook_fn fn, void *ctx)
{
    c->login_hook = fn;
    c->login_hook_ctx = ctx;
}

void imap_client_set_handler(struct imap_client *c, const struct imap_handler *h, void *ctx)
{
    c->handler = h;
    c->handler_ctx = ctx;
}
