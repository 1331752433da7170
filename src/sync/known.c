/*
 * Known messages: propagating expunges and flag changes of messages both
 * sides already hold, batched into as few commands as possible.
 */
#include "internal.h"

#include <stddef.h>

static void batch_add(struct cmd_batch *b, struct imap_cmd *cmd, const char *what)
{
    struct batched *grown = array_reserve(b->items, &b->cap, b->n + 1, sizeof *grown, 16);
    if (!grown) {
        b->nomem = true;
        imap_cmd_free(&cmd); /* answered later, ignored */
        return;
    }
    b->items = grown;
    if (!cmd)
        b->nomem = true;
    b->items[b->n++] = (struct batched){cmd, what};
}

/* Waits for every command of the batch and frees them. UIDs a UID STORE
 * with UNCHANGEDSINCE reports as MODIFIED are added to `modified`. Returns
 * the first failure, logged with its `what`. */
int batch_wait(struct cmd_batch *b, struct side_state *st, struct uidset *modified)
{
    int rc = b->nomem ? -ENOMEM : 0;
    for (size_t i = 0; i < b->n; i++) {
        int r = b->items[i].cmd ? imap_cmd_wait(b->items[i].cmd) : -ENOMEM;
        const char *code = b->items[i].cmd ? imap_cmd_code(b->items[i].cmd) : NULL;
        if (r == 0 && modified && code && strcasecmp(code, "MODIFIED") == 0) {
            const char *a = imap_cmd_code_args(b->items[i].cmd);
            /* merged and bounded: at most one STORE's worth is meaningful */
            const struct uidset_bounds bounds = {.max_uid = UINT32_MAX,
                                                 .max_count = modified->count + MODIFIED_MAX};
            if (uidset_parse_bounded(modified, a, strlen(a), &bounds) < 0)
                side_fail(st, ERR_PROTOCOL,
                          "the server sent an invalid or oversized MODIFIED "
                          "response code");
        }
        if (r < 0 && rc == 0) {
            log_error(st->e->log, side_name[st->side], st->mailbox, "%s: %s", b->items[i].what,
                      imap_client_reason(st->c));
            rc = r;
        }
        imap_cmd_free(&b->items[i].cmd);
    }
    free(b->items);
    memset(b, 0, sizeof *b);
    return rc;
}

/* UID STORE +FLAGS.SILENT (\Deleted) then UID EXPUNGE, in chunks of
 * bounded command length. */
static void removal_send(struct side_state *st, struct uidset *uids, struct cmd_batch *b)
{
    uidset_normalize(uids);
    size_t pos = 0;
    char *set;
    while ((set = uidset_format(uids, &pos, UIDSET_TEXT_MAX))) {
        batch_add(b, imap_client_send(st->c, "UID STORE %S +FLAGS.SILENT (\\Deleted)", set),
                  "cannot expunge messages");
        batch_add(b, imap_client_send(st->c, "UID EXPUNGE %S", set), "cannot expunge messages");
        free(set);
    }
}

int remove_messages(struct side_state *st, struct uidset *uids)
{
    struct cmd_batch b = {0};
    removal_send(st, uids, &b);
    int rc = batch_wait(&b, st, NULL);
    if (rc == 0)
        log_removed(st, uids);
    return rc;
}

/* The reference tool's lines for what a side did, once its commands
 * succeeded: "Removed 3 UID(s) 4:6" ... */
void log_removed(struct side_state *st, struct uidset *uids)
{
    if (!uids->count)
        return;
    uidset_normalize(uids);
    size_t pos = 0;
    char *set = uidset_format(uids, &pos, SIZE_MAX);
    if (set)
        log_info(st->e->log, side_name[st->side], st->mailbox, "Removed %zu UID(s) %s", uids->count,
                 set);
    free(set);
}

/* ... and "Updated flags (\\Seen) for UID 4,7" per flag list, the UIDs a
 * store left alone because they changed meanwhile (MODIFIED) apart. */
