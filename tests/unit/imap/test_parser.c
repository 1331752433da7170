/*
 * Unit tests of the IMAP response parser. Every accepted input is parsed
 * whole, split at every byte position, and one byte at a time, and each way
 * must give the same responses; every input is placed so that it ends
 * exactly at an unmapped page, so a read past its end crashes the test.
 */
#include "check.h"
#include "imap/parser.h"
#include "parse_harness.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* A copy of the input ending at the first byte of a PROT_NONE page. */
struct guarded {
    char *map;
    size_t maplen;
    const char *data;
};

static void guarded_init(struct guarded *g, const char *in, size_t len)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t pages = (len + page - 1) / page + 1;
    g->maplen = pages * page;
    g->map = mmap(NULL, g->maplen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (g->map == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    if (mprotect(g->map + (pages - 1) * page, page, PROT_NONE) != 0) {
        perror("mprotect");
        exit(1);
    }
    char *start = g->map + (pages - 1) * page - len;
    memcpy(start, in, len);
    g->data = start;
}

static void guarded_fini(struct guarded *g)
{
    munmap(g->map, g->maplen);
}

/* Parses in every chunking; returns the output of the whole-input run
 * (caller frees) after checking that every other chunking agrees. */
static char *parse_every_way(const char *name, const char *in, size_t len,
                             const struct imap_parser_limits *lim, enum harness_literals lit)
{
    struct guarded g;
    guarded_init(&g, in, len);
    struct dstr whole = {0};
    harness_run(g.data, len, lim, HARNESS_WHOLE, 0, lit, &whole);
    for (size_t k = 1; k < len; k++) {
        struct dstr split = {0};
        harness_run(g.data, len, lim, HARNESS_SPLIT, k, lit, &split);
        if (!CHECK(strcmp(split.s ? split.s : "", whole.s ? whole.s : "") == 0)) {
            fprintf(stderr, "%s: split at %zu differs:\n%s--- whole:\n%s", name, k, split.s,
                    whole.s);
            dstr_free(&split);
            break;
        }
        dstr_free(&split);
    }
    struct dstr bytes = {0};
    harness_run(g.data, len, lim, HARNESS_BYTES, 0, lit, &bytes);
    if (!CHECK(strcmp(bytes.s ? bytes.s : "", whole.s ? whole.s : "") == 0))
        fprintf(stderr, "%s: byte-at-a-time differs:\n%s--- whole:\n%s", name, bytes.s, whole.s);
    dstr_free(&bytes);
    guarded_fini(&g);
    return whole.s ? whole.s : strdup("");
}

struct ok_case {
    const char *name;
    const char *in;
    const char *expect;
    enum harness_literals lit;
    size_t len; /* 0: strlen(in) */
};

static const struct ok_case ok_cases[] = {
    {"dovecot greeting",
     "* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ STARTTLS "
     "AUTH=PLAIN] Dovecot (Debian) ready.\r\n",
     "* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ STARTTLS "
     "AUTH=PLAIN] \"Dovecot (Debian) ready.\"\n",
     HARNESS_INLINE, 0},
    {"preauth", "* PREAUTH [CAPABILITY IMAP4rev1] Logged in as u\r\n",
     "* PREAUTH [CAPABILITY IMAP4rev1] \"Logged in as u\"\n", HARNESS_INLINE, 0},
    {"capability untagged",
     "* CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ENABLE CONDSTORE QRESYNC UIDPLUS "
     "COMPRESS=DEFLATE LIST-EXTENDED LIST-STATUS ESEARCH\r\n",
     "* CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ENABLE CONDSTORE QRESYNC UIDPLUS "
     "COMPRESS=DEFLATE LIST-EXTENDED LIST-STATUS ESEARCH\n",
     HARNESS_INLINE, 0},
    {"tagged ok with capability code", "a1 OK [CAPABILITY IMAP4rev1 MOVE QRESYNC] Logged in\r\n",
     "a1 OK [CAPABILITY IMAP4rev1 MOVE QRESYNC] \"Logged in\"\n", HARNESS_INLINE, 0},
    {"enabled", "* ENABLED QRESYNC CONDSTORE\r\n", "* ENABLED QRESYNC CONDSTORE\n", HARNESS_INLINE,
     0},
    {"select sequence",
     "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded)\r\n"
     "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded \\*)] "
     "Flags permitted.\r\n"
     "* 172 EXISTS\r\n"
     "* 1 RECENT\r\n"
     "* OK [UNSEEN 12] First unseen.\r\n"
     "* OK [UIDVALIDITY 3857529045] UIDs valid\r\n"
     "* OK [UIDNEXT 4392] Predicted next UID\r\n"
     "* OK [HIGHESTMODSEQ 715194045007] Highest\r\n"
     "a2 OK [READ-WRITE] Select completed (0.001 + 0.000 secs).\r\n",
     "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded)\n"
     "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded \\*)] "
     "\"Flags permitted.\"\n"
     "* 172 EXISTS\n"
     "* 1 RECENT\n"
     "* OK [UNSEEN 12] \"First unseen.\"\n"
     "* OK [UIDVALIDITY 3857529045] \"UIDs valid\"\n"
     "* OK [UIDNEXT 4392] \"Predicted next UID\"\n"
     "* OK [HIGHESTMODSEQ 715194045007] \"Highest\"\n"
     "a2 OK [READ-WRITE] \"Select completed (0.001 + 0.000 secs).\"\n",
     HARNESS_INLINE, 0},
    {"nomodseq and closed", "* OK [NOMODSEQ] No mod\r\n* OK [CLOSED] Previous closed\r\n",
     "* OK [NOMODSEQ] \"No mod\"\n* OK [CLOSED] \"Previous closed\"\n", HARNESS_INLINE, 0},
    {"unknown code keeps raw atoms", "* NO [XFOO (a \"b c\" NIL] oops\r\n",
     "* NO [XFOO (a \"b c\" NIL] \"oops\"\n", HARNESS_INLINE, 0},
    {"code without text", "* OK [UIDNEXT 5]\r\na OK\r\n", "* OK [UIDNEXT 5] \"\"\na OK \"\"\n",
     HARNESS_INLINE, 0},
    {"list quoted and atom names",
     "* LIST (\\HasNoChildren) \"/\" INBOX\r\n"
     "* LIST (\\HasChildren \\Noselect) \"/\" \"Archive \\\"old\\\" \\\\ x\"\r\n"
     "* LIST () NIL Flat\r\n"
     "* LIST (\\HasNoChildren) \".\" ~peter/mail/&U,BTFw-/&ZeVnLIqe-\r\n",
     "* LIST (\\HasNoChildren) \"/\" INBOX\n"
     "* LIST (\\HasChildren \\Noselect) \"/\" \"Archive \\\"old\\\" \\\\ x\"\n"
     "* LIST () NIL Flat\n"
     "* LIST (\\HasNoChildren) \".\" ~peter/mail/&U,BTFw-/&ZeVnLIqe-\n",
     HARNESS_INLINE, 0},
    {"list literal name", "* LIST (\\HasNoChildren) \"/\" {9}\r\nfoo\r\n\"bar\r\n",
     "LITERAL 9 * LIST (\\HasNoChildren) \"/\"\n"
     "* LIST (\\HasNoChildren) \"/\" {9}\"foo\\x0d\\x0a\\\"bar\"\n",
     HARNESS_INLINE, 0},
    {"extended list with childinfo",
     "* LIST (\\Subscribed \\HasChildren) \"/\" \"Foo\" (\"CHILDINFO\" (\"SUBSCRIBED\"))\r\n",
     "* LIST (\\Subscribed \\HasChildren) \"/\" \"Foo\" (\"CHILDINFO\" (\"SUBSCRIBED\"))\n",
     HARNESS_INLINE, 0},
    {"status",
     "* STATUS \"INBOX\" (MESSAGES 231 UIDNEXT 44292 UIDVALIDITY 1 HIGHESTMODSEQ 7)\r\n"
     "* STATUS blurdybloop (UIDNEXT 1)\r\n",
     "* STATUS \"INBOX\" (MESSAGES 231 UIDNEXT 44292 UIDVALIDITY 1 HIGHESTMODSEQ 7)\n"
     "* STATUS blurdybloop (UIDNEXT 1)\n",
     HARNESS_INLINE, 0},
    {"fetch flags modseq", "* 12 FETCH (UID 4827313 MODSEQ (65402) FLAGS (\\Seen $Junk))\r\n",
     "* 12 FETCH (UID 4827313 MODSEQ (65402) FLAGS (\\Seen $Junk))\n", HARNESS_INLINE, 0},
    {"fetch body inline",
     "* 3 FETCH (UID 7 FLAGS () INTERNALDATE \"17-Jul-1996 02:44:25 -0700\" BODY[] {12}\r\n"
     "Subject: x\r\n)\r\n",
     "LITERAL 12 * 3 FETCH (UID 7 FLAGS () INTERNALDATE \"17-Jul-1996 02:44:25 -0700\" BODY[])\n"
     "* 3 FETCH (UID 7 FLAGS () INTERNALDATE \"17-Jul-1996 02:44:25 -0700\" BODY[] "
     "{12}\"Subject: x\\x0d\\x0a\")\n",
     HARNESS_INLINE, 0},
    {"fetch body streamed", "* 3 FETCH (UID 7 BODY[] {5}\r\nhello FLAGS (\\Seen))\r\n",
     "LITERAL 5 * 3 FETCH (UID 7 BODY[])\n"
     "STREAM \"hello\"\n"
     "* 3 FETCH (UID 7 BODY[] {5}<streamed> FLAGS (\\Seen))\n",
     HARNESS_STREAM, 0},
    {"section atoms",
     "* 1 FETCH (BODY[HEADER.FIELDS (DATE FROM)] {0}\r\n BODY[1.2]<0> \"x\" BODY[HEADER] NIL)\r\n",
     "LITERAL 0 * 1 FETCH (BODY[HEADER.FIELDS (DATE FROM)])\n"
     "* 1 FETCH (BODY[HEADER.FIELDS (DATE FROM)] {0}\"\" BODY[1.2]<0> \"x\" BODY[HEADER] NIL)\n",
     HARNESS_INLINE, 0},
    {"binary literal8", "* 2 FETCH (BINARY[1] ~{3}\r\n\0\1\2)\r\n",
     "LITERAL 3 * 2 FETCH (BINARY[1])\n* 2 FETCH (BINARY[1] {3}\"\\x00\\x01\\x02\")\n",
     HARNESS_INLINE, 33},
    {"nested literal partial", "* 1 FETCH (X (a (b {2}\r\nzz c) d) UID 1)\r\n",
     "LITERAL 2 * 1 FETCH (X (a (b)))\n* 1 FETCH (X (a (b {2}\"zz\" c) d) UID 1)\n", HARNESS_INLINE,
     0},
    {"bodystructure touching lists",
     "* 1 FETCH (BODYSTRUCTURE ((\"TEXT\" \"PLAIN\" NIL NIL NIL \"7BIT\" 1 1)(\"TEXT\" \"HTML\" "
     "NIL NIL NIL \"7BIT\" 2 1) \"ALTERNATIVE\"))\r\n",
     "* 1 FETCH (BODYSTRUCTURE ((\"TEXT\" \"PLAIN\" NIL NIL NIL \"7BIT\" 1 1) (\"TEXT\" \"HTML\" "
     "NIL NIL NIL \"7BIT\" 2 1) \"ALTERNATIVE\"))\n",
     HARNESS_INLINE, 0},
    {"vanished earlier", "* VANISHED (EARLIER) 300:310,405,411\r\n* VANISHED 1:2\r\n",
     "* VANISHED (EARLIER) 300:310,405,411\n* VANISHED 1:2\n", HARNESS_INLINE, 0},
    {"esearch", "* ESEARCH (TAG \"A282\") UID MIN 2 COUNT 3 ALL 2,10:11\r\n",
     "* ESEARCH (TAG \"A282\") UID MIN 2 COUNT 3 ALL 2,10:11\n", HARNESS_INLINE, 0},
    {"search with trailing space", "* SEARCH \r\n* SEARCH 2 84 882\r\n",
     "* SEARCH\n* SEARCH 2 84 882\n", HARNESS_INLINE, 0},
    {"appenduid copyuid",
     "A003 OK [APPENDUID 38505 3955:3960] APPEND completed\r\n"
     "A004 OK [COPYUID 38505 304,319:320 3956:3958] Done\r\n",
     "A003 OK [APPENDUID 38505 3955:3960] \"APPEND completed\"\n"
     "A004 OK [COPYUID 38505 304,319:320 3956:3958] \"Done\"\n",
     HARNESS_INLINE, 0},
    {"modified", "d105 OK [MODIFIED 7,9] Conditional STORE completed\r\n",
     "d105 OK [MODIFIED 7,9] \"Conditional STORE completed\"\n", HARNESS_INLINE, 0},
    {"tagged no and bad",
     "a5 NO [TRYCREATE] Mailbox doesn't exist: x\r\nb BAD Error in IMAP command\r\n",
     "a5 NO [TRYCREATE] \"Mailbox doesn't exist: x\"\nb BAD \"Error in IMAP command\"\n",
     HARNESS_INLINE, 0},
    {"continuation", "+ idling\r\n+\r\n+ \r\n+ [not a code] x\r\n",
     "+ \"idling\"\n+ \"\"\n+ \"\"\n+ \"[not a code] x\"\n", HARNESS_INLINE, 0},
    {"bye", "* BYE Logging out\r\n* BYE\r\n", "* BYE \"Logging out\"\n* BYE \"\"\n", HARNESS_INLINE,
     0},
    {"lowercase status and nil", "* ok fine\r\n* 1 FETCH (X nil Y \"NIL\")\r\n",
     "* OK \"fine\"\n* 1 FETCH (X NIL Y \"NIL\")\n", HARNESS_INLINE, 0},
    {"namespace", "* NAMESPACE ((\"\" \"/\")) NIL ((\"Shared/\" \"/\"))\r\n",
     "* NAMESPACE ((\"\" \"/\")) NIL ((\"Shared/\" \"/\"))\n", HARNESS_INLINE, 0},
    {"utf-8 text and atoms", "* OK Bonjour \xc3\xa0 vous\r\n* LIST () \"/\" caf\xc3\xa9\r\n",
     "* OK \"Bonjour \\xc3\\xa0 vous\"\n* LIST () \"/\" caf\xc3\xa9\n", HARNESS_INLINE, 0},
    {"alternate literals", "* 1 FETCH (A {1}\r\nx B {2}\r\nyy)\r\n",
     "LITERAL 1 * 1 FETCH (A)\nSTREAM \"x\"\n"
     "LITERAL 2 * 1 FETCH (A {1}<streamed> B)\n"
     "* 1 FETCH (A {1}<streamed> B {2}\"yy\")\n",
     HARNESS_ALTERNATE, 0},
    {"bracket in astring", "* LIST () \"/\" a]b\r\n", "* LIST () \"/\" a]b\n", HARNESS_INLINE, 0},
    {"incomplete", "* 1 FETCH (A", "INCOMPLETE\n", HARNESS_INLINE, 0},
};

struct bad_case {
    const char *in;
    const char *msg; /* substring of the error */
};

static const struct bad_case bad_cases[] = {
    {"hello world\r\n", "tagged response must be OK, NO or BAD"},
    {"hello\r\n", "invalid character in tag"},
    {"a1 BYE x\r\n", "tagged response must be OK, NO or BAD"},
    {"a1 FETCH x\r\n", "tagged response must be OK, NO or BAD"},
    {"a1\r\n", "invalid character in tag"},
    {"+a\r\n", "expected a space after '+'"},
    {"*OK\r\n", "expected a space after '*'"},
    {"* \r\n", "expected a value"},
    {"(\r\n", "a response starts with"},
    {"* 1 FETCH (UID 1\r\n", "unterminated list"},
    {"* 1 FETCH UID 1)\r\n", "no list is open"},
    {"* 1 FETCH (UID  1)\r\n", "expected a value"},
    {"* LIST (\\X)\"/\" a\r\n", "expected a space between values"},
    {"* X \"abc\r\n", "not allowed in a quoted string"},
    {"* X \"a\\nb\"\r\n", "only \\\\ and \\\" are escapes"},
    {"* X {12a}\r\n", "invalid literal size"},
    {"* X {}\r\n", "invalid literal size"},
    {"* X {3+}\r\nabc\r\n", "invalid literal size"},
    {"* X {3}abc\r\n", "expected CRLF after a literal size"},
    {"* X {18446744073709551615}\r\n", "literal size exceeds 2^63"},
    {"* X {9223372036854775809}\r\n", "literal size exceeds 2^63"},
    {"* X ~[3}\r\n", "unterminated '['"},
    {"* OK [UIDNEXT abc] x\r\n", "malformed arguments to response code UIDNEXT"},
    {"* OK [UIDNEXT] x\r\n", "malformed arguments to response code UIDNEXT"},
    {"* OK [UIDVALIDITY 4294967296] x\r\n", "malformed arguments to response code UIDVALIDITY"},
    {"* OK [HIGHESTMODSEQ 9223372036854775808] x\r\n", "HIGHESTMODSEQ"},
    {"a OK [APPENDUID 0 1] x\r\n", "APPENDUID"},
    {"a OK [COPYUID 1 2] x\r\n", "COPYUID"},
    {"* OK [PERMANENTFLAGS \\Seen] x\r\n", "PERMANENTFLAGS"},
    {"* OK [PERMANENTFLAGS (\\Seen) x\r\n", "unterminated response code"},
    {"* OK [PERMANENTFLAGS (\\Seen)x] x\r\n", "expected a space between values"},
    {"* OK [UIDNEXT 5\r\n", "unterminated response code"},
    {"* OK [XFOO bar\r\n", "unterminated response code"},
    {"* OK [] x\r\n", "empty response code"},
    {"* OK [CAPABILITY {3}\r\nabc] x\r\n", "literal inside a response code"},
    {"* OK x\ry\r\n", "expected LF after CR"},
    {"* OK x\ny\r\n", "LF at byte 7: not allowed in text"},
    {"* 1 FETCH (X\1)\r\n", "unexpected 0x01"},
    {"* 1 FETCH (X [a)\r\n", "unterminated '['"},
    {"* 1 FETCH (X a[b\r\n", "unterminated '['"},
};

static void test_ok_cases(void)
{
    static const enum harness_literals policies[] = {HARNESS_INLINE, HARNESS_STREAM,
                                                     HARNESS_ALTERNATE};
    for (size_t i = 0; i < sizeof ok_cases / sizeof ok_cases[0]; i++) {
        const struct ok_case *c = &ok_cases[i];
        size_t len = c->len ? c->len : strlen(c->in);
        char *got = parse_every_way(c->name, c->in, len, NULL, c->lit);
        if (!CHECK(strcmp(got, c->expect) == 0))
            fprintf(stderr, "%s: got:\n%s--- expected:\n%s", c->name, got, c->expect);
        free(got);
        /* the other literal policies must agree across chunkings too */
        for (size_t k = 0; k < 3; k++)
            if (policies[k] != c->lit)
                free(parse_every_way(c->name, c->in, len, NULL, policies[k]));
    }
}

static void test_bad_cases(void)
{
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        const struct bad_case *c = &bad_cases[i];
        char *got = parse_every_way(c->in, c->in, strlen(c->in), NULL, HARNESS_INLINE);
        if (!CHECK(strncmp(got, "ERROR: ", 7) == 0 && strstr(got, c->msg)))
            fprintf(stderr, "bad case %zu (%s): got \"%s\", want error with \"%s\"\n", i, c->in,
                    got, c->msg);
        free(got);
    }
}

