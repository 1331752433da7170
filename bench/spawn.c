/*
 * spawn: run a command and report its wall time and resource usage as JSON.
 *
 *     spawn OUT.json STDOUT_FILE STDERR_FILE -- PROGRAM [ARG...]
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
    if (argc < 6 || strcmp(argv[4], "--") != 0) {
        fprintf(stderr, "usage: spawn OUT.json STDOUT STDERR -- PROGRAM [ARG...]\n");
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
            "\"exit\": %d, \"signal\": %d}\n",
            wall, tv_seconds(ru.ru_utime), tv_seconds(ru.ru_stime), ru.ru_maxrss, code, sig);
    fclose(out);
    return 0;
}
