/*
 * SASL client mechanisms (see include/imap/sasl.h).
 */
#include "imap/sasl.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "errors.h"

enum {
    SCRAM_HASH = SHA256_DIGEST_LENGTH,
    SCRAM_NONCE_BYTES = 24,
    /* RFC 7677 asks for at least 4096; far more than any server uses would
     * only let a hostile server keep us busy */
    SCRAM_MAX_ITERATIONS = 1000000,
};

enum sasl_state {
    SASL_START,      /* nothing sent yet */
    SASL_SENT_FIRST, /* the client's first message is out */
    SASL_SENT_FINAL, /* SCRAM: the client's proof is out */
    SASL_DONE,       /* nothing more to say */
};

struct sasl {
    enum sasl_mech mech;
    enum sasl_state state;
    char *user, *secret;
    char nonce[64];
    char *client_first_bare;                    /* SCRAM, for the AuthMessage */
    unsigned char server_signature[SCRAM_HASH]; /* SCRAM, expected */
    bool server_verified;
    char server_error[256];
};

static const struct {
    const char *name;
    enum sasl_mech mech;
} mech_names[] = {
    {"PLAIN", SASL_PLAIN},
    {"SCRAM-SHA-256", SASL_SCRAM_SHA_256},
    {"OAUTHBEARER", SASL_OAUTHBEARER},
    {"XOAUTH2", SASL_XOAUTH2},
};

bool sasl_mech_from_name(const char *name, enum sasl_mech *out)
{
    for (size_t i = 0; i < sizeof mech_names / sizeof mech_names[0]; i++) {
        if (strcasecmp(name, mech_names[i].name) == 0) {
            *out = mech_names[i].mech;
            return true;
        }
    }
    return false;
}

const char *sasl_mech_name(enum sasl_mech mech)
{
    for (size_t i = 0; i < sizeof mech_names / sizeof mech_names[0]; i++)
        if (mech_names[i].mech == mech)
            return mech_names[i].name;
    return "?";
}

bool sasl_mech_takes_token(enum sasl_mech mech)
{
    return mech == SASL_OAUTHBEARER || mech == SASL_XOAUTH2;
}

static void str_wipe_free(char **p)
{
    if (*p) {
        OPENSSL_cleanse(*p, strlen(*p));
        free(*p);
        *p = NULL;
    }
}

void sasl_secret_free(unsigned char **p, size_t len)
{
    if (p && *p) {
        OPENSSL_cleanse(*p, len);
        free(*p);
        *p = NULL;
    }
}

struct sasl *sasl_new(enum sasl_mech mech, const char *user, const char *secret)
{
    struct sasl *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->mech = mech;
    s->user = strdup(user);
    s->secret = strdup(secret);
    if (!s->user || !s->secret) {
        sasl_free(&s);
        return NULL;
    }
    return s;
}

void sasl_free(struct sasl **ps)
{
    if (!ps || !*ps)
        return;
    struct sasl *s = *ps;
    *ps = NULL;
    str_wipe_free(&s->user);
    str_wipe_free(&s->secret);
    str_wipe_free(&s->client_first_bare);
    OPENSSL_cleanse(s, sizeof *s);
    free(s);
}

int sasl_set_nonce(struct sasl *s, const char *nonce)
{
    size_t len = strlen(nonce);
    if (len >= sizeof s->nonce || strchr(nonce, ','))
        return -EINVAL;
    memcpy(s->nonce, nonce, len + 1);
    return 0;
}

/* ------------------------------------------------------------------ */
/* base64 */

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *sasl_base64_encode(const unsigned char *in, size_t len)
{
    char *out = malloc((len + 2) / 3 * 4 + 1);
    if (!out)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < len)
            v |= in[i + 2];
        out[o++] = b64_alphabet[(v >> 18) & 63];
        out[o++] = b64_alphabet[(v >> 12) & 63];
        out[o++] = i + 1 < len ? b64_alphabet[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < len ? b64_alphabet[v & 63] : '=';
    }
    out[o] = '\0';
    return out;
}

