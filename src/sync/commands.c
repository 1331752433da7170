/*
 * The --delete and --rename commands. Each is journaled (state table
 * journal_commands) before it touches a server, and every step done is
 * noted there, so a run killed between the two servers, or before the
 * database followed, is finished by the next run of any kind, or by
 * running the same command again.
 */
#include "internal.h"

static unsigned side_bit(enum side s)
{
    return s == SIDE_LOCAL ? SYNC_TARGET_LOCAL : SYNC_TARGET_REMOTE;
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

static int db_fail(struct sync_engine *e)
{
    log_error(e->log, "database", NULL, "%s", state_db_error(e->db));
    return ERR_DB;
}

static int db_commit(struct sync_engine *e)
{
    if (state_db_commit(e->db) < 0 || state_db_begin(e->db) < 0)
        return db_fail(e);
    return 0;
}

/* Notes a step done, durably. */
static int journal_step(struct sync_engine *e, struct state_command *c, unsigned bit)
{
    c->done |= bit;
    if (state_db_command_done(e->db, c->id, bit) < 0)
        return db_fail(e);
    return db_commit(e);
}

/* The database's part of a command. */
static int command_database(struct sync_engine *e, struct state_command *c)
{
    if (c->rename) {
        int n = state_db_mailbox_rename(e->db, c->name, c->namelen, c->newname, c->newlen);
        if (n < 0)
            return db_fail(e);
        if (n > 0) {
            char *from = pretty_name(e, c->name, c->namelen);
            char *to = pretty_name(e, c->newname, c->newlen);
            log_info(e->log, "database", NULL, "Renamed mailbox %s to %s", from ? from : "",
                     to ? to : "");
            free(from);
            free(to);
        }
        return 0;
    }
    int64_t idx;
    bool sub;
    int f = state_db_mailbox_find(e->db, c->name, c->namelen, &idx, &sub);
    if (f < 0 || (f == 1 && state_db_mailbox_delete(e->db, idx) < 0))
        return db_fail(e);
    if (f == 1) {
        char *name = pretty_name(e, c->name, c->namelen);
        log_info(e->log, "database", NULL, "Removed mailbox %s", name ? name : "");
        free(name);
    }
    return 0;
}

/* The last step: the database's part (if targeted) and the end of the
 * journal entry, in one transaction. Should the database refuse (the
 * destination of a rename recorded meanwhile), the entry ends anyway:
 * retrying would only be refused again. */
static int journal_finish(struct sync_engine *e, struct state_command *c)
{
    int rc = 0;
    if ((c->targets & SYNC_TARGET_DATABASE) && !(c->done & SYNC_TARGET_DATABASE))
        rc = command_database(e, c);
    if (state_db_command_delete(e->db, c->id) < 0)
        return db_fail(e);
    int r = db_commit(e);
    return rc < 0 ? rc : r;
}

/* One server's RENAME, unless it is done there already (the source gone,
 * the destination present: a killed run got that far). */
static int rename_side(struct sync_engine *e, enum side s, const struct state_command *c)
{
    /* \NonExistent parents can be renamed too (their children move) */
    struct listed *it = listing_find(&e->listing[s], c->name, c->namelen);
    if (!it)
        return 0;
    char *dest = server_name(e, s, c->newname, c->newlen);
    if (!dest)
        return -ENOMEM;
    int r = imap_client_run(e->client[s], "RENAME %m %m", it->server_name, dest);
    if (r < 0)
        log_error(e->log, side_name[s], it->server_name, "cannot rename to %s: %s", dest,
                  imap_client_reason(e->client[s]));
    else
        log_info(e->log, side_name[s], NULL, "Renamed mailbox %s to %s", it->server_name, dest);
    free(dest);
    return r;
}

/* The UIDVALIDITY a server gives a mailbox now (EXAMINE), or 0. */
static uint32_t uidvalidity_now(struct sync_engine *e, enum side s, const char *server_mbox)
{
    struct imap_client *c = e->client[s];
    struct imap_mailbox_state ms;
    memset(&ms, 0, sizeof ms);
    imap_client_select_now(c, NULL, &ms, &ms);
    int r = imap_client_run(c, "EXAMINE %m", server_mbox);
    imap_client_release(c, &ms);
    return r < 0 ? 0 : ms.uidvalidity;
}

/*
 * After a RENAME on the sides in `renamed`: a server may give the renamed
 * mailbox (and its children) a new UIDVALIDITY and new UIDs, as
 * Courier-IMAP does. The database's mapping no longer holds there, so the
 * mailbox is forgotten; the next run pairs its messages again by content
 * (as it does for mailboxes the database does not know) instead of
 * refusing it for a changed UIDVALIDITY.
 */
static int rename_revalidate(struct sync_engine *e, const struct state_command *c, unsigned renamed)
{
    struct state_mailbox *list = NULL;
    size_t n = 0;
    if (state_db_mailbox_list(e->db, &list, &n) < 0)
        return db_fail(e);
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        struct state_mailbox *mb = &list[i];
        if (!mb->known || mb->namelen < c->newlen || memcmp(mb->name, c->newname, c->newlen) != 0 ||
            (mb->namelen > c->newlen && mb->name[c->newlen] != '\0'))
            continue;
        for (int s = 0; s < 2; s++) {
            if (!(renamed & side_bit((enum side)s)))
                continue;
            char *name = server_name(e, (enum side)s, mb->name, mb->namelen);
            if (!name) {
                rc = -ENOMEM;
                break;
            }
            uint32_t v = uidvalidity_now(e, (enum side)s, name);
            if (v && v != mb->side[s].uidvalidity) {
                log_warn(e->log, side_name[s], name,
                         "the server gave the renamed mailbox a new UIDVALIDITY; its messages "
                         "will be paired again by content on the next run");
                if (state_db_mailbox_delete(e->db, mb->idx) < 0 || db_commit(e) < 0)
                    rc = ERR_DB;
                free(name);
                break;
            }
            free(name);
        }
    }
    state_db_mailbox_list_free(&list, n);
    return rc == ERR_DB ? db_fail(e) : rc;
}

