/*
 * --watch: the loop around the synchronization cycles.
 *
 * Between two cycles the engine sleeps until one of four things happens:
 * a server reports a change made by someone else (NOTIFY, or IDLE on
 * INBOX), the --watch interval ends, a signal arrives, or a connection
 * breaks. While it sleeps it sends nothing but a keep-alive every
 * WATCH_KEEPALIVE_MS. Reports of our own changes (NOTIFY tells a session
 * about its own APPENDs and STOREs too) are told from news by comparing
 * them with the database once the cycle that made them is committed.
 *
 * A lost connection is tried again with the back-off of sync/reconnect.h.
 * SIGUSR1, or a system suspend noticed on waking (the boot clock ran on
 * while the monotonic one stood still), drops both connections and opens
 * new ones at once: after a sleep the old ones are most likely dead, and a
 * dead connection only shows itself after a long timeout.
 */
#include "internal.h"

#include <time.h>

enum {
    WATCH_TICK_MS = 10 * 1000,            /* a sleep looks for a system suspend this often */
    WATCH_SUSPEND_MS = 5 * 1000,          /* a gap this large between the clocks */
    WATCH_KEEPALIVE_MS = 25 * 60 * 1000,  /* servers may log out after 30 min of silence */
    WATCH_LOG_REPEAT_MS = 10 * 60 * 1000, /* the same failure logged again after this */
};

/* Why a sleep ended. */
enum watch_wake {
    WAKE_TIMER,
    WAKE_NEWS,
    WAKE_STOP,
    WAKE_BROKEN,
    WAKE_RECONNECT,
};

static const char *const notify_set_command =
    "NOTIFY SET (PERSONAL (MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange))";

static uint64_t watch_now(void)
{
    return uv_hrtime() / 1000000;
}

/* Milliseconds of a clock that goes on during a system suspend, or 0 when
 * there is none (the suspend is then not noticed). */
static uint64_t watch_boottime(void)
{
#ifdef CLOCK_BOOTTIME
    struct timespec ts;
    if (clock_gettime(CLOCK_BOOTTIME, &ts) == 0)
        return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
#endif
    return 0;
}

static void watch_format_delay(uint64_t ms, char *buf, size_t len)
{
    if (ms % 1000 == 0)
        snprintf(buf, len, "%" PRIu64 " s", ms / 1000);
    else
        snprintf(buf, len, "%.1f s", (double)ms / 1000);
}

/* ------------------------------------------------------------------ */
/* signals */

static void watch_wake_sleeper(struct sync_engine *e)
{
    if (e->sleeper) {
        struct coro *w = e->sleeper;
        e->sleeper = NULL;
        coro_wake(w);
    }
}

static void on_signal(uv_signal_t *h, int signum)
{
    struct sync_engine *e = h->data;
    if (signum == SIGUSR1) {
        e->reconnect_now = true;
        snprintf(e->reconnect_why, sizeof e->reconnect_why, "SIGUSR1");
    } else
        e->stop = true;
    watch_wake_sleeper(e);
}

/* SIGINT and SIGTERM finish the current step and end the run; SIGUSR1
 * reconnects at once. Installed for the whole run, so that a signal during
 * the first cycle is not fatal. */
void watch_signals_start(struct sync_engine *e)
{
    static const int signums[3] = {SIGINT, SIGTERM, SIGUSR1};
    for (int i = 0; i < 3; i++) {
        uv_signal_init(coro_sched_loop(e->sched), &e->signals[i]);
        e->signals[i].data = e;
        uv_signal_start(&e->signals[i], on_signal, signums[i]);
    }
    e->signals_on = true;
}

void watch_signals_stop(struct sync_engine *e)
{
    if (!e->signals_on)
        return;
    for (int i = 0; i < 3; i++) {
        uv_signal_stop(&e->signals[i]);
        await_close(e->sched, (uv_handle_t *)&e->signals[i]);
    }
    e->signals_on = false;
}

/* ------------------------------------------------------------------ */
/* news */

