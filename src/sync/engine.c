/*
 * The synchronization engine. The algorithm is the one of the reference
 * manual (RFC 4549 with the RFC 7162 amendments); what differs is the
 * shape: both servers are driven at the same time, commands that do not
 * depend on each other are pipelined, and message bodies flow from one
 * server's FETCH literal into the other's APPEND literal in chunks.
 *
 * Everything here is symmetric: per-side data lives in arrays indexed by
 * enum side, and the other side of s is OTHER(s).
 */
#include "sync/sync.h"

#include <errno.h>
#include <signal.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "config.h"
#include "coro/await.h"
#include "coro/coro.h"
#include "db/state.h"
#include "errors.h"
#include "imap/client.h"
#include "imap/uidset.h"
#include "log.h"
#include "sync/flags.h"

#define OTHER(s) ((enum side)(1 - (s)))

static const char *const side_name[2] = {"local", "remote"};

enum {
    APPEND_BATCH_MESSAGES = 1000,
    APPEND_BATCH_BYTES = 64 << 20,
    UIDSET_TEXT_MAX = 4096, /* keep command lines well below server limits */
    COPY_CHUNK = 64 * 1024,
};

/* ------------------------------------------------------------------ */
/* mailbox listing */

struct listed {
    char *server_name; /* as the server spells it (mUTF-7, with reference) */
    char *key;         /* internal name: reference stripped, delimiter -> NUL */
    size_t keylen;
    bool selectable;
    bool subscribed;
    bool has_status;
    uint32_t uidvalidity, uidnext;
    uint64_t highestmodseq;
};

struct listing {
    struct listed *items;
    size_t count, cap;
    char delimiter; /* '\0' for a flat namespace (NIL) */
    bool delimiter_known;
    bool failed;
};

/* A change reported for a known message. */
struct change {
    uint32_t uid;
    uint64_t modseq;
    char *flags;
};

/* What one side reported while a mailbox is selected. */
struct side_state {
    struct sync_engine *e;
    enum side side;
    struct imap_client *c;
    char *mailbox; /* server name */
    struct uidset vanished;
    struct change *changes;
    size_t nchanges, capchanges;
    uint64_t max_modseq;
    uint32_t max_uid_seen; /* highest UID seen in new-message FETCHes */
    struct uidset fetched; /* UIDs of new messages seen in the current FETCH */
    struct uidset probe;   /* UIDs listed by a probe FETCH (UID) */
    bool probing;
    struct listing *listing;      /* while listing */
    struct new_copy *copy;        /* while copying new messages from this side */
    struct imap_mailbox_state ms; /* what SELECT and later responses said */
};

struct pending_batch {
    struct imap_cmd *cmd;
    struct uidset src_uids;
    struct pending_batch *next;
};

/* Streaming of new messages from side `src` into side OTHER(src). */
struct new_copy {
    struct sync_engine *e;
    enum side src;
    struct side_state *target;
    bool append_open;
    struct imap_cmd *open_cmd;
    struct uidset open_uids;
    size_t open_count;
    uint64_t open_bytes;
    struct pending_batch *batches, **batches_tail;
    int error;
    unsigned copied;
};

struct sync_engine {
    struct coro_sched *sched;
    const struct config *cfg;
    struct logger *log;
    struct sync_options opts;
    struct state_db *db;
    struct imap_client *client[2];
    struct listing listing[2];
    pcre2_code *ignore_re;
    int failed_mailboxes;
    bool stop;                         /* SIGINT/SIGTERM: finish the step and leave */
    bool no_lookahead;                 /* a server sent no [CLOSED]: SELECT one at a time */
    struct side_state list_st[2];      /* the listing handlers' context */
    struct imap_cmd *early_list[2][2]; /* LISTs sent behind the login */
    struct mbox_ctx *spec;             /* INBOX, selected behind them */
    struct coro *sleeper;              /* the engine while it sleeps between cycles */
    bool notify_set;
    bool connected; /* both connections are up */
    char errbuf[512];
};

/* ------------------------------------------------------------------ */
/* helpers */

static void listing_fini(struct listing *l)
{
    for (size_t i = 0; i < l->count; i++) {
        free(l->items[i].server_name);
        free(l->items[i].key);
    }
    free(l->items);
    memset(l, 0, sizeof *l);
}

static struct listed *listing_find(struct listing *l, const char *key, size_t keylen)
{
    for (size_t i = 0; i < l->count; i++)
        if (l->items[i].keylen == keylen && memcmp(l->items[i].key, key, keylen) == 0)
            return &l->items[i];
    return NULL;
}

/* Internal name -> server name: NUL -> delimiter, reference prefixed. */
static char *server_name(struct sync_engine *e, enum side s, const char *key, size_t keylen)
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
static char *pretty_name(struct sync_engine *e, const char *key, size_t keylen)
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

static void side_state_reset(struct side_state *st)
{
    uidset_clear(&st->vanished);
    for (size_t i = 0; i < st->nchanges; i++)
        free(st->changes[i].flags);
    st->nchanges = 0;
}

static void side_state_fini(struct side_state *st)
{
    side_state_reset(st);
    uidset_fini(&st->vanished);
    uidset_fini(&st->fetched);
    uidset_fini(&st->probe);
    free(st->changes);
    free(st->mailbox);
    st->changes = NULL;
    st->mailbox = NULL;
}

static int change_add(struct side_state *st, uint32_t uid, uint64_t modseq, char *flags)
{
    if (st->nchanges == st->capchanges) {
        size_t cap = st->capchanges ? st->capchanges * 2 : 64;
        struct change *c = realloc(st->changes, cap * sizeof *c);
        if (!c) {
            free(flags);
            return -ENOMEM;
        }
        st->changes = c;
        st->capchanges = cap;
    }
    st->changes[st->nchanges++] = (struct change){uid, modseq, flags};
    return 0;
}

/* Finds an item by name in a FETCH attribute list. */
static const struct imap_value *fetch_item(const struct imap_value *list, const char *name)
{
    if (!list || list->type != IMAP_LIST)
        return NULL;
    for (size_t i = 0; i + 1 < list->count; i += 2)
        if (imap_value_is_atom(&list->items[i], name))
            return &list->items[i + 1];
    return NULL;
}

/* ------------------------------------------------------------------ */
/* untagged responses while a mailbox is selected */

static void on_fetch(struct side_state *st, const struct imap_response *r)
{
    const struct imap_value *list = &r->args[2];
    const struct imap_value *uidv = fetch_item(list, "UID");
    uint32_t uid;
    if (!uidv || !imap_value_u32(uidv, &uid))
        return;
    const struct imap_value *body = fetch_item(list, "BODY[]");
    const struct imap_value *modv = fetch_item(list, "MODSEQ");
    uint64_t modseq = 0;
    if (modv && modv->type == IMAP_LIST && modv->count == 1)
        imap_value_u64(&modv->items[0], &modseq);
    if (modseq > st->max_modseq)
        st->max_modseq = modseq;
    if (st->probing && !body && !fetch_item(list, "FLAGS")) {
        uidset_add(&st->probe, uid);
        return;
    }
    if (body || (st->copy && fetch_item(list, "INTERNALDATE"))) {
        /* a new message: handled by the copy (streamed or inline below) */
        if (uid > st->max_uid_seen)
            st->max_uid_seen = uid;
        uidset_add(&st->fetched, uid);
        return;
    }
    const struct imap_value *flagsv = fetch_item(list, "FLAGS");
    if (!flagsv || flagsv->type != IMAP_LIST)
        return;
    char *flags = flags_normalize(flagsv);
    if (flags)
        change_add(st, uid, modseq, flags);
}

static int copy_append_message(struct new_copy *cp, uint32_t uid, const struct imap_value *list,
                               uint64_t size, struct imap_literal *lit, const char *inline_body);

static void selected_untagged(void *ctx, const struct imap_response *r)
{
    struct side_state *st = ctx;
    if (r->status != IMAP_STATUS_NONE) {
        if (r->code && strcasecmp(r->code, "HIGHESTMODSEQ") == 0 && r->code_nargs == 1) {
            uint64_t m;
            if (imap_value_u64(&r->code_args[0], &m) && m > st->max_modseq)
                st->max_modseq = m;
        }
        return;
    }
    if (r->nargs >= 3 && imap_value_is_atom(&r->args[1], "FETCH") && r->args[2].type == IMAP_LIST) {
        const struct imap_value *body = fetch_item(&r->args[2], "BODY[]");
        if (st->copy && body && !body->streamed) {
            /* the body came before FLAGS/INTERNALDATE or was small: it is
             * inline, append it from memory */
            const struct imap_value *uidv = fetch_item(&r->args[2], "UID");
            uint32_t uid;
            const char *data;
            size_t len;
            if (uidv && imap_value_u32(uidv, &uid) && imap_value_string(body, &data, &len))
                copy_append_message(st->copy, uid, &r->args[2], len, NULL, data);
        }
        on_fetch(st, r);
        return;
    }
    if (r->nargs >= 2 && imap_value_is_atom(&r->args[0], "VANISHED")) {
        const struct imap_value *set = &r->args[r->nargs - 1];
        const char *s;
        size_t len;
        if (imap_value_string(set, &s, &len))
            uidset_parse(&st->vanished, s, len, 10u * 1000 * 1000);
        return;
    }
}

static bool selected_literal(void *ctx, const struct imap_response *partial, uint64_t size,
                             struct imap_literal *lit)
{
    struct side_state *st = ctx;
    if (!st->copy || partial->nargs < 3 || !imap_value_is_atom(&partial->args[1], "FETCH"))
        return false;
    const struct imap_value *list = &partial->args[2];
    if (list->type != IMAP_LIST || list->count == 0)
        return false;
    /* the literal belongs to the last item name of the list so far */
    const struct imap_value *last = &list->items[list->count - 1];
    if (!imap_value_is_atom(last, "BODY[]"))
        return false;
    const struct imap_value *uidv = fetch_item(list, "UID");
    uint32_t uid;
    if (!uidv || !imap_value_u32(uidv, &uid) || !fetch_item(list, "FLAGS") ||
        !fetch_item(list, "INTERNALDATE"))
        return false; /* keep it inline; appended when the response is complete */
    if (uid > st->max_uid_seen)
        st->max_uid_seen = uid;
    copy_append_message(st->copy, uid, list, size, lit, NULL);
    return true;
}

static const struct imap_handler selected_handler = {selected_untagged, selected_literal};

/* ------------------------------------------------------------------ */
/* connections */

struct connect_job {
    struct sync_engine *e;
    enum side side;
    int result;
};

static void connect_main(struct coro *self, void *arg)
{
    struct connect_job *job = arg;
    (void)self;
    job->result = imap_client_connect(job->e->client[job->side]);
}

/* How a SELECT's responses are told from those of the commands ahead of
 * it (see the selection functions of imap/client.h). */
enum select_how { SELECT_NOW, SELECT_AT_CLOSE, SELECT_AFTER };

static void early_list_free(struct sync_engine *e)
{
    for (int s = 0; s < 2; s++)
        for (int k = 0; k < 2; k++)
            imap_cmd_free(&e->early_list[s][k]);
}

static bool patterns_need_delimiter(const struct sync_engine *e);
static void early_list(struct imap_client *c, void *ctx);
static struct mbox_ctx *speculative_inbox(struct sync_engine *e);
static void mbox_free(struct mbox_ctx **pm);

