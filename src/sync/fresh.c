/*
 * Fresh mailboxes and arrivals: the first synchronization of mailboxes
 * the database does not know yet and that one side created in this run
 * (so one side holds messages and the other none), and mailboxes known
 * before whose only news is new messages on one side, a window at a
 * time, with the commands of every mailbox of the window in flight
 * together instead of a round trip or more each (the reasoning, crash
 * safety included, is in doc/internals/sync.md, "Fresh mailboxes"):
 *
 *  1. copy: the source server gets at once, for every mailbox of the
 *     window, an EXAMINE and a UID FETCH of every message below the
 *     UIDNEXT its listing gave (from the saved UIDNEXT on, for a known
 *     mailbox, whose EXAMINE with QRESYNC must report no other change);
 *     each message streams into an APPEND to the target as it comes,
 *     journaled as on the per-mailbox path, and the answers are recorded
 *     once all are in;
 *  2. check: the target server gets at once, for every mailbox, an
 *     EXAMINE and a UID FETCH of every message's flags (from the saved
 *     UIDNEXT on, for a known one): each must hold exactly our copies
 *     there, with the flags we gave them, and no other change.
 *
 * A known mailbox with new messages on both sides (an exchange) has its
 * own windows: a copy from each side at the same time (the local side's
 * held in memory, see held_send), then a check of each, which must list
 * that side's own new messages as they were copied, then our copies into
 * it.
 *
 * The state of the mailboxes that passed is saved in one transaction. A
 * mailbox that did not is left to the per-mailbox path, which finds
 * there what a run killed at that point would have left (the journal,
 * the pairs recorded) and settles it.
 *
 * A server answers pipelined commands in order, so every response that
 * comes after the tagged answer to a mailbox's last command belongs to a
 * later mailbox: that is how one mailbox's responses are told from the
 * next one's (no [CLOSED] needed).
 */
#include "internal.h"

enum {
    /* what fresh_source gives for a mailbox with new messages on both
     * sides (else the side to copy from, or -1) */
    FRESH_BOTH = 2,
    /* mailboxes per window: their commands are in flight together */
    FRESH_WINDOW = 256,
    /* below this, the per-mailbox path costs no more round trips */
    FRESH_MIN = 2,
    /* the most an exchange's held copy keeps in memory, per window */
    FRESH_HOLD_BYTES = 16 << 20,
};

/* What one mailbox's EXAMINE reported. */
struct fresh_seen {
    uint32_t uidvalidity, uidnext;
    uint64_t highestmodseq;
    bool nomodseq;
};

/* One mailbox of a window. */
struct fresh_slot {
    struct mbox_ctx *m;
    size_t at;                   /* its index in the work list */
    size_t rank;                 /* its number on the progress line */
    struct new_copy cp[2];       /* per source side: the copy from it */
    bool copying[2];             /* cp[s] was set up (s has messages to copy) */
    bool closed[2];              /* cp[s]'s last APPEND was ended (slot_close) */
    struct imap_cmd *examine[2]; /* per side: its latest EXAMINE */
    struct imap_cmd *fetch[2];   /* ... and the FETCH behind it */
    struct fresh_seen seen[2];   /* ... and what that EXAMINE said */
    size_t nfound[2];            /* per checked side: messages found as expected */
    int close_rc;                /* what ending the last APPENDs gave */
    bool confused;               /* the check got a response it could not read */
    enum fate fate;
};

struct fresh_window {
    struct sync_engine *e;
    enum side src; /* the source of the copy pass running */
    bool both;     /* an exchange: each side is a source, then checked */
    struct fresh_slot *slots;
    size_t n;
};

/* ------------------------------------------------------------------ */
/* responses */

/* The untagged responses of one server during a pass, each given to the
 * mailbox whose commands are still being answered. */
struct fresh_route {
    struct fresh_window *w;
    enum side side;
    size_t cur;
    size_t shown; /* the mailbox on the progress line, + 1 */
    bool check;   /* the check pass (else the copy) */
    bool holding; /* an exchange's held copy: nothing written, nothing shown */
};

static bool slot_answered(const struct fresh_slot *sl, enum side s)
{
    const struct imap_cmd *last = sl->fetch[s] ? sl->fetch[s] : sl->examine[s];
    return !last || imap_cmd_done(last);
}

/*
 * The end of a mailbox's copy, once its FETCH was answered: its last
 * APPEND is journaled and ended. In the copy pass this runs in the
 * source's reader, before the next mailbox's first message is written
 * there (the reader writes the APPENDs, and holds the target's write
 * lock while one is open), or at the end of the pass.
 */
