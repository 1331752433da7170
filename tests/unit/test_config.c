/*
 * Configuration reader tests: a table of files written to a temporary
 * directory, each with the values it must produce or the exact error line;
 * XDG path resolution; list-mailbox decoding.
 */
#include "check.h"
#include "config.h"
#include "errors.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[256];
static char cfgpath[512];
static char datahome[512];

static void write_file(const char *path, const char *content, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (f == NULL || fwrite(content, 1, len, f) != len) {
        perror(path);
        exit(1);
    }
    fclose(f);
}

/* Writes the config file and loads it; returns config_load's result. */
static int load(struct config *cfg, const char *content, char *err, size_t errlen)
{
    write_file(cfgpath, content, strlen(content));
    err[0] = '\0';
    return config_load(cfg, cfgpath, err, errlen);
}

/* Formats an expected error, replacing the leading "@" by the file path. */
static const char *expect_err(const char *fmt)
{
    static char buf[1024];
    if (fmt[0] == '@')
        snprintf(buf, sizeof(buf), "%s%s", cfgpath, fmt + 1);
    else
        snprintf(buf, sizeof(buf), "%s", fmt);
    return buf;
}

static char *data_path(const char *name)
{
    static char buf[1024];
    snprintf(buf, sizeof(buf), "%s/interimap/%s", datahome, name);
    return buf;
}

/* ---- the table of files that load ---- */

struct ok_case {
    const char *name;
    const char *content;
    void (*verify)(const struct config *cfg);
};

static void verify_defaults(const struct config *c)
{
    const struct server_config *l = &c->local, *r = &c->remote;

    CHECK_STR(c->path, cfgpath);
    CHECK_STR(l->name, "local");
    CHECK_STR(r->name, "remote");
    CHECK(l->type == SERVER_IMAPS && r->type == SERVER_IMAPS);
    CHECK_STR(l->host, "localhost");
    CHECK_STR(l->port, "993");
    CHECK_STR(r->port, "993");
    CHECK_STR(l->auth, "PLAIN LOGIN");
    CHECK(l->starttls && r->starttls);
    CHECK(!l->compress);
    CHECK(r->compress);
    CHECK(l->ssl_verify && r->ssl_verify);
    CHECK(!l->null_stderr && !r->null_stderr);
    CHECK_STR(l->list_reference, "");
    CHECK(l->username == NULL && l->password == NULL && l->proxy == NULL && l->command == NULL);
    CHECK(l->ssl_hostname == NULL && !l->ssl_hostname_set);
    CHECK_STR(c->database, data_path("localhost.db"));
    CHECK(c->logfile == NULL && c->log_prefix == NULL);
    CHECK(c->list_mailbox == NULL && c->list_mailbox_count == 0);
    CHECK(c->list_select_opts == NULL && c->ignore_mailbox == NULL);
    CHECK(l->timeout == 60 && l->connect_timeout == 30 && l->login_timeout == 30);
    CHECK(l->min_rate == 1024 && r->timeout == 60 && r->min_rate == 1024);
}

static void verify_timeouts(const struct config *c)
{
    CHECK(c->local.timeout == 5 && c->local.connect_timeout == 2 && c->local.login_timeout == 7);
    CHECK(c->local.min_rate == 100);
    CHECK(c->remote.timeout == 86400 && c->remote.connect_timeout == 2);
    CHECK(c->remote.login_timeout == 30 && c->remote.min_rate == 1000000000);
}

static void verify_inherit(const struct config *c)
{
    CHECK(c->local.type == SERVER_TUNNEL);
    CHECK(c->local.port == NULL);
    CHECK_STR(c->local.command, "doveadm exec imap");
    CHECK_STR(c->local.host, "mail.example.org");
    CHECK(c->remote.type == SERVER_IMAP);
    CHECK_STR(c->remote.host, "mail.example.org");
    CHECK_STR(c->remote.port, "1143");
    CHECK_STR(c->remote.username, "joe");
    CHECK_STR(c->local.username, "joe");
    CHECK_STR(c->database, data_path("mail.example.org.db"));
}

static void verify_syntax(const struct config *c)
{
    CHECK_STR(c->remote.host, "mail.example.net");
    CHECK_STR(c->remote.username, "a#b");
    CHECK_STR(c->local.password, "p ;");
    CHECK_STR(c->local.username, "x");
    CHECK_STR(c->remote.auth, "LOGIN");
}

