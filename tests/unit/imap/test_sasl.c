/* SASL client mechanisms: the exact bytes of every first message, the
 * SCRAM-SHA-256 exchange of RFC 7677 section 3, refused OAuth tokens,
 * servers that break the rules, and strict base64. */
#include "check.h"
#include "imap/sasl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"

/* One step; returns the answer as a string (static), or NULL on error
 * with the message in err_out. */
static const char *step(struct sasl *s, const char *challenge, size_t *len, char *err_out,
                        int *code)
{
    static char buf[1024];
    unsigned char *out = NULL;
    size_t outlen = 0;
    char err[256] = "";
    int r = sasl_step(s, (const unsigned char *)challenge, challenge ? strlen(challenge) : 0, &out,
                      &outlen, err, sizeof err);
    if (code)
        *code = r;
    if (err_out)
        strcpy(err_out, err);
    if (r < 0) {
        CHECK(out == NULL);
        return NULL;
    }
    CHECK(outlen < sizeof buf);
    memcpy(buf, out, outlen);
    buf[outlen] = '\0';
    if (len)
        *len = outlen;
    sasl_secret_free(&out, outlen);
    return buf;
}

static void test_names(void)
{
    enum sasl_mech m;
    CHECK(sasl_mech_from_name("scram-sha-256", &m) && m == SASL_SCRAM_SHA_256);
    CHECK(sasl_mech_from_name("OAUTHBEARER", &m) && m == SASL_OAUTHBEARER);
    CHECK(sasl_mech_from_name("XOAUTH2", &m) && m == SASL_XOAUTH2);
    CHECK(sasl_mech_from_name("Plain", &m) && m == SASL_PLAIN);
    CHECK(!sasl_mech_from_name("LOGIN", &m)); /* the LOGIN command, not SASL */
    CHECK(!sasl_mech_from_name("CRAM-MD5", &m));
    CHECK(strcmp(sasl_mech_name(SASL_SCRAM_SHA_256), "SCRAM-SHA-256") == 0);
    CHECK(sasl_mech_takes_token(SASL_XOAUTH2) && !sasl_mech_takes_token(SASL_PLAIN));
}

static void test_base64(void)
{
    static const char *const vectors[][2] = {
        {"", ""},
        {"f", "Zg=="},
        {"fo", "Zm8="},
        {"foo", "Zm9v"},
        {"foob", "Zm9vYg=="},
        {"fooba", "Zm9vYmE="},
        {"foobar", "Zm9vYmFy"},
    };
    for (size_t i = 0; i < sizeof vectors / sizeof vectors[0]; i++) {
        char *e = sasl_base64_encode((const unsigned char *)vectors[i][0], strlen(vectors[i][0]));
        CHECK(e && strcmp(e, vectors[i][1]) == 0);
        free(e);
        unsigned char *d = NULL;
        size_t n = 0;
        CHECK(sasl_base64_decode(vectors[i][1], strlen(vectors[i][1]), &d, &n) == 0);
        CHECK(d && n == strlen(vectors[i][0]) && memcmp(d, vectors[i][0], n) == 0 && d[n] == 0);
        free(d);
    }
    /* every byte value survives */
    unsigned char all[256];
    for (int i = 0; i < 256; i++)
        all[i] = (unsigned char)i;
    char *e = sasl_base64_encode(all, sizeof all);
    unsigned char *d = NULL;
    size_t n = 0;
    CHECK(e && sasl_base64_decode(e, strlen(e), &d, &n) == 0 && n == 256 &&
          memcmp(d, all, 256) == 0);
    free(e);
    free(d);
    static const char *const bad[] = {
        "Zg=", "Zg=a", "Z===", "Zh==", "Zm9=", "Zm9v!A==", "====", "Zg==Zg==", "Zm 9", "Zm9\n"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        d = (unsigned char *)"x";
        CHECK(sasl_base64_decode(bad[i], strlen(bad[i]), &d, &n) == -EINVAL);
        CHECK(d == NULL);
    }
}

static void test_plain(void)
{
    struct sasl *s = sasl_new(SASL_PLAIN, "jane", "pa ss");
    size_t len = 0;
    const char *out = step(s, NULL, &len, NULL, NULL);
    CHECK(out && len == 11 && memcmp(out, "\0jane\0pa ss", 11) == 0);
    char err[256];
    CHECK(step(s, "more?", NULL, err, NULL) == NULL);
    CHECK(strcmp(err, "unexpected challenge from the server") == 0);
    CHECK(sasl_finish(s, err, sizeof err) == 0);
    sasl_free(&s);
    CHECK(s == NULL);
    sasl_free(&s);
}

static void test_oauthbearer(void)
{
    struct sasl *s = sasl_new(SASL_OAUTHBEARER, "a,b=c@example.org", "ya29.TOKEN");
    const char *out = step(s, NULL, NULL, NULL, NULL);
    CHECK(out && strcmp(out, "n,a=a=2Cb=3Dc@example.org,\001auth=Bearer ya29.TOKEN\001\001") == 0);
    CHECK(sasl_server_error(s) == NULL);
    /* refused: the server's JSON in a challenge, answered with ^A */
    out = step(s, "{\"status\":\"invalid_token\",\"schemes\":\"bearer\",\"scope\":\"mail\"}", NULL,
               NULL, NULL);
    CHECK(out && strcmp(out, "\001") == 0);
    CHECK(sasl_server_error(s) && strcmp(sasl_server_error(s), "status \"invalid_token\"") == 0);
    char err[256];
    CHECK(step(s, "again", NULL, err, NULL) == NULL);
    sasl_free(&s);

    /* no status: the text itself, printable */
    s = sasl_new(SASL_OAUTHBEARER, "u", "t");
    step(s, NULL, NULL, NULL, NULL);
    out = step(s, "{\"error\":\"no\nway\"}", NULL, NULL, NULL);
    CHECK(out && sasl_server_error(s) &&
          strcmp(sasl_server_error(s), "{\"error\":\"no?way\"}") == 0);
    sasl_free(&s);
}