/* The literal flow, step by step, as the client drives it. */
static void test_literal_streaming_flow(void)
{
    const char *in = "* 3 FETCH (UID 7 BODY[] {5}\r\nhello FLAGS (\\Seen))\r\n* 4 EXISTS\r\n";
    struct imap_parser *p = imap_parser_new(NULL);
    size_t used = 0, len = strlen(in);
    CHECK(imap_parser_feed(p, in, len, &used) == IMAP_PARSE_LITERAL);
    CHECK(used == strlen("* 3 FETCH (UID 7 BODY[] {5}\r\n"));
    CHECK(imap_parser_literal_size(p) == 5);
    CHECK(imap_parser_response(p) == NULL);
    const struct imap_response *part = imap_parser_partial(p);
    CHECK(part && part->kind == IMAP_RESP_UNTAGGED && part->nargs == 3);
    CHECK(imap_value_is_atom(&part->args[1], "fetch"));
    CHECK(part->args[2].type == IMAP_LIST && part->args[2].count == 3);
    CHECK(imap_value_is_atom(&part->args[2].items[2], "BODY[]"));
    /* feeding again before choosing changes nothing */
    size_t used2 = 99;
    CHECK(imap_parser_feed(p, in + used, len - used, &used2) == IMAP_PARSE_LITERAL);
    CHECK(used2 == 0);
    imap_parser_literal_streamed(p);
    size_t off = used + 5;
    CHECK(imap_parser_feed(p, in + off, len - off, &used) == IMAP_PARSE_DONE);
    off += used;
    const struct imap_response *r = imap_parser_response(p);
    CHECK(r && r->nargs == 3 && r->args[2].count == 6);
    const struct imap_value *body = &r->args[2].items[3];
    CHECK(body->type == IMAP_LITERAL && body->streamed && body->str == NULL && body->len == 5);
    const char *s;
    size_t sl;
    CHECK(!imap_value_string(body, &s, &sl));
    uint32_t uid = 0;
    CHECK(imap_value_u32(&r->args[2].items[1], &uid) && uid == 7);
    CHECK(r->args[2].items[5].type == IMAP_LIST && r->args[2].items[5].count == 1);
    CHECK(imap_parser_feed(p, in + off, len - off, &used) == IMAP_PARSE_DONE);
    CHECK(off + used == len);
    r = imap_parser_response(p);
    CHECK(r && r->nargs == 2 && imap_value_is_atom(&r->args[1], "EXISTS"));
    CHECK(imap_parser_partial(p) == NULL);
    imap_parser_free(&p);
    CHECK(p == NULL);
    imap_parser_free(&p);
    imap_parser_free(NULL);
}