static void verify_duplicates(const struct config *c)
{
    CHECK_STR(c->local.host, "second");
    CHECK_STR(c->local.port, "1");
    CHECK(c->remote.type == SERVER_IMAP);
    CHECK_STR(c->remote.port, "143");
}

static void verify_yesno(const struct config *c)
{
    CHECK(!c->local.starttls);
    CHECK(c->local.compress);
    CHECK(!c->remote.ssl_verify);
    CHECK(c->remote.null_stderr);
    CHECK(!c->remote.compress);
}

static void verify_password(const struct config *c)
{
    CHECK_STR(c->remote.password, "p@ss=w#rd\"\\x;'{}");
    CHECK_STR(c->local.password, "a");
    CHECK_STR(c->local.username, "tab\there");
}

static void verify_ssl(const struct config *c)
{
    CHECK_STR(c->remote.ssl_cipherlist, "HIGH:!aNULL");
    CHECK_STR(c->remote.ssl_ciphersuites, "");
    CHECK(c->remote.ssl_hostname_set);
    CHECK_STR(c->remote.ssl_hostname, "");
    CHECK_STR(c->remote.ssl_fingerprint, "sha256$0aF9 ABCDEF");
    CHECK_STR(c->remote.ssl_protocols, "!SSLv3 TLSv1.2");
    CHECK_STR(c->remote.ssl_protocol_min, "TLSv1.2");
    CHECK_STR(c->remote.ssl_cafile, "/etc/ssl/ca.pem");
    CHECK_STR(c->remote.ssl_capath, "/etc/ssl/certs");
    CHECK(!c->local.ssl_hostname_set);
    CHECK_STR(c->local.ssl_cipherlist, NULL);
    CHECK_STR(c->remote.proxy, "socks5h://127.0.0.1:1080");
}

static void verify_other_sections(const struct config *c)
{
    CHECK_STR(c->local.host, "from-underscore");
    CHECK_STR(c->remote.host, "from-underscore");
    CHECK_STR(c->local.port, "10993");
}

static void verify_globals(const struct config *c)
{
    CHECK_STR(c->database, data_path("sub/my.db"));
    CHECK_STR(c->logfile, "/var/log/interimap.log");
    CHECK_STR(c->log_prefix, "[%n] %?m?%m: ?");
    CHECK(c->list_mailbox_count == 3);
    if (c->list_mailbox_count == 3) {
        CHECK(c->list_mailbox[0].len == 5 && memcmp(c->list_mailbox[0].data, "INBOX", 5) == 0);
        CHECK(c->list_mailbox[1].len == 7 && memcmp(c->list_mailbox[1].data, "foo bar", 7) == 0);
        CHECK(c->list_mailbox[2].len == 3 && memcmp(c->list_mailbox[2].data, "a\0b", 3) == 0);
    }
    CHECK_STR(c->list_select_opts, "SUBSCRIBED RECURSIVEMATCH");
    CHECK_STR(c->ignore_mailbox, "^virtual(?:\\x00|$)");
    CHECK_STR(c->local.list_reference, "perso/");
    CHECK_STR(c->remote.list_reference, "");
}

static void verify_abs_db(const struct config *c)
{
    CHECK_STR(c->database, "/srv/state.db");
    CHECK_STR(c->log_prefix, "");
    CHECK(c->list_select_opts == NULL);
}

static void verify_tunnel_db(const struct config *c)
{
    CHECK(c->remote.type == SERVER_TUNNEL);
    CHECK(c->remote.port == NULL);
    CHECK_STR(c->database, data_path("localhost.db"));
}

static void verify_ip_literal(const struct config *c)
{
    CHECK_STR(c->remote.host, "[::1]");
    CHECK_STR(c->database, data_path("[::1].db"));
    CHECK_STR(c->local.auth, "CRAM-MD5 PLAIN");
}

static void verify_password_command(const struct config *c)
{
    /* the server section's choice overrides the default section's */
    CHECK(c->local.password == NULL);
    CHECK_STR(c->local.password_command, "pass show mail | head -1");
    CHECK_STR(c->remote.password, "a");
    CHECK(c->remote.password_command == NULL);
}

static void verify_oauth(const struct config *c)
{
    CHECK_STR(c->remote.auth, "xoauth2 PLAIN");
    CHECK_STR(c->remote.oauth_token_command, "get-token --for jane");
    CHECK(c->local.oauth_token_command == NULL);
    CHECK_STR(c->local.auth, "OAUTHBEARER");
}

