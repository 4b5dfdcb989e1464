"""Bulk throughput on loopback, kquic and aioquic in one run, side by side.

Each implementation runs as its own server and client processes (1200-byte datagrams,
TLS 1.3 with AES-128-GCM), moving SIZE bytes on one stream in each direction. With
``--plpmtud`` kquic also runs with PLPMTUD on both ends, its datagrams growing to
loopback's MTU, beside its 1200-byte figure.

    python bench/throughput.py [--size 50M] [--runs 3] [--plpmtud] [--json FILE]
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

# (column, implementation, extra arguments for both its server and client)
PLAIN = [("kquic", "kquic", []), ("aioquic", "aioquic", [])]
PLPMTUD = ("kquic+plpmtud", "kquic", ["--plpmtud"])


def measure(impl: str, pki, direction: str, nbytes: int, extra: list[str]) -> dict:
    server_argv, client_argv = perf_commands(impl, pki, direction, nbytes)
    server = Server([*server_argv, *extra])
    try:
        result = run([*client_argv(server.port), *extra])
    finally:
        server.stop()
    if result.returncode != 0:
        raise RuntimeError(f"{impl} {direction} failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=size, default=size("50M"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--plpmtud", action="store_true", help="also run kquic with PLPMTUD")
    parser.add_argument("--json")
    args = parser.parse_args()
    columns = [*PLAIN, PLPMTUD] if args.plpmtud else PLAIN
    pki = make_pki(tempfile.mkdtemp())
    rows = []
    for direction in ("send", "recv"):
        figures = {}
        for label, impl, extra in columns:
            runs = [measure(impl, pki, direction, args.size, extra) for _ in range(args.runs)]
            figures[label] = {
                "MBps": statistics.median(r["MBps"] for r in runs),
                "handshake_ms": statistics.median(r["handshake_ms"] for r in runs),
                "cpu_s_per_GB": statistics.median(
                    r["cpu_seconds"] / (r["bytes"] / 1e9) for r in runs
                ),
            }
            if "max_datagram_size" in runs[0]:
                figures[label]["max_datagram_size"] = runs[0]["max_datagram_size"]
        rows.append({"direction": "upload" if direction == "send" else "download", **figures})
    print(f"{args.size / 1e6:.0f} MB on one stream, median of {args.runs}")
    labels = [label for label, _, _ in columns]
    header = "".join(f" {label + ' MB/s':>19}" for label in labels)
    print(f"{'direction':<10}{header} {'kquic/aioquic':>14}")
    for row in rows:
        figures = "".join(f" {row[lb]['MBps']:>19.1f}" for lb in labels)
        ratio = row["kquic"]["MBps"] / row["aioquic"]["MBps"]
        print(f"{row['direction']:<10}{figures} {ratio:>14.2f}")
    handshakes = "".join(f" {rows[0][lb]['handshake_ms']:>16.1f} ms" for lb in labels)
    print(f"{'handshake':<10}{handshakes}")
    if args.plpmtud:
        sizes = {row["direction"]: row[PLPMTUD[0]]["max_datagram_size"] for row in rows}
        print(f"kquic+plpmtud datagram size reached: {sizes}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
