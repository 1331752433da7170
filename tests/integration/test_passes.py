#!/usr/bin/env python3
"""Spread changes: mailboxes whose only news is flag changes and expunges
are synchronized a window at a time in two pipelined passes (an EXAMINE
of each on both servers, then SELECT, expunges and stores of each), the
others one by one as before. Real Dovecot servers behind the command
relays of the crash tests (plain IMAP, so that the relays read the
commands)."""

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from sweep import (SIDES, Env, idate, make_message, msgid_of, record, run_meddling,  # noqa: E402
                   uid_of)
from imapfixture import check, check_eq, main, mail  # noqa: E402
from imapfixture.relay import Trap  # noqa: E402

BOXES = ["A", "B", "C", "D", "E", "F/sub", "G"]


def setup(env, per=6):
    """An account whose mailboxes were synchronized once: each holds
    `per` messages from the local side, INBOX 2."""
    acct = env.account()
    spec = {"INBOX": [(make_message("in", i), (), idate(i)) for i in range(2)]}
    for b, name in enumerate(BOXES):
        spec[name] = [(make_message("m%d" % b, i), ("\\Seen",) if i % 2 else (), idate(i))
                      for i in range(per)]
    acct.fill("local", spec)
    acct.run()
    return acct


def msg(name, i):
    return msgid_of("m%d" % BOXES.index(name), i)


def change(acct, side, name, i, flags=None, expunge=False):
    conn = acct.login(side)
    try:
        uid = uid_of(conn, name, msg(name, i))
        check(uid is not None, "%s: %s holds message %d" % (side, name, i))
        if expunge:
            mail.expunge(conn, name, [uid])
        else:
            mail.set_flags(conn, name, [uid], flags)
    finally:
        conn.logout()


def flags_of(state, name, i):
    found = [f for m, f in state[name] if m == msg(name, i)]
    return found[0] if found else None


def verbs(commands, side):
    return [c.verb for _t, s, c in commands if s == side]


def assert_equal_sides(acct):
    st = acct.state()
    check_eq(st["local"], st["remote"], "both servers hold the same messages and flags")
    return st["local"]


def spread_changes(acct):
    """Flag changes on both sides (one pair changed on both), expunges on
    both sides, and a new message in G: every mailbox changed."""
    change(acct, "local", "A", 0, ["\\Flagged"])
    change(acct, "remote", "B", 1, ["$Label1"])
    change(acct, "local", "C", 2, ["\\Answered"])
    change(acct, "remote", "C", 2, ["$Label2"])  # the same pair: both get the union
    change(acct, "remote", "C", 3, ["\\Flagged"])
    change(acct, "local", "D", 0, expunge=True)
    change(acct, "remote", "E", 4, expunge=True)
    change(acct, "local", "E", 5, ["\\Flagged"])
    change(acct, "remote", "F/sub", 1, ["\\Draft"])
    conn = acct.login("remote")
    try:
        mail.append(conn, "G", make_message("new", 0), (), idate(100))
    finally:
        conn.logout()


def test_spread_changes_in_two_passes():
    """Flag changes and expunges in many mailboxes: each mailbox examined
    once and selected once per server, all in the same exchange, every
    change propagated (a pair changed on both sides gets the union), the
    mailbox with a new message synchronized on its own; the state saved
    lets the next run do nothing."""
    with Env(accounts=2) as env:
        acct = setup(env)
        spread_changes(acct)
        result = {}
        commands = record(env, lambda: result.setdefault("r", acct.run(["--debug"])))
        for side in SIDES:
            v = verbs(commands, side)
            # A..F/sub went through the passes; G (new message) did not
            check_eq(v.count("EXAMINE"), 6, "%s: one EXAMINE per mailbox of the passes" % side)
        # what each server had to do: remote stores in A, C, E; expunge in D
        rv, lv = verbs(commands, "remote"), verbs(commands, "local")
        check_eq(rv.count("UID EXPUNGE"), 1, "remote: one expunge (D)")
        check_eq(lv.count("UID EXPUNGE"), 1, "local: one expunge (E)")
        check(rv.count("UID STORE") >= 3 + 1 and lv.count("UID STORE") >= 3 + 1,
              "stores on both sides: %r %r" % (rv, lv))
        err = result["r"].err
        check("remote: C: " in err and "EXAMINE" in err, "the debug trace shows the scan")
        st = assert_equal_sides(acct)
        check_eq(flags_of(st, "A", 0), ("\\Flagged",), "A: local flag on both")
        check_eq(flags_of(st, "B", 1), ("$Label1", "\\Seen"), "B: remote flag on both")
        check_eq(flags_of(st, "C", 2), ("$Label2", "\\Answered"), "C: the union on both")
        check_eq(flags_of(st, "C", 3), ("\\Flagged", "\\Seen"), "C: remote flag on both")
        check_eq(flags_of(st, "D", 0), None, "D: expunged on both")
        check_eq(flags_of(st, "E", 4), None, "E: expunged on both")
        check_eq(flags_of(st, "E", 5), ("\\Flagged", "\\Seen"), "E: local flag on both")
        check_eq(flags_of(st, "F/sub", 1), ("\\Draft", "\\Seen"), "F/sub: remote flag on both")
        check_eq(len(st["G"]), 7, "G: the new message copied")
        # nothing left: the next run selects nothing and stores nothing
        commands = record(env, lambda: acct.run())
        for side in SIDES:
            v = verbs(commands, side)
            check_eq([x for x in v if x in ("EXAMINE", "UID STORE", "UID EXPUNGE", "APPEND")], [],
                     "%s: nothing done by the run after" % side)


