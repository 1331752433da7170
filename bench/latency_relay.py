#!/usr/bin/env python3
"""A TCP relay that adds a fixed one-way delay, and optionally a bandwidth
limit, in each direction.

    latency_relay.py --target HOST:PORT [--delay-ms 25] [--rate MBIT]
                     [--queue-ms 100] [--listen-port 0] [--stats-file FILE]
                     [--trace FILE] [--count-commands]

It listens on 127.0.0.1, and for every accepted connection opens one to the
target and copies bytes both ways. Every chunk read from one side is stamped
with its arrival time and written to the other side no earlier than
arrival + delay, in arrival order, so the link behaves like a long wire:
pipelined traffic is not slowed, each wait for an answer costs a full round
trip. Bytes are copied as they are, so TLS passes through and the client
still verifies the server's certificate.

With --rate, each direction is one link of that many Mbit/s shared by all
connections (like an access line): a chunk leaves the link only after every
byte queued before it, on any connection, has, and then travels the delay.
The link's queue holds at most --queue-ms of transmission (a router's
buffer); while it is full the relay stops reading, so the sender feels the
limit through TCP flow control instead of filling the relay's memory.
Chunks are read in pieces of about 5 ms of transmission so that a reply
does not wait behind a large read.

It counts, per direction, the bytes relayed, and the turn-arounds: the
times server-to-client data arrives after client-to-server data (a switch of
direction on one connection). A client that waits for each reply before
sending again makes one turn-around per command; a pipelined client makes
far fewer. The count is an upper bound on the round trips the client waited
for: when a pipelined client keeps sending while replies stream back, each
interleaving counts too.

The counters include the relay's own CPU time since the last reset, to
tell whether the relay itself limits a run.

With --trace, every chunk is logged as one line "TIME CONN DIR BYTES DUE"
(monotonic seconds when read, connection number, c2s or s2c, size, and
when it is due on the other side), and again as "W TIME CONN DIR BYTES"
once written to the other side (later than due when that side does not
read fast enough), for finding where a run waits.

With --count-commands it also parses what the client sends as plain-text
IMAP (no TLS, no COMPRESS on that link) and counts the commands, in total
and by name ("LIST", "UID FETCH", "DONE" for the end of an IDLE); literals
are skipped, so message bodies are not mistaken for commands. On an
encrypted or compressed link the names are meaningless.

On start it prints one line, "PORT CONTROL_PORT", and flushes stdout. The
control port (127.0.0.1, one line per command) answers:
    stats          one JSON line with the counters
    reset          "ok"; zeroes the counters
    delay MS       "ok"; sets the delay for data read from now on
    rate MBIT      "ok"; sets the bandwidth per direction (0: unlimited)
    freeze         "ok"; holds every byte read from now on, both ways, on
                   every connection (new ones too): a link that went silent
                   without either end noticing, like a sleeping laptop's
    thaw           "ok"; lets the held bytes go, in order
    quit           "ok"; then the relay exits
On SIGTERM/SIGINT or quit, the counters are written to --stats-file as JSON.

Other programs can use RelayProc (start it as a child process) and Control
(talk to its control port).
"""

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

CHUNK = 256 * 1024
# Bytes read but not yet written, per direction, before reading pauses:
# bounds the relay's memory without limiting any realistic window.
MAX_IN_FLIGHT = 32 * 1024 * 1024
# With a rate, reads are cut to about this much transmission time.
SLICE_S = 0.005


class Stats:
    def __init__(self):
        self.reset()

    def reset(self):
        self.bytes_c2s = 0
        self.bytes_s2c = 0
        self.turnarounds = 0
        self.connections = 0
        self.chunks_c2s = 0
        self.chunks_s2c = 0
        self.cpu_start = time.process_time()
        self.first = None  # monotonic time of the first byte since reset
        self.last = None  # and of the last byte due on the other side
        # cleared in place: the connections' counters hold this dict
        if hasattr(self, "commands"):
            self.commands.clear()
        else:
            self.commands = {}

    def as_dict(self):
        return {
            "bytes_c2s": self.bytes_c2s,
            "bytes_s2c": self.bytes_s2c,
            "bytes": self.bytes_c2s + self.bytes_s2c,
            "turnarounds": self.turnarounds,
            "connections": self.connections,
            "chunks_c2s": self.chunks_c2s,
            "chunks_s2c": self.chunks_s2c,
            "cpu": time.process_time() - self.cpu_start,
            "active": (self.last - self.first) if self.first is not None else 0.0,
            "commands": sum(self.commands.values()),
            "command_names": dict(sorted(self.commands.items())),
        }


class Link:
    """One direction of the wire, shared by every connection: a rate in
    bytes per second (0: unlimited) and the time its queue drains."""

    def __init__(self, rate):
        self.rate = rate
        self.busy_until = 0.0

    def send(self, now, n):
        """Queues n bytes read at now; returns when their last bit has left."""
        if not self.rate:
            return now
        start = max(now, self.busy_until)
        self.busy_until = start + n / self.rate
        return self.busy_until

    def backlog(self, now):
        return max(0.0, self.busy_until - now) if self.rate else 0.0

    def chunk(self):
        if not self.rate:
            return CHUNK
        return int(min(CHUNK, max(4096, self.rate * SLICE_S)))


