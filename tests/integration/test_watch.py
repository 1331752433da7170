#!/usr/bin/env python3
"""--watch and --notify: changes made by another IMAP client on either side
reach the other side while interimap keeps running; a server restart is
survived; SIGTERM ends the process cleanly. Delays are recorded and bounded
generously here (the benchmark reports the figures)."""

import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pair import Pair, binary  # noqa: E402
from imapfixture import check, check_eq, main, mail  # noqa: E402
from imapfixture.mail import MessageGenerator  # noqa: E402

BOUND = 20.0  # seconds: generous, the machines are shared


class Watcher:
    def __init__(self, p, *args):
        self.log = open(os.path.join(p.dir, "watch.log"), "w+")
        self.proc = subprocess.Popen([binary(), "--config", p.config_path] + list(args),
                                     stdout=self.log, stderr=subprocess.STDOUT)

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
    t0 = time.monotonic()
    while time.monotonic() - t0 < bound:
        if pred():
            return time.monotonic() - t0
        time.sleep(step)
    return None


def count(p, side, mailbox, flag=None):
    conn = p.login(side)
    try:
        typ, _ = conn.select(mail.wire_name(mailbox), readonly=True)
        if typ != "OK":
            return -1
        crit = "ALL" if flag is None else "KEYWORD %s" % flag if not flag.startswith("\\") else flag[1:].upper()
        typ, data = conn.uid("SEARCH", crit)
        return len(data[0].split())
    finally:
        conn.logout()


def propagation(p, mode_args):
    mail.fill(p.local, {"INBOX": MessageGenerator(1).mailbox(3), "Other": MessageGenerator(2).mailbox(2)})
    w = Watcher(p, *mode_args)
    delays = []
    try:
        check(wait_for(lambda: count(p, "remote", "INBOX") == 3) is not None, "initial sync")
        g = MessageGenerator(9)
        # new message on the remote side, in INBOX
        rc = p.login("remote")
        mail.append(rc, "INBOX", g.message())
        rc.logout()
        d = wait_for(lambda: count(p, "local", "INBOX") == 4)
        check(d is not None, "remote append reached local")
        delays.append(d)
        # flag change on the local side
        lc = p.login("local")
        mail.set_flags(lc, "INBOX", mail.uids(lc, "INBOX")[:1], ["$Watched"])
        lc.logout()
        d = wait_for(lambda: count(p, "remote", "INBOX", "$Watched") == 1)
        check(d is not None, "local flag change reached remote")
        delays.append(d)
        # new message in another mailbox
        lc = p.login("local")
        mail.append(lc, "Other", g.message())
        lc.logout()
        d = wait_for(lambda: count(p, "remote", "Other") == 3, bound=BOUND + 10)
        check(d is not None, "append in another mailbox reached remote")
        delays.append(d)
    finally:
        code, log = w.stop()
    check_eq(code, 0, "SIGTERM ends the watcher with status 0 (log: %s)" % log[-2000:])
    print("propagation delays (s): %s" % ", ".join("%.2f" % d for d in delays))
    p.assert_in_step()
    return delays


def test_notify_propagation():
    with Pair() as p:
        delays = propagation(p, ["--notify", "--watch=5"])
        check(max(delays) < 10, "notified changes arrive fast: %r" % delays)


def test_notify_idle_fallback_without_notify_capability():
    # Dovecot with NOTIFY removed from the advertised capabilities: IDLE on INBOX
    caps = ("IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT MULTIAPPEND UNSELECT CHILDREN "
            "NAMESPACE UIDPLUS LIST-EXTENDED CONDSTORE QRESYNC ESEARCH LIST-STATUS LITERAL+ "
            "COMPRESS=DEFLATE")
    with Pair(local={"capability": caps}, remote={"capability": caps}) as p:
        delays = propagation(p, ["--notify", "--watch=3"])
        check(max(delays[:2]) < 10, "INBOX changes arrive fast through IDLE: %r" % delays)


def test_watch_polling():
    with Pair() as p:
        propagation(p, ["--watch=1"])


def test_watch_survives_server_restart():
    with Pair() as p:
        mail.fill(p.local, {"INBOX": MessageGenerator(1).mailbox(2)})
        w = Watcher(p, "--watch=1")
        try:
            check(wait_for(lambda: count(p, "remote", "INBOX") == 2) is not None, "initial sync")
            p.remote.stop(remove=False)
            time.sleep(2)
            p.remote.start(keep_ports=True)
            lc = p.login("local")
            mail.append(lc, "INBOX", MessageGenerator(5).message())
            lc.logout()
            d = wait_for(lambda: count(p, "remote", "INBOX") == 3, bound=BOUND + 60)
        finally:
            code, log = w.stop()
        check(d is not None, "synchronized again after the restart (log: %s)" % log[-2000:])
        check_eq(code, 0, "clean exit (log: %s)" % log[-2000:])
        check("reconnect" in log, "the reconnection is logged: %s" % log[-2000:])
        p.assert_in_step()


if __name__ == "__main__":
    main(globals())
