#!/usr/bin/env python3
"""Fresh mailboxes: mailboxes created on one side in this run are copied a
window at a time, their commands pipelined across mailboxes (EXAMINE and
FETCH of each on the source, APPENDs streamed into the target, then an
EXAMINE and a flag listing of each on the target), then checked. Real
Dovecot servers behind the command relays of the crash tests (plain IMAP,
so that the relays read the commands); the Perl interimap side by side
on the database they leave."""

import base64
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from sweep import SIDES, Env, idate, make_message, msgid_of, run_meddling, uid_of  # noqa: E402
from pair import PERL_INTERIMAP, Pair  # noqa: E402
from imapfixture import check, check_eq, main, mail, skip  # noqa: E402
from imapfixture.relay import Trap  # noqa: E402

# local-only mailboxes (copied to the remote), remote-only ones (copied to
# the local side): nested, non-ASCII, empty, keywords
LOCAL_ONLY = {"Dir/Sub": 3, "Réunion": 2, "Empty": 0, "A": 4, "B": 1, "C": 5}
REMOTE_ONLY = {"R1": 2, "R2/Deep": 3, "R3": 0}


def spec_of(tag, boxes):
    spec = {}
    for b, (name, n) in enumerate(sorted(boxes.items())):
        spec[name] = [(make_message("%s%d" % (tag, b), i),
                       ("\\Seen", "$Label%d" % i) if i % 2 else ("\\Flagged",), idate(i))
                      for i in range(n)]
    return spec


def fill(acct):
    acct.fill("local", dict(spec_of("l", LOCAL_ONLY), INBOX=[(make_message("in", 0), (),
                                                               idate(0))]))
    acct.fill("remote", spec_of("r", REMOTE_ONLY))


def selected_names(debug, side, verb):
    """The mailbox names the given side was sent `verb` for, from the
    --debug trace."""
    out = []
    for m in re.finditer(r'^%s: C: \d+ %s ("?)(.*?)\1(?: \(.*)?$' % (side, verb), debug, re.M):
        out.append(mail.mutf7_decode(m.group(2)))
    return out


def assert_equal_sides(acct):
    st = acct.state()
    check_eq(st["local"], st["remote"], "both servers hold the same messages and flags")
    for side in SIDES:
        for name, msgs in st[side].items():
            ids = [m for m, _f in msgs]
            check_eq(len(ids), len(set(ids)), "%s %s: no duplicate" % (side, name))
    return st["local"]


def assert_next_run_idle(acct, st):
    """The next run selects no mailbox but INBOX and changes nothing: both
    sides still hold `st`."""
    r = acct.run(["--debug"])
    check(not re.search(r"C: \d+ (SELECT|EXAMINE) (?!INBOX )", r.err),
          "the next run selects nothing:\n" + r.err[-3000:])
    check_eq(assert_equal_sides(acct), st, "the next run changes nothing")


def test_windows_copy_both_ways():
    """Mailboxes on one side only, in both directions, go through the
    windows: no SELECT of theirs on either server, EXAMINE on both; one
    run leaves both servers equal, the next has nothing to do."""
    with Env(accounts=2) as env:
        acct = env.account()
        fill(acct)
        text = acct.run(["--debug"]).err
        fresh = set(LOCAL_ONLY) | set(REMOTE_ONLY)
        for side in SIDES:
            selected = set(selected_names(text, side, "SELECT"))
            check_eq(selected & fresh, set(), "%s: no mailbox created in this run was selected on "
                     "its own" % side)
            examined = selected_names(text, side, "EXAMINE")
            check_eq(sorted(set(examined) & fresh), sorted(fresh),
                     "%s: every fresh mailbox was examined (copy or check)" % side)
        check("left to the per-mailbox path" not in text, "no mailbox left the windows")
        st = assert_equal_sides(acct)
        for name, n in list(LOCAL_ONLY.items()) + list(REMOTE_ONLY.items()):
            check_eq(len(st[name]), n, "%s: %d messages" % (name, n))
        check_eq(st["A"][1][1], ("$Label1", "\\Seen"), "keywords and flags copied")
        r = acct.run(["--debug"])
        # (INBOX is selected behind the login, speculatively, and let go)
        check(not re.search(r"C: \d+ (SELECT|EXAMINE) (?!INBOX )", r.err),
              "the next run selects nothing:\n" + r.err[-3000:])
        check("nothing to do" in r.err or "0 message(s) added" not in r.err,
              "the next run has nothing to do")
        check_eq(assert_equal_sides(acct), st, "the next run changes nothing")


