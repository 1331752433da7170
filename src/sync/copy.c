/*
 * New messages: streaming each side's new messages from its FETCH into
 * the other side's (MULTI)APPEND. Each APPEND command is journaled before
 * the server can store what it carries, and its answer is recorded (the
 * pairs inserted and committed) as soon as it arrives; see the crash
 * safety section of doc/internals/sync.md.
 */
#include "internal.h"

void copy_init(struct new_copy *cp, struct mbox_ctx *m, enum side src)
{
    memset(cp, 0, sizeof *cp);
    cp->e = m->e;
    cp->m = m;
    cp->src = src;
    cp->target = &m->st[OTHER(src)];
    cp->batches_tail = &cp->batches;
    uidset_init(&cp->open_uids);
    uidset_init(&cp->appended);
    /* any UIDNEXT the target reported before the APPEND is a lower bound
     * for the copies; a mailbox created in this run is empty */
    enum side dst = OTHER(src);
    cp->bound = m->target_pending == (int)dst ? 1 : m->st[dst].ms.uidnext;
    if (cp->bound == 0)
        cp->bound = 1;
}

static void entries_clear(struct new_copy *cp)
{
    for (size_t i = 0; i < cp->nentries; i++) {
        free(cp->entries[i].date);
        free(cp->entries[i].flags);
        free(cp->entries[i].msgid);
    }
    cp->nentries = 0;
}

/* Forgets the messages held (what a release did not take). */
static void held_clear(struct new_copy *cp)
{
    for (size_t i = 0; i < cp->nheld; i++) {
        free(cp->held[i].flags);
        free(cp->held[i].body);
    }
    cp->nheld = 0;
}

void copy_fini(struct new_copy *cp)
{
    entries_clear(cp);
    free(cp->entries);
    cp->entries = NULL;
    cp->capentries = 0;
    fp_scan_fini(&cp->scan);
    for (size_t i = 0; i < cp->nmade; i++)
        free(cp->made[i].flags);
    free(cp->made);
    cp->made = NULL;
    cp->nmade = cp->capmade = 0;
    uidset_fini(&cp->open_uids);
    uidset_fini(&cp->appended);
    held_clear(cp);
    free(cp->held);
    cp->held = NULL;
    cp->nheld = cp->capheld = 0;
}

/* ------------------------------------------------------------------ */
/* recording the answers */

/* "Added 2 UID(s) 4:5 <- 1:2" on the target side: local UIDs on the
 * left, remote ones on the right, the arrow pointing to the target, in the
 * order of the APPEND (the reference tool's line, one per APPEND). */
static void log_added(struct mbox_ctx *m, enum side dst, const struct uidset *src_uids,
                      const struct uidset *dst_uids)
{
    const struct uidset *l = dst == SIDE_LOCAL ? dst_uids : src_uids;
    const struct uidset *r = dst == SIDE_LOCAL ? src_uids : dst_uids;
    char *ltext = uidset_format_list(l), *rtext = uidset_format_list(r);
    if (ltext && rtext)
        log_info(m->e->log, side_name[dst], m->st[dst].mailbox, "Added %zu UID(s) %s %s %s",
                 dst_uids->count, ltext, dst == SIDE_LOCAL ? "<-" : "->", rtext);
    free(ltext);
    free(rtext);
}

/* Waits for one APPEND's answer and records its pairs (APPENDUID gives the
 * target UIDs in the order of the messages), committed at once. */
