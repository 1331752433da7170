/*
 * The opening sequence of a connection: transport (TCP, SOCKS5 or a
 * tunnel), TLS or STARTTLS, the greeting, capabilities, authentication
 * (LOGIN or SASL, with the secret from the configuration or a command),
 * COMPRESS, the start of the reader coroutine; and LOGOUT.
 */
#include "client_internal.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config.h"
#include "coro/await.h"
#include "coro/coro.h"
#include "errors.h"
#include "imap/sasl.h"
#include "imap/trace.h"
#include "log.h"
#include "net/command.h"
#include "net/compress.h"
#include "net/socks5.h"
#include "net/stream.h"
#include "net/tls.h"
#include "net/transport.h"

enum {
    /* long enough for a helper that asks the user, or refreshes a token
     * over the network */
    SECRET_COMMAND_TIMEOUT_MS = 2 * 60 * 1000,
};

void client_caps_clear(struct imap_client *c)
{
    for (size_t i = 0; i < c->ncaps; i++)
        free(c->caps[i]);
    free(c->caps);
    c->caps = NULL;
    c->ncaps = 0;
}

void client_caps_set(struct imap_client *c, const struct imap_value *v, size_t n)
{
    client_caps_clear(c);
    c->caps = calloc(n ? n : 1, sizeof *c->caps);
    if (!c->caps)
        return;
    for (size_t i = 0; i < n; i++) {
        const char *s;
        size_t len;
        if (!imap_value_string(&v[i], &s, &len))
            continue;
        char *cap = strndup(s, len);
        if (!cap)
            continue;
        for (char *p = cap; *p; p++)
            *p = (char)toupper((unsigned char)*p);
        c->caps[c->ncaps++] = cap;
    }
}

bool imap_client_has_cap(const struct imap_client *c, const char *cap)
{
    for (size_t i = 0; i < c->ncaps; i++)
        if (strcasecmp(c->caps[i], cap) == 0)
            return true;
    return false;
}

bool imap_client_may_use(const struct imap_client *c, const char *cap)
{
    if (imap_client_has_cap(c, cap))
        return true;
    if (c->caps_final)
        return false;
    for (size_t i = 0; i < c->nexpected; i++)
        if (strcasecmp(c->expected[i], cap) == 0)
            return true;
    return false;
}

void client_expected_clear(struct imap_client *c)
{
    for (size_t i = 0; i < c->nexpected; i++)
        free(c->expected[i]);
    free(c->expected);
    c->expected = NULL;
    c->nexpected = 0;
}

int imap_client_expect_caps(struct imap_client *c, const char *caps)
{
    client_expected_clear(c);
    if (!caps)
        return 0;
    size_t n = 1;
    for (const char *p = caps; *p; p++)
        n += *p == ' ';
    c->expected = calloc(n, sizeof *c->expected);
    if (!c->expected)
        return -ENOMEM;
    for (const char *p = caps; *p;) {
        size_t len = strcspn(p, " ");
        if (len && c->nexpected < n && !(c->expected[c->nexpected] = strndup(p, len)))
            return -ENOMEM;
        if (len)
            c->nexpected++;
        p += len;
        p += *p == ' ';
    }
    return 0;
}

char *imap_client_caps_string(const struct imap_client *c)
{
    size_t len = 1;
    for (size_t i = 0; i < c->ncaps; i++)
        len += strlen(c->caps[i]) + 1;
    char *out = malloc(len), *p = out;
    if (!out)
        return NULL;
    *p = '\0';
    for (size_t i = 0; i < c->ncaps; i++)
        p += sprintf(p, "%s%s", i ? " " : "", c->caps[i]);
    return out;
}

const char *imap_client_greeting(const struct imap_client *c)
{
    return c->greeting_seen;
}

int imap_client_expect_greeting(struct imap_client *c, const char *greeting)
{
    free(c->greeting_memory);
    c->greeting_memory = NULL;
    if (greeting && (greeting[0] == '+' || greeting[0] == '-') &&
        !(c->greeting_memory = strdup(greeting)))
        return -ENOMEM;
    return 0;
}

/* What the greeting (and the capabilities before the login) said, in
 * the form imap_client_greeting() gives; NULL when there were none. */
