/*
 * The state database, file-compatible with the Perl interimap 0.5.x.
 * doc/internals/state.md explains the choices (locking, journal mode,
 * schema text, the `pending` table).
 */
#include "db/state.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sqlite3.h>

#include "errors.h"
#include "util/array.h"
#include "util/uidset.h"

enum {
    SCHEMA_VERSION = 1,
    BUSY_TIMEOUT_MS = 250, /* same as the Perl tool: a second instance fails fast */
};

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

/* Cached statements; the SQL of the mailbox, side and mapping queries
 * follows the Perl tool's where it has one. */
enum stmt_id {
    ST_MBX_FIND,
    ST_MBX_INSERT,
    ST_MBX_SUBSCRIBE,
    ST_MBX_LIST,
    ST_MBX_RENAME_ONE,
    ST_MBX_RENAME_CHILDREN,
    ST_DEL_MAPPING,
    ST_DEL_LOCAL,
    ST_DEL_REMOTE,
    ST_DEL_COPIES,
    ST_DEL_MAILBOX,
    ST_INTERRUPTED,
    ST_SIDE_GET_L,
    ST_SIDE_GET_R,
    ST_SIDE_INSERT_L,
    ST_SIDE_INSERT_R,
    ST_SIDE_UPDATE_L,
    ST_SIDE_UPDATE_R,
    ST_SIDE_HMS_L,
    ST_SIDE_HMS_R,
    ST_MAP_INSERT,
    ST_MAP_DELETE_L,
    ST_MAP_DELETE_R,
    ST_MAP_GET_R, /* by lUID */
    ST_MAP_GET_L, /* by rUID */
    ST_MAP_COUNT,
    ST_MAP_HIGHEST_L,
    ST_MAP_HIGHEST_R,
    ST_MAP_ABOVE,
    ST_MAP_ALL,
    ST_COPY_ADD,
    ST_COPY_CONFIRM,
    ST_COPY_LIST,
    ST_COPY_DELETE,
    ST_COPY_LAST_BATCH,
    ST_CMD_ADD,
    ST_CMD_DONE,
    ST_CMD_LIST,
    ST_CMD_DELETE,
    ST_DEL_FLAGS,
    ST_CAPS_GET,
    ST_CAPS_SET,
    ST_FLAGS_LIST,
    ST_FLAGS_SET,
    ST_FLAGS_DELETE,
    ST_FLAGS_CLEAR,
    ST_COUNT
};

static const char *const stmt_sql[ST_COUNT] = {
    [ST_MBX_FIND] = "SELECT idx,subscribed FROM mailboxes WHERE mailbox = ?",
    [ST_MBX_INSERT] = "INSERT INTO mailboxes (mailbox,subscribed) VALUES (?,?)",
    [ST_MBX_SUBSCRIBE] = "UPDATE mailboxes SET subscribed = ? WHERE idx = ?",
    [ST_MBX_LIST] = "SELECT m.idx, m.mailbox, m.subscribed,"
                    " l.UIDVALIDITY, l.UIDNEXT, l.HIGHESTMODSEQ,"
                    " r.UIDVALIDITY, r.UIDNEXT, r.HIGHESTMODSEQ"
                    " FROM mailboxes m LEFT JOIN local l ON m.idx = l.idx"
                    " LEFT JOIN remote r ON m.idx = r.idx ORDER BY m.idx",
    [ST_MBX_RENAME_ONE] = "UPDATE mailboxes SET mailbox = ? WHERE idx = ?",
    /* byte positions: SUBSTR counts bytes on a BLOB; the concatenation
     * keeps NUL bytes and the CAST stores the result as a BLOB again
     * (one statement per designated entry: no comma can be missing) */
    // NOLINTNEXTLINE(bugprone-suspicious-missing-comma)
    [ST_MBX_RENAME_CHILDREN] = "UPDATE mailboxes SET mailbox = CAST(? || SUBSTR(mailbox,?) AS BLOB)"
                               " WHERE SUBSTR(mailbox,1,?) = ?",
    /* children before parents, for foreign keys */
    [ST_DEL_MAPPING] = "DELETE FROM mapping WHERE idx = ?",
    [ST_DEL_LOCAL] = "DELETE FROM local WHERE idx = ?",
    [ST_DEL_REMOTE] = "DELETE FROM remote WHERE idx = ?",
    [ST_DEL_COPIES] = "DELETE FROM journal_copies WHERE idx = ?",
    [ST_DEL_MAILBOX] = "DELETE FROM mailboxes WHERE idx = ?",
    [ST_INTERRUPTED] = "SELECT mbx.idx FROM mailboxes mbx"
                       " JOIN local l ON mbx.idx = l.idx JOIN remote r ON mbx.idx = r.idx"
                       " JOIN mapping ON mbx.idx = mapping.idx"
                       " WHERE (lUID >= l.UIDNEXT OR rUID >= r.UIDNEXT)"
                       " GROUP BY mbx.idx ORDER BY mbx.idx",
    [ST_SIDE_GET_L] = "SELECT UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ FROM local WHERE idx = ?",
    [ST_SIDE_GET_R] = "SELECT UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ FROM remote WHERE idx = ?",
    [ST_SIDE_INSERT_L] =
        "INSERT INTO local (idx,UIDVALIDITY,UIDNEXT,HIGHESTMODSEQ) VALUES (?,?,0,0)",
    [ST_SIDE_INSERT_R] =
        "INSERT INTO remote (idx,UIDVALIDITY,UIDNEXT,HIGHESTMODSEQ) VALUES (?,?,0,0)",
    [ST_SIDE_UPDATE_L] = "UPDATE local SET UIDNEXT = ?, HIGHESTMODSEQ = ? WHERE idx = ?",
    [ST_SIDE_UPDATE_R] = "UPDATE remote SET UIDNEXT = ?, HIGHESTMODSEQ = ? WHERE idx = ?",
    [ST_SIDE_HMS_L] = "UPDATE local SET HIGHESTMODSEQ = ? WHERE idx = ?",
    [ST_SIDE_HMS_R] = "UPDATE remote SET HIGHESTMODSEQ = ? WHERE idx = ?",
    [ST_MAP_INSERT] = "INSERT INTO mapping (idx,lUID,rUID) VALUES (?,?,?)",
    [ST_MAP_DELETE_L] = "DELETE FROM mapping WHERE idx = ? and lUID = ?",
    [ST_MAP_DELETE_R] = "DELETE FROM mapping WHERE idx = ? and rUID = ?",
    [ST_MAP_GET_R] = "SELECT rUID FROM mapping WHERE idx = ? and lUID = ?",
    [ST_MAP_GET_L] = "SELECT lUID FROM mapping WHERE idx = ? and rUID = ?",
    [ST_MAP_COUNT] = "SELECT COUNT(*) FROM mapping WHERE idx = ?",
    [ST_MAP_HIGHEST_L] = "SELECT lUID FROM mapping WHERE idx = ? ORDER BY lUID DESC LIMIT ?",
    [ST_MAP_HIGHEST_R] = "SELECT rUID FROM mapping WHERE idx = ? ORDER BY rUID DESC LIMIT ?",
    [ST_MAP_ABOVE] = "SELECT lUID, rUID FROM mapping WHERE idx = ? AND (lUID >= ? OR rUID >= ?)"
                     " ORDER BY lUID",
    [ST_MAP_ALL] = "SELECT lUID, rUID FROM mapping WHERE idx = ? ORDER BY lUID",
    /* the columns in the order of journal_schema */
    [ST_COPY_ADD] = "INSERT OR REPLACE INTO journal_copies VALUES (?,?,?,?,?,?,?,?,?,?)",
    [ST_COPY_CONFIRM] =
        "UPDATE journal_copies SET tUID = ? WHERE idx = ? AND source = ? AND sUID = ?",
    [ST_COPY_LIST] = "SELECT * FROM journal_copies WHERE idx = ? ORDER BY source,batch,sUID",
    [ST_COPY_DELETE] = "DELETE FROM journal_copies WHERE idx = ? AND source = ? AND sUID = ?",
    [ST_COPY_LAST_BATCH] = "SELECT COALESCE(MAX(batch),0) FROM journal_copies",
    [ST_CMD_ADD] = "INSERT INTO journal_commands VALUES (NULL,?,?,?,?,0)",
    [ST_CMD_DONE] = "UPDATE journal_commands SET done = done | ? WHERE id = ?",
    [ST_CMD_LIST] = "SELECT id,command,name,newname,targets,done FROM journal_commands ORDER BY id",
    [ST_CMD_DELETE] = "DELETE FROM journal_commands WHERE id = ?",
    [ST_DEL_FLAGS] = "DELETE FROM flags WHERE idx = ?",
    [ST_CAPS_GET] = "SELECT capabilities, append_hms FROM capabilities"
                    " WHERE side = ? AND server = ?",
    [ST_CAPS_SET] = "INSERT OR REPLACE INTO capabilities (side,server,capabilities,append_hms)"
                    " VALUES (?,?,?,?)",
    [ST_FLAGS_LIST] = "SELECT UID, flags FROM flags WHERE idx = ? AND side = ?"
                      " ORDER BY UID",
    [ST_FLAGS_SET] = "INSERT OR REPLACE INTO flags (idx,side,UID,flags)"
                     " VALUES (?,?,?,?)",
    [ST_FLAGS_DELETE] = "DELETE FROM flags WHERE idx = ? AND side = ? AND UID = ?",
    [ST_FLAGS_CLEAR] = "DELETE FROM flags WHERE idx = ? AND side = ?",
};

