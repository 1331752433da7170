#!/usr/bin/env python3
"""Logins: what the client sends around AUTHENTICATE (scripted server, to
see the exact bytes and their timing); passwords from a command, OAuth 2.0
tokens from a command (OAUTHBEARER, XOAUTH2) checked by Dovecot against an
introspection endpoint the test runs, SCRAM-SHA-256 (real Dovecot
servers)."""

import base64
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pair import Pair, binary  # noqa: E402
from imapfixture import (Close, Expect, FakeImapServer, Introspection, Send,  # noqa: E402
                         SendFn, Silence, check, check_eq, command, greeting, mail, main,
                         reply)
from imapfixture.mail import MessageGenerator  # noqa: E402

CAPS = b"IMAP4rev1 LITERAL+ ENABLE UIDPLUS CONDSTORE QRESYNC LIST-EXTENDED LIST-STATUS"


def fake_pair(fake, p, section="", kind="imap"):
    """Point [local] at a fake server (plain IMAP, or imaps with kind,
    user 'user', password 'secret')."""
    text = open(p.config_path).read()
    head, rest = text.split("[local]", 1)
    _, remote = rest.split("[remote]", 1)
    local = ("\ntype = %s\nhost = %s\nport = %d\nusername = user\npassword = secret\n"
             "%s%s\n\n" % (kind, fake.host, fake.port,
                           "STARTTLS = NO\n" if kind == "imap" else "", section))
    with open(p.config_path, "w") as f:
        f.write(head + "[local]" + local + "[remote]" + remote)


def run_against(script, section=""):
    """Runs a sync with [local] on a fake server following script; returns
    the fake server (finished) and the result."""
    with FakeImapServer(script) as fake, Pair() as p:
        fake_pair(fake, p, section)
        r = p.run(expect=None)
        check(fake.wait(), "the fake server's session ended")
        return fake, r


def check_plain_ir(ir):
    check_eq(base64.b64decode(ir), b"\0user\0secret", "PLAIN credentials")


def test_nothing_behind_authenticate_with_initial_response():
    """With SASL-IR the credentials ride on the AUTHENTICATE line; ENABLE,
    the LISTs and COMPRESS wait for its tagged OK."""
    script = [
        greeting(caps=CAPS + b" SASL-IR AUTH=PLAIN"),
        Expect(rb"(?P<tag>\S+) AUTHENTICATE PLAIN (?P<ir>[A-Za-z0-9+/=]+)\r\n"),
        Silence(0.6),
        reply(text=b"[CAPABILITY " + CAPS + b" COMPRESS=DEFLATE] logged in"),
        command(rb"ENABLE QRESYNC"),
        Send(b"* BYE that is all for this test\r\n"),
        Close(),
    ]
    fake, r = run_against(script)
    check_eq(fake.errors, [], "script ran to its end")
    check_plain_ir(fake.sessions[0].captures["ir"])
    check(r.code != 0 and "that is all" in r.err, "the client read the BYE: %r" % r)


def test_nothing_behind_authenticate_without_initial_response():
    """Without SASL-IR: the command, the server's '+', the credentials on
    their own line, and nothing more until the tagged OK."""
    script = [
        greeting(caps=CAPS + b" AUTH=PLAIN"),
        Expect(rb"(?P<tag>\S+) AUTHENTICATE PLAIN\r\n"),
        Silence(0.4),
        Send(b"+ \r\n"),
        Expect(rb"(?P<ir>[A-Za-z0-9+/=]+)\r\n"),
        Silence(0.6),
        reply(text=b"logged in"),
        command(rb"ENABLE QRESYNC"),
        Send(b"* BYE that is all for this test\r\n"),
        Close(),
    ]
    fake, r = run_against(script)
    check_eq(fake.errors, [], "script ran to its end")
    check_plain_ir(fake.sessions[0].captures["ir"])
    check(r.code != 0 and "that is all" in r.err, "the client read the BYE: %r" % r)


