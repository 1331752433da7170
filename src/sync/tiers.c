/*
 * Capability tiers: what each server offers for finding changes (enum
 * tier), remembering what it advertised so that the next run can send
 * extension commands behind the login (and, from its greeting, the login
 * itself behind the TLS handshake), and the ways of finding changes
 * on a server without QRESYNC: the commands sent behind its SELECT, and
 * the per-message flag records of a server without mod-sequences.
 */
#include "internal.h"

#include <stddef.h>

const char *const tier_name[3] = {"IMAP4rev1", "CONDSTORE", "QRESYNC"};

/* What each tier means for the user, said once (see caps_adopt). */
static const char *const tier_says[3] = {
    "neither QRESYNC nor CONDSTORE: flags are compared with a record kept in the database, so "
    "every mailbox that holds messages is read on every run",
    "CONDSTORE without QRESYNC: the server reports flag changes; expunges are found by listing "
    "the UIDs left",
    "QRESYNC: the server reports flag changes and expunges",
};

/* The best tier the server offers (or is expected to offer, before the
 * login's capabilities are known). QRESYNC is enabled with ENABLE. */
enum tier tier_of(struct imap_client *c)
{
    if (imap_client_may_use(c, "QRESYNC") && imap_client_may_use(c, "ENABLE"))
        return TIER_QRESYNC;
    if (imap_client_may_use(c, "CONDSTORE"))
        return TIER_CONDSTORE;
    return TIER_PLAIN;
}

/* A digest of what identifies a server and account: capabilities
 * remembered for other settings do not count (FNV-1a, 64 bits). */
static void caps_key(const struct server_config *sc, char out[20])
{
    const char *parts[] = {sc->type == SERVER_TUNNEL  ? "tunnel"
                           : sc->type == SERVER_IMAPS ? "imaps"
                                                      : "imap",
                           sc->host,
                           sc->port,
                           sc->username,
                           sc->command,
                           sc->proxy};
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < sizeof parts / sizeof *parts; i++) {
        for (const char *p = parts[i] ? parts[i] : ""; *p; p++) {
            h ^= (unsigned char)*p;
            h *= 0x100000001b3ull;
        }
        h ^= 0xff; /* separator: ("ab","c") differs from ("a","bc") */
        h *= 0x100000001b3ull;
    }
    snprintf(out, 20, "%016" PRIx64, h);
}

/* Before connecting: what each server advertised last time (from this
 * process's previous connection, or from the database) is what the login
 * may be followed by, and what its greeting said is what the login may
 * go out without waiting for. */
void caps_load(struct sync_engine *e)
{
    for (int s = 0; s < 2; s++) {
        const struct server_config *sc = s == SIDE_LOCAL ? &e->cfg->local : &e->cfg->remote;
        if (!e->caps[s]) {
            caps_key(sc, e->capkey[s]);
            /* (a dry run may have no database) */
            int f = e->db ? state_db_caps_get(e->db, (enum side)s, e->capkey[s], &e->caps[s],
                                              &e->append_hms[s])
                          : 0;
            e->caps_new[s] = f != 1;
            /* the greeting is kept on a line of its own behind them */
            char *nl = e->caps[s] ? strchr(e->caps[s], '\n') : NULL;
            if (nl) {
                *nl = '\0';
                free(e->greeting[s]);
                e->greeting[s] = strdup(nl + 1); /* (without it: a round trip lost) */
            }
        }
        imap_client_expect_caps(e->client[s], e->caps[s]);
        imap_client_expect_greeting(e->client[s], e->greeting[s]);
        e->tier[s] = tier_of(e->client[s]);
    }
}

/* After connecting: the tiers the servers offer now, said under --debug
 * every time and otherwise (caps_tell) on first use without QRESYNC or
 * when it changed; what they advertised is remembered. */
