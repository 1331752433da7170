/*
 * What the files of the IMAP client share: the client, command and
 * literal structures, and the functions one part calls in another.
 * Private to src/imap; the contract is include/imap/client.h.
 *
 *   client.c   the client object: creation and release, errors, commands
 *              completing and being waited for, the selected mailbox's
 *              handler
 *   connect.c  the opening sequence (transport, TLS, greeting,
 *              capabilities, authentication, COMPRESS) and LOGOUT
 *   writer.c   sending: the write lock, command lines, literals, IDLE
 *   reader.c   receiving: reads under the time limits, the dispatch of
 *              each response, the watchdog and the reader coroutine
 */
#ifndef INTERIMAP_IMAP_CLIENT_INTERNAL_H
#define INTERIMAP_IMAP_CLIENT_INTERNAL_H

#include "imap/client.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

struct coro;

enum {
    READ_CHUNK = 64 * 1024,
    OBUF_SIZE = 64 * 1024,
    MAX_WAITERS = 64,
};

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
    /* the greeting of an earlier connection and this one's, as
     * imap_client_greeting() describes them; with one remembered, an
     * imaps login goes out before the greeting arrives */
    char *greeting_memory, *greeting_seen;
    bool greeting_pending; /* the login went out ahead of the greeting */
    bool greeting_preauth; /* ... and the greeting was PREAUTH after all */
    bool auth_pipelining;  /* commands may follow AUTHENTICATE before its reply */

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

/* client.c */
void client_set_error(struct imap_client *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
bool client_due(const struct imap_client *c);
void client_progress_restart(struct imap_client *c);
void client_wake_news_waiter(struct imap_client *c);
void client_cmd_complete(struct imap_cmd *cmd, int result);
/* Marks the connection unusable and fails every command in flight. */
void client_break(struct imap_client *c, int code);

/* writer.c */
int client_write(struct imap_client *c, const void *buf, size_t len);
/* A command that failed before it was sent, with the client's error. */
struct imap_cmd *client_cmd_failed(struct imap_client *c, int code);
struct imap_cmd *client_vsend(struct imap_client *c, const char *fmt, va_list ap);

/* reader.c */
/* Reads one whole response; literals inside untagged responses are offered
 * to the handler first. */
int client_read_response(struct imap_client *c, const struct imap_response **out);
/* Hands one response to what waits for it: a command, a writer, the
 * handler. */
int client_dispatch(struct imap_client *c, const struct imap_response *r);
void client_note_status_code(struct imap_client *c, const struct imap_response *r);
void client_selection_switch(struct imap_client *c);
int client_watchdog_start(struct imap_client *c);
void client_watchdog_stop(struct imap_client *c);
void client_reader_main(struct coro *self, void *arg);
/* After the caller gave up on the connection (imap_client_abort): close
 * it once no coroutine is using the stream. */
void client_close_if_aborted(struct imap_client *c);

/* connect.c */
void client_caps_clear(struct imap_client *c);
void client_caps_set(struct imap_client *c, const struct imap_value *v, size_t n);
void client_expected_clear(struct imap_client *c);

#endif
