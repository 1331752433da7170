#!/usr/bin/env python3
"""Every kind of server against Dovecot, in both roles: a full Dovecot
(QRESYNC), Cyrus IMAP, Dovecot advertising CONDSTORE but not QRESYNC,
Dovecot advertising neither, and Courier-IMAP (a server without either).

One test per pairing and role runs, on one pair of servers: the initial
sync (nested and non-ASCII names, different delimiters on the two sides),
a run with no change, new mail, flag changes and expunges on both sides,
a flag removed staying removed, mailboxes created on both sides, --rename
and --delete; a run killed by SIGKILL mid-copy in each direction with
changes made on both sides meanwhile, then run again (nothing duplicated,
lost or resurrected, and a further run has nothing to do); and --watch
--notify with a reconnection (SIGUSR1), where the server without NOTIFY
gets IDLE on INBOX.

Every run is traced (--debug) and the commands each side was sent are
checked against what that server advertised in the same trace: no
ENABLE, CONDSTORE, QRESYNC, RETURN (...), COMPRESS, NOTIFY, UNSELECT,
ESEARCH, IDLE, MULTIAPPEND or LITERAL+ to a server that did not offer it.

Arguments select tests by name (e.g. `cyrus`, `_local`)."""

import hashlib
import os
import re
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pair import Pair  # noqa: E402
from test_crash import run_and_kill  # noqa: E402
from test_cyrus import without_empty_parents  # noqa: E402
from test_tiers import GMAIL, M365, PlainCyrus, summary  # noqa: E402
from watchkit import Watcher, wait_for  # noqa: E402
from imapfixture import (Courier, Dovecot, check, check_eq, courier_available,  # noqa: E402
                         cyrus_available, main, mail, skip)
from imapfixture.mail import MessageGenerator  # noqa: E402

KINDS = ("dovecot", "cyrus", "condstore", "plain", "courier")
# The line said on the first use of a server without QRESYNC.
TIER_SAID = {"dovecot": None, "cyrus": None, "condstore": "CONDSTORE without QRESYNC",
             "plain": "neither QRESYNC nor CONDSTORE", "courier": "neither QRESYNC nor CONDSTORE"}


def need(kind):
    ci = os.environ.get("CI")
    if kind == "cyrus" and not cyrus_available():
        if ci:
            raise AssertionError("Cyrus IMAP missing in CI")
        skip("Cyrus IMAP is not installed (scripts/install-deps.sh)")
    if kind == "courier" and not courier_available():
        if ci:
            raise AssertionError("Courier-IMAP missing in CI")
        skip("Courier-IMAP is not unpacked (scripts/install-deps.sh)")


def factory(kind):
    """The server under test, with '.' as its delimiter (the Dovecot on the
    other side has '/')."""
    if kind == "cyrus":
        return lambda root: PlainCyrus(root=root, separator=".")
    if kind == "courier":
        # without a file alteration monitor, Courier looks at the folder
        # every IMAP_IDLE_TIMEOUT seconds during IDLE
        return lambda root: Courier(root=root, name="courier", idle_timeout=2)
    caps = {"dovecot": None, "condstore": GMAIL, "plain": M365}[kind]
    return lambda root: Dovecot(root=root, name=kind, separator=".", capability=caps,
                                compress=kind in ("dovecot", "condstore"))


def make_pair(kind, role):
    kw = {"%s_server" % role: factory(kind)}
    if kind == "cyrus":
        kw["%s_section" % role] = "STARTTLS = NO"
    if role == "local":
        kw["remote_sep"] = "/"
    else:
        kw["local_sep"] = "/"
        kw["remote_type"] = "imap" if kind == "cyrus" else "imaps"
    return Pair(**kw)


# Courier keeps every mailbox below INBOX; the others get top-level names.
def root(kind):
    return "INBOX/" if kind == "courier" else ""


def wire(srv, name):
    return name.replace("/", srv.separator)


