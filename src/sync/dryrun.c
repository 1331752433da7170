/*
 * --dry-run: what a synchronization would do, found with commands that
 * change nothing (LIST, EXAMINE with QRESYNC, UID FETCH of UIDs and sizes)
 * and the database read as it is (opened read only, or absent), then
 * reported in the words of the real run's lines with "Would": mailboxes
 * created and subscribed, messages added (with their source UIDs and
 * size), removed, flags updated, conflicts. Mailboxes are looked at one at
 * a time, with plain request-reply commands: a dry run is not where speed
 * matters.
 *
 * The decisions follow the real run's (mailboxes.c, known.c, copy.c):
 * a mailbox on one side only is created on the other; a known message
 * that vanished on one side is removed from the other; a flag change is
 * copied across, or both sides get the union when both changed; messages
 * above the recorded UIDNEXT are copied. Not predicted: the pairing of
 * copies left by an interrupted run, and what changes on the servers
 * between the dry run and the real one.
 */
#include "internal.h"

/* What was found on one side of the mailbox looked at. */
struct dry_side {
    struct side_state st;   /* VANISHED and flag changes, as the real run */
    struct uidset new_uids; /* UIDs above the recorded UIDNEXT */
    uint64_t new_bytes;     /* their RFC822.SIZE */
    uint32_t from;          /* the first new UID */
};

struct dry_totals {
    unsigned mailboxes, created;
    unsigned long long added, removed, updated;
    uint64_t bytes;
};

/* "812 B", "4.50 MiB" */
static void dry_size(uint64_t n, char *buf, size_t len)
{
    if (n < 1024)
        snprintf(buf, len, "%llu B", (unsigned long long)n);
    else if (n < 1048576)
        snprintf(buf, len, "%.1f KiB", (double)n / 1024.);
    else
        snprintf(buf, len, "%.2f MiB", (double)n / 1048576.);
}

/* New messages' UIDs and sizes; everything else goes to the real run's
 * handler (VANISHED, FETCH FLAGS). */
static void dry_untagged(void *ctx, const struct imap_response *r)
{
    struct dry_side *d = ctx;
    struct imap_fetch f;
    char why[200];
    if (r->status == IMAP_STATUS_NONE && r->nargs >= 3 &&
        imap_value_is_atom(&r->args[1], "FETCH") &&
        imap_fetch_parse(&r->args[2], false, &f, why, sizeof why) == 0 && f.uid && f.has_size &&
        !f.flags) {
        /* "n:*" names the last message even when its UID is below n */
        if (f.uid >= d->from && side_charge(&d->st, 2 * sizeof f.uid)) {
            if (uidset_add(&d->new_uids, f.uid) < 0)
                side_fail(&d->st, -ENOMEM, "out of memory");
            d->new_bytes += f.size;
        }
        return;
    }
    selected_untagged(&d->st, r); /* flag changes, VANISHED, a malformed FETCH */
}

static const struct imap_handler dry_handler = {dry_untagged, NULL};

static void dry_side_init(struct dry_side *d, struct sync_engine *e, enum side s)
{
    memset(d, 0, sizeof *d);
    d->st.e = e;
    d->st.side = s;
    d->st.c = e->client[s];
    /* a dry run needs QRESYNC on both sides (engine_dry_run checks) */
    d->st.how = TIER_QRESYNC;
    uidset_init(&d->st.vanished);
    uidset_init(&d->st.fetched);
    uidset_init(&d->st.probe);
    uidset_init(&d->new_uids);
    /* what the server reports is bounded as in a real run (internal.h) */
    d->st.mem_limit = SIDE_MEMORY_BASE;
}

static void dry_side_fini(struct dry_side *d)
{
    if (d->st.c)
        imap_client_release(d->st.c, d);
    side_state_reset(&d->st);
    uidset_fini(&d->st.vanished);
    uidset_fini(&d->st.fetched);
    uidset_fini(&d->st.probe);
    free(d->st.changes);
    free(d->st.mailbox);
    free(d->st.permanent);
    uidset_fini(&d->new_uids);
}

