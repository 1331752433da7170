/*
 * Interrupted runs: settling the copy journal a killed run left (finding
 * its copies on the target whatever became of their originals), and the
 * pairs it recorded above the saved UIDNEXT, whose flags may have changed
 * on either side since. The reasoning is in doc/internals/sync.md (crash
 * safety).
 */
#include "internal.h"

/* Pairs left by an interrupted run: mapped UIDs at or above the stored
 * UIDNEXT (the reference tool commits pairs before UIDNEXT too). They are
 * not copied again; check_interrupted() settles them once UIDNEXT has
 * moved. */
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

/* The journal rows sorted by source and source UID, to find a pair's. */
static int row_cmp(const void *x, const void *y)
{
    const struct state_copy *a = x, *b = y;
    if (a->source != b->source)
        return a->source < b->source ? -1 : 1;
    return a->suid < b->suid ? -1 : a->suid > b->suid;
}

/* The journal row of a pair, if its copy was journaled: the flags both
 * sides had when the copy was made. rows is sorted with row_cmp. */
static const struct state_copy *journal_find(const struct state_copy *rows, size_t n, uint32_t l,
                                             uint32_t r)
{
    if (n == 0)
        return NULL;
    for (int s = 0; s < 2; s++) {
        struct state_copy key = {.source = (enum side)s, .suid = s == SIDE_LOCAL ? l : r};
        const struct state_copy *c = bsearch(&key, rows, n, sizeof *rows, row_cmp);
        if (c && c->tuid == (s == SIDE_LOCAL ? r : l))
            return c;
    }
    return NULL;
}

/* Drops the reported changes of the UIDs in `drop` (they need no
 * propagation). */
static void changes_drop(struct side_state *st, struct uidset *drop)
{
    uidset_normalize(drop);
    size_t o = 0;
    for (size_t i = 0; i < st->nchanges; i++) {
        if (uidset_contains(drop, st->changes[i].uid)) {
            free(st->changes[i].flags);
            continue;
        }
        st->changes[o++] = st->changes[i];
    }
    st->nchanges = o;
}

/* For a journaled pair, only the side whose flags moved away from the
 * copy's keeps its change; with both moved, both stay (a conflict, set to
 * the union); with neither, nothing is to be done. Without a journal row
 * (a pair the reference tool left) any difference is a conflict. */
static void settle_flags(struct mbox_ctx *m, const struct state_copy *rows, size_t nrows,
                         const uint32_t u[2], struct uidset drop[2])
{
    const struct state_copy *c = journal_find(rows, nrows, u[0], u[1]);
    if (!c)
        return;
    for (int s = 0; s < 2; s++) {
        const struct change *ch = change_find(&m->st[s], u[s]);
        if (!ch || flags_equal(ch->flags, c->flags))
            mbox_note(m, uidset_add(&drop[s], u[s]));
    }
}

static int fetch_pair_flags(struct mbox_ctx *m, struct uidset pairs[2])
{
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
    return rc;
}

/*
 * Fetches the flags of the interrupted pairs on both sides. A pair whose
 * message vanished on one side loses its other half too; the flags of the
 * others are left among the reported changes, for sync_known to propagate
 * (see settle_flags).
 */
