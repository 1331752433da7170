#!/usr/bin/env python3
"""Drop-in parity with the Perl interimap 0.5.7 (/usr/bin/interimap): the
same scenarios run with both tools, each on its own pair of real Dovecot
servers holding the same mail, and what they print is compared line by
line, modulo the differences the manual lists (COMPATIBILITY in
interimap(1), doc/interimap.md):

  - our per-mailbox summary lines and the line that ends a run are
    additions, and are left out;
  - lines may come in another order (both servers are worked on at once),
    so the lines are compared as sorted lists;
  - the byte counts of the traffic lines differ (the commands differ);
  - error texts are our own: error lines are compared up to 'ERROR: ';
  - exit statuses follow our documented table.
"""

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pair import PERL_INTERIMAP, Pair, binary  # noqa: E402
from imapfixture import check, check_eq, main, mail, skip  # noqa: E402
from imapfixture.mail import MessageGenerator  # noqa: E402

SUMMARY = re.compile(r"\d+ message\(s\) added, \d+ expunged, \d+ flag update\(s\)$")
DONE = re.compile(r"^Done: \d+ mailbox\(es\) in \d+\.\d\d s(, nothing to do|: )")
TRAFFIC = re.compile(r"IMAP traffic \(bytes\): recv \S+( \(compr\. \S+, factor \S+\))?"
                     r" sent \S+( \(compr\. \S+, factor \S+\))?$")
BOUND = 30.0  # seconds for a --watch change to travel; generous on a shared machine


def need_perl():
    if not os.access(PERL_INTERIMAP, os.X_OK):
        skip("the Perl interimap is not installed")


def normalize(text, pair):
    """The lines both tools must agree on, sorted: scratch paths replaced,
    our summary lines dropped, traffic byte counts masked."""
    out = []
    for line in text.splitlines():
        if not line.strip() or SUMMARY.search(line) or DONE.search(line):
            continue
        line = line.replace(pair.dir, "DIR")
        m = TRAFFIC.search(line)
        if m:
            line = line[:m.start()] + "IMAP traffic (bytes): recv N%s sent N%s" % (
                " (compressed)" if m.group(1) else "", " (compressed)" if m.group(2) else "")
        out.append(line)
    return sorted(out)


def check_same(perl, ours, what):
    a, b = normalize(perl.err, perl.pair), normalize(ours.err, ours.pair)
    if a != b:
        only_perl = [l for l in a if l not in b]
        only_ours = [l for l in b if l not in a]
        raise AssertionError("%s: output differs\n  only Perl: %r\n  only ours: %r\n"
                             "--- Perl\n%s--- ours\n%s" % (what, only_perl, only_ours,
                                                           perl.err, ours.err))
    return a


class Twin:
    """Two pairs of servers with the same mail: the Perl tool works on one,
    ours on the other. Changes are made to both alike."""

    def __init__(self, **kw):
        self.perl = Pair(**kw)
        self.ours = Pair(**kw)

    def __enter__(self):
        try:
            self.perl.__enter__()
            self.ours.__enter__()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        self.perl.stop()
        self.ours.stop()

    def both(self, fn):
        fn(self.perl)
        fn(self.ours)

    def run(self, *args, perl_status=0, our_status=0, what=None):
        """Runs both tools, checks their exit statuses and returns both
        results (the pair each ran on attached)."""
        rp = self.perl.run_perl(*args, expect=None)
        ro = self.ours.run(*args, expect=None)
        rp.pair, ro.pair = self.perl, self.ours
        check_eq(rp.code, perl_status, "%s: the Perl tool's status (%r)" % (what, rp))
        check_eq(ro.code, our_status, "%s: our status (%r)" % (what, ro))
        return rp, ro

    def sync(self, *args, what):
        """Both tools synchronize; their outputs must match and each pair
        must end in step. Returns the normalized lines."""
        rp, ro = self.run(*args, what=what)
        lines = check_same(rp, ro, what)
        self.perl.assert_in_step()
        self.ours.assert_in_step()
        return lines


# ---------------------------------------------------------------------------
# the main synchronization scenarios