void log_stored(struct side_state *st, const struct flag_plan *p, struct uidset *modified)
{
    uidset_normalize(modified);
    for (size_t i = 0; i < p->count; i++) {
        const struct flag_group *g = &p->groups[i];
        struct uidset ok, refused;
        uidset_init(&ok);
        uidset_init(&refused);
        for (size_t k = 0; k < g->uids.count; k++)
            uidset_add(uidset_contains(modified, g->uids.uids[k]) ? &refused : &ok,
                       g->uids.uids[k]);
        uidset_normalize(&ok);
        uidset_normalize(&refused);
        char *flags = flags_display(g->flags);
        size_t pos = 0, rpos = 0;
        char *set = ok.count ? uidset_format(&ok, &pos, SIZE_MAX) : NULL;
        char *rset = refused.count ? uidset_format(&refused, &rpos, SIZE_MAX) : NULL;
        if (flags && set)
            log_info(st->e->log, side_name[st->side], st->mailbox, "Updated flags (%s) for UID %s",
                     flags, set);
        if (flags && rset)
            log_info(st->e->log, side_name[st->side], st->mailbox,
                     "Couldn't update flags (%s) for UID %s, will try again later", flags, rset);
        free(set);
        free(rset);
        free(flags);
        uidset_fini(&ok);
        uidset_fini(&refused);
    }
}

int plan_add(struct flag_plan *p, const char *flags, uint32_t uid)
{
    for (size_t i = 0; i < p->count; i++)
        if (flags_equal(p->groups[i].flags, flags))
            return uidset_add(&p->groups[i].uids, uid);
    struct flag_group *grown = array_reserve(p->groups, &p->cap, p->count + 1, sizeof *grown, 8);
    if (!grown)
        return -ENOMEM;
    p->groups = grown;
    struct flag_group *g = &p->groups[p->count];
    g->flags = strdup(flags);
    if (!g->flags)
        return -ENOMEM;
    uidset_init(&g->uids);
    p->count++;
    return uidset_add(&g->uids, uid);
}

void plan_fini(struct flag_plan *p)
{
    for (size_t i = 0; i < p->count; i++) {
        free(p->groups[i].flags);
        uidset_fini(&p->groups[i].uids);
    }
    free(p->groups);
    memset(p, 0, sizeof *p);
}

/* One UID STORE per distinct flag list (split only when the UID set is
 * very long). With `unchangedsince`, a message someone else changed after
 * what we saw is left alone and reported as MODIFIED (see batch_wait).
 * On a side compared with a flag record, the store is not silent: the
 * server answers with the flags the messages now have (it may have
 * dropped a keyword it cannot keep), and those are recorded. */
void flags_send(struct side_state *st, struct flag_plan *p, uint64_t unchangedsince,
                struct cmd_batch *b)
{
    const char *store = st->how == TIER_PLAIN ? "FLAGS" : "FLAGS.SILENT";
    for (size_t i = 0; i < p->count; i++) {
        struct flag_group *g = &p->groups[i];
        uidset_normalize(&g->uids);
        size_t pos = 0;
        char *set;
        while ((set = uidset_format(&g->uids, &pos, UIDSET_TEXT_MAX))) {
            struct imap_cmd *cmd;
            if (unchangedsince)
                cmd = imap_client_send(st->c, "UID STORE %S (UNCHANGEDSINCE %U) %a (%F)", set,
                                       unchangedsince, store, g->flags);
            else
                cmd = imap_client_send(st->c, "UID STORE %S %a (%F)", set, store, g->flags);
            batch_add(b, cmd, "cannot store flags");
            free(set);
        }
    }
}

/* Keeps, for each UID, the last change reported; sorted by UID. */
static int cmp_change(const void *a, const void *b)
{
    const struct change *x = a, *y = b;
    if (x->uid != y->uid)
        return x->uid < y->uid ? -1 : 1;
    return x->modseq < y->modseq ? -1 : x->modseq > y->modseq;
}

