#!/usr/bin/env python3
"""Self-test of tests/fixtures: the servers the other integration tests use
really start, accept the connections they claim to, and stop cleanly."""

import os
import shlex
import socket
import ssl
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "fixtures"))

from imapfixture import (Dovecot, FakeImapServer, Socks5Proxy, StartTLS, Send,  # noqa: E402
                         check, check_eq, command, greeting, mail, main, respond, skip, util)

if not os.path.exists("/usr/sbin/dovecot") and not os.environ.get("CI"):
    print("dovecot is not installed")
    print("0 passed, 0 failed, 1 skipped")
    sys.exit(77)


def _greeting(sock):
    sock.settimeout(10)
    data = sock.recv(4096)
    check(data.startswith(b"* OK"), "greeting %r" % data[:60])
    return data


def test_starttls_and_imaps_login():
    with Dovecot() as srv:
        c = srv.connect("plain")
        check("STARTTLS" in c.capabilities, "STARTTLS offered before TLS")
        c.logout()
        c = srv.login(mode="starttls")
        check(isinstance(c.sock, ssl.SSLSocket), "socket is TLS after STARTTLS")
        typ, caps = c.capability()
        check(b"COMPRESS=DEFLATE" in caps[0], "COMPRESS=DEFLATE advertised: %r" % caps)
        check(b"QRESYNC" in caps[0] and b"NOTIFY" in caps[0], "QRESYNC and NOTIFY advertised")
        c.logout()
        c = srv.login(mode="imaps")
        der = c.sock.getpeercert(binary_form=True)
        import hashlib
        check_eq(hashlib.sha256(der).hexdigest(), srv.cert_sha256, "certificate fingerprint")
        c.logout()
        # wrong password is refused
        c = srv.connect("starttls")
        try:
            c.login(srv.user, "wrong")
            check(False, "login with a wrong password succeeded")
        except c.error:
            pass
        c.logout()


def test_both_address_families():
    if not util.ipv6_available():
        skip("no IPv6 on this machine")
    with Dovecot() as srv:
        for host in ("127.0.0.1", "::1"):
            c = srv.login(mode="imaps", host=host)
            c.logout()


def test_spki_fingerprint_matches_openssl():
    with Dovecot() as srv:
        out = subprocess.run(
            "openssl x509 -in %s -pubkey -noout | openssl pkey -pubin -outform DER "
            "| openssl dgst -sha256 -r" % srv.cert_file,
            shell=True, capture_output=True, check=True, text=True).stdout
        check_eq(out.split()[0], srv.spki_sha256, "SPKI sha256")


def test_certificate_variants_are_rejected():
    for kind, want in (("self-signed", "self-signed"), ("wrong-name", "match")):
        with Dovecot(ssl=kind) as srv:
            ctx = ssl.create_default_context(cafile=srv.ca_file)
            try:
                srv.connect("imaps", ssl_context=ctx, host="127.0.0.1").logout()
                check(False, "%s certificate was accepted" % kind)
            except ssl.SSLCertVerificationError as e:
                check(want in str(e), "%s: unexpected error %s" % (kind, e))


def test_ssl_no_and_options():
    with Dovecot(ssl=None, separator=".", compress=False, capability="+XFIXTURE") as srv:
        c = srv.connect("plain")
        check("STARTTLS" not in c.capabilities, "no STARTTLS with ssl=no")
        c.login(srv.user, srv.password)
        caps = c.capability()[1][0]
        check(b"COMPRESS" not in caps, "COMPRESS disabled")
        check(b"XFIXTURE" in caps, "capability tweak applied: %r" % caps)
        mail.create(c, "a.b")
        typ, data = c.list('""', '"a*"')
        check(b'"." a.b' in b" ".join(data), "separator is '.': %r" % data)
        c.logout()
        check(srv.imaps_port is None, "no imaps port without ssl")


