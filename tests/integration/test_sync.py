#!/usr/bin/env python3
"""Synchronization against two real Dovecot servers: each test asserts the
final contents of both servers (bodies and flags per mailbox) and the
database."""

import os
import re
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pair import Pair, binary  # noqa: E402
from imapfixture import check, check_eq, main, mail  # noqa: E402
from imapfixture.mail import MessageGenerator  # noqa: E402


def fill(server, spec, seed=1):
    """spec: {mailbox: count}."""
    gen = MessageGenerator(seed)
    mail.fill(server, {name: gen.mailbox(n) for name, n in spec.items()})


def append(pair, side, mailbox, n, seed=7, flags=()):
    gen = MessageGenerator(seed)
    conn = pair.login(side)
    try:
        uids = [mail.append(conn, mailbox, gen.message(), flags=flags) for _ in range(n)]
    finally:
        conn.logout()
    return uids


def test_initial_local_to_empty_remote():
    with Pair() as p:
        fill(p.local, {"INBOX": 20, "Archive": 15, "Archive/2024": 5})
        r = p.run()
        a, b = p.assert_in_step()
        check_eq(b.total(), 40, "messages on remote")
        check("Archive/2024" in b.names(), "nested mailbox created on remote")
        check("added" in r.err, "a summary line is printed: %r" % r.err)
        check(re.search(r"^Done: 3 mailbox\(es\) in \d+\.\d\d s: 40 message\(s\) added, "
                        r"0 expunged, 0 flag update\(s\)$", r.err, re.M),
              "the line that ends the run counts everything: %r" % r.err)
        # a second run has nothing to do and changes nothing
        r2 = p.run()
        check("added" not in r2.err, "second run reports nothing: %r" % r2.err)
        a2, b2 = p.assert_in_step()
        check_eq(b2.total(), 40, "messages on remote after second run")


def test_initial_remote_to_empty_local():
    with Pair() as p:
        fill(p.remote, {"INBOX": 10, "Lists/dev": 12})
        p.run()
        a, b = p.assert_in_step()
        check_eq(a.total(), 22, "messages on local")


def test_both_populated_different_mailboxes():
    with Pair() as p:
        fill(p.local, {"INBOX": 5, "OnlyLocal": 7}, seed=1)
        fill(p.remote, {"INBOX": 6, "OnlyRemote": 3}, seed=2)
        p.run()
        a, b = p.assert_in_step()
        check_eq(a.total(), 21, "total messages")
        check_eq(len(a.mailboxes["INBOX"].messages), 11, "INBOX merged")


def test_changes_between_runs():
    with Pair() as p:
        fill(p.local, {"INBOX": 10, "Work": 10})
        p.run()
        # new messages on both sides
        append(p, "local", "INBOX", 3, seed=11)
        append(p, "remote", "Work", 4, seed=12)
        # flag changes on both sides
        lc = p.login("local")
        rc = p.login("remote")
        try:
            luids = mail.uids(lc, "INBOX")
            ruids = mail.uids(rc, "Work")
            mail.set_flags(lc, "INBOX", luids[:3], ["\\Flagged"])
            mail.set_flags(rc, "Work", ruids[2:5], ["\\Answered", "$Label1"])
            # expunges on both sides
            mail.expunge(lc, "Work", mail.uids(lc, "Work")[-2:])
            mail.expunge(rc, "INBOX", ruids[:0] or mail.uids(rc, "INBOX")[5:7])
        finally:
            lc.logout()
            rc.logout()
        p.run()
        a, b = p.assert_in_step()
        check_eq(len(a.mailboxes["INBOX"].messages), 11, "INBOX count (10+3-2)")
        check_eq(len(a.mailboxes["Work"].messages), 12, "Work count (10+4-2)")
        flagged = [m for m in b.mailboxes["INBOX"].messages if "\\Flagged" in m.flags]
        check(len(flagged) >= 3, "flag change propagated to remote")
        labelled = [m for m in a.mailboxes["Work"].messages if "$Label1" in m.flags]
        check(len(labelled) >= 3, "keyword propagated to local")


def test_conflicting_flags_union():
    with Pair() as p:
        fill(p.local, {"INBOX": 3})
        p.run()
        lc, rc = p.login("local"), p.login("remote")
        try:
            lu, ru = mail.uids(lc, "INBOX"), mail.uids(rc, "INBOX")
            mail.set_flags(lc, "INBOX", [lu[0]], ["\\Seen", "\\Flagged"], mode="")
            mail.set_flags(rc, "INBOX", [ru[0]], ["\\Answered"], mode="")
        finally:
            lc.logout()
            rc.logout()
        r = p.run()
        check("Conflicting flag update" in r.err, "conflict warning: %r" % r.err)
        a, b = p.assert_in_step()
        want = ("\\Answered", "\\Flagged", "\\Seen")
        got = [m.flags for m in a.mailboxes["INBOX"].messages if "\\Answered" in m.flags]
        check_eq(got, [want], "union of flags")


