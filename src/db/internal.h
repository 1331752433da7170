/*
 * What the files of the state database share: the database handle, its
 * cached statements, and the error helpers. Private to src/db; the
 * contract is include/db/state.h.
 *
 *   state.c   statements, transactions, and every query of the contract
 *             (mailboxes, sides, the mapping, the journals, capabilities,
 *             flag records)
 *   schema.c  the schema text, opening and locking the file, creating and
 *             migrating the schema, closing
 */
#ifndef INTERIMAP_DB_INTERNAL_H
#define INTERIMAP_DB_INTERNAL_H

#include "db/state.h"

#include <stdbool.h>
#include <stddef.h>

#include <sqlite3.h>

enum {
    SCHEMA_VERSION = 1,
    BUSY_TIMEOUT_MS = 250, /* same as the Perl tool: a second instance fails fast */
};

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

struct state_db {
    sqlite3 *h;
    char *path;
    sqlite3_stmt *stmt[ST_COUNT];
    enum state_db_schema_action action;
    int from_version;
    bool created; /* state_db_open created the file */
    char err[512];
};

/* state.c */
/* Writes a message into buf, folded onto one line. */
void set_msg(char *buf, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Records "what: sqlite message" and returns ERR_DB. */
int db_fail(struct state_db *db, const char *what);
/* Runs SQL text that returns no rows; ERR_DB on failure. */
int exec_sql(struct state_db *db, const char *sql, const char *what);

/* schema.c */
/* Reads the one integer a query returns (a PRAGMA, a COUNT), 0 when it
 * returns no row; ERR_DB on failure. */
int pragma_int(struct state_db *db, const char *sql, int *val);

#endif
