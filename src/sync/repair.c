/*
 * --repair: a full comparison of both servers with the database, and the
 * expunges, copies and flag stores that settle what differs. What the
 * user expunged since the last run (reported VANISHED since the saved
 * HIGHESTMODSEQ) is propagated like any expunge, never copied back.
 */
#include "internal.h"

/* What the comparison decides. */
struct repair {
    struct flag_plan plan[2];
    struct uidset remove[2]; /* expunged by the user on the other side */
    struct uidset dead;      /* pairs to forget (local UIDs) */
    struct uidset *missing;  /* to copy again, per source side */
    bool *seen[2];           /* per reported message: it belongs to a pair */
};

/* Every message below UIDNEXT, with its flags, into st[s].changes. */
static int repair_fetch(struct mbox_ctx *m)
{
    struct imap_cmd *cmd[2] = {NULL, NULL};
    for (int s = 0; s < 2; s++)
        if (m->uidnext[s] > 1)
            cmd[s] = imap_client_send(m->st[s].c, "UID FETCH 1:%u (%a)", m->uidnext[s] - 1,
                                      fetch_flags_items(&m->st[s]));
    int rc = 0;
    for (int s = 0; s < 2; s++) {
        if (!cmd[s])
            continue;
        int r = imap_cmd_wait(cmd[s]);
        imap_cmd_free(&cmd[s]);
        if (r < 0)
            rc = r;
    }
    for (int s = 0; s < 2; s++) {
        changes_compact(&m->st[s]);
        uidset_normalize(&m->st[s].vanished);
    }
    return rc;
}

/* Whether a message's flags changed on side s since the last run: a
 * newer MODSEQ, or, without mod-sequences, flags other than recorded (or
 * no record at all). */
static bool changed_since_last(struct mbox_ctx *m, enum side s, const struct change *c)
{
    if (m->st[s].how != TIER_PLAIN)
        return c->modseq > m->db[s].highestmodseq;
    const struct state_flags *rec = rec_find(&m->st[s], c->uid);
    return !rec || !flags_equal(rec->flags, c->flags);
}

/* Both halves exist: the side changed since the last run wins, the union
 * when both (or neither) did. */
static int repair_flags(struct mbox_ctx *m, struct repair *rp, const struct change *c[2],
                        const uint32_t u[2])
{
    if (flags_equal(c[0]->flags, c[1]->flags))
        return 0;
    bool lnew = changed_since_last(m, SIDE_LOCAL, c[0]);
    bool rnew = changed_since_last(m, SIDE_REMOTE, c[1]);
    if (rnew && !lnew)
        return plan_add(&rp->plan[0], c[1]->flags, u[0]);
    if (lnew && !rnew)
        return plan_add(&rp->plan[1], c[0]->flags, u[1]);
    char *un = flags_union(c[0]->flags, c[1]->flags);
    if (!un)
        return -ENOMEM;
    char *shown[3] = {flags_display(c[0]->flags), flags_display(c[1]->flags), flags_display(un)};
    if (shown[0] && shown[1] && shown[2])
        log_warn(m->e->log, NULL, NULL,
                 "%s flag update in %s for local UID %" PRIu32 " (%s) and remote UID %" PRIu32
                 " (%s). Setting both to the union (%s).",
                 lnew ? "Conflicting" : "Missed", m->pretty, u[0], shown[0], u[1], shown[1],
                 shown[2]);
    for (int k = 0; k < 3; k++)
        free(shown[k]);
    int rc = plan_add(&rp->plan[0], un, u[0]);
    if (rc == 0)
        rc = plan_add(&rp->plan[1], un, u[1]);
    free(un);
    return rc;
}

/* One half (or both) is gone: expunged by the user since the last run
 * (VANISHED since the saved HIGHESTMODSEQ), the other half goes too;
 * gone without a trace, the other half is copied again. */
static void repair_gone(struct mbox_ctx *m, struct repair *rp, const struct change *c[2],
                        const uint32_t u[2])
{
    struct side_state *st = m->st;
    mbox_note(m, uidset_add(&rp->dead, u[0]));
    if (!c[0] && !c[1]) {
        if (!uidset_contains(&st[0].vanished, u[0]) || !uidset_contains(&st[1].vanished, u[1]))
            log_warn(m->e->log, NULL, NULL,
                     "Pair (lUID,rUID) = (%" PRIu32 ",%" PRIu32 ") vanished from %s. Repairing.",
                     u[0], u[1], m->pretty);
        return;
    }
    int gone = c[0] ? 1 : 0, kept = 1 - gone;
    /* (without QRESYNC a server cannot say: a missing message counts as
     * expunged, as in an ordinary run on that server) */
    if (uidset_contains(&st[gone].vanished, u[gone]) || st[gone].how != TIER_QRESYNC) {
        mbox_note(m, uidset_add(&rp->remove[kept], u[kept]));
        return;
    }
    log_warn(m->e->log, side_name[gone], st[gone].mailbox,
             "UID %" PRIu32 " disappeared. Redownloading %s UID %" PRIu32 ".", u[gone],
             side_name[kept], u[kept]);
    mbox_note(m, uidset_add(&rp->missing[kept], u[kept]));
}