int check_interrupted(struct mbox_ctx *m, struct uidset pairs[2])
{
    struct sync_engine *e = m->e;
    if (pairs[0].count == 0)
        return 0;
    unsigned refused[2] = {m->st[0].refused, m->st[1].refused};
    int rc = fetch_pair_flags(m, pairs);
    if (rc < 0)
        return rc;
    /* a message whose FETCH response was refused is there all the same:
     * with one missing answer, absence proves nothing, and nothing is
     * removed on its strength */
    if (side_error(m))
        return side_error(m);
    if (m->st[0].refused != refused[0] || m->st[1].refused != refused[1])
        return ERR_PROTOCOL;
    struct state_copy *rows = NULL;
    size_t nrows = 0;
    if (state_db_copy_list(e->db, m->idx, &rows, &nrows) < 0)
        return ERR_DB;
    if (nrows)
        qsort(rows, nrows, sizeof *rows, row_cmp);
    struct uidset remove[2], drop[2];
    for (int s = 0; s < 2; s++) {
        uidset_init(&remove[s]);
        uidset_init(&drop[s]);
        changes_compact(&m->st[s]);
    }
    for (size_t i = 0; i < pairs[0].count && i < pairs[1].count; i++) {
        uint32_t u[2] = {pairs[0].uids[i], pairs[1].uids[i]};
        bool have[2] = {change_find(&m->st[0], u[0]) != NULL, change_find(&m->st[1], u[1]) != NULL};
        if (have[0] && have[1]) {
            settle_flags(m, rows, nrows, u, drop);
            continue;
        }
        for (int s = 0; s < 2; s++)
            if (have[s]) {
                mbox_note(m, uidset_add(&remove[s], u[s]));
                mbox_note(m, uidset_add(&drop[s], u[s])); /* its flags no longer matter */
            }
        if (m->repair && !have[0] && !have[1])
            log_warn(e->log, NULL, NULL,
                     "Pair (lUID,rUID) = (%" PRIu32 ",%" PRIu32 ") vanished from %s. Repairing.",
                     u[0], u[1], m->pretty);
        if (state_db_mapping_delete(e->db, m->idx, SIDE_LOCAL, u[0]) < 0)
            rc = ERR_DB;
    }
    state_db_copy_list_free(&rows, nrows);
    for (int s = 0; s < 2; s++) {
        changes_drop(&m->st[s], &drop[s]);
        uidset_fini(&drop[s]);
    }
    for (int s = 0; rc == 0 && s < 2; s++) {
        if (!remove[s].count)
            continue;
        rc = remove_messages(&m->st[s], &remove[s]);
        m->removed[s] += (unsigned)remove[s].count;
    }
    uidset_fini(&remove[0]);
    uidset_fini(&remove[1]);
    if (rc == 0 && (state_db_commit(e->db) < 0 || state_db_begin(e->db) < 0))
        rc = ERR_DB;
    return rc;
}

/* ------------------------------------------------------------------ */
/* the copy journal */

/* What the journal of one direction says, once matched against the
 * target: for each APPEND batch, which of its copies were found. */
struct jbatch {
    int64_t batch;
    size_t row0;     /* its first row in the direction's list */
    size_t n;        /* rows */
    size_t found;    /* rows with a known copy (confirmed or matched) */
    uint32_t lo, hi; /* lowest and highest known copy UIDs */
    uint32_t bound;  /* the copies' UIDs are not below */
    /* The copies found sit at first + their row's place in the batch: the
     * server gave the batch consecutive UIDs, in the order of its
     * messages, and so the place of every missing copy is known. */
    bool consecutive;
    uint32_t first;
    bool happened; /* the server stored the batch */
    bool deleted;  /* its copies not found were deleted since */
};

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* How many of the sorted uids lie in [lo, hi). */
static size_t count_in(const uint32_t *uids, size_t n, uint32_t lo, uint32_t hi)
{
    size_t a = 0, b = n;
    while (a < b) {
        size_t mid = a + (b - a) / 2;
        if (uids[mid] < lo)
            a = mid + 1;
        else
            b = mid;
    }
    size_t c = 0;
    for (size_t i = a; i < n && uids[i] < hi; i++)
        c++;
    return c;
}

/* The target's messages at or above some UID: all of them (sorted), their
 * fingerprints, and (after matching) those nothing accounts for. */
struct target_view {
    struct fp_list fl[2];
    struct fp_index ix;
    uint32_t *uids, *unknown;
    size_t nuids, nunknown;
    uint32_t next; /* the target's UIDNEXT */
};

static void target_view_fini(struct target_view *tv)
{
    fp_index_fini(&tv->ix);
    fp_list_fini(&tv->fl[0]);
    fp_list_fini(&tv->fl[1]);
    free(tv->uids);
    free(tv->unknown);
}

