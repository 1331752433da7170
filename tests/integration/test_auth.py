#!/usr/bin/env python3
"""Logins: what the client sends around AUTHENTICATE (scripted server, to
see the exact bytes and their timing); passwords from a command (real
Dovecot servers)."""

import base64
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pair import Pair  # noqa: E402
from imapfixture import (Close, Expect, FakeImapServer, Send, Silence, check,  # noqa: E402
                         check_eq, command, greeting, mail, main, reply)
from imapfixture.mail import MessageGenerator  # noqa: E402

CAPS = b"IMAP4rev1 LITERAL+ ENABLE UIDPLUS CONDSTORE QRESYNC LIST-EXTENDED LIST-STATUS"


def fake_pair(fake, p, section=""):
    """Point [local] at a fake server (plain IMAP, user 'user', password
    'secret')."""
    text = open(p.config_path).read()
    head, rest = text.split("[local]", 1)
    _, remote = rest.split("[remote]", 1)
    local = ("\ntype = imap\nhost = %s\nport = %d\nusername = user\npassword = secret\n"
             "STARTTLS = NO\n%s\n\n" % (fake.host, fake.port, section))
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
    """Adds line to [section] of p's configuration, without its password."""
    text = open(p.config_path).read()
    head, rest = text.split("[%s]" % section, 1)
    body, sep, tail = rest.partition("\n[")
    if drop_password:
        body = "\n".join(l for l in body.split("\n") if not l.startswith("password ="))
    with open(p.config_path, "w") as f:
        f.write(head + "[%s]" % section + body + "\n" + line + "\n" + sep + tail)


def error_lines(r):
    return [l for l in r.err.splitlines() if l.strip()]


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
        check_one_error(r, "remote: password-command exited with status 4")
        check_eq(r.code, 3, "the exit status of a failed login")
        set_option(p, "remote", "password-command = true")
        r = p.run(expect=None)
        check_one_error(r, "remote: password-command printed nothing")
        # the command's output is the password, right or wrong
        set_option(p, "remote", "password-command = echo wrong-%s" % SECRET)
        r = p.run(expect=None)
        check_one_error(r, "remote: authentication failed")
        check("wrong-" not in r.err, "wrong password not printed either")
        # with both options in one section the configuration is refused
        set_option(p, "remote", "password = %s" % SECRET, drop_password=False)
        r = p.run(expect=None)
        check_eq(error_lines(r), ["interimap: %s:%d: options 'password' and 'password-command' "
                                  "exclude each other (in [remote])"
                                  % (p.config_path, len(open(p.config_path).read().rstrip("\n")
                                                         .split("\n")))],
                 "configuration error")


if __name__ == "__main__":
    main(globals())