static const struct ok_case ok_cases[] = {
    {"minimal file gives the documented defaults", "[local]\n[remote]\n", verify_defaults},
    {"options of the default section are inherited and can be overridden",
     "host = mail.example.org\nusername = joe\n"
     "[local]\ntype = tunnel\ncommand = doveadm exec imap\n"
     "[remote]\ntype = imap\nport = 1143\n",
     verify_inherit},
    {"comments, blank lines, CRLF, trailing ' ; ' comments",
     "# comment\n; comment\n   \t\n  # indented comment\n[remote]\r\n  host  =  mail.example.net ; "
     "trailing\r\nusername = a#b\r\r\n[ local ]\npassword = p ;\nusername=x\t;\tgone\n"
     "[remote]\nauth=LOGIN",
     verify_syntax},
    {"later duplicates win, sections merge",
     "[local]\nhost = first\nhost = second\n[remote]\ntype = bogus\ntype = imap\n[local]\nport = "
     "1\n",
     verify_duplicates},
    {"YES/NO in any case",
     "[local]\nSTARTTLS = no\ncompress = Yes\n[remote]\nSSL_verify = nO\nnull-stderr = YES\n"
     "compress = no\n",
     verify_yesno},
    {"passwords take any 7-bit character; ' ; ' still starts a comment",
     "[remote]\npassword = p@ss=w#rd\"\\x;'{}\n[local]\npassword = a ; b\nusername = tab\there\n",
     verify_password},
    {"TLS options, SSL_cipher_list alias, empty SSL_hostname",
     "[local]\n[remote]\nSSL_cipher_list = HIGH:!aNULL\nSSL_ciphersuites =\nSSL_hostname =\n"
     "SSL_fingerprint = sha256$0aF9 ABCDEF\nSSL_protocols = !SSLv3 TLSv1.2\n"
     "SSL_protocol_min = TLSv1.2\nSSL_CAfile = /etc/ssl/ca.pem\nSSL_CApath = /etc/ssl/certs\n"
     "proxy = socks5h://127.0.0.1:1080\n",
     verify_ssl},
    {"[_] is the default section; other sections are ignored",
     "[local]\nport = 10993\n[_]\nhost = from-underscore\n[misc]\nanything = goes\n"
     "  = blank key\n[remote]\n",
     verify_other_sections},
    {"options of the default section",
     "database = sub/my.db\nlogfile = /var/log/interimap.log\nlog-prefix = [%n] %?m?%m: ?\n"
     "list-mailbox = INBOX \"foo bar\"   \"a\\x00b\"\nlist-select-opts = subscribed "
     "RecursiveMatch\nignore-mailbox = ^virtual(?:\\x00|$)\n[local]\nlist-reference = perso/\n"
     "[remote]\n",
     verify_globals},
    {"absolute database, empty log-prefix and list-select-opts",
     "database = /srv/state.db\nlog-prefix =\nlist-select-opts =\n[local]\n[remote]\n",
     verify_abs_db},
    {"a tunnel remote still names the database after its host",
     "[local]\n[remote]\ntype = tunnel\ncommand = /usr/bin/imapd\n", verify_tunnel_db},
    {"password-command overrides an inherited password, and the other way round",
     "password = a\n[local]\npassword-command = pass show mail | head -1\n[remote]\n",
     verify_password_command},
    {"OAuth mechanisms with a token command; a tunnel needs none",
     "auth = OAUTHBEARER\n[local]\ntype = tunnel\ncommand = imapd\n[remote]\n"
     "auth = xoauth2 PLAIN\noauth-token-command = get-token --for jane\n",
     verify_oauth},
    {"time limits: in the default section for both, overridden per server",
     "timeout = 5\nconnect-timeout = 2\n[local]\nlogin-timeout = 7\nmin-rate = 100\n[remote]\n"
     "timeout = 86400\nmin-rate = 1000000000\n",
     verify_timeouts},
    {"IP literal host, custom auth list",
     "[local]\nauth = CRAM-MD5 PLAIN\n[remote]\nhost = [::1]\n", verify_ip_literal},
};

/* ---- the table of files that fail, with the exact message ---- */

struct err_case {
    const char *content;
    const char *error; /* '@' stands for the file path */
};

