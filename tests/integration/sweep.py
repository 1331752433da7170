"""The machinery of the crash-point sweep (test_crash_sweep.py): two
Dovecot servers with many accounts, a relay in front of each that can stop
the conversation at an exact command, a model of what the servers must
hold, and the kill-change-rerun cycle.

One account per case: every case starts from its own mail and its own
database, on the same two servers. Both servers speak plain IMAP without
COMPRESS so that the relays can read the commands.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "fixtures"))

from imapfixture import Dovecot, mail, util  # noqa: E402
from imapfixture.relay import ImapRelay, Trap  # noqa: E402

SIDES = ("local", "remote")
# commands a kill point is never chosen at: the opening sequence and the
# goodbye, where a kill is known to be harmless
BORING = {"CAPABILITY", "LOGIN", "AUTHENTICATE", "ENABLE", "COMPRESS", "ID", "LOGOUT", "NOOP",
          "STARTTLS"}


def variable(verb):
    """Whether the number of such commands varies from one run of the same
    work to the next, so that they cannot be counted to: a probe asked
    again (RFC822.SIZE marks it) because the server answered it before the
    APPEND it follows was complete."""
    return verb.startswith("UID FETCH (UID") and "RFC822.SIZE" in verb and \
        "INTERNALDATE" not in verb


def binary():
    return util.interimap_binary()


# -- messages -----------------------------------------------------------------


def make_message(tag, i, size=400):
    """A small message with a unique Message-ID, cheap to build by the
    thousand."""
    mid = "<%s.%d@sweep.example>" % (tag, i)
    line = "Line of message %d of %s, padding the body a little.\r\n" % (i, tag)
    body = line * max(1, size // len(line))
    head = ("From: Sender <sender@example.org>\r\nTo: rcpt@example.net\r\n"
            "Subject: %s number %d\r\nDate: Mon, 02 Jan 2023 10:00:00 +0000\r\n"
            "Message-ID: %s\r\n\r\n" % (tag, i, mid))
    return (head + body).encode()


def msgid_of(tag, i):
    return "<%s.%d@sweep.example>" % (tag, i)


def idate(i):
    return 1672531200 + i * 61


# -- reading a server ---------------------------------------------------------

_MID_RE = re.compile(rb"Message-ID:\s*(<[^>\r\n]*>)", re.I)
_FLAGS_RE = re.compile(rb"FLAGS \(([^)]*)\)")
_UID_RE = re.compile(rb"UID (\d+)")


def read_state(server, user):
    """{mailbox name with '/' as delimiter: sorted [(Message-ID, flags)]}
    for every selectable mailbox. A message listed twice is a duplicate."""
    conn = server.login(user)
    try:
        typ, data = conn.list('""', '"*"')
        if typ != "OK":
            raise RuntimeError("LIST failed: %r" % data)
        out = {}
        for attrs, delim, raw in mail._parse_list(data):
            if any(a.lower() in ("\\noselect", "\\nonexistent") for a in attrs):
                continue
            name = mail.mutf7_decode(raw)
            key = name.replace(delim, "/") if delim else name
            typ, st = conn.select(mail.quote(raw), readonly=True)
            if typ != "OK":
                continue
            msgs = []
            if int(st[0]) > 0:
                typ, rows = conn.uid("FETCH", "1:*",
                                     "(UID FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
                for item in rows:
                    if not isinstance(item, tuple):
                        continue
                    head, lit = item
                    fl = _FLAGS_RE.search(head)
                    flags = tuple(sorted(f for f in fl.group(1).decode().split()
                                         if f != "\\Recent")) if fl else ()
                    m = _MID_RE.search(lit or b"")
                    msgs.append((m.group(1).decode() if m else "?", flags))
            out[key] = sorted(msgs)
            conn.close()
        return out
    finally:
        conn.logout()


def describe_diff(got, want, label):
    """Lines saying how got differs from want (both from read_state)."""
    lines = []
    for name in sorted(set(got) | set(want)):
        g, w = got.get(name), want.get(name)
        if g is None:
            lines.append("%s: mailbox %s missing" % (label, name))
            continue
        if w is None:
            lines.append("%s: mailbox %s should not exist (%d messages)" % (label, name, len(g)))
            continue
        if g == w:
            continue
        gids = [m for m, _ in g]
        wids = {m for m, _ in w}
        dup = sorted({m for m in gids if gids.count(m) > 1})
        lost = sorted(wids - set(gids))
        extra = sorted(set(gids) - wids)
        wf = dict(w)
        flags = sorted(m for m, f in g if m in wf and wf[m] != f)
        lines.append("%s: %s: %d duplicated %s, %d lost %s, %d extra %s, %d wrong flags %s" % (
            label, name, len(dup), dup[:3], len(lost), lost[:3], len(extra), extra[:3],
            len(flags), [(m, dict(g)[m], wf[m]) for m in flags[:3]]))
    return lines


# -- the environment ----------------------------------------------------------


class Env:
    """Two servers with `accounts` accounts each, and their relays."""

    def __init__(self, accounts=60, local_sep="/", remote_sep="/"):
        self.dir = tempfile.mkdtemp(prefix="interimap-sweep-")
        os.chmod(self.dir, 0o755)
        users = {"u%d" % i: "pw%d" % i for i in range(accounts)}
        self.servers = {
            "local": Dovecot(root=os.path.join(self.dir, "local"), users=users, ssl=None,
                             compress=False, separator=local_sep, name="local"),
            "remote": Dovecot(root=os.path.join(self.dir, "remote"), users=users, ssl=None,
                              compress=False, separator=remote_sep, name="remote"),
        }
        self.relays = {}
        self.next_user = 0
        self.accounts = accounts

    def __enter__(self):
        for s in SIDES:
            self.servers[s].start()
            srv = self.servers[s]
            self.relays[s] = ImapRelay(srv.host, srv.imap_port, name=s).start()
        return self

    def __exit__(self, *exc):
        for r in self.relays.values():
            r.stop()
        for srv in self.servers.values():
            try:
                srv.stop()
            except Exception:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def set_delay(self, ms):
        """ms of round trip on the remote link (half each way)."""
        self.relays["remote"].set_delay(ms / 2.0)
        self.relays["local"].set_delay(0)

    def account(self):
        if self.next_user >= self.accounts:
            raise RuntimeError("out of accounts: make the Env bigger")
        user = "u%d" % self.next_user
        self.next_user += 1
        return Account(self, user)


class Result:
    def __init__(self, code, out, err):
        self.code, self.out, self.err = code, out, err

    def __repr__(self):
        return "exit %s\n--- stderr\n%s" % (self.code, self.err[-3000:])


class Account:
    def __init__(self, env, user):
        self.env = env
        self.user = user
        self.dir = os.path.join(env.dir, user)
        os.makedirs(self.dir)
        self.db = os.path.join(self.dir, "state.db")
        self.config_path = os.path.join(self.dir, "config")
        self.write_config()

    def write_config(self, extra=""):
        parts = ["database = %s\n%s\n" % (self.db, extra)]
        for s in SIDES:
            srv = self.env.servers[s]
            parts.append("[%s]\ntype = imap\nhost = 127.0.0.1\nport = %d\nusername = %s\n"
                         "password = %s\nSTARTTLS = NO\ncompress = NO\n\n"
                         % (s, self.env.relays[s].port, self.user, srv.users[self.user]))
        with open(self.config_path, "w") as f:
            f.write("".join(parts))

    def server(self, side):
        return self.env.servers[side]

    def login(self, side):
        return self.server(side).login(self.user)

    def fill(self, side, spec):
        """spec: {mailbox: [(bytes, flags, internaldate)]}"""
        mail.fill(self.server(side), spec, user=self.user)

    def state(self):
        return {s: read_state(self.server(s), self.user) for s in SIDES}

    def start(self, args=(), debug=False):
        cmd = [binary(), "--config", self.config_path] + list(args)
        if debug:
            cmd.append("--debug")
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def run(self, args=(), expect=0, timeout=300):
        proc = self.start(args)
        out, err = proc.communicate(timeout=timeout)
        r = Result(proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))
        if expect is not None and r.code != expect:
            raise AssertionError("interimap %s: expected exit %d, %r" % (" ".join(args), expect, r))
        return r


# -- kill points --------------------------------------------------------------


class KillPoint:
    """Where to stop a run: on which side's link, which command (the k-th
    with that verb), and how (see imapfixture.relay.Trap)."""

    def __init__(self, side, mode, verb=None, k=None, byte=None):
        self.side, self.mode, self.verb, self.k, self.byte = side, mode, verb, k, byte

    def trap(self):
        return Trap(self.mode, k=self.k, verb=self.verb, byte=self.byte)

    def __repr__(self):
        if self.mode == "bytes":
            return "%s: byte %d (%s)" % (self.side, self.byte, self.verb)
        return "%s: %s of %s #%d" % (self.side, self.mode, self.verb, self.k)


def spread_points(commands, n, modes=("reply", "send")):
    """n kill points spread over a reference run's commands (a list of
    (time, side, Command)), cycling through modes. A 'bytes' mode cuts the
    middle of the command it falls on."""
    cands = [(t, s, c) for t, s, c in commands
             if c.verb and c.verb not in BORING and not variable(c.verb)]
    if not cands or n <= 0:
        return []
    points = []
    idx = sorted({min(len(cands) - 1, int((j + 0.5) * len(cands) / n)) for j in range(n)})
    for j, i in enumerate(idx):
        _t, side, cmd = cands[i]
        mode = modes[j % len(modes)]
        if mode == "bytes":
            if cmd.end is None or cmd.end - cmd.start < 64:
                mode = "reply"
            else:
                points.append(KillPoint(side, "bytes", verb=cmd.verb,
                                        byte=(cmd.start + cmd.end) // 2))
                continue
        k = sum(1 for _t2, s2, c2 in commands if s2 == side and c2.verb == cmd.verb and c2.n <= cmd.n)
        points.append(KillPoint(side, mode, verb=cmd.verb, k=k))
    return points


def all_points(commands, modes=("reply", "send", "bytes")):
    """Every command of the reference run in every mode ('bytes' only for
    commands long enough to be cut in the middle)."""
    out = []
    for mode in modes:
        if mode == "bytes":
            long = [x for x in commands if x[2].end is not None and x[2].end - x[2].start >= 64]
            out += spread_points(long, len(long), modes=(mode,))
        else:
            out += spread_points(commands, len(commands), modes=(mode,))
    return out


def record(env, fn):
    """Runs fn() with both relays recording; returns [(time, side, Command)]
    ordered by when each command began."""
    for s in SIDES:
        env.relays[s].disarm()
        env.relays[s].reset()
    fn()
    out = [(c.time, s, c) for s in SIDES for c in env.relays[s].commands]
    return sorted(out, key=lambda x: x[0])


def run_meddling(env, acct, side, trap, meddle, args=("--debug",), timeout=120):
    """Runs interimap with args while `trap` (a keeping "send" trap) holds
    what it sends on side's link; meddle() runs once the trap fired, then
    the link resumes. Returns (exit code, stderr text, errors: the trap
    that never fired, or what meddle raised)."""
    relay = env.relays[side]
    for s in SIDES:
        env.relays[s].disarm()
        env.relays[s].reset()
    relay.arm(trap)
    proc = acct.start(list(args))
    errors = []

    def run():
        if not trap.fired.wait(60):
            errors.append("the held command (%r) was never sent" % trap)
            return
        try:
            meddle(errors)
        except Exception as e:  # reported by the caller
            errors.append(repr(e))
        finally:
            relay.resume()

    t = threading.Thread(target=run)
    t.start()
    _out, err = proc.communicate(timeout=timeout)
    t.join(30)
    relay.disarm()
    return proc.returncode, err.decode("utf-8", "replace"), errors


def kill_at(env, acct, args, point, settle=0.15, timeout=120, during=None):
    """Runs interimap with args and SIGKILLs it at the kill point. Checks
    that the trap fired (the run reached the intended command) while the
    process was alive, and that it died of the signal. during(): called
    in a loop while waiting (deliveries while a --watch runs). Returns the
    trap's record of where it fell."""
    relay = env.relays[point.side]
    for s in SIDES:
        env.relays[s].disarm()
    trap = point.trap()
    relay.arm(trap)
    proc = acct.start(args)
    deadline = time.monotonic() + timeout
    try:
        while not trap.fired.wait(0.05):
            if proc.poll() is not None or time.monotonic() > deadline:
                break
            if during:
                during()
        fired = trap.fired.is_set()
        if fired and point.mode != "reply":
            time.sleep(settle)  # let the tool take in what it was sent
        alive = proc.poll() is None
        if alive:
            proc.send_signal(signal.SIGKILL)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    finally:
        for s in SIDES:
            env.relays[s].disarm()
    if not fired:
        raise AssertionError("kill point %r never reached: the run ended with exit %s\n%s"
                             % (point, proc.returncode, err.decode("utf-8", "replace")[-2000:]))
    if not alive or proc.returncode != -signal.SIGKILL:
        raise AssertionError("kill point %r reached but the process %s (exit %s)"
                             % (point, "had ended" if not alive else "survived", proc.returncode))
    info = trap.info or {}
    if point.verb and info.get("verb") != point.verb:
        raise AssertionError("kill point %r fell on %r" % (point, info))
    return info