void changes_compact(struct side_state *st)
{
    if (st->nchanges < 2)
        return;
    qsort(st->changes, st->nchanges, sizeof *st->changes, cmp_change);
    size_t o = 0;
    for (size_t i = 0; i < st->nchanges; i++) {
        if (o && st->changes[o - 1].uid == st->changes[i].uid) {
            /* each entry owns its own flags: no two share a pointer */
            free(st->changes[o - 1].flags); // NOLINT(clang-analyzer-unix.Malloc)
            st->changes[o - 1] = st->changes[i];
        } else {
            st->changes[o++] = st->changes[i];
        }
    }
    st->nchanges = o;
}

_Static_assert(offsetof(struct change, uid) == 0, "uid_find reads the UID first");

const struct change *change_find(const struct side_state *st, uint32_t uid)
{
    return uid_find(st->changes, st->nchanges, sizeof *st->changes, uid);
}

/* Takes what was reported so far; responses to our own commands
 * accumulate for the next round. Returns whether there is anything. */
bool round_take(struct mbox_ctx *m, struct known_round *r)
{
    bool any = false;
    memset(r, 0, sizeof *r);
    for (int s = 0; s < 2; s++) {
        struct side_state *st = &m->st[s];
        r->vanished[s] = st->vanished;
        uidset_init(&st->vanished);
        r->snap[s] = *st;
        st->changes = NULL;
        st->nchanges = st->capchanges = 0;
        uidset_normalize(&r->vanished[s]);
        changes_compact(&r->snap[s]);
        /* only UIDs below the replicated UIDNEXT are known messages */
        struct uidset *v = &r->vanished[s];
        size_t o = 0;
        for (size_t i = 0; i < v->count; i++)
            if (v->uids[i] < m->uidnext[s])
                v->uids[o++] = v->uids[i];
        v->count = o;
        if (v->count || r->snap[s].nchanges)
            any = true;
        uidset_init(&r->remove[s]);
        uidset_init(&r->modified[s]);
    }
    return any;
}

void round_fini(struct known_round *r)
{
    for (int s = 0; s < 2; s++) {
        plan_fini(&r->plan[s]);
        uidset_fini(&r->modified[s]);
        uidset_fini(&r->remove[s]);
        uidset_fini(&r->vanished[s]);
        for (size_t i = 0; i < r->snap[s].nchanges; i++)
            free(r->snap[s].changes[i].flags);
        free(r->snap[s].changes);
    }
    free(r->forgot);
    r->forgot = NULL;
    r->nforgot = r->capforgot = 0;
}

/* Notes a pair the round deleted from the database, so that it can be
 * put back should the round come to nothing (passes.c). */
static void forgot_add(struct mbox_ctx *m, struct known_round *r, uint32_t luid, uint32_t ruid)
{
    struct state_pair *grown =
        array_reserve(r->forgot, &r->capforgot, r->nforgot + 1, sizeof *grown, 16);
    if (!grown) {
        mbox_note(m, -ENOMEM);
        return;
    }
    r->forgot = grown;
    r->forgot[r->nforgot++] = (struct state_pair){luid, ruid};
}

/* Vanished on one side: remove the counterpart on the other, and forget
 * the pair. */
static int plan_removals(struct mbox_ctx *m, struct known_round *r)
{
    for (int s = 0; s < 2; s++) {
        for (size_t i = 0; i < r->vanished[s].count; i++) {
            uint32_t uid = r->vanished[s].uids[i], other;
            int f = state_db_mapping_lookup(m->e->db, m->idx, (enum side)s, uid, &other);
            if (f < 0)
                return ERR_DB;
            if (f == 0)
                continue; /* not ours (or already forgotten) */
            if (!uidset_contains(&r->vanished[OTHER(s)], other))
                mbox_note(m, uidset_add(&r->remove[OTHER(s)], other));
            if (state_db_mapping_delete(m->e->db, m->idx, (enum side)s, uid) == 1)
                forgot_add(m, r, s == SIDE_LOCAL ? uid : other, s == SIDE_LOCAL ? other : uid);
        }
    }
    return 0;
}

/* One flag change reported by side s: propagate it, or set both to the
 * union when the other side changed the same pair. */