def test_changes_between_the_passes_left_to_one_by_one():
    """Between the copy and the check (the target's first EXAMINE held by
    the relay), another client delivers a message into one fresh mailbox
    on the target, changes the flags of a copy in another and expunges a
    copy in a third: those three are left to the per-mailbox path in the
    same run, which settles them; the others are saved by the window.
    Nothing is lost or doubled."""
    with Env(accounts=2) as env:
        acct = env.account()
        fill(acct)
        def meddle(errors):
            conn = acct.login("remote")
            try:
                mail.append(conn, "A", make_message("late", 0), ("\\Answered",), idate(9))
                uid = uid_of(conn, "B", msgid_of("l1", 0))
                if uid is None:
                    errors.append("B's copy is not on the remote side")
                else:
                    mail.set_flags(conn, "B", [uid], ["\\Answered", "$Other"])
                uid = uid_of(conn, "C", msgid_of("l2", 1))
                if uid is None:
                    errors.append("C's copy is not on the remote side")
                else:
                    mail.expunge(conn, "C", [uid])
            finally:
                conn.logout()

        # the check's first flag listing on the target (the remote side's
        # first EXAMINEs are those of the copy from it)
        code, text, errors = run_meddling(
            env, acct, "remote", Trap("send", k=1, verb="UID FETCH (UID FLAGS)", keep=True),
            meddle)
        check_eq(errors, [], "the changes between the passes were made")
        check_eq(code, 0, "exit status:\n" + text[-3000:])
        check_eq(text.count("left to the per-mailbox path"), 3,
                 "three mailboxes left the window:\n" + text[-3000:])
        st = assert_equal_sides(acct)
        check(msgid_of("late", 0) in [m for m, _f in st["A"]], "A: the late message copied back")
        check_eq(len(st["A"]), LOCAL_ONLY["A"] + 1, "A: its messages and the late one")
        b0 = [f for m, f in st["B"] if m == msgid_of("l1", 0)]
        check_eq(b0, [("$Other", "\\Answered", "\\Flagged")], "B: the flag change reached the local side")
        check(msgid_of("l2", 1) not in [m for m, _f in st["C"]], "C: the expunge propagated")
        check_eq(len(st["C"]), LOCAL_ONLY["C"] - 1, "C: the other messages kept")
        r = acct.run()
        check("message(s) added" not in r.err, "nothing left for the next run:\n" + r.err)
        check_eq(assert_equal_sides(acct), st, "the next run changes nothing")


def test_arrivals_in_known_mailboxes():
    """Mailboxes synchronized before, with new messages on the remote side
    only: copied a window at a time too (EXAMINE with QRESYNC from the
    saved state on both sides, no SELECT). During the check another client
    delivers a message to one of them on the local side and changes an
    old message of another there: those two are left to the per-mailbox
    path, which settles them in the same run."""
    boxes = {"K1": 3, "K2": 2, "K3/Sub": 2, "K4": 4, "K5": 1}
    with Env(accounts=2) as env:
        acct = env.account()
        acct.fill("local", spec_of("k", boxes))
        acct.run()
        conn = acct.login("remote")
        try:
            for b, name in enumerate(sorted(boxes)):
                for i in range(2):
                    mail.append(conn, name, make_message("new%d" % b, i),
                                ("\\Seen",) if i else (), idate(20 + i))
        finally:
            conn.logout()

        def meddle(errors):
            conn = acct.login("local")
            try:
                mail.append(conn, "K1", make_message("late", 0), (), idate(30))
                uid = uid_of(conn, "K2", msgid_of("k1", 0))
                if uid is None:
                    errors.append("K2's first message is not on the local side")
                else:
                    mail.set_flags(conn, "K2", [uid], ["$Meddled"])
            finally:
                conn.logout()

        code, text, errors = run_meddling(
            env, acct, "local", Trap("send", k=1, verb="UID FETCH (UID FLAGS)", keep=True), meddle)
        check_eq(errors, [], "the changes during the check were made")
        check_eq(code, 0, "exit status:\n" + text[-3000:])
        for name in ("K3/Sub", "K4", "K5"):
            check_eq(selected_names(text, "local", "SELECT").count(name), 0,
                     "%s: not selected on its own" % name)
        check(re.search(r"remote: C: \d+ EXAMINE K4 \(QRESYNC \(", text),
              "K4 examined from its saved state on the source")
        check_eq(text.count("left to the per-mailbox path"), 2,
                 "K1 and K2 left the window:\n" + text[-3000:])
        st = assert_equal_sides(acct)
        for b, name in enumerate(sorted(boxes)):
            check_eq(len(st[name]), boxes[name] + 2 + (name == "K1"),
                     "%s: its messages, the new ones (and the late one)" % name)
        k2 = [f for m, f in st["K2"] if m == msgid_of("k1", 0)]
        check_eq(k2, [("$Meddled", "\\Flagged")], "K2: the change reached the remote side")
        assert_next_run_idle(acct, st)