# -- the model of what the servers must hold -----------------------------------


class Model:
    """What both servers must hold: {mailbox: {Message-ID: set(flags)}}."""

    def __init__(self, state):
        self.boxes = {name: {m: set(f) for m, f in msgs} for name, msgs in state.items()}

    def expected(self):
        return {name: sorted((m, tuple(sorted(f))) for m, f in msgs.items())
                for name, msgs in self.boxes.items()}

    def find(self, msgid):
        for name, msgs in self.boxes.items():
            if msgid in msgs:
                return name
        return None

    def expunge(self, msgid):
        for msgs in self.boxes.values():
            msgs.pop(msgid, None)

    def add_flag(self, msgid, flag):
        for msgs in self.boxes.values():
            if msgid in msgs:
                msgs[msgid].add(flag)

    def deliver(self, mailbox, msgid, flags):
        self.boxes.setdefault(mailbox, {})[msgid] = set(flags)


def on_side(state, mailbox, msgid):
    return any(m == msgid for m, _f in state.get(mailbox, []))


def uid_of(conn, mailbox, msgid):
    typ, _ = conn.select(mail.wire_name(mailbox))
    if typ != "OK":
        return None
    typ, data = conn.uid("SEARCH", "HEADER", "Message-ID", msgid)
    conn.close()
    found = data[0].split() if typ == "OK" and data and data[0] else []
    return int(found[0]) if found else None