/* Connects both servers at once. */
static int engine_connect(struct sync_engine *e)
{
    struct connect_job jobs[2];
    struct coro *co[2];
    struct coro *self = coro_current(e->sched);
    /* the listing rides along with the login unless its patterns need the
     * delimiter, which only a first LIST tells */
    bool early = !patterns_need_delimiter(e);
    for (int s = 0; s < 2; s++) {
        const struct server_config *sc = s == SIDE_LOCAL ? &e->cfg->local : &e->cfg->remote;
        bool keepalive = e->opts.watch_seconds >= 0 && sc->type != SERVER_TUNNEL;
        e->client[s] = imap_client_new(e->sched, sc, e->log, keepalive);
        if (!e->client[s])
            return -ENOMEM;
        listing_fini(&e->listing[s]);
        e->list_st[s] = (struct side_state){
            .e = e, .side = (enum side)s, .c = e->client[s], .listing = &e->listing[s]};
        if (early)
            imap_client_on_login(e->client[s], early_list, &e->list_st[s]);
    }
    if (early)
        e->spec = speculative_inbox(e);
    for (int s = 0; s < 2; s++) {
        jobs[s] = (struct connect_job){e, (enum side)s, 0};
        co[s] = coro_spawn(e->sched, connect_main, &jobs[s], 0);
        if (!co[s])
            return -ENOMEM;
    }
    for (int s = 0; s < 2; s++)
        coro_join(self, co[s]);
    int rc = 0;
    for (int s = 0; s < 2; s++) {
        imap_client_on_login(e->client[s], NULL, NULL);
        if (jobs[s].result < 0) {
            log_error(e->log, NULL, NULL, "%s", imap_client_error(e->client[s]));
            rc = jobs[s].result;
        }
    }
    if (rc < 0) {
        early_list_free(e);
        mbox_free(&e->spec);
        return rc;
    }
    for (int s = 0; s < 2; s++) {
        static const char *const required[] = {"LIST-EXTENDED", "UIDPLUS"};
        for (size_t i = 0; i < 2; i++) {
            if (!imap_client_has_cap(e->client[s], required[i])) {
                log_error(e->log, side_name[s], NULL,
                          "server lacks the %s extension, which interimap requires", required[i]);
                return ERR_UNSUPPORTED;
            }
        }
    }
    return 0;
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
        if (l->count == l->cap) {
            size_t cap = l->cap ? l->cap * 2 : 32;
            struct listed *it = realloc(l->items, cap * sizeof *it);
            if (!it) {
                l->failed = true;
                return;
            }
            l->items = it;
            l->cap = cap;
        }
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
        for (size_t i = 0; i < l->count; i++) {
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

/* Builds "pattern" or ("p1" "p2") with NUL replaced by the delimiter. */
static int append_pattern(char **out, size_t *len, const char *p, size_t plen, char delim,
                          bool quote_sep)
{
    size_t need = *len + plen * 2 + 4;
    char *o = realloc(*out, need + 1);
    if (!o)
        return -ENOMEM;
    *out = o;
    if (quote_sep)
        o[(*len)++] = ' ';
    o[(*len)++] = '"';
    for (size_t i = 0; i < plen; i++) {
        char ch = p[i] == '\0' ? delim : p[i];
        if (ch == '"' || ch == '\\')
            o[(*len)++] = '\\';
        o[(*len)++] = ch;
    }
    o[(*len)++] = '"';
    o[*len] = '\0';
    return 0;
}

/* Sends the LIST commands of one side; the caller waits. */
static struct imap_cmd *list_send(struct sync_engine *e, struct side_state *st, bool assume_status)
{
    struct imap_client *c = st->c;
    const struct server_config *sc = st->side == SIDE_LOCAL ? &e->cfg->local : &e->cfg->remote;
    const char *ref = sc->list_reference ? sc->list_reference : "";
    char delim = st->listing->delimiter;

    char *patterns = NULL;
    size_t plen = 0;
    size_t n = 0;
    if (e->opts.nmailboxes) {
        for (size_t i = 0; i < e->opts.nmailboxes; i++, n++) {
            const char *m = e->opts.mailboxes[i];
            /* command-line names use the local delimiter: make it NUL, then the
             * side's own */
            char *tmp = strdup(m);
            if (!tmp)
                return NULL;
            size_t tl = strlen(tmp);
            char ld = e->listing[SIDE_LOCAL].delimiter;
            if (ld)
                for (size_t k = 0; k < tl; k++)
                    if (tmp[k] == ld)
                        tmp[k] = '\0';
            int r = append_pattern(&patterns, &plen, tmp, tl, delim, n > 0);
            free(tmp);
            if (r < 0)
                return NULL;
        }
    } else if (e->cfg->list_mailbox_count) {
        for (size_t i = 0; i < e->cfg->list_mailbox_count; i++, n++)
            if (append_pattern(&patterns, &plen, e->cfg->list_mailbox[i].data,
                               e->cfg->list_mailbox[i].len, delim, n > 0) < 0)
                return NULL;
    } else {
        patterns = strdup("\"*\"");
        n = 1;
    }
    if (!patterns)
        return NULL;

    char opts[512] = "";
    if (e->cfg->list_select_opts && *e->cfg->list_select_opts)
        snprintf(opts, sizeof opts, "(%s) ", e->cfg->list_select_opts);
    const char *ret = assume_status || imap_client_has_cap(c, "LIST-STATUS")
                          ? " RETURN (SUBSCRIBED STATUS (UIDVALIDITY UIDNEXT HIGHESTMODSEQ))"
                          : " RETURN (SUBSCRIBED)";
    struct imap_cmd *cmd = imap_client_send(c, n > 1 ? "LIST %a%s (%a)%a" : "LIST %a%s %a%a", opts,
                                            ref, patterns, ret);
    free(patterns);
    return cmd;
}

/* Whether the LIST patterns need the hierarchy delimiters first. */
static bool patterns_need_delimiter(const struct sync_engine *e)
{
    if (e->opts.nmailboxes)
        return true; /* command-line names use the local delimiter */
    for (size_t i = 0; i < e->cfg->list_mailbox_count; i++)
        if (memchr(e->cfg->list_mailbox[i].data, '\0', e->cfg->list_mailbox[i].len))
            return true;
    return false;
}

/* Sends `LIST ref ""` (the delimiter) and, if `patterns` too, the real
 * LIST, with the listing handler installed. */
static void list_send_both(struct sync_engine *e, struct side_state *st, bool patterns,
                           bool assume_status, struct imap_cmd *cmd[2])
{
    const struct server_config *sc = st->side == SIDE_LOCAL ? &e->cfg->local : &e->cfg->remote;
    listing_fini(st->listing);
    imap_client_set_handler(st->c, &list_handler, st);
    cmd[0] = imap_client_send(st->c, "LIST %s \"\"", sc->list_reference ? sc->list_reference : "");
    cmd[1] = patterns ? list_send(e, st, assume_status) : NULL;
}

static int select_send_side(struct mbox_ctx *m, enum side s, enum select_how how,
                            struct imap_cmd *after);
static void drop_speculative(struct sync_engine *e);

/* The login hook: both LISTs ride along with the login, and the
 * speculative INBOX's SELECT behind them. LIST-STATUS is assumed
 * (post-login capabilities are not known yet); engine_relist asks again
 * without it if the server refused. */
static void early_list(struct imap_client *c, void *ctx)
{
    struct side_state *st = ctx;
    struct sync_engine *e = st->e;
    (void)c;
    list_send_both(e, st, true, true, e->early_list[st->side]);
    if (e->spec && e->early_list[st->side][1])
        select_send_side(e->spec, st->side, SELECT_AFTER, e->early_list[st->side][1]);
}

/* Lists both servers (delimiters, mailboxes, LIST-STATUS), using the
 * LISTs sent behind the login if there are some. */
static int engine_relist(struct sync_engine *e)
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
            list_send_both(e, &st[s], pipelined, false, cmd);
            dcmd[s] = cmd[0];
            lcmd[s] = cmd[1];
        }
    }
    int rc = 0;
    for (int s = 0; s < 2; s++) {
        int r = imap_cmd_wait(dcmd[s]);
        imap_cmd_free(&dcmd[s]);
        if (r < 0) {
            log_error(e->log, NULL, NULL, "%s", imap_client_error(e->client[s]));
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
            list_send_both(e, &st[s], true, false, again);
            r = again[0] && again[1] ? imap_cmd_wait(again[0]) : -ENOMEM;
            if (r == 0)
                r = imap_cmd_wait(again[1]);
            imap_cmd_free(&again[0]);
            imap_cmd_free(&again[1]);
        }
        if (r < 0) {
            log_error(e->log, NULL, NULL, "%s", imap_client_error(e->client[s]));
            rc = r;
        }
        if (e->listing[s].failed)
            rc = -ENOMEM;
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
    return 0;
}

/* ------------------------------------------------------------------ */
/* the mailbox list: creation and subscriptions */

struct mbox_work {
    char *key;
    size_t keylen;
    int64_t idx;
    bool created[2]; /* created on that side in this run */
};

static bool ignored(struct sync_engine *e, const char *key, size_t keylen)
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
static int sync_mailbox_list(struct sync_engine *e, struct mbox_work **out, size_t *nout)
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

/* ------------------------------------------------------------------ */
/* messages: removal and flag propagation */

/* Commands sent together and waited for together, each with what to say
 * should it fail. */
struct cmd_batch {
    struct imap_cmd **cmds;
    const char **what;
    size_t n, cap;
    bool nomem;
};

static void batch_add(struct cmd_batch *b, struct imap_cmd *cmd, const char *what)
{
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 16;
        struct imap_cmd **nc = realloc(b->cmds, cap * sizeof *nc);
        const char **nw = nc ? realloc(b->what, cap * sizeof *nw) : NULL;
        if (nc)
            b->cmds = nc;
        if (!nc || !nw) {
            b->nomem = true;
            imap_cmd_free(&cmd); /* answered later, ignored */
            return;
        }
        b->what = nw;
        b->cap = cap;
    }
    if (!cmd)
        b->nomem = true;
    b->what[b->n] = what;
    b->cmds[b->n++] = cmd;
}

/* Waits for every command of the batch and frees them. UIDs a UID STORE
 * with UNCHANGEDSINCE reports as MODIFIED are added to `modified`. Returns
 * the first failure, logged with its `what`. */
static int batch_wait(struct cmd_batch *b, struct side_state *st, struct uidset *modified)
{
    int rc = b->nomem ? -ENOMEM : 0;
    for (size_t i = 0; i < b->n; i++) {
        int r = b->cmds[i] ? imap_cmd_wait(b->cmds[i]) : -ENOMEM;
        const char *code = b->cmds[i] ? imap_cmd_code(b->cmds[i]) : NULL;
        if (r == 0 && modified && code && strcasecmp(code, "MODIFIED") == 0) {
            const char *a = imap_cmd_code_args(b->cmds[i]);
            uidset_parse(modified, a, strlen(a), 10u * 1000 * 1000);
        }
        if (r < 0 && rc == 0) {
            log_error(st->e->log, side_name[st->side], st->mailbox, "%s: %s", b->what[i],
                      imap_client_error(st->c));
            rc = r;
        }
        imap_cmd_free(&b->cmds[i]);
    }
    free(b->cmds);
    free(b->what);
    memset(b, 0, sizeof *b);
    return rc;
}

/* UID STORE +FLAGS.SILENT (\Deleted) then UID EXPUNGE, in chunks of
 * bounded command length. */
