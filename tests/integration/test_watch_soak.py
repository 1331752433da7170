#!/usr/bin/env python3
"""What a watcher costs: idle, it sends nothing but keep-alives and uses no
CPU to speak of; under a stream of changes on both sides it keeps the
servers equal, loses and duplicates nothing, and its memory and open files
stay flat.

Commands are counted by relays (bench/latency_relay.py) in front of both
servers, CPU time and memory are read from /proc: resources, not timings.
The idle window lasts INTERIMAP_SOAK_IDLE seconds (20 by default) and the
stream of changes INTERIMAP_SOAK_SECONDS (15 by default); the long soak of
doc/internals/testing.md sets 120 and 600."""

import hashlib
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pair import Pair  # noqa: E402
from watchkit import Watcher, count, env_seconds, quiet, sanitized, wait_for  # noqa: E402
from imapfixture import check, check_eq, main, mail  # noqa: E402
from imapfixture.mail import MessageGenerator  # noqa: E402

IDLE = env_seconds("INTERIMAP_SOAK_IDLE", 20)
SOAK = env_seconds("INTERIMAP_SOAK_SECONDS", 15)
# What an idle minute may cost at most: a keep-alive or two per server,
# and CPU time of the order of a few wake-ups.
COMMANDS_PER_MINUTE = 3
CPU_PER_MINUTE = 0.3

NO_NOTIFY_CAPS = ("IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT MULTIAPPEND UNSELECT "
                  "CHILDREN NAMESPACE UIDPLUS LIST-EXTENDED CONDSTORE QRESYNC ESEARCH "
                  "LIST-STATUS LITERAL+")
MAILBOXES = ["INBOX", "Other", "Lists/one", "Lists/two", "Archive"]


def fill(p):
    g = MessageGenerator(3)
    mail.fill(p.local, {name: g.mailbox(4) for name in MAILBOXES})


def synced(p):
    """Every mailbox of the fill is on the remote side (the first cycle is
    over: changes made during it are another test's business)."""
    return all(count(p, "remote", name) == 4 for name in MAILBOXES)


def idle_cost(p, relays, w):
    """Runs the idle window; returns (commands per side, CPU seconds)."""
    check(wait_for(lambda: synced(p)) is not None, "initial sync")
    seen = {s: r.ctl.stats()["commands"] for s, r in relays.items()}
    check(all(n > 0 for n in seen.values()), "the relays count the commands: %r" % seen)
    check(quiet(relays.values(), 1.0) is not None, "the watcher settles (log: %s)" % w.text()[-2000:])
    for r in relays.values():
        r.ctl.reset()
    cpu0 = w.cpu()
    time.sleep(IDLE)
    check(w.alive(), "the watcher is still running (log: %s)" % w.text()[-2000:])
    cpu = w.cpu() - cpu0
    stats = {s: r.ctl.stats() for s, r in relays.items()}
    print("idle %g s: CPU %.2f s, commands %s" % (
        IDLE, cpu, {s: st["command_names"] for s, st in stats.items()}))
    allowed = max(COMMANDS_PER_MINUTE, COMMANDS_PER_MINUTE * IDLE / 60.0)
    for side, st in stats.items():
        check(st["commands"] <= allowed, "an idle %g s cost at most %d commands on %s, not %d: %r"
              % (IDLE, allowed, side, st["commands"], st["command_names"]))
    cpu_allowed = CPU_PER_MINUTE * max(1.0, IDLE / 60.0)
    check(cpu <= cpu_allowed, "an idle %g s cost at most %.2f s of CPU, not %.2f s"
          % (IDLE, cpu_allowed, cpu))


def one_change_syncs_one_mailbox(p, relays, w):
    """After one change in one mailbox, only that mailbox is selected."""
    for r in relays.values():
        r.ctl.reset()
    lc = p.login("local")
    mail.append(lc, "Lists/two", MessageGenerator(11).message())
    lc.logout()
    check(wait_for(lambda: count(p, "remote", "Lists/two") == 5) is not None,
          "the change arrived (log: %s)" % w.text()[-2000:])
    check(quiet(relays.values(), 1.0) is not None, "the watcher settles again")
    for side, r in relays.items():
        names = r.ctl.stats()["command_names"]
        opened = names.get("SELECT", 0) + names.get("EXAMINE", 0)
        check_eq(opened, 1, "mailboxes opened on %s for one changed mailbox (%r)" % (side, names))
        # one listing for the news, one to see that nothing else moved; the
        # servers' reports of our own changes call for none
        check(names.get("LIST", 0) <= 2, "listings on %s for one change (%r)" % (side, names))