def imap_fill(srv, spec, seed):
    """spec: {name with '/': count}: created and appended over IMAP (every
    server takes that), parents before children."""
    gen = MessageGenerator(seed)
    conn = srv.login()
    try:
        for name in sorted(spec):
            w = wire(srv, name)
            if w.upper() != "INBOX":
                mail.create(conn, w)
            for data, flags, idate in gen.mailbox(spec[name]):
                mail.append(conn, w, data, flags=flags, internaldate=idate)
    finally:
        conn.logout()


# -- what a server may be sent ----------------------------------------------

# (pattern over a command line sent, capability it needs; None: any of
# the capabilities in the tuple)
NEEDS = [
    (r"^\d+ ENABLE\b", ("ENABLE",)),
    (r"\bQRESYNC\b|\bVANISHED\b", ("QRESYNC",)),
    (r"\bCONDSTORE\b|\bMODSEQ\b|\bCHANGEDSINCE\b|\bUNCHANGEDSINCE\b", ("CONDSTORE", "QRESYNC")),
    (r"^\d+ LIST .*\bRETURN \(.*\bSTATUS\b", ("LIST-STATUS",)),
    (r"^\d+ LIST .*\bRETURN\b", ("LIST-EXTENDED",)),
    (r"^\d+ (UID )?SEARCH RETURN\b", ("ESEARCH",)),
    (r"^\d+ COMPRESS\b", ("COMPRESS=DEFLATE",)),
    (r"^\d+ NOTIFY\b", ("NOTIFY",)),
    (r"^\d+ UNSELECT\b", ("UNSELECT",)),
    (r"^\d+ IDLE\b", ("IDLE",)),
    (r"^\d+ ID\b", ("ID",)),
    (r"\{\d+\+\}$", ("LITERAL+", "LITERAL-")),
]
# What each kind of server offers and lacks, as the tests rely on it.
KIND_CAPS = {"dovecot": (("QRESYNC", "CONDSTORE"), ()),
             "cyrus": (("QRESYNC", "CONDSTORE"), ()),
             "condstore": (("CONDSTORE",), ("QRESYNC",)),
             "plain": ((), ("QRESYNC", "CONDSTORE")),
             "courier": ((), ("QRESYNC", "CONDSTORE"))}
CAP_RX = re.compile(r"\[CAPABILITY ([^\]]*)\]|^\* CAPABILITY (.*)$")


def advertised(log, side):
    """Every capability side's server advertised in the trace (greetings,
    login replies, CAPABILITY responses), upper case."""
    caps = set()
    for line in log.splitlines():
        if line.startswith(side + ": S: "):
            m = CAP_RX.search(line[len(side) + 5:])
            if m:
                caps.update(w.upper() for w in (m.group(1) or m.group(2)).split())
    return caps


def sent(log, side):
    return [line[len(side) + 5:] for line in log.splitlines() if line.startswith(side + ": C: ")]


def check_extensions(log, side, what):
    """Fails if side was sent a command or argument of an extension its
    server did not advertise in this trace; returns the commands sent."""
    caps = advertised(log, side)
    cmds = sent(log, side)
    check(caps and cmds, "%s: the %s server was talked to and advertised capabilities"
          % (what, side))
    for rx, need_any in NEEDS:
        if any(c in caps for c in need_any):
            continue
        bad = [c for c in cmds if re.search(rx, c)]
        check(not bad, "%s: %s was sent %s without advertising %s: %r"
              % (what, side, rx, "/".join(need_any), bad[:3]))
    if "MULTIAPPEND" not in caps:
        appends = len([c for c in cmds if re.match(r"\d+ APPEND ", c)])
        messages = len([c for c in cmds if c.startswith(" (")])
        check_eq(messages, appends, "%s: one message per APPEND to %s" % (what, side))
    # a literal of more than 4096 octets needs LITERAL+, not LITERAL-
    if "LITERAL+" not in caps:
        big = [c for c in cmds if (m := re.search(r"\{(\d+)\+\}$", c)) and int(m.group(1)) > 4096]
        check(not big, "%s: no big non-synchronizing literal to %s: %r" % (what, side, big[:2]))
    return cmds


