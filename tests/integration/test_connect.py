#!/usr/bin/env python3
"""Connections over every transport against real Dovecot servers, and the
refusals: each bad case must end with one clear error line, a non-zero
exit, and no credential sent."""

import os
import sqlite3
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pair import Pair  # noqa: E402
from imapfixture import (FakeImapServer, Socks5Proxy, StartTLS, check, check_eq,  # noqa: E402
                         command, greeting, main, mail, reply, Send, Close)
from imapfixture.mail import MessageGenerator  # noqa: E402


def seed(p):
    mail.fill(p.local, {"INBOX": MessageGenerator(1).mailbox(3), "Sub/Box": MessageGenerator(2).mailbox(2)})


def sync_ok(p, *args):
    r = p.run("--debug", *args)
    p.assert_in_step()
    check("ENABLE QRESYNC" in r.err, "QRESYNC enabled")
    check("LIST" in r.err, "mailboxes listed")
    return r


def error_lines(r):
    """Lines of stderr but the traffic summary each connection ends with."""
    return [l for l in r.err.splitlines() if l.strip() and "IMAP traffic (bytes):" not in l]


SECRETS = ("pass", "secret", "proxypass", "wrong")


def check_refused(r, *needles):
    check(r.code != 0, "non-zero exit: %r" % r)
    lines = error_lines(r)
    check(len(lines) == 1, "exactly one error line: %r" % r.err)
    text = r.err.lower()
    for n in needles:
        check(n.lower() in text, "error mentions %r: %r" % (n, r.err))
    words = set(r.err.replace(":", " ").replace("'", " ").split())
    for secret in SECRETS:
        check(secret not in words, "no credential echoed (%s): %r" % (secret, r.err))


def test_imap_starttls_and_imaps():
    # [local] is imap+STARTTLS, [remote] is imaps
    with Pair() as p:
        seed(p)
        r = sync_ok(p)
        check("STARTTLS" in r.err, "STARTTLS used on local")
        check("[REDACTED]" in r.err, "credentials redacted in debug output")
        check(p.local.password not in r.err.replace("password =", ""), "password not logged")


def test_plain_imap_without_tls():
    with Pair(local_section="STARTTLS = NO") as p:
        seed(p)
        r = sync_ok(p)
        check("C: 2 STARTTLS" not in r.err and " STARTTLS\n" not in r.err.split("local: C:")[-1],
              "no STARTTLS when disabled")


def test_compress_on_and_off():
    with Pair(local_section="compress = YES", remote_section="compress = NO") as p:
        seed(p)
        r = sync_ok(p)
        local_lines = "\n".join(l for l in r.err.splitlines() if l.startswith("local"))
        remote_lines = "\n".join(l for l in r.err.splitlines() if l.startswith("remote"))
        check("COMPRESS DEFLATE" in local_lines, "local compresses")
        check("COMPRESS DEFLATE" not in remote_lines, "remote does not")


def test_tunnel():
    with Pair(remote_type="tunnel") as p:
        seed(p)
        sync_ok(p)


def test_socks5_without_and_with_auth():
    for user, pw in ((None, None), ("proxyuser", "proxypass")):
        proxy = Socks5Proxy(user, pw).start()
        try:
            for scheme in ("socks5", "socks5h"):
                with Pair(remote_section="proxy = %s" % proxy.url(scheme)) as p:
                    seed(p)
                    sync_ok(p)
        finally:
            proxy.stop()


def test_socks5_bad_password():
    proxy = Socks5Proxy("proxyuser", "proxypass").start()
    try:
        with Pair() as p:
            p.write_config(remote_section="proxy = socks5://proxyuser:wrong@%s:%d"
                           % (proxy.host, proxy.port))
            r = p.run(expect=None)
            check_refused(r, "socks")
    finally:
        proxy.stop()


def test_untrusted_certificate():
    with Pair(remote={"ssl": "self-signed"}) as p:
        r = p.run(expect=None)
        check_refused(r, "remote", "certificate")


def test_wrong_host_name():
    with Pair(remote={"ssl": "wrong-name"}) as p:
        r = p.run(expect=None)
        check_refused(r, "remote")
        check("host" in r.err.lower() or "name" in r.err.lower(), "names the mismatch: %r" % r.err)


def test_fingerprint_match_and_mismatch():
    with Pair(remote={"ssl": "self-signed"}) as p:
        seed(p)
        # pinning the key accepts a certificate whose chain is not trusted
        p.write_config(remote_section="SSL_fingerprint = sha256$%s\nSSL_verify = NO"
                       % p.remote.spki_sha256)
        p.run()
        p.write_config(remote_section="SSL_fingerprint = sha256$%s\nSSL_verify = NO" % ("00" * 32))
        r = p.run(expect=None)
        check_refused(r, "fingerprint")
        # with verification on, a pinned key does not excuse an untrusted chain
        p.write_config(remote_section="SSL_fingerprint = sha256$%s" % p.remote.spki_sha256)
        r = p.run(expect=None)
        check_refused(r, "certificate")


