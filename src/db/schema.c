/*
 * The state database's file and schema: the schema text (as the Perl
 * tool writes it), opening and locking the file (created only in an
 * existing directory, mode 0600), reading, creating and migrating the
 * schema, and closing. doc/internals/state.md explains the choices.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "errors.h"

/*
 * The schema, statement for statement what the Perl tool executes: SQLite
 * stores the CREATE TABLE text verbatim in sqlite_master, so any change in
 * spacing would make `.schema` differ between files made by either tool.
 * (The Perl tool builds each one as "CREATE TABLE name (" + the column
 * definitions joined with ", " + ")".)
 */
#define MAILBOXES_COLUMNS                                                                          \
    "idx        INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, "                                      \
    "mailbox    BLOB COLLATE BINARY NOT NULL CHECK (mailbox != '') UNIQUE, "                       \
    "subscribed BOOLEAN NOT NULL"
#define SIDE_COLUMNS                                                                               \
    "idx           INTEGER         NOT NULL PRIMARY KEY REFERENCES mailboxes(idx), "               \
    "UIDVALIDITY   UNSIGNED INT    NOT NULL CHECK (UIDVALIDITY > 0), "                             \
    "UIDNEXT       UNSIGNED INT    NOT NULL, "                                                     \
    "HIGHESTMODSEQ UNSIGNED BIGINT NOT NULL"

static const char *const schema_v1[] = {
    "CREATE TABLE mailboxes (" MAILBOXES_COLUMNS ")",
    "CREATE TABLE local (" SIDE_COLUMNS ")",
    "CREATE TABLE remote (" SIDE_COLUMNS ")",
    "CREATE TABLE mapping (idx  INTEGER      NOT NULL REFERENCES mailboxes(idx), "
    "lUID UNSIGNED INT NOT NULL CHECK (lUID > 0), "
    "rUID UNSIGNED INT NOT NULL CHECK (rUID > 0), "
    "PRIMARY KEY (idx,lUID), "
    "UNIQUE      (idx,rUID))",
};

/* Our own tables, beyond the Perl tool's: no foreign keys, so the Perl
 * tool (which deletes mailboxes with foreign_keys=ON) never trips on them.
 * `journal_copies` records each message being copied, before the APPEND
 * that carries it is complete; `journal_commands` records a --rename or
 * --delete until both servers and the database have done it. See
 * doc/internals/state.md. */
static const char *const journal_schema[] = {
    "CREATE TABLE IF NOT EXISTS journal_copies ("
    "idx INTEGER NOT NULL, "
    "source INTEGER NOT NULL CHECK (source IN (0,1)), "
    "sUID UNSIGNED INT NOT NULL, "
    "batch INTEGER NOT NULL, "
    "tUIDNEXT UNSIGNED INT NOT NULL, "
    "tUID UNSIGNED INT NOT NULL, "
    "size UNSIGNED BIGINT NOT NULL, "
    "internaldate TEXT NOT NULL, "
    "messageid BLOB NOT NULL, "
    "flags TEXT NOT NULL, "
    "PRIMARY KEY (idx,source,sUID))",
    "CREATE TABLE IF NOT EXISTS journal_commands ("
    "id INTEGER NOT NULL PRIMARY KEY, "
    "command TEXT NOT NULL CHECK (command IN ('rename','delete')), "
    "name BLOB NOT NULL, "
    "newname BLOB NOT NULL, "
    "targets INTEGER NOT NULL, "
    "done INTEGER NOT NULL)",
};

/* The journal of the previous format, `pending`, held one row per mailbox
 * and direction: copies at or above tUIDNEXT, nothing known about them.
 * Such a row becomes a copy-journal row with sUID 0, which the engine
 * settles by matching the unrecorded messages of both sides. */
static const char legacy_pending_migration[] =
    "INSERT OR IGNORE INTO journal_copies"
    " (idx,source,sUID,batch,tUIDNEXT,tUID,size,internaldate,messageid,flags)"
    " SELECT idx, source, 0, 0, MIN(tUIDNEXT), 0, 0, '', x'', '' FROM pending"
    " GROUP BY idx, source";