static void watch_news_clear(struct sync_engine *e)
{
    for (size_t i = 0; i < e->news.count; i++)
        free(e->news.reports[i].server_name);
    e->news.count = 0;
    e->news.other = false;
}

void watch_fini(struct sync_engine *e)
{
    watch_news_clear(e);
}

/* The clients' news callback: a STATUS report is kept for watch_news_pending
 * to judge; anything else is news. Runs in a reader coroutine. */
static void watch_on_news(void *ctx, struct imap_client *c, const struct imap_response *r)
{
    struct sync_engine *e = ctx;
    struct watch_news *n = &e->news;
    enum side side = c == e->client[SIDE_LOCAL] ? SIDE_LOCAL : SIDE_REMOTE;
    const char *name;
    size_t len;
    if (!imap_value_is_atom(&r->args[0], "STATUS") || r->nargs < 3 ||
        r->args[2].type != IMAP_LIST || !imap_value_string(&r->args[1], &name, &len)) {
        n->other = true;
        return;
    }
    struct status_report *rep = NULL;
    for (size_t i = 0; i < n->count && !rep; i++)
        if (n->reports[i].side == side && strlen(n->reports[i].server_name) == len &&
            memcmp(n->reports[i].server_name, name, len) == 0)
            rep = &n->reports[i];
    if (!rep) {
        if (n->count == WATCH_REPORTS_MAX) {
            n->other = true;
            return;
        }
        rep = &n->reports[n->count];
        rep->server_name = strndup(name, len);
        if (!rep->server_name) {
            n->other = true;
            return;
        }
        rep->side = side;
        n->count++;
    }
    bool uidnext = false, modseq = false;
    const struct imap_value *v = &r->args[2];
    for (size_t k = 0; k + 1 < v->count; k += 2) {
        if (imap_value_is_atom(&v->items[k], "UIDNEXT"))
            uidnext = imap_value_u32(&v->items[k + 1], &rep->uidnext);
        else if (imap_value_is_atom(&v->items[k], "HIGHESTMODSEQ"))
            modseq = imap_value_u64(&v->items[k + 1], &rep->highestmodseq);
    }
    rep->complete = uidnext && modseq;
}

/* Whether the database already holds what a STATUS report says: then it
 * reports our own changes, synchronized already. */
static bool watch_report_is_echo(struct sync_engine *e, const struct status_report *rep)
{
    if (!rep->complete)
        return false;
    struct listing *l = &e->listing[rep->side];
    const struct listed *it = NULL;
    for (size_t i = 0; i < l->count && !it; i++)
        if (strcmp(l->items[i].server_name, rep->server_name) == 0)
            it = &l->items[i];
    if (!it)
        return false;
    int64_t idx;
    bool subscribed;
    struct state_side db;
    if (state_db_mailbox_find(e->db, it->key, it->keylen, &idx, &subscribed) != 1 ||
        state_db_side_get(e->db, idx, rep->side, &db) != 1)
        return false;
    return db.uidnext == rep->uidnext && db.highestmodseq == rep->highestmodseq;
}

/* Whether news arrived that calls for a cycle; forgets it either way (the
 * cycle that follows lists everything again). */
static bool watch_news_pending(struct sync_engine *e)
{
    bool news = e->news.other;
    for (size_t i = 0; i < e->news.count && !news; i++)
        if (!watch_report_is_echo(e, &e->news.reports[i]))
            news = true;
    watch_news_clear(e);
    return news;
}

/* ------------------------------------------------------------------ */
/* sleeping */

/*
 * Sleeps up to ms. With `servers`, news or a broken connection end the
 * sleep too. A signal always does. The sleep wakes every WATCH_TICK_MS to
 * compare the clocks: a suspend of the machine asks for a reconnection.
 */
