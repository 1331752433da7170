#!/usr/bin/env python3
"""Cyrus IMAP 3.6 as a real server: logins with the default configuration
(AUTHENTICATE PLAIN), and an initial sync with Dovecot on the other side
in both roles, compared with what the Perl interimap makes of the same
servers."""

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from pair import PERL_INTERIMAP, Result, binary  # noqa: E402
from imapfixture import Dovecot, check, check_eq, main, mail, skip  # noqa: E402
from imapfixture import cyrus  # noqa: E402
from imapfixture.cyrus import Cyrus  # noqa: E402
from imapfixture.mail import MessageGenerator  # noqa: E402


def need_cyrus():
    if not cyrus.available():
        if os.environ.get("CI"):
            raise AssertionError("Cyrus IMAP missing in CI: " + cyrus.missing())
        skip("Cyrus IMAP is not installed (scripts/install-deps.sh): missing " + cyrus.missing())


def section(name, srv, user=None, extra=""):
    user = user or srv.user
    return ("[%s]\ntype = imap\nSTARTTLS = NO\nhost = %s\nport = %d\nusername = %s\n"
            "password = %s\n%s\n" % (name, srv.host, srv.imap_port, user, srv.users[user], extra))


class Setup:
    """A directory holding a configuration and a database for two servers."""

    def __init__(self, local, remote, local_user=None, remote_user=None):
        self.dir = tempfile.mkdtemp(prefix="interimap-cyrus-")
        self.db = os.path.join(self.dir, "state.db")
        self.config = os.path.join(self.dir, "config")
        with open(self.config, "w") as f:
            f.write("database = %s\n\n%s\n%s" % (self.db, section("local", local, local_user),
                                                 section("remote", remote, remote_user)))

    def run(self, *args, exe=None, timeout=120):
        proc = subprocess.run([exe or binary(), "--config", self.config] + list(args),
                              capture_output=True, text=True, timeout=timeout)
        return Result(proc)

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def test_hundred_logins_in_a_row():
    """Default configuration: AUTHENTICATE PLAIN with an initial response
    on both connections of every run (two users of one Cyrus)."""
    need_cyrus()
    with Cyrus(users={"alice": "alice-pw", "bob": "bob-pw"}) as srv:
        conn = srv.login("alice")
        try:
            check("AUTH=PLAIN" in conn.capabilities and "SASL-IR" in conn.capabilities,
                  "the server offers AUTHENTICATE PLAIN with an initial response")
            mail.create(conn, "Box")
            mail.append(conn, "Box", MessageGenerator(3).message())
        finally:
            conn.logout()
        s = Setup(srv, srv, "alice", "bob")
        try:
            r = s.run("--debug")
            check_eq(r.code, 0, "first run: %r" % r)
            check("AUTHENTICATE PLAIN" in r.err and " LOGIN " not in r.err,
                  "logged in with AUTHENTICATE PLAIN: %r" % r.err[:2000])
            failures = []
            for i in range(100):
                r = s.run()
                if r.code != 0:
                    failures.append("run %d: %r" % (i, r))
            check_eq(failures, [], "failed runs")
        finally:
            s.cleanup()
        bob = srv.login("bob")
        try:
            check_eq(len(mail.uids(bob, "Box")), 1, "the message reached the other user")
        finally:
            bob.logout()


def need_perl():
    if not os.access(PERL_INTERIMAP, os.X_OK):
        skip("the Perl interimap is not installed")


def load(srv, spec, seed):
    """Create the mailboxes of spec ({name with '/' as delimiter: count})
    over IMAP and append generated messages; subscribe to every other."""
    g = MessageGenerator(seed)
    conn = srv.login()
    try:
        for i, (name, n) in enumerate(sorted(spec.items())):
            wire = name.replace("/", srv.separator)
            if wire != "INBOX":
                mail.create(conn, wire)
            for data, flags, idate in g.mailbox(n):
                mail.append(conn, wire, data, flags, idate)
            if i % 2 == 0:
                mail.subscribe(conn, wire)
    finally:
        conn.logout()


# Nested names, non-ASCII names, a parent that does not exist as a mailbox
# of its own (Dovecot lists it \NoSelect, Cyrus makes it real), the same
# name on both sides.
DOVECOT_SPEC = {"INBOX": 6, "Archive/2023/Q1": 4, "Projets/Été": 3, "Reçus": 2, "Common": 2}
CYRUS_SPEC = {"INBOX": 5, "Listes/Débats/Ça": 3, "Work": 4, "Work/Old": 2, "Common": 3}


def servers(tmp, cyrus_role):
    dove = Dovecot(root=os.path.join(tmp, "dovecot"), separator="/", ssl=None,
                   name="dovecot")
    cyr = Cyrus(root=os.path.join(tmp, "cyrus"), separator=".")
    return (cyr, dove) if cyrus_role == "local" else (dove, cyr)


