/*
 * What the files of the synchronization engine share: the engine and
 * per-mailbox structures, the per-side state, and the functions one phase
 * calls in another. Private to src/sync; the public interface is
 * include/sync/sync.h.
 *
 * The algorithm is the one of the reference manual (RFC 4549 with the
 * RFC 7162 amendments); what differs is the shape: both servers are driven
 * at the same time, commands that do not depend on each other are
 * pipelined, and message bodies flow from one server's FETCH literal into
 * the other's APPEND literal in chunks.
 *
 * Everything is symmetric: per-side data lives in arrays indexed by
 * enum side, and the other side of s is OTHER(s).
 */
#ifndef INTERIMAP_SYNC_INTERNAL_H
#define INTERIMAP_SYNC_INTERNAL_H

#include "sync/sync.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "config.h"
#include "coro/await.h"
#include "coro/coro.h"
#include "db/state.h"
#include "errors.h"
#include "imap/client.h"
#include "imap/command.h"
#include "imap/values.h"
#include "util/array.h"
#include "util/nameindex.h"
#include "util/uidset.h"
#include "log.h"
#include "progress.h"
#include "sync/flags.h"
#include "sync/reconnect.h"
#include "sync/fptext.h"

#define OTHER(s) ((enum side)(1 - (s)))

extern const char *const side_name[2]; /* "local", "remote" */

/*
 * How changes to known messages are found on one side (doc/interimap.md,
 * "Servers"), from the best the server offers:
 *   QRESYNC   SELECT reports flag changes and expunges since the last run;
 *   CONDSTORE flag changes from FETCH CHANGEDSINCE, expunges by listing
 *             the UIDs that are left (UID SEARCH);
 *   PLAIN     every message's flags compared with a record of what they
 *             were (the `flags` table), expunges from the same listing.
 */
enum tier { TIER_PLAIN, TIER_CONDSTORE, TIER_QRESYNC };
extern const char *const tier_name[3];

enum {
    APPEND_BATCH_MESSAGES = 1000,
    APPEND_BATCH_BYTES = 64 << 20,
    UIDSET_TEXT_MAX = 4096, /* keep command lines well below server limits */
    COPY_CHUNK = 64 * 1024,
};

/*
 * What one server's responses may make us hold (doc/internals/trust.md).
 * Per mailbox and side, the flag changes, vanished UIDs and new UIDs it
 * reports are charged against a budget: a fixed part that no real
 * mailbox's changes in one run come near, plus a part proportional to the
 * messages the database pairs in it (which the other server holds too,
 * so no server can inflate it alone). Beyond it the mailbox fails.
 */
#define SIDE_MEMORY_BASE        ((size_t)16 << 20)
#define SIDE_MEMORY_PER_MESSAGE ((size_t)128)
/* and, where every message's flags are read (a side without
 * mod-sequences), what each costs twice: a change and its record */
#define SIDE_MEMORY_PER_PLAIN_MESSAGE ((size_t)256)
/* The largest INBOX selected ahead, behind the login (speculative_inbox) */
#define SPECULATE_MAX_MESSAGES 10000
/* Mailboxes one server may list: each costs a few hundred bytes;
 * accounts with more folders than this are not known to exist. */
#define LISTING_MAX 20000
/* Refused responses reported one by one per mailbox and side; beyond, one
 * line counts the rest (a server must not flood the log). */
#define REFUSALS_SHOWN 10
/* UIDs a MODIFIED response code may name: at most those of one UID STORE,
 * whose text is bounded by UIDSET_TEXT_MAX, are really concerned. */
#define MODIFIED_MAX ((size_t)1 << 20)

/* ------------------------------------------------------------------ */
/* mailbox listing */

struct listed {
    char *server_name; /* as the server spells it (mUTF-7, with reference) */
    char *key;         /* internal name: reference stripped, delimiter -> NUL */
    size_t keylen;
    bool selectable;
    bool subscribed;
    bool has_status;
    bool refused; /* the name cannot be represented on the other server */
    uint32_t uidvalidity, uidnext, messages;
    bool has_messages; /* the STATUS included MESSAGES */
    uint64_t highestmodseq;
};

struct listing {
    struct listed *items;
    size_t count, cap;
    /* the items by key and by server name (lookups over thousands of
     * mailboxes would otherwise compare with each) */
    struct nameindex by_key, by_name;
    char delimiter; /* '\0' for a flat namespace (NIL) */
    bool delimiter_known;
    bool with_status; /* the LIST asked for STATUS (LIST-STATUS) */
    bool failed;
    bool too_many; /* more than LISTING_MAX mailboxes */
};