static int b64_value(char c)
{
    const char *p = c ? strchr(b64_alphabet, c) : NULL;
    return p ? (int)(p - b64_alphabet) : -1;
}

int sasl_base64_decode(const char *in, size_t len, unsigned char **out, size_t *outlen)
{
    *out = NULL;
    *outlen = 0;
    if (len % 4)
        return -EINVAL;
    unsigned char *buf = malloc(len / 4 * 3 + 1);
    if (!buf)
        return -ENOMEM;
    size_t o = 0;
    for (size_t i = 0; i < len; i += 4) {
        bool last = i + 4 == len;
        int pad = last ? (in[i + 3] == '=') + (in[i + 2] == '=') : 0;
        if (pad == 1 && in[i + 2] == '=')
            goto invalid; /* "x=y=" */
        uint32_t v = 0;
        for (int k = 0; k < 4 - pad; k++) {
            int d = b64_value(in[i + k]);
            if (d < 0)
                goto invalid;
            v |= (uint32_t)d << (18 - 6 * k);
        }
        /* canonical: the bits the padding hides are zero */
        if ((pad == 1 && (v & 0xff)) || (pad == 2 && (v & 0xffff)))
            goto invalid;
        buf[o++] = (unsigned char)(v >> 16);
        if (pad < 2)
            buf[o++] = (unsigned char)(v >> 8);
        if (pad < 1)
            buf[o++] = (unsigned char)v;
    }
    buf[o] = '\0';
    *out = buf;
    *outlen = o;
    return 0;

invalid:
    OPENSSL_cleanse(buf, len / 4 * 3 + 1);
    free(buf);
    return -EINVAL;
}

/* ------------------------------------------------------------------ */
/* building messages */

struct msg {
    unsigned char *data;
    size_t len, cap;
    bool oom;
};

static void msg_put(struct msg *m, const void *p, size_t n)
{
    if (m->oom)
        return;
    if (m->len + n + 1 > m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 128;
        while (cap < m->len + n + 1)
            cap *= 2;
        unsigned char *d = malloc(cap);
        if (!d) {
            m->oom = true;
            return;
        }
        if (m->data) {
            memcpy(d, m->data, m->len);
            OPENSSL_cleanse(m->data, m->cap);
            free(m->data);
        }
        m->data = d;
        m->cap = cap;
    }
    memcpy(m->data + m->len, p, n);
    m->len += n;
    m->data[m->len] = '\0';
}

static void msg_puts(struct msg *m, const char *s)
{
    msg_put(m, s, strlen(s));
}

/* A user name as a saslname (RFC 5802, RFC 7628): '=' and ',' escaped. */
static void msg_saslname(struct msg *m, const char *name)
{
    for (const char *p = name; *p; p++) {
        if (*p == '=')
            msg_puts(m, "=3D");
        else if (*p == ',')
            msg_puts(m, "=2C");
        else
            msg_put(m, p, 1);
    }
}

static int msg_done(struct msg *m, unsigned char **out, size_t *outlen, char *err, size_t errlen)
{
    if (m->oom || !m->data) {
        sasl_secret_free(&m->data, m->cap);
        if (m->oom) {
            snprintf(err, errlen, "out of memory");
            return -ENOMEM;
        }
        m->data = calloc(1, 1);
        if (!m->data) {
            snprintf(err, errlen, "out of memory");
            return -ENOMEM;
        }
    }
    *out = m->data;
    *outlen = m->len;
    return 0;
}

/* ------------------------------------------------------------------ */
/* OAuth 2.0 errors */

/* The server's JSON error ({"status":"invalid_token",...}): its status
 * when there is one, else the whole text, printable and bounded. */
