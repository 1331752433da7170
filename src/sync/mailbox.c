/*
 * One mailbox from SELECT to its last command: the per-mailbox context,
 * the SELECTs (QRESYNC), the untagged responses while selected, and
 * sync_one(), the spine of the algorithm.
 */
#include "internal.h"

void side_state_reset(struct side_state *st)
{
    uidset_clear(&st->vanished);
    for (size_t i = 0; i < st->nchanges; i++)
        free(st->changes[i].flags);
    st->nchanges = 0;
}

static void side_state_fini(struct side_state *st)
{
    side_state_reset(st);
    uidset_fini(&st->vanished);
    uidset_fini(&st->fetched);
    uidset_fini(&st->probe);
    uidset_fini(&st->present);
    /* answered later and ignored, should the mailbox stop early */
    imap_cmd_free(&st->prefetch);
    imap_cmd_free(&st->search);
    state_db_flags_free(&st->rec, st->nrec);
    for (size_t i = 0; i < st->nnow; i++)
        free(st->now[i].flags);
    free(st->now);
    for (size_t i = 0; i < st->nsent; i++)
        free(st->sent[i].flags);
    free(st->sent);
    free(st->permanent);
    st->sent = NULL;
    st->permanent = NULL;
    st->nsent = st->capsent = 0;
    free(st->changes);
    free(st->mailbox);
    st->now = NULL;
    st->nnow = st->capnow = 0;
    st->changes = NULL;
    st->mailbox = NULL;
}

/* Records the first reason why what side st reported cannot be acted on,
 * and says it: the mailbox then fails without sending anything more. */
void side_fail(struct side_state *st, int code, const char *fmt, ...)
{
    if (st->error)
        return; /* one message per failure */
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    st->error = code;
    log_error(st->e->log, side_name[st->side], st->mailbox, "%s", msg);
}

static void side_over_budget(struct side_state *st)
{
    if (st->budget_soft) {
        /* a share of a window of mailboxes (passes.c): the mailbox is
         * done on its own instead, with the whole budget */
        st->over_budget = true;
        return;
    }
    side_fail(st, ERR_TOO_BIG,
              "the server's responses for this mailbox need more than %zu MiB of memory; "
              "refusing them (broken or hostile server?)",
              st->mem_limit >> 20);
}

bool side_charge(struct side_state *st, size_t bytes)
{
    if (bytes <= st->mem_limit - st->mem_used) {
        st->mem_used += bytes;
        return true;
    }
    side_over_budget(st);
    return false;
}

/* The first failure of either side of the mailbox, or 0. */
int side_error(const struct mbox_ctx *m)
{
    return m->st[0].error ? m->st[0].error : m->st[1].error;
}

/* "UID MODSEQ FLAGS", or without MODSEQ where the server has none. */
const char *fetch_flags_items(const struct side_state *st)
{
    return st->e->tier[st->side] == TIER_PLAIN ? "UID FLAGS" : "UID MODSEQ FLAGS";
}

static int change_add(struct side_state *st, uint32_t uid, uint64_t modseq, char *flags)
{
    /* what a change costs: its share of an array that doubles, its flags
     * rounded as the allocator does, the allocator's header */
    if (!side_charge(st, 2 * sizeof(struct change) + ((strlen(flags) + 16) & ~(size_t)15) + 16)) {
        free(flags);
        return ERR_TOO_BIG;
    }
    struct change *c = array_reserve(st->changes, &st->capchanges, st->nchanges + 1, sizeof *c, 64);
    if (!c) {
        free(flags);
        side_fail(st, -ENOMEM, "out of memory");
        return -ENOMEM;
    }
    st->changes = c;
    st->changes[st->nchanges++] = (struct change){.uid = uid, .modseq = modseq, .flags = flags};
    return 0;
}

/* Adds a UID to one of the side's sets, within its memory budget (an
 * array that doubles: twice the UID's size). */
static void side_uid_add(struct side_state *st, struct uidset *set, uint32_t uid)
{
    if (side_charge(st, 2 * sizeof uid) && uidset_add(set, uid) < 0)
        side_fail(st, -ENOMEM, "out of memory");
}

/* ------------------------------------------------------------------ */
/* untagged responses while a mailbox is selected */

/*
 * Whether a message a new-message FETCH returned is one to copy: its UID
 * must be in the range asked for, not one we already replicated or are
 * skipping, and above the previous one (servers answer in UID order; a
 * repeat would be copied twice).
 */
static bool new_message_wanted(struct side_state *st, uint32_t uid)
{
    if (uid < st->fetch_from || uid <= st->last_new_uid ||
        (st->fetch_until && uid > st->fetch_until) ||
        (st->fetch_skip && uidset_contains(st->fetch_skip, uid))) {
        if (++st->refused <= REFUSALS_SHOWN)
            log_error(st->e->log, side_name[st->side], st->mailbox,
                      "the server returned UID %" PRIu32 ", which was not asked for or came "
                      "twice; not copied",
                      uid);
        return false;
    }
    st->last_new_uid = uid;
    return true;
}

