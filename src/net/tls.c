/*
 * TLS stream layer over OpenSSL memory BIOs.
 *
 * OpenSSL reads ciphertext from `rbio` and writes ciphertext to `wbio`, two
 * growable memory BIOs; it never touches a socket. This layer moves bytes
 * between those BIOs and the stream below. Every SSL_* call returns before
 * the layer yields (WANT_READ is reported instead of blocking), so one
 * coroutine reading and another writing never find OpenSSL in the middle of
 * an operation. The only shared resource is the lower stream's write side:
 * `out_busy` makes sure a single coroutine drains wbio at a time.
 */
#include "net/tls.h"

#include "coro/coro.h"
#include "errors.h"
#include "net/stream.h"
#include "util/array.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

/* Ciphertext moved per lower read/write; one TLS record plus overhead. */
#define TLS_IO_CHUNK (16 * 1024 + 512)
/* Plaintext handed to SSL_write before draining, bounding wbio's growth. */
#define TLS_WRITE_CHUNK (64 * 1024)
#define TLS_MAX_DIGEST  64

struct tls_pin {
    const EVP_MD *md; /* owned (EVP_MD_fetch) */
    unsigned char digest[TLS_MAX_DIGEST];
    size_t len;
};

struct tls_stream {
    struct stream base;
    SSL_CTX *ctx;
    SSL *ssl;
    BIO *rbio; /* owned by ssl */
    BIO *wbio; /* owned by ssl */

    bool verify;
    bool leaf_checked; /* the depth-0 certificate went through pins */
    struct tls_pin *pins;
    size_t npins;
    char host[256];          /* for messages */
    char verify_reason[400]; /* first verification failure, "" if none */

    bool out_busy;           /* a coroutine is draining wbio */
    struct coro *out_waiter; /* writer waiting for out_busy to clear */
    int out_err;             /* sticky failure of the lower write side */
    int in_err;              /* sticky failure of the read side */
    bool in_eof;

    unsigned char inbuf[TLS_IO_CHUNK];
    unsigned char outbuf[TLS_IO_CHUNK];
};

static const struct stream_ops tls_ops;

/* ---- option parsing ---------------------------------------------------- */

static int tls_version_from_name(const char *name)
{
    static const struct {
        const char *name;
        int version;
    } versions[] = {
        {"SSLv3", SSL3_VERSION},     {"TLSv1", TLS1_VERSION},     {"TLSv1.0", TLS1_VERSION},
        {"TLSv1.1", TLS1_1_VERSION}, {"TLSv1.2", TLS1_2_VERSION}, {"TLSv1.3", TLS1_3_VERSION},
    };
    for (size_t i = 0; i < sizeof versions / sizeof versions[0]; i++)
        if (strcmp(name, versions[i].name) == 0)
            return versions[i].version;
    return -1;
}

/* SSL_OP_NO_* bit for a name of the deprecated SSL_protocols list, 0 when
 * unknown. SSLv2 is accepted (and means nothing) as the older tool did. */
static uint64_t tls_proto_flag(const char *name, size_t len)
{
    static const struct {
        const char *name;
        uint64_t flag;
    } protos[] = {
        {"SSLv2", SSL_OP_NO_SSLv2},     {"SSLv3", SSL_OP_NO_SSLv3},
        {"TLSv1", SSL_OP_NO_TLSv1},     {"TLSv1.1", SSL_OP_NO_TLSv1_1},
        {"TLSv1.2", SSL_OP_NO_TLSv1_2}, {"TLSv1.3", SSL_OP_NO_TLSv1_3},
    };
    /* "TLSv1.0" is spelled "TLSv1" here */
    if (len > 2 && memcmp(name + len - 2, ".0", 2) == 0)
        len -= 2;
    for (size_t i = 0; i < sizeof protos / sizeof protos[0]; i++)
        if (strlen(protos[i].name) == len && memcmp(name, protos[i].name, len) == 0)
            return protos[i].flag ? protos[i].flag : UINT64_C(1) << 63;
    return 0;
}