class Matrix:
    """One pairing: the server under test in `role`, Dovecot on the other
    side, and the runs made on them."""

    def __init__(self, p, kind, role):
        self.p, self.kind, self.role = p, kind, role
        self.other = "remote" if role == "local" else "local"
        self.srv = {"local": p.local, "remote": p.remote}
        self.base = root(kind)

    def name(self, side, n):
        return wire(self.srv[side], self.base + n if n != "INBOX" else n)

    def run(self, *args, what="run"):
        r = self.p.run("--debug", *args)
        for side in ("local", "remote"):
            check_extensions(r.err, side, "%s %s/%s" % (what, self.kind, self.role))
        self.check_kind(r.err)
        return r

    def check_kind(self, log):
        """The server under test really offered what its kind says (and not
        more): a tier test against a server that advertised QRESYNC after
        all would test nothing."""
        caps = advertised(log, self.role)
        has, lacks = KIND_CAPS[self.kind]
        check(set(has) <= caps and not set(lacks) & caps,
              "the %s server (%s) advertises %s and not %s: %s"
              % (self.kind, self.role, "/".join(has) or "-", "/".join(lacks) or "-", sorted(caps)))

    def settle(self, parents):
        """Cyrus makes the parents of a new nested mailbox real mailboxes,
        so the run after one was created there creates those parents on
        the other side (the Perl tool does the same). Nothing else may
        happen in that run; on other servers it has nothing to do."""
        r = self.run(what="settle")
        lines = summary(r)
        if self.kind != "cyrus":
            check_eq(lines, [], "nothing to do")
            return
        made = set()
        for line in lines:
            mt = re.match(r"^(local|remote|database): Created mailbox (.*)$", line)
            check(mt, "only parents created on Cyrus's account: %r" % lines)
            made.add(mail.mutf7_decode(re.sub(r"[./]", "/", mt.group(2))))
        check(made <= set(parents), "the parents %r, not %r" % (parents, sorted(made)))

    def conns(self):
        return {side: self.srv[side].login() for side in ("local", "remote")}

    def names(self, snap):
        """Selectable mailbox names of a snapshot, '/' as delimiter."""
        return sorted(without_empty_parents(snap))

    def in_step(self):
        """Both sides hold the same messages in the same mailboxes, no
        duplicates, the database maps each message once. Cyrus makes real
        (empty) parents where Dovecot lists placeholders: an empty mailbox
        with children on one side only does not count (test_cyrus shows
        the Perl tool leaves the same)."""
        if self.kind != "cyrus":
            return self.p.assert_in_step()
        a, b = self.p.snaps()
        check_eq(without_empty_parents(a), without_empty_parents(b), "both sides hold the same")
        for side, snap in (("local", a), ("remote", b)):
            check_eq(snap.duplicates(), {}, "no duplicates on %s" % side)
        self.p.assert_db_consistent(a, b)
        return a, b


