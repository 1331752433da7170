#!/usr/bin/env python3
"""--watch and --notify: changes made by another IMAP client on either side
reach the other side while interimap keeps running; a server outage, a
frozen link and a restart are survived; SIGUSR1 reconnects at once; SIGTERM
ends the process cleanly. Delays are bounded generously here (the watch
benchmark, bench/watch.py, reports the figures).

The outage and freeze last INTERIMAP_WATCH_OUTAGE and INTERIMAP_WATCH_FREEZE
seconds (short by default); INTERIMAP_WATCH_RESUME and INTERIMAP_WATCH_THAW
bound how long after the server is back, or the link released,
synchronization may take to resume. The long run of doc/internals/testing.md
sets them to 60, 60, 5 and 2."""

import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pair import Pair  # noqa: E402
from watchkit import BOUND, Watcher, count, env_seconds, exists, quiet, wait_for  # noqa: E402
from imapfixture import check, check_eq, main, mail  # noqa: E402
from imapfixture.mail import MessageGenerator  # noqa: E402

# Dovecot's capabilities without NOTIFY: the IDLE fallback of --notify.
NO_NOTIFY_CAPS = ("IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT MULTIAPPEND UNSELECT "
                  "CHILDREN NAMESPACE UIDPLUS LIST-EXTENDED CONDSTORE QRESYNC ESEARCH "
                  "LIST-STATUS LITERAL+ COMPRESS=DEFLATE")

# An outage just past a doubling back-off's 1+2+4+8 s of attempts: that
# schedule would next try 15 s later, the outage-sized one within 2 s.
OUTAGE = env_seconds("INTERIMAP_WATCH_OUTAGE", 17)
RESUME = env_seconds("INTERIMAP_WATCH_RESUME", 10)
FREEZE = env_seconds("INTERIMAP_WATCH_FREEZE", 10)
THAW = env_seconds("INTERIMAP_WATCH_THAW", 8)

ALL_KINDS = ("append", "flags", "append-other", "expunge-other", "mailbox")
INBOX_KINDS = ("append", "flags", "expunge")


def change(p, kind, g):
    """Makes one change on a server as another client; returns the check
    that it reached the other side."""
    if kind == "append":  # remote -> local, INBOX
        rc = p.login("remote")
        mail.append(rc, "INBOX", g.message())
        rc.logout()
        n = count(p, "remote", "INBOX")
        return lambda: count(p, "local", "INBOX") == n
    if kind == "flags":  # local -> remote, INBOX
        lc = p.login("local")
        mail.set_flags(lc, "INBOX", mail.uids(lc, "INBOX")[:1], ["$Watched"])
        lc.logout()
        return lambda: count(p, "remote", "INBOX", "$Watched") == 1
    if kind == "expunge":  # local -> remote, INBOX
        lc = p.login("local")
        mail.expunge(lc, "INBOX", mail.uids(lc, "INBOX")[-1:])
        lc.logout()
        n = count(p, "local", "INBOX")
        return lambda: count(p, "remote", "INBOX") == n
    if kind == "append-other":  # local -> remote, another mailbox
        lc = p.login("local")
        mail.append(lc, "Other", g.message())
        lc.logout()
        n = count(p, "local", "Other")
        return lambda: count(p, "remote", "Other") == n
    if kind == "expunge-other":  # remote -> local, another mailbox
        rc = p.login("remote")
        mail.expunge(rc, "Other", mail.uids(rc, "Other")[:1])
        rc.logout()
        n = count(p, "remote", "Other")
        return lambda: count(p, "local", "Other") == n
    if kind == "mailbox":  # local -> remote, a new mailbox
        lc = p.login("local")
        mail.create(lc, "Fresh")
        lc.logout()
        return lambda: exists(p, "remote", "Fresh")
    raise ValueError(kind)


def propagation(p, mode_args, kinds=ALL_KINDS):
    mail.fill(p.local, {"INBOX": MessageGenerator(1).mailbox(3), "Other": MessageGenerator(2).mailbox(2)})
    w = Watcher(p, *mode_args)
    delays = {}
    try:
        check(wait_for(lambda: count(p, "remote", "INBOX") == 3 and count(p, "remote", "Other") == 2)
              is not None, "initial sync")
        g = MessageGenerator(9)
        for kind in kinds:
            arrived = change(p, kind, g)
            d = wait_for(arrived)
            check(d is not None, "%s reached the other side (log: %s)" % (kind, w.text()[-2000:]))
            delays[kind] = d
    finally:
        code, log = w.stop()
    check_eq(code, 0, "SIGTERM ends the watcher with status 0 (log: %s)" % log[-2000:])
    print("propagation delays (s): %s" % ", ".join("%s %.2f" % kv for kv in delays.items()))
    p.assert_in_step()
    return delays


def test_notify_propagation():
    # the default interval (15 minutes) leaves pushed changes as the only way
    with Pair() as p:
        delays = propagation(p, ["--watch", "--notify"])
        check(max(delays.values()) < 10, "notified changes arrive fast: %r" % delays)


def test_notify_idle_fallback_without_notify_capability():
    # Dovecot with NOTIFY removed from the advertised capabilities: IDLE on
    # INBOX pushes its changes (the interval is far away) ...
    with Pair(local={"capability": NO_NOTIFY_CAPS}, remote={"capability": NO_NOTIFY_CAPS}) as p:
        delays = propagation(p, ["--notify", "--watch"], INBOX_KINDS)
        check(max(delays.values()) < 10, "INBOX changes arrive fast through IDLE: %r" % delays)
    # ... and the other mailboxes are polled at the interval
    with Pair(local={"capability": NO_NOTIFY_CAPS}, remote={"capability": NO_NOTIFY_CAPS}) as p:
        propagation(p, ["--notify", "--watch=2"], ("append-other", "expunge-other", "mailbox"))


