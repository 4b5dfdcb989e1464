"""Frame encode/decode cost: a full-size STREAM frame, ACKs, and a typical payload.

python bench/micro_frame.py [--seconds S]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.micro_crypto import rate
from quic.frame import Ack, Stream, decode_frames, encode_frame


def encoded(*frames) -> bytes:
    buf = bytearray()
    for frame in frames:
        encode_frame(frame, buf)
    return bytes(buf)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5)
    args = parser.parse_args()
    stream = Stream(4, 1 << 20, bytes(1150), False)
    ack1 = Ack(100_000, 25, [(99_000, 100_000)])
    ack10 = Ack(100_000, 25, [(100_000 - 20 * i - 5, 100_000 - 20 * i) for i in range(10)])
    cases = [
        ("STREAM 1150 B", (stream,)),
        ("ACK 1 range", (ack1,)),
        ("ACK 10 ranges", (ack10,)),
        ("ACK + STREAM", (ack1, stream)),
    ]
    print(f"{'case':<16} {'encode/s':>12} {'µs':>6} {'decode/s':>12} {'µs':>6}")
    for name, frames in cases:
        wire = encoded(*frames)
        e = rate(lambda f=frames: encoded(*f), args.seconds)
        d = rate(lambda w=wire: decode_frames(w), args.seconds)
        print(f"{name:<16} {e:>12,.0f} {1e6 / e:>6.2f} {d:>12,.0f} {1e6 / d:>6.2f}")


if __name__ == "__main__":
    main()
