/*
 * The state database: a SQLite file that records which mailboxes are
 * replicated, the last UIDVALIDITY/UIDNEXT/HIGHESTMODSEQ seen on each side,
 * and the (local UID, remote UID) pairs of replicated messages.
 *
 * The file format is the one of the Perl interimap 0.5.x (schema version 1,
 * same CREATE TABLE text), so both tools can use the same file one after
 * the other. One extra table, `pending`, journals appends in flight; the
 * Perl tool never looks at it. See doc/internals/state.md.
 *
 * Mailbox names are byte strings (pointer + length) in the internal form:
 * no list reference, and the hierarchy delimiter replaced by NUL.
 *
 * Ownership: every pointer passed in is borrowed for the duration of the
 * call. Lists returned through an out parameter are owned by the caller
 * and released with the matching *_free function. No call yields; every
 * call is synchronous (SQLite on a local file).
 *
 * Errors: 0 (or a documented non-negative count / found flag) on success;
 * ERR_DB when SQLite fails, -ENOMEM, -EINVAL for bad arguments, -EBUSY when
 * another process holds the database. After a failure on an open database,
 * state_db_error() gives a one-line description (with SQLite's message).
 * A failed call leaves any open transaction open: the caller decides to
 * roll back.
 *
 * Transactions: after state_db_prepare() the database is in autocommit
 * mode, each call being its own transaction; state_db_begin() ..
 * state_db_commit() groups calls. Calls that run several statements
 * (delete, rename, copy confirmation) are atomic on their own either way.
 */
#ifndef INTERIMAP_DB_STATE_H
#define INTERIMAP_DB_STATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "side.h"

struct uidset;
struct state_db;

/* One side's row of the `local` or `remote` table. */
struct state_side {
    uint32_t uidvalidity;
    uint32_t uidnext;       /* 0 until the first full sync of the mailbox */
    uint64_t highestmodseq; /* stored as a signed 64-bit integer, like Perl */
};

/* Options of state_db_open_flags(). */
enum {
    /* Fail if the file does not exist (the Perl tool never creates the
     * database in --watch mode). */
    STATE_DB_NO_CREATE = 1,
    /* Read only (--dry-run): the file must exist and is never written;
     * a shared lock is held instead, so an instance writing to the
     * database makes the open fail (-EBUSY) and none can start writing
     * while it is held. Implies STATE_DB_NO_CREATE. */
    STATE_DB_READ_ONLY = 2,
};

/* What state_db_prepare() did to the schema. */
enum state_db_schema_action {
    STATE_DB_SCHEMA_CURRENT,  /* already at version 1 */
    STATE_DB_SCHEMA_CREATED,  /* empty file: the tables were created */
    STATE_DB_SCHEMA_UPGRADED, /* migrated from an older version */
};

/*
 * Opens (creating it if missing) and locks the database. A missing file is
 * created with mode 0600 whatever the umask, but only in a directory that
 * exists: otherwise the call fails with one line naming the directory
 * (a mistyped path must not start a fresh database). An existing file
 * keeps its mode. The lock
 * is SQLite's exclusive locking mode, taken at once and held until
 * state_db_close(): a second instance (this tool or the Perl one) fails
 * within a quarter of a second with -EBUSY and the message "database PATH
 * is locked by another interimap instance". The schema is not touched
 * here (see state_db_prepare). On failure *out is NULL and err holds a
 * one-line message.
 */
int state_db_open(const char *path, struct state_db **out, char *err, size_t errlen);
int state_db_open_flags(const char *path, unsigned flags, struct state_db **out, char *err,
                        size_t errlen);

/*
 * Creates the schema in a new database, or upgrades an older one, then
 * enables foreign keys; call it once after state_db_open(), when both
 * hierarchy delimiters are known ('\0' for a flat namespace), as the
 * version 0 to 1 migration needs them (it fails if both are set and
 * differ). Refuses schema versions newer than 1. Also creates the journal
 * tables if missing (converting the rows of an older journal format).
 * Must be called outside a transaction.
 */
int state_db_prepare(struct state_db *db, char ldelim, char rdelim, char *err, size_t errlen);
/* What the last state_db_prepare() did; *from_version (may be NULL) gets
 * the version found in the file. */
enum state_db_schema_action state_db_schema_action(const struct state_db *db, int *from_version);
/* Reads the schema version in the file and whether it holds any table,
 * without changing anything (what state_db_prepare() would do). */
int state_db_schema_read(struct state_db *db, int *version, bool *tables);

/* Rolls back any open transaction, closes, releases the lock. NULL-safe. */
void state_db_close(struct state_db **db);

/* Last error, one line, never NULL; valid until the next call on db. */
const char *state_db_error(const struct state_db *db);
const char *state_db_path(const struct state_db *db);
/* Whether state_db_open() created the file (there was no database). */
bool state_db_created(const struct state_db *db);