static int target_view_load(struct mbox_ctx *m, enum side dst, uint32_t lo, struct target_view *tv)
{
    memset(tv, 0, sizeof *tv);
    char set[32];
    snprintf(set, sizeof set, "%" PRIu32 ":4294967295", lo);
    const char *sets[2] = {NULL, NULL};
    sets[dst] = set;
    int rc = fp_fetch(m, sets, tv->fl);
    if (rc < 0)
        return rc;
    struct fp_list *fl = &tv->fl[dst];
    tv->uids = malloc((fl->count + 1) * sizeof *tv->uids);
    tv->unknown = malloc((fl->count + 1) * sizeof *tv->unknown);
    if (!tv->uids || !tv->unknown)
        return -ENOMEM;
    tv->next = m->st[dst].ms.uidnext;
    for (size_t i = 0; i < fl->count; i++) {
        uint32_t other, u = fl->items[i].uid;
        tv->uids[tv->nuids++] = u;
        if (u >= tv->next)
            tv->next = u + 1;
        int f = state_db_mapping_lookup(m->e->db, m->idx, dst, u, &other);
        if (f < 0)
            return ERR_DB;
        fl->items[i].used = f == 1; /* recorded already: not a candidate */
    }
    qsort(tv->uids, tv->nuids, sizeof *tv->uids, cmp_u32);
    return fp_index_init(&tv->ix, fl);
}

/* After matching: the target messages nothing accounts for. */
static void target_view_unknown(struct target_view *tv, enum side dst)
{
    struct fp_list *fl = &tv->fl[dst];
    for (size_t i = 0; i < fl->count; i++)
        if (!fl->items[i].used)
            tv->unknown[tv->nunknown++] = fl->items[i].uid;
    qsort(tv->unknown, tv->nunknown, sizeof *tv->unknown, cmp_u32);
}

/* Matches each unanswered row with an unknown target message of the same
 * fingerprint (the lowest UID first), and groups the rows by batch. */
static void journal_match(const struct state_copy *rows, size_t n, struct target_view *tv,
                          uint32_t *match, struct jbatch *jb, size_t *njb)
{
    *njb = 0;
    for (size_t i = 0; i < n; i++) {
        const struct state_copy *c = &rows[i];
        match[i] = c->tuid;
        if (c->tuid == 0) {
            struct fingerprint want = {.size = c->size,
                                       .date = fp_date(c->internaldate),
                                       .datetext = c->internaldate,
                                       .msgid = c->msgid,
                                       .msgidlen = c->msgidlen};
            struct fingerprint *hit = fp_index_take(&tv->ix, &want, c->bound);
            match[i] = hit ? hit->uid : 0;
        }
        if (*njb == 0 || jb[*njb - 1].batch != c->batch)
            jb[(*njb)++] = (struct jbatch){
                .batch = c->batch, .row0 = i, .bound = c->bound, .consecutive = true};
        struct jbatch *b = &jb[*njb - 1];
        b->n++;
        if (!match[i])
            continue;
        b->found++;
        b->lo = b->lo && b->lo < match[i] ? b->lo : match[i];
        b->hi = b->hi > match[i] ? b->hi : match[i];
        size_t place = i - b->row0;
        if (match[i] <= place || (b->found > 1 && b->first != match[i] - place))
            b->consecutive = false;
        else
            b->first = match[i] - (uint32_t)place;
    }
}

/* Whether the target holds a message with this UID. */
static bool target_has(const struct target_view *tv, uint32_t uid)
{
    return count_in(tv->uids, tv->nuids, uid, uid + 1) > 0;
}

/* Which of the rows not found are copies deleted since (gone[i]): in a
 * batch whose copies found show its UIDs (two or more, at consecutive
 * places), a missing copy whose UID no longer exists; otherwise, all of a
 * batch that batch_decide found deleted. */
static void rows_decide(size_t n, const uint32_t *match, const struct jbatch *jb, size_t njb,
                        const struct target_view *tv, bool *gone)
{
    for (size_t k = 0; k < njb; k++) {
        const struct jbatch *b = &jb[k];
        bool placed = b->found >= 2 && b->consecutive;
        for (size_t i = b->row0; i < b->row0 + b->n && i < n; i++) {
            if (match[i])
                continue;
            if (placed)
                gone[i] = !target_has(tv, b->first + (uint32_t)(i - b->row0));
            else
                gone[i] = b->deleted;
        }
    }
}

/*
 * Whether a batch reached the target, and whether its copies not found
 * were deleted since (rows_decide refines this when the places of the
 * copies found tell the missing ones' UIDs). A batch is one APPEND
 * command: all or nothing. With copies found, it happened; with none,
 * only if a later batch on the same connection did (so this one reached
 * the server first) and as many UIDs as it holds are missing between its
 * neighbours'. Copies not found count as deleted only if enough UIDs are
 * missing where the batch can lie and no message nothing accounts for
 * sits there (a copy the server altered, or someone else's delivery, must
 * not cost an original). Otherwise the message is copied again: a copy
 * too many rather than a message lost.
 */