/* The LIST commands of one side: the delimiter's, then those with the
 * patterns (one, or a LIST and a LSUB per pattern). */
struct list_cmds {
    struct imap_cmd *delim;
    struct imap_cmd **cmds;
    size_t n, cap;
    bool early;       /* sent behind the login */
    bool delim_known; /* the delimiter was not asked again */
    bool nomem;
};

/* A change reported for a known message. */
struct change {
    uint32_t uid;
    uint64_t modseq;
    char *flags;
    bool weak; /* a side without mod-sequences and no record of the flags:
                  changed or not, a change on the other side wins */
};

/* What one side reported while a mailbox is selected. */
struct side_state {
    struct sync_engine *e;
    enum side side;
    struct imap_client *c;
    char *mailbox; /* server name */
    struct uidset vanished;
    struct change *changes;
    size_t nchanges, capchanges;
    uint64_t max_modseq;
    uint32_t max_uid_seen; /* highest UID seen in new-message FETCHes */
    struct uidset fetched; /* UIDs of new messages seen in the current FETCH */
    struct uidset probe;   /* UIDs listed by a probe FETCH (UID) */
    uint32_t probe_from;   /* the probe's first UID */
    bool probing;
    enum tier how;         /* how changes are found here (see enum tier) */
    struct uidset present; /* CONDSTORE: the UIDs UID SEARCH listed */
    bool searching;
    bool expunge_check;        /* CONDSTORE: UID SEARCH sent behind the SELECT */
    struct imap_cmd *prefetch; /* the FETCH sent behind the SELECT (not QRESYNC) */
    struct imap_cmd *search;   /* the UID SEARCH sent behind it (CONDSTORE) */
    uint64_t unattributed;     /* lowest MODSEQ of a change reported without UID */
    struct state_flags *rec;   /* PLAIN: the flags recorded last time, by UID */
    size_t nrec;
    struct change *now; /* PLAIN: flags seen or set during this run, in order */
    size_t nnow, capnow;
    struct change *sent; /* PLAIN: flags appended here, by source UID */
    size_t nsent, capsent;
    char *permanent;              /* PLAIN: the flags PERMANENTFLAGS says are kept */
    bool any_keyword;             /* PERMANENTFLAGS has \*: any keyword is kept */
    bool record_probe;            /* a copy's flags here are not known: ask (probe) */
    struct listing *listing;      /* while listing */
    struct new_copy *copy;        /* while copying new messages from this side */
    struct imap_mailbox_state ms; /* what SELECT and later responses said */

    /* Checks on what this side reports (doc/internals/trust.md). */
    uint32_t known_uidnext;          /* the database's UIDNEXT, as sent with QRESYNC */
    uint32_t fetch_from;             /* the new-message FETCH asks for UIDs from here */
    uint32_t fetch_until;            /* ... to here, if not 0 (fresh.c) */
    const struct uidset *fetch_skip; /* ... but not these (normalized) */
    uint32_t last_new_uid;           /* the last new message accepted in this FETCH */
    uint32_t streamed_uid;           /* its body was streamed (0: none) */
    size_t mem_used, mem_limit;
    bool budget_soft; /* over mem_limit: over_budget, not a failure (passes.c) */
    bool over_budget;
    unsigned refused; /* messages or changes refused (each reported) */
    int error;        /* a response we cannot act on: the mailbox fails */
};

/* A closed (MULTI)APPEND command, waiting for the server's answer. */
struct pending_batch {
    struct imap_cmd *cmd;
    struct uidset src_uids;
    struct pending_batch *next;
};

/* One message of the APPEND being written, as the copy journal will
 * record it (see copy.c). */
struct copy_entry {
    uint32_t suid;
    uint64_t size;
    char *date;
    char *flags;
    char *msgid;
    size_t msgidlen;
};

/* A message copied by a deferred copy: its source UID, the flags it was
 * appended with, and the target UID its APPEND's answer gave (0 until
 * then). Elements start with the source UID (uid_find). */
struct copy_made {
    uint32_t suid;
    uint32_t tuid;
    char *flags;
};

/* A message read from the source and kept in memory, to be appended later
 * (a held copy, below). */
struct held_message {
    uint32_t uid;
    char date[IMAP_DATE_TIME_LEN + 1];
    char *flags; /* normalized */
    char *body;
    uint64_t size;
};