static void client_greeting_note(struct imap_client *c)
{
    free(c->greeting_seen);
    c->greeting_seen = NULL;
    char *caps = c->ncaps ? imap_client_caps_string(c) : NULL;
    if (!caps)
        return;
    size_t len = strlen(caps) + 3;
    c->greeting_seen = malloc(len);
    if (c->greeting_seen)
        snprintf(c->greeting_seen, len, "%c %s", c->auth_pipelining ? '+' : '-', caps);
    free(caps);
}

/* The capabilities of a remembered greeting, presumed until the greeting
 * itself arrives. */
static int client_caps_presume(struct imap_client *c, const char *greeting)
{
    client_caps_clear(c);
    const char *p = greeting + 1;
    size_t n = 0;
    for (const char *q = p; *q; q++)
        n += *q == ' ';
    c->caps = calloc(n ? n : 1, sizeof *c->caps);
    if (!c->caps)
        return -ENOMEM;
    while (*p) {
        p += strspn(p, " ");
        size_t len = strcspn(p, " ");
        if (len && c->ncaps < n) {
            char *cap = strndup(p, len);
            if (!cap)
                return -ENOMEM;
            c->caps[c->ncaps++] = cap;
        }
        p += len;
    }
    return 0;
}

static uint64_t login_left_ms(const struct imap_client *c)
{
    uint64_t now = stream_clock_ms();
    return c->login_deadline > now ? c->login_deadline - now : 1;
}

static int client_open_transport(struct imap_client *c)
{
    const struct server_config *cfg = c->cfg;
    char err[256];
    int r;
    /* each attempt within connect-timeout, all of it within the login's */
    uint64_t connect_ms = (uint64_t)cfg->connect_timeout * 1000;
    if (connect_ms > login_left_ms(c))
        connect_ms = login_left_ms(c);
    if (cfg->type == SERVER_TUNNEL) {
        r = transport_tunnel_spawn(c->sched, cfg->command, cfg->null_stderr, &c->stream, err,
                                   sizeof err);
        if (r < 0)
            client_set_error(c, "%s: %s", cfg->name, err);
        return r;
    }
    if (cfg->proxy) {
        struct socks5_proxy proxy;
        r = socks5_proxy_parse(cfg->proxy, &proxy, err, sizeof err);
        if (r < 0) {
            client_set_error(c, "%s: %s", cfg->name, err);
            return r;
        }
        r = transport_tcp_connect(c->sched, proxy.host, proxy.port, c->keepalive, connect_ms,
                                  &c->stream, err, sizeof err);
        if (r < 0) {
            client_set_error(c, "%s: SOCKS5 proxy: %s", cfg->name, err);
            socks5_proxy_fini(&proxy);
            return r;
        }
        /* the proxy's handshake is part of connecting */
        stream_set_timeouts(c->stream, connect_ms, connect_ms);
        stream_set_deadline(c->stream, c->login_deadline);
        char hostbuf[256];
        const char *target = cfg->host;
        char addr[INET6_ADDRSTRLEN + 2];
        if (transport_host_is_literal(cfg->host, hostbuf, sizeof hostbuf)) {
            target = hostbuf;
        } else if (!proxy.remote_dns) {
            struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
            r = await_getaddrinfo(c->sched, cfg->host, NULL, &hints, &res, login_left_ms(c));
            if (r < 0 || !res) {
                client_set_error(c, "%s: cannot resolve host %s: %s", cfg->name, cfg->host,
                                 err_str(r));
                socks5_proxy_fini(&proxy);
                return r < 0 ? r : -ENOENT;
            }
            if (res->ai_family == AF_INET6)
                uv_ip6_name((struct sockaddr_in6 *)res->ai_addr, addr, sizeof addr);
            else
                uv_ip4_name((struct sockaddr_in *)res->ai_addr, addr, sizeof addr);
            uv_freeaddrinfo(res);
            target = addr;
        }
        unsigned long port = strtoul(cfg->port, NULL, 10);
        r = socks5_connect(c->stream, &proxy, target, (uint16_t)port);
        socks5_proxy_fini(&proxy);
        if (r < 0)
            client_set_error(c, "%s: %s", cfg->name, c->stream->error);
        return r;
    }
    r = transport_tcp_connect(c->sched, cfg->host, cfg->port, c->keepalive, connect_ms, &c->stream,
                              err, sizeof err);
    if (r < 0)
        client_set_error(c, "%s: %s", cfg->name, err);
    return r;
}