/* EXAMINE (QRESYNC for a known side, so the server lists what vanished and
 * which flags changed), then the UIDs and sizes of the new messages. */
static int dry_look(struct sync_engine *e, struct dry_side *d, const struct state_side *db,
                    bool known)
{
    struct imap_client *c = d->st.c;
    const char *name = d->st.mailbox;
    imap_client_select_now(c, &dry_handler, d, &d->st.ms);
    /* VANISHED (EARLIER) answers the known range sent below */
    d->st.known_uidnext = known ? db->uidnext : 0;
    int r;
    if (known && db->highestmodseq > 0 && db->uidnext > 1)
        r = imap_client_run(c, "EXAMINE %m (QRESYNC (%u %U 1:%u))", name, db->uidvalidity,
                            db->highestmodseq, db->uidnext - 1);
    else
        r = imap_client_run(c, "EXAMINE %m (CONDSTORE)", name);
    if (r < 0) {
        log_error(e->log, side_name[d->st.side], name, "cannot examine: %s", imap_client_reason(c));
        return r;
    }
    if (known && d->st.ms.uidvalidity != db->uidvalidity) {
        log_error(e->log, side_name[d->st.side], name,
                  "UIDVALIDITY changed from %" PRIu32 " to %" PRIu32
                  "; a real run would refuse to synchronize this mailbox",
                  db->uidvalidity, d->st.ms.uidvalidity);
        return ERR_STATE_MISMATCH;
    }
    d->from = known && db->uidnext > 0 ? db->uidnext : 1;
    if (d->st.ms.uidnext > d->from) {
        r = imap_client_run(c, "UID FETCH %u:* (UID RFC822.SIZE)", d->from);
        if (r < 0) {
            log_error(e->log, side_name[d->st.side], name, "cannot fetch: %s",
                      imap_client_reason(c));
            return r;
        }
    }
    /* a response that could not be taken (reported already): no prediction
     * on partial data */
    return d->st.error;
}

/* The messages of side src that would be copied to the other side. */
static void dry_report_copy(struct sync_engine *e, struct dry_side d[2], enum side src,
                            const char *target_name, struct dry_totals *t)
{
    struct dry_side *from = &d[src];
    if (!from->new_uids.count)
        return;
    uidset_normalize(&from->new_uids);
    size_t pos = 0;
    char *set = uidset_format(&from->new_uids, &pos, SIZE_MAX);
    char size[32];
    dry_size(from->new_bytes, size, sizeof size);
    log_info(e->log, side_name[OTHER(src)], target_name,
             "Would add %zu message(s) from %s UID(s) %s (%s)", from->new_uids.count,
             side_name[src], set ? set : "?", size);
    free(set);
    t->added += from->new_uids.count;
    t->bytes += from->new_bytes;
}

/* What dry_plan_known works out for known messages, per side. */
struct dry_known {
    struct uidset vanished[2]; /* known UIDs gone from this side */
    struct uidset remove[2];   /* UIDs this side would have removed */
    struct flag_plan plan[2];  /* flag stores this side would get */
};

/* The UIDs each side reports gone that the database knows (below its
 * UIDNEXT); each side's changes compacted. */
static int dry_vanished(const struct state_side db[2], struct dry_side d[2], struct dry_known *k)
{
    int rc = 0;
    for (int s = 0; s < 2; s++) {
        uidset_normalize(&d[s].st.vanished);
        for (size_t i = 0; i < d[s].st.vanished.count; i++)
            if (d[s].st.vanished.uids[i] < db[s].uidnext)
                if (uidset_add(&k->vanished[s], d[s].st.vanished.uids[i]) < 0)
                    rc = -ENOMEM;
        changes_compact(&d[s].st);
    }
    return rc;
}

/* A message gone from one side is removed from the other, unless it is
 * gone there too. */
