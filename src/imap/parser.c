/*
 * Incremental IMAP response parser.
 *
 * One state machine, driven one input byte at a time (literal contents are
 * copied in bulk). Every state survives between calls to feed(), so input
 * split anywhere costs the same as input given whole, and no byte is looked
 * at twice except for the single re-dispatch when a token ends.
 *
 * Memory: the bytes of tokens (atoms, unescaped quoted strings, texts,
 * inline literals) are appended to an arena of chunks that never move once
 * a token is complete, so the values can point into it. Only the token being
 * read may move (to a bigger chunk), and nothing points at it yet. Values
 * completed at the current nesting level sit on a stack; an open list has a
 * placeholder on the stack followed by its children, so the partial
 * response shown at a literal is just the stack with the open lists'
 * children counted. When a list closes, its children move once into an
 * arena block and the placeholder becomes the list.
 *
 * Grammar (RFC 3501 section 9, with RFC 7162, 4315, 5258, 5819, 4731, 5161
 * additions), as implemented here:
 *
 *   response      = continue-req / response-tagged / response-untagged
 *   continue-req  = "+" [SP text] CRLF          ; text kept verbatim
 *   response-tagged   = tag SP ("OK" / "NO" / "BAD") [SP resp-text] CRLF
 *   response-untagged = "*" SP (status-word [SP resp-text] / values) CRLF
 *   status-word   = "OK" / "NO" / "BAD" / "BYE" / "PREAUTH"
 *   resp-text     = ["[" code [SP code-args] "]" [SP]] text
 *   values        = value *(SP value) [SP]      ; trailing SP tolerated
 *   value         = atom / quoted / literal / literal8 / "NIL" / list
 *   list          = "(" [value *(SP value)] ")" ; ")(" may touch (BODYSTRUCTURE)
 *   quoted        = DQUOTE *(any byte but CR LF NUL DQUOTE "\" / "\" (DQUOTE / "\")) DQUOTE
 *   literal       = "{" number64 "}" CRLF *OCTET
 *   literal8      = "~{" number64 "}" CRLF *OCTET
 *   atom          = 1*atom-char / section-atom
 *   section-atom  = 1*atom-char "[" *(any byte but CR LF NUL "]") "]" *atom-char
 *                   ; BODY[], BODY[HEADER.FIELDS (DATE)], BINARY[1]<0>
 */
#include "imap/parser.h"

#include <errno.h>
#include <inttypes.h>
#include <stdalign.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "util/array.h"

#define CHUNK_MIN     8192
#define LITERAL_LIMIT ((uint64_t)1 << 63) /* largest size a server may announce */

enum parser_state {
    ST_START,        /* first byte of a response */
    ST_TAG,          /* inside the tag */
    ST_STAR_SP,      /* after "*" */
    ST_PLUS,         /* after "+" */
    ST_STATUS_WORD,  /* tagged OK/NO/BAD */
    ST_AFTER_STATUS, /* after the status word: SP or CRLF */
    ST_RESP_TEXT,    /* first byte of resp-text: "[" or text */
    ST_CODE_NAME,    /* atom after "[" */
    ST_CODE_RAW,     /* arguments of a code we do not interpret */
    ST_AFTER_CODE,   /* after "]" */
    ST_TEXT,         /* free text up to CR */
    ST_VAL_START,    /* where a value must begin */
    ST_VAL_SEP,      /* after a value: SP, ")", CR or "]" */
    ST_ATOM,
    ST_TILDE, /* "~": literal8 or an atom such as ~peter */
    ST_QUOTED,
    ST_QUOTED_ESC,
    ST_LIT_SIZE,
    ST_LIT_CR,
    ST_LIT_LF,
    ST_LIT_PENDING, /* announced; waiting for inline or streamed */
    ST_LIT_DATA,    /* copying an inline literal */
    ST_LF,          /* CR seen at the end of the response */
    ST_DONE,
    ST_ERROR,
};

/* Where the values being read belong. */
enum parser_ctx {
    CTX_ARGS, /* the values of an untagged response, up to CRLF */
    CTX_CODE, /* the arguments of a response code, up to "]" */
};

enum step_result {
    STEP_NEXT,  /* byte consumed */
    STEP_AGAIN, /* state changed; dispatch the same byte again */
    STEP_DONE,
    STEP_LITERAL,
    STEP_ERROR,
};

struct chunk {
    struct chunk *prev;
    size_t cap, used;
    max_align_t data[];
};

struct imap_parser {
    struct imap_parser_limits lim;
    enum parser_state st;
    enum parser_ctx ctx;

    struct chunk *chunks; /* current chunk; older ones through prev */

