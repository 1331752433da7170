/* Unit tests of the text parts of message fingerprints: the Message-ID of
 * a header (streamed or as a server returns the field) and INTERNALDATE. */
#include "check.h"
#include "sync/fptext.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void check_msgid(const char *hdr, const char *want)
{
    char out[FP_MSGID_MAX];
    size_t n = fp_msgid(hdr, strlen(hdr), out, sizeof out);
    if (!CHECK(n == strlen(want) && memcmp(out, want, n) == 0))
        fprintf(stderr, "  msgid of %s: got '%.*s', want '%s'\n", hdr, (int)n, out, want);
}

static void test_msgid(void)
{
    /* as a whole message and as BODY[HEADER.FIELDS (MESSAGE-ID)] */
    check_msgid("From: a@b\r\nMessage-ID: <x@y>\r\nSubject: s\r\n\r\nbody\r\n", "<x@y>");
    check_msgid("Message-ID: <x@y>\r\n\r\n", "<x@y>");
    /* case, blanks before the colon, folding, tabs */
    check_msgid("message-id :\r\n\t<x@y>\r\nTo: c\r\n\r\n", "<x@y>");
    check_msgid("Message-Id:   < x @ y >  \r\n\r\n", "<x@y>");
    /* LF only, first of two fields */
    check_msgid("Message-ID: <1@a>\nMessage-ID: <2@a>\n\n", "<1@a>");
    /* not in the body, not a field that merely starts the same */
    check_msgid("Subject: s\r\n\r\nMessage-ID: <no@body>\r\n", "");
    check_msgid("Message-IDs: <no@x>\r\nX-Message-ID: <no@y>\r\n\r\n", "");
    check_msgid("", "");
    /* a long value is cut at cap */
    char out[4];
    CHECK(fp_msgid("Message-ID: <abcdef>\r\n", 22, out, sizeof out) == 4 &&
          memcmp(out, "<abc", 4) == 0);
}

static void test_scan(void)
{
    const char *msg = "Received: x\r\nMessage-ID: <scan@t>\r\n\r\nMessage-ID: <body@t>\r\n";
    struct fp_scan sc = {0};
    char out[FP_MSGID_MAX];
    /* fed a byte at a time: the header is complete at its empty line */
    for (size_t i = 0; msg[i]; i++)
        fp_scan_feed(&sc, msg + i, 1);
    CHECK(sc.done);
    size_t n = fp_scan_msgid(&sc, out, sizeof out);
    CHECK(n == 8 && memcmp(out, "<scan@t>", 8) == 0);
    /* fed at once: the body is not kept */
    fp_scan_reset(&sc);
    fp_scan_feed(&sc, msg, strlen(msg));
    CHECK(sc.done && sc.len == strlen("Received: x\r\nMessage-ID: <scan@t>\r\n\r\n"));
    /* a message without a header */
    fp_scan_reset(&sc);
    fp_scan_feed(&sc, "\r\nMessage-ID: <body@t>\r\n", 24);
    CHECK(sc.done && fp_scan_msgid(&sc, out, sizeof out) == 0);
    /* reset for the next message; nothing collected, no Message-ID */
    fp_scan_reset(&sc);
    CHECK(!sc.done && fp_scan_msgid(&sc, out, sizeof out) == 0);
    /* a header longer than the scan keeps what fits */
    char *big = malloc(FP_SCAN_MAX + 100);
    if (big) {
        memset(big, 'x', FP_SCAN_MAX + 100);
        memcpy(big, "Message-ID: <big@t>\r\nX: ", 24);
        fp_scan_feed(&sc, big, FP_SCAN_MAX + 100);
        CHECK(sc.done && sc.len == FP_SCAN_MAX);
        n = fp_scan_msgid(&sc, out, sizeof out);
        CHECK(n == 7 && memcmp(out, "<big@t>", 7) == 0);
        free(big);
    }
    fp_scan_fini(&sc);
    CHECK(sc.buf == NULL);
}

static void test_date(void)
{
    CHECK_INT(fp_date("17-Jul-1996 02:44:25 -0700"), 837596665);
    /* the same instant written in another zone */
    CHECK_INT(fp_date("17-Jul-1996 09:44:25 +0000"), 837596665);
    /* a padded or one-digit day */
    CHECK(fp_date(" 2-Jan-2023 10:00:00 +0000") == fp_date("02-Jan-2023 10:00:00 +0000"));
    CHECK_INT(fp_date("2-Jan-2023 10:00:00 +0000"), 1672653600);
    CHECK_INT(fp_date("02-jan-2023 10:00:00 +0000"), 1672653600);
    CHECK_INT(fp_date("02-Foo-2023 10:00:00 +0000"), -1);
    CHECK_INT(fp_date("02-Jan-2023 10:00:00"), -1);
    CHECK_INT(fp_date("02-Jan-2023 10:00 +0000"), -1);
    CHECK_INT(fp_date(""), -1);
    /* cut anywhere: never read past the end */
    const char *full = "17-Jul-1996 02:44:25 -0700";
    char cut[32];
    for (size_t n = 0; n < strlen(full); n++) {
        memcpy(cut, full, n);
        cut[n] = '\0';
        CHECK_INT(fp_date(cut), -1);
    }
}

int main(void)
{
    test_msgid();
    test_scan();
    test_date();
    return check_finish();
}
