/*
 * TLS layer against an OpenSSL server running in a thread over a socket
 * pair. Certificates (a CA, a leaf it signs, a self-signed one, an expired
 * one) are made when the test starts, in a private temporary directory.
 */
#include "errors.h"
#include "net/tls.h"
#include "testutil.h"

#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

struct certs {
    char dir[64];
    char ca[128];         /* CA certificate */
    char leaf[128];       /* leaf signed by the CA (SAN localhost, 127.0.0.1) */
    char leaf_chain[128]; /* leaf followed by the CA */
    char leaf_key[128];
    char self[128]; /* self-signed leaf */
    char self_key[128];
    char expired[128]; /* signed by the CA, expired */
    char expired_key[128];
};

/* ---- certificate generation -------------------------------------------- */

static void add_ext(X509 *x, X509V3_CTX *v3, int nid, const char *value)
{
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, v3, nid, value);
    if (!ext || !X509_add_ext(x, ext, -1))
        abort();
    X509_EXTENSION_free(ext);
}

static X509 *make_cert(EVP_PKEY *key, const char *cn, const char *san, X509 *issuer,
                       EVP_PKEY *issuer_key, bool ca, long not_before, long not_after)
{
    X509 *x = X509_new();
    unsigned char serial[8];
    RAND_bytes(serial, sizeof serial);
    serial[0] &= 0x7f;
    BIGNUM *bn = BN_bin2bn(serial, sizeof serial, NULL);
    BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x));
    BN_free(bn);
    X509_set_version(x, 2);
    X509_gmtime_adj(X509_getm_notBefore(x), not_before);
    X509_gmtime_adj(X509_getm_notAfter(x), not_after);
    X509_set_pubkey(x, key);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name);
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, issuer ? issuer : x, x, NULL, NULL, 0);
    add_ext(x, &v3, NID_basic_constraints, ca ? "critical,CA:TRUE" : "critical,CA:FALSE");
    add_ext(x, &v3, NID_key_usage,
            ca ? "critical,keyCertSign,cRLSign" : "critical,digitalSignature");
    add_ext(x, &v3, NID_subject_key_identifier, "hash");
    if (issuer)
        add_ext(x, &v3, NID_authority_key_identifier, "keyid");
    if (!ca)
        add_ext(x, &v3, NID_ext_key_usage, "serverAuth");
    if (san)
        add_ext(x, &v3, NID_subject_alt_name, san);
    if (!X509_sign(x, issuer_key ? issuer_key : key, EVP_sha256()))
        abort();
    return x;
}

static void write_cert(const char *path, X509 *a, X509 *b)
{
    FILE *f = fopen(path, "w");
    if (!f || !PEM_write_X509(f, a) || (b && !PEM_write_X509(f, b)))
        abort();
    fclose(f);
}

static void write_key(const char *path, EVP_PKEY *k)
{
    FILE *f = fopen(path, "w");
    if (!f || !PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL))
        abort();
    fclose(f);
}

static void certs_make(struct certs *c)
{
    snprintf(c->dir, sizeof c->dir, "/tmp/test-tls-XXXXXX");
    if (!mkdtemp(c->dir))
        abort();
#define P(field, name) snprintf(c->field, sizeof c->field, "%s/%s", c->dir, name)
    P(ca, "ca.pem");
    P(leaf, "leaf.pem");
    P(leaf_chain, "leaf-chain.pem");
    P(leaf_key, "leaf.key");
    P(self, "self.pem");
    P(self_key, "self.key");
    P(expired, "expired.pem");
    P(expired_key, "expired.key");
#undef P
    EVP_PKEY *cak = EVP_EC_gen("P-256"), *lk = EVP_EC_gen("P-256"), *sk = EVP_EC_gen("P-256"),
             *ek = EVP_EC_gen("P-256");
    X509 *ca = make_cert(cak, "Test CA", NULL, NULL, NULL, true, -3600, 86400);
    X509 *leaf =
        make_cert(lk, "localhost", "DNS:localhost,IP:127.0.0.1", ca, cak, false, -3600, 86400);
    X509 *self =
        make_cert(sk, "localhost", "DNS:localhost,IP:127.0.0.1", NULL, NULL, false, -3600, 86400);
    X509 *exp = make_cert(ek, "localhost", "DNS:localhost,IP:127.0.0.1", ca, cak, false, -2 * 86400,
                          -86400);
    write_cert(c->ca, ca, NULL);
    write_cert(c->leaf, leaf, NULL);
    write_cert(c->leaf_chain, leaf, ca);
    write_key(c->leaf_key, lk);
    write_cert(c->self, self, NULL);
    write_key(c->self_key, sk);
    write_cert(c->expired, exp, NULL);
    write_key(c->expired_key, ek);
    X509_free(ca);
    X509_free(leaf);
    X509_free(self);
    X509_free(exp);
    EVP_PKEY_free(cak);
    EVP_PKEY_free(lk);
    EVP_PKEY_free(sk);
    EVP_PKEY_free(ek);
}

