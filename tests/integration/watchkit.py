"""Helpers of the --watch tests: the watcher process, bounded waits, what a
second client sees on a server, and what the watcher costs (CPU time and
open files from /proc, commands from the relays of Pair.use_relays)."""

import os
import signal
import subprocess
import time

from pair import binary
from imapfixture import mail

BOUND = 20.0  # seconds: generous, the machines are shared
CLK_TCK = os.sysconf("SC_CLK_TCK")


def sanitized():
    """Whether the binary is built with AddressSanitizer, whose quarantine
    of freed memory makes its RSS grow by design."""
    with open(binary(), "rb") as f:
        return b"__asan_init" in f.read()


def env_seconds(name, default):
    """A duration from the environment (the long runs set them), or default."""
    value = os.environ.get(name)
    return float(value) if value else default


class Watcher:
    def __init__(self, p, *args):
        self.log = open(os.path.join(p.dir, "watch.log"), "w+")
        self.proc = subprocess.Popen([binary(), "--config", p.config_path] + list(args),
                                     stdout=self.log, stderr=subprocess.STDOUT)

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def send(self, sig):
        if self.alive():
            self.proc.send_signal(sig)

    def text(self):
        """What it logged so far."""
        self.log.flush()
        with open(self.log.name, errors="replace") as f:
            return f.read()

    def cpu(self):
        """user + system CPU seconds so far."""
        with open("/proc/%d/stat" % self.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def rss_kib(self):
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return None

    def fds(self):
        return len(os.listdir("/proc/%d/fd" % self.pid))

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            code = None
        self.log.seek(0)
        return code, self.log.read()


def wait_for(pred, bound=BOUND, step=0.1):
    """Seconds until pred() held, or None after bound seconds."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < bound:
        if pred():
            return time.monotonic() - t0
        time.sleep(step)
    return None


def count(p, side, mailbox, flag=None):
    """Messages in mailbox on one side (with flag, if given); -1 if the
    mailbox cannot be opened."""
    conn = p.login(side)
    try:
        typ, _ = conn.select(mail.wire_name(mailbox), readonly=True)
        if typ != "OK":
            return -1
        if flag is None:
            crit = "ALL"
        elif flag.startswith("\\"):
            crit = flag[1:].upper()
        else:
            crit = "KEYWORD %s" % flag
        typ, data = conn.uid("SEARCH", crit)
        return len(data[0].split())
    finally:
        conn.logout()


def exists(p, side, mailbox):
    conn = p.login(side)
    try:
        typ, data = conn.list('""', mail.wire_name(mailbox))
        return typ == "OK" and any(d for d in data if d)
    finally:
        conn.logout()


def quiet(relays, seconds, bound=BOUND):
    """Waits until no relay has seen a command for `seconds`; returns the
    command counts, or None if they never stopped moving within bound."""
    t0 = time.monotonic()
    last, since = None, time.monotonic()
    while time.monotonic() - t0 < bound:
        now = tuple(r.ctl.stats()["commands"] for r in relays)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= seconds:
            return now
        time.sleep(0.1)
    return None
