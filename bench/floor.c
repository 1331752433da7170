/*
 * floor: the simplest pipelined copy of every mailbox from one IMAP server to
 * another, as a lower bound for the benchmark's initial-sync workload; and,
 * with --list, the least a no-change run must do.
 *
 *     floor [--list] SRC_HOST SRC_PORT DST_HOST DST_PORT USER PASSWORD CA_FILE
 *
 * Both connections are implicit TLS (imaps) verified against CA_FILE and the
 * host name or IP address. It keeps no state and does no checking beyond
 * tagged replies: LIST the source, send every CREATE to the destination and
 * every EXAMINE + UID FETCH 1:* (FLAGS INTERNALDATE BODY.PEEK[]) to the
 * source without waiting, then stream each FETCH literal straight into one
 * MULTIAPPEND per mailbox (LITERAL+, so no continuation waits). Replies from
 * the destination are only read at the end. This is about as few round
 * trips and copies as the two servers allow; a synchronizing tool does more
 * work and cannot do better than this.
 *
 * With --list it only connects to both servers, and on each sends LOGIN,
 * one LIST with SUBSCRIBED and STATUS (UIDVALIDITY UIDNEXT HIGHESTMODSEQ)
 * and LOGOUT at once, reads the replies, and stops: what a synchronizer
 * cannot avoid to learn that nothing changed.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF_SIZE (256 * 1024)

struct conn {
    const char *name;
    int fd;
    SSL *ssl;
    char *buf;
    size_t start, end;
    char *line; /* last line read, NUL-terminated, without CRLF */
    size_t line_cap;
};

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("floor: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    ERR_print_errors_fp(stderr);
    exit(1);
}

static void conn_fill(struct conn *c)
{
    if (c->start == c->end)
        c->start = c->end = 0;
    if (c->end == BUF_SIZE) {
        memmove(c->buf, c->buf + c->start, c->end - c->start);
        c->end -= c->start;
        c->start = 0;
    }
    int n = SSL_read(c->ssl, c->buf + c->end, (int)(BUF_SIZE - c->end));
    if (n <= 0)
        die("%s: connection closed", c->name);
    c->end += (size_t)n;
}

static void conn_write(struct conn *c, const void *data, size_t len)
{
    const char *p = data;
    while (len > 0) {
        int chunk = len > (1 << 30) ? (1 << 30) : (int)len;
        int n = SSL_write(c->ssl, p, chunk);
        if (n <= 0)
            die("%s: write failed", c->name);
        p += n;
        len -= (size_t)n;
    }
}

static void conn_printf(struct conn *c, const char *fmt, ...)
{
    char tmp[8192];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(tmp))
        die("command too long");
    conn_write(c, tmp, (size_t)n);
}

/* Reads one line (up to CRLF) into c->line. */
static const char *conn_line(struct conn *c)
{
    size_t len = 0;
    for (;;) {
        char *nl = memchr(c->buf + c->start, '\n', c->end - c->start);
        size_t take = nl ? (size_t)(nl - (c->buf + c->start)) + 1 : c->end - c->start;
        if (len + take + 1 > c->line_cap) {
            c->line_cap = (len + take + 1) * 2;
            c->line = realloc(c->line, c->line_cap);
            if (c->line == NULL)
                die("out of memory");
        }
        memcpy(c->line + len, c->buf + c->start, take);
        len += take;
        c->start += take;
        if (nl)
            break;
        conn_fill(c);
    }
    while (len > 0 && (c->line[len - 1] == '\n' || c->line[len - 1] == '\r'))
        len--;
    c->line[len] = '\0';
    return c->line;
}

/* Copies n bytes of c's stream to out (or into mem when out is NULL). */
static void conn_copy(struct conn *c, size_t n, struct conn *out, char *mem)
{
    while (n > 0) {
        if (c->start == c->end)
            conn_fill(c);
        size_t take = c->end - c->start;
        if (take > n)
            take = n;
        if (out)
            conn_write(out, c->buf + c->start, take);
        else {
            memcpy(mem, c->buf + c->start, take);
            mem += take;
        }
        c->start += take;
        n -= take;
    }
}

/* Reads lines until the one tagged `tag`; returns 1 on OK. Untagged lines
 * with literals are not expected here. */