void caps_adopt(struct sync_engine *e)
{
    for (int s = 0; s < 2; s++) {
        enum tier t = tier_of(e->client[s]);
        char *caps = imap_client_caps_string(e->client[s]);
        /* said when a server is first used without QRESYNC, and whenever
         * its tier changed: with two QRESYNC servers the output stays the
         * Perl tool's */
        e->tell_tier[s] =
            (e->caps_new[s] && t != TIER_QRESYNC) || (!e->caps_new[s] && t != e->tier[s]);
        log_debug(e->log, side_name[s], NULL, "tier %s (capabilities: %s)", tier_name[t],
                  caps ? caps : "?");
        e->tier[s] = t;
        e->caps_new[s] = false;
        if (caps && (!e->caps[s] || strcmp(caps, e->caps[s]) != 0)) {
            free(e->caps[s]);
            e->caps[s] = caps;
            e->caps_dirty[s] = true;
            e->append_hms[s] = 0; /* another server, or another version: learnt again */
        } else {
            free(caps);
        }
        const char *greeting = imap_client_greeting(e->client[s]);
        if (greeting && (!e->greeting[s] || strcmp(greeting, e->greeting[s]) != 0)) {
            char *copy = strdup(greeting);
            if (copy) {
                free(e->greeting[s]);
                e->greeting[s] = copy;
                e->greeting_dirty[s] = true;
            }
        }
    }
}

/* After a failed connection: a greeting that differs from the remembered
 * one replaces it at once, so that the next run does not send its login
 * ahead the way that failed (a server that misread the commands behind
 * the login can leave the second login of the same connection failing
 * too). Best effort: without the table nothing was remembered. */
void caps_keep_greeting(struct sync_engine *e)
{
    for (int s = 0; s < 2; s++) {
        const char *greeting = e->client[s] ? imap_client_greeting(e->client[s]) : NULL;
        if (!e->db || !e->caps[s] || !greeting ||
            (e->greeting[s] && strcmp(greeting, e->greeting[s]) == 0))
            continue;
        char *copy = strdup(greeting);
        if (!copy)
            continue;
        free(e->greeting[s]);
        e->greeting[s] = copy;
        size_t len = strlen(e->caps[s]) + strlen(copy) + 2;
        char *text = malloc(len);
        if (!text)
            continue;
        snprintf(text, len, "%s\n%s", e->caps[s], copy);
        if (state_db_caps_set(e->db, (enum side)s, e->capkey[s], text, e->append_hms[s]) < 0)
            log_debug(e->log, "database", NULL, "greeting not remembered: %s",
                      state_db_error(e->db));
        free(text);
    }
}

/* Says which tier a side runs on where caps_adopt found it worth saying;
 * once the servers are listed, so that a run that fails earlier says only
 * why. */
void caps_tell(struct sync_engine *e)
{
    for (int s = 0; s < 2; s++) {
        if (e->tell_tier[s])
            log_info(e->log, side_name[s], NULL, "%s", tier_says[e->tier[s]]);
        e->tell_tier[s] = false;
    }
}

