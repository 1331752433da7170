#!/usr/bin/env python3
"""A hostile or broken server on one side must never harm the other.

[remote] is a ModelServer (tests/fixtures/imapfixture/fakeserver.py) that
misbehaves in one way per test; [local] is a real Dovecot reached through
a byte tap. Every test checks, besides its own outcome:
  - that the honest server received only well-formed commands of the
    kinds the algorithm sends (imapfixture.tap.check_commands);
  - the exit status and the error message the manual documents;
  - that the run ended within its time limit;
  - that the peak memory of the run stayed under 64 MiB (not measured
    under AddressSanitizer, whose shadow memory would dominate).
"""

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pair import binary  # noqa: E402
from imapfixture import Dovecot, check, check_eq, main, mail  # noqa: E402
from imapfixture.fakeserver import ModelServer  # noqa: E402
from imapfixture.tap import ByteTap, Malformed, check_commands  # noqa: E402
from imapfixture import util  # noqa: E402

RSS_LIMIT_KB = 64 * 1024
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_CONNECTION, EXIT_PARTIAL = 0, 1, 2, 3, 4


def sanitized():
    """Whether the binary under test runs under AddressSanitizer."""
    with open(binary(), "rb") as f:
        return b"__asan_init" in f.read()


SANITIZED = sanitized()


class Result:
    def __init__(self, code, out, err, elapsed, maxrss_kb):
        self.code, self.out, self.err = code, out, err
        self.elapsed, self.maxrss_kb = elapsed, maxrss_kb

    def errors(self):
        return [l for l in self.err.splitlines() if "ERROR" in l]

    def __repr__(self):
        return "exit %s after %.1fs, %d KiB\n--- stderr\n%s" % (
            self.code, self.elapsed, self.maxrss_kb, self.err[-4000:])


def run_measured(cmd, timeout, env=None):
    """Runs cmd; returns a Result with its peak RSS (from wait4). Kills it
    (by its PID) if it outlives timeout; the Result's code is then None."""
    out = tempfile.TemporaryFile()
    err = tempfile.TemporaryFile()
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env)
    code, rusage = None, None
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            code = os.waitstatus_to_exitcode(status)
            rusage = ru
            proc.returncode = code
            break
        if time.monotonic() - t0 > timeout:
            os.kill(proc.pid, signal.SIGKILL)
            _, status, rusage = os.wait4(proc.pid, 0)
            proc.returncode = -9
            break
        time.sleep(0.02)
    elapsed = time.monotonic() - t0
    out.seek(0)
    err.seek(0)
    r = Result(code, out.read().decode(errors="replace"), err.read().decode(errors="replace"),
               elapsed, rusage.ru_maxrss if rusage else 0)
    out.close()
    err.close()
    return r


class Hostile:
    """[local]: a real Dovecot behind a byte tap (plain IMAP, no COMPRESS,
    so the tap reads the commands); [remote]: the given ModelServer."""

    def __init__(self, server=None, local_sep="/", remote="", local="", default=""):
        self.dir = tempfile.mkdtemp(prefix="interimap-hostile-")
        os.chmod(self.dir, 0o755)
        self.dovecot = Dovecot(root=os.path.join(self.dir, "local"), separator=local_sep,
                               ssl=None, compress=False, name="local")
        self.server = server or ModelServer()
        self.tap = None
        self.db = os.path.join(self.dir, "state.db")
        self.config_path = os.path.join(self.dir, "config")
        self.remote_extra, self.local_extra, self.default_extra = remote, local, default

    def __enter__(self):
        self.dovecot.start()
        self.tap = ByteTap(self.dovecot.host, self.dovecot.imap_port).start()
        self.server.start()
        self.write_config()
        return self

    def __exit__(self, *exc):
        for part in (self.server, self.tap, self.dovecot):
            try:
                if part:
                    part.stop()
            except Exception:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def write_config(self, remote_section=None):
        remote_section = remote_section or (
            "type = imap\nhost = 127.0.0.1\nport = %d\nSTARTTLS = NO\n"
            "username = hostile\npassword = secret\n" % self.server.port)
        text = ("database = %s\n%s\n[local]\ntype = imap\nhost = %s\nport = %d\nSTARTTLS = NO\n"
                "compress = NO\nusername = %s\npassword = %s\n%s\n[remote]\ntimeout = 5\n"
                "login-timeout = 5\n%scompress = NO\n%s\n"
                % (self.db, self.default_extra, self.tap.host, self.tap.port, self.dovecot.user,
                   self.dovecot.password, self.local_extra, remote_section, self.remote_extra))
        with open(self.config_path, "w") as f:
            f.write(text)

    def run(self, *args, timeout=30):
        return run_measured([binary(), "--config", self.config_path] + list(args), timeout)

    def honest_commands(self, forbid=(b"DELETE", b"RENAME")):
        """Checks what reached the honest server; returns its commands."""
        cmds = []
        for conn_cmds, tail in check_commands(self.tap.client_bytes(), forbid):
            cmds += conn_cmds
        return cmds

    def local_snapshot(self):
        return mail.snapshot(self.dovecot, bodies=True)


