/*
 * Listing both servers: the LIST (and LIST-STATUS) commands with the
 * configured patterns, their untagged answers, internal mailbox names, and
 * the list-mailbox / ignore-mailbox filters.
 */
#include "internal.h"

/* ------------------------------------------------------------------ */
/* names */

void listing_fini(struct listing *l)
{
    for (size_t i = 0; i < l->count; i++) {
        free(l->items[i].server_name);
        free(l->items[i].key);
    }
    free(l->items);
    nameindex_fini(&l->by_key);
    nameindex_fini(&l->by_name);
    memset(l, 0, sizeof *l);
}

static const char *listed_key_at(const void *ctx, size_t pos, size_t *len)
{
    const struct listing *l = ctx;
    *len = l->items[pos].keylen;
    return l->items[pos].key;
}

static const char *listed_name_at(const void *ctx, size_t pos, size_t *len)
{
    const struct listing *l = ctx;
    *len = strlen(l->items[pos].server_name);
    return l->items[pos].server_name;
}

/* Indexes the item just added (see struct listing); without memory the
 * lookups compare with each item, as they can. */
static void listing_index_last(struct listing *l)
{
    if (!l->by_key.name)
        nameindex_init(&l->by_key, listed_key_at, l);
    if (!l->by_name.name)
        nameindex_init(&l->by_name, listed_name_at, l);
    nameindex_add(&l->by_key);
    nameindex_add(&l->by_name);
}

/* Refused names (listing_check_names) are not found: nothing is done
 * with them on either side. The first item of the listing with that key
 * that is not refused. */
struct listed *listing_find(struct listing *l, const char *key, size_t keylen)
{
    if (l->by_key.failed || l->by_key.count != l->count) {
        for (size_t i = 0; i < l->count; i++)
            if (!l->items[i].refused && l->items[i].keylen == keylen &&
                memcmp(l->items[i].key, key, keylen) == 0)
                return &l->items[i];
        return NULL;
    }
    size_t cursor = 0, best = SIZE_MAX, pos;
    while ((pos = nameindex_next(&l->by_key, key, keylen, &cursor)) != SIZE_MAX)
        if (pos < best && !l->items[pos].refused)
            best = pos;
    return best == SIZE_MAX ? NULL : &l->items[best];
}

/* Internal name -> server name: NUL -> delimiter, reference prefixed. */
char *server_name(struct sync_engine *e, enum side s, const char *key, size_t keylen)
{
    const struct server_config *sc = s == SIDE_LOCAL ? &e->cfg->local : &e->cfg->remote;
    const char *ref = sc->list_reference ? sc->list_reference : "";
    size_t rl = strlen(ref);
    char *out = malloc(rl + keylen + 1);
    if (!out)
        return NULL;
    memcpy(out, ref, rl);
    for (size_t i = 0; i < keylen; i++)
        out[rl + i] = key[i] == '\0' ? e->listing[s].delimiter : key[i];
    out[rl + keylen] = '\0';
    return out;
}

/* A printable internal name (NUL shown as the local delimiter, or '/'). */
char *pretty_name(struct sync_engine *e, const char *key, size_t keylen)
{
    char d = e->listing[SIDE_LOCAL].delimiter ? e->listing[SIDE_LOCAL].delimiter : '/';
    char *out = malloc(keylen + 1);
    if (!out)
        return NULL;
    for (size_t i = 0; i < keylen; i++)
        out[i] = key[i] == '\0' ? d : key[i];
    out[keylen] = '\0';
    return out;
}
/* ------------------------------------------------------------------ */
/* LIST */

/* The listing entry a LSUB or STATUS answer names (by server name). A
 * STATUS follows its LIST line: the last entry is looked at first.
 * `inbox_any_case`: INBOX may be spelled in any case (a STATUS or LSUB
 * answer about it); never for LIST lines, where "Inbox" beside "INBOX" is
 * another name, to be refused by the name checks. */
