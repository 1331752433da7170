/* Unit tests of the modified UTF-7 codec (RFC 3501 section 5.1.3). */
#include "check.h"
#include "imap/utf7.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct pair {
    const char *utf8, *mutf7;
};

/* Both directions must give exactly these. */
static const struct pair pairs[] = {
    {"", ""},
    {"INBOX", "INBOX"},
    {"~peter/mail/\xe5\x8f\xb0\xe5\x8c\x97/\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e",
     "~peter/mail/&U,BTFw-/&ZeVnLIqe-"},
    {"&", "&-"},
    {"Tom & Jerry", "Tom &- Jerry"},
    {"&&", "&-&-"},
    {"caf\xc3\xa9", "caf&AOk-"},
    {"\xc3\xa9t\xc3\xa9", "&AOk-t&AOk-"},
    {"\xc3\xa9\xc3\xa9", "&AOkA6Q-"},
    {"\xc3\xa9&", "&AOk-&-"},
    {"&\xc3\xa9", "&-&AOk-"},
    {"Entw\xc3\xbcrfe", "Entw&APw-rfe"},
    {"\xd0\x9e\xd1\x82\xd0\xbf\xd1\x80\xd0\xb0\xd0\xb2\xd0\xbb\xd0\xb5\xd0\xbd\xd0\xbd\xd1\x8b"
     "\xd0\xb5",
     "&BB4EQgQ,BEAEMAQyBDsENQQ9BD0ESwQ1-"},
    {"\xf0\x9f\x93\xa7", "&2D3c5w-"},     /* U+1F4E7, a surrogate pair */
    {"a\xf0\x9f\x98\x80z", "a&2D3eAA-z"}, /* U+1F600 */
    {"\t", "&AAk-"},                      /* controls are shifted */
    {"\x7f", "&AH8-"},
    {"a/b.c-d", "a/b.c-d"},
    {"\xef\xbf\xbd", "&,,0-"},                              /* U+FFFD */
    {"\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac", "&IKwgrCCs-"}, /* three units: 48 bits */
};

static const char *bad_utf8[] = {
    "\xc3",             /* truncated */
    "\xc0\xaf",         /* overlong "/" */
    "\xe0\x80\xaf",     /* overlong */
    "\xed\xa0\x80",     /* U+D800 surrogate */
    "\xf4\x90\x80\x80", /* above U+10FFFF */
    "\xff",
    "\x80",
    "a\xe6\x97", /* truncated 3-byte */
};

static const char *bad_mutf7[] = {
    "&",           /* run never opened */
    "&AOk",        /* no closing "-" */
    "&AOk-&AOk-",  /* two runs where the encoder makes one */
    "&AGE-",       /* "a" must be direct */
    "&ACY-",       /* "&" must be "&-" */
    "&AAA-",       /* NUL */
    "&AOl-",       /* padding bits not zero */
    "&AOkA-",      /* 6 bits left over */
    "&AO-",        /* 12 bits: half a unit */
    "&2D0-",       /* high surrogate alone */
    "&2D3c-",      /* high surrogate cut */
    "&3gA-",       /* low surrogate alone */
    "&2D3YPQ-",    /* high surrogate followed by a high one */
    "&AOk/-",      /* "/" is not modified base64 */
    "&AOk=-",      /* padding */
    "caf\xc3\xa9", /* 8-bit bytes are not mUTF-7 */
    "a\tb",        /* controls must be shifted */
    "&-&",
};

static void test_pairs(void)
{
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
        char *enc = utf7_encode(pairs[i].utf8, strlen(pairs[i].utf8));
        char *dec = utf7_decode(pairs[i].mutf7, strlen(pairs[i].mutf7));
        if (!CHECK_STR(enc, pairs[i].mutf7))
            fprintf(stderr, "  encoding pair %zu\n", i);
        if (!CHECK_STR(dec, pairs[i].utf8))
            fprintf(stderr, "  decoding pair %zu (%s)\n", i, pairs[i].mutf7);
        free(enc);
        free(dec);
    }
}

