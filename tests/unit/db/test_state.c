/*
 * Unit tests of the state database: file and directory modes, locking
 * against a second instance (ours and the Perl tool's), schema text and
 * v0 -> v1 migration compared with what the installed Perl interimap
 * produces, and every query.
 *
 * Usage: test_state PERL_HELPER PERL_TOOL
 * The Perl comparisons are skipped (reported, not failed) when the helper
 * says DBI/DBD::SQLite or the tool is missing; the rest always runs.
 */
#include "check.h"
#include "db/state.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sqlite3.h>

#include "errors.h"
#include "util/uidset.h"

static const char *perl_helper, *perl_tool;
static char tmpdir[] = "/tmp/test_state.XXXXXX";

static char *tmp_path(const char *name)
{
    static char buf[8][512];
    static int k;
    char *p = buf[k++ % 8];
    snprintf(p, 512, "%s/%s", tmpdir, name);
    return p;
}

/* Runs the Perl helper; returns its exit status (77: unavailable). */
static int run_perl(const char *mode, const char *path, const char *arg)
{
    pid_t pid = fork();
    if (pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0 && strcmp(mode, "try") == 0)
            dup2(devnull, 2);
        execlp("perl", "perl", perl_helper, perl_tool, mode, path, arg, (char *)NULL);
        _exit(77);
    }
    int st;
    if (pid < 0 || waitpid(pid, &st, 0) < 0 || !WIFEXITED(st))
        return -1;
    return WEXITSTATUS(st);
}

static struct state_db *open_prepared(const char *path, char ld, char rd)
{
    char err[512];
    struct state_db *db = NULL;
    int rc = state_db_open(path, &db, err, sizeof err);
    if (!CHECK(rc >= 0)) {
        fprintf(stderr, "  open %s: %s\n", path, err);
        return NULL;
    }
    rc = state_db_prepare(db, ld, rd, err, sizeof err);
    if (!CHECK(rc >= 0))
        fprintf(stderr, "  prepare %s: %s\n", path, err);
    return db;
}

