/*
 * Configuration file reader.
 *
 * The file format is the INI dialect of Perl's Config::Tiny, which the
 * reference implementation uses; files must mean the same thing to both
 * programs, so its quirks are kept on purpose:
 *   - lines end at LF, CR, CRLF or CRCRLF;
 *   - a line whose first non-blank character is '#' or ';', or a blank
 *     line, is ignored; '#' later in a line is part of the value;
 *   - " ; " (blank, semicolon, blank) followed by at least one character
 *     starts a trailing comment, anywhere on the line;
 *   - "[name]" opens a section (name trimmed); sections may repeat and
 *     merge; "[_]" is the default section, which is also where lines before
 *     any header go;
 *   - "key = value": the key runs to the first '=', both sides trimmed; a
 *     later duplicate key replaces an earlier one;
 *   - sections other than the default, [local] and [remote] are ignored.
 * Every option is then checked against the character set the reference
 * implementation accepts, so a file one program accepts, the other does too.
 */
#include "config.h"

#include "errors.h"
#include "log.h"
#include "util/array.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

/* ---- character classes, byte-wise as Perl applies them to the file ---- */

/* Perl's \s on a byte string without Unicode rules. */
static bool is_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

/* \p{Control} for a byte taken as a Latin-1 code point: C0, DEL and C1. */
static bool is_control(unsigned char c)
{
    return c < 0x20 || (c >= 0x7f && c <= 0x9f);
}

/* TEXT-CHAR of RFC 3501: any 7-bit byte but NUL, CR and LF. */
static bool is_text_char(unsigned char c)
{
    return c >= 0x01 && c <= 0x7f && c != '\r' && c != '\n';
}

/* ATOM-CHAR of RFC 3501. */
static bool is_atom_char(unsigned char c)
{
    return c == 0x21 || c == 0x23 || c == 0x24 || c == 0x26 || c == 0x27 ||
           (c >= 0x2b && c <= 0x5b) || (c >= 0x5e && c <= 0x7a) || (c >= 0x7c && c <= 0x7e);
}