def check_run(r, code, message=None, max_seconds=20, errors=1):
    """The documented exit status, the message, the time and memory bounds."""
    check(r.code is not None, "the run ended within its time limit: %r" % r)
    check_eq(r.code, code, "exit status (%r)" % r)
    if message:
        check(re.search(message, r.err), "error says %r: %r" % (message, r))
    if errors is not None:
        check_eq(len(r.errors()), errors, "number of error lines (%r)" % r)
    check(r.elapsed < max_seconds, "ended within %d s: %r" % (max_seconds, r))
    if not SANITIZED:
        check(r.maxrss_kb < RSS_LIMIT_KB, "peak RSS %d KiB under 64 MiB" % r.maxrss_kb)
    for line in r.err.splitlines():
        check(not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", line), "no raw control byte in %r" % line)


def body(n, size=200):
    text = "From: a@example.org\r\nTo: b@example.org\r\nSubject: message %d\r\n" \
           "Message-ID: <m%d@example.org>\r\n\r\n" % (n, n)
    return (text + ("body %d " % n) * (size // 7)).encode() + b"\r\n"


# ---------------------------------------------------------------------------
# timeouts that cannot be defeated


class Silent(ModelServer):
    """Accepts the connection, then says nothing at all."""

    def greeting(self, sess):
        return b""


def test_silent_greeting_fails_at_login_timeout():
    with Hostile(Silent(), remote="login-timeout = 2\n") as h:
        r = h.run()
        check_run(r, EXIT_CONNECTION, r"remote: no usable session after 2 s \(login-timeout\)",
                  max_seconds=10)
        h.honest_commands()


class TrickleGreeting(ModelServer):
    """Sends its greeting one byte every 0.3 s: no read ever waits long,
    so only a deadline over the whole login stops it."""

    def greeting(self, sess):
        for b in b"* OK hello, I am a slow server and I will never finish this line":
            if sess.closed or self._stop.is_set():
                break
            try:
                self.write(sess, bytes([b]))
            except OSError:
                break
            time.sleep(0.3)
        return b""


def test_trickling_greeting_fails_at_login_timeout():
    with Hostile(TrickleGreeting(), remote="login-timeout = 3\n") as h:
        r = h.run()
        check_run(r, EXIT_CONNECTION, r"login-timeout", max_seconds=10)


def test_imap_at_an_imaps_port():
    """type = imap against a TLS port: no greeting ever comes."""
    with Hostile() as h:
        tls = Dovecot(root=os.path.join(h.dir, "tls"), name="tls")
        tls.start()
        try:
            h.write_config("type = imap\nhost = 127.0.0.1\nport = %d\nusername = u\npassword = p\n"
                           "login-timeout = 2\n" % tls.imaps_port)
            r = h.run()
        finally:
            tls.stop()
        check_run(r, EXIT_CONNECTION, r"remote: no usable session after 2 s", max_seconds=10)


class SilentAfter(ModelServer):
    """Answers normally until the given command, then stops answering."""

    def __init__(self, command, trickle=None, **kw):
        super().__init__(**kw)
        self.command = command
        self.trickle = trickle

    def respond(self, sess, name, tag, data):
        if name != self.command:
            return data
        if self.trickle is None:
            return b""
        for b in data:
            if sess.closed or self._stop.is_set():
                break
            try:
                self.write(sess, bytes([b]))
            except OSError:
                break
            time.sleep(self.trickle)
        return b""


def test_no_reply_mid_run():
    srv = SilentAfter("SELECT")
    srv.mailbox(b"INBOX").add(body(1))
    with Hostile(srv, remote="timeout = 2\n") as h:
        r = h.run()
        check_run(r, EXIT_FAILURE, r"remote: no answer from the server for 2 s \(timeout\)",
                  max_seconds=15)
        h.honest_commands()


def test_trickled_reply_mid_run():
    """One byte every 0.5 s: never 2 s of silence, far below min-rate."""
    srv = SilentAfter("SELECT", trickle=0.5)
    srv.mailbox(b"INBOX").add(body(1))
    with Hostile(srv, remote="timeout = 2\nmin-rate = 100\n") as h:
        r = h.run()
        check_run(r, EXIT_FAILURE, r"remote: the server is too slow: \d+ bytes in \d+ s",
                  max_seconds=15)
        h.honest_commands()


def test_tunnel_command_that_does_not_exit():
    """A tunnel command that says BYE but keeps running is ended (TERM)
    and does not keep the program alive."""
    with Hostile() as h:
        pidfile = os.path.join(h.dir, "tunnel.pid")
        script = os.path.join(h.dir, "tunnel.sh")
        with open(script, "w") as f:
            f.write("#!/bin/sh\necho $$ > %s\nprintf '* BYE go away\\r\\n'\nexec sleep 600\n"
                    % pidfile)
        os.chmod(script, 0o755)
        h.write_config("type = tunnel\ncommand = %s\n" % script)
        r = h.run()
        pid = None
        try:
            pid = int(open(pidfile).read())
            check_run(r, EXIT_CONNECTION, r"remote: server refused the connection: go away",
                      max_seconds=15)
            check(util.wait_pids_gone([pid], timeout=5) == [], "tunnel command ended")
        finally:
            if pid and util.pid_alive(pid) and b"sleep" in b" ".join(util.pid_cmdline(pid)):
                os.kill(pid, signal.SIGKILL)


if __name__ == "__main__":
    main(globals())
