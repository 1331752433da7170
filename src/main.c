/*
 * interimap: command line, configuration, and the engine's coroutine.
 * The command line follows the reference tool's (GNU-style long options,
 * bundled short options, --opt=value or --opt value).
 */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <uv.h>

#include "config.h"
#include "coro/coro.h"
#include "errors.h"
#include "imap/client.h"
#include "interimap-version.h"
#include "log.h"
#include "progress.h"
#include "sync/sync.h"

static const char usage_long[] =
    "Usage: interimap [OPTIONS] [MAILBOX [..]]\n"
    "  or: interimap [OPTIONS] --repair [MAILBOX [..]]\n"
    "  or: interimap [OPTIONS] --delete MAILBOX [..]\n"
    "  or: interimap [OPTIONS] --rename SOURCE DEST\n"
    "\n"
    "Options:\n"
    "  --config=FILE        configuration file (relative to $XDG_CONFIG_HOME/interimap)\n"
    "  --target=TARGET      local, remote or database (with --delete or --rename;\n"
    "                       repeatable, comma-separated)\n"
    "  --watch[=SECONDS]    keep synchronizing (default every 60 s, 900 s with --notify);\n"
    "                       also --watch SECONDS\n"
    "  --notify             wait for server notifications (NOTIFY, or IDLE) between syncs\n"
    "  --dry-run            report what a synchronization would do; change nothing\n"
    "  -q, --quiet          only print warnings and errors\n"
    "  --debug              log IMAP traffic (twice: including credentials)\n"
    "  -h, --help           this help\n"
    "  --version            print the version\n"
    "\n"
    "Manual: " INTERIMAP_MANDIR "/man1/interimap.1 (man 1 interimap)\n"
    "Configuration file: " INTERIMAP_MANDIR "/man5/interimap.5 (man 5 interimap)\n"
    "Getting started: " INTERIMAP_DOCDIR "/getting-started.md\n";

struct cli {
    const char *config;
    bool quiet, help, version, notify, watch, dry_run;
    int watch_seconds;
    int debug;
    unsigned targets;
    bool repair, delete, rename;
    char **args;
    size_t nargs;
};

/* Returns the value of --name=value / --name value; NULL when missing. */
static const char *opt_value(const char *arg, const char *name, int *i, int argc, char **argv,
                             bool *matched)
{
    size_t n = strlen(name);
    *matched = false;
    if (strncmp(arg, name, n) != 0)
        return NULL;
    if (arg[n] == '=') {
        *matched = true;
        return arg + n + 1;
    }
    if (arg[n] == '\0') {
        *matched = true;
        if (*i + 1 < argc)
            return argv[++*i];
    }
    return NULL;
}

/*
 * What the reference tool's option parser (Getopt::Long, optional
 * integer) takes as a number: an optional sign, then digits with
 * underscores allowed between and before them ("1_000" is 1000).
 */
static bool watch_is_number(const char *v)
{
    const char *p = v + (*v == '+' || *v == '-');
    while (*p == '_')
        p++;
    if (*p < '0' || *p > '9')
        return false;
    for (; *p; p++)
        if ((*p < '0' || *p > '9') && *p != '_')
            return false;
    return true;
}

/* --watch's value: empty means the default (as 0 does); a negative value
 * or one beyond INT_MAX seconds is refused, where the reference tool
 * accepts any integer. */
static int watch_parse(const char *v, int *seconds)
{
    long long s = 0;
    if (!*v) {
        *seconds = 0;
        return 0;
    }
    if (!watch_is_number(v) || *v == '-')
        return -EINVAL;
    for (const char *p = v; *p; p++) {
        if (*p < '0' || *p > '9')
            continue;
        s = s * 10 + (*p - '0');
        if (s > INT_MAX)
            return -EINVAL;
    }
    *seconds = (int)s;
    return 0;
}

static int parse_targets(const char *v, unsigned *targets)
{
    char *copy = strdup(v);
    if (!copy)
        return -ENOMEM;
    char *save = NULL;
    int rc = 0;
    for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (strcmp(t, "local") == 0)
            *targets |= SYNC_TARGET_LOCAL;
        else if (strcmp(t, "remote") == 0)
            *targets |= SYNC_TARGET_REMOTE;
        else if (strcmp(t, "database") == 0)
            *targets |= SYNC_TARGET_DATABASE;
        else {
            fprintf(stderr, "interimap: invalid --target '%s' (local, remote or database)\n", t);
            rc = -EINVAL;
        }
    }
    free(copy);
    return rc;
}

