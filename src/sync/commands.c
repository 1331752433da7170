/*
 * The --delete and --rename commands.
 */
#include "internal.h"

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
                          imap_client_reason(e->client[s]));
                status = EXIT_PARTIAL;
                continue;
            }
            log_info(e->log, side_name[s], NULL, "Deleted mailbox %s", it->server_name);
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

int command_rename(struct sync_engine *e)
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
                      imap_client_reason(e->client[s]));
            status = EXIT_PARTIAL;
        } else {
            log_info(e->log, side_name[s], NULL, "Renamed mailbox %s to %s", it->server_name, dest);
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