static struct listed *listed_by_name(struct listing *l, const char *n, size_t nlen,
                                     bool inbox_any_case)
{
    /* server names are listed once each (list_list): the one with that
     * name, found by the index, unless INBOX may be spelled otherwise */
    bool inbox = inbox_any_case && nlen == 5 && strncasecmp(n, "INBOX", 5) == 0;
    if (!inbox && !l->by_name.failed && l->by_name.count == l->count) {
        size_t cursor = 0;
        size_t pos = nameindex_next(&l->by_name, n, nlen, &cursor);
        return pos == SIZE_MAX ? NULL : &l->items[pos];
    }
    for (size_t j = 0; j < l->count; j++) {
        struct listed *it = &l->items[j == 0 ? l->count - 1 : j - 1];
        size_t len = strlen(it->server_name);
        if (len == nlen && (memcmp(it->server_name, n, nlen) == 0 ||
                            (inbox_any_case && nlen == 5 && strncasecmp(n, "INBOX", 5) == 0 &&
                             strncasecmp(it->server_name, "INBOX", 5) == 0)))
            return it;
    }
    return NULL;
}

/* An untagged LSUB: subscriptions of a server without LIST-EXTENDED. */
static void list_lsub(struct listing *l, const struct imap_response *r)
{
    const char *n;
    size_t nlen;
    struct listed *it;
    if (imap_value_string(&r->args[3], &n, &nlen) && (it = listed_by_name(l, n, nlen, true)))
        it->subscribed = true;
}

/* The delimiter of a LIST line: NUL for NIL (a flat namespace). */
static char list_delimiter_of(const struct imap_value *delim)
{
    const char *ds;
    size_t dl;
    if (delim->type != IMAP_NIL && imap_value_string(delim, &ds, &dl) && dl == 1)
        return ds[0];
    return '\0';
}

/* Adds a listed mailbox: its server name, and its key (the name without
 * the list reference, hierarchy delimiters as NUL, INBOX in capitals). */
static void listed_add(struct listing *l, const char *n, size_t nlen, size_t rl, bool is_inbox,
                       char d, bool selectable, bool subscribed)
{
    if (l->count >= LISTING_MAX) {
        l->too_many = true;
        return;
    }
    struct listed *grown = array_reserve(l->items, &l->cap, l->count + 1, sizeof *grown, 32);
    if (!grown) {
        l->failed = true;
        return;
    }
    l->items = grown;
    struct listed *it = &l->items[l->count];
    memset(it, 0, sizeof *it);
    it->server_name = strndup(n, nlen);
    it->keylen = is_inbox && rl == 0 ? 5 : nlen - rl;
    it->key = malloc(it->keylen + 1);
    if (!it->server_name || !it->key) {
        free(it->server_name);
        free(it->key);
        l->failed = true;
        return;
    }
    if (is_inbox && rl == 0)
        memcpy(it->key, "INBOX", 5);
    else
        memcpy(it->key, n + rl, it->keylen);
    it->key[it->keylen] = '\0';
    if (d)
        for (size_t i = 0; i < it->keylen; i++)
            if (it->key[i] == d)
                it->key[i] = '\0';
    it->selectable = selectable;
    it->subscribed = subscribed;
    l->count++;
    listing_index_last(l);
}

/* An untagged LIST: the delimiter (LIST "" ""), or a mailbox. */
static void list_list(struct side_state *st, const struct imap_response *r)
{
    struct listing *l = st->listing;
    const struct imap_value *attrs = &r->args[1], *name = &r->args[3];
    const char *n;
    size_t nlen;
    if (attrs->type != IMAP_LIST || !imap_value_string(name, &n, &nlen))
        return;
    char d = list_delimiter_of(&r->args[2]);
    if (nlen == 0) {
        /* answer to LIST "" "": the hierarchy delimiter */
        l->delimiter = d;
        l->delimiter_known = true;
        return;
    }
    bool is_inbox = nlen == 5 && strncasecmp(n, "INBOX", 5) == 0;
    if (!l->delimiter_known && !is_inbox) {
        l->delimiter = d;
        l->delimiter_known = true;
    }
    bool selectable = true, subscribed = false;
    for (size_t i = 0; i < attrs->count; i++) {
        if (imap_value_is_atom(&attrs->items[i], "\\NoSelect") ||
            imap_value_is_atom(&attrs->items[i], "\\NonExistent"))
            selectable = false;
        if (imap_value_is_atom(&attrs->items[i], "\\Subscribed"))
            subscribed = true;
    }
    const struct sync_engine *e = st->e;
    const struct server_config *sc = st->side == SIDE_LOCAL ? &e->cfg->local : &e->cfg->remote;
    const char *ref = sc->list_reference ? sc->list_reference : "";
    size_t rl = strlen(ref);
    if (nlen < rl || memcmp(n, ref, rl) != 0)
        return; /* outside the reference: not ours */
    if (listed_by_name(l, n, nlen, false))
        return; /* listed by two patterns (one LIST per pattern) */
    listed_add(l, n, nlen, rl, is_inbox, d, selectable, subscribed);
}