struct state_db {
    sqlite3 *h;
    char *path;
    sqlite3_stmt *stmt[ST_COUNT];
    enum state_db_schema_action action;
    int from_version;
    bool created; /* state_db_open created the file */
    char err[512];
};

/* ------------------------------------------------------------------ */
/* errors */

/* Messages end up on one log line: fold any line break. */
static void one_line(char *s)
{
    for (; *s; s++)
        if (*s == '\n' || *s == '\r')
            *s = ' ';
}

__attribute__((format(printf, 3, 4))) static void set_msg(char *buf, size_t len, const char *fmt,
                                                          ...)
{
    if (!buf || len == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, len, fmt, ap);
    va_end(ap);
    one_line(buf);
}

/* Records "what: sqlite message" and returns ERR_DB. */
static int db_fail(struct state_db *db, const char *what)
{
    set_msg(db->err, sizeof db->err, "%s: %s", what, sqlite3_errmsg(db->h));
    return ERR_DB;
}

const char *state_db_error(const struct state_db *db)
{
    return db ? db->err : "no database";
}

const char *state_db_path(const struct state_db *db)
{
    return db->path;
}

bool state_db_created(const struct state_db *db)
{
    return db->created;
}

/* ------------------------------------------------------------------ */
/* statements */

static sqlite3_stmt *stmt_get(struct state_db *db, enum stmt_id id)
{
    if (!db->stmt[id]) {
        int rc = sqlite3_prepare_v3(db->h, stmt_sql[id], -1, SQLITE_PREPARE_PERSISTENT,
                                    &db->stmt[id], NULL);
        if (rc != SQLITE_OK) {
            db_fail(db, "cannot prepare statement");
            db->stmt[id] = NULL;
            return NULL;
        }
    }
    return db->stmt[id];
}

static void stmt_done(sqlite3_stmt *st)
{
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
}

/* A zero-length blob bound with a NULL pointer would become SQL NULL. */
static int bind_name(sqlite3_stmt *st, int i, const char *name, size_t len)
{
    return sqlite3_bind_blob64(st, i, name ? name : "", len, SQLITE_STATIC);
}

/* Runs a statement that returns no rows; returns the number of changed rows. */
static int stmt_exec(struct state_db *db, sqlite3_stmt *st, const char *what)
{
    int rc = sqlite3_step(st);
    int ret = rc == SQLITE_DONE ? sqlite3_changes(db->h) : db_fail(db, what);
    stmt_done(st);
    return ret;
}

static int exec_sql(struct state_db *db, const char *sql, const char *what)
{
    if (sqlite3_exec(db->h, sql, NULL, NULL, NULL) != SQLITE_OK)
        return db_fail(db, what);
    return 0;
}