static void on_fetch(struct side_state *st, const struct imap_fetch *f, bool new_message)
{
    if (!f->uid) {
        /* a change someone made that we cannot place (a server without
         * QRESYNC need not send the UID): the HIGHESTMODSEQ saved stays
         * below it, so that the next run asks again */
        if (f->modseq && (!st->unattributed || f->modseq < st->unattributed))
            st->unattributed = f->modseq;
        return;
    }
    if (f->modseq > st->max_modseq)
        st->max_modseq = f->modseq;
    if (st->how == TIER_PLAIN && f->flags) {
        /* whatever the reason, the flags the message has now: for the
         * record (tiers.c) */
        char *now = flags_normalize(f->flags);
        if (now)
            now_note(st, f->uid, now);
        free(now);
    }
    /* the answer to the probe behind an APPEND (UID, and MODSEQ or FLAGS
     * for the target's state) */
    if (st->probing && !f->body && f->uid >= st->probe_from) {
        side_uid_add(st, &st->probe, f->uid);
        return;
    }
    if (new_message) {
        /* a new message: handled by the copy (streamed or inline) */
        if (f->uid > st->max_uid_seen)
            st->max_uid_seen = f->uid;
        side_uid_add(st, &st->fetched, f->uid);
        return;
    }
    if (!f->flags)
        return;
    char *flags = flags_normalize(f->flags);
    if (!flags) {
        side_fail(st, -ENOMEM, "out of memory");
        return;
    }
    change_add(st, f->uid, f->modseq, flags);
}

static void on_vanished(struct side_state *st, const struct imap_response *r)
{
    const struct imap_value *set = &r->args[r->nargs - 1];
    const char *text;
    size_t len;
    if (!imap_value_string(set, &text, &len)) {
        side_fail(st, ERR_PROTOCOL, "the server sent a VANISHED response without a UID set");
        return;
    }
    /* VANISHED (EARLIER) answers the QRESYNC known range, UIDs below the
     * database's UIDNEXT; a later one names messages expunged since the
     * SELECT, below the server's UIDNEXT or among those we fetched. UIDs
     * beyond cannot be messages we know: they are dropped, and the rest
     * is merged and bounded before anything is allocated. */
    bool earlier = r->nargs >= 3 && r->args[1].type == IMAP_LIST;
    uint32_t top = earlier ? (st->known_uidnext ? st->known_uidnext - 1 : 0)
                           : (st->ms.uidnext ? st->ms.uidnext - 1 : 0);
    if (!earlier && st->max_uid_seen > top)
        top = st->max_uid_seen;
    /* the merge builds a new array beside the old one: twice the size */
    size_t left = (st->mem_limit - st->mem_used) / (2 * sizeof(uint32_t));
    size_t before = st->vanished.count;
    struct uidset_bounds b = {.max_uid = top, .max_count = before + left};
    int rc = uidset_parse_bounded(&st->vanished, text, len, &b);
    if (rc == -EINVAL)
        side_fail(st, ERR_PROTOCOL, "the server sent an invalid VANISHED response");
    else if (rc == -E2BIG)
        side_over_budget(st);
    else if (rc < 0)
        side_fail(st, rc, "out of memory");
    else if (st->vanished.count > before)
        side_charge(st, (st->vanished.count - before) * 2 * sizeof(uint32_t));
}

/* A FETCH response: checked against its grammar, then a new message to
 * copy (unless its body was streamed already), a probe's UID, or a flag
 * change of a known message. */
static void on_fetch_response(struct side_state *st, const struct imap_response *r)
{
    struct imap_fetch f;
    char why[200];
    if (imap_fetch_parse(&r->args[2], false, &f, why, sizeof why) < 0) {
        /* a probe lists UIDs only: what else the server sent about a
         * message was reported when the message itself was fetched */
        if (!st->probing && ++st->refused <= REFUSALS_SHOWN)
            log_error(st->e->log, side_name[st->side], st->mailbox,
                      "invalid FETCH response (%s); ignored", why);
        /* a new message refused is not fetched again in this run (each
         * one is reported once); the mailbox fails and the next run sees
         * it again */
        const struct imap_value *list = &r->args[2];
        uint32_t uid;
        for (size_t i = 0; list->type == IMAP_LIST && i + 1 < list->count; i += 2) {
            if (!imap_value_is_atom(&list->items[i], "UID") ||
                !imap_value_u32(&list->items[i + 1], &uid) || !uid)
                continue;
            if (st->copy)
                side_uid_add(st, &st->fetched, uid);
            /* the message is there even if its attributes are not usable:
             * a probe must never take it for gone */
            if (st->probing && uid >= st->probe_from)
                side_uid_add(st, &st->probe, uid);
        }
        return;
    }
    bool new_message = f.body || (st->copy && f.has_date);
    if (new_message && st->streamed_uid && f.uid == st->streamed_uid) {
        st->streamed_uid = 0; /* copied while it streamed */
    } else if (new_message && st->copy) {
        if (!new_message_wanted(st, f.uid))
            return;
        if (f.body && !f.body->streamed) {
            /* the body came before FLAGS/INTERNALDATE or was small: it
             * is inline, appended from memory */
            const char *data;
            size_t len;
            if (imap_value_string(f.body, &data, &len))
                copy_append_message(st->copy, &f, len, NULL, data);
        }
    }
    on_fetch(st, &f, new_message);
}