static void test_xoauth2(void)
{
    struct sasl *s = sasl_new(SASL_XOAUTH2, "jane@example.org", "EwB.TOKEN");
    const char *out = step(s, NULL, NULL, NULL, NULL);
    CHECK(out && strcmp(out, "user=jane@example.org\001auth=Bearer EwB.TOKEN\001\001") == 0);
    /* Gmail's form of a refusal; the answer is empty */
    size_t len = 99;
    out = step(s,
               "{\"status\":\"400\",\"schemes\":\"Bearer\",\"scope\":\"https://mail.google.com/\"}",
               &len, NULL, NULL);
    CHECK(out && len == 0);
    CHECK(sasl_server_error(s) && strcmp(sasl_server_error(s), "status \"400\"") == 0);
    sasl_free(&s);
}

/* RFC 7677 section 3 */
#define RFC_NONCE "rOprNGfwEbeRWgbNEkqO"
#define RFC_SERVER_FIRST                                                                           \
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
#define RFC_CLIENT_FINAL                                                                           \
    "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+"               \
    "Ute9ytag9zjfMHgsqm"                                                                           \
    "miz7AndVQ="
#define RFC_SERVER_FINAL "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

static struct sasl *scram_rfc(void)
{
    struct sasl *s = sasl_new(SASL_SCRAM_SHA_256, "user", "pencil");
    CHECK(sasl_set_nonce(s, RFC_NONCE) == 0);
    const char *out = step(s, NULL, NULL, NULL, NULL);
    CHECK(out && strcmp(out, "n,,n=user,r=" RFC_NONCE) == 0);
    return s;
}

static void test_scram(void)
{
    char err[256];
    struct sasl *s = scram_rfc();
    const char *out = step(s, RFC_SERVER_FIRST, NULL, NULL, NULL);
    CHECK(out && strcmp(out, RFC_CLIENT_FINAL) == 0);
    CHECK(sasl_finish(s, err, sizeof err) == ERR_AUTH); /* not proven yet */
    size_t len = 99;
    out = step(s, RFC_SERVER_FINAL, &len, NULL, NULL);
    CHECK(out && len == 0);
    CHECK(sasl_finish(s, err, sizeof err) == 0);
    sasl_free(&s);

    /* a server that does not know the password */
    s = scram_rfc();
    step(s, RFC_SERVER_FIRST, NULL, NULL, NULL);
    int code = 0;
    CHECK(step(s, "v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=", NULL, err, &code) == NULL);
    CHECK(code == ERR_AUTH && strstr(err, "signature is wrong"));
    CHECK(sasl_finish(s, err, sizeof err) == ERR_AUTH);
    CHECK(strcmp(err, "the server accepted the login without proving that it knows the "
                      "password") == 0);
    sasl_free(&s);

    /* the server's own error */
    s = scram_rfc();
    step(s, RFC_SERVER_FIRST, NULL, NULL, NULL);
    out = step(s, "e=invalid-proof", NULL, NULL, NULL);
    CHECK(out && sasl_server_error(s) && strcmp(sasl_server_error(s), "invalid-proof") == 0);
    CHECK(sasl_finish(s, err, sizeof err) == ERR_AUTH);
    sasl_free(&s);

    /* hostile or broken first challenges */
    static const char *const bad[] = {
        "r=someoneelse,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        "r=" RFC_NONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", /* not extended */
        "r=" RFC_NONCE "x,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0",
        "r=" RFC_NONCE "x,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=99999999999",
        "r=" RFC_NONCE "x,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=40x",
        "r=" RFC_NONCE "x,s=!!,i=4096",
        "r=" RFC_NONCE "x,s=,i=4096",
        "r=" RFC_NONCE "x,i=4096",
        "m=ext,r=" RFC_NONCE "x,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        s = scram_rfc();
        CHECK(step(s, bad[i], NULL, err, &code) == NULL);
        CHECK(code == ERR_PROTOCOL);
        sasl_free(&s);
    }
    /* a NUL inside a challenge */
    s = scram_rfc();
    unsigned char *o = NULL;
    size_t olen = 0;
    CHECK(sasl_step(s, (const unsigned char *)"r=a\0b", 5, &o, &olen, err, sizeof err) ==
          ERR_PROTOCOL);
    sasl_free(&s);

    /* user names are saslnames; a random nonce is printable and new */
    s = sasl_new(SASL_SCRAM_SHA_256, "a=b,c", "p");
    out = step(s, NULL, NULL, NULL, NULL);
    CHECK(out && strncmp(out, "n,,n=a=3Db=2Cc,r=", 17) == 0 && strlen(out) == 17 + 32);
    char first[128];
    snprintf(first, sizeof first, "%s", out);
    sasl_free(&s);
    s = sasl_new(SASL_SCRAM_SHA_256, "a=b,c", "p");
    out = step(s, NULL, NULL, NULL, NULL);
    CHECK(out && strcmp(out, first) != 0);
    sasl_free(&s);
}

int main(void)
{
    test_names();
    test_base64();
    test_plain();
    test_oauthbearer();
    test_xoauth2();
    test_scram();
    return check_finish();
}
