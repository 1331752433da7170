/*
 * Adoption: messages already on both servers that the database does not
 * record are paired instead of copied. This happens on the first run of a
 * mailbox (two servers synchronized by another tool, or a lost database),
 * and for the copies the previous journal format could only bound.
 * Identical messages (same size, INTERNALDATE and Message-ID) are paired,
 * several identical ones in UID order; the rest is copied as usual.
 */
#include "internal.h"

/* Whether the mailbox has never been synchronized to the end and both
 * sides hold messages that could be the same. */
bool adopt_wanted(const struct mbox_ctx *m)
{
    if (m->repair || m->created[0] || m->created[1] || m->target_pending >= 0)
        return false;
    if (m->db[0].uidnext != 0 && m->db[1].uidnext != 0)
        return false;
    return m->st[0].ms.exists > 0 && m->st[1].ms.exists > 0;
}

static int cmp_uid(const void *a, const void *b)
{
    const struct fingerprint *x = a, *y = b;
    return x->uid < y->uid ? -1 : x->uid > y->uid;
}

/* Marks the fingerprints of messages the database records as taken. */
static int mark_recorded(struct mbox_ctx *m, enum side s, struct fp_list *fl)
{
    for (size_t i = 0; i < fl->count; i++) {
        uint32_t other;
        int f = state_db_mapping_lookup(m->e->db, m->idx, s, fl->items[i].uid, &other);
        if (f < 0)
            return ERR_DB;
        fl->items[i].used = f == 1;
    }
    return 0;
}

/* Pairs the unrecorded messages at or above from[s] on each side that
 * have the same fingerprint. */
int adopt_unrecorded(struct mbox_ctx *m, const uint32_t from[2])
{
    struct sync_engine *e = m->e;
    char set[2][32];
    const char *sets[2];
    for (int s = 0; s < 2; s++) {
        snprintf(set[s], sizeof set[s], "%" PRIu32 ":4294967295", from[s] ? from[s] : 1);
        sets[s] = set[s];
    }
    struct fp_list fl[2];
    memset(fl, 0, sizeof fl);
    struct fp_index ix = {0};
    int rc = fp_fetch(m, sets, fl);
    for (int s = 0; rc == 0 && s < 2; s++)
        rc = mark_recorded(m, (enum side)s, &fl[s]);
    if (rc == 0)
        rc = fp_index_init(&ix, &fl[SIDE_REMOTE]);
    unsigned adopted = 0;
    if (rc == 0) {
        struct fp_list *l = &fl[SIDE_LOCAL];
        if (l->count)
            qsort(l->items, l->count, sizeof *l->items, cmp_uid);
        for (size_t i = 0; i < l->count && rc == 0; i++) {
            if (l->items[i].used)
                continue;
            struct fingerprint *r = fp_index_take(&ix, &l->items[i], 0);
            if (!r)
                continue;
            if (state_db_mapping_insert(e->db, m->idx, l->items[i].uid, r->uid) < 0)
                rc = ERR_DB;
            adopted++;
        }
    }
    if (rc == 0 && (state_db_commit(e->db) < 0 || state_db_begin(e->db) < 0))
        rc = ERR_DB;
    if (rc == ERR_DB)
        log_error(e->log, "database", m->pretty, "%s", state_db_error(e->db));
    if (rc == 0 && adopted)
        log_info(e->log, "database", m->pretty,
                 "Adopted %u message(s) already on both sides (not copied)", adopted);
    fp_index_fini(&ix);
    fp_list_fini(&fl[0]);
    fp_list_fini(&fl[1]);
    return rc;
}
