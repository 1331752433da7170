#!/usr/bin/env python3
"""--dry-run: on the demo servers (first run, no database yet) and again
after changes on both sides, a dry run changes neither server (contents,
flags, subscriptions compared before and after) nor the database (not
created; bytes and mtime unchanged), and what it says it would do is what
the real run that follows does, line for line: mailboxes created and
subscribed, messages added (from the same source UIDs), removed, flags
stored, conflicts."""

import hashlib
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pair import Pair  # noqa: E402
from imapfixture import check, check_eq, main, mail  # noqa: E402
from imapfixture.mail import MessageGenerator  # noqa: E402

PREFIX = r"^(?P<who>[a-z]+)(?:\((?P<mbox>[^)]*)\))?: "


def uids(text):
    """'1:3,7' -> {1, 2, 3, 7} (ranges either way)"""
    out = set()
    for part in text.split(","):
        a, _, b = part.partition(":")
        lo, hi = sorted((int(a), int(b or a)))
        out.update(range(lo, hi + 1))
    return out


def predicted(err):
    """The dry run's lines as events comparable with a real run's."""
    events = set()
    adds = {}
    for line in err.splitlines():
        m = re.match(PREFIX + r"Would (create mailbox|subscribe to) (.+)$", line)
        if m:
            verb = "created" if m.group(3).startswith("create") else "subscribed"
            events.add((m.group("who"), verb, m.group(4)))
            continue
        m = re.match(PREFIX + r"Would add (\d+) message\(s\) from (local|remote) UID\(s\) (\S+) \(",
                     line)
        if m:
            got = uids(m.group(5))
            check_eq(len(got), int(m.group(3)), "count and UIDs agree: %r" % line)
            adds.setdefault((m.group("who"), m.group("mbox")), set()).update(got)
            continue
        m = re.match(PREFIX + r"Would remove (\d+) UID\(s\) (\S+)$", line)
        if m:
            events.add((m.group("who"), m.group("mbox"), "removed", frozenset(uids(m.group(4)))))
            continue
        m = re.match(PREFIX + r"Would update flags \((.*)\) for UID (\S+)$", line)
        if m:
            events.add((m.group("who"), m.group("mbox"), "flags", m.group(3),
                        frozenset(uids(m.group(4)))))
            continue
        m = re.match(r"^WARNING: (Conflicting flag update .*)\. Would set both to the union "
                     r"\((.*)\)\.$", line)
        if m:
            events.add(("conflict", m.group(1), m.group(2)))
            continue
        check(not line.startswith(("local", "remote", "database", "WARNING", "ERROR")) or
              "IMAP traffic" in line, "a dry-run line the test does not know: %r" % line)
    for key, got in adds.items():
        events.add(key + ("added", frozenset(got)))
    return events


def done(err):
    """The same events, from the real run's lines."""
    events = set()
    adds = {}
    for line in err.splitlines():
        m = re.match(PREFIX + r"(Created mailbox|Subscribe to) (.+)$", line)
        if m:
            verb = "created" if m.group(3).startswith("Created") else "subscribed"
            events.add((m.group("who"), verb, m.group(4)))
            continue
        m = re.match(PREFIX + r"Added (\d+) UID\(s\) (\S+) (<-|->) (\S+)$", line)
        if m:
            # the source UIDs: the right (remote) side when copying to local
            src = m.group(6) if m.group(5) == "<-" else m.group(4)
            adds.setdefault((m.group("who"), m.group("mbox")), set()).update(uids(src))
            continue
        m = re.match(PREFIX + r"Removed (\d+) UID\(s\) (\S+)$", line)
        if m:
            events.add((m.group("who"), m.group("mbox"), "removed", frozenset(uids(m.group(4)))))
            continue
        m = re.match(PREFIX + r"Updated flags \((.*)\) for UID (\S+)$", line)
        if m:
            events.add((m.group("who"), m.group("mbox"), "flags", m.group(3),
                        frozenset(uids(m.group(4)))))
            continue
        m = re.match(r"^WARNING: (Conflicting flag update .*)\. Setting both to the union "
                     r"\((.*)\)\.$", line)
        if m:
            events.add(("conflict", m.group(1), m.group(2)))
    for key, got in adds.items():
        events.add(key + ("added", frozenset(got)))
    return events