    /* token being read: tok_len bytes at tok_off in the current chunk */
    size_t tok_off, tok_len;
    bool tok_open;
    unsigned brackets; /* "[" depth inside an atom */

    struct imap_value *stack;
    size_t top, stack_cap;
    size_t *open; /* stack index of each open list's placeholder */
    size_t depth, open_cap;
    bool after_list; /* last value was a list: "(" may follow directly */

    size_t line_len;
    size_t nvalues;
    uint64_t inline_total;

    bool lit8;
    unsigned lit_digits;
    uint64_t lit_size, lit_left;
    char *lit_start, *lit_dst;

    struct imap_response resp, partial;
    char err[200];
};

static const struct imap_parser_limits default_limits = {
    .max_line = 1024 * 1024,
    .max_inline_literal = 64 * 1024 * 1024,
    .max_depth = 32,
    .max_values = 1000000,
};

/* ------------------------------------------------------------------ */
/* arena */

static char *chunk_bytes(struct chunk *k)
{
    return (char *)k->data;
}

static struct chunk *chunk_push(struct imap_parser *p, size_t cap)
{
    if (cap > SIZE_MAX - sizeof(struct chunk))
        return NULL;
    struct chunk *k = malloc(sizeof *k + cap);
    if (!k)
        return NULL;
    k->prev = p->chunks;
    k->cap = cap;
    k->used = 0;
    p->chunks = k;
    return k;
}

/* Aligned block that will not move until the parser is reset. */
static void *arena_alloc(struct imap_parser *p, size_t n)
{
    const size_t align = alignof(max_align_t);
    struct chunk *k = p->chunks;
    if (k) {
        size_t off = (k->used + align - 1) / align * align;
        if (off <= k->cap && k->cap - off >= n) {
            k->used = off + n;
            return chunk_bytes(k) + off;
        }
    }
    k = chunk_push(p, n > CHUNK_MIN ? n : CHUNK_MIN);
    if (!k)
        return NULL;
    k->used = n;
    return chunk_bytes(k);
}

/* Frees all chunks but a small first one, which is reused. */
static void arena_reset(struct imap_parser *p)
{
    struct chunk *k = p->chunks, *keep = NULL;
    while (k) {
        struct chunk *prev = k->prev;
        if (!prev && k->cap == CHUNK_MIN) {
            keep = k;
            k->used = 0;
        } else {
            free(k);
        }
        k = prev;
    }
    p->chunks = keep;
}

static void arena_free(struct imap_parser *p)
{
    while (p->chunks) {
        struct chunk *prev = p->chunks->prev;
        free(p->chunks);
        p->chunks = prev;
    }
}

/* ------------------------------------------------------------------ */
/* errors */

static enum step_result parser_fail(struct imap_parser *p, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static enum step_result parser_fail(struct imap_parser *p, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err, sizeof p->err, fmt, ap);
    va_end(ap);
    p->st = ST_ERROR;
    return STEP_ERROR;
}

/* Names the offending byte in a message without echoing control bytes. */
static const char *byte_name(unsigned char c, char buf[8])
{
    if (c == '\r')
        return "CR";
    if (c == '\n')
        return "LF";
    if (c == ' ')
        return "space";
    if (c > 0x20 && c < 0x7f)
        snprintf(buf, 8, "'%c'", c);
    else
        snprintf(buf, 8, "0x%02x", c);
    return buf;
}

static enum step_result parser_unexpected(struct imap_parser *p, unsigned char c, const char *what)
{
    char b[8];
    return parser_fail(p, "unexpected %s at byte %zu: %s", byte_name(c, b), p->line_len, what);
}

static enum step_result parser_oom(struct imap_parser *p)
{
    return parser_fail(p, "out of memory");
}

/* ------------------------------------------------------------------ */
/* tokens */

static void tok_begin(struct imap_parser *p)
{
    p->tok_off = p->chunks ? p->chunks->used : 0;
    p->tok_len = 0;
    p->tok_open = true;
}

static enum step_result tok_put(struct imap_parser *p, unsigned char c)
{
    struct chunk *k = p->chunks;
    if (!k || k->used == k->cap) {
        /* the token in progress moves to a chunk twice its size, so the
         * copies stay linear in the token's length */
        size_t cap = p->tok_len > CHUNK_MIN / 2 ? p->tok_len * 2 : CHUNK_MIN;
        struct chunk *n = chunk_push(p, cap);
        if (!n)
            return parser_oom(p);
        if (k) {
            memcpy(chunk_bytes(n), chunk_bytes(k) + p->tok_off, p->tok_len);
            k->used = p->tok_off;
        }
        n->used = p->tok_len;
        p->tok_off = 0;
        k = n;
    }
    chunk_bytes(k)[k->used++] = (char)c;
    p->tok_len++;
    return STEP_NEXT;
}