def test_notify_idle_costs_nothing():
    with Pair() as p:
        fill(p)
        relays = p.use_relays()
        w = Watcher(p, "--watch", "--notify")
        try:
            idle_cost(p, relays, w)
            one_change_syncs_one_mailbox(p, relays, w)
        finally:
            code, log = w.stop()
        check_eq(code, 0, "clean exit (log: %s)" % log[-2000:])
        p.assert_in_step()


def test_idle_fallback_costs_nothing():
    with Pair(local={"capability": NO_NOTIFY_CAPS}, remote={"capability": NO_NOTIFY_CAPS}) as p:
        fill(p)
        relays = p.use_relays()
        w = Watcher(p, "--watch", "--notify")
        try:
            idle_cost(p, relays, w)
        finally:
            code, log = w.stop()
        check_eq(code, 0, "clean exit (log: %s)" % log[-2000:])
        p.assert_in_step()


def contents(p, side):
    """{mailbox: [sha256 of each message]} of one side."""
    snap = mail.snapshot(p.local if side == "local" else p.remote, bodies=True)
    return {name: [m.sha256 for m in mb.messages] for name, mb in snap.mailboxes.items()}


def test_soak_stream_of_changes():
    # Other clients change both sides, a few times a second, in random
    # mailboxes: appends, flag changes, and expunges of the messages that
    # were there at the start (so that every appended message must survive).
    rng = random.Random(20240611)
    g = MessageGenerator(17)
    with Pair() as p:
        fill(p)
        w = Watcher(p, "--watch", "--notify")
        appended, expunged = {}, set()
        made = 0
        try:
            check(wait_for(lambda: synced(p)) is not None, "initial sync")
            snaps = {s: mail.snapshot(p.local if s == "local" else p.remote, bodies=True)
                     for s in ("local", "remote")}
            initial = {s: {n: {m.uid: m.sha256 for m in mb.messages}
                           for n, mb in snap.mailboxes.items()} for s, snap in snaps.items()}
            conns = {"local": p.login("local"), "remote": p.login("remote")}
            cpu0, warm = w.cpu(), None
            t0 = time.monotonic()
            while time.monotonic() - t0 < SOAK:
                side = rng.choice(("local", "remote"))
                conn, box = conns[side], rng.choice(MAILBOXES)
                what = rng.random()
                victims = initial[side].get(box, {})
                if what < 0.5 or (what >= 0.8 and not victims):
                    msg = g.message()
                    mail.append(conn, box, msg)
                    appended[hashlib.sha256(msg).hexdigest()] = box
                elif what < 0.8:
                    uid = rng.choice(mail.uids(conn, box))
                    flag = rng.choice(["\\Seen", "\\Flagged", "$Label%d" % rng.randrange(5)])
                    mail.set_flags(conn, box, [uid], [flag])
                else:
                    uid = rng.choice(sorted(victims))
                    expunged.add(victims.pop(uid))
                    mail.expunge(conn, box, [uid])
                made += 1
                if warm is None and time.monotonic() - t0 >= min(5.0, SOAK / 3):
                    warm = (w.rss_kib(), w.fds())
                time.sleep(rng.uniform(0.05, 0.6))
            for c in conns.values():
                c.logout()

            def equal():
                a, b = p.snaps(bodies=False)
                return not a.diff(b)
            check(wait_for(equal, bound=60, step=0.5) is not None,
                  "equal after the last change (log: %s)" % w.text()[-2000:])
            cpu = w.cpu() - cpu0
            end = (w.rss_kib(), w.fds())
        finally:
            code, log = w.stop()
        check_eq(code, 0, "clean exit (log: %s)" % log[-2000:])
        check(made >= 10 and appended and expunged, "changes were made: %d" % made)
        print("%d changes in %g s (%d appends, %d expunges): CPU %.2f s; RSS %d -> %d KiB, "
              "fds %d -> %d" % (made, SOAK, len(appended), len(expunged), cpu, warm[0], end[0],
                                warm[1], end[1]))
        p.assert_in_step()
        for side in ("local", "remote"):
            have = contents(p, side)
            for sha, box in appended.items():
                check_eq(have.get(box, []).count(sha), 1, "appended message in %s on %s" % (box, side))
            for box, shas in have.items():
                gone = expunged.intersection(shas)
                check(not gone, "expunged messages stay expunged in %s on %s" % (box, side))
        check_eq(end[1], warm[1], "open files after the changes")
        if sanitized():
            print("AddressSanitizer build: memory not compared")
        else:
            check(end[0] - warm[0] <= 2048, "memory stays flat: %d KiB after warm-up, %d KiB at the "
                  "end" % (warm[0], end[0]))
        # CPU goes with the changes, not with the time: a generous 50 ms each
        check(cpu <= 0.05 * made + CPU_PER_MINUTE * SOAK / 60.0,
              "CPU %.2f s for %d changes" % (cpu, made))


if __name__ == "__main__":
    main(globals())