/* One server's DELETE, unless the mailbox is gone there already. */
static int delete_side(struct sync_engine *e, enum side s, const struct state_command *c)
{
    struct listed *it = listing_find(&e->listing[s], c->name, c->namelen);
    if (!it || !it->selectable)
        return 0;
    int r = imap_client_run(e->client[s], "DELETE %m", it->server_name);
    if (r < 0)
        log_error(e->log, side_name[s], it->server_name, "cannot delete mailbox: %s",
                  imap_client_reason(e->client[s]));
    else
        log_info(e->log, side_name[s], NULL, "Deleted mailbox %s", it->server_name);
    return r;
}

/* Does what is left of a journaled command. A server refusing its part
 * ends the command as it stands (the next run would only be refused
 * again); returns EXIT_PARTIAL then. */
static int command_carry_out(struct sync_engine *e, struct state_command *c)
{
    int status = EXIT_IN_STEP;
    unsigned renamed = 0;
    for (int s = 0; s < 2; s++) {
        unsigned bit = side_bit((enum side)s);
        if (!(c->targets & bit) || (c->done & bit))
            continue;
        int r = c->rename ? rename_side(e, (enum side)s, c) : delete_side(e, (enum side)s, c);
        if (r == ERR_DB)
            return EXIT_FAILURE_GENERIC;
        if (r < 0) {
            if (imap_client_is_broken(e->client[s]))
                return EXIT_FAILURE_GENERIC; /* journaled: the next run goes on */
            status = EXIT_PARTIAL;
        } else if (c->rename) {
            renamed |= bit;
        }
        if (journal_step(e, c, bit) < 0)
            return EXIT_FAILURE_GENERIC;
    }
    bool database = (c->targets & SYNC_TARGET_DATABASE) && !(c->done & SYNC_TARGET_DATABASE);
    if (journal_finish(e, c) < 0)
        return EXIT_FAILURE_GENERIC;
    if (renamed && database && rename_revalidate(e, c, renamed) < 0)
        return EXIT_FAILURE_GENERIC;
    return status;
}

/* Journals a new command before anything is done. */
static int command_start(struct sync_engine *e, struct state_command *c)
{
    if (state_db_command_add(e->db, c, &c->id) < 0)
        return db_fail(e);
    return db_commit(e);
}

/* Whether the journaled command is the one on the command line. */
static bool command_same(struct sync_engine *e, const struct state_command *c)
{
    bool rename = e->opts.command == SYNC_RENAME;
    if ((!rename && e->opts.command != SYNC_DELETE) || rename != c->rename ||
        e->opts.targets != c->targets || e->opts.nmailboxes != (rename ? 2u : 1u))
        return false;
    size_t l1, l2 = 0;
    char *k1 = key_from_arg(e, e->opts.mailboxes[0], &l1);
    char *k2 = rename ? key_from_arg(e, e->opts.mailboxes[1], &l2) : NULL;
    bool same = k1 && l1 == c->namelen && memcmp(k1, c->name, l1) == 0 &&
                (!rename || (k2 && l2 == c->newlen && memcmp(k2, c->newname, l2) == 0));
    free(k1);
    free(k2);
    return same;
}