static const struct err_case err_cases[] = {
    {"[local]\nfoo = bar\n[remote]\n", "@:2: unknown option 'foo'"},
    {"[local]\n[remote]\nstarttls = YES\n", "@:3: unknown option 'starttls'"},
    {"# c\n[local]\njust some words\n[remote]\n",
     "@:3: malformed line (expected [section] or option = value)"},
    {"[local]\n= value\n[remote]\n", "@:2: malformed line (expected [section] or option = value)"},
    {"[local]\n[]\n[remote]\n", "@:2: malformed line (expected [section] or option = value)"},
    {"[local]\n  = v\n[remote]\n", "@:2: unknown option ' '"},
    {"[local]\nhost = a\n", "@: missing section [remote]"},
    {"[remote]\n", "@: missing section [local]"},
    {"", "@: missing section [local]"},
    {"[Local]\n[remote]\n", "@: missing section [local]"},
    {"type = imapx\n[local]\n[remote]\n",
     "@:1: invalid value for option 'type': 'imapx' (expected imap, imaps or tunnel)"},
    {"[local]\n[remote]\nSTARTTLS = maybe\n",
     "@:3: invalid value for option 'STARTTLS': 'maybe' (expected YES or NO)"},
    {"[local]\nport =\n[remote]\n",
     "@:2: invalid value for option 'port': '' (expected a non-empty value without control "
     "characters)"},
    {"logfile = interimap.log\n[local]\n[remote]\n",
     "@:1: invalid value for option 'logfile': 'interimap.log' (expected an absolute path)"},
    {"[local]\n[remote]\npassword = caf\xc3\xa9\n",
     "@:3: invalid value for option 'password' (expected non-empty 7-bit text)"},
    {"[local]\nauth = PLAIN  LOGIN\n[remote]\n",
     "@:2: invalid value for option 'auth': 'PLAIN  LOGIN' (expected mechanism names separated "
     "by single spaces)"},
    {"[local]\n[remote]\nSSL_fingerprint = sha-256$ab\n",
     "@:3: invalid value for option 'SSL_fingerprint': 'sha-256$ab' (expected [ALGO$]HEX digests "
     "separated by single spaces)"},
    {"[local]\n[remote]\nSSL_protocols = TLSv1.4\n",
     "@:3: invalid value for option 'SSL_protocols': 'TLSv1.4' (expected [!]SSLv2, SSLv3, TLSv1, "
     "TLSv1.1, TLSv1.2 or TLSv1.3, space separated)"},
    {"list-select-opts = (SUBSCRIBED)\n[local]\n[remote]\n",
     "@:1: invalid value for option 'list-select-opts': '(SUBSCRIBED)' (expected LIST selection "
     "options separated by spaces)"},
    {"[local]\nhost = a\x01z\n[remote]\n",
     "@:2: invalid value for option 'host': 'a\\x01z' (expected a non-empty value without control "
     "characters)"},
    /* C1 bytes are control characters too (a UTF-8 euro sign holds one). */
    {"[local]\n[remote]\nhost = \xe2\x82\xac.example\n",
     "@:3: invalid value for option 'host': '\xe2\\x82\xac.example' (expected a non-empty value "
     "without control characters)"},
    {"list-mailbox = foo\"bar\"\n[local]\n[remote]\n",
     "@:1: invalid value for option 'list-mailbox': cannot parse the pattern at byte 4 "
     "('\"bar\"')"},
    {"ignore-mailbox = ^(foo\n[local]\n[remote]\n",
     "@:1: invalid regular expression for option 'ignore-mailbox': missing closing parenthesis "
     "at offset 5"},
    {"log-prefix = %x\n[local]\n[remote]\n",
     "@:1: invalid value for option 'log-prefix' (a '%' that is not part of %%, %n, %m or a "
     "complete %?X?then&else? conditional)"},
    {"[local]\npassword = a\npassword-command = echo b\n[remote]\n",
     "@:3: options 'password' and 'password-command' exclude each other (in [local])"},
    {"password-command = echo b\n[local]\n[remote]\npassword = x\n[_]\npassword = a\n",
     "@:6: options 'password' and 'password-command' exclude each other (in [_])"},
    {"[local]\n[remote]\npassword-command =\n",
     "@:3: invalid value for option 'password-command': '' (expected a non-empty value without "
     "control characters)"},
    {"[local]\n[remote]\nauth = PLAIN OAUTHBEARER\n",
     "@:3: option 'auth' names an OAuth 2.0 mechanism but [remote] has no 'oauth-token-command' "
     "to get a token"},
    {"[local]\noauth-token-command = get-token\n[remote]\n",
     "@:2: option 'oauth-token-command' is set but option 'auth' of [local] names neither "
     "OAUTHBEARER nor XOAUTH2"},
    {"[local]\ntimeout = 0\n[remote]\n",
     "@:2: invalid value for option 'timeout': '0' (expected a whole number of seconds from 1 to "
     "86400)"},
    {"[local]\n[remote]\nlogin-timeout = 86401\n",
     "@:3: invalid value for option 'login-timeout': '86401' (expected a whole number of seconds "
     "from 1 to 86400)"},
    {"connect-timeout = 1.5\n[local]\n[remote]\n",
     "@:1: invalid value for option 'connect-timeout': '1.5' (expected a whole number of seconds "
     "from 1 to 86400)"},
    {"[local]\ntimeout = 030\n[remote]\n",
     "@:2: invalid value for option 'timeout': '030' (expected a whole number of seconds from 1 "
     "to 86400)"},
    {"[local]\ntimeout = -5\n[remote]\n",
     "@:2: invalid value for option 'timeout': '-5' (expected a whole number of seconds from 1 to "
     "86400)"},
    {"[local]\nmin-rate = 99999999999\n[remote]\n",
     "@:2: invalid value for option 'min-rate': '99999999999' (expected a whole number of bytes "
     "per second from 1 to 1000000000)"},
    /* Line numbers: CR, CRLF and CRCRLF each end one line. */
    {"a1=\r\rfoo = 2\n[local]\n[remote]\n", "@:1: unknown option 'a1'"},
    {"[local]\r\r\n\rfoo = 2\n[remote]\n", "@:3: unknown option 'foo'"},
    /* An invalid value that a later duplicate replaces is not looked at,
     * but the one in effect is. */
    {"[local]\ntype = imap\ntype = nope\n[remote]\n",
     "@:3: invalid value for option 'type': 'nope' (expected imap, imaps or tunnel)"},
};