def test_expunge_one_side_flag_other():
    with Pair() as p:
        fill(p.local, {"INBOX": 4})
        p.run()
        lc, rc = p.login("local"), p.login("remote")
        try:
            lu, ru = mail.uids(lc, "INBOX"), mail.uids(rc, "INBOX")
            mail.expunge(lc, "INBOX", [lu[1]])
            mail.set_flags(rc, "INBOX", [ru[1]], ["\\Flagged"])
        finally:
            lc.logout()
            rc.logout()
        p.run()
        a, b = p.assert_in_step()
        check_eq(len(b.mailboxes["INBOX"].messages), 3, "expunge wins on remote")


def test_mailbox_created_either_side_nested_non_ascii():
    with Pair() as p:
        fill(p.local, {"INBOX": 1})
        p.run()
        lc, rc = p.login("local"), p.login("remote")
        try:
            mail.create(lc, "Projets/Été 2026")
            mail.append(lc, "Projets/Été 2026", MessageGenerator(3).message())
            mail.create(rc, "日本語/受信")
            mail.append(rc, "日本語/受信", MessageGenerator(4).message())
        finally:
            lc.logout()
            rc.logout()
        p.run()
        a, b = p.assert_in_step()
        check("Projets/Été 2026" in b.names(), "non-ASCII mailbox created on remote")
        check("日本語/受信" in a.names(), "non-ASCII mailbox created on local")


def test_different_delimiters():
    with Pair(local_sep="/", remote_sep=".") as p:
        fill(p.local, {"INBOX": 2, "a/b/c": 3})
        fill(p.remote, {"x.y": 2}, seed=5)
        p.run()
        a, b = p.snaps()
        check_eq(a.diff(b, sep="/"), "", "contents with delimiters translated")
        check("a.b.c" in b.mailboxes, "remote uses its own delimiter: %r" % list(b.mailboxes))
        check("x/y" in a.mailboxes, "local uses its own delimiter: %r" % list(a.mailboxes))
        names = {r[0] for r in p.db_rows("SELECT mailbox FROM mailboxes")}
        check(b"a\0b\0c" in names or "a\0b\0c" in names, "database stores NUL: %r" % names)


def test_list_mailbox_and_ignore():
    with Pair(config='list-mailbox = INBOX "Keep*"\nignore-mailbox = ^Keep\\x00Skip') as p:
        fill(p.local, {"INBOX": 2, "Keep": 1, "Keep/Sub": 1, "Keep/Skip": 1, "Other": 1})
        p.run()
        b = mail.snapshot(p.remote)
        names = set(b.names())
        check({"INBOX", "Keep", "Keep/Sub"} <= names, "listed mailboxes copied: %r" % names)
        check("Other" not in names, "unlisted mailbox not copied")
        check("Keep/Skip" not in names, "ignored mailbox not copied")


def test_list_select_opts_subscribed():
    with Pair(config="list-select-opts = SUBSCRIBED") as p:
        fill(p.local, {"INBOX": 1, "Sub": 1, "Unsub": 1})
        lc = p.login("local")
        try:
            mail.subscribe(lc, "INBOX")
            mail.subscribe(lc, "Sub")
            mail.subscribe(lc, "Unsub", on=False)
        finally:
            lc.logout()
        p.run()
        b = mail.snapshot(p.remote)
        check("Sub" in b.names(), "subscribed mailbox copied")
        check("Unsub" not in b.names(), "unsubscribed mailbox left alone")
        check("Sub" in b.subscribed(), "subscription copied")


def test_list_reference():
    with Pair(local_section="list-reference = perso/") as p:
        fill(p.local, {"INBOX": 1, "perso/Mail": 2, "other": 1})
        fill(p.remote, {"FromRemote": 2}, seed=9)
        p.run()
        a, b = p.snaps()
        check("Mail" in b.names(), "perso/Mail maps to Mail on remote: %r" % b.names())
        check("other" not in b.names(), "outside the reference is ignored")
        check("perso/FromRemote" in a.names(), "remote mailbox lands under perso/")