static void certs_remove(struct certs *c)
{
    const char *files[] = {c->ca,   c->leaf,     c->leaf_chain, c->leaf_key,
                           c->self, c->self_key, c->expired,    c->expired_key};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++)
        unlink(files[i]);
    rmdir(c->dir);
}

/* Runs a shell pipeline and returns its first word of output (a digest). */
static void shell_digest(const char *cmd, char *out, size_t outlen)
{
    FILE *p = popen(cmd, "r");
    out[0] = '\0';
    if (!p)
        return;
    if (fgets(out, (int)outlen, p))
        out[strcspn(out, " \n")] = '\0';
    pclose(p);
}

/* ---- the server --------------------------------------------------------- */

enum server_mode { SRV_PING, SRV_LARGE };

struct server {
    int fd;
    const char *cert; /* chain file, leaf first */
    const char *key;
    int min_version, max_version;
    enum server_mode mode;
    size_t large;
    bool abrupt; /* close without close_notify */
    pthread_t thread;
    /* results */
    bool handshake_ok;
    char sni[256];
    bool data_ok;
};

static void *server_main(void *arg)
{
    struct server *sv = arg;
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    SSL *ssl = NULL;
    if (SSL_CTX_use_certificate_chain_file(ctx, sv->cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, sv->key, SSL_FILETYPE_PEM) != 1)
        abort();
    if (sv->min_version)
        SSL_CTX_set_min_proto_version(ctx, sv->min_version);
    if (sv->max_version)
        SSL_CTX_set_max_proto_version(ctx, sv->max_version);
    ssl = SSL_new(ctx);
    SSL_set_fd(ssl, sv->fd);
    if (SSL_accept(ssl) != 1)
        goto done;
    sv->handshake_ok = true;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    snprintf(sv->sni, sizeof sv->sni, "%s", name ? name : "");
    if (sv->mode == SRV_PING) {
        char buf[64];
        int n = SSL_read(ssl, buf, sizeof buf);
        sv->data_ok = n == 6 && memcmp(buf, "ping\r\n", 6) == 0;
        SSL_write(ssl, "pong\r\n", 6);
    } else {
        static unsigned char buf[100000], want[100000];
        size_t got = 0;
        bool ok = true;
        while (got < sv->large) {
            int n = SSL_read(ssl, buf, sizeof buf);
            if (n <= 0) {
                ok = false;
                break;
            }
            test_pattern(1, got, want, (size_t)n);
            if (memcmp(buf, want, (size_t)n) != 0)
                ok = false;
            got += (size_t)n;
        }
        sv->data_ok = ok && got == sv->large;
        for (size_t off = 0; off < sv->large;) {
            size_t n = sv->large - off < 70000 ? sv->large - off : 70000;
            test_pattern(2, off, buf, n);
            if (SSL_write(ssl, buf, (int)n) != (int)n)
                break;
            off += n;
        }
    }
    if (!sv->abrupt)
        SSL_shutdown(ssl);
done:
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    close(sv->fd);
    return NULL;
}

/* Connects a TLS stream to a new server thread. On failure the lower stream
 * is freed here. */
static int client_start(struct server *sv, const struct tls_options *o, struct stream **out,
                        char *err, size_t errlen)
{
    int fds[2];
    test_socketpair(fds);
    sv->fd = fds[1];
    if (pthread_create(&sv->thread, NULL, server_main, sv) != 0)
        abort();
    struct stream *low = fd_stream_new(fds[0]);
    int rc = tls_stream_new(low, o, out, err, errlen);
    if (rc < 0)
        stream_free(&low);
    return rc;
}

