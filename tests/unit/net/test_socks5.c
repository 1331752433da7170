/*
 * SOCKS5 client: URL parsing, and the handshake against a scripted proxy in
 * a thread (which checks the exact bytes we send) and, when installed, a
 * real microsocks on a loopback port.
 */
#include "errors.h"
#include "net/socks5.h"
#include "testutil.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- URL parsing -------------------------------------------------------- */

static void test_parse(void)
{
    struct socks5_proxy p;
    char err[256];

    CHECK(socks5_proxy_parse("socks5://proxy.example", &p, err, sizeof err) == 0);
    CHECK(!p.remote_dns && strcmp(p.host, "proxy.example") == 0);
    CHECK(strcmp(p.port, "1080") == 0 && !p.username && !p.password);
    socks5_proxy_fini(&p);
    CHECK(p.host == NULL);

    CHECK(socks5_proxy_parse("socks5h://127.0.0.1:9050", &p, err, sizeof err) == 0);
    CHECK(p.remote_dns && strcmp(p.host, "127.0.0.1") == 0 && strcmp(p.port, "9050") == 0);
    socks5_proxy_fini(&p);

    CHECK(socks5_proxy_parse("socks5h://[::1]:1081", &p, err, sizeof err) == 0);
    CHECK(strcmp(p.host, "[::1]") == 0 && strcmp(p.port, "1081") == 0);
    socks5_proxy_fini(&p);

    CHECK(socks5_proxy_parse("socks5://[fe80::1]", &p, err, sizeof err) == 0);
    CHECK(strcmp(p.host, "[fe80::1]") == 0 && strcmp(p.port, "1080") == 0);
    socks5_proxy_fini(&p);

    /* the password runs to the last '@' and may contain ':' */
    CHECK(socks5_proxy_parse("socks5://alice:s3:cr@t@gw:socks", &p, err, sizeof err) == 0);
    CHECK(strcmp(p.username, "alice") == 0 && strcmp(p.password, "s3:cr@t") == 0);
    CHECK(strcmp(p.host, "gw") == 0 && strcmp(p.port, "socks") == 0);
    socks5_proxy_fini(&p);

    CHECK(socks5_proxy_parse("socks5://bob@gw/", &p, err, sizeof err) == 0);
    CHECK(strcmp(p.username, "bob") == 0 && strcmp(p.password, "") == 0);
    socks5_proxy_fini(&p);

    const char *bad[] = {
        "http://proxy:3128", "socks4://proxy", "proxy:1080",      "socks5://",
        "socks5://:1080",    "socks5://[::1",  "socks5://host:",  "socks5://host:80:81",
        "socks5://host:8-0", "socks5://[]:1",  "socks5://h\tost",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        int rc = socks5_proxy_parse(bad[i], &p, err, sizeof err);
        CHECK(rc == ERR_CONFIG && err[0] != '\0');
        if (rc == 0) {
            fprintf(stderr, "  accepted: %s\n", bad[i]);
            socks5_proxy_fini(&p);
        }
    }
    CHECK(socks5_proxy_parse("ftp://x", &p, err, sizeof err) == ERR_CONFIG &&
          strstr(err, "'ftp'") != NULL);
}

/* ---- scripted proxy ------------------------------------------------------ */

struct fake {
    int fd;
    const char *user, *pass; /* required credentials, NULL: none */
    unsigned char reply_code;
    unsigned char reply_atyp; /* 1, 3 or 4 */
    pthread_t thread;
    /* what the client sent */
    unsigned char methods[8];
    size_t nmethods;
    char got_user[256], got_pass[256];
    unsigned char atyp;
    char dest[256]; /* as text */
    unsigned port;
    bool ok;
};

static bool fread_n(int fd, void *buf, size_t n)
{
    return test_read_full(fd, buf, n) == n;
}

