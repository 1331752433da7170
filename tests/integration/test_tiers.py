#!/usr/bin/env python3
"""Servers without QRESYNC, paired with a full Dovecot in both roles:
Dovecot advertising CONDSTORE but not QRESYNC (the way Gmail does),
Dovecot advertising neither (like Microsoft 365), and Courier-IMAP, a
server that has neither. For each pairing: the synchronization scenarios
(initial copy both ways, new mail, flag changes and expunges on both
sides, a flag removed staying removed, mailbox creation, a run with
nothing to do) and a run killed mid-copy then run again. Every run is
made with --debug, and the commands sent to the restricted server are
checked for anything it did not advertise. Also: Cyrus, and a filter in
front of Dovecot, reporting no HIGHESTMODSEQ after APPEND; what goes behind
the login on a first run and on the next."""

import os
import re
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pair import Pair  # noqa: E402
from test_crash import run_and_kill  # noqa: E402
from imapfixture import (Courier, Cyrus, Dovecot, check, check_eq, courier_available,  # noqa: E402
                         cyrus_available, main, mail, skip)
from imapfixture.mail import MessageGenerator  # noqa: E402

# What Gmail advertises, less its own extensions: CONDSTORE without
# QRESYNC, no MULTIAPPEND, LITERAL- only.
GMAIL = ("IMAP4rev1 ID IDLE NAMESPACE CHILDREN UIDPLUS UNSELECT COMPRESS=DEFLATE ENABLE MOVE "
         "CONDSTORE ESEARCH LIST-EXTENDED LIST-STATUS LITERAL- SPECIAL-USE")
# A bare CONDSTORE server: no LIST-EXTENDED, LIST-STATUS, ESEARCH either.
BARE = "IMAP4rev1 UIDPLUS CONDSTORE"
# What Microsoft 365 advertises: neither CONDSTORE nor QRESYNC.
M365 = "IMAP4rev1 SASL-IR UIDPLUS ID UNSELECT CHILDREN IDLE NAMESPACE LITERAL+"

# Commands and arguments a restricted server must never see.
NEVER = {
    "gmail": [r"\bQRESYNC\b", r"\bVANISHED\b"],
    "bare": [r"\bQRESYNC\b", r"\bENABLE\b", r"\bRETURN\b", r"\bCOMPRESS\b", r"\bUNSELECT\b",
             r"\{\d+\+\}"],
    "m365": [r"\bQRESYNC\b", r"\bCONDSTORE\b", r"\bENABLE\b", r"MODSEQ", r"CHANGEDSINCE",
             r"\bRETURN\b", r"\bCOMPRESS\b"],
    "courier": [r"\bQRESYNC\b", r"\bCONDSTORE\b", r"\bENABLE\b", r"MODSEQ", r"CHANGEDSINCE",
                r"\bRETURN\b", r"\bCOMPRESS\b", r"\bUNSELECT\b", r"\{\d+\+\}"],
}
# Kinds without MULTIAPPEND: one message per APPEND.
SINGLE_APPEND = {"gmail", "bare", "m365", "courier"}


def server(kind):
    """A factory for the restricted server of this kind (see Pair)."""
    if kind == "courier":
        return lambda root: Courier(root=root, name="courier")
    caps = {"gmail": GMAIL, "bare": BARE, "m365": M365}[kind]
    return lambda root: Dovecot(root=root, name=kind, separator=".", capability=caps,
                                compress=kind == "gmail")


def make_pair(kind, role):
    """The restricted server in `role` ('local' or 'remote'), a full
    Dovecot (with '/' as its delimiter) on the other side."""
    if role == "local":
        return Pair(local_server=server(kind), remote_sep="/")
    return Pair(remote_server=server(kind), local_sep="/", remote_type="imaps")


def srv_name(srv, name):
    return name.replace("/", srv.separator)


def fill(srv, spec, seed):
    """spec: {name with '/': count}; every name is INBOX or below it, which
    Courier needs (its mailboxes live under INBOX)."""
    gen = MessageGenerator(seed)
    boxes = {srv_name(srv, n): gen.mailbox(c) for n, c in spec.items()}
    if isinstance(srv, Courier):
        srv.fill(boxes)
    else:
        mail.fill(srv, boxes)


