/*
 * New messages: streaming each side's new messages from its FETCH into
 * the other side's (MULTI)APPEND, and recording the pairs.
 */
#include "internal.h"

static int copy_close_batch(struct new_copy *cp)
{
    if (!cp->append_open)
        return 0;
    struct imap_client *t = cp->target->c;
    struct imap_cmd *cmd = imap_client_end(t, cp->open_cmd);
    imap_client_unlock_write(t);
    cp->append_open = false;
    struct pending_batch *b = calloc(1, sizeof *b);
    if (!b) {
        imap_cmd_free(&cmd);
        uidset_fini(&cp->open_uids);
        return -ENOMEM;
    }
    b->cmd = cmd;
    b->src_uids = cp->open_uids;
    uidset_init(&cp->open_uids);
    *cp->batches_tail = b;
    cp->batches_tail = &b->next;
    cp->open_count = 0;
    cp->open_bytes = 0;
    return 0;
}

/*
 * Appends one message (its FETCH items checked already, imap/values.h) to
 * the target, streaming the body from the source's literal or writing it
 * from memory. Should the body stop short (the source's connection broke,
 * or the target's), the target has been promised bytes that will never
 * come: its connection is given up, not used with a literal still open.
 */
int copy_append_message(struct new_copy *cp, const struct imap_fetch *f, uint64_t size,
                        struct imap_literal *lit, const char *inline_body)
{
    struct sync_engine *e = cp->e;
    struct imap_client *t = cp->target->c;
    if (cp->error)
        return cp->error;
    if (size == 0) {
        log_warn(e->log, side_name[cp->src], NULL,
                 "Ignoring new 0-length message (UID %" PRIu32 ")", f->uid);
        return 0;
    }
    char *flags = f->flags ? flags_normalize(f->flags) : strdup("");
    if (!flags) {
        cp->error = -ENOMEM;
        return cp->error;
    }