/* A whole session with the ping exchange: returns the handshake result. */
static int session(struct server *sv, const struct tls_options *o, char *err, size_t errlen)
{
    struct stream *s = NULL;
    err[0] = '\0';
    int rc = client_start(sv, o, &s, err, errlen);
    if (rc == 0) {
        CHECK(stream_write(s, "ping\r\n", 6) == 0);
        char buf[16];
        ssize_t n = stream_read(s, buf, sizeof buf);
        CHECK(n == 6 && memcmp(buf, "pong\r\n", 6) == 0);
        n = stream_read(s, buf, sizeof buf);
        CHECK(n == 0); /* close_notify, or the socket's end */
    }
    stream_free(&s);
    pthread_join(sv->thread, NULL);
    if (rc == 0)
        CHECK(sv->data_ok);
    else
        CHECK(!sv->handshake_ok || !sv->data_ok);
    if (rc != 0)
        fprintf(stderr, "  (handshake failed as: %s)\n", err);
    return rc;
}

static struct tls_options opts_default(const struct certs *c)
{
    struct tls_options o = {0};
    o.verify = true;
    o.host = "localhost";
    o.sni = "localhost";
    o.cafile = c->ca;
    return o;
}

static void test_trusted(const struct certs *c)
{
    struct server sv = {.cert = c->leaf, .key = c->leaf_key};
    struct tls_options o = opts_default(c);
    char err[256];
    CHECK(session(&sv, &o, err, sizeof err) == 0);
    CHECK(strcmp(sv.sni, "localhost") == 0);

    /* host given as an IP: checked against the IP SAN, no SNI sent */
    struct server sv2 = {.cert = c->leaf, .key = c->leaf_key};
    o.host = "127.0.0.1";
    o.sni = "127.0.0.1";
    CHECK(session(&sv2, &o, err, sizeof err) == 0);
    CHECK(sv2.handshake_ok && sv2.sni[0] == '\0');

    /* no SNI at all when asked */
    struct server sv3 = {.cert = c->leaf, .key = c->leaf_key};
    o.host = "localhost";
    o.sni = "";
    CHECK(session(&sv3, &o, err, sizeof err) == 0);
    CHECK(sv3.handshake_ok && sv3.sni[0] == '\0');

    /* a server that hangs up without close_notify: plain end of stream */
    struct server sv5 = {.cert = c->leaf, .key = c->leaf_key, .abrupt = true};
    CHECK(session(&sv5, &o, err, sizeof err) == 0);

    /* an explicit SNI different from the host */
    struct server sv4 = {.cert = c->leaf, .key = c->leaf_key};
    o.sni = "imap.example.org";
    CHECK(session(&sv4, &o, err, sizeof err) == 0);
    CHECK(strcmp(sv4.sni, "imap.example.org") == 0);
}

static void test_untrusted(const struct certs *c)
{
    char err[256];
    struct tls_options o = opts_default(c);

    /* the system store does not know our CA; the server sends its CA too */
    struct server sv = {.cert = c->leaf_chain, .key = c->leaf_key};
    o.cafile = NULL;
    CHECK(session(&sv, &o, err, sizeof err) == ERR_TLS);
    CHECK(strcmp(err, "certificate verify failed: self-signed certificate in certificate "
                      "chain") == 0);

    /* only the leaf: its issuer is unknown */
    struct server sv2 = {.cert = c->leaf, .key = c->leaf_key};
    CHECK(session(&sv2, &o, err, sizeof err) == ERR_TLS);
    CHECK(strcmp(err, "certificate verify failed: unable to get local issuer certificate") == 0);

    /* a self-signed leaf */
    struct server sv3 = {.cert = c->self, .key = c->self_key};
    o.cafile = c->ca;
    CHECK(session(&sv3, &o, err, sizeof err) == ERR_TLS);
    CHECK(strcmp(err, "certificate verify failed: self-signed certificate") == 0);

    /* an expired certificate */
    struct server sv4 = {.cert = c->expired, .key = c->expired_key};
    CHECK(session(&sv4, &o, err, sizeof err) == ERR_TLS);
    CHECK(strcmp(err, "certificate verify failed: certificate has expired") == 0);

    /* verify off accepts all of them */
    o.verify = false;
    o.cafile = NULL;
    struct server sv5 = {.cert = c->self, .key = c->self_key};
    CHECK(session(&sv5, &o, err, sizeof err) == 0);
    struct server sv6 = {.cert = c->expired, .key = c->expired_key};
    o.host = "wrong.example";
    CHECK(session(&sv6, &o, err, sizeof err) == 0);
}