/*
 * Streaming of messages from side `src` into side OTHER(src). Every
 * APPEND command is journaled (state_db_copy_add) and committed before
 * its last byte leaves, and its answer is recorded as soon as it comes
 * (by the `recorder` coroutine), so at any moment only the commands in
 * flight are unrecorded, and the journal tells what they carried.
 */
struct new_copy {
    struct sync_engine *e;
    struct mbox_ctx *m;
    enum side src;
    struct side_state *target;
    bool append_open;
    struct imap_cmd *open_cmd;
    struct uidset open_uids;
    struct copy_entry *entries; /* the open command's messages */
    size_t nentries, capentries;
    size_t open_count;
    uint64_t open_bytes;
    uint32_t bound;      /* the copies' UIDs are not below this */
    struct fp_scan scan; /* the message being written */
    struct pending_batch *batches, **batches_tail;
    struct coro *recorder;
    bool recorder_idle;     /* suspended, waiting for a batch */
    bool closing;           /* no more batches will come */
    struct uidset appended; /* target UIDs the server confirmed */
    int error;              /* while writing: the copy stops */
    int record_error;       /* while recording an answer */
    unsigned copied;
    bool target_aborted; /* a message was cut short: the target connection is given up */
    /* Deferred (fresh.c): no recorder; the answers are recorded by
     * copy_finish, uncommitted (the caller commits once for many copies:
     * the journal covers them meanwhile), and what each message became is
     * kept in `made`, in the order appended. */
    bool deferred;
    struct copy_made *made;
    size_t nmade, capmade;
    uint32_t uidvalidity; /* the target's, as the first APPENDUID said */
    /* Held (fresh.c, an exchange): while hold_budget is set, messages are
     * read into `held` instead of written to the target, each taking its
     * size from the budget (shared by the copies of a window); one that
     * does not fit is dropped, and so is every later one of this copy
     * (`held_over`: the copy is incomplete, its mailbox is left to the
     * per-mailbox path). copy_release_held appends them. */
    uint64_t *hold_budget;
    bool held_over;
    struct held_message *held;
    size_t nheld, capheld;
};

/* A STATUS report of NOTIFY, kept until the next wait tells whether it is
 * news or the echo of our own changes (see watch.c). */
struct status_report {
    enum side side;
    char *server_name;
    uint32_t uidnext;
    uint64_t highestmodseq;
    bool complete; /* both values were given */
};

enum { WATCH_REPORTS_MAX = 64 };

struct watch_news {
    bool other; /* news that is not a STATUS report (or too many of them) */
    struct status_report reports[WATCH_REPORTS_MAX];
    size_t count;
};

struct sync_engine {
    struct coro_sched *sched;
    const struct config *cfg;
    struct logger *log;
    struct sync_options opts;
    struct state_db *db;
    struct imap_client *client[2];
    struct listing listing[2];
    pcre2_code *ignore_re;
    int failed_mailboxes;
    bool stop;          /* SIGINT/SIGTERM: finish the step and leave */
    bool no_lookahead;  /* a server sent no [CLOSED]: SELECT one at a time */
    enum tier tier[2];  /* what each server offers (see enum tier) */
    char *caps[2];      /* what each advertised after login (remembered) */
    char capkey[2][20]; /* digest of each side's connection settings */
    bool caps_new[2];   /* nothing was remembered for these settings */
    bool caps_dirty[2]; /* to be written to the database */
    bool tell_tier[2];  /* the tier is to be said (caps_tell) */
    /* each server's greeting (imap_client_greeting(), remembered beside
     * caps[]: the next connection sends its login ahead of it) */
    char *greeting[2];
    bool greeting_dirty[2];
    /* whether each server reports a new HIGHESTMODSEQ after APPEND
     * (STATE_APPEND_HMS_*, 0 not known yet; remembered with caps[]) */
    int append_hms[2];
    struct side_state list_st[2];   /* the listing handlers' context */
    struct list_cmds early_list[2]; /* LISTs sent behind the login */
    struct mbox_ctx *spec;          /* INBOX, selected behind them */
    bool connected;                 /* both connections are up */
    int64_t batch_seq;              /* the last APPEND batch number journaled */
    /* what a cycle did, for the line that ends it */
    struct {
        size_t mailboxes;
        unsigned long long added, removed, updated;
    } totals;
    int refused_names; /* names of the last listing that cannot be synchronized */
    char errbuf[512];
    unsigned cycle_synced; /* mailboxes the last cycle changed something in */
    size_t cycle_todo;     /* mailboxes the cycle set out to do (progress line) */