static void oauth_note_error(struct sasl *s, const unsigned char *json, size_t len)
{
    const char *key = "\"status\"";
    size_t klen = strlen(key);
    for (size_t i = 0; i + klen <= len; i++) {
        if (memcmp(json + i, key, klen) != 0)
            continue;
        size_t p = i + klen;
        while (p < len && (json[p] == ' ' || json[p] == ':'))
            p++;
        bool quoted = p < len && json[p] == '"';
        size_t start = p + quoted, end = start;
        while (end < len && end - start < 64 &&
               (quoted ? json[end] != '"' : (json[end] != ',' && json[end] != '}')) &&
               json[end] >= 0x20 && json[end] < 0x7f)
            end++;
        if (end > start) {
            snprintf(s->server_error, sizeof s->server_error, "status \"%.*s\"", (int)(end - start),
                     (const char *)json + start);
            return;
        }
    }
    size_t o = 0;
    for (size_t i = 0; i < len && o + 4 < sizeof s->server_error; i++)
        s->server_error[o++] = json[i] >= 0x20 && json[i] < 0x7f ? (char)json[i] : '?';
    s->server_error[o] = '\0';
}

/* ------------------------------------------------------------------ */
/* SCRAM-SHA-256 */

static int scram_hmac(const unsigned char *key, size_t keylen, const void *data, size_t len,
                      unsigned char out[SCRAM_HASH])
{
    unsigned int n = SCRAM_HASH;
    return HMAC(EVP_sha256(), key, (int)keylen, data, len, out, &n) ? 0 : -EIO;
}