def test_watch_polling():
    with Pair() as p:
        propagation(p, ["--watch=1"])


def test_watch_survives_server_restart():
    with Pair() as p:
        mail.fill(p.local, {"INBOX": MessageGenerator(1).mailbox(2)})
        w = Watcher(p, "--watch=1")
        try:
            check(wait_for(lambda: count(p, "remote", "INBOX") == 2) is not None, "initial sync")
            p.remote.stop(remove=False)
            time.sleep(2)
            p.remote.start(keep_ports=True)
            lc = p.login("local")
            mail.append(lc, "INBOX", MessageGenerator(5).message())
            lc.logout()
            d = wait_for(lambda: count(p, "remote", "INBOX") == 3, bound=BOUND + 60)
        finally:
            code, log = w.stop()
        check(d is not None, "synchronized again after the restart (log: %s)" % log[-2000:])
        check_eq(code, 0, "clean exit (log: %s)" % log[-2000:])
        check("reconnect" in log, "the reconnection is logged: %s" % log[-2000:])
        p.assert_in_step()


def test_watch_resumes_soon_after_an_outage():
    # The remote server is away for OUTAGE seconds; a message that arrived
    # on the local side meanwhile is copied within RESUME seconds of its
    # return, whatever the back-off reached during the outage.
    with Pair() as p:
        mail.fill(p.local, {"INBOX": MessageGenerator(1).mailbox(2)})
        w = Watcher(p, "--watch", "--notify")
        try:
            check(wait_for(lambda: count(p, "remote", "INBOX") == 2) is not None, "initial sync")
            p.remote.stop(remove=False)
            lc = p.login("local")
            mail.append(lc, "INBOX", MessageGenerator(5).message())
            lc.logout()
            time.sleep(OUTAGE)
            check("connection lost" in w.text(), "the outage was noticed: %s" % w.text()[-2000:])
            p.remote.start(keep_ports=True)
            d = wait_for(lambda: count(p, "remote", "INBOX") == 3, bound=RESUME, step=0.05)
        finally:
            code, log = w.stop()
        check(d is not None, "synchronized within %g s of the server's return after %g s away "
              "(log: %s)" % (RESUME, OUTAGE, log[-2000:]))
        print("outage %g s: resumed %.2f s after the server came back" % (OUTAGE, d))
        check_eq(code, 0, "clean exit (log: %s)" % log[-2000:])
        p.assert_in_step()


def test_watch_resumes_at_once_after_a_frozen_link():
    # The remote link carries nothing for FREEZE seconds (a sleeping laptop,
    # a dead Wi-Fi): the connection survives it, and a change made
    # meanwhile on the local side gets through within THAW seconds of the
    # link's release.
    with Pair() as p:
        mail.fill(p.local, {"INBOX": MessageGenerator(1).mailbox(2)})
        relays = p.use_relays()
        w = Watcher(p, "--watch", "--notify")
        try:
            check(wait_for(lambda: count(p, "remote", "INBOX") == 2) is not None, "initial sync")
            connections = relays["remote"].ctl.stats()["connections"]
            relays["remote"].ctl.freeze()
            lc = p.login("local")
            mail.append(lc, "INBOX", MessageGenerator(5).message())
            lc.logout()
            time.sleep(FREEZE)
            check_eq(count(p, "remote", "INBOX"), 2, "nothing got through the frozen link")
            relays["remote"].ctl.thaw()
            d = wait_for(lambda: count(p, "remote", "INBOX") == 3, bound=THAW, step=0.05)
            after = relays["remote"].ctl.stats()["connections"]
        finally:
            code, log = w.stop()
        check(d is not None, "synchronized within %g s of the release after %g s frozen "
              "(log: %s)" % (THAW, FREEZE, log[-2000:]))
        print("frozen %g s: resumed %.2f s after the release" % (FREEZE, d))
        check_eq(after, connections, "the connection survived the freeze (log: %s)" % log[-2000:])
        check_eq(code, 0, "clean exit (log: %s)" % log[-2000:])
        p.assert_in_step()


def test_sigusr1_reconnects_at_once():
    with Pair() as p:
        mail.fill(p.local, {"INBOX": MessageGenerator(1).mailbox(2)})
        relays = p.use_relays()
        w = Watcher(p, "--watch", "--notify")
        try:
            check(wait_for(lambda: count(p, "remote", "INBOX") == 2) is not None, "initial sync")
            check(quiet(relays.values(), 1.0) is not None, "the watcher settles")
            before = {s: r.ctl.stats()["connections"] for s, r in relays.items()}
            w.send(signal.SIGUSR1)
            d = wait_for(lambda: all(r.ctl.stats()["connections"] > before[s]
                                     for s, r in relays.items()), bound=5)
            check(d is not None, "SIGUSR1 opened new connections at once (log: %s)" % w.text()[-2000:])
            check(w.alive(), "SIGUSR1 does not end the watcher")
            rc = p.login("remote")
            mail.append(rc, "INBOX", MessageGenerator(5).message())
            rc.logout()
            check(wait_for(lambda: count(p, "local", "INBOX") == 3) is not None,
                  "changes still reach the other side after the reconnection")
        finally:
            code, log = w.stop()
        check_eq(code, 0, "clean exit (log: %s)" % log[-2000:])
        check("reconnect" in log, "the reconnection is logged: %s" % log[-2000:])
        p.assert_in_step()


if __name__ == "__main__":
    main(globals())
