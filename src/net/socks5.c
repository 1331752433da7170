/*
 * SOCKS5 client (RFC 1928) with username/password authentication (RFC
 * 1929). The handshake reads exactly the bytes each reply is made of, never
 * more: what follows the CONNECT reply is the tunnelled server's data (the
 * IMAP greeting) and belongs to the layer above.
 */
#include "net/socks5.h"

#include "errors.h"
#include "net/stream.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

/* ---- URL parsing ------------------------------------------------------- */

static char *socks5_strndup(const char *s, size_t n)
{
    char *r = malloc(n + 1);
    if (r) {
        memcpy(r, s, n);
        r[n] = '\0';
    }
    return r;
}

void socks5_proxy_fini(struct socks5_proxy *p)
{
    if (!p)
        return;
    free(p->host);
    free(p->port);
    if (p->password)
        memset(p->password, 0, strlen(p->password));
    free(p->username);
    free(p->password);
    memset(p, 0, sizeof *p);
}

/*
 * Accepts what the older tool accepts: "user:pass@" up to the last '@' (the
 * password may hold ':' and '@'; it is taken literally, without percent
 * decoding, so that existing configuration files keep their meaning), a host
 * without ':' or a bracketed IPv6 literal, and an optional port made of
 * letters and digits (a number or a service name).
 */
int socks5_proxy_parse(const char *url, struct socks5_proxy *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    const char *sep = strstr(url, "://");
    if (!sep) {
        snprintf(err, errlen, "invalid proxy URL '%s' (expected socks5://host[:port])", url);
        return ERR_CONFIG;
    }
    size_t slen = (size_t)(sep - url);
    if (slen == 6 && strncmp(url, "socks5", 6) == 0) {
        out->remote_dns = false;
    } else if (slen == 7 && strncmp(url, "socks5h", 7) == 0) {
        out->remote_dns = true;
    } else {
        snprintf(err, errlen, "unsupported proxy protocol '%.*s' (expected socks5 or socks5h)",
                 (int)slen, url);
        return ERR_CONFIG;
    }
    const char *p = sep + 3;
    for (const char *c = p; *c; c++)
        if (iscntrl((unsigned char)*c)) {
            snprintf(err, errlen, "invalid proxy URL: control character");
            return ERR_CONFIG;
        }

    const char *at = strrchr(p, '@');
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        size_t ulen = colon ? (size_t)(colon - p) : (size_t)(at - p);
        out->username = socks5_strndup(p, ulen);
        out->password =
            colon ? socks5_strndup(colon + 1, (size_t)(at - colon - 1)) : socks5_strndup("", 0);
        if (!out->username || !out->password)
            goto nomem;
        if (strlen(out->username) > 255 || strlen(out->password) > 255) {
            snprintf(err, errlen, "proxy user name and password are limited to 255 bytes");
            goto fail;
        }
        p = at + 1;
    }

    const char *host_end;
    if (*p == '[') {
        const char *close = strchr(p, ']');
        if (!close || close == p + 1) {
            snprintf(err, errlen, "invalid proxy URL '%s': unterminated IPv6 address", url);
            goto fail;
        }
        host_end = close + 1;
    } else {
        host_end = p + strcspn(p, ":/");
        if (host_end == p) {
            snprintf(err, errlen, "invalid proxy URL '%s': no host", url);
            goto fail;
        }
    }
    out->host = socks5_strndup(p, (size_t)(host_end - p));
    if (!out->host)
        goto nomem;
    p = host_end;

    if (*p == ':') {
        p++;
        size_t plen = strcspn(p, "/");
        if (plen == 0) {
            snprintf(err, errlen, "invalid proxy URL '%s': empty port", url);
            goto fail;
        }
        for (size_t i = 0; i < plen; i++)
            if (!isalnum((unsigned char)p[i])) {
                snprintf(err, errlen, "invalid proxy URL '%s': bad port", url);
                goto fail;
            }
        out->port = socks5_strndup(p, plen);
        p += plen;
    } else {
        out->port = socks5_strndup("1080", 4);
    }
    if (!out->port)
        goto nomem;
    if (*p == '/')
        p++; /* a trailing slash is harmless */
    if (*p) {
        snprintf(err, errlen, "invalid proxy URL '%s': unexpected '%s'", url, p);
        goto fail;
    }
    return 0;