static int dry_removals(struct sync_engine *e, int64_t idx, struct dry_known *k)
{
    int rc = 0;
    for (int s = 0; s < 2 && rc == 0; s++) {
        for (size_t i = 0; i < k->vanished[s].count; i++) {
            uint32_t other;
            int f =
                state_db_mapping_lookup(e->db, idx, (enum side)s, k->vanished[s].uids[i], &other);
            if (f < 0) {
                rc = ERR_DB;
                break;
            }
            if (f == 1 && !uidset_contains(&k->vanished[OTHER(s)], other))
                if (uidset_add(&k->remove[OTHER(s)], other) < 0)
                    rc = -ENOMEM;
        }
    }
    for (int s = 0; s < 2; s++)
        uidset_normalize(&k->remove[s]);
    return rc;
}

/* Flags changed on both sides to different values: both would get their
 * union (reported once, from the local side). */
static int dry_conflict(struct sync_engine *e, struct dry_known *k, enum side s,
                        const struct change *ch, const struct change *och, uint32_t other,
                        const char *pretty)
{
    int rc = 0;
    char *u = flags_union(ch->flags, och->flags);
    char *shown[3] = {flags_display(ch->flags), flags_display(och->flags),
                      u ? flags_display(u) : NULL};
    if (shown[0] && shown[1] && shown[2])
        log_warn(e->log, NULL, NULL,
                 "Conflicting flag update in %s for local UID %" PRIu32
                 " (%s) and remote UID %" PRIu32 " (%s). Would set both to the union (%s).",
                 pretty, ch->uid, shown[0], other, shown[1], shown[2]);
    if (u) {
        if (plan_add(&k->plan[s], u, ch->uid) < 0)
            rc = -ENOMEM;
        if (plan_add(&k->plan[OTHER(s)], u, other) < 0)
            rc = -ENOMEM;
    } else {
        rc = -ENOMEM;
    }
    for (int n = 0; n < 3; n++)
        free(shown[n]);
    free(u);
    return rc;
}

/* One flag change on side s: what the other side would get. */
static int dry_flag_change(struct sync_engine *e, int64_t idx, enum side s, const struct change *ch,
                           struct dry_side d[2], struct dry_known *k, const char *pretty)
{
    uint32_t other;
    int f = state_db_mapping_lookup(e->db, idx, s, ch->uid, &other);
    if (f < 0)
        return ERR_DB;
    if (f == 0) {
        log_warn(e->log, side_name[OTHER(s)], d[OTHER(s)].st.mailbox,
                 "No match for modified %s UID %" PRIu32 ". Try '--repair'.", side_name[s],
                 ch->uid);
        return 0;
    }
    if (uidset_contains(&k->vanished[OTHER(s)], other) ||
        uidset_contains(&k->remove[OTHER(s)], other))
        return 0;
    const struct change *och = change_find(&d[OTHER(s)].st, other);
    if (!och)
        return plan_add(&k->plan[OTHER(s)], ch->flags, other) < 0 ? -ENOMEM : 0;
    if (s == SIDE_REMOTE || flags_equal(ch->flags, och->flags))
        return 0;
    return dry_conflict(e, k, s, ch, och, other, pretty);
}

static int dry_flag_changes(struct sync_engine *e, int64_t idx, const struct state_side db[2],
                            struct dry_side d[2], struct dry_known *k, const char *pretty)
{
    int rc = 0;
    for (int s = 0; s < 2 && rc == 0; s++) {
        for (size_t i = 0; i < d[s].st.nchanges && rc == 0; i++) {
            const struct change *ch = &d[s].st.changes[i];
            if (ch->uid >= db[s].uidnext || uidset_contains(&k->vanished[s], ch->uid))
                continue;
            rc = dry_flag_change(e, idx, (enum side)s, ch, d, k, pretty);
        }
    }
    return rc;
}