static void test_wrong_host(const struct certs *c)
{
    char err[256];
    struct tls_options o = opts_default(c);
    o.host = "foo.example";
    struct server sv = {.cert = c->leaf, .key = c->leaf_key};
    CHECK(session(&sv, &o, err, sizeof err) == ERR_TLS);
    CHECK(strcmp(err, "certificate does not match host name 'foo.example'") == 0);

    o.host = "127.0.0.2";
    struct server sv2 = {.cert = c->leaf, .key = c->leaf_key};
    CHECK(session(&sv2, &o, err, sizeof err) == ERR_TLS);
    CHECK(strcmp(err, "certificate does not match host name '127.0.0.2'") == 0);

    o.host = "[::1]";
    struct server sv3 = {.cert = c->leaf, .key = c->leaf_key};
    CHECK(session(&sv3, &o, err, sizeof err) == ERR_TLS);
    CHECK(strcmp(err, "certificate does not match host name '::1'") == 0);
}

static void test_fingerprints(const struct certs *c)
{
    char err[512], cmd[512], spki_self[160], spki_leaf[160], sha1_self[160], pin[600];
    /* digests computed the way the manual tells users to */
    snprintf(cmd, sizeof cmd,
             "openssl x509 -in %s -pubkey -noout | openssl pkey -pubin -outform DER | "
             "openssl dgst -sha256 -r",
             c->self);
    shell_digest(cmd, spki_self, sizeof spki_self);
    snprintf(cmd, sizeof cmd,
             "openssl x509 -in %s -pubkey -noout | openssl pkey -pubin -outform DER | "
             "openssl dgst -sha256 -r",
             c->leaf);
    shell_digest(cmd, spki_leaf, sizeof spki_leaf);
    snprintf(cmd, sizeof cmd, "openssl x509 -in %s -noout -fingerprint -sha1 | cut -d= -f2",
             c->self);
    shell_digest(cmd, sha1_self, sizeof sha1_self);
    CHECK(strlen(spki_self) == 64 && strlen(spki_leaf) == 64);
    CHECK(strlen(sha1_self) == 59); /* AB:CD:... */

    struct tls_options o = opts_default(c);

    /* verify off: the SPKI pin alone authenticates a self-signed server */
    o.verify = false;
    o.cafile = NULL;
    o.fingerprints = spki_self;
    struct server sv = {.cert = c->self, .key = c->self_key};
    CHECK(session(&sv, &o, err, sizeof err) == 0);

    /* the whole-certificate digest, another algorithm, colons, upper case,
     * among non-matching pins */
    snprintf(pin, sizeof pin, "sha256$%s sha1$%s", spki_leaf, sha1_self);
    o.fingerprints = pin;
    struct server sv2 = {.cert = c->self, .key = c->self_key};
    CHECK(session(&sv2, &o, err, sizeof err) == 0);

    /* mismatch: the message names the server's SPKI digest */
    o.fingerprints = spki_leaf;
    struct server sv3 = {.cert = c->self, .key = c->self_key};
    CHECK(session(&sv3, &o, err, sizeof err) == ERR_TLS);
    char want[300];
    snprintf(want, sizeof want,
             "server certificate fingerprint does not match any SSL_fingerprint (SPKI sha256 "
             "is %s)",
             spki_self);
    CHECK(strcmp(err, want) == 0);

    /* verify on with a trusted chain: the pin must match as well */
    o = opts_default(c);
    o.fingerprints = spki_leaf;
    struct server sv4 = {.cert = c->leaf, .key = c->leaf_key};
    CHECK(session(&sv4, &o, err, sizeof err) == 0);
    o.fingerprints = spki_self;
    struct server sv5 = {.cert = c->leaf, .key = c->leaf_key};
    CHECK(session(&sv5, &o, err, sizeof err) == ERR_TLS);
    CHECK(strstr(err, "does not match any SSL_fingerprint") != NULL);

    /* verify on: a matching pin does not excuse an untrusted chain (the
     * older tool checks both) */
    o.fingerprints = spki_self;
    struct server sv6 = {.cert = c->self, .key = c->self_key};
    CHECK(session(&sv6, &o, err, sizeof err) == ERR_TLS);
    CHECK(strcmp(err, "certificate verify failed: self-signed certificate") == 0);
    /* ...nor a wrong host name */
    o.fingerprints = spki_leaf;
    o.host = "foo.example";
    struct server sv7 = {.cert = c->leaf, .key = c->leaf_key};
    CHECK(session(&sv7, &o, err, sizeof err) == ERR_TLS);
    CHECK(strcmp(err, "certificate does not match host name 'foo.example'") == 0);
}