/* Our own tables for servers without QRESYNC (doc/internals/state.md):
 * what each server advertised after login on the last run, keyed by a
 * digest of its connection settings, and, for a side whose server has no
 * mod-sequences, the flags each mapped message had there when last seen. */
static const char capabilities_schema[] =
    "CREATE TABLE IF NOT EXISTS capabilities ("
    "side INTEGER NOT NULL PRIMARY KEY CHECK (side IN (0,1)), "
    "server TEXT NOT NULL, "
    "capabilities TEXT NOT NULL, "
    "append_hms INTEGER NOT NULL DEFAULT 0)";
static const char flags_schema[] = "CREATE TABLE IF NOT EXISTS flags ("
                                   "idx INTEGER NOT NULL, "
                                   "side INTEGER NOT NULL CHECK (side IN (0,1)), "
                                   "UID UNSIGNED INT NOT NULL CHECK (UID > 0), "
                                   "flags TEXT NOT NULL, "
                                   "PRIMARY KEY (idx,side,UID))";

/* ------------------------------------------------------------------ */
/* open / close */

/* The directory that would hold path must exist: a database is never
 * created in a directory made up for it (a mistyped path would otherwise
 * start a fresh database and copy every message again). */
static int check_parent(const char *path, char *err, size_t errlen)
{
    char *dir = strdup(path);
    if (!dir) {
        set_msg(err, errlen, "out of memory");
        return -ENOMEM;
    }
    char *slash = strrchr(dir, '/');
    int rc = 0;
    if (slash) {
        if (slash == dir)
            slash[1] = '\0';
        else
            *slash = '\0';
        struct stat sb;
        if (stat(dir, &sb) < 0) {
            rc = -errno;
            set_msg(err, errlen, "cannot create database %s: directory %s: %s", path, dir,
                    strerror(errno));
        } else if (!S_ISDIR(sb.st_mode)) {
            rc = -ENOTDIR;
            set_msg(err, errlen, "cannot create database %s: %s is not a directory", path, dir);
        }
    }
    free(dir);
    return rc;
}

/* Creates an empty file with mode exactly 0600 unless it exists. */
static int create_file(const char *path, char *err, size_t errlen)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        if (errno == EEXIST)
            return 0;
        int e = errno;
        set_msg(err, errlen, "cannot create %s: %s", path, strerror(e));
        return -e;
    }
    int rc = 0;
    if (fchmod(fd, 0600) < 0) {
        rc = -errno;
        set_msg(err, errlen, "cannot set mode of %s: %s", path, strerror(errno));
    }
    close(fd);
    return rc;
}

/* The settings and the lock of a database just opened (see
 * doc/internals/state.md): exclusive locking, taken now; a write-ahead
 * log for a read-write open, no writes at all for a read-only one. */
