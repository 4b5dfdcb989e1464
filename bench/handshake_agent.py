"""Handshakes per second: a server consumer using the agent (tls_server_hello_x509
through kquic-tlshd in its own process) next to the same server running
quic_server_handshake in-process, with 8 concurrent clients, in one run.

    python bench/handshake_agent.py [--count 200] [--clients 8]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from handshake import net as hs  # noqa: E402
from handshake.libquic import quic_client_handshake, quic_server_handshake  # noqa: E402
from quic import uapi  # noqa: E402
from quic.socket import QuicSocket  # noqa: E402
from tests.certs import make_pki  # noqa: E402


def start_agent(directory: Path, pki) -> tuple[subprocess.Popen, str]:
    sock = directory / "handshake.sock"
    conf = directory / "tlshd.conf"
    conf.write_text(
        f"[agent]\nsocket={sock}\nworkers=8\nmax_pending=64\n"
        f"[authenticate.server]\nx509.certificate={pki.server_cert}\n"
        f"x509.private_key={pki.server_key}\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "handshake.tlshd.agent", "-c", str(conf), "-s"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    if not proc.stdout.readline().startswith("ready"):
        raise SystemExit("the agent did not start")
    return proc, str(sock)


def serve(listener: QuicSocket, count: int, handshake) -> threading.Thread:
    """Accept ``count`` connections, each handshaken on a thread of its own."""

    def one(child: QuicSocket) -> None:
        try:
            handshake(child)
        finally:
            child.close()

    def run() -> None:
        with ThreadPoolExecutor(16) as pool:
            for _ in range(count):
                child, _ = listener.accept()
                pool.submit(one, child)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def measure(count: int, clients: int, pki, handshake) -> float:
    listener = QuicSocket()
    listener.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_ALPN, b"smb")
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    listener.settimeout(30)
    port = listener.getsockname()[1]
    server = serve(listener, count, handshake)

    def client(_: int) -> None:
        sock = QuicSocket()
        sock.settimeout(30)
        sock.connect(("127.0.0.1", port))
        quic_client_handshake(sock, None, "server.test", "smb", ca_file=str(pki.ca), timeout=30)
        sock.close()

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(count)))
    elapsed = time.perf_counter() - start
    server.join(30)
    listener.close()
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        pki = make_pki(directory / "pki")
        agent, path = start_agent(directory, pki)
        try:

            def via_agent(child: QuicSocket) -> None:
                hs.tls_server_hello_x509(
                    hs.TlsHandshakeArgs(ta_sock=child, ta_agent=path, ta_timeout_ms=30_000)
                )

            def in_process(child: QuicSocket) -> None:
                quic_server_handshake(
                    child, str(pki.server_key), str(pki.server_cert), "smb", timeout=30
                )

            rates = {
                "in-process quic_server_handshake": measure(
                    opts.count, opts.clients, pki, in_process
                ),
                "kquic-tlshd agent": measure(opts.count, opts.clients, pki, via_agent),
            }
        finally:
            agent.terminate()
            agent.wait(10)
    print(f"{opts.count} X.509 handshakes, {opts.clients} concurrent clients, loopback")
    for name, rate in rates.items():
        print(f"{name:36s} {rate:8.1f} handshakes/s")
    agent_rate = rates["kquic-tlshd agent"]
    print(f"agent / in-process: {agent_rate / rates['in-process quic_server_handshake']:.2f}")


if __name__ == "__main__":
    main()
