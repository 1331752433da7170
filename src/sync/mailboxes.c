/*
 * The mailbox list: which mailboxes to synchronize, creating those that
 * exist on one side only, and propagating subscriptions.
 */
#include "internal.h"

bool ignored(struct sync_engine *e, const char *key, size_t keylen)
{
    if (!e->ignore_re || e->opts.nmailboxes)
        return false;
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(e->ignore_re, NULL);
    if (!md)
        return false;
    int r = pcre2_match(e->ignore_re, (PCRE2_SPTR)key, keylen, 0, 0, md, NULL);
    pcre2_match_data_free(md);
    return r >= 0;
}

/* A CREATE (and SUBSCRIBE) sent for a mailbox that exists on one side only;
 * all of them go out at once and are waited for together. */
struct pending_create {
    size_t work;    /* index in the work list */
    enum side side; /* where it is created */
    bool subscribe;
    char *name; /* server name */
    struct imap_cmd *create, *sub;
};

static int create_send(struct sync_engine *e, struct pending_create *pc, const char *key,
                       size_t keylen)
{
    pc->name = server_name(e, pc->side, key, keylen);
    if (!pc->name)
        return -ENOMEM;
    /* CREATE makes missing parents on servers that need them (RFC 3501
     * 6.3.3 lets a server create them implicitly; Dovecot does); a parent
     * created by an earlier command in the same burst is there already,
     * since the server runs them in order */
    pc->create = imap_client_send(e->client[pc->side], "CREATE %m", pc->name);
    if (pc->subscribe)
        pc->sub = imap_client_send(e->client[pc->side], "SUBSCRIBE %m", pc->name);
    return 0;
}

/* Waits for one pending CREATE; returns 0 when the mailbox now exists. */
static int create_wait(struct sync_engine *e, struct pending_create *pc)
{
    struct imap_client *c = e->client[pc->side];
    int r = pc->create ? imap_cmd_wait(pc->create) : -ENOMEM;
    if (r < 0)
        /* the CREATE's own answer, not whatever the connection said last */
        log_error(e->log, side_name[pc->side], pc->name, "cannot create mailbox: %s",
                  r == ERR_NO || r == ERR_BAD ? imap_cmd_text(pc->create) : imap_client_reason(c));
    else
        log_info(e->log, side_name[pc->side], NULL, "Created mailbox %s", pc->name);
    if (pc->subscribe) {
        int rs = pc->sub ? imap_cmd_wait(pc->sub) : -ENOMEM;
        if (r == 0 && rs < 0)
            log_error(e->log, side_name[pc->side], pc->name, "cannot subscribe: %s",
                      imap_client_reason(c));
        else if (r == 0)
            log_info(e->log, side_name[pc->side], NULL, "Subscribe to %s", pc->name);
    }
    imap_cmd_free(&pc->create);
    imap_cmd_free(&pc->sub);
    free(pc->name);
    pc->name = NULL;
    return r;
}

static int set_subscription(struct sync_engine *e, enum side s, const char *key, size_t keylen,
                            bool subscribe)
{
    char *name = server_name(e, s, key, keylen);
    if (!name)
        return -ENOMEM;
    int r = imap_client_run(e->client[s], subscribe ? "SUBSCRIBE %m" : "UNSUBSCRIBE %m", name);
    if (r < 0)
        log_error(e->log, side_name[s], name, "cannot %s: %s",
                  subscribe ? "subscribe" : "unsubscribe", imap_client_reason(e->client[s]));
    else /* sic: the reference tool's wording */
        log_info(e->log, side_name[s], NULL, "%s to %s", subscribe ? "Subscribe" : "Unsubscribe",
                 name);
    free(name);
    return r;
}

/* The mailbox list being merged: the work list, and the CREATEs in
 * flight for one-sided mailboxes. */
