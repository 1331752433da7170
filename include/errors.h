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

/* Every code with its description, in one list: the enum and err_str()
 * are both generated from it. */
#define ERR_LIST(X)                                                                                \
    X(ERR_PROTOCOL, "protocol error")                       /* the peer broke the protocol */      \
    X(ERR_TLS, "TLS error")                                 /* handshake or record failure */      \
    X(ERR_AUTH, "authentication failed")                    /* authentication refused */           \
    X(ERR_BYE, "server closed the session")                 /* the server sent BYE */              \
    X(ERR_NO, "command refused by the server")              /* a tagged NO */                      \
    X(ERR_BAD, "command rejected by the server as invalid") /* a tagged BAD */                     \
    X(ERR_EOF, "connection closed by the server")           /* closed unexpectedly */              \
    X(ERR_CONFIG, "configuration error")                    /* configuration or command line */    \
    X(ERR_UNSUPPORTED, "unsupported by the server")         /* a capability is missing */          \
    X(ERR_TOO_BIG, "response too large") /* a line, literal or nesting too big */                  \
    X(ERR_DB, "database error")          /* SQLite failure */                                      \
    X(ERR_STATE_MISMATCH, "state database inconsistent with the server")                           \
    X(ERR_SOCKS, "SOCKS5 proxy error")      /* the SOCKS5 proxy refused or failed */               \
    X(ERR_COMMAND, "helper command failed") /* a password or token command failed */

#define ERR_ENUM_ITEM(name, text) name,
enum {
    ERR_BASE = -10001, /* codes count up from -10000, below every errno */
    ERR_LIST(ERR_ENUM_ITEM)
};
#undef ERR_ENUM_ITEM

/* Short description of a code (negative errno or ERR_*); never NULL. */
const char *err_str(int code);

#endif