/* Applies (ctx != NULL) or only checks the SSL_protocols list. */
static int tls_protocols_apply(SSL_CTX *ctx, const char *list, char *err, size_t errlen)
{
    uint64_t include = 0, exclude = 0, all = 0;
    const char *all_names[] = {"SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"};
    for (size_t i = 0; i < sizeof all_names / sizeof all_names[0]; i++)
        all |= tls_proto_flag(all_names[i], strlen(all_names[i]));

    const char *p = list;
    while (*p) {
        while (*p == ' ' || *p == '\t')
            p++;
        if (!*p)
            break;
        bool neg = *p == '!';
        if (neg)
            p++;
        size_t len = strcspn(p, " \t");
        uint64_t flag = tls_proto_flag(p, len);
        if (!flag) {
            snprintf(err, errlen, "unknown SSL protocol '%.*s' in SSL_protocols", (int)len, p);
            return ERR_CONFIG;
        }
        if (neg)
            exclude |= flag;
        else
            include |= flag;
        p += len;
    }
    if (include & all)
        exclude |= all & ~include; /* only the listed ones stay enabled */
    exclude &= all;
    if (ctx)
        SSL_CTX_set_options(ctx, exclude);
    return 0;
}

static int tls_hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/*
 * Parses one "[algo$]hex" item. On success pin->md is a fetched digest the
 * caller releases with EVP_MD_free.
 */
static int tls_pin_parse(const char *item, size_t len, struct tls_pin *pin, char *err,
                         size_t errlen)
{
    char algo[64] = "sha256";
    const char *hex = item;
    size_t hexlen = len;
    const char *dollar = memchr(item, '$', len);
    if (dollar) {
        size_t alen = (size_t)(dollar - item);
        if (alen == 0 || alen >= sizeof algo) {
            snprintf(err, errlen, "invalid digest name in SSL_fingerprint '%.*s'", (int)len, item);
            return ERR_CONFIG;
        }
        memcpy(algo, item, alen);
        algo[alen] = '\0';
        hex = dollar + 1;
        hexlen = len - alen - 1;
    }
    EVP_MD *md = EVP_MD_fetch(NULL, algo, NULL);
    if (!md) {
        ERR_clear_error();
        snprintf(err, errlen, "unknown digest '%s' in SSL_fingerprint", algo);
        return ERR_CONFIG;
    }
    size_t n = 0;
    int hi = -1;
    for (size_t i = 0; i < hexlen; i++) {
        if (hex[i] == ':')
            continue;
        int v = tls_hexval((unsigned char)hex[i]);
        if (v < 0) {
            snprintf(err, errlen, "invalid hexadecimal digit '%c' in SSL_fingerprint '%.*s'",
                     hex[i], (int)len, item);
            goto fail;
        }
        if (hi < 0) {
            hi = v;
            continue;
        }
        if (n == sizeof pin->digest) {
            snprintf(err, errlen, "SSL_fingerprint '%.*s' is too long", (int)len, item);
            goto fail;
        }
        pin->digest[n++] = (unsigned char)(hi << 4 | v);
        hi = -1;
    }
    if (hi >= 0) {
        snprintf(err, errlen, "odd number of hexadecimal digits in SSL_fingerprint '%.*s'",
                 (int)len, item);
        goto fail;
    }
    if ((int)n != EVP_MD_get_size(md)) {
        snprintf(err, errlen, "SSL_fingerprint '%.*s' has %zu bytes, a %s digest has %d", (int)len,
                 item, n, algo, EVP_MD_get_size(md));
        goto fail;
    }
    pin->md = md;
    pin->len = n;
    return 0;
fail:
    EVP_MD_free(md);
    return ERR_CONFIG;
}

static void tls_pins_free(struct tls_pin *pins, size_t npins)
{
    for (size_t i = 0; i < npins; i++)
        EVP_MD_free((EVP_MD *)pins[i].md);
    free(pins);
}