static void slot_close(struct fresh_window *w, struct fresh_slot *sl, enum side s)
{
    struct sync_engine *e = w->e;
    struct mbox_ctx *m = sl->m;
    if (sl->closed[s])
        return;
    sl->closed[s] = true;
    if (!m->have_row[s] && sl->seen[s].uidvalidity && sl->examine[s] &&
        imap_cmd_done(sl->examine[s]) && imap_cmd_result(sl->examine[s]) == 0) {
        /* as the per-mailbox path's SELECT does: the source's row exists
         * before any of its messages is journaled */
        if (state_db_side_insert(e->db, m->idx, s, sl->seen[s].uidvalidity) < 0) {
            log_error(e->log, "database", m->pretty, "%s", state_db_error(e->db));
            sl->close_rc = ERR_DB;
        } else {
            m->have_row[s] = true;
            m->db[s] = (struct state_side){sl->seen[s].uidvalidity, 0, 0};
        }
    }
    if (sl->copying[s] && copy_close(&sl->cp[s]) < 0 && !sl->close_rc)
        sl->close_rc = -ENOMEM;
    /* the buffer that held each header as it streamed: not needed while
     * the rest of the window is copied (one per mailbox would add up) */
    if (sl->copying[s])
        fp_scan_fini(&sl->cp[s].scan);
}

/* The mailbox the response being read belongs to, or NULL. */
static struct fresh_slot *route_slot(struct fresh_route *rt)
{
    while (rt->cur < rt->w->n && slot_answered(&rt->w->slots[rt->cur], rt->side)) {
        if (!rt->check && !rt->holding)
            slot_close(rt->w, &rt->w->slots[rt->cur], rt->side);
        rt->cur++;
    }
    if (rt->cur == rt->w->n)
        return NULL;
    struct fresh_slot *sl = &rt->w->slots[rt->cur];
    if (!rt->check && !rt->holding && rt->shown != rt->cur + 1) {
        /* the mailbox whose messages stream now */
        rt->shown = rt->cur + 1;
        progress_mailbox(rt->w->e->opts.progress, sl->m->pretty, sl->rank, rt->w->e->cycle_todo);
    }
    /* responses to a FETCH behind an EXAMINE that failed are not this
     * mailbox's (nothing should come: no mailbox is selected) */
    if (!sl->examine[rt->side] ||
        (imap_cmd_done(sl->examine[rt->side]) && imap_cmd_result(sl->examine[rt->side]) != 0))
        return NULL;
    return sl;
}

static void seen_note(struct fresh_seen *seen, const struct imap_response *r)
{
    if (!r->code)
        return;
    if (strcasecmp(r->code, "NOMODSEQ") == 0) {
        seen->nomodseq = true;
        return;
    }
    if (r->code_nargs != 1)
        return;
    if (strcasecmp(r->code, "UIDVALIDITY") == 0)
        imap_value_u32(&r->code_args[0], &seen->uidvalidity);
    else if (strcasecmp(r->code, "UIDNEXT") == 0)
        imap_value_u32(&r->code_args[0], &seen->uidnext);
    else if (strcasecmp(r->code, "HIGHESTMODSEQ") == 0)
        imap_value_u64(&r->code_args[0], &seen->highestmodseq);
}

/* How many messages the check on side t expects to find: those copied
 * from t in an exchange (its own new ones), then our copies into t. */
static size_t expected_count(const struct fresh_slot *sl, enum side t)
{
    return (sl->copying[t] ? sl->cp[t].nmade : 0) +
           (sl->copying[OTHER(t)] ? sl->cp[OTHER(t)].nmade : 0);
}

/* The i-th message the check on side t expects: its UID there and its
 * flags. */
static void expected_at(const struct fresh_slot *sl, enum side t, size_t i, uint32_t *uid,
                        const char **flags)
{
    size_t own = sl->copying[t] ? sl->cp[t].nmade : 0;
    const struct copy_made *made = i < own ? &sl->cp[t].made[i] : &sl->cp[OTHER(t)].made[i - own];
    *uid = i < own ? made->suid : made->tuid;
    *flags = made->flags;
}

/*
 * A message the check listed on side t: it must be the next one expected
 * there. Both come in UID order (a server gives the messages it adds
 * ascending UIDs, and lists them ascending; t's own new messages are
 * below the UIDNEXT its listing gave, our copies above), so each is
 * compared as it comes, and nothing of the listing is kept.
 */
static void found_note(struct fresh_slot *sl, enum side t, const struct imap_response *r)
{
    struct imap_fetch f;
    char why[200];
    uint32_t uid = 0;
    const char *want = NULL;
    if (sl->confused)
        return;
    if (sl->nfound[t] < expected_count(sl, t))
        expected_at(sl, t, sl->nfound[t], &uid, &want);
    if (imap_fetch_parse(&r->args[2], false, &f, why, sizeof why) < 0 || !f.uid || !f.flags ||
        !want || uid != f.uid) {
        sl->confused = true;
        return;
    }
    char *flags = flags_normalize(f.flags);
    if (!flags) {
        mbox_note(sl->m, -ENOMEM);
        return;
    }
    if (strcmp(flags, want) != 0)
        sl->confused = true;
    sl->nfound[t]++;
    free(flags);
}

/*
 * A FETCH in the answer to the check's EXAMINE: for a known mailbox, the
 * report of QRESYNC on what changed since the saved state, which only our
 * copies may have done; for a new one, a change someone made to a copy.
 */