static enum watch_wake watch_sleep(struct sync_engine *e, uint64_t ms, bool servers)
{
    struct coro *self = coro_current(e->sched);
    uint64_t end = watch_now() + ms;
    for (;;) {
        if (e->stop)
            return WAKE_STOP;
        if (e->reconnect_now)
            return WAKE_RECONNECT;
        if (servers && engine_broken(e))
            return WAKE_BROKEN;
        if (servers && watch_news_pending(e))
            return WAKE_NEWS;
        uint64_t now = watch_now();
        if (now >= end)
            return WAKE_TIMER;
        uint64_t slice = end - now < WATCH_TICK_MS ? end - now : WATCH_TICK_MS;
        if (servers)
            for (int s = 0; s < 2; s++)
                imap_client_watch(e->client[s], self);
        uint64_t boot0 = watch_boottime();
        e->sleeper = self;
        await_sleep(e->sched, slice);
        e->sleeper = NULL;
        uint64_t mono = watch_now() - now, boot = watch_boottime() - boot0;
        if (servers)
            for (int s = 0; s < 2; s++)
                if (e->client[s])
                    imap_client_watch(e->client[s], NULL);
        if (boot0 && boot > mono + WATCH_SUSPEND_MS) {
            char d[32];
            watch_format_delay((boot - mono) / 1000 * 1000, d, sizeof d);
            snprintf(e->reconnect_why, sizeof e->reconnect_why, "the system was suspended for %s",
                     d);
            e->reconnect_now = true;
        }
    }
}

/* Sends the same command on both connections (where `on` says), then
 * waits for both answers: one round trip. */
static void watch_run_both(struct sync_engine *e, const bool on[2], const char *command)
{
    struct imap_cmd *cmd[2] = {NULL, NULL};
    for (int s = 0; s < 2; s++)
        if (on[s])
            cmd[s] = imap_client_send(e->client[s], "%a", command);
    for (int s = 0; s < 2; s++) {
        if (cmd[s])
            imap_cmd_wait(cmd[s]);
        imap_cmd_free(&cmd[s]);
    }
}

/* Closes the mailbox a cycle left selected: LIST-STATUS may not report the
 * selected mailbox accurately. Without UNSELECT, a NOOP at least lets the
 * server tell about it. */
static void watch_unselect(struct sync_engine *e)
{
    bool on[2];
    for (int s = 0; s < 2; s++)
        on[s] = imap_client_selected(e->client[s]) && imap_client_has_cap(e->client[s], "UNSELECT");
    watch_run_both(e, on, "UNSELECT");
    for (int s = 0; s < 2; s++)
        on[s] =
            imap_client_selected(e->client[s]) && !imap_client_has_cap(e->client[s], "UNSELECT");
    watch_run_both(e, on, "NOOP");
}

/* NOTIFY SET on both connections, once per connection. A refusal leaves
 * IDLE to do the waiting. */
static void watch_notify_set(struct sync_engine *e)
{
    if (e->notify_set || e->notify_failed)
        return;
    struct imap_cmd *cmd[2];
    for (int s = 0; s < 2; s++)
        cmd[s] = imap_client_send(e->client[s], "%a", notify_set_command);
    for (int s = 0; s < 2; s++) {
        int r = imap_cmd_wait(cmd[s]);
        imap_cmd_free(&cmd[s]);
        if (r == ERR_NO || r == ERR_BAD) {
            log_warn(e->log, side_name[s], NULL, "NOTIFY refused (%s); waiting with IDLE instead",
                     imap_client_error(e->client[s]));
            e->notify_failed = true;
        }
    }
    e->notify_set = !e->notify_failed;
}

/* Whether INBOX, as an EXAMINE just reported it, differs from what the
 * database holds: a change that came before IDLE could report it. Only
 * what the side's tier records counts: on a side without mod-sequences
 * the database holds no HIGHESTMODSEQ (a server may report one all the
 * same), and some servers (Courier-IMAP) send no UIDNEXT either; there
 * the message count is compared with the messages the database pairs,
 * which shows expunges too. Flag changes made before the IDLE are not
 * seen there: the interval finds them. */
