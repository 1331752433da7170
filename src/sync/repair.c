/*
 * --repair: a full comparison of both servers with the database, and the
 * copies and flag stores that settle what differs.
 */
#include "internal.h"

/* Copies the given UIDs of side src to the other side; the new UIDs go
 * into skip[other] so the new-message pass does not copy them back. */
static int copy_uids(struct mbox_ctx *m, enum side src, struct uidset *uids, struct uidset skip[2])
{
    struct sync_engine *e = m->e;
    struct new_copy cp = {.e = e, .src = src, .target = &m->st[OTHER(src)]};
    cp.batches_tail = &cp.batches;
    uidset_normalize(uids);
    size_t pos = 0;
    char *set;
    int rc = 0;
    m->st[src].copy = &cp;
    while (rc == 0 && (set = uidset_format(uids, &pos, UIDSET_TEXT_MAX))) {
        rc = imap_client_run(m->st[src].c, "UID FETCH %S (%a INTERNALDATE BODY.PEEK[])", set,
                             fetch_flags_items(&m->st[src]));
        free(set);
        if (cp.error && rc == 0)
            rc = cp.error;
    }
    m->st[src].copy = NULL;
    struct uidset appended;
    uidset_init(&appended);
    int r = copy_finish(m, &cp, &appended);
    if (r < 0 && rc == 0)
        rc = r;
    for (size_t i = 0; i < appended.count; i++)
        mbox_note(m, uidset_add(&skip[OTHER(src)], appended.uids[i]));
    uidset_fini(&appended);
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

int repair_pairs(struct mbox_ctx *m, struct uidset skip[2])
{
    struct sync_engine *e = m->e;
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
    if (rc < 0)
        return rc;
    /* every message now has an entry in st[s].changes */
    struct side_state *st = m->st;
    for (int s = 0; s < 2; s++)
        changes_compact(&st[s]);
    struct state_pair *pairs = NULL;
    size_t npairs = 0;
    if (state_db_mapping_all(e->db, m->idx, &pairs, &npairs) < 0)
        return ERR_DB;
    bool *seen[2];
    seen[0] = calloc(st[0].nchanges + 1, 1);
    seen[1] = calloc(st[1].nchanges + 1, 1);
    struct uidset missing[2], dead;
    uidset_init(&missing[0]);
    uidset_init(&missing[1]);
    uidset_init(&dead);
    struct flag_plan plan[2] = {{0}, {0}};
    if (!seen[0] || !seen[1])
        rc = -ENOMEM;
    for (size_t i = 0; rc == 0 && i < npairs; i++) {
        uint32_t u[2] = {pairs[i].luid, pairs[i].ruid};
        const struct change *c[2];
        for (int s = 0; s < 2; s++) {
            c[s] = change_find(&st[s], u[s]);
            if (c[s])
                seen[s][c[s] - st[s].changes] = true;
        }
        if (c[0] && c[1]) {
            if (flags_equal(c[0]->flags, c[1]->flags))
                continue;
            bool lnew = changed_since_last(m, SIDE_LOCAL, c[0]);
            bool rnew = changed_since_last(m, SIDE_REMOTE, c[1]);
            if (rnew && !lnew) {
                mbox_note(m, plan_add(&plan[0], c[1]->flags, u[0]));
            } else if (lnew && !rnew) {
                mbox_note(m, plan_add(&plan[1], c[0]->flags, u[1]));
            } else {
                char *un = flags_union(c[0]->flags, c[1]->flags);
                if (!un) {
                    rc = -ENOMEM;
                    break;
                }
                char *shown[3] = {flags_display(c[0]->flags), flags_display(c[1]->flags),
                                  flags_display(un)};
                if (shown[0] && shown[1] && shown[2])
                    log_warn(e->log, NULL, NULL,
                             "%s flag update in %s for local UID %" PRIu32 " (%s) and remote UID "
                             "%" PRIu32 " (%s). Setting both to the union (%s).",
                             lnew ? "Conflicting" : "Missed", m->pretty, u[0], shown[0], u[1],
                             shown[1], shown[2]);
                for (int k = 0; k < 3; k++)
                    free(shown[k]);
                mbox_note(m, plan_add(&plan[0], un, u[0]));
                mbox_note(m, plan_add(&plan[1], un, u[1]));
                free(un);
            }
        } else if (!c[0] && !c[1]) {
            log_warn(e->log, NULL, NULL,
                     "Pair (lUID,rUID) = (%" PRIu32 ",%" PRIu32 ") vanished from %s. Repairing.",
                     u[0], u[1], m->pretty);
            mbox_note(m, uidset_add(&dead, u[0]));
        } else {
            int gone = c[0] ? 1 : 0, kept = 1 - gone;
            log_warn(e->log, side_name[gone], st[gone].mailbox,
                     "UID %" PRIu32 " disappeared. Redownloading %s UID %" PRIu32 ".", u[gone],
                     side_name[kept], u[kept]);
            mbox_note(m, uidset_add(&dead, u[0]));
            mbox_note(m, uidset_add(&missing[kept], u[kept]));
        }
    }
    for (int s = 0; rc == 0 && s < 2; s++) {
        for (size_t i = 0; i < st[s].nchanges; i++) {
            if (seen[s][i] || st[s].changes[i].uid >= m->uidnext[s])
                continue;
            log_warn(e->log, side_name[OTHER(s)], st[OTHER(s)].mailbox,
                     "No match for %s UID %" PRIu32 ". Redownloading.", side_name[s],
                     st[s].changes[i].uid);
            mbox_note(m, uidset_add(&missing[s], st[s].changes[i].uid));
        }
    }
    if (rc == 0 && dead.count) {
        if (state_db_mapping_delete_many(e->db, m->idx, SIDE_LOCAL, dead.uids, dead.count) < 0 ||
            state_db_commit(e->db) < 0 || state_db_begin(e->db) < 0)
            rc = ERR_DB;
    }
    for (int s = 0; rc == 0 && s < 2; s++) {
        struct uidset modified;
        uidset_init(&modified);
        if (plan[s].count) {
            for (size_t g = 0; g < plan[s].count; g++)
                m->updated[s] += (unsigned)plan[s].groups[g].uids.count;
            struct cmd_batch b = {0};
            flags_send(&st[s], &plan[s], 0, &b);
            rc = batch_wait(&b, &st[s], &modified);
            if (rc == 0)
                log_stored(&st[s], &plan[s], &modified);
        }
        uidset_fini(&modified);
    }
    for (int s = 0; s < 2; s++)
        side_state_reset(&st[s]);
    for (int s = 0; rc == 0 && s < 2; s++)
        if (missing[s].count)
            rc = copy_uids(m, (enum side)s, &missing[s], skip);
    for (int s = 0; s < 2; s++) {
        plan_fini(&plan[s]);
        uidset_fini(&missing[s]);
        free(seen[s]);
    }
    uidset_fini(&dead);
    free(pairs);
    return rc;
}
