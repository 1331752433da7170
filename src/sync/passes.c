/*
 * Spread changes: mailboxes whose only news is flag changes and expunges
 * of messages both sides hold, synchronized a window at a time in two
 * pipelined passes instead of a round trip or two each (the reasoning,
 * crash safety included, is in doc/internals/sync.md, "Spread changes"):
 *
 *  1. scan: each server gets at once an EXAMINE with QRESYNC, from the
 *     saved state, of every mailbox of the window; one mailbox's answers
 *     are told from the next one's by the [CLOSED] the server puts
 *     between them (RFC 7162 3.2.11);
 *  2. apply: what to expunge and store is decided per mailbox as
 *     sync_known decides it, then each server gets at once, for every
 *     mailbox with something to do there, a SELECT with QRESYNC from
 *     what the scan saw, and the expunges and stores behind it.
 *
 * The saved state of the window's mailboxes moves in one transaction,
 * once every command of theirs was answered. A mailbox the passes cannot
 * finish (new messages, a copy journal or pairs of an interrupted run, a
 * change made after the scan, more responses than its share of the
 * window's memory) is left to the per-mailbox path, which starts over
 * from the saved state: what the passes did is found there again as
 * changes equal on both sides, which need nothing.
 */
#include "internal.h"

enum {
    /* mailboxes per window: their commands are in flight together, and
     * each has a share of one side's memory budget for its responses */
    PASSES_WINDOW = 256,
    /* below this, the per-mailbox path costs no more round trips */
    PASSES_MIN = 2,
};

/*
 * One connection's chain of SELECT or EXAMINE commands, sent at once with
 * other commands between them: each mailbox's untagged responses reach
 * its own side state. The client keeps one mailbox state up to date (ms);
 * it is copied to the mailbox the responses belong to as they come.
 */
struct chain_link {
    struct mbox_ctx *m;
    struct imap_cmd *cmd; /* its SELECT or EXAMINE */
};

struct chain {
    enum side side;
    struct imap_client *c;
    struct chain_link *links; /* in sending order */
    size_t n;
    long cur;      /* the mailbox answered now; -1 the one selected before */
    size_t closed; /* [CLOSED] responses seen */
    bool lead;     /* a mailbox was selected when the chain began */
    struct imap_mailbox_state ms;
};

static void chain_untagged(void *ctx, const struct imap_response *r)
{
    struct chain *ch = ctx;
    bool in = ch->cur >= 0 && (size_t)ch->cur < ch->n;
    if (r->status != IMAP_STATUS_NONE && r->code && strcasecmp(r->code, "CLOSED") == 0) {
        /* the previous mailbox is closed: what follows is the next one's */
        if (in)
            ch->links[ch->cur].m->st[ch->side].ms = ch->ms;
        memset(&ch->ms, 0, sizeof ch->ms);
        ch->cur++;
        ch->closed++;
        return;
    }
    if (!in)
        return; /* the mailbox selected before: done with */
    struct side_state *st = &ch->links[ch->cur].m->st[ch->side];
    st->ms = ch->ms;
    selected_untagged(st, r);
}

static bool chain_literal(void *ctx, const struct imap_response *partial, uint64_t size,
                          struct imap_literal *lit)
{
    (void)ctx, (void)partial, (void)size, (void)lit;
    return false; /* no message bodies are asked for */
}

static const struct imap_handler chain_handler = {chain_untagged, chain_literal};

/* ch: zeroed by the caller */
static int chain_init(struct chain *ch, struct sync_engine *e, enum side s, size_t cap)
{
    ch->side = s;
    ch->c = e->client[s];
    ch->links = calloc(cap ? cap : 1, sizeof *ch->links);
    return ch->links ? 0 : -ENOMEM;
}

/* Both servers' chains, for up to cap mailboxes each. */
static int chains_init(struct chain ch[2], struct sync_engine *e, size_t cap)
{
    int rc = 0;
    for (int s = 0; s < 2; s++)
        if (chain_init(&ch[s], e, (enum side)s, cap) < 0)
            rc = -ENOMEM;
    return rc;
}

/* Takes over the connection's responses; nothing may be in flight. */
static void chain_begin(struct chain *ch)
{
    ch->lead = imap_client_selected(ch->c);
    ch->cur = ch->lead ? -1 : 0;
    imap_client_select_now(ch->c, &chain_handler, ch, &ch->ms);
    imap_client_hold(ch->c);
}

static void chain_add(struct chain *ch, struct mbox_ctx *m, struct imap_cmd *cmd)
{
    ch->links[ch->n++] = (struct chain_link){m, cmd};
}

