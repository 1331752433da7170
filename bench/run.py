#!/usr/bin/env python3
"""Side-by-side benchmark: ours against the Perl interimap and mbsync.

    python3 bench/run.py [--quick] [--json OUT.json] [--delay-both]
                         [--only WORKLOAD[,WORKLOAD...]] [--reps N]
                         [--delays 0,25] [--rates 50,10]
                         [--tools perl,ours,mbsync,floor] [--timeout S]
                         [--tier qresync|condstore|plain]
                         [--ours PATH] [--before PATH] [--no-verify] [--keep]

For every workload, link and repetition it starts two fresh Dovecot servers
(tests/fixtures), fills them with the same seeded mail, puts a latency relay
(bench/latency_relay.py) in front of the remote server (and the local one
with --delay-both), and runs each tool on its own identical copy. A link is
a one-way delay from --delays; workloads that move many bytes also run at
the largest delay with each bandwidth limit of --rates. Resync workloads
first let the tool under test do the initial synchronization itself
(untimed, on an unlimited link without delay), then apply the same seeded
changes to both servers, then time the run that propagates them. Each
measured process is started by bench/spawn.c, which reports its wall time,
user+sys CPU and peak RSS from wait4(). The relay reports bytes and
turn-arounds on the remote link. Figures are medians over the repetitions.

The "floor" tool (bench/floor.c) is the least a tool must do: on initial
syncs the simplest pipelined copier, on no-change runs a login and one
LIST-STATUS on each server.

--tier makes the remote Dovecot advertise what Gmail does (condstore:
CONDSTORE without QRESYNC, no MULTIAPPEND, LITERAL- only) or what
Microsoft 365 does (plain: neither), so that our tool runs on that tier
against it; the Perl tool, which needs QRESYNC, and the floor, which uses
what the server no longer advertises, are left out there.

Python 3 standard library only. Needs root (Dovecot's mail processes run as
dovenull, like the integration tests), cc and libssl-dev; mbsync (Debian
package isync) for its rows.
"""

import argparse
import base64
import imaplib
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(TOP, "tests", "fixtures"))
sys.path.insert(0, HERE)

from imapfixture import Dovecot, mail  # noqa: E402
from imapfixture.certs import TestCA  # noqa: E402
import latency_relay  # noqa: E402

PERL_INTERIMAP = "/usr/bin/interimap"
USER, PASSWORD = "user", "pass"
SEED = 20240501


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# -- mail generation ----------------------------------------------------------
#
# The fixture's MessageGenerator quoted-printable-encodes bodies byte by byte
# in Python, which takes minutes for the 150 MB of the initial workload. The
# messages here are built from a seeded pool of text and random bytes
# instead: same seed, same bytes, in a few seconds.

_WORDS = ("the quick brown fox jumps over lazy dog meeting report budget release "
          "notes server sync mailbox folder review draft patch invoice travel plan "
          "schedule minutes update question answer weekly status backup restore "
          "migration kernel network café naïve Grüße résumé").split()
_NAMES = ["Alice Smith", "Bob Martin", "Carol Dupont", "Dave Müller", "Eve Rossi",
          "Frank García", "Grace Nowak", "Heidi Jensen", "Ivan Tanaka", "Judy Brown"]