static int tls_pins_parse(const char *list, struct tls_pin **out, size_t *nout, char *err,
                          size_t errlen)
{
    *out = NULL;
    *nout = 0;
    if (!list)
        return 0;
    size_t cap = 0, n = 0;
    struct tls_pin *pins = NULL;
    const char *p = list;
    int rc = 0;
    for (;;) {
        p += strspn(p, " \t");
        if (!*p)
            break;
        size_t len = strcspn(p, " \t");
        struct tls_pin *np = array_reserve(pins, &cap, n + 1, sizeof *np, 4);
        if (!np) {
            rc = -ENOMEM;
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
        pins = np;
        rc = tls_pin_parse(p, len, &pins[n], err, errlen);
        if (rc < 0)
            goto fail;
        n++;
        p += len;
    }
    if (n == 0) {
        free(pins);
        snprintf(err, errlen, "SSL_fingerprint is empty");
        return ERR_CONFIG;
    }
    *out = pins;
    *nout = n;
    return 0;
fail:
    tls_pins_free(pins, n);
    return rc;
}

static bool tls_str_set(const char *s)
{
    return s && *s;
}

int tls_options_check(const struct tls_options *opts, char *err, size_t errlen)
{
    int rc = 0;
    SSL_CTX *ctx = NULL;
    if (tls_str_set(opts->protocol_min) && tls_version_from_name(opts->protocol_min) < 0) {
        snprintf(err, errlen,
                 "unknown SSL_protocol_min '%s' (expected SSLv3, TLSv1, TLSv1.1, "
                 "TLSv1.2 or TLSv1.3)",
                 opts->protocol_min);
        return ERR_CONFIG;
    }
    if (tls_str_set(opts->protocol_max) && tls_version_from_name(opts->protocol_max) < 0) {
        snprintf(err, errlen,
                 "unknown SSL_protocol_max '%s' (expected SSLv3, TLSv1, TLSv1.1, "
                 "TLSv1.2 or TLSv1.3)",
                 opts->protocol_max);
        return ERR_CONFIG;
    }
    if (opts->protocols) {
        rc = tls_protocols_apply(NULL, opts->protocols, err, errlen);
        if (rc < 0)
            return rc;
    }
    if (opts->fingerprints) {
        struct tls_pin *pins;
        size_t npins;
        rc = tls_pins_parse(opts->fingerprints, &pins, &npins, err, errlen);
        if (rc < 0)
            return rc;
        tls_pins_free(pins, npins);
    }
    if (opts->cipherlist || opts->ciphersuites) {
        ctx = SSL_CTX_new(TLS_client_method());
        if (!ctx) {
            snprintf(err, errlen, "cannot create a TLS context");
            return ERR_TLS;
        }
        if (opts->cipherlist && SSL_CTX_set_cipher_list(ctx, opts->cipherlist) != 1) {
            snprintf(err, errlen, "invalid SSL_cipherlist '%s'", opts->cipherlist);
            rc = ERR_CONFIG;
        } else if (opts->ciphersuites && SSL_CTX_set_ciphersuites(ctx, opts->ciphersuites) != 1) {
            snprintf(err, errlen, "invalid SSL_ciphersuites '%s'", opts->ciphersuites);
            rc = ERR_CONFIG;
        }
        ERR_clear_error();
        SSL_CTX_free(ctx);
    }
    return rc;
}

/* ---- verification ------------------------------------------------------ */

static void tls_hex(const unsigned char *d, size_t n, char *out, size_t outlen)
{
    size_t o = 0;
    for (size_t i = 0; i < n && o + 3 <= outlen; i++, o += 2)
        snprintf(out + o, 3, "%02x", d[i]);
    if (outlen)
        out[o < outlen ? o : outlen - 1] = '\0';
}

/* Digest of the certificate's SubjectPublicKeyInfo (DER). */
static bool tls_spki_digest(X509 *cert, const EVP_MD *md, unsigned char *out, unsigned *outlen)
{
    unsigned char *der = NULL;
    int len = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(cert), &der);
    if (len <= 0)
        return false;
    bool ok = EVP_Digest(der, (size_t)len, out, outlen, md, NULL) == 1;
    OPENSSL_free(der);
    return ok;
}

/* Whether the certificate's SPKI or whole DER encoding matches a pin. */
static bool tls_pins_match(const struct tls_stream *ts, X509 *cert)
{
    for (size_t i = 0; i < ts->npins; i++) {
        const struct tls_pin *pin = &ts->pins[i];
        unsigned char d[EVP_MAX_MD_SIZE];
        unsigned dlen = 0;
        if (tls_spki_digest(cert, pin->md, d, &dlen) && dlen == pin->len &&
            CRYPTO_memcmp(d, pin->digest, dlen) == 0)
            return true;
        dlen = 0;
        if (X509_digest(cert, pin->md, d, &dlen) == 1 && dlen == pin->len &&
            CRYPTO_memcmp(d, pin->digest, dlen) == 0)
            return true;
    }
    return false;
}

static void tls_pin_mismatch(struct tls_stream *ts, X509 *cert)
{
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned dlen = 0;
    char hex[2 * EVP_MAX_MD_SIZE + 1] = "?";
    if (tls_spki_digest(cert, EVP_sha256(), d, &dlen))
        tls_hex(d, dlen, hex, sizeof hex);
    snprintf(ts->verify_reason, sizeof ts->verify_reason,
             "server certificate fingerprint does not match any SSL_fingerprint "
             "(SPKI sha256 is %s)",
             hex);
}

