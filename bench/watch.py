#!/usr/bin/env python3
"""The --watch benchmark: how fast a change made by another client on one
server reaches the other, and what an idle watcher costs.

    python3 bench/watch.py [--quick] [--json OUT.json] [--tools ours,perl]
                           [--modes notify,idle,poll] [--delays 0,50]
                           [--reps N] [--idle-seconds S] [--interval S]
                           [--ours PATH] [--keep]

For every tool, mode and round-trip time it starts two fresh Dovecot
servers (tests/fixtures), fills the local one with a few mailboxes, puts a
counting relay (bench/latency_relay.py --count-commands) in front of each,
and starts the tool in watch mode on them. The links are plain text (no
TLS, no COMPRESS) so that the relays can count the commands sent; the
remote link gets half the round-trip time as delay in each direction.

Modes:
  notify  --watch --notify, both servers offer NOTIFY (the tool's default
          interval: 15 minutes)
  idle    --watch=INTERVAL --notify with NOTIFY taken out of both servers'
          capabilities: IDLE on INBOX, the other mailboxes polled
  poll    --watch=INTERVAL

Once the tool has made the servers equal it is left alone for
--idle-seconds: its CPU time (from /proc), the CPU time of both Dovecot
instances, and the commands each relay saw over that window, scaled to a
minute. Then changes are made by another client, straight on one server
(not through the relays), alternately on each side and alternately in INBOX
and in another mailbox: an append, a flag change, an expunge, a new
mailbox. Each one's propagation latency runs from the end of the command
that made it to the moment a second client sees it on the other server
(polling every 10 ms); a change still not seen after the bound is recorded
as missing. Figures are the median and 90th percentile per kind of change.

The Perl tool has no IDLE-only mode (its --notify requires NOTIFY), and
with --notify it does not follow mailbox creations.

Python 3 standard library only. Needs root (Dovecot's mail processes run as
dovenull, like the integration tests).
"""

import argparse
import imaplib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(TOP, "tests", "fixtures"))
sys.path.insert(0, HERE)

from imapfixture import Dovecot, mail  # noqa: E402
from imapfixture.mail import MessageGenerator  # noqa: E402
import latency_relay  # noqa: E402

PERL_INTERIMAP = "/usr/bin/interimap"
USER, PASSWORD = "user", "pass"
SEED = 20240611
POLL_STEP = 0.01
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Dovecot without NOTIFY: the capabilities it offers after login otherwise.
NO_NOTIFY_CAPS = ("IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT MULTIAPPEND UNSELECT "
                  "CHILDREN NAMESPACE UIDPLUS LIST-EXTENDED CONDSTORE QRESYNC ESEARCH "
                  "LIST-STATUS LITERAL+")