def test_tunnel_through_socketpair():
    with Dovecot() as srv:
        a, b = socket.socketpair()
        p = subprocess.Popen(srv.tunnel_command(), shell=True, stdin=b, stdout=b,
                             stderr=subprocess.PIPE)
        b.close()
        try:
            a.settimeout(10)
            data = a.recv(4096)
            check(data.startswith(b"* PREAUTH"), "tunnel greeting %r" % data[:80])
            a.sendall(b"t1 SELECT INBOX\r\nt2 LOGOUT\r\n")
            buf = b""
            while b"t2 OK" not in buf:
                chunk = a.recv(4096)
                if not chunk:
                    break
                buf += chunk
            check(b"t1 OK" in buf and b"t2 OK" in buf, "tunnel session: %r" % buf[-200:])
        finally:
            a.close()
        rc = p.wait(10)
        err = p.stderr.read().decode(errors="replace")
        p.stderr.close()
        check_eq(rc, 0, "tunnel exit code")
        check("Error" not in err, "tunnel stderr: %s" % err)


def test_through_microsocks():
    with Dovecot() as srv, Socks5Proxy() as open_px, Socks5Proxy("px", "secret") as auth_px:
        for px in (open_px, auth_px):
            s = px.connect("127.0.0.1", srv.imap_port)
            _greeting(s)
            s.close()
        s = auth_px.connect("localhost", srv.imaps_port)
        t = srv.client_context().wrap_socket(s, server_hostname="localhost")
        _greeting(t)
        t.close()
        from imapfixture import socks5_connect
        try:
            socks5_connect(auth_px.host, auth_px.port, "127.0.0.1", srv.imap_port, "px", "bad")
            check(False, "proxy accepted a wrong password")
        except PermissionError:
            pass
        pid = auth_px.pid
    check(not util.pid_alive(pid), "microsocks still running after stop")


def test_generator_is_deterministic():
    a = mail.MessageGenerator(42).mailbox(30)
    b = mail.MessageGenerator(42).mailbox(30)
    c = mail.MessageGenerator(43).mailbox(30)
    check(a == b, "same seed, same messages")
    check(a != c, "different seed, different messages")
    import email
    import email.policy
    multipart = nonascii = 0
    for data, _flags, _date in a:
        check(b"\n" not in data.replace(b"\r\n", b""), "CRLF line ends only")
        m = email.message_from_bytes(data, policy=email.policy.default)
        check(m["Message-ID"] and m["Date"] and m["From"], "headers present")
        multipart += m.is_multipart()
        nonascii += any(b > 127 for b in data) or b"=?UTF-8?" in data
    check(multipart > 0 and nonascii > 0, "multipart %d, non-ASCII %d" % (multipart, nonascii))
    for name in ("Projets/Été", "a&b", "日本語", "plain"):
        check_eq(mail.mutf7_decode(mail.mutf7_encode(name)), name, "mUTF-7 round trip")
    check_eq(mail.mutf7_encode("Été&"), "&AMk-t&AOk-&-", "mUTF-7 encoding")