static void removal_send(struct side_state *st, struct uidset *uids, struct cmd_batch *b)
{
    uidset_normalize(uids);
    size_t pos = 0;
    char *set;
    while ((set = uidset_format(uids, &pos, UIDSET_TEXT_MAX))) {
        batch_add(b, imap_client_send(st->c, "UID STORE %a +FLAGS.SILENT (\\Deleted)", set),
                  "cannot expunge messages");
        batch_add(b, imap_client_send(st->c, "UID EXPUNGE %a", set), "cannot expunge messages");
        free(set);
    }
}

static int remove_messages(struct side_state *st, struct uidset *uids)
{
    struct cmd_batch b = {0};
    removal_send(st, uids, &b);
    return batch_wait(&b, st, NULL);
}

struct flag_group {
    char *flags;
    struct uidset uids;
};

struct flag_plan {
    struct flag_group *groups;
    size_t count, cap;
};

static int plan_add(struct flag_plan *p, const char *flags, uint32_t uid)
{
    for (size_t i = 0; i < p->count; i++)
        if (flags_equal(p->groups[i].flags, flags))
            return uidset_add(&p->groups[i].uids, uid);
    if (p->count == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 8;
        struct flag_group *g = realloc(p->groups, cap * sizeof *g);
        if (!g)
            return -ENOMEM;
        p->groups = g;
        p->cap = cap;
    }
    struct flag_group *g = &p->groups[p->count];
    g->flags = strdup(flags);
    if (!g->flags)
        return -ENOMEM;
    uidset_init(&g->uids);
    p->count++;
    return uidset_add(&g->uids, uid);
}

static void plan_fini(struct flag_plan *p)
{
    for (size_t i = 0; i < p->count; i++) {
        free(p->groups[i].flags);
        uidset_fini(&p->groups[i].uids);
    }
    free(p->groups);
    memset(p, 0, sizeof *p);
}

/* One UID STORE per distinct flag list (split only when the UID set is
 * very long). With `unchangedsince`, a message someone else changed after
 * what we saw is left alone and reported as MODIFIED (see batch_wait). */
static void flags_send(struct side_state *st, struct flag_plan *p, uint64_t unchangedsince,
                       struct cmd_batch *b)
{
    for (size_t i = 0; i < p->count; i++) {
        struct flag_group *g = &p->groups[i];
        uidset_normalize(&g->uids);
        size_t pos = 0;
        char *set;
        while ((set = uidset_format(&g->uids, &pos, UIDSET_TEXT_MAX))) {
            struct imap_cmd *cmd;
            if (unchangedsince)
                cmd = imap_client_send(st->c, "UID STORE %a (UNCHANGEDSINCE %U) FLAGS.SILENT (%a)",
                                       set, unchangedsince, g->flags);
            else
                cmd = imap_client_send(st->c, "UID STORE %a FLAGS.SILENT (%a)", set, g->flags);
            batch_add(b, cmd, "cannot store flags");
            free(set);
        }
    }
}

/* Keeps, for each UID, the last change reported; sorted by UID. */
static int cmp_change(const void *a, const void *b)
{
    const struct change *x = a, *y = b;
    if (x->uid != y->uid)
        return x->uid < y->uid ? -1 : 1;
    return x->modseq < y->modseq ? -1 : x->modseq > y->modseq;
}

static void changes_compact(struct side_state *st)
{
    if (st->nchanges < 2)
        return;
    qsort(st->changes, st->nchanges, sizeof *st->changes, cmp_change);
    size_t o = 0;
    for (size_t i = 0; i < st->nchanges; i++) {
        if (o && st->changes[o - 1].uid == st->changes[i].uid) {
            free(st->changes[o - 1].flags);
            st->changes[o - 1] = st->changes[i];
        } else {
            st->changes[o++] = st->changes[i];
        }
    }
    st->nchanges = o;
}

