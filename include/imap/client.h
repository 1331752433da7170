/*
 * IMAP client connection: one per server.
 *
 * imap_client_connect() runs the whole opening sequence in the calling
 * coroutine (transport, SOCKS5, TLS or STARTTLS, greeting, capabilities,
 * authentication with LOGIN or a SASL mechanism of imap/sasl.h, its secret
 * from the configuration or a helper command of net/command.h, COMPRESS
 * and ENABLE QRESYNC where the server offers them), then starts a reader
 * coroutine
 * that parses every response the server sends and routes it:
 *   - tagged responses complete their command (imap_cmd_wait wakes up);
 *   - continuation requests release the writer waiting for one;
 *   - untagged responses go to the handler installed by the caller
 *     (imap_client_set_handler), after the client has noted what it tracks
 *     itself (capabilities, the selected mailbox's UIDVALIDITY, UIDNEXT,
 *     HIGHESTMODSEQ, EXISTS, NOMODSEQ);
 *   - literals announced inside untagged responses may be streamed by the
 *     handler's literal callback instead of being kept in memory.
 *
 * Commands are pipelined: imap_client_send() queues a command and returns
 * at once (it may yield only to write), and any number can be in flight.
 * Writes are serialized by a lock so a command's bytes are never mixed
 * with another's; a caller that streams a long command (APPEND) holds the
 * lock through imap_client_lock_write() for the duration.
 *
 * Every call here may yield unless stated otherwise. Errors leave a
 * one-line explanation in imap_client_error(). After a connection-level
 * failure (BYE, EOF, protocol error, a time limit) every pending and later
 * command fails.
 *
 * Nothing the server sends can hold the client forever or make it hold
 * without bound (doc/internals/trust.md): the opening sequence runs under
 * the login deadline (login-timeout, connect-timeout per attempt); after
 * it, a watchdog fails a reply that is due after `timeout` of silence or
 * when it arrives slower than `min-rate`; the parser's limits bound each
 * response, and a server may send at most 4M untagged responses per
 * command in flight between two tagged ones. Command lines are built by
 * the typed encoders of imap/command.h.
 */
#ifndef INTERIMAP_IMAP_CLIENT_H
#define INTERIMAP_IMAP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "imap/parser.h"

struct coro;

struct coro_sched;
struct logger;
struct server_config;
struct imap_client;
struct imap_cmd;

/* What the client knows about the selected mailbox (reset by SELECT). */
struct imap_mailbox_state {
    uint32_t uidvalidity;
    uint32_t uidnext;
    uint64_t highestmodseq;
    uint32_t exists;
    bool nomodseq;         /* the server said NOMODSEQ */
    uint64_t selected_hms; /* the first HIGHESTMODSEQ reported: the SELECT's */
};

/* Streams a literal's bytes: each call returns > 0 bytes, 0 at its end,
 * < 0 on error. The client discards whatever the callback leaves unread. */
struct imap_literal;
ssize_t imap_literal_read(struct imap_literal *lit, void *buf, size_t cap);
uint64_t imap_literal_remaining(const struct imap_literal *lit);

struct imap_handler {
    /* An untagged response other than those consumed by the client. The
     * response is valid only during the call. Must not yield for long: it
     * runs in the reader coroutine (it may write to another connection). */
    void (*untagged)(void *ctx, const struct imap_response *resp);
    /* A literal of `size` bytes inside an untagged response (`partial`
     * holds what was parsed before it). Return true after consuming it (in
     * whole or part) through `lit`; false to have it kept inline. */
    bool (*literal)(void *ctx, const struct imap_response *partial, uint64_t size,
                    struct imap_literal *lit);
};

struct imap_client *imap_client_new(struct coro_sched *sched, const struct server_config *cfg,
                                    struct logger *log, bool keepalive);
/* Closes the connection without LOGOUT if still open. Accepts NULL. */
void imap_client_free(struct imap_client **c);

int imap_client_connect(struct imap_client *c);
/* Checks what can be checked without connecting (TLS option values, proxy
 * URL, tunnel command): 0, or ERR_CONFIG with a one-line message. */
int imap_client_check_config(const struct server_config *cfg, char *err, size_t errlen);
/* Sends LOGOUT without waiting for the reply (the caller then frees the
 * client, which closes the connection). */
int imap_client_logout(struct imap_client *c);

const char *imap_client_name(const struct imap_client *c); /* "local" / "remote" */
/* The last error, one line. Handing it out marks it shown (see below). */
const char *imap_client_error(struct imap_client *c);
/* The same without the leading "local: " or "remote: ", for a logger whose
 * prefix names the server already. Does not yield. */
const char *imap_client_reason(struct imap_client *c);

/* Bytes exchanged so far: IMAP data (before compression) each way and,
 * with COMPRESS active, what went over the connection in compressed form
 * (the IMAP byte counts before COMPRESS began, plus the compressed ones
 * after). TLS records and handshakes are not counted. Does not yield. */
