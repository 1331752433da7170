/*
 * Interrupted runs: the append journal (intents) written before copies
 * start, and the recovery of copies that reached a server but not the
 * database.
 */
#include "internal.h"

/* Pairs left by an interrupted run: mapped UIDs at or above the stored
 * UIDNEXT (the reference tool commits pairs before UIDNEXT). They are not
 * copied again; check_interrupted() settles them once UIDNEXT has moved. */
int interrupted_pairs(struct mbox_ctx *m, struct uidset pairs[2], struct uidset skip[2])
{
    int r =
        state_db_mapping_above(m->e->db, m->idx, m->db[SIDE_LOCAL].uidnext,
                               m->db[SIDE_REMOTE].uidnext, &pairs[SIDE_LOCAL], &pairs[SIDE_REMOTE]);
    for (int s = 0; r >= 0 && s < 2; s++)
        for (size_t i = 0; i < pairs[s].count; i++)
            mbox_note(m, uidset_add(&skip[s], pairs[s].uids[i]));
    return r;
}

/*
 * Fetches the flags of the interrupted pairs on both sides. A pair whose
 * message vanished on one side loses its other half too; flags reported
 * for the others are left among the changes, for sync_known to reconcile
 * (any difference is settled as a conflict, there being no reliable
 * HIGHESTMODSEQ for them).
 */
int check_interrupted(struct mbox_ctx *m, struct uidset pairs[2])
{
    struct sync_engine *e = m->e;
    if (pairs[0].count == 0)
        return 0;
    struct imap_cmd *cmd[2] = {NULL, NULL};
    int rc = 0;
    for (int s = 0; s < 2; s++) {
        struct uidset sorted;
        uidset_init(&sorted);
        for (size_t i = 0; i < pairs[s].count; i++)
            mbox_note(m, uidset_add(&sorted, pairs[s].uids[i]));
        uidset_normalize(&sorted);
        size_t pos = 0;
        char *set = uidset_format(&sorted, &pos, 1u << 20);
        uidset_fini(&sorted);
        if (!set)
            return -ENOMEM;
        cmd[s] =
            imap_client_send(m->st[s].c, "UID FETCH %S (%a)", set, fetch_flags_items(&m->st[s]));
        free(set);
    }
    for (int s = 0; s < 2; s++) {
        int r = cmd[s] ? imap_cmd_wait(cmd[s]) : -ENOMEM;
        imap_cmd_free(&cmd[s]);
        if (r < 0)
            rc = r;
    }
    if (rc < 0)
        return rc;
    /* A response refused (and reported) may have been one of these
     * messages: missing from the answers is then not gone, and nothing is
     * removed; the mailbox fails and its state stays. */
    if (m->st[0].refused || m->st[1].refused || side_error(m))
        return side_error(m) ? side_error(m) : ERR_PROTOCOL;
    struct uidset remove[2];
    uidset_init(&remove[0]);
    uidset_init(&remove[1]);
    for (int s = 0; s < 2; s++)
        changes_compact(&m->st[s]);
    for (size_t i = 0; i < pairs[0].count && i < pairs[1].count; i++) {
        uint32_t u[2] = {pairs[0].uids[i], pairs[1].uids[i]};
        bool have[2] = {change_find(&m->st[0], u[0]) != NULL, change_find(&m->st[1], u[1]) != NULL};
        if (have[0] && have[1])
            continue;
        for (int s = 0; s < 2; s++)
            if (have[s])
                mbox_note(m, uidset_add(&remove[s], u[s]));
        if (state_db_mapping_delete(e->db, m->idx, SIDE_LOCAL, u[0]) < 0)
            rc = ERR_DB;
    }
    for (int s = 0; rc == 0 && s < 2; s++) {
        if (!remove[s].count)
            continue;
        rc = remove_messages(&m->st[s], &remove[s]);
        m->removed[s] += (unsigned)remove[s].count;
        /* their reported flags no longer matter */
        size_t o = 0;
        for (size_t i = 0; i < m->st[s].nchanges; i++) {
            if (uidset_contains(&remove[s], m->st[s].changes[i].uid)) {
                free(m->st[s].changes[i].flags);
                continue;
            }
            m->st[s].changes[o++] = m->st[s].changes[i];
        }
        m->st[s].nchanges = o;
    }
    uidset_fini(&remove[0]);
    uidset_fini(&remove[1]);
    if (rc == 0 && (state_db_commit(e->db) < 0 || state_db_begin(e->db) < 0))
        rc = ERR_DB;
    return rc;
}

/* ------------------------------------------------------------------ */
/* append intents: one row per mailbox and direction, keyed by source UID 0,
 * whose target_uidnext is the lowest UID the copies can get */

int intent_set(struct state_db *db, int64_t idx, enum side target, uint32_t bound)
{
    struct state_intent in = {.idx = idx,
                              .source = OTHER(target),
                              .source_uid = 0,
                              .target_uidnext = bound,
                              .internaldate = (char *)""};
    return state_db_intent_add(db, &in);
}

int intent_get(struct state_db *db, int64_t idx, enum side target, uint32_t *bound)
{
    struct state_intent *list = NULL;
    size_t n = 0;
    int r = state_db_intent_list(db, idx, &list, &n);
    if (r < 0)
        return r;
    int found = 0;
    for (size_t i = 0; i < n; i++) {
        if (list[i].source == OTHER(target)) {
            if (!found || list[i].target_uidnext < *bound)
                *bound = list[i].target_uidnext;
            found = 1;
        }
    }
    state_db_intent_list_free(&list, n);
    return found;
}