class Runner:
    """Runs interimap with --debug and checks what the restricted side was
    sent."""

    def __init__(self, p, kind, role):
        self.p, self.kind, self.role = p, kind, role

    def run(self, *args, expect=0):
        r = self.p.run("--debug", *args, expect=expect)
        self.check_sent(r.err)
        return r

    def check_sent(self, log):
        sent = [l for l in log.splitlines() if l.startswith(self.role + ": C: ")]
        check(sent, "the %s server was talked to" % self.kind)
        for rx in NEVER[self.kind]:
            bad = [l for l in sent if re.search(rx, l[len(self.role) + 5:])]
            check(not bad, "%s was not sent %s: %r" % (self.kind, rx, bad[:3]))
        if self.kind in SINGLE_APPEND:
            appends = len([l for l in sent if re.search(r"^\S+ C: \d+ APPEND ", l)])
            messages = len([l for l in sent if re.search(r"^\S+ C:  \(", l)])
            check_eq(messages, appends, "one message per APPEND (no MULTIAPPEND)")


def summary(r):
    """The non-debug lines of a run, less the traffic counts of each
    connection and the closing line when it says there was nothing to do:
    what is left tells what the run did."""
    return [l for l in r.err.splitlines() if not re.match(r"^\S+: [CS]: ", l)
            and "TLS established" not in l and "COMPRESS=DEFLATE active" not in l
            and "login sent ahead of the greeting" not in l
            and ": tier " not in l and "IMAP traffic (bytes)" not in l
            and not (l.startswith("Done: ") and l.endswith("nothing to do"))]


def scenario(kind, role):
    other = "remote" if role == "local" else "local"
    with make_pair(kind, role) as p:
        run = Runner(p, kind, role)
        srv = {"local": p.local, "remote": p.remote}
        # initial copy both ways, into mailboxes that exist on one side only
        fill(srv[role], {"INBOX": 6, "INBOX/Work": 4}, seed=1)
        fill(srv[other], {"INBOX": 3, "INBOX/Lists": 5}, seed=2)
        r = run.run()
        check(any("IMAP4rev1" in l or "CONDSTORE" in l for l in summary(r)),
              "the restricted side's tier is said on first use: %r" % summary(r))
        a, b = p.assert_in_step()
        check_eq(a.total(), 18, "messages after the initial copy")
        check_eq(sorted(a.content()), ["INBOX", "INBOX/Lists", "INBOX/Work"], "mailboxes")

        # nothing changed: nothing to report, not even our own copies
        r = run.run()
        check_eq(summary(r), [], "a run with nothing to do says nothing")

        # new mail, flag changes and expunges on both sides
        rc, oc = srv[role].login(), srv[other].login()
        try:
            gen = MessageGenerator(5)
            for _ in range(2):
                mail.append(rc, srv_name(srv[role], "INBOX/Lists"), gen.message(), flags=["\\Seen"])
                mail.append(oc, "INBOX", gen.message())
            ru = mail.uids(rc, "INBOX")
            ou = mail.uids(oc, srv_name(srv[other], "INBOX/Work"))
            mail.set_flags(rc, "INBOX", ru[:2], ["\\Flagged", "$Label1"])
            mail.set_flags(oc, srv_name(srv[other], "INBOX/Work"), ou[:2], ["\\Answered"])
            mail.clear_flags(rc, "INBOX", ru[2:4], ["\\Seen"])
            mail.expunge(rc, srv_name(srv[role], "INBOX/Work"),
                         mail.uids(rc, srv_name(srv[role], "INBOX/Work"))[-1:])
            mail.expunge(oc, "INBOX", mail.uids(oc, "INBOX")[-3:-2])
        finally:
            rc.logout()
            oc.logout()
        r = run.run()
        a, b = p.assert_in_step()
        check_eq(a.total(), 20, "messages after changes (18 + 4 - 2)")
        mine = a if role == "local" else b
        inbox = {m.sha256: m.flags for m in mine.mailboxes["INBOX"].messages}
        check_eq(len([f for f in inbox.values() if "$Label1" in f]), 2, "keyword propagated")
        theirs = b if role == "local" else a
        work = theirs.mailboxes[srv_name(srv[other], "INBOX/Work")].messages
        check(len([m for m in work if "\\Answered" in m.flags]) >= 2, "flag propagated")
        check("Conflicting" not in r.err, "no conflict: %r" % summary(r))

        # a flag removed on either side stays removed
        for side in (role, other):
            conn = srv[side].login()
            try:
                uids = mail.uids(conn, "INBOX")
                mail.clear_flags(conn, "INBOX", uids, ["\\Flagged"])
            finally:
                conn.logout()
            run.run()
            a, b = p.assert_in_step()
            flagged = [m for m in a.mailboxes["INBOX"].messages if "\\Flagged" in m.flags]
            check_eq(flagged, [], "\\Flagged removed on %s stays removed" % side)

        # mailboxes created on both sides
        for side, name in ((role, "INBOX/New"), (other, "INBOX/Other")):
            conn = srv[side].login()
            try:
                mail.create(conn, srv_name(srv[side], name))
                mail.append(conn, srv_name(srv[side], name), MessageGenerator(9).message())
            finally:
                conn.logout()
        run.run()
        a, b = p.assert_in_step()
        check("INBOX/New" in a.content() and "INBOX/Other" in a.content(), "created mailboxes")
        check_eq(a.total(), 22, "messages with the new mailboxes")
        r = run.run()
        check_eq(summary(r), [], "then nothing to do")