struct imap_traffic {
    uint64_t in, out;
    uint64_t raw_in, raw_out;
    bool compressed;
};
void imap_client_traffic(const struct imap_client *c, struct imap_traffic *t);
/* The connection broke and nobody asked for its error since: the caller
 * should say why before giving up (every failure gets its message). */
bool imap_client_error_unshown(const struct imap_client *c);
/*
 * Gives up on the connection: every pending and later command fails, and
 * the connection is closed as soon as no coroutine uses it, so that
 * nothing more reaches the server (a command cut short, an APPEND whose
 * literal will never be complete, is then dropped by the server). `why`,
 * if not NULL, becomes the error; the caller reports the cause, so it
 * does not count as unshown. Does not yield.
 */
void imap_client_abort(struct imap_client *c, const char *why);
bool imap_client_has_cap(const struct imap_client *c, const char *cap);
bool imap_client_is_broken(const struct imap_client *c);
/*
 * What the caller expects the server to advertise once logged in
 * (typically what it advertised after the login of a previous run; a
 * space-separated list, NULL for nothing). Call before
 * imap_client_connect(). Until the login's own capabilities are known,
 * imap_client_may_use() accepts those as well as the pre-login ones;
 * nothing else is sent before then.
 */
int imap_client_expect_caps(struct imap_client *c, const char *caps);
/*
 * The greeting of this connection, for imap_client_expect_greeting() on a
 * later one: "+" when the server takes commands pipelined behind an
 * AUTHENTICATE PLAIN that carries its initial response, "-" otherwise,
 * then the capabilities it advertised before the login. NULL until they
 * are known. Does not yield.
 */
const char *imap_client_greeting(const struct imap_client *c);
/*
 * The greeting of an earlier connection with the same settings
 * (imap_client_greeting()). With it, an imaps connection sends its login,
 * chosen from those capabilities, right behind the TLS handshake instead
 * of a round trip later, behind the greeting; should that login fail
 * while the greeting turns out to differ from the remembered one, the
 * login is done again from the greeting. Call before
 * imap_client_connect().
 */
int imap_client_expect_greeting(struct imap_client *c, const char *greeting);
/* Whether cap may be relied on now: advertised, or, while the login's
 * capabilities are not known yet, expected. Does not yield. */
bool imap_client_may_use(const struct imap_client *c, const char *cap);
/* The capabilities as one space-separated string (upper case; caller
 * frees), or NULL when out of memory. */
char *imap_client_caps_string(const struct imap_client *c);

/*
 * Called during imap_client_connect() once a LOGIN command is sent,
 * before its reply, or once an AUTHENTICATE succeeded (in general nothing
 * may follow that command before its reply; behind a one-line PLAIN to
 * Dovecot, once it is sent), with ENABLE QRESYNC already sent when
 * the server is known to offer it: commands the hook sends (with
 * imap_client_send, not waited for there) share the login's round trip, or
 * the one after it. They may use only what imap_client_may_use() accepts,
 * and must cope with failing (a failed login fails them too; an expected
 * capability may have gone). Not called when the server greets with
 * PREAUTH.
 */
typedef void (*imap_login_hook_fn)(struct imap_client *c, void *ctx);
void imap_client_on_login(struct imap_client *c, imap_login_hook_fn fn, void *ctx);

/* Installs the untagged-response handler (NULL to drop them). */
void imap_client_set_handler(struct imap_client *c, const struct imap_handler *h, void *ctx);

/* Commands sent between imap_client_hold() and imap_client_push() are
 * gathered and go out in as few writes as possible at the push (calls
 * nest). Push before waiting for any of them. */
void imap_client_hold(struct imap_client *c);
int imap_client_push(struct imap_client *c);

/*
 * Selections. Before sending a SELECT, the caller names the handler for the
 * new mailbox's untagged responses and the state the client keeps up to
 * date for it (UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, EXISTS, NOMODSEQ; zeroed
 * when it takes effect):
 *
 * - imap_client_select_now: at once (no mailbox selected, or nothing more
 *   is expected from the current one);
 * - imap_client_select_at_close: for a SELECT sent behind commands still
 *   running on the current mailbox. The switch happens at the server's
 *   `OK [CLOSED]`, the boundary RFC 7162 puts between the two mailboxes'
 *   responses, so each mailbox's responses reach its own handler and
 *   state. Pass the SELECT to imap_client_select_cmd: should it complete
 *   without a [CLOSED], the switch happens then and
 *   imap_client_select_missed() reports it (once), meaning the SELECT's
 *   responses went to the old handler and it must be sent again.
 *
 * - imap_client_select_after: the same for a SELECT sent while no mailbox
 *   is selected, behind other commands: the switch happens when `after`
 *   completes (or at a [CLOSED], should one come first).
 *
 * imap_client_release drops the handler and any queued selection whose
 * context is ctx (a mailbox the caller is done with).
 */