def test_server_without_starttls():
    with Pair(local={"ssl": None}) as p:
        r = p.run(expect=None)
        check_refused(r, "local", "STARTTLS")
        log = p.local.log()
        check("user=<user>" not in log or "Login" not in log, "no login reached the server")


def test_wrong_password():
    with Pair() as p:
        p.write_config(local_section="password = nope")
        # the section's later password line overrides the first
        text = open(p.config_path).read()
        check("password = nope" in text, "config written")
        r = p.run(expect=None)
        check_refused(r, "local", "authentication")
        check_eq(r.code, 3, "exit status for a refused login")


def test_unreachable_port():
    with Pair() as p:
        text = open(p.config_path).read()
        text = text.replace("port = %d" % p.remote.imaps_port, "port = 1")
        with open(p.config_path, "w") as f:
            f.write(text)
        r = p.run(expect=None)
        check_refused(r, "remote")
        check("refused" in r.err.lower() or "connect" in r.err.lower(), "says why: %r" % r.err)
        check_eq(r.code, 3, "exit status for an unreachable server")


def fake_pair(fake, p, starttls="YES", extra=""):
    """Point [local] at a fake server."""
    text = open(p.config_path).read()
    head, rest = text.split("[local]", 1)
    local, remote = rest.split("[remote]", 1)
    local = ("\ntype = imap\nhost = %s\nport = %d\nusername = user\npassword = secret\n"
             "SSL_CAfile = %s\nSTARTTLS = %s\n%s\n"
             % (fake.host, fake.port, fake.ca_file, starttls, extra))
    with open(p.config_path, "w") as f:
        f.write(head + "[local]" + local + "[remote]" + remote)


def test_preauth_on_plaintext_refused():
    script = [greeting(preauth=True), Close()]
    with FakeImapServer(script) as fake, Pair() as p:
        fake_pair(fake, p)
        r = p.run(expect=None)
        check_refused(r, "PREAUTH")
        fake.wait()
        fake.assert_never(rb"LOGIN|AUTHENTICATE|secret")


def test_starttls_response_injection():
    script = [
        greeting(),
        command(rb"STARTTLS"),
        Send(b"{tag} OK begin TLS now\r\n* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] injected\r\n"),
        StartTLS(),
        Close(),
    ]
    with FakeImapServer(script) as fake, Pair() as p:
        fake_pair(fake, p)
        r = p.run(expect=None)
        check_refused(r, "STARTTLS")
        fake.wait()
        fake.assert_never(rb"LOGIN|AUTHENTICATE|secret")


def test_bye_mid_command():
    script = [
        greeting(caps=b"IMAP4rev1 LITERAL+ SASL-IR ENABLE UIDPLUS CONDSTORE QRESYNC "
                 b"LIST-EXTENDED LIST-STATUS AUTH=PLAIN"),
        command(rb"AUTHENTICATE"),
        reply(text=b"logged in"),
        # ENABLE and the LISTs ride along with the login
        command(rb"ENABLE"),
        Send(b"* BYE server shutting down for maintenance\r\n"),
        Close(linger=5),
    ]
    with FakeImapServer(script) as fake, Pair() as p:
        fake_pair(fake, p, starttls="NO")
        r = p.run(expect=None)
        check_refused(r, "maintenance")



def test_list_asked_again_without_list_status():
    """The first LIST rides along with a LOGIN command, before the
    post-login capabilities are known, asking for LIST-STATUS because the
    greeting offered it; a server that no longer does once logged in gets
    the question again the way it can answer."""
    caps = b"IMAP4rev1 LITERAL+ SASL-IR ENABLE UIDPLUS CONDSTORE QRESYNC LIST-EXTENDED"
    script = [
        greeting(caps=caps + b" LIST-STATUS AUTH=PLAIN"),
        command(rb"LOGIN"),
        reply(text=b"[CAPABILITY " + caps + b"] logged in"),
        command(rb"ENABLE"),
        reply(untagged=b"* ENABLED QRESYNC\r\n"),
        command(rb'LIST "" ""'),
        reply(untagged=b'* LIST (\\Noselect) "/" ""\r\n'),
        command(rb'LIST "" "\*" RETURN \(SUBSCRIBED STATUS'),
        reply(status=b"BAD", text=b"unknown RETURN option"),
        command(rb'LIST "" ""'),
        reply(untagged=b'* LIST (\\Noselect) "/" ""\r\n'),
        command(rb'LIST "" "\*" RETURN \(SUBSCRIBED\)'),
        Send(b"* BYE that was the question\r\n"),
        Close(),
    ]
    with FakeImapServer(script) as fake, Pair() as p:
        fake_pair(fake, p, starttls="NO", extra="auth = LOGIN")
        r = p.run(expect=None)
        fake.wait()
        check_eq(fake.errors, [], "the fake server's script ran to its end")
        check_refused(r, "that was the question")


