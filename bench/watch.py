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
    xs = sorted(xs)
    if not xs:
        return None
    k = (len(xs) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
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


class Observer:
    """A second client on one server, asking it directly (no relay)."""

    def __init__(self, server):
        self.conn = server.login(mode="plain")

    def close(self):
        try:
            self.conn.logout()
        except (imaplib.IMAP4.error, OSError):
            pass

    def status(self, name, what="MESSAGES"):
        typ, data = self.conn.status(mail.wire_name(name), "(%s)" % what)
        if typ != "OK":
            return None
        m = re.search(rb"%s (\d+)" % what.encode(), data[0])
        return int(m.group(1)) if m else None

    def has_keyword(self, name, keyword):
        typ, _ = self.conn.select(mail.wire_name(name), readonly=True)
        if typ != "OK":
            return False
        typ, data = self.conn.uid("SEARCH", "KEYWORD", keyword)
        self.conn.close()
        return typ == "OK" and bool(data[0].split())

    def exists(self, name):
        typ, data = self.conn.list('""', mail.wire_name(name))
        return typ == "OK" and any(d for d in data if d)


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
        self.obs = {"local": Observer(self.local), "remote": Observer(self.remote)}

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
        for o in getattr(self, "obs", {}).values():
            o.close()
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
        except Exception as e:
            result["error"] = str(e)
        finally:
            code, text = run.stop() or (None, "")
            result["exit"] = code
            if code not in (0, None):
                result.setdefault("error", "exit %s: %s" % (code, text.strip()[-300:]))
        return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--tools", default="ours,perl")
    ap.add_argument("--modes", default="notify,idle,poll")
    ap.add_argument("--delays", default="0,50", help="round-trip times in ms")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--idle-seconds", type=float, default=None)
    ap.add_argument("--interval", type=int, default=10)
    ap.add_argument("--ours", default=os.path.join(TOP, "build", "src", "interimap"))
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    if args.idle_seconds is None:
        args.idle_seconds = 20.0 if args.quick else 60.0
    if args.reps is None:
        args.reps = 2 if args.quick else 5
    b = Bench(args)
    try:
        for tool in args.tools.split(","):
            for mode in args.modes.split(","):
                if tool == "perl" and mode == "idle":
                    continue
                for delay in [int(x) for x in args.delays.split(",")]:
                    log("%s %s %d ms" % (tool, mode, delay))
                    r = b.one(tool, mode, delay)
                    log(json.dumps(r))
                    b.runs.append(r)
    finally:
        shutil.rmtree(b.root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
