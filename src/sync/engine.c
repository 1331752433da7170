/*
 * The run: connecting both servers, one synchronization cycle over every
 * mailbox, and logout. What --watch adds around the cycles (waiting,
 * reconnecting, signals) is in watch.c.
 */
#include "internal.h"

#include <unistd.h>

const char *const side_name[2] = {"local", "remote"};

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

static void early_list_free(struct sync_engine *e)
{
    for (int s = 0; s < 2; s++)
        list_cmds_free(&e->early_list[s]);
}
/* Connects both servers at once. */
static int engine_connect(struct sync_engine *e)
{
    struct connect_job jobs[2];
    struct coro *co[2];
    struct coro *self = coro_current(e->sched);
    /* the listing rides along with the login unless its patterns need the
     * delimiter, which only a first LIST tells */
    bool early = !e->opts.dry_run && !patterns_need_delimiter(e);
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
    /* what the login may be followed by; the tiers expected from it */
    caps_load(e);
    enum tier expected[2] = {e->tier[0], e->tier[1]};
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
            /* while --watch reconnects, it decides what to log */
            snprintf(e->errbuf, sizeof e->errbuf, "%s: %s", side_name[s],
                     imap_client_reason(e->client[s]));
            if (!e->reconnecting)
                log_error(e->log, side_name[s], NULL, "%s", imap_client_reason(e->client[s]));
            rc = jobs[s].result;
        }
    }
    if (rc < 0) {
        caps_keep_greeting(e);
        early_list_free(e);
        mbox_free(&e->spec);
        return rc;
    }
    caps_adopt(e);
    /* INBOX was selected ahead the way the expected tier wants it */
    if (e->tier[0] != expected[0] || e->tier[1] != expected[1])
        drop_speculative(e);
    for (int s = 0; s < 2; s++) {
        /* the copies' new UIDs come from APPENDUID */
        if (!imap_client_has_cap(e->client[s], "UIDPLUS")) {
            snprintf(e->errbuf, sizeof e->errbuf,
                     "%s: server lacks the UIDPLUS extension, which interimap requires",
                     side_name[s]);
            if (!e->reconnecting)
                log_error(e->log, side_name[s], NULL,
                          "server lacks the UIDPLUS extension, which interimap requires");
            return ERR_UNSUPPORTED;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* the engine and its cycles */

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

/* "1023", "1.00K", "3.25M", "1.50G": the reference tool's units. */
static void traffic_format(uint64_t n, char *buf, size_t len)
{
    if (n < 1024)
        snprintf(buf, len, "%" PRIu64, n);
    else if (n < 1048576)
        snprintf(buf, len, "%.2fK", (double)n / 1024.);
    else if (n < 1073741824)
        snprintf(buf, len, "%.2fM", (double)n / 1048576.);
    else
        snprintf(buf, len, "%.2fG", (double)n / 1073741824.);
}

static void traffic_add(char *line, size_t len, const char *dir, uint64_t n, uint64_t raw,
                        bool compressed)
{
    char a[32], b[32];
    size_t o = strlen(line);
    traffic_format(n, a, sizeof a);
    if (compressed && n > 0) {
        traffic_format(raw, b, sizeof b);
        snprintf(line + o, len - o, " %s %s (compr. %s, factor %.2f)", dir, a, b,
                 (double)raw / (double)n);
    } else {
        snprintf(line + o, len - o, " %s %s", dir, a);
    }
}

/* What a connection exchanged, in the line the reference tool prints when
 * it lets one go (not with -q): log watchers and users know it. */
static void log_traffic(struct sync_engine *e, enum side s)
{
    struct imap_traffic t;
    char line[160] = "";
    imap_client_traffic(e->client[s], &t);
    traffic_add(line, sizeof line, "recv", t.in, t.raw_in, t.compressed);
    traffic_add(line, sizeof line, "sent", t.out, t.raw_out, t.compressed);
    log_info(e->log, side_name[s], NULL, "IMAP traffic (bytes):%s", line);
}

/* Lets both connections go, each with its traffic line (not for the
 * failed attempts of a --watch reconnection), and the commands and the
 * speculative INBOX that belong to them first. */
void engine_close(struct sync_engine *e)
{
    early_list_free(e);
    mbox_free(&e->spec);
    for (int s = 0; s < 2; s++)
        if (e->client[s] && !e->reconnecting)
            log_traffic(e, (enum side)s);
    for (int s = 0; s < 2; s++)
        imap_client_free(&e->client[s]);
}

void sync_engine_free(struct sync_engine **pe)
{
    if (!pe || !*pe)
        return;
    struct sync_engine *e = *pe;
    *pe = NULL;
    engine_close(e);
    for (int s = 0; s < 2; s++) {
        listing_fini(&e->listing[s]);
        free(e->caps[s]);
        free(e->greeting[s]);
    }
    if (e->ignore_re)
        pcre2_code_free(e->ignore_re);
    watch_fini(e);
    state_db_close(&e->db);
    free(e);
}

/* Connects both servers (again, after a failure) and lists them. */
int engine_open(struct sync_engine *e)
{
    engine_close(e);
    int r = engine_connect(e);
    e->connected = r == 0;
    if (r < 0)
        return r;
    if ((r = caps_save(e)) < 0)
        return r;
    r = engine_relist(e);
    if (r < 0)
        drop_speculative(e); /* no cycle follows to take it */
    else
        caps_tell(e);
    return r;
}

bool engine_broken(const struct sync_engine *e)
{
    return !e->connected || imap_client_is_broken(e->client[0]) ||
           imap_client_is_broken(e->client[1]);
}

/* The line that ends a cycle: how many mailboxes, how long, what changed.
 * With --watch only when something did. */
static void log_totals(struct sync_engine *e, uint64_t started_ns)
{
    bool any = e->totals.added || e->totals.removed || e->totals.updated || e->failed_mailboxes;
    if (!any && e->opts.watch_seconds >= 0)
        return;
    double secs = (double)(uv_hrtime() - started_ns) / 1e9;
    char failed[64] = "";
    if (e->failed_mailboxes)
        snprintf(failed, sizeof failed, ", %d mailbox(es) failed", e->failed_mailboxes);
    if (!any)
        log_info(e->log, NULL, NULL, "Done: %zu mailbox(es) in %.2f s, nothing to do",
                 e->totals.mailboxes, secs);
    else
        log_info(e->log, NULL, NULL,
                 "Done: %zu mailbox(es) in %.2f s: %llu message(s) added, %llu expunged, %llu flag "
                 "update(s)%s",
                 e->totals.mailboxes, secs, e->totals.added, e->totals.removed, e->totals.updated,
                 failed);
}

/* What to say about a failure that nothing reported yet. */
static const char *engine_failure_text(struct sync_engine *e, int r)
{
    for (int s = 0; s < 2; s++)
        if (imap_client_is_broken(e->client[s]))
            return imap_client_error(e->client[s]);
    return err_str(r);
}

/* Says why a connection broke, if nobody did yet: no failure ends the
 * run without its message. */
static void engine_explain_broken(struct sync_engine *e)
{
    for (int s = 0; s < 2; s++)
        if (e->client[s] && imap_client_error_unshown(e->client[s]))
            log_error(e->log, side_name[s], NULL, "%s", imap_client_reason(e->client[s]));
}

/* A mailbox that failed: counted, and said unless something said it
 * already (every failure gets its message). Returns whether a connection
 * broke. */
static bool cycle_failed(struct sync_engine *e, struct mbox_ctx *cur, const char *key, int r,
                         unsigned long logged)
{
    e->failed_mailboxes++;
    if (r == MAILBOX_AGAIN && cur)
        /* its second pass was not enough: what was done is kept, and the
         * saved state stays below what was not */
        log_error(e->log, NULL, cur->pretty,
                  "changes kept coming in while it was synchronized; the rest is left for the "
                  "next run");
    bool reported = cur && (side_error(cur) || cur->st[0].refused || cur->st[1].refused);
    if (r < 0 && !reported && logger_error_count(e->log) == logged)
        log_error(e->log, NULL, cur ? cur->pretty : key, "synchronization failed: %s",
                  engine_failure_text(e, r));
    return engine_broken(e);
}

static void work_free(struct mbox_work *work, size_t nwork)
{
    for (size_t i = 0; i < nwork; i++)
        free(work[i].key);
    free(work);
}

/* The end of a cycle: what was learnt of the servers (HIGHESTMODSEQ after
 * APPEND) saved, the last transaction committed, the line that ends it. */
static int cycle_end(struct sync_engine *e, int status, uint64_t started)
{
    if (caps_save(e) < 0)
        status = EXIT_FAILURE_GENERIC;
    if (state_db_commit(e->db) < 0 || state_db_begin(e->db) < 0) {
        log_error(e->log, "database", NULL, "%s", state_db_error(e->db));
        status = EXIT_FAILURE_GENERIC;
    }
    progress_end(e->opts.progress);
    if (status != EXIT_CONNECTION && status != EXIT_FAILURE_GENERIC)
        log_totals(e, started);
    return status;
}

/* One synchronization of every mailbox that changed (of every one, when
 * repairing); returns an exit status. */
int engine_cycle(struct sync_engine *e)
{
    struct mbox_work *work = NULL;
    size_t nwork = 0;
    int status = EXIT_IN_STEP;
    bool repair = e->opts.command == SYNC_REPAIR;
    uint64_t started = uv_hrtime();
    /* names refused by the listing count as failed mailboxes */
    e->failed_mailboxes = e->refused_names;
    e->cycle_synced = 0;
    memset(&e->totals, 0, sizeof e->totals);
    if (sync_mailbox_list(e, &work, &nwork) < 0)
        return EXIT_FAILURE_GENERIC;
    e->totals.mailboxes = nwork;
    if (!repair && status_fill(e, work, nwork) < 0) {
        work_free(work, nwork);
        return EXIT_FAILURE_GENERIC;
    }
    /* the mailboxes to do, in order; one done again (MAILBOX_AGAIN) goes
     * to the end, once */
    size_t *todo = malloc((2 * nwork + 1) * sizeof *todo), ntodo = 0;
    bool *again = calloc(nwork + 1, sizeof *again);
    if (!todo || !again) {
        free(todo);
        free(again);
        work_free(work, nwork);
        return EXIT_FAILURE_GENERIC;
    }
    for (size_t i = 0; i < nwork; i++)
        if (repair || !unchanged(e, &work[i])) {
            todo[ntodo++] = i;
            work[i].rank = ntodo;
        }
    e->cycle_todo = ntodo;
    struct mbox_ctx *cur = take_speculative(e, work, todo, ntodo), *next = NULL;
    /* the mailboxes with only flag changes and expunges (passes.c), and
     * those created on one side in this run (fresh.c), go first, a window
     * at a time, once the speculative INBOX is done */
    size_t first = cur ? 1 : 0;
    bool passes = !repair && (passes_wanted(e, ntodo - first) ||
                              fresh_wanted(e, work, todo + first, ntodo - first));
    for (size_t k = 0; k < ntodo && !e->stop; k++) {
        if (passes && !(k == 0 && cur)) {
            passes = false;
            size_t rest = ntodo - k;
            if (passes_run(e, work, todo + k, &rest) < 0 ||
                fresh_run(e, work, todo + k, &rest) < 0) {
                status = EXIT_FAILURE_GENERIC;
                break;
            }
            ntodo = k + rest;
            if (k == ntodo)
                break;
        }
        if (!cur)
            cur = mbox_new(e, &work[todo[k]], repair);
        /* the next one is set up now so that this one can send its
         * SELECTs ahead (not when repairing, nor for a mailbox's second
         * pass, which may need every command it can send, nor ahead of
         * the passes, which begin with nothing in flight) */
        next = NULL;
        if (cur && !repair && !again[todo[k]] && k + 1 < ntodo && !passes)
            next = mbox_new(e, &work[todo[k + 1]], repair);
        int r = -ENOMEM;
        unsigned long logged = logger_error_count(e->log);
        unsigned long long done = e->totals.added + e->totals.removed + e->totals.updated;
        if (cur) {
            cur->next = next;
            progress_mailbox(e->opts.progress, cur->pretty, work[todo[k]].rank, e->cycle_todo);
            r = sync_one(cur);
        }
        if (r == 0) {
            /* a mailbox read and found in step does not count: a side
             * without mod-sequences reads every mailbox on every cycle */
            if (e->totals.added + e->totals.removed + e->totals.updated != done)
                e->cycle_synced++;
        } else if (r == MAILBOX_AGAIN && !again[todo[k]]) {
            again[todo[k]] = true;
            todo[ntodo++] = todo[k];
        } else if (cycle_failed(e, cur, work[todo[k]].key, r, logged)) {
            /* the connections were up: an error stopped the run, whatever
             * broke them (status 3 is for reaching them) */
            status = EXIT_FAILURE_GENERIC;
            break;
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
    work_free(work, nwork);
    return cycle_end(e, status, started);
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

/* --dry-run: the database is read as it is, if there is one, and never
 * written; the servers are only read. */
static int engine_dry_run(struct sync_engine *e)
{
    char err[512];
    if (access(e->cfg->database, F_OK) == 0) {
        int r = state_db_open_flags(e->cfg->database, STATE_DB_READ_ONLY, &e->db, err, sizeof err);
        if (r < 0) {
            log_error(e->log, "database", NULL, "%s", err);
            return EXIT_FAILURE_GENERIC;
        }
        int version = 0;
        bool tables = false;
        if (state_db_schema_read(e->db, &version, &tables) < 0) {
            log_error(e->log, "database", NULL, "%s", state_db_error(e->db));
            return EXIT_FAILURE_GENERIC;
        }
        if (version != 1 && tables) {
            log_error(e->log, "database", NULL,
                      "the database has schema version %d: run once without --dry-run to "
                      "upgrade it",
                      version);
            return EXIT_FAILURE_GENERIC;
        }
        if (!tables)
            state_db_close(&e->db); /* empty: as if there were none */
    }
    if (!e->db)
        log_info(e->log, NULL, NULL, "Would create the database file %s", e->cfg->database);
    if (engine_connect(e) < 0)
        return EXIT_CONNECTION;
    e->connected = true;
    if (engine_relist(e) < 0)
        return engine_broken(e) ? EXIT_CONNECTION : EXIT_FAILURE_GENERIC;
    caps_tell(e);
    for (int s = 0; s < 2; s++) {
        /* what a dry run asks needs QRESYNC (EXAMINE with the saved state) */
        if (e->tier[s] != TIER_QRESYNC) {
            log_error(e->log, side_name[s], NULL,
                      "--dry-run needs QRESYNC, which the server does not offer");
            engine_logout(e);
            return EXIT_FAILURE_GENERIC;
        }
    }
    int status = dry_run(e);
    engine_logout(e);
    return status;
}

/* What a run does first: finish a --rename or --delete a killed run left
 * half done, then the command given (unless it was that one), or a cycle,
 * or the watch loop. Returns an exit status. */
static int engine_first(struct sync_engine *e, bool watch)
{
    bool same = false;
    int status = commands_resume(e, &same);
    if (status == EXIT_FAILURE_GENERIC)
        return status;
    int r = EXIT_IN_STEP;
    if (e->opts.command == SYNC_DELETE && !same)
        r = command_delete(e);
    else if (e->opts.command == SYNC_RENAME && !same)
        r = command_rename(e);
    else if (e->opts.command != SYNC_DELETE && e->opts.command != SYNC_RENAME)
        r = watch ? watch_run(e) : engine_cycle(e);
    return r != EXIT_IN_STEP ? r : status;
}

/* The run, signal handlers aside. */
static int sync_engine_run_once(struct sync_engine *e, bool watch)
{
    char err[512];
    if (state_db_open(e->cfg->database, &e->db, err, sizeof err) < 0) {
        log_error(e->log, "database", NULL, "%s", err);
        return EXIT_FAILURE_GENERIC;
    }
    if (engine_connect(e) < 0) {
        engine_explain_broken(e);
        return EXIT_CONNECTION;
    }
    e->connected = true;
    /* from here on, both servers were reached: a failure is status 1 */
    if (engine_relist(e) < 0) {
        engine_explain_broken(e);
        return EXIT_FAILURE_GENERIC;
    }
    caps_tell(e);
    if (state_db_prepare(e->db, e->listing[SIDE_LOCAL].delimiter, e->listing[SIDE_REMOTE].delimiter,
                         err, sizeof err) < 0) {
        log_error(e->log, "database", NULL, "%s", err);
        return EXIT_FAILURE_GENERIC;
    }
    int from_version;
    switch (state_db_schema_action(e->db, &from_version)) {
    case STATE_DB_SCHEMA_CREATED:
        log_info(e->log, NULL, NULL, "Creating new schema in database file %s",
                 state_db_path(e->db));
        break;
    case STATE_DB_SCHEMA_UPGRADED:
        log_info(e->log, NULL, NULL, "Upgrading database version from %d", from_version);
        break;
    case STATE_DB_SCHEMA_CURRENT:
        break;
    }
    if (caps_save(e) < 0)
        return EXIT_FAILURE_GENERIC;
    if (state_db_copy_last_batch(e->db, &e->batch_seq) < 0 || state_db_begin(e->db) < 0) {
        log_error(e->log, "database", NULL, "%s", state_db_error(e->db));
        return EXIT_FAILURE_GENERIC;
    }

    int status = engine_first(e, watch);

    state_db_commit(e->db);
    engine_explain_broken(e);
    engine_logout(e);
    return status;
}

int sync_engine_run(struct sync_engine *e)
{
    if (compile_ignore(e) < 0)
        return EXIT_USAGE;
    if (e->opts.dry_run)
        return engine_dry_run(e);
    bool watch = e->opts.watch_seconds >= 0 && e->opts.command == SYNC_DEFAULT;
    if (watch)
        watch_signals_start(e);
    int status = sync_engine_run_once(e, watch);
    if (watch)
        watch_signals_stop(e);
    return status;
}