static void examined_note(struct fresh_slot *sl, enum side t, const struct imap_response *r)
{
    struct imap_fetch f;
    char why[200];
    if (!sl->m->known || imap_fetch_parse(&r->args[2], false, &f, why, sizeof why) < 0 ||
        f.uid < sl->m->db[t].uidnext)
        sl->confused = true;
}

static void route_untagged(void *ctx, const struct imap_response *r)
{
    struct fresh_route *rt = ctx;
    struct fresh_slot *sl = route_slot(rt);
    if (!sl)
        return;
    if (r->status != IMAP_STATUS_NONE) {
        seen_note(&sl->seen[rt->side], r);
        return;
    }
    bool vanished = r->nargs >= 2 && imap_value_is_atom(&r->args[0], "VANISHED");
    bool expunged = r->nargs >= 2 && imap_value_is_atom(&r->args[1], "EXPUNGE");
    if ((vanished || expunged) && (rt->check || sl->m->known)) {
        /* a message gone meanwhile: the per-mailbox path sorts it out */
        sl->confused = true;
        return;
    }
    if (r->nargs < 3 || !imap_value_is_atom(&r->args[1], "FETCH"))
        return;
    if (rt->check && !imap_cmd_done(sl->examine[rt->side]))
        examined_note(sl, rt->side, r);
    else if (rt->check)
        found_note(sl, rt->side, r);
    else
        selected_untagged(&sl->m->st[rt->side], r); /* a message to copy, or a change */
}

static bool route_literal(void *ctx, const struct imap_response *partial, uint64_t size,
                          struct imap_literal *lit)
{
    struct fresh_route *rt = ctx;
    struct fresh_slot *sl = rt->check ? NULL : route_slot(rt);
    return sl && selected_literal(&sl->m->st[rt->side], partial, size, lit);
}

static const struct imap_handler route_handler = {route_untagged, route_literal};

/* ------------------------------------------------------------------ */
/* the passes */

/* The answer to a mailbox's EXAMINE on side s, said if it failed. */
static int examine_wait(struct fresh_slot *sl, enum side s)
{
    struct mbox_ctx *m = sl->m;
    int r = imap_cmd_wait(sl->examine[s]);
    if (r < 0)
        log_error(m->e->log, side_name[s], m->st[s].mailbox, "cannot select: %s",
                  imap_client_reason(m->st[s].c));
    return r;
}

/* EXAMINE of a mailbox of the window: with QRESYNC from the saved state
 * for a known one (it reports what changed since, which must be nothing
 * but new messages), with CONDSTORE for a new one. */
static struct imap_cmd *examine_send(struct mbox_ctx *m, enum side s)
{
    struct side_state *st = &m->st[s];
    if (!m->known)
        return imap_client_send(st->c, "EXAMINE %m (CONDSTORE)", st->mailbox);
    return imap_client_send(st->c, "EXAMINE %m (QRESYNC (%u %U 1:%u))", st->mailbox,
                            m->db[s].uidvalidity, m->db[s].highestmodseq, m->db[s].uidnext - 1);
}

/* Sends the copy pass's commands of one mailbox to the source. */
static void copy_send(struct fresh_slot *sl, enum side s, uint64_t *hold_budget)
{
    struct mbox_ctx *m = sl->m;
    struct side_state *st = &m->st[s];
    sl->examine[s] = examine_send(m, s);
    if (!sl->examine[s]) {
        sl->fate = FATE_FAILED;
        return;
    }
    /* a known mailbox: the messages from the saved UIDNEXT on */
    uint32_t from = m->known ? m->db[s].uidnext : 1;
    if (m->status_uidnext[s] <= from)
        return; /* nothing new */
    struct new_copy *cp = &sl->cp[s];
    copy_init(cp, m, s);
    cp->deferred = true;
    cp->hold_budget = hold_budget;
    sl->copying[s] = true;
    /* the target's own messages, new ones included (an exchange), are
     * below the UIDNEXT its listing gave (known_source: never below the
     * saved one) */
    if (m->known)
        cp->bound = m->status_uidnext[OTHER(s)];
    /* what the answer may hold: UIDs below the listing's UIDNEXT,
     * ascending, each once */
    st->fetch_from = from;
    st->fetch_until = m->status_uidnext[s] - 1;
    st->fetch_skip = NULL;
    st->last_new_uid = 0;
    st->streamed_uid = 0;
    st->copy = cp;
    sl->fetch[s] = imap_client_send(st->c, "UID FETCH %u:%u (%a INTERNALDATE BODY.PEEK[])", from,
                                    m->status_uidnext[s] - 1, fetch_flags_items(st));
}