def crash(kind, role):
    """Killed mid-copy, then run again: nothing duplicated, nothing lost."""
    other = "remote" if role == "local" else "local"
    with make_pair(kind, role) as p:
        srv = {"local": p.local, "remote": p.remote}
        fill(srv[other], {"INBOX": 25, "INBOX/A": 10}, seed=3)
        fill(srv[role], {"INBOX": 10}, seed=4)
        killed = run_and_kill(p, r"%s: S: \d+ OK \[APPENDUID" % role, 7)
        check(killed, "the run was killed after the 7th APPEND")
        r = p.run("--debug")
        Runner(p, kind, role).check_sent(r.err)
        a, b = p.assert_in_step()
        check_eq(a.total(), 45, "messages after the rerun")
        # and the other direction, killed while a body streams
        gen = MessageGenerator(8)
        conn = srv[role].login()
        try:
            for _ in range(12):
                mail.append(conn, "INBOX", gen.message())
        finally:
            conn.logout()
        killed = run_and_kill(p, r"%s: S: \* \d+ FETCH \(.*INTERNALDATE" % role, 5)
        check(killed, "the run was killed mid-copy")
        p.run()
        a, b = p.assert_in_step()
        check_eq(a.total(), 57, "messages after the second rerun")


QUIET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "imapfixture",
                     "quietmodseq.py")


def quiet_fetches(log, side):
    """The FETCHes of the MODSEQ of copies, once they were done (not the
    probe behind the APPEND, which lists the UIDs to the end)."""
    return [l for l in log.splitlines()
            if re.match(r"%s: C: \d+ UID FETCH (?!\d+:4294967295 )[\d:,]+ \(UID MODSEQ\)$" % side, l)]


class QuietDovecot(Dovecot):
    """A QRESYNC Dovecot reached through a tunnel that hides its
    HIGHESTMODSEQ except in SELECT responses, as Cyrus does after APPEND."""

    kind = "tunnel"

    def tunnel_command(self, user=None):
        return " ".join(shlex.quote(a) for a in [sys.executable, QUIET, "--"] + self.tunnel_argv(user))


def test_no_highestmodseq_after_append():
    """After an initial copy into a server that reports no HIGHESTMODSEQ
    after APPEND, a run with no change reports no flag update, and a flag
    removed on either side before the next run stays removed."""
    with Pair(remote_server=lambda root: QuietDovecot(root=root, name="remote"),
              remote_section="null-stderr = YES") as p:
        fill(p.local, {"INBOX": 30, "INBOX/Work": 10}, seed=6)
        r = p.run("--debug")
        check(quiet_fetches(r.err, "remote"),
              "the MODSEQ of the copies was asked for: the server kept quiet")
        check_eq(p.db_rows("SELECT append_hms FROM capabilities WHERE side = 1"), [(2,)],
                 "remembered: the remote server reports no HIGHESTMODSEQ after APPEND")
        a, b = p.assert_in_step()
        check_eq(b.total(), 40, "copied")
        r = p.run()
        check_eq(summary(r), [], "a run with no change reports nothing")
        lc, rc = p.login("local"), p.login("remote")
        try:
            seen_l = [m.uid for m in a.mailboxes["INBOX"].messages if "\\Seen" in m.flags]
            seen_r = [m.uid for m in b.mailboxes["INBOX"].messages if "\\Seen" in m.flags]
            check(len(seen_l) >= 6, "enough messages with \\Seen to test with")
            mail.clear_flags(lc, "INBOX", seen_l[:3], ["\\Seen"])
            mail.clear_flags(rc, "INBOX", seen_r[-3:], ["\\Seen"])
        finally:
            lc.logout()
            rc.logout()
        r = p.run()
        check("Conflicting" not in r.err, "no conflict: %r" % summary(r))
        a2, b2 = p.assert_in_step()
        unseen = [m for m in a2.mailboxes["INBOX"].messages if "\\Seen" not in m.flags]
        before = [m for m in a.mailboxes["INBOX"].messages if "\\Seen" not in m.flags]
        check_eq(len(unseen), len(before) + 6, "\\Seen removed on both sides stays removed")
        r = p.run()
        check_eq(summary(r), [], "then nothing to do")


