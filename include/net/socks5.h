/*
 * SOCKS5 client handshake (RFC 1928, username/password from RFC 1929) over
 * an already connected stream to the proxy. After success the stream carries
 * the tunnelled connection to host:port. May yield.
 */
#ifndef INTERIMAP_NET_SOCKS5_H
#define INTERIMAP_NET_SOCKS5_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct stream;

struct socks5_proxy {
    bool remote_dns; /* socks5h: the proxy resolves host */
    char *host;      /* proxy host (may be "[addr]") */
    char *port;      /* "1080" by default */
    char *username;  /* NULL: no authentication offered */
    char *password;
};

/* Parses "socks5://[user:pass@]host[:port]" or "socks5h://...". Returns 0 or
 * ERR_CONFIG with a message in err. Free with socks5_proxy_fini.
 * As in the Perl interimap, credentials run to the last '@' and are taken
 * literally (no percent-decoding), the password may contain ':', the host is
 * a name without ':' or a bracketed IPv6 literal (kept with its brackets),
 * and the port (default "1080") may be a number or a service name. */
int socks5_proxy_parse(const char *url, struct socks5_proxy *out, char *err, size_t errlen);
void socks5_proxy_fini(struct socks5_proxy *p);

/*
 * Asks the proxy behind `s` to connect to host:port. With remote_dns the
 * name is sent as is; otherwise the caller resolves it first and passes an
 * IP address string (or an "[addr]" literal); an IP literal is always sent
 * as an address. Reads exactly the proxy's replies, so the bytes that follow
 * (the server's greeting) stay in the stream. Returns 0, or ERR_SOCKS / a
 * stream error with s->error set ("SOCKS5 proxy: connection refused by
 * destination host", "SOCKS5 proxy: authentication failed (user name or
 * password rejected)", ...).
 */
int socks5_connect(struct stream *s, const struct socks5_proxy *proxy, const char *host,
                   uint16_t port);

#endif