/* NUL-terminates the token; returns NULL when out of memory. */
static const char *tok_end(struct imap_parser *p, size_t *len)
{
    if (tok_put(p, '\0') != STEP_NEXT)
        return NULL;
    p->tok_open = false;
    if (len)
        *len = p->tok_len - 1;
    return chunk_bytes(p->chunks) + p->tok_off;
}

/* ------------------------------------------------------------------ */
/* character classes */

/* ATOM-CHAR, widened: "\" (flags), "%" and "*" (flag-perm \*, LIST
 * patterns) and 8-bit bytes (UTF-8 mailbox names) are accepted because real
 * servers send them in atoms; "]" is decided by the caller (resp-specials
 * ends a response code but is an ASTRING-CHAR elsewhere). */
static bool is_atom_char(unsigned char c)
{
    if (c <= 0x20 || c == 0x7f)
        return false;
    switch (c) {
    case '(':
    case ')':
    case '{':
    case '"':
    case ']':
        return false;
    default:
        return true;
    }
}

/* tag = 1*<any ASTRING-CHAR except "+"> */
static bool is_tag_char(unsigned char c)
{
    return c != '+' && (is_atom_char(c) || c == ']');
}

static enum imap_status status_from_word(const char *w)
{
    static const struct {
        const char *word;
        enum imap_status status;
    } words[] = {
        {"OK", IMAP_STATUS_OK},   {"NO", IMAP_STATUS_NO},           {"BAD", IMAP_STATUS_BAD},
        {"BYE", IMAP_STATUS_BYE}, {"PREAUTH", IMAP_STATUS_PREAUTH},
    };
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
        if (strcasecmp(w, words[i].word) == 0)
            return words[i].status;
    return IMAP_STATUS_NONE;
}

/* ------------------------------------------------------------------ */
/* values */

static enum step_result value_push(struct imap_parser *p, const struct imap_value *v)
{
    if (p->nvalues >= p->lim.max_values)
        return parser_fail(p, "response has more than %zu values", p->lim.max_values);
    struct imap_value *s = array_reserve(p->stack, &p->stack_cap, p->top + 1, sizeof *s, 64);
    if (!s)
        return parser_oom(p);
    p->stack = s;
    p->stack[p->top++] = *v;
    p->nvalues++;
    p->after_list = v->type == IMAP_LIST;
    return STEP_NEXT;
}

static enum step_result list_open(struct imap_parser *p)
{
    if (p->depth >= p->lim.max_depth)
        return parser_fail(p, "lists nested deeper than %u", p->lim.max_depth);
    size_t *o = array_reserve(p->open, &p->open_cap, p->depth + 1, sizeof *o, 8);
    if (!o)
        return parser_oom(p);
    p->open = o;
    struct imap_value v = {.type = IMAP_LIST};
    if (value_push(p, &v) != STEP_NEXT)
        return STEP_ERROR;
    p->open[p->depth++] = p->top - 1;
    p->after_list = false;
    return STEP_NEXT;
}

static enum step_result list_close(struct imap_parser *p)
{
    size_t pos = p->open[--p->depth];
    size_t n = p->top - pos - 1;
    struct imap_value *items = NULL;
    if (n) {
        items = arena_alloc(p, n * sizeof *items); /* n * size <= stack size */
        if (!items)
            return parser_oom(p);
        memcpy(items, &p->stack[pos + 1], n * sizeof *items);
    }
    p->stack[pos].items = items;
    p->stack[pos].count = n;
    p->top = pos + 1;
    p->after_list = true;
    return STEP_NEXT;
}

/* Shows the open lists with the children completed so far. */
static void partial_build(struct imap_parser *p)
{
    for (size_t d = 0; d < p->depth; d++) {
        size_t pos = p->open[d];
        size_t end = d + 1 < p->depth ? p->open[d + 1] + 1 : p->top;
        p->stack[pos].items = end > pos + 1 ? &p->stack[pos + 1] : NULL;
        p->stack[pos].count = end - pos - 1;
    }
    p->partial = p->resp;
    p->partial.args = p->top ? p->stack : NULL;
    p->partial.nargs = p->depth ? p->open[0] + 1 : p->top;
}

/* The response codes whose arguments are values, and the shape they must
 * have. Any other code keeps its arguments as raw atoms, because
 * resp-text-code allows any text but "]" there. */
enum code_shape {
    SHAPE_ATOMS,   /* atoms */
    SHAPE_NUMBER,  /* nz-number or 0, 32 bits */
    SHAPE_MODSEQ,  /* 63-bit number */
    SHAPE_UIDPLUS, /* uidvalidity followed by uid-sets */
    SHAPE_LIST,    /* one list of atoms or strings */
};