/* The answers to one mailbox's EXAMINE and FETCH on the source. */
static int copy_wait(struct fresh_window *w, struct fresh_slot *sl, enum side s)
{
    struct mbox_ctx *m = sl->m;
    int rc = examine_wait(sl, s);
    if (rc == 0 && sl->fetch[s]) {
        rc = imap_cmd_wait(sl->fetch[s]);
        if (rc < 0)
            log_error(w->e->log, side_name[s], m->st[s].mailbox, "FETCH failed: %s",
                      imap_client_reason(m->st[s].c));
    }
    return rc;
}

/* What became of one mailbox's copy, once every FETCH was answered. */
static int copy_end(struct fresh_window *w, struct fresh_slot *sl, enum side s)
{
    struct mbox_ctx *m = sl->m;
    enum side t = OTHER(s);
    m->st[s].copy = NULL;
    slot_close(w, sl, s); /* the last ones: the reader is past them */
    if (sl->copying[s] && sl->cp[s].error) {
        log_error(w->e->log, side_name[t], m->st[t].mailbox, "copying new messages failed: %s",
                  imap_client_reason(m->st[t].c));
        return sl->cp[s].error;
    }
    return sl->close_rc ? sl->close_rc : side_error(m);
}

/* Whether the copy pass running took the mailbox: its EXAMINE went to the
 * source (an exchange's second pass leaves out what the first failed, and
 * the source's EXAMINE is sent only by its copy pass until the checks). */
static bool in_pass(const struct fresh_slot *sl, enum side s)
{
    return sl->examine[s] != NULL;
}

/* Pass 1: every mailbox's messages streamed from the source into the
 * target; then the APPENDs' answers recorded. Returns < 0 when a
 * connection broke. */
static int copy_pass(struct fresh_window *w, enum side s)
{
    struct sync_engine *e = w->e;
    enum side t = OTHER(s);
    struct fresh_route rt = {.w = w, .side = s};
    struct imap_mailbox_state scratch;
    memset(&scratch, 0, sizeof scratch);
    imap_client_select_now(e->client[s], &route_handler, &rt, &scratch);
    imap_client_hold(e->client[s]);
    /* the copies' small pieces leave in full buffers, not one write each */
    imap_client_hold(e->client[t]);
    /* (an exchange's second copy pass leaves out what the first failed) */
    for (size_t i = 0; i < w->n; i++)
        if (w->slots[i].fate == FATE_OPEN)
            copy_send(&w->slots[i], s, NULL);
    int rc = imap_client_push(e->client[s]);
    for (size_t i = 0; i < w->n; i++)
        if (in_pass(&w->slots[i], s) && copy_wait(w, &w->slots[i], s) != 0)
            w->slots[i].fate = FATE_FAILED;
    for (size_t i = 0; i < w->n; i++)
        if (in_pass(&w->slots[i], s) && copy_end(w, &w->slots[i], s) != 0)
            w->slots[i].fate = FATE_FAILED;
    int pr = imap_client_push(e->client[t]);
    imap_client_release(e->client[s], &rt);
    if (rc == 0)
        rc = pr;
    /* the answers, in order (the check compares with `made`) */
    for (size_t i = 0; i < w->n; i++)
        if (w->slots[i].copying[s] && copy_finish(&w->slots[i].cp[s], NULL) != 0)
            w->slots[i].fate = FATE_FAILED;
    return engine_broken(e) ? -EIO : rc;
}

/* Pass 2: every mailbox examined on side t (the target; in an exchange,
 * each side in turn), with its messages' flags. It waits for the APPENDs'
 * answers (copy_pass) rather than riding behind them: a server may answer
 * a command sent behind an APPEND from a view of the mailbox that lacks
 * some of the copies (Dovecot runs them side by side), and the check
 * would then miss them. Returns < 0 when a connection broke. */
static int check_pass(struct fresh_window *w, enum side t)
{
    struct sync_engine *e = w->e;
    struct imap_client *c = e->client[t];
    struct fresh_route rt = {.w = w, .side = t, .check = true};
    struct imap_mailbox_state scratch;
    memset(&scratch, 0, sizeof scratch);
    imap_client_select_now(c, &route_handler, &rt, &scratch);
    imap_client_hold(c);
    for (size_t i = 0; i < w->n; i++) {
        struct fresh_slot *sl = &w->slots[i];
        if (sl->fate != FATE_OPEN)
            continue;
        /* an exchange's copy pass from t, answered */
        imap_cmd_free(&sl->examine[t]);
        imap_cmd_free(&sl->fetch[t]);
        sl->examine[t] = examine_send(sl->m, t);
        sl->fetch[t] = imap_client_send(c, "UID FETCH %u:* (UID FLAGS)",
                                        sl->m->known ? sl->m->db[t].uidnext : 1);
    }
    int rc = imap_client_push(c);
    for (size_t i = 0; i < w->n; i++) {
        struct fresh_slot *sl = &w->slots[i];
        if (sl->fate != FATE_OPEN)
            continue;
        if (examine_wait(sl, t) != 0)
            sl->fate = FATE_FAILED;
        else if (imap_cmd_wait(sl->fetch[t]) != 0)
            sl->fate = FATE_REDO; /* a server that will not list an empty mailbox so */
    }
    imap_client_release(c, &rt);
    return engine_broken(e) ? -EIO : rc;
}