def seed_mail(p):
    g = MessageGenerator(41)
    mail.fill(p.local, {"INBOX": g.mailbox(5), "Work": g.mailbox(3), "Work/Old": g.mailbox(2),
                        "foo": g.mailbox(1)})
    mail.fill(p.remote, {"INBOX": g.mailbox(3), "Lists": g.mailbox(4)})
    lc, rc = p.login("local"), p.login("remote")
    try:
        mail.subscribe(lc, "Work")
        mail.subscribe(rc, "Lists")
    finally:
        lc.logout()
        rc.logout()


def new_mail(p):
    g = MessageGenerator(42)
    lc, rc = p.login("local"), p.login("remote")
    try:
        mail.append(lc, "INBOX", g.message())
        mail.append(lc, "INBOX", g.message())
        mail.append(lc, "Work/Old", g.message())
        mail.append(rc, "Lists", g.message(), flags=["\\Seen", "$Label1"])
    finally:
        lc.logout()
        rc.logout()


def flag_changes(p):
    lc, rc = p.login("local"), p.login("remote")
    try:
        mail.set_flags(lc, "INBOX", mail.uids(lc, "INBOX")[:2], ["\\Flagged", "Junk"])
        mail.set_flags(rc, "Lists", mail.uids(rc, "Lists")[:1], ["\\Seen"], mode="-")
        mail.set_flags(rc, "INBOX", mail.uids(rc, "INBOX")[-1:], ["$Todo"])
    finally:
        lc.logout()
        rc.logout()


def expunges(p):
    lc, rc = p.login("local"), p.login("remote")
    try:
        mail.expunge(lc, "INBOX", mail.uids(lc, "INBOX")[:1])
        mail.expunge(rc, "Lists", mail.uids(rc, "Lists")[1:3])
    finally:
        lc.logout()
        rc.logout()


def conflict(p, flags=("\\Answered",), other=("$Later",)):
    """The same message changed differently on both sides."""
    lc, rc = p.login("local"), p.login("remote")
    try:
        mail.set_flags(lc, "Work", mail.uids(lc, "Work")[:1], list(flags))
        mail.set_flags(rc, "Work", mail.uids(rc, "Work")[:1], list(other))
    finally:
        lc.logout()
        rc.logout()


def new_mailbox(p):
    g = MessageGenerator(43)
    rc = p.login("remote")
    try:
        mail.create(rc, "New/Sub")
        mail.subscribe(rc, "New/Sub")
        mail.append(rc, "New/Sub", g.message())
    finally:
        rc.logout()


def expect_lines(lines, *patterns):
    """Preconditions: the scenario did what it is about (each pattern is
    found in some line), so that agreeing outputs are not empty ones."""
    for pat in patterns:
        check(any(re.search(pat, l) for l in lines), "a line matches %r: %r" % (pat, lines))


def test_sync_scenarios():
    need_perl()
    with Twin() as t:
        t.both(seed_mail)
        lines = t.sync(what="initial")
        expect_lines(lines, r"^Creating new schema in database file DIR/state\.db$",
                     r"^database: Created mailbox Work/Old$",
                     r"^remote: Created mailbox Work/Old$", r"^local: Created mailbox Lists$",
                     r"^remote: Subscribe to Work$", r"^local: Subscribe to Lists$",
                     r"^local\(INBOX\): Added 3 UID\(s\) 6:8 <- 1:3$",
                     r"^remote\(INBOX\): Added 5 UID\(s\) 1:5 -> 4:8$",
                     r"^local: IMAP traffic \(bytes\)", r"^remote: IMAP traffic \(bytes\)")

        t.both(new_mail)
        lines = t.sync(what="new mail on both sides")
        expect_lines(lines, r"^remote\(INBOX\): Added 2 UID\(s\) 9:10 -> 9:10$",
                     r"^local\(Lists\): Added 1 UID\(s\) \d+ <- 5$")

        t.both(flag_changes)
        lines = t.sync(what="flag changes")
        expect_lines(lines, r"^remote\(INBOX\): Updated flags \(Junk \\Flagged( \\Seen)?\) for UID",
                     r"^local\(INBOX\): Updated flags \(\$Todo",
                     r"^local\(Lists\): Updated flags")

        t.both(expunges)
        lines = t.sync(what="expunges")
        expect_lines(lines, r"^remote\(INBOX\): Removed 1 UID\(s\) 4$",
                     r"^local\(Lists\): Removed 2 UID\(s\) \d+:\d+$")

        t.both(conflict)
        lines = t.sync(what="a conflicting flag change")
        expect_lines(lines, r"^WARNING: Conflicting flag update in Work for local UID 1 ")

        t.both(new_mailbox)
        lines = t.sync(what="a new mailbox on the remote side")
        expect_lines(lines, r"^local: Created mailbox New/Sub$", r"^local: Subscribe to New/Sub$",
                     r"^local\(New/Sub\): Added 1 UID\(s\) 1 <- 1$")

        lines = t.sync(what="nothing to do")
        check_eq(len(lines), 2, "only the two traffic lines when nothing changed: %r" % lines)

        # -q keeps the warnings, nothing else
        t.both(lambda p: conflict(p, ("\\Flagged",), ("$Other",)))
        lines = t.sync("-q", what="-q")
        check_eq(len(lines), 1, "-q: the warning only: %r" % lines)
        expect_lines(lines, r"^WARNING: Conflicting flag update in Work ")


