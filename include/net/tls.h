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
    bool verify;              /* chain + host name (SSL_verify, default true) */
    const char *host;         /* name or IP checked against SAN/CN */
    const char *sni;          /* server name sent; NULL or "" sends none */
    const char *cafile;       /* NULL: system store unless capath set */
    const char *capath;
    const char *fingerprints; /* space-separated "[algo$]hex" (SPKI or cert); NULL: none */
    const char *protocol_min; /* "TLSv1.2" ...; NULL: OpenSSL default */
    const char *protocol_max;
    const char *protocols;    /* deprecated SSL_protocols form, e.g. "!SSLv3 !TLSv1" */
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
 * Performs the handshake over `lower` and verifies the peer as configured
 * (a fingerprint match alone is enough, whatever the chain). May yield.
 * On success *out owns `lower`. On failure `lower` still belongs to the
 * caller and err says why (e.g. "certificate verify failed: self-signed
 * certificate", "host name mismatch", "fingerprint mismatch").
 */
int tls_stream_new(struct stream *lower, const struct tls_options *opts, struct stream **out,
                   char *err, size_t errlen);

/* Negotiated protocol and cipher, for debug logs. */
const char *tls_stream_describe(struct stream *s, char *buf, size_t buflen);

#endif
