/*
 * Fingerprints of messages: size, INTERNALDATE and Message-ID, enough to
 * tell a copy from an unrelated message without downloading either.
 * Used to find the copies an interrupted run made (recovery.c) and to
 * adopt messages already on both servers (adopt.c): fetching them from a
 * server, normalizing them, and pairing two lists in UID order.
 */
#include "internal.h"

bool fp_equal(const struct fingerprint *a, const struct fingerprint *b)
{
    if (a->size != b->size || a->msgidlen != b->msgidlen ||
        memcmp(a->msgid, b->msgid, a->msgidlen) != 0)
        return false;
    if (a->date >= 0 && b->date >= 0)
        return a->date == b->date;
    return strcmp(a->datetext, b->datetext) == 0;
}

int fp_set(struct fingerprint *fp, uint32_t uid, uint64_t size, const char *date, size_t datelen,
           const char *msgid, size_t msgidlen)
{
    memset(fp, 0, sizeof *fp);
    fp->uid = uid;
    fp->size = size;
    fp->datetext = strndup(date, datelen);
    fp->msgid = malloc(msgidlen + 1);
    if (!fp->datetext || !fp->msgid) {
        free(fp->datetext);
        free(fp->msgid);
        fp->datetext = fp->msgid = NULL;
        return -ENOMEM;
    }
    memcpy(fp->msgid, msgid, msgidlen);
    fp->msgid[msgidlen] = '\0';
    fp->msgidlen = msgidlen;
    fp->date = fp_date(fp->datetext);
    return 0;
}

void fp_list_fini(struct fp_list *fl)
{
    for (size_t i = 0; i < fl->count; i++) {
        free(fl->items[i].datetext);
        free(fl->items[i].msgid);
    }
    free(fl->items);
    fl->items = NULL;
    fl->count = fl->cap = 0;
}

int fp_list_add(struct fp_list *fl, const struct fingerprint *fp)
{
    struct fingerprint *grown =
        array_reserve(fl->items, &fl->cap, fl->count + 1, sizeof *grown, 64);
    if (!grown)
        return -ENOMEM;
    fl->items = grown;
    fl->items[fl->count++] = *fp;
    return 0;
}

/* The untagged responses while fingerprints are fetched: FETCHes carrying
 * RFC822.SIZE are ours (checked against their grammar), everything else
 * goes to the mailbox's handler, which also reports a malformed FETCH. */
static void fp_untagged(void *ctx, const struct imap_response *r)
{
    struct fp_list *fl = ctx;
    struct side_state *st = fl->st;
    struct imap_fetch f;
    char why[200];
    if (r->status != IMAP_STATUS_NONE || r->nargs < 3 ||
        !imap_value_is_atom(&r->args[1], "FETCH") ||
        imap_fetch_parse(&r->args[2], false, &f, why, sizeof why) < 0 || !f.uid || !f.has_size ||
        !f.has_date) {
        selected_untagged(st, r);
        return;
    }
    const char *hdr = "";
    size_t hdrlen = 0;
    if (f.header)
        imap_value_string(f.header, &hdr, &hdrlen);
    char msgid[FP_MSGID_MAX];
    size_t idlen = fp_msgid(hdr, hdrlen, msgid, sizeof msgid);
    /* a fingerprint, its two strings and the allocator's share */
    if (!side_charge(st, 2 * sizeof(struct fingerprint) + sizeof f.date + idlen + 1 + 48))
        return;
    struct fingerprint fp;
    if (fp_set(&fp, f.uid, f.size, f.date, strlen(f.date), msgid, idlen) < 0)
        goto nomem;
    if (fp_list_add(fl, &fp) < 0) {
        free(fp.msgid);
        free(fp.datetext);
        goto nomem;
    }
    return;
nomem:
    side_fail(st, -ENOMEM, "out of memory");
}

static const struct imap_handler fp_handler = {fp_untagged, NULL};

