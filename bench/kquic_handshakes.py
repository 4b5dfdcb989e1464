"""Sequential kquic handshakes against a perf server, for bench/suite.py's handshake
section; the counterpart of the peers' ``handshake-client``.

    python bench/kquic_handshakes.py --port P --count N [--ca FILE] [--server-name NAME]

Each round opens a new QuicSocket (a new connection on a new UDP port), runs a full
X.509 handshake with quic_client_handshake and closes the socket; the latency of a round
runs from opening the socket to the handshake's return. One untimed round first pays
the process's one-time costs (lazy imports, the TLS library's first session). Prints one
JSON line: every latency, the total seconds of the timed rounds (closes included), the
CPU seconds of this process over them, and how many were resumed (should be none: each
is a full handshake).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from handshake.libquic import quic_client_handshake
from quic.socket import QuicSocket

ALPN = "perf"


def handshake(args: argparse.Namespace) -> tuple[float, bool]:
    """One round: its latency in seconds, and whether the session was resumed."""
    start = time.perf_counter()
    sock = QuicSocket(socket.AF_INET)
    try:
        sock.settimeout(30)
        sock.connect((args.host, args.port))
        result = quic_client_handshake(
            sock, None, args.server_name, ALPN, ca_file=args.ca, insecure=not args.ca, timeout=30
        )
        latency = time.perf_counter() - start
    finally:
        sock.close()
    return latency, result.resumed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--ca")
    parser.add_argument("--server-name", default="server.test")
    args = parser.parse_args()
    handshake(args)  # warm-up, untimed
    latencies, resumed = [], 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    for _ in range(args.count):
        latency, was_resumed = handshake(args)
        latencies.append(latency)
        resumed += was_resumed
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    print(
        json.dumps(
            {
                "impl": "kquic",
                "handshakes": len(latencies),
                "seconds": round(seconds, 4),
                "latency_ms": [round(x * 1000, 3) for x in latencies],
                "cpu_seconds": round(cpu, 3),
                "resumed": resumed,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