static int parse_cli(int argc, char **argv, struct cli *cli)
{
    cli->args = calloc((size_t)argc + 1, sizeof *cli->args);
    if (!cli->args)
        return -ENOMEM;
    bool only_args = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool m;
        const char *v;
        if (only_args || a[0] != '-' || strcmp(a, "-") == 0) {
            cli->args[cli->nargs++] = argv[i];
            continue;
        }
        if (strcmp(a, "--") == 0) {
            only_args = true;
            continue;
        }
        if (a[1] != '-') {
            /* bundled short options */
            for (const char *p = a + 1; *p; p++) {
                if (*p == 'q')
                    cli->quiet = true;
                else if (*p == 'h')
                    cli->help = true;
                else {
                    fprintf(stderr, "interimap: unknown option -%c (see interimap --help)\n", *p);
                    return -EINVAL;
                }
            }
            continue;
        }
        if ((v = opt_value(a, "--config", &i, argc, argv, &m)) || m) {
            if (!v) {
                fprintf(stderr, "interimap: option --config requires a file name\n");
                return -EINVAL;
            }
            cli->config = v;
        } else if ((v = opt_value(a, "--target", &i, argc, argv, &m)) || m) {
            if (!v) {
                fprintf(stderr, "interimap: option --target requires a value\n");
                return -EINVAL;
            }
            if (parse_targets(v, &cli->targets) < 0)
                return -EINVAL;
        } else if (strcmp(a, "--watch") == 0 || strncmp(a, "--watch=", 8) == 0) {
            /* the value is optional: after '=', or the next argument when
             * that one reads as a number (anything else is left for what
             * follows: a mailbox name, another option) */
            const char *value = a[7] == '=' ? a + 8 : NULL;
            if (!value && i + 1 < argc && watch_is_number(argv[i + 1]))
                value = argv[++i];
            cli->watch = true;
            cli->watch_seconds = 0;
            if (value && watch_parse(value, &cli->watch_seconds) < 0) {
                fprintf(stderr,
                        "interimap: invalid --watch value '%s' (a number of seconds, "
                        "0 to %d)\n",
                        value, INT_MAX);
                return -EINVAL;
            }
        } else if (strcmp(a, "--notify") == 0) {
            cli->notify = true;
        } else if (strcmp(a, "--dry-run") == 0) {
            cli->dry_run = true;
        } else if (strcmp(a, "--quiet") == 0) {
            cli->quiet = true;
        } else if (strcmp(a, "--debug") == 0) {
            cli->debug++;
        } else if (strcmp(a, "--help") == 0) {
            cli->help = true;
        } else if (strcmp(a, "--version") == 0) {
            cli->version = true;
        } else if (strcmp(a, "--repair") == 0) {
            cli->repair = true;
        } else if (strcmp(a, "--delete") == 0) {
            cli->delete = true;
        } else if (strcmp(a, "--rename") == 0) {
            cli->rename = true;
        } else {
            fprintf(stderr, "interimap: unknown option %s (see interimap --help)\n", a);
            return -EINVAL;
        }
    }
    return 0;
}

static int check_cli(struct cli *cli, struct sync_options *opts)
{
    int ncommands = cli->repair + cli->delete + cli->rename;
    if (ncommands > 1) {
        fprintf(stderr, "interimap: --repair, --delete and --rename are mutually exclusive\n");
        return -EINVAL;
    }
    if (cli->delete &&cli->nargs == 0) {
        fprintf(stderr, "interimap: --delete needs at least one MAILBOX\n");
        return -EINVAL;
    }
    if (cli->rename && cli->nargs != 2) {
        fprintf(stderr, "interimap: --rename needs exactly SOURCE and DEST\n");
        return -EINVAL;
    }
    if (ncommands && (cli->watch || cli->notify)) {
        fprintf(stderr, "interimap: --watch and --notify cannot be combined with a command\n");
        return -EINVAL;
    }
    if (cli->dry_run && (ncommands || cli->watch || cli->notify)) {
        fprintf(stderr, "interimap: --dry-run only goes with a synchronization (no --watch, "
                        "--notify, --repair, --delete or --rename)\n");
        return -EINVAL;
    }
    if (cli->targets && !(cli->delete || cli->rename)) {
        fprintf(stderr, "interimap: --target only applies to --delete and --rename\n");
        return -EINVAL;
    }
    for (size_t i = 0; i < cli->nargs; i++) {
        for (const unsigned char *p = (const unsigned char *)cli->args[i]; *p; p++) {
            if (*p >= 0x80) {
                fprintf(stderr,
                        "interimap: invalid mailbox name %s (non-ASCII: give its modified "
                        "UTF-7 form)\n",
                        cli->args[i]);
                return -EINVAL;
            }
        }
        if (!*cli->args[i]) {
            fprintf(stderr, "interimap: invalid empty mailbox name\n");
            return -EINVAL;
        }
        /* INBOX is case-insensitive */
        if (strcasecmp(cli->args[i], "INBOX") == 0)
            cli->args[i] = "INBOX";
    }
    memset(opts, 0, sizeof *opts);
    opts->command = cli->repair   ? SYNC_REPAIR
                    : cli->delete ? SYNC_DELETE
                    : cli->rename ? SYNC_RENAME
                                  : SYNC_DEFAULT;
    opts->mailboxes = cli->args;
    opts->nmailboxes = cli->nargs;
    opts->targets = cli->targets ? cli->targets : SYNC_TARGET_ALL;
    opts->notify = cli->notify;
    opts->dry_run = cli->dry_run;
    opts->quiet = cli->quiet;
    opts->watch_seconds = -1;
    if (cli->watch || cli->notify)
        opts->watch_seconds =
            cli->watch_seconds > 0 ? cli->watch_seconds : (cli->notify ? 900 : 60);
    return 0;
}