static void test_huge_literal_sizes(void)
{
    /* 2^63 is announced exactly, cannot be kept inline, but can be streamed */
    const char *in = "* 1 FETCH (BODY[] {9223372036854775808}\r\n";
    struct imap_parser *p = imap_parser_new(NULL);
    size_t used;
    CHECK(imap_parser_feed(p, in, strlen(in), &used) == IMAP_PARSE_LITERAL);
    CHECK(imap_parser_literal_size(p) == (uint64_t)1 << 63);
    CHECK(imap_parser_literal_inline(p) == IMAP_PARSE_ERROR);
    CHECK(strstr(imap_parser_error(p), "exceeds the inline limit") != NULL);
    imap_parser_literal_streamed(p);
    CHECK(imap_parser_feed(p, ")\r\n", 3, &used) == IMAP_PARSE_DONE);
    const struct imap_response *r = imap_parser_response(p);
    CHECK(r && r->args[2].items[1].streamed);
    imap_parser_free(&p);

    /* 2^64-1 is refused at the header */
    p = imap_parser_new(NULL);
    in = "* 1 FETCH (BODY[] {18446744073709551615}\r\n";
    CHECK(imap_parser_feed(p, in, strlen(in), &used) == IMAP_PARSE_ERROR);
    CHECK(imap_parser_feed(p, "* OK\r\n", 6, &used) == IMAP_PARSE_ERROR);
    CHECK(used == 0);
    imap_parser_free(&p);
}

