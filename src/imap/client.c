/*
 * IMAP client connection: opening sequence, pipelined commands, reader
 * coroutine. See include/imap/client.h for the contract.
 */
#include "imap/client.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "coro/await.h"
#include "coro/coro.h"
#include "errors.h"
#include "imap/command.h"
#include "log.h"
#include "imap/sasl.h"
#include "imap/trace.h"
#include "net/command.h"
#include "net/compress.h"
#include "net/socks5.h"
#include "net/stream.h"
#include "net/tls.h"
#include "net/transport.h"

enum {
    READ_CHUNK = 64 * 1024,
    OBUF_SIZE = 64 * 1024,
    MAX_WAITERS = 64,
    /* long enough for a helper that asks the user, or refreshes a token
     * over the network */
    SECRET_COMMAND_TIMEOUT_MS = 2 * 60 * 1000,
};

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

/* Untagged responses the server may send between two tagged ones, per
 * command in flight: a FETCH of new messages gives one per message, and
 * no mailbox we can handle holds more than this many. A server that keeps
 * talking without ever completing a command is cut off here. */
#define MAX_UNTAGGED_PER_COMMAND (4u << 20)

/*
 * The watchdog: a timer that, while the reader runs, checks that a reply
 * that is due makes progress (see the time limits in struct imap_client).
 * It does not depend on the server sending anything, so no pattern of
 * bytes can defeat it. When it fires it cancels the reader, which breaks
 * the connection with the watchdog's explanation.
 */
struct client_watchdog {
    uv_timer_t timer;
    struct imap_client *c; /* NULL once the client is gone */
    bool fired;
};

/* What a command's untagged answers may look like, for telling them from
 * news (see imap_client_on_news). */
enum cmd_kind {
    CMD_OTHER,
    CMD_LISTING,  /* LIST, LSUB, STATUS: answered with untagged LIST and STATUS */
    CMD_SELECT,   /* SELECT, EXAMINE */
    CMD_UNSELECT, /* UNSELECT, CLOSE */
    CMD_IDLE,     /* what arrives during IDLE is news */
};

struct imap_cmd {
    struct imap_client *client;
    char tag[16];
    enum cmd_kind kind;
    bool done;
    bool orphan; /* the caller freed it before completion */
    int result;
    struct coro *waiter;
    char *code, *code_args, *text;
    struct imap_cmd *next;
};

struct imap_literal {
    struct imap_client *client;
    uint64_t remaining;
};

struct imap_client {
    struct coro_sched *sched;
    const struct server_config *cfg;
    struct logger *log;
    bool keepalive;

    struct stream *stream;
    struct imap_parser *parser;
    char *rbuf;
    size_t roff, rlen, rcap;

    char **caps;
    size_t ncaps;
    /* what the caller expects after login (remembered from a previous
     * run): with the pre-login list, what may be pipelined behind the
     * login before its capabilities are known */
    char **expected;
    size_t nexpected;
    bool caps_final; /* caps are the authenticated state's */

    unsigned next_tag;
    struct imap_cmd *inflight, *inflight_tail;
    struct coro *reader;
    bool reader_running;

    /* write lock: owner plus a FIFO of waiting coroutines */
    struct coro *write_owner;
    struct coro *write_waiters[MAX_WAITERS];
    size_t write_waiters_head, write_waiters_count;

    bool cont_pending;
    struct coro *cont_waiter;
    struct imap_cmd *writing; /* the command whose text is being written */
    char *obuf;               /* gathered output while corked */
    size_t olen;
    bool corked;
    unsigned held;                 /* imap_client_hold() depth: commands gathered, not sent */
    struct imap_cmd *compress_cmd; /* COMPRESS sent behind the login */
    bool need_caps;                /* capabilities are the pre-login ones */
    bool enable_sent;              /* ENABLE QRESYNC went out behind the login */
    imap_login_hook_fn login_hook;
    void *login_hook_ctx;
    struct coro *news_waiter;
    imap_news_fn news_fn;
    void *news_ctx;
    unsigned busy;    /* commands in flight other than IDLE */
    unsigned listing; /* LIST, LSUB and STATUS commands in flight */
    bool selected;    /* a mailbox is selected (as far as our commands tell) */

    const struct imap_handler *handler;
    void *handler_ctx;

    /* the selected mailbox's state: the caller's, or `unselected` */
    struct imap_mailbox_state *mbox;
    struct imap_mailbox_state unselected;
    /* a selection queued behind the current mailbox's commands, taking
     * over at the server's [CLOSED] (see imap_client_select_at_close) */
    struct {
        bool pending;
        bool missed;            /* its SELECT completed without a [CLOSED] */
        struct imap_cmd *after; /* or: switch when this command completes */
        const struct imap_handler *handler;
        void *ctx;
        struct imap_mailbox_state *mbox;
        struct imap_cmd *cmd;
    } next;

    /* traffic, as the summary at the end of a run reports it: IMAP bytes
     * (before compression) and, with COMPRESS, the compressed bytes */
    uint64_t bytes_in, bytes_out;
    uint64_t raw_base_in, raw_base_out; /* IMAP bytes when COMPRESS began */
    struct stream *zstream;             /* the COMPRESS layer, once active */

