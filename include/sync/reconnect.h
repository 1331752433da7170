/*
 * When --watch tries a lost connection again: the back-off between
 * attempts, as a pure function of what happened and when (times are
 * milliseconds of a monotonic clock), so that the policy can be tested
 * without a network.
 *
 * - A server that does not answer or refuses the connection is tried
 *   again after a sixteenth of the outage so far, at least 1 s and at most
 *   60 s: the time lost after it comes back is a small share of the time
 *   it was away (3.75 s after a minute), and a server that stays down is
 *   asked less and less often.
 * - An attempt that fails at once because this machine has no network (no
 *   route, no name server) says nothing about the server: the outage is
 *   counted again from then, and the next attempt comes 2 s later, so a
 *   laptop that gets its network back is connected within seconds.
 * - A server that answers but will not have us (login refused, TLS
 *   failure, a missing extension) is tried again after 1, 2, 4... s, up to
 *   60 s: it is not going to change its mind soon.
 * - reconnect_now (SIGUSR1, the machine woke up) starts afresh: the next
 *   attempt is immediate.
 */
#ifndef INTERIMAP_SYNC_RECONNECT_H
#define INTERIMAP_SYNC_RECONNECT_H

#include <stdbool.h>
#include <stdint.h>

enum {
    RECONNECT_MIN_MS = 1000,
    RECONNECT_MAX_MS = 60 * 1000,
    RECONNECT_OFFLINE_MS = 2000, /* after "no network here" */
    RECONNECT_FAST_MS = 1000,    /* an attempt failing faster than this failed at once */
    RECONNECT_OUTAGE_SHARE = 16, /* delay = outage / 16 */
};

/* Why an attempt failed. */
enum reconnect_failure {
    RECONNECT_DOWN,     /* refused, timed out, reset: the server or the path is down */
    RECONNECT_OFFLINE,  /* no route or no name server: this machine has no network */
    RECONNECT_REJECTED, /* the server answered but the session could not be opened */
};

struct reconnect {
    uint64_t since;    /* when the outage began (counted again when offline) */
    uint64_t delay;    /* the delay chosen last */
    unsigned rejected; /* consecutive RECONNECT_REJECTED failures */
};

/* The connection was lost at `now`: returns the delay before the first
 * attempt. */
uint64_t reconnect_lost(struct reconnect *r, uint64_t now);
/* An attempt started at `started` failed at `now` with error `code` (a
 * negative errno, libuv or ERR_* code): returns the delay before the next
 * one. */
uint64_t reconnect_failed(struct reconnect *r, int code, uint64_t started, uint64_t now);
/* Tries again at once, as after a new outage beginning at `now`. */
void reconnect_now(struct reconnect *r, uint64_t now);
/* How a failure with this code is classified. */
enum reconnect_failure reconnect_classify(int code);

#endif