def test_commands_still_ride_along_with_login():
    """Behind LOGIN, ENABLE and the LISTs still go out before its reply:
    the round trip saved there stays saved."""
    script = [
        greeting(caps=CAPS + b" AUTH=PLAIN"),
        Expect(rb"(?P<login>\S+) LOGIN user secret\r\n"),
        Expect(rb"(?P<tag>\S+) ENABLE QRESYNC\r\n"),
        Expect(rb'\S+ LIST "" ""\r\n'),
        Send(b"{login} OK logged in\r\n* BYE that is all for this test\r\n"),
        Close(),
    ]
    fake, r = run_against(script, section="auth = LOGIN")
    check_eq(fake.errors, [], "script ran to its end")
    check(r.code != 0 and "that is all" in r.err, "the client read the BYE: %r" % r)


SECRET = "Xq7-s3cret-Zw"


def secret_pair(**kw):
    return Pair(local={"users": {"user": SECRET}}, remote={"users": {"user": SECRET}}, **kw)


def set_option(p, section, line, drop_password=True):
    """Sets the options of line (one or more 'key = value' lines) in
    [section] of p's configuration, replacing earlier values; also drops
    the section's password unless told not to."""
    text = open(p.config_path).read()
    head, rest = text.split("[%s]" % section, 1)
    body, sep, tail = rest.partition("\n[")
    drop = {l.split("=", 1)[0].strip() for l in line.split("\n")}
    if drop_password:
        drop.add("password")
    body = "\n".join(l for l in body.split("\n") if l.split("=", 1)[0].strip() not in drop)
    with open(p.config_path, "w") as f:
        f.write(head + "[%s]" % section + body + "\n" + line + "\n" + sep + tail)


def error_lines(r):
    """Lines of stderr but the traffic summary each connection ends with."""
    return [l for l in r.err.splitlines() if l.strip() and "IMAP traffic (bytes):" not in l]


def check_one_error(r, *needles):
    check(r.code != 0, "non-zero exit: %r" % r)
    lines = error_lines(r)
    check_eq(len(lines), 1, "error lines: %r" % r.err)
    for n in needles:
        check(n in lines[0], "error mentions %r: %r" % (n, lines[0]))
    check(SECRET not in r.err and SECRET not in r.out, "secret never printed: %r" % r)


def test_password_command():
    """The first line the command prints is the password, on every side;
    nothing of it reaches the log, even with --debug."""
    with secret_pair() as p:
        mail.fill(p.local, {"INBOX": MessageGenerator(1).mailbox(2)})
        pwfile = os.path.join(p.dir, "pw")
        with open(pwfile, "w") as f:
            f.write(SECRET + "\nsecond line\n")
        set_option(p, "local", "password-command = printf '%%s\\r\\nnot this\\n' %s"
                   % shlex.quote(SECRET))
        set_option(p, "remote", "password-command = head -n 2 %s" % shlex.quote(pwfile))
        check("password =" not in open(p.config_path).read(), "no password in the file")
        r = p.run("--debug")
        check("AUTHENTICATE PLAIN [REDACTED]" in r.err, "logged in with PLAIN: %r" % r.err[:3000])
        check(SECRET not in r.err and SECRET not in r.out, "password never logged")
        a, b = p.assert_in_step()
        check_eq(b.total(), 2, "messages copied")