static bool watch_inbox_changed(struct sync_engine *e, enum side s,
                                const struct imap_mailbox_state *ms)
{
    int64_t idx, count;
    bool subscribed;
    struct state_side db;
    if (state_db_mailbox_find(e->db, "INBOX", 5, &idx, &subscribed) != 1 ||
        state_db_side_get(e->db, idx, s, &db) != 1)
        return false; /* not synchronized: its changes are no news */
    if (db.uidvalidity != ms->uidvalidity || (ms->uidnext && db.uidnext != ms->uidnext))
        return true;
    if (e->tier[s] != TIER_PLAIN && db.highestmodseq && ms->highestmodseq)
        return db.highestmodseq != ms->highestmodseq;
    return state_db_mapping_count(e->db, idx, &count) < 0 || count != (int64_t)ms->exists;
}

/* IDLE on INBOX on both servers (those that offer it) for up to ms. */
static enum watch_wake watch_idle(struct sync_engine *e, uint64_t ms)
{
    struct imap_mailbox_state state[2];
    struct imap_cmd *examine[2] = {NULL, NULL}, *idle[2] = {NULL, NULL};
    bool changed = false;
    for (int s = 0; s < 2; s++) {
        struct imap_client *c = e->client[s];
        if (!imap_client_has_cap(c, "IDLE"))
            continue;
        char *inbox = server_name(e, (enum side)s, "INBOX", 5);
        if (!inbox)
            continue;
        imap_client_select_now(c, NULL, state + s, &state[s]);
        examine[s] = imap_client_send(c, "EXAMINE %m", inbox);
        free(inbox);
    }
    for (int s = 0; s < 2; s++) {
        if (!examine[s])
            continue;
        if (imap_cmd_wait(examine[s]) == 0)
            changed |= watch_inbox_changed(e, (enum side)s, &state[s]);
        else
            imap_client_release(e->client[s], state + s);
        imap_cmd_free(&examine[s]);
    }
    enum watch_wake w = WAKE_NEWS;
    if (!changed) {
        for (int s = 0; s < 2; s++)
            if (imap_client_selected(e->client[s]))
                idle[s] = imap_client_idle_begin(e->client[s]);
        w = watch_sleep(e, ms, true);
    }
    for (int s = 0; s < 2; s++) {
        if (idle[s]) {
            imap_client_idle_end(e->client[s], idle[s]);
            imap_cmd_free(&idle[s]);
        }
    }
    watch_unselect(e);
    for (int s = 0; s < 2; s++)
        imap_client_release(e->client[s], state + s);
    return w;
}

/*
 * Waits for a reason to synchronize again. With --notify: NOTIFY when both
 * servers offer it (every mailbox reports), otherwise IDLE on INBOX (the
 * other mailboxes are polled at the interval). Without: the interval. A
 * keep-alive goes out every WATCH_KEEPALIVE_MS of a longer wait.
 */
static enum watch_wake watch_wait(struct sync_engine *e)
{
    watch_unselect(e);
    bool notify = e->opts.notify && imap_client_has_cap(e->client[0], "NOTIFY") &&
                  imap_client_has_cap(e->client[1], "NOTIFY");
    if (notify)
        watch_notify_set(e);
    bool idle = e->opts.notify && !e->notify_set;
    if (e->recheck) {
        /* after a cycle that synchronized something: list once more, for
         * changes made to a mailbox while it was selected, which NOTIFY
         * does not report afterwards */
        e->recheck = false;
        return WAKE_NEWS;
    }
    uint64_t end = watch_now() + (uint64_t)e->opts.watch_seconds * 1000;
    for (;;) {
        uint64_t now = watch_now(), left = end > now ? end - now : 0;
        uint64_t slice = left < WATCH_KEEPALIVE_MS ? left : WATCH_KEEPALIVE_MS;
        enum watch_wake w = idle ? watch_idle(e, slice) : watch_sleep(e, slice, true);
        if (w != WAKE_TIMER || watch_now() >= end || engine_broken(e))
            return w;
        if (!idle) {
            bool on[2] = {true, true};
            watch_run_both(e, on, "NOOP");
        }
    }
}