static void test_rejects(void)
{
    for (size_t i = 0; i < sizeof bad_utf8 / sizeof bad_utf8[0]; i++) {
        errno = 0;
        char *r = utf7_encode(bad_utf8[i], strlen(bad_utf8[i]));
        if (!CHECK(r == NULL && errno == EINVAL))
            fprintf(stderr, "  encode should reject bad UTF-8 %zu\n", i);
        free(r);
    }
    for (size_t i = 0; i < sizeof bad_mutf7 / sizeof bad_mutf7[0]; i++) {
        errno = 0;
        char *r = utf7_decode(bad_mutf7[i], strlen(bad_mutf7[i]));
        if (!CHECK(r == NULL && errno == EINVAL))
            fprintf(stderr, "  decode should reject \"%s\", got \"%s\"\n", bad_mutf7[i],
                    r ? r : "NULL");
        free(r);
    }
    /* an embedded NUL is refused both ways; len is authoritative */
    errno = 0;
    CHECK(utf7_encode("a\0b", 3) == NULL && errno == EINVAL);
    errno = 0;
    CHECK(utf7_decode("a\0b", 3) == NULL && errno == EINVAL);
    char *r = utf7_decode("abc&-xyz", 3); /* only the first 3 bytes count */
    CHECK(r && strcmp(r, "abc") == 0);
    free(r);
}

/* Every BMP code point and a sample of the others round-trip, alone and
 * between ASCII, and the encoding decodes back to the same bytes. */
static void test_round_trips(void)
{
    for (unsigned cp = 1; cp <= 0x10ffff; cp += (cp < 0x10000 ? 1 : 97)) {
        if (cp >= 0xd800 && cp <= 0xdfff)
            continue;
        unsigned char u[16];
        size_t n = 0;
        u[n++] = 'x';
        if (cp < 0x80) {
            u[n++] = (unsigned char)cp;
        } else if (cp < 0x800) {
            u[n++] = (unsigned char)(0xc0 | (cp >> 6));
            u[n++] = (unsigned char)(0x80 | (cp & 0x3f));
        } else if (cp < 0x10000) {
            u[n++] = (unsigned char)(0xe0 | (cp >> 12));
            u[n++] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
            u[n++] = (unsigned char)(0x80 | (cp & 0x3f));
        } else {
            u[n++] = (unsigned char)(0xf0 | (cp >> 18));
            u[n++] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
            u[n++] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
            u[n++] = (unsigned char)(0x80 | (cp & 0x3f));
        }
        memcpy(u + n, u + 1, n - 1); /* twice: exercises runs of 2 units */
        n += n - 1;
        u[n++] = 'y';
        char *enc = utf7_encode((const char *)u, n);
        char *dec = enc ? utf7_decode(enc, strlen(enc)) : NULL;
        if (!CHECK(dec && strlen(dec) == n && memcmp(dec, u, n) == 0)) {
            fprintf(stderr, "  round trip of U+%04X (%s)\n", cp, enc ? enc : "NULL");
            free(enc);
            free(dec);
            return;
        }
        for (const char *c = enc; *c; c++)
            CHECK(*c >= 0x20 && *c <= 0x7e);
        free(enc);
        free(dec);
    }
    /* a long run: the decoder's output estimate must hold */
    size_t count = 3000;
    char *big = malloc(count * 3 + 1);
    for (size_t i = 0; i < count; i++)
        memcpy(big + i * 3, "\xe2\x82\xac", 3);
    char *enc = utf7_encode(big, count * 3);
    char *dec = enc ? utf7_decode(enc, strlen(enc)) : NULL;
    CHECK(dec && strlen(dec) == count * 3 && memcmp(dec, big, count * 3) == 0);
    free(big);
    free(enc);
    free(dec);
}

int main(void)
{
    test_pairs();
    test_rejects();
    test_round_trips();
    return check_finish();
}
