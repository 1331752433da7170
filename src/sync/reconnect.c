/*
 * The --watch back-off between connection attempts; the policy is told in
 * include/sync/reconnect.h.
 */
#include "sync/reconnect.h"

#include <errno.h>
#include <uv.h>

#include "errors.h"

enum reconnect_failure reconnect_classify(int code)
{
    switch (code) {
    case -ENETUNREACH:
    case -ENETDOWN:
    case -EHOSTUNREACH:
    case -EADDRNOTAVAIL:
    case UV_EAI_AGAIN: /* no name server answers: offline, or a captive portal */
        return RECONNECT_OFFLINE;
    case ERR_AUTH:
    case ERR_TLS:
    case ERR_UNSUPPORTED:
    case ERR_CONFIG:
    case ERR_SOCKS:
        return RECONNECT_REJECTED;
    default:
        return RECONNECT_DOWN;
    }
}

uint64_t reconnect_lost(struct reconnect *r, uint64_t now)
{
    r->since = now;
    r->rejected = 0;
    r->delay = RECONNECT_MIN_MS;
    return r->delay;
}

void reconnect_now(struct reconnect *r, uint64_t now)
{
    r->since = now;
    r->rejected = 0;
    r->delay = 0;
}

uint64_t reconnect_failed(struct reconnect *r, int code, uint64_t started, uint64_t now)
{
    enum reconnect_failure f = reconnect_classify(code);
    if (f == RECONNECT_OFFLINE && now - started < RECONNECT_FAST_MS) {
        r->since = now;
        r->rejected = 0;
        r->delay = RECONNECT_OFFLINE_MS;
        return r->delay;
    }
    if (f == RECONNECT_REJECTED) {
        r->rejected++;
        uint64_t d = RECONNECT_MIN_MS;
        for (unsigned i = 1; i < r->rejected && d < RECONNECT_MAX_MS; i++)
            d *= 2;
        r->delay = d < RECONNECT_MAX_MS ? d : RECONNECT_MAX_MS;
        return r->delay;
    }
    r->rejected = 0;
    uint64_t d = (now - r->since) / RECONNECT_OUTAGE_SHARE;
    r->delay = d < RECONNECT_MIN_MS   ? RECONNECT_MIN_MS
               : d > RECONNECT_MAX_MS ? RECONNECT_MAX_MS
                                      : d;
    return r->delay;
}