static void copy_record(struct new_copy *cp, struct pending_batch *b)
{
    struct mbox_ctx *m = cp->m;
    struct sync_engine *e = cp->e;
    enum side src = cp->src, dst = OTHER(src);
    int err = 0;
    int w = b->cmd ? imap_cmd_wait(b->cmd) : -ENOMEM;
    if (w < 0) {
        /* after an abort, the failure of the source says it all */
        if (!cp->target_aborted)
            log_error(e->log, side_name[dst], m->st[dst].mailbox, "APPEND failed: %s",
                      imap_client_reason(m->st[dst].c));
        err = w;
        goto out;
    }
    const char *code = imap_cmd_code(b->cmd), *args = imap_cmd_code_args(b->cmd);
    const char *sp = args ? strchr(args, ' ') : NULL;
    struct uidset tuids;
    uidset_init(&tuids);
    /* one UID per message, in order, or nothing is recorded */
    const struct uidset_bounds bounds = {
        .in_order = true, .max_uid = UINT32_MAX, .max_count = b->src_uids.count};
    if (!code || strcasecmp(code, "APPENDUID") != 0 || !sp ||
        uidset_parse_bounded(&tuids, sp + 1, strlen(sp + 1), &bounds) < 0 ||
        tuids.count != b->src_uids.count) {
        log_error(e->log, side_name[dst], m->st[dst].mailbox,
                  "the server did not report the UIDs of appended messages (APPENDUID)");
        uidset_fini(&tuids);
        err = ERR_PROTOCOL;
        goto out;
    }
    /* the target's UIDVALIDITY, from the database or from its SELECT
     * (not waited for yet into a mailbox created in this run), or else
     * the one the copy's first APPEND reported */
    uint32_t uidvalidity = (uint32_t)strtoul(args, NULL, 10);
    uint32_t want = m->have_row[dst] ? m->db[dst].uidvalidity : m->st[dst].ms.uidvalidity;
    if (!want)
        want = cp->uidvalidity;
    if (!cp->uidvalidity)
        cp->uidvalidity = uidvalidity;
    if (want && uidvalidity != want) {
        log_error(e->log, side_name[dst], m->st[dst].mailbox,
                  "UIDVALIDITY changed during the APPEND");
        uidset_fini(&tuids);
        err = ERR_STATE_MISMATCH;
        goto out;
    }
    for (size_t i = 0; i < tuids.count; i++) {
        uint32_t tu = tuids.uids[i];
        if (state_db_copy_confirm(e->db, m->idx, src, b->src_uids.uids[i], tu) < 0)
            err = ERR_DB;
        if (m->st[dst].how == TIER_PLAIN)
            sent_record(&m->st[dst], b->src_uids.uids[i], tu);
        mbox_note(m, uidset_add(&cp->appended, tu));
        if (tu >= cp->bound)
            cp->bound = tu + 1;
        struct copy_made *made =
            (struct copy_made *)uid_find(cp->made, cp->nmade, sizeof *made, b->src_uids.uids[i]);
        if (made)
            made->tuid = tu;
    }
    m->added[dst] += (unsigned)tuids.count;
    log_added(m, dst, &b->src_uids, &tuids);
    uidset_fini(&tuids);
    if (err == 0 && !cp->deferred && (state_db_commit(e->db) < 0 || state_db_begin(e->db) < 0))
        err = ERR_DB;
    if (err == ERR_DB)
        log_error(e->log, "database", m->pretty, "%s", state_db_error(e->db));
out:
    if (err && !cp->record_error)
        cp->record_error = err;
    imap_cmd_free(&b->cmd);
    uidset_fini(&b->src_uids);
}

static struct pending_batch *batch_pop(struct new_copy *cp)
{
    struct pending_batch *b = cp->batches;
    cp->batches = b->next;
    if (!cp->batches)
        cp->batches_tail = &cp->batches;
    return b;
}

/* The recorder: takes the closed batches in order, each as its answer
 * comes, while the copy goes on. */
static void recorder_main(struct coro *self, void *arg)
{
    struct new_copy *cp = arg;
    for (;;) {
        if (!cp->batches) {
            if (cp->closing)
                break;
            cp->recorder_idle = true;
            int r = coro_suspend(self);
            cp->recorder_idle = false;
            if (r < 0)
                break;
            continue;
        }
        /* recorded before it leaves the list: copy_finish waits for the
         * recorder, then records whatever is left itself */
        copy_record(cp, cp->batches);
        free(batch_pop(cp));
    }
}

/* ------------------------------------------------------------------ */
/* writing */

/* Journals the messages of the open APPEND (committed), then writes its
 * final CRLF: the server cannot store them before, so the journal always
 * knows what a killed run may have left on the target. */
int copy_close(struct new_copy *cp)
{
    if (!cp->append_open)
        return 0;
    struct sync_engine *e = cp->e;
    struct mbox_ctx *m = cp->m;
    int64_t batch = ++e->batch_seq;
    int rc = 0;
    for (size_t i = 0; i < cp->nentries && rc == 0; i++) {
        struct copy_entry *c = &cp->entries[i];
        struct state_copy row = {.source = cp->src,
                                 .suid = c->suid,
                                 .batch = batch,
                                 .bound = cp->bound,
                                 .size = c->size,
                                 .internaldate = c->date,
                                 .msgid = c->msgid,
                                 .msgidlen = c->msgidlen,
                                 .flags = c->flags};
        rc = state_db_copy_add(e->db, m->idx, &row);
    }
    if (rc == 0 && (state_db_commit(e->db) < 0 || state_db_begin(e->db) < 0))
        rc = ERR_DB;
    if (rc < 0) {
        /* the command must still end; the run fails for this mailbox */
        log_error(e->log, "database", m->pretty, "%s", state_db_error(e->db));
        if (!cp->error)
            cp->error = ERR_DB;
    }
    entries_clear(cp);
    struct imap_client *t = cp->target->c;
    struct imap_cmd *cmd = imap_client_end(t, cp->open_cmd);
    imap_client_unlock_write(t);
    cp->append_open = false;
    cp->open_count = 0;
    cp->open_bytes = 0;
    struct pending_batch *b = calloc(1, sizeof *b);
    if (!b) {
        imap_cmd_free(&cmd);
        uidset_clear(&cp->open_uids);
        return -ENOMEM;
    }
    b->cmd = cmd;
    b->src_uids = cp->open_uids;
    uidset_init(&cp->open_uids);
    *cp->batches_tail = b;
    cp->batches_tail = &b->next;
    if (cp->deferred)
        return 0; /* recorded by copy_finish */
    if (!cp->recorder)
        cp->recorder = coro_spawn(e->sched, recorder_main, cp, 0);
    else if (cp->recorder_idle)
        coro_wake(cp->recorder);
    return 0;
}

