/*
 * Unit tests of the --watch back-off (sync/reconnect.h): the delay grows
 * with the outage and stays a small share of it, an unreachable network
 * resets it, a server that rejects us is backed off by doubling, and a
 * reset makes the next attempt immediate.
 */
#include "sync/reconnect.h"

#include <errno.h>
#include <uv.h>

#include "check.h"
#include "errors.h"

#define S(x) ((uint64_t)(x)*1000)

/* A server down for `outage` ms, each attempt failing after `cost` ms with
 * `code`: returns when the first attempt after its return starts. */
static uint64_t first_attempt_after(uint64_t outage, uint64_t cost, int code)
{
    struct reconnect r;
    uint64_t now = S(1000); /* any origin */
    uint64_t back = now + outage;
    now += reconnect_lost(&r, now);
    while (now < back) {
        uint64_t started = now;
        now += cost;
        now += reconnect_failed(&r, code, started, now);
    }
    return now - back;
}

static void test_classify(void)
{
    CHECK_INT(reconnect_classify(-ECONNREFUSED), RECONNECT_DOWN);
    CHECK_INT(reconnect_classify(-ETIMEDOUT), RECONNECT_DOWN);
    CHECK_INT(reconnect_classify(ERR_EOF), RECONNECT_DOWN);
    CHECK_INT(reconnect_classify(-ENETUNREACH), RECONNECT_OFFLINE);
    CHECK_INT(reconnect_classify(-EHOSTUNREACH), RECONNECT_OFFLINE);
    CHECK_INT(reconnect_classify(UV_EAI_AGAIN), RECONNECT_OFFLINE);
    CHECK_INT(reconnect_classify(ERR_AUTH), RECONNECT_REJECTED);
    CHECK_INT(reconnect_classify(ERR_TLS), RECONNECT_REJECTED);
}

static void test_down_server(void)
{
    struct reconnect r;
    uint64_t now = S(50);
    CHECK_INT(reconnect_lost(&r, now), S(1));
    /* the first 16 s: every second */
    uint64_t d = reconnect_failed(&r, -ECONNREFUSED, now + S(1), now + S(1) + 1);
    CHECK_INT(d, S(1));
    /* later: a sixteenth of the outage */
    d = reconnect_failed(&r, -ECONNREFUSED, now + S(160), now + S(160) + 5);
    CHECK_INT(d, S(10) + 0);
    /* capped */
    d = reconnect_failed(&r, -ETIMEDOUT, now + S(3600), now + S(3630));
    CHECK_INT(d, RECONNECT_MAX_MS);
    /* the delay keeps growing while the server stays down */
    uint64_t prev = 0;
    reconnect_lost(&r, 0);
    for (uint64_t t = S(20); t < S(900); t += S(40)) {
        d = reconnect_failed(&r, -ECONNREFUSED, t, t + 1);
        CHECK(d > prev);
        prev = d;
    }
}

static void test_resume_after_outage(void)
{
    /* back within 5 s of a server's return after one minute away, within
     * 1 s + a sixteenth of the outage in general */
    CHECK(first_attempt_after(S(60), 1, -ECONNREFUSED) <= S(5));
    CHECK(first_attempt_after(S(17), 1, -ECONNREFUSED) <= S(2));
    for (uint64_t outage = S(1); outage < S(7200); outage += S(37))
        CHECK(first_attempt_after(outage, 1, -ECONNREFUSED) <= S(1) + outage / 16 + 1);
    /* attempts that time out after 30 s cost their own time, no more */
    CHECK(first_attempt_after(S(600), S(30), -ETIMEDOUT) <= S(30) + S(600) / 16 + S(3));
}

static void test_offline(void)
{
    struct reconnect r;
    reconnect_lost(&r, 0);
    /* after an hour down, the server's delay is at its cap */
    CHECK_INT(reconnect_failed(&r, -ECONNREFUSED, S(3600), S(3600)), RECONNECT_MAX_MS);
    /* the network goes: attempts fail at once, the delay is short */
    CHECK_INT(reconnect_failed(&r, -ENETUNREACH, S(3660), S(3660) + 2), RECONNECT_OFFLINE_MS);
    CHECK_INT(reconnect_failed(&r, UV_EAI_AGAIN, S(3662), S(3662) + 10), RECONNECT_OFFLINE_MS);
    /* hours later, still offline: still short */
    CHECK_INT(reconnect_failed(&r, -ENETUNREACH, S(20000), S(20000)), RECONNECT_OFFLINE_MS);
    /* the network is back, the server not yet: counted from the last
     * offline failure, so small again */
    CHECK_INT(reconnect_failed(&r, -ECONNREFUSED, S(20002), S(20002)), S(1));
    /* an unreachable host that takes its time to say so (a router's
     * timeout) is a server problem like another */
    reconnect_lost(&r, 0);
    CHECK_INT(reconnect_failed(&r, -EHOSTUNREACH, S(160), S(163)), S(163) / 16);
}

static void test_rejected(void)
{
    struct reconnect r;
    reconnect_lost(&r, 0);
    uint64_t expect[] = {S(1), S(2), S(4), S(8), S(16), S(32), S(60), S(60)};
    for (size_t i = 0; i < sizeof expect / sizeof expect[0]; i++)
        CHECK_INT(reconnect_failed(&r, ERR_AUTH, S(i), S(i) + 5), expect[i]);
    /* another kind of failure ends the doubling */
    CHECK_INT(reconnect_failed(&r, -ECONNREFUSED, S(10), S(10)), S(1));
    CHECK_INT(reconnect_failed(&r, ERR_TLS, S(11), S(11)), S(1));
}

static void test_now(void)
{
    struct reconnect r;
    reconnect_lost(&r, 0);
    reconnect_failed(&r, -ECONNREFUSED, S(3000), S(3000));
    reconnect_now(&r, S(3001));
    CHECK_INT(r.delay, 0);
    /* and the outage counts from then */
    CHECK_INT(reconnect_failed(&r, -ECONNREFUSED, S(3002), S(3002)), S(1));
}

int main(void)
{
    test_classify();
    test_down_server();
    test_resume_after_outage();
    test_offline();
    test_rejected();
    test_now();
    return check_finish();
}