struct list_merge {
    struct sync_engine *e;
    struct mbox_work *work;
    size_t n;
    struct nameindex by_key; /* the work list by key */
    struct pending_create *creates;
    size_t ncreate;
};

static const char *work_key_at(const void *ctx, size_t pos, size_t *len)
{
    const struct list_merge *mg = ctx;
    *len = mg->work[pos].keylen;
    return mg->work[pos].key;
}

static bool merge_has(const struct list_merge *mg, const char *key, size_t keylen)
{
    if (!mg->by_key.failed && mg->by_key.count == mg->n) {
        size_t cursor = 0;
        return nameindex_next(&mg->by_key, key, keylen, &cursor) != SIZE_MAX;
    }
    for (size_t k = 0; k < mg->n; k++)
        if (mg->work[k].key && mg->work[k].keylen == keylen &&
            memcmp(mg->work[k].key, key, keylen) == 0)
            return true;
    return false;
}

static int db_failed(struct sync_engine *e)
{
    log_error(e->log, "database", NULL, "%s", state_db_error(e->db));
    return ERR_DB;
}

/* A mailbox on both sides: keep subscriptions in step (one side changed:
 * follow it), and record it if the database does not know it yet. */
static int merge_both(struct sync_engine *e, const struct listed *l, const struct listed *r,
                      int found, bool dbsub, const char *pretty, int64_t *idx)
{
    bool ls = l->subscribed, rs = r->subscribed;
    if (found) {
        if (ls != rs) {
            bool want = !dbsub;
            enum side fix = (ls == want) ? SIDE_REMOTE : SIDE_LOCAL;
            if (set_subscription(e, fix, l->key, l->keylen, want) == 0)
                state_db_mailbox_set_subscribed(e->db, *idx, want);
        } else if (ls != dbsub) {
            state_db_mailbox_set_subscribed(e->db, *idx, ls);
        }
        return 0;
    }
    bool sub = ls || rs;
    if (state_db_mailbox_insert(e->db, l->key, l->keylen, sub, idx) < 0)
        return db_failed(e);
    log_info(e->log, "database", NULL, "Created mailbox %s", pretty);
    if (sub && !ls)
        set_subscription(e, SIDE_LOCAL, l->key, l->keylen, true);
    if (sub && !rs)
        set_subscription(e, SIDE_REMOTE, l->key, l->keylen, true);
    return 0;
}

/* A mailbox on one side only: created on the other (answered later, in
 * merge_settle_creates), unless the database knows it, in which case it
 * was deleted or renamed there and only the user can say which.
 * Returns 1 when the mailbox is left out. */
static int merge_one_sided(struct list_merge *mg, const struct listed *it, enum side have,
                           int found, const char *pretty)
{
    struct sync_engine *e = mg->e;
    if (found) {
        log_error(e->log, "database", NULL,
                  "Mailbox %s exists on the %s server only (was it deleted or "
                  "renamed on the other?). Run `interimap --target=database "
                  "--delete %s` to forget it, or --rename/--delete to act on both",
                  pretty, side_name[have], pretty);
        e->failed_mailboxes++;
        return 1;
    }
    struct pending_create *pc = &mg->creates[mg->ncreate++];
    pc->work = mg->n;
    pc->side = OTHER(have);
    pc->subscribe = it->subscribed;
    return create_send(e, pc, it->key, it->keylen) < 0 ? -ENOMEM : 0;
}