static const struct code_def {
    const char *name;
    enum code_shape shape;
    size_t min, max;
} code_defs[] = {
    {"CAPABILITY", SHAPE_ATOMS, 1, SIZE_MAX},
    {"PERMANENTFLAGS", SHAPE_LIST, 1, 1},
    {"BADCHARSET", SHAPE_LIST, 0, 1},
    {"UIDNEXT", SHAPE_NUMBER, 1, 1},
    {"UIDVALIDITY", SHAPE_NUMBER, 1, 1},
    {"UNSEEN", SHAPE_NUMBER, 1, 1},
    {"HIGHESTMODSEQ", SHAPE_MODSEQ, 1, 1},
    {"APPENDUID", SHAPE_UIDPLUS, 2, 2}, /* APPENDUID uidvalidity uid-set */
    {"COPYUID", SHAPE_UIDPLUS, 3, 3},   /* COPYUID uidvalidity uid-set uid-set */
    {"MODIFIED", SHAPE_ATOMS, 1, 1},    /* MODIFIED sequence-set */
};

static const struct code_def *code_find(const char *name)
{
    for (size_t i = 0; i < sizeof code_defs / sizeof code_defs[0]; i++)
        if (strcasecmp(name, code_defs[i].name) == 0)
            return &code_defs[i];
    return NULL;
}

static bool code_args_valid(const struct code_def *d, const struct imap_value *v, size_t n)
{
    if (n < d->min || n > d->max)
        return false;
    for (size_t i = 0; i < n; i++) {
        uint32_t u32;
        uint64_t u64;
        switch (d->shape) {
        case SHAPE_ATOMS:
            if (v[i].type != IMAP_ATOM)
                return false;
            break;
        case SHAPE_NUMBER:
            if (!imap_value_u32(&v[i], &u32))
                return false;
            break;
        case SHAPE_MODSEQ:
            if (!imap_value_u64(&v[i], &u64))
                return false;
            break;
        case SHAPE_UIDPLUS:
            if (i == 0 ? !imap_value_u32(&v[i], &u32) || u32 == 0 : v[i].type != IMAP_ATOM)
                return false;
            break;
        case SHAPE_LIST:
            if (v[i].type != IMAP_LIST)
                return false;
            for (size_t k = 0; k < v[i].count; k++)
                if (v[i].items[k].type != IMAP_ATOM && v[i].items[k].type != IMAP_STRING)
                    return false;
            break;
        }
    }
    return true;
}

static enum step_result code_finish(struct imap_parser *p)
{
    const struct code_def *d = code_find(p->resp.code);
    if (d && !code_args_valid(d, p->stack, p->top))
        return parser_fail(p, "malformed arguments to response code %s", d->name);
    p->resp.code_args = p->top ? p->stack : NULL;
    p->resp.code_nargs = p->top;
    p->ctx = CTX_ARGS;
    p->st = ST_AFTER_CODE;
    return STEP_NEXT;
}

static enum step_result response_finish(struct imap_parser *p)
{
    if (p->resp.status == IMAP_STATUS_NONE && p->resp.kind == IMAP_RESP_UNTAGGED) {
        p->resp.args = p->top ? p->stack : NULL;
        p->resp.nargs = p->top;
    } else if (p->resp.code) {
        /* the stack may have moved since the code was read */
        p->resp.code_args = p->resp.code_nargs ? p->stack : NULL;
    }
    p->st = ST_DONE;
    return STEP_DONE;
}

/* An atom, quoted string or NIL is complete. */
static enum step_result atom_finish(struct imap_parser *p, enum imap_value_type type)
{
    size_t len;
    const char *s = tok_end(p, &len);
    if (!s)
        return parser_oom(p);
    struct imap_value v = {.type = type, .str = s, .len = len};
    if (type == IMAP_ATOM && strcasecmp(s, "NIL") == 0)
        v = (struct imap_value){.type = IMAP_NIL};
    /* "* OK ...": the first word decides that this is a status response */
    if (type == IMAP_ATOM && p->resp.kind == IMAP_RESP_UNTAGGED && p->ctx == CTX_ARGS &&
        p->top == 0) {
        enum imap_status st = status_from_word(s);
        if (st != IMAP_STATUS_NONE) {
            p->resp.status = st;
            p->st = ST_AFTER_STATUS;
            return STEP_AGAIN;
        }
    }
    if (value_push(p, &v) != STEP_NEXT)
        return STEP_ERROR;
    p->st = ST_VAL_SEP;
    return type == IMAP_ATOM ? STEP_AGAIN : STEP_NEXT;
}

