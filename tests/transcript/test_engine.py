#!/usr/bin/env python3
"""The synchronization engine against two scripted servers, without Dovecot.

Each run of our binary talks to a fresh pair of fake servers (local and
remote) that play a small QRESYNC conversation; the state database carries
over from run to run, as it does between real runs. Every command the engine
sends is checked byte for byte (tags aside) and in order, and nothing else
may be sent: a change in what the engine decides to do shows up here as a
different transcript. The three runs:

  1. initial sync: two messages in the local INBOX, none in the remote one;
  2. a flag change on the remote side, stored locally with UNCHANGEDSINCE;
  3. an expunge on the local side, expunged remotely.

The two servers deliberately differ in UIDVALIDITY and mod-sequences, so a
value taken from the wrong side shows in the commands. Neither advertises
COMPRESS: the remote side, where compress = YES by default, never sends it.
"""

import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "fixtures"))

from imapfixture import Close, Expect, FakeImapServer, Send, check, check_eq, util  # noqa: E402
from imapfixture.certs import TestCA  # noqa: E402
from imapfixture.runner import main  # noqa: E402

USER, PASSWORD = "user", "secret"
# base64 of "\0user\0secret", what AUTHENTICATE PLAIN sends
AUTH_PLAIN = b"AHVzZXIAc2VjcmV0"

GREETING_CAPS = b"IMAP4rev1 SASL-IR LITERAL+ ENABLE IDLE AUTH=PLAIN"
LOGIN_CAPS = (b"IMAP4rev1 SASL-IR ENABLE IDLE MULTIAPPEND UNSELECT UIDPLUS LIST-EXTENDED "
              b"CONDSTORE QRESYNC ESEARCH LIST-STATUS LITERAL+")
SELECT_FLAGS = (b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n"
                b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] "
                b"Flags permitted.\r\n")
LIST_ALL = b'LIST "" "*" RETURN (SUBSCRIBED STATUS (UIDVALIDITY UIDNEXT HIGHESTMODSEQ))'

LOCAL_UIDVALIDITY, REMOTE_UIDVALIDITY = 1111, 2222

MSG1 = b"From: a@example.org\r\nSubject: one\r\n\r\nfirst\r\n"
MSG2 = b"From: b@example.org\r\nSubject: two\r\n\r\nsecond body\r\n"
DATE1 = b'"13-Sep-2020 12:26:40 +0000"'
DATE2 = b'"13-Sep-2020 12:28:20 +0000"'

TAG = rb"[A-Za-z0-9.]+"


class Conversation:
    """One server's side of a run: the commands expected from the client, in
    order and exactly (tags aside), each answered as soon as it arrives."""

    def __init__(self, name):
        self.name = name
        self.commands = []
        self.steps = [Send(b"* OK [CAPABILITY " + GREETING_CAPS + b"] fake " +
                           name.encode() + b" ready\r\n")]

    def expect(self, command, untagged=b"", status=b"OK", text=b"done"):
        n = len(self.commands)
        self.commands.append(command)
        self.steps.append(Expect(b"(?P<t%d>" % n + TAG + b") " + re.escape(command) + b"\r\n"))
        self.steps.append(Send(untagged + b"{t%d} " % n + status + b" " + text + b"\r\n"))

    def login(self, mailbox_status):
        """Authentication and the listing every run starts with, pipelined
        behind the credentials; mailbox_status: (UIDNEXT, UIDVALIDITY,
        HIGHESTMODSEQ) of INBOX."""
        self.expect(b"AUTHENTICATE PLAIN " + AUTH_PLAIN,
                    text=b"[CAPABILITY " + LOGIN_CAPS + b"] Logged in")
        self.expect(b"ENABLE QRESYNC", b"* ENABLED QRESYNC\r\n")
        self.expect(b'LIST "" ""', b'* LIST (\\Noselect) "/" ""\r\n')
        self.expect(LIST_ALL, b'* LIST () "/" INBOX\r\n'
                    b"* STATUS INBOX (UIDNEXT %d UIDVALIDITY %d HIGHESTMODSEQ %d)\r\n"
                    % mailbox_status)

    def logout(self):
        self.expect(b"LOGOUT", b"* BYE logging out\r\n")
        self.steps.append(Close())

    def check(self, fake):
        """The client sent exactly the expected commands, and the script
        ran to its end."""
        check(fake.wait(timeout=10), "%s: the conversation did not finish" % self.name)
        check_eq(fake.errors, [], "%s: script errors" % self.name)
        check_eq(len(fake.sessions), 1, "%s: connections" % self.name)
        got = bytes(fake.sessions[0].received)
        want = b"".join(TAG + b" " + re.escape(c) + b"\r\n" for c in self.commands)
        if not re.fullmatch(want, got, re.S):
            expected = b"\n".join(self.commands).decode(errors="replace")
            sent = got.decode(errors="replace")
            raise AssertionError("%s: commands differ\n--- expected (tags aside):\n%s\n"
                                 "--- sent:\n%s" % (self.name, expected, sent))


