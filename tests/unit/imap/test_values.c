/*
 * Unit tests of the grammar checks of server values (flags, date-time,
 * mailbox names, FETCH items) and of the typed command encoders.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "imap/command.h"
#include "imap/parser.h"
#include "imap/values.h"

static void test_flags(void)
{
    const char *good[] = {"\\Seen", "\\Answered", "$Forwarded", "Junk", "a.b-c_d",
                          "\\X",    "~peter",     "\\Recent",   NULL};
    for (size_t i = 0; good[i]; i++) {
        if (!imap_flag_valid(good[i], strlen(good[i])))
            fprintf(stderr, "refused flag '%s'\n", good[i]);
        CHECK(imap_flag_valid(good[i], strlen(good[i])));
    }
    const char *bad[] = {"",         "\\",          "a)b",   "a(b",   "a b", "a\"b", "a\\b",
                         "\\\\Seen", "a]b",         "a{3}",  "a%",    "a*",  "\\*",  "a\rb",
                         "a\nb",     "caf\xc3\xa9", "a\x7f", "\x01x", NULL};
    for (size_t i = 0; bad[i]; i++) {
        if (imap_flag_valid(bad[i], strlen(bad[i])))
            fprintf(stderr, "accepted flag '%s'\n", bad[i]);
        CHECK(!imap_flag_valid(bad[i], strlen(bad[i])));
    }
    CHECK(!imap_flag_valid("a\0b", 3));
}

static void test_dates(void)
{
    char out[IMAP_DATE_TIME_LEN + 1];
    const struct {
        const char *in, *want;
    } good[] = {
        {"17-Jul-1996 02:44:25 -0700", "17-Jul-1996 02:44:25 -0700"},
        {" 7-Jul-1996 02:44:25 +0000", "07-Jul-1996 02:44:25 +0000"},
        {"7-jul-1996 02:44:25 +0000", "07-Jul-1996 02:44:25 +0000"},
        {"31-DEC-2099 23:59:60 +1400", "31-Dec-2099 23:59:60 +1400"},
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        CHECK(imap_date_time_parse(good[i].in, strlen(good[i].in), out));
        CHECK(strcmp(out, good[i].want) == 0);
    }
    const char *bad[] = {"",
                         "17-Jul-1996 02:44:25",
                         "17-Jul-1996 02:44:25 -0700\r\n1 DELETE INBOX",
                         "17-Jul-1996 02:44:25 -07001",
                         "17-Jux-1996 02:44:25 -0700",
                         "32-Jul-1996 02:44:25 -0700",
                         "00-Jul-1996 02:44:25 -0700",
                         "17-Jul-1996 24:44:25 -0700",
                         "17-Jul-1996 02:60:25 -0700",
                         "17-Jul-1996 02:44:25 *0700",
                         "17-Jul-1996 02:44:25 -07a0",
                         "17-Jul-96 02:44:25 -0700   ",
                         "17-Jul-1996\r02:44:25 -0700",
                         "17-Jul-1996 02:44:25 -0760",
                         "\"7-Jul-1996 02:44:25 -0700",
                         NULL};
    for (size_t i = 0; bad[i]; i++) {
        if (imap_date_time_parse(bad[i], strlen(bad[i]), out))
            fprintf(stderr, "accepted date '%s'\n", bad[i]);
        CHECK(!imap_date_time_parse(bad[i], strlen(bad[i]), out));
    }
}

static void test_mailbox_names(void)
{
    const char *good[] = {"INBOX", "Archive/2023", "a.b", "&AOk-t&AOk-", "Sent Items", "&-", NULL};
    for (size_t i = 0; good[i]; i++) {
        if (imap_mailbox_name_problem(good[i], strlen(good[i])))
            fprintf(stderr, "refused name '%s'\n", good[i]);
        CHECK(imap_mailbox_name_problem(good[i], strlen(good[i])) == NULL);
    }
    const char *bad[] = {"",           "a\r\nb",  "a\x1b[31m",   "bell\x07",
                         "tab\there",  "del\x7f", "caf\xc3\xa9", "&AOk", /* unterminated */
                         "&AOk-&AOk-",                                   /* two runs back to back */
                         "&AGE-",                                        /* "a" encoded */
                         "&AA0-",                                        /* an encoded CR */
                         "&AJs-", /* an encoded C1 control (U+009B) */
                         "a&",         NULL};
    for (size_t i = 0; bad[i]; i++) {
        if (!imap_mailbox_name_problem(bad[i], strlen(bad[i])))
            fprintf(stderr, "accepted name '%s'\n", bad[i]);
        CHECK(imap_mailbox_name_problem(bad[i], strlen(bad[i])) != NULL);
    }
    CHECK(imap_mailbox_name_problem("a\0b", 3) != NULL);
}

