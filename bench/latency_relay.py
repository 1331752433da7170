#!/usr/bin/env python3
"""A TCP relay that adds a fixed one-way delay in each direction.

    latency_relay.py --target HOST:PORT [--delay-ms 25] [--listen-port 0]
                     [--stats-file FILE]

It listens on 127.0.0.1, and for every accepted connection opens one to the
target and copies bytes both ways. Every chunk read from one side is stamped
with its arrival time and written to the other side no earlier than
arrival + delay, in arrival order, so the link behaves like a long wire with
unlimited bandwidth: pipelined traffic is not slowed, each wait for an
answer costs a full round trip. Bytes are copied as they are, so TLS passes
through and the client still verifies the server's certificate.

It counts, per direction, the bytes relayed, and the turn-arounds: the
times server-to-client data arrives after client-to-server data (a switch of
direction on one connection). A client that waits for each reply before
sending again makes one turn-around per command; a pipelined client makes
far fewer. The count is an upper bound on the round trips the client waited
for: when a pipelined client keeps sending while replies stream back, each
interleaving counts too.

On start it prints one line, "PORT CONTROL_PORT", and flushes stdout. The
control port (127.0.0.1, one line per command) answers:
    stats          one JSON line with the counters
    reset          "ok"; zeroes the counters
    delay MS       "ok"; sets the delay for data read from now on
    quit           "ok"; then the relay exits
On SIGTERM/SIGINT or quit, the counters are written to --stats-file as JSON.
"""

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import time

CHUNK = 256 * 1024
# Bytes read but not yet written, per direction, before reading pauses:
# bounds the relay's memory without limiting any realistic window.
MAX_IN_FLIGHT = 32 * 1024 * 1024


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

    def as_dict(self):
        return {
            "bytes_c2s": self.bytes_c2s,
            "bytes_s2c": self.bytes_s2c,
            "bytes": self.bytes_c2s + self.bytes_s2c,
            "turnarounds": self.turnarounds,
            "connections": self.connections,
            "chunks_c2s": self.chunks_c2s,
            "chunks_s2c": self.chunks_s2c,
        }


class Relay:
    def __init__(self, target_host, target_port, delay_s):
        self.target_host = target_host
        self.target_port = target_port
        self.delay = delay_s
        self.stats = Stats()
        self.tasks = set()

    async def handle(self, creader, cwriter):
        try:
            sreader, swriter = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            cwriter.close()
            return
        for w in (cwriter, swriter):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.stats.connections += 1
        # Last direction seen on this connection, for turn-around counting.
        conn = {"last": None}
        done = asyncio.gather(
            self.pump(creader, swriter, "c2s", conn),
            self.pump(sreader, cwriter, "s2c", conn),
            return_exceptions=True,
        )
        await done
        for w in (cwriter, swriter):
            w.close()

    def note(self, direction, n, conn):
        st = self.stats
        if direction == "c2s":
            st.bytes_c2s += n
            st.chunks_c2s += 1
        else:
            st.bytes_s2c += n
            st.chunks_s2c += 1
            if conn["last"] == "c2s":
                st.turnarounds += 1
        conn["last"] = direction

    async def pump(self, reader, writer, direction, conn):
        queue = asyncio.Queue()
        room = asyncio.Event()
        room.set()
        state = {"held": 0}

        async def release():
            while True:
                due, data = await queue.get()
                if data is None:
                    break
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                try:
                    writer.write(data)
                    await writer.drain()
                except (ConnectionError, OSError):
                    return
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
                try:
                    data = await reader.read(CHUNK)
                except (ConnectionError, OSError):
                    data = b""
                now = time.monotonic()
                if not data:
                    break
                self.note(direction, len(data), conn)
                state["held"] += len(data)
                if state["held"] >= MAX_IN_FLIGHT:
                    room.clear()
                queue.put_nowait((now + self.delay, data))
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
                    reply = "ok"
                elif cmd == "delay" and len(words) == 2:
                    self.delay = float(words[1]) / 1000.0
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
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()


async def main_async(args):
    host, _, port = args.target.rpartition(":")
    relay = Relay(host.strip("[]") or "127.0.0.1", int(port), args.delay_ms / 1000.0)
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
    sys.stdout.flush()
    # Connections still open are dropped with the process: letting asyncio
    # cancel their tasks one by one only prints noise.
    os._exit(0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", required=True, help="HOST:PORT to forward to")
    ap.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay (ms)")
    ap.add_argument("--listen-port", type=int, default=0)
    ap.add_argument("--stats-file")
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

    def close(self):
        try:
            self.file.close()
            self.sock.close()
        except OSError:
            pass


if __name__ == "__main__":
    sys.exit(main())