/* Remembers one message of the open APPEND for the journal. */
static int entry_add(struct new_copy *cp, uint32_t uid, uint64_t size, const char *date,
                     char *flags)
{
    struct copy_entry *grown =
        array_reserve(cp->entries, &cp->capentries, cp->nentries + 1, sizeof *grown, 64);
    if (!grown) {
        free(flags);
        return -ENOMEM;
    }
    cp->entries = grown;
    char msgid[FP_MSGID_MAX];
    size_t idlen = fp_scan_msgid(&cp->scan, msgid, sizeof msgid);
    struct copy_entry *c = &cp->entries[cp->nentries];
    *c = (struct copy_entry){uid, size, strdup(date), flags, malloc(idlen + 1), idlen};
    if (!c->date || !c->msgid) {
        free(c->date);
        free(c->flags);
        free(c->msgid);
        return -ENOMEM;
    }
    memcpy(c->msgid, msgid, idlen);
    c->msgid[idlen] = '\0';
    cp->nentries++;
    return 0;
}

/* Remembers what a message of a deferred copy was appended with. */
static int made_add(struct new_copy *cp, uint32_t suid, const char *flags)
{
    struct copy_made *grown =
        array_reserve(cp->made, &cp->capmade, cp->nmade + 1, sizeof *grown, 64);
    if (!grown)
        return -ENOMEM;
    cp->made = grown;
    char *f = strdup(flags);
    if (!f)
        return -ENOMEM;
    cp->made[cp->nmade++] = (struct copy_made){suid, 0, f};
    return 0;
}

/* Copies the literal's bytes into the target, watching its header go by. */
static int copy_body(struct new_copy *cp, uint64_t size, struct imap_literal *lit,
                     const char *inline_body)
{
    struct imap_client *t = cp->target->c;
    if (inline_body) {
        fp_scan_feed(&cp->scan, inline_body, (size_t)size);
        return imap_client_write_raw(t, inline_body, (size_t)size);
    }
    char *buf = malloc(COPY_CHUNK);
    if (!buf)
        return -ENOMEM;
    uint64_t left = size;
    int r = 0;
    while (left && r == 0) {
        ssize_t n = imap_literal_read(lit, buf, COPY_CHUNK);
        if (n <= 0) {
            r = n < 0 ? (int)n : ERR_EOF;
            break;
        }
        fp_scan_feed(&cp->scan, buf, (size_t)n);
        r = imap_client_write_raw(t, buf, (size_t)n);
        left -= (uint64_t)n;
    }
    free(buf);
    return r;
}

/*
 * Appends one message (its FETCH items checked already, imap/values.h) to
 * the target, streaming the body from the source's literal or writing it
 * from memory, and notes it for the journal. Should the body stop short
 * (the source's connection broke, or the target's), the target has been
 * promised bytes that will never come: its connection is given up, not
 * used with a literal still open.
 */
static int append_one(struct new_copy *cp, uint32_t uid, const char *date, char *flags,
                      uint64_t size, struct imap_literal *lit, const char *inline_body);
static int hold_one(struct new_copy *cp, uint32_t uid, const char *date, char *flags, uint64_t size,
                    struct imap_literal *lit, const char *inline_body);

int copy_append_message(struct new_copy *cp, const struct imap_fetch *f, uint64_t size,
                        struct imap_literal *lit, const char *inline_body)
{
    if (cp->error)
        return cp->error;
    if (size == 0) {
        log_warn(cp->e->log, side_name[cp->src], NULL,
                 "Ignoring new 0-length message (UID %" PRIu32 ")", f->uid);
        return 0;
    }
    char *flags = f->flags ? flags_normalize(f->flags) : strdup("");
    if (!flags) {
        cp->error = -ENOMEM;
        return cp->error;
    }
    if (cp->hold_budget)
        return hold_one(cp, f->uid, f->date, flags, size, lit, inline_body);
    return append_one(cp, f->uid, f->date, flags, size, lit, inline_body);
}