static void batch_decide(struct jbatch *jb, size_t k, size_t njb, const struct target_view *tv)
{
    struct jbatch *b = &jb[k];
    uint32_t lo = b->bound, hi = tv->next;
    for (size_t i = 0; i < k; i++)
        if (jb[i].found && jb[i].hi + 1 > lo)
            lo = jb[i].hi + 1;
    bool later = false;
    for (size_t i = k + 1; i < njb && !later; i++)
        if (jb[i].found) {
            later = true;
            hi = jb[i].lo < hi ? jb[i].lo : hi;
        }
    b->happened = b->found > 0;
    b->deleted = false;
    size_t lost = b->n - b->found;
    if (lost == 0 || (!b->happened && !later))
        return;
    if (b->found) {
        /* where the batch's UIDs can lie: they are consecutive on the
         * servers we know; where they are not, this is only stricter */
        uint32_t a = b->hi >= b->n ? b->hi - (uint32_t)b->n + 1 : 1;
        uint32_t z = b->lo + (uint32_t)b->n;
        lo = a > lo ? a : lo;
        hi = z < hi ? z : hi;
    }
    if (hi <= lo)
        return;
    size_t present = count_in(tv->uids, tv->nuids, lo, hi);
    size_t unexplained = count_in(tv->unknown, tv->nunknown, lo, hi);
    size_t missing = (size_t)(hi - lo) - present;
    if (unexplained == 0 && missing >= lost) {
        b->happened = true;
        b->deleted = true;
    }
}

/* What recovery does about the rows of one direction. */
struct recovery {
    struct uidset remove; /* originals whose copy was deleted since */
    struct uidset recopy; /* old messages whose copy never happened */
    unsigned paired, deleted, again;
};

static int journal_apply(struct mbox_ctx *m, enum side src, const struct state_copy *rows, size_t n,
                         const uint32_t *match, const bool *gone, struct recovery *rec)
{
    struct state_db *db = m->e->db;
    for (size_t i = 0; i < n; i++) {
        const struct state_copy *c = &rows[i];
        if (c->tuid)
            continue; /* answered before the run died: recorded */
        uint32_t other;
        int f = state_db_mapping_lookup(db, m->idx, src, c->suid, &other);
        if (f < 0)
            return ERR_DB;
        int r;
        if (match[i] && f == 0) {
            r = state_db_copy_confirm(db, m->idx, src, c->suid, match[i]);
            rec->paired++;
        } else {
            r = state_db_copy_delete(db, m->idx, src, c->suid);
            if (f == 1) {
                /* recorded meanwhile (by the other tool): nothing to do */
            } else if (gone[i]) {
                mbox_note(m, uidset_add(&rec->remove, c->suid));
                rec->deleted++;
            } else {
                if (c->suid < m->uidnext[src])
                    mbox_note(m, uidset_add(&rec->recopy, c->suid));
                rec->again++;
            }
        }
        if (r < 0)
            return ERR_DB;
    }
    return 0;
}

/* Settles the rows of the copies from src that the previous run had no
 * answer for. */
static int recover_direction(struct mbox_ctx *m, enum side src, const struct state_copy *rows,
                             size_t n, struct recovery *rec)
{
    enum side dst = OTHER(src);
    uint32_t lo = 0;
    for (size_t i = 0; i < n; i++)
        if (rows[i].tuid == 0 && (lo == 0 || rows[i].bound < lo))
            lo = rows[i].bound ? rows[i].bound : 1;
    if (lo == 0)
        return 0; /* every answer was recorded */
    struct target_view tv;
    uint32_t *match = calloc(n + 1, sizeof *match);
    struct jbatch *jb = calloc(n + 1, sizeof *jb);
    bool *gone = calloc(n + 1, sizeof *gone);
    int rc = match && jb && gone ? target_view_load(m, dst, lo, &tv) : -ENOMEM;
    if (rc == 0) {
        size_t njb;
        journal_match(rows, n, &tv, match, jb, &njb);
        target_view_unknown(&tv, dst);
        for (size_t k = 0; k < njb; k++)
            batch_decide(jb, k, njb, &tv);
        rows_decide(n, match, jb, njb, &tv, gone);
        rc = journal_apply(m, src, rows, n, match, gone, rec);
    }
    if (match && jb && gone)
        target_view_fini(&tv);
    free(match);
    free(jb);
    free(gone);
    return rc;
}