static int conn_tagged(struct conn *c, const char *tag)
{
    size_t tl = strlen(tag);
    for (;;) {
        const char *l = conn_line(c);
        if (strncmp(l, tag, tl) == 0 && l[tl] == ' ')
            return strncmp(l + tl + 1, "OK", 2) == 0;
        if (strncmp(l, "* BYE", 5) == 0 && strcmp(tag, "Z") != 0)
            die("%s: %s", c->name, l);
    }
}

static void conn_open(struct conn *c, const char *name, const char *host, const char *port,
                      SSL_CTX *ctx)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res;
    memset(c, 0, sizeof(*c));
    c->name = name;
    if (getaddrinfo(host, port, &hints, &res) != 0)
        die("%s: cannot resolve %s", name, host);
    c->fd = socket(res->ai_family, SOCK_STREAM, 0);
    if (c->fd < 0 || connect(c->fd, res->ai_addr, res->ai_addrlen) < 0)
        die("%s: cannot connect to %s:%s", name, host, port);
    freeaddrinfo(res);
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->buf = malloc(BUF_SIZE);
    c->ssl = SSL_new(ctx);
    if (c->buf == NULL || c->ssl == NULL)
        die("out of memory");
    struct in6_addr a6;
    struct in_addr a4;
    X509_VERIFY_PARAM *vp = SSL_get0_param(c->ssl);
    if (inet_pton(AF_INET, host, &a4) == 1 || inet_pton(AF_INET6, host, &a6) == 1) {
        if (!X509_VERIFY_PARAM_set1_ip_asc(vp, host))
            die("bad IP %s", host);
    } else {
        SSL_set_tlsext_host_name(c->ssl, host);
        if (!X509_VERIFY_PARAM_set1_host(vp, host, 0))
            die("bad host %s", host);
    }
    SSL_set_fd(c->ssl, c->fd);
    if (SSL_connect(c->ssl) != 1)
        die("%s: TLS handshake failed", name);
}

/* Quoted string for an ASCII mailbox name. */
static void quote(char *out, size_t cap, const char *in)
{
    size_t o = 0;
    out[o++] = '"';
    for (; *in && o + 3 < cap; in++) {
        if (*in == '"' || *in == '\\')
            out[o++] = '\\';
        out[o++] = *in;
    }
    out[o++] = '"';
    out[o] = '\0';
}

/* Parses one LIST reply line into name (unquoted); 0 if not selectable. */
static int parse_list(struct conn *c, const char *l, char *name, size_t cap)
{
    const char *attrs = strchr(l, '(');
    const char *close = attrs ? strchr(attrs, ')') : NULL;
    if (!close)
        die("bad LIST reply: %s", l);
    int selectable = 1;
    for (const char *p = attrs; p < close; p++)
        if (strncasecmp(p, "\\Noselect", 9) == 0 || strncasecmp(p, "\\NonExistent", 12) == 0)
            selectable = 0;
    const char *p = close + 2;
    if (*p == '"') { /* "d" or "\d", then a space */
        p++;
        if (*p == '\\')
            p++;
        p += 3;
    } else
        p += 4; /* NIL + space */
    size_t o = 0;
    if (*p == '"') {
        for (p++; *p && *p != '"' && o + 1 < cap; p++) {
            if (*p == '\\')
                p++;
            name[o++] = *p;
        }
    } else if (*p == '{') {
        size_t n = strtoul(p + 1, NULL, 10);
        if (n + 1 > cap)
            die("mailbox name too long");
        conn_copy(c, n, NULL, name);
        o = n;
        conn_line(c);
    } else {
        for (; *p && o + 1 < cap; p++)
            name[o++] = *p;
    }
    name[o] = '\0';
    return selectable;
}

/* Reads one server's replies to list_only's commands; returns the number
 * of STATUS responses. */