static int db_settle(struct state_db *db, const char *path, bool ro, char *err, size_t errlen)
{
    sqlite3_busy_timeout(db->h, BUSY_TIMEOUT_MS);
    /*
     * Exclusive locking mode keeps every lock taken until the connection
     * closes; an empty exclusive transaction takes the strongest lock now,
     * before any network traffic, so a second instance fails at once.
     */
    if (sqlite3_exec(db->h, "PRAGMA locking_mode = EXCLUSIVE", NULL, NULL, NULL) != SQLITE_OK ||
        (ro && sqlite3_exec(db->h, "PRAGMA query_only = 1", NULL, NULL, NULL) != SQLITE_OK)) {
        set_msg(err, errlen, "database %s: %s", path, sqlite3_errmsg(db->h));
        return ERR_DB;
    }
    /* read only: a read inside a transaction takes the shared lock, which
     * the locking mode then keeps */
    int r =
        sqlite3_exec(db->h, ro ? "BEGIN; SELECT COUNT(*) FROM sqlite_master" : "BEGIN EXCLUSIVE",
                     NULL, NULL, NULL);
    if (r == SQLITE_BUSY || r == SQLITE_LOCKED) {
        set_msg(err, errlen, "database %s is locked by another interimap instance", path);
        return -EBUSY;
    }
    if (r != SQLITE_OK || sqlite3_exec(db->h, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        set_msg(err, errlen, "database %s: %s", path, sqlite3_errmsg(db->h));
        return ERR_DB;
    }
    /*
     * Once the lock is held (a second instance would wait on this), a
     * write-ahead log: a commit costs one sync of the log instead of
     * the rollback journal's three or four (journal, its header, the
     * database), and runs commit often (every APPEND is journaled before
     * its last byte), so this is most of a run's local cost when the
     * servers answer fast. Commits stay durable (synchronous is FULL, the
     * default). The mode is recorded in the file; the Perl tool's SQLite
     * reads such a database as any other, and in exclusive locking mode
     * no shared-memory file is needed.
     */
    if (!ro && sqlite3_exec(db->h, "PRAGMA journal_mode = WAL", NULL, NULL, NULL) != SQLITE_OK) {
        set_msg(err, errlen, "database %s: %s", path, sqlite3_errmsg(db->h));
        return ERR_DB;
    }
    /* a v0 -> v1 migration drops and recreates the referenced table;
     * state_db_prepare() turns foreign keys on afterwards */
    if (sqlite3_exec(db->h, "PRAGMA foreign_keys = OFF", NULL, NULL, NULL) != SQLITE_OK) {
        set_msg(err, errlen, "database %s: %s", path, sqlite3_errmsg(db->h));
        return ERR_DB;
    }
    return 0;
}

int state_db_open(const char *path, struct state_db **out, char *err, size_t errlen)
{
    return state_db_open_flags(path, 0, out, err, errlen);
}

int state_db_open_flags(const char *path, unsigned flags, struct state_db **out, char *err,
                        size_t errlen)
{
    *out = NULL;
    if (!path || !*path) {
        set_msg(err, errlen, "missing database path");
        return -EINVAL;
    }
    int rc;
    bool created = false;
    struct stat sb;
    if (flags & STATE_DB_READ_ONLY)
        flags |= STATE_DB_NO_CREATE;
    if (stat(path, &sb) < 0) {
        if (errno != ENOENT || (flags & STATE_DB_NO_CREATE)) {
            rc = -errno;
            set_msg(err, errlen, "cannot open database %s: %s", path, strerror(errno));
            return rc;
        }
        rc = check_parent(path, err, errlen);
        if (rc < 0)
            return rc;
        rc = create_file(path, err, errlen);
        if (rc < 0)
            return rc;
        created = true;
    }

    struct state_db *db = calloc(1, sizeof *db);
    if (!db || !(db->path = strdup(path))) {
        free(db);
        set_msg(err, errlen, "out of memory");
        return -ENOMEM;
    }
    /* never SQLITE_OPEN_CREATE: the file exists by now, and SQLite would
     * create a missing one with the umask's mode. A read-only caller gets
     * a read-write handle too (SQLite falls back to reading only where
     * the file cannot be written) with query_only set: a database in
     * write-ahead-log mode cannot be read through a read-only handle
     * unless its log exists. */
    bool ro = flags & STATE_DB_READ_ONLY;
    if (sqlite3_open_v2(path, &db->h, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) {
        set_msg(err, errlen, "cannot open database %s: %s", path,
                db->h ? sqlite3_errmsg(db->h) : "out of memory");
        rc = ERR_DB;
        goto fail;
    }
    rc = db_settle(db, path, ro, err, errlen);
    if (rc < 0)
        goto fail;
    db->from_version = -1;
    db->created = created;
    *out = db;
    return 0;
fail:
    sqlite3_close_v2(db->h);
    free(db->path);
    free(db);
    return rc;
}

void state_db_close(struct state_db **pdb)
{
    if (!pdb || !*pdb)
        return;
    struct state_db *db = *pdb;
    *pdb = NULL;
    if (!sqlite3_get_autocommit(db->h))
        sqlite3_exec(db->h, "ROLLBACK", NULL, NULL, NULL);
    for (int i = 0; i < ST_COUNT; i++)
        sqlite3_finalize(db->stmt[i]);
    sqlite3_close_v2(db->h);
    free(db->path);
    free(db);
}

/* ------------------------------------------------------------------ */
/* schema */

int pragma_int(struct state_db *db, const char *sql, int *val)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db->h, sql, -1, &st, NULL) != SQLITE_OK)
        return db_fail(db, "cannot read schema");
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        *val = sqlite3_column_int(st, 0);
    else if (rc == SQLITE_DONE)
        *val = 0;
    else
        rc = db_fail(db, "cannot read schema");
    sqlite3_finalize(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : ERR_DB;
}