static void test_protocols(const struct certs *c)
{
    char err[256], desc[128];
    struct tls_options o = opts_default(c);

    o.protocol_max = "TLSv1.2";
    struct server sv = {.cert = c->leaf, .key = c->leaf_key, .min_version = TLS1_3_VERSION};
    CHECK(session(&sv, &o, err, sizeof err) == ERR_TLS);
    CHECK(strncmp(err, "TLS handshake: ", 15) == 0);
    CHECK(strstr(err, "protocol version") || strstr(err, "unsupported protocol"));

    o.protocol_max = NULL;
    o.protocol_min = "TLSv1.3";
    struct server sv2 = {.cert = c->leaf, .key = c->leaf_key, .max_version = TLS1_2_VERSION};
    CHECK(session(&sv2, &o, err, sizeof err) == ERR_TLS);
    CHECK(strncmp(err, "TLS handshake: ", 15) == 0);

    /* deprecated list forms */
    o.protocol_min = NULL;
    const char *forms[] = {"TLSv1.2", "!TLSv1.3", "!SSLv3 !TLSv1 !TLSv1.1 !TLSv1.3"};
    for (size_t i = 0; i < sizeof forms / sizeof forms[0]; i++) {
        o.protocols = forms[i];
        struct server s3 = {.cert = c->leaf, .key = c->leaf_key};
        struct stream *s = NULL;
        CHECK(client_start(&s3, &o, &s, err, sizeof err) == 0);
        if (s) {
            tls_stream_describe(s, desc, sizeof desc);
            CHECK(strncmp(desc, "TLSv1.2 ", 8) == 0);
            stream_write(s, "ping\r\n", 6);
            char buf[8];
            stream_read(s, buf, sizeof buf);
        }
        stream_free(&s);
        pthread_join(s3.thread, NULL);
    }
    /* min/max take precedence over the deprecated form */
    o.protocols = "TLSv1.2";
    o.protocol_min = "TLSv1.3";
    struct server s4 = {.cert = c->leaf, .key = c->leaf_key};
    struct stream *s = NULL;
    CHECK(client_start(&s4, &o, &s, err, sizeof err) == 0);
    if (s) {
        CHECK(strncmp(tls_stream_describe(s, desc, sizeof desc), "TLSv1.3 ", 8) == 0);
        stream_write(s, "ping\r\n", 6);
        char buf[8];
        stream_read(s, buf, sizeof buf);
    }
    stream_free(&s);
    pthread_join(s4.thread, NULL);

    /* TLS 1.3 cipher suite selection shows in the description */
    o = opts_default(c);
    o.ciphersuites = "TLS_CHACHA20_POLY1305_SHA256";
    struct server s5 = {.cert = c->leaf, .key = c->leaf_key};
    CHECK(client_start(&s5, &o, &s, err, sizeof err) == 0);
    if (s) {
        tls_stream_describe(s, desc, sizeof desc);
        CHECK(strcmp(desc, "TLSv1.3 TLS_CHACHA20_POLY1305_SHA256") == 0);
        stream_write(s, "ping\r\n", 6);
        char buf[8];
        stream_read(s, buf, sizeof buf);
    }
    stream_free(&s);
    pthread_join(s5.thread, NULL);
}

