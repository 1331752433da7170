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
    memset(l, 0, sizeof *l);
}

/* Refused names (listing_check_names) are not found: nothing is done
 * with them on either side. */
struct listed *listing_find(struct listing *l, const char *key, size_t keylen)
{
    for (size_t i = 0; i < l->count; i++)
        if (!l->items[i].refused && l->items[i].keylen == keylen &&
            memcmp(l->items[i].key, key, keylen) == 0)
            return &l->items[i];
    return NULL;
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

static void list_untagged(void *ctx, const struct imap_response *r)
{
    struct side_state *st = ctx;
    struct listing *l = st->listing;
    struct sync_engine *e = st->e;
    if (r->status != IMAP_STATUS_NONE || r->nargs < 1)
        return;
    if (imap_value_is_atom(&r->args[0], "LIST") && r->nargs >= 4) {
        const struct imap_value *attrs = &r->args[1], *delim = &r->args[2], *name = &r->args[3];
        const char *n;
        size_t nlen;
        if (attrs->type != IMAP_LIST || !imap_value_string(name, &n, &nlen))
            return;
        char d = '\0';
        if (delim->type != IMAP_NIL) {
            const char *ds;
            size_t dl;
            if (imap_value_string(delim, &ds, &dl) && dl == 1)
                d = ds[0];
        }
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
        const struct server_config *sc = st->side == SIDE_LOCAL ? &e->cfg->local : &e->cfg->remote;
        const char *ref = sc->list_reference ? sc->list_reference : "";
        size_t rl = strlen(ref);
        if (nlen < rl || memcmp(n, ref, rl) != 0)
            return; /* outside the reference: not ours */
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
        return;
    }
    if (imap_value_is_atom(&r->args[0], "STATUS") && r->nargs >= 3 &&
        r->args[2].type == IMAP_LIST) {
        const char *n;
        size_t nlen;
        if (!imap_value_string(&r->args[1], &n, &nlen))
            return;
        /* a STATUS follows its LIST line: look there first */
        for (size_t j = 0; j < l->count; j++) {
            size_t i = j == 0 ? l->count - 1 : j - 1;
            struct listed *it = &l->items[i];
            if (strlen(it->server_name) != nlen || memcmp(it->server_name, n, nlen) != 0)
                continue;
            const struct imap_value *v = &r->args[2];
            for (size_t k = 0; k + 1 < v->count; k += 2) {
                if (imap_value_is_atom(&v->items[k], "UIDVALIDITY"))
                    imap_value_u32(&v->items[k + 1], &it->uidvalidity);
                else if (imap_value_is_atom(&v->items[k], "UIDNEXT"))
                    imap_value_u32(&v->items[k + 1], &it->uidnext);
                else if (imap_value_is_atom(&v->items[k], "HIGHESTMODSEQ"))
                    imap_value_u64(&v->items[k + 1], &it->highestmodseq);
            }
            it->has_status = true;
            break;
        }
    }
}

static const struct imap_handler list_handler = {list_untagged, NULL};

/* Appends one pattern, NUL replaced by the delimiter, as a quoted string
 * (encoded by imap/command.h: a pattern that cannot be quoted fails). */
static int append_pattern(struct imap_cmdbuf *b, const char *p, size_t plen, char delim, bool sep)
{
    char *tmp = malloc(plen + 1);
    if (!tmp)
        return -ENOMEM;
    for (size_t i = 0; i < plen; i++)
        tmp[i] = p[i] == '\0' ? delim : p[i];
    tmp[plen] = '\0';
    char why[200];
    int r = imap_cmdbuf_append(b, why, sizeof why, "%a%P", sep ? " " : "", tmp);
    free(tmp);
    return r;
}

/* Sends the LIST commands of one side; the caller waits. */
static struct imap_cmd *list_send(struct sync_engine *e, struct side_state *st, bool assume_status)
{
    struct imap_client *c = st->c;
    const struct server_config *sc = st->side == SIDE_LOCAL ? &e->cfg->local : &e->cfg->remote;
    const char *ref = sc->list_reference ? sc->list_reference : "";
    char delim = st->listing->delimiter;

    struct imap_cmdbuf patterns = {0};
    size_t n = 0;
    int r = 0;
    if (e->opts.nmailboxes) {
        for (size_t i = 0; i < e->opts.nmailboxes && r == 0; i++, n++) {
            const char *m = e->opts.mailboxes[i];
            /* command-line names use the local delimiter: make it NUL, then the
             * side's own */
            char *tmp = strdup(m);
            if (!tmp) {
                imap_cmdbuf_fini(&patterns);
                return NULL;
            }
            size_t tl = strlen(tmp);
            char ld = e->listing[SIDE_LOCAL].delimiter;
            if (ld)
                for (size_t k = 0; k < tl; k++)
                    if (tmp[k] == ld)
                        tmp[k] = '\0';
            r = append_pattern(&patterns, tmp, tl, delim, n > 0);
            free(tmp);
        }
    } else if (e->cfg->list_mailbox_count) {
        for (size_t i = 0; i < e->cfg->list_mailbox_count && r == 0; i++, n++)
            r = append_pattern(&patterns, e->cfg->list_mailbox[i].data, e->cfg->list_mailbox[i].len,
                               delim, n > 0);
    } else {
        r = append_pattern(&patterns, "*", 1, delim, false);
        n = 1;
    }
    if (r < 0 || !patterns.data) {
        imap_cmdbuf_fini(&patterns);
        return NULL;
    }