static const struct change *change_find(const struct side_state *st, uint32_t uid)
{
    size_t lo = 0, hi = st->nchanges;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (st->changes[mid].uid == uid)
            return &st->changes[mid];
        if (st->changes[mid].uid < uid)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

struct mbox_ctx {
    struct sync_engine *e;
    int64_t idx;
    char *pretty;
    bool repair;
    bool known; /* the database has both sides */
    struct side_state st[2];
    struct state_side db[2]; /* UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ */
    uint32_t uidnext[2];     /* messages below are replicated */
    unsigned added[2], removed[2], updated[2], conflicts;
    struct imap_cmd *select[2]; /* SELECTs in flight */
    /* The mailbox synchronized after this one. Once this one has sent what
     * should be its last commands, the next one's SELECTs go out behind
     * them (mbox_release) instead of a round trip later; should this one
     * then turn out to need more commands, it is done again later in the
     * run (MAILBOX_AGAIN). */
    struct mbox_ctx *next;
    bool released;
    /* A mailbox created on one side in this run, and so empty there, is
     * copied into without waiting for that side's SELECT: its answer is
     * taken (select_wait_target) before the APPEND replies are. -1 once
     * taken, or when SELECTs are waited for together. */
    int target_pending;
    bool created[2];  /* created on that side in this run */
    bool have_row[2]; /* the database has this side's UIDVALIDITY */
};

/* sync_one() and its steps: the mailbox must be done again later */
#define MAILBOX_AGAIN 1

static int select_send(struct mbox_ctx *m, bool at_close);
static int select_wait_target(struct mbox_ctx *m);

/* Sends the next mailbox's SELECTs now: nothing else will be sent here. */
static void mbox_release(struct mbox_ctx *m)
{
    if (m->released || !m->next || m->e->no_lookahead)
        return;
    m->released = true;
    select_send(m->next, true);
}

/*
 * Propagates what both sides reported (vanished messages and flag changes
 * for known UIDs) until neither reports anything new. With `may_release`,
 * the next mailbox's SELECTs go out behind the last commands sent here.
 */
static int sync_known(struct mbox_ctx *m, bool may_release)
{
    struct sync_engine *e = m->e;
    for (int round = 0; round < 100; round++) {
        /* take a snapshot of what was reported so far; responses to our own
         * commands accumulate for the next round */
        struct uidset vanished[2];
        struct side_state snap[2];
        bool any = false;
        for (int s = 0; s < 2; s++) {
            struct side_state *st = &m->st[s];
            vanished[s] = st->vanished;
            uidset_init(&st->vanished);
            snap[s] = *st;
            st->changes = NULL;
            st->nchanges = st->capchanges = 0;
            uidset_normalize(&vanished[s]);
            changes_compact(&snap[s]);
            /* only UIDs below the replicated UIDNEXT are known messages */
            size_t o = 0;
            for (size_t i = 0; i < vanished[s].count; i++)
                if (vanished[s].uids[i] < m->uidnext[s])
                    vanished[s].uids[o++] = vanished[s].uids[i];
            vanished[s].count = o;
            if (vanished[s].count || snap[s].nchanges)
                any = true;
        }
        if (!any || m->released) {
            for (int s = 0; s < 2; s++) {
                uidset_fini(&vanished[s]);
                for (size_t i = 0; i < snap[s].nchanges; i++)
                    free(snap[s].changes[i].flags);
                free(snap[s].changes);
            }
            /* news after the next mailbox was selected: do this one again */
            return any ? MAILBOX_AGAIN : 0;
        }

        /* vanished on one side: remove the counterpart on the other */
        struct uidset remove[2];
        uidset_init(&remove[0]);
        uidset_init(&remove[1]);
        int rc = 0;
        for (int s = 0; s < 2 && rc == 0; s++) {
            for (size_t i = 0; i < vanished[s].count; i++) {
                uint32_t other;
                int f = state_db_mapping_lookup(e->db, m->idx, (enum side)s, vanished[s].uids[i],
                                                &other);
                if (f < 0) {
                    rc = ERR_DB;
                    break;
                }
                if (f == 0)
                    continue; /* not ours (or already forgotten) */
                if (!uidset_contains(&vanished[OTHER(s)], other))
                    uidset_add(&remove[OTHER(s)], other);
                state_db_mapping_delete(e->db, m->idx, (enum side)s, vanished[s].uids[i]);
            }
        }

        /* flag changes: propagate, or set both to the union on conflict */
        struct flag_plan plan[2] = {{0}, {0}};
        for (int s = 0; s < 2 && rc == 0; s++) {
            for (size_t i = 0; i < snap[s].nchanges; i++) {
                const struct change *ch = &snap[s].changes[i];
                if (ch->uid >= m->uidnext[s] || uidset_contains(&vanished[s], ch->uid))
                    continue;
                uint32_t other;
                int f = state_db_mapping_lookup(e->db, m->idx, (enum side)s, ch->uid, &other);
                if (f < 0) {
                    rc = ERR_DB;
                    break;
                }
                if (f == 0) {
                    log_warn(e->log, side_name[OTHER(s)], m->st[OTHER(s)].mailbox,
                             "No match for modified %s UID %" PRIu32 ". Try '--repair'.",
                             side_name[s], ch->uid);
                    continue;
                }
                if (uidset_contains(&vanished[OTHER(s)], other) ||
                    uidset_contains(&remove[OTHER(s)], other))
                    continue;
                const struct change *och = change_find(&snap[OTHER(s)], other);
                if (och) {
                    if (s == SIDE_REMOTE)
                        continue; /* the pair was handled from the local side */
                    if (flags_equal(ch->flags, och->flags))
                        continue;
                    char *u = flags_union(ch->flags, och->flags);
                    if (!u) {
                        rc = -ENOMEM;
                        break;
                    }
                    log_warn(e->log, NULL, NULL,
                             "Conflicting flag update in %s for local UID %" PRIu32
                             " (%s) and remote UID %" PRIu32 " (%s). Setting both to the union "
                             "(%s).",
                             m->pretty, ch->uid, ch->flags, other, och->flags, u);
                    m->conflicts++;
                    plan_add(&plan[s], u, ch->uid);
                    plan_add(&plan[OTHER(s)], u, other);
                    free(u);
                } else {
                    plan_add(&plan[OTHER(s)], ch->flags, other);
                }
            }
        }
        /* both servers store at once; UNCHANGEDSINCE protects a change made
         * by someone else after what we have seen (it comes back MODIFIED) */
        struct uidset modified[2];
        for (int s = 0; s < 2; s++) {
            uidset_init(&modified[s]);
            for (size_t g = 0; g < plan[s].count; g++)
                m->updated[s] += (unsigned)plan[s].groups[g].uids.count;
        }
        uint64_t seen[2] = {m->st[0].max_modseq, m->st[1].max_modseq};
        /* removals and stores touch different messages: all of them go to
         * both servers at once, and are waited for together */
        if (rc == 0) {
            struct cmd_batch batch[2] = {{0}, {0}};
            for (int s = 0; s < 2; s++)
                imap_client_hold(m->st[s].c); /* one write per server */
            for (int s = 0; s < 2; s++) {
                if (remove[s].count) {
                    removal_send(&m->st[s], &remove[s], &batch[s]);
                    m->removed[s] += (unsigned)remove[s].count;
                }
                if (plan[s].count)
                    flags_send(&m->st[s], &plan[s], seen[s], &batch[s]);
            }
            if (may_release && (batch[0].n || batch[1].n))
                mbox_release(m);
            for (int s = 0; s < 2; s++)
                imap_client_push(m->st[s].c);
            for (int s = 0; s < 2; s++) {
                int r = batch_wait(&batch[s], &m->st[s], &modified[s]);
                if (r < 0)
                    rc = r;
            }
            /* the VANISHED our own expunges caused need nothing more */
            for (int s = 0; s < 2; s++) {
                struct uidset *v = &m->st[s].vanished;
                uidset_normalize(&remove[s]);
                size_t o = 0;
                for (size_t i = 0; i < v->count; i++)
                    if (!uidset_contains(&remove[s], v->uids[i]))
                        v->uids[o++] = v->uids[i];
                v->count = o;
            }
        }
        /* Our own stores may come back as FETCH responses carrying the
         * flags we set: they need no propagation. Messages changed behind
         * our back (MODIFIED) are fetched again for the next round. */
        for (int s = 0; s < 2 && rc == 0; s++) {
            struct side_state *st = &m->st[s];
            size_t o = 0;
            for (size_t i = 0; i < st->nchanges; i++) {
                const struct change *ch = &st->changes[i];
                bool echo = false;
                for (size_t g = 0; g < plan[s].count && !echo; g++)
                    echo = flags_equal(plan[s].groups[g].flags, ch->flags) &&
                           uidset_contains(&plan[s].groups[g].uids, ch->uid);
                if (echo) {
                    free(st->changes[i].flags);
                    continue;
                }
                st->changes[o++] = st->changes[i];
            }
            st->nchanges = o;
            if (modified[s].count && m->released) {
                rc = MAILBOX_AGAIN; /* the next mailbox is selected already */
            } else if (modified[s].count) {
                uidset_normalize(&modified[s]);
                size_t pos = 0;
                char *set;
                while ((set = uidset_format(&modified[s], &pos, UIDSET_TEXT_MAX))) {
                    int r = imap_client_run(st->c, "UID FETCH %a (UID MODSEQ FLAGS)", set);
                    free(set);
                    if (r < 0) {
                        rc = r;
                        break;
                    }
                }
            }
        }
        for (int s = 0; s < 2; s++) {
            plan_fini(&plan[s]);
            uidset_fini(&modified[s]);
            uidset_fini(&remove[s]);
            uidset_fini(&vanished[s]);
            for (size_t i = 0; i < snap[s].nchanges; i++)
                free(snap[s].changes[i].flags);
            free(snap[s].changes);
        }
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* new messages */

static int copy_close_batch(struct new_copy *cp)
{
    if (!cp->append_open)
        return 0;
    struct imap_client *t = cp->target->c;
    struct imap_cmd *cmd = imap_client_end(t, cp->open_cmd);
    imap_client_unlock_write(t);
    cp->append_open = false;
    struct pending_batch *b = calloc(1, sizeof *b);
    if (!b) {
        imap_cmd_free(&cmd);
        uidset_fini(&cp->open_uids);
        return -ENOMEM;
    }
    b->cmd = cmd;
    b->src_uids = cp->open_uids;
    uidset_init(&cp->open_uids);
    *cp->batches_tail = b;
    cp->batches_tail = &b->next;
    cp->open_count = 0;
    cp->open_bytes = 0;
    return 0;
}

static int copy_append_message(struct new_copy *cp, uint32_t uid, const struct imap_value *list,
                               uint64_t size, struct imap_literal *lit, const char *inline_body)
{
    struct sync_engine *e = cp->e;
    struct imap_client *t = cp->target->c;
    if (cp->error)
        return cp->error;
    if (size == 0) {
        log_warn(e->log, side_name[cp->src], NULL,
                 "Ignoring new 0-length message (UID %" PRIu32 ")", uid);
        return 0;
    }
    const struct imap_value *flagsv = fetch_item(list, "FLAGS");
    const struct imap_value *datev = fetch_item(list, "INTERNALDATE");
    char *flags = flagsv && flagsv->type == IMAP_LIST ? flags_normalize(flagsv) : strdup("");
    const char *date;
    size_t datelen;
    if (!flags || !datev || !imap_value_string(datev, &date, &datelen) || datelen > 64) {
        free(flags);
        cp->error = ERR_PROTOCOL;
        return cp->error;
    }
    char datebuf[72];
    memcpy(datebuf, date, datelen);
    datebuf[datelen] = '\0';

    bool multi = imap_client_has_cap(t, "MULTIAPPEND");
    if (cp->append_open && (!multi || cp->open_count >= APPEND_BATCH_MESSAGES ||
                            cp->open_bytes + size > APPEND_BATCH_BYTES))
        copy_close_batch(cp);
    int r = 0;
    if (!cp->append_open) {
        r = imap_client_lock_write(t);
        if (r < 0)
            goto fail;
        cp->open_cmd = imap_client_begin(t, "APPEND %m", cp->target->mailbox);
        cp->append_open = true;
        uidset_init(&cp->open_uids);
    }
    r = imap_client_write_fmt(t, " (%a) \"%a\" ", flags, datebuf);
    if (r == 0)
        r = imap_client_literal_begin(t, size);
    if (r < 0)
        goto fail;
    if (inline_body) {
        r = imap_client_write_raw(t, inline_body, (size_t)size);
    } else {
        char *buf = malloc(COPY_CHUNK);
        if (!buf) {
            r = -ENOMEM;
            goto fail;
        }
        uint64_t left = size;
        while (left && r == 0) {
            ssize_t n = imap_literal_read(lit, buf, COPY_CHUNK);
            if (n <= 0) {
                r = n < 0 ? (int)n : ERR_EOF;
                break;
            }
            r = imap_client_write_raw(t, buf, (size_t)n);
            left -= (uint64_t)n;
        }
        free(buf);
    }
    if (r < 0)
        goto fail;
    uidset_add(&cp->open_uids, uid);
    cp->open_count++;
    cp->open_bytes += size;
    cp->copied++;
    free(flags);
    return 0;
fail:
    free(flags);
    cp->error = r;
    return r;
}

/* Waits for the APPENDs and records the new pairs. Returns the number of
 * messages mapped or a negative error. */
static int copy_finish(struct mbox_ctx *m, struct new_copy *cp, struct uidset *appended)
{
    struct sync_engine *e = m->e;
    int rc = copy_close_batch(cp);
    enum side src = cp->src, dst = OTHER(cp->src);
    for (struct pending_batch *b = cp->batches, *next; b; b = next) {
        next = b->next;
        int r = imap_cmd_wait(b->cmd);
        if (r < 0) {
            log_error(e->log, side_name[dst], m->st[dst].mailbox, "APPEND failed: %s",
                      imap_client_error(m->st[dst].c));
            if (rc == 0)
                rc = r;
        } else {
            const char *code = imap_cmd_code(b->cmd);
            struct uidset tuids;
            uidset_init(&tuids);
            const char *args = imap_cmd_code_args(b->cmd);
            const char *sp = strchr(args, ' ');
            uint32_t uidvalidity = (uint32_t)strtoul(args, NULL, 10);
            if (!code || strcasecmp(code, "APPENDUID") != 0 || !sp ||
                uidset_parse(&tuids, sp + 1, strlen(sp + 1), 1u << 24) < 0 ||
                tuids.count != b->src_uids.count) {
                log_error(e->log, side_name[dst], m->st[dst].mailbox,
                          "the server did not report the UIDs of appended messages (APPENDUID)");
                if (rc == 0)
                    rc = ERR_PROTOCOL;
            } else if (uidvalidity != m->db[dst].uidvalidity) {
                log_error(e->log, side_name[dst], m->st[dst].mailbox,
                          "UIDVALIDITY changed during the APPEND");
                if (rc == 0)
                    rc = ERR_STATE_MISMATCH;
            } else {
                for (size_t i = 0; i < tuids.count; i++) {
                    uint32_t su = b->src_uids.uids[i], tu = tuids.uids[i];
                    uint32_t lu = src == SIDE_LOCAL ? su : tu, ru = src == SIDE_LOCAL ? tu : su;
                    if (state_db_mapping_insert(e->db, m->idx, lu, ru) < 0 && rc == 0)
                        rc = ERR_DB;
                    uidset_add(appended, tu);
                }
                m->added[dst] += (unsigned)tuids.count;
            }
            uidset_fini(&tuids);
        }
        imap_cmd_free(&b->cmd);
        uidset_fini(&b->src_uids);
        free(b);
    }
    cp->batches = NULL;
    cp->batches_tail = &cp->batches;
    /* after a failure the caller rolls back: a begin here would only
     * replace the database's own message with "one is already open" */
    if (rc == 0 && (state_db_commit(e->db) < 0 || state_db_begin(e->db) < 0))
        rc = ERR_DB;
    return rc;
}

/* "since:4294967295" minus the UIDs to skip, as a sequence set. */
static char *new_range(uint32_t since, const struct uidset *skip)
{
    size_t cap = 64 + skip->count * 24, len = 0;
    char *out = malloc(cap);
    if (!out)
        return NULL;
    out[0] = '\0';
    uint32_t from = since ? since : 1;
    for (size_t i = 0; i < skip->count; i++) {
        uint32_t u = skip->uids[i];
        if (u < from)
            continue;
        if (u > from)
            len += (size_t)snprintf(out + len, cap - len, "%s%" PRIu32 ":%" PRIu32, len ? "," : "",
                                    from, u - 1);
        from = u + 1;
        if (from == 0)
            return out; /* wrapped: nothing above */
    }
    snprintf(out + len, cap - len, "%s%" PRIu32 ":4294967295", len ? "," : "", from);
    return out;
}

/*
 * Copies new messages both ways until neither side has any that we did not
 * put there ourselves. The remote side is pulled first, like the reference
 * tool, so a slow remote is waited for once.
 */
static int sync_new(struct mbox_ctx *m, struct uidset skip[2], bool may_release)
{
    struct sync_engine *e = m->e;
    /* Round 0 looks at a side only if SELECT announced new messages there.
     * A later round looks again at the sides that just received copies:
     * a message delivered meanwhile may have got a UID below ours, and
     * only a new FETCH can tell. Sides with nothing new cost no round trip. */
    bool look[2];
    for (int s = 0; s < 2; s++)
        look[s] = m->target_pending != s && m->st[s].ms.uidnext > m->uidnext[s];
    bool again_local = false;
    for (int round = 0; round < 100 && (look[0] || look[1]); round++) {
        if (m->released)
            return MAILBOX_AGAIN; /* the next mailbox is selected already */
        struct new_copy cp[2];
        struct imap_cmd *fetch[2] = {NULL, NULL};
        for (int s = 0; s < 2; s++) {
            memset(&cp[s], 0, sizeof cp[s]);
            cp[s].e = e;
            cp[s].src = (enum side)s;
            cp[s].target = &m->st[OTHER(s)];
            cp[s].batches_tail = &cp[s].batches;
            uidset_normalize(&skip[s]);
            uidset_clear(&m->st[s].fetched);
        }
        /* One direction at a time: each reader streams into the other
         * server, so with both directions at once each reader could block
         * writing to a server that is itself blocked writing its FETCH to
         * the other reader (servers do not read the next command while
         * sending a long response), and without LITERAL+ each body waits
         * for a continuation only the other, busy, reader can see. The
         * remote side goes first, like the reference tool. */
        if (look[SIDE_REMOTE] && look[SIDE_LOCAL]) {
            look[SIDE_LOCAL] = false;
            again_local = true;
        }
        int rc = 0;
        for (int k = 0; k < 2; k++) {
            enum side s = k == 0 ? SIDE_REMOTE : SIDE_LOCAL;
            if (!look[s])
                continue;
            char *range = new_range(m->uidnext[s], &skip[s]);
            if (!range)
                return -ENOMEM;
            m->st[s].copy = &cp[s];
            fetch[s] = imap_client_send(
                m->st[s].c, "UID FETCH %a (UID MODSEQ FLAGS INTERNALDATE BODY.PEEK[])", range);
            free(range);
            if (!fetch[s])
                rc = -ENOMEM;
        }
        for (int s = 0; s < 2; s++) {
            if (!fetch[s])
                continue;
            int r = imap_cmd_wait(fetch[s]);
            if (r < 0) {
                log_error(e->log, side_name[s], m->st[s].mailbox, "FETCH failed: %s",
                          imap_client_error(m->st[s].c));
                rc = r;
            }
            imap_cmd_free(&fetch[s]);
            m->st[s].copy = NULL;
            if (cp[s].error && rc == 0) {
                log_error(e->log, side_name[OTHER(s)], m->st[OTHER(s)].mailbox,
                          "copying new messages failed: %s", imap_client_error(m->st[OTHER(s)].c));
                rc = cp[s].error;
            }
        }
        bool copied[2];
        for (int s = 0; s < 2; s++) {
            copied[s] = cp[s].batches || cp[s].append_open;
            if (copy_close_batch(&cp[s]) < 0 && rc == 0)
                rc = -ENOMEM;
        }
        /* the target's SELECT answer is needed from here on (the probe,
         * APPENDUID's UIDVALIDITY); it comes before the APPEND replies */
        if (rc == 0)
            rc = select_wait_target(m);
        /* Right behind each APPEND goes a probe listing the target's UIDs
         * from its old UIDNEXT on: the server answers it after the APPEND,
         * so a message delivered meanwhile (with a UID among ours) shows up
         * without a round trip of its own. */
        struct imap_cmd *probe[2] = {NULL, NULL};
        for (int s = 0; s < 2; s++) {
            enum side t = OTHER(s);
            if (!copied[s])
                continue;
            uidset_clear(&m->st[t].probe);
            m->st[t].probing = true;
            probe[t] = imap_client_send(m->st[t].c, "UID FETCH %u:4294967295 (UID)", m->uidnext[t]);
        }
        /* the last direction: unless the probes find a delivery, this
         * mailbox has nothing more to send */
        if (may_release && !again_local)
            mbox_release(m);
        for (int s = 0; s < 2; s++) {
            struct uidset appended;
            uidset_init(&appended);
            int r = copy_finish(m, &cp[s], &appended);
            if (r < 0 && rc == 0)
                rc = r;
            for (size_t i = 0; i < appended.count; i++)
                uidset_add(&skip[OTHER(s)], appended.uids[i]);
            uidset_fini(&appended);
            /* every UID fetched from s is now either replicated or skipped */
            struct uidset *f = &m->st[s].fetched;
            for (size_t i = 0; i < f->count; i++)
                uidset_add(&skip[s], f->uids[i]);
        }
        bool arrived[2] = {false, false};
        for (int t = 0; t < 2; t++) {
            if (!probe[t])
                continue;
            int r = imap_cmd_wait(probe[t]);
            imap_cmd_free(&probe[t]);
            m->st[t].probing = false;
            if (r < 0 && rc == 0)
                rc = r;
            uidset_normalize(&skip[t]);
            for (size_t i = 0; i < m->st[t].probe.count; i++)
                if (!uidset_contains(&skip[t], m->st[t].probe.uids[i]))
                    arrived[t] = true;
        }
        if (rc < 0)
            return rc;
        for (int s = 0; s < 2; s++)
            look[s] = arrived[s];
        if (again_local) {
            look[SIDE_LOCAL] = true;
            again_local = false;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* one mailbox */

/* Up to 1024 of the highest known UIDs with their sequence numbers, for
 * the QRESYNC known-UIDs parameter (RFC 7162 3.2.5.2), so the server can
 * tell which messages vanished without remembering every expunge. */
static int qresync_sample(struct sync_engine *e, int64_t idx, enum side s, char **seqs, char **uids)
{
    *seqs = *uids = NULL;
    int64_t count = 0;
    if (state_db_mapping_count(e->db, idx, &count) < 0)
        return ERR_DB;
    if (count == 0)
        return 0;
    struct uidset set;
    uidset_init(&set);
    if (state_db_mapping_highest(e->db, idx, s, 1024, &set) < 0) {
        uidset_fini(&set);
        return ERR_DB;
    }
    uidset_normalize(&set);
    size_t pos = 0;
    *uids = uidset_format(&set, &pos, 1u << 20);
    char buf[64];
    snprintf(buf, sizeof buf, "%" PRId64 ":%" PRId64, count - (int64_t)set.count + 1, count);
    *seqs = strdup(buf);
    uidset_fini(&set);
    return 0;
}

/* Sends SELECT to one server: with QRESYNC and the known-UIDs sample for a
 * known mailbox, with CONDSTORE otherwise. */
static int select_send_side(struct mbox_ctx *m, enum side s, enum select_how how,
                            struct imap_cmd *after)
{
    struct sync_engine *e = m->e;
    struct side_state *st = &m->st[s];
    if (how == SELECT_AT_CLOSE)
        imap_client_select_at_close(st->c, &selected_handler, st, &st->ms);
    else if (how == SELECT_AFTER)
        imap_client_select_after(st->c, after, &selected_handler, st, &st->ms);
    else
        imap_client_select_now(st->c, &selected_handler, st, &st->ms);
    struct imap_cmd *cmd;
    if (!m->repair && m->known && m->db[s].highestmodseq > 0 && m->db[s].uidnext > 1) {
        char *seqs = NULL, *uids = NULL;
        qresync_sample(e, m->idx, s, &seqs, &uids);
        if (seqs && uids)
            cmd = imap_client_send(st->c, "SELECT %m (QRESYNC (%u %U 1:%u (%a %a)))", st->mailbox,
                                   m->db[s].uidvalidity, m->db[s].highestmodseq,
                                   m->db[s].uidnext - 1, seqs, uids);
        else
            cmd = imap_client_send(st->c, "SELECT %m (QRESYNC (%u %U 1:%u))", st->mailbox,
                                   m->db[s].uidvalidity, m->db[s].highestmodseq,
                                   m->db[s].uidnext - 1);
        free(seqs);
        free(uids);
    } else {
        cmd = imap_client_send(st->c, "SELECT %m (CONDSTORE)", st->mailbox);
    }
    if (how != SELECT_NOW)
        imap_client_select_cmd(st->c, cmd);
    m->select[s] = cmd;
    return cmd ? 0 : -ENOMEM;
}

/* Sends SELECT to both servers. `at_close`: the servers have another
 * mailbox's commands ahead of it (see mbox_release). */
static int select_send(struct mbox_ctx *m, bool at_close)
{
    int rc = 0;
    for (int s = 0; s < 2; s++)
        if (select_send_side(m, (enum side)s, at_close ? SELECT_AT_CLOSE : SELECT_NOW, NULL) < 0)
            rc = -ENOMEM;
    return rc;
}

/* Waits for the SELECTs of the sides in `want` and checks what they said;
 * a side the database does not know yet gets its row. */
static int select_wait_sides(struct mbox_ctx *m, const bool want[2])
{
    struct sync_engine *e = m->e;
    int rc = 0;
    bool again[2] = {false, false};
    for (int s = 0; s < 2; s++) {
        if (!want[s])
            continue;
        int r = m->select[s] ? imap_cmd_wait(m->select[s]) : -ENOMEM;
        imap_cmd_free(&m->select[s]);
        if (r < 0) {
            log_error(e->log, side_name[s], m->st[s].mailbox, "cannot select: %s",
                      imap_client_error(m->st[s].c));
            rc = r;
        }
        again[s] = imap_client_select_missed(m->st[s].c);
    }
    if ((again[0] || again[1]) && rc == 0) {
        /* a server did not mark where the previous mailbox ended: select
         * again, and one mailbox at a time from now on */
        e->no_lookahead = true;
        log_debug(e->log, NULL, m->pretty, "no [CLOSED] from the server: selecting again");
        for (int s = 0; s < 2; s++) {
            if (!again[s])
                continue;
            int r = select_send_side(m, (enum side)s, SELECT_NOW, NULL);
            if (r == 0)
                r = imap_cmd_wait(m->select[s]);
            imap_cmd_free(&m->select[s]);
            if (r < 0) {
                log_error(e->log, side_name[s], m->st[s].mailbox, "cannot select: %s",
                          imap_client_error(m->st[s].c));
                rc = r;
            }
        }
    }
    if (rc < 0)
        return rc;
    for (int s = 0; s < 2; s++) {
        if (!want[s])
            continue;
        struct imap_mailbox_state *ms = &m->st[s].ms;
        if (ms->nomodseq || ms->highestmodseq == 0) {
            log_error(e->log, side_name[s], m->st[s].mailbox,
                      "the mailbox does not support persistent mod-sequences (NOMODSEQ); it "
                      "cannot be synchronized");
            return ERR_UNSUPPORTED;
        }
        if (ms->uidvalidity == 0) {
            log_error(e->log, side_name[s], m->st[s].mailbox, "the server sent no UIDVALIDITY");
            return ERR_PROTOCOL;
        }
        if (m->have_row[s] && ms->uidvalidity != m->db[s].uidvalidity) {
            log_error(e->log, side_name[s], m->st[s].mailbox,
                      "UIDVALIDITY changed from %" PRIu32 " to %" PRIu32
                      "; refusing to synchronize this mailbox (nothing was copied). Check the "
                      "server, then remove the mailbox from the database with --target=database "
                      "--delete to start it over",
                      m->db[s].uidvalidity, ms->uidvalidity);
            return ERR_STATE_MISMATCH;
        }
        if (m->st[s].max_modseq < ms->highestmodseq)
            m->st[s].max_modseq = ms->highestmodseq;
        if (!m->have_row[s]) {
            m->db[s] = (struct state_side){ms->uidvalidity, 0, 0};
            if (state_db_side_insert(e->db, m->idx, (enum side)s, ms->uidvalidity) < 0)
                return ERR_DB;
            m->have_row[s] = true;
        }
    }
    return 0;
}

/* The answer to the SELECT of a mailbox created on its target side in this
 * run, which copying did not wait for (see sync_one). */
static int select_wait_target(struct mbox_ctx *m)
{
    if (m->target_pending < 0)
        return 0;
    bool want[2] = {false, false};
    want[m->target_pending] = true;
    m->target_pending = -1;
    return select_wait_sides(m, want);
}

static void log_summary(struct mbox_ctx *m)
{
    struct sync_engine *e = m->e;
    for (int s = 0; s < 2; s++) {
        if (!m->added[s] && !m->removed[s] && !m->updated[s])
            continue;
        log_info(e->log, side_name[s], m->st[s].mailbox,
                 "%u message(s) added, %u expunged, %u flag update(s)", m->added[s], m->removed[s],
                 m->updated[s]);
    }
}

/* Pairs left by an interrupted run: mapped UIDs at or above the stored
 * UIDNEXT (the reference tool commits pairs before UIDNEXT). They are not
 * copied again; check_interrupted() settles them once UIDNEXT has moved. */
static int interrupted_pairs(struct mbox_ctx *m, struct uidset pairs[2], struct uidset skip[2])
{
    int r =
        state_db_mapping_above(m->e->db, m->idx, m->db[SIDE_LOCAL].uidnext,
                               m->db[SIDE_REMOTE].uidnext, &pairs[SIDE_LOCAL], &pairs[SIDE_REMOTE]);
    for (int s = 0; r >= 0 && s < 2; s++)
        for (size_t i = 0; i < pairs[s].count; i++)
            uidset_add(&skip[s], pairs[s].uids[i]);
    return r;
}

/*
 * Fetches the flags of the interrupted pairs on both sides. A pair whose
 * message vanished on one side loses its other half too; flags reported
 * for the others are left among the changes, for sync_known to reconcile
 * (any difference is settled as a conflict, there being no reliable
 * HIGHESTMODSEQ for them).
 */
static int check_interrupted(struct mbox_ctx *m, struct uidset pairs[2])
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
            uidset_add(&sorted, pairs[s].uids[i]);
        uidset_normalize(&sorted);
        size_t pos = 0;
        char *set = uidset_format(&sorted, &pos, 1u << 20);
        uidset_fini(&sorted);
        if (!set)
            return -ENOMEM;
        cmd[s] = imap_client_send(m->st[s].c, "UID FETCH %a (UID MODSEQ FLAGS)", set);
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
                uidset_add(&remove[s], u[s]);
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

static int intent_set(struct state_db *db, int64_t idx, enum side target, uint32_t bound)
{
    struct state_intent in = {.idx = idx,
                              .source = OTHER(target),
                              .source_uid = 0,
                              .target_uidnext = bound,
                              .internaldate = (char *)""};
    return state_db_intent_add(db, &in);
}

static int intent_get(struct state_db *db, int64_t idx, enum side target, uint32_t *bound)
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

static int intent_clear(struct state_db *db, int64_t idx)
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
    if (r->status != IMAP_STATUS_NONE || r->nargs < 3 ||
        !imap_value_is_atom(&r->args[1], "FETCH") || r->args[2].type != IMAP_LIST) {
        selected_untagged(fl->st, r);
        return;
    }
    const struct imap_value *list = &r->args[2];
    const struct imap_value *uidv = fetch_item(list, "UID");
    const struct imap_value *sizev = fetch_item(list, "RFC822.SIZE");
    const struct imap_value *datev = fetch_item(list, "INTERNALDATE");
    const struct imap_value *hdrv = NULL;
    for (size_t i = 0; i + 1 < list->count; i += 2) {
        const char *n;
        size_t nl;
        if (imap_value_string(&list->items[i], &n, &nl) && nl > 7 &&
            strncasecmp(n, "BODY[HEADER", 11) == 0)
            hdrv = &list->items[i + 1];
    }
    uint32_t uid;
    uint64_t size;
    const char *date, *hdr = "";
    size_t datelen, hdrlen = 0;
    if (!uidv || !imap_value_u32(uidv, &uid) || !sizev || !imap_value_u64(sizev, &size) || !datev ||
        !imap_value_string(datev, &date, &datelen)) {
        selected_untagged(fl->st, r);
        return;
    }
    if (hdrv)
        imap_value_string(hdrv, &hdr, &hdrlen);
    if (fl->count == fl->cap) {
        size_t cap = fl->cap ? fl->cap * 2 : 32;
        struct fingerprint *it = realloc(fl->items, cap * sizeof *it);
        if (!it)
            return;
        fl->items = it;
        fl->cap = cap;
    }
    fl->items[fl->count++] =
        (struct fingerprint){uid, size, strndup(date, datelen), strndup(hdr, hdrlen), false};
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
static int recover_appends(struct mbox_ctx *m, enum side dst, uint32_t bound)
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

/* ------------------------------------------------------------------ */
/* --repair: full comparison of both servers with the database */

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
        rc = imap_client_run(m->st[src].c,
                             "UID FETCH %a (UID MODSEQ FLAGS INTERNALDATE BODY.PEEK[])", set);
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
        uidset_add(&skip[OTHER(src)], appended.uids[i]);
    uidset_fini(&appended);
    return rc;
}

static int repair_pairs(struct mbox_ctx *m, struct uidset skip[2])
{
    struct sync_engine *e = m->e;
    struct imap_cmd *cmd[2] = {NULL, NULL};
    for (int s = 0; s < 2; s++)
        if (m->uidnext[s] > 1)
            cmd[s] = imap_client_send(m->st[s].c, "UID FETCH 1:%u (UID MODSEQ FLAGS)",
                                      m->uidnext[s] - 1);
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
            bool lnew = c[0]->modseq > m->db[0].highestmodseq;
            bool rnew = c[1]->modseq > m->db[1].highestmodseq;
            if (rnew && !lnew) {
                plan_add(&plan[0], c[1]->flags, u[0]);
            } else if (lnew && !rnew) {
                plan_add(&plan[1], c[0]->flags, u[1]);
            } else {
                char *un = flags_union(c[0]->flags, c[1]->flags);
                if (!un) {
                    rc = -ENOMEM;
                    break;
                }
                log_warn(e->log, NULL, NULL,
                         "%s flag update in %s for local UID %" PRIu32 " (%s) and remote UID "
                         "%" PRIu32 " (%s). Setting both to the union (%s).",
                         lnew ? "Conflicting" : "Missed", m->pretty, u[0], c[0]->flags, u[1],
                         c[1]->flags, un);
                plan_add(&plan[0], un, u[0]);
                plan_add(&plan[1], un, u[1]);
                free(un);
            }
        } else if (!c[0] && !c[1]) {
            log_warn(e->log, NULL, NULL,
                     "Pair (lUID,rUID) = (%" PRIu32 ",%" PRIu32 ") vanished from %s. Repairing.",
                     u[0], u[1], m->pretty);
            uidset_add(&dead, u[0]);
        } else {
            int gone = c[0] ? 1 : 0, kept = 1 - gone;
            log_warn(e->log, side_name[gone], st[gone].mailbox,
                     "UID %" PRIu32 " disappeared. Redownloading %s UID %" PRIu32 ".", u[gone],
                     side_name[kept], u[kept]);
            uidset_add(&dead, u[0]);
            uidset_add(&missing[kept], u[kept]);
        }
    }
    for (int s = 0; rc == 0 && s < 2; s++) {
        for (size_t i = 0; i < st[s].nchanges; i++) {
            if (seen[s][i] || st[s].changes[i].uid >= m->uidnext[s])
                continue;
            log_warn(e->log, side_name[OTHER(s)], st[OTHER(s)].mailbox,
                     "No match for %s UID %" PRIu32 ". Redownloading.", side_name[s],
                     st[s].changes[i].uid);
            uidset_add(&missing[s], st[s].changes[i].uid);
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

/* Sets up a mailbox's context: names, and what the database knows. No
 * command is sent. */
static int mbox_init(struct mbox_ctx *m, struct sync_engine *e, const struct mbox_work *w,
                     bool repair)
{
    memset(m, 0, sizeof *m);
    m->e = e;
    m->idx = w->idx;
    m->repair = repair;
    m->known = true;
    m->target_pending = -1;
    m->created[0] = w->created[0];
    m->created[1] = w->created[1];
    for (int s = 0; s < 2; s++) {
        m->st[s].e = e;
        m->st[s].side = (enum side)s;
        m->st[s].c = e->client[s];
        uidset_init(&m->st[s].vanished);
        uidset_init(&m->st[s].fetched);
        uidset_init(&m->st[s].probe);
    }
    m->pretty = pretty_name(e, w->key, w->keylen);
    for (int s = 0; s < 2; s++) {
        m->st[s].mailbox = server_name(e, (enum side)s, w->key, w->keylen);
        if (!m->st[s].mailbox || !m->pretty)
            return -ENOMEM;
        int f = state_db_side_get(e->db, w->idx, (enum side)s, &m->db[s]);
        if (f < 0) {
            log_error(e->log, "database", m->pretty, "%s", state_db_error(e->db));
            return ERR_DB;
        }
        if (f == 0)
            m->known = false;
        m->have_row[s] = f == 1;
    }
    return 0;
}

static void mbox_fini(struct mbox_ctx *m)
{
    for (int s = 0; s < 2; s++) {
        /* a SELECT sent ahead for a mailbox that is then not done (a stop,
         * a broken connection) is answered later and ignored */
        imap_cmd_free(&m->select[s]);
        if (m->st[s].c)
            imap_client_release(m->st[s].c, &m->st[s]);
        side_state_fini(&m->st[s]);
    }
    free(m->pretty);
    m->pretty = NULL;
}

/* Synchronizes one mailbox whose context mbox_init() set up, its SELECTs
 * possibly sent already. Returns 0, MAILBOX_AGAIN, or a negative error. */
static int sync_one(struct mbox_ctx *m)
{
    struct sync_engine *e = m->e;
    int rc = 0;
    struct uidset skip[2], ipairs[2];
    for (int s = 0; s < 2; s++) {
        uidset_init(&skip[s]);
        uidset_init(&ipairs[s]);
    }
    if (m->repair && !m->known)
        goto out; /* nothing recorded to compare with */
    /* the SELECTs may have been sent ahead: by the previous mailbox, or
     * behind the login (not to a server that greeted with PREAUTH) */
    for (int s = 0; s < 2; s++) {
        if (!m->select[s] && select_send_side(m, (enum side)s, SELECT_NOW, NULL) < 0) {
            rc = -ENOMEM;
            goto out;
        }
    }
    /* A mailbox created on one side in this run is empty there: copying
     * into it need not wait for that side's SELECT, whose answer is taken
     * before the APPEND replies are (select_wait_target). */
    bool want[2] = {true, true};
    if (!m->known && !m->repair && m->created[0] != m->created[1]) {
        m->target_pending = m->created[0] ? SIDE_LOCAL : SIDE_REMOTE;
        want[m->target_pending] = false;
    }
    rc = select_wait_sides(m, want);
    if (rc < 0)
        goto out;
    for (int s = 0; s < 2; s++)
        m->uidnext[s] = m->db[s].uidnext ? m->db[s].uidnext : 1;

    /* copies a previous run made but did not record (also into a mailbox
     * it created and died before learning the UIDVALIDITY of) */
    for (int s = 0; s < 2; s++) {
        if (m->target_pending == s)
            continue; /* created in this run: nothing to recover there */
        uint32_t bound = 0;
        int f = intent_get(e->db, m->idx, (enum side)s, &bound);
        if (f < 0) {
            rc = ERR_DB;
            goto out;
        }
        if (f == 1 && (rc = recover_appends(m, (enum side)s, bound)) < 0)
            goto out;
    }
    /* pairs recorded above the saved UIDNEXT (or any pair at all, for a
     * mailbox whose first run was interrupted) are not copied again */
    if (interrupted_pairs(m, ipairs, skip) < 0) {
        rc = ERR_DB;
        goto out;
    }
    if (m->repair && (rc = repair_pairs(m, skip)) < 0)
        goto out;
    /* Before any APPEND, remember where the copies will land: should we
     * die before recording them, the next run pairs them up instead of
     * copying them again. */
    bool intent = false;
    for (int s = 0; s < 2; s++) {
        if (m->target_pending == s)
            continue; /* its SELECT is not answered yet; it is empty */
        if (m->st[s].ms.uidnext > m->uidnext[s]) {
            /* any UIDNEXT seen before the APPEND is a lower bound for the
             * copies: 1 for a mailbox created in this run */
            uint32_t bound = m->target_pending == (int)OTHER(s) ? 1 : m->st[OTHER(s)].ms.uidnext;
            if (intent_set(e->db, m->idx, OTHER(s), bound) < 0) {
                rc = ERR_DB;
                goto out;
            }
            intent = true;
        }
    }
    if (intent && (state_db_commit(e->db) < 0 || state_db_begin(e->db) < 0)) {
        rc = ERR_DB;
        goto out;
    }

    /* The next mailbox's SELECTs may go out behind this one's last
     * commands: behind the stores when no message is to be copied,
     * else behind the last APPEND. Not while repairing, nor with pairs of
     * an interrupted run to settle. */
    bool simple = !m->repair && ipairs[0].count == 0;
    rc = sync_known(m, simple && !intent);
    if (rc != 0)
        goto out;
    rc = sync_new(m, skip, simple);
    if (rc == 0)
        rc = select_wait_target(m);
    if (rc != 0)
        goto out;
    /* the copies may have raced with flag changes: settle them */
    for (int s = 0; s < 2; s++) {
        uint32_t top = m->st[s].max_uid_seen + 1;
        for (size_t i = 0; i < skip[s].count; i++)
            if (skip[s].uids[i] + 1 > top)
                top = skip[s].uids[i] + 1;
        if (m->st[s].ms.uidnext > top)
            top = m->st[s].ms.uidnext;
        m->uidnext[s] = top > m->uidnext[s] ? top : m->uidnext[s];
    }
    rc = check_interrupted(m, ipairs);
    if (rc < 0)
        goto out;
    rc = sync_known(m, simple);
    if (rc != 0)
        goto out;
    for (int s = 0; s < 2; s++) {
        struct imap_mailbox_state *ms = &m->st[s].ms;
        uint64_t hms =
            m->st[s].max_modseq > ms->highestmodseq ? m->st[s].max_modseq : ms->highestmodseq;
        if (state_db_side_update(e->db, m->idx, (enum side)s, m->uidnext[s], hms) < 0) {
            rc = ERR_DB;
            goto out;
        }
    }
    if (intent_clear(e->db, m->idx) < 0) {
        rc = ERR_DB;
        goto out;
    }
    if (state_db_commit(e->db) < 0 || state_db_begin(e->db) < 0)
        rc = ERR_DB;
out:
    if (rc == 0 || rc == MAILBOX_AGAIN)
        log_summary(m);
    if (rc == MAILBOX_AGAIN) {
        /* what was done is acknowledged by the servers: keep it, but not
         * UIDNEXT and HIGHESTMODSEQ, so the next pass sees the rest */
        log_debug(e->log, NULL, m->pretty, "more changes came in; the mailbox is done again later");
        if (state_db_commit(e->db) < 0 || state_db_begin(e->db) < 0)
            rc = ERR_DB;
    }
    if (rc == ERR_DB)
        log_error(e->log, "database", m->pretty, "%s", state_db_error(e->db));
    if (rc < 0) {
        state_db_rollback(e->db);
        state_db_begin(e->db);
    }
    for (int s = 0; s < 2; s++) {
        imap_client_release(e->client[s], &m->st[s]);
        uidset_fini(&skip[s]);
        uidset_fini(&ipairs[s]);
    }
    return rc;
}

/* Whether LIST-STATUS says nothing moved on either side since last time. */
static bool unchanged(struct sync_engine *e, struct mbox_work *w)
{
    for (int s = 0; s < 2; s++) {
        struct listed *it = listing_find(&e->listing[s], w->key, w->keylen);
        struct state_side db;
        if (!it || !it->has_status)
            return false;
        if (state_db_side_get(e->db, w->idx, (enum side)s, &db) != 1)
            return false;
        if (db.uidvalidity != it->uidvalidity || db.uidnext != it->uidnext ||
            db.highestmodseq != it->highestmodseq)
            return false;
    }
    return true;
}

/* ------------------------------------------------------------------ */
/* --delete and --rename */

static bool targets_side(unsigned targets, enum side s)
{
    return targets & (s == SIDE_LOCAL ? SYNC_TARGET_LOCAL : SYNC_TARGET_REMOTE);
}

/* Command-line name (local delimiter) -> internal name (NUL delimiter). */
static char *key_from_arg(struct sync_engine *e, const char *arg, size_t *keylen)
{
    char *k = strdup(arg);
    if (!k)
        return NULL;
    *keylen = strlen(k);
    char d = e->listing[SIDE_LOCAL].delimiter;
    if (d)
        for (size_t i = 0; i < *keylen; i++)
            if (k[i] == d)
                k[i] = '\0';
    return k;
}

static int command_delete(struct sync_engine *e)
{
    unsigned t = e->opts.targets;
    int status = EXIT_IN_STEP;
    for (size_t i = 0; i < e->opts.nmailboxes; i++) {
        const char *arg = e->opts.mailboxes[i];
        if (strcasecmp(arg, "INBOX") == 0) {
            log_error(e->log, NULL, NULL, "INBOX cannot be deleted");
            return EXIT_USAGE;
        }
        size_t keylen;
        char *key = key_from_arg(e, arg, &keylen);
        if (!key)
            return EXIT_FAILURE_GENERIC;
        for (int s = 0; s < 2; s++) {
            if (!targets_side(t, (enum side)s))
                continue;
            struct listed *it = listing_find(&e->listing[s], key, keylen);
            if (!it || !it->selectable)
                continue;
            if (imap_client_run(e->client[s], "DELETE %m", it->server_name) < 0) {
                log_error(e->log, side_name[s], it->server_name, "cannot delete mailbox: %s",
                          imap_client_error(e->client[s]));
                status = EXIT_PARTIAL;
                continue;
            }
            log_info(e->log, side_name[s], it->server_name, "Deleted mailbox");
        }
        if (t & SYNC_TARGET_DATABASE) {
            int64_t idx;
            bool sub;
            int f = state_db_mailbox_find(e->db, key, keylen, &idx, &sub);
            if (f == 1) {
                if (state_db_mailbox_delete(e->db, idx) < 0 || state_db_commit(e->db) < 0 ||
                    state_db_begin(e->db) < 0) {
                    log_error(e->log, "database", NULL, "%s", state_db_error(e->db));
                    free(key);
                    return EXIT_FAILURE_GENERIC;
                }
                log_info(e->log, "database", NULL, "Removed mailbox %s", arg);
            } else if (f < 0) {
                log_error(e->log, "database", NULL, "%s", state_db_error(e->db));
                free(key);
                return EXIT_FAILURE_GENERIC;
            }
        }
        free(key);
    }
    return status;
}

static int command_rename(struct sync_engine *e)
{
    unsigned t = e->opts.targets;
    const char *from = e->opts.mailboxes[0], *to = e->opts.mailboxes[1];
    size_t flen = 0, tlen = 0;
    char *fkey = key_from_arg(e, from, &flen);
    char *tkey = key_from_arg(e, to, &tlen);
    int status = EXIT_IN_STEP;
    if (!fkey || !tkey) {
        status = EXIT_FAILURE_GENERIC;
        goto out;
    }
    /* refuse before touching anything if DEST exists on a target */
    for (int s = 0; s < 2; s++) {
        if (!targets_side(t, (enum side)s))
            continue;
        struct listed *it = listing_find(&e->listing[s], tkey, tlen);
        if (it && it->selectable) {
            log_error(e->log, side_name[s], NULL,
                      "Mailbox %s exists. Run `interimap --target=%s --delete %s` to delete.",
                      it->server_name, side_name[s], to);
            status = EXIT_FAILURE_GENERIC;
            goto out;
        }
    }
    int64_t idx;
    bool sub;
    if ((t & SYNC_TARGET_DATABASE) && state_db_mailbox_find(e->db, tkey, tlen, &idx, &sub) == 1) {
        log_error(e->log, "database", NULL,
                  "Mailbox %s exists. Run `interimap --target=database --delete %s` to delete.", to,
                  to);
        status = EXIT_FAILURE_GENERIC;
        goto out;
    }
    for (int s = 0; s < 2; s++) {
        if (!targets_side(t, (enum side)s))
            continue;
        /* \NonExistent parents can be renamed too (their children move) */
        struct listed *it = listing_find(&e->listing[s], fkey, flen);
        if (!it)
            continue;
        char *dest = server_name(e, (enum side)s, tkey, tlen);
        if (!dest) {
            status = EXIT_FAILURE_GENERIC;
            goto out;
        }
        if (imap_client_run(e->client[s], "RENAME %m %m", it->server_name, dest) < 0) {
            log_error(e->log, side_name[s], it->server_name, "cannot rename to %s: %s", dest,
                      imap_client_error(e->client[s]));
            status = EXIT_PARTIAL;
        } else {
            log_info(e->log, side_name[s], it->server_name, "Renamed to %s", dest);
        }
        free(dest);
    }
    if (t & SYNC_TARGET_DATABASE) {
        int n = state_db_mailbox_rename(e->db, fkey, flen, tkey, tlen);
        if (n < 0 || state_db_commit(e->db) < 0 || state_db_begin(e->db) < 0) {
            log_error(e->log, "database", NULL, "%s", state_db_error(e->db));
            status = EXIT_FAILURE_GENERIC;
            goto out;
        }
        if (n > 0)
            log_info(e->log, "database", NULL, "Renamed mailbox %s to %s", from, to);
    }
out:
    free(fkey);
    free(tkey);
    return status;
}

/* ------------------------------------------------------------------ */

struct sync_engine *sync_engine_new(struct coro_sched *sched, const struct config *cfg,
                                    struct logger *log, const struct sync_options *opts)
{
    struct sync_engine *e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    e->sched = sched;
    e->cfg = cfg;
    e->log = log;
    e->opts = *opts;
    return e;
}

void sync_engine_free(struct sync_engine **pe)
{
    if (!pe || !*pe)
        return;
    struct sync_engine *e = *pe;
    *pe = NULL;
    early_list_free(e); /* before the clients they belong to */
    mbox_free(&e->spec);
    for (int s = 0; s < 2; s++) {
        imap_client_free(&e->client[s]);
        listing_fini(&e->listing[s]);
    }
    if (e->ignore_re)
        pcre2_code_free(e->ignore_re);
    state_db_close(&e->db);
    free(e);
}

static int compile_ignore(struct sync_engine *e)
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

/* Connects both servers (again, after a failure) and lists them. */
static int engine_open(struct sync_engine *e)
{
    early_list_free(e);
    mbox_free(&e->spec);
    for (int s = 0; s < 2; s++)
        imap_client_free(&e->client[s]);
    int r = engine_connect(e);
    e->connected = r == 0;
    if (r < 0)
        return r;
    r = engine_relist(e);
    if (r < 0)
        drop_speculative(e); /* no cycle follows to take it */
    return r;
}

static bool engine_broken(const struct sync_engine *e)
{
    return !e->connected || imap_client_is_broken(e->client[0]) ||
           imap_client_is_broken(e->client[1]);
}

/* Sets up the context of a mailbox to synchronize, or returns NULL. */
static struct mbox_ctx *mbox_new(struct sync_engine *e, const struct mbox_work *w, bool repair)
{
    struct mbox_ctx *m = malloc(sizeof *m);
    if (!m)
        return NULL;
    if (mbox_init(m, e, w, repair) < 0) {
        mbox_fini(m);
        free(m);
        return NULL;
    }
    return m;
}

static void mbox_free(struct mbox_ctx **pm)
{
    if (!*pm)
        return;
    mbox_fini(*pm);
    free(*pm);
    *pm = NULL;
}

/*
 * INBOX, if the database knows it, is selected right behind the LISTs that
 * ride along with the login: it is where mail arrives, so it is the
 * mailbox most likely to need synchronizing, and its SELECT then costs no
 * round trip of its own. engine_cycle does it first if LIST-STATUS says it
 * changed, and otherwise lets the answer go.
 */
static struct mbox_ctx *speculative_inbox(struct sync_engine *e)
{
    /* only where INBOX is surely among the mailboxes synchronized: a
     * SELECT is not free of effects (it clears \Recent) */
    if (e->opts.command != SYNC_DEFAULT || e->opts.nmailboxes || e->cfg->list_mailbox_count ||
        (e->cfg->list_select_opts && *e->cfg->list_select_opts) || ignored(e, "INBOX", 5))
        return NULL;
    struct mbox_work w = {.key = "INBOX", .keylen = 5};
    bool sub;
    if (state_db_mailbox_find(e->db, w.key, w.keylen, &w.idx, &sub) != 1)
        return NULL;
    struct mbox_ctx *m = mbox_new(e, &w, false);
    if (m && !m->known)
        mbox_free(&m);
    return m;
}

/* Takes the speculatively selected INBOX: first in `todo` if it is there,
 * else its SELECTs are waited for (their answers must not reach the next
 * mailbox's handler) and dropped. */
static struct mbox_ctx *take_speculative(struct sync_engine *e, const struct mbox_work *work,
                                         size_t *todo, size_t ntodo)
{
    struct mbox_ctx *m = e->spec;
    for (size_t k = 0; m && k < ntodo; k++) {
        if (work[todo[k]].idx != m->idx)
            continue;
        size_t first = todo[k];
        memmove(todo + 1, todo, k * sizeof *todo);
        todo[0] = first;
        e->spec = NULL;
        return m;
    }
    drop_speculative(e);
    return NULL;
}

/* Lets the speculative INBOX go once its SELECTs are answered: until then
 * their responses would reach whatever handler comes next. */
static void drop_speculative(struct sync_engine *e)
{
    if (!e->spec)
        return;
    for (int s = 0; s < 2; s++)
        if (e->spec->select[s])
            imap_cmd_wait(e->spec->select[s]);
    mbox_free(&e->spec);
}

/* One synchronization of every mailbox; returns an exit status. */
static int engine_cycle(struct sync_engine *e)
{
    struct mbox_work *work = NULL;
    size_t nwork = 0;
    int status = EXIT_IN_STEP;
    bool repair = e->opts.command == SYNC_REPAIR;
    e->failed_mailboxes = 0;
    if (sync_mailbox_list(e, &work, &nwork) < 0)
        return engine_broken(e) ? EXIT_CONNECTION : EXIT_FAILURE_GENERIC;
    /* the mailboxes to do, in order; one done again (MAILBOX_AGAIN) goes
     * to the end, once */
    size_t *todo = malloc((2 * nwork + 1) * sizeof *todo), ntodo = 0;
    bool *again = calloc(nwork + 1, sizeof *again);
    if (!todo || !again) {
        free(todo);
        free(again);
        for (size_t i = 0; i < nwork; i++)
            free(work[i].key);
        free(work);
        return EXIT_FAILURE_GENERIC;
    }
    for (size_t i = 0; i < nwork; i++)
        if (repair || !unchanged(e, &work[i]))
            todo[ntodo++] = i;
    struct mbox_ctx *cur = take_speculative(e, work, todo, ntodo), *next = NULL;
    for (size_t k = 0; k < ntodo && !e->stop; k++) {
        if (!cur)
            cur = mbox_new(e, &work[todo[k]], repair);
        /* the next one is set up now so that this one can send its
         * SELECTs ahead (not when repairing, nor for a mailbox's second
         * pass, which may need every command it can send) */
        next = NULL;
        if (cur && !repair && !again[todo[k]] && k + 1 < ntodo)
            next = mbox_new(e, &work[todo[k + 1]], repair);
        int r = -ENOMEM;
        if (cur) {
            cur->next = next;
            r = sync_one(cur);
        }
        if (r == MAILBOX_AGAIN && !again[todo[k]]) {
            again[todo[k]] = true;
            todo[ntodo++] = todo[k];
        } else if (r != 0) {
            e->failed_mailboxes++;
            if (engine_broken(e)) {
                status = EXIT_CONNECTION;
                break;
            }
        }
        mbox_free(&cur);
        cur = next;
        next = NULL;
    }
    /* a stop or a broken connection may leave a SELECT sent ahead */
    mbox_free(&cur);
    mbox_free(&next);
    free(todo);
    free(again);
    if (status == EXIT_IN_STEP && e->failed_mailboxes)
        status = EXIT_PARTIAL;
    for (size_t i = 0; i < nwork; i++)
        free(work[i].key);
    free(work);
    if (state_db_commit(e->db) < 0 || state_db_begin(e->db) < 0) {
        log_error(e->log, "database", NULL, "%s", state_db_error(e->db));
        status = EXIT_FAILURE_GENERIC;
    }
    return status;
}

static void on_signal(uv_signal_t *h, int signum)
{
    struct sync_engine *e = h->data;
    (void)signum;
    e->stop = true;
    if (e->sleeper) {
        struct coro *w = e->sleeper;
        e->sleeper = NULL;
        coro_wake(w);
    }
}

/* Sleeps up to ms, or until a server reports something (when watching
 * them), or until a signal asks us to stop. */
static void engine_sleep(struct sync_engine *e, uint64_t ms, bool watch_servers)
{
    struct coro *self = coro_current(e->sched);
    bool any = false;
    if (watch_servers)
        for (int s = 0; s < 2; s++)
            any |= imap_client_watch(e->client[s], self);
    if (!any && !e->stop) {
        e->sleeper = self;
        await_sleep(e->sched, ms);
        e->sleeper = NULL;
    }
    for (int s = 0; s < 2; s++)
        if (e->client[s])
            imap_client_watch(e->client[s], NULL);
}

/*
 * Waits for changes between two cycles. With --notify: NOTIFY when both
 * servers offer it (every mailbox reports), otherwise IDLE on INBOX on
 * both (other mailboxes are polled at the --watch interval). Without:
 * sleep for the interval. The selected mailbox is closed first, since
 * LIST-STATUS may not report it accurately.
 */
static void engine_wait(struct sync_engine *e)
{
    uint64_t ms = (uint64_t)e->opts.watch_seconds * 1000;
    for (int s = 0; s < 2; s++) {
        struct imap_client *c = e->client[s];
        if (imap_client_has_cap(c, "UNSELECT"))
            imap_client_run(c, "UNSELECT");
        else
            imap_client_run(c, "NOOP");
    }
    if (!e->opts.notify) {
        engine_sleep(e, ms, false);
        return;
    }
    bool notify =
        imap_client_has_cap(e->client[0], "NOTIFY") && imap_client_has_cap(e->client[1], "NOTIFY");
    if (notify) {
        if (!e->notify_set) {
            for (int s = 0; s < 2; s++)
                imap_client_run(e->client[s],
                                "NOTIFY SET (PERSONAL (MessageNew MessageExpunge FlagChange "
                                "MailboxName SubscriptionChange))");
            e->notify_set = true;
        }
        engine_sleep(e, ms, true);
        return;
    }
    struct imap_cmd *idle[2] = {NULL, NULL};
    for (int s = 0; s < 2; s++) {
        struct imap_client *c = e->client[s];
        if (!imap_client_has_cap(c, "IDLE"))
            continue;
        char *inbox = server_name(e, (enum side)s, "INBOX", 5);
        if (inbox && imap_client_run(c, "EXAMINE %m", inbox) == 0)
            idle[s] = imap_client_idle_begin(c);
        free(inbox);
    }
    /* whatever arrived while entering IDLE is not news */
    for (int s = 0; s < 2; s++)
        imap_client_watch(e->client[s], NULL);
    engine_sleep(e, ms, true);
    for (int s = 0; s < 2; s++) {
        if (idle[s]) {
            imap_client_idle_end(e->client[s], idle[s]);
            imap_cmd_free(&idle[s]);
        }
        if (imap_client_has_cap(e->client[s], "UNSELECT"))
            imap_client_run(e->client[s], "UNSELECT");
    }
}

static void logout_main(struct coro *self, void *arg)
{
    (void)self;
    imap_client_logout(arg);
}

/* LOGOUT on both connections at once: one round trip, not two. */
static void engine_logout(struct sync_engine *e)
{
    struct coro *co[2] = {NULL, NULL};
    for (int s = 0; s < 2; s++)
        if (e->client[s] && !imap_client_is_broken(e->client[s]))
            co[s] = coro_spawn(e->sched, logout_main, e->client[s], 0);
    for (int s = 0; s < 2; s++)
        if (co[s])
            coro_join(coro_current(e->sched), co[s]);
}

int sync_engine_run(struct sync_engine *e)
{
    char err[512];
    if (compile_ignore(e) < 0)
        return EXIT_USAGE;
    if (state_db_open(e->cfg->database, &e->db, err, sizeof err) < 0) {
        log_error(e->log, "database", NULL, "%s", err);
        return EXIT_FAILURE_GENERIC;
    }
    if (engine_connect(e) < 0)
        return EXIT_CONNECTION;
    e->connected = true;
    if (engine_relist(e) < 0)
        return engine_broken(e) ? EXIT_CONNECTION : EXIT_FAILURE_GENERIC;
    if (state_db_prepare(e->db, e->listing[SIDE_LOCAL].delimiter, e->listing[SIDE_REMOTE].delimiter,
                         err, sizeof err) < 0) {
        log_error(e->log, "database", NULL, "%s", err);
        return EXIT_FAILURE_GENERIC;
    }
    if (state_db_begin(e->db) < 0) {
        log_error(e->log, "database", NULL, "%s", state_db_error(e->db));
        return EXIT_FAILURE_GENERIC;
    }

    int status;
    if (e->opts.command == SYNC_DELETE)
        status = command_delete(e);
    else if (e->opts.command == SYNC_RENAME)
        status = command_rename(e);
    else
        status = engine_cycle(e);

    if (e->opts.watch_seconds >= 0 && e->opts.command == SYNC_DEFAULT) {
        uv_signal_t sig[2];
        int signums[2] = {SIGINT, SIGTERM};
        for (int i = 0; i < 2; i++) {
            uv_signal_init(coro_sched_loop(e->sched), &sig[i]);
            sig[i].data = e;
            uv_signal_start(&sig[i], on_signal, signums[i]);
        }
        unsigned backoff = 1;
        while (!e->stop) {
            if (engine_broken(e)) {
                log_warn(e->log, NULL, NULL, "connection lost; reconnecting in %u s", backoff);
                engine_sleep(e, backoff * 1000ull, false);
                if (e->stop)
                    break;
                backoff = backoff < 60 ? backoff * 2 : 60;
                e->notify_set = false;
                if (engine_open(e) < 0)
                    continue;
                log_info(e->log, NULL, NULL, "reconnected");
                backoff = 1;
            } else {
                engine_wait(e);
                if (e->stop || engine_broken(e))
                    continue;
                if (engine_relist(e) < 0)
                    continue;
            }
            engine_cycle(e);
        }
        for (int i = 0; i < 2; i++) {
            uv_signal_stop(&sig[i]);
            await_close(e->sched, (uv_handle_t *)&sig[i]);
        }
        status = EXIT_IN_STEP;
    }

    state_db_commit(e->db);
    engine_logout(e);
    return status;
}
