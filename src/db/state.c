/*
 * The state database, file-compatible with the Perl interimap 0.5.x: its
 * cached statements, transactions, and every query of include/db/state.h
 * (mailboxes, sides, the UID mapping, the copy and command journals,
 * remembered capabilities, flag records). The file and its schema are
 * schema.c's. doc/internals/state.md explains the choices (locking,
 * journal mode, schema text, the `pending` table).
 */
#include "internal.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "errors.h"
#include "util/array.h"
#include "util/uidset.h"

/* The SQL of each cached statement (enum stmt_id). */
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

/* ------------------------------------------------------------------ */
/* errors */

/* Messages end up on one log line: fold any line break. */
static void one_line(char *s)
{
    for (; *s; s++)
        if (*s == '\n' || *s == '\r')
            *s = ' ';
}

void set_msg(char *buf, size_t len, const char *fmt, ...)
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
int db_fail(struct state_db *db, const char *what)
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

int exec_sql(struct state_db *db, const char *sql, const char *what)
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