/* Merges one listed name into the work list. */
static int merge_one(struct list_merge *mg, const struct listed *it)
{
    struct sync_engine *e = mg->e;
    if (it->refused || merge_has(mg, it->key, it->keylen) || ignored(e, it->key, it->keylen))
        return 0;
    struct listed *l = listing_find(&e->listing[SIDE_LOCAL], it->key, it->keylen);
    struct listed *r = listing_find(&e->listing[SIDE_REMOTE], it->key, it->keylen);
    bool lex = l && l->selectable, rex = r && r->selectable;
    if (!lex && !rex)
        return 0;
    int64_t idx = 0;
    bool dbsub = false;
    int found = state_db_mailbox_find(e->db, it->key, it->keylen, &idx, &dbsub);
    if (found < 0)
        return db_failed(e);
    char *pretty = pretty_name(e, it->key, it->keylen);
    int rc;
    if (lex && rex) {
        rc = merge_both(e, l, r, found, dbsub, pretty ? pretty : "", &idx);
    } else {
        rc = merge_one_sided(mg, lex ? l : r, lex ? SIDE_LOCAL : SIDE_REMOTE, found,
                             pretty ? pretty : "");
        idx = -1; /* created in merge_settle_creates */
    }
    free(pretty);
    if (rc != 0)
        return rc < 0 ? rc : 0;
    if (idx >= 0 && (state_db_commit(e->db) < 0 || state_db_begin(e->db) < 0))
        return db_failed(e);
    struct mbox_work *w = &mg->work[mg->n];
    w->key = malloc(it->keylen + 1);
    if (!w->key)
        return -ENOMEM;
    memcpy(w->key, it->key, it->keylen + 1);
    w->keylen = it->keylen;
    w->idx = idx;
    mg->n++;
    nameindex_add(&mg->by_key); /* (without memory, merge_has compares with each) */
    return 0;
}

/* Every CREATE is answered, even after a failure, so none is left in
 * flight; a mailbox enters the database only once it exists on both. */
static int merge_settle_creates(struct list_merge *mg, int rc)
{
    struct sync_engine *e = mg->e;
    for (size_t k = 0; k < mg->ncreate; k++) {
        struct pending_create *pc = &mg->creates[k];
        struct mbox_work *w = &mg->work[pc->work];
        int r = create_wait(e, pc);
        if (rc < 0)
            continue;
        if (r < 0) {
            e->failed_mailboxes++;
            continue;
        }
        w->created[pc->side] = true;
        if (state_db_mailbox_insert(e->db, w->key, w->keylen, pc->subscribe, &w->idx) < 0 ||
            state_db_commit(e->db) < 0 || state_db_begin(e->db) < 0) {
            rc = db_failed(e);
            continue;
        }
        char *pretty = pretty_name(e, w->key, w->keylen);
        log_info(e->log, "database", NULL, "Created mailbox %s", pretty ? pretty : "");
        free(pretty);
    }
    return rc;
}

/*
 * Merges both listings into the list of mailboxes to synchronize:
 * mailboxes on one side only are created on the other (all CREATEs at
 * once), subscriptions are kept in step, new mailboxes recorded. A mailbox
 * that could not be created is left out.
 */
int sync_mailbox_list(struct sync_engine *e, struct mbox_work **out, size_t *nout)
{
    size_t cap = e->listing[0].count + e->listing[1].count + 1;
    struct list_merge mg = {.e = e};
    nameindex_init(&mg.by_key, work_key_at, &mg);
    mg.work = calloc(cap, sizeof *mg.work);
    mg.creates = calloc(cap, sizeof *mg.creates);
    if (!mg.work || !mg.creates) {
        free(mg.work);
        free(mg.creates);
        return -ENOMEM;
    }
    int rc = 0;
    for (int s = 0; s < 2 && rc == 0; s++)
        for (size_t i = 0; i < e->listing[s].count && rc == 0; i++)
            rc = merge_one(&mg, &e->listing[s].items[i]);
    rc = merge_settle_creates(&mg, rc);
    nameindex_fini(&mg.by_key);
    free(mg.creates);
    size_t o = 0;
    for (size_t k = 0; k < mg.n; k++) {
        if (rc == 0 && mg.work[k].idx >= 0)
            mg.work[o++] = mg.work[k];
        else
            free(mg.work[k].key);
    }
    if (rc < 0) {
        free(mg.work);
        return rc;
    }
    *out = mg.work;
    *nout = o;
    return 0;
}
