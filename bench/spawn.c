/*
 * spawn: run a command and report its wall time and resource usage as JSON.
 *
 *     spawn [-t SECONDS] OUT.json STDOUT_FILE STDERR_FILE -- PROGRAM [ARG...]
 *
 * With -t, a child still running after SECONDS is killed (SIGKILL) and the
 * report says "timed_out": 1, so that one hopeless run (a slow tool on a
 * slow link) does not hold up the rest of a benchmark.
 *
 * Why a separate launcher: on Linux the peak RSS that wait4() reports for a
 * child includes the high-water mark of the address space it had before
 * exec, and a child forked (or vforked) from the benchmark driver starts
 * with the driver's address space, which holds hundreds of megabytes of
 * generated mail. Forked from this small program instead, the child starts
 * from about one megabyte, so ru_maxrss is the tool's own peak.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* The child to kill when the alarm rings: killing from the handler itself
 * leaves no window between a check and wait4(). */
static volatile pid_t child;
static volatile sig_atomic_t timed_out;

static void on_alarm(int sig)
{
    (void)sig;
    timed_out = 1;
    kill(child, SIGKILL);
}

static double tv_seconds(struct timeval tv)
{
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

static int redirect(const char *path, int fd)
{
    int f = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (f < 0)
        return -errno;
    if (dup2(f, fd) < 0) {
        int err = -errno;
        close(f);
        return err;
    }
    close(f);
    return 0;
}

int main(int argc, char **argv)
{
    unsigned timeout = 0;
    if (argc > 2 && strcmp(argv[1], "-t") == 0) {
        char *end;
        unsigned long t = strtoul(argv[2], &end, 10);
        if (*end != '\0' || t == 0 || t > 86400) {
            fprintf(stderr, "spawn: bad timeout %s\n", argv[2]);
            return 2;
        }
        timeout = (unsigned)t;
        argc -= 2;
        argv += 2;
    }
    if (argc < 6 || strcmp(argv[4], "--") != 0) {
        fprintf(stderr, "usage: spawn [-t SECONDS] OUT.json STDOUT STDERR -- PROGRAM [ARG...]\n");
        return 2;
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return 2;
    }
    if (pid == 0) {
        int null = open("/dev/null", O_RDONLY);
        if (null >= 0)
            dup2(null, 0);
        if (redirect(argv[2], 1) < 0 || redirect(argv[3], 2) < 0)
            _exit(126);
        execvp(argv[5], argv + 5);
        fprintf(stderr, "spawn: exec %s: %s\n", argv[5], strerror(errno));
        _exit(127);
    }
    if (timeout > 0) {
        child = pid;
        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = on_alarm;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGALRM, &sa, NULL);
        alarm(timeout);
    }
    int status = 0;
    struct rusage ru;
    memset(&ru, 0, sizeof(ru));
    while (wait4(pid, &status, 0, &ru) < 0) {
        if (errno != EINTR) {
            perror("wait4");
            return 2;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double wall = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    int sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
    FILE *out = fopen(argv[1], "w");
    if (out == NULL) {
        perror(argv[1]);
        return 2;
    }
    fprintf(out,
            "{\"wall\": %.6f, \"user\": %.6f, \"sys\": %.6f, \"maxrss_kb\": %ld, "
            "\"exit\": %d, \"signal\": %d, \"timed_out\": %d}\n",
            wall, tv_seconds(ru.ru_utime), tv_seconds(ru.ru_stime), ru.ru_maxrss, code, sig,
            (int)timed_out);
    fclose(out);
    return 0;
}