static void test_large(const struct certs *c)
{
    const size_t total = 6 * 1024 * 1024 + 12345;
    char err[256];
    struct tls_options o = opts_default(c);
    struct server sv = {.cert = c->leaf, .key = c->leaf_key, .mode = SRV_LARGE, .large = total};
    struct stream *s = NULL;
    CHECK(client_start(&sv, &o, &s, err, sizeof err) == 0);
    if (s) {
        static unsigned char buf[300000], want[300000];
        /* uneven write sizes, some larger than the layer's chunk */
        size_t off = 0, step = 1;
        while (off < total) {
            size_t n = total - off < step ? total - off : step;
            test_pattern(1, off, buf, n);
            if (stream_write(s, buf, n) != 0)
                break;
            off += n;
            step = step * 3 + 7;
            if (step > sizeof buf)
                step = 1;
        }
        CHECK(off == total);
        size_t got = 0;
        bool same = true;
        while (got < total) {
            ssize_t n = stream_read(s, buf, sizeof buf);
            if (n <= 0)
                break;
            test_pattern(2, got, want, (size_t)n);
            if (memcmp(buf, want, (size_t)n) != 0)
                same = false;
            got += (size_t)n;
        }
        CHECK(got == total && same);
        CHECK(stream_read(s, buf, sizeof buf) == 0);
    }
    stream_free(&s);
    pthread_join(sv.thread, NULL);
    CHECK(sv.data_ok);
}

static void test_options_check(void)
{
    char err[256];
    struct tls_options o = {.verify = true};
    CHECK(tls_options_check(&o, err, sizeof err) == 0);

    o.protocol_min = "TLSv1.2";
    o.protocol_max = "TLSv1.3";
    o.protocols = "!SSLv3 !TLSv1 TLSv1.2 TLSv1.3 TLSv1.0";
    o.fingerprints = "sha256$0123456789abcdef0123456789ABCDEF0123456789abcdef0123456789abcdef "
                     "sha1$00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee:ff:00:11:22:33";
    o.cipherlist = "HIGH:!aNULL";
    o.ciphersuites = "TLS_AES_256_GCM_SHA384";
    CHECK(tls_options_check(&o, err, sizeof err) == 0);

    struct tls_options b = o;
    b.protocol_min = "TLSv1.4";
    CHECK(tls_options_check(&b, err, sizeof err) == ERR_CONFIG);
    CHECK(strstr(err, "TLSv1.4") != NULL);
    b = o;
    b.protocol_max = "tls1.2";
    CHECK(tls_options_check(&b, err, sizeof err) == ERR_CONFIG);
    b = o;
    b.protocols = "!SSLv3 TLSv9";
    CHECK(tls_options_check(&b, err, sizeof err) == ERR_CONFIG);
    CHECK(strstr(err, "TLSv9") != NULL);
    b = o;
    b.fingerprints = "nodigest$00";
    CHECK(tls_options_check(&b, err, sizeof err) == ERR_CONFIG);
    CHECK(strstr(err, "nodigest") != NULL);
    b = o;
    b.fingerprints = "0123456789abcdefg";
    CHECK(tls_options_check(&b, err, sizeof err) == ERR_CONFIG);
    CHECK(strstr(err, "'g'") != NULL);
    b = o;
    b.fingerprints = "sha256$abc";
    CHECK(tls_options_check(&b, err, sizeof err) == ERR_CONFIG);
    b = o;
    b.fingerprints = "sha256$0011"; /* valid hex, wrong size for sha256 */
    CHECK(tls_options_check(&b, err, sizeof err) == ERR_CONFIG);
    CHECK(strstr(err, "32") != NULL);
    b = o;
    b.cipherlist = "NO-SUCH-CIPHER";
    CHECK(tls_options_check(&b, err, sizeof err) == ERR_CONFIG);
    b = o;
    b.ciphersuites = "TLS_NOPE";
    CHECK(tls_options_check(&b, err, sizeof err) == ERR_CONFIG);
}

int main(void)
{
    /* a peer may write after the other end hung up, in failure cases */
    signal(SIGPIPE, SIG_IGN);
    struct certs c;
    certs_make(&c);
    test_options_check();
    test_trusted(&c);
    test_untrusted(&c);
    test_wrong_host(&c);
    test_fingerprints(&c);
    test_protocols(&c);
    test_large(&c);
    certs_remove(&c);
    return check_finish();
}
