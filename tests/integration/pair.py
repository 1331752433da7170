"""A local/remote pair of real Dovecot servers plus an interimap
configuration, for the synchronization tests.

    with Pair() as p:
        p.run()                       # our binary, must exit 0
        p.assert_in_step()
"""

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "fixtures"))
sys.path.insert(0, os.path.join(HERE, "..", "..", "bench"))

from imapfixture import Dovecot, mail, util  # noqa: E402
from imapfixture.certs import TestCA  # noqa: E402
import latency_relay  # noqa: E402

PERL_INTERIMAP = "/usr/bin/interimap"


def binary():
    """Our interimap binary (see imapfixture.util.interimap_binary)."""
    return util.interimap_binary()


class Result:
    def __init__(self, proc):
        self.code = proc.returncode
        self.out = proc.stdout
        self.err = proc.stderr

    def __repr__(self):
        return "exit %d\n--- stdout\n%s--- stderr\n%s" % (self.code, self.out, self.err)


class Pair:
    def __init__(self, local_sep="/", remote_sep="/", local=None, remote=None, config="",
                 local_section="", remote_section="", remote_type="imaps", local_server=None,
                 remote_server=None):
        """local, remote: options of their Dovecot; or local_server,
        remote_server: a server object of another kind (a factory taking
        the directory to use), reached the way its `kind` says."""
        self.dir = tempfile.mkdtemp(prefix="interimap-test-")
        os.chmod(self.dir, 0o755)
        self.ca = TestCA(os.path.join(self.dir, "ca"))
        if local_server:
            self.local = local_server(os.path.join(self.dir, "local"))
        else:
            self.local = Dovecot(root=os.path.join(self.dir, "local"), separator=local_sep,
                                 ca=self.ca, name="local", **(local or {}))
        if remote_server:
            self.remote = remote_server(os.path.join(self.dir, "remote"))
        else:
            self.remote = Dovecot(root=os.path.join(self.dir, "remote"), separator=remote_sep,
                                  ca=self.ca, name="remote", **(remote or {}))
        self.db = os.path.join(self.dir, "state.db")
        self.config_path = os.path.join(self.dir, "config")
        self.extra = config
        self.local_section = local_section
        self.remote_section = remote_section
        self.remote_type = remote_type
        self.relays = {}

    def __enter__(self):
        self.local.start()
        self.remote.start()
        self.write_config()
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        for r in self.relays.values():
            r.stop()
        self.relays = {}
        for srv in (self.local, self.remote):
            try:
                srv.stop()
            except Exception:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def use_relays(self, sides=("local", "remote"), delay_ms=0):
        """Puts a relay (bench/latency_relay.py, counting commands) in front
        of each side's plain IMAP port and points the configuration at it,
        with neither STARTTLS nor COMPRESS so that the relay can read the
        commands. delay_ms delays each direction. Returns {side: relay};
        relay.ctl controls it."""
        for side in sides:
            srv = self.local if side == "local" else self.remote
            self.relays[side] = latency_relay.RelayProc(srv.imap_port, delay_ms,
                                                        count_commands=True,
                                                        target_host=srv.host)
        self.write_config()
        return self.relays

    def section(self, name, srv, kind, extra):
        if name in self.relays:
            lines = ["[%s]" % name, "type = imap", "host = 127.0.0.1",
                     "port = %d" % self.relays[name].port, "username = %s" % srv.user,
                     "password = %s" % srv.password, "STARTTLS = NO", "compress = NO"]
            if extra:
                lines.append(extra)
            return "\n".join(lines) + "\n"
        kind = getattr(srv, "kind", kind)
        lines = ["[%s]" % name, "type = %s" % kind]
        if kind == "tunnel":
            lines.append("command = %s" % srv.tunnel_command())
        else:
            lines += ["host = %s" % srv.host,
                      "port = %d" % (srv.imap_port if kind == "imap" else srv.imaps_port),
                      "username = %s" % srv.user, "password = %s" % srv.password,
                      "SSL_CAfile = %s" % srv.ca_file]
        if extra:
            lines.append(extra)
        return "\n".join(lines) + "\n"

    def write_config(self, extra=None, local_section=None, remote_section=None):
        if extra is not None:
            self.extra = extra
        if local_section is not None:
            self.local_section = local_section
        if remote_section is not None:
            self.remote_section = remote_section
        text = "database = %s\n%s\n" % (self.db, self.extra)
        text += self.section("local", self.local, "imap", self.local_section) + "\n"
        text += self.section("remote", self.remote, self.remote_type, self.remote_section)
        with open(self.config_path, "w") as f:
            f.write(text)

    def run(self, *args, expect=0, exe=None, timeout=300, env=None):
        cmd = [exe or binary(), "--config", self.config_path] + list(args)
        e = dict(os.environ)
        e.update(env or {})
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=e)
        r = Result(proc)
        if expect is not None and r.code != expect:
            raise AssertionError("%s: expected exit %d\n%r" % (" ".join(cmd), expect, r))
        return r

    def run_perl(self, *args, expect=0, timeout=300):
        return self.run(*args, expect=expect, exe=PERL_INTERIMAP, timeout=timeout)

    def login(self, side):
        return (self.local if side == "local" else self.remote).login()

    def snaps(self, bodies=True):
        return mail.snapshot(self.local, bodies=bodies), mail.snapshot(self.remote, bodies=bodies)

    def assert_in_step(self, bodies=True):
        a, b = self.snaps(bodies)
        diff = a.diff(b)
        if diff:
            raise AssertionError("servers differ:\n" + diff)
        for side, s in (("local", a), ("remote", b)):
            d = s.duplicates()
            if d:
                raise AssertionError("%s has duplicates: %r" % (side, d))
        self.assert_db_consistent(a, b)
        return a, b

    def assert_db_consistent(self, a, b):
        """Every mapping row names a message that exists on both sides."""
        con = sqlite3.connect(self.db)
        try:
            rows = con.execute(
                "SELECT m.mailbox, p.lUID, p.rUID FROM mapping p JOIN mailboxes m ON m.idx = p.idx"
            ).fetchall()
        finally:
            con.close()
        luids, ruids = {}, {}
        for name, mb in a.mailboxes.items():
            luids[a._tr(name, "\0")] = {m.uid for m in mb.messages}
        for name, mb in b.mailboxes.items():
            ruids[b._tr(name, "\0")] = {m.uid for m in mb.messages}
        count = 0
        for name, l, r in rows:
            n = name.decode() if isinstance(name, bytes) else name
            n = mail.mutf7_decode(n)
            if l not in luids.get(n, set()) or r not in ruids.get(n, set()):
                raise AssertionError("stale mapping %r (%d,%d)" % (n, l, r))
            count += 1
        total = sum(len(mb.messages) for mb in a.mailboxes.values())
        if count != total:
            raise AssertionError("database maps %d messages, local holds %d" % (count, total))

    def db_rows(self, query, *params):
        con = sqlite3.connect(self.db)
        try:
            return con.execute(query, params).fetchall()
        finally:
            con.close()