static void test_limits(void)
{
    struct imap_parser_limits lim = {
        .max_line = 40, .max_inline_literal = 8, .max_depth = 3, .max_values = 6};
    struct {
        const char *in;
        const char *expect;
    } cases[] = {
        {"* OK 012345678901234567890123456789012\r\n", "* OK \""},
        {"* OK 0123456789012345678901234567890123\r\n", "ERROR: response longer than 40 bytes"},
        {"* X (((a)))\r\n", "* X (((a)))\n"},
        {"* X ((((a))))\r\n", "ERROR: lists nested deeper than 3"},
        {"* 1 2 3 4 5 6\r\n", "* 1 2 3 4 5 6\n"},
        {"* 1 2 3 4 5 6 7\r\n", "ERROR: response has more than 6 values"},
        {"* (1 2) (3 4)\r\n", "* (1 2) (3 4)\n"},
        {"* (1 2) (3 4 5)\r\n", "ERROR: response has more than 6 values"},
        {"* X {8}\r\n12345678\r\n", "LITERAL 8 * X\n* X {8}\"12345678\"\n"},
        {"* X {9}\r\n123456789\r\n", "LITERAL 9 * X\nERROR: literal of 9 bytes exceeds the "
                                     "inline limit of 8 bytes\n"},
        /* the inline limit also bounds the sum of a response's literals */
        {"* X {4}\r\n1234 {5}\r\n12345\r\n",
         "LITERAL 4 * X\nLITERAL 5 * X {4}\"1234\"\nERROR: literal of 5 bytes"},
        /* literal contents do not count as line bytes */
        {"* X {7}\r\n1234567 aaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
         "LITERAL 7 * X\n* X {7}\"1234567\" aaaaaaaaaaaaaaaaaaaaaaaaa\n"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *got =
            parse_every_way(cases[i].in, cases[i].in, strlen(cases[i].in), &lim, HARNESS_INLINE);
        if (!CHECK(strncmp(got, cases[i].expect, strlen(cases[i].expect)) == 0))
            fprintf(stderr, "limit case %zu: got \"%s\", want prefix \"%s\"\n", i, got,
                    cases[i].expect);
        free(got);
    }
    /* streamed literals are not bound by the inline limit nor the line */
    char *got = parse_every_way("stream limit", "* X {30}\r\n012345678901234567890123456789\r\n",
                                42, &lim, HARNESS_STREAM);
    CHECK(strcmp(got, "LITERAL 30 * X\nSTREAM \"012345678901234567890123456789\"\n"
                      "* X {30}<streamed>\n") == 0);
    free(got);
}

/* Many responses through one parser: the buffers are reset and reused. */
static void test_many_responses(void)
{
    struct dstr in = {0}, want = {0};
    for (int i = 0; i < 2000; i++) {
        char line[160];
        snprintf(line, sizeof line, "* %d FETCH (UID %d BODY[] {%d}\r\n%*s)\r\n", i + 1, i * 3,
                 i % 50, i % 50, "");
        dstr_puts(&in, line);
        snprintf(line, sizeof line, "* %d FETCH (UID %d BODY[] {%d}\"%*s\")\n", i + 1, i * 3,
                 i % 50, i % 50, "");
        dstr_puts(&want, line);
    }
    struct dstr got = {0};
    harness_run(in.s, in.len, NULL, HARNESS_WHOLE, 0, HARNESS_INLINE, &got);
    /* drop the LITERAL lines */
    struct dstr resp = {0};
    for (char *l = got.s; l && *l;) {
        char *nl = strchr(l, '\n');
        if (strncmp(l, "LITERAL ", 8) != 0)
            dstr_put(&resp, l, (size_t)(nl - l + 1));
        l = nl + 1;
    }
    CHECK(resp.s && strcmp(resp.s, want.s) == 0);
    dstr_free(&in);
    dstr_free(&want);
    dstr_free(&got);
    dstr_free(&resp);
}

/* A long atom and a long text fed byte by byte must take linear time; a
 * quadratic parser would need minutes for these 512 KiB. */
static void test_long_tokens(void)
{
    size_t n = 512 * 1024;
    char *in = malloc(n + 16);
    memcpy(in, "* X ", 4);
    memset(in + 4, 'a', n);
    memcpy(in + 4 + n, "\r\n", 2);
    struct dstr out = {0};
    harness_run(in, n + 6, NULL, HARNESS_BYTES, 0, HARNESS_INLINE, &out);
    in[4 + n] = '\n'; /* expected: the atom as it came, then a newline */
    CHECK(out.len == n + 5 && memcmp(out.s, in, n + 5) == 0);
    dstr_free(&out);
    memcpy(in, "* OK ", 5);
    memset(in + 5, 'b', n);
    memcpy(in + 5 + n, "\r\n", 2);
    harness_run(in, n + 7, NULL, HARNESS_BYTES, 0, HARNESS_INLINE, &out);
    CHECK(out.len == n + 8);
    dstr_free(&out);
    free(in);
}

static void test_accessors(void)
{
    struct imap_value v = {.type = IMAP_ATOM};
    uint32_t u32;
    uint64_t u64;
    const char *s;
    size_t len;
    struct {
        const char *s;
        bool ok32, ok64;
        uint64_t val;
    } nums[] = {
        {"0", true, true, 0},
        {"4294967295", true, true, 4294967295u},
        {"4294967296", false, true, 4294967296u},
        {"9223372036854775807", false, true, 9223372036854775807u},
        {"9223372036854775808", false, false, 0},
        {"18446744073709551616", false, false, 0},
        {"", false, false, 0},
        {"12a", false, false, 0},
        {"-1", false, false, 0},
        {"+1", false, false, 0},
    };
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
        v.str = nums[i].s;
        v.len = strlen(nums[i].s);
        u32 = 1;
        u64 = 1;
        CHECK(imap_value_u32(&v, &u32) == nums[i].ok32);
        CHECK(imap_value_u64(&v, &u64) == nums[i].ok64);
        if (nums[i].ok32)
            CHECK(u32 == nums[i].val);
        if (nums[i].ok64)
            CHECK(u64 == nums[i].val);
    }
    struct imap_value str = {.type = IMAP_STRING, .str = "5", .len = 1};
    CHECK(!imap_value_u32(&str, &u32)); /* numbers are atoms */
    CHECK(imap_value_string(&str, &s, &len) && len == 1 && s[0] == '5');
    struct imap_value nil = {.type = IMAP_NIL};
    CHECK(!imap_value_string(&nil, &s, &len));
    CHECK(!imap_value_is_atom(&nil, "NIL"));
    v.str = "\\Seen";
    v.len = 5;
    CHECK(imap_value_is_atom(&v, "\\SEEN"));
    CHECK(!imap_value_is_atom(&v, "\\Seen2"));
    CHECK(!imap_value_is_atom(&str, "5"));
}

