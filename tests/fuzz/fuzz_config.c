/*
 * Fuzz target for the configuration reader: the input is written to a
 * file and loaded. Besides crashes and leaks, every refusal must be one
 * line naming the file, and a loaded configuration must hold what the
 * checks promise (values without control characters where the manual
 * says so, time limits in range).
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "errors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fail(const char *what, const char *text)
{
    fprintf(stderr, "%s: %s\n", what, text ? text : "(null)");
    abort();
}

static void check_server(const struct server_config *s)
{
    if (s->timeout < 1 || s->timeout > 86400 || s->login_timeout < 1 || s->login_timeout > 86400 ||
        s->connect_timeout < 1 || s->connect_timeout > 86400 || s->min_rate < 1)
        fail("a time limit out of range", s->name);
    const char *strings[] = {s->host, s->port, s->command, s->username};
    for (size_t i = 0; i < sizeof strings / sizeof strings[0]; i++)
        if (strings[i] && strpbrk(strings[i], "\r\n"))
            fail("a line break in a value", strings[i]);
    if (!s->host || (s->type != SERVER_TUNNEL && !s->port))
        fail("a server without host or port", s->name);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char path[64];
    if (!path[0]) {
        snprintf(path, sizeof path, "/tmp/interimap-fuzz-config-%ld", (long)getpid());
        /* the database path defaults under $XDG_DATA_HOME: keep it in /tmp */
        setenv("XDG_DATA_HOME", "/tmp", 1);
    }
    FILE *f = fopen(path, "wb");
    if (!f)
        return 0;
    fwrite(data, 1, size, f);
    fclose(f);
    struct config cfg;
    char err[512] = "";
    int r = config_load(&cfg, path, err, sizeof err);
    if (r == 0) {
        check_server(&cfg.local);
        check_server(&cfg.remote);
        if (!cfg.database)
            fail("no database path", path);
    } else {
        if (r != ERR_CONFIG && r != -ENOMEM)
            fail("unexpected error code", err);
        if (strncmp(err, path, strlen(path)) != 0 || strchr(err, '\n'))
            fail("an error that is not one line naming the file", err);
        if (cfg.path || cfg.local.host)
            fail("a refused file left a configuration", err);
    }
    config_fini(&cfg);
    unlink(path);
    return 0;
}