class Run:
    """A temporary directory with the state database and the CA the fake
    servers use; run() starts both servers and our binary once."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="interimap-transcript-")
        self.ca = TestCA(os.path.join(self.dir, "ca"))
        self.db = os.path.join(self.dir, "state.db")

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def run(self, local, remote):
        with FakeImapServer(local.steps, ca=self.ca, step_timeout=5, linger=0) as lf, \
                FakeImapServer(remote.steps, ca=self.ca, step_timeout=5, linger=0) as rf:
            config = os.path.join(self.dir, "config")
            with open(config, "w") as f:
                f.write("database = %s\n" % self.db)
                for name, fake in (("local", lf), ("remote", rf)):
                    f.write("[%s]\ntype = imap\nSTARTTLS = NO\nhost = %s\nport = %d\n"
                            "username = %s\npassword = %s\n" % (name, fake.host, fake.port,
                                                                 USER, PASSWORD))
            # TEST_VERBOSE=1: the whole conversation in the stderr shown on failure
            debug = ["--debug"] if os.environ.get("TEST_VERBOSE") else []
            proc = subprocess.run([util.interimap_binary(), "--config", config] + debug,
                                  capture_output=True, text=True, timeout=60)
            problems = []
            for conv, fake in ((local, lf), (remote, rf)):
                try:
                    conv.check(fake)
                except AssertionError as e:
                    problems.append(str(e))
            if proc.returncode != 0:
                problems.append("exit status %d" % proc.returncode)
            if problems:
                raise AssertionError("\n".join(problems) + "\n--- stderr:\n" + proc.stderr)
            return proc.stderr

    def rows(self, query):
        con = sqlite3.connect(self.db)
        try:
            return con.execute(query).fetchall()
        finally:
            con.close()

    def state(self):
        """(mapping pairs, {side: (UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ)}) of INBOX."""
        inbox = "JOIN mailboxes USING (idx) WHERE mailbox = CAST('INBOX' AS BLOB)"
        check_eq(self.rows("SELECT count(*) FROM mailboxes"), [(1,)], "mailboxes in the database")
        pairs = self.rows("SELECT lUID, rUID FROM mapping %s ORDER BY lUID" % inbox)
        sides = {}
        for side in ("local", "remote"):
            sides[side] = self.rows("SELECT UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ FROM %s %s"
                                    % (side, inbox))
        return pairs, sides


def select_reply(exists, uidvalidity, uidnext, modseq, extra=b""):
    return (SELECT_FLAGS + b"* %d EXISTS\r\n* 0 RECENT\r\n" % exists +
            b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % uidvalidity +
            b"* OK [UIDNEXT %d] Predicted next UID\r\n" % uidnext +
            b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % modseq + extra)


def initial_sync(run):
    """Run 1: the local INBOX holds two messages (mod-sequences 6 and 7),
    the remote one none; both are copied in one MULTIAPPEND."""
    local = Conversation("local")
    local.login((3, LOCAL_UIDVALIDITY, 7))
    local.expect(b"SELECT INBOX (CONDSTORE)", select_reply(2, LOCAL_UIDVALIDITY, 3, 7),
                 text=b"[READ-WRITE] Select completed")
    local.expect(b"UID FETCH 1:4294967295 (UID MODSEQ FLAGS INTERNALDATE BODY.PEEK[])",
                 b"* 1 FETCH (UID 1 MODSEQ (6) FLAGS (\\Seen) INTERNALDATE " + DATE1 +
                 b" BODY[] {%d}\r\n" % len(MSG1) + MSG1 + b")\r\n"
                 b"* 2 FETCH (UID 2 MODSEQ (7) FLAGS () INTERNALDATE " + DATE2 +
                 b" BODY[] {%d}\r\n" % len(MSG2) + MSG2 + b")\r\n")
    local.logout()

    remote = Conversation("remote")
    remote.login((1, REMOTE_UIDVALIDITY, 1))
    remote.expect(b"SELECT INBOX (CONDSTORE)", select_reply(0, REMOTE_UIDVALIDITY, 1, 1),
                  text=b"[READ-WRITE] Select completed")
    remote.expect(b"APPEND INBOX (\\Seen) " + DATE1 + b" {%d+}\r\n" % len(MSG1) + MSG1 +
                  b" () " + DATE2 + b" {%d+}\r\n" % len(MSG2) + MSG2,
                  b"* 2 EXISTS\r\n* OK [HIGHESTMODSEQ 3] Highest\r\n",
                  text=b"[APPENDUID %d 1:2] Append completed" % REMOTE_UIDVALIDITY)
    # the probe behind the APPEND: only our own two messages are new (and
    # their MODSEQ; the server reported a new HIGHESTMODSEQ anyway)
    remote.expect(b"UID FETCH 1:4294967295 (UID MODSEQ)",
                  b"* 1 FETCH (UID 1 MODSEQ (2))\r\n* 2 FETCH (UID 2 MODSEQ (3))\r\n")
    remote.logout()

    err = run.run(local, remote)
    check("remote(INBOX): 2 message(s) added, 0 expunged, 0 flag update(s)" in err, err)


def test_sync_flags_expunge():
    with Run() as run:
        initial_sync(run)
        pairs, sides = run.state()
        check_eq(pairs, [(1, 1), (2, 2)], "mapping after the initial sync")
        check_eq(sides["local"], [(LOCAL_UIDVALIDITY, 3, 7)], "local state after run 1")
        check_eq(sides["remote"], [(REMOTE_UIDVALIDITY, 3, 3)], "remote state after run 1")

        # Run 2: remote UID 1 gained \Flagged (mod-sequence 9); the local
        # store is conditional on the local mod-sequence we last saw (7).
        local = Conversation("local")
        local.login((3, LOCAL_UIDVALIDITY, 7))
        local.expect(b"SELECT INBOX (QRESYNC (%d 7 1:2 (1:2 1:2)))" % LOCAL_UIDVALIDITY,
                     select_reply(2, LOCAL_UIDVALIDITY, 3, 7),
                     text=b"[READ-WRITE] Select completed")
        local.expect(b"UID STORE 1 (UNCHANGEDSINCE 7) FLAGS.SILENT (\\Flagged \\Seen)",
                     b"* 1 FETCH (UID 1 MODSEQ (8))\r\n")
        local.logout()
        remote = Conversation("remote")
        remote.login((3, REMOTE_UIDVALIDITY, 9))
        remote.expect(b"SELECT INBOX (QRESYNC (%d 3 1:2 (1:2 1:2)))" % REMOTE_UIDVALIDITY,
                      select_reply(2, REMOTE_UIDVALIDITY, 3, 9,
                                   b"* 1 FETCH (UID 1 FLAGS (\\Flagged \\Seen) MODSEQ (9))\r\n"),
                      text=b"[READ-WRITE] Select completed")
        remote.logout()
        err = run.run(local, remote)
        check("local(INBOX): 0 message(s) added, 0 expunged, 1 flag update(s)" in err, err)
        pairs, sides = run.state()
        check_eq(pairs, [(1, 1), (2, 2)], "mapping after the flag change")
        check_eq(sides["local"], [(LOCAL_UIDVALIDITY, 3, 8)], "local state after run 2")
        check_eq(sides["remote"], [(REMOTE_UIDVALIDITY, 3, 9)], "remote state after run 2")

        # Run 3: local UID 2 is gone (VANISHED (EARLIER) in the QRESYNC
        # SELECT answer); the remote copy, UID 2, is expunged by UID.
        local = Conversation("local")
        local.login((3, LOCAL_UIDVALIDITY, 10))
        local.expect(b"SELECT INBOX (QRESYNC (%d 8 1:2 (1:2 1:2)))" % LOCAL_UIDVALIDITY,
                     select_reply(1, LOCAL_UIDVALIDITY, 3, 10, b"* VANISHED (EARLIER) 2\r\n"),
                     text=b"[READ-WRITE] Select completed")
        local.logout()
        remote = Conversation("remote")
        remote.login((3, REMOTE_UIDVALIDITY, 9))
        remote.expect(b"SELECT INBOX (QRESYNC (%d 9 1:2 (1:2 1:2)))" % REMOTE_UIDVALIDITY,
                      select_reply(2, REMOTE_UIDVALIDITY, 3, 9),
                      text=b"[READ-WRITE] Select completed")
        remote.expect(b"UID STORE 2 +FLAGS.SILENT (\\Deleted)")
        remote.expect(b"UID EXPUNGE 2", b"* VANISHED 2\r\n",
                      text=b"[HIGHESTMODSEQ 11] Expunge completed")
        remote.logout()
        err = run.run(local, remote)
        check("remote(INBOX): 0 message(s) added, 1 expunged, 0 flag update(s)" in err, err)
        pairs, sides = run.state()
        check_eq(pairs, [(1, 1)], "mapping after the expunge")
        check_eq(sides["local"], [(LOCAL_UIDVALIDITY, 3, 10)], "local state after run 3")
        check_eq(sides["remote"], [(REMOTE_UIDVALIDITY, 3, 11)], "remote state after run 3")


if __name__ == "__main__":
    main(globals())