/* The TLS options of a server section; host receives the bare host name. */
static struct tls_options tls_options_of(const struct server_config *cfg, char *host,
                                         size_t hostlen)
{
    bool literal = transport_host_is_literal(cfg->host, host, hostlen);
    if (!literal)
        snprintf(host, hostlen, "%s", cfg->host);
    const char *sni = cfg->ssl_hostname_set ? cfg->ssl_hostname : (literal ? NULL : host);
    struct tls_options opts = {
        .verify = cfg->ssl_verify,
        .host = host,
        .sni = sni,
        .cafile = cfg->ssl_cafile,
        .capath = cfg->ssl_capath,
        .fingerprints = cfg->ssl_fingerprint,
        .protocol_min = cfg->ssl_protocol_min,
        .protocol_max = cfg->ssl_protocol_max,
        .protocols = cfg->ssl_protocols,
        .cipherlist = cfg->ssl_cipherlist,
        .ciphersuites = cfg->ssl_ciphersuites,
    };
    return opts;
}

int imap_client_check_config(const struct server_config *cfg, char *err, size_t errlen)
{
    char host[256], why[256];
    if (cfg->type == SERVER_TUNNEL) {
        if (!cfg->command || !*cfg->command) {
            snprintf(err, errlen, "%s: type = tunnel needs a command", cfg->name);
            return ERR_CONFIG;
        }
        return 0;
    }
    if (cfg->proxy) {
        struct socks5_proxy proxy;
        if (socks5_proxy_parse(cfg->proxy, &proxy, why, sizeof why) < 0) {
            snprintf(err, errlen, "%s: %s", cfg->name, why);
            return ERR_CONFIG;
        }
        socks5_proxy_fini(&proxy);
    }
    if (cfg->type == SERVER_IMAPS || cfg->starttls) {
        struct tls_options opts = tls_options_of(cfg, host, sizeof host);
        if (tls_options_check(&opts, why, sizeof why) < 0) {
            snprintf(err, errlen, "%s: %s", cfg->name, why);
            return ERR_CONFIG;
        }
    }
    return 0;
}

static int client_start_tls(struct imap_client *c)
{
    const struct server_config *cfg = c->cfg;
    char host[256];
    struct tls_options opts = tls_options_of(cfg, host, sizeof host);
    char err[256];
    struct stream *tls = NULL;
    int r = tls_stream_new(c->stream, &opts, &tls, err, sizeof err);
    if (r < 0 && stream_clock_ms() >= c->login_deadline) {
        client_set_error(
            c,
            "%s: no usable session after %u s (login-timeout): TLS handshake with %s not finished",
            cfg->name, cfg->login_timeout, cfg->host);
        return -ETIMEDOUT;
    }
    if (r < 0) {
        client_set_error(c, "%s: TLS handshake with %s failed: %s", cfg->name, cfg->host, err);
        return r;
    }
    c->stream = tls;
    if (logger_debug_level(c->log) >= 1) {
        char desc[128];
        log_debug(c->log, cfg->name, NULL, "TLS established: %s",
                  tls_stream_describe(tls, desc, sizeof desc));
    }
    return 0;
}

static int client_capability(struct imap_client *c)
{
    return imap_client_run(c, "CAPABILITY");
}

/*
 * ENABLE and the caller's first commands go out together right after the
 * login command (or its success), uncompressed, instead of a round trip
 * later; should the login fail they fail too, harmlessly. COMPRESS goes
 * out right behind them. Only what the server is known to offer:
 * advertised before login, or after the login of a previous run
 * (imap_client_expect_caps); the rest waits for the login's capabilities.
 */
static void client_send_after_login(struct imap_client *c)
{
    if (c->broken)
        return;
    if (imap_client_may_use(c, "QRESYNC") && imap_client_may_use(c, "ENABLE")) {
        struct imap_cmd *enable = imap_client_send(c, "ENABLE QRESYNC");
        imap_cmd_free(&enable);
        c->enable_sent = true;
    }
    if (c->login_hook)
        c->login_hook(c, c->login_hook_ctx);
    if (c->cfg->compress && imap_client_may_use(c, "COMPRESS=DEFLATE") && !c->broken)
        c->compress_cmd = imap_client_send(c, "COMPRESS DEFLATE");
}