/* The schema as `.schema` shows it, minus our own tables, as one string. */
static char *schema_text(const char *path, bool with_pending)
{
    sqlite3 *h;
    if (sqlite3_open_v2(path, &h, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK)
        return NULL;
    sqlite3_stmt *st;
    char *out = calloc(1, 1);
    size_t len = 0;
    if (sqlite3_prepare_v2(h, "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY rowid",
                           -1, &st, NULL) == SQLITE_OK) {
        while (sqlite3_step(st) == SQLITE_ROW) {
            const char *name = (const char *)sqlite3_column_text(st, 1);
            /* our own tables, which the Perl tool does not make */
            static const char *const ours[] = {"capabilities", "flags", "sqlite_autoindex_flags_1"};
            bool skip = strncmp(name, "journal_", 8) == 0 ||
                        strncmp(name, "sqlite_autoindex_journal_", 25) == 0;
            for (size_t i = 0; i < sizeof ours / sizeof *ours; i++)
                skip |= strcmp(name, ours[i]) == 0;
            if (skip && !with_pending)
                continue;
            const char *sql = (const char *)sqlite3_column_text(st, 3);
            char line[2048];
            int n = snprintf(line, sizeof line, "%s|%s|%s|%s\n", sqlite3_column_text(st, 0), name,
                             sqlite3_column_text(st, 2), sql ? sql : "");
            out = realloc(out, len + (size_t)n + 1);
            memcpy(out + len, line, (size_t)n + 1);
            len += (size_t)n;
        }
        sqlite3_finalize(st);
    }
    sqlite3_close(h);
    return out;
}

/* One query, rows as "a|b|c\n" with blobs in hex, for content comparisons. */
static char *query_text(const char *path, const char *sql)
{
    sqlite3 *h;
    if (sqlite3_open_v2(path, &h, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK)
        return NULL;
    sqlite3_stmt *st;
    char *out = calloc(1, 1);
    size_t len = 0;
    if (sqlite3_prepare_v2(h, sql, -1, &st, NULL) == SQLITE_OK) {
        while (sqlite3_step(st) == SQLITE_ROW) {
            for (int c = 0; c < sqlite3_column_count(st); c++) {
                char cell[1024];
                if (sqlite3_column_type(st, c) == SQLITE_BLOB) {
                    const unsigned char *b = sqlite3_column_blob(st, c);
                    int n = sqlite3_column_bytes(st, c), k = 0;
                    k += snprintf(cell, sizeof cell, "x'");
                    for (int i = 0; i < n && k < 1000; i++)
                        k += snprintf(cell + k, sizeof cell - (size_t)k, "%02x", b[i]);
                    snprintf(cell + k, sizeof cell - (size_t)k, "'|");
                } else {
                    const unsigned char *t = sqlite3_column_text(st, c);
                    snprintf(cell, sizeof cell, "%s|", t ? (const char *)t : "NULL");
                }
                size_t n = strlen(cell);
                out = realloc(out, len + n + 2);
                memcpy(out + len, cell, n + 1);
                len += n;
            }
            out[len++] = '\n';
            out[len] = '\0';
        }
        sqlite3_finalize(st);
    }
    sqlite3_close(h);
    return out;
}

static int raw_exec(const char *path, const char *sql)
{
    sqlite3 *h;
    if (sqlite3_open(path, &h) != SQLITE_OK)
        return -1;
    char *msg = NULL;
    int rc = sqlite3_exec(h, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK)
        fprintf(stderr, "raw_exec: %s\n", msg ? msg : "?");
    sqlite3_free(msg);
    sqlite3_close(h);
    return rc == SQLITE_OK ? 0 : -1;
}

static bool perl_available(void)
{
    static int cached = -1;
    if (cached < 0) {
        int rc = run_perl("create", tmp_path("probe.db"), NULL);
        cached = rc == 0;
        if (!cached)
            fprintf(stderr, "SKIP: Perl interimap comparisons (helper exit %d)\n", rc);
    }
    return cached;
}

/* ------------------------------------------------------------------ */

static void test_create_modes_and_schema(void)
{
    /* a directory that does not exist is refused with one line naming it,
     * and nothing is created */
    char err[512];
    struct state_db *db = NULL;
    const char *missing = tmp_path("a/b/c/state.db");
    CHECK(state_db_open(missing, &db, err, sizeof err) == -ENOENT && db == NULL);
    CHECK(strstr(err, tmp_path("a/b/c")) != NULL && strchr(err, '\n') == NULL);
    struct stat sb;
    CHECK(stat(tmp_path("a"), &sb) < 0 && errno == ENOENT);

    /* a hostile umask: the file's mode must still come out exactly */
    mode_t old = umask(0277);
    const char *path = tmp_path("state.db");
    int rc = state_db_open(path, &db, err, sizeof err);
    umask(old);
    CHECK(rc == 0);
    if (rc < 0) {
        fprintf(stderr, "open: %s\n", err);
        return;
    }
    CHECK(state_db_created(db));
    CHECK(stat(path, &sb) == 0 && (sb.st_mode & 07777) == 0600);
    /* the directory existed: its mode is left alone */
    CHECK(stat(tmpdir, &sb) == 0 && (sb.st_mode & 07777) == 0700);

    CHECK(state_db_prepare(db, '/', '.', err, sizeof err) == 0);
    int from = 42;
    CHECK(state_db_schema_action(db, &from) == STATE_DB_SCHEMA_CREATED);
    CHECK(from == 0);
    state_db_close(&db);
    CHECK(db == NULL);
    state_db_close(&db); /* NULL-safe */

    /* reopening finds the schema current; an existing file keeps its mode */
    CHECK(chmod(path, 0640) == 0);
    db = open_prepared(path, '/', '/');
    if (db) {
        CHECK(state_db_schema_action(db, &from) == STATE_DB_SCHEMA_CURRENT && from == 1);
        CHECK(!state_db_created(db));
    }
    state_db_close(&db);
    CHECK(stat(path, &sb) == 0 && (sb.st_mode & 07777) == 0640);

    char *ours = schema_text(path, false);
    char *uv = query_text(path, "PRAGMA user_version");
    CHECK(uv && strcmp(uv, "1|\n") == 0);
    char *withp = schema_text(path, true);
    CHECK(withp &&
          strstr(withp, "table|journal_copies|journal_copies|CREATE TABLE journal_copies (") &&
          strstr(withp, "table|journal_commands|journal_commands|CREATE TABLE journal_commands ("));
    CHECK(withp &&
          strstr(withp, "table|capabilities|capabilities|CREATE TABLE capabilities (") != NULL);
    CHECK(withp && strstr(withp, "table|flags|flags|CREATE TABLE flags (") != NULL);
    /* what the Perl tool's own schema code makes */
    if (perl_available()) {
        const char *ppath = tmp_path("perl-created.db");
        CHECK(run_perl("create", ppath, NULL) == 0);
        char *theirs = schema_text(ppath, true);
        CHECK(ours && theirs && strcmp(ours, theirs) == 0);
        if (ours && theirs && strcmp(ours, theirs) != 0)
            fprintf(stderr, "ours:\n%s\ntheirs:\n%s\n", ours, theirs);
        char *puv = query_text(ppath, "PRAGMA user_version");
        CHECK(puv && strcmp(puv, "1|\n") == 0);
        free(puv);
        free(theirs);

        /* our code on a file made by Perl: no migration, journal tables added */
        struct state_db *pdb = open_prepared(ppath, '/', '/');
        if (pdb)
            CHECK(state_db_schema_action(pdb, NULL) == STATE_DB_SCHEMA_CURRENT);
        state_db_close(&pdb);
        char *after = schema_text(ppath, false);
        CHECK(after && ours && strcmp(after, ours) == 0);
        free(after);
    }
    free(ours);
    free(withp);
    free(uv);
}

static void test_no_create(void)
{
    char err[512];
    struct state_db *db = (struct state_db *)1;
    const char *path = tmp_path("nocreate/x.db");
    int rc = state_db_open_flags(path, STATE_DB_NO_CREATE, &db, err, sizeof err);
    CHECK(rc == -ENOENT);
    CHECK(db == NULL);
    CHECK(strstr(err, path) != NULL);
    struct stat sb;
    CHECK(stat(tmp_path("nocreate"), &sb) < 0 && errno == ENOENT);

    /* a file that is not a database */
    const char *junk = tmp_path("junk.db");
    FILE *f = fopen(junk, "w");
    fputs("this is not an SQLite database, not even close................\n", f);
    fclose(f);
    rc = state_db_open(junk, &db, err, sizeof err);
    CHECK(rc == ERR_DB);
    CHECK(strchr(err, '\n') == NULL && strlen(err) > 0);
}

static void test_lock(void)
{
    const char *path = tmp_path("lock.db");
    char err[512], want[600];
    snprintf(want, sizeof want, "database %s is locked by another interimap instance", path);
    struct state_db *a = open_prepared(path, '/', '/');
    if (!a)
        return;
    struct state_db *b = NULL;
    int rc = state_db_open(path, &b, err, sizeof err);
    CHECK(rc == -EBUSY);
    CHECK(b == NULL);
    CHECK(strcmp(err, want) == 0);
    if (perl_available())
        CHECK(run_perl("try", path, NULL) == 3); /* Perl reports "database is locked" */
    state_db_close(&a);
    if (perl_available())
        CHECK(run_perl("try", path, NULL) == 0);

    /* the other way round: a Perl connection holds the lock */
    if (!perl_available())
        return;
    int in[2], out[2];
    if (!CHECK(pipe(in) == 0 && pipe(out) == 0))
        return;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(in[0], 0);
        dup2(out[1], 1);
        close(in[1]);
        close(out[0]);
        execlp("perl", "perl", perl_helper, perl_tool, "hold", path, (char *)NULL);
        _exit(77);
    }
    close(in[0]);
    close(out[1]);
    char line[16] = {0};
    ssize_t n = read(out[0], line, sizeof line - 1);
    CHECK(n > 0 && strncmp(line, "ready", 5) == 0);
    rc = state_db_open(path, &b, err, sizeof err);
    CHECK(rc == -EBUSY);
    CHECK(strcmp(err, want) == 0);
    close(in[1]); /* lets the holder exit */
    int st;
    waitpid(pid, &st, 0);
    close(out[0]);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    rc = state_db_open(path, &b, err, sizeof err);
    CHECK(rc == 0);
    state_db_close(&b);
}

/* The whole file, to check it was not written. */
static char *file_bytes(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = malloc(1 << 20);
    *len = buf ? fread(buf, 1, 1 << 20, f) : 0;
    fclose(f);
    return buf;
}

/* --dry-run's database: read, never written, and locked against writers
 * (and by them) for as long as it is open. */
static void test_read_only(void)
{
    const char *path = tmp_path("ro.db");
    char err[512];
    struct state_db *w = open_prepared(path, '/', '/');
    if (!w)
        return;
    int64_t idx = 0;
    CHECK(state_db_begin(w) == 0);
    CHECK(state_db_mailbox_insert(w, "INBOX", 5, true, &idx) == 0);
    CHECK(state_db_commit(w) == 0);
    struct state_db *r = NULL;
    /* a writer holds it: refused */
    CHECK(state_db_open_flags(path, STATE_DB_READ_ONLY, &r, err, sizeof err) == -EBUSY);
    CHECK(r == NULL);
    state_db_close(&w);
    /* the writer left it in write-ahead-log mode (header bytes 18 and 19
     * say 2), its log gone at close: read-only opens must cope with that */
    size_t hlen = 0;
    char *head = file_bytes(path, &hlen);
    CHECK(head && hlen > 19 && head[18] == 2 && head[19] == 2);
    free(head);
    CHECK(access(tmp_path("ro.db-wal"), F_OK) < 0);

    size_t len0 = 0, len1 = 0;
    char *before = file_bytes(path, &len0);
    struct stat sb0, sb1;
    CHECK(stat(path, &sb0) == 0);
    CHECK(state_db_open_flags(path, STATE_DB_READ_ONLY, &r, err, sizeof err) == 0);
    int version = -1;
    bool tables = false;
    CHECK(r && state_db_schema_read(r, &version, &tables) == 0 && version == 1 && tables);
    int64_t found_idx = 0;
    bool sub = false;
    CHECK(r && state_db_mailbox_find(r, "INBOX", 5, &found_idx, &sub) == 1 && found_idx == idx &&
          sub);
    /* writes fail: the write transaction is refused, or the write */
    CHECK(r && (state_db_begin(r) < 0 || state_db_mailbox_insert(r, "Other", 5, false, NULL) < 0));
    if (r)
        state_db_rollback(r);
    /* and a writer cannot start while it is open */
    CHECK(state_db_open(path, &w, err, sizeof err) == -EBUSY);
    state_db_close(&r);
    char *after = file_bytes(path, &len1);
    CHECK(stat(path, &sb1) == 0);
    CHECK(before && after && len0 == len1 && memcmp(before, after, len0) == 0);
    CHECK(sb0.st_mtim.tv_sec == sb1.st_mtim.tv_sec && sb0.st_mtim.tv_nsec == sb1.st_mtim.tv_nsec);
    free(before);
    free(after);

    /* a missing file is not created */
    const char *missing = tmp_path("ro-missing/x.db");
    CHECK(state_db_open_flags(missing, STATE_DB_READ_ONLY, &r, err, sizeof err) == -ENOENT);
    struct stat sb;
    CHECK(stat(tmp_path("ro-missing"), &sb) < 0 && errno == ENOENT);
}

static void test_mailboxes_sides_mapping(void)
{
    const char *path = tmp_path("crud.db");
    struct state_db *db = open_prepared(path, '/', '/');
    if (!db)
        return;
    int64_t inbox, work, other;
    CHECK_INT(state_db_mailbox_insert(db, "INBOX", 5, true, &inbox), 0);
    CHECK_INT(state_db_mailbox_insert(db, "work\0mail", 9, false, &work), 0);
    CHECK(work > inbox);
    CHECK(state_db_mailbox_insert(db, "INBOX", 5, true, &other) == ERR_DB);
    CHECK(strstr(state_db_error(db), "UNIQUE") != NULL);
    CHECK(state_db_mailbox_insert(db, "", 0, true, &other) == -EINVAL);

    int64_t idx = 0;
    bool sub = true;
    CHECK(state_db_mailbox_find(db, "work\0mail", 9, &idx, &sub) == 1);
    CHECK(idx == work && !sub);
    CHECK(state_db_mailbox_find(db, "work", 4, &idx, &sub) == 0);
    CHECK(state_db_mailbox_find(db, "work/mail", 9, &idx, &sub) == 0);
    CHECK_INT(state_db_mailbox_set_subscribed(db, work, true), 0);
    CHECK(state_db_mailbox_find(db, "work\0mail", 9, &idx, &sub) == 1 && sub);

    /* sides */
    struct state_side s;
    CHECK(state_db_side_get(db, inbox, SIDE_LOCAL, &s) == 0);
    CHECK_INT(state_db_side_insert(db, inbox, SIDE_LOCAL, 1111), 0);
    CHECK_INT(state_db_side_insert(db, inbox, SIDE_REMOTE, 2222), 0);
    CHECK(state_db_side_insert(db, inbox, SIDE_REMOTE, 2222) == ERR_DB);
    CHECK(state_db_side_insert(db, 9999, SIDE_LOCAL, 1) == ERR_DB); /* foreign key */
    CHECK(state_db_side_insert(db, work, SIDE_LOCAL, 0) == ERR_DB); /* UIDVALIDITY > 0 */
    CHECK(state_db_side_get(db, inbox, SIDE_LOCAL, &s) == 1);
    CHECK(s.uidvalidity == 1111 && s.uidnext == 0 && s.highestmodseq == 0);
    uint64_t big = UINT64_MAX - 5; /* beyond INT64_MAX: stored negative, like Perl */
    CHECK_INT(state_db_side_update(db, inbox, SIDE_LOCAL, 4000000000u, big), 0);
    CHECK_INT(state_db_side_update(db, inbox, SIDE_REMOTE, 17, 99), 0);
    CHECK(state_db_side_get(db, inbox, SIDE_LOCAL, &s) == 1);
    CHECK(s.uidvalidity == 1111 && s.uidnext == 4000000000u && s.highestmodseq == big);
    CHECK_INT(state_db_side_set_highestmodseq(db, inbox, SIDE_REMOTE, 12345), 0);
    CHECK(state_db_side_get(db, inbox, SIDE_REMOTE, &s) == 1);
    CHECK(s.uidvalidity == 2222 && s.uidnext == 17 && s.highestmodseq == 12345);
    CHECK(state_db_side_get(db, inbox, (enum side)7, &s) == -EINVAL);

    /* mapping */
    for (uint32_t i = 1; i <= 20; i++)
        CHECK_INT(state_db_mapping_insert(db, inbox, i, 100 + i), 0);
    CHECK(state_db_mapping_insert(db, inbox, 1, 500) == ERR_DB);  /* PRIMARY KEY (idx,lUID) */
    CHECK(state_db_mapping_insert(db, inbox, 50, 101) == ERR_DB); /* UNIQUE (idx,rUID) */
    CHECK(state_db_mapping_insert(db, 9999, 1, 1) == ERR_DB);     /* foreign key */
    CHECK_INT(state_db_mapping_insert(db, work, 1, 101), 0);      /* another mailbox: independent */
    uint32_t o = 0;
    CHECK(state_db_mapping_lookup(db, inbox, SIDE_LOCAL, 7, &o) == 1 && o == 107);
    CHECK(state_db_mapping_lookup(db, inbox, SIDE_REMOTE, 107, &o) == 1 && o == 7);
    CHECK(state_db_mapping_lookup(db, inbox, SIDE_LOCAL, 107, &o) == 0);
    int64_t count = 0;
    CHECK(state_db_mapping_count(db, inbox, &count) == 0 && count == 20);

    struct uidset set;
    uidset_init(&set);
    CHECK(state_db_mapping_highest(db, inbox, SIDE_REMOTE, 3, &set) == 0);
    CHECK(set.count == 3 && set.uids[0] == 120 && set.uids[1] == 119 && set.uids[2] == 118);
    uidset_clear(&set);
    CHECK(state_db_mapping_highest(db, inbox, SIDE_LOCAL, 1024, &set) == 0);
    CHECK(set.count == 20 && set.uids[0] == 20 && set.uids[19] == 1);
    uidset_fini(&set);

    CHECK(state_db_mapping_delete(db, inbox, SIDE_LOCAL, 3) == 1);
    CHECK(state_db_mapping_delete(db, inbox, SIDE_LOCAL, 3) == 0);
    CHECK(state_db_mapping_delete(db, inbox, SIDE_REMOTE, 104) == 1);
    uint32_t batch[] = {5, 6, 6, 99, 7};
    CHECK(state_db_mapping_delete_many(db, inbox, SIDE_LOCAL, batch, 5) == 3);
    uint32_t rbatch[] = {108, 109};
    CHECK(state_db_mapping_delete_many(db, inbox, SIDE_REMOTE, rbatch, 2) == 2);
    CHECK(state_db_mapping_count(db, inbox, &count) == 0 && count == 13);

    struct state_pair *pairs = NULL;
    size_t npairs = 0;
    CHECK(state_db_mapping_all(db, inbox, &pairs, &npairs) == 0);
    CHECK(npairs == 13);
    static const uint32_t left[] = {1, 2, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20};
    for (size_t i = 0; i < npairs && i < 13; i++)
        CHECK(pairs[i].luid == left[i] && pairs[i].ruid == 100 + left[i]);
    free(pairs);

    /* interrupted syncs: mapping at or above the stored UIDNEXT */
    int64_t *ints = NULL;
    size_t nints = 9;
    CHECK_INT(state_db_side_update(db, inbox, SIDE_LOCAL, 21, 5), 0);
    CHECK_INT(state_db_side_update(db, inbox, SIDE_REMOTE, 121, 5), 0);
    CHECK(state_db_interrupted_list(db, &ints, &nints) == 0 && nints == 0);
    free(ints);
    CHECK_INT(state_db_side_update(db, inbox, SIDE_LOCAL, 18, 5), 0);
    CHECK(state_db_interrupted_list(db, &ints, &nints) == 0 && nints == 1 && ints[0] == inbox);
    free(ints);
    struct uidset l, r;
    uidset_init(&l);
    uidset_init(&r);
    CHECK(state_db_mapping_above(db, inbox, 18, 121, &l, &r) == 0);
    CHECK(l.count == 3 && l.uids[0] == 18 && l.uids[2] == 20 && r.uids[0] == 118);
    uidset_clear(&l);
    uidset_clear(&r);
    CHECK(state_db_mapping_above(db, inbox, 100, 120, &l, &r) == 0);
    CHECK(l.count == 1 && l.uids[0] == 20 && r.uids[0] == 120);
    uidset_fini(&l);
    uidset_fini(&r);

    /* list with states */
    CHECK_INT(state_db_side_insert(db, work, SIDE_LOCAL, 3), 0); /* half known */
    struct state_mailbox *list = NULL;
    size_t n = 0;
    CHECK(state_db_mailbox_list(db, &list, &n) == 0);
    CHECK(n == 2);
    if (n == 2) {
        CHECK(list[0].idx == inbox && list[0].namelen == 5 &&
              memcmp(list[0].name, "INBOX", 6) == 0);
        CHECK(list[0].known && list[0].subscribed);
        CHECK(list[0].side[SIDE_LOCAL].uidnext == 18 &&
              list[0].side[SIDE_REMOTE].uidvalidity == 2222);
        CHECK(list[1].idx == work && list[1].namelen == 9);
        CHECK(memcmp(list[1].name, "work\0mail", 10) == 0);
        CHECK(!list[1].known);
    }
    state_db_mailbox_list_free(&list, n);
    CHECK(list == NULL);

    /* transactions */
    CHECK(!state_db_in_transaction(db));
    CHECK(state_db_commit(db) == 0);
    CHECK(state_db_rollback(db) == 0);
    CHECK(state_db_begin(db) == 0);
    CHECK(state_db_begin(db) == ERR_DB);
    CHECK(state_db_mailbox_insert(db, "tmp", 3, false, &other) == 0);
    CHECK(state_db_mapping_delete_many(db, inbox, SIDE_LOCAL, batch, 5) == 0);
    CHECK(state_db_rollback(db) == 0);
    CHECK(state_db_mailbox_find(db, "tmp", 3, &idx, NULL) == 0);
    CHECK(state_db_begin(db) == 0);
    CHECK(state_db_mailbox_insert(db, "kept", 4, false, &other) == 0);
    CHECK(state_db_commit(db) == 0);
    CHECK(state_db_mailbox_find(db, "kept", 4, &idx, NULL) == 1 && idx == other);
    /* a failure inside a transaction leaves it open for the caller */
    CHECK(state_db_begin(db) == 0);
    CHECK(state_db_mailbox_insert(db, "gone", 4, false, NULL) == 0);
    CHECK(state_db_mailbox_insert(db, "INBOX", 5, false, NULL) == ERR_DB);
    CHECK(state_db_in_transaction(db));
    CHECK(state_db_rollback(db) == 0);
    CHECK(state_db_mailbox_find(db, "gone", 4, &idx, NULL) == 0);

    /* delete: with its rows, foreign keys on; indexes are never reused */
    CHECK(state_db_mailbox_delete(db, inbox) == 1);
    CHECK(state_db_mailbox_delete(db, inbox) == 0);
    CHECK(state_db_side_get(db, inbox, SIDE_LOCAL, &s) == 0);
    CHECK(state_db_mapping_count(db, inbox, &count) == 0 && count == 0);
    CHECK(state_db_mapping_lookup(db, work, SIDE_LOCAL, 1, &o) == 1 && o == 101);
    int64_t again;
    CHECK_INT(state_db_mailbox_insert(db, "INBOX", 5, true, &again), 0);
    CHECK(again > other);
    /* only the other mailbox's pair is left in the file */
    state_db_close(&db);
    char *rows = query_text(path, "SELECT COUNT(*) FROM mapping");
    CHECK(rows && strcmp(rows, "1|\n") == 0);
    free(rows);
}

static void test_rename(void)
{
    const char *path = tmp_path("rename.db");
    struct state_db *db = open_prepared(path, '/', '/');
    if (!db)
        return;
    struct {
        const char *n;
        size_t len;
    } names[] = {
        {"a", 1}, {"a\0b", 3}, {"a\0b\0c", 5}, {"ab", 2}, {"x\0a", 3}, {"p\0c", 3},
    };
    int64_t idx[6];
    for (int i = 0; i < 6; i++)
        CHECK_INT(state_db_mailbox_insert(db, names[i].n, names[i].len, i % 2 == 0, &idx[i]), 0);
    CHECK_INT(state_db_mapping_insert(db, idx[1], 4, 5), 0);

    CHECK(state_db_mailbox_rename(db, "a", 1, "z\0q", 3) == 3);
    int64_t got;
    bool sub;
    CHECK(state_db_mailbox_find(db, "z\0q", 3, &got, &sub) == 1 && got == idx[0] && sub);
    CHECK(state_db_mailbox_find(db, "z\0q\0b", 5, &got, &sub) == 1 && got == idx[1] && !sub);
    CHECK(state_db_mailbox_find(db, "z\0q\0b\0c", 7, &got, NULL) == 1 && got == idx[2]);
    CHECK(state_db_mailbox_find(db, "ab", 2, &got, NULL) == 1 && got == idx[3]);
    CHECK(state_db_mailbox_find(db, "x\0a", 3, &got, NULL) == 1 && got == idx[4]);
    CHECK(state_db_mailbox_find(db, "a", 1, &got, NULL) == 0);
    uint32_t o;
    CHECK(state_db_mapping_lookup(db, idx[1], SIDE_LOCAL, 4, &o) == 1 && o == 5);

    /* only children exist in the database: they move all the same */
    CHECK(state_db_mailbox_rename(db, "p", 1, "q", 1) == 1);
    CHECK(state_db_mailbox_find(db, "q\0c", 3, &got, NULL) == 1 && got == idx[5]);
    CHECK(state_db_mailbox_rename(db, "nothing", 7, "else", 4) == 0);
    CHECK(state_db_mailbox_rename(db, "ab", 2, "ab\0x", 4) == -EINVAL);
    CHECK(state_db_mailbox_rename(db, "ab", 2, "ab", 2) == -EINVAL);
    CHECK(state_db_mailbox_rename(db, "ab", 2, "abc", 3) == 1); /* not below: fine */
    /* onto an existing name: refused, nothing changed (atomic) */
    CHECK(state_db_mailbox_rename(db, "z\0q", 3, "x\0a", 3) == ERR_DB);
    CHECK(state_db_mailbox_find(db, "z\0q\0b", 5, &got, NULL) == 1 && got == idx[1]);
    state_db_close(&db);

    /* the stored values stay BLOBs, as the Perl tool's CAST makes them */
    char *types = query_text(path, "SELECT DISTINCT typeof(mailbox) FROM mailboxes");
    CHECK(types && strcmp(types, "blob|\n") == 0);
    free(types);
    char *all = query_text(path, "SELECT mailbox FROM mailboxes ORDER BY idx");
    CHECK(all && strcmp(all, "x'7a0071'|\nx'7a00710062'|\nx'7a007100620063'|\nx'616263'|\n"
                             "x'780061'|\nx'710063'|\n") == 0);
    free(all);
}

static const char v0_schema[] =
    "PRAGMA user_version = 0;"
    "CREATE TABLE mailboxes (idx        INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, "
    "mailbox    TEXT    NOT NULL CHECK (mailbox != '') UNIQUE, subscribed BOOLEAN NOT NULL);"
    "CREATE TABLE local (idx           INTEGER         NOT NULL PRIMARY KEY REFERENCES "
    "mailboxes(idx), UIDVALIDITY   UNSIGNED INT    NOT NULL CHECK (UIDVALIDITY > 0), UIDNEXT      "
    " UNSIGNED INT    NOT NULL, HIGHESTMODSEQ UNSIGNED BIGINT NOT NULL);"
    "CREATE TABLE remote (idx           INTEGER         NOT NULL PRIMARY KEY REFERENCES "
    "mailboxes(idx), UIDVALIDITY   UNSIGNED INT    NOT NULL CHECK (UIDVALIDITY > 0), UIDNEXT      "
    " UNSIGNED INT    NOT NULL, HIGHESTMODSEQ UNSIGNED BIGINT NOT NULL);"
    "CREATE TABLE mapping (idx  INTEGER      NOT NULL REFERENCES mailboxes(idx), lUID UNSIGNED "
    "INT NOT NULL CHECK (lUID > 0), rUID UNSIGNED INT NOT NULL CHECK (rUID > 0), PRIMARY KEY "
    "(idx,lUID), UNIQUE      (idx,rUID));"
    "INSERT INTO mailboxes (mailbox, subscribed) VALUES ('INBOX', 1), ('a/b', 0), ('a/b/c', 1);"
    "INSERT INTO local VALUES (1, 7, 3, 9), (2, 8, 1, 0);"
    "INSERT INTO remote VALUES (1, 70, 4, -5), (2, 80, 1, 0);"
    "INSERT INTO mapping VALUES (1, 1, 1), (1, 2, 3);";

static void make_v0(const char *path)
{
    unlink(path);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    if (fd >= 0)
        close(fd);
    CHECK(raw_exec(path, v0_schema) == 0);
}

static void test_migration(void)
{
    static const char *const dump_sql =
        "SELECT idx, mailbox, typeof(mailbox), subscribed FROM mailboxes ORDER BY idx";
    for (int flat = 0; flat < 2; flat++) {
        char d = flat ? '\0' : '/';
        const char *ours = tmp_path(flat ? "v0-ours-flat.db" : "v0-ours.db");
        make_v0(ours);
        struct state_db *db = open_prepared(ours, d, d);
        if (!db)
            return;
        int from = -1;
        CHECK(state_db_schema_action(db, &from) == STATE_DB_SCHEMA_UPGRADED && from == 0);
        int64_t idx;
        if (!flat) {
            CHECK(state_db_mailbox_find(db, "a\0b\0c", 5, &idx, NULL) == 1 && idx == 3);
            CHECK(state_db_mailbox_find(db, "a/b/c", 5, &idx, NULL) == 0);
        }
        uint32_t o;
        CHECK(state_db_mapping_lookup(db, 1, SIDE_LOCAL, 2, &o) == 1 && o == 3);
        struct state_side s;
        CHECK(state_db_side_get(db, 1, SIDE_REMOTE, &s) == 1 && s.highestmodseq == UINT64_MAX - 4);
        /* foreign keys are back on after the migration */
        CHECK(state_db_mapping_insert(db, 77, 1, 1) == ERR_DB);
        state_db_close(&db);
        char *schema = schema_text(ours, false);
        CHECK(schema && strstr(schema, "CREATE TABLE \"mailboxes\" (idx        INTEGER") != NULL);
        char *uv = query_text(ours, "PRAGMA user_version");
        CHECK(uv && strcmp(uv, "1|\n") == 0);
        free(uv);
        char *data = query_text(ours, dump_sql);
        if (!flat)
            CHECK(data && strstr(data, "3|x'61006200063'|") == NULL &&
                  strstr(data, "3|x'6100620063'|blob|1|") != NULL);

        if (perl_available()) {
            const char *theirs = tmp_path(flat ? "v0-perl-flat.db" : "v0-perl.db");
            make_v0(theirs);
            CHECK(run_perl("migrate", theirs, flat ? "" : "/") == 0);
            char *pschema = schema_text(theirs, true);
            CHECK(schema && pschema && strcmp(schema, pschema) == 0);
            if (schema && pschema && strcmp(schema, pschema) != 0)
                fprintf(stderr, "ours:\n%s\ntheirs:\n%s\n", schema, pschema);
            char *pdata = query_text(theirs, dump_sql);
            CHECK(data && pdata && strcmp(data, pdata) == 0);
            free(pschema);
            free(pdata);
        }
        free(schema);
        free(data);
    }

    /* different delimiters: refused, file left at version 0 */
    const char *path = tmp_path("v0-differ.db");
    make_v0(path);
    char err[512];
    struct state_db *db = NULL;
    CHECK(state_db_open(path, &db, err, sizeof err) == 0);
    if (db) {
        CHECK(state_db_prepare(db, '/', '.', err, sizeof err) == ERR_STATE_MISMATCH);
        CHECK(strcmp(err, "Local and remote hierarchy delimiters differ (local \"/\", remote "
                          "\".\"), refusing to update table `mailboxes`.") == 0);
        CHECK(!state_db_in_transaction(db));
        state_db_close(&db);
    }
    char *uv = query_text(path, "PRAGMA user_version");
    CHECK(uv && strcmp(uv, "0|\n") == 0);
    free(uv);

    /* a newer schema than ours is refused */
    path = tmp_path("v2.db");
    db = open_prepared(path, '/', '/');
    state_db_close(&db);
    CHECK(raw_exec(path, "PRAGMA user_version = 2") == 0);
    CHECK(state_db_open(path, &db, err, sizeof err) == 0);
    if (db) {
        CHECK(state_db_prepare(db, '/', '/', err, sizeof err) == ERR_STATE_MISMATCH);
        CHECK(strstr(err, "version 2") != NULL);
        state_db_close(&db);
    }
}

static void test_copy_journal(void)
{
    const char *path = tmp_path("copies.db");
    struct state_db *db = open_prepared(path, '/', '/');
    if (!db)
        return;
    int64_t a, b, last = -1;
    CHECK_INT(state_db_mailbox_insert(db, "a", 1, false, &a), 0);
    CHECK_INT(state_db_mailbox_insert(db, "b", 1, false, &b), 0);
    CHECK(state_db_copy_last_batch(db, &last) == 0 && last == 0);
    char msgid[] = {'<', 'x', 0, 'y', '>'}; /* bytes, NUL included */
    struct state_copy c = {
        .source = SIDE_REMOTE,
        .suid = 42,
        .batch = 7,
        .bound = 17,
        .size = 5000000000ull,
        .internaldate = "17-Jul-1996 02:44:25 -0700",
        .msgid = msgid,
        .msgidlen = sizeof msgid,
        .flags = "\\Seen $Label",
    };
    CHECK_INT(state_db_copy_add(db, a, &c), 0);
    c.source = SIDE_LOCAL;
    c.suid = 43;
    c.batch = 8;
    CHECK_INT(state_db_copy_add(db, a, &c), 0);
    c.msgid = NULL;
    c.msgidlen = 0;
    c.flags = NULL;
    CHECK_INT(state_db_copy_add(db, b, &c), 0);
    CHECK(state_db_copy_last_batch(db, &last) == 0 && last == 8);

    struct state_copy *list = NULL;
    size_t n = 0;
    CHECK(state_db_copy_list(db, a, &list, &n) == 0 && n == 2);
    if (n == 2) {
        /* ordered by source: local (43) first */
        CHECK(list[0].source == SIDE_LOCAL && list[0].suid == 43 && list[0].batch == 8);
        CHECK(list[1].source == SIDE_REMOTE && list[1].suid == 42 && list[1].tuid == 0);
        CHECK(list[1].bound == 17 && list[1].size == 5000000000ull);
        CHECK(strcmp(list[1].internaldate, "17-Jul-1996 02:44:25 -0700") == 0);
        CHECK(list[1].msgidlen == 5 && memcmp(list[1].msgid, msgid, 5) == 0);
        CHECK(strcmp(list[1].flags, "\\Seen $Label") == 0);
    }
    state_db_copy_list_free(&list, n);
    CHECK(state_db_copy_list(db, b, &list, &n) == 0 && n == 1);
    if (n == 1)
        CHECK(list[0].msgidlen == 0 && strcmp(list[0].flags, "") == 0);
    state_db_copy_list_free(&list, n);

    /* confirm: the mapping in, the copy's UID noted, together */
    CHECK(state_db_copy_confirm(db, a, SIDE_REMOTE, 42, 9) == 0);
    uint32_t o;
    CHECK(state_db_mapping_lookup(db, a, SIDE_LOCAL, 9, &o) == 1 && o == 42);
    CHECK(state_db_copy_list(db, a, &list, &n) == 0 && n == 2);
    if (n == 2)
        CHECK(list[1].tuid == 9);
    state_db_copy_list_free(&list, n);
    /* a confirmation that cannot insert the mapping changes nothing */
    CHECK_INT(state_db_mapping_insert(db, a, 5, 6), 0);
    CHECK(state_db_copy_confirm(db, a, SIDE_LOCAL, 43, 6) == ERR_DB); /* rUID 6 taken */
    CHECK(state_db_copy_list(db, a, &list, &n) == 0 && n == 2);
    if (n == 2)
        CHECK(list[0].tuid == 0);
    state_db_copy_list_free(&list, n);
    CHECK(state_db_mapping_lookup(db, a, SIDE_LOCAL, 43, &o) == 0);
    /* inside a caller's transaction it rolls back with it */
    CHECK(state_db_begin(db) == 0);
    CHECK(state_db_copy_confirm(db, a, SIDE_LOCAL, 43, 8) == 0);
    CHECK(state_db_rollback(db) == 0);
    CHECK(state_db_mapping_lookup(db, a, SIDE_LOCAL, 43, &o) == 0);

    CHECK(state_db_copy_delete(db, a, SIDE_LOCAL, 43) == 1);
    CHECK(state_db_copy_delete(db, a, SIDE_LOCAL, 43) == 0);
    CHECK(state_db_copy_clear(db, a) == 0);
    CHECK(state_db_copy_list(db, a, &list, &n) == 0 && n == 0);
    state_db_copy_list_free(&list, n);
    /* deleting a mailbox drops its journal */
    CHECK(state_db_mailbox_delete(db, b) == 1);
    CHECK(state_db_copy_list(db, b, &list, &n) == 0 && n == 0);
    state_db_copy_list_free(&list, n);

    /* the Perl tool's --delete statements, with foreign keys on, on a file
     * holding journal rows: the table has no foreign key to trip on */
    c.suid = 50;
    CHECK_INT(state_db_copy_add(db, a, &c), 0);
    state_db_close(&db);
    char sql[512];
    snprintf(sql, sizeof sql,
             "PRAGMA foreign_keys = ON; BEGIN; DELETE FROM mapping WHERE idx = %" PRId64 ";"
             "DELETE FROM local WHERE idx = %" PRId64 "; DELETE FROM remote WHERE idx = %" PRId64
             "; DELETE FROM mailboxes WHERE idx = %" PRId64 "; COMMIT;",
             a, a, a, a);
    CHECK(raw_exec(path, sql) == 0);
    char *left = query_text(path, "SELECT COUNT(*) FROM journal_copies");
    CHECK(left && strcmp(left, "1|\n") == 0); /* stale, harmless: indexes are never reused */
    free(left);
}

static void test_command_journal(void)
{
    const char *path = tmp_path("commands.db");
    struct state_db *db = open_prepared(path, '/', '/');
    if (!db)
        return;
    struct state_command c = {
        .rename = true, .name = "a\0b", .namelen = 3, .newname = "c", .newlen = 1, .targets = 7};
    int64_t id1 = 0, id2 = 0;
    CHECK(state_db_command_add(db, &c, &id1) == 0 && id1 > 0);
    struct state_command d = {.rename = false, .name = "x", .namelen = 1, .targets = 3};
    CHECK(state_db_command_add(db, &d, &id2) == 0 && id2 > id1);
    CHECK(state_db_command_done(db, id1, 1) == 0);
    CHECK(state_db_command_done(db, id1, 4) == 0);
    struct state_command *list = NULL;
    size_t n = 0;
    CHECK(state_db_command_list(db, &list, &n) == 0 && n == 2);
    if (n == 2) {
        CHECK(list[0].id == id1 && list[0].rename && list[0].namelen == 3 &&
              memcmp(list[0].name, "a\0b", 3) == 0);
        CHECK(list[0].newlen == 1 && list[0].newname[0] == 'c');
        CHECK(list[0].targets == 7 && list[0].done == 5);
        CHECK(list[1].id == id2 && !list[1].rename && list[1].newlen == 0 && list[1].done == 0);
    }
    state_db_command_list_free(&list, n);
    CHECK(state_db_command_delete(db, id1) == 0);
    CHECK(state_db_command_list(db, &list, &n) == 0 && n == 1);
    state_db_command_list_free(&list, n);
    state_db_close(&db);
}

/* A file holding the journal of the previous format (`pending`, one row
 * per mailbox and direction, source UID 0) is converted: the table goes,
 * its bounds become copy-journal rows with source UID 0. */
static void test_pending_conversion(void)
{
    const char *path = tmp_path("pending.db");
    struct state_db *db = open_prepared(path, '/', '/');
    if (!db)
        return;
    int64_t a;
    CHECK_INT(state_db_mailbox_insert(db, "a", 1, false, &a), 0);
    state_db_close(&db);
    char sql[1024];
    snprintf(sql, sizeof sql,
             "CREATE TABLE pending (idx INTEGER NOT NULL, source INTEGER NOT NULL CHECK (source "
             "IN (0,1)), sUID UNSIGNED INT NOT NULL CHECK (sUID >= 0), tUIDNEXT UNSIGNED INT NOT "
             "NULL, size UNSIGNED BIGINT NOT NULL, internaldate TEXT NOT NULL, hash BLOB NOT "
             "NULL, PRIMARY KEY (idx,source,sUID));"
             "INSERT INTO pending VALUES (%" PRId64 ",1,0,12,0,'',x'');",
             a);
    CHECK(raw_exec(path, sql) == 0);
    db = open_prepared(path, '/', '/');
    if (!db)
        return;
    struct state_copy *list = NULL;
    size_t n = 0;
    CHECK(state_db_copy_list(db, a, &list, &n) == 0 && n == 1);
    if (n == 1)
        CHECK(list[0].source == SIDE_REMOTE && list[0].suid == 0 && list[0].bound == 12);
    state_db_copy_list_free(&list, n);
    state_db_close(&db);
    char *left = query_text(path, "SELECT COUNT(*) FROM sqlite_master WHERE name = 'pending'");
    CHECK(left && strcmp(left, "0|\n") == 0);
    free(left);
}

static void rm_rf(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", dir);
}

/* The tables of servers without QRESYNC: remembered capabilities (readable
 * before the schema exists) and per-message flag records. */
static void test_caps_and_flags(void)
{
    const char *path = tmp_path("tiers.db");
    char err[512];
    struct state_db *db = NULL;
    CHECK(state_db_open(path, &db, err, sizeof err) == 0);
    if (!db)
        return;
    char *caps = (char *)"x";
    int hms = -1;
    /* a new file: no table yet, nothing remembered, no error */
    CHECK(state_db_caps_get(db, SIDE_LOCAL, "srv", &caps, &hms) == 0 && caps == NULL);
    CHECK_INT(hms, 0);
    CHECK(state_db_prepare(db, '/', '/', err, sizeof err) == 0);
    CHECK(state_db_caps_get(db, SIDE_LOCAL, "srv", &caps, &hms) == 0 && caps == NULL);
    CHECK_INT(state_db_caps_set(db, SIDE_LOCAL, "srv", "IMAP4REV1 QRESYNC", 0), 0);
    CHECK_INT(state_db_caps_set(db, SIDE_REMOTE, "other", "IMAP4REV1", STATE_APPEND_HMS_QUIET), 0);
    CHECK(state_db_caps_get(db, SIDE_LOCAL, "srv", &caps, &hms) == 1 && caps &&
          strcmp(caps, "IMAP4REV1 QRESYNC") == 0);
    CHECK_INT(hms, 0);
    free(caps);
    CHECK(state_db_caps_get(db, SIDE_REMOTE, "other", &caps, &hms) == 1);
    CHECK_INT(hms, STATE_APPEND_HMS_QUIET);
    free(caps);
    /* recorded for other connection settings: does not count */
    CHECK(state_db_caps_get(db, SIDE_REMOTE, "srv", &caps, &hms) == 0 && caps == NULL);
    /* replaced, not added */
    CHECK_INT(
        state_db_caps_set(db, SIDE_LOCAL, "srv2", "IMAP4REV1 CONDSTORE", STATE_APPEND_HMS_REPORTED),
        0);
    CHECK(state_db_caps_get(db, SIDE_LOCAL, "srv", &caps, &hms) == 0);
    CHECK(state_db_caps_get(db, SIDE_LOCAL, "srv2", &caps, &hms) == 1 && caps &&
          strcmp(caps, "IMAP4REV1 CONDSTORE") == 0);
    CHECK_INT(hms, STATE_APPEND_HMS_REPORTED);
    free(caps);
    CHECK(state_db_caps_set(db, (enum side)2, "x", "y", 0) == -EINVAL);

    int64_t a, b;
    CHECK_INT(state_db_mailbox_insert(db, "a", 1, false, &a), 0);
    CHECK_INT(state_db_mailbox_insert(db, "b", 1, false, &b), 0);
    CHECK_INT(state_db_flags_set(db, a, SIDE_REMOTE, 7, "\\Seen"), 0);
    CHECK_INT(state_db_flags_set(db, a, SIDE_REMOTE, 3, ""), 0);
    CHECK_INT(state_db_flags_set(db, a, SIDE_LOCAL, 3, "$Label1"), 0);
    CHECK_INT(state_db_flags_set(db, b, SIDE_REMOTE, 1, "\\Flagged"), 0);
    CHECK_INT(state_db_flags_set(db, a, SIDE_REMOTE, 7, "\\Seen \\Answered"), 0); /* replaced */
    struct state_flags *fl = NULL;
    size_t n = 0;
    CHECK(state_db_flags_list(db, a, SIDE_REMOTE, &fl, &n) == 0 && n == 2);
    if (n == 2) {
        CHECK(fl[0].uid == 3 && strcmp(fl[0].flags, "") == 0);
        CHECK(fl[1].uid == 7 && strcmp(fl[1].flags, "\\Seen \\Answered") == 0);
    }
    state_db_flags_free(&fl, n);
    CHECK(fl == NULL);
    CHECK(state_db_flags_delete(db, a, SIDE_REMOTE, 3) == 1);
    CHECK(state_db_flags_delete(db, a, SIDE_REMOTE, 3) == 0);
    CHECK(state_db_flags_clear(db, a, SIDE_LOCAL) == 1);
    CHECK(state_db_flags_list(db, a, SIDE_LOCAL, &fl, &n) == 0 && n == 0);
    state_db_flags_free(&fl, n);
    /* deleting a mailbox takes its records along */
    CHECK(state_db_mailbox_delete(db, b) == 1);
    CHECK(state_db_flags_list(db, b, SIDE_REMOTE, &fl, &n) == 0 && n == 0);
    state_db_flags_free(&fl, n);
    CHECK(state_db_flags_list(db, a, SIDE_REMOTE, &fl, &n) == 0 && n == 1);
    state_db_flags_free(&fl, n);
    state_db_close(&db);
}

int main(int argc, char **argv)
{
    perl_helper = argc > 1 ? argv[1] : "perl_state.pl";
    perl_tool = argc > 2 ? argv[2] : "/usr/bin/interimap";
    signal(SIGPIPE, SIG_IGN);
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    test_create_modes_and_schema();
    test_no_create();
    test_lock();
    test_read_only();
    test_mailboxes_sides_mapping();
    test_rename();
    test_migration();
    test_copy_journal();
    test_command_journal();
    test_pending_conversion();
    test_caps_and_flags();
    if (check_failures())
        fprintf(stderr, "files kept in %s\n", tmpdir);
    else
        rm_rf(tmpdir);
    return check_finish();
}