/* Once every command of the chain is answered: whether each mailbox got
 * its own responses, that is every SELECT succeeded and each came with
 * its [CLOSED] (a failed one may close the previous mailbox or not, and
 * the count then tells nothing). *failed: some SELECT failed. */
static bool chain_end(struct chain *ch, bool *failed)
{
    bool ok = true;
    for (size_t i = 0; i < ch->n; i++) {
        if (!ch->links[i].cmd || imap_cmd_wait(ch->links[i].cmd) < 0) {
            ok = false;
            *failed = true;
        }
        imap_cmd_free(&ch->links[i].cmd);
    }
    if (ch->cur >= 0 && (size_t)ch->cur < ch->n)
        ch->links[ch->cur].m->st[ch->side].ms = ch->ms;
    imap_client_release(ch->c, ch);
    if (ch->n == 0)
        return ok;
    return ok && ch->closed == ch->n - 1 + (ch->lead ? 1 : 0) && (size_t)ch->cur == ch->n - 1;
}

static void chain_fini(struct chain *ch)
{
    if (ch->c)
        imap_client_release(ch->c, ch);
    for (size_t i = 0; i < ch->n; i++)
        imap_cmd_free(&ch->links[i].cmd);
    free(ch->links);
    ch->links = NULL;
    ch->n = 0;
}

/* ------------------------------------------------------------------ */

/* Whether the passes can take the mailbox: known on both sides, found
 * with QRESYNC on both, and by the listing's STATUS without new
 * messages; no copy journal and no pairs of an interrupted run. */
static int eligible(struct mbox_ctx *m)
{
    struct sync_engine *e = m->e;
    if (!m->known || m->repair)
        return 0;
    for (int s = 0; s < 2; s++) {
        if (m->st[s].how != TIER_QRESYNC || m->db[s].highestmodseq == 0 || m->db[s].uidnext <= 1 ||
            m->status_uidvalidity[s] != m->db[s].uidvalidity ||
            m->status_uidnext[s] != m->db[s].uidnext)
            return 0;
    }
    struct state_copy *rows = NULL;
    size_t nrows = 0;
    if (state_db_copy_list(e->db, m->idx, &rows, &nrows) < 0)
        return ERR_DB;
    state_db_copy_list_free(&rows, nrows);
    if (nrows)
        return 0;
    struct uidset above[2];
    uidset_init(&above[0]);
    uidset_init(&above[1]);
    int r = state_db_mapping_above(e->db, m->idx, m->db[0].uidnext, m->db[1].uidnext, &above[0],
                                   &above[1]);
    bool clean = above[0].count == 0 && above[1].count == 0;
    uidset_fini(&above[0]);
    uidset_fini(&above[1]);
    if (r < 0)
        return ERR_DB;
    return clean ? 1 : 0;
}

/* One mailbox of a window. */
struct slot {
    struct mbox_ctx *m;
    struct known_round round;
    bool planned; /* `round` holds a round to finish */
    struct cmd_batch batch[2];
    enum fate fate;
    size_t at; /* its index in the work list */
};

/* What the window works on. */
struct window {
    struct sync_engine *e;
    struct slot *slots;
    size_t n;
};

/* EXAMINE with QRESYNC from the saved state, the known-UIDs sample too
 * (as the per-mailbox SELECT asks). */
static struct imap_cmd *scan_send(struct mbox_ctx *m, enum side s)
{
    struct side_state *st = &m->st[s];
    char *seqs = NULL, *uids = NULL;
    struct imap_cmd *cmd;
    qresync_sample(m->e, m->idx, s, &seqs, &uids);
    if (seqs && uids)
        cmd = imap_client_send(st->c, "EXAMINE %m (QRESYNC (%u %U 1:%u (%S %S)))", st->mailbox,
                               m->db[s].uidvalidity, m->db[s].highestmodseq, m->db[s].uidnext - 1,
                               seqs, uids);
    else
        cmd = imap_client_send(st->c, "EXAMINE %m (QRESYNC (%u %U 1:%u))", st->mailbox,
                               m->db[s].uidvalidity, m->db[s].highestmodseq, m->db[s].uidnext - 1);
    free(seqs);
    free(uids);
    return cmd;
}

/* Whether what a SELECT or EXAMINE of the passes said lets the mailbox
 * stay in them: the same UIDVALIDITY, no new message, mod-sequences. */
static bool selected_fits(const struct mbox_ctx *m, enum side s)
{
    const struct side_state *st = &m->st[s];
    const struct imap_mailbox_state *ms = &st->ms;
    return ms->uidvalidity == m->db[s].uidvalidity && ms->uidnext == m->uidnext[s] &&
           !ms->nomodseq && ms->highestmodseq > 0 && !st->over_budget;
}