static void secret_free(char **secret)
{
    if (*secret) {
        explicit_bzero(*secret, strlen(*secret));
        free(*secret);
        *secret = NULL;
    }
}

/* The secret a login needs: the configured password, or what
 * password-command or oauth-token-command prints, run again on every
 * connection (so that a reconnection in --watch mode gets a fresh token).
 * The caller frees it with secret_free(). */
static int client_secret(struct imap_client *c, bool token, char **out)
{
    const struct server_config *cfg = c->cfg;
    const char *option = token ? "oauth-token-command" : "password-command";
    const char *command = token ? cfg->oauth_token_command : cfg->password_command;
    *out = NULL;
    if (!command && !token) {
        *out = strdup(cfg->password);
        return *out ? 0 : -ENOMEM;
    }
    char why[256];
    int r = command_read_line(c->sched, command, SECRET_COMMAND_TIMEOUT_MS, out, why, sizeof why);
    if (r < 0)
        client_set_error(c, "%s: %s %s", cfg->name, option, why);
    return r;
}

static int connect_greeting(struct imap_client *c, bool *preauth);

/* Reads the greeting of a connection whose login went out ahead of it;
 * from here on the capabilities it advertised count. */
static int client_greeting_ahead(struct imap_client *c)
{
    if (!c->greeting_pending)
        return 0;
    c->greeting_pending = false;
    client_caps_clear(c);
    bool preauth = false;
    int r = connect_greeting(c, &preauth);
    c->greeting_preauth = preauth;
    if (r == 0)
        client_greeting_note(c);
    return r;
}

/* Sends a SASL response on its own line; "*" cancels the exchange. */
static void client_sasl_send(struct imap_client *c, const unsigned char *data, size_t len,
                             bool cancel)
{
    char *b64 = cancel ? strdup("*") : sasl_base64_encode(data, len);
    if (!b64) {
        client_set_error(c, "%s: out of memory", c->cfg->name);
        client_break(c, -ENOMEM);
        return;
    }
    imap_trace_line(c->log, c->cfg->name, false, b64, strlen(b64), !cancel);
    client_write(c, b64, strlen(b64));
    client_write(c, "\r\n", 2);
    explicit_bzero(b64, strlen(b64));
    free(b64);
}

/*
 * Answers one server challenge of an AUTHENTICATE exchange. *first holds
 * the client's first message while the server has not asked for it (no
 * SASL-IR). A challenge we cannot answer cancels the exchange; why is kept
 * in sasl_err for the message after the server's reply.
 */
static void client_sasl_answer(struct imap_client *c, struct sasl *sasl, const char *text,
                               unsigned char **first, size_t first_len, char *sasl_err,
                               size_t errlen)
{
    if (*first) {
        client_sasl_send(c, *first, first_len, false);
        sasl_secret_free(first, first_len);
        return;
    }
    unsigned char *challenge = NULL, *out = NULL;
    size_t clen = 0, outlen = 0;
    int r = sasl_base64_decode(text, strlen(text), &challenge, &clen);
    if (r < 0) {
        snprintf(sasl_err, errlen, "the server's challenge is not base64");
    } else {
        r = sasl_step(sasl, challenge, clen, &out, &outlen, sasl_err, errlen);
        free(challenge);
    }
    client_sasl_send(c, out, outlen, r < 0);
    sasl_secret_free(&out, outlen);
}

/*
 * AUTHENTICATE with a SASL mechanism: the command (with the client's first
 * message when the server takes it on the same line, RFC 4959), then every
 * challenge answered until the tagged reply. Responses are read here: the
 * reader coroutine does not run yet.
 */