/* BEGIN IMMEDIATE / COMMIT / ROLLBACK. Beginning twice is an error;
 * committing or rolling back with no transaction open does nothing. */
int state_db_begin(struct state_db *db);
int state_db_commit(struct state_db *db);
int state_db_rollback(struct state_db *db);
bool state_db_in_transaction(const struct state_db *db);

/* ---- mailboxes ---- */

struct state_mailbox {
    int64_t idx;
    char *name; /* internal form, NUL-delimited; also NUL-terminated */
    size_t namelen;
    bool subscribed;
    bool known; /* both `local` and `remote` rows exist; side[] is valid */
    struct state_side side[2];
};

/* 1 and *idx (and *subscribed if not NULL) when found, 0 when not. */
int state_db_mailbox_find(struct state_db *db, const char *name, size_t len, int64_t *idx,
                          bool *subscribed);
/* Inserts a mailbox, *idx (may be NULL) gets its new index. Indexes are
 * never reused (AUTOINCREMENT). Fails on a duplicate name. */
int state_db_mailbox_insert(struct state_db *db, const char *name, size_t len, bool subscribed,
                            int64_t *idx);
int state_db_mailbox_set_subscribed(struct state_db *db, int64_t idx, bool subscribed);
/* Every mailbox, ordered by idx, with its local/remote rows if any. */
int state_db_mailbox_list(struct state_db *db, struct state_mailbox **out, size_t *n);
void state_db_mailbox_list_free(struct state_mailbox **list, size_t n);
/* Forgets a mailbox with its local, remote, mapping, flags and copy-journal rows.
 * Returns 1 if it existed, 0 if not. */
int state_db_mailbox_delete(struct state_db *db, int64_t idx);
/* Renames `from` and every mailbox below it (names starting with from
 * followed by NUL) to `to`, as the --rename command does. Returns the
 * number of rows renamed (0 if none). -EINVAL if `to` is `from` or lies
 * below it; ERR_DB if a new name already exists (UNIQUE). */
int state_db_mailbox_rename(struct state_db *db, const char *from, size_t flen, const char *to,
                            size_t tlen);
/* Indexes of mailboxes whose sync was interrupted: mapping rows at or
 * above the stored UIDNEXT of either side. Caller frees *out. */
int state_db_interrupted_list(struct state_db *db, int64_t **out, size_t *n);

/* ---- local / remote rows ---- */

/* 1 and *out when the row exists, 0 when not. */
int state_db_side_get(struct state_db *db, int64_t idx, enum side s, struct state_side *out);
/* New row with UIDNEXT and HIGHESTMODSEQ 0, as Perl does for a new mailbox. */
int state_db_side_insert(struct state_db *db, int64_t idx, enum side s, uint32_t uidvalidity);
int state_db_side_update(struct state_db *db, int64_t idx, enum side s, uint32_t uidnext,
                         uint64_t highestmodseq);
int state_db_side_set_highestmodseq(struct state_db *db, int64_t idx, enum side s,
                                    uint64_t highestmodseq);

/* ---- mapping ---- */

struct state_pair {
    uint32_t luid, ruid;
};

int state_db_mapping_insert(struct state_db *db, int64_t idx, uint32_t luid, uint32_t ruid);
/* Deletes the pair whose UID on side s is uid. Returns the number of rows
 * deleted (0 or 1). */
int state_db_mapping_delete(struct state_db *db, int64_t idx, enum side s, uint32_t uid);
/* Same for n UIDs, atomically. Returns the number of rows deleted. */
int state_db_mapping_delete_many(struct state_db *db, int64_t idx, enum side s,
                                 const uint32_t *uids, size_t n);
/* 1 and *other (the UID on the other side) when mapped, 0 when not. */
int state_db_mapping_lookup(struct state_db *db, int64_t idx, enum side s, uint32_t uid,
                            uint32_t *other);
int state_db_mapping_count(struct state_db *db, int64_t idx, int64_t *count);
/* Appends to out the `limit` highest UIDs of side s, highest first. */
int state_db_mapping_highest(struct state_db *db, int64_t idx, enum side s, size_t limit,
                             struct uidset *out);
/* Pairs left by an interrupted sync (lUID >= luidnext or rUID >= ruidnext):
 * appends their local UIDs to l and remote UIDs to r, pair by pair. */
int state_db_mapping_above(struct state_db *db, int64_t idx, uint32_t luidnext, uint32_t ruidnext,
                           struct uidset *l, struct uidset *r);
/* Every pair of a mailbox ordered by local UID; caller frees *out. */
int state_db_mapping_all(struct state_db *db, int64_t idx, struct state_pair **out, size_t *n);

/* ---- copy journal (`journal_copies`; beyond the Perl tool) ---- */

