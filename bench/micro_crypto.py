"""Packet protection cost per cipher suite: protect and unprotect of 1200-byte
short-header packets, in packets per second and microseconds per packet.

    python bench/micro_crypto.py [--seconds S]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quic import uapi
from quic.crypto import AEAD_TAG_SIZE, CipherSuite, PacketKeys
from quic.packet import encode_short_header

PACKET_SIZE = 1200


def rate(func, seconds: float) -> float:
    """Calls per second of ``func`` over about ``seconds``."""
    count, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(200):
            func()
        count += 200
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    header = encode_short_header(bytes(8), 1234, 2, 0)
    payload = bytes(PACKET_SIZE - len(header) - AEAD_TAG_SIZE)
    print(f"{'suite':<20} {'protect pkt/s':>14} {'µs':>6} {'unprotect pkt/s':>16} {'µs':>6}")
    for suite in CipherSuite:
        secret = bytes(48 if suite == CipherSuite.AES_256_GCM else 32)
        keys = PacketKeys.from_secret(suite, secret, uapi.QUIC_VERSION_V1)
        packet = keys.protect(header, payload, 1234)
        assert len(packet) == PACKET_SIZE
        offset = len(header) - 2
        p = rate(lambda k=keys: k.protect(header, payload, 1234), args.seconds)
        u = rate(lambda k=keys, pk=packet, o=offset: k.unprotect(pk, o, 1233), args.seconds)
        print(f"{suite.name:<20} {p:>14,.0f} {1e6 / p:>6.2f} {u:>16,.0f} {1e6 / u:>6.2f}")


if __name__ == "__main__":
    main()
