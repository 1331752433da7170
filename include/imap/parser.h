/*
 * Incremental IMAP response parser (RFC 3501 section 9, RFC 7162 additions).
 *
 * The parser does no I/O. The caller feeds it bytes as they arrive, in
 * chunks of any size (one byte at a time works). It copies the bytes of the
 * current response into its own buffer once, and the values it returns
 * point into that buffer: they stay valid until the next call to
 * imap_parser_feed() after a response was completed.
 *
 * Literals are announced, not swallowed: when a literal header {N} has been
 * read, feed() stops and returns IMAP_PARSE_LITERAL. The caller then either
 * asks the parser to keep the N bytes as part of the response
 * (imap_parser_literal_inline), or consumes the N bytes itself (streaming a
 * message body elsewhere) and calls imap_parser_literal_streamed(). The
 * partial response parsed so far (imap_parser_partial) tells the caller what
 * the literal is (for instance BODY[] inside a FETCH).
 *
 * Nothing the server says is trusted: line length, inline literal size,
 * list depth and the number of values per response are bounded, numbers are
 * checked for overflow by the accessors, and a malformed response yields
 * IMAP_PARSE_ERROR with a description in imap_parser_error().
 */
#ifndef INTERIMAP_IMAP_PARSER_H
#define INTERIMAP_IMAP_PARSER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum imap_value_type {
    IMAP_ATOM,    /* includes numbers, flags (\Seen), BODY[...] section specs */
    IMAP_STRING,  /* quoted string, unescaped */
    IMAP_LITERAL, /* literal kept inline (or streamed: see `streamed`) */
    IMAP_NIL,
    IMAP_LIST, /* parenthesised list */
};

struct imap_value {
    enum imap_value_type type;
    /* ATOM, STRING, LITERAL: bytes (NUL-terminated; a literal may contain NULs,
     * len is authoritative). NULL for a streamed literal. */
    const char *str;
    size_t len; /* byte length; for a streamed literal its size */
    bool streamed;
    /* LIST: children */
    struct imap_value *items;
    size_t count;
};

enum imap_response_kind {
    IMAP_RESP_UNTAGGED,     /* "* ..." */
    IMAP_RESP_TAGGED,       /* "tag ..." */
    IMAP_RESP_CONTINUATION, /* "+ ..." */
};

enum imap_status {
    IMAP_STATUS_NONE, /* not a status response (e.g. "* 3 FETCH", "* LIST") */
    IMAP_STATUS_OK,
    IMAP_STATUS_NO,
    IMAP_STATUS_BAD,
    IMAP_STATUS_BYE,
    IMAP_STATUS_PREAUTH,
};

struct imap_response {
    enum imap_response_kind kind;
    const char *tag; /* TAGGED only */

    /* Status responses (tagged, or untagged OK/NO/BAD/BYE/PREAUTH) */
    enum imap_status status;
    const char *code;             /* response code atom ("UIDNEXT"), or NULL */
    struct imap_value *code_args; /* values after the code atom inside [ ] */
    size_t code_nargs;
    const char *text; /* human-readable text, "" if none; for a
                         continuation, everything after "+ " */

    /* Other untagged responses: every value after "*". For
     * "* 12 FETCH (UID 7 FLAGS (\Seen))": args[0] = ATOM "12",
     * args[1] = ATOM "FETCH", args[2] = LIST. For "* LIST (\HasNoChildren)
     * "/" INBOX": args[0] = ATOM "LIST", args[1] = LIST, ... */
    struct imap_value *args;
    size_t nargs;
};

enum imap_parse_result {
    IMAP_PARSE_ERROR = -1,
    IMAP_PARSE_NEED_MORE = 0, /* all input consumed, response incomplete */
    IMAP_PARSE_DONE = 1,      /* a whole response is available */
    IMAP_PARSE_LITERAL = 2,   /* a literal follows: see imap_parser_literal_size */
};

struct imap_parser_limits {
    size_t max_line;           /* bytes of one response excluding literal contents */
    size_t max_inline_literal; /* largest literal kept inline, and the most
                                  bytes of inline literals in one response */
    unsigned max_depth;        /* list nesting */
    size_t max_values;         /* values in one response */
};

struct imap_parser;

/* limits may be NULL for defaults (1 MiB line, 64 MiB inline literal,
 * depth 32, 1 000 000 values). Returns NULL on allocation failure. */
struct imap_parser *imap_parser_new(const struct imap_parser_limits *limits);
/* Accepts NULL; clears the pointer. */
void imap_parser_free(struct imap_parser **p);

/*
 * Consumes input. *consumed receives how many bytes of buf were used; the
 * caller feeds the rest again later. After IMAP_PARSE_DONE, the response is
 * in imap_parser_response() until the next feed. After IMAP_PARSE_ERROR the
 * parser must not be fed again (the connection is unusable); it keeps
 * answering IMAP_PARSE_ERROR. After IMAP_PARSE_LITERAL, *consumed includes
 * the literal header's CRLF, and feeding again before the caller chose
 * inline or streamed consumes nothing and answers IMAP_PARSE_LITERAL.
 */
enum imap_parse_result imap_parser_feed(struct imap_parser *p, const char *buf, size_t len,
                                        size_t *consumed);

/* NULL unless the last feed() completed a response. */
const struct imap_response *imap_parser_response(const struct imap_parser *p);

/* While IMAP_PARSE_LITERAL is pending: the literal's size (at most 2^63;
 * 0 and NULL when none is pending), and the response so far (args/nargs
 * hold the values completed before the literal; for a literal inside a
 * list, the enclosing lists are the last values, with the items completed
 * so far). */
uint64_t imap_parser_literal_size(const struct imap_parser *p);
const struct imap_response *imap_parser_partial(const struct imap_parser *p);
/* Keep the literal: the next feed() copies its bytes into the response.
 * Returns IMAP_PARSE_ERROR if it exceeds max_inline_literal (the literal
 * stays pending, so the caller may still stream it) or memory runs out
 * (fatal); otherwise IMAP_PARSE_NEED_MORE. */
enum imap_parse_result imap_parser_literal_inline(struct imap_parser *p);
/* The caller consumed the literal's bytes itself; parsing resumes after them. */
void imap_parser_literal_streamed(struct imap_parser *p);

const char *imap_parser_error(const struct imap_parser *p);

/* Accessors. Each returns false if the value is not of that form. */
bool imap_value_is_atom(const struct imap_value *v, const char *atom); /* case-insensitive */
bool imap_value_u32(const struct imap_value *v, uint32_t *out);        /* nz-number or 0 */
bool imap_value_u64(const struct imap_value *v, uint64_t *out);        /* mod-sequence: < 2^63 */
/* Atom, string or literal as bytes (NIL -> false). */
bool imap_value_string(const struct imap_value *v, const char **str, size_t *len);

#endif