static struct imap_cmd *client_sasl(struct imap_client *c, enum sasl_mech mech, const char *secret,
                                    char *sasl_err, size_t errlen, bool *after_sent)
{
    const struct server_config *cfg = c->cfg;
    struct sasl *sasl = sasl_new(mech, cfg->username, secret);
    if (!sasl)
        return NULL;
    unsigned char *first = NULL;
    size_t first_len = 0;
    struct imap_cmd *cmd = NULL;
    if (sasl_step(sasl, NULL, 0, &first, &first_len, sasl_err, errlen) < 0) {
        client_set_error(c, "%s: %s: %s", cfg->name, sasl_mech_name(mech), sasl_err);
        cmd = client_cmd_failed(c, ERR_AUTH);
        goto out;
    }
    if (imap_client_has_cap(c, "SASL-IR")) {
        char *b64 = first_len ? sasl_base64_encode(first, first_len) : strdup("=");
        if (!b64)
            goto out;
        cmd = imap_client_send(c, "AUTHENTICATE %a %a", sasl_mech_name(mech), b64);
        explicit_bzero(b64, strlen(b64));
        free(b64);
        sasl_secret_free(&first, first_len);
        /* the whole exchange on one line, no security layer after it: what
         * follows the login rides along where the server takes it, and
         * where what the server offers once logged in is remembered (a
         * first run's listing waits for it, to ask for what it offers) */
        if (cmd && mech == SASL_PLAIN && c->auth_pipelining && c->nexpected > 0) {
            client_send_after_login(c);
            *after_sent = true;
        }
    } else {
        cmd = imap_client_send(c, "AUTHENTICATE %a", sasl_mech_name(mech));
    }
    int gr = cmd ? client_greeting_ahead(c) : 0;
    if (gr < 0)
        client_break(c, gr);
    while (cmd && !cmd->done && !c->broken) {
        const struct imap_response *resp;
        int rc = client_read_response(c, &resp);
        if (rc == 0 && resp->kind == IMAP_RESP_CONTINUATION)
            client_sasl_answer(c, sasl, resp->text, &first, first_len, sasl_err, errlen);
        else if (rc == 0)
            rc = client_dispatch(c, resp);
        if (rc < 0)
            client_break(c, rc);
    }
    if (cmd && cmd->done && cmd->result == 0 && sasl_finish(sasl, sasl_err, errlen) < 0) {
        /* the server said OK without proving itself: not to be trusted */
        client_set_error(c, "%s: authentication failed (%s): %s", cfg->name, sasl_mech_name(mech),
                         sasl_err);
        client_break(c, ERR_AUTH);
        cmd->result = ERR_AUTH;
    } else if (sasl_server_error(sasl) && !sasl_err[0]) {
        snprintf(sasl_err, errlen, "the server refused the token (%s)", sasl_server_error(sasl));
    }
out:
    sasl_secret_free(&first, first_len);
    sasl_free(&sasl);
    return cmd;
}

/*
 * Picks the first configured mechanism the server offers: LOGIN is the
 * plain LOGIN command (always offered unless LOGINDISABLED); the SASL
 * mechanisms need their AUTH= capability. Names we do not implement are
 * passed over.
 */
static int client_pick_mechanism(struct imap_client *c, bool *sasl, enum sasl_mech *mech)
{
    const struct server_config *cfg = c->cfg;
    char *list = strdup(cfg->auth ? cfg->auth : "PLAIN LOGIN");
    if (!list)
        return -ENOMEM;
    bool found = false;
    char *save = NULL;
    for (char *m = strtok_r(list, " \t", &save); m && !found; m = strtok_r(NULL, " \t", &save)) {
        char cap[64];
        snprintf(cap, sizeof cap, "AUTH=%s", m);
        if (strcasecmp(m, "LOGIN") == 0) {
            *sasl = false;
            found = true;
        } else if (sasl_mech_from_name(m, mech) && imap_client_has_cap(c, cap)) {
            *sasl = true;
            found = true;
        }
    }
    free(list);
    if (!found) {
        client_set_error(c,
                         "%s: no configured authentication mechanism (auth = %s) is offered "
                         "by the server",
                         cfg->name, cfg->auth ? cfg->auth : "PLAIN LOGIN");
        return ERR_AUTH;
    }
    if ((!*sasl || *mech == SASL_PLAIN) && imap_client_has_cap(c, "LOGINDISABLED")) {
        client_set_error(c, "%s: the server disables logins (LOGINDISABLED)", cfg->name);
        return ERR_AUTH;
    }
    return 0;
}