def side_lines(r, side):
    return [l[len(side) + 2:] for l in r.err.splitlines() if l.startswith(side + ": ")]


def first_index(lines, prefix):
    for i, l in enumerate(lines):
        if l.startswith(prefix):
            return i
    raise AssertionError("no line starting with %r in %r" % (prefix, lines))


def remembered_greeting(p, side):
    db = sqlite3.connect(p.db)
    try:
        row = db.execute("SELECT capabilities FROM capabilities WHERE side = ?",
                         (0 if side == "local" else 1,)).fetchone()
    finally:
        db.close()
    check(row is not None, "capabilities remembered for %s" % side)
    text = row[0]
    return text.split("\n", 1)[1] if "\n" in text else None


def test_login_ahead_of_the_greeting():
    """Once a run has seen the imaps server's greeting, the next sends its
    login right behind the TLS handshake, with the first commands behind
    it (Dovecot takes them behind AUTHENTICATE PLAIN), and reads the
    greeting after; the STARTTLS side still waits for its greeting."""
    with Pair() as p:
        seed(p)
        r = sync_ok(p)
        check("login sent ahead" not in r.err, "nothing remembered on the first run")
        greeting_text = remembered_greeting(p, "remote")
        check(greeting_text is not None and greeting_text.startswith("+ ") and
              "AUTH=PLAIN" in greeting_text, "the remote greeting remembered: %r" % greeting_text)
        with p.local.login() as conn:
            mail.append(conn, "INBOX", MessageGenerator(7).mailbox(1)[0][0])
        r = sync_ok(p)
        remote = side_lines(r, "remote")
        check(any(l.startswith("login sent ahead of the greeting") for l in remote),
              "remote login sent ahead: %r" % remote[:6])
        auth = first_index(remote, "C: 1 AUTHENTICATE PLAIN")
        greet = first_index(remote, "S: * OK [CAPABILITY")
        check(auth < greet, "AUTHENTICATE before the greeting was read")
        check(first_index(remote, "C: 2 ENABLE QRESYNC") < first_index(remote, "S: 1 OK"),
              "ENABLE behind AUTHENTICATE, before its reply")
        check(first_index(remote, 'C: 4 LIST "" "*" RETURN') < first_index(remote, "S: 1 OK"),
              "the listing behind AUTHENTICATE, before its reply")
        local = side_lines(r, "local")
        check(not any(l.startswith("login sent ahead") for l in local),
              "the STARTTLS side reads its greeting first")
        with p.remote.login() as conn:
            check_eq(len(mail.uids(conn, "INBOX")), 4, "the new message reached the remote INBOX")


def test_login_again_when_the_greeting_changed():
    """A remembered greeting that no longer holds (here: a mechanism the
    server stopped offering) makes the login sent ahead fail; the login is
    done again from the real greeting, the commands that rode behind the
    failed one are asked again, and the new greeting is remembered."""
    with Pair(remote_section="auth = SCRAM-SHA-256 PLAIN") as p:
        seed(p)
        sync_ok(p)
        real = remembered_greeting(p, "remote")
        check(real is not None and "AUTH=SCRAM-SHA-256" not in real,
              "the server offers no SCRAM: %r" % real)
        db = sqlite3.connect(p.db)
        with db:
            db.execute("UPDATE capabilities SET capabilities = "
                       "substr(capabilities, 1, instr(capabilities, char(10))) || ? "
                       "WHERE side = 1", ("+ IMAP4REV1 SASL-IR AUTH=SCRAM-SHA-256 AUTH=PLAIN",))
        db.close()
        with p.local.login() as conn:
            mail.append(conn, "INBOX", MessageGenerator(8).mailbox(1)[0][0])
        r = sync_ok(p)
        remote = side_lines(r, "remote")
        first = first_index(remote, "C: 1 AUTHENTICATE SCRAM-SHA-256")
        check(first < first_index(remote, "S: * OK [CAPABILITY"), "SCRAM sent ahead of the greeting")
        check(any(l.startswith("the greeting differs from the remembered one") for l in remote),
              "the change noticed: %r" % remote[:12])
        again = [l for l in remote if " AUTHENTICATE PLAIN" in l and l.startswith("C: ")]
        check(len(again) == 1 and first_index(remote, again[0]) > first,
              "then PLAIN, from the greeting: %r" % again)
        with p.remote.login() as conn:
            check_eq(len(mail.uids(conn, "INBOX")), 4, "the new message reached the remote INBOX")
        # (the capabilities: the mark before them follows the greeting's
        # text, which a Dovecot busy with its logins may word otherwise)
        check_eq(remembered_greeting(p, "remote")[2:], real[2:],
                 "the real greeting remembered again")
        r = sync_ok(p)
        check(not any(l.startswith("the greeting differs") for l in side_lines(r, "remote")),
              "the next run logs in ahead without a second try")


if __name__ == "__main__":
    main(globals())