/* ------------------------------------------------------------------ */
/* reconnecting */

/* Connects again, with the back-off of sync/reconnect.h, until it works or
 * a signal ends the run. Failures are logged when they change, and again
 * every WATCH_LOG_REPEAT_MS while they last. */
static void watch_reconnect(struct sync_engine *e)
{
    char d[32], last[sizeof e->errbuf] = "";
    uint64_t delay, last_logged = 0;
    if (e->reconnect_now) {
        log_info(e->log, NULL, NULL, "%s: reconnecting at once", e->reconnect_why);
        e->reconnect_now = false;
        reconnect_now(&e->backoff, watch_now());
        delay = 0;
    } else {
        delay = reconnect_lost(&e->backoff, watch_now());
        watch_format_delay(delay, d, sizeof d);
        /* name the server that went away */
        bool named = false;
        for (int s = 0; s < 2; s++) {
            if (e->connected && e->client[s] && imap_client_is_broken(e->client[s])) {
                log_warn(e->log, side_name[s], NULL, "connection lost (%s); reconnecting in %s",
                         imap_client_reason(e->client[s]), d);
                named = true;
            }
        }
        if (!named)
            log_warn(e->log, NULL, NULL, "reconnecting in %s", d);
    }
    /* the old connections go now, with their traffic lines; the failed
     * attempts that may follow have none */
    engine_close(e);
    e->connected = false;
    e->reconnecting = true;
    for (;;) {
        enum watch_wake w = watch_sleep(e, delay, false);
        if (w == WAKE_STOP)
            break;
        if (w == WAKE_RECONNECT) {
            log_info(e->log, NULL, NULL, "%s: trying again at once", e->reconnect_why);
            e->reconnect_now = false;
            reconnect_now(&e->backoff, watch_now());
        }
        e->notify_set = false;
        e->notify_failed = false;
        e->recheck = false;
        watch_news_clear(e);
        e->errbuf[0] = '\0';
        uint64_t started = watch_now();
        int r = engine_open(e);
        if (r == 0) {
            log_info(e->log, NULL, NULL, "reconnected");
            break;
        }
        uint64_t now = watch_now();
        delay = reconnect_failed(&e->backoff, r, started, now);
        const char *why = e->errbuf[0] ? e->errbuf : err_str(r);
        if (strcmp(why, last) != 0 || now - last_logged >= WATCH_LOG_REPEAT_MS) {
            watch_format_delay(delay, d, sizeof d);
            log_error(e->log, NULL, NULL, "%s; next attempt in %s", why, d);
            snprintf(last, sizeof last, "%s", why);
            last_logged = now;
        }
    }
    e->reconnecting = false;
}

/* ------------------------------------------------------------------ */

/* The first cycle and those that follow, until SIGINT or SIGTERM. */
int watch_run(struct sync_engine *e)
{
    for (int s = 0; s < 2; s++)
        imap_client_on_news(e->client[s], watch_on_news, e);
    engine_cycle(e);
    e->recheck = e->opts.notify && e->cycle_synced > 0;
    while (!e->stop) {
        /* SIGUSR1, a suspend: the connections are dropped, and
         * watch_reconnect opens new ones at once */
        if (e->reconnect_now)
            e->connected = false;
        if (engine_broken(e)) {
            watch_reconnect(e);
            if (e->stop || engine_broken(e))
                continue;
            for (int s = 0; s < 2; s++)
                imap_client_on_news(e->client[s], watch_on_news, e);
        } else {
            enum watch_wake w = watch_wait(e);
            if (w == WAKE_STOP || w == WAKE_RECONNECT || engine_broken(e))
                continue;
            watch_news_clear(e); /* the listing covers what came before */
            if (engine_relist(e) < 0)
                continue;
        }
        engine_cycle(e);
        e->recheck = e->opts.notify && e->cycle_synced > 0;
    }
    return EXIT_IN_STEP;
}