/* Writes what changed since the database last heard; needs its schema. */
int caps_save(struct sync_engine *e)
{
    for (int s = 0; s < 2; s++) {
        if (!e->caps_dirty[s] && !e->greeting_dirty[s])
            continue;
        if (!e->caps[s])
            continue;
        /* the capabilities, then the greeting on a line of its own (an
         * older version takes the line for part of the last capability,
         * which costs it at most a round trip) */
        const char *g = e->greeting[s];
        size_t len = strlen(e->caps[s]) + (g ? strlen(g) + 1 : 0) + 1;
        char *text = malloc(len);
        if (!text)
            return -ENOMEM;
        snprintf(text, len, "%s%s%s", e->caps[s], g ? "\n" : "", g ? g : "");
        int r = state_db_caps_set(e->db, (enum side)s, e->capkey[s], text, e->append_hms[s]);
        free(text);
        if (r < 0) {
            log_error(e->log, "database", NULL, "%s", state_db_error(e->db));
            return ERR_DB;
        }
        e->caps_dirty[s] = false;
        e->greeting_dirty[s] = false;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* finding changes without QRESYNC */

/*
 * Right behind the SELECT of a mailbox the database knows: with
 * CONDSTORE, the flag changes since the saved HIGHESTMODSEQ and, unless
 * the listing shows nothing can have gone, the UIDs left (to find
 * expunges); without, every message's UID and flags. Their answers are
 * taken with the SELECT's (prefetch_wait).
 */
int prefetch_send(struct mbox_ctx *m, enum side s)
{
    struct side_state *st = &m->st[s];
    if (m->repair || !m->known || m->db[s].uidnext <= 1 || st->how == TIER_QRESYNC)
        return 0;
    uint32_t last = m->db[s].uidnext - 1;
    if (st->how == TIER_CONDSTORE) {
        st->prefetch = imap_client_send(st->c, "UID FETCH 1:%u (UID FLAGS) (CHANGEDSINCE %U)", last,
                                        m->db[s].highestmodseq);
        if (st->expunge_check) {
            uidset_clear(&st->present);
            st->searching = true;
            st->search = imap_client_has_cap(st->c, "ESEARCH")
                             ? imap_client_send(st->c, "UID SEARCH RETURN (ALL) UID 1:%u", last)
                             : imap_client_send(st->c, "UID SEARCH UID 1:%u", last);
            if (!st->search)
                return -ENOMEM;
        }
    } else {
        /* to the end, not to the saved UIDNEXT: a server that sends no
         * UIDNEXT in SELECT tells the new messages this way */
        st->prefetch = imap_client_send(st->c, "UID FETCH 1:4294967295 (UID FLAGS)");
    }
    return st->prefetch ? 0 : -ENOMEM;
}

/* Waits for what prefetch_send sent and forgets it (the mailbox turned
 * out to have no mod-sequences: its answers do not apply). */
void prefetch_drop(struct mbox_ctx *m, enum side s)
{
    struct side_state *st = &m->st[s];
    struct imap_cmd **cmds[2] = {&st->prefetch, &st->search};
    for (int k = 0; k < 2; k++) {
        if (*cmds[k])
            imap_cmd_wait(*cmds[k]);
        imap_cmd_free(cmds[k]);
    }
    st->searching = false;
}

/* The answer to UID SEARCH (CONDSTORE): SEARCH or ESEARCH ... ALL. Only
 * UIDs we can know (below the saved UIDNEXT) are kept, within the side's
 * memory budget. */
bool search_untagged(struct side_state *st, const struct imap_response *r)
{
    if (!st->searching || r->status != IMAP_STATUS_NONE || r->nargs < 1)
        return false;
    uint32_t top = st->known_uidnext ? st->known_uidnext - 1 : 0;
    if (imap_value_is_atom(&r->args[0], "SEARCH")) {
        for (size_t i = 1; i < r->nargs; i++) {
            uint32_t uid;
            if (imap_value_u32(&r->args[i], &uid) && uid && uid <= top &&
                side_charge(st, 2 * sizeof uid) && uidset_add(&st->present, uid) < 0)
                side_fail(st, -ENOMEM, "out of memory");
        }
        return true;
    }
    if (!imap_value_is_atom(&r->args[0], "ESEARCH"))
        return false;
    for (size_t i = 1; i + 1 < r->nargs; i++) {
        const char *set;
        size_t len;
        if (!imap_value_is_atom(&r->args[i], "ALL") ||
            !imap_value_string(&r->args[i + 1], &set, &len))
            continue;
        size_t left = (st->mem_limit - st->mem_used) / (2 * sizeof(uint32_t));
        size_t before = st->present.count;
        struct uidset_bounds b = {.max_uid = top, .max_count = before + left};
        int rc = uidset_parse_bounded(&st->present, set, len, &b);
        if (rc == -EINVAL)
            side_fail(st, ERR_PROTOCOL, "the server sent an invalid ESEARCH response");
        else if (rc == -E2BIG)
            side_charge(st, SIZE_MAX); /* over the budget: says so, fails the mailbox */
        else if (rc < 0)
            side_fail(st, rc, "out of memory");
        else if (st->present.count > before)
            side_charge(st, (st->present.count - before) * 2 * sizeof(uint32_t));
    }
    return true;
}

/* Flags seen or set on a side without mod-sequences, for its record. */
void now_note(struct side_state *st, uint32_t uid, const char *flags)
{
    /* charged like a change (what a server sends is bounded) */
    if (!side_charge(st, 2 * sizeof(struct change) + ((strlen(flags) + 16) & ~(size_t)15) + 16))
        return;
    struct change *v = array_reserve(st->now, &st->capnow, st->nnow + 1, sizeof *v, 64);
    if (!v)
        return; /* the record keeps the older flags: a change is seen again */
    st->now = v;
    char *f = strdup(flags);
    if (!f)
        return;
    /* modseq holds the order of arrival here */
    st->now[st->nnow] = (struct change){.uid = uid, .modseq = st->nnow, .flags = f};
    st->nnow++;
}

_Static_assert(offsetof(struct state_flags, uid) == 0, "uid_find reads the UID first");

const struct state_flags *rec_find(const struct side_state *st, uint32_t uid)
{
    return uid_find(st->rec, st->nrec, sizeof *st->rec, uid);
}

/* The mapped UIDs of one side, sorted. */
static int mapped_uids(struct mbox_ctx *m, enum side s, struct uidset *out)
{
    struct state_pair *pairs = NULL;
    size_t n = 0;
    if (state_db_mapping_all(m->e->db, m->idx, &pairs, &n) < 0)
        return ERR_DB;
    for (size_t i = 0; i < n; i++)
        uidset_add(out, s == SIDE_LOCAL ? pairs[i].luid : pairs[i].ruid);
    free(pairs);
    uidset_normalize(out);
    return 0;
}

/* What the listing of the UIDs left tells: the mapped ones missing are
 * expunged (`present` sorted). */
static int vanished_from(struct mbox_ctx *m, enum side s, const struct uidset *present)
{
    struct uidset mapped;
    uidset_init(&mapped);
    int rc = mapped_uids(m, s, &mapped);
    for (size_t i = 0; rc == 0 && i < mapped.count; i++)
        if (mapped.uids[i] < m->db[s].uidnext && !uidset_contains(present, mapped.uids[i]))
            uidset_add(&m->st[s].vanished, mapped.uids[i]);
    uidset_fini(&mapped);
    return rc;
}

/*
 * Takes the answers of the commands prefetch_send sent: for CONDSTORE the
 * flag changes are in place already (FETCH responses) and the expunges
 * are what UID SEARCH no longer lists; without mod-sequences every
 * message's flags came, and a change is a difference from the record.
 */
int prefetch_wait(struct mbox_ctx *m, enum side s)
{
    struct side_state *st = &m->st[s];
    if (!st->prefetch && !st->search)
        return 0;
    int rc = 0;
    struct imap_cmd **cmds[2] = {&st->prefetch, &st->search};
    for (int k = 0; k < 2; k++) {
        if (!*cmds[k])
            continue;
        int r = imap_cmd_wait(*cmds[k]);
        imap_cmd_free(cmds[k]);
        if (r < 0 && rc == 0) {
            log_error(m->e->log, side_name[s], st->mailbox, "%s: %s",
                      k ? "cannot list UIDs" : "cannot fetch flags", imap_client_error(st->c));
            rc = r;
        }
    }
    bool searched = st->searching;
    st->searching = false;
    if (rc < 0)
        return rc;
    if (st->how == TIER_CONDSTORE) {
        if (!searched)
            return 0;
        uidset_normalize(&st->present);
        return vanished_from(m, s, &st->present);
    }
    /* every message came: the mapped ones missing are gone; the others
     * changed if their flags differ from the record */
    changes_compact(st);
    struct uidset present;
    uidset_init(&present);
    uint32_t top = 0;
    size_t o = 0;
    for (size_t i = 0; i < st->nchanges; i++) {
        struct change *ch = &st->changes[i];
        uidset_add(&present, ch->uid);
        if (ch->uid > top)
            top = ch->uid;
        const struct state_flags *rec = rec_find(st, ch->uid);
        if (ch->uid >= m->db[s].uidnext || (rec && flags_equal(rec->flags, ch->flags))) {
            free(ch->flags);
            continue;
        }
        ch->weak = rec == NULL;
        st->changes[o++] = *ch;
    }
    st->nchanges = o;
    uidset_normalize(&present);
    rc = vanished_from(m, s, &present);
    uidset_fini(&present);
    /* a server that sent no UIDNEXT: every UID below this one was seen */
    if (st->ms.uidnext == 0)
        st->ms.uidnext = top >= m->db[s].uidnext ? top + 1 : m->db[s].uidnext;
    return rc;
}

/* PERMANENTFLAGS, on a side compared with a flag record: the flags a copy
 * made here surely keeps. */
void permanent_note(struct side_state *st, const struct imap_value *list)
{
    if (st->how != TIER_PLAIN || list->type != IMAP_LIST)
        return;
    free(st->permanent);
    st->permanent = flags_normalize(list);
    st->any_keyword = false;
    for (size_t i = 0; i < list->count; i++)
        if (imap_value_is_atom(&list->items[i], "\\*"))
            st->any_keyword = true;
}

/* Whether the server surely keeps every flag of the list (canonical). */
static bool flags_kept(const struct side_state *st, const char *flags)
{
    if (!st->permanent)
        return false;
    for (const char *p = flags; *p;) {
        size_t len = strcspn(p, " ");
        bool kept = *p != '\\' && st->any_keyword;
        for (const char *q = st->permanent; *q && !kept;) {
            size_t ql = strcspn(q, " ");
            kept = ql == len && strncasecmp(p, q, len) == 0;
            q += ql + (q[ql] == ' ');
        }
        if (!kept)
            return false;
        p += len + (p[len] == ' ');
    }
    return true;
}

/* The flags a message of the other side is appended with here. */
void sent_note(struct side_state *target, uint32_t src_uid, const char *flags)
{
    struct change *v =
        array_reserve(target->sent, &target->capsent, target->nsent + 1, sizeof *v, 64);
    char *f = v ? strdup(flags) : NULL;
    if (v)
        target->sent = v;
    if (!f) {
        target->record_probe = true; /* told by the probe instead */
        return;
    }
    target->sent[target->nsent++] = (struct change){.uid = src_uid, .flags = f};
}

/* The copy of src_uid got `uid` here: its flags go to the record if the
 * server surely kept them, else the probe after the copies asks. */
void sent_record(struct side_state *target, uint32_t src_uid, uint32_t uid)
{
    for (size_t i = target->nsent; i-- > 0;) {
        if (target->sent[i].uid != src_uid)
            continue;
        if (flags_kept(target, target->sent[i].flags))
            now_note(target, uid, target->sent[i].flags);
        else
            target->record_probe = true;
        return;
    }
    target->record_probe = true;
}

/* Orders the noted flags by UID, the latest last. */
static int cmp_noted(const void *a, const void *b)
{
    const struct change *x = a, *y = b;
    if (x->uid != y->uid)
        return x->uid < y->uid ? -1 : 1;
    return x->modseq < y->modseq ? -1 : x->modseq > y->modseq;
}

static const struct change *noted_find(const struct side_state *st, uint32_t uid)
{
    size_t lo = 0, hi = st->nnow, found = SIZE_MAX;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (st->now[mid].uid <= uid) {
            if (st->now[mid].uid == uid)
                found = mid; /* the latest is further right */
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return found == SIZE_MAX ? NULL : &st->now[found];
}

/*
 * At the end of a mailbox: a side whose saved HIGHESTMODSEQ is 0 is
 * compared with its flag record next time, so the record is brought up to
 * date (only the rows that changed are written); any other side needs no
 * record, and a stale one is dropped.
 */
int flags_record(struct mbox_ctx *m, enum side s, uint64_t hms)
{
    struct sync_engine *e = m->e;
    struct side_state *st = &m->st[s];
    if (hms > 0) {
        /* a side read without mod-sequences this time only (after
         * NOMODSEQ, or a first run with them) may have one */
        if (st->how == TIER_PLAIN)
            return state_db_flags_clear(e->db, m->idx, s) < 0 ? ERR_DB : 0;
        return 0;
    }
    qsort(st->now, st->nnow, sizeof *st->now, cmp_noted);
    struct uidset mapped;
    uidset_init(&mapped);
    int rc = mapped_uids(m, s, &mapped);
    for (size_t i = 0; rc == 0 && i < mapped.count; i++) {
        const struct change *now = noted_find(st, mapped.uids[i]);
        const struct state_flags *rec = rec_find(st, mapped.uids[i]);
        if (now && (!rec || !flags_equal(rec->flags, now->flags)) &&
            state_db_flags_set(e->db, m->idx, s, now->uid, now->flags) < 0)
            rc = ERR_DB;
    }
    for (size_t i = 0; rc == 0 && i < st->nrec; i++)
        if (!uidset_contains(&mapped, st->rec[i].uid) &&
            state_db_flags_delete(e->db, m->idx, s, st->rec[i].uid) < 0)
            rc = ERR_DB;
    uidset_fini(&mapped);
    return rc;
}