def initial_and_changes(m):
    """The synchronization scenarios; returns the message count."""
    base, p = m.base, m.p
    imap_fill(m.srv[m.role], {"INBOX": 6, base + "Work": 4, base + "Projets/Été": 3}, seed=1)
    imap_fill(m.srv[m.other], {"INBOX": 3, base + "Listes/Débats/Ça": 4, base + "Reçus": 2}, seed=2)
    r = m.run(what="initial")
    for side in ("local", "remote"):
        check(any(line.startswith(side + ": tier ") for line in r.err.splitlines()),
              "--debug says the %s tier" % side)
    said = [line for line in summary(r) if "QRESYNC" in line]
    if TIER_SAID[m.kind]:
        check(any(line.startswith("%s: %s" % (m.role, TIER_SAID[m.kind])) for line in said),
              "the %s tier is said on first use: %r" % (m.role, said))
    else:
        check_eq(said, [], "with QRESYNC on both sides, no tier line")
    a, b = m.in_step()
    check_eq(a.total(), 22, "messages after the initial copy")
    names = m.names(a)
    for n in ("Projets/Été", "Listes/Débats/Ça", "Reçus", "Work"):
        check(base + n in names, "%s on both sides after the initial sync: %r" % (n, names))
    m.settle([base + "Listes", base + "Listes/Débats", base + "Projets"])

    r = m.run(what="no change")
    check_eq(summary(r), [], "a run with no change says nothing")

    # new mail, flags set and cleared, expunges, on both sides
    c = m.conns()
    try:
        gen = MessageGenerator(5)
        mine, theirs = c[m.role], c[m.other]
        for _ in range(2):
            mail.append(mine, m.name(m.role, "Reçus"), gen.message(), flags=["\\Seen"])
            mail.append(theirs, "INBOX", gen.message())
        ru = mail.uids(mine, "INBOX")
        tu = mail.uids(theirs, m.name(m.other, "Work"))
        mail.set_flags(mine, "INBOX", ru[:2], ["\\Flagged", "$Label1"])
        mail.set_flags(theirs, m.name(m.other, "Work"), tu[:2], ["\\Answered", "$Label2"])
        mail.clear_flags(mine, "INBOX", ru, ["\\Seen"])
        mail.expunge(mine, m.name(m.role, "Work"), mail.uids(mine, m.name(m.role, "Work"))[-1:])
        mail.expunge(theirs, "INBOX", mail.uids(theirs, "INBOX")[:1])
    finally:
        for conn in c.values():
            conn.logout()
    r = m.run(what="changes")
    check("Conflicting" not in r.err, "no conflict: %r" % summary(r))
    a, b = m.in_step()
    check_eq(a.total(), 22 + 4 - 2, "new mail in, expunged out")
    for snap in (a, b):
        inbox = snap.mailboxes["INBOX"].messages
        check_eq(len([x for x in inbox if "$Label1" in x.flags]), 2, "keyword set on %s" % m.role)
        check_eq([x for x in inbox if "\\Seen" in x.flags], [],
                 "\\Seen cleared on %s everywhere" % m.role)
        work = snap.mailboxes[wire_snap(snap, base + "Work")].messages
        check_eq(len([x for x in work if "$Label2" in x.flags]), 2, "keyword set on %s" % m.other)
    check_eq(summary(m.run(what="after changes")), [], "then nothing to do")

    # a flag removed on either side stays removed
    for side in (m.role, m.other):
        c = m.srv[side].login()
        try:
            mail.clear_flags(c, "INBOX", mail.uids(c, "INBOX"), ["\\Flagged"])
        finally:
            c.logout()
        m.run(what="unflag")
        a, b = m.in_step()
        check_eq([x for x in a.mailboxes["INBOX"].messages if "\\Flagged" in x.flags], [],
                 "\\Flagged removed on %s stays removed" % side)

    # mailboxes created on both sides, then --rename and --delete
    for side, n in ((m.role, "Neu/Drüben"), (m.other, "Other")):
        c = m.srv[side].login()
        try:
            mail.create(c, m.name(side, n))
            mail.append(c, m.name(side, n), MessageGenerator(9).message())
        finally:
            c.logout()
    m.run(what="create")
    m.settle([base + "Neu"])
    a, b = m.in_step()
    check(base + "Neu/Drüben" in m.names(a) and base + "Other" in m.names(a),
          "created mailboxes on both sides: %r" % m.names(a))
    check_eq(a.total(), 26, "messages with the new mailboxes")

    # names on the command line: modified UTF-7, the local delimiter
    local = m.srv["local"]
    m.run("--rename", wire(local, base + "Work"), mail.mutf7_encode(wire(local, base + "Büro")),
          what="rename")
    m.run("--delete", wire(local, base + "Other"), what="delete")
    # Courier gives a renamed mailbox new UIDs: the run after pairs its
    # messages again by content; elsewhere it has nothing to do
    r = m.run(what="after rename")
    if m.kind == "courier":
        check(any("adopt" in line.lower() for line in summary(r)),
              "the renamed mailbox's messages paired again: %r" % summary(r))
    else:
        check_eq(summary(r), [], "nothing to do after the rename")
    # an empty parent may be left where a server keeps one; the children are what count
    a, b = m.in_step()
    names = m.names(a)
    check(base + "Büro" in names and base + "Work" not in names, "renamed: %r" % names)
    check(base + "Other" not in names, "deleted: %r" % names)
    check(base + "Other" not in m.names(b) and base + "Work" not in m.names(b),
          "renamed and deleted on both: %r" % m.names(b))
    check_eq(a.total(), 25, "messages after the deletion of a mailbox of one")
    check_eq(summary(m.run(what="after rename")), [], "then nothing to do")
    return a.total()