/* Whether a side reported anything not yet acted on (after the apply:
 * a change someone made since the scan). */
static bool news_left(const struct mbox_ctx *m, enum side s)
{
    const struct side_state *st = &m->st[s];
    if (st->nchanges || st->over_budget)
        return true;
    for (size_t i = 0; i < st->vanished.count; i++)
        if (st->vanished.uids[i] < m->uidnext[s])
            return true;
    return false;
}

/* Pass 1: every mailbox of the window examined on both servers at once.
 * Returns < 0 when a connection broke. */
static int scan(struct window *w)
{
    struct sync_engine *e = w->e;
    struct chain ch[2] = {{0}, {0}};
    int rc = chains_init(ch, e, w->n);
    if (rc == 0) {
        for (int s = 0; s < 2; s++) {
            chain_begin(&ch[s]);
            for (size_t i = 0; i < w->n; i++)
                chain_add(&ch[s], w->slots[i].m, scan_send(w->slots[i].m, (enum side)s));
            imap_client_push(ch[s].c);
        }
        bool valid = true, failed = false;
        for (int s = 0; s < 2; s++)
            valid &= chain_end(&ch[s], &failed);
        if (engine_broken(e)) {
            rc = -EIO;
        } else if (!valid) {
            /* a server that does not mark where a mailbox ends: every
             * mailbox on its own, one at a time (as mbox_release does) */
            if (!failed) {
                e->no_lookahead = true;
                log_debug(e->log, NULL, NULL, "no [CLOSED] from the server: one mailbox at a time");
            }
            for (size_t i = 0; i < w->n; i++)
                w->slots[i].fate = FATE_REDO;
        }
    }
    for (int s = 0; s < 2; s++)
        chain_fini(&ch[s]);
    return rc;
}

/* Between the passes: what each mailbox's scan calls for (a mailbox with
 * nothing to send is done already). The pairs whose messages vanished on
 * one side are forgotten in the open transaction. */
static void plan(struct window *w)
{
    for (size_t i = 0; i < w->n; i++) {
        struct mbox_ctx *m = w->slots[i].m;
        if (w->slots[i].fate != FATE_OPEN)
            continue;
        if (side_error(m) || m->st[0].refused || m->st[1].refused) {
            w->slots[i].fate = FATE_FAILED; /* said already */
            continue;
        }
        if (!selected_fits(m, SIDE_LOCAL) || !selected_fits(m, SIDE_REMOTE)) {
            w->slots[i].fate = FATE_REDO;
            continue;
        }
        for (int s = 0; s < 2; s++)
            if (m->st[s].max_modseq < m->st[s].ms.highestmodseq)
                m->st[s].max_modseq = m->st[s].ms.highestmodseq;
        round_take(m, &w->slots[i].round);
        w->slots[i].planned = true;
        int rc = round_plan(m, &w->slots[i].round);
        if (rc < 0 || m->nomem) {
            if (rc == ERR_DB)
                log_error(w->e->log, "database", m->pretty, "%s", state_db_error(w->e->db));
            else
                log_error(w->e->log, NULL, m->pretty, "out of memory");
            w->slots[i].fate = FATE_FAILED;
        }
    }
}

static bool has_work(const struct known_round *r, enum side s)
{
    return r->remove[s].count || r->plan[s].count;
}

/* SELECT with QRESYNC from what the scan saw: it reports only what
 * changed since, and the stores behind it need a read-write mailbox. */
static struct imap_cmd *apply_select(struct mbox_ctx *m, enum side s)
{
    struct side_state *st = &m->st[s];
    return imap_client_send(st->c, "SELECT %m (QRESYNC (%u %U 1:%u))", st->mailbox,
                            m->db[s].uidvalidity, st->max_modseq, m->uidnext[s] - 1);
}

/* Pass 2: on each server, every mailbox with something to do there is
 * selected and gets its expunges and stores, all at once. Returns < 0
 * when a connection broke. */