MAILBOXES = ["INBOX", "Other", "Lists/one", "Lists/two", "Archive"]
KINDS = ["append", "flags", "expunge", "mailbox"]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def cpu_seconds(pid):
    """user + system CPU time of one process, from /proc (None if gone)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_cpu_seconds(pids):
    return sum(cpu_seconds(p) or 0.0 for p in pids)


def rss_kib(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def percentile(xs, q):
    """Linear interpolation between the closest ranks; an infinite value
    (a change that never arrived) wins over any interpolation with it."""
    xs = sorted(xs)
    if not xs:
        return None
    k = (len(xs) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    if k == lo:
        return xs[lo]
    if xs[hi] == float("inf"):
        return xs[hi]
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


class Watcher:
    """The tool under test, running in watch mode."""

    def __init__(self, argv, logfile):
        self.log = open(logfile, "w+")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)

    def cpu(self):
        return cpu_seconds(self.proc.pid)

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.seek(0)
        text = self.log.read()
        self.log.close()
        return self.proc.returncode, text


class Client:
    """Another IMAP client on one server, straight to it (no relay): it
    makes the changes and watches for them."""

    def __init__(self, server):
        self.conn = server.login(mode="plain")

    def close(self):
        try:
            self.conn.logout()
        except (imaplib.IMAP4.error, OSError):
            pass

    def ok(self, res, what):
        typ, data = res
        if typ != "OK":
            raise RuntimeError("%s: %s %r" % (what, typ, data))
        return data

    def messages(self, name):
        data = self.ok(self.conn.status(mail.wire_name(name), "(MESSAGES)"), "STATUS")
        return int(re.search(rb"MESSAGES (\d+)", data[0]).group(1))

    def uids(self, name):
        self.ok(self.conn.select(mail.wire_name(name), readonly=True), "EXAMINE")
        data = self.ok(self.conn.uid("SEARCH", "ALL"), "SEARCH")
        self.conn.close()
        return [int(x) for x in data[0].split()]

    def has_keyword(self, name, keyword):
        self.ok(self.conn.select(mail.wire_name(name), readonly=True), "EXAMINE")
        data = self.ok(self.conn.uid("SEARCH", "KEYWORD", keyword), "SEARCH")
        self.conn.close()
        return bool(data[0].split())

    def exists(self, name):
        data = self.ok(self.conn.list('""', mail.wire_name(name)), "LIST")
        return any(d for d in data if d)

    def append(self, name, msg):
        self.ok(self.conn.append(mail.wire_name(name), None, None, msg), "APPEND")

    def store(self, name, uid, keyword):
        self.ok(self.conn.select(mail.wire_name(name)), "SELECT")
        self.ok(self.conn.uid("STORE", str(uid), "+FLAGS.SILENT", "(%s)" % keyword), "STORE")
        self.conn.close()

    def expunge(self, name, uid):
        self.ok(self.conn.select(mail.wire_name(name)), "SELECT")
        self.ok(self.conn.uid("STORE", str(uid), "+FLAGS.SILENT", "(\\Deleted)"), "STORE")
        self.ok(self.conn.uid("EXPUNGE", str(uid)), "UID EXPUNGE")
        self.conn.close()

    def create(self, name):
        self.ok(self.conn.create(mail.wire_name(name)), "CREATE")


class Run:
    def __init__(self, bench, tool, mode, delay_ms):
        self.bench = bench
        self.args = bench.args
        self.tool, self.mode, self.delay_ms = tool, mode, delay_ms
        self.dir = tempfile.mkdtemp(prefix="%s-%s-%d-" % (tool, mode, delay_ms), dir=bench.root)
        os.chmod(self.dir, 0o755)
        self.servers, self.relays = [], []
        self.watcher = None

    def start(self):
        caps = NO_NOTIFY_CAPS if self.mode == "idle" else None
        for side in ("local", "remote"):
            srv = Dovecot(root=os.path.join(self.dir, side), users={USER: PASSWORD}, ssl=None,
                          name=side, family="ipv4", capability=caps)
            srv.start()
            self.servers.append(srv)
        self.local, self.remote = self.servers
        g = MessageGenerator(SEED)
        mail.fill(self.local, {name: g.mailbox(20) for name in MAILBOXES})
        for srv in self.servers:
            self.relays.append(latency_relay.RelayProc(srv.imap_port, 0, count_commands=True))
        self.config = os.path.join(self.dir, "config")
        with open(self.config, "w") as f:
            f.write("database = %s\n\n" % os.path.join(self.dir, "state.db"))
            for name, relay in zip(("local", "remote"), self.relays):
                f.write("[%s]\ntype = imap\nhost = 127.0.0.1\nport = %d\nusername = %s\n"
                        "password = %s\nSTARTTLS = NO\ncompress = NO\n\n"
                        % (name, relay.port, USER, PASSWORD))
        # the initial synchronization, by the tool itself, outside the watch
        r = subprocess.run(self.argv([]), capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise RuntimeError("%s: initial run exited %d: %s"
                               % (self.tool, r.returncode, r.stderr.strip()[-500:]))
        self.relays[1].ctl.delay(self.delay_ms / 2.0)
        self.watcher = Watcher(self.argv(self.watch_args()), os.path.join(self.dir, "watch.log"))
        self.clients = {"local": Client(self.local), "remote": Client(self.remote)}

    def argv(self, extra):
        exe = PERL_INTERIMAP if self.tool == "perl" else self.args.ours
        return [exe, "--config", self.config] + extra

    def watch_args(self):
        if self.mode == "notify":
            return ["--watch", "--notify"]
        if self.mode == "idle":
            return ["--watch=%d" % self.args.interval, "--notify"]
        return ["--watch=%d" % self.args.interval]

    def stop(self):
        out = None
        if self.watcher:
            out = self.watcher.stop()
        for c in getattr(self, "clients", {}).values():
            c.close()
        for r in self.relays:
            r.stop()
        for srv in self.servers:
            try:
                srv.stop()
            except Exception as e:  # keep going: the next run uses new servers
                log("warning: stopping %s: %s" % (srv.name, e))
        if not self.args.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
        return out

    def settle(self, seconds):
        """Waits until neither relay has seen a command for `seconds`."""
        deadline = time.monotonic() + 120
        last = None
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            now = tuple(r.ctl.stats()["commands"] for r in self.relays)
            if now != last:
                last, quiet_since = now, time.monotonic()
            elif time.monotonic() - quiet_since >= seconds:
                return True
            time.sleep(0.1)
        return False

    def idle(self):
        """The idle window: CPU and commands, scaled to a minute."""
        self.settle(1.0)
        for r in self.relays:
            r.ctl.reset()
        dovecots = [p for srv in self.servers for p in [srv.pid] + srv.children()]
        t0 = time.monotonic()
        cpu0 = self.watcher.cpu()
        srv0 = tree_cpu_seconds(dovecots)
        time.sleep(self.args.idle_seconds)
        elapsed = time.monotonic() - t0
        cpu1 = self.watcher.cpu()
        dovecots = [p for srv in self.servers for p in [srv.pid] + srv.children()]
        srv1 = tree_cpu_seconds(dovecots)
        stats = [r.ctl.stats() for r in self.relays]
        per_min = 60.0 / elapsed
        return {
            "idle_seconds": elapsed,
            "cpu_per_min": (cpu1 - cpu0) * per_min if cpu1 is not None else None,
            "server_cpu_per_min": max(0.0, srv1 - srv0) * per_min,
            "commands_per_min": [s["commands"] * per_min for s in stats],
            "command_names": [s["command_names"] for s in stats],
            "rss_kib": rss_kib(self.watcher.proc.pid),
        }


    def bound(self):
        """How long a change may take before it counts as missing."""
        if self.mode == "notify":
            return 15.0
        return 2.0 * self.args.interval + 10.0

    def wait_seen(self, pred):
        t0 = time.monotonic()
        while time.monotonic() - t0 < self.bound():
            if pred():
                return time.monotonic() - t0
            time.sleep(POLL_STEP)
        return None

    def change(self, kind, where, src, n):
        """Makes change number n on side src; returns its latency on the
        other side, or None if it did not arrive in time."""
        dst = "remote" if src == "local" else "local"
        a, b = self.clients[src], self.clients[dst]
        box = "INBOX" if where == "INBOX" else "Other"
        if kind == "append":
            want = b.messages(box) + 1
            a.append(box, self.gen.message())
            return self.wait_seen(lambda: b.messages(box) == want)
        if kind == "flags":
            keyword = "$Bench%d" % n
            a.store(box, a.uids(box)[n % 5], keyword)
            return self.wait_seen(lambda: b.has_keyword(box, keyword))
        if kind == "expunge":
            want = b.messages(box) - 1
            a.expunge(box, a.uids(box)[0])
            return self.wait_seen(lambda: b.messages(box) == want)
        if kind == "mailbox":
            name = "New%d" % n
            a.create(name)
            return self.wait_seen(lambda: b.exists(name))
        raise ValueError(kind)

    def propagation(self):
        """Every kind of change, alternately from each side; returns
        {"kind where": [latency or None, ...]} and the commands sent."""
        self.gen = MessageGenerator(SEED + 1)
        cases = [(k, w) for k in ("append", "flags", "expunge") for w in ("INBOX", "other")]
        cases.append(("mailbox", "-"))
        samples = {}
        for r in self.relays:
            r.ctl.reset()
        n = 0
        for kind, where in cases:
            for rep in range(self.args.reps):
                src = ("local", "remote")[n % 2]
                d = self.change(kind, where, src, n)
                samples.setdefault("%s %s" % (kind, where), []).append(d)
                n += 1
                time.sleep(0.5)
        stats = [r.ctl.stats() for r in self.relays]
        return samples, [st["commands"] / n for st in stats]

    def verify(self):
        a = mail.snapshot(self.local, bodies=False)
        b = mail.snapshot(self.remote, bodies=False)
        diff = a.diff(b)
        return "ok" if not diff else "DIFFERENT: " + diff.splitlines()[0][:80]


class Bench:
    def __init__(self, args):
        self.args = args
        self.root = tempfile.mkdtemp(prefix="interimap-watch-bench-")
        os.chmod(self.root, 0o755)
        self.runs = []

    def one(self, tool, mode, delay):
        run = Run(self, tool, mode, delay)
        result = {"tool": tool, "mode": mode, "rtt_ms": delay}
        try:
            run.start()
            result.update(run.idle())
            samples, per_change = run.propagation()
            result["latency"] = samples
            result["commands_per_change"] = per_change
            # let the last cycle end before comparing
            run.settle(2.0)
            result["verified"] = run.verify()
        except Exception as e:
            result["error"] = str(e)
        finally:
            code, text = run.stop() or (None, "")
            result["exit"] = code
            if code not in (0, None):
                result.setdefault("error", "exit %s: %s" % (code, text.strip()[-300:]))
        return result


CASES = ["append INBOX", "append other", "flags INBOX", "flags other", "expunge INBOX",
         "expunge other", "mailbox -"]


def cell(xs):
    """median / p90 in seconds; a change that never arrived counts as
    infinite (shown as '>bound', or 'missing' when most did not)."""
    if not xs:
        return "-"
    arrived = [x for x in xs if x is not None]
    if len(arrived) * 2 < len(xs):
        return "missing"
    inf = float("inf")
    full = sorted(x if x is not None else inf for x in xs)
    med, p90 = percentile(full, 0.5), percentile(full, 0.9)
    f = lambda v: "never" if v == inf else "%.2f" % v  # noqa: E731
    return "%s / %s" % (f(med), f(p90))


def row_name(r):
    return "%s %s %d ms" % (r["tool"], r["mode"], r["rtt_ms"])


def markdown(header, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    out = ["| " + " | ".join(str(h).ljust(w) for h, w in zip(header, widths)) + " |",
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    for r in rows:
        out.append("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |")
    return "\n".join(out)


def tables(runs, args):
    lat, idle = [], []
    for r in runs:
        if "error" in r:
            lat.append([row_name(r), "FAILED: " + r["error"][:80]] + [""] * (len(CASES) - 1))
            continue
        lat.append([row_name(r)] + [cell(r["latency"].get(c)) for c in CASES])
        idle.append([row_name(r), "%.3f" % r["cpu_per_min"], "%.2f" % r["server_cpu_per_min"],
                     "%.1f / %.1f" % tuple(r["commands_per_min"]),
                     "%.1f / %.1f" % tuple(r["commands_per_change"]),
                     "%.1f" % (r["rss_kib"] / 1024.0) if r["rss_kib"] else "-",
                     r.get("verified", "")])
    text = ["Propagation latency, seconds, median / p90 (%d changes per cell, "
            "alternately from each side; interval %d s in the idle and poll modes):"
            % (args.reps, args.interval), "",
            markdown(["tool mode RTT"] + CASES, lat), "",
            "Idle cost over %g s, and commands per change during the propagation runs:"
            % args.idle_seconds, "",
            markdown(["tool mode RTT", "CPU s/min", "servers' CPU s/min",
                      "commands/min local / remote", "commands/change local / remote",
                      "RSS MiB", "servers after"], idle)]
    return "\n".join(text)


def machine():
    info = {"platform": platform.platform(), "cpus": os.cpu_count()}
    for key, cmd in (("dovecot", ["dovecot", "--version"]),
                     ("commit", ["git", "-C", TOP, "rev-parse", "--short", "HEAD"])):
        try:
            info[key] = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            info[key] = None
    return info


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__)
    ap.add_argument("--quick", action="store_true",
                    help="20 s idle window, one change of each kind (default: 60 s, 5)")
    ap.add_argument("--json", help="write every raw figure to this file")
    ap.add_argument("--tools", default="ours,perl")
    ap.add_argument("--modes", default="notify,idle,poll")
    ap.add_argument("--delays", default="0,50", help="round-trip times in ms (default 0,50)")
    ap.add_argument("--reps", type=int, help="changes of each kind")
    ap.add_argument("--idle-seconds", type=float)
    ap.add_argument("--interval", type=int, default=10,
                    help="--watch interval of the idle and poll modes (default 10)")
    ap.add_argument("--ours", default=os.path.join(TOP, "build", "src", "interimap"))
    ap.add_argument("--keep", action="store_true", help="keep the data directories")
    ap.add_argument("--report", metavar="JSON", help="print the tables of an earlier --json run")
    args = ap.parse_args()
    if args.report:
        with open(args.report) as f:
            saved = json.load(f)
        info = saved["machine"]
        print("Machine: %s, %d CPUs, %s, commit %s\n"
              % (info["platform"], info["cpus"], info["dovecot"], info["commit"]))
        print(tables(saved["runs"], argparse.Namespace(**saved["args"])))
        return 0
    if args.idle_seconds is None:
        args.idle_seconds = 20.0 if args.quick else 60.0
    if args.reps is None:
        args.reps = 1 if args.quick else 5
    if os.geteuid() != 0:
        ap.error("run as root: Dovecot's mail processes run as dovenull")
    b = Bench(args)
    started = time.monotonic()
    try:
        for tool in args.tools.split(","):
            for mode in args.modes.split(","):
                if tool == "perl" and mode == "idle":
                    continue  # its --notify needs NOTIFY
                for delay in [int(x) for x in args.delays.split(",")]:
                    log("%s %s %d ms" % (tool, mode, delay))
                    r = b.one(tool, mode, delay)
                    if "error" in r:
                        log("  failed: %s" % r["error"])
                    b.runs.append(r)
    finally:
        if not args.keep:
            shutil.rmtree(b.root, ignore_errors=True)
    info = machine()
    print("Machine: %s, %d CPUs, %s, commit %s; %.0f s\n"
          % (info["platform"], info["cpus"], info["dovecot"], info["commit"],
             time.monotonic() - started))
    print(tables(b.runs, args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "args": vars(args), "runs": b.runs}, f, indent=1)
    return 1 if any("error" in r for r in b.runs) else 0


if __name__ == "__main__":
    sys.exit(main())