    /* Time limits. While the reader runs, a watchdog timer checks that a
     * reply that is due makes progress: no silence longer than `timeout`,
     * and no more time waiting for data since the last completed command
     * than `timeout` plus the bytes received at `min_rate`. Before that
     * (the opening sequence), reads and writes carry the login deadline. */
    uint64_t timeout_ms;
    uint64_t login_deadline;
    bool opening;
    bool idling;             /* IDLE accepted: nothing is due while it is the only command */
    size_t ninflight;        /* commands in flight */
    uint64_t due_since;      /* when the current wait for a reply began */
    uint64_t wait_ms;        /* time spent waiting for data since then */
    uint64_t progress_bytes; /* bytes received since then */
    uint64_t read_since;     /* the reader is waiting for data since (0: it is not) */
    unsigned untagged;       /* untagged responses since the last tagged one */
    struct imap_cmd *idle_cmd;
    struct client_watchdog *watchdog;

    bool broken;
    bool aborted;     /* given up on by the caller: the connection is closed */
    bool error_shown; /* the current error was handed out by imap_client_error */
    bool logging_out; /* a BYE is expected */
    int broken_code;
    char error[512];

    /* debug capture of the current server line (literals left out) */
    char dbg[1024];
    size_t dbg_len;
    uint64_t dbg_skip;
};

/* ------------------------------------------------------------------ */
/* small helpers */

static void client_set_error(struct imap_client *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void client_set_error(struct imap_client *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->error, sizeof c->error, fmt, ap);
    va_end(ap);
    c->error_shown = false;
}

/* Something is due from the server: a command other than an accepted
 * IDLE is waiting for its reply. */
static bool client_due(const struct imap_client *c)
{
    return c->ninflight > (c->idling ? 1u : 0u);
}

/* A new wait for a reply begins (a command went out when nothing was
 * due, or one completed): progress is measured from here. */
static void progress_restart(struct imap_client *c)
{
    c->due_since = stream_clock_ms();
    c->wait_ms = 0;
    c->progress_bytes = 0;
    c->untagged = 0;
}

static uint64_t login_left_ms(const struct imap_client *c)
{
    uint64_t now = stream_clock_ms();
    return c->login_deadline > now ? c->login_deadline - now : 1;
}

static char *xstrdup(const char *s)
{
    return s ? strdup(s) : NULL;
}

static void wake_news_waiter(struct imap_client *c)
{
    if (c->news_waiter) {
        struct coro *w = c->news_waiter;
        c->news_waiter = NULL;
        coro_wake(w);
    }
}

/* A command leaves the in-flight list: the counts of what is in flight. */
static void cmd_landed(struct imap_client *c, const struct imap_cmd *cmd)
{
    if (cmd->kind != CMD_IDLE && c->busy)
        c->busy--;
    if (cmd->kind == CMD_LISTING && c->listing)
        c->listing--;
}

static void cmd_complete(struct imap_cmd *cmd, int result)
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
static void client_break(struct imap_client *c, int code)
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
        cmd_complete(cmd, c->broken_code);
        cmd = next;
    }
    if (c->cont_waiter) {
        struct coro *w = c->cont_waiter;
        c->cont_waiter = NULL;
        coro_wake(w);
    }
    wake_news_waiter(c);
}

/* ------------------------------------------------------------------ */
/* capabilities */

static void caps_clear(struct imap_client *c)
{
    for (size_t i = 0; i < c->ncaps; i++)
        free(c->caps[i]);
    free(c->caps);
    c->caps = NULL;
    c->ncaps = 0;
}

static void caps_set(struct imap_client *c, const struct imap_value *v, size_t n)
{
    caps_clear(c);
    c->caps = calloc(n ? n : 1, sizeof *c->caps);
    if (!c->caps)
        return;
    for (size_t i = 0; i < n; i++) {
        const char *s;
        size_t len;
        if (!imap_value_string(&v[i], &s, &len))
            continue;
        char *cap = strndup(s, len);
        if (!cap)
            continue;
        for (char *p = cap; *p; p++)
            *p = (char)toupper((unsigned char)*p);
        c->caps[c->ncaps++] = cap;
    }
}

bool imap_client_has_cap(const struct imap_client *c, const char *cap)
{
    for (size_t i = 0; i < c->ncaps; i++)
        if (strcasecmp(c->caps[i], cap) == 0)
            return true;
    return false;
}

bool imap_client_may_use(const struct imap_client *c, const char *cap)
{
    if (imap_client_has_cap(c, cap))
        return true;
    if (c->caps_final)
        return false;
    for (size_t i = 0; i < c->nexpected; i++)
        if (strcasecmp(c->expected[i], cap) == 0)
            return true;
    return false;
}

static void expected_clear(struct imap_client *c)
{
    for (size_t i = 0; i < c->nexpected; i++)
        free(c->expected[i]);
    free(c->expected);
    c->expected = NULL;
    c->nexpected = 0;
}

int imap_client_expect_caps(struct imap_client *c, const char *caps)
{
    expected_clear(c);
    if (!caps)
        return 0;
    size_t n = 1;
    for (const char *p = caps; *p; p++)
        n += *p == ' ';
    c->expected = calloc(n, sizeof *c->expected);
    if (!c->expected)
        return -ENOMEM;
    for (const char *p = caps; *p;) {
        size_t len = strcspn(p, " ");
        if (len && c->nexpected < n && !(c->expected[c->nexpected] = strndup(p, len)))
            return -ENOMEM;
        if (len)
            c->nexpected++;
        p += len;
        p += *p == ' ';
    }
    return 0;
}