static size_t list_replies(struct conn *c)
{
    conn_line(c); /* greeting */
    if (!conn_tagged(c, "L"))
        die("%s: login failed", c->name);
    size_t status = 0;
    for (;;) {
        const char *l = conn_line(c);
        if (strncmp(l, "S ", 2) == 0) {
            if (strncmp(l + 2, "OK", 2) != 0)
                die("%s: LIST failed: %s", c->name, l);
            break;
        }
        if (strncmp(l, "* STATUS ", 9) == 0)
            status++;
        else if (strncmp(l, "* LIST ", 7) == 0) {
            char name[1024];
            parse_list(c, l, name, sizeof(name)); /* consumes a literal name */
        }
    }
    conn_tagged(c, "Z");
    return status;
}

static int list_only(struct conn *src, struct conn *dst, const char *user, const char *pass)
{
    struct conn *both[2] = {src, dst};
    for (int i = 0; i < 2; i++)
        conn_printf(both[i],
                    "L LOGIN %s %s\r\nS LIST \"\" \"*\" RETURN (SUBSCRIBED STATUS "
                    "(UIDVALIDITY UIDNEXT HIGHESTMODSEQ))\r\nZ LOGOUT\r\n",
                    user, pass);
    size_t a = list_replies(src), b = list_replies(dst);
    printf("%zu and %zu mailboxes listed\n", a, b);
    SSL_free(src->ssl);
    SSL_free(dst->ssl);
    return 0;
}