/* The "Would remove" and "Would update flags" lines, and their totals. */
static void dry_known_report(struct sync_engine *e, struct dry_side d[2], struct dry_known *k,
                             struct dry_totals *t)
{
    for (int s = 0; s < 2; s++) {
        const char *name = d[s].st.mailbox;
        if (k->remove[s].count) {
            size_t pos = 0;
            char *set = uidset_format(&k->remove[s], &pos, SIZE_MAX);
            log_info(e->log, side_name[s], name, "Would remove %zu UID(s) %s", k->remove[s].count,
                     set ? set : "?");
            free(set);
            t->removed += k->remove[s].count;
        }
        for (size_t g = 0; g < k->plan[s].count; g++) {
            struct flag_group *fg = &k->plan[s].groups[g];
            uidset_normalize(&fg->uids);
            size_t pos = 0;
            char *set = uidset_format(&fg->uids, &pos, SIZE_MAX);
            char *flags = flags_display(fg->flags);
            log_info(e->log, side_name[s], name, "Would update flags (%s) for UID %s",
                     flags ? flags : "?", set ? set : "?");
            free(set);
            free(flags);
            t->updated += fg->uids.count;
        }
    }
}

/* Known messages: the removals and flag stores the real run would send
 * (see known.c), reported instead. */
static int dry_plan_known(struct sync_engine *e, int64_t idx, const struct state_side db[2],
                          struct dry_side d[2], const char *pretty, struct dry_totals *t)
{
    struct dry_known k = {0};
    for (int s = 0; s < 2; s++) {
        uidset_init(&k.vanished[s]);
        uidset_init(&k.remove[s]);
    }
    int rc = dry_vanished(db, d, &k);
    if (rc == 0)
        rc = dry_removals(e, idx, &k);
    if (rc == 0)
        rc = dry_flag_changes(e, idx, db, d, &k, pretty);
    if (rc == 0)
        dry_known_report(e, d, &k, t);
    for (int s = 0; s < 2; s++) {
        plan_fini(&k.plan[s]);
        uidset_fini(&k.vanished[s]);
        uidset_fini(&k.remove[s]);
    }
    if (rc == -ENOMEM)
        log_error(e->log, NULL, pretty, "out of memory");
    return rc;
}

/* One mailbox: what exists where, what the database knows, and what the
 * real run would do about it. */