def test_password_command_failing():
    with secret_pair() as p:
        set_option(p, "remote", "password-command = echo %s; exit 4" % SECRET[::-1])
        r = p.run(expect=None)
        check_one_error(r, "remote: ERROR: password-command exited with status 4")
        check_eq(r.code, 3, "the exit status of a failed login")
        set_option(p, "remote", "password-command = true")
        r = p.run(expect=None)
        check_one_error(r, "remote: ERROR: password-command printed nothing")
        # the command's output is the password, right or wrong
        set_option(p, "remote", "password-command = echo wrong-%s" % SECRET)
        r = p.run(expect=None)
        check_one_error(r, "remote: ERROR: authentication failed")
        check("wrong-" not in r.err, "wrong password not printed either")
        # with both options in one section the configuration is refused
        set_option(p, "remote", "password = %s" % SECRET, drop_password=False)
        r = p.run(expect=None)
        check_eq(error_lines(r), ["interimap: %s:%d: options 'password' and 'password-command' "
                                  "exclude each other (in [remote])"
                                  % (p.config_path, len(open(p.config_path).read().rstrip("\n")
                                                         .split("\n")))],
                 "configuration error")


def oauth_pair(idp):
    """A pair whose remote Dovecot takes OAuth 2.0 tokens checked by idp."""
    return Pair(remote={"oauth2_url": idp.url})


def use_token(p, mech, token):
    """[remote] logs in with mech and the token that a file holds."""
    path = os.path.join(p.dir, "token")
    with open(path, "w") as f:
        f.write(token + "\n")
    set_option(p, "remote", "auth = %s\noauth-token-command = cat %s" % (mech, shlex.quote(path)))
    return path


TOKEN = "ya29.a0-good-%s" % os.urandom(6).hex()


def test_oauth_good_token():
    """Both mechanisms log in with the token the command prints and sync;
    the token never reaches the log."""
    with Introspection({TOKEN: "user"}) as idp, oauth_pair(idp) as p:
        mail.fill(p.local, {"INBOX": MessageGenerator(3).mailbox(3)})
        for mech in ("OAUTHBEARER", "XOAUTH2"):
            use_token(p, mech, TOKEN)
            asked = len(idp.requests)
            r = p.run("--debug")
            check("AUTHENTICATE %s [REDACTED]" % mech in r.err,
                  "logged in with %s: %r" % (mech, r.err[:3000]))
            check_eq(idp.requests[asked:], [TOKEN], "the server checked our token")
            check(TOKEN not in r.err and TOKEN not in r.out, "token never logged")
            a, b = p.assert_in_step()
            check_eq(b.total(), 3, "messages copied")
            log = p.remote.log()
            check("method=%s" % mech in log, "Dovecot logged the %s login" % mech)


def test_oauth_wrong_token():
    """A refused token: the server's reason in one line, a failed login."""
    with Introspection({TOKEN: "user"}) as idp, oauth_pair(idp) as p:
        for mech in ("OAUTHBEARER", "XOAUTH2"):
            use_token(p, mech, "expired-" + TOKEN)
            asked = len(idp.requests)
            r = p.run(expect=None)
            check_eq(idp.requests[asked:], ["expired-" + TOKEN], "the server checked it")
            check_one_error(r, "remote: ERROR: authentication failed (%s)" % mech,
                            "the server refused the token")
            check("expired-" not in r.err, "token not printed")
            check_eq(r.code, 3, "exit status of a refused login")


def test_oauth_token_command_failing():
    with Introspection({TOKEN: "user"}) as idp, oauth_pair(idp) as p:
        set_option(p, "remote", "auth = OAUTHBEARER\noauth-token-command = echo x >&2; exit 7")
        r = p.run(expect=None)
        lines = error_lines(r)
        check_eq(lines[-1:], [l for l in lines if "oauth-token-command" in l], "last line: %r" % r.err)
        check("remote: ERROR: oauth-token-command exited with status 7" in lines[-1], r.err)
        check(r.code != 0, "failed")
        set_option(p, "remote", "auth = XOAUTH2\noauth-token-command = printf '\\n'")
        r = p.run(expect=None)
        check_one_error(r, "remote: ERROR: oauth-token-command printed nothing")
        check_eq(idp.requests, [], "no token reached the server")
        # a token command with no OAuth mechanism to use it, and the reverse
        set_option(p, "remote", "auth = PLAIN LOGIN\noauth-token-command = true")
        r = p.run(expect=None)
        check_one_error(r, "option 'oauth-token-command' is set but option 'auth' of [remote] "
                        "names neither OAUTHBEARER nor XOAUTH2")
        set_option(p, "remote", "auth = XOAUTH2 PLAIN\npassword = x")
        text = open(p.config_path).read()
        text = "\n".join(l for l in text.split("\n") if not l.startswith("oauth-token-command"))
        with open(p.config_path, "w") as f:
            f.write(text)
        r = p.run(expect=None)
        check_one_error(r, "option 'auth' names an OAuth 2.0 mechanism but [remote] has no "
                        "'oauth-token-command'")