/* An untagged STATUS of a listed mailbox. */
static void list_status(struct listing *l, const struct imap_response *r)
{
    const char *n;
    size_t nlen;
    struct listed *it;
    if (!imap_value_string(&r->args[1], &n, &nlen) || !(it = listed_by_name(l, n, nlen, true)))
        return;
    const struct imap_value *v = &r->args[2];
    for (size_t k = 0; k + 1 < v->count; k += 2) {
        if (imap_value_is_atom(&v->items[k], "UIDVALIDITY"))
            imap_value_u32(&v->items[k + 1], &it->uidvalidity);
        else if (imap_value_is_atom(&v->items[k], "UIDNEXT"))
            imap_value_u32(&v->items[k + 1], &it->uidnext);
        else if (imap_value_is_atom(&v->items[k], "HIGHESTMODSEQ"))
            imap_value_u64(&v->items[k + 1], &it->highestmodseq);
        else if (imap_value_is_atom(&v->items[k], "MESSAGES"))
            it->has_messages = imap_value_u32(&v->items[k + 1], &it->messages);
    }
    it->has_status = true;
}

static void list_untagged(void *ctx, const struct imap_response *r)
{
    struct side_state *st = ctx;
    if (r->status != IMAP_STATUS_NONE || r->nargs < 1)
        return;
    if (imap_value_is_atom(&r->args[0], "LSUB") && r->nargs >= 4)
        list_lsub(st->listing, r);
    else if (imap_value_is_atom(&r->args[0], "LIST") && r->nargs >= 4)
        list_list(st, r);
    else if (imap_value_is_atom(&r->args[0], "STATUS") && r->nargs >= 3 &&
             r->args[2].type == IMAP_LIST)
        list_status(st->listing, r);
}

static const struct imap_handler list_handler = {list_untagged, NULL};

/* The i-th LIST pattern with NUL replaced by the delimiter (caller frees):
 * a command-line name uses the local delimiter, made the side's own. */
static char *pattern_at(struct sync_engine *e, size_t i, char delim)
{
    const char *p = "*";
    size_t len = 1;
    char ld = '\0';
    if (e->opts.nmailboxes) {
        p = e->opts.mailboxes[i];
        len = strlen(p);
        ld = e->listing[SIDE_LOCAL].delimiter;
    } else if (e->cfg->list_mailbox_count) {
        p = e->cfg->list_mailbox[i].data;
        len = e->cfg->list_mailbox[i].len;
    }
    char *out = malloc(len + 1);
    if (!out)
        return NULL;
    for (size_t k = 0; k < len; k++)
        out[k] = p[k] == '\0' || (ld && p[k] == ld) ? delim : p[k];
    out[len] = '\0';
    return out;
}

void list_cmds_free(struct list_cmds *lc)
{
    imap_cmd_free(&lc->delim);
    for (size_t i = 0; i < lc->n; i++)
        imap_cmd_free(&lc->cmds[i]);
    free(lc->cmds);
    memset(lc, 0, sizeof *lc);
}

static void list_cmds_add(struct list_cmds *lc, struct imap_cmd *cmd)
{
    /* NOLINTNEXTLINE(bugprone-sizeof-expression): an array of pointers */
    struct imap_cmd **v = array_reserve(lc->cmds, &lc->cap, lc->n + 1, sizeof *v, 4);
    if (!v) {
        imap_cmd_free(&cmd); /* answered later, ignored */
        lc->nomem = true;
        return;
    }
    lc->cmds = v;
    if (!cmd)
        lc->nomem = true;
    lc->cmds[lc->n++] = cmd;
}

/* The STATUS items that tell whether a mailbox changed on a server of
 * tier t: MESSAGES where expunges do not move HIGHESTMODSEQ, or where
 * there is no HIGHESTMODSEQ. */