def before_login(log, side):
    """What the client sent to side before the login's tagged reply."""
    sent, tag = [], None
    for line in log.splitlines():
        if line.startswith(side + ": C: "):
            words = line.split()
            if tag is None and len(words) > 3 and words[3] in ("LOGIN", "AUTHENTICATE"):
                tag = words[2]
            elif tag is not None:
                sent.append(" ".join(words[3:]))
        elif tag is not None and line.startswith("%s: S: %s " % (side, tag)):
            return sent
    raise AssertionError("no login reply from %s in the log" % side)


def test_pipelined_only_when_known():
    """Behind the login goes only what the server is known to offer: on a
    first run, what its greeting advertises (Dovecot's lists no QRESYNC,
    LIST-EXTENDED or COMPRESS); from the next run on, what it advertised
    after the login last time, remembered in the database."""
    with Pair(config="", local_section="auth = LOGIN", remote_section="auth = LOGIN") as p:
        fill(p.local, {"INBOX": 3}, seed=1)
        r = p.run("--debug")
        for side in ("local", "remote"):
            early = before_login(r.err, side)
            check_eq(early, ['LIST "" ""', 'LIST "" "*"', 'LSUB "" "*"'],
                     "%s, first run: the plain listing only" % side)
        check(any(l.startswith("remote: C: ") and l.endswith("ENABLE QRESYNC")
                  for l in r.err.splitlines()), "QRESYNC enabled once advertised")
        check(any(re.match(r"remote: C: \d+ APPEND ", l) for l in r.err.splitlines()),
              "messages were copied to remote")
        check_eq(quiet_fetches(r.err, "remote"), [],
                 "Dovecot reports its HIGHESTMODSEQ after APPEND: no FETCH of MODSEQ")
        check_eq(p.db_rows("SELECT side, append_hms FROM capabilities ORDER BY side"),
                 [(0, 0), (1, 1)], "remembered: the remote server reports it (local: not seen)")
        rows = p.db_rows("SELECT side, capabilities FROM capabilities ORDER BY side")
        check_eq([s for s, _ in rows], [0, 1], "both sides' capabilities remembered")
        check(all("QRESYNC" in c.split() for _, c in rows), "with QRESYNC: %r" % rows)
        r = p.run("--debug")
        early = before_login(r.err, "remote")
        check_eq(early[:3], ["ENABLE QRESYNC", 'LIST "" ""',
                             'LIST "" "*" RETURN (SUBSCRIBED STATUS (UIDVALIDITY UIDNEXT '
                             'HIGHESTMODSEQ))'], "second run: the remembered extensions")
        check(early[-1] == "COMPRESS DEFLATE", "COMPRESS behind them: %r" % early)
        check(any(l.startswith("SELECT INBOX (QRESYNC") for l in early),
              "INBOX selected ahead: %r" % early)
        p.assert_in_step()


