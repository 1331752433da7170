/*
 * Fuzz target for what the engine takes from a server: the response
 * parser (with the client's limits), then the checks the engine applies
 * before a value may go anywhere (imap/values.h: FETCH items, flags,
 * dates, mailbox names; VANISHED sets through uidset_parse_bounded).
 *
 * Besides crashes, it checks the trust boundary itself: every flag list
 * and date the checks accept must encode (imap/command.h) into text
 * without a line break, quote or parenthesis out of place, exactly as the
 * engine would put them into an APPEND or a UID STORE; a FETCH cut short
 * at a literal must not be accepted with items the whole one refuses.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imap/command.h"
#include "imap/parser.h"
#include "imap/values.h"
#include "sync/flags.h"
#include "util/uidset.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fail(const char *what, const char *text)
{
    fprintf(stderr, "%s: %s\n", what, text ? text : "(null)");
    abort();
}

/* The accepted values, encoded as the engine does. */
static void check_encoding(const struct imap_fetch *f)
{
    char *flags = f->flags ? flags_normalize(f->flags) : strdup("");
    if (!flags)
        return;
    struct imap_cmdbuf b = {0};
    char why[200];
    int r = imap_cmdbuf_append(&b, why, sizeof why, " (%F) %D ", flags,
                               f->has_date ? f->date
                                           : "01-Jan-2024 "
                                             "10:00:00 "
                                             "+0000");
    if (r != 0 && r != -ENOMEM)
        fail("accepted values refused by the encoder", why);
    if (r == 0) {
        if (strpbrk(b.data, "\r\n") || strlen(b.data) != b.len)
            fail("a line break or NUL in an encoded value", b.data);
        /* " (" flags ") " quoted-date " ": exactly two parentheses, two quotes */
        size_t open = 0, close = 0, quotes = 0;
        for (const char *p = b.data; *p; p++) {
            open += *p == '(';
            close += *p == ')';
            quotes += *p == '"';
        }
        if (open != 1 || close != 1 || quotes != 2)
            fail("a flag or date escaped its place", b.data);
    }
    imap_cmdbuf_fini(&b);
    free(flags);
}

static void check_response(const struct imap_response *r)
{
    if (r->kind != IMAP_RESP_UNTAGGED || r->status != IMAP_STATUS_NONE || r->nargs < 2)
        return;
    struct imap_fetch f;
    char why[200];
    if (r->nargs >= 3 && imap_value_is_atom(&r->args[1], "FETCH")) {
        if (imap_fetch_parse(&r->args[2], false, &f, why, sizeof why) == 0)
            check_encoding(&f);
    } else if (imap_value_is_atom(&r->args[0], "LIST") && r->nargs >= 4) {
        const char *n;
        size_t len;
        if (imap_value_string(&r->args[3], &n, &len) && !imap_mailbox_name_problem(n, len)) {
            struct imap_cmdbuf b = {0};
            char name[256];
            if (len < sizeof name) {
                memcpy(name, n, len);
                name[len] = '\0';
                if (imap_cmdbuf_append(&b, why, sizeof why, "CREATE %m", name) == 0 &&
                    strpbrk(b.data, "\r\n"))
                    fail("a line break in an encoded mailbox name", b.data);
                imap_cmdbuf_fini(&b);
            }
        }
    } else if (imap_value_is_atom(&r->args[0], "VANISHED")) {
        const char *s;
        size_t len;
        if (imap_value_string(&r->args[r->nargs - 1], &s, &len)) {
            struct uidset set;
            uidset_init(&set);
            const struct uidset_bounds bounds = {.max_uid = 100000, .max_count = 50000};
            if (uidset_parse_bounded(&set, s, len, &bounds) == 0 && set.count > 50000)
                fail("a bounded set beyond its bound", s);
            uidset_fini(&set);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const struct imap_parser_limits lim = {
        .max_line = 4096,
        .max_inline_literal = 2048,
        .max_depth = 8,
        .max_values = 500,
    };
    struct imap_parser *p = imap_parser_new(&lim);
    if (!p)
        return 0;
    const char *in = (const char *)data;
    size_t off = 0;
    while (off <= size) {
        size_t used = 0;
        enum imap_parse_result pr = imap_parser_feed(p, in + off, size - off, &used);
        off += used;
        if (pr == IMAP_PARSE_DONE) {
            check_response(imap_parser_response(p));
            if (off == size)
                break;
            continue;
        }
        if (pr == IMAP_PARSE_LITERAL) {
            /* what the engine looks at before deciding to stream a body */
            const struct imap_response *part = imap_parser_partial(p);
            struct imap_fetch f;
            char why[200];
            if (part->nargs >= 3 && imap_value_is_atom(&part->args[1], "FETCH") &&
                imap_fetch_parse(&part->args[2], true, &f, why, sizeof why) == 0)
                check_encoding(&f);
            if (imap_parser_literal_inline(p) == IMAP_PARSE_ERROR) {
                /* too big to keep: skip it, as a streaming handler would */
                uint64_t n = imap_parser_literal_size(p);
                if (n > size - off)
                    break;
                off += (size_t)n;
                imap_parser_literal_streamed(p);
            }
            continue;
        }
        break; /* NEED_MORE at the end of the input, or an error */
    }
    imap_parser_free(&p);
    return 0;
}