    char opts[512] = "";
    if (e->cfg->list_select_opts && *e->cfg->list_select_opts)
        snprintf(opts, sizeof opts, "(%s) ", e->cfg->list_select_opts);
    const char *ret = assume_status || imap_client_has_cap(c, "LIST-STATUS")
                          ? " RETURN (SUBSCRIBED STATUS (UIDVALIDITY UIDNEXT HIGHESTMODSEQ))"
                          : " RETURN (SUBSCRIBED)";
    struct imap_cmd *cmd = imap_client_send(c, n > 1 ? "LIST %a%s (%a)%a" : "LIST %a%s %a%a", opts,
                                            ref, patterns.data, ret);
    imap_cmdbuf_fini(&patterns);
    return cmd;
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
 * LIST, with the listing handler installed. With keep_delimiter (the
 * relistings of --watch), a delimiter already known is not asked again. */
static void list_send_both(struct sync_engine *e, struct side_state *st, bool patterns,
                           bool assume_status, bool keep_delimiter, struct imap_cmd *cmd[2])
{
    const struct server_config *sc = st->side == SIDE_LOCAL ? &e->cfg->local : &e->cfg->remote;
    /* a delimiter known from an earlier listing on the same connection
     * cannot have changed: not asked again (cmd[0] is then NULL) */
    bool known = keep_delimiter && st->listing->delimiter_known;
    char delimiter = st->listing->delimiter;
    listing_fini(st->listing);
    st->listing->delimiter_known = known;
    st->listing->delimiter = known ? delimiter : '\0';
    imap_client_set_handler(st->c, &list_handler, st);
    cmd[0] = known ? NULL
                   : imap_client_send(st->c, "LIST %s \"\"",
                                      sc->list_reference ? sc->list_reference : "");
    cmd[1] = patterns ? list_send(e, st, assume_status) : NULL;
}

/* The login hook: both LISTs ride along with the login, and the
 * speculative INBOX's SELECT behind them. LIST-STATUS is assumed
 * (post-login capabilities are not known yet); engine_relist asks again
 * without it if the server refused. */
void early_list(struct imap_client *c, void *ctx)
{
    struct side_state *st = ctx;
    struct sync_engine *e = st->e;
    (void)c;
    list_send_both(e, st, true, true, false, e->early_list[st->side]);
    if (e->spec && e->early_list[st->side][1])
        select_send_side(e->spec, st->side, SELECT_AFTER, e->early_list[st->side][1]);
}

/* Lists both servers (delimiters, mailboxes, LIST-STATUS), using the
 * LISTs sent behind the login if there are some. */
int engine_relist(struct sync_engine *e)
{
    struct side_state *st = e->list_st;
    struct imap_cmd *dcmd[2], *lcmd[2] = {NULL, NULL};
    bool early[2];
    /* Both queries go out together unless the patterns must be spelled
     * with the delimiter that the first one tells. */
    bool pipelined = !patterns_need_delimiter(e);
    for (int s = 0; s < 2; s++) {
        st[s].c = e->client[s];
        early[s] = e->early_list[s][0] && e->early_list[s][1];
        if (early[s]) {
            dcmd[s] = e->early_list[s][0];
            lcmd[s] = e->early_list[s][1];
            e->early_list[s][0] = e->early_list[s][1] = NULL;
        } else {
            imap_cmd_free(&e->early_list[s][0]);
            imap_cmd_free(&e->early_list[s][1]);
            struct imap_cmd *cmd[2];
            list_send_both(e, &st[s], pipelined, false, true, cmd);
            dcmd[s] = cmd[0];
            lcmd[s] = cmd[1];
        }
    }
    int rc = 0;
    for (int s = 0; s < 2; s++) {
        if (!dcmd[s])
            continue; /* the delimiter is known */
        int r = imap_cmd_wait(dcmd[s]);
        imap_cmd_free(&dcmd[s]);
        if (r < 0) {
            log_error(e->log, side_name[s], NULL, "%s", imap_client_reason(e->client[s]));
            rc = r;
        }
    }
    if (rc < 0) {
        for (int s = 0; s < 2; s++)
            imap_cmd_free(&lcmd[s]);
        return rc;
    }
    if (!pipelined)
        for (int s = 0; s < 2; s++)
            lcmd[s] = list_send(e, &st[s], false);
    for (int s = 0; s < 2; s++) {
        if (!lcmd[s])
            return -ENOMEM;
        int r = imap_cmd_wait(lcmd[s]);
        imap_cmd_free(&lcmd[s]);
        if ((r == ERR_NO || r == ERR_BAD) && early[s]) {
            /* sent before the server's capabilities were known: ask again
             * the way they allow, without the INBOX selected behind */
            drop_speculative(e);
            struct imap_cmd *again[2];
            list_send_both(e, &st[s], true, false, false, again);
            r = again[0] && again[1] ? imap_cmd_wait(again[0]) : -ENOMEM;
            if (r == 0)
                r = imap_cmd_wait(again[1]);
            imap_cmd_free(&again[0]);
            imap_cmd_free(&again[1]);
        }
        if (r < 0) {
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
        if (rc == 0 && imap_client_has_cap(e->client[s], "LIST-STATUS"))
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
