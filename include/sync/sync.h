/*
 * The synchronization engine: both connections, the mailbox list, and the
 * per-mailbox QRESYNC algorithm of the reference manual.
 *
 * sync_engine_new() takes borrowed pointers (configuration, logger, state
 * database, scheduler) that must outlive the engine. All entry points run
 * in a coroutine and yield.
 */
#ifndef INTERIMAP_SYNC_SYNC_H
#define INTERIMAP_SYNC_SYNC_H

#include <stdbool.h>
#include <stddef.h>

struct config;
struct coro_sched;
struct logger;
struct state_db;
struct sync_engine;

/* Exit statuses, documented in the manual. */
enum {
    EXIT_IN_STEP = 0,
    EXIT_FAILURE_GENERIC = 1, /* same as the reference tool's fatal errors */
    EXIT_USAGE = 2,           /* bad command line or configuration */
    EXIT_CONNECTION = 3,      /* a server could not be reached or refused us */
    EXIT_PARTIAL = 4,         /* some mailboxes failed, the others are in step */
};

enum sync_command { SYNC_DEFAULT, SYNC_REPAIR, SYNC_DELETE, SYNC_RENAME };

enum sync_target {
    SYNC_TARGET_LOCAL = 1,
    SYNC_TARGET_REMOTE = 2,
    SYNC_TARGET_DATABASE = 4,
    SYNC_TARGET_ALL = 7,
};

struct sync_options {
    enum sync_command command;
    char **mailboxes; /* command-line MAILBOX arguments (local delimiter) */
    size_t nmailboxes;
    unsigned targets;  /* for --delete and --rename */
    int watch_seconds; /* < 0: no --watch */
    bool notify;
    bool quiet;
    bool dry_run;              /* report what a synchronization would do; change nothing */
    struct progress *progress; /* the terminal display, or NULL; main's */
};

struct sync_engine *sync_engine_new(struct coro_sched *sched, const struct config *cfg,
                                    struct logger *log, const struct sync_options *opts);
void sync_engine_free(struct sync_engine **e);

/* Runs the whole command; returns one of the exit statuses above. */
int sync_engine_run(struct sync_engine *e);

#endif