/* Parses one untagged FETCH and checks its attribute list. The values
 * stay valid until the next call. */
static struct imap_parser *p;

static int fetch(const char *line, bool partial, struct imap_fetch *f, char *err, size_t errlen)
{
    imap_parser_free(&p);
    p = imap_parser_new(NULL);
    size_t used;
    int rc = -100;
    enum imap_parse_result r = imap_parser_feed(p, line, strlen(line), &used);
    while (r == IMAP_PARSE_LITERAL) {
        if (partial) {
            const struct imap_response *part = imap_parser_partial(p);
            return imap_fetch_parse(&part->args[2], true, f, err, errlen);
        }
        imap_parser_literal_inline(p);
        size_t more;
        r = imap_parser_feed(p, line + used, strlen(line) - used, &more);
        used += more;
    }
    if (r == IMAP_PARSE_DONE) {
        const struct imap_response *resp = imap_parser_response(p);
        rc = imap_fetch_parse(&resp->args[2], false, f, err, errlen);
    }
    return rc;
}

static void test_fetch(void)
{
    struct imap_fetch f;
    char err[200];
    CHECK(fetch("* 3 FETCH (UID 7 MODSEQ (42) FLAGS (\\Seen $Junk) INTERNALDATE "
                "\" 1-Jan-2020 10:00:00 +0100\" RFC822.SIZE 12 BODY[] {3}\r\nabc)\r\n",
                false, &f, err, sizeof err) == 0);
    CHECK(f.uid == 7 && f.has_modseq && f.modseq == 42 && f.flags && f.flags->count == 2);
    CHECK(f.has_date && strcmp(f.date, "01-Jan-2020 10:00:00 +0100") == 0);
    CHECK(f.has_size && f.size == 12 && f.body && f.body->len == 3);
    /* cut short at the body's literal */
    CHECK(fetch("* 3 FETCH (UID 8 FLAGS () INTERNALDATE \"01-Jan-2020 10:00:00 +0100\" BODY[] "
                "{3}\r\nabc)\r\n",
                true, &f, err, sizeof err) == 0);
    CHECK(f.uid == 8 && f.flags && f.flags->count == 0 && f.has_date && !f.body);
    CHECK(fetch("* 1 FETCH (UID 1 BODY[HEADER.FIELDS (MESSAGE-ID)] {5}\r\nM: x\n)\r\n", false, &f,
                err, sizeof err) == 0);
    CHECK(f.header && f.header->len == 5);

    const struct {
        const char *line, *want;
    } bad[] = {
        {"* 1 FETCH (UID 1 FLAGS (\\Seen \"a)b\"))\r\n", "FLAGS 'a)b' is not a flag"},
        {"* 1 FETCH (UID 1 FLAGS ({11}\r\n\\Seen)\r\n1 X))\r\n", "is not a flag"},
        {"* 1 FETCH (UID 1 FLAGS (a]b))\r\n", "is not a flag"},
        {"* 1 FETCH (UID 1 FLAGS \\Seen)\r\n", "is not a flag list"},
        {"* 1 FETCH (UID 1 INTERNALDATE {28}\r\n01-Jan-2020 10:00:00 +0100\r\n)\r\n",
         "is not a date-time"},
        {"* 1 FETCH (UID 1 INTERNALDATE \"yesterday\")\r\n", "INTERNALDATE 'yesterday'"},
        {"* 1 FETCH (UID 0)\r\n", "UID '0'"},
        {"* 1 FETCH (UID 1 UID 2)\r\n", "UID '2'"},
        {"* 1 FETCH (UID x)\r\n", "UID 'x'"},
        {"* 1 FETCH (UID 1 MODSEQ 5)\r\n", "MODSEQ"},
        {"* 1 FETCH (UID 1 FLAGS () FLAGS ())\r\n", "FLAGS"},
        {"* 1 FETCH (UID 1 BODY[] (a))\r\n", "BODY[]"},
        {"* 1 FETCH (UID 1 FLAGS)\r\n", "without a value"},
        {"* 1 FETCH ((UID) 1)\r\n", "not an atom"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        int r = fetch(bad[i].line, false, &f, err, sizeof err);
        if (r != -EINVAL || !strstr(err, bad[i].want))
            fprintf(stderr, "'%s': got %d '%s'\n", bad[i].line, r, err);
        CHECK(r == -EINVAL && strstr(err, bad[i].want));
    }
}

static int enc(struct imap_cmdbuf *b, char *err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int r = imap_cmdbuf_vappend(b, err, 200, fmt, ap);
    va_end(ap);
    return r;
}

static void test_encoders(void)
{
    struct imap_cmdbuf b = {0};
    char err[200];
    CHECK(enc(&b, err, "APPEND %m (%F) %D {%u}", "Archive/2023", "\\Seen $Junk",
              " 7-Jul-1996 02:44:25 -0700", 12u) == 0);
    CHECK(strcmp(b.data,
                 "APPEND Archive/2023 (\\Seen $Junk) \"07-Jul-1996 02:44:25 -0700\" {12}") == 0);
    imap_cmdbuf_fini(&b);
    CHECK(enc(&b, err, "%m %m %m %s %P %P", "Sent Items", "a\"b\\c", "NIL", "x%y", "a%*", "a b*") ==
          0);
    CHECK(strcmp(b.data, "\"Sent Items\" \"a\\\"b\\\\c\" \"NIL\" \"x%y\" \"a%*\" \"a b*\"") == 0);
    imap_cmdbuf_fini(&b);
    CHECK(enc(&b, err, "UID STORE %S FLAGS.SILENT (%F) %U", "1:4,7,9:*", "", (uint64_t)1 << 40) ==
          0);
    CHECK(strcmp(b.data, "UID STORE 1:4,7,9:* FLAGS.SILENT () 1099511627776") == 0);

    /* every refusal leaves the buffer as it was and says what was wrong */
    const char *before = "UID STORE 1:4,7,9:* FLAGS.SILENT () 1099511627776";
    CHECK(enc(&b, err, " (%F)", "\\Seen a)b") == -EINVAL && strstr(err, "invalid flag list"));
    CHECK(enc(&b, err, " (%F)", "\\Seen\r\n2 DELETE Sent") == -EINVAL);
    CHECK(enc(&b, err, " (%F)", "\\Seen  x") == -EINVAL);
    CHECK(enc(&b, err, " %D", "17-Jul-1996 02:44:25 -0700\r\n3 DELETE INBOX") == -EINVAL &&
          strstr(err, "date-time"));
    CHECK(enc(&b, err, " %S", "1:4 BODY[]") == -EINVAL && strstr(err, "sequence set"));
    CHECK(enc(&b, err, " %S", "0") == -EINVAL);
    CHECK(enc(&b, err, " %S", "1,") == -EINVAL);
    CHECK(enc(&b, err, " %S", "4294967296") == -EINVAL);
    CHECK(enc(&b, err, " %m", "a\r\nb") == -EINVAL && strstr(err, "mailbox name"));
    CHECK(enc(&b, err, " %m", "a\x1b") == -EINVAL && strstr(err, "control"));
    CHECK(enc(&b, err, " %m", "caf\xc3\xa9") == -EINVAL);
    CHECK(enc(&b, err, " %s", "pass\nword") == -EINVAL);
    CHECK(enc(&b, err, " %a", "RAW\r\n") == -EINVAL && strstr(err, "line break"));
    CHECK(enc(&b, err, " %q", "x") == -EINVAL);
    CHECK(strcmp(b.data, before) == 0 && b.len == strlen(before));
    imap_cmdbuf_fini(&b);

    CHECK(imap_sequence_set_valid("*", 1) && imap_sequence_set_valid("1:*", 3) &&
          imap_sequence_set_valid("4294967295", 10) && !imap_sequence_set_valid("", 0) &&
          !imap_sequence_set_valid("1::2", 4) && !imap_sequence_set_valid("01", 2) &&
          !imap_sequence_set_valid("1:2:3", 5));
}

int main(void)
{
    test_flags();
    test_dates();
    test_mailbox_names();
    test_fetch();
    test_encoders();
    imap_parser_free(&p);
    return check_finish();
}