static void test_table(void)
{
    char err[1024];

    for (size_t i = 0; i < sizeof(ok_cases) / sizeof(ok_cases[0]); i++) {
        struct config cfg;
        int before = check_failures();
        int r = load(&cfg, ok_cases[i].content, err, sizeof(err));
        CHECK(r == 0);
        if (r == 0)
            ok_cases[i].verify(&cfg);
        else
            fprintf(stderr, "  error: %s\n", err);
        if (check_failures() != before)
            fprintf(stderr, "  in case: %s\n", ok_cases[i].name);
        config_fini(&cfg);
        config_fini(&cfg); /* twice: must be harmless */
    }
    for (size_t i = 0; i < sizeof(err_cases) / sizeof(err_cases[0]); i++) {
        struct config cfg;
        int r = load(&cfg, err_cases[i].content, err, sizeof(err));
        CHECK(r == ERR_CONFIG);
        CHECK_STR(err, expect_err(err_cases[i].error));
        CHECK(cfg.path == NULL && cfg.local.host == NULL); /* left zeroed */
        config_fini(&cfg);
    }
}

static void test_file_errors(void)
{
    struct config cfg;
    char err[512], path[600];
    int r;

    snprintf(path, sizeof(path), "%s/does-not-exist", tmpdir);
    r = config_load(&cfg, path, err, sizeof(err));
    CHECK(r == ERR_CONFIG);
    {
        char want[700];
        snprintf(want, sizeof(want), "%s: no such config file", path);
        CHECK_STR(err, want);
    }
    /* A directory is not a config file either. */
    r = config_load(&cfg, tmpdir, err, sizeof(err));
    CHECK(r == ERR_CONFIG);

    /* NUL bytes in a value are control characters. */
    write_file(cfgpath, "[local]\nhost = a\0b\n[remote]\n", 27);
    r = config_load(&cfg, cfgpath, err, sizeof(err));
    CHECK(r == ERR_CONFIG);
    CHECK_STR(err, expect_err("@:2: invalid value for option 'host': 'a\\x00b' (expected a "
                              "non-empty value without control characters)"));

    /* The data directory must exist for the default database. */
    setenv("XDG_DATA_HOME", "/nonexistent-interimap-test", 1);
    r = load(&cfg, "[local]\n[remote]\n", err, sizeof(err));
    CHECK(r == ERR_CONFIG);
    CHECK_STR(err, expect_err("@: database: no such directory: /nonexistent-interimap-test"));
    r = load(&cfg, "database = x.db\n[local]\n[remote]\n", err, sizeof(err));
    CHECK(r == ERR_CONFIG);
    CHECK_STR(err, expect_err("@:1: database: no such directory: /nonexistent-interimap-test"));
    setenv("XDG_DATA_HOME", datahome, 1);
}