def test_change_between_the_passes_done_in_same_run():
    """A change made on a server between the two passes (by another
    client, after the scan saw the mailbox): the mailbox is left to the
    per-mailbox path in the same run, which finds the change and settles
    it with what the passes did; one run leaves both servers equal."""
    with Env(accounts=2) as env:
        acct = setup(env)
        # only B has something to store on the remote side
        change(acct, "local", "B", 0, ["\\Flagged"])
        change(acct, "remote", "A", 0, ["$Label1"])
        change(acct, "remote", "C", 0, ["$Label1"])
        # the first UID STORE on the remote side (B's) is held while
        # another client changes B: the message being stored, and another
        def meddle(errors):
            change(acct, "remote", "B", 0, ["$Other"])
            change(acct, "remote", "B", 3, ["\\Answered"])

        code, text, errors = run_meddling(env, acct, "remote",
                                          Trap("send", k=1, verb="UID STORE", keep=True), meddle)
        check_eq(errors, [], "the change between the passes was made")
        check_eq(code, 0, "exit status:\n" + text[-2000:])
        check("EXAMINE B" in text, "B went through the scan")
        check("left to the per-mailbox path" in text, "a mailbox was done again on its own")
        for name in ("A", "C"):
            check(not re.search(r"local: C: \d+ SELECT %s \(QRESYNC \(\d+ \d+ 1:6 \(" % name, text),
                  "%s: done in the passes only" % name)
        check(re.search(r"local: C: \d+ SELECT B \(QRESYNC \(\d+ \d+ 1:6 \(", text),
              "B selected on its own, with the known-UIDs sample, on the local side")
        st = assert_equal_sides(acct)
        check_eq(flags_of(st, "B", 0), ("$Other", "\\Flagged"), "B: both changes kept (union)")
        check_eq(flags_of(st, "B", 3), ("\\Answered", "\\Seen"), "B: the other change copied")
        check_eq(flags_of(st, "A", 0), ("$Label1",), "A: remote flag on both")
        check_eq(flags_of(st, "C", 0), ("$Label1",), "C: remote flag on both")
        r = acct.run()
        check("0 message(s) added" not in r.err, "nothing left for the next run")
        check_eq(assert_equal_sides(acct), st, "the next run changes nothing")


def test_server_without_closed_marker_left_to_one_by_one():
    """A scan whose answers cannot be told apart (the remote server's
    [CLOSED] dropped on the way): nothing is sent on its strength, every
    mailbox is done one at a time, and the result is the same."""
    from pair import Pair
    from test_sync import ClosedStripper
    with Pair() as p:
        mail.fill(p.local, {name: [(make_message("c%d" % b, i), (), idate(i)) for i in range(4)]
                            for b, name in enumerate(BOXES)})
        relay = ClosedStripper(p.remote.imap_port)
        try:
            with open(p.config_path) as f:
                text = f.read()
            text = text.replace("port = %d" % p.remote.imaps_port, "port = %d" % relay.port)
            text = text.replace("type = imaps", "type = imap\nSTARTTLS = NO\ncompress = NO")
            with open(p.config_path, "w") as f:
                f.write(text)
            p.run()
            conn = p.login("local")
            try:
                for name in BOXES:
                    mail.set_flags(conn, name, [1, 2], ["\\Flagged"])
                mail.expunge(conn, "B", [3])
            finally:
                conn.logout()
            r = p.run("--debug")
            check("EXAMINE" in r.err, "the scan was tried")
            check("no [CLOSED] from the server: one mailbox at a time" in r.err,
                  "the missing marker was noticed")
            check(relay.dropped > 0, "the relay dropped [CLOSED] lines")
            a, b = p.assert_in_step()
            check_eq(b.total(), 4 * len(BOXES) - 1, "messages on remote after the expunge")
        finally:
            relay.close()


if __name__ == "__main__":
    main(globals())