def test_fill_and_inspect():
    gen = mail.MessageGenerator(5)
    boxes = {"INBOX": gen.mailbox(20), "Work/Done": gen.mailbox(7),
             "Réunions": gen.mailbox(3)}
    boxes["INBOX"][0] = (boxes["INBOX"][0][0], ("\\Seen", "\\Flagged", "todo"), 1700000000)
    with Dovecot() as srv:
        mail.fill(srv, boxes)
        snap = mail.snapshot(srv)
        check_eq(sorted(snap.mailboxes), ["INBOX", "Réunions", "Work", "Work/Done"]
                 if "Work" in snap.mailboxes else ["INBOX", "Réunions", "Work/Done"], "mailboxes")
        check_eq(snap.delimiter, "/", "delimiter")
        import hashlib
        for name, msgs in boxes.items():
            got = snap.mailboxes[name].messages
            check_eq(len(got), len(msgs), name + " count")
            for (data, flags, _d), m in zip(msgs, got):
                check_eq(m.sha256, hashlib.sha256(data).hexdigest(), name + " body hash")
                check_eq(m.flags, tuple(sorted(flags)), name + " flags")
        check_eq(snap.mailboxes["INBOX"].messages[0].internaldate[:11], "14-Nov-2023", "internaldate")
        check_eq(snap.duplicates(), {}, "no duplicates")
        # mutators
        c = srv.login()
        uid = mail.append(c, "INBOX", boxes["INBOX"][1][0], ("\\Seen",), 1690000000)
        check_eq(uid, 21, "APPENDUID")
        mail.set_flags(c, "INBOX", [2, 3], ["\\Answered"])
        mail.clear_flags(c, "INBOX", [1], ["todo"])
        mail.expunge(c, "INBOX", [4])
        mail.create(c, "New")
        mail.subscribe(c, "New")
        mail.rename(c, "Réunions", "Meetings")
        mail.delete(c, "Work/Done")
        c.logout()
        after = mail.snapshot(srv)
        check("Meetings" in after.mailboxes and "Réunions" not in after.mailboxes, "rename")
        check("Work/Done" not in after.mailboxes and "New" in after.mailboxes, "create/delete")
        check_eq(after.subscribed(), ["New"], "subscriptions")
        inbox = {m.uid: m for m in after.mailboxes["INBOX"].messages}
        check(4 not in inbox and len(inbox) == 20, "expunge")
        check("\\Answered" in inbox[2].flags and "todo" not in inbox[1].flags, "flags changed")
        check_eq(list(after.duplicates()), ["INBOX"], "duplicate detected after re-append")
        check(snap.diff(after) != "", "diff sees the changes")


def test_servers_cli_and_perl_interimap():
    d = tempfile.mkdtemp(prefix="fixture-cli-")
    cli = os.path.join(HERE, "..", "fixtures", "servers.py")
    try:
        r = subprocess.run([sys.executable, cli, "start", d, "--populate", "3"],
                           capture_output=True, text=True, timeout=120)
        check_eq(r.returncode, 0, "start: %s" % r.stderr[-2000:])
        sys.path.insert(0, os.path.dirname(cli))
        import servers
        env = servers.read_env(d)
        check_eq(shlex.split(env["LOCAL_TUNNEL"])[-1], "user", "tunnel command in env")
        pids = [int(env["LOCAL_PID"]), int(env["REMOTE_PID"])]
        check(all(util.pid_alive(p) for p in pids), "both servers running")
        if os.path.exists("/usr/bin/interimap"):
            r = subprocess.run(["/usr/bin/interimap", "--config", os.path.join(d, "config")],
                               capture_output=True, text=True, timeout=120)
            check_eq(r.returncode, 0, "interimap: %s" % r.stderr[-2000:])
            s = servers.load(d)
            a, b = mail.snapshot(s["local"]), mail.snapshot(s["remote"])
            check(a.total() > 100, "local populated")
            check_eq(a.diff(b), "", "servers hold the same after interimap")
            check_eq(b.delimiter, ".", "remote delimiter")
        r = subprocess.run([sys.executable, cli, "show", d, "--no-bodies"],
                           capture_output=True, text=True, timeout=120)
        check(r.returncode == 0 and "== local" in r.stdout, "show")
        kids = [k for p in pids for k in util.descendants(p)]
        r = subprocess.run([sys.executable, cli, "stop", d], capture_output=True, text=True)
        check_eq(r.returncode, 0, "stop")
        left = util.wait_pids_gone(pids + kids, timeout=5)
        check_eq(left, [], "processes left after stop")
    finally:
        subprocess.run([sys.executable, cli, "stop", d], capture_output=True)
        import shutil
        shutil.rmtree(d, ignore_errors=True)