const char *status_items(enum tier t)
{
    return t == TIER_QRESYNC     ? "UIDVALIDITY UIDNEXT HIGHESTMODSEQ"
           : t == TIER_CONDSTORE ? "UIDVALIDITY UIDNEXT MESSAGES HIGHESTMODSEQ"
                                 : "UIDVALIDITY UIDNEXT MESSAGES";
}

/*
 * Sends the LIST commands of one side with the configured patterns; the
 * caller waits. With LIST-EXTENDED, one LIST asking for subscriptions and
 * (LIST-STATUS) the state of each mailbox; without, one LIST and one LSUB
 * per pattern. Only what the server is known to offer is used
 * (imap_client_may_use: this may run before the login's capabilities are
 * known). Returns 0, -ENOMEM, or ERR_UNSUPPORTED (logged).
 */
static int list_send(struct sync_engine *e, struct side_state *st, struct list_cmds *lc)
{
    struct imap_client *c = st->c;
    const struct server_config *sc = st->side == SIDE_LOCAL ? &e->cfg->local : &e->cfg->remote;
    const char *ref = sc->list_reference ? sc->list_reference : "";
    char delim = st->listing->delimiter;
    bool extended = imap_client_may_use(c, "LIST-EXTENDED");
    if (e->cfg->list_select_opts && *e->cfg->list_select_opts && !extended) {
        log_error(e->log, side_name[st->side], NULL,
                  "list-select-opts needs the LIST-EXTENDED extension, which the server does not "
                  "offer");
        return ERR_UNSUPPORTED;
    }

    size_t n = e->opts.nmailboxes           ? e->opts.nmailboxes
               : e->cfg->list_mailbox_count ? e->cfg->list_mailbox_count
                                            : 1;
    char **pats = calloc(n, sizeof *pats);
    if (!pats)
        return -ENOMEM;
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++)
        if (!(pats[i] = pattern_at(e, i, delim)))
            rc = -ENOMEM;
    if (rc == 0 && extended) {
        /* every pattern quoted by imap/command.h: one that cannot be
         * fails the LIST */
        struct imap_cmdbuf all = {0};
        char why[200];
        for (size_t i = 0; i < n && rc == 0; i++)
            rc = imap_cmdbuf_append(&all, why, sizeof why, "%a%P", i ? " " : "", pats[i]);
        if (rc == 0 && all.data) {
            char opts[512] = "";
            if (e->cfg->list_select_opts && *e->cfg->list_select_opts)
                snprintf(opts, sizeof opts, "(%s) ", e->cfg->list_select_opts);
            st->listing->with_status = imap_client_may_use(c, "LIST-STATUS");
            char ret[128];
            snprintf(ret, sizeof ret, " RETURN (SUBSCRIBED%s%s%s)",
                     st->listing->with_status ? " STATUS (" : "",
                     st->listing->with_status ? status_items(tier_of(c)) : "",
                     st->listing->with_status ? ")" : "");
            list_cmds_add(lc, imap_client_send(c, n > 1 ? "LIST %a%s (%a)%a" : "LIST %a%s %a%a",
                                               opts, ref, all.data, ret));
        }
        imap_cmdbuf_fini(&all);
    } else if (rc == 0) {
        st->listing->with_status = false;
        for (size_t i = 0; i < n; i++)
            list_cmds_add(lc, imap_client_send(c, "LIST %s %P", ref, pats[i]));
        for (size_t i = 0; i < n; i++)
            list_cmds_add(lc, imap_client_send(c, "LSUB %s %P", ref, pats[i]));
    }
    for (size_t i = 0; i < n; i++)
        free(pats[i]);
    free(pats);
    return rc < 0 ? rc : lc->nomem ? -ENOMEM : 0;
}

/* Whether the LIST patterns need the hierarchy delimiters first. */
bool patterns_need_delimiter(const struct sync_engine *e)
{
    if (e->opts.nmailboxes)
        return true; /* command-line names use the local delimiter */
    for (size_t i = 0; i < e->cfg->list_mailbox_count; i++)
        if (memchr(e->cfg->list_mailbox[i].data, '\0', e->cfg->list_mailbox[i].len))
            return true;
    return false;
}

/* Sends `LIST ref ""` (the delimiter) and, if `patterns` too, the real
 * LIST commands, with the listing handler installed. With keep_delimiter
 * (the relistings of --watch), a delimiter already known is not asked
 * again: lc->delim stays NULL and lc->delim_known is set. */