/*
 * Multi-statement calls run inside a savepoint: it nests in the caller's
 * transaction and starts one when there is none, so the call is atomic
 * either way.
 */
static int sp_begin(struct state_db *db)
{
    return exec_sql(db, "SAVEPOINT state_db_op", "cannot open savepoint");
}

static int sp_end(struct state_db *db, int rc)
{
    if (rc >= 0) {
        if (exec_sql(db, "RELEASE state_db_op", "cannot release savepoint") < 0)
            rc = ERR_DB;
        else
            return rc;
    }
    /* keep the first error message: the rollback is cleanup */
    sqlite3_exec(db->h, "ROLLBACK TO state_db_op; RELEASE state_db_op", NULL, NULL, NULL);
    return rc;
}

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
    /* read-write only: the file exists by now, and SQLite would create a
     * missing one with the umask's mode */
    bool ro = flags & STATE_DB_READ_ONLY;
    if (sqlite3_open_v2(path, &db->h, ro ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE, NULL) !=
        SQLITE_OK) {
        set_msg(err, errlen, "cannot open database %s: %s", path,
                db->h ? sqlite3_errmsg(db->h) : "out of memory");
        rc = ERR_DB;
        goto fail;
    }
    sqlite3_busy_timeout(db->h, BUSY_TIMEOUT_MS);
    /*
     * Exclusive locking mode keeps every lock taken until the connection
     * closes; an empty exclusive transaction takes the strongest lock now,
     * before any network traffic, so a second instance fails at once.
     */
    if (sqlite3_exec(db->h, "PRAGMA locking_mode = EXCLUSIVE", NULL, NULL, NULL) != SQLITE_OK) {
        set_msg(err, errlen, "database %s: %s", path, sqlite3_errmsg(db->h));
        rc = ERR_DB;
        goto fail;
    }
    /* read only: a read inside a transaction takes the shared lock, which
     * the locking mode then keeps */
    int r =
        sqlite3_exec(db->h, ro ? "BEGIN; SELECT COUNT(*) FROM sqlite_master" : "BEGIN EXCLUSIVE",
                     NULL, NULL, NULL);
    if (r == SQLITE_BUSY || r == SQLITE_LOCKED) {
        set_msg(err, errlen, "database %s is locked by another interimap instance", path);
        rc = -EBUSY;
        goto fail;
    }
    if (r != SQLITE_OK || sqlite3_exec(db->h, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        set_msg(err, errlen, "database %s: %s", path, sqlite3_errmsg(db->h));
        rc = ERR_DB;
        goto fail;
    }
    /* a v0 -> v1 migration drops and recreates the referenced table;
     * state_db_prepare() turns foreign keys on afterwards */
    if (sqlite3_exec(db->h, "PRAGMA foreign_keys = OFF", NULL, NULL, NULL) != SQLITE_OK) {
        set_msg(err, errlen, "database %s: %s", path, sqlite3_errmsg(db->h));
        rc = ERR_DB;
        goto fail;
    }
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

static int pragma_int(struct state_db *db, const char *sql, int *val)
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

/* ------------------------------------------------------------------ */
/* transactions */

bool state_db_in_transaction(const struct state_db *db)
{
    return !sqlite3_get_autocommit(db->h);
}

int state_db_begin(struct state_db *db)
{
    if (state_db_in_transaction(db)) {
        set_msg(db->err, sizeof db->err, "cannot begin transaction: one is already open");
        return ERR_DB;
    }
    return exec_sql(db, "BEGIN IMMEDIATE", "cannot begin transaction");
}

int state_db_commit(struct state_db *db)
{
    if (!state_db_in_transaction(db))
        return 0;
    return exec_sql(db, "COMMIT", "cannot commit");
}

int state_db_rollback(struct state_db *db)
{
    if (!state_db_in_transaction(db))
        return 0;
    return exec_sql(db, "ROLLBACK", "cannot roll back");
}

/* ------------------------------------------------------------------ */
/* mailboxes */

int state_db_mailbox_find(struct state_db *db, const char *name, size_t len, int64_t *idx,
                          bool *subscribed)
{
    sqlite3_stmt *st = stmt_get(db, ST_MBX_FIND);
    if (!st)
        return ERR_DB;
    bind_name(st, 1, name, len);
    int rc = sqlite3_step(st);
    int ret;
    if (rc == SQLITE_ROW) {
        *idx = sqlite3_column_int64(st, 0);
        if (subscribed)
            *subscribed = sqlite3_column_int(st, 1) != 0;
        ret = 1;
    } else if (rc == SQLITE_DONE) {
        ret = 0;
    } else {
        ret = db_fail(db, "cannot look up mailbox");
    }
    stmt_done(st);
    return ret;
}

int state_db_mailbox_insert(struct state_db *db, const char *name, size_t len, bool subscribed,
                            int64_t *idx)
{
    /* the table's CHECK compares with the text '', which an empty BLOB
     * never equals: refuse empty names here */
    if (len == 0) {
        set_msg(db->err, sizeof db->err, "cannot insert mailbox: empty name");
        return -EINVAL;
    }
    sqlite3_stmt *st = stmt_get(db, ST_MBX_INSERT);
    if (!st)
        return ERR_DB;
    bind_name(st, 1, name, len);
    sqlite3_bind_int(st, 2, subscribed ? 1 : 0);
    int rc = stmt_exec(db, st, "cannot insert mailbox");
    if (rc < 0)
        return rc;
    if (idx)
        *idx = sqlite3_last_insert_rowid(db->h);
    return 0;
}

int state_db_mailbox_set_subscribed(struct state_db *db, int64_t idx, bool subscribed)
{
    sqlite3_stmt *st = stmt_get(db, ST_MBX_SUBSCRIBE);
    if (!st)
        return ERR_DB;
    sqlite3_bind_int(st, 1, subscribed ? 1 : 0);
    sqlite3_bind_int64(st, 2, idx);
    int rc = stmt_exec(db, st, "cannot update subscription");
    return rc < 0 ? rc : 0;
}

static void side_from_columns(sqlite3_stmt *st, int col, struct state_side *out)
{
    out->uidvalidity = (uint32_t)sqlite3_column_int64(st, col);
    out->uidnext = (uint32_t)sqlite3_column_int64(st, col + 1);
    /* stored signed, like Perl's sprintf("%lld"): convert back */
    out->highestmodseq = (uint64_t)sqlite3_column_int64(st, col + 2);
}

void state_db_mailbox_list_free(struct state_mailbox **list, size_t n)
{
    if (!list || !*list)
        return;
    for (size_t i = 0; i < n; i++)
        free((*list)[i].name);
    free(*list);
    *list = NULL;
}

int state_db_mailbox_list(struct state_db *db, struct state_mailbox **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    sqlite3_stmt *st = stmt_get(db, ST_MBX_LIST);
    if (!st)
        return ERR_DB;
    struct state_mailbox *v = NULL;
    size_t count = 0, cap = 0;
    int rc, ret = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct state_mailbox *nv = array_reserve(v, &cap, count + 1, sizeof *nv, 16);
        if (!nv) {
            ret = -ENOMEM;
            goto fail;
        }
        v = nv;
        struct state_mailbox *m = &v[count];
        memset(m, 0, sizeof *m);
        m->idx = sqlite3_column_int64(st, 0);
        const void *blob = sqlite3_column_blob(st, 1);
        m->namelen = (size_t)sqlite3_column_bytes(st, 1);
        m->name = malloc(m->namelen + 1);
        if (!m->name) {
            ret = -ENOMEM;
            goto fail;
        }
        if (m->namelen)
            memcpy(m->name, blob, m->namelen);
        m->name[m->namelen] = '\0';
        count++;
        m->subscribed = sqlite3_column_int(st, 2) != 0;
        m->known =
            sqlite3_column_type(st, 3) != SQLITE_NULL && sqlite3_column_type(st, 6) != SQLITE_NULL;
        if (m->known) {
            side_from_columns(st, 3, &m->side[SIDE_LOCAL]);
            side_from_columns(st, 6, &m->side[SIDE_REMOTE]);
        }
    }
    if (rc != SQLITE_DONE) {
        ret = db_fail(db, "cannot list mailboxes");
        goto fail;
    }
    stmt_done(st);
    *out = v;
    *n = count;
    return 0;
fail:
    if (ret == -ENOMEM)
        set_msg(db->err, sizeof db->err, "cannot list mailboxes: out of memory");
    stmt_done(st);
    state_db_mailbox_list_free(&v, count);
    return ret;
}

