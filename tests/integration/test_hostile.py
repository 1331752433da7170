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

import hashlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pair import binary  # noqa: E402
from imapfixture import Dovecot, check, check_eq, main, mail  # noqa: E402
from imapfixture.fakeserver import ModelServer, Mutator, RecordingServer  # noqa: E402
from imapfixture.tap import ByteTap, Malformed, check_commands  # noqa: E402
from imapfixture import util  # noqa: E402

RSS_LIMIT_KB = 64 * 1024
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_CONNECTION, EXIT_PARTIAL = 0, 1, 2, 3, 4


def sanitized():
    """Whether the binary under test runs under AddressSanitizer."""
    with open(binary(), "rb") as f:
        return b"__asan_init" in f.read()


SANITIZED = sanitized()

# To show that a test fails without the time limits (an older build that
# does not know them): INTERIMAP_HOSTILE_NO_LIMITS=1 leaves them out of
# the configuration.
LIMITS = not os.environ.get("INTERIMAP_HOSTILE_NO_LIMITS")
LIMIT_KEY = re.compile(r"^(timeout|connect-timeout|login-timeout|min-rate) =.*\n?", re.M)


class Result:
    def __init__(self, code, out, err, elapsed, maxrss_kb):
        self.code, self.out, self.err = code, out, err
        self.elapsed, self.maxrss_kb = elapsed, maxrss_kb

    def errors(self):
        return [l for l in self.err.splitlines() if "ERROR" in l]

    def __repr__(self):
        return "exit %s after %.1fs, %d KiB\n--- stderr\n%s" % (
            self.code, self.elapsed, self.maxrss_kb, self.err[-4000:])


TIME = "/usr/bin/time"