static void print_delim(char *buf, size_t len, char d)
{
    if (!d)
        snprintf(buf, len, "NIL");
    else if (d == '\\' || d == '"')
        snprintf(buf, len, "\"\\%c\"", d);
    else
        snprintf(buf, len, "\"%c\"", d);
}

/*
 * Version 0 stored names as TEXT with the server's delimiter; version 1
 * stores BLOBs with NUL instead. Same steps as the Perl tool (SQLite's
 * table rebuild procedure), so the resulting sqlite_master text matches:
 * after ALTER TABLE .. RENAME the stored text reads CREATE TABLE "mailboxes".
 */
static int migrate_v0(struct state_db *db, char ldelim, char rdelim)
{
    if (ldelim && rdelim && ldelim != rdelim) {
        char l[8], r[8];
        print_delim(l, sizeof l, ldelim);
        print_delim(r, sizeof r, rdelim);
        set_msg(db->err, sizeof db->err,
                "Local and remote hierarchy delimiters differ (local %s, remote %s), refusing "
                "to update table `mailboxes`.",
                l, r);
        return ERR_STATE_MISMATCH;
    }
    int rc =
        exec_sql(db, "CREATE TABLE _tmp1_mailboxes (" MAILBOXES_COLUMNS ")", "cannot create table");
    if (rc < 0)
        return rc;
    if (ldelim) {
        sqlite3_stmt *st;
        if (sqlite3_prepare_v2(db->h,
                               "INSERT INTO _tmp1_mailboxes SELECT idx, CAST(REPLACE(mailbox, ?, "
                               "x'00') AS BLOB), subscribed FROM mailboxes",
                               -1, &st, NULL) != SQLITE_OK)
            return db_fail(db, "cannot migrate mailboxes");
        sqlite3_bind_text(st, 1, &ldelim, 1, SQLITE_STATIC);
        rc = sqlite3_step(st) == SQLITE_DONE ? 0 : db_fail(db, "cannot migrate mailboxes");
        sqlite3_finalize(st);
    } else {
        /* flat namespace: names have no delimiter to replace */
        rc = exec_sql(db, "INSERT INTO _tmp1_mailboxes SELECT * FROM mailboxes",
                      "cannot migrate mailboxes");
    }
    if (rc < 0)
        return rc;
    rc = exec_sql(db, "DROP TABLE mailboxes", "cannot migrate mailboxes");
    if (rc < 0)
        return rc;
    return exec_sql(db, "ALTER TABLE _tmp1_mailboxes RENAME TO mailboxes",
                    "cannot migrate mailboxes");
}

static int has_tables(struct state_db *db, bool *yes)
{
    int n = 0;
    int rc = pragma_int(db,
                        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'"
                        " AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
                        &n);
    *yes = n > 0;
    return rc;
}

int state_db_schema_read(struct state_db *db, int *version, bool *tables)
{
    int rc = pragma_int(db, "PRAGMA user_version", version);
    if (rc == 0)
        rc = has_tables(db, tables);
    return rc;
}