static int exec_by_idx(struct state_db *db, enum stmt_id id, int64_t idx, const char *what)
{
    sqlite3_stmt *st = stmt_get(db, id);
    if (!st)
        return ERR_DB;
    sqlite3_bind_int64(st, 1, idx);
    return stmt_exec(db, st, what);
}

int state_db_mailbox_delete(struct state_db *db, int64_t idx)
{
    static const enum stmt_id order[] = {ST_DEL_MAPPING, ST_DEL_LOCAL, ST_DEL_REMOTE,
                                         ST_DEL_COPIES,  ST_DEL_FLAGS, ST_DEL_MAILBOX};
    int rc = sp_begin(db);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < sizeof order / sizeof *order && rc >= 0; i++)
        rc = exec_by_idx(db, order[i], idx, "cannot delete mailbox");
    /* rc is now the row count of the mailboxes delete */
    return sp_end(db, rc);
}

int state_db_mailbox_rename(struct state_db *db, const char *from, size_t flen, const char *to,
                            size_t tlen)
{
    if (flen == 0 || tlen == 0 || flen > INT32_MAX - 1 ||
        (tlen >= flen && memcmp(from, to, flen) == 0 && (tlen == flen || to[flen] == '\0'))) {
        set_msg(db->err, sizeof db->err, "cannot rename a mailbox to itself or below itself");
        return -EINVAL;
    }
    char *prefix = malloc(flen + 1);
    if (!prefix) {
        set_msg(db->err, sizeof db->err, "cannot rename mailbox: out of memory");
        return -ENOMEM;
    }
    memcpy(prefix, from, flen);
    prefix[flen] = '\0'; /* the children start with from + delimiter */

    int total = 0;
    int64_t idx;
    int rc = sp_begin(db);
    if (rc < 0)
        goto out;
    rc = state_db_mailbox_find(db, from, flen, &idx, NULL);
    if (rc == 1) {
        sqlite3_stmt *st = stmt_get(db, ST_MBX_RENAME_ONE);
        rc = st ? 0 : ERR_DB;
        if (st) {
            bind_name(st, 1, to, tlen);
            sqlite3_bind_int64(st, 2, idx);
            rc = stmt_exec(db, st, "cannot rename mailbox");
            total += rc > 0 ? rc : 0;
        }
    }
    if (rc >= 0) {
        sqlite3_stmt *st = stmt_get(db, ST_MBX_RENAME_CHILDREN);
        rc = st ? 0 : ERR_DB;
        if (st) {
            /* SUBSTR is 1-based: from position flen+1 keeps the NUL that
             * ends the prefix, so `to` is followed by a delimiter */
            bind_name(st, 1, to, tlen);
            sqlite3_bind_int64(st, 2, (int64_t)flen + 1);
            sqlite3_bind_int64(st, 3, (int64_t)flen + 1);
            bind_name(st, 4, prefix, flen + 1);
            rc = stmt_exec(db, st, "cannot rename children");
            total += rc > 0 ? rc : 0;
        }
    }
    rc = sp_end(db, rc < 0 ? rc : total);
out:
    free(prefix);
    return rc;
}

/* Reads one integer column of every row into a growing int64 array. */
int state_db_interrupted_list(struct state_db *db, int64_t **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    sqlite3_stmt *st = stmt_get(db, ST_INTERRUPTED);
    if (!st)
        return ERR_DB;
    int64_t *v = NULL;
    size_t count = 0, cap = 0;
    int rc, ret = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t *nv = array_reserve(v, &cap, count + 1, sizeof *nv, 16);
        if (!nv) {
            set_msg(db->err, sizeof db->err, "out of memory");
            ret = -ENOMEM;
            break;
        }
        v = nv;
        v[count++] = sqlite3_column_int64(st, 0);
    }
    if (ret == 0 && rc != SQLITE_DONE)
        ret = db_fail(db, "cannot list interrupted mailboxes");
    stmt_done(st);
    if (ret < 0) {
        free(v);
        return ret;
    }
    *out = v;
    *n = count;
    return 0;
}

