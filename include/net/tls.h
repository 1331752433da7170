/*
 * TLS as a stream layer. OpenSSL works on a pair of memory BIOs and never
 * sees the socket: this layer moves ciphertext between the BIOs and the
 * stream below, so TLS stacks on any transport.
 */
#ifndef INTERIMAP_NET_TLS_H
#define INTERIMAP_NET_TLS_H

#include <stdbool.h>
#include <stddef.h>

struct stream;

struct tls_options {
    bool verify;        /* chain + host name (SSL_verify, default true) */
    const char *host;   /* name or IP checked against SAN/CN */
    const char *sni;    /* server name sent; NULL or "" sends none */
    const char *cafile; /* NULL: system store unless capath set */
    const char *capath;
    /* space-separated "[algo$]hex" (default sha256, any OpenSSL digest;
     * hex in either case, colons allowed) of the SPKI or certificate */
    const char *fingerprints;
    const char *protocol_min; /* "TLSv1.2" ...; NULL: OpenSSL default */
    const char *protocol_max;
    /* deprecated SSL_protocols form, ignored when protocol_min/max is set:
     * "TLSv1.2 TLSv1.3" enables only those, "!SSLv3 !TLSv1" disables those */
    const char *protocols;
    const char *cipherlist;   /* TLS <= 1.2 */
    const char *ciphersuites; /* TLS 1.3 */
};

/*
 * Checks option values that can be checked without a connection (protocol
 * names, fingerprint syntax and digest names, cipher strings). 0 or
 * ERR_CONFIG with err set.
 */
int tls_options_check(const struct tls_options *opts, char *err, size_t errlen);

/*
 * Performs the handshake over `lower` and verifies the peer as configured.
 * May yield. On success *out owns `lower`; the stream allows one reader and
 * one writer at the same time. On failure `lower` still belongs to the
 * caller and err says why.
 *
 * Verification follows the Perl interimap 0.5.7:
 *   verify, no fingerprints: the chain (cafile/capath, else the system
 *     store) and the host name (or IP) must pass;
 *   verify off, fingerprints: a matching fingerprint alone accepts the
 *     server, whatever its chain or name;
 *   verify and fingerprints: both the checks above and a fingerprint match;
 *   neither: anything is accepted.
 * A fingerprint matches the digest of the certificate's SubjectPublicKeyInfo
 * or of the whole DER certificate.
 *
 * Errors (ERR_TLS unless said): "certificate verify failed: <OpenSSL
 * reason>", "certificate does not match host name 'H'", "server certificate
 * fingerprint does not match any SSL_fingerprint (SPKI sha256 is <hex>)",
 * "TLS handshake: <OpenSSL reason>" (e.g. "tlsv1 alert protocol version"),
 * "TLS handshake: connection closed by the server" (ERR_EOF), a lower
 * stream's error prefixed with "TLS: ", ERR_CONFIG for option values.
 *
 * Reads return 0 at close_notify or at the end of the lower stream.
 */
int tls_stream_new(struct stream *lower, const struct tls_options *opts, struct stream **out,
                   char *err, size_t errlen);

/* Negotiated protocol and cipher, for debug logs: "TLSv1.3
 * TLS_AES_256_GCM_SHA384". s may be a layer above TLS (COMPRESS); "no TLS"
 * when there is none. Returns buf. */
const char *tls_stream_describe(struct stream *s, char *buf, size_t buflen);

#endif
