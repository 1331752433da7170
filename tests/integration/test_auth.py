#!/usr/bin/env python3
"""Logins: what the client sends around AUTHENTICATE (scripted server, to
see the exact bytes and their timing)."""

import base64
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pair import Pair  # noqa: E402
from imapfixture import (Close, Expect, FakeImapServer, Send, Silence, check,  # noqa: E402
                         check_eq, command, greeting, main, reply)

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


if __name__ == "__main__":
    main(globals())