/*
 * Finishes the commands an earlier run was killed in the middle of, before
 * anything else (and lists both servers again if one changed). *same: one
 * of them was the command given now, which is then done.
 */
int commands_resume(struct sync_engine *e, bool *same)
{
    struct state_command *list = NULL;
    size_t n = 0;
    *same = false;
    if (state_db_command_list(e->db, &list, &n) < 0)
        return db_fail(e);
    int status = EXIT_IN_STEP;
    for (size_t i = 0; i < n && status != EXIT_FAILURE_GENERIC; i++) {
        struct state_command *c = &list[i];
        char *from = pretty_name(e, c->name, c->namelen);
        char *to = c->rename ? pretty_name(e, c->newname, c->newlen) : NULL;
        log_info(e->log, NULL, NULL, "Finishing an interrupted --%s %s%s%s",
                 c->rename ? "rename" : "delete", from ? from : "", to ? " " : "", to ? to : "");
        free(from);
        free(to);
        int r = command_carry_out(e, c);
        if (r != EXIT_IN_STEP)
            status = r;
        if (command_same(e, c))
            *same = true;
    }
    state_db_command_list_free(&list, n);
    if (n && status != EXIT_FAILURE_GENERIC && engine_relist(e) < 0)
        status = EXIT_FAILURE_GENERIC;
    return status;
}

int command_delete(struct sync_engine *e)
{
    unsigned t = e->opts.targets;
    int status = EXIT_IN_STEP;
    for (size_t i = 0; i < e->opts.nmailboxes; i++) {
        const char *arg = e->opts.mailboxes[i];
        if (strcasecmp(arg, "INBOX") == 0) {
            log_error(e->log, NULL, NULL, "INBOX can't be deleted");
            return EXIT_USAGE;
        }
        struct state_command c = {.rename = false, .targets = t};
        c.name = key_from_arg(e, arg, &c.namelen);
        if (!c.name)
            return EXIT_FAILURE_GENERIC;
        int r = command_start(e, &c) < 0 ? EXIT_FAILURE_GENERIC : command_carry_out(e, &c);
        free(c.name);
        if (r == EXIT_FAILURE_GENERIC)
            return r;
        if (r != EXIT_IN_STEP)
            status = r;
    }
    return status;
}

/* DEST must not be SOURCE or below it, nor exist on a target or in the
 * database. */
static int rename_check(struct sync_engine *e, const char *to, const struct state_command *c)
{
    unsigned t = e->opts.targets;
    const char *tkey = c->newname;
    size_t tlen = c->newlen;
    if (tlen >= c->namelen && memcmp(tkey, c->name, c->namelen) == 0 &&
        (tlen == c->namelen || tkey[c->namelen] == '\0')) {
        log_error(e->log, NULL, NULL, "cannot rename %s to itself or below itself",
                  e->opts.mailboxes[0]);
        return EXIT_USAGE;
    }
    for (int s = 0; s < 2; s++) {
        if (!(t & side_bit((enum side)s)))
            continue;
        struct listed *it = listing_find(&e->listing[s], tkey, tlen);
        if (it && it->selectable) {
            log_error(e->log, side_name[s], NULL,
                      "Mailbox %s exists. Run `interimap --target=%s --delete %s` to delete.",
                      it->server_name, side_name[s], to);
            return EXIT_FAILURE_GENERIC;
        }
    }
    int64_t idx;
    bool sub;
    if ((t & SYNC_TARGET_DATABASE) && state_db_mailbox_find(e->db, tkey, tlen, &idx, &sub) == 1) {
        log_error(e->log, "database", NULL,
                  "Mailbox %s exists. Run `interimap --target=database --delete %s` to delete.", to,
                  to);
        return EXIT_FAILURE_GENERIC;
    }
    return EXIT_IN_STEP;
}

int command_rename(struct sync_engine *e)
{
    const char *from = e->opts.mailboxes[0], *to = e->opts.mailboxes[1];
    struct state_command c = {.rename = true, .targets = e->opts.targets};
    c.name = key_from_arg(e, from, &c.namelen);
    c.newname = key_from_arg(e, to, &c.newlen);
    int status = EXIT_FAILURE_GENERIC;
    if (c.name && c.newname) {
        /* refused before anything is touched */
        status = rename_check(e, to, &c);
        if (status == EXIT_IN_STEP)
            status = command_start(e, &c) < 0 ? EXIT_FAILURE_GENERIC : command_carry_out(e, &c);
    }
    free(c.name);
    free(c.newname);
    return status;
}