def wait_for(pred, bound=40.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < bound:
        if pred():
            return True
        time.sleep(0.1)
    return False


def count(srv, mailbox="INBOX"):
    conn = srv.login()
    try:
        return len(mail.uids(conn, mailbox))
    finally:
        conn.logout()


def test_oauth_token_refreshed_on_reconnection():
    """--watch: after the connection is lost, the command runs again and
    the new token logs in (the old one has been revoked meanwhile)."""
    new = TOKEN + "-refreshed"
    with Introspection({TOKEN: "user"}) as idp, oauth_pair(idp) as p:
        mail.fill(p.local, {"INBOX": MessageGenerator(1).mailbox(2)})
        path = use_token(p, "OAUTHBEARER", TOKEN)
        log = open(os.path.join(p.dir, "watch.log"), "w+")
        proc = subprocess.Popen([binary(), "--config", p.config_path, "--watch=1"],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            check(wait_for(lambda: count(p.remote) == 2), "initial sync")
            p.remote.stop(remove=False)
            with open(path, "w") as f:
                f.write(new + "\n")
            idp.tokens = {new: "user"}  # the old token is revoked
            p.remote.start(keep_ports=True)
            lc = p.login("local")
            mail.append(lc, "INBOX", MessageGenerator(5).message())
            lc.logout()
            synced = wait_for(lambda: count(p.remote) == 3, bound=90)
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=30)
            log.seek(0)
            text = log.read()
        check(synced, "synchronized again after the reconnection: %s" % text[-2000:])
        check_eq(code, 0, "clean exit: %s" % text[-2000:])
        check("reconnect" in text, "a reconnection happened: %s" % text[-2000:])
        check(new in idp.requests and idp.requests[-1] == new, "the new token was used")
        check(TOKEN not in text, "token never logged")


SCRAM = "plain login scram-sha-256"


def test_scram_sha_256():
    """SCRAM-SHA-256 where the server offers it (the local side with its
    password from a command), PLAIN where it does not."""
    with Pair(local={"users": {"user": SECRET}, "mechanisms": SCRAM},
              remote={"users": {"user": SECRET}}) as p:
        mail.fill(p.local, {"INBOX": MessageGenerator(4).mailbox(2)})
        set_option(p, "local", "auth = SCRAM-SHA-256 PLAIN\npassword-command = echo %s" % SECRET)
        set_option(p, "remote", "auth = SCRAM-SHA-256 PLAIN\npassword = %s" % SECRET)
        r = p.run("--debug")
        check(re.search(r"local: C: \d+ AUTHENTICATE SCRAM-SHA-256 \[REDACTED\]", r.err),
              "SCRAM on local: %r" % r.err[:3000])
        check(re.search(r"remote: C: \d+ AUTHENTICATE PLAIN \[REDACTED\]", r.err),
              "PLAIN on remote, which lacks SCRAM: %r" % r.err[:3000])
        check(SECRET not in r.err and SECRET not in r.out, "password never logged")
        check("method=SCRAM-SHA-256" in p.local.log(), "Dovecot saw a SCRAM login")
        a, b = p.assert_in_step()
        check_eq(b.total(), 2, "messages copied")
        set_option(p, "local", "password-command = echo wrong-%s" % SECRET)
        r = p.run(expect=None)
        check_one_error(r, "local: ERROR: authentication failed")
        check_eq(r.code, 3, "exit status of a refused login")


def scram_script(final):
    """A server that answers SCRAM with a salt and a nonce built on the
    client's, then says final (a list of steps)."""
    b64 = lambda b: base64.b64encode(b)  # noqa: E731

    def first(caps):
        client_first = base64.b64decode(caps["ir"])
        check(client_first.startswith(b"n,,n=user,r="), "client-first %r" % client_first)
        nonce = client_first.split(b",r=", 1)[1]
        return b"+ " + b64(b"r=" + nonce + b"srv,s=" + b64(b"salty") + b",i=4096") + b"\r\n"

    caps = CAPS + b" SASL-IR AUTH=SCRAM-SHA-256"
    return [
        greeting(caps=caps),
        Expect(rb"(?P<tag>\S+) AUTHENTICATE SCRAM-SHA-256 (?P<ir>[A-Za-z0-9+/=]+)\r\n"),
        SendFn(first),
        Expect(rb"(?P<final>[A-Za-z0-9+/=]+)\r\n"),
    ] + final


def test_scram_server_that_does_not_know_the_password():
    """The server's signature is wrong: the client cancels the exchange
    and reports it; a server that says OK without proving itself is not
    trusted either, and gets no command after the login."""
    wrong = base64.b64encode(b"v=" + base64.b64encode(b"\0" * 32))
    fake, r = run_against(scram_script([
        Send(b"+ " + wrong + b"\r\n"),
        Expect(rb"\*\r\n"),
        reply(status=b"BAD", text=b"Authentication aborted by client"),
    ]), section="auth = SCRAM-SHA-256")
    check_eq(fake.errors, [], "script ran to its end")
    check_one_error(r, "local: ERROR: authentication failed (SCRAM-SHA-256)", "signature is wrong")
    fake, r = run_against(scram_script([reply(text=b"logged in")]),
                          section="auth = SCRAM-SHA-256")
    check_eq(fake.errors, [], "script ran to its end")
    check_one_error(r, "local: ERROR: authentication failed (SCRAM-SHA-256)",
                    "without proving that it knows the password")
    fake.assert_never(rb"ENABLE|LIST|SELECT")


def settings_digest(*parts):
    """The database's key of a server's remembered capabilities (FNV-1a
    over the connection settings, see caps_key in src/sync/tiers.c)."""
    h = 0xcbf29ce484222325
    for part in parts:
        for b in part.encode() + b"\xff":
            h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


def test_login_ahead_without_commands_behind_it():
    """Over imaps, with a greeting remembered from an earlier run, the
    AUTHENTICATE goes out before the greeting arrives; the remembered
    greeting did not name Dovecot ('-'), so nothing follows the
    AUTHENTICATE before its reply."""
    caps = CAPS + b" SASL-IR AUTH=PLAIN"
    ahead = [
        Expect(rb"(?P<tag>\S+) AUTHENTICATE PLAIN (?P<ir>[A-Za-z0-9+/=]+)\r\n"),
        Silence(0.6),
        greeting(caps=caps),
        reply(text=b"[CAPABILITY " + CAPS + b"] logged in"),
        command(rb"ENABLE QRESYNC"),
        Send(b"* BYE that is all for this test\r\n"),
        Close(),
    ]
    with FakeImapServer(ahead, implicit_tls=True) as fake, Pair() as p:
        p.run()  # the database and its tables, from the real servers
        fake_pair(fake, p, "SSL_CAfile = %s" % fake.ca_file, kind="imaps")
        plant_greeting(p, fake, "- " + caps.decode().upper())
        r = p.run("--debug", expect=None)
        check(fake.wait(), "the session ended")
        check_eq(fake.errors, [], "script ran to its end")
        check_plain_ir(fake.sessions[0].captures["ir"])
        check(r.code != 0 and "that is all" in r.err, "the client read the BYE: %r" % r)
        check("local: login sent ahead of the greeting" in r.err, "login sent ahead: %r" % r.err)


def plant_greeting(p, fake, greeting_line):
    """Remembers greeting_line as the greeting of the fake server in [local]
    (with CAPS as its capabilities after login)."""
    key = settings_digest("imaps", fake.host, str(fake.port), "user", "", "")
    db = sqlite3.connect(p.db)
    with db:
        db.execute("INSERT OR REPLACE INTO capabilities (side, server, capabilities) "
                   "VALUES (0, ?, ?)", (key, CAPS.decode().upper() + "\n" + greeting_line))
    db.close()


def remembered_local_greeting(p):
    db = sqlite3.connect(p.db)
    row = db.execute("SELECT capabilities FROM capabilities WHERE side = 0").fetchone()
    db.close()
    check(row is not None and "\n" in row[0], "a greeting remembered: %r" % (row,))
    return row[0].split("\n", 1)[1]


def test_changed_server_forgotten_after_a_failed_login():
    """The remembered greeting named Dovecot, but another server answers
    now: it takes the commands behind the AUTHENTICATE sent ahead for part
    of the exchange and refuses, and the second login on that connection
    fails too. The run fails, but the new greeting replaces the remembered
    one at once: the next run sends its login ahead without commands
    behind it."""
    caps = CAPS + b" SASL-IR AUTH=PLAIN"
    now = CAPS + b" ID SASL-IR AUTH=PLAIN"
    confused = [
        Expect(rb"(?P<auth>\S+) AUTHENTICATE PLAIN (?P<ir>[A-Za-z0-9+/=]+)\r\n"),
        command(rb"ENABLE QRESYNC"),
        greeting(caps=now),
        Send(b"{auth} NO confused by what followed\r\n"),
        Expect(rb"\S+ AUTHENTICATE PLAIN [A-Za-z0-9+/=]+\r\n"),
        Send(b"* BYE still confused\r\n"),
        Close(),
    ]
    ahead = [
        Expect(rb"(?P<tag>\S+) AUTHENTICATE PLAIN (?P<ir>[A-Za-z0-9+/=]+)\r\n"),
        Silence(0.6),
        greeting(caps=now),
        reply(text=b"[CAPABILITY " + CAPS + b"] logged in"),
        command(rb"ENABLE QRESYNC"),
        Send(b"* BYE that is all for this test\r\n"),
        Close(),
    ]
    with Pair() as p:
        p.run()  # the database and its tables, from the real servers
        with FakeImapServer(confused, implicit_tls=True, ca=p.ca) as fake:
            fake_pair(fake, p, "SSL_CAfile = %s" % fake.ca_file, kind="imaps")
            plant_greeting(p, fake, "+ " + caps.decode().upper())
            r = p.run("--debug", expect=None)
            check(fake.wait(), "the first session ended")
            check_eq(fake.errors, [], "first script ran to its end")
            port = fake.port
        check(r.code != 0 and "still confused" in r.err, "the run failed on the BYE: %r" % r.err)
        check("local: the greeting differs from the remembered one" in r.err,
              "the change noticed: %r" % r.err)
        check_eq(remembered_local_greeting(p), "- " + now.decode().upper(),
                 "the new greeting remembered, without commands behind AUTHENTICATE")
        with FakeImapServer(ahead, implicit_tls=True, port=port, ca=p.ca) as fake:
            check_eq(fake.port, port, "the same port again")
            r = p.run("--debug", expect=None)
            check(fake.wait(), "the second session ended")
            check_eq(fake.errors, [], "second script ran to its end")
        check(r.code != 0 and "that is all" in r.err, "the client read the BYE: %r" % r)
        check("local: login sent ahead of the greeting" in r.err, "login sent ahead: %r" % r.err)


if __name__ == "__main__":
    main(globals())