/*
 * Called by OpenSSL for each certificate of the chain (and for each problem
 * found). It follows the older tool: with SSL_verify the chain and the host
 * name must pass, and SSL_fingerprint, when set, must match as well; without
 * SSL_verify only the fingerprint (when set) decides. The first depth-0 call
 * is where the leaf is compared with the pins.
 */
static int tls_verify_cb(int ok, X509_STORE_CTX *xctx)
{
    SSL *ssl = X509_STORE_CTX_get_ex_data(xctx, SSL_get_ex_data_X509_STORE_CTX_idx());
    struct tls_stream *ts = ssl ? SSL_get_app_data(ssl) : NULL;
    if (!ts)
        return 0;
    int depth = X509_STORE_CTX_get_error_depth(xctx);

    if (!ok && ts->verify && !ts->verify_reason[0]) {
        int e = X509_STORE_CTX_get_error(xctx);
        if (e == X509_V_ERR_HOSTNAME_MISMATCH || e == X509_V_ERR_IP_ADDRESS_MISMATCH)
            snprintf(ts->verify_reason, sizeof ts->verify_reason,
                     "certificate does not match host name '%s'", ts->host);
        else
            snprintf(ts->verify_reason, sizeof ts->verify_reason, "certificate verify failed: %s",
                     X509_verify_cert_error_string(e));
    }
    if (!ts->verify)
        ok = 1;

    if (depth == 0 && !ts->leaf_checked) {
        ts->leaf_checked = true;
        X509 *cert = X509_STORE_CTX_get_current_cert(xctx);
        if (ts->npins && (!cert || !tls_pins_match(ts, cert))) {
            if (cert && (ok || !ts->verify_reason[0]))
                tls_pin_mismatch(ts, cert);
            ok = 0;
        }
    }
    return ok;
}

/* ---- moving bytes ------------------------------------------------------ */

/*
 * Sends everything wbio holds to the lower stream. A coroutine that finds
 * another one draining leaves its bytes to that one, whose loop runs until
 * wbio is empty, so records never interleave.
 */
static int tls_drain(struct tls_stream *ts)
{
    if (ts->out_err)
        return ts->out_err;
    if (ts->out_busy)
        return 0;
    ts->out_busy = true;
    int rc = 0;
    while (BIO_ctrl_pending(ts->wbio) > 0) {
        int n = BIO_read(ts->wbio, ts->outbuf, sizeof ts->outbuf);
        if (n <= 0)
            break;
        rc = stream_write(ts->base.lower, ts->outbuf, (size_t)n);
        if (rc < 0) {
            stream_take_error(&ts->base, "TLS");
            ts->out_err = rc;
            break;
        }
    }
    ts->out_busy = false;
    if (ts->out_waiter) {
        struct coro *w = ts->out_waiter;
        ts->out_waiter = NULL;
        coro_wake(w);
    }
    return rc;
}