def wire_snap(snap, name):
    return name.replace("/", snap.delimiter) if snap.delimiter else name


def crash(m, total):
    """Killed mid-copy in each direction, changes on both sides during the
    outage, run again."""
    base = m.base
    for direction, (src, dst) in enumerate(((m.other, m.role), (m.role, m.other))):
        box = base + ("Crash%d" % direction)
        imap_fill(m.srv[src], {box: 24}, seed=20 + direction)
        # a body streaming from the source, well inside the mailbox
        line = run_and_kill(m.p, r"^%s: S: \* \d+ FETCH \(.*INTERNALDATE .*BODY\[\]" % src, 12)
        check(line, "killed while %s streamed bodies to %s" % (src, dst))
        # during the outage: new mail, a flag and an expunge on both sides,
        # on messages the previous runs synced
        gone, flagged = [], []
        c = m.conns()
        try:
            gen = MessageGenerator(30 + direction)
            fresh = set()
            for side in ("local", "remote"):
                conn = c[side]
                msg = gen.message()
                fresh.add(hashlib.sha256(msg).hexdigest())
                mail.append(conn, "INBOX", msg)
                snap_uids = mail.uids(conn, m.name(side, "Reçus"))
                mail.set_flags(conn, m.name(side, "Reçus"), snap_uids[:1], ["$Outage%d" % direction])
            for side in ("local", "remote"):
                conn = c[side]
                inbox = mail.snapshot(conn).mailboxes["INBOX"].messages
                # a different message on each side, both synced before
                victim = next(x for x in inbox if x.sha256 not in gone and x.sha256 not in fresh)
                gone.append(victim.sha256)
                mail.expunge(conn, "INBOX", [victim.uid])
        finally:
            for conn in c.values():
                conn.logout()
        flagged.append("$Outage%d" % direction)
        m.run(what="rerun after kill %d" % direction)
        a, b = m.in_step()
        total += 24 + 2 - 2
        check_eq(a.total(), total, "nothing lost, nothing duplicated after kill %d" % direction)
        check_eq(len(a.mailboxes[wire_snap(a, box)].messages), 24, "the interrupted mailbox")
        for snap in (a, b):
            shas = {x.sha256 for mb in snap.mailboxes.values() for x in mb.messages}
            check(not (set(gone) & shas), "expunged during the outage and not resurrected")
            reçus = snap.mailboxes[wire_snap(snap, base + "Reçus")].messages
            check(len([x for x in reçus if flagged[-1] in x.flags]) >= 1,
                  "flag set during the outage propagated")
        r = m.run(what="after rerun %d" % direction)
        check_eq(summary(r), [], "a further run changes nothing")
        a2, _ = m.in_step()
        check_eq(a2.content(), a.content(), "and nothing moved")
    return total