class Outage:
    """Ordinary changes made on both sides while the tool is down, chosen
    from what the servers hold after the kill, and applied to the model
    of the expected result."""

    def __init__(self, acct, model, origin, rng, avoid_boxes=(), avoid_msgs=(), rename=None,
                 inbox="INBOX", tag="out"):
        self.acct, self.model, self.origin, self.rng = acct, model, origin, rng
        self.avoid_boxes = set(avoid_boxes)
        self.avoid_msgs = set(avoid_msgs)
        self.rename = rename or (lambda name: name)
        self.inbox = inbox
        self.tag = tag
        self.log = []

    def _expunge(self, side, mailbox, msgid):
        conn = self.acct.login(side)
        try:
            uid = uid_of(conn, mailbox, msgid)
            if uid is None:
                return False
            mail.expunge(conn, mailbox, [uid])
        finally:
            conn.logout()
        self.model.expunge(msgid)
        self.log.append("expunged %s on %s (%s)" % (msgid, side, mailbox))
        return True

    def _flag(self, side, mailbox, msgid, flag):
        conn = self.acct.login(side)
        try:
            uid = uid_of(conn, mailbox, msgid)
            if uid is None:
                return False
            mail.set_flags(conn, mailbox, [uid], [flag])
        finally:
            conn.logout()
        self.model.add_flag(msgid, flag)
        self.log.append("flagged %s %s on %s (%s)" % (msgid, flag, side, mailbox))
        return True

    def apply(self, kstate, copies_to_expunge=1):
        """kstate: read_state of both sides after the kill."""
        rng = self.rng
        both, only = [], {"local": [], "remote": []}
        for name in sorted(set(kstate["local"]) | set(kstate["remote"])):
            if name in self.avoid_boxes or self.rename(name) in self.avoid_boxes:
                continue
            ids = {s: {m for m, _f in kstate[s].get(name, [])} for s in SIDES}
            for m in sorted(ids["local"] | ids["remote"]):
                if m in self.avoid_msgs or self.model.find(m) is None:
                    continue
                if m in ids["local"] and m in ids["remote"]:
                    both.append((name, m))
                else:
                    only["local" if m in ids["local"] else "remote"].append((name, m))
        rng.shuffle(both)
        for s in SIDES:
            rng.shuffle(only[s])
        # originals of messages already copied
        for name, m in both[:2]:
            side = self.origin.get(m)
            if side:
                self._expunge(side, name, m)
        # copies, a few
        for name, m in both[2:2 + copies_to_expunge]:
            side = self.origin.get(m)
            if side:
                self._expunge("remote" if side == "local" else "local", name, m)
        # not copied yet
        for s in SIDES:
            for name, m in only[s][:1]:
                self._expunge(s, name, m)
        # flags on both sides, the same message on both for one of them
        rest = both[2 + copies_to_expunge:]
        for name, m in rest[:2]:
            self._flag("local", name, m, "$OutLocal")
        for name, m in rest[1:3]:
            self._flag("remote", name, m, "$OutRemote")
        for s in SIDES:
            for name, m in only[s][1:2]:
                self._flag(s, name, m, "$OutOnly")
        # deliveries on both sides
        for i, s in enumerate(SIDES):
            box = self.inbox
            conn = self.acct.login(s)
            try:
                for j in range(2):
                    n = 2 * i + j
                    flags = ("\\Seen",) if j else ()
                    mail.append(conn, box, make_message(self.tag, n), flags, idate(n))
                    mid = msgid_of(self.tag, n)
                    self.model.deliver(self.rename(box), mid, flags)
                    self.origin[mid] = s
            finally:
                conn.logout()
        self.log.append("delivered 2 messages on each side")
        return self.log


def check_outcome(acct, model, label, runs=1, command=None):
    """Runs interimap `runs` times (the rerun after the kill, then a further
    run), each must exit 0; after each, both servers must equal the model:
    no duplicate, nothing lost, nothing resurrected, flags as expected.
    command: the command that was killed (--rename ...), run again first,
    as a user would (it may refuse when the killed run had finished it:
    what counts is what the servers hold afterwards)."""
    want = model.expected()
    if command:
        acct.run(command, expect=None)
    for i in range(runs):
        r = acct.run([], expect=None)
        st = acct.state()
        problems = []
        if r.code != 0:
            problems.append("exit %d" % r.code)
        for s in SIDES:
            problems += describe_diff(st[s], want, s)
        if problems:
            raise AssertionError("%s, run %d after the kill:\n  %s\n%r"
                                 % (label, i + 1, "\n  ".join(problems), r))
    return True