static int plan_flag_change(struct mbox_ctx *m, struct known_round *r, enum side s,
                            const struct change *ch)
{
    struct sync_engine *e = m->e;
    if (ch->uid >= m->uidnext[s] || uidset_contains(&r->vanished[s], ch->uid))
        return 0;
    uint32_t other;
    int f = state_db_mapping_lookup(e->db, m->idx, s, ch->uid, &other);
    if (f < 0)
        return ERR_DB;
    if (f == 0) {
        log_warn(e->log, side_name[OTHER(s)], m->st[OTHER(s)].mailbox,
                 "No match for modified %s UID %" PRIu32 ". Try '--repair'.", side_name[s],
                 ch->uid);
        return 0;
    }
    if (uidset_contains(&r->vanished[OTHER(s)], other) ||
        uidset_contains(&r->remove[OTHER(s)], other))
        return 0;
    const struct change *och = change_find(&r->snap[OTHER(s)], other);
    if (!och) {
        mbox_note(m, plan_add(&r->plan[OTHER(s)], ch->flags, other));
        return 0;
    }
    if (s == SIDE_REMOTE || flags_equal(ch->flags, och->flags))
        return 0; /* the pair was handled from the local side, or agrees */
    if (ch->weak != och->weak) {
        /* a side with no record of the flags: the other side's change wins */
        const struct change *win = ch->weak ? och : ch;
        enum side lose = ch->weak ? s : OTHER(s);
        plan_add(&r->plan[lose], win->flags, ch->weak ? ch->uid : other);
        return 0;
    }
    char *u = flags_union(ch->flags, och->flags);
    if (!u)
        return -ENOMEM;
    char *shown[3] = {flags_display(ch->flags), flags_display(och->flags), flags_display(u)};
    if (shown[0] && shown[1] && shown[2])
        log_warn(e->log, NULL, NULL,
                 "Conflicting flag update in %s for local UID %" PRIu32 " (%s) and remote UID "
                 "%" PRIu32 " (%s). Setting both to the union (%s).",
                 m->pretty, ch->uid, shown[0], other, shown[1], shown[2]);
    for (int i = 0; i < 3; i++)
        free(shown[i]);
    m->conflicts++;
    mbox_note(m, plan_add(&r->plan[s], u, ch->uid));
    mbox_note(m, plan_add(&r->plan[OTHER(s)], u, other));
    free(u);
    return 0;
}

static int plan_flag_changes(struct mbox_ctx *m, struct known_round *r)
{
    for (int s = 0; s < 2; s++)
        for (size_t i = 0; i < r->snap[s].nchanges; i++) {
            int rc = plan_flag_change(m, r, (enum side)s, &r->snap[s].changes[i]);
            if (rc)
                return rc;
        }
    return 0;
}

/* Queues side s's removals and stores of the round. UNCHANGEDSINCE
 * protects a change made by someone else after what we have seen (it
 * comes back MODIFIED). */
void round_send_side(struct mbox_ctx *m, struct known_round *r, enum side s, struct cmd_batch *b)
{
    /* (a server without CONDSTORE may still report mod-sequences; it gets
     * no UNCHANGEDSINCE, which it does not advertise) */
    uint64_t seen = m->e->tier[s] != TIER_PLAIN ? m->st[s].max_modseq : 0;
    if (r->remove[s].count) {
        removal_send(&m->st[s], &r->remove[s], b);
        m->removed[s] += (unsigned)r->remove[s].count;
    }
    if (r->plan[s].count)
        flags_send(&m->st[s], &r->plan[s], seen, b);
}

/* Waits for what round_send_side queued on side s and says what was done;
 * the VANISHED our own expunges caused need nothing more. */
int round_wait_side(struct mbox_ctx *m, struct known_round *r, enum side s, struct cmd_batch *b)
{
    int rc = batch_wait(b, &m->st[s], &r->modified[s]);
    if (rc == 0) {
        log_removed(&m->st[s], &r->remove[s]);
        log_stored(&m->st[s], &r->plan[s], &r->modified[s]);
    }
    struct uidset *v = &m->st[s].vanished;
    uidset_normalize(&r->remove[s]);
    size_t o = 0;
    for (size_t i = 0; i < v->count; i++)
        if (!uidset_contains(&r->remove[s], v->uids[i]))
            v->uids[o++] = v->uids[i];
    v->count = o;
    return rc;
}