/* One side's check in an exchange, run beside the other's. */
struct check_job {
    struct fresh_window *w;
    enum side t;
    int rc;
};

static void check_main(struct coro *self, void *arg)
{
    (void)self;
    struct check_job *job = arg;
    job->rc = check_pass(job->w, job->t);
}

/* An exchange's checks, both sides at once: each holds only its own
 * connection and keeps its findings per side (seen, nfound), and the
 * coroutines take turns, so what they share (fate, confused) only ever
 * goes one way. */
static int check_both(struct fresh_window *w)
{
    struct check_job remote = {w, SIDE_REMOTE, 0};
    struct coro *co = coro_spawn(w->e->sched, check_main, &remote, 0);
    int rc = check_pass(w, SIDE_LOCAL);
    if (co)
        coro_join(coro_current(w->e->sched), co);
    else if (rc == 0)
        remote.rc = check_pass(w, SIDE_REMOTE);
    return rc < 0 ? rc : remote.rc;
}

/*
 * An exchange's copy from the local server, held: its EXAMINEs and FETCHes
 * go out before the remote server's copy starts, the local server's reader
 * keeps its messages in memory while the other copy streams, and they are
 * appended to the remote server once read. Both servers fetch, then both
 * store, at the same time. Both copies streaming would not do: each
 * reader writes what it reads into the other server, so a server busy
 * answering a FETCH (not reading its socket) would stop the reader of the
 * other one, which would stop that one's FETCH, and so on round. A held
 * reader never writes. Past FRESH_HOLD_BYTES its messages are dropped
 * and their mailboxes left to the per-mailbox path.
 */
struct held_job {
    struct fresh_window *w;
    struct fresh_route rt;
    struct imap_mailbox_state scratch;
    uint64_t budget;
    int rc;
};

/* Sends the held copy's commands, before anything else goes to the local
 * server in this window. */
static void held_send(struct held_job *job)
{
    struct fresh_window *w = job->w;
    struct imap_client *c = w->e->client[SIDE_LOCAL];
    job->rt = (struct fresh_route){.w = w, .side = SIDE_LOCAL, .holding = true};
    memset(&job->scratch, 0, sizeof job->scratch);
    imap_client_select_now(c, &route_handler, &job->rt, &job->scratch);
    imap_client_hold(c);
    for (size_t i = 0; i < w->n; i++)
        if (w->slots[i].fate == FATE_OPEN)
            copy_send(&w->slots[i], SIDE_LOCAL, &job->budget);
    job->rc = imap_client_push(c);
}

/* The rest of the held copy: its answers, then its messages appended to
 * the remote server, mailbox by mailbox, and those answers recorded. */
static void held_main(struct coro *self, void *arg)
{
    (void)self;
    struct held_job *job = arg;
    struct fresh_window *w = job->w;
    struct sync_engine *e = w->e;
    const enum side s = SIDE_LOCAL;
    for (size_t i = 0; i < w->n; i++)
        if (in_pass(&w->slots[i], s) && copy_wait(w, &w->slots[i], s) != 0)
            w->slots[i].fate = FATE_FAILED;
    imap_client_release(e->client[s], &job->rt);
    imap_client_hold(e->client[OTHER(s)]);
    for (size_t i = 0; i < w->n; i++) {
        struct fresh_slot *sl = &w->slots[i];
        if (!in_pass(sl, s))
            continue;
        struct new_copy *cp = &sl->cp[s];
        if (sl->copying[s]) {
            cp->hold_budget = NULL;
            if (cp->held_over && sl->fate == FATE_OPEN)
                sl->fate = FATE_REDO; /* its messages were not all kept */
            else if (sl->fate == FATE_OPEN)
                copy_release_held(cp); /* a failure is said by copy_end */
        }
        if (copy_end(w, sl, s) != 0)
            sl->fate = FATE_FAILED;
    }
    int pr = imap_client_push(e->client[OTHER(s)]);
    for (size_t i = 0; i < w->n; i++)
        if (w->slots[i].copying[s] && copy_finish(&w->slots[i].cp[s], NULL) != 0)
            w->slots[i].fate = FATE_FAILED;
    if (job->rc == 0)
        job->rc = pr;
    if (engine_broken(e))
        job->rc = -EIO;
}

/* An exchange: the held copy from the local server beside the streamed
 * one from the remote server, then both sides checked. */
static int exchange_run(struct fresh_window *w)
{
    struct held_job job = {.w = w, .budget = FRESH_HOLD_BYTES};
    held_send(&job);
    struct coro *co = coro_spawn(w->e->sched, held_main, &job, 0);
    int rc = copy_pass(w, SIDE_REMOTE);
    if (co)
        coro_join(coro_current(w->e->sched), co);
    else
        held_main(NULL, &job); /* after the other copy, then */
    if (rc == 0)
        rc = job.rc;
    if (rc == 0)
        rc = check_both(w);
    return rc;
}