EXCHANGE_BOXES = {"X1": 3, "X2": 2, "X3/Sub": 2, "X4": 4, "X5": 1, "X6": 2}


def exchange_setup(acct):
    """Mailboxes synchronized, then two new messages on each side of each,
    and an old message of X6 changed on the local side."""
    acct.fill("local", spec_of("x", EXCHANGE_BOXES))
    acct.run()
    for side, tag in (("local", "l"), ("remote", "r")):
        conn = acct.login(side)
        try:
            for b, name in enumerate(sorted(EXCHANGE_BOXES)):
                for i in range(2):
                    mail.append(conn, name, make_message("%snew%d" % (tag, b), i),
                                ("\\Seen", "$K%d" % i) if i else (), idate(20 + i))
            if side == "local":
                uid = uid_of(conn, "X6", msgid_of("x5", 0))
                check(uid is not None, "X6's first message is on the local side")
                mail.set_flags(conn, "X6", [uid], ["$Old"])
        finally:
            conn.logout()


def exchange_meddle(acct, side, errors):
    """During `side`'s check: on the local side, the flags of a local new
    message already copied (X1) changed; on the remote side, a remote new
    message already copied (X2) expunged."""
    box, msgid = ("X1", msgid_of("lnew0", 1)) if side == "local" else ("X2", msgid_of("rnew1", 0))
    conn, other = acct.login(side), acct.login("remote" if side == "local" else "local")
    try:
        uid = uid_of(conn, box, msgid)
        if uid is None or uid_of(other, box, msgid) is None:
            errors.append("%s's new %s message was not copied before the check" % (box, side))
        elif side == "local":
            mail.set_flags(conn, box, [uid], ["$Meddled"])
        else:
            mail.expunge(conn, box, [uid])
    finally:
        conn.logout()
        other.logout()


def test_exchanges_in_known_mailboxes():
    """Mailboxes synchronized before, with new messages on both sides: each
    side's are copied to the other a window at a time, then each side is
    checked for its own and the other's (no SELECT). While one side's
    check is held, another client changes, on that side, a new message
    already copied (the flags of a local one; a remote one expunged): that
    mailbox is left to the per-mailbox path, which settles it in the same
    run. A mailbox whose old message changed too is left to it as well."""
    with Env(accounts=4) as env:
        for side in SIDES:
            acct = env.account()
            exchange_setup(acct)
            code, text, errors = run_meddling(
                env, acct, side, Trap("send", k=1, verb="UID FETCH (UID FLAGS)", keep=True),
                lambda errors: exchange_meddle(acct, side, errors))
            check_eq(errors, [], "the change during the %s check was made" % side)
            check_eq(code, 0, "exit status:\n" + text[-3000:])
            for s in SIDES:
                for name in ("X3/Sub", "X4", "X5"):
                    check_eq(selected_names(text, s, "SELECT").count(name), 0,
                             "%s: %s not selected on its own" % (s, name))
                check(re.search(r"%s: C: \d+ EXAMINE X4 \(QRESYNC \(" % s, text),
                      "X4 examined from its saved state on the %s side" % s)
            meddled = "X1" if side == "local" else "X2"
            left = re.findall(r"^(?:local|remote)\((\S+)\): .*\n(?:.*\n)?left to the "
                              r"per-mailbox path", text, re.M)
            check_eq(text.count("left to the per-mailbox path"), 2,
                     "%s and X6 left the window:\n%s" % (meddled, text[-3000:]))
            check_eq(sorted(set(left)), sorted([meddled, "X6"]), "the mailboxes left")
            st = assert_equal_sides(acct)
            for name, n in EXCHANGE_BOXES.items():
                check_eq(len(st[name]), n + 4 - (name == meddled == "X2"),
                         "%s: its messages and the new ones of both sides" % name)
            if side == "local":
                x1 = [f for m, f in st["X1"] if m == msgid_of("lnew0", 1)]
                check_eq(x1, [("$K1", "$Meddled", "\\Seen")],
                         "X1: the change reached the remote side")
            else:
                check(msgid_of("rnew1", 0) not in [m for m, _f in st["X2"]],
                      "X2: the expunge propagated")
            x6 = [f for m, f in st["X6"] if m == msgid_of("x5", 0)]
            check_eq(x6, [("$Old", "\\Flagged")], "X6: the old message's change propagated")
            assert_next_run_idle(acct, st)