int intent_clear(struct state_db *db, int64_t idx)
{
    struct state_intent *list = NULL;
    size_t n = 0;
    int r = state_db_intent_list(db, idx, &list, &n);
    for (size_t i = 0; r >= 0 && i < n; i++)
        r = state_db_intent_delete(db, idx, list[i].source, list[i].source_uid);
    state_db_intent_list_free(&list, n);
    return r < 0 ? r : 0;
}

/* ------------------------------------------------------------------ */
/* recovery of copies interrupted between APPEND and the database commit */

struct fingerprint {
    uint32_t uid;
    uint64_t size;
    char *date;
    char *msgid;
    bool used;
};

struct fp_list {
    struct sync_engine *e;
    struct side_state *st;
    struct fingerprint *items;
    size_t count, cap;
};

static void fp_untagged(void *ctx, const struct imap_response *r)
{
    struct fp_list *fl = ctx;
    struct side_state *st = fl->st;
    struct imap_fetch f;
    char why[200];
    if (r->status != IMAP_STATUS_NONE || r->nargs < 3 ||
        !imap_value_is_atom(&r->args[1], "FETCH") ||
        imap_fetch_parse(&r->args[2], false, &f, why, sizeof why) < 0 || !f.uid || !f.has_size ||
        !f.has_date) {
        selected_untagged(st, r); /* reports a malformed FETCH */
        return;
    }
    const char *hdr = "";
    size_t hdrlen = 0;
    if (f.header)
        imap_value_string(f.header, &hdr, &hdrlen);
    /* a fingerprint, its two strings and the allocator's share */
    if (!side_charge(st, sizeof(struct fingerprint) + sizeof f.date + hdrlen + 1 + 48))
        return;
    struct fingerprint *grown =
        array_reserve(fl->items, &fl->cap, fl->count + 1, sizeof *grown, 32);
    if (!grown) {
        side_fail(st, -ENOMEM, "out of memory");
        return;
    }
    fl->items = grown;
    char *date = strdup(f.date), *msgid = strndup(hdr, hdrlen);
    if (!date || !msgid) {
        free(date);
        free(msgid);
        side_fail(st, -ENOMEM, "out of memory");
        return;
    }
    fl->items[fl->count++] = (struct fingerprint){f.uid, f.size, date, msgid, false};
}

static const struct imap_handler fp_handler = {fp_untagged, NULL};

static void fp_list_fini(struct fp_list *fl)
{
    for (size_t i = 0; i < fl->count; i++) {
        free(fl->items[i].date);
        free(fl->items[i].msgid);
    }
    free(fl->items);
}

/*
 * A previous run appended messages to side `dst` (UIDs from `bound` on) and
 * died before recording them. Pair every unmapped message there with an
 * unmapped new message of the other side that has the same size,
 * INTERNALDATE and Message-ID, so nothing is copied twice.
 */
int recover_appends(struct mbox_ctx *m, enum side dst, uint32_t bound)
{
    struct sync_engine *e = m->e;
    enum side src = OTHER(dst);
    struct fp_list fl[2] = {{e, &m->st[0], NULL, 0, 0}, {e, &m->st[1], NULL, 0, 0}};
    uint32_t from[2];
    from[dst] = bound ? bound : 1;
    from[src] = m->uidnext[src];
    struct imap_cmd *cmd[2];
    for (int s = 0; s < 2; s++) {
        imap_client_set_handler(m->st[s].c, &fp_handler, &fl[s]);
        cmd[s] = imap_client_send(m->st[s].c,
                                  "UID FETCH %u:4294967295 (UID RFC822.SIZE INTERNALDATE "
                                  "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])",
                                  from[s]);
    }
    int rc = 0;
    for (int s = 0; s < 2; s++) {
        int r = cmd[s] ? imap_cmd_wait(cmd[s]) : -ENOMEM;
        imap_cmd_free(&cmd[s]);
        imap_client_set_handler(m->st[s].c, &selected_handler, &m->st[s]);
        if (r < 0)
            rc = r;
    }
    if (rc == 0)
        rc = side_error(m); /* no pairing on partial lists */
    unsigned paired = 0;
    for (size_t i = 0; rc == 0 && i < fl[dst].count; i++) {
        struct fingerprint *d = &fl[dst].items[i];
        uint32_t other;
        if (d->uid < from[dst] || state_db_mapping_lookup(e->db, m->idx, dst, d->uid, &other) != 0)
            continue;
        for (size_t k = 0; k < fl[src].count; k++) {
            struct fingerprint *sfp = &fl[src].items[k];
            if (sfp->used || sfp->uid < from[src] || sfp->size != d->size ||
                strcmp(sfp->date, d->date) != 0 || strcmp(sfp->msgid, d->msgid) != 0)
                continue;
            if (state_db_mapping_lookup(e->db, m->idx, src, sfp->uid, &other) != 0)
                continue;
            sfp->used = true;
            uint32_t lu = dst == SIDE_LOCAL ? d->uid : sfp->uid;
            uint32_t ru = dst == SIDE_LOCAL ? sfp->uid : d->uid;
            if (state_db_mapping_insert(e->db, m->idx, lu, ru) < 0)
                rc = ERR_DB;
            paired++;
            break;
        }
    }
    if (paired)
        log_info(e->log, side_name[dst], m->st[dst].mailbox,
                 "Recovered %u message(s) copied by an interrupted run", paired);
    fp_list_fini(&fl[0]);
    fp_list_fini(&fl[1]);
    return rc;
}