def test_command_line_mailboxes():
    with Pair() as p:
        fill(p.local, {"INBOX": 1, "A": 2, "B": 3})
        p.run("A")
        b = mail.snapshot(p.remote)
        check("A" in b.names() and "B" not in b.names(), "only A: %r" % b.names())


def test_uidvalidity_change_reported():
    with Pair() as p:
        fill(p.local, {"INBOX": 2, "Box": 3})
        p.run()
        # recreate Box on remote: new UIDVALIDITY, same content copied by hand
        rc = p.login("remote")
        try:
            mail.delete(rc, "Box")
            mail.create(rc, "Box")
            mail.append(rc, "Box", MessageGenerator(21).message())
        finally:
            rc.logout()
        r = p.run(expect=None)
        check(r.code != 0, "non-zero exit on UIDVALIDITY change: %r" % r)
        check("UIDVALIDITY" in r.err, "error names UIDVALIDITY: %r" % r.err)
        a, b = p.snaps()
        check_eq(len(a.mailboxes["Box"].messages), 3, "nothing copied into local Box")
        check_eq(len(b.mailboxes["Box"].messages), 1, "nothing copied into remote Box")
        check_eq(a.duplicates(), {}, "no duplicates")


def test_second_instance_refused():
    with Pair() as p:
        fill(p.local, {"INBOX": 1})
        p.run()
        # hold the database lock with a watching instance
        proc = subprocess.Popen([binary(), "--config", p.config_path, "--watch=1"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(2)
            r = p.run(expect=None)
            check(r.code != 0, "second instance fails: %r" % r)
            check("lock" in r.err.lower(), "message mentions the lock: %r" % r.err)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_large_message_bounded_memory():
    with Pair() as p:
        body = b"Subject: big\r\nFrom: a@example.org\r\nTo: b@example.org\r\n\r\n"
        line = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n"
        body += line * (20 * 1024 * 1024 // len(line))
        lc = p.login("local")
        try:
            mail.append(lc, "INBOX", body)
        finally:
            lc.logout()
        # GNU time forks a small process that execs ours, so its maximum RSS
        # is ours alone (a child forked straight from this Python process
        # would start with this process's resident size)
        proc = subprocess.run(["/usr/bin/time", "-f", "maxrss=%M", binary(), "--config",
                               p.config_path], capture_output=True, text=True, timeout=300)
        check_eq(proc.returncode, 0, "exit status (stderr: %s)" % proc.stderr)
        p.assert_in_step()
        rss_kb = int(proc.stderr.rsplit("maxrss=", 1)[1].split()[0])
        print("peak RSS for a 20 MiB message: %d KiB" % rss_kb)
        check(rss_kb < 64 * 1024, "peak RSS %d KiB under 64 MiB" % rss_kb)

def test_server_without_literalplus_or_multiappend():
    """Synchronizing literals (wait for '+' before each body) and one APPEND
    per message still work."""
    caps = ("IMAP4rev1 SASL-IR ENABLE IDLE UNSELECT CHILDREN NAMESPACE UIDPLUS LIST-EXTENDED "
            "CONDSTORE QRESYNC ESEARCH LIST-STATUS")
    with Pair(remote={"capability": caps}, local={"capability": caps}) as p:
        fill(p.local, {"INBOX": 6, "Box": 4})
        fill(p.remote, {"INBOX": 3}, seed=8)
        r = p.run("--debug", timeout=120)
        check(not any("+}" in l and "APPEND" in l for l in r.err.splitlines()),
              "no non-synchronizing literal without LITERAL+")
        a, b = p.assert_in_step()
        check_eq(a.total(), 13, "all messages copied")


def test_delivery_during_append_is_not_lost():
    """A message delivered to the target while we append there gets a UID
    among ours: it must still be copied back (now or on the next run)."""
    with Pair() as p:
        # large enough that the APPEND is still streaming when the other
        # delivery commits (Dovecot numbers a MULTIAPPEND at its end)
        mail.fill(p.local, {"INBOX": MessageGenerator(1).mailbox(40, size=400000)})
        proc = subprocess.Popen([binary(), "--config", p.config_path, "--debug"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        delivered = False
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace")
            if not delivered and re.search(r"remote: C: \d+ APPEND", line):
                append(p, "remote", "INBOX", 1, seed=99)
                delivered = True
        proc.wait(timeout=120)
        check(delivered, "the APPEND was seen")
        check_eq(proc.returncode, 0, "exit status")
        p.run()
        a, b = p.assert_in_step()
        check_eq(a.total(), 41, "the concurrent delivery reached local")


def create_empty(p, side, names):
    conn = p.login(side)
    try:
        for name in names:
            mail.create(conn, name)
    finally:
        conn.logout()


def test_next_select_sent_ahead_and_late_delivery_done_in_same_run():
    """The next mailbox's SELECT goes out behind the current mailbox's
    APPEND; a message delivered to the current mailbox meanwhile makes the
    run come back to that mailbox before it ends."""
    with Pair() as p:
        gen = MessageGenerator(3)
        # A is large enough that its APPEND is still streaming when the
        # other delivery commits; B and C come before and after it
        mail.fill(p.local, {"B": gen.mailbox(3), "A": gen.mailbox(40, size=400000),
                            "C": gen.mailbox(3), "D": gen.mailbox(3)})
        # on both sides already (empty on the remote), so that they are
        # synchronized one by one, not as fresh mailboxes (test_fresh.py)
        create_empty(p, "remote", ["A", "B", "C", "D"])
        proc = subprocess.Popen([binary(), "--config", p.config_path, "--debug"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        target = None
        trace = []
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace")
            trace.append(line)
            m = re.search(r"remote: C: (\d+) APPEND (A)\b", line)
            if target is None and m:
                target = (m.group(1), m.group(2))
                append(p, "remote", target[1], 1, seed=99)
        proc.wait(timeout=120)
        check(target is not None, "the APPEND to A was seen")
        check_eq(proc.returncode, 0, "exit status")
        # the SELECT of another mailbox left before the APPEND was answered
        text = "".join(trace)
        tag, box = target
        done = text.index("remote: S: %s OK" % tag)
        ahead = [l for l in text[text.index("APPEND %s" % box):done].splitlines()
                 if re.search(r"remote: C: \d+ SELECT (?!%s\b)" % re.escape(box), l)]
        check(ahead, "a SELECT sent behind the APPEND")
        check("done again later" in text, "A was gone back to")
        # one run is enough: both servers equal, the delivery copied back
        a, b = p.assert_in_step()
        check_eq(a.total(), 50, "messages on local, the concurrent delivery included")
        check_eq(b.total(), 50, "messages on remote")



def test_inbox_selected_behind_the_login():
    """INBOX is selected speculatively behind the LISTs that ride along
    with the login: used first when it changed, let go when it did not,
    and in both cases every change is propagated."""
    with Pair() as p:
        fill(p.local, {"INBOX": 8, "A": 6, "B": 4})
        p.run()
        # INBOX changed on both sides, A on one
        rc, lc = p.login("remote"), p.login("local")
        try:
            mail.expunge(rc, "INBOX", mail.uids(rc, "INBOX")[:2])
            mail.set_flags(lc, "INBOX", mail.uids(lc, "INBOX")[-2:], ["\\Flagged"])
            mail.set_flags(lc, "A", mail.uids(lc, "A")[:3], ["\\Answered"])
        finally:
            rc.logout()
            lc.logout()
        r = p.run("--debug")
        for side in ("local", "remote"):
            lines = r.err.splitlines()
            sel = [k for k, l in enumerate(lines) if re.search(side + r": C: \d+ SELECT INBOX", l)]
            comp = [k for k, l in enumerate(lines) if re.search(side + r": C: \d+ COMPRESS", l)]
            check_eq(len(sel), 1, "%s: INBOX selected once" % side)
            if comp:
                check(sel[0] < comp[0], "%s: INBOX selected before COMPRESS" % side)
        a, b = p.assert_in_step()
        check_eq(a.total(), 16, "messages on local after the expunge")
        # INBOX unchanged, B changed: INBOX's answer is let go
        lc = p.login("local")
        try:
            mail.expunge(lc, "B", mail.uids(lc, "B")[:1])
        finally:
            lc.logout()
        r = p.run("--debug")
        check("SELECT INBOX" in r.err, "INBOX was selected speculatively")
        a, b = p.assert_in_step()
        check_eq(b.total(), 15, "messages on remote after the second expunge")
        r = p.run()
        said = [l for l in r.err.splitlines() if "IMAP traffic (bytes):" not in l]
        check_eq(len(said), 1, "one line besides the traffic: %r" % said)
        check(re.match(r"Done: 3 mailbox\(es\) in \d+\.\d\d s, nothing to do$", said[0]),
              "a run with nothing to do says so: %r" % said)
        r = p.run("-q")
        check_eq(r.err, "", "nor anything with -q")


def test_large_inbox_not_selected_behind_the_login():
    """An INBOX of more than 10,000 messages is not selected ahead: a run
    where it did not change sends no SELECT at all, and one where it did
    selects it after the listing and propagates the change."""
    small = (b"From: a@example.org\r\nTo: b@example.org\r\nSubject: s\r\n\r\nbody\r\n", (), 1700000000)
    with Pair() as p:
        mail.fill(p.local, {"INBOX": [small] * 10001, "A": [small] * 3})
        p.run()
        r = p.run("--debug")
        check("remote: C: 1 AUTHENTICATE" in r.err, "the run logged its commands")
        check(not re.search(r"C: \d+ SELECT INBOX", r.err), "no SELECT of the large INBOX")
        check("nothing to do" in r.err, "nothing to do: %r" % r.err[-300:])
        rc = p.login("remote")
        try:
            mail.expunge(rc, "INBOX", mail.uids(rc, "INBOX")[:1])
        finally:
            rc.logout()
        r = p.run("--debug")
        for side in ("local", "remote"):
            lines = r.err.splitlines()
            sel = [k for k, l in enumerate(lines) if re.search(side + r": C: \d+ SELECT INBOX", l)]
            status = [k for k, l in enumerate(lines) if re.search(side + r": S: \d+ OK List", l)]
            check_eq(len(sel), 1, "%s: INBOX selected once" % side)
            check(status and sel and sel[0] > status[-1],
                  "%s: after the listing was answered" % side)
        lc = p.login("local")
        try:
            check_eq(len(mail.uids(lc, "INBOX")), 10000, "the expunge propagated")
        finally:
            lc.logout()


class ClosedStripper:
    """A relay in front of a real Dovecot that drops the server's
    `* OK [CLOSED]` lines, like a server that does not mark where the
    previous mailbox's responses end (plaintext, no COMPRESS)."""

    def __init__(self, port):
        import socket
        import threading
        self.upstream = port
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.dropped = 0
        self.threads = []
        t = threading.Thread(target=self.accept, daemon=True)
        t.start()

    def accept(self):
        import socket
        import threading
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            s = socket.create_connection(("127.0.0.1", self.upstream), timeout=60)
            threading.Thread(target=self.pump, args=(c, s, False), daemon=True).start()
            threading.Thread(target=self.pump, args=(s, c, True), daemon=True).start()

    def pump(self, src, dst, filtered):
        f = src.makefile("rb")
        try:
            while True:
                line = f.readline() if filtered else src.recv(65536)
                if not line:
                    break
                if filtered and line.startswith(b"* OK [CLOSED]"):
                    self.dropped += 1
                    continue
                dst.sendall(line)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(1)
            except OSError:
                pass

    def close(self):
        self.sock.close()


def test_server_without_closed_marker():
    """Without [CLOSED] the SELECT sent ahead cannot be told apart from the
    previous mailbox's responses: the mailbox is selected again, and the
    rest of the run selects one mailbox at a time."""
    with Pair() as p:
        fill(p.local, {"INBOX": 5, "A": 6, "B": 7, "C": 8})
        create_empty(p, "remote", ["A", "B", "C"])  # one by one, not fresh
        relay = ClosedStripper(p.remote.imap_port)
        try:
            with open(p.config_path) as f:
                text = f.read()
            text = text.replace("port = %d" % p.remote.imaps_port, "port = %d" % relay.port)
            text = text.replace("type = imaps", "type = imap\nSTARTTLS = NO\ncompress = NO")
            with open(p.config_path, "w") as f:
                f.write(text)
            r = p.run("--debug")
            check("selecting again" in r.err, "the missing [CLOSED] was noticed")
            a, b = p.assert_in_step()
            check_eq(b.total(), 26, "messages on remote")
            # flag changes on both sides, propagated with the same relay
            conn = p.login("local")
            for box in ("A", "B", "C"):
                mail.set_flags(conn, box, [1, 2], ["\\Flagged"])
            conn.logout()
            r = p.run("--debug")
            check(relay.dropped > 0, "the relay dropped [CLOSED] lines")
            a, b = p.assert_in_step()
        finally:
            relay.close()


def test_invalid_tls_option_rejected_before_connecting():
    with Pair() as p:
        p.write_config(remote_section="SSL_protocol_min = TLSv9")
        r = p.run(expect=None)
        check_eq(r.code, 2, "configuration error status")
        lines = [l for l in r.err.splitlines() if l.strip()]
        check_eq(len(lines), 1, "one error line: %r" % r.err)
        check("TLSv9" in r.err, "names the bad value: %r" % r.err)


if __name__ == "__main__":
    main(globals())