static enum step_result literal_finish(struct imap_parser *p, const char *str, bool streamed)
{
    struct imap_value v = {
        .type = IMAP_LITERAL,
        .str = str,
        .len = p->lit_size > SIZE_MAX ? SIZE_MAX : (size_t)p->lit_size,
        .streamed = streamed,
    };
    if (value_push(p, &v) != STEP_NEXT)
        return STEP_ERROR;
    p->st = ST_VAL_SEP;
    return STEP_NEXT;
}

static enum step_result text_finish(struct imap_parser *p)
{
    const char *t = tok_end(p, NULL);
    if (!t)
        return parser_oom(p);
    p->resp.text = t;
    p->st = ST_LF;
    return STEP_NEXT;
}

/* ------------------------------------------------------------------ */
/* the state machine */

static enum step_result step_value_start(struct imap_parser *p, unsigned char c)
{
    switch (c) {
    case '(':
        return list_open(p);
    case ')':
        /* "()" */
        if (p->depth && p->top == p->open[p->depth - 1] + 1) {
            p->st = ST_VAL_SEP;
            return list_close(p);
        }
        return parser_unexpected(p, c, "expected a value");
    case '"':
        tok_begin(p);
        p->st = ST_QUOTED;
        return STEP_NEXT;
    case '{':
        if (p->ctx == CTX_CODE)
            return parser_unexpected(p, c, "literal inside a response code");
        p->lit8 = false;
        p->lit_size = 0;
        p->lit_digits = 0;
        p->st = ST_LIT_SIZE;
        return STEP_NEXT;
    case '~':
        tok_begin(p);
        p->st = ST_TILDE;
        return tok_put(p, c);
    case '\r':
        /* a trailing space before CRLF ("* SEARCH \r\n") is tolerated */
        if (p->ctx == CTX_ARGS && p->depth == 0 && p->top > 0) {
            p->st = ST_LF;
            return STEP_NEXT;
        }
        return parser_unexpected(p, c, "expected a value");
    default:
        if (!is_atom_char(c) && !(c == ']' && p->ctx == CTX_ARGS))
            return parser_unexpected(p, c, "expected a value");
        tok_begin(p);
        p->brackets = 0;
        p->st = ST_ATOM;
        return STEP_AGAIN;
    }
}

static enum step_result step_value_sep(struct imap_parser *p, unsigned char c)
{
    switch (c) {
    case ' ':
        p->st = ST_VAL_START;
        return STEP_NEXT;
    case ')':
        if (!p->depth)
            return parser_unexpected(p, c, "no list is open");
        return list_close(p);
    case '(':
        /* body-type-mpart = 1*body SP media-subtype: bodies touch */
        if (!p->after_list)
            return parser_unexpected(p, c, "expected a space between values");
        p->st = ST_VAL_START;
        return list_open(p);
    case '\r':
        if (p->ctx == CTX_CODE)
            return parser_fail(p, "unterminated response code");
        if (p->depth)
            return parser_fail(p, "unterminated list at end of line");
        p->st = ST_LF;
        return STEP_NEXT;
    case ']':
        if (p->ctx == CTX_CODE && !p->depth)
            return code_finish(p);
        return parser_unexpected(p, c, "expected a space between values");
    default:
        return parser_unexpected(p, c, "expected a space between values");
    }
}

static enum step_result step_atom(struct imap_parser *p, unsigned char c)
{
    if (p->brackets) {
        /* section-spec: BODY[HEADER.FIELDS (DATE FROM)] is one atom */
        if (c == '\r' || c == '\n' || c == '\0')
            return parser_fail(p, "unterminated '[' in atom");
        if (c == ']')
            p->brackets--;
        else if (c == '[')
            p->brackets++;
        return tok_put(p, c);
    }
    if (c == '[') {
        p->brackets++;
        return tok_put(p, c);
    }
    if (is_atom_char(c) || (c == ']' && p->ctx == CTX_ARGS))
        return tok_put(p, c);
    return atom_finish(p, IMAP_ATOM);
}

/* One flat switch over the states, each case a few lines: longer than the
 * function-size limit, and clearer whole than cut apart. */
