/*
 * The configuration file (INI) and its defaults, as documented in the
 * manual: a default section whose options every [local]/[remote] section
 * inherits, then the two server sections.
 *
 * config_load() fills a struct config the caller releases with
 * config_fini(). Every string is owned by the struct. Errors are one line
 * naming the file, the line number and what is wrong.
 */
#ifndef INTERIMAP_CONFIG_H
#define INTERIMAP_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

enum server_type { SERVER_IMAP, SERVER_IMAPS, SERVER_TUNNEL };

/* A byte string that may contain NUL (list-mailbox patterns use NUL for
 * the hierarchy delimiter). data is also NUL-terminated. */
struct bytes {
    char *data;
    size_t len;
};

struct server_config {
    const char *name; /* "local" or "remote" (static) */
    enum server_type type;
    char *host;    /* default "localhost"; may be "[addr]" */
    char *port;    /* default "143" / "993"; NULL for tunnel */
    char *proxy;   /* socks5://... or NULL */
    char *command; /* tunnel only */
    bool starttls; /* default true; only meaningful for SERVER_IMAP */
    char *auth;    /* default "PLAIN LOGIN" */
    char *username;
    char *password;
    char *password_command;    /* the password is the first line it prints */
    char *oauth_token_command; /* the same for an OAuth 2.0 access token */
    bool compress;             /* default false for local, true for remote */
    bool null_stderr;
    char *list_reference; /* default "" */

    /* Time limits (see doc/configuration.md), in seconds, and the slowest
     * transfer accepted, in bytes per second. */
    unsigned connect_timeout; /* each connection attempt; default 30 */
    unsigned login_timeout;   /* connection to logged in; default 30 */
    unsigned timeout;         /* silence while a reply is due; default 60 */
    unsigned min_rate;        /* default 1024 */

    /* TLS */
    bool ssl_verify; /* default true */
    char *ssl_cafile, *ssl_capath;
    char *ssl_fingerprint;
    char *ssl_protocols, *ssl_protocol_min, *ssl_protocol_max;
    char *ssl_cipherlist, *ssl_ciphersuites;
    char *ssl_hostname;    /* NULL: derived from host (none for IP literal) */
    bool ssl_hostname_set; /* explicitly set (possibly to "": no SNI) */
};

struct config {
    char *path;     /* the file that was read (as given to config_load) */
    char *database; /* absolute path after XDG resolution */
    char *logfile;  /* NULL: standard error */
    char *log_prefix;
    struct bytes *list_mailbox; /* decoded patterns; NULL/0: "*" */
    size_t list_mailbox_count;
    char *list_select_opts; /* upper-cased; NULL if unset or empty */
    char *ignore_mailbox;   /* PCRE2 pattern (no flags) or NULL */
    struct server_config local, remote;
};

/*
 * Resolves the configuration path: NULL means "config"; a relative path
 * starts from $XDG_CONFIG_HOME/interimap (or ~/.config/interimap).
 * Returns a malloc'd path or NULL with err set.
 */
char *config_resolve_path(const char *arg, char *err, size_t errlen);

/*
 * The XDG base directory rule shared by the configuration file and the
 * database: an absolute path is returned as is; a relative one is placed
 * under $<xdg_var>/interimap, or $HOME/<home_default>/interimap when the
 * variable is unset. The base directory must exist and be absolute; its
 * "interimap" subdirectory is created (mode 0700) when missing, as the
 * reference implementation does. "./x" is not special (relative). The path
 * must be non-empty and printable. Returns a malloc'd path or NULL with err
 * set (no file or line in the message: the caller adds context).
 */
char *config_xdg_path(const char *xdg_var, const char *home_default, const char *path, char *err,
                      size_t errlen);

/*
 * Reads and validates the file. 0 or ERR_CONFIG with err set to one line
 * "FILE:LINE: what is wrong" (or "FILE: what is wrong" when no line is to
 * blame); the caller prefixes the program name. cfg is overwritten and is
 * left zeroed on failure, so config_fini() is always safe.
 */
int config_load(struct config *cfg, const char *path, char *err, size_t errlen);
void config_fini(struct config *cfg);

/*
 * Splits a list-mailbox value into patterns separated by whitespace: bare
 * words, or non-empty double-quoted names with the escapes \" \\ \0 \a \b
 * \t \n \f \r \xHH (and \v, which stands for a plain "v", as it does in the
 * reference implementation). On success *out is a malloc'd array of
 * *count entries (free each data, then the array); on failure returns
 * ERR_CONFIG with err set and *out NULL.
 */
int config_parse_mailbox_list(const char *value, struct bytes **out, size_t *count, char *err,
                              size_t errlen);
/* Frees an array from config_parse_mailbox_list and clears *list. */
void config_mailbox_list_free(struct bytes **list, size_t count);

#endif