def large_message(tag, i, size):
    """A message of about `size` bytes of base64 lines (random, so that
    nothing compresses it away), with a unique Message-ID."""
    head = make_message(tag, i, size=1).split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
    raw = base64.encodebytes(os.urandom(size * 3 // 4)).replace(b"\n", b"\r\n")
    return head + raw


def body_of(conn, mailbox, msgid):
    uid = uid_of(conn, mailbox, msgid)
    if uid is None:
        return None
    conn.select(mail.wire_name(mailbox), readonly=True)
    typ, data = conn.uid("FETCH", str(uid), "(BODY.PEEK[])")
    conn.close()
    parts = [d for d in data if isinstance(d, tuple)]
    return parts[0][1] if typ == "OK" and parts else None


def test_exchange_of_large_messages():
    """New messages of 7 MB on both sides of three known mailboxes: the
    local server's copy is held in memory while the remote server's
    streams, both servers sending at once (neither waits on the other), up
    to 16 MB: the third mailbox's local message does not fit, so that
    mailbox alone is left to the per-mailbox path, which copies it in the
    same run. Every message arrives whole."""
    boxes = {"L1": 1, "L2": 1, "L3": 1}
    size = 7 << 20
    with Env(accounts=1) as env:
        acct = env.account()
        acct.fill("local", spec_of("big", boxes))
        acct.run()
        sent = {}
        for side, tag in (("local", "lbig"), ("remote", "rbig")):
            conn = acct.login(side)
            try:
                for b, name in enumerate(sorted(boxes)):
                    msg = large_message(tag, b, size)
                    sent[(name, msgid_of(tag, b))] = msg
                    mail.append(conn, name, msg, ("\\Seen",), idate(30 + b))
            finally:
                conn.logout()
        r = acct.run(["--debug"], timeout=300)
        check_eq(r.code, 0, "exit status:\n" + r.err[-3000:])
        text = r.err
        fetch = re.search(r"^local: C: \d+ UID FETCH .*BODY\.PEEK", text, re.M)
        append = re.search(r"^local: C: \d+ APPEND ", text, re.M)
        check(fetch and append and fetch.start() < append.start(),
              "the local server's FETCH went out before the APPENDs into it")
        check(re.search(r"^remote: C: \d+ UID FETCH .*BODY\.PEEK", text, re.M),
              "the remote server's copy ran in the window")
        left = re.findall(r"^(?:local|remote)\((\S+)\): .*\n(?:.*\n)?left to the "
                          r"per-mailbox path", text, re.M)
        check_eq(len(left), 1, "one mailbox left the window:\n" + text[-3000:])
        check(left[0] in boxes, "the one left is a mailbox of the exchange: %r" % left)
        st = assert_equal_sides(acct)
        for name in boxes:
            check_eq(len(st[name]), 3, "%s: its message and a new one from each side" % name)
        for (name, msgid), msg in sorted(sent.items()):
            other = "remote" if msgid.startswith("<lbig") else "local"
            conn = acct.login(other)
            try:
                got = body_of(conn, name, msgid)
            finally:
                conn.logout()
            check(got == msg, "%s %s: the copy on the %s side is whole (%s bytes of %d)"
                  % (name, msgid, other, got and len(got), len(msg)))
        assert_next_run_idle(acct, st)


def turnarounds(boxes, arrivals=False, both=False):
    """Turn-arounds on the remote link of a first run copying `boxes` new
    mailboxes to it, or (arrivals) of a run copying one new message in
    each of them from it, the mailboxes known already (both: and one from
    the local side to it).

    The relay delays each direction by 40 ms: a turn-around is a reply
    read after a command, so at no delay a slow client (a sanitizer build)
    whose window's commands leave over a few milliseconds would see replies
    to the first ones land between the others and count turn-arounds that
    are not waits. With the delay, the commands of one burst all pass
    before the first reply can come back."""
    with Pair() as p:
        relays = p.use_relays(("remote",), delay_ms=40)
        spec = {"M%03d" % b: [(make_message("t%d" % b, i), (), idate(i)) for i in range(2)]
                for b in range(boxes)}
        mail.fill(p.local, spec)
        if arrivals:
            p.run()
            for side in ("remote", "local") if both else ("remote",):
                conn = p.login(side)
                try:
                    for b, name in enumerate(spec):
                        mail.append(conn, name, make_message("n%s%d" % (side, b), 0), (),
                                    idate(5))
                finally:
                    conn.logout()
        relays["remote"].ctl.reset()
        r = p.run("--debug")
        turns = relays["remote"].ctl.stats()["turnarounds"]
        check_eq(set(selected_names(r.err, "remote", "SELECT")) & set(spec), set(),
                 "%d mailboxes: none selected on its own (the windows took them)" % boxes)
        p.assert_in_step()
        return turns


def test_round_trips_do_not_grow_with_the_mailboxes():
    """The remote link waits as often for 40 new mailboxes as for 4, and
    for new mail in 40 known mailboxes as in 4, on one side or on both: a
    window's commands are in flight together."""
    few, many = turnarounds(4), turnarounds(40)
    check(many <= few + 1, "copying 40 new mailboxes: %d turn-arounds, 4: %d" % (many, few))
    few, many = turnarounds(4, arrivals=True), turnarounds(40, arrivals=True)
    check(many <= few + 1, "arrivals in 40 mailboxes: %d turn-arounds, 4: %d" % (many, few))
    few, many = turnarounds(4, True, True), turnarounds(40, True, True)
    check(many <= few + 1, "new mail on both sides of 40 mailboxes: %d turn-arounds, 4: %d"
          % (many, few))


def test_perl_tool_takes_over_the_database():
    """The database the windows leave is one the Perl interimap 0.5.7
    continues from: it finds nothing to do, then propagates a change."""
    if not os.path.exists(PERL_INTERIMAP):
        skip("%s is not installed" % PERL_INTERIMAP)
    with Pair() as p:
        mail.fill(p.local, spec_of("l", LOCAL_ONLY))
        mail.fill(p.remote, spec_of("r", REMOTE_ONLY))
        r = p.run("--debug")
        fresh = set(LOCAL_ONLY) | set(REMOTE_ONLY)
        for side in ("local", "remote"):
            check_eq(set(selected_names(r.err, side, "SELECT")) & fresh, set(),
                     "%s: no fresh mailbox selected on its own" % side)
            check_eq(set(selected_names(r.err, side, "EXAMINE")) & fresh, fresh,
                     "%s: every fresh mailbox examined by the windows" % side)
        check("left to the per-mailbox path" not in r.err, "none left the windows")
        p.assert_in_step()
        perl = p.run_perl()
        check(not re.search(r"Added|message\(s\) added|ERROR|WARNING", perl.err),
              "the Perl tool finds nothing to do:\n" + perl.err)
        conn = p.login("remote")
        try:
            mail.append(conn, "Dir/Sub", make_message("perl", 0), (), idate(3))
        finally:
            conn.logout()
        perl = p.run_perl()
        check("1 message(s) added" in perl.err or "Added 1 UID" in perl.err,
              "the Perl tool copied the new message:\n" + perl.err)
        p.assert_in_step()
        r = p.run()
        check("added" not in r.err, "and we find nothing to do after it:\n" + r.err)


if __name__ == "__main__":
    main(globals())