/* NOLINTNEXTLINE(readability-function-size) */
static enum step_result step(struct imap_parser *p, unsigned char c)
{
    switch (p->st) {
    case ST_START:
        if (c == '*') {
            p->resp.kind = IMAP_RESP_UNTAGGED;
            p->st = ST_STAR_SP;
            return STEP_NEXT;
        }
        if (c == '+') {
            p->resp.kind = IMAP_RESP_CONTINUATION;
            p->st = ST_PLUS;
            return STEP_NEXT;
        }
        if (!is_tag_char(c))
            return parser_unexpected(p, c, "a response starts with '*', '+' or a tag");
        p->resp.kind = IMAP_RESP_TAGGED;
        tok_begin(p);
        p->st = ST_TAG;
        return tok_put(p, c);

    case ST_TAG:
        if (c == ' ') {
            if (!(p->resp.tag = tok_end(p, NULL)))
                return parser_oom(p);
            tok_begin(p);
            p->st = ST_STATUS_WORD;
            return STEP_NEXT;
        }
        if (!is_tag_char(c))
            return parser_unexpected(p, c, "invalid character in tag");
        return tok_put(p, c);

    case ST_STAR_SP:
        if (c != ' ')
            return parser_unexpected(p, c, "expected a space after '*'");
        p->st = ST_VAL_START;
        return STEP_NEXT;

    case ST_PLUS:
        /* continue-req = "+" SP (resp-text / base64) CRLF; some servers
         * send a bare "+" */
        if (c == ' ') {
            tok_begin(p);
            p->st = ST_TEXT;
            return STEP_NEXT;
        }
        if (c == '\r') {
            p->st = ST_LF;
            return STEP_NEXT;
        }
        return parser_unexpected(p, c, "expected a space after '+'");

    case ST_STATUS_WORD:
        if (c == ' ' || c == '\r') {
            const char *w = tok_end(p, NULL);
            if (!w)
                return parser_oom(p);
            enum imap_status st = status_from_word(w);
            if (st != IMAP_STATUS_OK && st != IMAP_STATUS_NO && st != IMAP_STATUS_BAD)
                return parser_fail(p, "tagged response must be OK, NO or BAD, not \"%.40s\"", w);
            p->resp.status = st;
            p->st = ST_AFTER_STATUS;
            return STEP_AGAIN;
        }
        if (!is_atom_char(c))
            return parser_unexpected(p, c, "expected OK, NO or BAD");
        return tok_put(p, c);

    case ST_AFTER_STATUS:
        if (c == ' ') {
            p->st = ST_RESP_TEXT;
            return STEP_NEXT;
        }
        if (c == '\r') {
            p->st = ST_LF;
            return STEP_NEXT;
        }
        return parser_unexpected(p, c, "expected a space after the status");

    case ST_RESP_TEXT:
        /* resp-text = ["[" resp-text-code "]" SP] text */
        if (c == '[') {
            tok_begin(p);
            p->st = ST_CODE_NAME;
            return STEP_NEXT;
        }
        if (c == '\r') {
            p->st = ST_LF;
            return STEP_NEXT;
        }
        tok_begin(p);
        p->st = ST_TEXT;
        return STEP_AGAIN;

    case ST_CODE_NAME:
        if (c == ' ' || c == ']') {
            if (!p->tok_len)
                return parser_fail(p, "empty response code");
            if (!(p->resp.code = tok_end(p, NULL)))
                return parser_oom(p);
            if (c == ']')
                return code_finish(p);
            p->ctx = CTX_CODE;
            p->st = code_find(p->resp.code) ? ST_VAL_START : ST_CODE_RAW;
            return STEP_NEXT;
        }
        if (!is_atom_char(c))
            return parser_unexpected(p, c, "invalid character in response code");
        return tok_put(p, c);

    case ST_CODE_RAW:
        /* atom [SP 1*<any TEXT-CHAR except "]">], split at spaces */
        if (c == ' ' || c == ']') {
            if (p->tok_open) {
                size_t len;
                const char *s = tok_end(p, &len);
                if (!s)
                    return parser_oom(p);
                struct imap_value v = {.type = IMAP_ATOM, .str = s, .len = len};
                if (value_push(p, &v) != STEP_NEXT)
                    return STEP_ERROR;
            }
            return c == ']' ? code_finish(p) : STEP_NEXT;
        }
        if (c == '\r' || c == '\n' || c == '\0')
            return parser_fail(p, "unterminated response code");
        if (!p->tok_open)
            tok_begin(p);
        return tok_put(p, c);

    case ST_AFTER_CODE:
        if (c == '\r') {
            p->st = ST_LF;
            return STEP_NEXT;
        }
        tok_begin(p);
        p->st = ST_TEXT;
        return c == ' ' ? STEP_NEXT : STEP_AGAIN;

    case ST_TEXT:
        if (c == '\r')
            return text_finish(p);
        if (c == '\n' || c == '\0')
            return parser_unexpected(p, c, "not allowed in text");
        return tok_put(p, c);

    case ST_VAL_START:
        return step_value_start(p, c);
    case ST_VAL_SEP:
        return step_value_sep(p, c);
    case ST_ATOM:
        return step_atom(p, c);

    case ST_TILDE:
        if (c == '{') {
            /* literal8 = "~{" number64 "}" CRLF *OCTET */
            p->tok_open = false;
            p->chunks->used = p->tok_off;
            p->lit8 = true;
            p->lit_size = 0;
            p->lit_digits = 0;
            p->st = ST_LIT_SIZE;
            return STEP_NEXT;
        }
        p->brackets = 0;
        p->st = ST_ATOM;
        return STEP_AGAIN;

    case ST_QUOTED:
        /* quoted = DQUOTE *QUOTED-CHAR DQUOTE */
        if (c == '"')
            return atom_finish(p, IMAP_STRING);
        if (c == '\\') {
            p->st = ST_QUOTED_ESC;
            return STEP_NEXT;
        }
        if (c == '\r' || c == '\n' || c == '\0')
            return parser_unexpected(p, c, "not allowed in a quoted string");
        return tok_put(p, c);

    case ST_QUOTED_ESC:
        /* "\" quoted-specials */
        if (c != '"' && c != '\\')
            return parser_unexpected(p, c, "only \\\\ and \\\" are escapes in a quoted string");
        p->st = ST_QUOTED;
        return tok_put(p, c);

    case ST_LIT_SIZE:
        if (c >= '0' && c <= '9') {
            /* number64 = 1*DIGIT, here at most 2^63 */
            unsigned d = (unsigned)(c - '0');
            if (p->lit_size > (LITERAL_LIMIT - d) / 10)
                return parser_fail(p, "literal size exceeds 2^63");
            p->lit_size = p->lit_size * 10 + d;
            p->lit_digits++;
            return STEP_NEXT;
        }
        if (c == '}' && p->lit_digits) {
            p->st = ST_LIT_CR;
            return STEP_NEXT;
        }
        return parser_unexpected(p, c, "invalid literal size");

    case ST_LIT_CR:
        if (c != '\r')
            return parser_unexpected(p, c, "expected CRLF after a literal size");
        p->st = ST_LIT_LF;
        return STEP_NEXT;

    case ST_LIT_LF:
        if (c != '\n')
            return parser_unexpected(p, c, "expected CRLF after a literal size");
        partial_build(p);
        p->st = ST_LIT_PENDING;
        return STEP_LITERAL;

    case ST_LF:
        if (c != '\n')
            return parser_unexpected(p, c, "expected LF after CR");
        return response_finish(p);

    case ST_LIT_PENDING:
    case ST_LIT_DATA:
    case ST_DONE:
    case ST_ERROR:
        break;
    }
    return parser_fail(p, "internal error: byte in state %d", (int)p->st);
}