int fp_fetch(struct mbox_ctx *m, const char *const sets[2], struct fp_list out[2])
{
    struct sync_engine *e = m->e;
    struct imap_cmd *cmd[2] = {NULL, NULL};
    for (int s = 0; s < 2; s++) {
        out[s].st = &m->st[s];
        if (!sets[s])
            continue;
        imap_client_set_handler(m->st[s].c, &fp_handler, &out[s]);
        cmd[s] = imap_client_send(m->st[s].c,
                                  "UID FETCH %S (UID RFC822.SIZE INTERNALDATE "
                                  "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])",
                                  sets[s]);
    }
    int rc = 0;
    unsigned refused = m->st[0].refused + m->st[1].refused;
    for (int s = 0; s < 2; s++) {
        if (!sets[s])
            continue;
        int r = cmd[s] ? imap_cmd_wait(cmd[s]) : -ENOMEM;
        imap_cmd_free(&cmd[s]);
        imap_client_set_handler(m->st[s].c, &selected_handler, &m->st[s]);
        if (r < 0) {
            log_error(e->log, side_name[s], m->st[s].mailbox, "FETCH failed: %s",
                      imap_client_reason(m->st[s].c));
            rc = r;
        }
    }
    /* no pairing on lists cut short, nor with a message left out because
     * its answer was refused (reported already): a copy missing from the
     * list could be taken for deleted */
    if (rc == 0 && m->st[0].refused + m->st[1].refused != refused)
        rc = ERR_PROTOCOL;
    return rc < 0 ? rc : side_error(m);
}

/* ------------------------------------------------------------------ */
/* pairing */

static int fp_cmp(const struct fingerprint *a, const struct fingerprint *b)
{
    if (a->size != b->size)
        return a->size < b->size ? -1 : 1;
    int64_t da = a->date >= 0 ? a->date : 0, db = b->date >= 0 ? b->date : 0;
    if (da != db)
        return da < db ? -1 : 1;
    if (a->msgidlen != b->msgidlen)
        return a->msgidlen < b->msgidlen ? -1 : 1;
    int c = memcmp(a->msgid, b->msgid, a->msgidlen);
    if (c)
        return c;
    return a->uid < b->uid ? -1 : a->uid > b->uid;
}

static int fp_qsort_cmp(const void *x, const void *y)
{
    const struct fp_ref *a = x, *b = y;
    return fp_cmp(a->fp, b->fp);
}

int fp_index_init(struct fp_index *ix, struct fp_list *fl)
{
    ix->n = fl->count;
    ix->sorted = malloc((fl->count + 1) * sizeof *ix->sorted);
    if (!ix->sorted)
        return -ENOMEM;
    for (size_t i = 0; i < fl->count; i++)
        ix->sorted[i].fp = &fl->items[i];
    qsort(ix->sorted, ix->n, sizeof *ix->sorted, fp_qsort_cmp);
    return 0;
}

void fp_index_fini(struct fp_index *ix)
{
    free(ix->sorted);
    ix->sorted = NULL;
}

struct fingerprint *fp_index_take(struct fp_index *ix, const struct fingerprint *want,
                                  uint32_t min_uid)
{
    /* the first entry not below (want, UID 0): equal fingerprints are
     * sorted by UID, so the lowest unused UID at or above min_uid wins */
    struct fingerprint key = *want;
    key.uid = 0;
    size_t lo = 0, hi = ix->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (fp_cmp(ix->sorted[mid].fp, &key) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    for (size_t i = lo; i < ix->n; i++) {
        struct fingerprint *c = ix->sorted[i].fp;
        struct fingerprint probe = *c;
        probe.uid = 0;
        if (fp_cmp(&probe, &key) != 0)
            break; /* past the entries with this size, date and Message-ID */
        if (!c->used && c->uid >= min_uid && fp_equal(c, want)) {
            c->used = true;
            return c;
        }
    }
    return NULL;
}