/* Keeps one message (flags: owned) for copy_release_held, or drops it when
 * the budget is spent. Should the body stop short, the source's
 * connection broke: the copy fails. */
static int hold_one(struct new_copy *cp, uint32_t uid, const char *date, char *flags, uint64_t size,
                    struct imap_literal *lit, const char *inline_body)
{
    if (cp->held_over || size > *cp->hold_budget) {
        /* the client skips what is left of the literal */
        cp->held_over = true;
        free(flags);
        return 0;
    }
    struct held_message *grown =
        array_reserve(cp->held, &cp->capheld, cp->nheld + 1, sizeof *grown, 16);
    if (grown)
        cp->held = grown;
    char *body = grown ? malloc((size_t)size) : NULL;
    if (!body) {
        free(flags);
        return cp->error = -ENOMEM;
    }
    if (inline_body) {
        memcpy(body, inline_body, (size_t)size);
    } else {
        for (uint64_t got = 0; got < size;) {
            ssize_t n = imap_literal_read(lit, body + got, (size_t)(size - got));
            if (n <= 0) {
                free(body);
                free(flags);
                return cp->error = n < 0 ? (int)n : ERR_EOF;
            }
            got += (uint64_t)n;
        }
    }
    struct held_message *h = &cp->held[cp->nheld++];
    *h = (struct held_message){.uid = uid, .flags = flags, .body = body, .size = size};
    snprintf(h->date, sizeof h->date, "%s", date);
    *cp->hold_budget -= size;
    return 0;
}

/* Appends the messages held, in the order read, and forgets them. */
int copy_release_held(struct new_copy *cp)
{
    int r = 0;
    for (size_t i = 0; i < cp->nheld && r == 0 && !cp->error; i++) {
        struct held_message *h = &cp->held[i];
        r = append_one(cp, h->uid, h->date, h->flags, h->size, NULL, h->body);
        h->flags = NULL; /* append_one took them */
    }
    held_clear(cp);
    return r ? r : cp->error;
}

/* Appends one message (flags: owned), streaming its body from the
 * literal or writing it from memory. */
static int append_one(struct new_copy *cp, uint32_t uid, const char *date, char *flags,
                      uint64_t size, struct imap_literal *lit, const char *inline_body)
{
    struct sync_engine *e = cp->e;
    struct imap_client *t = cp->target->c;
    bool multi = imap_client_has_cap(t, "MULTIAPPEND");
    int r = 0;
    bool literal_open = false;
    if (cp->append_open && (!multi || cp->open_count >= APPEND_BATCH_MESSAGES ||
                            cp->open_bytes + size > APPEND_BATCH_BYTES))
        r = copy_close(cp);
    if (r == 0 && !cp->append_open) {
        r = imap_client_lock_write(t);
        if (r == 0) {
            cp->open_cmd = imap_client_begin(t, "APPEND %m", cp->target->mailbox);
            cp->append_open = cp->open_cmd != NULL;
            if (!cp->open_cmd) {
                imap_client_unlock_write(t);
                r = -ENOMEM;
            }
        }
    }
    /* flags and date are encoded (and checked once more) before anything
     * of this message is written */
    if (r == 0)
        r = imap_client_write_fmt(t, " (%F) %D ", flags, date);
    if (r == 0)
        r = imap_client_literal_begin(t, size);
    fp_scan_reset(&cp->scan);
    if (r == 0) {
        literal_open = true;
        r = copy_body(cp, size, lit, inline_body);
    }
    if (r == 0 && cp->target->how == TIER_PLAIN)
        sent_note(cp->target, uid, flags); /* for its flag record */
    if (r == 0 && cp->deferred)
        r = made_add(cp, uid, flags);
    /* written but not noted, the APPEND must not complete: fail */
    if (r == 0)
        r = entry_add(cp, uid, size, date, flags);
    else
        free(flags);
    if (r == 0 && uidset_add(&cp->open_uids, uid) < 0)
        r = -ENOMEM;
    if (r < 0) {
        cp->error = r;
        if (literal_open) {
            cp->target_aborted = true;
            imap_client_abort(t, imap_client_is_broken(t)
                                     ? NULL /* its own failure explains it */
                                     : "the APPEND was abandoned with its message cut short: the "
                                       "copy from the other server failed");
        }
        return r;
    }
    cp->open_count++;
    cp->open_bytes += size;
    cp->copied++;
    progress_copied(e->opts.progress, size);
    return 0;
}

/* Ends the open APPEND and waits until every answer is recorded; the
 * target UIDs of the copies are added to `appended` (unless NULL).
 * Returns 0 or the first error met while recording. */