void selected_untagged(void *ctx, const struct imap_response *r)
{
    struct side_state *st = ctx;
    if (search_untagged(st, r))
        return;
    if (r->status != IMAP_STATUS_NONE) {
        if (r->code && strcasecmp(r->code, "PERMANENTFLAGS") == 0 && r->code_nargs == 1)
            permanent_note(st, &r->code_args[0]);
        if (r->code && strcasecmp(r->code, "HIGHESTMODSEQ") == 0 && r->code_nargs == 1) {
            uint64_t m;
            if (imap_value_u64(&r->code_args[0], &m) && m > st->max_modseq)
                st->max_modseq = m;
        }
        return;
    }
    if (r->nargs >= 3 && imap_value_is_atom(&r->args[1], "FETCH")) {
        on_fetch_response(st, r);
        return;
    }
    if (r->nargs >= 2 && imap_value_is_atom(&r->args[0], "VANISHED")) {
        on_vanished(st, r);
        return;
    }
}

bool selected_literal(void *ctx, const struct imap_response *partial, uint64_t size,
                      struct imap_literal *lit)
{
    struct side_state *st = ctx;
    if (!st->copy || partial->nargs < 3 || !imap_value_is_atom(&partial->args[1], "FETCH"))
        return false;
    const struct imap_value *list = &partial->args[2];
    if (list->type != IMAP_LIST || list->count == 0)
        return false;
    /* the literal belongs to the last item name of the list so far */
    const struct imap_value *last = &list->items[list->count - 1];
    if (!imap_value_is_atom(last, "BODY[]"))
        return false;
    struct imap_fetch f;
    char why[200];
    /* anything wrong is reported once the response is complete */
    if (imap_fetch_parse(list, true, &f, why, sizeof why) < 0 || !f.uid || !f.flags || !f.has_date)
        return false; /* keep it inline; appended when the response is complete */
    if (!new_message_wanted(st, f.uid))
        return true; /* the client discards the body */
    if (f.uid > st->max_uid_seen)
        st->max_uid_seen = f.uid;
    st->streamed_uid = f.uid;
    copy_append_message(st->copy, &f, size, lit, NULL);
    return true;
}

const struct imap_handler selected_handler = {selected_untagged, selected_literal};

/* ------------------------------------------------------------------ */
/* SELECT */

/* Up to 1024 of the highest known UIDs with their sequence numbers, for
 * the QRESYNC known-UIDs parameter (RFC 7162 3.2.5.2), so the server can
 * tell which messages vanished without remembering every expunge. */
int qresync_sample(struct sync_engine *e, int64_t idx, enum side s, char **seqs, char **uids)
{
    *seqs = *uids = NULL;
    int64_t count = 0;
    if (state_db_mapping_count(e->db, idx, &count) < 0)
        return ERR_DB;
    if (count == 0)
        return 0;
    struct uidset set;
    uidset_init(&set);
    if (state_db_mapping_highest(e->db, idx, s, 1024, &set) < 0) {
        uidset_fini(&set);
        return ERR_DB;
    }
    uidset_normalize(&set);
    size_t pos = 0;
    *uids = uidset_format(&set, &pos, 1u << 20);
    char buf[64];
    snprintf(buf, sizeof buf, "%" PRId64 ":%" PRId64, count - (int64_t)set.count + 1, count);
    *seqs = strdup(buf);
    uidset_fini(&set);
    return 0;
}

/* Sends SELECT to one server: with QRESYNC and the known-UIDs sample for a
 * known mailbox, with CONDSTORE otherwise. */
int select_send_side(struct mbox_ctx *m, enum side s, enum select_how how, struct imap_cmd *after)
{
    struct sync_engine *e = m->e;
    struct side_state *st = &m->st[s];
    if (how == SELECT_AT_CLOSE)
        imap_client_select_at_close(st->c, &selected_handler, st, &st->ms);
    else if (how == SELECT_AFTER)
        imap_client_select_after(st->c, after, &selected_handler, st, &st->ms);
    else
        imap_client_select_now(st->c, &selected_handler, st, &st->ms);
    struct imap_cmd *cmd;
    /* --repair too: what vanished since the saved HIGHESTMODSEQ was
     * expunged by the user, to be propagated like any expunge */
    if (st->how == TIER_QRESYNC && m->known && m->db[s].highestmodseq > 0 && m->db[s].uidnext > 1) {
        char *seqs = NULL, *uids = NULL;
        qresync_sample(e, m->idx, s, &seqs, &uids);
        if (seqs && uids)
            cmd = imap_client_send(st->c, "SELECT %m (QRESYNC (%u %U 1:%u (%S %S)))", st->mailbox,
                                   m->db[s].uidvalidity, m->db[s].highestmodseq,
                                   m->db[s].uidnext - 1, seqs, uids);
        else
            cmd = imap_client_send(st->c, "SELECT %m (QRESYNC (%u %U 1:%u))", st->mailbox,
                                   m->db[s].uidvalidity, m->db[s].highestmodseq,
                                   m->db[s].uidnext - 1);
        free(seqs);
        free(uids);
    } else if (e->tier[s] != TIER_PLAIN) {
        cmd = imap_client_send(st->c, "SELECT %m (CONDSTORE)", st->mailbox);
    } else {
        cmd = imap_client_send(st->c, "SELECT %m", st->mailbox);
    }
    if (how != SELECT_NOW)
        imap_client_select_cmd(st->c, cmd);
    m->select[s] = cmd;
    if (!cmd)
        return -ENOMEM;
    /* without QRESYNC, what finds the changes goes right behind it */
    return prefetch_send(m, s);
}