/* Waits (only possible from a coroutine) until no one else drains wbio. */
static int tls_wait_out(struct tls_stream *ts)
{
    while (ts->out_busy) {
        struct coro *self = ts->base.sched ? coro_current(ts->base.sched) : NULL;
        if (!self || ts->out_waiter)
            return 0; /* cannot wait: the drain loop will carry our bytes */
        ts->out_waiter = self;
        int rc = coro_suspend(self);
        if (ts->out_waiter == self)
            ts->out_waiter = NULL;
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Reads one chunk of ciphertext from below into rbio. 0, or < 0; sets
 * in_eof at the end of the lower stream. */
static int tls_fill(struct tls_stream *ts)
{
    ssize_t n = stream_read(ts->base.lower, ts->inbuf, sizeof ts->inbuf);
    if (n < 0) {
        stream_take_error(&ts->base, "TLS");
        return (int)n;
    }
    if (n == 0) {
        ts->in_eof = true;
        BIO_set_mem_eof_return(ts->rbio, 0); /* OpenSSL now sees EOF */
        return 0;
    }
    if (BIO_write(ts->rbio, ts->inbuf, (int)n) != (int)n) {
        stream_set_error(&ts->base, "TLS: out of memory");
        return -ENOMEM;
    }
    return 0;
}

/* Describes the OpenSSL error queue's first reason (and clears the queue). */
static void tls_ssl_reason(char *buf, size_t buflen)
{
    unsigned long e = ERR_get_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    if (r)
        snprintf(buf, buflen, "%s", r);
    else if (e)
        snprintf(buf, buflen, "error %lu", e);
    else
        snprintf(buf, buflen, "unexpected end of stream");
    ERR_clear_error();
}

/* ---- stream ops -------------------------------------------------------- */

static ssize_t tls_read(struct stream *s, void *buf, size_t cap)
{
    struct tls_stream *ts = (struct tls_stream *)s;
    if (ts->in_err)
        return ts->in_err;
    if (cap > INT32_MAX)
        cap = INT32_MAX;
    for (;;) {
        ERR_clear_error();
        int n = SSL_read(ts->ssl, buf, (int)cap);
        int e = n > 0 ? SSL_ERROR_NONE : SSL_get_error(ts->ssl, n);
        char reason[160];
        if (e == SSL_ERROR_SSL || e == SSL_ERROR_SYSCALL)
            tls_ssl_reason(reason, sizeof reason);
        /* post-handshake messages (key update, renegotiation) may need an
         * answer even when nobody writes */
        if (BIO_ctrl_pending(ts->wbio) > 0 && !ts->out_busy) {
            int rc = tls_drain(ts);
            if (rc < 0 && n <= 0)
                return ts->in_err = rc;
        }
        switch (e) {
        case SSL_ERROR_NONE:
            return n;
        case SSL_ERROR_ZERO_RETURN: /* close_notify */
            return 0;
        case SSL_ERROR_WANT_READ:
            if (ts->in_eof)
                return 0;
            int rc = tls_fill(ts);
            if (rc < 0)
                return ts->in_err = rc;
            continue;
        case SSL_ERROR_SYSCALL:
            if (ts->in_eof)
                return 0; /* closed without close_notify, as servers often do */
            /* fallthrough */
        default:
            stream_set_error(s, "TLS read: %s", reason);
            return ts->in_err = ERR_TLS;
        }
    }
}

static int tls_write(struct stream *s, const void *buf, size_t len)
{
    struct tls_stream *ts = (struct tls_stream *)s;
    const unsigned char *p = buf;
    int rc = tls_wait_out(ts);
    if (rc < 0)
        return rc;
    while (len > 0) {
        if (ts->out_err)
            return ts->out_err;
        int chunk = len > TLS_WRITE_CHUNK ? TLS_WRITE_CHUNK : (int)len;
        ERR_clear_error();
        int n = SSL_write(ts->ssl, p, chunk);
        if (n <= 0) {
            char reason[160];
            tls_ssl_reason(reason, sizeof reason);
            stream_set_error(s, "TLS write: %s", reason);
            ts->out_err = ERR_TLS;
            return ERR_TLS;
        }
        p += n;
        len -= (size_t)n;
        rc = tls_drain(ts);
        if (rc < 0)
            return rc;
    }
    return ts->out_err;
}

static void tls_destroy(struct tls_stream *ts)
{
    SSL_free(ts->ssl);
    SSL_CTX_free(ts->ctx);
    tls_pins_free(ts->pins, ts->npins);
    free(ts);
}

static void tls_free(struct stream *s)
{
    struct tls_stream *ts = (struct tls_stream *)s;
    stream_free(&ts->base.lower);
    tls_destroy(ts);
}

static const struct stream_ops tls_ops = {
    .read = tls_read,
    .write = tls_write,
    .free = tls_free,
};

/* ---- set-up and handshake ---------------------------------------------- */

static int tls_ctx_setup(struct tls_stream *ts, const struct tls_options *o, char *err,
                         size_t errlen)
{
    SSL_CTX *ctx = ts->ctx;
    /* a peer that closes without close_notify is seen as end of stream:
     * IMAP frames its own data, so truncation cannot go unnoticed */
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_IGNORE_UNEXPECTED_EOF);
    if (tls_str_set(o->protocol_min) || tls_str_set(o->protocol_max)) {
        int v;
        if (tls_str_set(o->protocol_min)) {
            v = tls_version_from_name(o->protocol_min);
            if (v < 0 || SSL_CTX_set_min_proto_version(ctx, v) != 1) {
                snprintf(err, errlen, "cannot set SSL_protocol_min '%s'", o->protocol_min);
                return ERR_CONFIG;
            }
        }
        if (tls_str_set(o->protocol_max)) {
            v = tls_version_from_name(o->protocol_max);
            if (v < 0 || SSL_CTX_set_max_proto_version(ctx, v) != 1) {
                snprintf(err, errlen, "cannot set SSL_protocol_max '%s'", o->protocol_max);
                return ERR_CONFIG;
            }
        }
    } else if (o->protocols) {
        /* the deprecated form only counts when the min/max form is absent */
        int rc = tls_protocols_apply(ctx, o->protocols, err, errlen);
        if (rc < 0)
            return rc;
    }
    if (o->cipherlist && SSL_CTX_set_cipher_list(ctx, o->cipherlist) != 1) {
        snprintf(err, errlen, "invalid SSL_cipherlist '%s'", o->cipherlist);
        return ERR_CONFIG;
    }
    if (o->ciphersuites && SSL_CTX_set_ciphersuites(ctx, o->ciphersuites) != 1) {
        snprintf(err, errlen, "invalid SSL_ciphersuites '%s'", o->ciphersuites);
        return ERR_CONFIG;
    }
    if (o->verify) {
        int ok;
        if (tls_str_set(o->cafile) || tls_str_set(o->capath))
            ok = SSL_CTX_load_verify_locations(ctx, tls_str_set(o->cafile) ? o->cafile : NULL,
                                               tls_str_set(o->capath) ? o->capath : NULL);
        else
            ok = SSL_CTX_set_default_verify_paths(ctx);
        if (ok != 1) {
            char reason[160];
            tls_ssl_reason(reason, sizeof reason);
            snprintf(err, errlen, "cannot load trusted certificates from %s: %s",
                     tls_str_set(o->cafile)   ? o->cafile
                     : tls_str_set(o->capath) ? o->capath
                                              : "the system store",
                     reason);
            return ERR_CONFIG;
        }
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, tls_verify_cb);
    return 0;
}

static int tls_ssl_setup(struct tls_stream *ts, const struct tls_options *o, char *err,
                         size_t errlen)
{
    char bare[256];
    const char *host = o->host ? o->host : "";
    /* an IP literal may come bracketed ("[::1]") */
    size_t hl = strlen(host);
    if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']')
        snprintf(bare, sizeof bare, "%.*s", (int)(hl - 2), host + 1);
    else
        snprintf(bare, sizeof bare, "%s", host);
    snprintf(ts->host, sizeof ts->host, "%s", bare);

    unsigned char addr[16];
    bool is_ip = inet_pton(AF_INET, bare, addr) == 1 || inet_pton(AF_INET6, bare, addr) == 1;

    if (o->verify && *bare) {
        X509_VERIFY_PARAM *vpm = SSL_get0_param(ts->ssl);
        X509_VERIFY_PARAM_set_hostflags(vpm, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        int ok = is_ip ? X509_VERIFY_PARAM_set1_ip_asc(vpm, bare)
                       : X509_VERIFY_PARAM_set1_host(vpm, bare, 0);
        if (ok != 1) {
            snprintf(err, errlen, "cannot check the certificate against host '%s'", bare);
            return ERR_CONFIG;
        }
    }
    if (tls_str_set(o->sni)) {
        const char *sni = o->sni;
        bool sni_ip = inet_pton(AF_INET, sni, addr) == 1 || inet_pton(AF_INET6, sni, addr) == 1 ||
                      sni[0] == '[';
        /* RFC 6066 forbids IP addresses in server_name */
        if (!sni_ip && SSL_set_tlsext_host_name(ts->ssl, sni) != 1) {
            snprintf(err, errlen, "invalid TLS server name '%s'", sni);
            return ERR_CONFIG;
        }
    }
    return 0;
}

static int tls_handshake(struct tls_stream *ts, char *err, size_t errlen)
{
    for (;;) {
        ERR_clear_error();
        int r = SSL_connect(ts->ssl);
        int e = r == 1 ? SSL_ERROR_NONE : SSL_get_error(ts->ssl, r);
        char reason[160] = "";
        if (e == SSL_ERROR_SSL || e == SSL_ERROR_SYSCALL)
            tls_ssl_reason(reason, sizeof reason);
        /* flush what OpenSSL produced, including a fatal alert */
        int rc = tls_drain(ts);
        if (e == SSL_ERROR_NONE) {
            if (rc < 0) {
                snprintf(err, errlen, "%s", ts->base.error);
                return rc;
            }
            return 0;
        }
        if (e == SSL_ERROR_WANT_READ) {
            if (rc < 0) {
                snprintf(err, errlen, "%s", ts->base.error);
                return rc;
            }
            if (ts->in_eof) {
                snprintf(err, errlen, "TLS handshake: connection closed by the server");
                return ERR_EOF;
            }
            rc = tls_fill(ts);
            if (rc < 0) {
                snprintf(err, errlen, "%s", ts->base.error);
                return rc;
            }
            continue;
        }
        if (ts->verify_reason[0])
            snprintf(err, errlen, "%s", ts->verify_reason);
        else if (e == SSL_ERROR_SYSCALL && ts->in_eof)
            snprintf(err, errlen, "TLS handshake: connection closed by the server");
        else
            snprintf(err, errlen, "TLS handshake: %s", reason);
        return ERR_TLS;
    }
}

/* Checks done after a successful handshake, as a safety net for the
 * callback (which OpenSSL may not call for the leaf in every path). */
static int tls_post_check(struct tls_stream *ts, char *err, size_t errlen)
{
    X509 *cert = SSL_get0_peer_certificate(ts->ssl);
    if (!cert) {
        snprintf(err, errlen, "server sent no certificate");
        return ERR_TLS;
    }
    if (ts->npins && !ts->leaf_checked && !tls_pins_match(ts, cert)) {
        tls_pin_mismatch(ts, cert);
        snprintf(err, errlen, "%s", ts->verify_reason);
        return ERR_TLS;
    }
    if (ts->verify) {
        long v = SSL_get_verify_result(ts->ssl);
        if (v != X509_V_OK) {
            snprintf(err, errlen, "certificate verify failed: %s",
                     X509_verify_cert_error_string(v));
            return ERR_TLS;
        }
    }
    return 0;
}

int tls_stream_new(struct stream *lower, const struct tls_options *opts, struct stream **out,
                   char *err, size_t errlen)
{
    int rc;
    *out = NULL;
    struct tls_stream *ts = calloc(1, sizeof *ts);
    if (!ts) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    stream_init(&ts->base, &tls_ops, lower, lower->sched);
    ts->verify = opts->verify;
    rc = tls_pins_parse(opts->fingerprints, &ts->pins, &ts->npins, err, errlen);
    if (rc < 0)
        goto fail;

    ts->ctx = SSL_CTX_new(TLS_client_method());
    if (!ts->ctx) {
        snprintf(err, errlen, "cannot create a TLS context");
        rc = ERR_TLS;
        goto fail;
    }
    rc = tls_ctx_setup(ts, opts, err, errlen);
    if (rc < 0)
        goto fail;
    ts->ssl = SSL_new(ts->ctx);
    ts->rbio = BIO_new(BIO_s_mem());
    ts->wbio = BIO_new(BIO_s_mem());
    if (!ts->ssl || !ts->rbio || !ts->wbio) {
        BIO_free(ts->rbio);
        BIO_free(ts->wbio);
        snprintf(err, errlen, "out of memory");
        rc = -ENOMEM;
        goto fail;
    }
    /* an empty rbio means "wait for more", not end of stream */
    BIO_set_mem_eof_return(ts->rbio, -1);
    SSL_set_bio(ts->ssl, ts->rbio, ts->wbio);
    SSL_set_app_data(ts->ssl, ts);
    SSL_set_connect_state(ts->ssl);
    rc = tls_ssl_setup(ts, opts, err, errlen);
    if (rc < 0)
        goto fail;

    rc = tls_handshake(ts, err, errlen);
    if (rc < 0)
        goto fail;
    rc = tls_post_check(ts, err, errlen);
    if (rc < 0)
        goto fail;
    *out = &ts->base;
    return 0;
fail:
    ERR_clear_error();
    tls_destroy(ts); /* lower still belongs to the caller */
    return rc;
}

const char *tls_stream_describe(struct stream *s, char *buf, size_t buflen)
{
    /* find the TLS layer, which may sit below COMPRESS */
    while (s && s->ops != &tls_ops)
        s = s->lower;
    if (!s) {
        snprintf(buf, buflen, "no TLS");
        return buf;
    }
    struct tls_stream *ts = (struct tls_stream *)s;
    snprintf(buf, buflen, "%s %s", SSL_get_version(ts->ssl), SSL_get_cipher_name(ts->ssl));
    return buf;
}