class Generator:
    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.seed = seed
        self.count = 0
        pool_rng = random.Random(seed ^ 0x5EED)
        lines = []
        size = 0
        while size < 1 << 20:
            n = pool_rng.randint(6, 12)
            line = " ".join(pool_rng.choice(_WORDS) for _ in range(n)).capitalize() + "."
            lines.append(line)
            size += len(line.encode()) + 2
        self.pool = ("\r\n".join(lines) + "\r\n").encode()

    def _text(self, size):
        size = min(size, len(self.pool) // 2)
        start = self.rng.randrange(0, len(self.pool) - size)
        # Start and end on line boundaries so every line ends with CRLF.
        start = self.pool.index(b"\n", start) + 1
        end = self.pool.find(b"\n", start + size)
        return self.pool[start : end + 1 if end >= 0 else len(self.pool)]

    def _headers(self, extra):
        r = self.rng
        self.count += 1
        when = 1672531200 + r.randint(0, 365 * 86400)
        date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(when))
        frm = r.choice(_NAMES)
        to = r.choice(_NAMES)
        subject = " ".join(r.choice(_WORDS[:40]) for _ in range(r.randint(3, 8)))
        h = [
            "Return-Path: <bounce-%d@example.org>" % self.count,
            "Received: from mx%d.example.net (mx.example.net [192.0.2.%d])\r\n"
            "\tby mail.example.com with ESMTPS id %08X; %s"
            % (r.randint(1, 9), r.randint(1, 254), r.getrandbits(32), date),
            "Date: " + date,
            "From: =?UTF-8?B?%s?= <%s@example.org>"
            % (base64.b64encode(frm.encode()).decode(), frm.split()[0].lower()),
            "To: %s <%s@example.net>" % (to.encode("ascii", "replace").decode(), to.split()[0].lower()),
            "Subject: " + subject,
            "Message-ID: <%d.%d.%08x@bench.example>" % (self.seed, self.count, r.getrandbits(32)),
            "MIME-Version: 1.0",
        ] + extra
        return ("\r\n".join(h) + "\r\n\r\n").encode()

    def message(self, size):
        """One message of about size bytes: text, or text plus an attachment."""
        r = self.rng
        if size < 30000 and r.random() < 0.8:
            body = self._text(max(200, size - 700))
            return self._headers(["Content-Type: text/plain; charset=utf-8",
                                  "Content-Transfer-Encoding: 8bit"]) + body
        boundary = "=_bench_%08x" % r.getrandbits(32)
        text = self._text(r.randint(300, 3000))
        blob = r.randbytes(max(100, (size - len(text) - 900) * 3 // 4))
        b64 = base64.encodebytes(blob).replace(b"\n", b"\r\n")
        body = b"".join([
            b"--", boundary.encode(), b"\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: 8bit\r\n\r\n", text,
            b"--", boundary.encode(), b"\r\nContent-Type: application/octet-stream; "
            b"name=\"data.bin\"\r\nContent-Disposition: attachment; filename=\"data.bin\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n", b64,
            b"--", boundary.encode(), b"--\r\n",
        ])
        return self._headers(['Content-Type: multipart/mixed; boundary="%s"' % boundary]) + body

    def small_size(self):
        """1-5 KB (log-uniform): short mail, the bulk of a large archive."""
        return int(1000 * 5 ** self.rng.random())

    def size(self, big_share=0.01):
        """Mostly 2-20 KB (log-uniform), big_share of 100 KB-2 MB."""
        r = self.rng
        if r.random() < big_share:
            return int(100_000 * 20 ** r.random())
        return int(2000 * 10 ** r.random())

    def flags(self):
        r = self.rng
        out = []
        if r.random() < 0.7:
            out.append("\\Seen")
        if r.random() < 0.1:
            out.append("\\Flagged")
        if r.random() < 0.1:
            out.append("\\Answered")
        if r.random() < 0.05:
            out.append("$Forwarded")
        if r.random() < 0.05:
            out.append(r.choice(["$Label1", "work", "todo"]))
        return tuple(sorted(out))

    def entry(self, size=None, big_share=0.01):
        msg = self.message(size if size is not None else self.size(big_share))
        return (msg, self.flags(), 1672531200 + self.rng.randint(0, 365 * 86400))

    def mailbox(self, n, big_share=0.01):
        return [self.entry(big_share=big_share) for _ in range(n)]

    def small_mailbox(self, n):
        return [self.entry(size=self.small_size()) for _ in range(n)]


def boxname(i, total):
    """INBOX then Folder01..: realistic, ASCII, one level."""
    return "INBOX" if i == 0 else "Folder%0*d" % (len(str(total)), i)


# -- changes applied between the untimed and the timed run -------------------


def _uids_flags(conn, name):
    typ, _ = conn.select(mail.wire_name(name))
    if typ != "OK":
        raise RuntimeError("SELECT %s failed" % name)
    typ, data = conn.uid("FETCH", "1:*", "(UID FLAGS)")
    out = []
    for line in data:
        if isinstance(line, tuple):
            line = line[0]
        if not line:
            continue
        uid = int(re.search(rb"UID (\d+)", line).group(1))
        flags = set(re.search(rb"FLAGS \(([^)]*)\)", line).group(1).decode().split())
        flags.discard("\\Recent")
        out.append((uid, flags))
    out.sort()
    return out


def change_flags(server, names, count, parity, seed):
    """Toggle one flag on `count` messages spread over names, on messages at
    positions of the given parity (so the two sides never touch the same
    message): every change is a real modification."""
    rng = random.Random(seed)
    conn = server.login()
    try:
        per = [count // len(names) + (1 if i < count % len(names) else 0) for i in range(len(names))]
        for name, n in zip(names, per):
            rows = _uids_flags(conn, name)
            pos = [i for i in range(len(rows)) if i % 2 == parity]
            for i in sorted(rng.sample(pos, min(n, len(pos)))):
                uid, flags = rows[i]
                flag = rng.choice(["\\Seen", "\\Flagged", "\\Answered", "$Label1"])
                op = "-FLAGS.SILENT" if flag in flags else "+FLAGS.SILENT"
                typ, _ = conn.uid("STORE", str(uid), op, "(%s)" % flag)
                if typ != "OK":
                    raise RuntimeError("STORE failed")
            conn.close()
    finally:
        conn.logout()


def expunge_some(server, names, count, parity, seed):
    rng = random.Random(seed)
    conn = server.login()
    try:
        per = [count // len(names) + (1 if i < count % len(names) else 0) for i in range(len(names))]
        for name, n in zip(names, per):
            rows = _uids_flags(conn, name)
            pos = [i for i in range(len(rows)) if i % 2 == parity]
            chosen = sorted(rows[i][0] for i in rng.sample(pos, min(n, len(pos))))
            if chosen:
                uidset = ",".join(str(u) for u in chosen)
                conn.uid("STORE", uidset, "+FLAGS.SILENT", "(\\Deleted)")
                typ, _ = conn.uid("EXPUNGE", uidset)
                if typ != "OK":
                    raise RuntimeError("UID EXPUNGE failed")
            conn.close()
    finally:
        conn.logout()


def append_all(server, per_box):
    conn = server.login()
    try:
        for name, msgs in per_box.items():
            for data, flags, idate in msgs:
                mail.append(conn, name, data, flags, idate)
    finally:
        conn.logout()


# -- workloads -----------------------------------------------------------------


class Workload:
    name = ""
    title = ""
    resync = False  # the tool syncs once (untimed) before the changes
    floor = None  # "copy" (initial sync) or "list" (no-change run): the floor applies
    rated = False  # also run on the bandwidth-limited links
    # A no-change run leaves the servers as it found them: one setup per
    # tool then serves every link and repetition.
    reuse = False

    def __init__(self, quick):
        self.quick = quick
        self.data = None

    def div(self, n, by=10):
        return max(1, n // by) if self.quick else n

    def generate(self):
        """Make the seeded data once; every run fills from it."""

    def fill(self, local, remote):
        raise NotImplementedError

    def change(self, local, remote):
        pass


class Initial(Workload):
    name = "initial"
    floor = "copy"
    rated = True

    def __init__(self, quick):
        super().__init__(quick)
        self.boxes, self.per = 10, self.div(1000)
        self.title = "initial sync, %d mailboxes x %d messages (local full, remote empty)" % (
            self.boxes, self.per)

    def generate(self):
        g = Generator(SEED)
        self.data = {boxname(i, self.boxes): g.mailbox(self.per) for i in range(self.boxes)}
        self.total_bytes = sum(len(m[0]) for b in self.data.values() for m in b)

    def fill(self, local, remote):
        mail.fill(local, self.data)
        subscribe(local, self.data)


class Resync(Workload):
    name = "resync"
    resync = True
    floor = "list"
    reuse = True

    def __init__(self, quick):
        super().__init__(quick)
        self.boxes, self.per = 100, self.div(20)
        self.title = "no-change resync of %d mailboxes (%d messages each)" % (self.boxes, self.per)

    def generate(self):
        g = Generator(SEED + 1)
        self.data = {boxname(i, self.boxes): g.mailbox(self.per, big_share=0)
                     for i in range(self.boxes)}

    def fill(self, local, remote):
        mail.fill(local, self.data)
        subscribe(local, self.data)


class Flags(Workload):
    name = "flags"
    resync = True

    def __init__(self, quick):
        super().__init__(quick)
        self.boxes, self.per, self.changes = 5, self.div(800), self.div(2000)
        self.title = "%d flag changes (half per side) over %d mailboxes x %d messages" % (
            self.changes, self.boxes, self.per)

    def generate(self):
        g = Generator(SEED + 2)
        self.data = {boxname(i, self.boxes): g.mailbox(self.per, big_share=0)
                     for i in range(self.boxes)}

    def fill(self, local, remote):
        mail.fill(local, self.data)
        subscribe(local, self.data)

    def change(self, local, remote):
        names = list(self.data)
        change_flags(local, names, self.changes // 2, 0, SEED + 20)
        change_flags(remote, names, self.changes - self.changes // 2, 1, SEED + 21)


class NewMail(Workload):
    name = "new"
    resync = True

    def __init__(self, quick):
        super().__init__(quick)
        self.boxes, self.per, self.new = 5, self.div(200), self.div(500)
        self.title = "%d new messages on each side, %d mailboxes x %d messages before" % (
            self.new, self.boxes, self.per)

    def generate(self):
        g = Generator(SEED + 3)
        names = [boxname(i, self.boxes) for i in range(self.boxes)]
        self.data = {n: g.mailbox(self.per, big_share=0) for n in names}
        self.added = []
        for side in range(2):
            gs = Generator(SEED + 30 + side)
            per = {n: [] for n in names}
            for k in range(self.new):
                per[names[k % len(names)]].append(gs.entry(big_share=0))
            self.added.append(per)

    def fill(self, local, remote):
        mail.fill(local, self.data)
        subscribe(local, self.data)

    def change(self, local, remote):
        append_all(local, self.added[0])
        append_all(remote, self.added[1])


class Expunge(Workload):
    name = "expunge"
    resync = True

    def __init__(self, quick):
        super().__init__(quick)
        self.boxes, self.per, self.gone = 5, self.div(600), self.div(1000)
        self.title = "%d expunges on each side, %d mailboxes x %d messages before" % (
            self.gone, self.boxes, self.per)

    def generate(self):
        g = Generator(SEED + 4)
        self.data = {boxname(i, self.boxes): g.mailbox(self.per, big_share=0)
                     for i in range(self.boxes)}

    def fill(self, local, remote):
        mail.fill(local, self.data)
        subscribe(local, self.data)

    def change(self, local, remote):
        names = list(self.data)
        expunge_some(local, names, self.gone, 0, SEED + 40)
        expunge_some(remote, names, self.gone, 1, SEED + 41)


class Big(Workload):
    name = "big"

    def __init__(self, quick):
        super().__init__(quick)
        self.size = 50 * 1024 * 1024
        self.title = "one 50 MB message (initial sync of one mailbox)"

    def generate(self):
        g = Generator(SEED + 5)
        self.data = {"INBOX": [g.entry(size=self.size)]}

    def fill(self, local, remote):
        mail.fill(local, self.data)


class ManyBoxes(Workload):
    name = "manybox"
    floor = "copy"

    def __init__(self, quick):
        super().__init__(quick)
        self.boxes, self.per = (200 if quick else 2000), 2
        self.title = "initial sync, %d mailboxes x %d small messages" % (self.boxes, self.per)

    def generate(self):
        g = Generator(SEED + 6)
        self.data = {boxname(i, self.boxes): g.small_mailbox(self.per) for i in range(self.boxes)}

    def fill(self, local, remote):
        mail.fill(local, self.data)
        subscribe(local, self.data)


class ManyBoxesNoChange(ManyBoxes):
    name = "manybox-nochange"
    resync = True
    floor = "list"
    reuse = True

    def __init__(self, quick):
        super().__init__(quick)
        self.title = "no-change resync of %d mailboxes x %d small messages" % (
            self.boxes, self.per)


class Large(Workload):
    name = "large"
    floor = "copy"

    def __init__(self, quick):
        super().__init__(quick)
        self.count = 5000 if quick else 50000
        self.title = "initial sync, one mailbox of %d small messages" % self.count

    def generate(self):
        g = Generator(SEED + 7)
        self.data = {"INBOX": g.small_mailbox(self.count)}

    def fill(self, local, remote):
        mail.fill(local, self.data)
        subscribe(local, self.data)


class LargeNoChange(Large):
    name = "large-nochange"
    resync = True
    floor = "list"
    reuse = True

    def __init__(self, quick):
        super().__init__(quick)
        self.title = "no-change resync of one mailbox of %d small messages" % self.count


class LargeFlags(Large):
    name = "large-flags"
    resync = True
    floor = None
    reuse = False

    def __init__(self, quick):
        super().__init__(quick)
        self.changes = 100
        self.title = "%d flag changes (half per side) in one mailbox of %d small messages" % (
            self.changes, self.count)

    def change(self, local, remote):
        change_flags(local, ["INBOX"], self.changes // 2, 0, SEED + 70)
        change_flags(remote, ["INBOX"], self.changes - self.changes // 2, 1, SEED + 71)


class Spread(Workload):
    """Changes spread thin: one per mailbox and side over many mailboxes."""

    resync = True
    what = ""

    def __init__(self, quick):
        super().__init__(quick)
        self.boxes, self.per = (20 if quick else 200), 20
        self.title = "%s, one per mailbox on each side, %d mailboxes x %d small messages" % (
            self.what, self.boxes, self.per)

    def generate(self):
        g = Generator(SEED + 8)
        self.data = {boxname(i, self.boxes): g.small_mailbox(self.per) for i in range(self.boxes)}

    def fill(self, local, remote):
        mail.fill(local, self.data)
        subscribe(local, self.data)


class SpreadFlags(Spread):
    name = "spread-flags"
    what = "flag changes"

    def change(self, local, remote):
        names = list(self.data)
        change_flags(local, names, len(names), 0, SEED + 80)
        change_flags(remote, names, len(names), 1, SEED + 81)


class SpreadExpunge(Spread):
    name = "spread-expunge"
    what = "expunges"

    def change(self, local, remote):
        names = list(self.data)
        expunge_some(local, names, len(names), 0, SEED + 82)
        expunge_some(remote, names, len(names), 1, SEED + 83)


class SpreadNew(Spread):
    name = "spread-new"
    what = "new messages"

    def generate(self):
        super().generate()
        self.added = []
        for side in range(2):
            gs = Generator(SEED + 84 + side)
            self.added.append({n: [gs.entry(size=gs.small_size())] for n in self.data})

    def change(self, local, remote):
        append_all(local, self.added[0])
        append_all(remote, self.added[1])


class SpreadArrivals(SpreadNew):
    """New mail delivered to the remote server only (the local one a
    mirror): one message per mailbox."""
    name = "spread-arrivals"
    what = "new messages on the remote side only"

    def __init__(self, quick):
        super().__init__(quick)
        self.title = self.title.replace("on each side", "")

    def change(self, local, remote):
        append_all(remote, self.added[1])


WORKLOADS = [Initial, Resync, Flags, NewMail, Expunge, Big, ManyBoxes, ManyBoxesNoChange, Large,
             LargeNoChange, LargeFlags, SpreadFlags, SpreadExpunge, SpreadNew, SpreadArrivals]


def subscribe(server, names):
    conn = server.login()
    try:
        for n in names:
            conn.subscribe(mail.wire_name(n))
    finally:
        conn.logout()


# -- one measured run ----------------------------------------------------------


class RelayProc:
    def __init__(self, target_port, delay_ms, trace=None):
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "latency_relay.py"),
             "--target", "127.0.0.1:%d" % target_port, "--delay-ms", str(delay_ms)]
            + (["--trace", trace] if trace else []),
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        line = self.proc.stdout.readline().split()
        if len(line) != 2:
            self.stop()
            raise RuntimeError("latency relay did not start")
        self.port, cport = int(line[0]), int(line[1])
        self.ctl = latency_relay.Control(cport)

    def stop(self):
        if getattr(self, "ctl", None):
            self.ctl.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()


MBSYNC = shutil.which("mbsync") or "/usr/bin/mbsync"
# What the remote server advertises on each tier (see --tier).
TIER_CAPS = {
    "qresync": None,
    "condstore": "IMAP4rev1 ID IDLE NAMESPACE CHILDREN UIDPLUS UNSELECT COMPRESS=DEFLATE ENABLE "
                 "MOVE CONDSTORE ESEARCH LIST-EXTENDED LIST-STATUS LITERAL- SPECIAL-USE",
    "plain": "IMAP4rev1 SASL-IR UIDPLUS ID UNSELECT CHILDREN IDLE NAMESPACE LITERAL+",
}

# The system flags mbsync 1.4 carries over; it does not copy keywords.
MBSYNC_FLAGS = {"\\Seen", "\\Answered", "\\Flagged", "\\Draft", "\\Deleted"}


def mbsync_config(path, d, ports, certs_file):
    """An mbsync configuration for the same two servers as the interimap one:
    IMAP stores on both sides over implicit TLS, COMPRESS only on the remote
    link (interimap's default), every mailbox, every kind of change both
    ways, created where missing, expunged on both sides, its state in d."""
    with open(path, "w") as f:
        for side in ("local", "remote"):
            f.write("IMAPAccount %s\nHost 127.0.0.1\nPort %d\nUser %s\nPass %s\n"
                    "SSLType IMAPS\nSystemCertificates no\nCertificateFile %s\nTimeout 600\n"
                    % (side, ports[side], USER, PASSWORD, certs_file))
            if side == "local":
                f.write("DisableExtension COMPRESS=DEFLATE\n")
            f.write("\nIMAPStore %s\nAccount %s\n\n" % (side, side))
        state = os.path.join(d, "mbsync-state")
        os.makedirs(state, exist_ok=True)
        f.write("Channel sync\nFar :remote:\nNear :local:\nPatterns * INBOX\nCreate Both\n"
                "Expunge Both\nSync All\nCopyArrivalDate yes\nSyncState %s/\n" % state)


def _proc_cpu_all():
    """{pid: (ppid, own CPU, CPU of its waited-for children)} in seconds, for
    every process on the machine."""
    hz = os.sysconf("SC_CLK_TCK")
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                v = f.read().rsplit(")", 1)[1].split()
            out[int(name)] = (int(v[1]), (int(v[11]) + int(v[12])) / hz,
                              (int(v[13]) + int(v[14])) / hz)
        except (OSError, IndexError, ValueError):
            continue
    return out


def machine_cpu():
    """(busy, idle) CPU seconds of the whole machine since boot, all cores."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]  # idle + iowait
    busy = sum(v[:8]) - idle  # user nice system idle iowait irq softirq steal
    hz = os.sysconf("SC_CLK_TCK")
    return busy / hz, idle / hz


class ServerCPU:
    """The CPU time the Dovecot servers spend during a run: each master's own
    time and that of its children it has reaped (a connection's imap and
    imap-login processes, once they exit), plus that of its live
    descendants, taken before and after."""

    def __init__(self, servers):
        self.masters = [srv.pid for srv in servers]
        self.before = self.snapshot()

    def snapshot(self):
        procs = _proc_cpu_all()
        out = []
        for master in self.masters:
            total = 0.0
            if master in procs:
                total = procs[master][1] + procs[master][2]
            for pid, (ppid, own, _) in procs.items():
                # Dovecot's processes are the master's children or theirs
                p, hops = ppid, 0
                while p != master and p in procs and hops < 4:
                    p, hops = procs[p][0], hops + 1
                if p == master:
                    total += own
            out.append(total)
        return out

    def finish(self):
        # the connections' processes exit once the tool has logged out
        time.sleep(0.1)
        return [b - a for a, b in zip(self.before, self.snapshot())]


class Bench:
    def __init__(self, args):
        self.args = args
        self.root = tempfile.mkdtemp(prefix="interimap-bench-")
        os.chmod(self.root, 0o755)
        self.ca = TestCA(os.path.join(self.root, "ca"))
        self.certs = {side: self.ca.issue(side) for side in ("local", "remote")}
        # mbsync trusts certificates listed in its CertificateFile as they
        # are (it checks host names, not IP addresses, against a CA chain).
        self.mbsync_certs = os.path.join(self.root, "ca", "mbsync-certs.pem")
        with open(self.mbsync_certs, "w") as out:
            for path in [self.ca.ca_file] + [c.cert_file for c in self.certs.values()]:
                with open(path) as f:
                    out.write(f.read())
        self.helpers = os.path.join(self.root, "bin")
        os.makedirs(self.helpers)
        self.spawn = self.compile("spawn.c", [])
        self.floor = self.compile("floor.c", ["-lssl", "-lcrypto"]) if "floor" in args.tools else None
        self.runs = []

    def compile(self, src, libs):
        out = os.path.join(self.helpers, os.path.splitext(src)[0])
        cc = os.environ.get("CC", "cc")
        subprocess.run([cc, "-O2", "-std=c17", "-Wall", "-Wextra", "-o", out,
                        os.path.join(HERE, src)] + libs, check=True)
        return out

    def cleanup(self):
        if not self.args.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    def tool_argv(self, tool, d, ports, mode=None):
        if tool == "perl":
            return [PERL_INTERIMAP, "--config", os.path.join(d, "config")]
        if tool in ("ours", "before"):
            binary = self.args.ours if tool == "ours" else self.args.before
            return [binary, "--config", os.path.join(d, "config")]
        if tool == "mbsync":
            return [MBSYNC, "-q", "-c", os.path.join(d, "mbsyncrc"), "-a"]
        return [self.floor] + (["--list"] if mode == "list" else []) + [
            "127.0.0.1", str(ports["local"]), "127.0.0.1", str(ports["remote"]),
            USER, PASSWORD, self.ca.ca_file]

    def measure(self, argv, d, label, timeout=None):
        out = os.path.join(d, label + ".json")
        r = subprocess.run([self.spawn] + (["-t", str(timeout)] if timeout else []) +
                           [out, os.path.join(d, label + ".out"),
                            os.path.join(d, label + ".err"), "--"] + argv)
        if r.returncode != 0:
            raise RuntimeError("spawn failed for %s" % argv[0])
        with open(out) as f:
            return json.load(f)

    def prepare(self, wl, tool, tag):
        """Starts two filled servers with a relay in front of the remote one
        and writes every tool's configuration; for a resync workload the
        tool then synchronizes them once (untimed, no delay) and the
        workload's changes are applied. Returns (setup, None) or (None,
        what failed)."""
        d = tempfile.mkdtemp(prefix="%s-%s-%s-" % (wl.name, tool, tag), dir=self.root)
        os.chmod(d, 0o755)
        st = {"d": d, "servers": [], "relays": []}
        try:
            for side in ("local", "remote"):
                srv = Dovecot(root=os.path.join(d, side), users={USER: PASSWORD}, ca=self.ca,
                              name=side, family="ipv4",
                              capability=TIER_CAPS[self.args.tier] if side == "remote" else None)
                srv.cert = self.certs[side]
                srv.start()
                st["servers"].append(srv)
            local, remote = st["servers"]
            trace = None
            if self.args.trace:
                os.makedirs(self.args.trace, exist_ok=True)
                trace = os.path.join(self.args.trace, "%s-%s-%s.trace" % (wl.name, tool, tag))
            st["relays"].append(RelayProc(remote.imaps_port, 0, trace))
            ports = {"local": local.imaps_port, "remote": st["relays"][0].port}
            if self.args.delay_both:
                st["relays"].append(RelayProc(local.imaps_port, 0,
                                              trace and trace[:-len(".trace")] + "-local.trace"))
                ports["local"] = st["relays"][1].port
            st["ports"] = ports
            with open(os.path.join(d, "config"), "w") as f:
                f.write("database = %s\n\n" % os.path.join(d, "state.db"))
                for name in ("local", "remote"):
                    f.write("[%s]\ntype = imaps\nhost = 127.0.0.1\nport = %d\nusername = %s\n"
                            "password = %s\nSSL_CAfile = %s\n\n"
                            % (name, ports[name], USER, PASSWORD, self.ca.ca_file))
            mbsync_config(os.path.join(d, "mbsyncrc"), d, ports, self.mbsync_certs)
            wl.fill(local, remote)
            if wl.resync:
                # The floor's untimed first run is the copier's.
                pre = self.measure(self.tool_argv(tool, d, ports, "copy"), d, "initial",
                                   self.args.timeout)
                if pre["exit"] != 0:
                    err = self.failed({}, d, "initial", pre)
                    self.release(st)
                    return None, err
                wl.change(local, remote)
            return st, None
        except BaseException:
            self.release(st)
            raise

    def release(self, st):
        for r in st["relays"]:
            r.stop()
        for srv in st["servers"]:
            try:
                srv.stop()
            except Exception as e:  # keep going: the next run uses new servers
                log("warning: stopping %s: %s" % (srv.name, e))
        if not self.args.keep:
            shutil.rmtree(st["d"], ignore_errors=True)

    def timed(self, st, wl, link, tool, rep):
        """One measured run of tool on a prepared setup."""
        delay, rate = link
        d, servers, relays, ports = st["d"], st["servers"], st["relays"], st["ports"]
        result = {"workload": wl.name, "delay_ms": delay, "rate_mbit": rate, "tool": tool,
                  "rep": rep, "delay_both": self.args.delay_both}
        for r in relays:
            r.ctl.delay(delay)
            r.ctl.rate(rate)
            r.ctl.reset()
        sampler = ServerCPU(servers)
        busy0, idle0 = machine_cpu()
        m = self.measure(self.tool_argv(tool, d, ports, wl.floor), d, "timed", self.args.timeout)
        busy1, idle1 = machine_cpu()
        result["server_cpu"] = dict(zip(("local", "remote"), sampler.finish()))
        result.update(m)
        result["remote"] = relays[0].ctl.stats()
        if self.args.delay_both:
            result["local"] = relays[1].ctl.stats()
        # What the machine did meanwhile: its idle share, and the CPU that
        # neither the tool, the relays nor the servers used (the driver's
        # sampling and everyone else's work on a shared machine).
        ours = m["user"] + m["sys"] + sum(result["server_cpu"].values()) + sum(
            result[k]["cpu"] for k in ("remote", "local") if k in result)
        result["machine"] = {"idle_share": (idle1 - idle0) / max(1e-9, (idle1 - idle0)
                                                                 + (busy1 - busy0)),
                             "others_cpu": max(0.0, (busy1 - busy0) - ours)}
        if m["exit"] != 0:
            return self.failed(result, d, "timed", m)
        if self.args.verify and rep == 0:
            for r in relays:
                r.ctl.delay(0)
                r.ctl.rate(0)
            local, remote = servers
            result["verified"] = self.verify(local, remote, tool)
        return result

    def one(self, wl, link, tool, rep):
        """A measured run on fresh servers."""
        st, err = self.prepare(wl, tool, "%s-%d" % (link_name(*link).replace(" ", ""), rep))
        if st is None:
            err.update({"workload": wl.name, "delay_ms": link[0], "rate_mbit": link[1],
                        "tool": tool, "rep": rep})
            return err
        try:
            return self.timed(st, wl, link, tool, rep)
        finally:
            self.release(st)

    def failed(self, result, d, label, m):
        if m.get("timed_out"):
            result["error"] = "%s run timed out after %d s" % (label, self.args.timeout)
            result["timed_out"] = True
            return result
        try:
            with open(os.path.join(d, label + ".err"), errors="replace") as f:
                err = f.read().strip().splitlines()[-5:]
        except OSError:
            err = []
        result["error"] = "%s run exited %d%s: %s" % (
            label, m["exit"], " (signal %d)" % m["signal"] if m["signal"] else "",
            " | ".join(err) or "no output")
        return result

    def verify(self, local, remote, tool):
        """Both servers hold the same messages and flags (not hashing the
        bodies: sizes, dates and flags are compared). The floor is not a
        synchronizer: only its message counts and sizes are checked; mbsync
        has its own check."""
        a = mail.snapshot(local, bodies=False)
        b = mail.snapshot(remote, bodies=False)
        if tool == "floor":
            sa = {n: sorted(m.size for m in mb.messages) for n, mb in a.mailboxes.items()}
            sb = {n: sorted(m.size for m in mb.messages) for n, mb in b.mailboxes.items()}
            return "ok" if sa == sb else "DIFFERENT"

        if tool == "mbsync":
            return self.verify_mbsync(a, b)
        sa = {n: sorted((m.size, m.flags, m.internaldate) for m in mb.messages)
              for n, mb in a.mailboxes.items()}
        sb = {n: sorted((m.size, m.flags, m.internaldate) for m in mb.messages)
              for n, mb in b.mailboxes.items()}
        if sa == sb:
            return "ok"
        bad = [n for n in set(sa) | set(sb) if sa.get(n) != sb.get(n)]
        return "DIFFERENT: " + ", ".join(sorted(bad)[:5])

    @staticmethod
    def verify_mbsync(a, b):
        """mbsync copies system flags only, and adds a header of its own
        ("X-TUID: " and 12 characters) to every message it copies: the
        messages are paired by INTERNALDATE and flags, and their sizes may
        differ by that header."""
        tuid = len("X-TUID: 123456789012\r\n")
        bad = []
        for n in sorted(set(a.mailboxes) | set(b.mailboxes)):
            ma = a.mailboxes[n].messages if n in a.mailboxes else None
            mb = b.mailboxes[n].messages if n in b.mailboxes else None
            if ma is None or mb is None or len(ma) != len(mb):
                bad.append(n)
                continue
            ka = sorted((m.internaldate, tuple(f for f in m.flags if f in MBSYNC_FLAGS), m.size)
                        for m in ma)
            kb = sorted((m.internaldate, tuple(f for f in m.flags if f in MBSYNC_FLAGS), m.size)
                        for m in mb)
            if any(x[:2] != y[:2] or abs(x[2] - y[2]) not in (0, tuid) for x, y in zip(ka, kb)):
                bad.append(n)
        return "ok" if not bad else "DIFFERENT: " + ", ".join(bad[:5])


# -- summary -------------------------------------------------------------------


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


TOOLS = ("perl", "mbsync", "before", "ours", "floor")
CPUS = os.cpu_count() or 1


def link_name(delay, rate):
    return "%g ms" % delay + (" %g Mbit" % rate if rate else "")


def summarize(runs):
    groups = {}
    for r in runs:
        groups.setdefault((r["workload"], r["delay_ms"], r.get("rate_mbit", 0), r["tool"]),
                          []).append(r)
    out = []
    for (wl, delay, rate, tool), rs in groups.items():
        ok = [r for r in rs if "error" not in r]
        row = {"workload": wl, "delay_ms": delay, "rate_mbit": rate, "tool": tool,
               "runs": len(rs), "ok": len(ok)}
        if ok:
            row.update({
                "wall": median([r["wall"] for r in ok]),
                "wall_min": min(r["wall"] for r in ok),
                "wall_max": max(r["wall"] for r in ok),
                "cpu": median([r["user"] + r["sys"] for r in ok]),
                "rss_mib": median([r["maxrss_kb"] / 1024 for r in ok]),
                "bytes": median([r["remote"]["bytes"] for r in ok]),
                "turnarounds": median([r["remote"]["turnarounds"] for r in ok]),
                "relay_cpu": median([r["remote"].get("cpu") for r in ok]),
                "server_cpu": median([sum(r["server_cpu"].values()) for r in ok]),
                "idle_share": median([r["machine"]["idle_share"] for r in ok]),
                "others_cpu": median([r["machine"]["others_cpu"] for r in ok]),
                # the share of the machine's CPU that others took meanwhile
                "others_share": median([r["machine"]["others_cpu"] / (r["wall"] * CPUS)
                                        for r in ok]),
            })
            if rate:
                # The time the busier direction of the link needs for its bytes.
                row["wire"] = median([max(r["remote"]["bytes_c2s"], r["remote"]["bytes_s2c"])
                                      * 8 / (rate * 1e6) for r in ok])
            if any("local" in r for r in ok):
                row["local_bytes"] = median([r["local"]["bytes"] for r in ok])
                row["local_turnarounds"] = median([r["local"]["turnarounds"] for r in ok])
            row["verified"] = next((r["verified"] for r in ok if "verified" in r), None)
        if len(ok) < len(rs):
            row["error"] = next(r["error"] for r in rs if "error" in r)
        out.append(row)
    return out


def fmt_bytes(n):
    if n is None:
        return "-"
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return "%.1f %s" % (n / div, unit)
    return "%d B" % n


def fmt(x, spec):
    return "-" if x is None else spec % x


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def table(summary):
    head = ["workload", "link", "tool", "wall s", "cpu s", "rss MiB", "bytes", "turns",
            "wire s", "wall/wire", "others", "check"]
    rows = []
    by = {(s["workload"], s["delay_ms"], s["rate_mbit"], s["tool"]): s for s in summary}
    keys = []
    for s in summary:
        k = (s["workload"], s["delay_ms"], s["rate_mbit"])
        if k not in keys:
            keys.append(k)
    for wl, delay, rate in keys:
        link = link_name(delay, rate)
        for tool in TOOLS:
            s = by.get((wl, delay, rate, tool))
            if s is None:
                continue
            if "wall" not in s:
                rows.append([wl, link, tool, "FAILED: " + (s["error"] or "")[:70]] + [""] * 8)
                continue
            rows.append([wl, link, tool, fmt(s["wall"], "%.3f"), fmt(s["cpu"], "%.3f"),
                         fmt(s["rss_mib"], "%.1f"), fmt_bytes(s["bytes"]),
                         fmt(s["turnarounds"], "%d"), fmt(s.get("wire"), "%.1f"),
                         fmt(ratio(s["wall"], s.get("wire")), "%.2fx"),
                         fmt(s.get("others_share") and 100 * s["others_share"], "%.0f%%"),
                         (s.get("verified") or "") + (" (%d/%d ok)" % (s["ok"], s["runs"])
                                                      if s["ok"] < s["runs"] else "")])
        o = by.get((wl, delay, rate, "ours"))
        for other in ("perl", "mbsync", "before", "floor"):
            b = by.get((wl, delay, rate, other))
            if o and b and "wall" in o and "wall" in b:
                rows.append([wl, link, "ours/" + other,
                             fmt(ratio(o["wall"], b["wall"]), "%.2fx"),
                             fmt(ratio(o["cpu"], b["cpu"]), "%.2fx"),
                             fmt(ratio(o["rss_mib"], b["rss_mib"]), "%.2fx"),
                             fmt(ratio(o["bytes"], b["bytes"]), "%.2fx"),
                             fmt(ratio(o["turnarounds"], b["turnarounds"]), "%.2fx"),
                             "", "", "", ""])
    normal = [r for r in rows + [head] if not r[3].startswith("FAILED")]
    widths = [max(len(str(r[i])) for r in normal) for i in range(len(head))]
    lines = []
    for r in [head] + rows:
        if r[3].startswith("FAILED"):
            lines.append("| " + " | ".join(str(r[i]).ljust(widths[i]) for i in range(3))
                         + " | " + r[3] + " |")
            continue
        lines.append("| " + " | ".join(str(c).ljust(w) if i < 3 else str(c).rjust(w)
                                       for i, (c, w) in enumerate(zip(r, widths))) + " |")
        if r is head:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def machine():
    info = {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()}
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"model name\s*:\s*(.*)", f.read())
            info["cpu"] = m.group(1) if m else None
        with open("/proc/meminfo") as f:
            info["mem_kb"] = int(re.search(r"MemTotal:\s*(\d+)", f.read()).group(1))
    except OSError:
        pass
    try:
        info["loadavg"] = os.getloadavg()
    except OSError:
        pass
    for key, cmd in (("dovecot", ["dovecot", "--version"]),
                     ("perl_interimap", [PERL_INTERIMAP, "--version"]),
                     ("mbsync", [MBSYNC, "--version"]),
                     ("commit", ["git", "-C", TOP, "rev-parse", "--short", "HEAD"])):
        try:
            info[key] = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            info[key] = None
    return info


def parse_links(args, wl):
    """(delay, rate) pairs for a workload: every delay on an unlimited link,
    then, for workloads that move many bytes, the largest delay with each
    rate."""
    delays = [float(x) if "." in x else int(x) for x in args.delays.split(",") if x]
    links = [(d, 0) for d in delays]
    if wl.rated and args.rates:
        links += [(max(delays), float(r) if "." in r else int(r))
                   for r in args.rates.split(",") if r]
    return links


def report(r, link, rep):
    name = link_name(*link)
    if "error" in r:
        log("   %-6s %-14s rep %d: %s" % (r["tool"], name, rep, r["error"]))
        return
    log("   %-6s %-14s rep %d: wall %.3fs cpu %.3fs rss %.1f MiB bytes %s turns %d; "
        "cpu of relay %.2fs, servers %.2f+%.2fs; machine idle %.0f%%, others' cpu %.1fs%s"
        % (r["tool"], name, rep, r["wall"], r["user"] + r["sys"], r["maxrss_kb"] / 1024,
           fmt_bytes(r["remote"]["bytes"]), r["remote"]["turnarounds"], r["remote"]["cpu"],
           r["server_cpu"]["local"], r["server_cpu"]["remote"],
           100 * r["machine"]["idle_share"], r["machine"]["others_cpu"],
           " verify " + r["verified"] if "verified" in r else ""))


def save(args, bench, workloads, summary=None):
    if not args.json:
        return
    tmp = args.json + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"machine": machine(), "args": {k: v for k, v in vars(args).items()},
                   "workloads": {w.name: w.title for w in workloads},
                   "summary": summary if summary is not None else summarize(bench.runs),
                   "runs": bench.runs}, f, indent=1)
    os.replace(tmp, args.json)


def main():
    ap = argparse.ArgumentParser(description="interimap benchmark: ours, Perl, mbsync",
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__)
    ap.add_argument("--quick", action="store_true",
                    help="small counts (about a tenth), one repetition")
    ap.add_argument("--json", help="write every raw figure to this file (after every run)")
    ap.add_argument("--delay-both", action="store_true",
                    help="delay the local link too (default: remote link only)")
    ap.add_argument("--only", help="comma-separated workloads: " +
                    ",".join(w.name for w in WORKLOADS))
    ap.add_argument("--reps", type=int, help="repetitions, median taken (default 3, 1 with --quick)")
    ap.add_argument("--delays", default="0,25", help="one-way delays in ms (default 0,25)")
    ap.add_argument("--rates", default="50,10",
                    help="bandwidth limits in Mbit/s for the workloads that move many bytes, "
                    "at the largest delay (default 50,10; empty: none)")
    ap.add_argument("--tools", default="perl,mbsync,ours,floor")
    ap.add_argument("--rated-tools", default="perl,mbsync,ours",
                    help="the tools run on bandwidth-limited links (default perl,mbsync,ours: "
                    "the floor does not compress, its time there is its bytes over the rate)")
    ap.add_argument("--tier", choices=sorted(TIER_CAPS), default="qresync",
                    help="what the remote server advertises (default qresync: all of Dovecot)")
    ap.add_argument("--timeout", type=int, default=900,
                    help="seconds before a tool's run is killed and its row marked so (default 900)")
    ap.add_argument("--ours", default=os.path.join(TOP, "build", "src", "interimap"),
                    help="our binary (default build/src/interimap)")
    ap.add_argument("--before", metavar="PATH",
                    help="another build of ours (an earlier commit), run as the tool 'before' "
                         "when --tools names it, alternating with the others")
    ap.add_argument("--no-verify", dest="verify", action="store_false",
                    help="skip comparing the servers after the first repetition")
    ap.add_argument("--keep", action="store_true", help="keep the data directories")
    ap.add_argument("--report", nargs="+", metavar="JSON",
                    help="print the table of earlier runs' --json files, measure nothing")
    ap.add_argument("--trace", metavar="DIR",
                    help="write the remote relay's chunk trace of every run into DIR")
    args = ap.parse_args()
    if args.report:
        runs = []
        for path in args.report:
            with open(path) as f:
                runs += json.load(f)["runs"]
        print(table(summarize(runs)))
        return 0
    args.tools = [t for t in args.tools.split(",") if t]
    args.rated_tools = [t for t in args.rated_tools.split(",") if t]
    unknown = set(args.tools) - set(TOOLS)
    if unknown:
        ap.error("unknown tool %s (known: %s)" % (", ".join(sorted(unknown)), ",".join(TOOLS)))
    if args.reps is None:
        args.reps = 1 if args.quick else 3
    wanted = set(args.only.split(",")) if args.only else None
    workloads = [W(args.quick) for W in WORKLOADS if wanted is None or W.name in wanted]
    if wanted and len(workloads) != len(wanted):
        ap.error("unknown workload in --only (known: %s)" % ",".join(w.name for w in WORKLOADS))
    if os.geteuid() != 0:
        ap.error("run as root: Dovecot's mail processes run as dovenull")
    if args.tier != "qresync":
        for t in ("perl", "floor"):
            if t in args.tools:
                log("%s left out: the remote server has no QRESYNC (--tier %s)" % (t, args.tier))
                args.tools.remove(t)
    if "ours" in args.tools and not os.access(args.ours, os.X_OK):
        log("our binary %s is missing: its rows are skipped (build it with "
            "'meson setup build && ninja -C build')" % args.ours)
        args.tools.remove("ours")
    if "before" in args.tools and not (args.before and os.access(args.before, os.X_OK)):
        ap.error("--tools before needs --before PATH, an executable build of ours")
    if "mbsync" in args.tools and not os.access(MBSYNC, os.X_OK):
        log("mbsync is missing: its rows are skipped (Debian package isync)")
        args.tools.remove("mbsync")

    bench = Bench(args)
    started = time.monotonic()
    try:
        for wl in workloads:
            t = time.monotonic()
            wl.generate()
            log("== %s: %s (data made in %.1fs)" % (wl.name, wl.title, time.monotonic() - t))
            tools = [t for t in args.tools if t != "floor" or wl.floor]
            broken = set()
            setups = {}
            if wl.reuse:
                for tool in tools:
                    st, err = bench.prepare(wl, tool, "all")
                    if st is None:
                        broken.update((tool, link) for link in parse_links(args, wl))
                        log("   %-6s %s" % (tool, err["error"]))
                        for link in parse_links(args, wl):
                            err = dict(err, workload=wl.name, delay_ms=link[0],
                                       rate_mbit=link[1], tool=tool, rep=0)
                            bench.runs.append(err)
                    else:
                        setups[tool] = st
            try:
                for link in parse_links(args, wl):
                    for rep in range(args.reps):
                        # Tools alternate within a repetition so that slow
                        # drifts of the machine hit them alike.
                        for tool in tools:
                            if (tool, link) in broken:
                                continue
                            if link[1] and tool not in args.rated_tools:
                                continue
                            if tool in setups:
                                r = bench.timed(setups[tool], wl, link, tool, rep)
                            else:
                                r = bench.one(wl, link, tool, rep)
                            bench.runs.append(r)
                            report(r, link, rep)
                            if "error" in r:
                                broken.add((tool, link))
                            save(args, bench, workloads)
            finally:
                for st in setups.values():
                    bench.release(st)
            wl.data = None
    finally:
        bench.cleanup()
    summary = summarize(bench.runs)
    print()
    print("interimap benchmark: median of %d, %s, delay on %s link%s, remote tier %s "
          "(%.0f s in all)"
          % (args.reps, "quick" if args.quick else "full",
             "both" if args.delay_both else "the remote", "s" if args.delay_both else "",
             args.tier, time.monotonic() - started))
    for wl in workloads:
        print("  %-16s %s" % (wl.name, wl.title))
    print()
    print(table(summary))
    save(args, bench, workloads, summary)
    # A run killed for its time is a result; any other failure is not.
    failed = [s for s in summary if ("error" in s and "timed out" not in s["error"])
              or (s.get("verified") or "ok") != "ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