/* Sends SELECT to both servers. `at_close`: the servers have another
 * mailbox's commands ahead of it (see mbox_release). */
static int select_send(struct mbox_ctx *m, bool at_close)
{
    int rc = 0;
    for (int s = 0; s < 2; s++) {
        /* the switch at [CLOSED] needs QRESYNC enabled; elsewhere the
         * SELECT waits for this mailbox to be done (sync_one sends it) */
        if (at_close && m->st[s].how != TIER_QRESYNC)
            continue;
        if (select_send_side(m, (enum side)s, at_close ? SELECT_AT_CLOSE : SELECT_NOW, NULL) < 0)
            rc = -ENOMEM;
    }
    return rc;
}

/* Sends the next mailbox's SELECTs now: nothing else will be sent here. */
void mbox_release(struct mbox_ctx *m)
{
    if (m->released || !m->next || m->e->no_lookahead)
        return;
    /* only where the switch can happen at [CLOSED] (QRESYNC) */
    if (m->next->st[0].how != TIER_QRESYNC && m->next->st[1].how != TIER_QRESYNC)
        return;
    m->released = true;
    select_send(m->next, true);
}

/* Waits for the SELECTs of the sides in `want` and checks what they said;
 * a side the database does not know yet gets its row. */
static int select_wait_sides(struct mbox_ctx *m, const bool want[2])
{
    struct sync_engine *e = m->e;
    int rc = 0;
    bool again[2] = {false, false};
    for (int s = 0; s < 2; s++) {
        if (!want[s])
            continue;
        int r = m->select[s] ? imap_cmd_wait(m->select[s]) : -ENOMEM;
        imap_cmd_free(&m->select[s]);
        if (r < 0) {
            log_error(e->log, side_name[s], m->st[s].mailbox, "cannot select: %s",
                      imap_client_reason(m->st[s].c));
            rc = r;
        }
        again[s] = imap_client_select_missed(m->st[s].c);
    }
    if ((again[0] || again[1]) && rc == 0) {
        /* a server did not mark where the previous mailbox ended: select
         * again, and one mailbox at a time from now on */
        e->no_lookahead = true;
        log_debug(e->log, NULL, m->pretty, "no [CLOSED] from the server: selecting again");
        for (int s = 0; s < 2; s++) {
            if (!again[s])
                continue;
            int r = select_send_side(m, (enum side)s, SELECT_NOW, NULL);
            if (r == 0)
                r = imap_cmd_wait(m->select[s]);
            imap_cmd_free(&m->select[s]);
            if (r < 0) {
                log_error(e->log, side_name[s], m->st[s].mailbox, "cannot select: %s",
                          imap_client_reason(m->st[s].c));
                rc = r;
            }
        }
    }
    if (rc < 0)
        return rc;
    for (int s = 0; s < 2; s++) {
        if (!want[s])
            continue;
        struct side_state *st = &m->st[s];
        struct imap_mailbox_state *ms = &st->ms;
        if (st->how != TIER_PLAIN && (ms->nomodseq || ms->highestmodseq == 0)) {
            /* no mod-sequences in this mailbox: compare every message's
             * flags with a record instead */
            log_debug(e->log, side_name[s], st->mailbox, "NOMODSEQ: reading every message's flags");
            prefetch_drop(m, (enum side)s); /* what they find does not apply */
            side_state_reset(st);
            st->how = TIER_PLAIN;
            ms->highestmodseq = 0;
            int64_t paired = 0;
            if (m->known &&
                (state_db_flags_list(e->db, m->idx, (enum side)s, &st->rec, &st->nrec) < 0 ||
                 state_db_mapping_count(e->db, m->idx, &paired) < 0))
                return ERR_DB;
            st->mem_limit += SIDE_MEMORY_PER_PLAIN_MESSAGE * (size_t)paired;
            int r = prefetch_send(m, (enum side)s);
            if (r < 0)
                return r;
        }
        if (ms->uidvalidity == 0) {
            log_error(e->log, side_name[s], m->st[s].mailbox, "the server sent no UIDVALIDITY");
            return ERR_PROTOCOL;
        }
        if (m->have_row[s] && ms->uidvalidity != m->db[s].uidvalidity) {
            log_error(e->log, side_name[s], m->st[s].mailbox,
                      "UIDVALIDITY changed from %" PRIu32 " to %" PRIu32
                      "; refusing to synchronize this mailbox (nothing was copied). Check the "
                      "server, then remove the mailbox from the database with --target=database "
                      "--delete to start it over",
                      m->db[s].uidvalidity, ms->uidvalidity);
            return ERR_STATE_MISMATCH;
        }
        if (m->st[s].max_modseq < ms->highestmodseq)
            m->st[s].max_modseq = ms->highestmodseq;
        if (!m->have_row[s]) {
            m->db[s] = (struct state_side){ms->uidvalidity, 0, 0};
            if (state_db_side_insert(e->db, m->idx, (enum side)s, ms->uidvalidity) < 0)
                return ERR_DB;
            m->have_row[s] = true;
        }
        /* a server that sends no UIDNEXT in SELECT (Courier): the listing's
         * STATUS, taken before, is a lower bound */
        if (ms->uidnext == 0 && m->status_uidnext[s] && m->status_uidvalidity[s] == ms->uidvalidity)
            ms->uidnext = m->status_uidnext[s];
        int r = prefetch_wait(m, (enum side)s);
        if (r < 0)
            return r;
    }
    return 0;
}