def db_state(p):
    if not os.path.exists(p.db):
        return None
    with open(p.db, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest(), os.stat(p.db).st_mtime_ns


def dry_then_real(p, what):
    """Runs --dry-run, checks that nothing changed, then the real run;
    returns both outputs' events, which must agree."""
    before = p.snaps()
    db_before = db_state(p)
    dry = p.run("--dry-run")
    after = p.snaps()
    for side, a, b in (("local", before[0], after[0]), ("remote", before[1], after[1])):
        check_eq(a.diff(b), "", "%s: the dry run changed the %s server" % (what, side))
        check_eq(a.subscribed(), b.subscribed(), "%s: %s subscriptions" % (what, side))
    check_eq(db_state(p), db_before, "%s: the database is untouched" % what)
    check(re.search(r"^Dry run: \d+ mailbox\(es\) in .*; nothing was changed$", dry.err, re.M),
          "%s: the dry run says it changed nothing: %r" % (what, dry.err))
    real = p.run()
    p.assert_in_step()
    want, got = predicted(dry.err), done(real.err)
    if want != got:
        raise AssertionError("%s: the dry run said\n  %r\nthe real run did\n  %r\n--- dry\n%s"
                             "--- real\n%s" % (what, sorted(want - got, key=str),
                                               sorted(got - want, key=str), dry.err, real.err))
    return want


def changes(p):
    g = MessageGenerator(77)
    lc, rc = p.login("local"), p.login("remote")
    try:
        mail.append(lc, "INBOX", g.message())
        mail.append(rc, "Sent", g.message())
        mail.append(rc, "Sent", g.message())
        mail.set_flags(lc, "Archive", mail.uids(lc, "Archive")[:3], ["\\Flagged", "$Todo"])
        mail.set_flags(rc, "INBOX", mail.uids(rc, "INBOX")[-2:], ["\\Seen"], mode="-")
        mail.expunge(rc, "Archive", mail.uids(rc, "Archive")[5:7])
        mail.expunge(lc, "Drafts", mail.uids(lc, "Drafts")[:1])
        # the same message changed on both sides: a conflict
        mail.set_flags(lc, "Sent", mail.uids(lc, "Sent")[:1], ["\\Answered"])
        mail.set_flags(rc, "Sent", mail.uids(rc, "Sent")[:1], ["$Later"])
        mail.create(rc, "New")
        mail.subscribe(rc, "New")
        mail.append(rc, "New", g.message())
    finally:
        lc.logout()
        rc.logout()


def test_dry_run_then_real_run():
    with Pair() as p:
        spec = mail.populate(p.local)
        g = MessageGenerator(5)
        mail.fill(p.remote, {"INBOX": g.mailbox(3), "Lists": g.mailbox(2)})
        check(not os.path.exists(p.db), "no database before the first run")
        events = dry_then_real(p, "first run")
        check(any(e[1:2] == ("created",) for e in events), "mailboxes to create: %r" % events)
        added = sum(len(e[3]) for e in events if len(e) == 4 and e[2] == "added")
        check_eq(added, sum(spec.values()) + 5, "every message of both sides is predicted")
        changes(p)
        events = dry_then_real(p, "after changes")
        kinds = {e[2] if len(e) > 3 else e[1] if e[0] != "conflict" else "conflict"
                 for e in events}
        for kind in ("created", "subscribed", "added", "removed", "flags", "conflict"):
            check(kind in kinds, "the changes include %s: %r" % (kind, sorted(events, key=str)))
        # nothing left: the dry run predicts nothing, and is right
        events = dry_then_real(p, "in step")
        check_eq(events, set(), "nothing to do")


def test_dry_run_refuses_what_it_cannot_predict():
    with Pair() as p:
        for args in (["--watch"], ["--notify"], ["--repair"], ["--delete", "x"],
                     ["--rename", "a", "b"]):
            r = p.run("--dry-run", *args, expect=2)
            check("--dry-run" in r.err and len(r.err.splitlines()) == 1,
                  "one line naming --dry-run: %r" % r.err)
        check(not os.path.exists(p.db), "no database created")


if __name__ == "__main__":
    main(globals())