static int client_authenticate(struct imap_client *c)
{
    const struct server_config *cfg = c->cfg;
    bool sasl = false;
    enum sasl_mech mech = SASL_PLAIN;
    int r = client_pick_mechanism(c, &sasl, &mech);
    if (r < 0)
        return r;
    bool token = sasl && sasl_mech_takes_token(mech);
    if (!cfg->username || (!token && !cfg->password && !cfg->password_command) ||
        (token && !cfg->oauth_token_command)) {
        client_set_error(c, "%s: missing option %s", cfg->name,
                         !cfg->username ? "username"
                         : token        ? "oauth-token-command"
                                        : "password (or password-command)");
        return ERR_CONFIG;
    }
    char *secret = NULL;
    r = client_secret(c, token, &secret);
    if (r < 0)
        return r;

    char sasl_err[256] = "";
    struct imap_cmd *cmd;
    bool after_sent = false;
    if (!sasl) {
        /* LOGIN takes astrings; 8-bit passwords would need a literal */
        cmd = imap_client_send(c, "LOGIN %s %s", cfg->username, secret);
    } else {
        cmd = client_sasl(c, mech, secret, sasl_err, sizeof sasl_err, &after_sent);
    }
    secret_free(&secret);
    if (!cmd)
        return -ENOMEM;
    /* Behind LOGIN the first commands share its round trip. In general
     * nothing may follow an AUTHENTICATE before its tagged reply: the
     * server may read the lines after it as the SASL exchange (Cyrus does,
     * even after the exchange ends), and a security layer could start
     * right after. client_sasl() makes the exception for a server known to
     * take them behind a one-line PLAIN exchange. */
    if (!sasl) {
        client_send_after_login(c);
        after_sent = true;
    }
    r = client_greeting_ahead(c);
    if (r == 0)
        r = imap_cmd_wait(cmd);
    bool caps_in_reply = cmd->code && strcasecmp(cmd->code, "CAPABILITY") == 0;
    if (sasl && r == 0) {
        /* the capabilities of the reply are known now: what the server
         * advertised on an earlier connection no longer counts */
        if (caps_in_reply)
            c->caps_final = true;
        if (!after_sent)
            client_send_after_login(c);
    }
    if ((r == ERR_NO || r == ERR_BAD) && sasl_err[0]) {
        client_set_error(c, "%s: authentication failed (%s): %s; the server said: %s", cfg->name,
                         sasl_mech_name(mech), sasl_err, imap_cmd_text(cmd));
        r = ERR_AUTH;
    } else if (r == ERR_NO || r == ERR_BAD) {
        client_set_error(c, "%s: authentication failed: %s", cfg->name, imap_cmd_text(cmd));
        r = ERR_AUTH;
    }
    imap_cmd_free(&cmd);
    if (r < 0)
        return r;
    /* post-login capabilities: from the reply, or asked for after COMPRESS */
    c->need_caps = !caps_in_reply;
    return r;
}

static int client_enable_compress(struct imap_client *c)
{
    struct imap_cmd *cmd = c->compress_cmd;
    c->compress_cmd = NULL;
    if (!cmd && (!c->cfg->compress || !imap_client_has_cap(c, "COMPRESS=DEFLATE")))
        return 0;
    if (!cmd)
        cmd = imap_client_send(c, "COMPRESS DEFLATE");
    if (!cmd)
        return -ENOMEM;
    int r = imap_cmd_wait(cmd);
    bool active = r == ERR_NO && cmd->code && strcasecmp(cmd->code, "COMPRESSIONACTIVE") == 0;
    imap_cmd_free(&cmd);
    if (active || r == ERR_NO || r == ERR_BAD)
        return 0; /* already on, or not offered: carry on uncompressed */
    if (r < 0)
        return r;
    if (c->roff != c->rlen) {
        client_set_error(c, "%s: server sent data after the COMPRESS reply", c->cfg->name);
        return ERR_PROTOCOL;
    }
    char err[256];
    struct stream *z = NULL;
    r = compress_stream_new(c->stream, &z, err, sizeof err);
    if (r < 0) {
        client_set_error(c, "%s: COMPRESS: %s", c->cfg->name, err);
        return r;
    }
    c->stream = z;
    c->zstream = z;
    c->raw_base_in = c->bytes_in;
    c->raw_base_out = c->bytes_out;
    log_debug(c->log, c->cfg->name, NULL, "COMPRESS=DEFLATE active");
    return 0;
}