def test_stop_leaves_no_process():
    srv = Dovecot().start()
    c = srv.login()  # so that an imap process exists too
    pid = srv.pid
    kids = srv.children()
    check(len(kids) >= 3, "master has children: %r" % kids)
    root = srv.root
    t0 = time.monotonic()
    srv.stop()
    check(time.monotonic() - t0 < 5, "stop is quick")
    check_eq(util.wait_pids_gone([pid] + kids, timeout=5), [], "processes left")
    check(not os.path.exists(root), "temp dir removed")
    try:
        c.logout()
    except Exception:
        c.sock.close()


def test_cyrus_starts_and_stops():
    from imapfixture import cyrus
    if not cyrus.available():
        if os.environ.get("CI"):
            raise AssertionError("Cyrus missing in CI: " + cyrus.missing())
        skip("Cyrus IMAP is not installed: missing " + cyrus.missing())
    for sep in (".", "/"):
        srv = cyrus.Cyrus(separator=sep).start()
        try:
            c = srv.login()
            caps = c.capability()[1][0].decode().split()
            check("QRESYNC" in caps and "LIST-STATUS" in caps, "after login: %r" % caps)
            mail.create(c, "Parent%sÉté" % sep)
            names = [n for _a, _d, n in mail._parse_list(c.list()[1])]
            check("Parent%s&AMk-t&AOk-" % sep in names, "nested non-ASCII name: %r" % names)
            c.logout()
            # idled's socket, without which IDLE falls back to polling
            check(os.path.exists(os.path.join(srv.conf_dir, "socket", "idle")),
                  "IDLE socket under configdirectory")
            pid, kids = srv.pid, util.descendants(srv.pid)
            check(len(kids) >= 1, "master has children: %r" % kids)
        finally:
            srv.stop()
        check_eq(util.wait_pids_gone([pid] + kids, timeout=5), [], "processes left")
        check(not os.path.exists(srv.root), "temp dir removed")


def test_fake_server_starttls_injection():
    script = [greeting(), *respond(rb"CAPABILITY", b"* CAPABILITY IMAP4rev1 STARTTLS\r\n"),
              command(rb"STARTTLS"),
              Send(b"{tag} OK begin TLS\r\n* OK [ALERT] injected\r\n"), StartTLS(),
              *respond(rb"NOOP")]
    with FakeImapServer(script, linger=0.5) as fake:
        s = socket.create_connection((fake.host, fake.port), timeout=10)
        s.recv(4096)
        s.sendall(b"a CAPABILITY\r\n")
        time.sleep(0.1)
        s.recv(4096)
        s.sendall(b"b STARTTLS\r\n")
        data = b""
        while b"injected" not in data:
            data += s.recv(4096)
        check(data.startswith(b"b OK") and data.endswith(b"* OK [ALERT] injected\r\n"),
              "OK and injection together: %r" % data)
        t = ssl.create_default_context(cafile=fake.ca_file).wrap_socket(s, server_hostname="localhost")
        t.sendall(b"c NOOP\r\n")
        check_eq(t.recv(4096), b"c OK done\r\n", "reply over TLS")
        t.close()
        check(fake.wait(), "fake server finished")
        check_eq(fake.errors, [], "fake server errors")
        sess = fake.sessions[0]
        check(sess.tls, "handshake done")
        check_eq(bytes(sess.received_tls), b"c NOOP\r\n", "decrypted bytes recorded")
        fake.assert_never(rb"LOGIN|AUTHENTICATE")
        try:
            fake.assert_never(rb"NOOP")
            check(False, "assert_never missed a NOOP")
        except AssertionError as e:
            check("NOOP" in str(e), "assert_never message")


def test_fake_server_reports_script_errors():
    with FakeImapServer([greeting(), command(rb"LOGIN")], step_timeout=0.5) as fake:
        s = socket.create_connection((fake.host, fake.port), timeout=10)
        s.recv(4096)
        s.sendall(b"a NOOP\r\n")
        check(fake.wait(5), "finished")
        check(len(fake.errors) == 1 and "timeout" in fake.errors[0], "errors: %r" % fake.errors)
        s.close()


if __name__ == "__main__":
    main(globals())