    /* --watch (watch.c) */
    struct coro *sleeper; /* the engine while it sleeps between cycles */
    uv_signal_t signals[3];
    bool signals_on;
    bool notify_set;        /* NOTIFY SET is in effect on both connections */
    bool notify_failed;     /* a server refused it: IDLE instead */
    bool recheck;           /* list again before sleeping (see watch_wait) */
    bool reconnecting;      /* connection failures are logged by the watch loop */
    bool reconnect_now;     /* SIGUSR1 or a system suspend: connect again at once */
    char reconnect_why[64]; /* what asked for it, for the log */
    struct watch_news news;
    struct reconnect backoff;
};

/* How a SELECT's responses are told from those of the commands ahead of
 * it (see the selection functions of imap/client.h). */
enum select_how { SELECT_NOW, SELECT_AT_CLOSE, SELECT_AFTER };

struct mbox_work {
    char *key;
    size_t keylen;
    int64_t idx;
    bool created[2]; /* created on that side in this run */
    size_t rank;     /* its number in the cycle's progress line (1...) */
};
struct mbox_ctx {
    struct sync_engine *e;
    int64_t idx;
    char *pretty;
    bool repair;
    bool known; /* the database has both sides */
    struct side_state st[2];
    struct state_side db[2]; /* UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ */
    uint32_t uidnext[2];     /* messages below are replicated */
    unsigned added[2], removed[2], updated[2], conflicts;
    struct imap_cmd *select[2]; /* SELECTs in flight */
    /* The mailbox synchronized after this one. Once this one has sent what
     * should be its last commands, the next one's SELECTs go out behind
     * them (mbox_release) instead of a round trip later; should this one
     * then turn out to need more commands, it is done again later in the
     * run (MAILBOX_AGAIN). */
    struct mbox_ctx *next;
    bool released;
    /* A mailbox created on one side in this run, and so empty there, is
     * copied into without waiting for that side's SELECT: its answer is
     * taken (select_wait_target) before the APPEND replies are. -1 once
     * taken, or when SELECTs are waited for together. */
    int target_pending;
    bool created[2];  /* created on that side in this run */
    bool have_row[2]; /* the database has this side's UIDVALIDITY */
    bool nomem;       /* an allocation failed: the mailbox fails (mbox_note) */
    /* what the listing's STATUS said (0: nothing) */
    uint32_t status_uidvalidity[2], status_uidnext[2];
    /* That side's SELECT was answered after the copy decided what to
     * fetch (target_pending): its UIDNEXT may count a message delivered
     * since the CREATE, so it counts only once a FETCH of new messages
     * went out after it (fetched_new). */
    bool late_select[2];
    bool fetched_new[2];
};

/* Remembers a failed allocation (r < 0): the mailbox then fails with
 * "out of memory" instead of going on with a set that lacks a UID. */
static inline void mbox_note(struct mbox_ctx *m, int r)
{
    if (r < 0)
        m->nomem = true;
}

/* sync_one() and its steps: the mailbox must be done again later */
#define MAILBOX_AGAIN 1

/* Commands sent together and waited for together, each with what to say
 * should it fail. */
struct batched {
    struct imap_cmd *cmd;
    const char *what;
};

struct cmd_batch {
    struct batched *items;
    size_t n, cap;
    bool nomem;
};

struct flag_group {
    char *flags;
    struct uidset uids;
};

struct flag_plan {
    struct flag_group *groups;
    size_t count, cap;
};

/* What one round of sync_known works on: a snapshot of what both sides
 * reported, and what it decided to send. */
struct known_round {
    struct uidset vanished[2]; /* known messages the side reported gone */
    struct side_state snap[2]; /* the side's changes, taken from its state */
    struct uidset remove[2];   /* counterparts to expunge on that side */
    struct flag_plan plan[2];  /* flag stores for that side */
    struct uidset modified[2]; /* stores refused by UNCHANGEDSINCE */
    struct state_pair *forgot; /* pairs deleted from the database */
    size_t nforgot, capforgot;
};