/* ------------------------------------------------------------------ */
/* local / remote */

static bool side_ok(struct state_db *db, enum side s)
{
    if (s == SIDE_LOCAL || s == SIDE_REMOTE)
        return true;
    set_msg(db->err, sizeof db->err, "invalid side %d", (int)s);
    return false;
}

int state_db_side_get(struct state_db *db, int64_t idx, enum side s, struct state_side *out)
{
    if (!side_ok(db, s))
        return -EINVAL;
    sqlite3_stmt *st = stmt_get(db, s == SIDE_LOCAL ? ST_SIDE_GET_L : ST_SIDE_GET_R);
    if (!st)
        return ERR_DB;
    sqlite3_bind_int64(st, 1, idx);
    int rc = sqlite3_step(st), ret;
    if (rc == SQLITE_ROW) {
        side_from_columns(st, 0, out);
        ret = 1;
    } else {
        ret = rc == SQLITE_DONE ? 0 : db_fail(db, "cannot read mailbox state");
    }
    stmt_done(st);
    return ret;
}

int state_db_side_insert(struct state_db *db, int64_t idx, enum side s, uint32_t uidvalidity)
{
    if (!side_ok(db, s))
        return -EINVAL;
    sqlite3_stmt *st = stmt_get(db, s == SIDE_LOCAL ? ST_SIDE_INSERT_L : ST_SIDE_INSERT_R);
    if (!st)
        return ERR_DB;
    sqlite3_bind_int64(st, 1, idx);
    sqlite3_bind_int64(st, 2, uidvalidity);
    int rc = stmt_exec(db, st, "cannot insert mailbox state");
    return rc < 0 ? rc : 0;
}

int state_db_side_update(struct state_db *db, int64_t idx, enum side s, uint32_t uidnext,
                         uint64_t highestmodseq)
{
    if (!side_ok(db, s))
        return -EINVAL;
    sqlite3_stmt *st = stmt_get(db, s == SIDE_LOCAL ? ST_SIDE_UPDATE_L : ST_SIDE_UPDATE_R);
    if (!st)
        return ERR_DB;
    sqlite3_bind_int64(st, 1, uidnext);
    sqlite3_bind_int64(st, 2, (int64_t)highestmodseq);
    sqlite3_bind_int64(st, 3, idx);
    int rc = stmt_exec(db, st, "cannot update mailbox state");
    return rc < 0 ? rc : 0;
}

int state_db_side_set_highestmodseq(struct state_db *db, int64_t idx, enum side s,
                                    uint64_t highestmodseq)
{
    if (!side_ok(db, s))
        return -EINVAL;
    sqlite3_stmt *st = stmt_get(db, s == SIDE_LOCAL ? ST_SIDE_HMS_L : ST_SIDE_HMS_R);
    if (!st)
        return ERR_DB;
    sqlite3_bind_int64(st, 1, (int64_t)highestmodseq);
    sqlite3_bind_int64(st, 2, idx);
    int rc = stmt_exec(db, st, "cannot update HIGHESTMODSEQ");
    return rc < 0 ? rc : 0;
}

/* ------------------------------------------------------------------ */
/* mapping */

int state_db_mapping_insert(struct state_db *db, int64_t idx, uint32_t luid, uint32_t ruid)
{
    sqlite3_stmt *st = stmt_get(db, ST_MAP_INSERT);
    if (!st)
        return ERR_DB;
    sqlite3_bind_int64(st, 1, idx);
    sqlite3_bind_int64(st, 2, luid);
    sqlite3_bind_int64(st, 3, ruid);
    int rc = stmt_exec(db, st, "cannot insert mapping");
    return rc < 0 ? rc : 0;
}

int state_db_mapping_delete(struct state_db *db, int64_t idx, enum side s, uint32_t uid)
{
    if (!side_ok(db, s))
        return -EINVAL;
    sqlite3_stmt *st = stmt_get(db, s == SIDE_LOCAL ? ST_MAP_DELETE_L : ST_MAP_DELETE_R);
    if (!st)
        return ERR_DB;
    sqlite3_bind_int64(st, 1, idx);
    sqlite3_bind_int64(st, 2, uid);
    return stmt_exec(db, st, "cannot delete mapping");
}

int state_db_mapping_delete_many(struct state_db *db, int64_t idx, enum side s,
                                 const uint32_t *uids, size_t n)
{
    if (!side_ok(db, s))
        return -EINVAL;
    if (n == 0)
        return 0;
    int rc = sp_begin(db);
    if (rc < 0)
        return rc;
    int total = 0;
    for (size_t i = 0; i < n; i++) {
        rc = state_db_mapping_delete(db, idx, s, uids[i]);
        if (rc < 0)
            break;
        total += rc;
    }
    return sp_end(db, rc < 0 ? rc : total);
}

int state_db_mapping_lookup(struct state_db *db, int64_t idx, enum side s, uint32_t uid,
                            uint32_t *other)
{
    if (!side_ok(db, s))
        return -EINVAL;
    sqlite3_stmt *st = stmt_get(db, s == SIDE_LOCAL ? ST_MAP_GET_R : ST_MAP_GET_L);
    if (!st)
        return ERR_DB;
    sqlite3_bind_int64(st, 1, idx);
    sqlite3_bind_int64(st, 2, uid);
    int rc = sqlite3_step(st), ret;
    if (rc == SQLITE_ROW) {
        *other = (uint32_t)sqlite3_column_int64(st, 0);
        ret = 1;
    } else {
        ret = rc == SQLITE_DONE ? 0 : db_fail(db, "cannot look up mapping");
    }
    stmt_done(st);
    return ret;
}