int copy_finish(struct new_copy *cp, struct uidset *appended)
{
    int rc = copy_close(cp);
    cp->closing = true;
    if (cp->recorder) {
        if (cp->recorder_idle)
            coro_wake(cp->recorder);
        coro_join(coro_current(cp->e->sched), cp->recorder);
        cp->recorder = NULL;
    }
    /* what the recorder left (it could not be started, or was cancelled) */
    while (cp->batches) {
        struct pending_batch *b = batch_pop(cp);
        copy_record(cp, b);
        free(b);
    }
    for (size_t i = 0; appended && i < cp->appended.count; i++)
        mbox_note(cp->m, uidset_add(appended, cp->appended.uids[i]));
    if (rc == 0)
        rc = cp->record_error;
    return rc;
}

/* Copies the given UIDs of side src to the other side (messages the
 * new-message pass would not take: re-downloads); the new UIDs go into
 * skip[other] so that pass does not copy them back. */
int copy_uids(struct mbox_ctx *m, enum side src, struct uidset *uids, struct uidset skip[2])
{
    struct new_copy cp;
    copy_init(&cp, m, src);
    uidset_normalize(uids);
    size_t pos = 0;
    char *set;
    int rc = 0;
    /* what the answers may hold: the UIDs asked for, ascending */
    m->st[src].fetch_from = uids->count ? uids->uids[0] : 1;
    m->st[src].fetch_skip = NULL;
    m->st[src].last_new_uid = 0;
    m->st[src].streamed_uid = 0;
    m->st[src].copy = &cp;
    while (rc == 0 && (set = uidset_format(uids, &pos, UIDSET_TEXT_MAX))) {
        rc = imap_client_run(m->st[src].c, "UID FETCH %S (%a INTERNALDATE BODY.PEEK[])", set,
                             fetch_flags_items(&m->st[src]));
        free(set);
        if (cp.error && rc == 0)
            rc = cp.error;
    }
    m->st[src].copy = NULL;
    struct uidset appended;
    uidset_init(&appended);
    int r = copy_finish(&cp, &appended);
    if (r < 0 && rc == 0)
        rc = r;
    for (size_t i = 0; i < appended.count; i++)
        mbox_note(m, uidset_add(&skip[OTHER(src)], appended.uids[i]));
    uidset_fini(&appended);
    copy_fini(&cp);
    if (rc == 0)
        rc = side_error(m);
    return rc;
}

/* ------------------------------------------------------------------ */
/* the new-message pass */

/* "since:4294967295" minus the UIDs to skip, as a sequence set. */
static char *new_range(uint32_t since, const struct uidset *skip)
{
    size_t cap = 64 + skip->count * 24, len = 0;
    char *out = malloc(cap);
    if (!out)
        return NULL;
    out[0] = '\0';
    uint32_t from = since ? since : 1;
    for (size_t i = 0; i < skip->count; i++) {
        uint32_t u = skip->uids[i];
        if (u < from)
            continue;
        if (u > from)
            len += (size_t)snprintf(out + len, cap - len, "%s%" PRIu32 ":%" PRIu32, len ? "," : "",
                                    from, u - 1);
        from = u + 1;
        if (from == 0)
            return out; /* wrapped: nothing above */
    }
    snprintf(out + len, cap - len, "%s%" PRIu32 ":4294967295", len ? "," : "", from);
    return out;
}

/* One round of copying: the FETCHes streaming into APPENDs, then a probe
 * behind each APPEND. */
struct copy_round {
    struct new_copy cp[2];
    struct imap_cmd *fetch[2], *probe[2];
    bool copied[2];
    struct uidset appended[2]; /* the copies' UIDs, per target side */
    uint64_t before[2];        /* each side's HIGHESTMODSEQ before the copies */
    bool held[2];              /* the side's output is held (imap_client_hold) */
};

/* Sends the FETCH of each side in `look` (the remote first). */
static int round_fetch(struct mbox_ctx *m, struct copy_round *r, const bool look[2],
                       struct uidset skip[2])
{
    int rc = 0;
    for (int k = 0; k < 2; k++) {
        enum side s = k == 0 ? SIDE_REMOTE : SIDE_LOCAL;
        if (!look[s])
            continue;
        char *range = new_range(m->uidnext[s], &skip[s]);
        if (!range)
            return -ENOMEM;
        /* what the answer may hold: UIDs in that range, ascending */
        m->st[s].fetch_from = m->uidnext[s];
        m->st[s].fetch_skip = &skip[s];
        m->st[s].last_new_uid = 0;
        m->st[s].streamed_uid = 0;
        m->st[s].copy = &r->cp[s];
        m->fetched_new[s] = true;
        /* the copies' small pieces (a whole APPEND per message without
         * MULTIAPPEND) leave in full buffers, not one write each */
        imap_client_hold(m->st[OTHER(s)].c);
        r->held[OTHER(s)] = true;
        r->fetch[s] = imap_client_send(m->st[s].c, "UID FETCH %S (%a INTERNALDATE BODY.PEEK[])",
                                       range, fetch_flags_items(&m->st[s]));
        free(range);
        if (!r->fetch[s])
            rc = -ENOMEM;
    }
    return rc;
}

