#!/usr/bin/env python3
"""--delete, --rename (with --target) and --repair against real servers."""

import os
import sqlite3
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pair import Pair  # noqa: E402
from imapfixture import check, check_eq, main, mail  # noqa: E402
from imapfixture.mail import MessageGenerator  # noqa: E402


def setup(p):
    g = MessageGenerator(3)
    mail.fill(p.local, {"INBOX": g.mailbox(4), "Old": g.mailbox(3), "Old/Child": g.mailbox(2),
                        "Keep": g.mailbox(2)})
    p.run()
    p.assert_in_step()


def db_names(p):
    return sorted(r[0].decode() if isinstance(r[0], bytes) else r[0]
                  for r in p.db_rows("SELECT mailbox FROM mailboxes"))


def test_delete_all_targets_not_recursive():
    with Pair() as p:
        setup(p)
        r = p.run("--delete", "Keep")
        a, b = p.snaps()
        check("Keep" not in a.names() and "Keep" not in b.names(), "deleted on both servers")
        check("Keep" not in db_names(p), "forgotten by the database")
        check_eq(p.db_rows("SELECT COUNT(*) FROM mapping m LEFT JOIN mailboxes x ON x.idx = m.idx "
                           "WHERE x.idx IS NULL")[0][0], 0, "no orphan mapping rows")
        p.run("--delete", "Old")
        a, b = p.snaps()
        check("Old/Child" in a.names() and "Old/Child" in b.names(), "children survive")
        check("Old\0Child" in db_names(p), "child kept in the database")
        # a following sync is clean
        p.run()
        p.assert_in_step()


def test_delete_one_target_then_sync_reports():
    with Pair() as p:
        setup(p)
        p.run("--delete", "--target=remote", "Keep")
        a, b = p.snaps()
        check("Keep" in a.names() and "Keep" not in b.names(), "only remote deleted")
        check("Keep" in db_names(p), "database untouched")
        r = p.run(expect=None)
        check_eq(r.code, 4, "partial failure status (%r)" % r)
        check("--target=database --delete Keep" in r.err, "suggests the target: %r" % r.err)
        p.run("--delete", "--target=database,local", "Keep")
        p.run()
        p.assert_in_step()


def test_delete_inbox_refused():
    with Pair() as p:
        setup(p)
        r = p.run("--delete", "inbox", expect=None)
        check(r.code != 0 and "INBOX" in r.err, "INBOX refused: %r" % r)


def test_rename_recursive_all_targets():
    with Pair() as p:
        setup(p)
        p.run("--rename", "Old", "New/Place")
        a, b = p.snaps()
        for s in (a, b):
            names = s.names()
            check("New/Place" in names and "New/Place/Child" in names, "renamed: %r" % names)
            check("Old" not in names and "Old/Child" not in names, "old names gone: %r" % names)
        names = db_names(p)
        check("New\0Place" in names and "New\0Place\0Child" in names, "database: %r" % names)
        # the next sync copies nothing again
        r = p.run()
        check("added" not in r.err, "no re-copy after rename: %r" % r.err)
        p.assert_in_step()


def test_rename_refused_when_dest_exists():
    with Pair() as p:
        setup(p)
        rc = p.login("remote")
        try:
            mail.create(rc, "Taken")
        finally:
            rc.logout()
        r = p.run("--rename", "Keep", "Taken", expect=None)
        check(r.code != 0, "refused")
        check("--target=remote --delete Taken" in r.err, "suggests a target: %r" % r.err)
        a, b = p.snaps()
        check("Keep" in a.names() and "Keep" in b.names(), "nothing renamed")


def test_rename_database_only():
    with Pair() as p:
        setup(p)
        lc, rc = p.login("local"), p.login("remote")
        try:
            mail.rename(lc, "Keep", "Kept")
            mail.rename(rc, "Keep", "Kept")
        finally:
            lc.logout()
            rc.logout()
        p.run("--rename", "--target=database", "Keep", "Kept")
        r = p.run()
        check("added" not in r.err, "renamed outside: no re-copy (%r)" % r.err)
        p.assert_in_step()


def test_repair_planted_anomalies():
    with Pair() as p:
        setup(p)
        con = sqlite3.connect(p.db)
        idx = con.execute("SELECT idx FROM mailboxes WHERE mailbox = CAST('INBOX' AS BLOB)").fetchone()[0]
        pairs = con.execute("SELECT lUID, rUID FROM mapping WHERE idx = ? ORDER BY lUID",
                            (idx,)).fetchall()
        # 1. a deleted mapping row: message on both servers, not in the database
        con.execute("DELETE FROM mapping WHERE idx = ? AND lUID = ?", (idx, pairs[0][0]))
        # 2. an extra row pointing to messages that do not exist
        con.execute("INSERT INTO mapping (idx, lUID, rUID) VALUES (?, 900, 901)", (idx,))
        con.commit()
        con.close()
        # 3. flags edited on one side, invisible to QRESYNC: same HIGHESTMODSEQ
        rc = p.login("remote")
        try:
            mail.set_flags(rc, "INBOX", [pairs[1][1]], ["$Repaired"])
        finally:
            rc.logout()
        r = p.run("--repair", "INBOX")
        err = r.err
        check("(900,901)" in err and "vanished" in err, "dead pair reported: %r" % err)
        check("No match for" in err and "UID %d" % pairs[0][0] in err, "unmapped reported: %r" % err)
        a, b = p.snaps()
        labelled = [m for m in a.mailboxes["INBOX"].messages if "$Repaired" in m.flags]
        check_eq(len(labelled), 1, "flag repaired on local")
        check_eq(p.db_rows("SELECT COUNT(*) FROM mapping WHERE lUID = 900")[0][0], 0,
                 "dead row dropped")
        # the unmapped message was copied again (the reference tool's rule:
        # it cannot know the two are the same), so one duplicate per side
        check_eq(len(a.mailboxes["INBOX"].messages), 5, "local INBOX count")
        p.run()
        a2, b2 = p.snaps()
        check_eq(a2.diff(b2), "", "in step after repair")


def test_repair_propagates_user_expunges():
    """What the user expunged on one side since the last run is expunged on
    the other by --repair, as an ordinary run would do, never downloaded
    again (the server reports it VANISHED since the saved state)."""
    with Pair() as p:
        setup(p)
        lc, rc = p.login("local"), p.login("remote")
        try:
            mail.expunge(lc, "INBOX", mail.uids(lc, "INBOX")[:2])
            mail.expunge(rc, "Keep", mail.uids(rc, "Keep")[:1])
        finally:
            lc.logout()
            rc.logout()
        before = p.snaps()[0].total()
        check_eq(before, 11 - 2, "local after the user's expunges")
        r = p.run("--repair")
        check("Redownloading" not in r.err and "disappeared" not in r.err,
              "nothing downloaded again: %r" % r.err)
        a, b = p.assert_in_step()
        check_eq(len(a.mailboxes["INBOX"].messages), 2, "INBOX: the two expunges stand")
        check_eq(len(b.mailboxes["Keep"].messages), 1, "Keep: the expunge stands")
        check_eq(a.total(), 11 - 3, "every expunge propagated")
        r = p.run()
        check("added" not in r.err and "expunged" not in r.err, "nothing left to do: %r" % r.err)


if __name__ == "__main__":
    main(globals())
