#!/usr/bin/env python3
"""The progress line: on a terminal (a pseudo-terminal here) the first sync
of the demo data shows which mailbox is worked on and the counts so far,
redrawn in place, narrower than the terminal, erased at the end, and never
mixed into the log lines sharing the terminal; without a terminal, or with
-q, nothing is drawn."""

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pair import Pair, binary  # noqa: E402
from imapfixture import check, check_eq, main, mail  # noqa: E402

ERASE = b"\r\x1b[K"
FRAME = re.compile(r"^\[(\d+)/(\d+)\] (.+?): (\d+) message\(s\), [^|]* \| total (\d+) message\(s\)")
WIDTH = 70


def run_on_pty(p, *args, stderr_on_pty=False):
    """Runs ours with standard output on a pseudo-terminal WIDTH columns
    wide (and standard error too, or on a pipe); returns (status, what the
    terminal received, stderr)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, WIDTH, 0, 0))
    attrs = termios.tcgetattr(slave)
    attrs[1] &= ~termios.OPOST  # no "\n" -> "\r\n": the bytes as written
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    proc = subprocess.Popen([binary(), "--config", p.config_path] + list(args), stdout=slave,
                            stderr=slave if stderr_on_pty else subprocess.PIPE)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if not ready:
            if proc.poll() is not None:
                break
            continue
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: every writer closed the terminal
            break
        if not data:
            break
        out += data
    os.close(master)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    code = proc.wait(timeout=60)
    return code, out, err


def frames(out):
    """The progress lines drawn, in order."""
    text = out.decode(errors="replace")
    return [f for f in (s.split("\n")[0] for s in text.split(ERASE.decode())) if FRAME.match(f)]


def demo(p):
    spec = mail.populate(p.local)
    return spec, sum(spec.values())


def test_progress_on_a_terminal():
    with Pair() as p:
        spec, total = demo(p)
        code, out, err = run_on_pty(p)
        check_eq(code, 0, "status (stderr: %s)" % err)
        p.assert_in_step()
        check(re.search(r"^Done: %d mailbox\(es\) in .* %d message\(s\) added" % (len(spec), total),
                        err, re.M), "the run copied the demo data: %r" % err)
        drawn = frames(out)
        check(drawn, "progress lines were drawn: %r" % out[:500])
        boxes = {int(FRAME.match(f).group(1)) for f in drawn}
        check_eq(boxes, set(range(1, len(spec) + 1)), "a line for every mailbox")
        check(all(int(FRAME.match(f).group(2)) == len(spec) for f in drawn), "out of %d" % len(spec))
        totals = [int(FRAME.match(f).group(5)) for f in drawn]
        check_eq(totals, sorted(totals), "the overall count only grows")
        check_eq(totals[-1], total, "the last line counts every message copied")
        check(all(len(f) < WIDTH for f in drawn), "narrower than the terminal: %r"
              % max(drawn, key=len))
        check(b"\n" not in out, "the progress line never ends a line: %r" % out[:300])
        check(out.endswith(ERASE), "the line is erased at the end: %r" % out[-80:])
        check("\x1b" not in err, "no terminal codes in the log on a pipe")


def test_progress_and_log_share_the_terminal():
    with Pair() as p:
        _, total = demo(p)
        code, out, _ = run_on_pty(p, stderr_on_pty=True)
        check_eq(code, 0, "status")
        lines = out.split(b"\n")
        check(lines[-1].endswith(ERASE) or lines[-1] == b"", "the terminal is left clean")
        logged = []
        for raw in lines[:-1]:
            # what stays on the screen: the text after the last erase
            shown = raw.split(ERASE)[-1].decode(errors="replace")
            check(not FRAME.match(shown) and "| total" not in shown,
                  "a progress line left inside the log: %r" % raw)
            logged.append(shown)
        check(any(re.search(r"^remote\(INBOX\): Added \d+ UID\(s\)", l) for l in logged),
              "the log lines are there: %r" % logged)
        check(any(l.startswith("Done: ") for l in logged), "the last line is there")
        check(len(frames(out)) > 0, "and the progress was drawn between them")


def test_no_progress_without_a_terminal_or_with_q():
    with Pair() as p:
        demo(p)
        r = p.run()
        check_eq(r.out, "", "nothing on standard output when it is a pipe")
        check("\x1b" not in r.err, "no terminal codes in the log")
        check("Done: " in r.err, "the run happened")
    with Pair() as p:
        demo(p)
        code, out, err = run_on_pty(p, "-q")
        check_eq(code, 0, "status")
        check_eq(out, b"", "nothing drawn with -q")
        check_eq(err, "", "and nothing logged")
        a, b = p.assert_in_step()
        check(b.total() > 0, "the run copied the demo data")


if __name__ == "__main__":
    main(globals())
