"""A server in one process against the same server in several (``--workers``).

For each worker count, ``kquic-perf server --workers N`` on loopback serves CLIENTS
client processes at once, twice: each client downloads SIZE bytes (aggregate MB/s:
all the bytes over the longest client's transfer time, so that process start-up,
which is not the server's, does not count), then each makes handshakes back to back
for SECONDS (handshakes per second, all clients together). Clients and workers
share the machine's cores, so the figures say how far the server spreads on this
machine, not what a separate client fleet would see.

    python bench/workers.py [--workers 1 2] [--clients 4] [--size 20M] [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from handshake.libquic import quic_client_handshake  # noqa: E402
from kquic_tools.perf import size  # noqa: E402
from quic.socket import QuicSocket  # noqa: E402
from tests.certs import make_pki  # noqa: E402
from tests.interop.conftest import PROCESS_TIMEOUT, Server, env, python  # noqa: E402


def handshake_loop(port: int, ca: str, seconds: float) -> None:
    """One client process: full handshakes (no resumption) until ``seconds`` pass."""
    count, start = 0, time.monotonic()
    while time.monotonic() - start < seconds:
        sock = QuicSocket()
        sock.settimeout(10)
        try:
            sock.connect(("127.0.0.1", port))
            quic_client_handshake(sock, None, "server.test", "perf", ca_file=ca, timeout=10)
        finally:
            sock.close()
        count += 1
    print(json.dumps({"handshakes": count, "seconds": time.monotonic() - start}), flush=True)


def run_clients(argvs: list[list[str]]) -> tuple[list[dict], float]:
    """Run the client commands at once; their JSON lines and the wall time."""
    start = time.monotonic()
    procs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env(), cwd=ROOT)
        for argv in argvs
    ]
    outputs = [proc.communicate(timeout=PROCESS_TIMEOUT)[0] for proc in procs]
    wall = time.monotonic() - start
    if any(proc.returncode for proc in procs):
        raise RuntimeError("a client failed")
    return [json.loads(out.strip().splitlines()[-1]) for out in outputs], wall


def measure(workers: int, clients: int, nbytes: int, seconds: float, pki) -> dict:
    cert = ["--cert", str(pki.server_cert), "--key", str(pki.server_key)]
    listen = ["--listen", "127.0.0.1:0", "--workers", str(workers)]
    server = Server(python("-m", "kquic_tools.perf", "server", *listen, *cert))
    try:
        target = f"127.0.0.1:{server.port}"
        download = ["client", target, "--recv", str(nbytes), "--ca", str(pki.ca)]
        results, _ = run_clients([python("-m", "kquic_tools.perf", *download)] * clients)
        transfer = max(r["seconds"] for r in results)
        loop = [__file__, "--handshake-client", str(server.port), str(pki.ca), str(seconds)]
        counts, _ = run_clients([python(*loop)] * clients)
    finally:
        server.stop()
    return {
        "workers": workers,
        "aggregate_MBps": sum(r["bytes"] for r in results) / transfer / 1e6,
        "handshakes_per_s": sum(c["handshakes"] for c in counts)
        / max(c["seconds"] for c in counts),
    }


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--handshake-client":
        handshake_loop(int(sys.argv[2]), sys.argv[3], float(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--size", type=size, default=size("20M"))
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    pki = make_pki(Path(tempfile.mkdtemp()))
    rows = [measure(n, args.clients, args.size, args.seconds, pki) for n in args.workers]
    print(
        f"{args.clients} concurrent clients, {args.size / 1e6:.1f} MB download each; "
        f"handshakes for {args.seconds:g} s"
    )
    print(f"{'workers':>8} {'aggregate MB/s':>15} {'handshakes/s':>13}")
    for row in rows:
        print(
            f"{row['workers']:>8} {row['aggregate_MBps']:>15.1f} {row['handshakes_per_s']:>13.1f}"
        )


if __name__ == "__main__":
    main()