nomem:
    snprintf(err, errlen, "out of memory");
    socks5_proxy_fini(out);
    return -ENOMEM;
fail:
    socks5_proxy_fini(out);
    return ERR_CONFIG;
}

/* ---- handshake --------------------------------------------------------- */

static int socks5_fail(struct stream *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int socks5_fail(struct stream *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->error, sizeof s->error, fmt, ap);
    va_end(ap);
    return ERR_SOCKS;
}

static int socks5_send(struct stream *s, const void *buf, size_t len)
{
    int rc = stream_write(s, buf, len);
    if (rc < 0) {
        char tmp[sizeof s->error];
        snprintf(tmp, sizeof tmp, "%s", s->error);
        stream_set_error(s, "SOCKS5 proxy: %s", tmp);
    }
    return rc;
}

/* Reads exactly len bytes, asking the stream for no more than what is
 * still missing. */
static int socks5_recv(struct stream *s, void *buf, size_t len)
{
    unsigned char *p = buf;
    while (len > 0) {
        ssize_t n = stream_read(s, p, len);
        if (n < 0) {
            char tmp[sizeof s->error];
            snprintf(tmp, sizeof tmp, "%s", s->error);
            stream_set_error(s, "SOCKS5 proxy: %s", tmp);
            return (int)n;
        }
        if (n == 0)
            return socks5_fail(s, "SOCKS5 proxy: connection closed during the %s", "handshake");
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static const char *socks5_reply_text(unsigned code)
{
    switch (code) {
    case 1:
        return "general SOCKS server failure";
    case 2:
        return "connection not allowed by ruleset";
    case 3:
        return "network unreachable";
    case 4:
        return "host unreachable";
    case 5:
        return "connection refused by destination host";
    case 6:
        return "TTL expired";
    case 7:
        return "command not supported";
    case 8:
        return "address type not supported";
    default:
        return NULL;
    }
}

static int socks5_authenticate(struct stream *s, const struct socks5_proxy *proxy)
{
    unsigned char req[3 + 2 * 255];
    size_t ulen = strlen(proxy->username);
    size_t plen = proxy->password ? strlen(proxy->password) : 0;
    if (ulen > 255 || plen > 255)
        return socks5_fail(s, "SOCKS5 proxy: %s", "user name or password longer than 255 bytes");
    size_t n = 0;
    req[n++] = 0x01; /* sub-negotiation version */
    req[n++] = (unsigned char)ulen;
    memcpy(req + n, proxy->username, ulen);
    n += ulen;
    req[n++] = (unsigned char)plen;
    if (plen)
        memcpy(req + n, proxy->password, plen);
    n += plen;
    int rc = socks5_send(s, req, n);
    memset(req, 0, sizeof req);
    if (rc < 0)
        return rc;
    unsigned char rep[2];
    rc = socks5_recv(s, rep, 2);
    if (rc < 0)
        return rc;
    if (rep[0] != 0x01)
        return socks5_fail(s, "SOCKS5 proxy: %s",
                           "invalid reply to username/password authentication");
    if (rep[1] != 0x00)
        return socks5_fail(s, "SOCKS5 proxy: %s",
                           "authentication failed (user name or password rejected)");
    return 0;
}

/* Method negotiation: no authentication, plus RFC 1929 when we have
 * credentials, and the sub-negotiation if the proxy picks it. */
static int socks5_negotiate(struct stream *s, const struct socks5_proxy *proxy)
{
    unsigned char buf[4];
    size_t n = 0;
    buf[n++] = 0x05;
    if (proxy->username) {
        buf[n++] = 2;
        buf[n++] = 0x00;
        buf[n++] = 0x02;
    } else {
        buf[n++] = 1;
        buf[n++] = 0x00;
    }
    int rc = socks5_send(s, buf, n);
    if (rc < 0)
        return rc;
    rc = socks5_recv(s, buf, 2);
    if (rc < 0)
        return rc;
    if (buf[0] != 0x05)
        return socks5_fail(s, "SOCKS5 proxy: %s", "not a SOCKS5 server (bad version in reply)");
    if (buf[1] == 0x02 && proxy->username)
        return socks5_authenticate(s, proxy);
    if (buf[1] != 0x00)
        return socks5_fail(s, "SOCKS5 proxy: %s",
                           buf[1] == 0x02 ? "the proxy requires a user name and password"
                                          : "no acceptable authentication method");
    return 0;
}

/* Sends the CONNECT request: an IP address as such, a name only when the
 * proxy resolves names (socks5h). */
static int socks5_request(struct stream *s, const struct socks5_proxy *proxy, const char *host,
                          uint16_t port)
{
    unsigned char buf[4 + 1 + 255 + 2];
    char bare[256];
    size_t hl = strlen(host);
    if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']')
        snprintf(bare, sizeof bare, "%.*s", (int)(hl - 2), host + 1);
    else
        snprintf(bare, sizeof bare, "%s", host);
    size_t n = 0;
    buf[n++] = 0x05;
    buf[n++] = 0x01; /* CONNECT */
    buf[n++] = 0x00;
    unsigned char addr[16];
    if (inet_pton(AF_INET, bare, addr) == 1) {
        buf[n++] = 0x01;
        memcpy(buf + n, addr, 4);
        n += 4;
    } else if (inet_pton(AF_INET6, bare, addr) == 1) {
        buf[n++] = 0x04;
        memcpy(buf + n, addr, 16);
        n += 16;
    } else if (proxy->remote_dns) {
        size_t len = strlen(bare);
        if (len == 0 || len > 255)
            return socks5_fail(s, "SOCKS5 proxy: invalid host name '%s'", bare);
        buf[n++] = 0x03;
        buf[n++] = (unsigned char)len;
        memcpy(buf + n, bare, len);
        n += len;
    } else {
        return socks5_fail(s,
                           "SOCKS5 proxy: '%s' is not an IP address (socks5h lets the "
                           "proxy resolve names)",
                           bare);
    }
    buf[n++] = (unsigned char)(port >> 8);
    buf[n++] = (unsigned char)(port & 0xff);
    return socks5_send(s, buf, n);
}

/* Reads the reply: VER REP RSV ATYP, then an address whose size ATYP
 * gives, and the port (both ignored). */
static int socks5_reply(struct stream *s)
{
    unsigned char buf[255 + 2];
    int rc = socks5_recv(s, buf, 4);
    if (rc < 0)
        return rc;
    if (buf[0] != 0x05)
        return socks5_fail(s, "SOCKS5 proxy: %s", "invalid reply to CONNECT (bad version)");
    if (buf[1] != 0x00) {
        const char *text = socks5_reply_text(buf[1]);
        if (text)
            return socks5_fail(s, "SOCKS5 proxy: %s", text);
        char code[48];
        snprintf(code, sizeof code, "unknown reply code %u", buf[1]);
        return socks5_fail(s, "SOCKS5 proxy: %s", code);
    }
    size_t alen;
    switch (buf[3]) {
    case 0x01:
        alen = 4;
        break;
    case 0x04:
        alen = 16;
        break;
    case 0x03:
        rc = socks5_recv(s, buf, 1);
        if (rc < 0)
            return rc;
        alen = buf[0];
        break;
    default:
        return socks5_fail(s, "SOCKS5 proxy: %s", "invalid address type in CONNECT reply");
    }
    return socks5_recv(s, buf, alen + 2);
}

int socks5_connect(struct stream *s, const struct socks5_proxy *proxy, const char *host,
                   uint16_t port)
{
    int rc = socks5_negotiate(s, proxy);
    if (rc >= 0)
        rc = socks5_request(s, proxy, host, port);
    if (rc >= 0)
        rc = socks5_reply(s);
    if (rc < 0)
        return rc;
    s->error[0] = '\0';
    return 0;
}