/* Whether side t was checked: the target, or either side of an
 * exchange. */
static bool slot_checked(const struct fresh_window *w, enum side t)
{
    return w->both || t != w->src;
}

/* Whether the checked side t holds what was expected there and nothing
 * else, each message with the flags it was given, our copies under the
 * UIDVALIDITY their APPENDs gave and below the UIDNEXT its EXAMINE gave. */
static bool side_checks(const struct fresh_slot *sl, enum side t)
{
    const struct fresh_seen *seen = &sl->seen[t];
    const struct new_copy *in = &sl->cp[OTHER(t)];
    size_t nin = sl->copying[OTHER(t)] ? in->nmade : 0;
    if (!seen->uidnext || sl->nfound[t] != expected_count(sl, t))
        return false;
    return !nin || (seen->uidvalidity == in->uidvalidity && seen->uidnext > in->made[nin - 1].tuid);
}

/* Whether the window may save the mailbox: each checked side held what
 * was expected, and every EXAMINE said what the state needs. */
static bool slot_checks(const struct fresh_window *w, const struct fresh_slot *sl)
{
    const struct mbox_ctx *m = sl->m;
    if (sl->confused)
        return false;
    for (int x = 0; x < 2; x++) {
        enum side s = (enum side)x;
        const struct fresh_seen *seen = &sl->seen[s];
        /* a known mailbox: its saved UIDVALIDITY, and no change reported
         * on a source but new messages */
        if (m->known && (seen->uidvalidity != m->db[s].uidvalidity || m->st[s].nchanges ||
                         m->st[s].vanished.count))
            return false;
        if (!seen->uidvalidity || seen->nomodseq || !seen->highestmodseq)
            return false;
        /* a source: the mailbox its listing described */
        if ((w->both || s == w->src) && seen->uidvalidity != m->status_uidvalidity[s])
            return false;
        if (slot_checked(w, s) && !side_checks(sl, s))
            return false;
    }
    return true;
}

/* The saved state of a mailbox that passed, in the open transaction: a
 * checked side's UIDNEXT and HIGHESTMODSEQ as its check's EXAMINE gave
 * them (it held what was expected and nothing else); the source's, when
 * it was not checked, its listing UIDNEXT (every message below was
 * fetched) and its EXAMINE's HIGHESTMODSEQ. */
static int slot_save(struct fresh_window *w, struct fresh_slot *sl)
{
    struct state_db *db = w->e->db;
    struct mbox_ctx *m = sl->m;
    uint32_t next[2];
    for (int s = 0; s < 2; s++)
        next[s] = slot_checked(w, (enum side)s) ? sl->seen[s].uidnext : m->status_uidnext[s];
    for (int s = 0; s < 2; s++) {
        if (!m->have_row[s] &&
            state_db_side_insert(db, m->idx, (enum side)s, sl->seen[s].uidvalidity) < 0)
            return ERR_DB;
        m->have_row[s] = true;
        if (state_db_side_update(db, m->idx, (enum side)s, next[s], sl->seen[s].highestmodseq) < 0)
            return ERR_DB;
    }
    return state_db_copy_clear(db, m->idx) < 0 ? ERR_DB : 0;
}

/* The window's end: the mailboxes that passed are saved in one
 * transaction (their copies' records with them). */
static int conclude(struct fresh_window *w)
{
    struct sync_engine *e = w->e;
    int rc = 0;
    for (size_t i = 0; i < w->n && rc == 0; i++) {
        struct fresh_slot *sl = &w->slots[i];
        struct mbox_ctx *m = sl->m;
        if (sl->fate == FATE_OPEN &&
            (m->nomem || side_error(m) || m->st[0].refused || m->st[1].refused)) {
            if (m->nomem)
                log_error(e->log, NULL, m->pretty, "out of memory");
            sl->fate = FATE_FAILED;
        }
        if (sl->fate == FATE_OPEN && !slot_checks(w, sl))
            sl->fate = FATE_REDO;
        if (sl->fate == FATE_OPEN) {
            rc = slot_save(w, sl);
            sl->fate = FATE_DONE;
        }
    }
    if (rc == 0 && (state_db_commit(e->db) < 0 || state_db_begin(e->db) < 0))
        rc = ERR_DB;
    if (rc < 0) {
        log_error(e->log, "database", NULL, "%s", state_db_error(e->db));
        return rc;
    }
    for (size_t i = 0; i < w->n; i++) {
        struct fresh_slot *sl = &w->slots[i];
        struct mbox_ctx *m = sl->m;
        if (sl->fate == FATE_DONE || sl->fate == FATE_REDO)
            log_summary(m); /* what was copied, either way */
        if (sl->fate == FATE_DONE && (m->added[0] || m->added[1]))
            e->cycle_synced++;
        if (sl->fate == FATE_REDO)
            log_debug(e->log, NULL, m->pretty, "left to the per-mailbox path");
        if (sl->fate == FATE_FAILED) {
            e->failed_mailboxes++;
            log_refused_rest(m);
        }
    }
    return 0;
}