char *imap_client_caps_string(const struct imap_client *c)
{
    size_t len = 1;
    for (size_t i = 0; i < c->ncaps; i++)
        len += strlen(c->caps[i]) + 1;
    char *out = malloc(len), *p = out;
    if (!out)
        return NULL;
    *p = '\0';
    for (size_t i = 0; i < c->ncaps; i++)
        p += sprintf(p, "%s%s", i ? " " : "", c->caps[i]);
    return out;
}

/* ------------------------------------------------------------------ */
/* debug traffic log */

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

static void dbg_client_line(struct imap_client *c, const char *line, size_t len)
{
    if (logger_debug_level(c->log) < 1)
        return;
    while (len && (line[len - 1] == '\n' || line[len - 1] == '\r'))
        len--;
    imap_trace_line(c->log, c->cfg->name, false, line, len, false);
}

/* ------------------------------------------------------------------ */
/* writing */

static int client_read_response(struct imap_client *c, const struct imap_response **out);
static void client_close_if_aborted(struct imap_client *c);
static int client_dispatch(struct imap_client *c, const struct imap_response *r);

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
static int client_write(struct imap_client *c, const void *buf, size_t len)
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
    if (!b->data || b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *d = realloc(b->data, cap);
        if (!d) {
            b->oom = true;
            return;
        }
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static void lb_puts(struct linebuf *b, const char *s)
{
    lb_put(b, s, strlen(s));
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
        progress_restart(c);
    if (c->inflight_tail)
        c->inflight_tail->next = cmd;
    else
        c->inflight = cmd;
    c->inflight_tail = cmd;
    return cmd;
}

static struct imap_cmd *cmd_failed(struct imap_client *c, int code)
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
        return cmd_failed(c, c->broken_code);
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
        return cmd_failed(c, r);
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

static struct imap_cmd *client_vsend(struct imap_client *c, const char *fmt, va_list ap)
{
    if (c->broken)
        return cmd_failed(c, c->broken_code);
    int r = imap_client_lock_write(c);
    if (r < 0)
        return cmd_failed(c, r);
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

/* ------------------------------------------------------------------ */
/* reading */

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
    if (n == -ETIMEDOUT && c->opening && now >= c->login_deadline)
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
static int client_read_response(struct imap_client *c, const struct imap_response **out)
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

static void selection_switch(struct imap_client *c)
{
    c->handler = c->next.handler;
    c->handler_ctx = c->next.ctx;
    c->mbox = c->next.mbox ? c->next.mbox : &c->unselected;
    memset(c->mbox, 0, sizeof *c->mbox);
    c->next.pending = false;
    c->next.cmd = NULL;
    c->next.after = NULL;
}

static void note_status_code(struct imap_client *c, const struct imap_response *r)
{
    if (!r->code)
        return;
    struct imap_mailbox_state *m = c->mbox;
    const struct imap_value *a = r->code_args;
    if (strcasecmp(r->code, "CAPABILITY") == 0)
        caps_set(c, a, r->code_nargs);
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

static int client_dispatch(struct imap_client *c, const struct imap_response *r)
{
    switch (r->kind) {
    case IMAP_RESP_CONTINUATION:
        c->cont_pending = true;
        if (c->cont_waiter) {
            struct coro *w = c->cont_waiter;
            c->cont_waiter = NULL;
            coro_wake(w);
        }
        break;
    case IMAP_RESP_TAGGED: {
        struct imap_cmd *prev = NULL, *cmd = c->inflight;
        while (cmd && strcmp(cmd->tag, r->tag) != 0) {
            prev = cmd;
            cmd = cmd->next;
        }
        if (!cmd) {
            client_set_error(c, "%s: server answered unknown tag '%s'", c->cfg->name, r->tag);
            return ERR_PROTOCOL;
        }
        if (prev)
            prev->next = cmd->next;
        else
            c->inflight = cmd->next;
        if (c->inflight_tail == cmd)
            c->inflight_tail = prev;
        cmd->next = NULL;
        c->ninflight--;
        cmd_landed(c, cmd);
        /* a failed SELECT leaves no mailbox selected (RFC 3501, 6.3.1) */
        if (cmd->kind == CMD_SELECT)
            c->selected = r->status == IMAP_STATUS_OK;
        else if (cmd->kind == CMD_UNSELECT && r->status == IMAP_STATUS_OK)
            c->selected = false;
        if (cmd == c->idle_cmd) {
            c->idling = false;
            c->idle_cmd = NULL;
        }
        progress_restart(c);
        bool switch_after = c->next.pending && c->next.after == cmd;
        if (c->next.pending && c->next.cmd == cmd) {
            /* no [CLOSED] came: what the SELECT said went to the old
             * handler, so the new one must select again */
            selection_switch(c);
            c->next.missed = true;
        }
        note_status_code(c, r);
        if (r->code) {
            cmd->code = xstrdup(r->code);
            struct linebuf b = {0};
            render_values(&b, r->code_args, r->code_nargs);
            cmd->code_args = b.data ? b.data : strdup("");
        }
        cmd->text = xstrdup(r->text ? r->text : "");
        if (c->cont_waiter) {
            /* a command refused before its continuation: let the writer see it */
            struct coro *w = c->cont_waiter;
            c->cont_waiter = NULL;
            coro_wake(w);
        }
        cmd_complete(cmd, r->status == IMAP_STATUS_OK   ? 0
                          : r->status == IMAP_STATUS_NO ? ERR_NO
                                                        : ERR_BAD);
        if (switch_after && c->next.pending)
            selection_switch(c);
        break;
    }
    case IMAP_RESP_UNTAGGED:
        if (++c->untagged > MAX_UNTAGGED_PER_COMMAND * (c->ninflight ? c->ninflight : 1)) {
            client_set_error(c,
                             "%s: the server sent more than %u responses without completing a "
                             "command; giving up",
                             c->cfg->name, MAX_UNTAGGED_PER_COMMAND);
            return ERR_TOO_BIG;
        }
        if (r->status == IMAP_STATUS_BYE) {
            client_set_error(c, "%s: server closed the session: %s", c->cfg->name,
                             r->text ? r->text : "");
            /* a BYE in answer to LOGOUT is expected: the tagged OK follows */
            if (!c->logging_out)
                return ERR_BYE;
            break;
        }
        if (r->status != IMAP_STATUS_NONE) {
            if (c->next.pending && r->code && strcasecmp(r->code, "CLOSED") == 0) {
                /* the boundary between the old mailbox's responses and
                 * the new one's (RFC 7162 3.2.11); the old handler does
                 * not need to see it */
                selection_switch(c);
                break;
            }
            note_status_code(c, r);
        } else if (r->nargs >= 1 && imap_value_is_atom(&r->args[0], "CAPABILITY")) {
            caps_set(c, r->args + 1, r->nargs - 1);
            break;
        } else if (r->nargs >= 2 && imap_value_is_atom(&r->args[1], "EXISTS")) {
            imap_value_u32(&r->args[0], &c->mbox->exists);
        } else if (r->nargs >= 1 && imap_value_is_atom(&r->args[0], "ENABLED")) {
            break;
        }
        if (c->handler && c->handler->untagged)
            c->handler->untagged(c->handler_ctx, r);
        if (client_is_news(c, r)) {
            if (c->news_fn)
                c->news_fn(c->news_ctx, c, r);
            wake_news_waiter(c);
        }
        break;
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

static int watchdog_start(struct imap_client *c)
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

static void watchdog_stop(struct imap_client *c)
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
static void client_close_if_aborted(struct imap_client *c)
{
    if (c->aborted && !c->reader_running && !c->write_owner && c->stream)
        stream_free(&c->stream);
}

static void reader_main(struct coro *self, void *arg)
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

/* ------------------------------------------------------------------ */
/* waiting for commands */

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

struct imap_cmd *imap_client_idle_begin(struct imap_client *c)
{
    int r = imap_client_lock_write(c);
    if (r < 0)
        return cmd_failed(c, r);
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
        progress_restart(c);
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

/* ------------------------------------------------------------------ */
/* opening sequence */

static int client_open_transport(struct imap_client *c)
{
    const struct server_config *cfg = c->cfg;
    char err[256];
    int r;
    /* each attempt within connect-timeout, all of it within the login's */
    uint64_t connect_ms = (uint64_t)cfg->connect_timeout * 1000;
    if (connect_ms > login_left_ms(c))
        connect_ms = login_left_ms(c);
    if (cfg->type == SERVER_TUNNEL) {
        r = transport_tunnel_spawn(c->sched, cfg->command, cfg->null_stderr, &c->stream, err,
                                   sizeof err);
        if (r < 0)
            client_set_error(c, "%s: %s", cfg->name, err);
        return r;
    }
    if (cfg->proxy) {
        struct socks5_proxy proxy;
        r = socks5_proxy_parse(cfg->proxy, &proxy, err, sizeof err);
        if (r < 0) {
            client_set_error(c, "%s: %s", cfg->name, err);
            return r;
        }
        r = transport_tcp_connect(c->sched, proxy.host, proxy.port, c->keepalive, connect_ms,
                                  &c->stream, err, sizeof err);
        if (r < 0) {
            client_set_error(c, "%s: SOCKS5 proxy: %s", cfg->name, err);
            socks5_proxy_fini(&proxy);
            return r;
        }
        /* the proxy's handshake is part of connecting */
        stream_set_timeouts(c->stream, connect_ms, connect_ms);
        stream_set_deadline(c->stream, c->login_deadline);
        char hostbuf[256];
        const char *target = cfg->host;
        char addr[INET6_ADDRSTRLEN + 2];
        if (transport_host_is_literal(cfg->host, hostbuf, sizeof hostbuf)) {
            target = hostbuf;
        } else if (!proxy.remote_dns) {
            struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
            r = await_getaddrinfo(c->sched, cfg->host, NULL, &hints, &res, login_left_ms(c));
            if (r < 0 || !res) {
                client_set_error(c, "%s: cannot resolve host %s: %s", cfg->name, cfg->host,
                                 err_str(r));
                socks5_proxy_fini(&proxy);
                return r < 0 ? r : -ENOENT;
            }
            if (res->ai_family == AF_INET6)
                uv_ip6_name((struct sockaddr_in6 *)res->ai_addr, addr, sizeof addr);
            else
                uv_ip4_name((struct sockaddr_in *)res->ai_addr, addr, sizeof addr);
            uv_freeaddrinfo(res);
            target = addr;
        }
        unsigned long port = strtoul(cfg->port, NULL, 10);
        r = socks5_connect(c->stream, &proxy, target, (uint16_t)port);
        socks5_proxy_fini(&proxy);
        if (r < 0)
            client_set_error(c, "%s: %s", cfg->name, c->stream->error);
        return r;
    }
    r = transport_tcp_connect(c->sched, cfg->host, cfg->port, c->keepalive, connect_ms, &c->stream,
                              err, sizeof err);
    if (r < 0)
        client_set_error(c, "%s: %s", cfg->name, err);
    return r;
}

/* The TLS options of a server section; host receives the bare host name. */
static struct tls_options tls_options_of(const struct server_config *cfg, char *host,
                                         size_t hostlen)
{
    bool literal = transport_host_is_literal(cfg->host, host, hostlen);
    if (!literal)
        snprintf(host, hostlen, "%s", cfg->host);
    const char *sni = cfg->ssl_hostname_set ? cfg->ssl_hostname : (literal ? NULL : host);
    struct tls_options opts = {
        .verify = cfg->ssl_verify,
        .host = host,
        .sni = sni,
        .cafile = cfg->ssl_cafile,
        .capath = cfg->ssl_capath,
        .fingerprints = cfg->ssl_fingerprint,
        .protocol_min = cfg->ssl_protocol_min,
        .protocol_max = cfg->ssl_protocol_max,
        .protocols = cfg->ssl_protocols,
        .cipherlist = cfg->ssl_cipherlist,
        .ciphersuites = cfg->ssl_ciphersuites,
    };
    return opts;
}

int imap_client_check_config(const struct server_config *cfg, char *err, size_t errlen)
{
    char host[256], why[256];
    if (cfg->type == SERVER_TUNNEL) {
        if (!cfg->command || !*cfg->command) {
            snprintf(err, errlen, "%s: type = tunnel needs a command", cfg->name);
            return ERR_CONFIG;
        }
        return 0;
    }
    if (cfg->proxy) {
        struct socks5_proxy proxy;
        if (socks5_proxy_parse(cfg->proxy, &proxy, why, sizeof why) < 0) {
            snprintf(err, errlen, "%s: %s", cfg->name, why);
            return ERR_CONFIG;
        }
        socks5_proxy_fini(&proxy);
    }
    if (cfg->type == SERVER_IMAPS || cfg->starttls) {
        struct tls_options opts = tls_options_of(cfg, host, sizeof host);
        if (tls_options_check(&opts, why, sizeof why) < 0) {
            snprintf(err, errlen, "%s: %s", cfg->name, why);
            return ERR_CONFIG;
        }
    }
    return 0;
}

static int client_start_tls(struct imap_client *c)
{
    const struct server_config *cfg = c->cfg;
    char host[256];
    struct tls_options opts = tls_options_of(cfg, host, sizeof host);
    char err[256];
    struct stream *tls = NULL;
    int r = tls_stream_new(c->stream, &opts, &tls, err, sizeof err);
    if (r < 0 && stream_clock_ms() >= c->login_deadline) {
        client_set_error(
            c,
            "%s: no usable session after %u s (login-timeout): TLS handshake with %s not finished",
            cfg->name, cfg->login_timeout, cfg->host);
        return -ETIMEDOUT;
    }
    if (r < 0) {
        client_set_error(c, "%s: TLS handshake with %s failed: %s", cfg->name, cfg->host, err);
        return r;
    }
    c->stream = tls;
    if (logger_debug_level(c->log) >= 1) {
        char desc[128];
        log_debug(c->log, cfg->name, NULL, "TLS established: %s",
                  tls_stream_describe(tls, desc, sizeof desc));
    }
    return 0;
}

static int client_capability(struct imap_client *c)
{
    return imap_client_run(c, "CAPABILITY");
}

/*
 * ENABLE and the caller's first commands go out together right after the
 * login command (or its success), uncompressed, instead of a round trip
 * later; should the login fail they fail too, harmlessly. COMPRESS goes
 * out right behind them. Only what the server is known to offer:
 * advertised before login, or after the login of a previous run
 * (imap_client_expect_caps); the rest waits for the login's capabilities.
 */
static void client_send_after_login(struct imap_client *c)
{
    if (c->broken)
        return;
    if (imap_client_may_use(c, "QRESYNC") && imap_client_may_use(c, "ENABLE")) {
        struct imap_cmd *enable = imap_client_send(c, "ENABLE QRESYNC");
        imap_cmd_free(&enable);
        c->enable_sent = true;
    }
    if (c->login_hook)
        c->login_hook(c, c->login_hook_ctx);
    if (c->cfg->compress && imap_client_may_use(c, "COMPRESS=DEFLATE") && !c->broken)
        c->compress_cmd = imap_client_send(c, "COMPRESS DEFLATE");
}

static void secret_free(char **secret)
{
    if (*secret) {
        explicit_bzero(*secret, strlen(*secret));
        free(*secret);
        *secret = NULL;
    }
}

/* The secret a login needs: the configured password, or what
 * password-command or oauth-token-command prints, run again on every
 * connection (so that a reconnection in --watch mode gets a fresh token).
 * The caller frees it with secret_free(). */
static int client_secret(struct imap_client *c, bool token, char **out)
{
    const struct server_config *cfg = c->cfg;
    const char *option = token ? "oauth-token-command" : "password-command";
    const char *command = token ? cfg->oauth_token_command : cfg->password_command;
    *out = NULL;
    if (!command && !token) {
        *out = strdup(cfg->password);
        return *out ? 0 : -ENOMEM;
    }
    char why[256];
    int r = command_read_line(c->sched, command, SECRET_COMMAND_TIMEOUT_MS, out, why, sizeof why);
    if (r < 0)
        client_set_error(c, "%s: %s %s", cfg->name, option, why);
    return r;
}

/* Sends a SASL response on its own line; "*" cancels the exchange. */
static void client_sasl_send(struct imap_client *c, const unsigned char *data, size_t len,
                             bool cancel)
{
    char *b64 = cancel ? strdup("*") : sasl_base64_encode(data, len);
    if (!b64) {
        client_set_error(c, "%s: out of memory", c->cfg->name);
        client_break(c, -ENOMEM);
        return;
    }
    imap_trace_line(c->log, c->cfg->name, false, b64, strlen(b64), !cancel);
    client_write(c, b64, strlen(b64));
    client_write(c, "\r\n", 2);
    explicit_bzero(b64, strlen(b64));
    free(b64);
}

/*
 * Answers one server challenge of an AUTHENTICATE exchange. *first holds
 * the client's first message while the server has not asked for it (no
 * SASL-IR). A challenge we cannot answer cancels the exchange; why is kept
 * in sasl_err for the message after the server's reply.
 */
static void client_sasl_answer(struct imap_client *c, struct sasl *sasl, const char *text,
                               unsigned char **first, size_t first_len, char *sasl_err,
                               size_t errlen)
{
    if (*first) {
        client_sasl_send(c, *first, first_len, false);
        sasl_secret_free(first, first_len);
        return;
    }
    unsigned char *challenge = NULL, *out = NULL;
    size_t clen = 0, outlen = 0;
    int r = sasl_base64_decode(text, strlen(text), &challenge, &clen);
    if (r < 0) {
        snprintf(sasl_err, errlen, "the server's challenge is not base64");
    } else {
        r = sasl_step(sasl, challenge, clen, &out, &outlen, sasl_err, errlen);
        free(challenge);
    }
    client_sasl_send(c, out, outlen, r < 0);
    sasl_secret_free(&out, outlen);
}

/*
 * AUTHENTICATE with a SASL mechanism: the command (with the client's first
 * message when the server takes it on the same line, RFC 4959), then every
 * challenge answered until the tagged reply. Responses are read here: the
 * reader coroutine does not run yet.
 */
static struct imap_cmd *client_sasl(struct imap_client *c, enum sasl_mech mech, const char *secret,
                                    char *sasl_err, size_t errlen)
{
    const struct server_config *cfg = c->cfg;
    struct sasl *sasl = sasl_new(mech, cfg->username, secret);
    if (!sasl)
        return NULL;
    unsigned char *first = NULL;
    size_t first_len = 0;
    struct imap_cmd *cmd = NULL;
    if (sasl_step(sasl, NULL, 0, &first, &first_len, sasl_err, errlen) < 0) {
        client_set_error(c, "%s: %s: %s", cfg->name, sasl_mech_name(mech), sasl_err);
        cmd = cmd_failed(c, ERR_AUTH);
        goto out;
    }
    if (imap_client_has_cap(c, "SASL-IR")) {
        char *b64 = first_len ? sasl_base64_encode(first, first_len) : strdup("=");
        if (!b64)
            goto out;
        cmd = imap_client_send(c, "AUTHENTICATE %a %a", sasl_mech_name(mech), b64);
        explicit_bzero(b64, strlen(b64));
        free(b64);
        sasl_secret_free(&first, first_len);
    } else {
        cmd = imap_client_send(c, "AUTHENTICATE %a", sasl_mech_name(mech));
    }
    while (cmd && !cmd->done && !c->broken) {
        const struct imap_response *resp;
        int rc = client_read_response(c, &resp);
        if (rc == 0 && resp->kind == IMAP_RESP_CONTINUATION)
            client_sasl_answer(c, sasl, resp->text, &first, first_len, sasl_err, errlen);
        else if (rc == 0)
            rc = client_dispatch(c, resp);
        if (rc < 0)
            client_break(c, rc);
    }
    if (cmd && cmd->done && cmd->result == 0 && sasl_finish(sasl, sasl_err, errlen) < 0) {
        /* the server said OK without proving itself: not to be trusted */
        client_set_error(c, "%s: authentication failed (%s): %s", cfg->name, sasl_mech_name(mech),
                         sasl_err);
        client_break(c, ERR_AUTH);
        cmd->result = ERR_AUTH;
    } else if (sasl_server_error(sasl) && !sasl_err[0]) {
        snprintf(sasl_err, errlen, "the server refused the token (%s)", sasl_server_error(sasl));
    }
out:
    sasl_secret_free(&first, first_len);
    sasl_free(&sasl);
    return cmd;
}

/*
 * Picks the first configured mechanism the server offers: LOGIN is the
 * plain LOGIN command (always offered unless LOGINDISABLED); the SASL
 * mechanisms need their AUTH= capability. Names we do not implement are
 * passed over.
 */
static int client_pick_mechanism(struct imap_client *c, bool *sasl, enum sasl_mech *mech)
{
    const struct server_config *cfg = c->cfg;
    char *list = strdup(cfg->auth ? cfg->auth : "PLAIN LOGIN");
    if (!list)
        return -ENOMEM;
    bool found = false;
    char *save = NULL;
    for (char *m = strtok_r(list, " \t", &save); m && !found; m = strtok_r(NULL, " \t", &save)) {
        char cap[64];
        snprintf(cap, sizeof cap, "AUTH=%s", m);
        if (strcasecmp(m, "LOGIN") == 0) {
            *sasl = false;
            found = true;
        } else if (sasl_mech_from_name(m, mech) && imap_client_has_cap(c, cap)) {
            *sasl = true;
            found = true;
        }
    }
    free(list);
    if (!found) {
        client_set_error(c,
                         "%s: no configured authentication mechanism (auth = %s) is offered "
                         "by the server",
                         cfg->name, cfg->auth ? cfg->auth : "PLAIN LOGIN");
        return ERR_AUTH;
    }
    if ((!*sasl || *mech == SASL_PLAIN) && imap_client_has_cap(c, "LOGINDISABLED")) {
        client_set_error(c, "%s: the server disables logins (LOGINDISABLED)", cfg->name);
        return ERR_AUTH;
    }
    return 0;
}

static int client_authenticate(struct imap_client *c)
{
    const struct server_config *cfg = c->cfg;
    bool sasl = false;
    enum sasl_mech mech = SASL_PLAIN;
    int r = client_pick_mechanism(c, &sasl, &mech);
    if (r < 0)
        return r;
    bool token = sasl && sasl_mech_takes_token(mech);
    if (!cfg->username || (!token && !cfg->password && !cfg->password_command) ||
        (token && !cfg->oauth_token_command)) {
        client_set_error(c, "%s: missing option %s", cfg->name,
                         !cfg->username ? "username"
                         : token        ? "oauth-token-command"
                                        : "password (or password-command)");
        return ERR_CONFIG;
    }
    char *secret = NULL;
    r = client_secret(c, token, &secret);
    if (r < 0)
        return r;

    char sasl_err[256] = "";
    struct imap_cmd *cmd;
    if (!sasl) {
        /* LOGIN takes astrings; 8-bit passwords would need a literal */
        cmd = imap_client_send(c, "LOGIN %s %s", cfg->username, secret);
    } else {
        cmd = client_sasl(c, mech, secret, sasl_err, sizeof sasl_err);
    }
    secret_free(&secret);
    if (!cmd)
        return -ENOMEM;
    /* Behind LOGIN the first commands share its round trip. Nothing may
     * follow an AUTHENTICATE before its tagged reply: the server reads the
     * lines after it as the SASL exchange (Cyrus misreads them even after
     * the exchange ends), and a security layer could start right after. */
    if (!sasl)
        client_send_after_login(c);
    r = imap_cmd_wait(cmd);
    if (sasl && r == 0)
        client_send_after_login(c);
    bool caps_in_reply = cmd->code && strcasecmp(cmd->code, "CAPABILITY") == 0;
    if ((r == ERR_NO || r == ERR_BAD) && sasl_err[0]) {
        client_set_error(c, "%s: authentication failed (%s): %s; the server said: %s", cfg->name,
                         sasl_mech_name(mech), sasl_err, imap_cmd_text(cmd));
        r = ERR_AUTH;
    } else if (r == ERR_NO || r == ERR_BAD) {
        client_set_error(c, "%s: authentication failed: %s", cfg->name, imap_cmd_text(cmd));
        r = ERR_AUTH;
    }
    imap_cmd_free(&cmd);
    if (r < 0)
        return r;
    /* post-login capabilities: from the reply, or asked for after COMPRESS */
    c->need_caps = !caps_in_reply;
    return r;
}

static int client_enable_compress(struct imap_client *c)
{
    struct imap_cmd *cmd = c->compress_cmd;
    c->compress_cmd = NULL;
    if (!cmd && (!c->cfg->compress || !imap_client_has_cap(c, "COMPRESS=DEFLATE")))
        return 0;
    if (!cmd)
        cmd = imap_client_send(c, "COMPRESS DEFLATE");
    if (!cmd)
        return -ENOMEM;
    int r = imap_cmd_wait(cmd);
    bool active = r == ERR_NO && cmd->code && strcasecmp(cmd->code, "COMPRESSIONACTIVE") == 0;
    imap_cmd_free(&cmd);
    if (active || r == ERR_NO || r == ERR_BAD)
        return 0; /* already on, or not offered: carry on uncompressed */
    if (r < 0)
        return r;
    if (c->roff != c->rlen) {
        client_set_error(c, "%s: server sent data after the COMPRESS reply", c->cfg->name);
        return ERR_PROTOCOL;
    }
    char err[256];
    struct stream *z = NULL;
    r = compress_stream_new(c->stream, &z, err, sizeof err);
    if (r < 0) {
        client_set_error(c, "%s: COMPRESS: %s", c->cfg->name, err);
        return r;
    }
    c->stream = z;
    c->zstream = z;
    c->raw_base_in = c->bytes_in;
    c->raw_base_out = c->bytes_out;
    log_debug(c->log, c->cfg->name, NULL, "COMPRESS=DEFLATE active");
    return 0;
}

int imap_client_connect(struct imap_client *c)
{
    const struct server_config *cfg = c->cfg;
    c->timeout_ms = (uint64_t)cfg->timeout * 1000;
    c->opening = true;
    c->login_deadline = stream_clock_ms() + (uint64_t)cfg->login_timeout * 1000;
    int r = client_open_transport(c);
    if (r < 0)
        return r;
    stream_set_timeouts(c->stream, c->timeout_ms, c->timeout_ms);
    stream_set_deadline(c->stream, c->login_deadline);
    if (cfg->type == SERVER_IMAPS) {
        r = client_start_tls(c);
        if (r < 0)
            return r;
    }

    /* greeting */
    const struct imap_response *g;
    r = client_read_response(c, &g);
    if (r < 0)
        return r;
    if (g->kind != IMAP_RESP_UNTAGGED ||
        (g->status != IMAP_STATUS_OK && g->status != IMAP_STATUS_PREAUTH)) {
        if (g->status == IMAP_STATUS_BYE)
            client_set_error(c, "%s: server refused the connection: %s", cfg->name, g->text);
        else
            client_set_error(c, "%s: unexpected greeting from the server", cfg->name);
        return ERR_PROTOCOL;
    }
    bool preauth = g->status == IMAP_STATUS_PREAUTH;
    bool want_starttls = cfg->type == SERVER_IMAP && cfg->starttls;
    note_status_code(c, g);

    if (preauth && want_starttls) {
        client_set_error(c,
                         "%s: PREAUTH greeting on a plaintext connection where STARTTLS is "
                         "required; refusing to continue (set STARTTLS = NO to allow it)",
                         cfg->name);
        return ERR_PROTOCOL;
    }
    if (!preauth) {
        if (c->ncaps == 0 && (r = client_capability(c)) < 0)
            return r;
        if (want_starttls) {
            if (!imap_client_has_cap(c, "STARTTLS")) {
                client_set_error(c,
                                 "%s: server does not offer STARTTLS; refusing to send "
                                 "credentials in clear (set STARTTLS = NO to allow it)",
                                 cfg->name);
                return ERR_UNSUPPORTED;
            }
            r = imap_client_run(c, "STARTTLS");
            if (r < 0)
                return r;
            /* Anything the server sent after its OK arrived before the
             * handshake: it is unauthenticated and must not be trusted. */
            if (c->roff != c->rlen) {
                client_set_error(c,
                                 "%s: server sent unexpected data after the STARTTLS reply "
                                 "(possible response injection); aborting",
                                 cfg->name);
                return ERR_PROTOCOL;
            }
            r = client_start_tls(c);
            if (r < 0)
                return r;
            caps_clear(c);
            if ((r = client_capability(c)) < 0)
                return r;
        }
        r = client_authenticate(c);
        if (r < 0)
            return r;
    } else if (c->ncaps == 0 && (r = client_capability(c)) < 0) {
        return r;
    }

    r = client_enable_compress(c);
    if (r < 0)
        return r;
    if (c->need_caps && (r = client_capability(c)) < 0)
        return r;
    c->caps_final = true;
    /* From now on responses are read by a coroutine of their own, watched
     * by the watchdog; the login deadline no longer applies. */
    c->opening = false;
    stream_set_deadline(c->stream, 0);
    stream_set_timeouts(c->stream, 0, c->timeout_ms);
    if (watchdog_start(c) < 0)
        return -ENOMEM;
    c->reader = coro_spawn(c->sched, reader_main, c, 0);
    if (!c->reader)
        return -ENOMEM;
    c->reader_running = true;
    /* Not waited for: the caller's first commands follow in the same round
     * trip. A server refusing it would refuse SELECT (QRESYNC) next. */
    if (!c->enable_sent && imap_client_has_cap(c, "QRESYNC") && imap_client_has_cap(c, "ENABLE")) {
        struct imap_cmd *enable = imap_client_send(c, "ENABLE QRESYNC");
        imap_cmd_free(&enable);
    }
    return 0;
}

int imap_client_logout(struct imap_client *c)
{
    if (!c->stream || c->broken)
        return c->broken ? c->broken_code : 0;
    c->logging_out = true;
    struct imap_cmd *cmd = imap_client_send(c, "LOGOUT");
    if (!cmd)
        return -ENOMEM;
    /* Everything is committed by now: waiting for the server's BYE and OK
     * would only add a round trip to every run. The bytes are out (writes
     * complete before returning); closing ends the session. */
    int r = cmd->done ? cmd->result : 0;
    imap_cmd_free(&cmd);
    return r;
}

/* ------------------------------------------------------------------ */

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
    watchdog_stop(c);
    imap_cmd_free(&c->compress_cmd);
    client_break(c, -ECANCELED);
    stream_free(&c->stream);
    imap_parser_free(&c->parser);
    caps_clear(c);
    expected_clear(c);
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
    selection_switch(c);
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