# A literal announced at the end of a command line: {N} or {N+} (LITERAL+).
LITERAL_RE = re.compile(rb"\{([0-9]+)\+?\}$")


class CommandCounter:
    """Splits one connection's client-to-server bytes into IMAP commands.

    A command is a line ending in CRLF, continued after each literal it
    announces. The first line of a command names it: the word after the
    tag, with "UID" joined to the word after it; a line without a tag
    ("DONE", or a SASL continuation) counts under its first word."""

    MAX_LINE = 64 * 1024  # a longer line is cut: the counts stay bounded

    def __init__(self, counts):
        self.counts = counts
        self.line = bytearray()
        self.literal = 0  # bytes of a literal still to skip
        self.continued = False  # the next line continues a command

    def feed(self, data):
        pos, size = 0, len(data)
        while pos < size:
            if self.literal:
                n = min(self.literal, size - pos)
                self.literal -= n
                pos += n
                continue
            end = data.find(b"\n", pos)
            if end < 0:
                self.line += data[pos : pos + max(0, self.MAX_LINE - len(self.line))]
                return
            self.line += data[pos:end]
            pos = end + 1
            self.end_line(bytes(self.line).rstrip(b"\r"))
            self.line.clear()

    def end_line(self, line):
        if not self.continued:
            words = line.split(None, 3)
            if len(words) >= 2:
                name = words[1].upper()
                if name == b"UID" and len(words) >= 3:
                    name += b" " + words[2].upper()
            else:
                name = words[0].upper() if words else b"(empty)"
            key = name.decode("ascii", "replace")
            self.counts[key] = self.counts.get(key, 0) + 1
        m = LITERAL_RE.search(line)
        self.continued = m is not None
        if m:
            self.literal = int(m.group(1))


class Relay:
    def __init__(self, target_host, target_port, delay_s, rate_mbit=0.0, queue_s=0.1,
                 trace=None, count_commands=False):
        self.target_host = target_host
        self.target_port = target_port
        self.delay = delay_s
        self.queue_s = queue_s
        self.links = {"c2s": Link(0), "s2c": Link(0)}
        self.set_rate(rate_mbit)
        self.stats = Stats()
        self.trace = trace
        self.serial = 0
        self.count_commands = count_commands
        self.flowing = asyncio.Event()
        self.flowing.set()

    def set_rate(self, mbit):
        for link in self.links.values():
            link.rate = mbit * 1e6 / 8
            link.busy_until = 0.0

    async def handle(self, creader, cwriter):
        try:
            sreader, swriter = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            cwriter.close()
            return
        for w, direction in ((cwriter, "c2s"), (swriter, "s2c")):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # On a limited link, a receive buffer of megabytes would be
                # a hidden queue in front of the link's own.
                rate = self.links[direction].rate
                if rate:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF,
                                    int(max(65536, rate * self.queue_s)))
        self.stats.connections += 1
        self.serial += 1
        # Last direction seen on this connection, for turn-around counting.
        conn = {"last": None, "id": self.serial}
        if self.count_commands:
            conn["counter"] = CommandCounter(self.stats.commands)
        done = asyncio.gather(
            self.pump(creader, swriter, "c2s", conn),
            self.pump(sreader, cwriter, "s2c", conn),
            return_exceptions=True,
        )
        await done
        for w in (cwriter, swriter):
            w.close()

    def note(self, direction, data, conn, now, due):
        n = len(data)
        st = self.stats
        if st.first is None:
            st.first = now
        st.last = max(st.last or due, due)
        if direction == "c2s":
            st.bytes_c2s += n
            st.chunks_c2s += 1
            if "counter" in conn:
                conn["counter"].feed(data)
        else:
            st.bytes_s2c += n
            st.chunks_s2c += 1
            if conn["last"] == "c2s":
                st.turnarounds += 1
        conn["last"] = direction
        if self.trace:
            self.trace.write("%.6f %d %s %d %.6f\n" % (now, conn["id"], direction, n, due))

    async def pump(self, reader, writer, direction, conn):
        queue = asyncio.Queue()
        room = asyncio.Event()
        room.set()
        state = {"held": 0}
        link = self.links[direction]

        async def release():
            while True:
                due, data = await queue.get()
                if data is None:
                    break
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self.flowing.wait()
                try:
                    writer.write(data)
                    await writer.drain()
                except (ConnectionError, OSError):
                    return
                if self.trace:
                    self.trace.write("W %.6f %d %s %d\n" % (time.monotonic(), conn["id"],
                                                            direction, len(data)))
                state["held"] -= len(data)
                if state["held"] < MAX_IN_FLIGHT:
                    room.set()
            try:
                if writer.can_write_eof():
                    writer.write_eof()
            except (ConnectionError, OSError):
                pass

        releaser = asyncio.ensure_future(release())
        try:
            while True:
                await room.wait()
                # A full link queue stops reading, as a full router buffer
                # would drop packets and slow the sender down.
                over = link.backlog(time.monotonic()) - self.queue_s
                if over > 0:
                    await asyncio.sleep(over)
                try:
                    data = await reader.read(link.chunk())
                except (ConnectionError, OSError):
                    data = b""
                now = time.monotonic()
                if not data:
                    break
                due = link.send(now, len(data)) + self.delay
                self.note(direction, data, conn, now, due)
                state["held"] += len(data)
                if state["held"] >= MAX_IN_FLIGHT:
                    room.clear()
                queue.put_nowait((due, data))
        finally:
            queue.put_nowait((0, None))
            await releaser

    async def control(self, reader, writer, stop):
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                words = line.decode().split()
                if not words:
                    continue
                cmd = words[0]
                if cmd == "stats":
                    reply = json.dumps(self.stats.as_dict())
                elif cmd == "reset":
                    self.stats.reset()
                    if self.trace:
                        self.trace.write("# reset %.6f\n" % time.monotonic())
                    reply = "ok"
                elif cmd == "delay" and len(words) == 2:
                    self.delay = float(words[1]) / 1000.0
                    reply = "ok"
                elif cmd == "rate" and len(words) == 2:
                    self.set_rate(float(words[1]))
                    reply = "ok"
                elif cmd == "freeze":
                    self.flowing.clear()
                    reply = "ok"
                elif cmd == "thaw":
                    self.flowing.set()
                    reply = "ok"
                elif cmd == "quit":
                    writer.write(b"ok\n")
                    await writer.drain()
                    stop.set()
                    break
                else:
                    reply = "error unknown command"
                writer.write(reply.encode() + b"\n")
                await writer.drain()
        except (ConnectionError, OSError, ValueError):
            pass
        finally:
            writer.close()


