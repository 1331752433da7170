/*
 * Error codes shared by every module.
 *
 * Functions return int: 0 (or a positive count) on success, a negative code
 * on failure. System and libuv failures are negative errno values (libuv uses
 * the same numbering on Unix); the codes below cover what errno cannot say.
 * The human-readable detail of a failure (a server's text, an OpenSSL reason)
 * travels separately, in the error buffer of the object that failed.
 */
#ifndef INTERIMAP_ERRORS_H
#define INTERIMAP_ERRORS_H

enum {
    ERR_PROTOCOL = -10000, /* the peer broke the protocol (malformed data) */
    ERR_TLS,               /* TLS handshake or record failure */
    ERR_AUTH,              /* authentication refused */
    ERR_BYE,               /* the server closed the session (BYE) */
    ERR_NO,                /* a tagged NO */
    ERR_BAD,               /* a tagged BAD */
    ERR_EOF,               /* the peer closed the connection unexpectedly */
    ERR_CONFIG,            /* invalid configuration or command line */
    ERR_UNSUPPORTED,       /* a required capability is missing */
    ERR_TOO_BIG,           /* a line, literal or nesting beyond our limits */
    ERR_DB,                /* SQLite failure */
    ERR_STATE_MISMATCH,    /* the state database disagrees with a server */
    ERR_SOCKS,             /* the SOCKS5 proxy refused or failed */
};

/* Short description of a code (negative errno or ERR_*); never NULL. */
const char *err_str(int code);

#endif