/* Waits for the FETCHes (the APPENDs are written as their bodies come). */
static int round_wait_fetch(struct mbox_ctx *m, struct copy_round *r)
{
    struct sync_engine *e = m->e;
    int rc = 0;
    for (int s = 0; s < 2; s++) {
        if (!r->fetch[s])
            continue;
        int w = imap_cmd_wait(r->fetch[s]);
        if (w < 0) {
            log_error(e->log, side_name[s], m->st[s].mailbox, "FETCH failed: %s",
                      imap_client_reason(m->st[s].c));
            rc = w;
        }
        imap_cmd_free(&r->fetch[s]);
        m->st[s].copy = NULL;
        m->st[s].fetch_skip = NULL;
        if (rc == 0)
            rc = side_error(m);
        if (r->cp[s].error && rc == 0) {
            log_error(e->log, side_name[OTHER(s)], m->st[OTHER(s)].mailbox,
                      "copying new messages failed: %s", imap_client_reason(m->st[OTHER(s)].c));
            rc = r->cp[s].error;
        }
        r->copied[s] = r->cp[s].batches || r->cp[s].append_open || r->cp[s].recorder;
        if (copy_close(&r->cp[s]) < 0 && rc == 0)
            rc = -ENOMEM;
    }
    for (int t = 0; t < 2; t++) {
        int pr = r->held[t] ? imap_client_push(m->st[t].c) : 0;
        r->held[t] = false;
        if (pr < 0 && rc == 0)
            rc = pr;
    }
    return rc;
}

/* The probe after copies into side t: the UIDs from its old UIDNEXT on,
 * with what the target's state needs (MODSEQ, or FLAGS for its record).
 * `again`: asked a second time (RFC822.SIZE tells it from the first in a
 * trace, and costs nothing). */
static struct imap_cmd *probe_send(struct mbox_ctx *m, enum side t, bool again)
{
    struct side_state *st = &m->st[t];
    uidset_clear(&st->probe);
    st->probing = true;
    st->probe_from = m->uidnext[t];
    return imap_client_send(st->c, "UID FETCH %u:4294967295 (UID%a%a%a)", m->uidnext[t],
                            m->e->tier[t] != TIER_PLAIN ? " MODSEQ" : "",
                            st->how == TIER_PLAIN ? " FLAGS" : "", again ? " RFC822.SIZE" : "");
}

/*
 * Right behind each APPEND goes a probe listing the target's UIDs from its
 * old UIDNEXT on: a message delivered meanwhile (with a UID among ours)
 * shows up without a round trip of its own. It also asks for what the
 * target's own state needs: the MODSEQ our copies got, since a server need
 * not report a new HIGHESTMODSEQ after APPEND (Cyrus does not), and the
 * next run must not take them for changes. A target compared with a flag
 * record is probed after the APPENDs instead (round_records). Returns
 * whether the next mailbox may be selected behind: not into a server that
 * does not report its HIGHESTMODSEQ after APPEND, whose copies' MODSEQ may
 * need a FETCH of its own.
 */
static bool round_probe(struct mbox_ctx *m, struct copy_round *r)
{
    bool quiet = false;
    for (int s = 0; s < 2; s++) {
        enum side t = OTHER(s);
        /* the target's HIGHESTMODSEQ before the copies (a SELECT not
         * waited for until now reported it too) */
        if (r->before[t] < m->st[t].ms.selected_hms)
            r->before[t] = m->st[t].ms.selected_hms;
        if (!r->copied[s])
            continue;
        if (m->st[t].how != TIER_PLAIN)
            r->probe[t] = probe_send(m, t, false);
        quiet |= m->e->append_hms[t] != STATE_APPEND_HMS_REPORTED && m->next &&
                 m->next->st[t].how == TIER_QRESYNC;
    }
    return !quiet;
}

/*
 * Whether a message may hide from the probe of side t. A server may
 * answer the probe before the APPENDs it follows are complete (Dovecot runs
 * them side by side), from a view of the mailbox that holds only some of
 * the copies, or none, and not a message delivered among them. Such a
 * message has a UID that nothing accounts for between the SELECT's UIDNEXT
 * and the last copy: every UID there must be one the probe listed, one of
 * our copies, or one fetched or copied before. When they all are, nothing
 * can hide; a gap (a message delivered meanwhile, or one expunged) costs
 * one more probe.
 */