/* The answer to the SELECT of a mailbox created on its target side in this
 * run, which copying did not wait for (see sync_one). */
int select_wait_target(struct mbox_ctx *m)
{
    if (m->target_pending < 0)
        return 0;
    bool want[2] = {false, false};
    want[m->target_pending] = true;
    m->target_pending = -1;
    return select_wait_sides(m, want);
}

/* The mailbox's line per side that changed, and its share of the line
 * that ends the cycle. */
void log_summary(struct mbox_ctx *m)
{
    struct sync_engine *e = m->e;
    for (int s = 0; s < 2; s++) {
        e->totals.added += m->added[s];
        e->totals.removed += m->removed[s];
        e->totals.updated += m->updated[s];
    }
    for (int s = 0; s < 2; s++) {
        if (!m->added[s] && !m->removed[s] && !m->updated[s])
            continue;
        log_info(e->log, side_name[s], m->st[s].mailbox,
                 "%u message(s) added, %u expunged, %u flag update(s)", m->added[s], m->removed[s],
                 m->updated[s]);
    }
}

/* One line per side for the refused responses beyond those reported one
 * by one. */
void log_refused_rest(const struct mbox_ctx *m)
{
    for (int s = 0; s < 2; s++)
        if (m->st[s].refused > REFUSALS_SHOWN)
            log_error(m->e->log, side_name[s], m->st[s].mailbox,
                      "%u more responses refused (not shown)", m->st[s].refused - REFUSALS_SHOWN);
}

/* Sets up a mailbox's context: names, and what the database knows. No
 * command is sent. */
static int mbox_init(struct mbox_ctx *m, struct sync_engine *e, const struct mbox_work *w,
                     bool repair)
{
    memset(m, 0, sizeof *m);
    m->e = e;
    m->idx = w->idx;
    m->repair = repair;
    m->known = true;
    m->target_pending = -1;
    m->created[0] = w->created[0];
    m->created[1] = w->created[1];
    for (int s = 0; s < 2; s++) {
        m->st[s].e = e;
        m->st[s].side = (enum side)s;
        m->st[s].c = e->client[s];
        uidset_init(&m->st[s].vanished);
        uidset_init(&m->st[s].fetched);
        uidset_init(&m->st[s].probe);
        uidset_init(&m->st[s].present);
    }
    m->pretty = pretty_name(e, w->key, w->keylen);
    for (int s = 0; s < 2; s++) {
        m->st[s].mailbox = server_name(e, (enum side)s, w->key, w->keylen);
        if (!m->st[s].mailbox || !m->pretty)
            return -ENOMEM;
        int f = state_db_side_get(e->db, w->idx, (enum side)s, &m->db[s]);
        if (f < 0) {
            log_error(e->log, "database", m->pretty, "%s", state_db_error(e->db));
            return ERR_DB;
        }
        if (f == 0)
            m->known = false;
        m->have_row[s] = f == 1;
        m->st[s].known_uidnext = m->db[s].uidnext;
    }
    int64_t paired = 0;
    if (state_db_mapping_count(e->db, w->idx, &paired) < 0) {
        log_error(e->log, "database", m->pretty, "%s", state_db_error(e->db));
        return ERR_DB;
    }
    for (int s = 0; s < 2; s++)
        m->st[s].mem_limit = SIDE_MEMORY_BASE + SIDE_MEMORY_PER_MESSAGE * (size_t)paired;
    for (int s = 0; s < 2; s++) {
        struct side_state *st = &m->st[s];
        const struct listed *it = listing_find(&e->listing[s], w->key, w->keylen);
        if (it && it->has_status) {
            m->status_uidvalidity[s] = it->uidvalidity;
            m->status_uidnext[s] = it->uidnext;
        }
        /* a side synchronized before without mod-sequences (HIGHESTMODSEQ
         * 0) has only its flag record to compare with, this time again */
        st->how = e->tier[s];
        if (m->known && m->db[s].uidnext > 1 && m->db[s].highestmodseq == 0)
            st->how = TIER_PLAIN;
        /* read the plain way, every message reports its flags (held as a
         * change and for the record): a budget that grows with them */
        if (st->how == TIER_PLAIN)
            st->mem_limit += SIDE_MEMORY_PER_PLAIN_MESSAGE * (size_t)paired;
        if (!m->known)
            continue;
        if (st->how == TIER_PLAIN &&
            state_db_flags_list(e->db, m->idx, (enum side)s, &st->rec, &st->nrec) < 0) {
            log_error(e->log, "database", m->pretty, "%s", state_db_error(e->db));
            return ERR_DB;
        }
        if (repair)
            continue;
        /* CONDSTORE: expunges are looked for unless the listing shows the
         * same UIDNEXT and as many messages as are mapped */
        if (st->how == TIER_CONDSTORE) {
            st->expunge_check = !it || !it->has_messages || it->uidnext != m->db[s].uidnext ||
                                it->uidvalidity != m->db[s].uidvalidity ||
                                (int64_t)it->messages != paired;
        }
    }
    return 0;
}