/* The connection up to the greeting: transport, then TLS for imaps. */
static int connect_transport(struct imap_client *c)
{
    const struct server_config *cfg = c->cfg;
    int r = client_open_transport(c);
    if (r < 0)
        return r;
    stream_set_timeouts(c->stream, c->timeout_ms, c->timeout_ms);
    stream_set_deadline(c->stream, c->login_deadline);
    if (cfg->type == SERVER_IMAPS)
        return client_start_tls(c);
    return 0;
}

/* Reads the greeting: OK, or PREAUTH (*preauth), with its capabilities
 * if it carries them. */
static int connect_greeting(struct imap_client *c, bool *preauth)
{
    const struct server_config *cfg = c->cfg;
    const struct imap_response *g;
    int r = client_read_response(c, &g);
    if (r < 0)
        return r;
    if (g->kind != IMAP_RESP_UNTAGGED ||
        (g->status != IMAP_STATUS_OK && g->status != IMAP_STATUS_PREAUTH)) {
        if (g->status == IMAP_STATUS_BYE)
            client_set_error(c, "%s: server refused the connection: %s", cfg->name, g->text);
        else
            client_set_error(c, "%s: unexpected greeting from the server", cfg->name);
        return ERR_PROTOCOL;
    }
    *preauth = g->status == IMAP_STATUS_PREAUTH;
    client_note_status_code(c, g);
    /* Dovecot hands the commands that follow a login to the session it
     * starts, AUTHENTICATE included; other servers may not (see
     * client_authenticate). Trusted only when the greeting names it; a
     * greeting changed by its administrator costs the round trip. */
    c->auth_pipelining = g->text && strstr(g->text, "Dovecot") != NULL;
    return 0;
}

/* STARTTLS, then the capabilities again (those before it are not to be
 * trusted). */
static int connect_starttls(struct imap_client *c)
{
    const struct server_config *cfg = c->cfg;
    if (!imap_client_has_cap(c, "STARTTLS")) {
        client_set_error(c,
                         "%s: server does not offer STARTTLS; refusing to send "
                         "credentials in clear (set STARTTLS = NO to allow it)",
                         cfg->name);
        return ERR_UNSUPPORTED;
    }
    int r = imap_client_run(c, "STARTTLS");
    if (r < 0)
        return r;
    /* Anything the server sent after its OK arrived before the
     * handshake: it is unauthenticated and must not be trusted. */
    if (c->roff != c->rlen) {
        client_set_error(c,
                         "%s: server sent unexpected data after the STARTTLS reply "
                         "(possible response injection); aborting",
                         cfg->name);
        return ERR_PROTOCOL;
    }
    r = client_start_tls(c);
    if (r < 0)
        return r;
    client_caps_clear(c);
    return client_capability(c);
}

/* From the greeting to the authenticated state: capabilities, STARTTLS
 * where configured, authentication (none after PREAUTH). */
static int connect_login(struct imap_client *c, bool preauth)
{
    const struct server_config *cfg = c->cfg;
    bool want_starttls = cfg->type == SERVER_IMAP && cfg->starttls;
    int r;
    if (preauth && want_starttls) {
        client_set_error(c,
                         "%s: PREAUTH greeting on a plaintext connection where STARTTLS is "
                         "required; refusing to continue (set STARTTLS = NO to allow it)",
                         cfg->name);
        return ERR_PROTOCOL;
    }
    if (c->ncaps == 0 && (r = client_capability(c)) < 0)
        return r;
    if (preauth)
        return 0;
    if (want_starttls && (r = connect_starttls(c)) < 0)
        return r;
    client_greeting_note(c);
    return client_authenticate(c);
}

/*
 * The login of an imaps connection sent right behind the TLS handshake,
 * chosen from the capabilities of the greeting remembered from an earlier
 * connection (the connection is already authenticated and encrypted: the
 * greeting tells nothing that protects the credentials); the greeting is
 * read behind it. Should that login fail while the greeting differs from
 * the remembered one, the server changed: the login is done again from
 * its greeting, and what went out behind the first one (refused, the
 * session not being authenticated) is sent again or, for the login
 * hook's commands, left to the caller, which sees them fail.
 */
