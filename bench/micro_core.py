"""The sans-I/O core's own cost per packet: a client and a server connection back to
back, no sockets or threads, moving one stream's data from server to client. Prints
CPU microseconds per packet on the sending side (building, sealing, handling ACKs)
and on the receiving side (opening, reassembly, reading, ACKing), for 1200-byte and
loopback-sized datagrams. What is left of the socket figures is I/O and threading.

    python bench/micro_core.py [--size 20M] [--profile sender|receiver]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kquic_tools.perf import size
from quic.malloc import keep_freed_memory
from tests.unit.test_connection import Pair

CHUNK = 1 << 16
BLOCK = bytes(CHUNK)


class Clock:
    """CPU time spent inside the calls it wraps, counted once where they nest (a batch
    hands packets it does not take to the single-datagram call)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.depth = 0

    def wrap(self, func):
        def timed(*args):
            self.depth += 1
            start = time.process_time()
            try:
                return func(*args)
            finally:
                self.depth -= 1
                if not self.depth:
                    self.seconds += time.process_time() - start

        return timed


def run(total: int, datagram_size: int, profile: str | None) -> dict:
    pair = Pair(batch=True)
    pair.handshake()
    sender, receiver = pair.server, pair.client
    for conn in (sender, receiver):
        conn._set_max_datagram_size(datagram_size)
    clocks = {"sender": Clock(), "receiver": Clock()}
    profiler = cProfile.Profile() if profile else None
    for role, conn in (("sender", sender), ("receiver", receiver)):
        clock = clocks[role]
        for name in ("datagrams_to_send", "receive_datagrams", "receive_datagram", "handle_timer"):
            method = getattr(conn, name)
            if profiler is not None and role == profile:
                method = _profiled(profiler, method)
            setattr(conn, name, clock.wrap(method))
    sid = sender.open_stream(uni=False)
    sent = received = 0
    packets_before = sender.spaces[2].next_pn
    read = clocks["receiver"].wrap(receiver.read_stream)
    write = clocks["sender"].wrap(sender.send_stream)

    def step() -> bool:
        nonlocal sent, received
        while sent < total and sender.stream_send_room(sid) >= CHUNK:
            take = min(CHUNK, total - sent)
            write(sid, BLOCK[:take], sent + take == total, sent == 0)
            sent += take
        while (chunk := read(CHUNK)) is not None:
            received += len(chunk[1])
        return received >= total

    pair.run_until(step, limit=10_000_000)
    packets = sender.spaces[2].next_pn - packets_before
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    return {
        "datagram": datagram_size,
        "packets": packets,
        "sender_us": clocks["sender"].seconds / packets * 1e6,
        "receiver_us": clocks["receiver"].seconds / packets * 1e6,
        "sender_MBps": total / clocks["sender"].seconds / 1e6,
        "receiver_MBps": total / clocks["receiver"].seconds / 1e6,
    }


def _profiled(profiler: cProfile.Profile, method):
    def call(*args):
        return profiler.runcall(method, *args)

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=size, default=size("20M"))
    parser.add_argument("--profile", choices=["sender", "receiver"])
    args = parser.parse_args()
    keep_freed_memory()  # as the first tunnel does: the core's buffers, not glibc's trims
    print(
        f"{'datagram':>8} {'packets':>8} {'send µs/pkt':>12} {'recv µs/pkt':>12}"
        f" {'send MB/s':>10} {'recv MB/s':>10}"
    )
    for datagram_size in (1200, 65000):
        r = run(args.size, datagram_size, args.profile)
        print(
            f"{r['datagram']:>8} {r['packets']:>8} {r['sender_us']:>12.1f} "
            f"{r['receiver_us']:>12.1f} {r['sender_MBps']:>10.0f} {r['receiver_MBps']:>10.0f}"
        )


if __name__ == "__main__":
    main()