static void mbox_fini(struct mbox_ctx *m)
{
    for (int s = 0; s < 2; s++) {
        /* a SELECT sent ahead for a mailbox that is then not done (a stop,
         * a broken connection) is answered later and ignored */
        imap_cmd_free(&m->select[s]);
        if (m->st[s].c)
            imap_client_release(m->st[s].c, &m->st[s]);
        side_state_fini(&m->st[s]);
    }
    free(m->pretty);
    m->pretty = NULL;
}

/* What sync_one's steps share. */
struct one_run {
    struct uidset skip[2];   /* new UIDs not to copy: copies, pairs already made */
    struct uidset ipairs[2]; /* pairs an interrupted run recorded above UIDNEXT */
    struct uidset recopy[2]; /* old messages to copy again (journal, repair) */
};

/* Sends the SELECTs not sent ahead (by the previous mailbox, or behind the
 * login), and waits for their answers: not for the target side of a
 * mailbox created in this run, which is empty, so copying into it need not
 * wait (select_wait_target takes the answer before the APPEND replies). */
static int one_select(struct mbox_ctx *m)
{
    for (int s = 0; s < 2; s++)
        if (!m->select[s] && select_send_side(m, (enum side)s, SELECT_NOW, NULL) < 0)
            return -ENOMEM;
    bool want[2] = {true, true};
    if (!m->known && !m->repair && m->created[0] != m->created[1]) {
        m->target_pending = m->created[0] ? SIDE_LOCAL : SIDE_REMOTE;
        want[m->target_pending] = false;
        m->late_select[m->target_pending] = true;
    }
    int rc = select_wait_sides(m, want);
    if (rc == 0)
        rc = side_error(m); /* what the SELECT said cannot be acted on */
    for (int s = 0; s < 2; s++)
        m->uidnext[s] = m->db[s].uidnext ? m->db[s].uidnext : 1;
    return rc;
}

/* What a previous run left: copies it journaled, messages already on both
 * sides of a mailbox never synchronized to the end, pairs above UIDNEXT;
 * and, with --repair, everything compared. */
static int one_recover(struct mbox_ctx *m, struct one_run *o)
{
    int rc = recover_copies(m, o->recopy);
    if (rc == 0 && adopt_wanted(m)) {
        const uint32_t from[2] = {1, 1};
        rc = adopt_unrecorded(m, from);
    }
    if (rc == 0 && interrupted_pairs(m, o->ipairs, o->skip) < 0)
        rc = ERR_DB;
    if (rc == 0 && m->repair)
        rc = repair_pairs(m, o->recopy);
    return rc;
}

/* Known messages, then the copies. The next mailbox's SELECTs may go out
 * behind this one's last commands: behind the stores when nothing is to
 * be copied, else behind the last APPEND. Not while repairing, nor with
 * pairs of an interrupted run to settle. */
static int one_transfer(struct mbox_ctx *m, struct one_run *o)
{
    bool simple = !m->repair && o->ipairs[0].count == 0;
    bool copies = o->recopy[0].count || o->recopy[1].count;
    for (int s = 0; s < 2; s++)
        copies |= m->target_pending != s && may_have_new(m, (enum side)s);
    int rc = sync_known(m, simple && !copies);
    for (int s = 0; rc == 0 && s < 2; s++)
        if (o->recopy[s].count)
            rc = copy_uids(m, (enum side)s, &o->recopy[s], o->skip);
    if (rc == 0)
        rc = sync_new(m, o->skip, simple);
    if (rc == 0)
        rc = select_wait_target(m);
    return rc;
}

/* Every new UID is now replicated or skipped: UIDNEXT moves past them,
 * and past the SELECT's UIDNEXT (the messages below it were all fetched;
 * a SELECT answered after the copy decided what to fetch counts only once
 * a FETCH of new messages followed it). */