def watch(m):
    """--watch --notify: INBOX changes on both sides arrive through NOTIFY
    or IDLE (the polling interval is far away), and again after SIGUSR1
    made it reconnect; the trace shows nothing unadvertised, on every
    connection."""
    p = m.p
    w = Watcher(p, "--debug", "--watch=600", "--notify")
    g = MessageGenerator(50)

    def inbox_count(side, flag=None):
        conn = m.srv[side].login()
        try:
            crit = "ALL" if flag is None else "KEYWORD %s" % flag
            typ, data = conn.select("INBOX", readonly=True)
            typ, data = conn.uid("SEARCH", crit)
            return len(data[0].split())
        finally:
            conn.logout()

    def push(side, flag):
        """Appends to side's INBOX and sets flag on its first message."""
        conn = m.srv[side].login()
        try:
            mail.append(conn, "INBOX", g.message())
            mail.set_flags(conn, "INBOX", mail.uids(conn, "INBOX")[:1], [flag])
        finally:
            conn.logout()

    def idle_started(nth):
        """Both sides are waiting (IDLE or NOTIFY) for the nth time."""
        text = w.text()
        return all(len(re.findall(r"^%s: C: \d+ (IDLE|NOTIFY SET)" % s, text, re.M)) >= nth
                   for s in ("local", "remote"))

    def greetings(text):
        """Connections opened to the server under test (a tunnel to
        Courier is greeted with PREAUTH and has no login)."""
        return len(re.findall(r"^%s: S: \* (OK \[CAPABILITY |PREAUTH)" % m.role, text, re.M))

    try:
        check(wait_for(lambda: idle_started(1), bound=60) is not None,
              "the watcher waits on both sides: %s" % w.text()[-3000:])
        for rnd in range(2):
            for side in (m.role, m.other):
                n = inbox_count(side)
                flag = "$W%d%s" % (rnd, side[0])
                push(side, flag)
                dest = "remote" if side == "local" else "local"
                arrived = wait_for(lambda: inbox_count(dest) == n + 1
                                   and inbox_count(dest, flag) == 1, bound=30)
                check(arrived is not None, "round %d: a change on %s reached %s: %s"
                      % (rnd, side, dest, w.text()[-3000:]))
            if rnd == 0:
                before = greetings(w.text())
                w.send(signal.SIGUSR1)
                check(wait_for(lambda: greetings(w.text()) > before and idle_started(2),
                               bound=60) is not None,
                      "SIGUSR1: reconnected and waiting again: %s" % w.text()[-3000:])
    finally:
        code, log = w.stop()
    check_eq(code, 0, "SIGTERM ends the watcher with status 0")
    caps = advertised(log, m.role)
    cmds = check_extensions(log, m.role, "watch %s/%s" % (m.kind, m.role))
    check_extensions(log, m.other, "watch %s/%s" % (m.kind, m.role))
    # a cycle per change and at most a second look after it, plus the
    # reconnection's: a watcher that found news in its own state (a
    # server without mod-sequences or UIDNEXT) would cycle without end
    cycles = len([c for c in cmds if re.match(r'\d+ LIST "" "\*"', c)])
    check(2 <= cycles <= 16, "%d cycles for 4 changes and a reconnection" % cycles)
    if "NOTIFY" not in caps:
        check(any(re.match(r"\d+ IDLE$", c) for c in cmds),
              "%s has no NOTIFY: IDLE instead" % m.kind)
    else:
        check(any(re.match(r"\d+ NOTIFY SET", c) for c in cmds), "NOTIFY used where offered")
    m.in_step()


def pairing(kind, role):
    need(kind)
    with make_pair(kind, role) as p:
        m = Matrix(p, kind, role)
        total = initial_and_changes(m)
        crash(m, total)
        watch(m)