static int fk_check(struct state_db *db)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db->h, "PRAGMA foreign_key_check", -1, &st, NULL) != SQLITE_OK)
        return db_fail(db, "cannot check foreign keys");
    int r = sqlite3_step(st);
    sqlite3_finalize(st);
    if (r == SQLITE_ROW) {
        set_msg(db->err, sizeof db->err,
                "Broken referential integrity! Refusing to commit changes.");
        return ERR_STATE_MISMATCH;
    }
    return r == SQLITE_DONE ? 0 : db_fail(db, "cannot check foreign keys");
}

/* Moves what the previous journal format left into the current one. */
static int migrate_pending(struct state_db *db)
{
    int n = 0;
    int rc = pragma_int(db,
                        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'"
                        " AND name = 'pending'",
                        &n);
    if (rc < 0 || n == 0)
        return rc;
    rc = exec_sql(db, legacy_pending_migration, "cannot convert table pending");
    if (rc == 0)
        rc = exec_sql(db, "DROP TABLE pending", "cannot drop table pending");
    return rc;
}

int state_db_prepare(struct state_db *db, char ldelim, char rdelim, char *err, size_t errlen)
{
    int version = 0;
    int rc = pragma_int(db, "PRAGMA user_version", &version);
    if (rc < 0)
        goto out;
    db->from_version = version;
    db->action = STATE_DB_SCHEMA_CURRENT;
    if (version > SCHEMA_VERSION) {
        set_msg(db->err, sizeof db->err,
                "database %s has schema version %d, newer than the supported %d", db->path, version,
                SCHEMA_VERSION);
        rc = ERR_STATE_MISMATCH;
        goto out;
    }
    rc = exec_sql(db, "BEGIN IMMEDIATE", "cannot begin transaction");
    if (rc < 0)
        goto out;
    if (version < SCHEMA_VERSION) {
        bool tables = false;
        if (version == 0 && (rc = has_tables(db, &tables)) < 0)
            goto rollback;
        if (version == 0 && !tables) {
            for (size_t i = 0; i < sizeof schema_v1 / sizeof *schema_v1; i++) {
                rc = exec_sql(db, schema_v1[i], "cannot create schema");
                if (rc < 0)
                    goto rollback;
            }
            db->action = STATE_DB_SCHEMA_CREATED;
        } else {
            rc = migrate_v0(db, ldelim, rdelim);
            if (rc < 0)
                goto rollback;
            rc = fk_check(db);
            if (rc < 0)
                goto rollback;
            db->action = STATE_DB_SCHEMA_UPGRADED;
        }
        rc = exec_sql(db, "PRAGMA user_version = 1", "cannot set schema version");
        if (rc < 0)
            goto rollback;
    }
    for (size_t i = 0; i < sizeof journal_schema / sizeof *journal_schema; i++) {
        rc = exec_sql(db, journal_schema[i], "cannot create the journal tables");
        if (rc < 0)
            goto rollback;
    }
    rc = migrate_pending(db);
    if (rc == 0)
        rc = exec_sql(db, capabilities_schema, "cannot create table capabilities");
    if (rc == 0)
        rc = exec_sql(db, flags_schema, "cannot create table flags");
    if (rc < 0)
        goto rollback;
    rc = exec_sql(db, "COMMIT", "cannot commit schema");
    if (rc < 0)
        goto rollback;
    /* a no-op inside a transaction: hence here, after the commit */
    rc = exec_sql(db, "PRAGMA foreign_keys = ON", "cannot enable foreign keys");
    goto out;
rollback:
    sqlite3_exec(db->h, "ROLLBACK", NULL, NULL, NULL);
out:
    if (rc < 0)
        set_msg(err, errlen, "%s", db->err);
    return rc;
}

enum state_db_schema_action state_db_schema_action(const struct state_db *db, int *from_version)
{
    if (from_version)
        *from_version = db->from_version;
    return db->action;
}