/* Rows of the previous journal format: copies at or above a UID, nothing
 * more known. Messages on both sides above those bounds that nothing
 * records are paired by fingerprint. */
static int recover_legacy(struct mbox_ctx *m, const struct state_copy *rows, size_t n)
{
    uint32_t from[2] = {0, 0};
    for (size_t i = 0; i < n; i++) {
        if (rows[i].suid != 0)
            continue;
        enum side dst = OTHER(rows[i].source);
        uint32_t b = rows[i].bound ? rows[i].bound : 1;
        from[dst] = from[dst] && from[dst] < b ? from[dst] : b;
        from[rows[i].source] =
            from[rows[i].source] ? from[rows[i].source] : m->uidnext[rows[i].source];
        if (state_db_copy_delete(m->e->db, m->idx, rows[i].source, 0) < 0)
            return ERR_DB;
    }
    if (!from[0] && !from[1])
        return 0;
    for (int s = 0; s < 2; s++)
        if (!from[s])
            from[s] = m->uidnext[s] ? m->uidnext[s] : 1;
    return adopt_unrecorded(m, from);
}

/*
 * The copies a previous run journaled without learning where they landed:
 * each is looked for among the target's messages nothing records, by
 * fingerprint, whatever happened to its original since (an original
 * expunged meanwhile is then expunged on the target by the ordinary
 * algorithm, as for any pair). Copies the user deleted meanwhile take
 * their originals with them; copies that never happened leave their
 * originals to be copied again (recopy[src] for messages below UIDNEXT,
 * which the new-message pass would not take).
 */
int recover_copies(struct mbox_ctx *m, struct uidset recopy[2])
{
    struct sync_engine *e = m->e;
    struct state_copy *rows = NULL;
    size_t n = 0;
    if (state_db_copy_list(e->db, m->idx, &rows, &n) < 0)
        return ERR_DB;
    if (n == 0)
        return 0;
    int rc = recover_legacy(m, rows, n);
    for (int s = 0; rc == 0 && s < 2; s++) {
        if (m->target_pending == (int)OTHER(s))
            continue; /* created in this run: no copy can be there */
        size_t first = 0, cnt = 0;
        for (size_t i = 0; i < n; i++)
            if (rows[i].source == (enum side)s && rows[i].suid) {
                if (!cnt)
                    first = i;
                cnt++;
            }
        if (!cnt)
            continue;
        struct recovery rec = {0};
        uidset_init(&rec.remove);
        uidset_init(&rec.recopy);
        rc = recover_direction(m, (enum side)s, rows + first, cnt, &rec);
        /* the originals go before the rows that call for it are committed
         * away: killed in between, the next run decides the same again */
        if (rc == 0 && rec.remove.count) {
            rc = remove_messages(&m->st[s], &rec.remove);
            m->removed[s] += (unsigned)rec.remove.count;
        }
        if (rc == 0 && (state_db_commit(e->db) < 0 || state_db_begin(e->db) < 0))
            rc = ERR_DB;
        for (size_t i = 0; i < rec.recopy.count; i++)
            mbox_note(m, uidset_add(&recopy[s], rec.recopy.uids[i]));
        if (rec.paired)
            log_info(e->log, side_name[OTHER(s)], m->st[OTHER(s)].mailbox,
                     "Recovered %u message(s) copied by an interrupted run", rec.paired);
        if (rec.deleted)
            log_info(e->log, side_name[s], m->st[s].mailbox,
                     "%u copied message(s) were deleted on the %s side since an interrupted run; "
                     "removing the originals",
                     rec.deleted, side_name[OTHER(s)]);
        uidset_fini(&rec.remove);
        uidset_fini(&rec.recopy);
    }
    state_db_copy_list_free(&rows, n);
    if (rc == ERR_DB)
        log_error(e->log, "database", m->pretty, "%s", state_db_error(e->db));
    return rc;
}