static int apply(struct window *w)
{
    struct sync_engine *e = w->e;
    struct chain ch[2] = {{0}, {0}};
    int rc = chains_init(ch, e, w->n);
    if (rc == 0) {
        for (int s = 0; s < 2; s++) {
            chain_begin(&ch[s]);
            for (size_t i = 0; i < w->n; i++) {
                struct mbox_ctx *m = w->slots[i].m;
                if (w->slots[i].fate != FATE_OPEN || !has_work(&w->slots[i].round, (enum side)s))
                    continue;
                chain_add(&ch[s], m, apply_select(m, (enum side)s));
                round_send_side(m, &w->slots[i].round, (enum side)s, &w->slots[i].batch[s]);
            }
            imap_client_push(ch[s].c);
        }
        /* the mailboxes' answers in order, each with what it did */
        for (size_t i = 0; i < w->n; i++) {
            if (w->slots[i].fate != FATE_OPEN)
                continue;
            for (int s = 0; s < 2; s++)
                if (has_work(&w->slots[i].round, (enum side)s) &&
                    round_wait_side(w->slots[i].m, &w->slots[i].round, (enum side)s,
                                    &w->slots[i].batch[s]) < 0)
                    w->slots[i].fate = FATE_FAILED;
        }
        bool valid = true, failed = false;
        for (int s = 0; s < 2; s++)
            valid &= chain_end(&ch[s], &failed);
        if (engine_broken(e))
            rc = -EIO;
        for (size_t i = 0; i < w->n; i++) {
            struct mbox_ctx *m = w->slots[i].m;
            if (w->slots[i].fate != FATE_OPEN)
                continue;
            if (side_error(m) || m->st[0].refused || m->st[1].refused) {
                w->slots[i].fate = FATE_FAILED;
                continue;
            }
            bool again = !valid;
            for (int s = 0; s < 2; s++) {
                struct known_round *r = &w->slots[i].round;
                drop_echoes(&m->st[s], &r->plan[s]);
                if (r->modified[s].count || news_left(m, (enum side)s) ||
                    (has_work(r, (enum side)s) && !selected_fits(m, (enum side)s)))
                    again = true;
            }
            if (again)
                w->slots[i].fate = FATE_REDO;
        }
    }
    for (int s = 0; s < 2; s++)
        chain_fini(&ch[s]);
    return rc;
}

/* Puts back the pairs a failed mailbox's plan deleted: as if its round
 * had never been planned (its state is not saved either). */
static int undo_plan(struct window *w, size_t i)
{
    struct slot *sl = &w->slots[i];
    for (size_t k = 0; k < sl->round.nforgot; k++)
        if (state_db_mapping_insert(w->e->db, sl->m->idx, sl->round.forgot[k].luid,
                                    sl->round.forgot[k].ruid) < 0)
            return ERR_DB;
    return 0;
}

/* The window's end: the saved state of the mailboxes done moves in one
 * transaction with the pairs their expunges let go; a mailbox that failed
 * gets back the pairs its plan let go. Should that not be possible,
 * nothing of the window is kept: the others are done again on their own
 * (what the passes did is then found equal on both sides). */
static void conclude(struct window *w)
{
    struct sync_engine *e = w->e;
    bool failed = false;
    for (size_t i = 0; i < w->n; i++) {
        struct slot *sl = &w->slots[i];
        if (sl->fate == FATE_OPEN) {
            int rc = mbox_save_state(sl->m);
            if (rc == 0 && sl->m->nomem) {
                log_error(e->log, NULL, sl->m->pretty, "out of memory");
                rc = -ENOMEM;
            }
            if (rc == ERR_DB)
                log_error(e->log, "database", sl->m->pretty, "%s", state_db_error(e->db));
            sl->fate = rc == 0 ? FATE_DONE : FATE_FAILED;
        }
        if (sl->fate == FATE_FAILED && sl->planned && (sl->m->nomem || undo_plan(w, i) < 0))
            failed = true;
    }
    if (!failed && (state_db_commit(e->db) < 0 || state_db_begin(e->db) < 0)) {
        log_error(e->log, "database", NULL, "%s", state_db_error(e->db));
        for (size_t i = 0; i < w->n; i++)
            if (w->slots[i].fate == FATE_DONE)
                w->slots[i].fate = FATE_FAILED;
        failed = true;
    }
    if (failed) {
        state_db_rollback(e->db);
        state_db_begin(e->db);
        for (size_t i = 0; i < w->n; i++)
            if (w->slots[i].fate == FATE_DONE)
                w->slots[i].fate = FATE_REDO;
    }
    for (size_t i = 0; i < w->n; i++) {
        struct mbox_ctx *m = w->slots[i].m;
        if (w->slots[i].fate == FATE_DONE) {
            log_summary(m);
            e->cycle_synced++;
        } else if (w->slots[i].fate == FATE_REDO) {
            log_debug(e->log, NULL, m->pretty, "left to the per-mailbox path");
        } else if (w->slots[i].fate == FATE_FAILED) {
            e->failed_mailboxes++;
            log_refused_rest(m);
        }
    }
}