/* The logger's guard: the progress line leaves the terminal while a log
 * line is written there. */
static void progress_guard(void *ctx, bool before)
{
    if (before)
        progress_hide(ctx);
    else
        progress_show(ctx);
}

struct run {
    struct sync_engine *engine;
    int status;
};

static void engine_main(struct coro *self, void *arg)
{
    struct run *run = arg;
    (void)self;
    run->status = sync_engine_run(run->engine);
    /* freed here so connection coroutines can be joined */
    sync_engine_free(&run->engine);
}

int main(int argc, char **argv)
{
    struct cli cli = {0};
    struct sync_options opts;
    if (parse_cli(argc, argv, &cli) < 0) {
        free(cli.args);
        return EXIT_USAGE;
    }
    if (cli.help) {
        fputs(usage_long, stdout);
        free(cli.args);
        return 0;
    }
    if (cli.version) {
        printf("interimap %s\n", INTERIMAP_VERSION);
        free(cli.args);
        return 0;
    }
    if (check_cli(&cli, &opts) < 0) {
        free(cli.args);
        return EXIT_USAGE;
    }

    char err[512];
    char *path = config_resolve_path(cli.config, err, sizeof err);
    if (!path) {
        fprintf(stderr, "interimap: %s\n", err);
        free(cli.args);
        return EXIT_USAGE;
    }
    struct config cfg;
    if (config_load(&cfg, path, err, sizeof err) < 0) {
        fprintf(stderr, "interimap: %s\n", err);
        free(path);
        free(cli.args);
        return EXIT_USAGE;
    }
    free(path);
    if (imap_client_check_config(&cfg.local, err, sizeof err) < 0 ||
        imap_client_check_config(&cfg.remote, err, sizeof err) < 0) {
        fprintf(stderr, "interimap: %s: %s\n", cfg.path, err);
        config_fini(&cfg);
        free(cli.args);
        return EXIT_USAGE;
    }
    struct logger *log = logger_new(cfg.logfile, cfg.log_prefix, err, sizeof err);
    if (!log) {
        fprintf(stderr, "interimap: %s\n", err);
        config_fini(&cfg);
        free(cli.args);
        return EXIT_USAGE;
    }
    logger_set_quiet(log, cli.quiet);
    logger_set_debug(log, cli.debug);
    /* a progress line only for a person watching a terminal */
    struct progress *progress = NULL;
    if (!cli.quiet && isatty(STDOUT_FILENO))
        progress = progress_new(STDOUT_FILENO);
    if (progress && isatty(STDERR_FILENO))
        logger_set_tty_guard(log, progress_guard, progress);
    opts.progress = progress;

    /* a peer closing the connection must show up as an error, not kill us */
    signal(SIGPIPE, SIG_IGN);

    uv_loop_t loop;
    uv_loop_init(&loop);
    struct coro_sched *sched = coro_sched_new(&loop);
    struct run run = {.status = EXIT_FAILURE_GENERIC};
    run.engine = sched ? sync_engine_new(sched, &cfg, log, &opts) : NULL;
    if (!run.engine || !coro_spawn(sched, engine_main, &run, 1 << 20)) {
        fprintf(stderr, "interimap: out of memory\n");
    } else {
        coro_sched_run(sched);
    }
    sync_engine_free(&run.engine);
    coro_sched_free(&sched);
    /* let libuv finish closing handles */
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    logger_free(&log);
    progress_free(&progress);
    config_fini(&cfg);
    free(cli.args);
    return run.status;
}