/* ------------------------------------------------------------------ */
/* public interface */

static void parser_reset(struct imap_parser *p)
{
    arena_reset(p);
    p->st = ST_START;
    p->ctx = CTX_ARGS;
    p->tok_open = false;
    p->top = 0;
    p->depth = 0;
    p->after_list = false;
    p->line_len = 0;
    p->nvalues = 0;
    p->inline_total = 0;
    p->lit_size = 0;
    memset(&p->resp, 0, sizeof p->resp);
    memset(&p->partial, 0, sizeof p->partial);
    p->resp.text = "";
}

struct imap_parser *imap_parser_new(const struct imap_parser_limits *limits)
{
    struct imap_parser *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->lim = limits ? *limits : default_limits;
    parser_reset(p);
    return p;
}

void imap_parser_free(struct imap_parser **pp)
{
    if (!pp || !*pp)
        return;
    struct imap_parser *p = *pp;
    arena_free(p);
    free(p->stack);
    free(p->open);
    free(p);
    *pp = NULL;
}

enum imap_parse_result imap_parser_feed(struct imap_parser *p, const char *buf, size_t len,
                                        size_t *consumed)
{
    size_t i = 0;
    enum imap_parse_result res = IMAP_PARSE_NEED_MORE;

    if (p->st == ST_DONE)
        parser_reset(p);
    if (p->st == ST_ERROR) {
        res = IMAP_PARSE_ERROR;
        goto out;
    }
    if (p->st == ST_LIT_PENDING) {
        res = IMAP_PARSE_LITERAL; /* the caller has not chosen yet */
        goto out;
    }
    while (i < len) {
        if (p->st == ST_LIT_DATA) {
            size_t n = len - i;
            if (n > p->lit_left)
                n = (size_t)p->lit_left;
            memcpy(p->lit_dst, buf + i, n);
            p->lit_dst += n;
            p->lit_left -= n;
            i += n;
            if (p->lit_left == 0) {
                *p->lit_dst = '\0';
                if (literal_finish(p, p->lit_start, false) == STEP_ERROR) {
                    res = IMAP_PARSE_ERROR;
                    goto out;
                }
            }
            continue;
        }
        if (p->line_len >= p->lim.max_line) {
            parser_fail(p, "response longer than %zu bytes", p->lim.max_line);
            res = IMAP_PARSE_ERROR;
            goto out;
        }
        p->line_len++;
        unsigned char c = (unsigned char)buf[i];
        enum step_result r;
        do
            r = step(p, c);
        while (r == STEP_AGAIN);
        if (r == STEP_ERROR) {
            res = IMAP_PARSE_ERROR;
            goto out;
        }
        i++;
        if (r == STEP_DONE) {
            res = IMAP_PARSE_DONE;
            goto out;
        }
        if (r == STEP_LITERAL) {
            res = IMAP_PARSE_LITERAL;
            goto out;
        }
    }
out:
    if (consumed)
        *consumed = i;
    return res;
}