def run_measured(cmd, timeout, env=None):
    """Runs cmd under GNU time, which reports its peak RSS (wait4's
    ru_maxrss of a child forked from this Python process would count the
    Python pages it held before exec). Kills it, by PID, if it outlives
    timeout; the Result's code is then None."""
    out = tempfile.TemporaryFile()
    err = tempfile.TemporaryFile()
    rss = tempfile.NamedTemporaryFile(prefix="interimap-rss-")
    t0 = time.monotonic()
    proc = subprocess.Popen([TIME, "-f", "%M", "-o", rss.name] + cmd, stdout=out, stderr=err,
                            stdin=subprocess.DEVNULL, env=env)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in util.descendants(proc.pid):
            util.signal_pids([pid], signal.SIGKILL)
        proc.kill()
        proc.wait()
        code = None
    elapsed = time.monotonic() - t0
    out.seek(0)
    err.seek(0)
    try:
        maxrss = int(open(rss.name).read().split()[-1])
    except (ValueError, IndexError):
        maxrss = 0
    r = Result(code, out.read().decode(errors="replace"), err.read().decode(errors="replace"),
               elapsed, maxrss)
    for f in (out, err, rss):
        f.close()
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
        if not LIMITS:
            text = LIMIT_KEY.sub("", text)
        with open(self.config_path, "w") as f:
            f.write(text)

    def run(self, *args, timeout=30):
        return run_measured([binary(), "--config", self.config_path] + list(args), timeout)

    def mark(self):
        """A point in the tap's record: honest_commands(since=...) checks
        only the connections opened after it."""
        return len(self.tap.connections)

    def honest_commands(self, forbid=(b"DELETE", b"RENAME"), since=0):
        """Checks what reached the honest server; returns its commands."""
        cmds = []
        for conn_cmds, tail in check_commands(self.tap.client_bytes()[since:], forbid):
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
        check_run(r, EXIT_CONNECTION, r"remote: ERROR: no usable session after 2 s \(login-timeout\)",
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
        check_run(r, EXIT_CONNECTION, r"remote: ERROR: no usable session after 2 s", max_seconds=10)


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
        check_run(r, EXIT_FAILURE, r"remote\(INBOX\): ERROR: .*no answer from the server for 2 s \(timeout\)",
                  max_seconds=15)
        h.honest_commands()


def test_trickled_reply_mid_run():
    """One byte every 0.5 s: never 2 s of silence, far below min-rate."""
    srv = SilentAfter("SELECT", trickle=0.5)
    srv.mailbox(b"INBOX").add(body(1))
    with Hostile(srv, remote="timeout = 2\nmin-rate = 100\n") as h:
        r = h.run()
        check_run(r, EXIT_FAILURE, r"remote\(INBOX\): ERROR: .*the server is too slow: \d+ bytes in \d+ s",
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
            check_run(r, EXIT_CONNECTION, r"remote: ERROR: server refused the connection: go away",
                      max_seconds=15)
            check(util.wait_pids_gone([pid], timeout=5) == [], "tunnel command ended")
        finally:
            if pid and util.pid_alive(pid) and b"sleep" in b" ".join(util.pid_cmdline(pid)):
                os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------
# injection: values from the hostile server never become commands


def seed_local(h):
    """Mailboxes on the honest side that an injected DELETE would remove."""
    mail.fill(h.dovecot, {"INBOX": [(body(100), [], 1700000000)],
                          "Archive/2023": [(body(101), ["\\Seen"], 1700000000)],
                          "Sent": [(body(102), [], 1700000000)]})


def check_local_intact(h):
    snap = h.local_snapshot()
    for name in ("Archive/2023", "Sent"):
        check(name in snap.mailboxes, "%s still exists on the honest server" % name)
        check(len(snap.mailboxes[name].messages) == 1, "%s keeps its message" % name)
    return snap


class Rewrite(ModelServer):
    """Applies fn(data) to every answer to the named command."""

    def __init__(self, command, fn, **kw):
        super().__init__(**kw)
        self.command, self.fn = command, fn

    def respond(self, sess, name, tag, data):
        return self.fn(data) if name == self.command else data


INJECTED = b"\r\n901 DELETE \"Archive/2023\"\r\n902 DELETE Sent\r\n903 NOOP"


def test_flag_literal_injection_into_append():
    """A FLAGS item holding a literal with line breaks: the message is
    refused, nothing reaches the honest server but well-formed commands."""
    payload = b"x)" + INJECTED + b" ("

    def inject(data):
        return re.sub(rb"FLAGS \(([^)]*)\)",
                      lambda m: b"FLAGS (\\Seen {%d}\r\n" % len(payload) + payload + b")", data)
    srv = Rewrite("UID FETCH", inject)
    srv.mailbox(b"INBOX").add(body(1), ["\\Seen"])
    srv.mailbox(b"INBOX").add(body(2))
    with Hostile(srv) as h:
        seed_local(h)
        r = h.run()
        # INBOX's two messages, and the flags the two mailboxes created on
        # this server report for our copies (they fail: nothing is saved)
        check_run(r, EXIT_PARTIAL, r"remote\(INBOX\): ERROR: invalid FETCH response \(FETCH FLAGS "
                  r"'x\)\\x0D\\x0A901 DELETE .* is not a flag\); ignored", errors=4)
        cmds = h.honest_commands()
        check(not [c for c in cmds if c.name == "APPEND" and b"INBOX" in c.raw[:40]],
              "no message of the refused kind was appended to INBOX")
        check_local_intact(h)


def test_window_fetch_beyond_its_range_refused():
    """Mailboxes only on this server are copied a window at a time, each
    FETCH asking for the UIDs below the UIDNEXT the listing gave. A message
    answered beyond that range (which the saved state would then pass
    over, and the next run copy again) is refused, not copied."""
    extra = body(77)
    sent = []

    def inject(data):
        if b"BODY[]" not in data:
            return data
        sent.append(True)
        return (b'* 9 FETCH (UID 40 FLAGS () INTERNALDATE "01-Jan-2024 10:00:00 +0000" '
                b"BODY[] {%d}\r\n" % len(extra) + extra + b")\r\n" + data)
    srv = Rewrite("UID FETCH", inject)
    for name in (b"X", b"Y"):
        srv.mailbox(name).add(body(1))
        srv.mailbox(name).add(body(2), ["\\Seen"])
    with Hostile(srv) as h:
        r = h.run("--debug")
        check(sent, "the message beyond the range was sent")
        check(re.search(r"remote: C: \d+ UID FETCH 1:2 \(", r.err),
              "the window asked for the UIDs below the listed UIDNEXT")
        check_run(r, EXIT_PARTIAL, r"remote\(X\): ERROR: the server returned UID 40, which was "
                  r"not asked for", errors=None)
        snap = h.local_snapshot()
        for name in ("X", "Y"):
            check(hashlib.sha256(extra).hexdigest() not in
                  [m.sha256 for m in snap.mailboxes[name].messages],
                  "%s: the message beyond the range was not copied" % name)
            check_eq(len(snap.mailboxes[name].messages), 2, "%s: the two asked for" % name)


def test_date_literal_injection_into_append():
    # short enough to pass for a date by its length: it closes the quote,
    # and the next line is a command of its own
    payload = b'01-Jan-2024 10:00:00 +0000"\r\n902 DELETE Sent\r\n903 NOOP "'

    def inject(data):
        return re.sub(rb'INTERNALDATE "[^"]*"',
                      lambda m: b"INTERNALDATE {%d}\r\n" % len(payload) + payload, data)
    srv = Rewrite("UID FETCH", inject)
    srv.mailbox(b"INBOX").add(body(1))
    with Hostile(srv) as h:
        seed_local(h)
        r = h.run()
        check_run(r, EXIT_PARTIAL, r"ERROR: invalid FETCH response \(FETCH INTERNALDATE '01-Jan-2024 "
                  r"10:00:00 \+0000\"\\x0D\\x0A902 DELETE Sent.* is not a date-time\)")
        h.honest_commands()
        check_local_intact(h)


def test_quoted_flag_with_parenthesis():
    """A quoted flag "a)b" is not a flag: it is not sent as a)b."""
    srv = Rewrite("UID FETCH", lambda d: d.replace(b"FLAGS (\\Seen)", b'FLAGS (\\Seen "a)b")'))
    srv.mailbox(b"INBOX").add(body(1), ["\\Seen"])
    with Hostile(srv) as h:
        r = h.run()
        check_run(r, EXIT_PARTIAL, r"FETCH FLAGS 'a\)b' is not a flag")
        cmds = h.honest_commands()
        check(not [c for c in cmds if b"a)b" in c.raw], "a)b never sent")


def test_flag_injection_into_store():
    """A flag change of a known message, reported with an injected flag:
    no UID STORE carries it."""
    srv = ModelServer()
    msg = srv.mailbox(b"INBOX").add(body(1))
    with Hostile(srv) as h:
        seed_local(h)
        r = h.run()
        check_run(r, EXIT_OK, errors=0)
        inbox = srv.mailbox(b"INBOX")
        inbox.highestmodseq += 1
        msg.modseq = inbox.highestmodseq
        payload = b"\\Seen" + INJECTED
        msg.flags = [b"{%d}\r\n" % len(payload) + payload]
        mark = h.mark()
        r = h.run()
        check_run(r, EXIT_PARTIAL, r"invalid FETCH response \(FETCH FLAGS '.Seen\\x0D\\x0A901")
        cmds = h.honest_commands(since=mark)
        check(not [c for c in cmds if b"901" in c.raw or b"DELETE" in c.raw],
              "nothing of the injected text reached the honest server: %r" % cmds)
        check_local_intact(h)
        # the change is met again next time, not passed over
        r = h.run()
        check_run(r, EXIT_PARTIAL, r"is not a flag")


# ---------------------------------------------------------------------------
# bounded memory


def first_sync(h, n=4):
    inbox = h.server.mailbox(b"INBOX")
    for i in range(n):
        inbox.add(body(i))
    r = h.run()
    check_run(r, EXIT_OK, errors=0)
    snap = h.local_snapshot()
    check_eq(len(snap.mailboxes["INBOX"].messages), n, "messages copied by the first run")


class Vanished(ModelServer):
    """Adds a VANISHED response to its answers to `command`."""

    def __init__(self, command, line, **kw):
        super().__init__(**kw)
        self.command, self.line, self.armed = command, line, False

    def respond(self, sess, name, tag, data):
        if self.armed and name == self.command:
            return self.line + data
        return data


def test_repeated_vanished_ranges_bounded():
    """1:9999999 five hundred times (5 kB): merged and clipped to the UIDs
    the mailbox can hold, never expanded billions of times over."""
    srv = Vanished("SELECT", b"* VANISHED (EARLIER) " + b",".join([b"1:9999999"] * 500) + b"\r\n")
    with Hostile(srv) as h:
        first_sync(h)
        srv.armed = True
        srv.mailbox(b"INBOX").highestmodseq += 1  # so that LIST-STATUS shows a change
        r = h.run()
        check_run(r, EXIT_OK, errors=0)
        snap = h.local_snapshot()
        check_eq(len(snap.mailboxes["INBOX"].messages), 0,
                 "the four messages the server says vanished are expunged on the other side")
        stores = [c for c in h.honest_commands() if c.name in ("UID STORE", "UID EXPUNGE")]
        check(stores and all(re.match(rb"[0-9:,]+\Z", c.tokens[0]) for c in stores),
              "removals with plain UID sets: %r" % stores)


def test_vanished_up_to_the_largest_uid_is_applied():
    """VANISHED (EARLIER) 1:4294967295 means every known message: it is
    applied (the UIDs beyond the known ones dropped), not ignored."""
    srv = Vanished("SELECT", b"* VANISHED (EARLIER) 1:4294967295\r\n")
    with Hostile(srv) as h:
        first_sync(h)
        srv.armed = True
        srv.mailbox(b"INBOX").highestmodseq += 1
        r = h.run()
        check_run(r, EXIT_OK, errors=0)
        check_eq(len(h.local_snapshot().mailboxes["INBOX"].messages), 0, "messages expunged")
        h.honest_commands()


def test_absurd_vanished_refused():
    """A server whose UIDNEXT is the largest UID reports billions of UIDs
    vanished since the SELECT: beyond the memory allowed, refused, and
    nothing is expunged on the other side."""
    srv = Vanished("UID FETCH", b"* VANISHED 1:4294967294\r\n")
    with Hostile(srv) as h:
        first_sync(h)
        inbox = srv.mailbox(b"INBOX")
        inbox.add(body(50))
        inbox.uidnext = 4294967295
        srv.armed = True
        r = h.run()
        check_run(r, EXIT_PARTIAL, r"remote\(INBOX\): ERROR: the server's responses for this "
                  r"mailbox need more than 16 MiB")
        # the new message is fine and copied; none of the others expunged
        check_eq(len(h.local_snapshot().mailboxes["INBOX"].messages), 5, "nothing expunged")
        check(not [c for c in h.honest_commands() if c.name == "UID EXPUNGE"], "no UID EXPUNGE")


def test_appenduid_with_repeated_ranges():
    """APPENDUID naming sixteen million UIDs a hundred times over for one
    message: refused before anything is allocated."""
    ranges = b",".join([b"1:16000000"] * 100)
    srv = Rewrite("APPEND", lambda d: re.sub(rb"\[APPENDUID (\d+) [^\]]*\]",
                                             lambda m: b"[APPENDUID " + m.group(1) + b" " + ranges + b"]", d))
    with Hostile(srv) as h:
        mail.fill(h.dovecot, {"INBOX": [(body(1), [], 1700000000)]})
        r = h.run()
        check_run(r, EXIT_PARTIAL, r"remote\(INBOX\): ERROR: the server did not report the UIDs of "
                  r"appended messages \(APPENDUID\)")
        h.honest_commands()


def test_appenduid_count_mismatch():
    srv = Rewrite("APPEND", lambda d: re.sub(rb"(\[APPENDUID \d+ )[^\]]*\]", rb"\g<1>7]", d))
    with Hostile(srv) as h:
        mail.fill(h.dovecot, {"INBOX": [(body(1), [], 1700000000), (body(2), [], 1700000000)]})
        r = h.run()
        check_run(r, EXIT_PARTIAL, r"APPENDUID")
        h.honest_commands()


def test_flag_change_flood_bounded():
    """Hundreds of thousands of flag changes for UIDs that cannot exist:
    charged to the mailbox's memory budget, refused beyond it."""
    flood = b"".join(b"* %d FETCH (UID %d MODSEQ (9) FLAGS (\\Seen k%d))\r\n" % (i, i, i)
                     for i in range(1, 700001))
    srv = Vanished("SELECT", flood)
    with Hostile(srv) as h:
        first_sync(h)
        srv.armed = True
        srv.mailbox(b"INBOX").highestmodseq += 1
        r = h.run(timeout=60)
        check_run(r, EXIT_PARTIAL, r"need more than 16 MiB", max_seconds=60)
        h.honest_commands()


# ---------------------------------------------------------------------------
# a broken source during a streamed copy


class CutMidBody(ModelServer):
    """Sends half of the first message body it streams, then closes."""

    def respond(self, sess, name, tag, data):
        if name == "UID FETCH" and b"BODY[] {" in data:
            self.write(sess, data[: data.index(b"BODY[] {") + 40000])
            sess.conn.shutdown(socket.SHUT_RDWR)
            return b""
        return data


def test_source_breaks_mid_literal():
    srv = CutMidBody()
    srv.mailbox(b"INBOX").add(body(1, size=100000))
    with Hostile(srv) as h:
        r = h.run()
        check_run(r, EXIT_FAILURE, r"remote\(INBOX\): ERROR: FETCH failed: connection closed in "
                  r"the middle of a literal", max_seconds=15)
        conns = check_commands(h.tap.client_bytes())
        cmds, tail = conns[-1]
        check(tail.startswith(b"") and re.match(rb"\d+ APPEND INBOX ", tail or b""),
              "the honest connection ends inside the APPEND, nothing after it: %r" % tail[-200:])
        check(len(tail) < 50000, "the message was cut short, not completed by other bytes")
        check_eq(len(h.local_snapshot().mailboxes["INBOX"].messages), 0, "no partial message")


# ---------------------------------------------------------------------------
# names that cannot be represented on the other side


def test_other_delimiter_inside_a_name():
    srv = ModelServer(delimiter=b".")
    srv.mailbox(b"a/b").add(body(1))
    srv.mailbox(b"ok").add(body(2))
    with Hostile(srv) as h:
        r = h.run()
        check_run(r, EXIT_PARTIAL, r'remote: ERROR: mailbox "a/b" is not synchronized: its name '
                  r"contains '/', the hierarchy delimiter of the local server")
        cmds = h.honest_commands()
        check(not [c for c in cmds if c.name == "CREATE" and b"a/b" in c.raw], "a/b not created")
        snap = h.local_snapshot()
        check("ok" in snap.mailboxes and "a" not in snap.mailboxes, "only ok created: %r"
              % list(snap.mailboxes))
        # the next run says it again, and still does nothing
        r = h.run()
        check_run(r, EXIT_PARTIAL, r'mailbox "a/b" is not synchronized')


def test_inbox_in_another_case():
    srv = ModelServer()
    srv.mailbox(b"INBOX").add(body(1))
    srv.mailbox(b"Inbox").add(body(2))
    srv.mailbox(b"inbox/sub").add(body(3))
    with Hostile(srv) as h:
        r = h.run()
        check_run(r, EXIT_PARTIAL, r'mailbox "Inbox" is not synchronized: its name differs from '
                  r"INBOX only by case", errors=2)
        check("inbox/sub" in r.err, "the child is refused too: %r" % r)
        snap = h.local_snapshot()
        check_eq(len(snap.mailboxes["INBOX"].messages), 1, "INBOX copied once")
        h.honest_commands()


def test_control_characters_in_names():
    srv = ModelServer()
    srv.mailbox(b"evil\x1b[31mred\x07").add(body(1))
    srv.mailbox(b"x\r\nERROR: forged line").add(body(2))
    srv.mailbox(b"&AOk").add(body(3))
    srv.mailbox(b"&AA0-").add(body(4))
    with Hostile(srv) as h:
        r = h.run()
        check_run(r, EXIT_PARTIAL, r'"evil\\x1B\[31mred\\x07" is not synchronized: its name '
                  r"contains control characters", errors=4)
        check(not any(l.startswith("ERROR: forged") for l in r.err.splitlines()),
              "no forged line: %r" % r)
        check(r"x\x0D\x0AERROR: forged line" in r.err, "the name is shown escaped")
        check(re.search(r'"&AOk" is not synchronized: its name is not valid modified UTF-7', r.err),
              "invalid modified UTF-7 refused")
        check(re.search(r'"&AA0-" is not synchronized: its name contains control', r.err),
              "an encoded CR refused")
        cmds = h.honest_commands()
        check(not [c for c in cmds if c.name == "CREATE"], "nothing created: %r" % cmds)


def test_create_refused_reports_its_own_answer():
    """Dovecot (Maildir++) refuses '.' in names: each failed CREATE is
    reported with its own tagged answer, the others go on."""
    srv = ModelServer()
    srv.mailbox(b"a.b").add(body(1))
    srv.mailbox(b"c.d").add(body(2))
    srv.mailbox(b"ok").add(body(3))
    with Hostile(srv) as h:
        r = h.run()
        check_run(r, EXIT_PARTIAL, r"local\(a\.b\): ERROR: cannot create mailbox: Character not "
                  r"allowed in mailbox name: '\.'", errors=2)
        check(re.search(r"local\(c\.d\): ERROR: cannot create mailbox: Character not allowed",
                        r.err), "the second CREATE has its own message: %r" % r)
        check("ok" in h.local_snapshot().mailboxes, "the other mailbox is synchronized")
        h.honest_commands()


# ---------------------------------------------------------------------------
# exit statuses


def test_protocol_error_mid_run_exits_1():
    srv = Rewrite("SELECT", lambda d: b"* 1 FETCH (UID 1 FLAGS (\\Seen)\x00garbage\r\n" + d)
    srv.mailbox(b"INBOX").add(body(1))
    with Hostile(srv) as h:
        r = h.run()
        check_run(r, EXIT_FAILURE, r"remote\(INBOX\): ERROR: .*malformed response from the server")
        h.honest_commands()


def test_bare_lf_and_long_line():
    for bad in (b"* OK bare\nline\r\n", b"* OK " + b"x" * (2 << 20) + b"\r\n",
                b"* 1 FETCH " + b"(" * 100 + b"\r\n",
                b"* 1 FETCH (UID 1 X {20000000}\r\n"):
        srv = Rewrite("SELECT", lambda d, bad=bad: bad + d)
        srv.mailbox(b"INBOX").add(body(1))
        with Hostile(srv) as h:
            r = h.run()
            check_run(r, EXIT_FAILURE, r"remote(\(INBOX\))?: ERROR: ")
            h.honest_commands()


def test_random_mutations_of_a_recorded_session():
    """A clean session is recorded, then replayed with seeded random damage:
    every run ends within its time limit with a documented status, a
    message if it failed, and only well-formed commands to the honest
    server (under the sanitizers in CI)."""
    srv = RecordingServer()
    for i in range(3):
        srv.mailbox(b"INBOX").add(body(i), ["\\Seen"] if i % 2 else [])
    srv.mailbox(b"Work").add(body(9, size=5000), ["$Label1"])
    with Hostile(srv, remote="timeout = 2\nlogin-timeout = 3\n") as h:
        mail.fill(h.dovecot, {"INBOX": [(body(20), [], 1700000000)],
                              "Local": [(body(21), ["\\Flagged"], 1700000000)]})
        srv.record()
        r = h.run()
        check_run(r, EXIT_OK, errors=0)
        recording = srv.recording
        for seed in range(SEEDS):
            os.unlink(h.db)
            srv.replay(recording, Mutator(seed))
            r = h.run(timeout=30)
            check(r.code in (EXIT_OK, EXIT_FAILURE, EXIT_CONNECTION, EXIT_PARTIAL),
                  "seed %d: documented status: %r" % (seed, r))
            check(r.elapsed < 25, "seed %d: bounded time: %r" % (seed, r))
            check(r.code == EXIT_OK or r.errors(), "seed %d: a failure says why: %r" % (seed, r))
            check("Sanitizer" not in r.err and "runtime error" not in r.err,
                  "seed %d: no sanitizer report: %r" % (seed, r))
            if not SANITIZED:
                check(r.maxrss_kb < RSS_LIMIT_KB, "seed %d: RSS %d KiB" % (seed, r.maxrss_kb))
            try:
                h.honest_commands()
            except Malformed as e:
                raise AssertionError("seed %d: %s" % (seed, e))


SEEDS = int(os.environ.get("INTERIMAP_MUTATION_SEEDS", "20"))


if __name__ == "__main__":
    main(globals())