static void window_fini(struct window *w)
{
    for (size_t i = 0; i < w->n; i++) {
        /* commands not waited for (a broken connection) are answered
         * later, if ever, and ignored */
        for (int s = 0; s < 2; s++) {
            struct cmd_batch *b = &w->slots[i].batch[s];
            for (size_t k = 0; k < b->n; k++)
                imap_cmd_free(&b->items[k].cmd);
            free(b->items);
        }
        if (w->slots[i].planned)
            round_fini(&w->slots[i].round);
        mbox_free(&w->slots[i].m);
    }
    free(w->slots);
    memset(w, 0, sizeof *w);
}

/* One window of mailboxes, set up already; < 0 when the run must stop. */
static int window_run(struct window *w)
{
    int rc = scan(w);
    if (rc == 0)
        plan(w);
    bool any = false;
    for (size_t i = 0; i < w->n; i++)
        any |= w->slots[i].fate == FATE_OPEN && (has_work(&w->slots[i].round, SIDE_LOCAL) ||
                                                 has_work(&w->slots[i].round, SIDE_REMOTE));
    if (rc == 0 && any)
        rc = apply(w);
    if (rc == 0)
        conclude(w);
    return rc;
}

/* Whether the passes may take some of `count` mailboxes to do. */
bool passes_wanted(const struct sync_engine *e, size_t count)
{
    return !e->no_lookahead && e->tier[0] == TIER_QRESYNC && e->tier[1] == TIER_QRESYNC &&
           count >= PASSES_MIN;
}

/*
 * Synchronizes, window by window, the mailboxes of `todo` the passes can
 * take, and leaves in `todo` (in their order) the others and those the
 * passes left. Returns < 0 when a connection broke or the database
 * failed: the run stops.
 */
int passes_run(struct sync_engine *e, const struct mbox_work *work, size_t *todo, size_t *ntodo)
{
    if (!passes_wanted(e, *ntodo))
        return 0;
    /* which ones, by what the database and the listing say */
    bool *take = calloc(*ntodo, sizeof *take);
    if (!take)
        return -ENOMEM;
    size_t count = 0;
    int rc = 0;
    for (size_t k = 0; k < *ntodo && rc == 0; k++) {
        struct mbox_ctx *m = mbox_new(e, &work[todo[k]], false);
        if (!m) {
            rc = -ENOMEM;
            break;
        }
        int f = eligible(m);
        mbox_free(&m);
        if (f < 0) {
            log_error(e->log, "database", NULL, "%s", state_db_error(e->db));
            rc = f;
        }
        take[k] = f == 1;
        count += f == 1;
    }
    if (rc < 0 || count < PASSES_MIN) {
        free(take);
        return rc;
    }
    /* nothing may be in flight when a chain begins (engine_cycle did the
     * speculative INBOX first, or let it go) */
    drop_speculative(e);
    size_t left = 0, k = 0;
    while (k < *ntodo && rc == 0) {
        if (e->stop || count == 0) {
            for (; k < *ntodo; k++)
                todo[left++] = todo[k];
            break;
        }
        struct window w = {.e = e};
        size_t cap = count < PASSES_WINDOW ? count : PASSES_WINDOW;
        w.slots = calloc(cap, sizeof *w.slots);
        if (!w.slots) {
            rc = -ENOMEM;
            break;
        }
        for (; k < *ntodo && w.n < cap; k++) {
            if (!take[k]) {
                todo[left++] = todo[k];
                continue;
            }
            struct mbox_ctx *m = mbox_new(e, &work[todo[k]], false);
            if (!m) {
                rc = -ENOMEM;
                break;
            }
            for (int s = 0; s < 2; s++) {
                /* a share of one side's budget, beyond what its messages
                 * bring: over it, the mailbox is done on its own */
                m->st[s].mem_limit -= SIDE_MEMORY_BASE - SIDE_MEMORY_BASE / PASSES_WINDOW;
                m->st[s].budget_soft = true;
                m->uidnext[s] = m->db[s].uidnext;
            }
            progress_mailbox(e->opts.progress, m->pretty, work[todo[k]].rank, e->cycle_todo);
            w.slots[w.n].at = todo[k];
            w.slots[w.n++].m = m;
        }
        count -= w.n;
        if (rc == 0)
            rc = window_run(&w);
        /* those left go back, in order, before the mailboxes not yet seen */
        for (size_t i = 0; i < w.n; i++)
            if (rc == 0 && w.slots[i].fate == FATE_REDO)
                todo[left++] = w.slots[i].at;
        window_fini(&w);
    }
    free(take);
    if (rc == 0)
        *ntodo = left;
    return rc;
}