static bool probe_blind(struct mbox_ctx *m, enum side t, struct uidset *copies, struct uidset *skip)
{
    struct side_state *st = &m->st[t];
    uidset_normalize(&st->probe);
    uidset_normalize(copies);
    uidset_normalize(skip);
    bool saw = true;
    for (size_t i = 0; i < copies->count && saw; i++)
        saw = uidset_contains(&st->probe, copies->uids[i]);
    if (saw)
        return false;
    /* walks the three sorted sets together, one UID after the other: as
     * many steps as they hold UIDs, whatever the UIDs are */
    const struct uidset *sets[3] = {&st->probe, copies, skip};
    size_t at[3] = {0, 0, 0};
    uint32_t last = copies->uids[copies->count - 1];
    /* a server need not say its UIDNEXT; UIDs start at 1 */
    for (uint32_t want = st->ms.uidnext ? st->ms.uidnext : 1; want < last; want++) {
        bool found = false;
        for (int k = 0; k < 3; k++) {
            while (at[k] < sets[k]->count && sets[k]->uids[at[k]] < want)
                at[k]++;
            found |= at[k] < sets[k]->count && sets[k]->uids[at[k]] == want;
        }
        if (!found)
            return true;
    }
    return false;
}

/* Waits for the probe of side t; asks again, now that the APPENDs are
 * answered, if a message may have hidden from it. *arrived: a message
 * nothing accounts for is there (or may be: the next mailbox is selected
 * already, and this one will be done again). */
static int probe_finish(struct mbox_ctx *m, struct copy_round *r, enum side t, struct uidset *skip,
                        bool *arrived)
{
    struct side_state *st = &m->st[t];
    int rc = imap_cmd_wait(r->probe[t]);
    imap_cmd_free(&r->probe[t]);
    if (rc == 0 && probe_blind(m, t, &r->appended[t], skip)) {
        if (m->released) {
            *arrived = true;
            st->probing = false;
            return 0;
        }
        struct imap_cmd *again = probe_send(m, t, true);
        rc = again ? imap_cmd_wait(again) : -ENOMEM;
        imap_cmd_free(&again);
    }
    st->probing = false;
    uidset_normalize(skip);
    for (size_t i = 0; i < st->probe.count; i++)
        if (!uidset_contains(skip, st->probe.uids[i]))
            *arrived = true;
    return rc;
}

/* Waits for the APPEND answers (recorded as they came); what was fetched
 * or copied goes into skip. A target compared with a flag record needs the
 * flags the copies really got: those PERMANENTFLAGS says the server keeps
 * are known; otherwise the probe asks, once the APPENDs are done (a server
 * may run a command sent behind an APPEND before that has finished),
 * behind a NOOP (a server may show a mailbox's new messages, ours
 * included, only then: Courier does). */
static int round_records(struct mbox_ctx *m, struct copy_round *r, struct uidset skip[2])
{
    int rc = 0;
    for (int s = 0; s < 2; s++) {
        enum side t = OTHER(s);
        int e = copy_finish(&r->cp[s], &r->appended[t]);
        if (e < 0 && rc == 0)
            rc = e;
        for (size_t i = 0; i < r->appended[t].count; i++)
            mbox_note(m, uidset_add(&skip[t], r->appended[t].uids[i]));
        if (r->copied[s] && m->st[t].how == TIER_PLAIN && m->st[t].record_probe && rc == 0) {
            m->st[t].record_probe = false;
            struct imap_cmd *noop = imap_client_send(m->st[t].c, "NOOP");
            imap_cmd_free(&noop); /* its failure shows in the probe's */
            r->probe[t] = probe_send(m, t, false);
        }
        /* every UID fetched from s is now either replicated or skipped */
        struct uidset *f = &m->st[s].fetched;
        for (size_t i = 0; i < f->count; i++)
            mbox_note(m, uidset_add(&skip[s], f->uids[i]));
    }
    return rc;
}

/* The MODSEQ our copies got, unless the server reported a higher
 * HIGHESTMODSEQ since they were sent: a server need not (Cyrus does not;
 * nor Dovecot without QRESYNC), and an older one saved would make them
 * look changed next time. The probe behind the APPEND asked already, but
 * the server may have run it first. */