static int list_send_both(struct sync_engine *e, struct side_state *st, bool patterns,
                          bool keep_delimiter, struct list_cmds *lc)
{
    const struct server_config *sc = st->side == SIDE_LOCAL ? &e->cfg->local : &e->cfg->remote;
    /* a delimiter known from an earlier listing on the same connection
     * cannot have changed */
    bool known = keep_delimiter && st->listing->delimiter_known;
    char delimiter = st->listing->delimiter;
    listing_fini(st->listing);
    st->listing->delimiter_known = known;
    st->listing->delimiter = known ? delimiter : '\0';
    list_cmds_free(lc);
    imap_client_set_handler(st->c, &list_handler, st);
    lc->delim_known = known;
    if (!known) {
        lc->delim =
            imap_client_send(st->c, "LIST %s \"\"", sc->list_reference ? sc->list_reference : "");
        if (!lc->delim)
            return -ENOMEM;
    }
    return patterns ? list_send(e, st, lc) : 0;
}

/* The login hook: the LISTs ride along with the login, and the
 * speculative INBOX's SELECT behind them where the server is known to
 * offer QRESYNC. engine_relist asks again if the server refused them (an
 * extension it advertised on the previous run may have gone). */
void early_list(struct imap_client *c, void *ctx)
{
    struct side_state *st = ctx;
    struct sync_engine *e = st->e;
    struct list_cmds *lc = &e->early_list[st->side];
    /* list-select-opts without a known LIST-EXTENDED: listed after the
     * login, where a missing extension is an error */
    if (e->cfg->list_select_opts && *e->cfg->list_select_opts &&
        !imap_client_may_use(c, "LIST-EXTENDED"))
        return;
    if (list_send_both(e, st, true, false, lc) < 0 || lc->n == 0) {
        list_cmds_free(lc);
        return;
    }
    lc->early = true;
    struct mbox_ctx *spec = e->spec;
    if (spec && spec->st[st->side].how == TIER_QRESYNC && tier_of(c) == TIER_QRESYNC)
        select_send_side(spec, st->side, SELECT_AFTER, lc->cmds[lc->n - 1]);
}

/* Waits for a side's LIST commands; the first failure is returned. */
static int list_wait(struct list_cmds *lc)
{
    int rc = lc->nomem ? -ENOMEM : 0;
    for (size_t i = 0; i < lc->n; i++) {
        int r = lc->cmds[i] ? imap_cmd_wait(lc->cmds[i]) : -ENOMEM;
        if (r < 0 && rc == 0)
            rc = r;
    }
    list_cmds_free(lc);
    return rc;
}

/* Lists both servers (delimiters, mailboxes, LIST-STATUS), using the
 * LISTs sent behind the login if there are some. */