static void *fake_main(void *arg)
{
    struct fake *f = arg;
    unsigned char b[600];
    if (!fread_n(f->fd, b, 2) || b[0] != 5 || !fread_n(f->fd, f->methods, b[1]))
        goto done;
    f->nmethods = b[1];
    bool offers_pw = memchr(f->methods, 2, f->nmethods) != NULL;
    if (f->user) {
        if (!offers_pw) {
            test_write_all(f->fd, "\x05\xff", 2);
            goto done;
        }
        test_write_all(f->fd, "\x05\x02", 2);
        if (!fread_n(f->fd, b, 2) || b[0] != 1 || !fread_n(f->fd, f->got_user, b[1]))
            goto done;
        f->got_user[b[1]] = '\0';
        if (!fread_n(f->fd, b, 1) || !fread_n(f->fd, f->got_pass, b[0]))
            goto done;
        f->got_pass[b[0]] = '\0';
        bool good = strcmp(f->got_user, f->user) == 0 && strcmp(f->got_pass, f->pass) == 0;
        test_write_all(f->fd, good ? "\x01\x00" : "\x01\x01", 2);
        if (!good)
            goto done;
    } else {
        test_write_all(f->fd, "\x05\x00", 2);
    }
    if (!fread_n(f->fd, b, 4) || b[0] != 5 || b[1] != 1 || b[2] != 0)
        goto done;
    f->atyp = b[3];
    if (f->atyp == 1) {
        fread_n(f->fd, b, 4);
        inet_ntop(AF_INET, b, f->dest, sizeof f->dest);
    } else if (f->atyp == 4) {
        fread_n(f->fd, b, 16);
        inet_ntop(AF_INET6, b, f->dest, sizeof f->dest);
    } else if (f->atyp == 3) {
        fread_n(f->fd, b, 1);
        size_t l = b[0];
        fread_n(f->fd, f->dest, l);
        f->dest[l] = '\0';
    } else {
        goto done;
    }
    fread_n(f->fd, b, 2);
    f->port = (unsigned)b[0] << 8 | b[1];
    /* the reply, with the server's greeting in the same write: the client
     * must leave the greeting unread */
    size_t n = 0;
    b[n++] = 5;
    b[n++] = f->reply_code;
    b[n++] = 0;
    b[n++] = f->reply_atyp;
    if (f->reply_atyp == 1) {
        memcpy(b + n, "\x0a\x00\x00\x01", 4);
        n += 4;
    } else if (f->reply_atyp == 4) {
        memset(b + n, 0xfe, 16);
        n += 16;
    } else {
        b[n++] = 17;
        memcpy(b + n, "bound.example.org", 17);
        n += 17;
    }
    b[n++] = 0x12;
    b[n++] = 0x34;
    if (f->reply_code == 0) {
        memcpy(b + n, "* OK greeting\r\n", 15);
        n += 15;
    }
    test_write_all(f->fd, b, n);
    f->ok = true;
done:
    shutdown(f->fd, SHUT_WR);
    while (read(f->fd, b, sizeof b) > 0)
        ;
    close(f->fd);
    return NULL;
}

/* Runs a handshake against the fake; on success checks the greeting that
 * follows it arrives intact. */
static int fake_run(struct fake *f, const char *url, const char *host, uint16_t port, char *err,
                    size_t errlen)
{
    int fds[2];
    test_socketpair(fds);
    f->fd = fds[1];
    if (pthread_create(&f->thread, NULL, fake_main, f) != 0)
        abort();
    struct stream *s = fd_stream_new(fds[0]);
    struct socks5_proxy p;
    int rc = socks5_proxy_parse(url, &p, err, errlen);
    CHECK(rc == 0);
    if (rc == 0) {
        rc = socks5_connect(s, &p, host, port);
        snprintf(err, errlen, "%s", s->error);
        if (rc == 0) {
            char buf[64];
            size_t got = 0;
            while (got < 15) {
                ssize_t n = stream_read(s, buf + got, sizeof buf - got);
                if (n <= 0)
                    break;
                got += (size_t)n;
            }
            CHECK(got == 15 && memcmp(buf, "* OK greeting\r\n", 15) == 0);
        }
    }
    socks5_proxy_fini(&p);
    stream_free(&s);
    pthread_join(f->thread, NULL);
    return rc;
}