void imap_client_select_now(struct imap_client *c, const struct imap_handler *h, void *ctx,
                            struct imap_mailbox_state *ms);
void imap_client_select_at_close(struct imap_client *c, const struct imap_handler *h, void *ctx,
                                 struct imap_mailbox_state *ms);
void imap_client_select_after(struct imap_client *c, struct imap_cmd *after,
                              const struct imap_handler *h, void *ctx,
                              struct imap_mailbox_state *ms);
void imap_client_select_cmd(struct imap_client *c, struct imap_cmd *cmd);
bool imap_client_select_missed(struct imap_client *c);
void imap_client_release(struct imap_client *c, void *ctx);

/*
 * Queues a command built from a template whose directives are those of
 * imap/command.h (%a our own text, %s astring, %m mailbox, %P pattern,
 * %F flags, %D date-time, %S sequence set, %u, %U, %%). The tag and CRLF
 * are added. A value an encoder refuses sends nothing: the command comes
 * back failed (-EINVAL) with the reason in imap_client_error(). Returns
 * NULL only if the connection is unusable.
 */
struct imap_cmd *imap_client_send(struct imap_client *c, const char *fmt, ...);

/* Waits for the tagged response: 0 for OK, ERR_NO, ERR_BAD, or a
 * connection error. Frees nothing. */
int imap_cmd_wait(struct imap_cmd *cmd);
/* After completion: the response code and its arguments as raw text
 * ("APPENDUID", "38505 3955:3960"), the human text. Valid until free. */
const char *imap_cmd_code(const struct imap_cmd *cmd);
const char *imap_cmd_code_args(const struct imap_cmd *cmd);
const char *imap_cmd_text(const struct imap_cmd *cmd);
/* Whether the tagged response came (or the connection broke). Does not
 * yield: a response handler may ask it to tell which of several commands
 * in flight the response belongs to (commands are answered in order). */
bool imap_cmd_done(const struct imap_cmd *cmd);
/* Once done: 0 for OK, ERR_NO, ERR_BAD or a connection error. */
int imap_cmd_result(const struct imap_cmd *cmd);
void imap_cmd_free(struct imap_cmd **cmd);
/* Send + wait + free, for commands whose result is just OK or not. */
int imap_client_run(struct imap_client *c, const char *fmt, ...);

/*
 * Long commands (APPEND with streamed literals). Between lock and unlock no
 * other command is written. imap_client_begin starts a command whose text
 * the caller continues with imap_client_write_*; imap_client_literal_begin
 * writes "{n+}" (LITERAL+) or "{n}" and waits for the continuation; the
 * caller then writes exactly n bytes with imap_client_write_raw.
 * imap_client_end writes CRLF and returns the command handle.
 */
int imap_client_lock_write(struct imap_client *c);
void imap_client_unlock_write(struct imap_client *c);
struct imap_cmd *imap_client_begin(struct imap_client *c, const char *fmt, ...);
int imap_client_write_fmt(struct imap_client *c, const char *fmt, ...);
int imap_client_literal_begin(struct imap_client *c, uint64_t size);
int imap_client_write_raw(struct imap_client *c, const void *buf, size_t len);
struct imap_cmd *imap_client_end(struct imap_client *c, struct imap_cmd *cmd);

/*
 * News: untagged responses that answer none of our commands, that is the
 * reports of NOTIFY (RFC 5465) and of IDLE. One counts as news when only
 * IDLE (or nothing) is in flight, or, for STATUS and LIST responses, when
 * no LIST, LSUB or STATUS command is; status texts never do (IDLE's
 * "* OK Still here" is a keep-alive). News first reaches the handler like
 * any untagged response, then `fn` (in the reader coroutine: it must not
 * yield), then the watcher.
 */
typedef void (*imap_news_fn)(void *ctx, struct imap_client *c, const struct imap_response *resp);
void imap_client_on_news(struct imap_client *c, imap_news_fn fn, void *ctx);
/* Arranges for `waiter` to be woken once, at the next news or when the
 * connection breaks (NULL: nobody). Does not yield. */
void imap_client_watch(struct imap_client *c, struct coro *waiter);

/* Whether a mailbox is selected, as far as the answers to our SELECT,
 * EXAMINE, UNSELECT and CLOSE commands tell. Does not yield. */
bool imap_client_selected(const struct imap_client *c);

/* IDLE (RFC 2177): begin returns once the server accepted it (or refused:
 * the command is then complete); end sends DONE and waits for the reply. */
struct imap_cmd *imap_client_idle_begin(struct imap_client *c);
int imap_client_idle_end(struct imap_client *c, struct imap_cmd *cmd);

#endif