const struct imap_response *imap_parser_response(const struct imap_parser *p)
{
    return p->st == ST_DONE ? &p->resp : NULL;
}

uint64_t imap_parser_literal_size(const struct imap_parser *p)
{
    return p->st == ST_LIT_PENDING ? p->lit_size : 0;
}

const struct imap_response *imap_parser_partial(const struct imap_parser *p)
{
    return p->st == ST_LIT_PENDING ? &p->partial : NULL;
}

enum imap_parse_result imap_parser_literal_inline(struct imap_parser *p)
{
    if (p->st != ST_LIT_PENDING) {
        if (p->st != ST_ERROR)
            parser_fail(p, "no literal is pending");
        return IMAP_PARSE_ERROR;
    }
    uint64_t max = p->lim.max_inline_literal;
    if (p->lit_size > max || p->inline_total > max - p->lit_size) {
        /* not fatal: the caller may still stream it */
        snprintf(p->err, sizeof p->err,
                 "literal of %" PRIu64 " bytes exceeds the inline limit of %zu bytes", p->lit_size,
                 p->lim.max_inline_literal);
        return IMAP_PARSE_ERROR;
    }
    char *dst = p->lit_size < SIZE_MAX ? arena_alloc(p, (size_t)p->lit_size + 1) : NULL;
    if (!dst) {
        parser_oom(p);
        return IMAP_PARSE_ERROR;
    }
    p->inline_total += p->lit_size;
    p->lit_start = p->lit_dst = dst;
    p->lit_left = p->lit_size;
    if (p->lit_size == 0) {
        *dst = '\0';
        return literal_finish(p, dst, false) == STEP_ERROR ? IMAP_PARSE_ERROR
                                                           : IMAP_PARSE_NEED_MORE;
    }
    p->st = ST_LIT_DATA;
    return IMAP_PARSE_NEED_MORE;
}

void imap_parser_literal_streamed(struct imap_parser *p)
{
    if (p->st != ST_LIT_PENDING) {
        if (p->st != ST_ERROR)
            parser_fail(p, "no literal is pending");
        return;
    }
    literal_finish(p, NULL, true); /* on failure the next feed reports it */
}

const char *imap_parser_error(const struct imap_parser *p)
{
    return p->err[0] ? p->err : "no error";
}

/* ------------------------------------------------------------------ */
/* accessors */

bool imap_value_is_atom(const struct imap_value *v, const char *atom)
{
    return v && v->type == IMAP_ATOM && strcasecmp(v->str, atom) == 0;
}

static bool value_number(const struct imap_value *v, uint64_t max, uint64_t *out)
{
    if (!v || v->type != IMAP_ATOM || v->len == 0 || v->len > 20)
        return false;
    uint64_t n = 0;
    for (size_t i = 0; i < v->len; i++) {
        unsigned char c = (unsigned char)v->str[i];
        if (c < '0' || c > '9')
            return false;
        unsigned d = (unsigned)(c - '0');
        if (n > (max - d) / 10)
            return false;
        n = n * 10 + d;
    }
    *out = n;
    return true;
}

bool imap_value_u32(const struct imap_value *v, uint32_t *out)
{
    uint64_t n;
    if (!value_number(v, UINT32_MAX, &n))
        return false;
    *out = (uint32_t)n;
    return true;
}

bool imap_value_u64(const struct imap_value *v, uint64_t *out)
{
    return value_number(v, ((uint64_t)1 << 63) - 1, out);
}

bool imap_value_string(const struct imap_value *v, const char **str, size_t *len)
{
    if (!v || (v->type != IMAP_ATOM && v->type != IMAP_STRING && v->type != IMAP_LITERAL) ||
        !v->str)
        return false;
    *str = v->str;
    *len = v->len;
    return true;
}