static int connect_login_ahead(struct imap_client *c)
{
    int r = client_caps_presume(c, c->greeting_memory);
    if (r < 0)
        return r;
    bool sasl = false, preauth = false;
    enum sasl_mech mech = SASL_PLAIN;
    if (client_pick_mechanism(c, &sasl, &mech) < 0) {
        /* nothing to send ahead: the usual way */
        client_caps_clear(c);
        r = connect_greeting(c, &preauth);
        return r < 0 ? r : connect_login(c, preauth);
    }
    log_debug(c->log, c->cfg->name, NULL, "login sent ahead of the greeting, as remembered: %s",
              c->greeting_memory);
    c->auth_pipelining = c->greeting_memory[0] == '+';
    c->greeting_pending = true;
    r = client_authenticate(c);
    if (c->greeting_pending)
        return r; /* failed before anything went out */
    if (c->greeting_preauth) {
        /* authenticated whatever the login said: as after a PREAUTH
         * greeting, with the capabilities asked for */
        c->need_caps = true;
        return c->broken ? c->broken_code : 0;
    }
    bool stale = !c->greeting_seen || strcmp(c->greeting_seen, c->greeting_memory) != 0;
    if (r != ERR_AUTH || !stale || c->broken)
        return r;
    log_debug(c->log, c->cfg->name, NULL,
              "the greeting differs from the remembered one (%s): login again",
              c->greeting_seen ? c->greeting_seen : "no capabilities");
    c->enable_sent = false;
    imap_cmd_free(&c->compress_cmd);
    c->login_hook = NULL;
    return connect_login(c, false);
}

/* The opening sequence is over: responses are read by a coroutine of
 * their own from now on, watched by the watchdog; the login deadline no
 * longer applies. */
static int connect_start_reader(struct imap_client *c)
{
    c->opening = false;
    stream_set_deadline(c->stream, 0);
    stream_set_timeouts(c->stream, 0, c->timeout_ms);
    if (client_watchdog_start(c) < 0)
        return -ENOMEM;
    c->reader = coro_spawn(c->sched, client_reader_main, c, 0);
    if (!c->reader)
        return -ENOMEM;
    c->reader_running = true;
    return 0;
}

int imap_client_connect(struct imap_client *c)
{
    const struct server_config *cfg = c->cfg;
    c->timeout_ms = (uint64_t)cfg->timeout * 1000;
    c->opening = true;
    c->login_deadline = stream_clock_ms() + (uint64_t)cfg->login_timeout * 1000;
    bool preauth = false;
    int r = connect_transport(c);
    if (r == 0 && cfg->type == SERVER_IMAPS && c->greeting_memory) {
        r = connect_login_ahead(c);
    } else {
        if (r == 0)
            r = connect_greeting(c, &preauth);
        if (r == 0)
            r = connect_login(c, preauth);
    }
    if (r == 0)
        r = client_enable_compress(c);
    if (r == 0 && c->need_caps)
        r = client_capability(c);
    if (r < 0)
        return r;
    c->caps_final = true;
    r = connect_start_reader(c);
    if (r < 0)
        return r;
    /* Not waited for: the caller's first commands follow in the same round
     * trip. A server refusing it would refuse SELECT (QRESYNC) next. */
    if (!c->enable_sent && imap_client_has_cap(c, "QRESYNC") && imap_client_has_cap(c, "ENABLE")) {
        struct imap_cmd *enable = imap_client_send(c, "ENABLE QRESYNC");
        imap_cmd_free(&enable);
    }
    return 0;
}

int imap_client_logout(struct imap_client *c)
{
    if (!c->stream || c->broken)
        return c->broken ? c->broken_code : 0;
    c->logging_out = true;
    struct imap_cmd *cmd = imap_client_send(c, "LOGOUT");
    if (!cmd)
        return -ENOMEM;
    /* Everything is committed by now: waiting for the server's BYE and OK
     * would only add a round trip to every run. The bytes are out (writes
     * complete before returning); closing ends the session. */
    int r = cmd->done ? cmd->result : 0;
    imap_cmd_free(&cmd);
    return r;
}