static int round_modseqs(struct mbox_ctx *m, struct copy_round *r)
{
    int rc = 0;
    for (int s = 0; s < 2 && rc == 0; s++) {
        enum side t = OTHER(s);
        struct side_state *ts = &m->st[t];
        if (!r->appended[t].count || ts->how == TIER_PLAIN)
            continue;
        int seen = ts->ms.highestmodseq > r->before[t] ? STATE_APPEND_HMS_REPORTED
                                                       : STATE_APPEND_HMS_QUIET;
        if (m->e->append_hms[t] != seen) {
            m->e->append_hms[t] = seen;
            m->e->caps_dirty[t] = true;
        }
        /* (nor for a mailbox that fails anyway: its state is not saved) */
        if (seen == STATE_APPEND_HMS_REPORTED || m->st[0].refused || m->st[1].refused ||
            side_error(m))
            continue;
        if (m->released && m->next && m->next->select[t])
            /* the next mailbox is selected here already: too late to
             * ask; done again at the end of the run, where the pairs
             * above UIDNEXT are checked and their MODSEQ reported */
            return MAILBOX_AGAIN;
        uidset_normalize(&r->appended[t]);
        size_t pos = 0;
        char *set;
        while (rc == 0 && (set = uidset_format(&r->appended[t], &pos, UIDSET_TEXT_MAX))) {
            rc = imap_client_run(ts->c, "UID FETCH %S (UID MODSEQ)", set);
            free(set);
        }
    }
    return rc;
}

/* One round: `release` lets the next mailbox's SELECTs go out behind the
 * probes (this is the last direction). arrived[t]: a message delivered
 * meanwhile waits on side t. */
static int copy_round(struct mbox_ctx *m, const bool look[2], struct uidset skip[2], bool release,
                      bool arrived[2])
{
    struct copy_round r;
    memset(&r, 0, sizeof r);
    for (int s = 0; s < 2; s++) {
        copy_init(&r.cp[s], m, (enum side)s);
        uidset_init(&r.appended[s]);
        uidset_normalize(&skip[s]);
        uidset_clear(&m->st[s].fetched);
        r.before[s] = m->st[s].max_modseq;
        arrived[s] = false;
    }
    for (int s = 0; s < 2; s++) {
        /* copies of earlier rounds lie below this round's */
        const struct uidset *done = &skip[OTHER(s)];
        if (done->count && done->uids[done->count - 1] >= r.cp[s].bound)
            r.cp[s].bound = done->uids[done->count - 1] + 1;
    }
    int rc = round_fetch(m, &r, look, skip);
    int e = round_wait_fetch(m, &r);
    if (rc == 0)
        rc = e;
    /* the target's SELECT answer is needed from here on (the probe);
     * it comes before the APPEND replies */
    if (rc == 0)
        rc = select_wait_target(m);
    if (round_probe(m, &r) && release)
        mbox_release(m);
    e = round_records(m, &r, skip);
    if (rc == 0)
        rc = e;
    for (int t = 0; t < 2; t++) {
        e = r.probe[t] ? probe_finish(m, &r, (enum side)t, &skip[t], &arrived[t]) : 0;
        if (e < 0 && rc == 0)
            rc = e;
    }
    if (rc == 0)
        rc = round_modseqs(m, &r);
    for (int s = 0; s < 2; s++) {
        copy_fini(&r.cp[s]);
        uidset_fini(&r.appended[s]);
    }
    return rc;
}

/*
 * Copies new messages both ways until neither side has any that we did not
 * put there ourselves. Round 0 looks at a side only if SELECT announced new
 * messages there; a later round looks again at the sides that just received
 * copies, when a message delivered meanwhile may have got a UID below ours.
 *
 * One direction at a time: each reader streams into the other server, so
 * with both directions at once each reader could block writing to a
 * server that is itself blocked writing its FETCH to the other reader
 * (servers do not read the next command while sending a long response),
 * and without LITERAL+ each body waits for a continuation only the other,
 * busy, reader can see. The remote side goes first, like the reference
 * tool.
 */
int sync_new(struct mbox_ctx *m, struct uidset skip[2], bool may_release)
{
    bool look[2];
    for (int s = 0; s < 2; s++)
        look[s] = m->target_pending != s && may_have_new(m, (enum side)s);
    bool again_local = false;
    for (int round = 0; round < 100 && (look[0] || look[1]); round++) {
        if (m->released)
            return MAILBOX_AGAIN; /* the next mailbox is selected already */
        if (look[SIDE_REMOTE] && look[SIDE_LOCAL]) {
            look[SIDE_LOCAL] = false;
            again_local = true;
        }
        bool arrived[2];
        int rc = copy_round(m, look, skip, may_release && !again_local, arrived);
        if (rc != 0)
            return rc;
        for (int s = 0; s < 2; s++)
            look[s] = arrived[s];
        if (again_local) {
            look[SIDE_LOCAL] = true;
            again_local = false;
        }
    }
    /* messages still arriving after the last round: the copies made are
     * kept, but UIDNEXT must not move past those not copied yet (the
     * copies' UIDs lie above them) */
    return look[0] || look[1] ? MAILBOX_AGAIN : 0;
}
