#!/usr/bin/env python3
"""Adoption: a first run, with no database, on two servers that already
hold some of the same messages (synchronized earlier by another tool, or
a lost database) pairs the identical ones instead of copying them, copies
only what one side lacks, and says how many it adopted."""

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pair import Pair  # noqa: E402
from imapfixture import check, check_eq, main, mail  # noqa: E402
from imapfixture.mail import MessageGenerator  # noqa: E402


def adopted_count(r):
    return sum(int(n) for n in re.findall(r"Adopted (\d+) message", r.err))


def added_count(r):
    return sum(int(n) for n in re.findall(r"\): (\d+) message\(s\) added", r.err))


def shared_setup(p, lsep, rsep):
    """The same messages on both sides in several mailboxes (nested and
    non-ASCII names), some only on one side, a few identical twice.
    Returns (shared, only_local, only_remote) message counts."""
    gen = MessageGenerator(31)
    shared = {"INBOX": gen.mailbox(90), "Archive/2023": gen.mailbox(80),
              "Été/Août": gen.mailbox(60), "Projets": gen.mailbox(70)}
    # the same message three times on the local side, twice on the remote
    twin = gen.mailbox(1)[0]
    only_l = {"INBOX": gen.mailbox(12), "Été/Août": gen.mailbox(5), "Local seul": gen.mailbox(7)}
    only_r = {"Archive/2023": gen.mailbox(9), "Projets": gen.mailbox(4)}

    def spec(sep, extra, twins):
        out = {}
        for name, msgs in shared.items():
            out[name.replace("/", sep)] = list(msgs)
        for name, msgs in extra.items():
            out.setdefault(name.replace("/", sep), []).extend(msgs)
        out["INBOX"] = out["INBOX"] + [twin] * twins
        return out

    mail.fill(p.local, spec(lsep, only_l, 3))
    mail.fill(p.remote, spec(rsep, only_r, 2))
    shared_n = sum(len(v) for v in shared.values()) + 2
    return (shared_n, sum(len(v) for v in only_l.values()) + 1,
            sum(len(v) for v in only_r.values()))


def adopt_case(lsep, rsep):
    with Pair(local_sep=lsep, remote_sep=rsep) as p:
        check(not os.path.exists(p.db), "no database before the first run")
        shared, only_l, only_r = shared_setup(p, lsep, rsep)
        r = p.run()
        lines = r.err.splitlines()
        check(lines and lines[0].startswith("Creating new schema in database file"),
              "the missing database is said before anything changes: %r" % r.err[:300])
        check_eq(adopted_count(r), shared, "messages adopted")
        check_eq(added_count(r), only_l + only_r, "messages copied")
        a, b = p.snaps()
        diff = a.diff(b)
        check(not diff, "both sides hold the union:\n" + diff)
        total = shared + only_l + only_r
        check_eq(a.total(), total, "messages on each side")
        # the only message held twice is the one that was there three times
        for side, s in (("local", a), ("remote", b)):
            dups = s.duplicates()
            check_eq(list(dups), ["INBOX"], "%s: duplicates only where intended" % side)
            twins = [m for m in s.mailboxes["INBOX"].messages if m.sha256 == dups["INBOX"][0]]
            check_eq(len(twins), 3, "%s: the identical message, three times" % side)
        p.assert_db_consistent(a, b)
        # a further run changes nothing
        r2 = p.run()
        check_eq(added_count(r2) + adopted_count(r2), 0, "second run")
        check(not p.snaps()[0].diff(a), "second run left the servers as they were")


def test_adopt_same_delimiter():
    adopt_case("/", "/")


def test_adopt_different_delimiters():
    adopt_case("/", ".")


def test_adopt_flags_differ():
    """An adopted pair whose flags differ gets the union of both."""
    with Pair() as p:
        gen = MessageGenerator(5)
        msgs = gen.mailbox(20)
        mail.fill(p.local, {"INBOX": [(m, ("\\Seen",), d) for m, _f, d in msgs]})
        mail.fill(p.remote, {"INBOX": [(m, ("\\Flagged",), d) for m, _f, d in msgs]})
        r = p.run()
        check_eq(adopted_count(r), 20, "adopted")
        a, b = p.assert_in_step()
        for m in a.mailboxes["INBOX"].messages:
            check_eq(m.flags, ("\\Flagged", "\\Seen"), "flags of an adopted pair")


def test_missing_database_directory_refused():
    """A database path in a directory that does not exist is refused with
    one line, nothing is created and no server is touched."""
    with Pair() as p:
        mail.fill(p.local, {"INBOX": MessageGenerator(2).mailbox(3)})
        p.run()
        before = p.snaps()
        bad = os.path.join(p.dir, "no-such-dir", "state.db")
        with open(p.config_path) as f:
            text = f.read()
        with open(p.config_path, "w") as f:
            f.write(text.replace("database = %s" % p.db, "database = %s" % bad))
        r = p.run(expect=None)
        check(r.code != 0, "refused: %r" % r)
        lines = [line for line in r.err.splitlines() if line.strip()]
        check_eq(len(lines), 1, "one line: %r" % r.err)
        check(os.path.join(p.dir, "no-such-dir") in lines[0], "names the directory: %r" % lines[0])
        check(not os.path.exists(os.path.dirname(bad)), "nothing created")
        after = p.snaps()
        check(not before[0].diff(after[0]) and not before[1].diff(after[1]), "servers untouched")


if __name__ == "__main__":
    main(globals())