/*
 * One message being copied from side `source` into the same mailbox on the
 * other side, recorded and committed before the APPEND that carries it is
 * complete, and kept until the mailbox's UIDNEXT and HIGHESTMODSEQ are
 * saved. A run killed meanwhile leaves enough to find the copy among the
 * target's unrecorded messages (fingerprint: size, INTERNALDATE,
 * Message-ID) whatever became of the source, and the flags both sides
 * had when they were last equal.
 */
struct state_copy {
    enum side source;
    uint32_t suid;      /* 0: a row of the previous journal format (below) */
    int64_t batch;      /* the APPEND command, all or nothing, in sending order */
    uint32_t bound;     /* the copy's UID is not below this */
    uint32_t tuid;      /* the copy's UID once the server said it (APPENDUID), else 0 */
    uint64_t size;      /* RFC822.SIZE */
    char *internaldate; /* as sent in the APPEND, NUL-terminated */
    char *msgid;        /* Message-ID as normalized by the engine, may be empty */
    size_t msgidlen;
    char *flags; /* as sent in the APPEND, NUL-terminated */
};

/* Records a copy (replacing one with the same mailbox, source, UID). */
int state_db_copy_add(struct state_db *db, int64_t idx, const struct state_copy *c);
/* The server confirmed the copy as tuid: notes it in the journal and
 * inserts the mapping, atomically. */
int state_db_copy_confirm(struct state_db *db, int64_t idx, enum side source, uint32_t suid,
                          uint32_t tuid);
/* The journal of mailbox idx, ordered by source, batch, UID. Rows with
 * suid 0 come from the previous format: copies into the other side at or
 * above `bound`, nothing else known. Strings are owned by the list. */
int state_db_copy_list(struct state_db *db, int64_t idx, struct state_copy **out, size_t *n);
void state_db_copy_list_free(struct state_copy **list, size_t n);
/* Returns the number of rows deleted (0 or 1). */
int state_db_copy_delete(struct state_db *db, int64_t idx, enum side source, uint32_t suid);
/* Drops the journal of mailbox idx. */
int state_db_copy_clear(struct state_db *db, int64_t idx);
/* The highest batch number in the journal, 0 if empty. */
int state_db_copy_last_batch(struct state_db *db, int64_t *batch);

/* ---- command journal (`journal_commands`; beyond the Perl tool) ---- */

/*
 * A --rename or --delete, recorded before it touches a server and removed
 * once both servers and the database have done it, so that a run killed in
 * between can finish it. `targets` and `done` are SYNC_TARGET_* bits.
 */
struct state_command {
    int64_t id;
    bool rename; /* else delete */
    char *name;  /* internal form */
    size_t namelen;
    char *newname; /* rename only; empty otherwise */
    size_t newlen;
    unsigned targets;
    unsigned done;
};

int state_db_command_add(struct state_db *db, const struct state_command *c, int64_t *id);
/* Adds `done` to the bits of what is done. */
int state_db_command_done(struct state_db *db, int64_t id, unsigned done);
int state_db_command_list(struct state_db *db, struct state_command **out, size_t *n);
void state_db_command_list_free(struct state_command **list, size_t n);
int state_db_command_delete(struct state_db *db, int64_t id);

/* ---- remembered capabilities (`capabilities` table; beyond the Perl tool) ---- */

/*
 * What a server advertised after login on a previous run, so the next run
 * can pipeline extension commands behind the login, and whether it
 * reports a new HIGHESTMODSEQ after APPEND (append_hms: 0 not known yet,
 * STATE_APPEND_HMS_REPORTED, STATE_APPEND_HMS_QUIET). `server` identifies
 * the connection settings (a digest chosen by the caller); a row recorded
 * for other settings does not count. 1 and *caps (owned by the caller)
 * when found, 0 when not, including before state_db_prepare() created the
 * table.
 */
enum { STATE_APPEND_HMS_REPORTED = 1, STATE_APPEND_HMS_QUIET = 2 };
int state_db_caps_get(struct state_db *db, enum side s, const char *server, char **caps,
                      int *append_hms);
int state_db_caps_set(struct state_db *db, enum side s, const char *server, const char *caps,
                      int append_hms);

/* ---- flag records (`flags` table; beyond the Perl tool) ---- */

/* The flags a message had on a side whose server has no mod-sequences,
 * when the engine last saw them: what tells a flag change from none. */
struct state_flags {
    uint32_t uid;
    char *flags; /* normalized flag list, NUL-terminated */
};

/* Every record of one side of mailbox idx, ordered by UID. */
int state_db_flags_list(struct state_db *db, int64_t idx, enum side s, struct state_flags **out,
                        size_t *n);
void state_db_flags_free(struct state_flags **list, size_t n);
/* Records (or replaces) the flags of one message. */
int state_db_flags_set(struct state_db *db, int64_t idx, enum side s, uint32_t uid,
                       const char *flags);
/* Returns the number of rows deleted. */
int state_db_flags_delete(struct state_db *db, int64_t idx, enum side s, uint32_t uid);
int state_db_flags_clear(struct state_db *db, int64_t idx, enum side s);

#endif