async def main_async(args):
    host, _, port = args.target.rpartition(":")
    trace = open(args.trace, "w", buffering=1 << 20) if args.trace else None
    relay = Relay(host.strip("[]") or "127.0.0.1", int(port), args.delay_ms / 1000.0,
                  args.rate, args.queue_ms / 1000.0, trace, args.count_commands)
    stop = asyncio.Event()
    server = await asyncio.start_server(relay.handle, "127.0.0.1", args.listen_port)
    ctl = await asyncio.start_server(lambda r, w: relay.control(r, w, stop), "127.0.0.1", 0)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("%d %d" % (server.sockets[0].getsockname()[1], ctl.sockets[0].getsockname()[1]),
          flush=True)
    await stop.wait()
    server.close()
    ctl.close()
    if args.stats_file:
        with open(args.stats_file, "w") as f:
            json.dump(relay.stats.as_dict(), f)
    if trace:
        trace.close()
    sys.stdout.flush()
    # Connections still open are dropped with the process: letting asyncio
    # cancel their tasks one by one only prints noise.
    os._exit(0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", required=True, help="HOST:PORT to forward to")
    ap.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay (ms)")
    ap.add_argument("--rate", type=float, default=0.0,
                    help="bandwidth per direction in Mbit/s (default 0: unlimited)")
    ap.add_argument("--queue-ms", type=float, default=100.0,
                    help="with --rate, the link's queue in ms of transmission (default 100)")
    ap.add_argument("--listen-port", type=int, default=0)
    ap.add_argument("--stats-file")
    ap.add_argument("--trace", help="log every chunk to this file")
    ap.add_argument("--count-commands", action="store_true",
                    help="count the IMAP commands of plain-text links")
    args = ap.parse_args()
    asyncio.run(main_async(args))
    return 0


class Control:
    """Client side of the control port, for the benchmark driver."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rwb")

    def ask(self, line):
        self.file.write(line.encode() + b"\n")
        self.file.flush()
        return self.file.readline().decode().strip()

    def stats(self):
        return json.loads(self.ask("stats"))

    def reset(self):
        self.ask("reset")

    def delay(self, ms):
        self.ask("delay %g" % ms)

    def rate(self, mbit):
        self.ask("rate %g" % mbit)

    def freeze(self):
        self.ask("freeze")

    def thaw(self):
        self.ask("thaw")

    def close(self):
        try:
            self.file.close()
            self.sock.close()
        except OSError:
            pass


class RelayProc:
    """A relay run as a child process, with its control connection:

        r = RelayProc(target_port, delay_ms=25, count_commands=True)
        ... connect to 127.0.0.1:r.port ...
        r.ctl.stats(); r.stop()
    """

    def __init__(self, target_port, delay_ms=0, count_commands=False, target_host="127.0.0.1"):
        argv = [sys.executable, os.path.abspath(__file__),
                "--target", "%s:%d" % (target_host, target_port), "--delay-ms", str(delay_ms)]
        if count_commands:
            argv.append("--count-commands")
        self.ctl = None
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        line = self.proc.stdout.readline().split()
        if len(line) != 2:
            self.stop()
            raise RuntimeError("latency relay did not start")
        self.port, cport = int(line[0]), int(line[1])
        self.ctl = Control(cport)

    def stop(self):
        if self.ctl:
            self.ctl.close()
            self.ctl = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()


if __name__ == "__main__":
    sys.exit(main())