/* tiers.c: capability tiers */
enum tier tier_of(struct imap_client *c);
void caps_load(struct sync_engine *e);
void caps_adopt(struct sync_engine *e);
void caps_tell(struct sync_engine *e);
void caps_keep_greeting(struct sync_engine *e);
int caps_save(struct sync_engine *e);
int prefetch_send(struct mbox_ctx *m, enum side s);
int prefetch_wait(struct mbox_ctx *m, enum side s);
void prefetch_drop(struct mbox_ctx *m, enum side s);
void now_note(struct side_state *st, uint32_t uid, const char *flags);
const struct state_flags *rec_find(const struct side_state *st, uint32_t uid);
void permanent_note(struct side_state *st, const struct imap_value *list);
void sent_note(struct side_state *target, uint32_t src_uid, const char *flags);
void sent_record(struct side_state *target, uint32_t src_uid, uint32_t uid);
int flags_record(struct mbox_ctx *m, enum side s, uint64_t hms);
bool search_untagged(struct side_state *st, const struct imap_response *r);

/* list.c: listing */
void listing_fini(struct listing *l);
struct listed *listing_find(struct listing *l, const char *key, size_t keylen);
char *server_name(struct sync_engine *e, enum side s, const char *key, size_t keylen);
char *pretty_name(struct sync_engine *e, const char *key, size_t keylen);
bool patterns_need_delimiter(const struct sync_engine *e);
void list_cmds_free(struct list_cmds *lc);
const char *status_items(enum tier t);
int status_fill(struct sync_engine *e, const struct mbox_work *work, size_t nwork);
void early_list(struct imap_client *c, void *ctx);
int engine_relist(struct sync_engine *e);
void listing_check_names(struct sync_engine *e);
int compile_ignore(struct sync_engine *e);

/* mailboxes.c: mailbox list */
bool ignored(struct sync_engine *e, const char *key, size_t keylen);
int sync_mailbox_list(struct sync_engine *e, struct mbox_work **out, size_t *nout);

/* known.c: known messages */
int batch_wait(struct cmd_batch *b, struct side_state *st, struct uidset *modified);
int remove_messages(struct side_state *st, struct uidset *uids);
void log_removed(struct side_state *st, struct uidset *uids);
void log_stored(struct side_state *st, const struct flag_plan *p, struct uidset *modified);
int plan_add(struct flag_plan *p, const char *flags, uint32_t uid);
void plan_fini(struct flag_plan *p);
void flags_send(struct side_state *st, struct flag_plan *p, uint64_t unchangedsince,
                struct cmd_batch *b);
void changes_compact(struct side_state *st);
const struct change *change_find(const struct side_state *st, uint32_t uid);
int sync_known(struct mbox_ctx *m, bool may_release);
bool round_take(struct mbox_ctx *m, struct known_round *r);
int round_plan(struct mbox_ctx *m, struct known_round *r);
void round_send_side(struct mbox_ctx *m, struct known_round *r, enum side s, struct cmd_batch *b);
int round_wait_side(struct mbox_ctx *m, struct known_round *r, enum side s, struct cmd_batch *b);
void round_fini(struct known_round *r);
void drop_echoes(struct side_state *st, const struct flag_plan *plan);

/* copy.c: copying */
void copy_init(struct new_copy *cp, struct mbox_ctx *m, enum side src);
void copy_fini(struct new_copy *cp);
int copy_release_held(struct new_copy *cp);
int copy_append_message(struct new_copy *cp, const struct imap_fetch *f, uint64_t size,
                        struct imap_literal *lit, const char *inline_body);
int copy_close(struct new_copy *cp);
int copy_finish(struct new_copy *cp, struct uidset *appended);
int copy_uids(struct mbox_ctx *m, enum side src, struct uidset *uids, struct uidset skip[2]);
int sync_new(struct mbox_ctx *m, struct uidset skip[2], bool may_release);

/* fingerprint.c: fingerprints */
struct fingerprint {
    uint32_t uid;
    uint64_t size;
    int64_t date; /* INTERNALDATE in seconds since the epoch, -1 if unreadable */
    char *datetext;
    char *msgid; /* without whitespace; may be empty */
    size_t msgidlen;
    bool used; /* paired already */
};
struct fp_list {
    struct side_state *st; /* charged for the list, fails when it cannot */
    struct fingerprint *items;
    size_t count, cap;
};
/* A list's fingerprints sorted for lookups (they point into the list). */
struct fp_ref {
    struct fingerprint *fp;
};
struct fp_index {
    struct fp_ref *sorted;
    size_t n;
};
bool fp_equal(const struct fingerprint *a, const struct fingerprint *b);
int fp_set(struct fingerprint *fp, uint32_t uid, uint64_t size, const char *date, size_t datelen,
           const char *msgid, size_t msgidlen);