static bool is_hex(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static bool is_alnum(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static int hex_value(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return c - 'A' + 10;
}

/* ---- error messages ---- */

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Copies s[0..len) into buf for an error message, control bytes as \xHH,
 * so the message stays on one line. */
static void quote_for_message(const char *s, size_t len, char *buf, size_t buflen)
{
    size_t o = 0;

    for (size_t i = 0; i < len && o + 5 < buflen; i++) {
        unsigned char c = (unsigned char)s[i];
        if (is_control(c))
            o += (size_t)snprintf(buf + o, buflen - o, "\\x%02X", c);
        else
            buf[o++] = (char)c;
    }
    if (buflen > 0)
        buf[o < buflen ? o : buflen - 1] = '\0';
}

/* ---- XDG base directories ---- */

static bool all_printable(const char *s)
{
    for (; *s != '\0'; s++)
        if (is_control((unsigned char)*s))
            return false;
    return true;
}

char *config_xdg_path(const char *xdg_var, const char *home_default, const char *path, char *err,
                      size_t errlen)
{
    char *basedir = NULL, *result = NULL;
    const char *env;
    struct stat st;
    size_t n;

    if (path == NULL || *path == '\0' || !all_printable(path)) {
        set_err(err, errlen, "invalid path (it must be non-empty and printable)");
        return NULL;
    }
    if (path[0] == '/')
        return strdup(path);

    env = getenv(xdg_var);
    if (env != NULL) {
        basedir = strdup(env);
    } else {
        const char *home = getenv("HOME");
        /* Like the reference implementation, an unset HOME gives "/<default>". */
        if (home == NULL)
            home = "";
        n = strlen(home) + strlen(home_default) + 2;
        basedir = malloc(n);
        if (basedir != NULL)
            snprintf(basedir, n, "%s/%s", home, home_default);
    }
    if (basedir == NULL)
        goto fail_nomem;
    if (stat(basedir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        set_err(err, errlen, "no such directory: %s", basedir);
        goto fail;
    }
    if (basedir[0] != '/' || !all_printable(basedir)) {
        set_err(err, errlen, "base directory is not an absolute printable path: %s", basedir);
        goto fail;
    }

    n = strlen(basedir) + sizeof("/interimap/") + strlen(path);
    result = malloc(n);
    if (result == NULL)
        goto fail_nomem;
    snprintf(result, n, "%s/interimap", basedir);
    if (mkdir(result, 0700) != 0 && errno != EEXIST) {
        set_err(err, errlen, "cannot create %s: %s", result, strerror(errno));
        goto fail;
    }
    snprintf(result, n, "%s/interimap/%s", basedir, path);
    free(basedir);
    return result;

fail_nomem:
    set_err(err, errlen, "out of memory");
fail:
    free(result);
    free(basedir);
    return NULL;
}

char *config_resolve_path(const char *arg, char *err, size_t errlen)
{
    return config_xdg_path("XDG_CONFIG_HOME", ".config", arg != NULL ? arg : "config", err, errlen);
}

/* ---- list-mailbox ---- */

/* Characters of an unquoted list-mailbox word: list-char without '"',
 * '(', ')', '\\' and '{', as the reference implementation has it. */
static bool is_bare_mailbox_char(unsigned char c)
{
    return c == 0x21 || (c >= 0x23 && c <= 0x27) || (c >= 0x2a && c <= 0x5b) ||
           (c >= 0x5d && c <= 0x7a) || (c >= 0x7c && c <= 0x7e);
}

/* Characters allowed verbatim between double quotes. */
static bool is_quoted_mailbox_char(unsigned char c)
{
    return c == 0x20 || c == 0x21 || (c >= 0x23 && c <= 0x5b) || (c >= 0x5d && c <= 0x7e);
}

/* Decodes the escape at s[i] == '\\'. Returns the bytes consumed (0 if it
 * is not one the reference implementation accepts) and the byte in *out. */
static size_t mailbox_escape_decode(const char *s, size_t len, size_t i, unsigned char *out)
{
    if (i + 1 >= len)
        return 0;
    switch (s[i + 1]) {
    case '"':
        *out = '"';
        return 2;
    case '\\':
        *out = '\\';
        return 2;
    case '0':
        *out = 0;
        return 2;
    case 'a':
        *out = 0x07;
        return 2;
    case 'b':
        *out = 0x08;
        return 2;
    case 't':
        *out = '\t';
        return 2;
    case 'n':
        *out = '\n';
        return 2;
    case 'v':
        /* Perl strings have no \v escape: it passes through as "v". */
        *out = 'v';
        return 2;
    case 'f':
        *out = '\f';
        return 2;
    case 'r':
        *out = '\r';
        return 2;
    case 'x':
        if (i + 3 < len && is_hex((unsigned char)s[i + 2]) && is_hex((unsigned char)s[i + 3])) {
            *out = (unsigned char)(hex_value((unsigned char)s[i + 2]) * 16 +
                                   hex_value((unsigned char)s[i + 3]));
            return 4;
        }
        return 0;
    default:
        return 0;
    }
}

void config_mailbox_list_free(struct bytes **list, size_t count)
{
    if (list == NULL || *list == NULL)
        return;
    for (size_t i = 0; i < count; i++)
        free((*list)[i].data);
    free(*list);
    *list = NULL;
}

static int mailbox_list_push(struct bytes **v, size_t *count, size_t *cap, char *data, size_t len)
{
    struct bytes *nv = array_reserve(*v, cap, *count + 1, sizeof(*nv), 4);
    if (nv == NULL)
        return -ENOMEM;
    *v = nv;
    (*v)[*count].data = data;
    (*v)[*count].len = len;
    (*count)++;
    return 0;
}

int config_parse_mailbox_list(const char *value, struct bytes **out, size_t *count, char *err,
                              size_t errlen)
{
    struct bytes *v = NULL;
    size_t n = 0, cap = 0, len = strlen(value), i = 0;
    char *data = NULL;

    *out = NULL;
    *count = 0;
    /* Same loop as the reference: one token (bare word or quoted name),
     * then whitespace before the next; whatever is left is an error. */
    for (;;) {
        size_t start = i, dlen = 0;

        if (i < len && is_bare_mailbox_char((unsigned char)value[i])) {
            while (i < len && is_bare_mailbox_char((unsigned char)value[i]))
                i++;
            data = strndup(value + start, i - start);
            if (data == NULL)
                goto fail_nomem;
            dlen = i - start;
        } else if (i < len && value[i] == '"') {
            size_t j = i + 1;
            data = malloc(len - i + 1);
            if (data == NULL)
                goto fail_nomem;
            while (j < len) {
                unsigned char c = (unsigned char)value[j], b;
                size_t used;
                if (is_quoted_mailbox_char(c)) {
                    data[dlen++] = (char)c;
                    j++;
                } else if (c == '\\' && (used = mailbox_escape_decode(value, len, j, &b)) > 0) {
                    data[dlen++] = (char)b;
                    j += used;
                } else {
                    break;
                }
            }
            if (dlen > 0 && j < len && value[j] == '"') {
                i = j + 1;
            } else {
                /* Not a complete non-empty quoted name: leave it unparsed. */
                free(data);
                data = NULL;
            }
        }
        if (data != NULL) {
            data[dlen] = '\0';
            if (mailbox_list_push(&v, &n, &cap, data, dlen) < 0)
                goto fail_nomem;
            data = NULL;
        }
        if (i < len && is_space((unsigned char)value[i])) {
            while (i < len && is_space((unsigned char)value[i]))
                i++;
            continue;
        }
        break;
    }
    if (i < len) {
        char shown[64];
        quote_for_message(value + i, len - i < 24 ? len - i : 24, shown, sizeof(shown));
        set_err(err, errlen, "cannot parse the pattern at byte %zu ('%s')", i + 1, shown);
        config_mailbox_list_free(&v, n);
        return ERR_CONFIG;
    }
    *out = v;
    *count = n;
    return 0;

fail_nomem:
    free(data);
    config_mailbox_list_free(&v, n);
    set_err(err, errlen, "out of memory");
    return -ENOMEM;
}

/* ---- value checks ---- */

enum value_check {
    CHECK_NONCTRL_PLUS, /* \P{Control}+ */
    CHECK_NONCTRL_STAR, /* \P{Control}* */
    CHECK_ABS_PATH,     /* '/' then \P{Control}+ */
    CHECK_TYPE,         /* imap | imaps | tunnel */
    CHECK_YESNO,        /* YES | NO, any case */
    CHECK_ASCII_PLUS,   /* [\x01-\x7F]+ */
    CHECK_AUTH,         /* atoms separated by single spaces */
    CHECK_PROTOCOLS,    /* [!]SSLv2|SSLv3|TLSv1|TLSv1.[0-3], space separated */
    CHECK_FINGERPRINT,  /* [ALGO$]HEX, space separated */
    CHECK_TEXT_STAR,    /* TEXT-CHAR* */
    CHECK_TEXT_PLUS,    /* TEXT-CHAR+ */
    CHECK_SELECT_OPTS,  /* LIST selection option characters and spaces */
    CHECK_SECONDS,      /* a whole number of seconds, 1 to 86400 */
    CHECK_RATE,         /* a whole number of bytes per second, 1 to 1000000000 */
};

static bool all_match(const char *s, size_t len, bool (*pred)(unsigned char))
{
    for (size_t i = 0; i < len; i++)
        if (!pred((unsigned char)s[i]))
            return false;
    return true;
}

static bool not_control(unsigned char c)
{
    return !is_control(c);
}

static bool is_ascii_nonnul(unsigned char c)
{
    return c >= 0x01 && c <= 0x7f;
}

static bool is_select_opts_char(unsigned char c)
{
    return c == 0x20 || c == 0x21 || c == 0x23 || c == 0x24 || c == 0x26 || c == 0x27 ||
           (c >= 0x2b && c <= 0x5b) || (c >= 0x5e && c <= 0x7a) || (c >= 0x7c && c <= 0x7e);
}

/* Calls word_ok on every word of a list separated by single spaces; an
 * empty list or an empty word (leading, trailing or double space) fails. */
static bool each_word(const char *s, size_t len, bool (*word_ok)(const char *, size_t))
{
    size_t start = 0;

    if (len == 0)
        return false;
    for (size_t i = 0; i <= len; i++) {
        if (i == len || s[i] == ' ') {
            if (i == start || !word_ok(s + start, i - start))
                return false;
            start = i + 1;
        }
    }
    return true;
}

static bool word_is_atom(const char *s, size_t len)
{
    return all_match(s, len, is_atom_char);
}

static bool word_is_protocol(const char *s, size_t len)
{
    static const char *const names[] = {"SSLv2",   "SSLv3",   "TLSv1",  "TLSv1.0",
                                        "TLSv1.1", "TLSv1.2", "TLSv1.3"};

    if (len > 0 && s[0] == '!') {
        s++;
        len--;
    }
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strlen(names[i]) == len && memcmp(names[i], s, len) == 0)
            return true;
    return false;
}

static bool word_is_fingerprint(const char *s, size_t len)
{
    const char *dollar = memchr(s, '$', len);

    if (dollar != NULL) {
        size_t alen = (size_t)(dollar - s);
        if (alen == 0 || !all_match(s, alen, is_alnum))
            return false;
        s = dollar + 1;
        len -= alen + 1;
    }
    return len > 0 && all_match(s, len, is_hex);
}

/* A decimal number without sign or leading zero, within [1, max]. */
static bool number_in_range(const char *v, size_t len, unsigned long max, unsigned long *out)
{
    unsigned long n = 0;

    if (len == 0 || len > 10 || v[0] == '0')
        return false;
    for (size_t i = 0; i < len; i++) {
        if (v[i] < '0' || v[i] > '9')
            return false;
        n = n * 10 + (unsigned long)(v[i] - '0');
    }
    if (n > max)
        return false;
    if (out != NULL)
        *out = n;
    return true;
}

#define MAX_SECONDS 86400ul
#define MAX_RATE    1000000000ul

static bool value_is_valid(enum value_check check, const char *v, size_t len)
{
    switch (check) {
    case CHECK_NONCTRL_PLUS:
        return len > 0 && all_match(v, len, not_control);
    case CHECK_NONCTRL_STAR:
        return all_match(v, len, not_control);
    case CHECK_ABS_PATH:
        return len > 1 && v[0] == '/' && all_match(v, len, not_control);
    case CHECK_TYPE:
        return (len == 4 && memcmp(v, "imap", 4) == 0) ||
               (len == 5 && memcmp(v, "imaps", 5) == 0) ||
               (len == 6 && memcmp(v, "tunnel", 6) == 0);
    case CHECK_YESNO:
        return (len == 3 && strncasecmp(v, "yes", 3) == 0) ||
               (len == 2 && strncasecmp(v, "no", 2) == 0);
    case CHECK_ASCII_PLUS:
        return len > 0 && all_match(v, len, is_ascii_nonnul);
    case CHECK_AUTH:
        return each_word(v, len, word_is_atom);
    case CHECK_PROTOCOLS:
        return each_word(v, len, word_is_protocol);
    case CHECK_FINGERPRINT:
        return each_word(v, len, word_is_fingerprint);
    case CHECK_TEXT_STAR:
        return all_match(v, len, is_text_char);
    case CHECK_TEXT_PLUS:
        return len > 0 && all_match(v, len, is_text_char);
    case CHECK_SELECT_OPTS:
        return all_match(v, len, is_select_opts_char);
    case CHECK_SECONDS:
        return number_in_range(v, len, MAX_SECONDS, NULL);
    case CHECK_RATE:
        return number_in_range(v, len, MAX_RATE, NULL);
    }
    return false;
}

static const char *check_hint(enum value_check check)
{
    switch (check) {
    case CHECK_NONCTRL_PLUS:
        return " (expected a non-empty value without control characters)";
    case CHECK_NONCTRL_STAR:
        return " (control characters are not allowed)";
    case CHECK_ABS_PATH:
        return " (expected an absolute path)";
    case CHECK_TYPE:
        return " (expected imap, imaps or tunnel)";
    case CHECK_YESNO:
        return " (expected YES or NO)";
    case CHECK_ASCII_PLUS:
        return " (expected non-empty 7-bit text)";
    case CHECK_AUTH:
        return " (expected mechanism names separated by single spaces)";
    case CHECK_PROTOCOLS:
        return " (expected [!]SSLv2, SSLv3, TLSv1, TLSv1.1, TLSv1.2 or TLSv1.3, space separated)";
    case CHECK_FINGERPRINT:
        return " (expected [ALGO$]HEX digests separated by single spaces)";
    case CHECK_TEXT_STAR:
    case CHECK_TEXT_PLUS:
        return " (expected 7-bit text)";
    case CHECK_SELECT_OPTS:
        return " (expected LIST selection options separated by spaces)";
    case CHECK_SECONDS:
        return " (expected a whole number of seconds from 1 to 86400)";
    case CHECK_RATE:
        return " (expected a whole number of bytes per second from 1 to 1000000000)";
    }
    return "";
}

/* ---- option table ---- */

enum option_target {
    TARGET_SERVER_STRING, /* char * at offset in struct server_config */
    TARGET_SERVER_BOOL,   /* bool at offset in struct server_config */
    TARGET_SERVER_NUMBER, /* unsigned at offset in struct server_config */
    TARGET_TYPE,
    TARGET_SSL_HOSTNAME,
    /* options read from the default section only */
    TARGET_DATABASE,
    TARGET_LOGFILE,
    TARGET_LOG_PREFIX,
    TARGET_LIST_MAILBOX,
    TARGET_LIST_SELECT_OPTS,
    TARGET_IGNORE_MAILBOX,
};

struct option_desc {
    const char *name;
    enum value_check check;
    enum option_target target;
    size_t offset;
    bool secret; /* never echo the value in messages */
};

#define SRV_STR(field)  TARGET_SERVER_STRING, offsetof(struct server_config, field)
#define SRV_BOOL(field) TARGET_SERVER_BOOL, offsetof(struct server_config, field)
#define SRV_NUM(field)  TARGET_SERVER_NUMBER, offsetof(struct server_config, field)

static const struct option_desc options[] = {
    {"host", CHECK_NONCTRL_PLUS, SRV_STR(host), false},
    {"port", CHECK_NONCTRL_PLUS, SRV_STR(port), false},
    {"proxy", CHECK_NONCTRL_PLUS, SRV_STR(proxy), true},
    {"type", CHECK_TYPE, TARGET_TYPE, 0, false},
    {"STARTTLS", CHECK_YESNO, SRV_BOOL(starttls), false},
    {"username", CHECK_ASCII_PLUS, SRV_STR(username), false},
    {"password", CHECK_ASCII_PLUS, SRV_STR(password), true},
    {"password-command", CHECK_NONCTRL_PLUS, SRV_STR(password_command), false},
    {"oauth-token-command", CHECK_NONCTRL_PLUS, SRV_STR(oauth_token_command), false},
    {"auth", CHECK_AUTH, SRV_STR(auth), false},
    {"command", CHECK_NONCTRL_PLUS, SRV_STR(command), false},
    {"null-stderr", CHECK_YESNO, SRV_BOOL(null_stderr), false},
    {"compress", CHECK_YESNO, SRV_BOOL(compress), false},
    {"list-reference", CHECK_TEXT_STAR, SRV_STR(list_reference), false},
    {"timeout", CHECK_SECONDS, SRV_NUM(timeout), false},
    {"connect-timeout", CHECK_SECONDS, SRV_NUM(connect_timeout), false},
    {"login-timeout", CHECK_SECONDS, SRV_NUM(login_timeout), false},
    {"min-rate", CHECK_RATE, SRV_NUM(min_rate), false},
    {"SSL_protocols", CHECK_PROTOCOLS, SRV_STR(ssl_protocols), false},
    {"SSL_protocol_min", CHECK_NONCTRL_PLUS, SRV_STR(ssl_protocol_min), false},
    {"SSL_protocol_max", CHECK_NONCTRL_PLUS, SRV_STR(ssl_protocol_max), false},
    {"SSL_fingerprint", CHECK_FINGERPRINT, SRV_STR(ssl_fingerprint), false},
    {"SSL_cipherlist", CHECK_NONCTRL_PLUS, SRV_STR(ssl_cipherlist), false},
    {"SSL_ciphersuites", CHECK_NONCTRL_STAR, SRV_STR(ssl_ciphersuites), false},
    {"SSL_hostname", CHECK_NONCTRL_STAR, TARGET_SSL_HOSTNAME, 0, false},
    {"SSL_verify", CHECK_YESNO, SRV_BOOL(ssl_verify), false},
    {"SSL_CApath", CHECK_NONCTRL_PLUS, SRV_STR(ssl_capath), false},
    {"SSL_CAfile", CHECK_NONCTRL_PLUS, SRV_STR(ssl_cafile), false},
    {"database", CHECK_NONCTRL_PLUS, TARGET_DATABASE, 0, false},
    {"logfile", CHECK_ABS_PATH, TARGET_LOGFILE, 0, false},
    {"log-prefix", CHECK_NONCTRL_STAR, TARGET_LOG_PREFIX, 0, false},
    {"list-mailbox", CHECK_TEXT_PLUS, TARGET_LIST_MAILBOX, 0, false},
    {"list-select-opts", CHECK_SELECT_OPTS, TARGET_LIST_SELECT_OPTS, 0, false},
    {"ignore-mailbox", CHECK_TEXT_PLUS, TARGET_IGNORE_MAILBOX, 0, false},
};

#define OPTION_COUNT (sizeof(options) / sizeof(options[0]))

/* Option names are case-sensitive, as in the reference implementation.
 * SSL_cipher_list is accepted as another spelling of SSL_cipherlist. */
static const struct option_desc *option_find(const char *key, size_t len)
{
    if (len == 15 && memcmp(key, "SSL_cipher_list", 15) == 0) {
        key = "SSL_cipherlist";
        len = 14;
    }
    for (size_t i = 0; i < OPTION_COUNT; i++)
        if (strlen(options[i].name) == len && memcmp(options[i].name, key, len) == 0)
            return &options[i];
    return NULL;
}

/* ---- INI reader ---- */

enum ini_section { SECTION_DEFAULT, SECTION_LOCAL, SECTION_REMOTE, SECTION_OTHER };

struct ini_entry {
    enum ini_section section;
    const char *key; /* points into the file buffer (NUL-terminated there) */
    size_t key_len;
    const char *value;
    size_t value_len;
    int line;
    const struct option_desc *opt; /* NULL: unknown option */
};

struct ini {
    char *buf; /* the file, modified in place to terminate keys and values */
    size_t len;
    struct ini_entry *v;
    size_t n, cap;
    bool has_local, has_remote;
};

static void ini_fini(struct ini *ini)
{
    free(ini->buf);
    free(ini->v);
    memset(ini, 0, sizeof(*ini));
}

static int ini_read_file(struct ini *ini, const char *path, char *err, size_t errlen)
{
    struct stat st;
    FILE *f;
    size_t cap = 0, n = 0;
    char *buf = NULL;

    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) {
        set_err(err, errlen, "%s: no such config file", path);
        return ERR_CONFIG;
    }
    f = fopen(path, "rb");
    if (f == NULL) {
        set_err(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return ERR_CONFIG;
    }
    for (;;) {
        size_t got;
        /* room for more than the terminating NUL */
        char *nb = array_reserve(buf, &cap, n + 2, 1, 4096);
        if (nb == NULL)
            goto fail_nomem;
        buf = nb;
        got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0)
            break;
    }
    if (ferror(f)) {
        set_err(err, errlen, "%s: read error", path);
        free(buf);
        fclose(f);
        return ERR_CONFIG;
    }
    fclose(f);
    buf[n] = '\0';
    ini->buf = buf;
    ini->len = n;
    return 0;

fail_nomem:
    free(buf);
    fclose(f);
    set_err(err, errlen, "%s: out of memory", path);
    return -ENOMEM;
}

static int ini_push(struct ini *ini, const struct ini_entry *e)
{
    struct ini_entry *nv = array_reserve(ini->v, &ini->cap, ini->n + 1, sizeof(*nv), 32);
    if (nv == NULL)
        return -ENOMEM;
    ini->v = nv;
    ini->v[ini->n++] = *e;
    return 0;
}

static enum ini_section section_of(const char *name, size_t len)
{
    if (len == 1 && name[0] == '_')
        return SECTION_DEFAULT;
    if (len == 5 && memcmp(name, "local", 5) == 0)
        return SECTION_LOCAL;
    if (len == 6 && memcmp(name, "remote", 6) == 0)
        return SECTION_REMOTE;
    return SECTION_OTHER;
}

/* Parses one line s[0..len) (the buffer byte at s[len] is a line break or
 * the final NUL and may be overwritten). */
static int ini_parse_line(struct ini *ini, char *s, size_t len, int line, enum ini_section *section,
                          const char *path, char *err, size_t errlen)
{
    size_t a = 0, b, eq;
    struct ini_entry e;

    while (a < len && is_space((unsigned char)s[a]))
        a++;
    if (a == len || s[a] == '#' || s[a] == ';')
        return 0;

    /* Trailing comment: the first blank-';'-blank followed by anything. */
    for (size_t p = 0; p + 3 < len; p++) {
        if (is_space((unsigned char)s[p]) && s[p + 1] == ';' && is_space((unsigned char)s[p + 2])) {
            len = p;
            break;
        }
    }
    b = len;
    while (b > a && is_space((unsigned char)s[b - 1]))
        b--;

    if (s[a] == '[' && b - a >= 3 && s[b - 1] == ']') {
        size_t na = a + 1, nb = b - 1;
        while (na < nb && is_space((unsigned char)s[na]))
            na++;
        while (nb > na && is_space((unsigned char)s[nb - 1]))
            nb--;
        /* A blank-only name is a one-blank name: some ignored section. */
        *section = na == nb ? SECTION_OTHER : section_of(s + na, nb - na);
        if (*section == SECTION_LOCAL)
            ini->has_local = true;
        else if (*section == SECTION_REMOTE)
            ini->has_remote = true;
        return 0;
    }

    eq = a;
    while (eq < len && s[eq] != '=')
        eq++;
    if (eq == len || eq == 0) {
        set_err(err, errlen, "%s:%d: malformed line (expected [section] or option = value)", path,
                line);
        return ERR_CONFIG;
    }
    memset(&e, 0, sizeof(e));
    e.section = *section;
    e.line = line;
    if (a == eq) {
        /* Only blanks before '=': the reader makes the key the last blank. */
        e.key = s + eq - 1;
        e.key_len = 1;
    } else {
        size_t ke = eq;
        while (ke > a && is_space((unsigned char)s[ke - 1]))
            ke--;
        e.key = s + a;
        e.key_len = ke - a;
    }
    {
        size_t va = eq + 1;
        while (va < b && is_space((unsigned char)s[va]))
            va++;
        e.value = s + va;
        e.value_len = b > va ? b - va : 0;
    }
    if (*section == SECTION_OTHER)
        return 0;
    /* Terminate key and value in place: the value ends at a blank, the
     * comment or the line break (the caller has already looked past it),
     * and the key at a blank or at '=', which is no longer needed. */
    s[e.value - s + (ptrdiff_t)e.value_len] = '\0';
    s[e.key - s + (ptrdiff_t)e.key_len] = '\0';
    e.opt = option_find(e.key, e.key_len);
    if (ini_push(ini, &e) < 0) {
        set_err(err, errlen, "%s: out of memory", path);
        return -ENOMEM;
    }
    return 0;
}

static int ini_parse(struct ini *ini, const char *path, char *err, size_t errlen)
{
    enum ini_section section = SECTION_DEFAULT;
    size_t i = 0;
    int line = 0, r;

    while (i < ini->len) {
        size_t start = i, end, next;
        while (i < ini->len && ini->buf[i] != '\n' && ini->buf[i] != '\r')
            i++;
        end = i;
        next = i;
        if (next < ini->len) {
            if (ini->buf[next] == '\r' && next + 1 < ini->len && ini->buf[next + 1] == '\n')
                next += 2;
            else if (ini->buf[next] == '\r' && next + 2 < ini->len && ini->buf[next + 1] == '\r' &&
                     ini->buf[next + 2] == '\n')
                next += 3;
            else
                next += 1;
        }
        line++;
        r = ini_parse_line(ini, ini->buf + start, end - start, line, &section, path, err, errlen);
        if (r < 0)
            return r;
        i = next;
    }
    return 0;
}

/* The entry that is in effect for its (section, option): the last one. */
static bool entry_is_effective(const struct ini *ini, size_t k)
{
    const struct ini_entry *e = &ini->v[k];

    for (size_t j = k + 1; j < ini->n; j++) {
        const struct ini_entry *f = &ini->v[j];
        if (f->section != e->section)
            continue;
        if (e->opt != NULL ? f->opt == e->opt
                           : (f->opt == NULL && f->key_len == e->key_len &&
                              memcmp(f->key, e->key, e->key_len) == 0))
            return false;
    }
    return true;
}

/* ---- building the configuration ---- */

static void server_fini(struct server_config *s)
{
    char **strings[] = {&s->host,
                        &s->port,
                        &s->proxy,
                        &s->command,
                        &s->auth,
                        &s->username,
                        &s->password,
                        &s->password_command,
                        &s->oauth_token_command,
                        &s->list_reference,
                        &s->ssl_cafile,
                        &s->ssl_capath,
                        &s->ssl_fingerprint,
                        &s->ssl_protocols,
                        &s->ssl_protocol_min,
                        &s->ssl_protocol_max,
                        &s->ssl_cipherlist,
                        &s->ssl_ciphersuites,
                        &s->ssl_hostname};

    for (size_t i = 0; i < sizeof(strings) / sizeof(strings[0]); i++) {
        if (*strings[i] != NULL && strings[i] == &s->password)
            memset(*strings[i], 0, strlen(*strings[i]));
        free(*strings[i]);
        *strings[i] = NULL;
    }
}

void config_fini(struct config *cfg)
{
    if (cfg == NULL)
        return;
    free(cfg->path);
    free(cfg->database);
    free(cfg->logfile);
    free(cfg->log_prefix);
    config_mailbox_list_free(&cfg->list_mailbox, cfg->list_mailbox_count);
    free(cfg->list_select_opts);
    free(cfg->ignore_mailbox);
    server_fini(&cfg->local);
    server_fini(&cfg->remote);
    memset(cfg, 0, sizeof(*cfg));
}

static int replace_string(char **slot, const char *value)
{
    char *copy = strdup(value);

    if (copy == NULL)
        return -ENOMEM;
    free(*slot);
    *slot = copy;
    return 0;
}

static bool yes(const char *v)
{
    return strcasecmp(v, "yes") == 0;
}

/* Applies one validated entry to a server section. */
static int server_apply(struct server_config *s, const struct ini_entry *e)
{
    const struct option_desc *o = e->opt;

    switch (o->target) {
    case TARGET_SERVER_STRING:
        return replace_string((char **)((char *)s + o->offset), e->value);
    case TARGET_SERVER_BOOL:
        *(bool *)((char *)s + o->offset) = yes(e->value);
        return 0;
    case TARGET_SERVER_NUMBER: {
        unsigned long n = 0;
        number_in_range(e->value, e->value_len, ULONG_MAX, &n); /* checked already */
        *(unsigned *)((char *)s + o->offset) = (unsigned)n;
        return 0;
    }
    case TARGET_TYPE:
        s->type = strcmp(e->value, "imap") == 0    ? SERVER_IMAP
                  : strcmp(e->value, "imaps") == 0 ? SERVER_IMAPS
                                                   : SERVER_TUNNEL;
        return 0;
    case TARGET_SSL_HOSTNAME:
        s->ssl_hostname_set = true;
        return replace_string(&s->ssl_hostname, e->value);
    default:
        /* Options of the default section are accepted (and ignored) in a
         * server section, as the reference implementation does. */
        return 0;
    }
}

static int server_build(struct server_config *s, const char *name, enum ini_section section,
                        const struct ini *ini)
{
    int r;

    s->name = name;
    s->type = SERVER_IMAPS;
    s->starttls = true;
    s->compress = section == SECTION_REMOTE;
    s->null_stderr = false;
    s->ssl_verify = true;
    /* Long enough for a slow server on a slow link, short enough that a
     * dead or hostile one is given up on in about a minute (the reference
     * implementation gives every read 30 s). */
    s->connect_timeout = 30;
    s->login_timeout = 30;
    s->timeout = 60;
    /* Slower than any link still in use: only a server that trickles
     * on purpose falls below it. */
    s->min_rate = 1024;
    if ((r = replace_string(&s->host, "localhost")) < 0 ||
        (r = replace_string(&s->auth, "PLAIN LOGIN")) < 0 ||
        (r = replace_string(&s->list_reference, "")) < 0)
        return r;

    /* The default section first, then the server's own section on top. */
    for (int pass = 0; pass < 2; pass++) {
        enum ini_section want = pass == 0 ? SECTION_DEFAULT : section;
        for (size_t k = 0; k < ini->n; k++) {
            if (ini->v[k].section != want || !entry_is_effective(ini, k))
                continue;
            if ((r = server_apply(s, &ini->v[k])) < 0)
                return r;
        }
    }
    if (s->port == NULL && s->type != SERVER_TUNNEL)
        return replace_string(&s->port, s->type == SERVER_IMAPS ? "993" : "143");
    return 0;
}

/* The entry in effect for a server's option: its own section's, else the
 * default section's; NULL when unset. */
static const struct ini_entry *server_entry(const struct ini *ini, enum ini_section section,
                                            const char *name)
{
    const struct ini_entry *found = NULL;
    for (size_t k = 0; k < ini->n; k++) {
        const struct ini_entry *e = &ini->v[k];
        if (e->opt == NULL || strcmp(e->opt->name, name) != 0 || !entry_is_effective(ini, k))
            continue;
        if (e->section == section)
            return e;
        if (e->section == SECTION_DEFAULT)
            found = e;
    }
    return found;
}

/* Whether the auth list names an OAuth 2.0 mechanism. */
static bool auth_wants_token(const char *auth)
{
    char *list = strdup(auth);
    bool found = false;
    char *save = NULL;
    if (list == NULL)
        return false;
    for (char *m = strtok_r(list, " ", &save); m && !found; m = strtok_r(NULL, " ", &save))
        found = strcasecmp(m, "OAUTHBEARER") == 0 || strcasecmp(m, "XOAUTH2") == 0;
    free(list);
    return found;
}

/* A token command is of use only with an OAuth 2.0 mechanism, and such a
 * mechanism is of no use without one (tunnels do not log in). */
static int server_check_oauth(const struct server_config *s, enum ini_section section,
                              const struct ini *ini, const char *path, char *err, size_t errlen)
{
    if (s->type == SERVER_TUNNEL)
        return 0;
    bool wants = auth_wants_token(s->auth);
    if (wants && s->oauth_token_command == NULL) {
        const struct ini_entry *auth = server_entry(ini, section, "auth");
        set_err(err, errlen,
                "%s:%d: option 'auth' names an OAuth 2.0 mechanism but [%s] has no "
                "'oauth-token-command' to get a token",
                path, auth ? auth->line : 0, s->name);
        return ERR_CONFIG;
    }
    if (!wants && s->oauth_token_command != NULL) {
        const struct ini_entry *cmd = server_entry(ini, section, "oauth-token-command");
        set_err(err, errlen,
                "%s:%d: option 'oauth-token-command' is set but option 'auth' of [%s] names "
                "neither OAUTHBEARER nor XOAUTH2",
                path, cmd ? cmd->line : 0, s->name);
        return ERR_CONFIG;
    }
    return 0;
}

/* Options that exclude each other: the one in the server's own section
 * overrides the other from the default section; both at the same level
 * is an error. */
static int server_check(struct server_config *s, enum ini_section section, const struct ini *ini,
                        const char *path, char *err, size_t errlen)
{
    const struct ini_entry *pw = server_entry(ini, section, "password");
    const struct ini_entry *cmd = server_entry(ini, section, "password-command");
    if (pw && cmd) {
        if (pw->section != cmd->section) {
            char **loser = pw->section == section ? &s->password_command : &s->password;
            if (*loser)
                explicit_bzero(*loser, strlen(*loser));
            free(*loser);
            *loser = NULL;
        } else {
            set_err(err, errlen,
                    "%s:%d: options 'password' and 'password-command' exclude each other "
                    "(in [%s])",
                    path, (pw->line > cmd->line ? pw : cmd)->line,
                    pw->section == SECTION_DEFAULT ? "_" : s->name);
            return ERR_CONFIG;
        }
    }
    return server_check_oauth(s, section, ini, path, err, errlen);
}

static int check_regex(const struct ini_entry *e, const char *path, char *err, size_t errlen)
{
    int code;
    PCRE2_SIZE offset;
    pcre2_code *re;

    re = pcre2_compile((PCRE2_SPTR)e->value, e->value_len, 0, &code, &offset, NULL);
    if (re == NULL) {
        PCRE2_UCHAR msg[256];
        if (pcre2_get_error_message(code, msg, sizeof(msg)) < 0)
            snprintf((char *)msg, sizeof(msg), "error %d", code);
        set_err(err, errlen,
                "%s:%d: invalid regular expression for option 'ignore-mailbox': %s "
                "at offset %zu",
                path, e->line, (const char *)msg, (size_t)offset);
        return ERR_CONFIG;
    }
    pcre2_code_free(re);
    return 0;
}

/* Reads the options that only the default section provides. */
static int globals_build(struct config *cfg, const struct ini *ini, const char *path, char *err,
                         size_t errlen)
{
    const struct ini_entry *database = NULL;
    char sub[512];
    int r;

    for (size_t k = 0; k < ini->n; k++) {
        const struct ini_entry *e = &ini->v[k];
        if (e->section != SECTION_DEFAULT || !entry_is_effective(ini, k))
            continue;
        switch (e->opt->target) {
        case TARGET_DATABASE:
            database = e;
            break;
        case TARGET_LOGFILE:
            if (replace_string(&cfg->logfile, e->value) < 0)
                goto fail_nomem;
            break;
        case TARGET_LOG_PREFIX:
            if (log_prefix_check(e->value) < 0) {
                set_err(err, errlen,
                        "%s:%d: invalid value for option 'log-prefix' (a '%%' that is not part "
                        "of %%%%, %%n, %%m or a complete %%?X?then&else? conditional)",
                        path, e->line);
                return ERR_CONFIG;
            }
            if (replace_string(&cfg->log_prefix, e->value) < 0)
                goto fail_nomem;
            break;
        case TARGET_LIST_MAILBOX:
            config_mailbox_list_free(&cfg->list_mailbox, cfg->list_mailbox_count);
            cfg->list_mailbox_count = 0;
            r = config_parse_mailbox_list(e->value, &cfg->list_mailbox, &cfg->list_mailbox_count,
                                          sub, sizeof(sub));
            if (r < 0) {
                set_err(err, errlen, "%s:%d: invalid value for option 'list-mailbox': %s", path,
                        e->line, sub);
                return r;
            }
            break;
        case TARGET_LIST_SELECT_OPTS:
            free(cfg->list_select_opts);
            cfg->list_select_opts = NULL;
            if (e->value_len > 0) {
                if (replace_string(&cfg->list_select_opts, e->value) < 0)
                    goto fail_nomem;
                for (char *p = cfg->list_select_opts; *p != '\0'; p++)
                    if (*p >= 'a' && *p <= 'z')
                        *p = (char)(*p - 'a' + 'A');
            }
            break;
        case TARGET_IGNORE_MAILBOX:
            if ((r = check_regex(e, path, err, errlen)) < 0)
                return r;
            if (replace_string(&cfg->ignore_mailbox, e->value) < 0)
                goto fail_nomem;
            break;
        default:
            break;
        }
    }

    /* The database defaults to HOST.db, HOST from [remote] (which always
     * has one, "localhost" by default, tunnels included). */
    {
        char *dbname = NULL;
        const char *name = database != NULL ? database->value : NULL;
        if (name == NULL) {
            size_t n = strlen(cfg->remote.host) + 4;
            dbname = malloc(n);
            if (dbname == NULL)
                goto fail_nomem;
            snprintf(dbname, n, "%s.db", cfg->remote.host);
            name = dbname;
        }
        cfg->database = config_xdg_path("XDG_DATA_HOME", ".local/share", name, sub, sizeof(sub));
        free(dbname);
        if (cfg->database == NULL) {
            if (database != NULL)
                set_err(err, errlen, "%s:%d: database: %s", path, database->line, sub);
            else
                set_err(err, errlen, "%s: database: %s", path, sub);
            return ERR_CONFIG;
        }
    }
    return 0;

fail_nomem:
    set_err(err, errlen, "%s: out of memory", path);
    return -ENOMEM;
}

int config_load(struct config *cfg, const char *path, char *err, size_t errlen)
{
    struct ini ini;
    int r;

    memset(cfg, 0, sizeof(*cfg));
    memset(&ini, 0, sizeof(ini));
    if ((r = ini_read_file(&ini, path, err, errlen)) < 0)
        return r;
    if ((r = ini_parse(&ini, path, err, errlen)) < 0)
        goto fail;

    /* Check every option in effect, in file order. */
    for (size_t k = 0; k < ini.n; k++) {
        const struct ini_entry *e = &ini.v[k];
        char shown[128];

        if (!entry_is_effective(&ini, k))
            continue;
        if (e->opt == NULL) {
            quote_for_message(e->key, e->key_len, shown, sizeof(shown));
            set_err(err, errlen, "%s:%d: unknown option '%s'", path, e->line, shown);
            r = ERR_CONFIG;
            goto fail;
        }
        if (!value_is_valid(e->opt->check, e->value, e->value_len)) {
            if (e->opt->secret) {
                set_err(err, errlen, "%s:%d: invalid value for option '%s'%s", path, e->line,
                        e->opt->name, check_hint(e->opt->check));
            } else {
                quote_for_message(e->value, e->value_len, shown, sizeof(shown));
                set_err(err, errlen, "%s:%d: invalid value for option '%s': '%s'%s", path, e->line,
                        e->opt->name, shown, check_hint(e->opt->check));
            }
            r = ERR_CONFIG;
            goto fail;
        }
    }
    if (!ini.has_local || !ini.has_remote) {
        set_err(err, errlen, "%s: missing section [%s]", path, !ini.has_local ? "local" : "remote");
        r = ERR_CONFIG;
        goto fail;
    }

    r = -ENOMEM;
    if ((cfg->path = strdup(path)) == NULL)
        goto fail_nomem;
    if (server_build(&cfg->local, "local", SECTION_LOCAL, &ini) < 0 ||
        server_build(&cfg->remote, "remote", SECTION_REMOTE, &ini) < 0)
        goto fail_nomem;
    if ((r = server_check(&cfg->local, SECTION_LOCAL, &ini, path, err, errlen)) < 0 ||
        (r = server_check(&cfg->remote, SECTION_REMOTE, &ini, path, err, errlen)) < 0)
        goto fail;
    if ((r = globals_build(cfg, &ini, path, err, errlen)) < 0)
        goto fail;

    /* The file buffer may hold the password: wipe it before freeing. */
    memset(ini.buf, 0, ini.len);
    ini_fini(&ini);
    return 0;

fail_nomem:
    set_err(err, errlen, "%s: out of memory", path);
fail:
    if (ini.buf != NULL)
        memset(ini.buf, 0, ini.len);
    ini_fini(&ini);
    config_fini(cfg);
    return r == -ENOMEM ? r : ERR_CONFIG;
}