static int scram_first(struct sasl *s, struct msg *m, char *err, size_t errlen)
{
    if (!s->nonce[0]) {
        unsigned char raw[SCRAM_NONCE_BYTES];
        if (RAND_bytes(raw, sizeof raw) != 1) {
            snprintf(err, errlen, "no random bytes for the SCRAM nonce");
            return -EIO;
        }
        char *b64 = sasl_base64_encode(raw, sizeof raw);
        if (!b64) {
            snprintf(err, errlen, "out of memory");
            return -ENOMEM;
        }
        snprintf(s->nonce, sizeof s->nonce, "%s", b64);
        free(b64);
    }
    struct msg bare = {0};
    msg_puts(&bare, "n=");
    msg_saslname(&bare, s->user);
    msg_puts(&bare, ",r=");
    msg_puts(&bare, s->nonce);
    if (bare.oom) {
        sasl_secret_free(&bare.data, bare.cap);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    s->client_first_bare = (char *)bare.data;
    msg_puts(m, "n,,"); /* no channel binding, no authorization identity */
    msg_puts(m, s->client_first_bare);
    return 0;
}

/* The value of attribute `name` ("r", "s", ...) in a SCRAM message. */
static bool scram_attr(const char *msg, char name, const char **val, size_t *len)
{
    const char *p = msg;
    while (*p) {
        const char *end = strchr(p, ',');
        if (!end)
            end = p + strlen(p);
        if (end - p >= 2 && p[0] == name && p[1] == '=') {
            *val = p + 2;
            *len = (size_t)(end - p - 2);
            return true;
        }
        p = *end ? end + 1 : end;
    }
    return false;
}

static int scram_final(struct sasl *s, const char *server_first, struct msg *m, char *err,
                       size_t errlen)
{
    const char *r, *salt64, *iter;
    size_t rlen, saltlen64, iterlen;
    if (server_first[0] == 'm' && server_first[1] == '=') {
        snprintf(err, errlen, "the server requires a SCRAM extension we do not know");
        return ERR_PROTOCOL;
    }
    if (!scram_attr(server_first, 'r', &r, &rlen) ||
        !scram_attr(server_first, 's', &salt64, &saltlen64) ||
        !scram_attr(server_first, 'i', &iter, &iterlen)) {
        snprintf(err, errlen, "malformed SCRAM challenge from the server");
        return ERR_PROTOCOL;
    }
    size_t nlen = strlen(s->nonce);
    if (rlen <= nlen || memcmp(r, s->nonce, nlen) != 0) {
        snprintf(err, errlen, "the server's SCRAM nonce does not extend ours");
        return ERR_PROTOCOL;
    }
    unsigned long iterations = 0;
    for (size_t i = 0; i < iterlen; i++) {
        if (iter[i] < '0' || iter[i] > '9' || iterations > SCRAM_MAX_ITERATIONS) {
            iterations = 0;
            break;
        }
        iterations = iterations * 10 + (unsigned long)(iter[i] - '0');
    }
    if (iterations == 0 || iterations > SCRAM_MAX_ITERATIONS) {
        snprintf(err, errlen, "unacceptable SCRAM iteration count from the server");
        return ERR_PROTOCOL;
    }
    unsigned char *salt = NULL;
    size_t saltlen = 0;
    if (sasl_base64_decode(salt64, saltlen64, &salt, &saltlen) < 0 || saltlen == 0) {
        free(salt);
        snprintf(err, errlen, "malformed SCRAM salt from the server");
        return ERR_PROTOCOL;
    }

    unsigned char salted[SCRAM_HASH], client_key[SCRAM_HASH], stored_key[SCRAM_HASH];
    unsigned char client_sig[SCRAM_HASH], proof[SCRAM_HASH], server_key[SCRAM_HASH];
    struct msg without_proof = {0}, auth = {0};
    int rc = -EIO;
    msg_puts(&without_proof, "c=biws,r="); /* biws: base64 of the "n,," header */
    msg_put(&without_proof, r, rlen);
    msg_puts(&auth, s->client_first_bare);
    msg_puts(&auth, ",");
    msg_puts(&auth, server_first);
    msg_puts(&auth, ",");
    msg_put(&auth, without_proof.data, without_proof.len);
    if (without_proof.oom || auth.oom) {
        rc = -ENOMEM;
        goto out;
    }
    if (PKCS5_PBKDF2_HMAC(s->secret, (int)strlen(s->secret), salt, (int)saltlen, (int)iterations,
                          EVP_sha256(), SCRAM_HASH, salted) != 1 ||
        scram_hmac(salted, SCRAM_HASH, "Client Key", 10, client_key) < 0 ||
        !SHA256(client_key, SCRAM_HASH, stored_key) ||
        scram_hmac(stored_key, SCRAM_HASH, auth.data, auth.len, client_sig) < 0 ||
        scram_hmac(salted, SCRAM_HASH, "Server Key", 10, server_key) < 0 ||
        scram_hmac(server_key, SCRAM_HASH, auth.data, auth.len, s->server_signature) < 0)
        goto out;
    for (size_t i = 0; i < SCRAM_HASH; i++)
        proof[i] = client_key[i] ^ client_sig[i];
    char *proof64 = sasl_base64_encode(proof, SCRAM_HASH);
    if (!proof64) {
        rc = -ENOMEM;
        goto out;
    }
    msg_put(m, without_proof.data, without_proof.len);
    msg_puts(m, ",p=");
    msg_puts(m, proof64);
    free(proof64);
    rc = 0;
out:
    if (rc == -ENOMEM)
        snprintf(err, errlen, "out of memory");
    else if (rc < 0)
        snprintf(err, errlen, "SCRAM computation failed");
    OPENSSL_cleanse(salted, sizeof salted);
    OPENSSL_cleanse(client_key, sizeof client_key);
    OPENSSL_cleanse(stored_key, sizeof stored_key);
    OPENSSL_cleanse(client_sig, sizeof client_sig);
    OPENSSL_cleanse(proof, sizeof proof);
    OPENSSL_cleanse(server_key, sizeof server_key);
    sasl_secret_free(&without_proof.data, without_proof.cap);
    sasl_secret_free(&auth.data, auth.cap);
    free(salt);
    return rc;
}

static int scram_check_server(struct sasl *s, const char *server_final, char *err, size_t errlen)
{
    const char *v;
    size_t vlen;
    if (scram_attr(server_final, 'e', &v, &vlen)) {
        snprintf(s->server_error, sizeof s->server_error, "%.*s", (int)(vlen < 64 ? vlen : 64), v);
        return 0; /* the server's NO follows */
    }
    unsigned char *sig = NULL;
    size_t siglen = 0;
    if (!scram_attr(server_final, 'v', &v, &vlen) ||
        sasl_base64_decode(v, vlen, &sig, &siglen) < 0) {
        snprintf(err, errlen, "malformed SCRAM final message from the server");
        return ERR_PROTOCOL;
    }
    bool ok = siglen == SCRAM_HASH && CRYPTO_memcmp(sig, s->server_signature, SCRAM_HASH) == 0;
    free(sig);
    if (!ok) {
        snprintf(err, errlen,
                 "the server's SCRAM signature is wrong: it does not know the password "
                 "(an impostor?)");
        return ERR_AUTH;
    }
    s->server_verified = true;
    return 0;
}

/* ------------------------------------------------------------------ */

static int sasl_first(struct sasl *s, struct msg *m, char *err, size_t errlen)
{
    switch (s->mech) {
    case SASL_PLAIN:
        msg_put(m, "", 1);
        msg_puts(m, s->user);
        msg_put(m, "", 1);
        msg_puts(m, s->secret);
        return 0;
    case SASL_OAUTHBEARER:
        /* gs2 header with the user as authorization identity, then
         * key=value pairs each ended by ^A, and a final ^A */
        msg_puts(m, "n,a=");
        msg_saslname(m, s->user);
        msg_puts(m, ",\001auth=Bearer ");
        msg_puts(m, s->secret);
        msg_puts(m, "\001\001");
        return 0;
    case SASL_XOAUTH2:
        msg_puts(m, "user=");
        msg_puts(m, s->user);
        msg_puts(m, "\001auth=Bearer ");
        msg_puts(m, s->secret);
        msg_puts(m, "\001\001");
        return 0;
    case SASL_SCRAM_SHA_256:
        return scram_first(s, m, err, errlen);
    }
    return -EINVAL;
}

int sasl_step(struct sasl *s, const unsigned char *challenge, size_t len, unsigned char **out,
              size_t *outlen, char *err, size_t errlen)
{
    struct msg m = {0};
    int r;
    *out = NULL;
    *outlen = 0;
    if (!challenge) {
        challenge = (const unsigned char *)"";
        len = 0;
    }
    if (s->state == SASL_START) {
        if (challenge && len) {
            snprintf(err, errlen, "unexpected challenge before the first message");
            return ERR_PROTOCOL;
        }
        r = sasl_first(s, &m, err, errlen);
        s->state = SASL_SENT_FIRST;
    } else if (s->state == SASL_SENT_FIRST && sasl_mech_takes_token(s->mech)) {
        /* a refused token: keep the reason, and answer so that the
         * server can end the exchange (RFC 7628 3.2.3: a single ^A) */
        oauth_note_error(s, challenge, len);
        if (s->mech == SASL_OAUTHBEARER)
            msg_puts(&m, "\001");
        s->state = SASL_DONE;
        r = 0;
    } else if (s->mech == SASL_SCRAM_SHA_256 &&
               (s->state == SASL_SENT_FIRST || s->state == SASL_SENT_FINAL)) {
        /* SCRAM messages are text: a NUL inside is malformed */
        char *text = memchr(challenge, '\0', len) ? NULL : strndup((const char *)challenge, len);
        if (!text) {
            snprintf(err, errlen, "malformed SCRAM message from the server");
            return ERR_PROTOCOL;
        }
        if (s->state == SASL_SENT_FIRST) {
            r = scram_final(s, text, &m, err, errlen);
            s->state = SASL_SENT_FINAL;
        } else {
            r = scram_check_server(s, text, err, errlen);
            s->state = SASL_DONE; /* answered with an empty response */
        }
        free(text);
    } else {
        snprintf(err, errlen, "unexpected challenge from the server");
        return ERR_PROTOCOL;
    }
    if (r < 0) {
        sasl_secret_free(&m.data, m.cap);
        return r;
    }
    return msg_done(&m, out, outlen, err, errlen);
}

int sasl_finish(const struct sasl *s, char *err, size_t errlen)
{
    if (s->mech == SASL_SCRAM_SHA_256 && !s->server_verified) {
        snprintf(err, errlen,
                 "the server accepted the login without proving that it knows the password");
        return ERR_AUTH;
    }
    return 0;
}

const char *sasl_server_error(const struct sasl *s)
{
    return s->server_error[0] ? s->server_error : NULL;
}