/* Values of the last response stay valid while nothing else is fed; the
 * code arguments of a tagged response point at the right values. */
static void test_response_fields(void)
{
    const char *in = "A003 OK [APPENDUID 38505 3955:3960] APPEND completed\r\n";
    struct imap_parser *p = imap_parser_new(NULL);
    size_t used;
    CHECK(imap_parser_feed(p, in, strlen(in), &used) == IMAP_PARSE_DONE);
    const struct imap_response *r = imap_parser_response(p);
    CHECK(r->kind == IMAP_RESP_TAGGED && strcmp(r->tag, "A003") == 0);
    CHECK(r->status == IMAP_STATUS_OK && strcmp(r->code, "APPENDUID") == 0);
    CHECK(r->code_nargs == 2 && r->nargs == 0 && r->args == NULL);
    uint32_t uidv = 0;
    CHECK(imap_value_u32(&r->code_args[0], &uidv) && uidv == 38505);
    CHECK(r->code_args[1].type == IMAP_ATOM && strcmp(r->code_args[1].str, "3955:3960") == 0);
    CHECK(strcmp(r->text, "APPEND completed") == 0);
    CHECK(strcmp(imap_parser_error(p), "no error") == 0);
    imap_parser_free(&p);
}

int main(void)
{
    test_ok_cases();
    test_bad_cases();
    test_literal_streaming_flow();
    test_huge_literal_sizes();
    test_limits();
    test_many_responses();
    test_long_tokens();
    test_accessors();
    test_response_fields();
    return check_finish();
}
