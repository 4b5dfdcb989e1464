"""Bulk throughput on loopback, kquic and aioquic in one run, side by side.

Each implementation runs as its own server and client processes (1200-byte datagrams,
TLS 1.3 with AES-128-GCM), moving SIZE bytes on one stream in each direction.

    python bench/throughput.py [--size 50M] [--runs 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kquic_tools.perf import size  # noqa: E402
from tests.certs import make_pki  # noqa: E402
from tests.interop.conftest import Server, perf_commands, run  # noqa: E402


def measure(impl: str, pki, direction: str, nbytes: int) -> dict:
    server_argv, client_argv = perf_commands(impl, pki, direction, nbytes)
    server = Server(server_argv)
    try:
        result = run(client_argv(server.port))
    finally:
        server.stop()
    if result.returncode != 0:
        raise RuntimeError(f"{impl} {direction} failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=size, default=size("50M"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    pki = make_pki(tempfile.mkdtemp())
    rows = []
    for direction in ("send", "recv"):
        figures = {}
        for impl in ("kquic", "aioquic"):
            runs = [measure(impl, pki, direction, args.size) for _ in range(args.runs)]
            figures[impl] = {
                "MBps": statistics.median(r["MBps"] for r in runs),
                "handshake_ms": statistics.median(r["handshake_ms"] for r in runs),
                "cpu_s_per_GB": statistics.median(
                    r["cpu_seconds"] / (r["bytes"] / 1e9) for r in runs
                ),
            }
        rows.append({"direction": "upload" if direction == "send" else "download", **figures})
    print(f"{args.size / 1e6:.0f} MB on one stream, 1200-byte datagrams, median of {args.runs}")
    print(
        f"{'direction':<10} {'kquic MB/s':>11} {'aioquic MB/s':>13} {'ratio':>6} "
        f"{'kquic hs ms':>12} {'aioquic hs ms':>14}"
    )
    for row in rows:
        k, a = row["kquic"], row["aioquic"]
        ratio = k["MBps"] / a["MBps"]
        print(
            f"{row['direction']:<10} {k['MBps']:>11.1f} {a['MBps']:>13.1f} {ratio:>6.2f} "
            f"{k['handshake_ms']:>12.1f} {a['handshake_ms']:>14.1f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