static void window_fini(struct fresh_window *w)
{
    for (size_t i = 0; i < w->n; i++) {
        struct fresh_slot *sl = &w->slots[i];
        /* commands not waited for (a broken connection) are answered
         * later, if ever, and ignored */
        for (int s = 0; s < 2; s++) {
            imap_cmd_free(&sl->examine[s]);
            imap_cmd_free(&sl->fetch[s]);
        }
        for (int s = 0; s < 2; s++)
            if (sl->copying[s])
                copy_fini(&sl->cp[s]);
        mbox_free(&sl->m);
    }
    free(w->slots);
    memset(w, 0, sizeof *w);
}

/* One window, set up already; < 0 when the run must stop. */
static int window_run(struct fresh_window *w)
{
    int rc = 0;
    if (w->both) {
        /* each side's new messages copied to the other, then each side
         * checked for its own and the other's */
        rc = exchange_run(w);
    } else {
        rc = copy_pass(w, w->src);
        if (rc == 0)
            rc = check_pass(w, OTHER(w->src));
    }
    /* what was recorded is kept even when a connection broke: it is
     * true, and the journal covers the rest */
    int c = conclude(w);
    return rc < 0 ? rc : c;
}

/* ------------------------------------------------------------------ */
/* which mailboxes */

/*
 * For a mailbox synchronized before: the side to copy from when its only
 * news, by the listing's STATUS, is new messages on that side;
 * FRESH_BOTH when both sides have new messages (whatever else changed
 * there, the EXAMINEs will tell); else -1. QRESYNC on both servers (the
 * EXAMINEs report what else changed); no copy journal and no pairs above
 * the saved UIDNEXTs (what an interrupted run left is for sync_one).
 */
static int known_source(struct mbox_ctx *m, const struct mbox_work *w)
{
    struct sync_engine *e = m->e;
    bool news[2];
    if (e->tier[0] != TIER_QRESYNC || e->tier[1] != TIER_QRESYNC)
        return -1;
    for (int s = 0; s < 2; s++) {
        const struct listed *it = listing_find(&e->listing[s], w->key, w->keylen);
        const struct state_side *db = &m->db[s];
        if (!it || !it->has_status || it->uidvalidity != db->uidvalidity || !db->highestmodseq ||
            db->uidnext <= 1 || it->uidnext < db->uidnext)
            return -1;
        news[s] = it->uidnext > db->uidnext;
        /* a target changed by other means: not for a window */
        if (!news[s] && it->highestmodseq != db->highestmodseq)
            return -1;
    }
    if (!news[0] && !news[1])
        return -1;
    int src = news[0] && news[1] ? FRESH_BOTH : news[0] ? SIDE_LOCAL : SIDE_REMOTE;
    for (int t = 0; t < 2; t++)
        if ((src == FRESH_BOTH || t != src) && !imap_client_has_cap(e->client[t], "UIDPLUS"))
            return -1;
    struct state_copy *rows = NULL;
    size_t nrows = 0;
    struct uidset above[2];
    uidset_init(&above[0]);
    uidset_init(&above[1]);
    int r = state_db_copy_list(e->db, m->idx, &rows, &nrows);
    if (r == 0)
        r = state_db_mapping_above(e->db, m->idx, m->db[0].uidnext, m->db[1].uidnext, &above[0],
                                   &above[1]);
    state_db_copy_list_free(&rows, nrows);
    bool clean = nrows == 0 && above[0].count == 0 && above[1].count == 0;
    uidset_fini(&above[0]);
    uidset_fini(&above[1]);
    if (r < 0)
        return ERR_DB;
    return clean ? src : -1;
}

/*
 * The side to copy from when the window can take the mailbox, else -1:
 * nothing of it in the database (no state, pairs or journal), created on
 * one side in this run, listed with its STATUS on the other, and both
 * servers with mod-sequences; the target must report the UIDs of
 * appended messages.
 */
static int fresh_source(struct mbox_ctx *m, const struct mbox_work *w)
{
    struct sync_engine *e = m->e;
    if (m->known && !m->repair)
        return known_source(m, w);
    if (m->repair || m->have_row[0] || m->have_row[1] || w->created[0] == w->created[1])
        return -1;
    enum side t = w->created[0] ? SIDE_LOCAL : SIDE_REMOTE, s = OTHER(t);
    if (e->tier[0] == TIER_PLAIN || e->tier[1] == TIER_PLAIN || !m->status_uidvalidity[s] ||
        !m->status_uidnext[s] || !imap_client_has_cap(e->client[t], "UIDPLUS"))
        return -1;
    int64_t paired = 0;
    struct state_copy *rows = NULL;
    size_t nrows = 0;
    if (state_db_mapping_count(e->db, m->idx, &paired) < 0 ||
        state_db_copy_list(e->db, m->idx, &rows, &nrows) < 0)
        return ERR_DB;
    state_db_copy_list_free(&rows, nrows);
    return paired || nrows ? -1 : (int)s;
}