static void one_advance(struct mbox_ctx *m, struct one_run *o)
{
    for (int s = 0; s < 2; s++) {
        uint32_t top = m->st[s].max_uid_seen + 1;
        for (size_t i = 0; i < o->skip[s].count; i++)
            if (o->skip[s].uids[i] + 1 > top)
                top = o->skip[s].uids[i] + 1;
        if (m->st[s].ms.uidnext > top && (!m->late_select[s] || m->fetched_new[s]))
            top = m->st[s].ms.uidnext;
        m->uidnext[s] = top > m->uidnext[s] ? top : m->uidnext[s];
    }
}

/* UIDNEXT and HIGHESTMODSEQ are saved, and the copy journal dropped, in
 * the open transaction (the caller commits). Not after messages or
 * changes were refused (each reported already), so that the next run
 * meets them again instead of passing over them for good, nor on sets an
 * allocation failure left short. */
int mbox_save_state(struct mbox_ctx *m)
{
    struct sync_engine *e = m->e;
    if (m->st[0].refused || m->st[1].refused)
        return ERR_PROTOCOL;
    if (m->nomem)
        return 0; /* one_end says it */
    for (int s = 0; s < 2; s++) {
        struct side_state *st = &m->st[s];
        struct imap_mailbox_state *ms = &st->ms;
        uint64_t hms = st->max_modseq > ms->highestmodseq ? st->max_modseq : ms->highestmodseq;
        /* below a change we could not place, so that it is asked again */
        if (st->unattributed && hms >= st->unattributed)
            hms = st->unattributed - 1 > m->db[s].highestmodseq ? st->unattributed - 1
                                                                : m->db[s].highestmodseq;
        if (st->how == TIER_PLAIN && e->tier[s] == TIER_PLAIN)
            hms = 0;
        if (state_db_side_update(e->db, m->idx, (enum side)s, m->uidnext[s], hms) < 0 ||
            flags_record(m, (enum side)s, hms) < 0)
            return ERR_DB;
    }
    if (state_db_copy_clear(e->db, m->idx) < 0)
        return ERR_DB;
    return 0;
}

/* ... in one transaction of their own. */
static int one_save(struct mbox_ctx *m)
{
    int rc = mbox_save_state(m);
    if (rc == 0 && !m->nomem && (state_db_commit(m->e->db) < 0 || state_db_begin(m->e->db) < 0))
        rc = ERR_DB;
    return rc;
}

/* The end of sync_one, whatever happened. */
static int one_end(struct mbox_ctx *m, struct one_run *o, int rc)
{
    struct sync_engine *e = m->e;
    log_refused_rest(m);
    if (rc >= 0 && side_error(m))
        rc = side_error(m);
    if (m->nomem && rc >= 0) {
        log_error(e->log, NULL, m->pretty, "out of memory");
        rc = -ENOMEM;
    }
    if (rc == MAILBOX_AGAIN && (m->st[0].refused || m->st[1].refused))
        rc = ERR_PROTOCOL;
    if (rc == 0 || rc == MAILBOX_AGAIN)
        log_summary(m);
    if (rc == MAILBOX_AGAIN) {
        /* what was done is acknowledged by the servers: keep it, but not
         * UIDNEXT and HIGHESTMODSEQ, so the next pass sees the rest */
        log_debug(e->log, NULL, m->pretty, "more changes came in; the mailbox is done again later");
        if (state_db_commit(e->db) < 0 || state_db_begin(e->db) < 0)
            rc = ERR_DB;
    }
    if (rc == ERR_DB)
        log_error(e->log, "database", m->pretty, "%s", state_db_error(e->db));
    if (rc < 0) {
        state_db_rollback(e->db);
        state_db_begin(e->db);
    }
    for (int s = 0; s < 2; s++) {
        imap_client_release(e->client[s], &m->st[s]);
        uidset_fini(&o->skip[s]);
        uidset_fini(&o->ipairs[s]);
        uidset_fini(&o->recopy[s]);
    }
    return rc;
}

/* Synchronizes one mailbox whose context mbox_init() set up, its SELECTs
 * possibly sent already. Returns 0, MAILBOX_AGAIN, or a negative error. */
int sync_one(struct mbox_ctx *m)
{
    struct one_run o;
    for (int s = 0; s < 2; s++) {
        uidset_init(&o.skip[s]);
        uidset_init(&o.ipairs[s]);
        uidset_init(&o.recopy[s]);
    }
    if (m->repair && !m->known)
        return one_end(m, &o, 0); /* nothing recorded to compare with */
    int rc = one_select(m);
    if (rc == 0)
        rc = one_recover(m, &o);
    if (rc == 0)
        rc = one_transfer(m, &o);
    if (rc == 0) {
        /* the copies may have raced with flag changes: settle them */
        one_advance(m, &o);
        rc = check_interrupted(m, o.ipairs);
    }
    if (rc == 0)
        rc = sync_known(m, !m->repair && o.ipairs[0].count == 0);
    if (rc == 0)
        rc = one_save(m);
    return one_end(m, &o, rc);
}

