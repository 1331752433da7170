#!/usr/bin/env python3
"""Runs killed with SIGKILL at many points, then run again: both servers
must end equal, with no message lost and none duplicated.

The kill points are found in the --debug traffic log: the test reads our
standard error as it is written and kills the process right after the
N-th occurrence of a server reply (an APPENDUID, a FETCH of a new message,
a tagged OK of a STORE...), which lands in the windows that matter: after
a server acknowledged an APPEND and before the database recorded it, in
the middle of a MULTIAPPEND, between a STORE and the state update."""

import os
import re
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pair import PERL_INTERIMAP, Pair, binary  # noqa: E402
from imapfixture import check, check_eq, main, mail, skip  # noqa: E402
from imapfixture.mail import MessageGenerator  # noqa: E402


def run_and_kill(p, pattern, n, timeout=120):
    """Runs interimap --debug and SIGKILLs it right after the n-th line
    matching pattern. Fails the test unless the kill happened there: the
    process was still running when the n-th line came, and died of the
    signal. (A run that finishes first, or a change in the --debug output
    that no longer matches, would otherwise turn the test into two clean
    runs.) Returns the matching line."""
    proc = subprocess.Popen([binary(), "--config", p.config_path, "--debug"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    rx = re.compile(pattern)
    seen = 0
    line = None
    deadline = time.monotonic() + timeout
    try:
        for raw in proc.stderr:
            text = raw.decode("utf-8", "replace")
            if rx.search(text):
                seen += 1
                if seen == n:
                    alive = proc.poll() is None
                    proc.send_signal(signal.SIGKILL)
                    line = text.strip()
                    break
            if time.monotonic() > deadline:
                break
    finally:
        if line is None and proc.poll() is None:
            proc.kill()
        proc.stderr.close()
        code = proc.wait(timeout=30)
    check(line is not None, "the run ended after %d of %d lines matching %r: no kill" % (seen, n, pattern))
    check(alive and code == -signal.SIGKILL,
          "killed at %r: exit %r, not the kill" % (line, code))
    return line


def check_total(p, want):
    a, b = p.assert_in_step()
    check_eq(a.total(), want, "messages on local")
    check_eq(b.total(), want, "messages on remote")


def populate(p, seed=1):
    gen = MessageGenerator(seed)
    spec = {"INBOX": 30, "A": 25, "B/C": 20}
    mail.fill(p.local, {k: gen.mailbox(v) for k, v in spec.items()})
    gen2 = MessageGenerator(seed + 100)
    mail.fill(p.remote, {"INBOX": gen2.mailbox(10), "R": gen2.mailbox(15)})
    return sum(spec.values()) + 25


def test_kill_after_appenduid():
    """The server acknowledged the copies, the database may not know."""
    # populate() makes five APPEND batches: three mailboxes one way, two
    # the other; each of them is a kill point
    for n in (1, 2, 3, 4, 5):
        with Pair() as p:
            total = populate(p, seed=n)
            run_and_kill(p, r"S: \d+ OK \[APPENDUID", n)
            p.run()
            check_total(p, total)


def test_kill_mid_multiappend():
    """Killed while a body streams from one server into the other."""
    for n in (1, 7, 19, 33, 61, 90):
        with Pair() as p:
            total = populate(p, seed=10 + n)
            run_and_kill(p, r"S: \* \d+ FETCH \(UID \d+ MODSEQ", n)
            p.run()
            check_total(p, total)


def test_repeated_kills_then_changes():
    """Several interrupted runs in a row, with changes in between."""
    with Pair() as p:
        total = populate(p, seed=42)
        # 100 messages to copy: each run fetches what the previous ones
        # left, more than n of them
        for n in (3, 11, 2):
            run_and_kill(p, r"S: \* \d+ FETCH \(UID \d+ MODSEQ", n)
        lc = p.login("local")
        try:
            gen = MessageGenerator(77)
            for _ in range(4):
                mail.append(lc, "A", gen.message())
        finally:
            lc.logout()
        run_and_kill(p, r"S: \d+ OK \[APPENDUID", 1)
        p.run()
        check_total(p, total + 4)
        # and a plain run afterwards changes nothing
        p.run()
        check_total(p, total + 4)


def flag_and_expunge(p, box, nflag, flag, nexpunge):
    """On the local side, `flag` added to the first nflag messages of box;
    on the remote side, the first nexpunge messages of R expunged."""
    lc, rc = p.login("local"), p.login("remote")
    try:
        mail.set_flags(lc, box, mail.uids(lc, box)[:nflag], [flag])
        mail.expunge(rc, "R", mail.uids(rc, "R")[:nexpunge])
    finally:
        lc.logout()
        rc.logout()


def test_kill_during_flag_and_expunge_propagation():
    with Pair() as p:
        total = populate(p, seed=5)
        p.run()
        flag_and_expunge(p, "INBOX", 10, "\\Flagged", 5)
        run_and_kill(p, r"S: \d+ OK .*(Store|Expunge|STORE|EXPUNGE)", 1)
        p.run()
        a, b = p.assert_in_step()
        check_eq(a.total(), total - 5, "expunges propagated")
        # the sample mail has some flagged messages already; ours are added
        flagged = [m for m in b.mailboxes["INBOX"].messages if "\\Flagged" in m.flags]
        check(len(flagged) >= 10, "flags propagated: %d flagged" % len(flagged))


def test_perl_tool_continues_after_a_kill():
    """A killed run leaves its latest commits in the database's
    write-ahead log, beside the file: the Perl tool opens the database
    with them and finishes the propagation, then ours finds the servers
    in step (the commands it had journaled settled against what the Perl
    tool did)."""
    if not os.access(PERL_INTERIMAP, os.X_OK):
        skip("%s is not installed" % PERL_INTERIMAP)
    with Pair() as p:
        total = populate(p, seed=6)
        p.run()
        check(not os.path.exists(p.db + "-wal"), "a clean run leaves no log behind")
        flag_and_expunge(p, "A", 6, "$Urgent", 4)
        run_and_kill(p, r"\((A|R)\): .*flag update", 1)
        wal = p.db + "-wal"
        check(os.path.exists(wal) and os.path.getsize(wal) > 0,
              "the killed run left its commits in %s" % wal)
        perl = p.run_perl()
        check("ERROR" not in perl.err and "malformed" not in perl.err,
              "the Perl tool read the database:\n" + perl.err)
        check(not os.path.exists(wal), "the Perl tool folded the log back in")
        a, b = p.assert_in_step()
        check_eq(a.total(), total - 4, "the expunges propagated")
        urgent = [m for m in a.mailboxes["A"].messages if "$Urgent" in m.flags]
        check_eq(len(urgent), 6, "the flags propagated")
        r = p.run()
        check("message(s) added" not in r.err, "ours copies nothing afterwards:\n" + r.err)
        a2, _ = p.assert_in_step()
        check_eq(a2.total(), total - 4, "and loses nothing")


def kill_after(p, delay):
    """Starts a run and SIGKILLs it after delay seconds; True if it was
    still running then (the kill happened), False if it had finished."""
    proc = subprocess.Popen([binary(), "--config", p.config_path],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    alive = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    code = proc.wait(timeout=30)
    return alive and code == -signal.SIGKILL


def test_kill_at_random_times():
    """Timing-based kills complement the log-based ones. The delays are
    fractions of how long an uninterrupted run of the same work takes on
    this machine, and every kill must land while the process runs (a run
    that finished first is tried again sooner)."""
    with Pair() as twin:
        populate(twin, seed=99)
        t0 = time.monotonic()
        twin.run()
        full = time.monotonic() - t0
    with Pair() as p:
        total = populate(p, seed=99)
        kills = 0
        for frac in (0.05, 0.15, 0.3, 0.5, 0.8):
            d = full * frac
            for _ in range(6):
                if kill_after(p, d):
                    kills += 1
                    break
                d /= 2  # earlier runs did part of the work: this one is shorter
        check_eq(kills, 5, "timed kills that landed during a run")
        p.run()
        check_total(p, total)


def test_resume_reference_style_interruption():
    """The reference tool commits pairs per APPEND batch and UIDNEXT only at
    the end: a run killed in between leaves pairs at or above the stored
    UIDNEXT. Changes made to those messages meanwhile must be settled."""
    import sqlite3
    with Pair() as p:
        gen = MessageGenerator(8)
        mail.fill(p.local, {"INBOX": gen.mailbox(10)})
        p.run()
        con = sqlite3.connect(p.db)
        con.execute("UPDATE local SET UIDNEXT = 6")
        con.execute("UPDATE remote SET UIDNEXT = 6")
        con.commit()
        con.close()
        lc, rc = p.login("local"), p.login("remote")
        try:
            mail.expunge(lc, "INBOX", [7])
            mail.set_flags(rc, "INBOX", [8], ["$AfterCrash"])
        finally:
            lc.logout()
            rc.logout()
        p.run()
        a, b = p.assert_in_step()
        check_eq(a.total(), 9, "the expunge reached the other side, nothing copied twice")
        tagged = [m for m in a.mailboxes["INBOX"].messages if "$AfterCrash" in m.flags]
        check_eq(len(tagged), 1, "the flag change reached the other side")


if __name__ == "__main__":
    main(globals())
