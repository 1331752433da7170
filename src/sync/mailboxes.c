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
        log_error(e->log, side_name[pc->side], pc->name, "cannot create mailbox: %s",
                  imap_client_error(c));
    else
        log_info(e->log, side_name[pc->side], pc->name, "Created mailbox");
    if (pc->subscribe) {
        int rs = pc->sub ? imap_cmd_wait(pc->sub) : -ENOMEM;
        if (r == 0 && rs < 0)
            log_error(e->log, side_name[pc->side], pc->name, "cannot subscribe: %s",
                      imap_client_error(c));
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
                  subscribe ? "subscribe" : "unsubscribe", imap_client_error(e->client[s]));
    free(name);
    return r;
}

/* Merges both listings into the work list, creating and subscribing as
 * needed, and recording mailboxes in the database. */
int sync_mailbox_list(struct sync_engine *e, struct mbox_work **out, size_t *nout)
{
    size_t cap = e->listing[0].count + e->listing[1].count + 1, n = 0, ncreate = 0;
    struct mbox_work *work = calloc(cap, sizeof *work);
    struct pending_create *creates = calloc(cap, sizeof *creates);
    if (!work || !creates) {
        free(work);
        free(creates);
        return -ENOMEM;
    }
    int rc = 0;
    for (int s = 0; s < 2 && rc == 0; s++) {
        for (size_t i = 0; i < e->listing[s].count; i++) {
            struct listed *it = &e->listing[s].items[i];
            bool seen = false;
            for (size_t k = 0; k < n; k++)
                if (work[k].keylen == it->keylen && memcmp(work[k].key, it->key, it->keylen) == 0)
                    seen = true;
            if (seen || ignored(e, it->key, it->keylen))
                continue;
            struct listed *l = listing_find(&e->listing[SIDE_LOCAL], it->key, it->keylen);
            struct listed *r = listing_find(&e->listing[SIDE_REMOTE], it->key, it->keylen);
            bool lex = l && l->selectable, rex = r && r->selectable;
            if (!lex && !rex)
                continue;
            char *pretty = pretty_name(e, it->key, it->keylen);
            int64_t idx = 0;
            bool dbsub = false;
            int found = state_db_mailbox_find(e->db, it->key, it->keylen, &idx, &dbsub);
            if (found < 0) {
                log_error(e->log, "database", NULL, "%s", state_db_error(e->db));
                free(pretty);
                rc = ERR_DB;
                break;
            }
            if (lex && rex) {
                bool ls = l->subscribed, rs = r->subscribed;
                if (found) {
                    if (ls != rs) {
                        /* one side changed: follow it */
                        bool want = !dbsub;
                        enum side fix = (ls == want) ? SIDE_REMOTE : SIDE_LOCAL;
                        if (set_subscription(e, fix, it->key, it->keylen, want) == 0)
                            state_db_mailbox_set_subscribed(e->db, idx, want);
                    } else if (ls != dbsub) {
                        state_db_mailbox_set_subscribed(e->db, idx, ls);
                    }
                } else {
                    bool sub = ls || rs;
                    if (state_db_mailbox_insert(e->db, it->key, it->keylen, sub, &idx) < 0) {
                        log_error(e->log, "database", NULL, "%s", state_db_error(e->db));
                        free(pretty);
                        rc = ERR_DB;
                        break;
                    }
                    log_info(e->log, "database", NULL, "Created mailbox %s", pretty);
                    if (sub && !ls)
                        set_subscription(e, SIDE_LOCAL, it->key, it->keylen, true);
                    if (sub && !rs)
                        set_subscription(e, SIDE_REMOTE, it->key, it->keylen, true);
                }
            } else {
                enum side have = lex ? SIDE_LOCAL : SIDE_REMOTE;
                if (found) {
                    log_error(e->log, "database", NULL,
                              "Mailbox %s exists on the %s server only (was it deleted or "
                              "renamed on the other?). Run `interimap --target=database "
                              "--delete %s` to forget it, or --rename/--delete to act on both",
                              pretty, side_name[have], pretty);
                    free(pretty);
                    e->failed_mailboxes++;
                    continue;
                }
                /* created below, once every CREATE has been answered */
                struct pending_create *pc = &creates[ncreate++];
                pc->work = n;
                pc->side = OTHER(have);
                pc->subscribe = (lex ? l : r)->subscribed;
                if (create_send(e, pc, it->key, it->keylen) < 0) {
                    free(pretty);
                    rc = -ENOMEM;
                    break;
                }
                idx = -1;
            }
            free(pretty);
            if (idx >= 0 && (state_db_commit(e->db) < 0 || state_db_begin(e->db) < 0)) {
                log_error(e->log, "database", NULL, "%s", state_db_error(e->db));
                rc = ERR_DB;
                break;
            }
            work[n].key = malloc(it->keylen + 1);
            if (!work[n].key) {
                rc = -ENOMEM;
                break;
            }
            memcpy(work[n].key, it->key, it->keylen + 1);
            work[n].keylen = it->keylen;
            work[n].idx = idx;
            n++;
        }
    }
    /* every CREATE is answered, even after a failure, so none is left in
     * flight; a mailbox enters the database only once it exists on both */
    for (size_t k = 0; k < ncreate; k++) {
        struct pending_create *pc = &creates[k];
        struct mbox_work *w = &work[pc->work];
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
            log_error(e->log, "database", NULL, "%s", state_db_error(e->db));
            rc = ERR_DB;
            continue;
        }
        char *pretty = pretty_name(e, w->key, w->keylen);
        log_info(e->log, "database", NULL, "Created mailbox %s", pretty ? pretty : "");
        free(pretty);
    }
    free(creates);
    /* drop the mailboxes that could not be created */
    size_t o = 0;
    for (size_t k = 0; k < n; k++) {
        if (rc == 0 && work[k].idx >= 0)
            work[o++] = work[k];
        else
            free(work[k].key);
    }
    if (rc < 0) {
        free(work);
        return rc;
    }
    *out = work;
    *nout = o;
    return 0;
}