static void test_handshake(void)
{
    char err[256];

    /* no authentication, domain name sent as is, IPv4 bound address */
    struct fake f1 = {.reply_atyp = 1};
    CHECK(fake_run(&f1, "socks5h://proxy", "imap.example.org", 993, err, sizeof err) == 0);
    CHECK(f1.nmethods == 1 && f1.methods[0] == 0);
    CHECK(f1.atyp == 3 && strcmp(f1.dest, "imap.example.org") == 0 && f1.port == 993);

    /* socks5 with an IPv4 destination; domain-name bound address */
    struct fake f2 = {.reply_atyp = 3};
    CHECK(fake_run(&f2, "socks5://proxy", "192.0.2.7", 143, err, sizeof err) == 0);
    CHECK(f2.atyp == 1 && strcmp(f2.dest, "192.0.2.7") == 0 && f2.port == 143);

    /* IPv6 destination, bracketed, even with socks5h; IPv6 bound address */
    struct fake f3 = {.reply_atyp = 4};
    CHECK(fake_run(&f3, "socks5h://proxy", "[2001:db8::5]", 65535, err, sizeof err) == 0);
    CHECK(f3.atyp == 4 && strcmp(f3.dest, "2001:db8::5") == 0 && f3.port == 65535);

    /* socks5 refuses a name it would have to send */
    struct fake f4 = {.reply_atyp = 1};
    CHECK(fake_run(&f4, "socks5://proxy", "imap.example.org", 993, err, sizeof err) == ERR_SOCKS);
    CHECK(strstr(err, "not an IP address") != NULL);

    /* user/pass accepted */
    struct fake f5 = {.user = "alice", .pass = "p:w@d", .reply_atyp = 1};
    CHECK(fake_run(&f5, "socks5h://alice:p:w@d@proxy", "imap", 143, err, sizeof err) == 0);
    CHECK(f5.nmethods == 2 && f5.methods[0] == 0 && f5.methods[1] == 2);
    CHECK(strcmp(f5.got_user, "alice") == 0 && strcmp(f5.got_pass, "p:w@d") == 0);

    /* wrong password */
    struct fake f6 = {.user = "alice", .pass = "right", .reply_atyp = 1};
    CHECK(fake_run(&f6, "socks5h://alice:wrong@proxy", "imap", 143, err, sizeof err) == ERR_SOCKS);
    CHECK(strcmp(err, "SOCKS5 proxy: authentication failed (user name or password "
                      "rejected)") == 0);

    /* credentials required but none configured */
    struct fake f7 = {.user = "alice", .pass = "right", .reply_atyp = 1};
    CHECK(fake_run(&f7, "socks5h://proxy", "imap", 143, err, sizeof err) == ERR_SOCKS);
    CHECK(strcmp(err, "SOCKS5 proxy: no acceptable authentication method") == 0);

    /* the destination refused the connection */
    struct fake f8 = {.reply_code = 5, .reply_atyp = 1};
    CHECK(fake_run(&f8, "socks5h://proxy", "imap", 143, err, sizeof err) == ERR_SOCKS);
    CHECK(strcmp(err, "SOCKS5 proxy: connection refused by destination host") == 0);

    struct fake f9 = {.reply_code = 0x42, .reply_atyp = 1};
    CHECK(fake_run(&f9, "socks5h://proxy", "imap", 143, err, sizeof err) == ERR_SOCKS);
    CHECK(strcmp(err, "SOCKS5 proxy: unknown reply code 66") == 0);
}

/* A proxy that hangs up after the method reply. */
static void *hangup_main(void *arg)
{
    int fd = *(int *)arg;
    unsigned char b[8];
    test_read_full(fd, b, 3);
    test_write_all(fd, "\x05\x00", 2);
    close(fd);
    return NULL;
}