    bool multi = imap_client_has_cap(t, "MULTIAPPEND");
    if (cp->append_open && (!multi || cp->open_count >= APPEND_BATCH_MESSAGES ||
                            cp->open_bytes + size > APPEND_BATCH_BYTES))
        copy_close_batch(cp);
    int r = 0;
    bool literal_open = false;
    if (!cp->append_open) {
        r = imap_client_lock_write(t);
        if (r < 0)
            goto fail;
        cp->open_cmd = imap_client_begin(t, "APPEND %m", cp->target->mailbox);
        cp->append_open = true;
        uidset_init(&cp->open_uids);
    }
    /* flags and date are encoded (and checked once more) before anything
     * of this message is written */
    r = imap_client_write_fmt(t, " (%F) %D ", flags, f->date);
    if (r == 0)
        r = imap_client_literal_begin(t, size);
    if (r < 0)
        goto fail;
    literal_open = true;
    if (inline_body) {
        r = imap_client_write_raw(t, inline_body, (size_t)size);
    } else {
        char *buf = malloc(COPY_CHUNK);
        if (!buf) {
            r = -ENOMEM;
            goto fail;
        }
        uint64_t left = size;
        while (left && r == 0) {
            ssize_t n = imap_literal_read(lit, buf, COPY_CHUNK);
            if (n <= 0) {
                r = n < 0 ? (int)n : ERR_EOF;
                break;
            }
            r = imap_client_write_raw(t, buf, (size_t)n);
            left -= (uint64_t)n;
        }
        free(buf);
    }
    if (r < 0)
        goto fail;
    if (cp->target->how == TIER_PLAIN)
        sent_note(cp->target, f->uid, flags); /* for its flag record */
    if (uidset_add(&cp->open_uids, f->uid) < 0) {
        r = -ENOMEM; /* written but not recorded: the APPEND must not complete */
        goto fail;
    }
    cp->open_count++;
    cp->open_bytes += size;
    cp->copied++;
    progress_copied(e->opts.progress, size);
    free(flags);
    return 0;
fail:
    free(flags);
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

/* Waits for the APPENDs and records the new pairs. Returns the number of
 * messages mapped or a negative error. */
int copy_finish(struct mbox_ctx *m, struct new_copy *cp, struct uidset *appended)
{
    struct sync_engine *e = m->e;
    int rc = copy_close_batch(cp);
    enum side src = cp->src, dst = OTHER(cp->src);
    for (struct pending_batch *b = cp->batches, *next; b; b = next) {
        next = b->next;
        int r = imap_cmd_wait(b->cmd);
        if (r < 0) {
            /* after an abort, the failure of the source says it all */
            if (!cp->target_aborted)
                log_error(e->log, side_name[dst], m->st[dst].mailbox, "APPEND failed: %s",
                          imap_client_reason(m->st[dst].c));
            if (rc == 0)
                rc = r;
        } else {
            const char *code = imap_cmd_code(b->cmd);
            struct uidset tuids;
            uidset_init(&tuids);
            const char *args = imap_cmd_code_args(b->cmd);
            const char *sp = strchr(args, ' ');
            uint32_t uidvalidity = (uint32_t)strtoul(args, NULL, 10);
            /* one UID per message, in order, or nothing is recorded */
            const struct uidset_bounds bounds = {
                .in_order = true, .max_uid = UINT32_MAX, .max_count = b->src_uids.count};
            if (!code || strcasecmp(code, "APPENDUID") != 0 || !sp ||
                uidset_parse_bounded(&tuids, sp + 1, strlen(sp + 1), &bounds) < 0 ||
                tuids.count != b->src_uids.count) {
                log_error(e->log, side_name[dst], m->st[dst].mailbox,
                          "the server did not report the UIDs of appended messages (APPENDUID)");
                if (rc == 0)
                    rc = ERR_PROTOCOL;
            } else if (uidvalidity != m->db[dst].uidvalidity) {
                log_error(e->log, side_name[dst], m->st[dst].mailbox,
                          "UIDVALIDITY changed during the APPEND");
                if (rc == 0)
                    rc = ERR_STATE_MISMATCH;
            } else {
                for (size_t i = 0; i < tuids.count; i++) {
                    uint32_t su = b->src_uids.uids[i], tu = tuids.uids[i];
                    uint32_t lu = src == SIDE_LOCAL ? su : tu, ru = src == SIDE_LOCAL ? tu : su;
                    if (state_db_mapping_insert(e->db, m->idx, lu, ru) < 0 && rc == 0)
                        rc = ERR_DB;
                    if (m->st[dst].how == TIER_PLAIN)
                        sent_record(&m->st[dst], su, tu);
                    mbox_note(m, uidset_add(appended, tu));
                }
                m->added[dst] += (unsigned)tuids.count;
                log_added(m, dst, &b->src_uids, &tuids);
            }
            uidset_fini(&tuids);
        }
        imap_cmd_free(&b->cmd);
        uidset_fini(&b->src_uids);
        free(b);
    }
    cp->batches = NULL;
    cp->batches_tail = &cp->batches;
    /* after a failure the caller rolls back: a begin here would only
     * replace the database's own message with "one is already open" */
    if (rc == 0 && (state_db_commit(e->db) < 0 || state_db_begin(e->db) < 0))
        rc = ERR_DB;
    return rc;
}

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

/* The probe after copies into side t: the UIDs from its old UIDNEXT on,
 * with what the target's state needs (MODSEQ, or FLAGS for its record). */
static struct imap_cmd *probe_send(struct mbox_ctx *m, enum side t)
{
    struct side_state *st = &m->st[t];
    uidset_clear(&st->probe);
    st->probing = true;
    st->probe_from = m->uidnext[t];
    return imap_client_send(st->c, "UID FETCH %u:4294967295 (UID%a%a)", m->uidnext[t],
                            m->e->tier[t] != TIER_PLAIN ? " MODSEQ" : "",
                            st->how == TIER_PLAIN ? " FLAGS" : "");
}

/*
 * Copies new messages both ways until neither side has any that we did not
 * put there ourselves. The remote side is pulled first, like the reference
 * tool, so a slow remote is waited for once.
 */
int sync_new(struct mbox_ctx *m, struct uidset skip[2], bool may_release)
{
    struct sync_engine *e = m->e;
    /* Round 0 looks at a side only if SELECT announced new messages there.
     * A later round looks again at the sides that just received copies:
     * a message delivered meanwhile may have got a UID below ours, and
     * only a new FETCH can tell. Sides with nothing new cost no round trip. */
    bool look[2];
    for (int s = 0; s < 2; s++)
        look[s] = m->target_pending != s && may_have_new(m, (enum side)s);
    bool again_local = false;
    for (int round = 0; round < 100 && (look[0] || look[1]); round++) {
        if (m->released)
            return MAILBOX_AGAIN; /* the next mailbox is selected already */
        struct new_copy cp[2];
        struct imap_cmd *fetch[2] = {NULL, NULL};
        for (int s = 0; s < 2; s++) {
            memset(&cp[s], 0, sizeof cp[s]);
            cp[s].e = e;
            cp[s].src = (enum side)s;
            cp[s].target = &m->st[OTHER(s)];
            cp[s].batches_tail = &cp[s].batches;
            uidset_normalize(&skip[s]);
            uidset_clear(&m->st[s].fetched);
        }
        /* One direction at a time: each reader streams into the other
         * server, so with both directions at once each reader could block
         * writing to a server that is itself blocked writing its FETCH to
         * the other reader (servers do not read the next command while
         * sending a long response), and without LITERAL+ each body waits
         * for a continuation only the other, busy, reader can see. The
         * remote side goes first, like the reference tool. */
        if (look[SIDE_REMOTE] && look[SIDE_LOCAL]) {
            look[SIDE_LOCAL] = false;
            again_local = true;
        }
        int rc = 0;
        uint64_t before[2] = {m->st[0].max_modseq, m->st[1].max_modseq};
        bool held[2] = {false, false};
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
            m->st[s].copy = &cp[s];
            /* the copies' small pieces (a whole APPEND per message without
             * MULTIAPPEND) leave in full buffers, not one write each */
            imap_client_hold(m->st[OTHER(s)].c);
            held[OTHER(s)] = true;
            fetch[s] = imap_client_send(m->st[s].c, "UID FETCH %S (%a INTERNALDATE BODY.PEEK[])",
                                        range, fetch_flags_items(&m->st[s]));
            free(range);
            if (!fetch[s])
                rc = -ENOMEM;
        }
        for (int s = 0; s < 2; s++) {
            if (!fetch[s])
                continue;
            int r = imap_cmd_wait(fetch[s]);
            if (r < 0) {
                log_error(e->log, side_name[s], m->st[s].mailbox, "FETCH failed: %s",
                          imap_client_reason(m->st[s].c));
                rc = r;
            }
            imap_cmd_free(&fetch[s]);
            m->st[s].copy = NULL;
            m->st[s].fetch_skip = NULL;
            if (rc == 0)
                rc = side_error(m);
            if (cp[s].error && rc == 0) {
                log_error(e->log, side_name[OTHER(s)], m->st[OTHER(s)].mailbox,
                          "copying new messages failed: %s", imap_client_reason(m->st[OTHER(s)].c));
                rc = cp[s].error;
            }
        }
        bool copied[2];
        for (int s = 0; s < 2; s++) {
            copied[s] = cp[s].batches || cp[s].append_open;
            if (copy_close_batch(&cp[s]) < 0 && rc == 0)
                rc = -ENOMEM;
            int pr = held[OTHER(s)] ? imap_client_push(m->st[OTHER(s)].c) : 0;
            if (pr < 0 && rc == 0)
                rc = pr;
        }
        /* the target's SELECT answer is needed from here on (the probe,
         * APPENDUID's UIDVALIDITY); it comes before the APPEND replies */
        if (rc == 0)
            rc = select_wait_target(m);
        /* the target's HIGHESTMODSEQ before the copies (a SELECT not
         * waited for until now reported it too), to tell whether the
         * server reports a new one after them */
        for (int t = 0; t < 2; t++)
            if (before[t] < m->st[t].ms.selected_hms)
                before[t] = m->st[t].ms.selected_hms;
        /* Right behind each APPEND goes a probe listing the target's UIDs
         * from its old UIDNEXT on: the server answers it after the APPEND,
         * so a message delivered meanwhile (with a UID among ours) shows up
         * without a round trip of its own. It also asks for what the
         * target's own state needs: the MODSEQ our copies got, since a
         * server need not report a new HIGHESTMODSEQ after APPEND (Cyrus
         * does not), and the next run must not take them for changes; or,
         * compared with a flag record, the flags they got. */
        struct imap_cmd *probe[2] = {NULL, NULL};
        for (int s = 0; s < 2; s++)
            if (copied[s] && m->st[OTHER(s)].how != TIER_PLAIN)
                probe[OTHER(s)] = probe_send(m, OTHER(s));
        /* the last direction: unless the probes find a delivery, this
         * mailbox has nothing more to send (nor, into a server that does
         * not report its HIGHESTMODSEQ after APPEND, a FETCH of the MODSEQ
         * the copies got) */
        bool quiet = false;
        for (int s = 0; s < 2; s++) {
            enum side t = OTHER(s);
            quiet |= copied[s] && e->append_hms[t] != STATE_APPEND_HMS_REPORTED && m->next &&
                     m->next->st[t].how == TIER_QRESYNC;
        }
        if (may_release && !again_local && !quiet)
            mbox_release(m);
        struct uidset appended[2];
        for (int s = 0; s < 2; s++) {
            enum side t = OTHER(s);
            uidset_init(&appended[t]);
            int r = copy_finish(m, &cp[s], &appended[t]);
            if (r < 0 && rc == 0)
                rc = r;
            for (size_t i = 0; i < appended[t].count; i++)
                mbox_note(m, uidset_add(&skip[t], appended[t].uids[i]));
            /* compared with a flag record: the record needs the flags
             * the copies really got. Those PERMANENTFLAGS says the server
             * keeps are known; otherwise the probe asks, once the APPENDs
             * are done (a server may run a command sent behind an APPEND
             * before that has finished), behind a NOOP (a server may
             * show a mailbox's new messages, ours included, only then:
             * Courier does). */
            if (copied[s] && m->st[t].how == TIER_PLAIN && m->st[t].record_probe && rc == 0) {
                m->st[t].record_probe = false;
                struct imap_cmd *noop = imap_client_send(m->st[t].c, "NOOP");
                imap_cmd_free(&noop); /* its failure shows in the probe's */
                probe[t] = probe_send(m, t);
            }
            /* every UID fetched from s is now either replicated or skipped */
            struct uidset *f = &m->st[s].fetched;
            for (size_t i = 0; i < f->count; i++)
                mbox_note(m, uidset_add(&skip[s], f->uids[i]));
        }
        bool arrived[2] = {false, false};
        for (int t = 0; t < 2; t++) {
            if (!probe[t])
                continue;
            int r = imap_cmd_wait(probe[t]);
            imap_cmd_free(&probe[t]);
            m->st[t].probing = false;
            if (r < 0 && rc == 0)
                rc = r;
            uidset_normalize(&skip[t]);
            for (size_t i = 0; i < m->st[t].probe.count; i++)
                if (!uidset_contains(&skip[t], m->st[t].probe.uids[i]))
                    arrived[t] = true;
        }
        /* The MODSEQ our copies got, unless the server reported a higher
         * HIGHESTMODSEQ since they were sent: a server need not (Cyrus does
         * not; nor Dovecot without QRESYNC), and an older one saved would
         * make them look changed next time. The probe behind the APPEND
         * asked already, but the server may have run it first. */
        for (int s = 0; s < 2 && rc == 0; s++) {
            enum side t = OTHER(s);
            struct side_state *ts = &m->st[t];
            if (!appended[t].count || ts->how == TIER_PLAIN)
                continue;
            int seen = ts->ms.highestmodseq > before[t] ? STATE_APPEND_HMS_REPORTED
                                                        : STATE_APPEND_HMS_QUIET;
            if (e->append_hms[t] != seen) {
                e->append_hms[t] = seen;
                e->caps_dirty[t] = true;
            }
            /* (nor for a mailbox that fails anyway: its state is not saved) */
            if (seen == STATE_APPEND_HMS_REPORTED || m->st[0].refused || m->st[1].refused ||
                side_error(m))
                continue;
            if (m->released && m->next && m->next->select[t]) {
                /* the next mailbox is selected here already: too late to
                 * ask; done again at the end of the run, where the pairs
                 * above UIDNEXT are checked and their MODSEQ reported */
                rc = MAILBOX_AGAIN;
                break;
            }
            uidset_normalize(&appended[t]);
            size_t pos = 0;
            char *set;
            while (rc == 0 && (set = uidset_format(&appended[t], &pos, UIDSET_TEXT_MAX))) {
                rc = imap_client_run(ts->c, "UID FETCH %S (UID MODSEQ)", set);
                free(set);
            }
        }
        for (int t = 0; t < 2; t++)
            uidset_fini(&appended[t]);
        if (rc != 0)
            return rc;
        for (int s = 0; s < 2; s++)
            look[s] = arrived[s];
        if (again_local) {
            look[SIDE_LOCAL] = true;
            again_local = false;
        }
    }
    return 0;
}