int fp_list_add(struct fp_list *fl, const struct fingerprint *fp);
void fp_list_fini(struct fp_list *fl);
int fp_fetch(struct mbox_ctx *m, const char *const sets[2], struct fp_list out[2]);
int fp_index_init(struct fp_index *ix, struct fp_list *fl);
void fp_index_fini(struct fp_index *ix);
struct fingerprint *fp_index_take(struct fp_index *ix, const struct fingerprint *want,
                                  uint32_t min_uid);

/* adopt.c: messages already on both sides */
int adopt_unrecorded(struct mbox_ctx *m, const uint32_t from[2]);
bool adopt_wanted(const struct mbox_ctx *m);

/* mailbox.c: per-mailbox driver */
void side_state_reset(struct side_state *st);
bool side_charge(struct side_state *st, size_t bytes);
void side_fail(struct side_state *st, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int side_error(const struct mbox_ctx *m);
void selected_untagged(void *ctx, const struct imap_response *r);
bool selected_literal(void *ctx, const struct imap_response *partial, uint64_t size,
                      struct imap_literal *lit);
extern const struct imap_handler selected_handler;
void mbox_release(struct mbox_ctx *m);
int select_send_side(struct mbox_ctx *m, enum side s, enum select_how how, struct imap_cmd *after);
int select_wait_target(struct mbox_ctx *m);
int sync_one(struct mbox_ctx *m);
int qresync_sample(struct sync_engine *e, int64_t idx, enum side s, char **seqs, char **uids);
int mbox_save_state(struct mbox_ctx *m);
void log_summary(struct mbox_ctx *m);
void log_refused_rest(const struct mbox_ctx *m);
bool may_have_new(const struct mbox_ctx *m, enum side s);
const char *fetch_flags_items(const struct side_state *st);
bool unchanged(struct sync_engine *e, struct mbox_work *w);
struct mbox_ctx *speculative_inbox(struct sync_engine *e);
struct mbox_ctx *take_speculative(struct sync_engine *e, const struct mbox_work *work, size_t *todo,
                                  size_t ntodo);
void drop_speculative(struct sync_engine *e);
struct mbox_ctx *mbox_new(struct sync_engine *e, const struct mbox_work *w, bool repair);
void mbox_free(struct mbox_ctx **pm);

/* fresh.c: first copies of mailboxes new to the database */
bool fresh_wanted(const struct sync_engine *e, const struct mbox_work *work, const size_t *todo,
                  size_t ntodo);
int fresh_run(struct sync_engine *e, struct mbox_work *work, size_t *todo, size_t *ntodo);

/* What became of a mailbox of a window (passes.c, fresh.c). */
enum fate {
    FATE_OPEN,   /* still in the window */
    FATE_DONE,   /* synchronized; its state is saved with the window's */
    FATE_REDO,   /* left to the per-mailbox path */
    FATE_FAILED, /* failed, and said why */
};

/* passes.c: spread changes */
bool passes_wanted(const struct sync_engine *e, size_t count);
int passes_run(struct sync_engine *e, const struct mbox_work *work, size_t *todo, size_t *ntodo);

/* recovery.c: recovery */
int interrupted_pairs(struct mbox_ctx *m, struct uidset pairs[2], struct uidset skip[2]);
int check_interrupted(struct mbox_ctx *m, struct uidset pairs[2]);
int recover_copies(struct mbox_ctx *m, struct uidset recopy[2]);

/* repair.c: repair */
int repair_pairs(struct mbox_ctx *m, struct uidset missing[2]);

/* dryrun.c: --dry-run */
int dry_run(struct sync_engine *e);

/* engine.c: connections and cycles */
int engine_open(struct sync_engine *e);
void engine_close(struct sync_engine *e);
bool engine_broken(const struct sync_engine *e);
int engine_cycle(struct sync_engine *e);

/* watch.c: --watch */
void watch_signals_start(struct sync_engine *e);
void watch_signals_stop(struct sync_engine *e);
int watch_run(struct sync_engine *e);
void watch_fini(struct sync_engine *e);

/* commands.c: commands */
int command_delete(struct sync_engine *e);
int command_rename(struct sync_engine *e);
int commands_resume(struct sync_engine *e, bool *same);

#endif