/* Whether a side may hold messages the last run did not see. */
bool may_have_new(const struct mbox_ctx *m, enum side s)
{
    const struct imap_mailbox_state *ms = &m->st[s].ms;
    /* without a UIDNEXT from the server, any message may be new */
    return ms->uidnext > m->uidnext[s] || (ms->uidnext == 0 && ms->exists > 0);
}

/*
 * Whether the listing's STATUS says nothing moved on either side since
 * last time: UIDVALIDITY and UIDNEXT, and HIGHESTMODSEQ (QRESYNC, where an
 * expunge moves it too), or HIGHESTMODSEQ and as many messages as the
 * database maps (CONDSTORE), or, without mod-sequences, a mailbox that was
 * and is empty: only there can no flag have changed.
 */
bool unchanged(struct sync_engine *e, struct mbox_work *w)
{
    int64_t count = -1;
    for (int s = 0; s < 2; s++) {
        struct listed *it = listing_find(&e->listing[s], w->key, w->keylen);
        struct state_side db;
        if (!it || !it->has_status)
            return false;
        if (state_db_side_get(e->db, w->idx, (enum side)s, &db) != 1)
            return false;
        if (db.uidvalidity != it->uidvalidity || db.uidnext != it->uidnext)
            return false;
        if (e->tier[s] != TIER_PLAIN && db.highestmodseq != it->highestmodseq)
            return false;
        if (e->tier[s] == TIER_QRESYNC)
            continue;
        if (!it->has_messages || (count < 0 && state_db_mapping_count(e->db, w->idx, &count) < 0) ||
            (int64_t)it->messages != count || (e->tier[s] == TIER_PLAIN && count != 0))
            return false;
    }
    return true;
}

/* Sets up the context of a mailbox to synchronize, or returns NULL. */
struct mbox_ctx *mbox_new(struct sync_engine *e, const struct mbox_work *w, bool repair)
{
    struct mbox_ctx *m = malloc(sizeof *m);
    if (!m)
        return NULL;
    if (mbox_init(m, e, w, repair) < 0) {
        mbox_fini(m);
        free(m);
        return NULL;
    }
    return m;
}

void mbox_free(struct mbox_ctx **pm)
{
    if (!*pm)
        return;
    mbox_fini(*pm);
    free(*pm);
    *pm = NULL;
}

/*
 * INBOX, if the database knows it, is selected right behind the LISTs that
 * ride along with the login: it is where mail arrives, so it is the
 * mailbox most likely to need synchronizing, and its SELECT then costs no
 * round trip of its own. engine_cycle does it first if LIST-STATUS says it
 * changed, and otherwise lets the answer go. Not for an INBOX of more than
 * SPECULATE_MAX_MESSAGES: what a SELECT costs the servers grows with the
 * mailbox (Dovecot: about 2 ms per 1000 messages on a small machine, and
 * the run waits for it), the round trip it saves does not, and a run where
 * INBOX did not change pays it for nothing.
 */
struct mbox_ctx *speculative_inbox(struct sync_engine *e)
{
    /* only where INBOX is surely among the mailboxes synchronized: a
     * SELECT is not free of effects (it clears \Recent) */
    if (e->opts.command != SYNC_DEFAULT || e->opts.nmailboxes || e->cfg->list_mailbox_count ||
        (e->cfg->list_select_opts && *e->cfg->list_select_opts) || ignored(e, "INBOX", 5))
        return NULL;
    struct mbox_work w = {.key = "INBOX", .keylen = 5};
    bool sub;
    if (state_db_mailbox_find(e->db, w.key, w.keylen, &w.idx, &sub) != 1)
        return NULL;
    int64_t paired = 0;
    if (state_db_mapping_count(e->db, w.idx, &paired) < 0 || paired > SPECULATE_MAX_MESSAGES)
        return NULL;
    struct mbox_ctx *m = mbox_new(e, &w, false);
    if (m && !m->known)
        mbox_free(&m);
    return m;
}

/* Takes the speculatively selected INBOX: first in `todo` if it is there,
 * else its SELECTs are waited for (their answers must not reach the next
 * mailbox's handler) and dropped. */
struct mbox_ctx *take_speculative(struct sync_engine *e, const struct mbox_work *work, size_t *todo,
                                  size_t ntodo)
{
    struct mbox_ctx *m = e->spec;
    for (size_t k = 0; m && k < ntodo; k++) {
        if (work[todo[k]].idx != m->idx)
            continue;
        size_t first = todo[k];
        memmove(todo + 1, todo, k * sizeof *todo);
        todo[0] = first;
        e->spec = NULL;
        return m;
    }
    drop_speculative(e);
    return NULL;
}

/* Lets the speculative INBOX go once its SELECTs are answered: until then
 * their responses would reach whatever handler comes next. */
void drop_speculative(struct sync_engine *e)
{
    if (!e->spec)
        return;
    for (int s = 0; s < 2; s++)
        if (e->spec->select[s])
            imap_cmd_wait(e->spec->select[s]);
    mbox_free(&e->spec);
}