int engine_relist(struct sync_engine *e)
{
    struct side_state *st = e->list_st;
    struct list_cmds lc[2] = {{0}, {0}};
    bool early[2];
    /* Both queries go out together unless the patterns must be spelled
     * with the delimiter that the first one tells. */
    bool pipelined = !patterns_need_delimiter(e);
    int rc = 0;
    for (int s = 0; s < 2; s++) {
        st[s].c = e->client[s];
        early[s] = e->early_list[s].early;
        if (early[s]) {
            lc[s] = e->early_list[s];
            memset(&e->early_list[s], 0, sizeof e->early_list[s]);
        } else {
            list_cmds_free(&e->early_list[s]);
            int r = list_send_both(e, &st[s], pipelined, true, &lc[s]);
            if (r < 0)
                rc = r;
        }
    }
    for (int s = 0; s < 2; s++) {
        if (lc[s].delim_known)
            continue;
        int r = lc[s].delim ? imap_cmd_wait(lc[s].delim) : -ENOMEM;
        imap_cmd_free(&lc[s].delim);
        if (r < 0 && rc == 0) {
            log_error(e->log, side_name[s], NULL, "%s", imap_client_reason(e->client[s]));
            rc = r;
        }
    }
    if (rc == 0 && !pipelined)
        for (int s = 0; s < 2; s++)
            if ((rc = list_send(e, &st[s], &lc[s])) < 0)
                break;
    for (int s = 0; s < 2; s++) {
        if (rc < 0) {
            list_wait(&lc[s]); /* nothing left in flight */
            continue;
        }
        int r = list_wait(&lc[s]);
        if ((r == ERR_NO || r == ERR_BAD) && early[s]) {
            /* sent before the server's capabilities were known: ask again
             * the way they allow, without the INBOX selected behind */
            drop_speculative(e);
            r = list_send_both(e, &st[s], true, false, &lc[s]);
            if (r == 0)
                r = lc[s].delim ? imap_cmd_wait(lc[s].delim) : -ENOMEM;
            int r2 = list_wait(&lc[s]);
            if (r == 0)
                r = r2;
        }
        if (r < 0) {
            if (r != ERR_UNSUPPORTED)
                log_error(e->log, side_name[s], NULL, "%s", imap_client_reason(e->client[s]));
            rc = r;
        }
        if (e->listing[s].failed)
            rc = -ENOMEM;
        if (e->listing[s].too_many) {
            log_error(e->log, side_name[s], NULL,
                      "the server lists more than %d mailboxes; refusing them", LISTING_MAX);
            rc = ERR_TOO_BIG;
        }
        /* not set_handler(NULL): INBOX may be selected behind the LIST
         * already, with its own handler */
        imap_client_release(e->client[s], &st[s]);
        /* With LIST-STATUS every selectable mailbox comes with a STATUS;
         * one without is a name the server lists but cannot open (Dovecot
         * lists a deleted parent of a surviving child that way). */
        if (rc == 0 && e->listing[s].with_status)
            for (size_t i = 0; i < e->listing[s].count; i++)
                if (!e->listing[s].items[i].has_status)
                    e->listing[s].items[i].selectable = false;
    }
    if (rc < 0)
        return rc;
    if ((e->listing[0].delimiter == '\0') != (e->listing[1].delimiter == '\0')) {
        log_error(e->log, NULL, NULL,
                  "local and remote namespaces are not both flat or both hierarchical");
        return ERR_CONFIG;
    }
    listing_check_names(e);
    return 0;
}

/*
 * STATUS for the mailboxes the listing gave no state for (no LIST-STATUS,
 * or not the items this tier needs), where that state could let the
 * mailbox be skipped: on every side QRESYNC or CONDSTORE, or a mailbox
 * that was empty (on a side without mod-sequences, only an empty mailbox
 * cannot have had a flag change). All of them go out at once on both
 * servers: one round trip.
 */
int status_fill(struct sync_engine *e, const struct mbox_work *work, size_t nwork)
{
    struct cmd_list {
        struct imap_cmd **v;
        size_t n, cap;
    } sent[2] = {{NULL, 0, 0}, {NULL, 0, 0}};
    int rc = 0;
    for (size_t i = 0; i < nwork && rc == 0; i++) {
        const struct mbox_work *w = &work[i];
        struct listed *it[2];
        struct state_side db;
        bool candidate = true, need[2];
        int64_t count = -1;
        for (int s = 0; s < 2; s++) {
            it[s] = listing_find(&e->listing[s], w->key, w->keylen);
            if (!it[s] || state_db_side_get(e->db, w->idx, (enum side)s, &db) != 1)
                candidate = false;
            need[s] = it[s] &&
                      (!it[s]->has_status || (e->tier[s] != TIER_QRESYNC && !it[s]->has_messages));
        }
        if (!candidate || (!need[0] && !need[1]))
            continue;
        for (int s = 0; s < 2 && candidate; s++) {
            if (e->tier[s] != TIER_PLAIN)
                continue;
            if (count < 0 && state_db_mapping_count(e->db, w->idx, &count) < 0)
                return ERR_DB;
            candidate = count == 0;
        }
        for (int s = 0; s < 2 && candidate; s++) {
            if (!need[s])
                continue;
            struct cmd_list *cl = &sent[s];
            if (cl->n == 0) {
                /* the speculative INBOX must not see these answers */
                drop_speculative(e);
                imap_client_set_handler(e->client[s], &list_handler, &e->list_st[s]);
            }
            /* NOLINTNEXTLINE(bugprone-sizeof-expression): an array of pointers */
            struct imap_cmd **v = array_reserve(cl->v, &cl->cap, cl->n + 1, sizeof *v, 16);
            if (!v) {
                rc = -ENOMEM;
                break;
            }
            cl->v = v;
            cl->v[cl->n++] = imap_client_send(e->client[s], "STATUS %m (%a)", it[s]->server_name,
                                              status_items(e->tier[s]));
        }
    }
    for (int s = 0; s < 2; s++) {
        for (size_t k = 0; k < sent[s].n; k++) {
            /* a mailbox the server refuses is simply not skipped */
            int r = sent[s].v[k] ? imap_cmd_wait(sent[s].v[k]) : -ENOMEM;
            if (r < 0 && r != ERR_NO && r != ERR_BAD && rc == 0)
                rc = r;
            imap_cmd_free(&sent[s].v[k]);
        }
        if (sent[s].n)
            imap_client_release(e->client[s], &e->list_st[s]);
        free(sent[s].v);
    }
    return rc;
}