/* Removals and stores touch different messages: all of them go to both
 * servers at once, in one write each, and are waited for together. */
static int round_send(struct mbox_ctx *m, struct known_round *r, bool may_release)
{
    int rc = 0;
    struct cmd_batch batch[2] = {{0}, {0}};
    for (int s = 0; s < 2; s++)
        imap_client_hold(m->st[s].c);
    for (int s = 0; s < 2; s++)
        round_send_side(m, r, (enum side)s, &batch[s]);
    if (may_release && (batch[0].n || batch[1].n))
        mbox_release(m);
    for (int s = 0; s < 2; s++)
        imap_client_push(m->st[s].c);
    for (int s = 0; s < 2; s++) {
        int w = round_wait_side(m, r, (enum side)s, &batch[s]);
        if (w < 0)
            rc = w;
    }
    return rc;
}

/* What the round sends: the removals of the pairs that vanished on one
 * side, and the flag stores (the conflicts' union on both sides). */
int round_plan(struct mbox_ctx *m, struct known_round *r)
{
    int rc = plan_removals(m, r);
    if (rc == 0)
        rc = plan_flag_changes(m, r);
    for (int s = 0; s < 2; s++)
        for (size_t g = 0; g < r->plan[s].count; g++)
            m->updated[s] += (unsigned)r->plan[s].groups[g].uids.count;
    return rc;
}

/* Our own stores may come back as FETCH responses carrying the flags we
 * set: they need no propagation (a side compared with a flag record always
 * answers, with the flags the message kept). */
void drop_echoes(struct side_state *st, const struct flag_plan *plan)
{
    size_t o = 0;
    for (size_t i = 0; i < st->nchanges; i++) {
        const struct change *ch = &st->changes[i];
        bool echo = false;
        for (size_t g = 0; g < plan->count && !echo; g++)
            echo = (st->how == TIER_PLAIN || flags_equal(plan->groups[g].flags, ch->flags)) &&
                   uidset_contains(&plan->groups[g].uids, ch->uid);
        if (echo) {
            free(st->changes[i].flags);
            continue;
        }
        st->changes[o++] = st->changes[i];
    }
    st->nchanges = o;
}

/* Messages changed behind our back (MODIFIED) are fetched again for the
 * next round, unless the next mailbox is selected already. */
static int refetch_modified(struct mbox_ctx *m, struct side_state *st, struct uidset *modified)
{
    if (!modified->count)
        return 0;
    if (m->released)
        return MAILBOX_AGAIN;
    uidset_normalize(modified);
    size_t pos = 0;
    char *set;
    while ((set = uidset_format(modified, &pos, UIDSET_TEXT_MAX))) {
        int r = imap_client_run(st->c, "UID FETCH %S (%a)", set, fetch_flags_items(st));
        free(set);
        if (r < 0)
            return r;
    }
    return 0;
}

/*
 * Propagates what both sides reported (vanished messages and flag changes
 * for known UIDs) until neither reports anything new. With `may_release`,
 * the next mailbox's SELECTs go out behind the last commands sent here.
 */
int sync_known(struct mbox_ctx *m, bool may_release)
{
    for (int round = 0; round < 100; round++) {
        /* nothing is sent on the strength of responses we could not take */
        int err = side_error(m);
        if (err)
            return err;
        struct known_round r;
        bool any = round_take(m, &r);
        if (!any || m->released) {
            round_fini(&r);
            /* news after the next mailbox was selected: do this one again */
            return any ? MAILBOX_AGAIN : 0;
        }
        int rc = round_plan(m, &r);
        if (rc == 0)
            rc = round_send(m, &r, may_release);
        for (int s = 0; s < 2 && rc == 0; s++) {
            drop_echoes(&m->st[s], &r.plan[s]);
            rc = refetch_modified(m, &m->st[s], &r.modified[s]);
        }
        round_fini(&r);
        if (rc != 0)
            return rc;
    }
    /* changes still coming in: what was done is kept, HIGHESTMODSEQ is not
     * moved past those not propagated yet */
    return MAILBOX_AGAIN;
}