/* ---- XDG ---- */

static void test_xdg(void)
{
    char err[512], want[1024], home[512], cfghome[512];
    struct stat st;
    char *p;

    snprintf(cfghome, sizeof(cfghome), "%s/cfghome", tmpdir);
    mkdir(cfghome, 0755);

    setenv("XDG_CONFIG_HOME", cfghome, 1);
    p = config_resolve_path(NULL, err, sizeof(err));
    snprintf(want, sizeof(want), "%s/interimap/config", cfghome);
    CHECK_STR(p, want);
    free(p);
    /* The interimap subdirectory was created, private. */
    snprintf(want, sizeof(want), "%s/interimap", cfghome);
    CHECK(stat(want, &st) == 0 && S_ISDIR(st.st_mode) && (st.st_mode & 0777) == 0700);

    p = config_resolve_path("other.conf", err, sizeof(err));
    snprintf(want, sizeof(want), "%s/interimap/other.conf", cfghome);
    CHECK_STR(p, want);
    free(p);

    /* "./x" is relative like any other: not taken from the working dir. */
    p = config_resolve_path("./x", err, sizeof(err));
    snprintf(want, sizeof(want), "%s/interimap/./x", cfghome);
    CHECK_STR(p, want);
    free(p);

    p = config_resolve_path("/etc/interimap.conf", err, sizeof(err));
    CHECK_STR(p, "/etc/interimap.conf");
    free(p);

    p = config_resolve_path("", err, sizeof(err));
    CHECK(p == NULL);
    CHECK_STR(err, "invalid path (it must be non-empty and printable)");

    p = config_resolve_path("bad\x01name", err, sizeof(err));
    CHECK(p == NULL);

    /* Unset: $HOME/.config. */
    unsetenv("XDG_CONFIG_HOME");
    snprintf(home, sizeof(home), "%s/home", tmpdir);
    mkdir(home, 0755);
    setenv("HOME", home, 1);
    p = config_resolve_path(NULL, err, sizeof(err));
    CHECK(p == NULL);
    snprintf(want, sizeof(want), "no such directory: %s/.config", home);
    CHECK_STR(err, want);
    snprintf(want, sizeof(want), "%s/.config", home);
    mkdir(want, 0755);
    p = config_resolve_path(NULL, err, sizeof(err));
    snprintf(want, sizeof(want), "%s/.config/interimap/config", home);
    CHECK_STR(p, want);
    free(p);

    /* HOME unset too: "/.config", which does not exist here. */
    unsetenv("HOME");
    if (stat("/.config", &st) != 0) {
        p = config_resolve_path(NULL, err, sizeof(err));
        CHECK(p == NULL);
        CHECK_STR(err, "no such directory: /.config");
    }
    setenv("HOME", home, 1);

    /* Set but empty, or relative: refused. */
    setenv("XDG_CONFIG_HOME", "", 1);
    p = config_resolve_path(NULL, err, sizeof(err));
    CHECK(p == NULL);
    CHECK_STR(err, "no such directory: ");
    if (chdir(tmpdir) == 0) {
        mkdir("relative", 0755);
        setenv("XDG_CONFIG_HOME", "relative", 1);
        p = config_resolve_path(NULL, err, sizeof(err));
        CHECK(p == NULL);
        CHECK_STR(err, "base directory is not an absolute printable path: relative");
    }

    /* The data directory follows the same rule with its own variable. */
    unsetenv("XDG_DATA_HOME");
    snprintf(want, sizeof(want), "%s/.local/share", home);
    mkdir(want, 0755);
    snprintf(want, sizeof(want), "%s/.local", home);
    mkdir(want, 0755);
    snprintf(want, sizeof(want), "%s/.local/share", home);
    mkdir(want, 0755);
    p = config_xdg_path("XDG_DATA_HOME", ".local/share", "h.db", err, sizeof(err));
    snprintf(want, sizeof(want), "%s/.local/share/interimap/h.db", home);
    CHECK_STR(p, want);
    free(p);

    /* A database in the data home is found through config_load too. */
    setenv("XDG_CONFIG_HOME", cfghome, 1);
    {
        struct config cfg;
        int r = load(&cfg, "[local]\n[remote]\nhost = imap.example\n", err, sizeof(err));
        CHECK(r == 0);
        snprintf(want, sizeof(want), "%s/.local/share/interimap/imap.example.db", home);
        CHECK_STR(cfg.database, want);
        config_fini(&cfg);
    }
    setenv("XDG_DATA_HOME", datahome, 1);
}

