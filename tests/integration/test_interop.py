#!/usr/bin/env python3
"""The database is shared with the Perl interimap 0.5.7 (Debian package):
sync with one tool, continue with the other, with changes in between, and
never duplicate or lose a message."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pair import PERL_INTERIMAP, Pair  # noqa: E402
from imapfixture import check, check_eq, main, mail, skip  # noqa: E402
from imapfixture.mail import MessageGenerator  # noqa: E402


def need_perl():
    if not os.access(PERL_INTERIMAP, os.X_OK):
        skip("the Perl interimap is not installed")


def populate(p, seed):
    g = MessageGenerator(seed)
    mail.fill(p.local, {"INBOX": g.mailbox(12), "Work": g.mailbox(8), "Work/Old": g.mailbox(5)})
    g2 = MessageGenerator(seed + 1)
    mail.fill(p.remote, {"INBOX": g2.mailbox(6), "Lists": g2.mailbox(9)})
    return 12 + 8 + 5 + 6 + 9


def change(p, seed):
    """New mail, flags and expunges on both sides; returns the net change."""
    g = MessageGenerator(seed)
    lc, rc = p.login("local"), p.login("remote")
    try:
        for _ in range(3):
            mail.append(lc, "Work", g.message())
        for _ in range(2):
            mail.append(rc, "INBOX", g.message())
        lu = mail.uids(lc, "INBOX")
        mail.set_flags(lc, "INBOX", lu[:4], ["\\Answered", "$Todo"])
        ru = mail.uids(rc, "Lists")
        mail.set_flags(rc, "Lists", ru[:3], ["\\Seen"], mode="-")
        mail.expunge(rc, "Lists", ru[-2:])
        mail.expunge(lc, "Work/Old", mail.uids(lc, "Work/Old")[:1])
    finally:
        lc.logout()
        rc.logout()
    return 3 + 2 - 2 - 1


def test_perl_then_ours_then_perl():
    need_perl()
    with Pair() as p:
        total = populate(p, 1)
        p.run_perl()
        p.assert_in_step()
        total += change(p, 10)
        r = p.run()
        a, b = p.assert_in_step()
        check_eq(a.total(), total, "messages after ours continued the Perl database")
        total += change(p, 20)
        p.run_perl()
        a, b = p.assert_in_step()
        check_eq(a.total(), total, "messages after Perl continued our database")
        # nothing left to do for either tool
        r = p.run()
        check("added" not in r.err, "no copies on a synchronized pair: %r" % r.err)
        p.run_perl()
        a, b = p.assert_in_step()
        check_eq(a.total(), total, "stable")


def test_ours_then_perl_then_ours():
    need_perl()
    with Pair() as p:
        total = populate(p, 2)
        p.run()
        p.assert_in_step()
        total += change(p, 30)
        p.run_perl()
        a, b = p.assert_in_step()
        check_eq(a.total(), total, "Perl continued our database")
        total += change(p, 40)
        p.run()
        a, b = p.assert_in_step()
        check_eq(a.total(), total, "ours continued again")


def test_different_delimiters_shared_database():
    need_perl()
    with Pair(local_sep="/", remote_sep=".") as p:
        total = populate(p, 3)
        p.run_perl()
        total += change(p, 50)
        p.run()
        a, b = p.snaps()
        check_eq(a.diff(b, sep="/"), "", "in step across delimiters")
        check_eq(a.total(), total, "message count")
        check_eq(a.duplicates(), {}, "no duplicates")


def test_perl_reads_database_created_by_us():
    """Schema and user_version are those of the Perl tool."""
    need_perl()
    with Pair() as p:
        populate(p, 4)
        p.run()
        rows = p.db_rows("PRAGMA user_version")
        check_eq(rows[0][0], 1, "user_version")
        tables = {r[0] for r in p.db_rows("SELECT name FROM sqlite_master WHERE type='table'")}
        check({"mailboxes", "local", "remote", "mapping"} <= tables, "tables: %r" % tables)
        r = p.run_perl()
        check("Creating new schema" not in r.err, "Perl did not recreate the schema")
        p.assert_in_step()


if __name__ == "__main__":
    main(globals())