int state_db_mapping_count(struct state_db *db, int64_t idx, int64_t *count)
{
    sqlite3_stmt *st = stmt_get(db, ST_MAP_COUNT);
    if (!st)
        return ERR_DB;
    sqlite3_bind_int64(st, 1, idx);
    int rc = sqlite3_step(st), ret = 0;
    if (rc == SQLITE_ROW)
        *count = sqlite3_column_int64(st, 0);
    else
        ret = db_fail(db, "cannot count mappings");
    stmt_done(st);
    return ret;
}

int state_db_mapping_highest(struct state_db *db, int64_t idx, enum side s, size_t limit,
                             struct uidset *out)
{
    if (!side_ok(db, s))
        return -EINVAL;
    sqlite3_stmt *st = stmt_get(db, s == SIDE_LOCAL ? ST_MAP_HIGHEST_L : ST_MAP_HIGHEST_R);
    if (!st)
        return ERR_DB;
    sqlite3_bind_int64(st, 1, idx);
    sqlite3_bind_int64(st, 2, limit > INT64_MAX ? INT64_MAX : (int64_t)limit);
    int rc, ret = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (uidset_add(out, (uint32_t)sqlite3_column_int64(st, 0)) < 0) {
            set_msg(db->err, sizeof db->err, "out of memory");
            ret = -ENOMEM;
            break;
        }
    }
    if (ret == 0 && rc != SQLITE_DONE)
        ret = db_fail(db, "cannot read mappings");
    stmt_done(st);
    return ret;
}

int state_db_mapping_above(struct state_db *db, int64_t idx, uint32_t luidnext, uint32_t ruidnext,
                           struct uidset *l, struct uidset *r)
{
    sqlite3_stmt *st = stmt_get(db, ST_MAP_ABOVE);
    if (!st)
        return ERR_DB;
    sqlite3_bind_int64(st, 1, idx);
    sqlite3_bind_int64(st, 2, luidnext);
    sqlite3_bind_int64(st, 3, ruidnext);
    int rc, ret = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (uidset_add(l, (uint32_t)sqlite3_column_int64(st, 0)) < 0 ||
            uidset_add(r, (uint32_t)sqlite3_column_int64(st, 1)) < 0) {
            set_msg(db->err, sizeof db->err, "out of memory");
            ret = -ENOMEM;
            break;
        }
    }
    if (ret == 0 && rc != SQLITE_DONE)
        ret = db_fail(db, "cannot read mappings");
    stmt_done(st);
    return ret;
}

int state_db_mapping_all(struct state_db *db, int64_t idx, struct state_pair **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    sqlite3_stmt *st = stmt_get(db, ST_MAP_ALL);
    if (!st)
        return ERR_DB;
    sqlite3_bind_int64(st, 1, idx);
    struct state_pair *v = NULL;
    size_t count = 0, cap = 0;
    int rc, ret = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct state_pair *nv = array_reserve(v, &cap, count + 1, sizeof *nv, 256);
        if (!nv) {
            set_msg(db->err, sizeof db->err, "out of memory");
            ret = -ENOMEM;
            break;
        }
        v = nv;
        v[count].luid = (uint32_t)sqlite3_column_int64(st, 0);
        v[count].ruid = (uint32_t)sqlite3_column_int64(st, 1);
        count++;
    }
    if (ret == 0 && rc != SQLITE_DONE)
        ret = db_fail(db, "cannot read mappings");
    stmt_done(st);
    if (ret < 0) {
        free(v);
        return ret;
    }
    *out = v;
    *n = count;
    return 0;
}

/* ------------------------------------------------------------------ */
/* copy journal */

/* Binds a byte string that may be NULL (NOT NULL columns: empty, not NULL). */
static void bind_bytes(sqlite3_stmt *st, int i, const void *p, size_t len)
{
    sqlite3_bind_blob64(st, i, p ? p : "", p ? len : 0, SQLITE_STATIC);
}

int state_db_copy_add(struct state_db *db, int64_t idx, const struct state_copy *c)
{
    if (!side_ok(db, c->source))
        return -EINVAL;
    sqlite3_stmt *st = stmt_get(db, ST_COPY_ADD);
    if (!st)
        return ERR_DB;
    sqlite3_bind_int64(st, 1, idx);
    sqlite3_bind_int(st, 2, (int)c->source);
    sqlite3_bind_int64(st, 3, c->suid);
    sqlite3_bind_int64(st, 4, c->batch);
    sqlite3_bind_int64(st, 5, c->bound);
    sqlite3_bind_int64(st, 6, c->tuid);
    sqlite3_bind_int64(st, 7, (int64_t)c->size);
    sqlite3_bind_text(st, 8, c->internaldate ? c->internaldate : "", -1, SQLITE_STATIC);
    bind_bytes(st, 9, c->msgid, c->msgidlen);
    sqlite3_bind_text(st, 10, c->flags ? c->flags : "", -1, SQLITE_STATIC);
    int rc = stmt_exec(db, st, "cannot journal a copy");
    return rc < 0 ? rc : 0;
}

int state_db_copy_confirm(struct state_db *db, int64_t idx, enum side source, uint32_t suid,
                          uint32_t tuid)
{
    if (!side_ok(db, source))
        return -EINVAL;
    sqlite3_stmt *st = stmt_get(db, ST_COPY_CONFIRM);
    if (!st)
        return ERR_DB;
    int rc = sp_begin(db);
    if (rc < 0)
        return rc;
    sqlite3_bind_int64(st, 1, tuid);
    sqlite3_bind_int64(st, 2, idx);
    sqlite3_bind_int(st, 3, (int)source);
    sqlite3_bind_int64(st, 4, suid);
    rc = stmt_exec(db, st, "cannot record a copy");
    if (rc >= 0)
        rc = state_db_mapping_insert(db, idx, source == SIDE_LOCAL ? suid : tuid,
                                     source == SIDE_LOCAL ? tuid : suid);
    return sp_end(db, rc < 0 ? rc : 0);
}

void state_db_copy_list_free(struct state_copy **list, size_t n)
{
    if (!list || !*list)
        return;
    for (size_t i = 0; i < n; i++) {
        free((*list)[i].internaldate);
        free((*list)[i].msgid);
        free((*list)[i].flags);
    }
    free(*list);
    *list = NULL;
}