def connections(log, side):
    """The trace of side cut at each greeting, or where the login went out
    ahead of it (imaps, a greeting remembered): one piece per connection."""
    pieces, cur, ahead = [], None, False
    for line in log.splitlines():
        greeting = re.match(r"^%s: S: \* (OK \[CAPABILITY |PREAUTH)" % side, line)
        if line.startswith("%s: login sent ahead of the greeting" % side):
            ahead = True
            cur = []
            pieces.append(cur)
        elif greeting and ahead:
            ahead = False  # the greeting of the connection just begun
        elif greeting:
            cur = []
            pieces.append(cur)
        if cur is not None:
            cur.append(line)
    return ["\n".join(p) for p in pieces]


def after_login(piece, side):
    """A connection's trace from the login's tagged reply on: what was sent
    once the server's capabilities were known."""
    lines = piece.splitlines()
    tag = None
    for i, line in enumerate(lines):
        mt = re.match(r"^%s: C: (\d+) (LOGIN|AUTHENTICATE) " % side, line)
        if mt and tag is None:
            tag = mt.group(1)
        elif tag and line.startswith("%s: S: %s " % (side, tag)):
            return "\n".join(lines[i:])
    raise AssertionError("no login reply in %r" % piece[:500])


def test_watch_capabilities_change():
    """The remote server restarts with neither NOTIFY, QRESYNC, CONDSTORE
    nor COMPRESS while --watch --notify runs on NOTIFY: the watcher
    reconnects, waits with IDLE from then on, changes still arrive, and
    once the new login's capabilities are known nothing it no longer
    advertises is sent (what went behind the login on the old ones is
    allowed to fail)."""
    with Pair() as p:
        imap_fill(p.local, {"INBOX": 3}, seed=1)
        w = Watcher(p, "--debug", "--watch=600", "--notify")
        g = MessageGenerator(60)
        try:
            check(wait_for(lambda: re.search(r"^remote: C: \d+ NOTIFY SET", w.text(), re.M),
                           bound=60) is not None, "NOTIFY at first: %s" % w.text()[-2000:])
            p.remote.stop(remove=False)
            p.remote.capability = M365
            p.remote.start(keep_ports=True)
            check(wait_for(lambda: len(connections(w.text(), "remote")) >= 2 and
                           re.search(r"^remote: C: \d+ IDLE$", w.text(), re.M), bound=90)
                  is not None, "reconnected, then IDLE: %s" % w.text()[-3000:])
            for side, dest in (("remote", "local"), ("local", "remote")):
                conn = p.login(side)
                try:
                    n = len(mail.uids(conn, "INBOX"))
                    mail.append(conn, "INBOX", g.message())
                finally:
                    conn.logout()

                def arrived():
                    c = p.login(dest)
                    try:
                        return len(mail.uids(c, "INBOX")) == n + 1
                    finally:
                        c.logout()
                check(wait_for(arrived, bound=30) is not None,
                      "a change on %s reached %s after the restart: %s"
                      % (side, dest, w.text()[-3000:]))
        finally:
            code, log = w.stop()
        check_eq(code, 0, "SIGTERM ends the watcher with status 0")
        pieces = connections(log, "remote")
        check(len(pieces) >= 2, "two connections to remote")
        check("NOTIFY" in advertised(pieces[0], "remote"), "NOTIFY offered before the restart")
        last = pieces[-1]
        check("NOTIFY" not in advertised(last, "remote"), "and no longer after it")
        late = after_login(last, "remote")
        check_extensions(late, "remote", "after the restart")
        check(not re.search(r"^remote: C: \d+ NOTIFY", late, re.M), "no NOTIFY after the restart")
        check_extensions(log, "local", "watch across a restart")
        p.assert_in_step()


def _make(kind, role):
    def test():
        pairing(kind, role)
    test.__name__ = "test_%s_%s" % (kind, role)
    test.__doc__ = "%s as %s, Dovecot as the other side" % (kind, role)
    return test


for _kind in KINDS:
    for _role in ("local", "remote"):
        _t = _make(_kind, _role)
        globals()[_t.__name__] = _t


if __name__ == "__main__":
    main(globals())