/* Why a listed name cannot be synchronized (buf may receive the reason),
 * or NULL. */
static const char *name_problem(struct sync_engine *e, enum side s, const struct listed *it,
                                char *buf, size_t len)
{
    const char *p = imap_mailbox_name_problem(it->server_name, strlen(it->server_name));
    if (p)
        return p;
    const char *k = it->key;
    size_t n = it->keylen;
    if (n == 0 || k[0] == '\0' || k[n - 1] == '\0' || memmem(k, n, "\0\0", 2))
        return "has an empty hierarchy level";
    /* on the other server, its delimiter would split the name in two */
    char od = e->listing[OTHER(s)].delimiter;
    if (od && memchr(k, od, n)) {
        snprintf(buf, len, "contains '%c', the hierarchy delimiter of the %s server", od,
                 side_name[OTHER(s)]);
        return buf;
    }
    /* INBOX is case-insensitive: "Inbox" is INBOX to a server, so another
     * spelling of it, or of a name below it, would name the same mailbox
     * twice. A server that lists INBOX itself as "inbox" is taken at its
     * word, unless it lists "INBOX" as well. */
    size_t first = strnlen(k, n);
    if (first == 5 && strncasecmp(k, "INBOX", 5) == 0) {
        bool spelled = strncmp(it->server_name + strlen(it->server_name) - n, "INBOX", 5) == 0;
        if (first < n && memcmp(k, "INBOX", 5) != 0)
            return "differs from a name below INBOX only by the case of INBOX";
        if (first == n && !spelled) {
            const struct listing *l = &e->listing[s];
            for (size_t i = 0; i < l->count; i++)
                if (strcmp(l->items[i].server_name + strlen(l->items[i].server_name) -
                               l->items[i].keylen,
                           "INBOX") == 0)
                    return "differs from INBOX only by case";
        }
    }
    return NULL;
}

/*
 * Names that cannot be represented on the other server are refused, each
 * with one error, and then ignored on both sides: nothing is created,
 * selected or copied for them (listing_find does not see them).
 */
void listing_check_names(struct sync_engine *e)
{
    e->refused_names = 0;
    for (int s = 0; s < 2; s++) {
        struct listing *l = &e->listing[s];
        for (size_t i = 0; i < l->count; i++) {
            struct listed *it = &l->items[i];
            /* only mailboxes are synchronized: the reference itself or a
             * \NoSelect level is never acted on */
            if (!it->selectable || it->keylen == 0)
                continue;
            char buf[120];
            const char *why = name_problem(e, (enum side)s, it, buf, sizeof buf);
            if (!why)
                continue;
            it->refused = true;
            e->refused_names++;
            log_error(e->log, side_name[s], NULL, "mailbox \"%s\" is not synchronized: its name %s",
                      it->server_name, why);
        }
    }
}

int compile_ignore(struct sync_engine *e)
{
    if (!e->cfg->ignore_mailbox)
        return 0;
    int errcode;
    PCRE2_SIZE off;
    e->ignore_re = pcre2_compile((PCRE2_SPTR)e->cfg->ignore_mailbox, PCRE2_ZERO_TERMINATED, 0,
                                 &errcode, &off, NULL);
    if (!e->ignore_re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(errcode, msg, sizeof msg);
        log_error(e->log, NULL, NULL, "ignore-mailbox: %s at offset %zu", (char *)msg, (size_t)off);
        return ERR_CONFIG;
    }
    return 0;
}