/* A column as a NUL-terminated copy (blobs may hold NULs: *len says). */
static char *column_dup(sqlite3_stmt *st, int col, size_t *len)
{
    const void *p = sqlite3_column_blob(st, col);
    size_t n = (size_t)sqlite3_column_bytes(st, col);
    char *out = malloc(n + 1);
    if (!out)
        return NULL;
    if (n)
        memcpy(out, p, n);
    out[n] = '\0';
    if (len)
        *len = n;
    return out;
}

int state_db_copy_list(struct state_db *db, int64_t idx, struct state_copy **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    sqlite3_stmt *st = stmt_get(db, ST_COPY_LIST);
    if (!st)
        return ERR_DB;
    sqlite3_bind_int64(st, 1, idx);
    struct state_copy *v = NULL;
    size_t count = 0, cap = 0;
    int rc, ret = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct state_copy *nv = array_reserve(v, &cap, count + 1, sizeof *nv, 64);
        if (!nv) {
            ret = -ENOMEM;
            break;
        }
        v = nv;
        struct state_copy *c = &v[count++];
        memset(c, 0, sizeof *c);
        /* SELECT *: idx first, then the columns of journal_schema */
        c->source = sqlite3_column_int(st, 1) == 1 ? SIDE_REMOTE : SIDE_LOCAL;
        c->suid = (uint32_t)sqlite3_column_int64(st, 2);
        c->batch = sqlite3_column_int64(st, 3);
        c->bound = (uint32_t)sqlite3_column_int64(st, 4);
        c->tuid = (uint32_t)sqlite3_column_int64(st, 5);
        c->size = (uint64_t)sqlite3_column_int64(st, 6);
        c->internaldate = column_dup(st, 7, NULL);
        c->msgid = column_dup(st, 8, &c->msgidlen);
        c->flags = column_dup(st, 9, NULL);
        if (!c->internaldate || !c->msgid || !c->flags) {
            ret = -ENOMEM;
            break;
        }
    }
    if (ret == -ENOMEM)
        set_msg(db->err, sizeof db->err, "cannot read the copy journal: out of memory");
    else if (rc != SQLITE_DONE)
        ret = db_fail(db, "cannot read the copy journal");
    stmt_done(st);
    if (ret < 0) {
        state_db_copy_list_free(&v, count);
        return ret;
    }
    *out = v;
    *n = count;
    return 0;
}

int state_db_copy_delete(struct state_db *db, int64_t idx, enum side source, uint32_t suid)
{
    if (!side_ok(db, source))
        return -EINVAL;
    sqlite3_stmt *st = stmt_get(db, ST_COPY_DELETE);
    if (!st)
        return ERR_DB;
    sqlite3_bind_int64(st, 1, idx);
    sqlite3_bind_int(st, 2, (int)source);
    sqlite3_bind_int64(st, 3, suid);
    return stmt_exec(db, st, "cannot delete from the copy journal");
}

int state_db_copy_clear(struct state_db *db, int64_t idx)
{
    int rc = exec_by_idx(db, ST_DEL_COPIES, idx, "cannot clear the copy journal");
    return rc < 0 ? rc : 0;
}

int state_db_copy_last_batch(struct state_db *db, int64_t *batch)
{
    sqlite3_stmt *st = stmt_get(db, ST_COPY_LAST_BATCH);
    if (!st)
        return ERR_DB;
    int rc = sqlite3_step(st);
    int ret = 0;
    if (rc == SQLITE_ROW)
        *batch = sqlite3_column_int64(st, 0);
    else
        ret = db_fail(db, "cannot read the copy journal");
    stmt_done(st);
    return ret;
}

/* ------------------------------------------------------------------ */
/* command journal */

int state_db_command_add(struct state_db *db, const struct state_command *c, int64_t *id)
{
    sqlite3_stmt *st = stmt_get(db, ST_CMD_ADD);
    if (!st)
        return ERR_DB;
    sqlite3_bind_text(st, 1, c->rename ? "rename" : "delete", -1, SQLITE_STATIC);
    bind_name(st, 2, c->name, c->namelen);
    bind_name(st, 3, c->newname, c->newlen);
    sqlite3_bind_int(st, 4, (int)c->targets);
    int rc = stmt_exec(db, st, "cannot journal the command");
    if (rc < 0)
        return rc;
    if (id)
        *id = sqlite3_last_insert_rowid(db->h);
    return 0;
}

int state_db_command_done(struct state_db *db, int64_t id, unsigned done)
{
    sqlite3_stmt *st = stmt_get(db, ST_CMD_DONE);
    if (!st)
        return ERR_DB;
    sqlite3_bind_int(st, 1, (int)done);
    sqlite3_bind_int64(st, 2, id);
    int rc = stmt_exec(db, st, "cannot journal the command");
    return rc < 0 ? rc : 0;
}

void state_db_command_list_free(struct state_command **list, size_t n)
{
    if (!list || !*list)
        return;
    for (size_t i = 0; i < n; i++) {
        free((*list)[i].name);
        free((*list)[i].newname);
    }
    free(*list);
    *list = NULL;
}

int state_db_command_list(struct state_db *db, struct state_command **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    sqlite3_stmt *st = stmt_get(db, ST_CMD_LIST);
    if (!st)
        return ERR_DB;
    struct state_command *v = NULL;
    size_t count = 0, cap = 0;
    int rc, ret = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct state_command *nv = array_reserve(v, &cap, count + 1, sizeof *nv, 4);
        if (!nv) {
            ret = -ENOMEM;
            break;
        }
        v = nv;
        struct state_command *c = &v[count++];
        memset(c, 0, sizeof *c);
        c->id = sqlite3_column_int64(st, 0);
        const unsigned char *cmd = sqlite3_column_text(st, 1);
        c->rename = cmd && strcmp((const char *)cmd, "rename") == 0;
        c->name = column_dup(st, 2, &c->namelen);
        c->newname = column_dup(st, 3, &c->newlen);
        c->targets = (unsigned)sqlite3_column_int(st, 4);
        c->done = (unsigned)sqlite3_column_int(st, 5);
        if (!c->name || !c->newname) {
            ret = -ENOMEM;
            break;
        }
    }
    if (ret == -ENOMEM)
        set_msg(db->err, sizeof db->err, "cannot read the command journal: out of memory");
    else if (rc != SQLITE_DONE)
        ret = db_fail(db, "cannot read the command journal");
    stmt_done(st);
    if (ret < 0) {
        state_db_command_list_free(&v, count);
        return ret;
    }
    *out = v;
    *n = count;
    return 0;
}

