"""Frame encode and decode rates: a 1150-byte STREAM frame, ACKs with 1 and 10 ranges,
and a packet payload holding an ACK and a STREAM frame.

    python bench/micro_frame.py [--seconds S]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quic.frame import Ack, Stream, decode_frames, encode_frame, encode_stream_header, write_ack

STREAM_DATA = bytes(1150)


def rate(func: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``func`` over about ``seconds``."""
    count, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(500):
            func()
        count += 500
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - start)


def ack_ranges(count: int) -> list[tuple[int, int]]:
    """``count`` ranges of 3 packets with gaps of 2, highest first, near packet 100000."""
    return [(100_000 - 5 * i - 2, 100_000 - 5 * i) for i in range(count)]


ACK2_RANGES = ack_ranges(2)


def encode_objects(*frames: object) -> Callable[[], bytearray]:
    def run() -> bytearray:
        buf = bytearray()
        for frame in frames:
            encode_frame(frame, buf)
        return buf

    return run


def packetizer_ack_stream() -> bytearray:
    """What the packetizer does: the ACK and the STREAM header from helpers, then data."""
    buf = bytearray()
    write_ack(buf, ACK2_RANGES, 25)
    buf += encode_stream_header(4, 1_000_000, len(STREAM_DATA), False)
    buf += STREAM_DATA
    return buf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    stream = Stream(4, 1_000_000, STREAM_DATA, False)
    ack1 = Ack(100_000, 25, ack_ranges(1))
    ack10 = Ack(100_000, 25, ack_ranges(10))
    ack2 = Ack(100_000, 25, ACK2_RANGES)
    cases = [
        ("STREAM 1150 B", encode_objects(stream)),
        ("ACK 1 range", encode_objects(ack1)),
        ("ACK 10 ranges", encode_objects(ack10)),
        ("ACK + STREAM", encode_objects(ack2, stream)),
        ("ACK + STREAM (helpers)", packetizer_ack_stream),
    ]
    print(f"{'case':<24} {'bytes':>6} {'encode/s':>11} {'µs':>6} {'decode/s':>11} {'µs':>6}")
    for name, encoder in cases:
        wire = bytes(encoder())
        assert decode_frames(wire)
        enc = rate(encoder, args.seconds)
        dec = rate(lambda w=wire: decode_frames(w), args.seconds)
        print(
            f"{name:<24} {len(wire):>6} {enc:>11,.0f} {1e6 / enc:>6.2f}"
            f" {dec:>11,.0f} {1e6 / dec:>6.2f}"
        )


if __name__ == "__main__":
    main()