/* What fresh_source gives for the mailboxes of a window. */
static int window_kind(const struct fresh_window *w)
{
    return w->both ? FRESH_BOTH : (int)w->src;
}

/* Sets up the next window: the mailboxes of todo[*k...] of the window's
 * kind, up to a window's worth. */
static int window_fill(struct fresh_window *w, const struct mbox_work *work, const size_t *todo,
                       size_t ntodo, const signed char *take, size_t *k)
{
    struct sync_engine *e = w->e;
    for (; *k < ntodo && w->n < FRESH_WINDOW; (*k)++) {
        if (take[*k] != (signed char)window_kind(w))
            continue;
        struct mbox_ctx *m = mbox_new(e, &work[todo[*k]], false);
        if (!m)
            return -ENOMEM;
        w->slots[w->n].at = todo[*k];
        w->slots[w->n].rank = work[todo[*k]].rank;
        w->slots[w->n++].m = m;
    }
    return 0;
}

/* Marks in `take` the source side of each mailbox of `todo` the windows
 * can take (-1: not); returns how many, or < 0. */
static long fresh_select(struct sync_engine *e, const struct mbox_work *work, const size_t *todo,
                         size_t ntodo, signed char *take)
{
    long count = 0;
    for (size_t k = 0; k < ntodo; k++) {
        struct mbox_ctx *m = mbox_new(e, &work[todo[k]], false);
        if (!m)
            return -ENOMEM;
        int f = fresh_source(m, &work[todo[k]]);
        mbox_free(&m);
        if (f < -1) {
            log_error(e->log, "database", NULL, "%s", state_db_error(e->db));
            return f;
        }
        take[k] = (signed char)f;
        count += f >= 0;
    }
    return count;
}

/* Whether the windows may take some of the mailboxes to do: at least
 * FRESH_MIN created on one side in this run. */
bool fresh_wanted(const struct sync_engine *e, const struct mbox_work *work, const size_t *todo,
                  size_t ntodo)
{
    size_t count = 0;
    for (size_t k = 0; k < ntodo && count < FRESH_MIN; k++)
        count += work[todo[k]].created[0] != work[todo[k]].created[1];
    return e->opts.command != SYNC_REPAIR && count >= FRESH_MIN;
}

/*
 * Synchronizes, window by window (the remote server's mailboxes first,
 * then the local server's, then the exchanges), the mailboxes of `todo`
 * the windows can take, and leaves in `todo` (in their order) the others
 * and those the windows left. Returns < 0 when a connection broke or the
 * database failed: the run stops.
 */
int fresh_run(struct sync_engine *e, struct mbox_work *work, size_t *todo, size_t *ntodo)
{
    if (e->opts.command == SYNC_REPAIR || *ntodo < FRESH_MIN)
        return 0;
    size_t n = *ntodo, nrest = 0;
    signed char *take = calloc(n, 1);
    size_t *rest = malloc(n * sizeof *rest);
    long count = take && rest ? fresh_select(e, work, todo, n, take) : -ENOMEM;
    if (count < FRESH_MIN) {
        free(take);
        free(rest);
        return count < 0 ? (int)count : 0;
    }
    /* nothing may be in flight when a pass begins */
    drop_speculative(e);
    for (size_t k = 0; k < n; k++)
        if (take[k] < 0)
            rest[nrest++] = todo[k];
    int rc = 0;
    static const struct fresh_window kinds[] = {
        {.src = SIDE_REMOTE}, {.src = SIDE_LOCAL}, {.src = SIDE_REMOTE, .both = true}};
    for (size_t d = 0; d < sizeof kinds / sizeof kinds[0] && rc == 0; d++) {
        struct fresh_window w = kinds[d];
        w.e = e;
        size_t k = 0;
        while (k < n && rc == 0) {
            if (e->stop) {
                /* those not done go back for engine_cycle to pass over */
                for (; k < n; k++)
                    if (take[k] == (signed char)window_kind(&w))
                        rest[nrest++] = todo[k];
                break;
            }
            w.slots = calloc(FRESH_WINDOW, sizeof *w.slots);
            rc = w.slots ? window_fill(&w, work, todo, n, take, &k) : -ENOMEM;
            if (rc == 0 && w.n)
                rc = window_run(&w);
            for (size_t i = 0; i < w.n; i++) {
                if (w.slots[i].fate != FATE_REDO)
                    continue;
                rest[nrest++] = w.slots[i].at;
                /* the target holds our copies now, and maybe more: not
                 * the empty mailbox sync_one takes one created in this
                 * run for (it would not look for new messages there) */
                work[w.slots[i].at].created[0] = work[w.slots[i].at].created[1] = false;
            }
            window_fini(&w);
            w = kinds[d];
            w.e = e;
        }
    }
    if (rc == 0) {
        memcpy(todo, rest, nrest * sizeof *todo);
        *ntodo = nrest;
    }
    free(take);
    free(rest);
    return rc;
}
