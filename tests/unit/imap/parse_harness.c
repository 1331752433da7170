#include "parse_harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void dstr_put(struct dstr *d, const char *s, size_t n)
{
    if (d->len + n + 1 > d->cap) {
        size_t cap = d->cap ? d->cap : 256;
        while (cap < d->len + n + 1)
            cap *= 2;
        char *ns = realloc(d->s, cap);
        if (!ns)
            abort();
        d->s = ns;
        d->cap = cap;
    }
    memcpy(d->s + d->len, s, n);
    d->len += n;
    d->s[d->len] = '\0';
}

void dstr_puts(struct dstr *d, const char *s)
{
    dstr_put(d, s, strlen(s));
}

void dstr_free(struct dstr *d)
{
    free(d->s);
    memset(d, 0, sizeof *d);
}

static void dump_quoted(struct dstr *d, const char *s, size_t n)
{
    dstr_put(d, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char b[8];
        if (c == '"' || c == '\\') {
            b[0] = '\\';
            b[1] = (char)c;
            dstr_put(d, b, 2);
        } else if (c < 0x20 || c >= 0x7f) {
            snprintf(b, sizeof b, "\\x%02x", c);
            dstr_puts(d, b);
        } else {
            dstr_put(d, (const char *)&s[i], 1);
        }
    }
    dstr_put(d, "\"", 1);
}

void harness_dump_value(struct dstr *d, const struct imap_value *v)
{
    char b[48];
    switch (v->type) {
    case IMAP_ATOM:
        dstr_put(d, v->str, v->len);
        break;
    case IMAP_STRING:
        dump_quoted(d, v->str, v->len);
        break;
    case IMAP_LITERAL:
        snprintf(b, sizeof b, "{%zu}", v->len);
        dstr_puts(d, b);
        if (v->streamed)
            dstr_puts(d, "<streamed>");
        else
            dump_quoted(d, v->str, v->len);
        break;
    case IMAP_NIL:
        dstr_puts(d, "NIL");
        break;
    case IMAP_LIST:
        dstr_put(d, "(", 1);
        for (size_t i = 0; i < v->count; i++) {
            if (i)
                dstr_put(d, " ", 1);
            harness_dump_value(d, &v->items[i]);
        }
        dstr_put(d, ")", 1);
        break;
    }
}

static const char *status_name(enum imap_status s)
{
    switch (s) {
    case IMAP_STATUS_OK:
        return "OK";
    case IMAP_STATUS_NO:
        return "NO";
    case IMAP_STATUS_BAD:
        return "BAD";
    case IMAP_STATUS_BYE:
        return "BYE";
    case IMAP_STATUS_PREAUTH:
        return "PREAUTH";
    case IMAP_STATUS_NONE:
        break;
    }
    return "?";
}

void harness_dump_response(struct dstr *d, const struct imap_response *r)
{
    switch (r->kind) {
    case IMAP_RESP_UNTAGGED:
        dstr_puts(d, "*");
        break;
    case IMAP_RESP_CONTINUATION:
        dstr_puts(d, "+");
        break;
    case IMAP_RESP_TAGGED:
        dstr_puts(d, r->tag);
        break;
    }
    if (r->status != IMAP_STATUS_NONE) {
        dstr_puts(d, " ");
        dstr_puts(d, status_name(r->status));
    }
    if (r->code) {
        dstr_puts(d, " [");
        dstr_puts(d, r->code);
        for (size_t i = 0; i < r->code_nargs; i++) {
            dstr_puts(d, " ");
            harness_dump_value(d, &r->code_args[i]);
        }
        dstr_puts(d, "]");
    }
    if (r->status != IMAP_STATUS_NONE || r->kind == IMAP_RESP_CONTINUATION) {
        dstr_puts(d, " ");
        dump_quoted(d, r->text, strlen(r->text));
    }
    for (size_t i = 0; i < r->nargs; i++) {
        dstr_puts(d, " ");
        harness_dump_value(d, &r->args[i]);
    }
    dstr_puts(d, "\n");
}

static size_t next_chunk(enum harness_chunks chunks, size_t split, size_t done, size_t len)
{
    switch (chunks) {
    case HARNESS_BYTES:
        return 1;
    case HARNESS_SPLIT:
        if (done < split && split < len)
            return split - done;
        return len - done;
    case HARNESS_WHOLE:
        break;
    }
    return len - done;
}

int harness_run(const char *in, size_t len, const struct imap_parser_limits *limits,
                enum harness_chunks chunks, size_t split, enum harness_literals literals,
                struct dstr *out)
{
    struct imap_parser *p = imap_parser_new(limits);
    if (!p)
        abort();
    size_t delivered = 0, off = 0;
    int r = IMAP_PARSE_NEED_MORE;
    bool mid = false; /* inside a response */
    char b[64];
    for (;;) {
        if (off == delivered) {
            if (delivered == len)
                break;
            delivered += next_chunk(chunks, split, delivered, len);
        }
        size_t used = 0;
        r = imap_parser_feed(p, in + off, delivered - off, &used);
        if (used > delivered - off)
            abort();
        off += used;
        mid = true;
        if (r == IMAP_PARSE_NEED_MORE) {
            if (off != delivered)
                abort(); /* NEED_MORE must consume everything */
            continue;
        }
        if (r == IMAP_PARSE_ERROR) {
            dstr_puts(out, "ERROR: ");
            dstr_puts(out, imap_parser_error(p));
            dstr_puts(out, "\n");
            mid = false;
            break;
        }
        if (r == IMAP_PARSE_DONE) {
            harness_dump_response(out, imap_parser_response(p));
            mid = false;
            continue;
        }
        /* IMAP_PARSE_LITERAL */
        uint64_t size = imap_parser_literal_size(p);
        snprintf(b, sizeof b, "LITERAL %llu ", (unsigned long long)size);
        dstr_puts(out, b);
        harness_dump_response(out, imap_parser_partial(p));
        bool stream = literals == HARNESS_STREAM || (literals == HARNESS_ALTERNATE && size % 2);
        if (!stream) {
            if (imap_parser_literal_inline(p) == IMAP_PARSE_ERROR) {
                dstr_puts(out, "ERROR: ");
                dstr_puts(out, imap_parser_error(p));
                dstr_puts(out, "\n");
                r = IMAP_PARSE_ERROR;
                mid = false;
                break;
            }
            continue;
        }
        struct dstr body = {0};
        uint64_t left = size;
        while (left) {
            if (off == delivered) {
                if (delivered == len)
                    break;
                delivered += next_chunk(chunks, split, delivered, len);
            }
            size_t take = delivered - off;
            if (take > left)
                take = (size_t)left;
            dstr_put(&body, in + off, take);
            off += take;
            left -= take;
        }
        dstr_puts(out, "STREAM ");
        dump_quoted(out, body.s ? body.s : "", body.len);
        dstr_puts(out, "\n");
        dstr_free(&body);
        if (left)
            break; /* input ended inside the literal */
        imap_parser_literal_streamed(p);
    }
    if (mid && r != IMAP_PARSE_DONE)
        dstr_puts(out, "INCOMPLETE\n");
    imap_parser_free(&p);
    return r;
}