/* ---- list-mailbox ---- */

static void check_list(const char *value, size_t n, const char *const *want, const size_t *lens)
{
    struct bytes *v;
    size_t count;
    char err[256];
    int r = config_parse_mailbox_list(value, &v, &count, err, sizeof(err));

    CHECK(r == 0);
    CHECK(count == n);
    if (r != 0) {
        fprintf(stderr, "  value: %s: %s\n", value, err);
        return;
    }
    for (size_t i = 0; i < n && i < count; i++) {
        bool same = v[i].len == lens[i] && memcmp(v[i].data, want[i], lens[i]) == 0 &&
                    v[i].data[v[i].len] == '\0';
        CHECK(same);
        if (!same)
            fprintf(stderr, "  value %s: pattern %zu differs\n", value, i);
    }
    config_mailbox_list_free(&v, count);
    CHECK(v == NULL);
}

static void check_list_error(const char *value, const char *want)
{
    struct bytes *v = (struct bytes *)1;
    size_t count = 99;
    char err[256];
    int r = config_parse_mailbox_list(value, &v, &count, err, sizeof(err));

    CHECK(r == ERR_CONFIG);
    CHECK(v == NULL && count == 0);
    CHECK_STR(err, want);
}

static void test_mailbox_list(void)
{
    {
        const char *w[] = {"INBOX"};
        size_t l[] = {5};
        check_list("INBOX", 1, w, l);
    }
    {
        const char *w[] = {"a", "b*", "%c"};
        size_t l[] = {1, 2, 2};
        check_list("a \t b*\v%c  ", 3, w, l);
    }
    {
        /* Every escape, including \v which stands for a plain "v". */
        const char *w[] = {"\"\\\0\a\b\t\nv\f\r"};
        size_t l[] = {10};
        check_list("\"\\\"\\\\\\0\\a\\b\\t\\n\\v\\f\\r\"", 1, w, l);
    }
    {
        const char *w[] = {"foo\0bar", "\xff", "A(b){c}"};
        size_t l[] = {7, 1, 7};
        check_list("\"foo\\x00bar\" \"\\xfF\" \"\\x41(b){c}\"", 3, w, l);
    }
    {
        size_t l[] = {0};
        check_list("", 0, NULL, l);
        check_list("   ", 0, NULL, l);
    }
    check_list_error("\"\"", "cannot parse the pattern at byte 1 ('\"\"')");
    check_list_error("\"unterminated", "cannot parse the pattern at byte 1 ('\"unterminated')");
    check_list_error("a\"b\"", "cannot parse the pattern at byte 2 ('\"b\"')");
    check_list_error("\"a\"\"b\"", "cannot parse the pattern at byte 4 ('\"b\"')");
    check_list_error("\"\\q\"", "cannot parse the pattern at byte 1 ('\"\\q\"')");
    check_list_error("\"\\x4\"", "cannot parse the pattern at byte 1 ('\"\\x4\"')");
    check_list_error("(a)", "cannot parse the pattern at byte 1 ('(a)')");
    check_list_error("a{1}", "cannot parse the pattern at byte 2 ('{1}')");
    check_list_error("back\\slash", "cannot parse the pattern at byte 5 ('\\slash')");
}

int main(void)
{
    char err[512];

    snprintf(tmpdir, sizeof(tmpdir), "%s/interimap-config-XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (mkdtemp(tmpdir) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(cfgpath, sizeof(cfgpath), "%s/config", tmpdir);
    snprintf(datahome, sizeof(datahome), "%s/data", tmpdir);
    mkdir(datahome, 0700);
    setenv("XDG_DATA_HOME", datahome, 1);
    (void)err;

    test_table();
    test_file_errors();
    test_mailbox_list();
    test_xdg();

    {
        char cmd[600];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", tmpdir);
    }
    return check_finish();
}