static void test_hangup(void)
{
    int fds[2];
    test_socketpair(fds);
    pthread_t th;
    pthread_create(&th, NULL, hangup_main, &fds[1]);
    struct stream *s = fd_stream_new(fds[0]);
    struct socks5_proxy p = {.remote_dns = true};
    int rc = socks5_connect(s, &p, "imap", 143);
    CHECK(rc < 0);
    CHECK(strncmp(s->error, "SOCKS5 proxy: ", 14) == 0);
    stream_free(&s);
    pthread_join(th, NULL);
}

/* ---- real microsocks ------------------------------------------------------ */

static int listen_loopback(uint16_t *port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 4) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0)
        abort();
    *port = ntohs(a.sin_port);
    return fd;
}

static int connect_loopback(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {
        .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK), .sin_port = htons(port)};
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void *greeter_main(void *arg)
{
    int lfd = *(int *)arg;
    int c = accept(lfd, NULL, NULL);
    if (c >= 0) {
        test_write_all(c, "* OK real\r\n", 11);
        char b[16];
        ssize_t n = read(c, b, sizeof b); /* "x" from the client */
        if (n == 1)
            test_write_all(c, b, 1);
        close(c);
    }
    return NULL;
}

static void through_microsocks(uint16_t proxy_port, const char *url, const char *host)
{
    uint16_t dport;
    int lfd = listen_loopback(&dport);
    pthread_t th;
    pthread_create(&th, NULL, greeter_main, &lfd);
    int fd = connect_loopback(proxy_port);
    CHECK(fd >= 0);
    if (fd >= 0) {
        struct stream *s = fd_stream_new(fd);
        struct socks5_proxy p;
        char err[256];
        CHECK(socks5_proxy_parse(url, &p, err, sizeof err) == 0);
        int rc = socks5_connect(s, &p, host, dport);
        CHECK(rc == 0);
        if (rc != 0)
            fprintf(stderr, "  microsocks: %s\n", s->error);
        char buf[32];
        size_t got = 0;
        while (rc == 0 && got < 11) {
            ssize_t n = stream_read(s, buf + got, sizeof buf - got);
            if (n <= 0)
                break;
            got += (size_t)n;
        }
        CHECK(got == 11 && memcmp(buf, "* OK real\r\n", 11) == 0);
        CHECK(stream_write(s, "x", 1) == 0);
        CHECK(stream_read(s, buf, sizeof buf) == 1 && buf[0] == 'x');
        socks5_proxy_fini(&p);
        stream_free(&s);
    } else {
        /* unblock the greeter */
        int c = connect_loopback(dport);
        if (c >= 0)
            close(c);
    }
    pthread_join(th, NULL);
    close(lfd);
}

static void test_microsocks(void)
{
    const char *bin = "/usr/bin/microsocks";
    if (access(bin, X_OK) != 0) {
        printf("microsocks not installed: skipping the real proxy test\n");
        return;
    }
    uint16_t port;
    int probe = listen_loopback(&port);
    close(probe); /* a free port, for microsocks to take */
    char portstr[8];
    snprintf(portstr, sizeof portstr, "%u", port);
    pid_t pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        if (null >= 0) {
            dup2(null, 1);
            dup2(null, 2);
        }
        execl(bin, bin, "-i", "127.0.0.1", "-p", portstr, (char *)NULL);
        _exit(127);
    }
    CHECK(pid > 0);
    if (pid <= 0)
        return;
    /* wait until it listens */
    int fd = -1;
    for (int i = 0; i < 200 && fd < 0; i++) {
        fd = connect_loopback(port);
        if (fd < 0)
            nanosleep(&(struct timespec){.tv_nsec = 10 * 1000 * 1000}, NULL);
    }
    CHECK(fd >= 0);
    if (fd >= 0) {
        close(fd);
        through_microsocks(port, "socks5://127.0.0.1", "127.0.0.1");
        through_microsocks(port, "socks5h://127.0.0.1", "localhost");
    }
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    test_parse();
    test_handshake();
    test_hangup();
    test_microsocks();
    return check_finish();
}