def test_log_prefix():
    need_perl()
    # (%n outside a conditional makes the Perl tool warn about an undefined
    # value on lines about no server)
    prefix = "log-prefix = %?n?[%n%?m?:%m?] ?"
    with Twin(config=prefix) as t:
        t.both(seed_mail)
        lines = t.sync(what="log-prefix")
        expect_lines(lines, r"^\[local:INBOX\] Added 3 UID\(s\)", r"^\[remote\] Created mailbox",
                     r"^\[database\] Created mailbox", r"^Creating new schema",
                     r"^\[local\] IMAP traffic")
        # %n names the server in an error about it too
        t.both(lambda p: p.write_config(local_section="password = wrong"))
        rp, ro = t.run(perl_status=1, our_status=3, what="log-prefix, wrong password")
        check_error_lines(rp, ro, ["[local] ERROR: "], "log-prefix, wrong password")


# ---------------------------------------------------------------------------
# --watch N

class Watcher:
    def __init__(self, exe, p, *args):
        self.log = open(os.path.join(p.dir, "watch.log"), "w+")
        self.proc = subprocess.Popen([exe, "--config", p.config_path] + list(args),
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.pair = p

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            code = None
        self.log.seek(0)
        self.err = self.log.read()
        self.log.close()
        self.code = code
        return self


def count(p, side, mailbox):
    conn = p.login(side)
    try:
        return len(mail.uids(conn, mailbox))
    finally:
        conn.logout()


def wait_for(pred, bound=BOUND):
    t0 = time.monotonic()
    while time.monotonic() - t0 < bound:
        if pred():
            return True
        time.sleep(0.2)
    return False


def append_one(p, side, mailbox, seed):
    conn = p.login(side)
    try:
        mail.append(conn, mailbox, MessageGenerator(seed).message())
    finally:
        conn.logout()


def test_watch_value_as_next_argument():
    """`--watch 1`: the value is the next argument (not a mailbox named
    '1'), and it is the interval (not the default 60 seconds): two changes
    in a row travel within the bound."""
    need_perl()
    with Twin() as t:
        t.both(seed_mail)
        t.sync(what="before --watch")  # the Perl tool needs the database
        watchers = [Watcher(PERL_INTERIMAP, t.perl, "--watch", "1"),
                    Watcher(binary(), t.ours, "--watch", "1")]
        try:
            for seed in (50, 51):
                t.both(lambda p: append_one(p, "local", "INBOX", seed))
                for w in watchers:
                    want = 9 + seed - 50
                    check(wait_for(lambda: count(w.pair, "remote", "INBOX") == want),
                          "%s: change %d reached the remote side" % (w.proc.args[0], seed - 49))
        finally:
            for w in watchers:
                w.stop()
        perl, ours = watchers
        check_eq(perl.code, 0, "SIGTERM: the Perl tool's status")
        check_eq(ours.code, 0, "SIGTERM: our status")
        lines = check_same(perl, ours, "--watch 1")
        expect_lines(lines, r"^remote\(INBOX\): Added 1 UID\(s\) 9 -> 9$",
                     r"^remote\(INBOX\): Added 1 UID\(s\) 10 -> 10$")


def test_watch_leaves_a_mailbox_name_alone():
    """`--watch foo`: not a number, so watch with the default interval and
    take 'foo' as the mailbox to synchronize."""
    need_perl()
    with Twin() as t:
        t.both(seed_mail)
        t.sync(what="before --watch")
        t.both(lambda p: append_one(p, "local", "INBOX", 60))
        t.both(lambda p: append_one(p, "local", "foo", 61))
        watchers = [Watcher(PERL_INTERIMAP, t.perl, "--watch", "foo"),
                    Watcher(binary(), t.ours, "--watch", "foo")]
        try:
            for w in watchers:
                check(wait_for(lambda: count(w.pair, "remote", "foo") == 2),
                      "%s: foo was synchronized" % w.proc.args[0])
                check_eq(count(w.pair, "remote", "INBOX"), 8,
                         "%s: INBOX was left alone" % w.proc.args[0])
        finally:
            for w in watchers:
                w.stop()
        perl, ours = watchers
        lines = check_same(perl, ours, "--watch foo")
        expect_lines(lines, r"^remote\(foo\): Added 1 UID\(s\) 2 -> 2$")
        check(not any("INBOX" in l for l in lines), "nothing about INBOX: %r" % lines)


# ---------------------------------------------------------------------------
# errors

def error_prefixes(r):
    return sorted(l[:l.index("ERROR: ") + 7] for l in r.err.splitlines() if "ERROR: " in l)


def check_error_lines(rp, ro, prefixes, what):
    """Error lines agree up to 'ERROR: ' (the texts are our own); every
    other line agrees, except that we may print the traffic line of a
    connection the Perl tool never opened (it stops at the first failure,
    ours opens both at once)."""
    check_eq(error_prefixes(rp), prefixes, "%s: the Perl tool's error lines (%r)" % (what, rp.err))
    check_eq(error_prefixes(ro), prefixes, "%s: our error lines (%r)" % (what, ro.err))
    a = [l for l in normalize(rp.err, rp.pair) if "ERROR: " not in l]
    b = [l for l in normalize(ro.err, ro.pair) if "ERROR: " not in l]
    extra = [l for l in b if l not in a]
    check([l for l in a if l not in b] == [], "%s: lines only Perl prints: %r / %r" % (what, a, b))
    check(all(TRAFFIC_MASKED.search(l) for l in extra),
          "%s: we print more than traffic lines: %r" % (what, extra))


TRAFFIC_MASKED = re.compile(r"IMAP traffic \(bytes\): recv N")


def fresh(t):
    """No database left by a failed run (the Perl tool creates the file
    before connecting)."""
    def rm(p):
        if os.path.exists(p.db):
            os.unlink(p.db)
    t.both(rm)


def test_connection_and_login_errors():
    need_perl()
    with Twin() as t:
        cases = [
            ("wrong password", {"local_section": "password = wrong"}, ["local: ERROR: "],
             "authentication"),
            ("unreachable server", {"remote_section": "port = 1"}, ["remote: ERROR: "], "refused"),
            ("unknown host", {"local_section": "host = no-such-host.invalid"},
             ["local: ERROR: "], "resolve"),
            ("no common mechanism", {"local_section": "auth = CRAM-MD5"}, ["local: ERROR: "],
             "mechanism"),
        ]
        for what, section, prefixes, word in cases:
            t.both(lambda p: p.write_config(local_section=section.get("local_section", ""),
                                            remote_section=section.get("remote_section", "")))
            fresh(t)
            rp, ro = t.run(perl_status=1, our_status=3, what=what)
            check_error_lines(rp, ro, prefixes, what)
            check(word in ro.err.lower(), "%s: says why: %r" % (what, ro.err))


def test_tls_errors():
    need_perl()
    with Twin(remote={"ssl": "self-signed"}) as t:
        rp, ro = t.run(perl_status=1, our_status=3, what="untrusted certificate")
        check_error_lines(rp, ro, ["remote: ERROR: "], "untrusted certificate")
        check("certificate" in ro.err, "names the certificate: %r" % ro.err)
    with Twin(local={"ssl": None}) as t:
        rp, ro = t.run(perl_status=1, our_status=3, what="no STARTTLS")
        check_error_lines(rp, ro, ["local: ERROR: "], "no STARTTLS")
        check("STARTTLS" in ro.err, "names STARTTLS: %r" % ro.err)


def test_errors_after_connecting():
    need_perl()
    with Twin() as t:
        t.both(seed_mail)
        t.sync(what="initial")
        # INBOX cannot be deleted: the same line
        rp, ro = t.run("--delete", "INBOX", perl_status=1, our_status=2, what="--delete INBOX")
        check_same(rp, ro, "--delete INBOX")
        expect_lines(normalize(ro.err, ro.pair), r"^ERROR: INBOX can't be deleted$")
        # renaming onto an existing mailbox: the same line
        rp, ro = t.run("--rename", "Work", "Lists", perl_status=1, our_status=1,
                       what="--rename onto an existing mailbox")
        check_same(rp, ro, "--rename onto an existing mailbox")
        expect_lines(normalize(ro.err, ro.pair), r"^local: ERROR: Mailbox Lists exists\. Run "
                     r"`interimap --target=local --delete Lists` to delete\.$")
        # the commands themselves
        lines = t.sync("--rename", "Work/Old", "Work/Older", what="--rename")
        expect_lines(lines, r"^local: Renamed mailbox Work/Old to Work/Older$",
                     r"^database: Renamed mailbox Work/Old to Work/Older$")
        lines = t.sync("--delete", "foo", what="--delete")
        expect_lines(lines, r"^local: Deleted mailbox foo$", r"^remote: Deleted mailbox foo$",
                     r"^database: Removed mailbox foo$")


def test_database_locked():
    need_perl()
    with Twin() as t:
        t.sync(what="initial")
        holders = []
        try:
            for p in (t.perl, t.ours):
                con = sqlite3.connect(p.db)
                con.execute("PRAGMA locking_mode=EXCLUSIVE")
                con.execute("BEGIN EXCLUSIVE")
                holders.append(con)
            rp = t.perl.run_perl(expect=None)
            ro = t.ours.run(expect=None)
        finally:
            for con in holders:
                con.close()
        # the Perl tool dies with the errno of the failed lock (EAGAIN)
        check(rp.code != 0 and "database is locked" in rp.err, "Perl: %r" % rp)
        check_eq(ro.code, 1, "our status for a locked database")
        lines = [l for l in ro.err.splitlines() if l.strip()]
        check_eq(len(lines), 1, "one line: %r" % ro.err)
        check(lines[0].startswith("database: ERROR: ") and "locked" in lines[0],
              "names the database and the lock: %r" % ro.err)


def test_command_line_and_configuration_errors():
    """Where the Perl tool prints its usage text or a bare message and
    exits 1 or 255, we print one line starting with 'interimap: ' and exit
    2 (documented)."""
    need_perl()
    with Pair() as p:
        base = open(p.config_path).read()
        cases = [
            ("unknown option", ["--bogus"], None, 1, "--bogus"),
            ("--watch=foo", ["--watch=foo"], None, 1, "foo"),
            ("two commands", ["--repair", "--delete", "x"], None, 1, "--repair"),
            ("--target without a command", ["--target=local"], None, 1, "--target"),
            ("non-ASCII mailbox", ["Bo\u00eete"], None, 255, "Bo\u00eete"),
            ("unknown setting", [], base + "\nhots = x\n", 255, ":%d: unknown option 'hots'"
             % (base.count("\n") + 2)),
            ("missing section", [], base.replace("[remote]", "[remot]"), 255, "[remote]"),
            ("bad type", [], base.replace("type = imaps", "type = imap4"), 255, "imap4"),
        ]
        for what, args, text, perl_status, word in cases:
            with open(p.config_path, "w") as f:
                f.write(text if text is not None else base)
            rp = p.run_perl(*args, expect=None)
            ro = p.run(*args, expect=None)
            check_eq(rp.code, perl_status, "%s: the Perl tool's status (%r)" % (what, rp))
            check(rp.err.strip() != "", "%s: the Perl tool complains" % what)
            check_eq(ro.code, 2, "%s: our status (%r)" % (what, ro))
            lines = ro.err.splitlines()
            check_eq(len(lines), 1, "%s: one line (%r)" % (what, ro.err))
            check(lines[0].startswith("interimap: ") and word in lines[0],
                  "%s: names the problem (%r)" % (what, ro.err))
            check(not os.path.exists(p.db), "%s: no database created" % what)


if __name__ == "__main__":
    main(globals())
