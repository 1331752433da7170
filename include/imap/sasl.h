/*
 * The client side of the SASL mechanisms used with AUTHENTICATE (RFC 4422):
 *
 *   PLAIN          RFC 4616: authorization identity empty, user, password
 *   SCRAM-SHA-256  RFC 5802 and RFC 7677, without channel binding; the
 *                  server must prove that it knows the password too
 *   OAUTHBEARER    RFC 7628, an OAuth 2.0 access token
 *   XOAUTH2        the older form of the same that Gmail and Microsoft 365
 *                  accept
 *
 * No I/O here: the connection decodes the server's challenges from base64,
 * hands them to sasl_step() and encodes the answers. Every buffer holding
 * a secret is wiped before it is freed; the answers the caller receives
 * must be wiped too (sasl_secret_free).
 *
 * SCRAM: user names and passwords are used as given (UTF-8), without the
 * SASLprep normalisation; ASCII ones are unaffected.
 */
#ifndef INTERIMAP_IMAP_SASL_H
#define INTERIMAP_IMAP_SASL_H

#include <stdbool.h>
#include <stddef.h>

enum sasl_mech {
    SASL_PLAIN,
    SASL_SCRAM_SHA_256,
    SASL_OAUTHBEARER,
    SASL_XOAUTH2,
};

/* The mechanism of an IMAP capability name (without "AUTH="), compared
 * without regard to case; false for a mechanism we do not implement. */
bool sasl_mech_from_name(const char *name, enum sasl_mech *out);
const char *sasl_mech_name(enum sasl_mech mech);
/* True when the secret is an OAuth 2.0 access token, not a password. */
bool sasl_mech_takes_token(enum sasl_mech mech);

struct sasl;

/* Copies user and secret. NULL when out of memory. */
struct sasl *sasl_new(enum sasl_mech mech, const char *user, const char *secret);
/* Wipes and frees; accepts NULL and clears the pointer. */
void sasl_free(struct sasl **ps);

/* For tests: the SCRAM client nonce, instead of a random one (before the
 * first sasl_step). */
int sasl_set_nonce(struct sasl *s, const char *nonce);

/*
 * One step of the exchange. The first call, with challenge NULL, gives the
 * client's first message (sent as the initial response, or in answer to
 * the server's first, empty, challenge). Each later call answers a
 * challenge. On success returns 0 with *out (*outlen bytes, NUL-terminated
 * for convenience) to send; the caller frees it with sasl_secret_free.
 * On failure returns a negative code with err set; the caller then cancels
 * the exchange ("*").
 *
 * OAUTHBEARER and XOAUTH2 servers report a refused token in a challenge: it
 * is kept (sasl_server_error) and answered as the mechanism requires, so
 * that the server ends the exchange with its NO.
 */
int sasl_step(struct sasl *s, const unsigned char *challenge, size_t len, unsigned char **out,
              size_t *outlen, char *err, size_t errlen);

/* After the server's OK: 0 if the exchange is complete on our side too
 * (SCRAM: the server's signature was received and checked), else a
 * negative code with err set. */
int sasl_finish(const struct sasl *s, char *err, size_t errlen);

/* What the server said about a failure inside the exchange, made printable
 * (for example "status \"invalid_token\""), or NULL. */
const char *sasl_server_error(const struct sasl *s);

/* Base64 (RFC 4648, with padding). encode returns a new NUL-terminated
 * string or NULL; decode returns 0 and a new buffer (NUL-terminated) or
 * -EINVAL for anything that is not canonical base64. */
char *sasl_base64_encode(const unsigned char *in, size_t len);
int sasl_base64_decode(const char *in, size_t len, unsigned char **out, size_t *outlen);

/* Wipes len bytes and frees; accepts NULL and clears the pointer. */
void sasl_secret_free(unsigned char **p, size_t len);

#endif