static int dry_mailbox(struct sync_engine *e, const struct listed *it, struct dry_totals *t)
{
    struct listed *l = listing_find(&e->listing[SIDE_LOCAL], it->key, it->keylen);
    struct listed *r = listing_find(&e->listing[SIDE_REMOTE], it->key, it->keylen);
    bool exists[2] = {l && l->selectable, r && r->selectable};
    bool subscribed[2] = {l && l->subscribed, r && r->subscribed};
    if (!exists[0] && !exists[1])
        return 0;
    int64_t idx = -1;
    bool dbsub = false;
    int found = e->db ? state_db_mailbox_find(e->db, it->key, it->keylen, &idx, &dbsub) : 0;
    if (found < 0)
        return ERR_DB;
    char *pretty = pretty_name(e, it->key, it->keylen);
    struct dry_side d[2];
    dry_side_init(&d[0], e, SIDE_LOCAL);
    dry_side_init(&d[1], e, SIDE_REMOTE);
    int rc = 0;
    for (int s = 0; s < 2; s++)
        if (!(d[s].st.mailbox = server_name(e, (enum side)s, it->key, it->keylen)))
            rc = -ENOMEM;
    if (!pretty || rc < 0) {
        rc = -ENOMEM;
        goto out;
    }
    t->mailboxes++;
    if (exists[0] != exists[1]) {
        enum side have = exists[0] ? SIDE_LOCAL : SIDE_REMOTE;
        if (found == 1) {
            log_error(e->log, "database", NULL,
                      "Mailbox %s exists on the %s server only (was it deleted or renamed on the "
                      "other?): a real run would leave it alone",
                      pretty, side_name[have]);
            e->failed_mailboxes++;
            goto out;
        }
        log_info(e->log, side_name[OTHER(have)], NULL, "Would create mailbox %s",
                 d[OTHER(have)].st.mailbox);
        if (subscribed[have])
            log_info(e->log, side_name[OTHER(have)], NULL, "Would subscribe to %s",
                     d[OTHER(have)].st.mailbox);
        log_info(e->log, "database", NULL, "Would create mailbox %s", pretty);
        t->created++;
        rc = dry_look(e, &d[have], NULL, false);
        if (rc == 0)
            dry_report_copy(e, d, have, d[OTHER(have)].st.mailbox, t);
        goto out;
    }
    struct state_side db[2] = {{0}, {0}};
    bool known = found == 1;
    for (int s = 0; s < 2 && known; s++) {
        int f = state_db_side_get(e->db, idx, (enum side)s, &db[s]);
        if (f < 0) {
            rc = ERR_DB;
            goto out;
        }
        known = f == 1;
    }
    if (found == 1) {
        if (subscribed[0] != subscribed[1]) {
            bool want = !dbsub;
            enum side fix = subscribed[0] == want ? SIDE_REMOTE : SIDE_LOCAL;
            log_info(e->log, side_name[fix], NULL, "Would %s %s",
                     want ? "subscribe to" : "unsubscribe from", d[fix].st.mailbox);
        }
        struct mbox_work w = {.key = it->key, .keylen = it->keylen, .idx = idx};
        if (known && unchanged(e, &w))
            goto out; /* LIST-STATUS says nothing moved on either side */
    } else {
        log_info(e->log, "database", NULL, "Would create mailbox %s", pretty);
        for (int s = 0; s < 2; s++)
            if ((subscribed[0] || subscribed[1]) && !subscribed[s])
                log_info(e->log, side_name[s], NULL, "Would subscribe to %s", d[s].st.mailbox);
    }
    for (int s = 0; s < 2 && rc == 0; s++)
        rc = dry_look(e, &d[s], &db[s], known);
    if (rc == 0 && known)
        rc = dry_plan_known(e, idx, db, d, pretty, t);
    if (rc == 0) {
        dry_report_copy(e, d, SIDE_REMOTE, d[SIDE_LOCAL].st.mailbox, t);
        dry_report_copy(e, d, SIDE_LOCAL, d[SIDE_REMOTE].st.mailbox, t);
    }
out:
    if (rc == ERR_DB)
        log_error(e->log, "database", pretty, "%s", state_db_error(e->db));
    if (rc < 0)
        e->failed_mailboxes++;
    for (int s = 0; s < 2; s++)
        dry_side_fini(&d[s]);
    free(pretty);
    return rc;
}

int dry_run(struct sync_engine *e)
{
    struct dry_totals t = {0};
    uint64_t started = uv_hrtime();
    e->failed_mailboxes = 0;
    int rc = 0;
    /* each name once, in listing order, as the real run merges them */
    for (int s = 0; s < 2 && !e->stop; s++) {
        for (size_t i = 0; i < e->listing[s].count && !e->stop; i++) {
            const struct listed *it = &e->listing[s].items[i];
            if (ignored(e, it->key, it->keylen))
                continue;
            if (s == SIDE_REMOTE &&
                listing_find(&e->listing[SIDE_LOCAL], it->key, it->keylen) != NULL)
                continue; /* looked at from the local listing */
            int r = dry_mailbox(e, it, &t);
            if (r < 0 && rc == 0)
                rc = r;
            if (r < 0 &&
                (imap_client_is_broken(e->client[0]) || imap_client_is_broken(e->client[1])))
                return EXIT_CONNECTION;
        }
    }
    char size[32];
    dry_size(t.bytes, size, sizeof size);
    log_info(e->log, NULL, NULL,
             "Dry run: %u mailbox(es) in %.2f s: would create %u mailbox(es), add %llu "
             "message(s) (%s), remove %llu, update flags of %llu; nothing was changed",
             t.mailboxes, (double)(uv_hrtime() - started) / 1e9, t.created, t.added, size,
             t.removed, t.updated);
    if (rc == 0 && e->failed_mailboxes)
        return EXIT_PARTIAL;
    return rc == 0 ? EXIT_IN_STEP : rc == ERR_DB ? EXIT_FAILURE_GENERIC : EXIT_PARTIAL;
}