def test_capabilities_change_between_runs():
    """A server that advertised QRESYNC on the previous run and no longer
    does: what was sent behind the login on that memory fails or is
    harmless, the run goes on in the new tier, says so, and from then on
    sends nothing the server does not advertise."""
    with Pair() as p:
        fill(p.local, {"INBOX": 8, "INBOX/Work": 4}, seed=1)
        p.run()
        p.assert_in_step()
        p.remote.stop(remove=False)
        p.remote.capability = M365
        p.remote.start(keep_ports=True)
        rc = p.login("remote")
        try:
            mail.set_flags(rc, "INBOX", mail.uids(rc, "INBOX")[:2], ["$Label2"])
        finally:
            rc.logout()
        r = p.run("--debug")
        check(any("neither QRESYNC nor CONDSTORE" in l for l in summary(r)),
              "the new tier is said: %r" % summary(r))
        a, b = p.assert_in_step()
        check_eq(len([m for m in a.mailboxes["INBOX"].messages if "$Label2" in m.flags]), 2,
                 "the change made meanwhile is propagated")
        r = p.run("--debug")
        Runner(p, "m365", "remote").check_sent(r.err)
        check_eq(summary(r), [], "then nothing to do")


class PlainCyrus(Cyrus):
    """Cyrus as the test pairs reach it: plain IMAP on its loopback port."""

    kind = "imap"
    ca_file = "/etc/ssl/certs/ca-certificates.crt"  # not used: no TLS


def cyrus_appends(role):
    """Cyrus does not report its HIGHESTMODSEQ after APPEND: after an
    initial copy into it, a run with no change reports nothing, and a flag
    removed on either side before the next run stays removed."""
    if not cyrus_available():
        skip("Cyrus IMAP is not installed (scripts/install-deps.sh)")
    other = "remote" if role == "local" else "local"
    kw = {"%s_server" % role: lambda root: PlainCyrus(root=root, separator="."),
          "%s_section" % role: "STARTTLS = NO"}
    if role == "remote":
        kw["remote_type"] = "imap"
    with Pair(**kw) as p:
        srv = {"local": p.local, "remote": p.remote}
        fill(srv[other], {"INBOX": 30, "INBOX/Work": 10}, seed=6)
        r = p.run("--debug")
        check(quiet_fetches(r.err, role), "the MODSEQ of the copies into Cyrus was asked for")
        a, b = p.assert_in_step()
        check_eq(a.total(), 40, "copied")
        r = p.run()
        check_eq(summary(r), [], "a run with no change reports nothing")
        conns = {side: srv[side].login() for side in (role, other)}
        try:
            for side, pick in ((role, slice(0, 3)), (other, slice(-3, None))):
                snap = mail.snapshot(conns[side], bodies=False)
                seen = [m.uid for m in snap.mailboxes["INBOX"].messages if "\\Seen" in m.flags]
                check(len(seen) >= 6, "enough messages with \\Seen on %s" % side)
                mail.clear_flags(conns[side], "INBOX", seen[pick], ["\\Seen"])
        finally:
            for c in conns.values():
                c.logout()
        r = p.run()
        check("Conflicting" not in r.err, "no conflict: %r" % summary(r))
        a2, b2 = p.assert_in_step()
        before = len([m for m in a.mailboxes["INBOX"].messages if "\\Seen" not in m.flags])
        after = len([m for m in a2.mailboxes["INBOX"].messages if "\\Seen" not in m.flags])
        check_eq(after, before + 6, "\\Seen removed on both sides stays removed")
        r = p.run()
        check_eq(summary(r), [], "then nothing to do")


def test_cyrus_appends_remote():
    cyrus_appends("remote")


def test_cyrus_appends_local():
    cyrus_appends("local")


def need_courier():
    if not courier_available():
        skip("Courier-IMAP is not unpacked (scripts/install-deps.sh)")


def test_condstore_only_local():
    scenario("gmail", "local")


def test_condstore_only_remote():
    scenario("gmail", "remote")


def test_condstore_crash():
    crash("gmail", "remote")
    crash("gmail", "local")


def test_bare_condstore_remote():
    """No LIST-EXTENDED, LIST-STATUS or ESEARCH: LIST and LSUB, STATUS,
    and the UIDs left from a plain UID SEARCH."""
    scenario("bare", "remote")


def test_plain_local():
    scenario("m365", "local")


def test_plain_remote():
    scenario("m365", "remote")


def test_plain_crash():
    crash("m365", "remote")
    crash("m365", "local")


def test_courier_local():
    need_courier()
    scenario("courier", "local")


def test_courier_remote():
    need_courier()
    scenario("courier", "remote")


def test_courier_crash():
    need_courier()
    crash("courier", "remote")
    crash("courier", "local")


if __name__ == "__main__":
    main(globals())