def sync_with(exe, cyrus_role):
    """Fresh servers, the same content, one initial sync by exe. Returns
    the snapshots of (local, remote), the database's mailbox names and its
    mapping count."""
    tmp = tempfile.mkdtemp(prefix="interimap-cyrus-")
    os.chmod(tmp, 0o755)
    local, remote = servers(tmp, cyrus_role)
    try:
        for srv in (local, remote):
            srv.start()
        dove, cyr = (remote, local) if cyrus_role == "local" else (local, remote)
        load(dove, DOVECOT_SPEC, 1)
        load(cyr, CYRUS_SPEC, 2)
        s = Setup(local, remote)
        r = s.run(exe=exe)
        check_eq(r.code, 0, "initial sync by %s: %r" % (exe, r))
        con = sqlite3.connect(s.db)
        try:
            names = sorted(bytes(n).decode() if isinstance(n, bytes) else n
                           for (n,) in con.execute("SELECT mailbox FROM mailboxes"))
            mapped = con.execute("SELECT count(*) FROM mapping").fetchone()[0]
        finally:
            con.close()
        s.cleanup()
        return mail.snapshot(local), mail.snapshot(remote), names, mapped
    finally:
        for srv in (local, remote):
            srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def compare_with_perl(cyrus_role):
    need_cyrus()
    need_perl()
    ours = sync_with(binary(), cyrus_role)
    perl = sync_with(PERL_INTERIMAP, cyrus_role)
    total = sum(DOVECOT_SPEC.values()) + sum(CYRUS_SPEC.values())
    for i, side in enumerate(("local", "remote")):
        a, b = ours[i], perl[i]
        # preconditions: the sync did copy, names did cross delimiters
        check_eq(a.total(), total, "%s holds every message after our sync" % side)
        check("Projets/Été" in a.names() and "Listes/Débats/Ça" in a.names(),
              "nested non-ASCII names on %s: %r" % (side, a.names()))
        check_eq(a.names(), b.names(), "mailboxes on %s, ours vs Perl" % side)
        check_eq(a.diff(b), "", "content on %s, ours vs Perl" % side)
        check_eq(a.content(), b.content(), "content on %s, ours vs Perl" % side)
        check_eq(a.subscribed(), b.subscribed(), "subscriptions on %s, ours vs Perl" % side)
    check_eq(ours[2], perl[2], "mailboxes in the database, ours vs Perl")
    check_eq(ours[3], perl[3], "mapped messages, ours vs Perl")
    check_eq(ours[3], total, "every message mapped")
    # Cyrus makes real (empty) parents where Dovecot lists placeholders
    loc, rem = without_empty_parents(ours[0]), without_empty_parents(ours[1])
    check_eq(loc, rem, "both servers hold the same after our sync")


def without_empty_parents(snap):
    content = snap.content()
    return {name: msgs for name, msgs in content.items()
            if msgs or not any(other.startswith(name + "/") for other in content)}


def test_initial_sync_cyrus_local_like_perl():
    compare_with_perl("local")


def test_initial_sync_cyrus_remote_like_perl():
    compare_with_perl("remote")


def test_new_mail_on_both_sides_against_cyrus():
    """After an initial sync with Cyrus as the remote server, new messages
    on both sides of several mailboxes go through the exchange windows
    (EXAMINE with QRESYNC and a flag listing on each server, nothing left
    to the per-mailbox path); both servers end equal, and the next run
    copies nothing."""
    need_cyrus()
    tmp = tempfile.mkdtemp(prefix="interimap-cyrus-")
    os.chmod(tmp, 0o755)
    local, remote = servers(tmp, "remote")
    try:
        for srv in (local, remote):
            srv.start()
        load(local, DOVECOT_SPEC, 3)
        load(remote, CYRUS_SPEC, 4)
        s = Setup(local, remote)
        r = s.run()
        check_eq(r.code, 0, "initial sync: %r" % r)
        boxes = ["Common", "Work", "Reçus", "Listes/Débats/Ça"]
        g = MessageGenerator(5)
        for srv in (local, remote):
            conn = srv.login()
            try:
                for name in boxes:
                    for data, flags, idate in g.mailbox(2):
                        mail.append(conn, name.replace("/", srv.separator), data, flags, idate)
            finally:
                conn.logout()
        before = mail.snapshot(local).total()
        r = s.run("--debug")
        check_eq(r.code, 0, "the run with new mail on both sides: %r" % r.err[-3000:])
        for side in ("local", "remote"):
            check("%s: C: " % side in r.err and
                  any(("%s: C: " % side) in line and "(UID FLAGS)" in line and "UID FETCH" in line
                      for line in r.err.splitlines()),
                  "%s: a window's check listed the flags:\n%s" % (side, r.err[-3000:]))
        check("left to the per-mailbox path" not in r.err, "no mailbox left the windows")
        a, b = mail.snapshot(local), mail.snapshot(remote)
        check_eq(a.total(), before + 2 * len(boxes), "the remote side's new messages copied")
        check_eq(without_empty_parents(a), without_empty_parents(b), "both servers equal")
        r = s.run()
        check("message(s) added" not in r.err, "the next run copies nothing:\n" + r.err)
        s.cleanup()
    finally:
        for srv in (local, remote):
            srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main(globals())