/* Compares every recorded pair with what the servers hold; messages below
 * UIDNEXT in no pair are copied again. */
static int repair_compare(struct mbox_ctx *m, struct repair *rp)
{
    struct side_state *st = m->st;
    struct state_pair *pairs = NULL;
    size_t npairs = 0;
    if (state_db_mapping_all(m->e->db, m->idx, &pairs, &npairs) < 0)
        return ERR_DB;
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < npairs; i++) {
        uint32_t u[2] = {pairs[i].luid, pairs[i].ruid};
        /* a pair an interrupted run recorded above UIDNEXT was not fetched:
         * check_interrupted settles it */
        if (u[0] >= m->uidnext[0] || u[1] >= m->uidnext[1])
            continue;
        const struct change *c[2];
        for (int s = 0; s < 2; s++) {
            c[s] = change_find(&st[s], u[s]);
            if (c[s])
                rp->seen[s][c[s] - st[s].changes] = true;
        }
        if (c[0] && c[1])
            rc = repair_flags(m, rp, c, u);
        else
            repair_gone(m, rp, c, u);
    }
    free(pairs);
    for (int s = 0; rc == 0 && s < 2; s++) {
        for (size_t i = 0; i < st[s].nchanges; i++) {
            if (rp->seen[s][i] || st[s].changes[i].uid >= m->uidnext[s])
                continue;
            log_warn(m->e->log, side_name[OTHER(s)], st[OTHER(s)].mailbox,
                     "No match for %s UID %" PRIu32 ". Redownloading.", side_name[s],
                     st[s].changes[i].uid);
            mbox_note(m, uidset_add(&rp->missing[s], st[s].changes[i].uid));
        }
    }
    return rc;
}

/* The expunges first: a pair is forgotten only once both halves are gone,
 * or the survivor would be copied back after a crash. Then the flags. */
static int repair_apply(struct mbox_ctx *m, struct repair *rp)
{
    struct sync_engine *e = m->e;
    int rc = 0;
    for (int s = 0; rc == 0 && s < 2; s++) {
        if (!rp->remove[s].count)
            continue;
        rc = remove_messages(&m->st[s], &rp->remove[s]);
        m->removed[s] += (unsigned)rp->remove[s].count;
    }
    if (rc == 0 && rp->dead.count &&
        (state_db_mapping_delete_many(e->db, m->idx, SIDE_LOCAL, rp->dead.uids, rp->dead.count) <
             0 ||
         state_db_commit(e->db) < 0 || state_db_begin(e->db) < 0))
        rc = ERR_DB;
    for (int s = 0; rc == 0 && s < 2; s++) {
        if (!rp->plan[s].count)
            continue;
        for (size_t g = 0; g < rp->plan[s].count; g++)
            m->updated[s] += (unsigned)rp->plan[s].groups[g].uids.count;
        struct uidset modified;
        uidset_init(&modified);
        struct cmd_batch b = {0};
        flags_send(&m->st[s], &rp->plan[s], 0, &b);
        rc = batch_wait(&b, &m->st[s], &modified);
        if (rc == 0)
            log_stored(&m->st[s], &rp->plan[s], &modified);
        uidset_fini(&modified);
    }
    return rc;
}

/* Repairs one mailbox; the messages to copy again go into missing[side
 * they are copied from], for sync_one to copy with the new ones. */
int repair_pairs(struct mbox_ctx *m, struct uidset missing[2])
{
    int rc = repair_fetch(m);
    if (rc < 0)
        return rc;
    struct repair rp = {.missing = missing};
    uidset_init(&rp.dead);
    for (int s = 0; s < 2; s++) {
        uidset_init(&rp.remove[s]);
        rp.seen[s] = calloc(m->st[s].nchanges + 1, 1);
        if (!rp.seen[s])
            rc = -ENOMEM;
    }
    if (rc == 0)
        rc = repair_compare(m, &rp);
    if (rc == 0)
        rc = repair_apply(m, &rp);
    for (int s = 0; s < 2; s++) {
        side_state_reset(&m->st[s]);
        plan_fini(&rp.plan[s]);
        uidset_fini(&rp.remove[s]);
        free(rp.seen[s]);
    }
    uidset_fini(&rp.dead);
    return rc;
}