int state_db_command_delete(struct state_db *db, int64_t id)
{
    sqlite3_stmt *st = stmt_get(db, ST_CMD_DELETE);
    if (!st)
        return ERR_DB;
    sqlite3_bind_int64(st, 1, id);
    int rc = stmt_exec(db, st, "cannot journal the command");
    return rc < 0 ? rc : 0;
}

/* ------------------------------------------------------------------ */
/* remembered capabilities */

int state_db_caps_get(struct state_db *db, enum side s, const char *server, char **caps,
                      int *append_hms)
{
    *caps = NULL;
    *append_hms = 0;
    if (!side_ok(db, s))
        return -EINVAL;
    /* read before state_db_prepare(), when the table may not exist yet */
    int n = 0;
    if (pragma_int(db,
                   "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'"
                   " AND name = 'capabilities'",
                   &n) < 0)
        return ERR_DB;
    if (n == 0)
        return 0;
    sqlite3_stmt *st = stmt_get(db, ST_CAPS_GET);
    if (!st)
        return ERR_DB;
    sqlite3_bind_int(st, 1, (int)s);
    sqlite3_bind_text(st, 2, server, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st), ret = 0;
    if (rc == SQLITE_ROW) {
        const unsigned char *t = sqlite3_column_text(st, 0);
        *caps = strdup(t ? (const char *)t : "");
        *append_hms = sqlite3_column_int(st, 1);
        ret = *caps ? 1 : -ENOMEM;
    } else if (rc != SQLITE_DONE) {
        ret = db_fail(db, "cannot read capabilities");
    }
    stmt_done(st);
    return ret;
}

int state_db_caps_set(struct state_db *db, enum side s, const char *server, const char *caps,
                      int append_hms)
{
    if (!side_ok(db, s))
        return -EINVAL;
    sqlite3_stmt *st = stmt_get(db, ST_CAPS_SET);
    if (!st)
        return ERR_DB;
    sqlite3_bind_int(st, 1, (int)s);
    sqlite3_bind_text(st, 2, server, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, caps, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 4, append_hms);
    int rc = stmt_exec(db, st, "cannot record capabilities");
    return rc < 0 ? rc : 0;
}

/* ------------------------------------------------------------------ */
/* flag records */

void state_db_flags_free(struct state_flags **list, size_t n)
{
    if (!list || !*list)
        return;
    for (size_t i = 0; i < n; i++)
        free((*list)[i].flags);
    free(*list);
    *list = NULL;
}

int state_db_flags_list(struct state_db *db, int64_t idx, enum side s, struct state_flags **out,
                        size_t *n)
{
    *out = NULL;
    *n = 0;
    if (!side_ok(db, s))
        return -EINVAL;
    sqlite3_stmt *st = stmt_get(db, ST_FLAGS_LIST);
    if (!st)
        return ERR_DB;
    sqlite3_bind_int64(st, 1, idx);
    sqlite3_bind_int(st, 2, (int)s);
    struct state_flags *v = NULL;
    size_t count = 0, cap = 0;
    int rc, ret = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct state_flags *nv = array_reserve(v, &cap, count + 1, sizeof *nv, 256);
        if (!nv) {
            ret = -ENOMEM;
            break;
        }
        v = nv;
        const unsigned char *t = sqlite3_column_text(st, 1);
        v[count].uid = (uint32_t)sqlite3_column_int64(st, 0);
        v[count].flags = strdup(t ? (const char *)t : "");
        if (!v[count].flags) {
            ret = -ENOMEM;
            break;
        }
        count++;
    }
    if (ret == -ENOMEM)
        set_msg(db->err, sizeof db->err, "cannot read flag records: out of memory");
    else if (rc != SQLITE_DONE)
        ret = db_fail(db, "cannot read flag records");
    stmt_done(st);
    if (ret < 0) {
        state_db_flags_free(&v, count);
        return ret;
    }
    *out = v;
    *n = count;
    return 0;
}

int state_db_flags_set(struct state_db *db, int64_t idx, enum side s, uint32_t uid,
                       const char *flags)
{
    if (!side_ok(db, s))
        return -EINVAL;
    sqlite3_stmt *st = stmt_get(db, ST_FLAGS_SET);
    if (!st)
        return ERR_DB;
    sqlite3_bind_int64(st, 1, idx);
    sqlite3_bind_int(st, 2, (int)s);
    sqlite3_bind_int64(st, 3, uid);
    sqlite3_bind_text(st, 4, flags, -1, SQLITE_STATIC);
    int rc = stmt_exec(db, st, "cannot record flags");
    return rc < 0 ? rc : 0;
}

int state_db_flags_delete(struct state_db *db, int64_t idx, enum side s, uint32_t uid)
{
    if (!side_ok(db, s))
        return -EINVAL;
    sqlite3_stmt *st = stmt_get(db, ST_FLAGS_DELETE);
    if (!st)
        return ERR_DB;
    sqlite3_bind_int64(st, 1, idx);
    sqlite3_bind_int(st, 2, (int)s);
    sqlite3_bind_int64(st, 3, uid);
    return stmt_exec(db, st, "cannot delete flag record");
}

int state_db_flags_clear(struct state_db *db, int64_t idx, enum side s)
{
    if (!side_ok(db, s))
        return -EINVAL;
    sqlite3_stmt *st = stmt_get(db, ST_FLAGS_CLEAR);
    if (!st)
        return ERR_DB;
    sqlite3_bind_int64(st, 1, idx);
    sqlite3_bind_int(st, 2, (int)s);
    return stmt_exec(db, st, "cannot delete flag records");
}