int main(int argc, char **argv)
{
    int list = argc > 1 && strcmp(argv[1], "--list") == 0;
    if (list) {
        argc--;
        argv++;
    }
    if (argc != 8) {
        fprintf(
            stderr,
            "usage: floor [--list] SRC_HOST SRC_PORT DST_HOST DST_PORT USER PASSWORD CA_FILE\n");
        return 2;
    }
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL || SSL_CTX_load_verify_locations(ctx, argv[7], NULL) != 1)
        die("cannot load %s", argv[7]);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);

    struct conn src, dst;
    conn_open(&src, "source", argv[1], argv[2], ctx);
    conn_open(&dst, "destination", argv[3], argv[4], ctx);
    char user[512], pass[512];
    quote(user, sizeof(user), argv[5]);
    quote(pass, sizeof(pass), argv[6]);
    if (list)
        return list_only(&src, &dst, user, pass);
    /* Greeting and LOGIN on both servers at once. */
    conn_printf(&src, "L LOGIN %s %s\r\nM LIST \"\" \"*\"\r\n", user, pass);
    conn_printf(&dst, "L LOGIN %s %s\r\n", user, pass);
    conn_line(&src);
    conn_line(&dst);
    if (!conn_tagged(&src, "L") || !conn_tagged(&dst, "L"))
        die("login failed");

    size_t nbox = 0, capbox = 16;
    char **boxes = malloc(capbox * sizeof(*boxes));
    for (;;) {
        const char *l = conn_line(&src);
        if (strncmp(l, "M ", 2) == 0) {
            if (strncmp(l + 2, "OK", 2) != 0)
                die("LIST failed: %s", l);
            break;
        }
        if (strncmp(l, "* LIST ", 7) != 0)
            continue;
        char name[1024];
        if (!parse_list(&src, l, name, sizeof(name)))
            continue;
        if (nbox == capbox)
            boxes = realloc(boxes, (capbox *= 2) * sizeof(*boxes));
        boxes[nbox++] = strdup(name);
    }

    /* Everything is sent up front; the servers answer in order. */
    size_t ncreate = 0;
    for (size_t i = 0; i < nbox; i++) {
        char q[2100];
        quote(q, sizeof(q), boxes[i]);
        if (strcasecmp(boxes[i], "INBOX") != 0) {
            conn_printf(&dst, "C%zu CREATE %s\r\n", i, q);
            ncreate++;
        }
        conn_printf(&src,
                    "E%zu EXAMINE %s\r\nF%zu UID FETCH 1:* (FLAGS INTERNALDATE BODY.PEEK[])\r\n", i,
                    q, i, i);
    }

    size_t nappend = 0, messages = 0;
    unsigned long long bytes = 0;
    char *held = NULL; /* a literal that came before FLAGS/INTERNALDATE */
    for (size_t i = 0; i < nbox; i++) {
        char tag[32], q[2100];
        snprintf(tag, sizeof(tag), "E%zu", i);
        if (!conn_tagged(&src, tag))
            die("EXAMINE %s failed: %s", boxes[i], src.line);
        snprintf(tag, sizeof(tag), "F%zu", i);
        quote(q, sizeof(q), boxes[i]);
        int started = 0;
        for (;;) {
            const char *l = conn_line(&src);
            if (strncmp(l, tag, strlen(tag)) == 0 && l[strlen(tag)] == ' ') {
                if (strncmp(l + strlen(tag) + 1, "OK", 2) != 0)
                    die("FETCH failed: %s", l);
                break;
            }
            if (strncmp(l, "* ", 2) != 0 || strstr(l, " FETCH (") == NULL)
                continue;
            /* The line so far may end with the literal's size; FLAGS and
             * INTERNALDATE usually come before it (Dovecot's order). */
            char *text = strdup(l);
            size_t size = 0;
            int have_lit = 0;
            char *brace = strrchr(text, '{');
            if (brace && text[strlen(text) - 1] == '}') {
                size = strtoull(brace + 1, NULL, 10);
                have_lit = 1;
                *brace = '\0';
            }
            int complete = strstr(text, "FLAGS (") && strstr(text, "INTERNALDATE \"");
            if (have_lit && !complete) {
                held = malloc(size ? size : 1);
                if (held == NULL)
                    die("out of memory");
                conn_copy(&src, size, NULL, held);
                /* The rest of the response carries the attributes. */
                const char *rest = conn_line(&src);
                char *joined = malloc(strlen(text) + strlen(rest) + 2);
                sprintf(joined, "%s %s", text, rest);
                free(text);
                text = joined;
            }
            char *fl = strstr(text, "FLAGS (");
            char *dt = strstr(text, "INTERNALDATE \"");
            if (!fl || !dt || !have_lit)
                die("unexpected FETCH reply: %s", l);
            fl += 7;
            char *fe = strchr(fl, ')');
            char flags[1024];
            size_t fo = 0;
            /* Copy the flags without \Recent, which APPEND refuses. */
            for (char *p = fl; p < fe;) {
                char *sp = memchr(p, ' ', (size_t)(fe - p));
                char *we = sp ? sp : fe;
                size_t wl = (size_t)(we - p);
                if (!(wl == 7 && strncasecmp(p, "\\Recent", 7) == 0) && wl > 0 &&
                    fo + wl + 2 < sizeof(flags)) {
                    if (fo)
                        flags[fo++] = ' ';
                    memcpy(flags + fo, p, wl);
                    fo += wl;
                }
                p = we + 1;
            }
            flags[fo] = '\0';
            dt += 14;
            char *de = strchr(dt, '"');
            *de = '\0';
            if (!started) {
                conn_printf(&dst, "A%zu APPEND %s", i, q);
                started = 1;
                nappend++;
            }
            conn_printf(&dst, " (%s) \"%s\" {%zu+}\r\n", flags, dt, size);
            if (held) {
                conn_write(&dst, held, size);
                free(held);
                held = NULL;
            } else {
                conn_copy(&src, size, &dst, NULL);
                conn_line(&src); /* ")" closing the FETCH response */
            }
            messages++;
            bytes += size;
            free(text);
        }
        if (started)
            conn_write(&dst, "\r\n", 2);
    }
    conn_printf(&src, "Z LOGOUT\r\n");

    /* Now collect the destination's replies: CREATE may say NO only when
     * the mailbox exists, every APPEND must succeed. */
    size_t replies = 0, failed = 0;
    while (replies < ncreate + nappend) {
        const char *l = conn_line(&dst);
        if (l[0] == 'A' || l[0] == 'C') {
            replies++;
            const char *sp = strchr(l, ' ');
            if (sp && strncmp(sp + 1, "OK", 2) != 0) {
                if (l[0] == 'A' || strstr(l, "ALREADYEXISTS") == NULL) {
                    fprintf(stderr, "floor: %s\n", l);
                    failed++;
                }
            }
        }
    }
    conn_printf(&dst, "Z LOGOUT\r\n");
    conn_tagged(&dst, "Z");
    conn_tagged(&src, "Z");
    printf("%zu mailboxes, %zu messages, %llu bytes\n", nbox, messages, bytes);
    SSL_free(src.ssl);
    SSL_free(dst.ssl);
    SSL_CTX_free(ctx);
    return failed ? 1 : 0;
}
