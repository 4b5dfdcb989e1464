"""Interop fixtures: processes bounded in time, a PKI, and a lossy UDP relay."""

from __future__ import annotations

import os
import random
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.certs import make_pki

ROOT = Path(__file__).resolve().parents[2]
PROCESS_TIMEOUT = 120


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


class Server:
    """A server process that prints ``ready PORT`` once it listens; killed on exit."""

    def __init__(self, argv: list[str], **extra_env: str) -> None:
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env(**extra_env),
            cwd=ROOT,
        )
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("ready "):
            self.stop()
            raise RuntimeError(f"server did not start: {line!r} {self.proc.stderr.read()[-2000:]}")
        self.port = int(line.split()[1])

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def start_server():
    servers: list[Server] = []

    def start(argv: list[str], **extra_env: str) -> Server:
        server = Server(argv, **extra_env)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, capture_output=True, text=True, env=env(), cwd=ROOT, timeout=PROCESS_TIMEOUT
    )


class LossyRelay:
    """A UDP relay on loopback that drops and reorders datagrams in both directions.

    The client talks to the relay's port; the relay forwards to ``target``. Each
    direction drops with probability ``loss`` and holds back a datagram now and then to
    deliver it after the next one (reordering), or after ``MAX_HOLD`` seconds when no other
    comes: a real path reorders, it does not keep a packet until the sender's next one,
    which for a paced or idle sender can be a timeout later. Bounded: it stops with the test.

    With ``rebind_after`` it acts as a NAT whose mapping changes: after that many client
    datagrams it sends on from a new port, as if the client's port had changed; the old
    mapping still delivers to the client for ``OLD_MAPPING_LINGER`` seconds, as a NAT's
    does until it times out.
    """

    OLD_MAPPING_LINGER = 0.2

    MAX_HOLD = 0.005

    def __init__(
        self,
        target: tuple[str, int],
        loss: float = 0.05,
        reorder: float = 0.05,
        seed: int = 1,
        rebind_after: int | None = None,
    ) -> None:
        self.target = target
        self.loss = loss
        self.reorder = reorder
        self.rng = random.Random(seed)
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind(("127.0.0.1", 0))
        self.back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.back.bind(("127.0.0.1", 0))
        self.port = self.front.getsockname()[1]
        self.client: tuple | None = None
        self.held: dict[int, tuple[bytes, tuple, float] | None] = {0: None, 1: None}
        self.dropped = 0
        self.rebind_after = rebind_after
        self.forwarded = 0
        self.old_ports: list[int] = []
        self.old_back: tuple[socket.socket, float] | None = None
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _forward(self, direction: int, sock: socket.socket, data: bytes, addr: tuple) -> None:
        if self.rng.random() < self.loss:
            self.dropped += 1
            return
        held = self.held[direction]
        if held is None and self.rng.random() < self.reorder:
            self.held[direction] = (data, addr, time.monotonic() + self.MAX_HOLD)
            return
        sock.sendto(data, addr)
        if held is not None:
            self.held[direction] = None
            sock.sendto(held[0], held[1])

    def _release_overdue(self) -> None:
        now = time.monotonic()
        for direction, sock in ((0, self.back), (1, self.front)):
            held = self.held[direction]
            if held is not None and held[2] <= now:
                self.held[direction] = None
                sock.sendto(held[0], held[1])

    def _run(self) -> None:
        while not self._stop:
            waiting = any(self.held.values())
            socks = [self.front, self.back]
            if self.old_back is not None:
                if time.monotonic() > self.old_back[1]:
                    self.old_back[0].close()
                    self.old_back = None
                else:
                    socks.append(self.old_back[0])
            ready, _, _ = select.select(socks, [], [], self.MAX_HOLD if waiting else 0.1)
            for sock in ready:
                data, addr = sock.recvfrom(65536)
                if sock is self.front:
                    self.client = addr
                    self._forward(0, self.back, data, self.target)
                    self.forwarded += 1
                    if self.forwarded == self.rebind_after:
                        self._rebind()
                elif self.client is not None:
                    self._forward(1, self.front, data, self.client)
            self._release_overdue()

    def _rebind(self) -> None:
        old, self.back = self.back, socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.back.bind(("127.0.0.1", 0))
        self.old_ports.append(old.getsockname()[1])
        self.old_back = (old, time.monotonic() + self.OLD_MAPPING_LINGER)

    def close(self) -> None:
        self._stop = True
        self.thread.join(2)
        self.front.close()
        self.back.close()
        if self.old_back is not None:
            self.old_back[0].close()


PEERS = {"aioquic": "tests.interop.aioquic_peer", "qh3": "tests.interop.qh3_peer"}


def perf_commands(impl: str, pki, direction: str, nbytes: int) -> tuple[list[str], Callable]:
    """The perf server command of ``impl`` ("kquic", "aioquic" or "qh3"), and a function
    giving the matching client command for the server's port. Every client verifies the
    server's certificate."""
    cert = ["--cert", str(pki.server_cert), "--key", str(pki.server_key)]
    trust = ["--ca", str(pki.ca), "--server-name", "server.test"]
    if impl == "kquic":
        server = python("-m", "kquic_tools.perf", "server", "--listen", "127.0.0.1:0", *cert)
        return server, lambda port: python(
            "-m",
            "kquic_tools.perf",
            "client",
            f"127.0.0.1:{port}",
            f"--{direction}",
            str(nbytes),
            *trust,
        )
    server = python("-m", PEERS[impl], "perf-server", "--port", "0", *cert)
    return server, lambda port: python(
        "-m", PEERS[impl], "perf-client", "--port", str(port), f"--{direction}", str(nbytes), *trust
    )


FILES = {"small.txt": 1000, "medium.bin": 300_000, "large.bin": 10 << 20}


@pytest.fixture(scope="session")
def www(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("www")
    for name, size in FILES.items():
        (root / name).write_bytes(os.urandom(size))
    return root


def kquic_server(pki, www: Path) -> list[str]:
    return python(
        "-m",
        "kquic_tools.interop",
        "server",
        "--listen",
        "127.0.0.1:0",
        "--root",
        str(www),
        "--cert",
        str(pki.server_cert),
        "--key",
        str(pki.server_key),
    )


def aioquic_server(pki, www: Path) -> list[str]:
    return python(
        "-m",
        "tests.interop.aioquic_peer",
        "server",
        "--port",
        "0",
        "--root",
        str(www),
        "--cert",
        str(pki.server_cert),
        "--key",
        str(pki.server_key),
    )


def check_files(www: Path, out: Path, names) -> None:
    for name in names:
        assert (out / name).read_bytes() == (www / name).read_bytes(), name


def urls(port: int, names) -> list[str]:
    return [f"https://127.0.0.1:{port}/{name}" for name in names]


def kquic_client(port: int, names, out: Path, pki, *extra: str) -> list[str]:
    return python(
        "-m",
        "kquic_tools.interop",
        "client",
        *urls(port, names),
        "--output",
        str(out),
        "--ca",
        str(pki.ca),
        "--server-name",
        "server.test",
        *extra,
    )


def aioquic_client(port: int, names, out: Path, pki, *extra: str) -> list[str]:
    return python(
        "-m",
        "tests.interop.aioquic_peer",
        "client",
        *urls(port, names),
        "--output",
        str(out),
        "--ca",
        str(pki.ca),
        *extra,
    )


class SilentServer:
    """An in-process QUIC server for ``alpn`` that completes one handshake, then reads
    and answers nothing: a client blocked mid-transfer, for as long as a test wants.
    ``handshaken`` is set once the handshake is done."""

    def __init__(self, pki, alpn: str) -> None:
        from handshake.libquic import quic_server_handshake
        from quic import uapi
        from quic.socket import QuicSocket

        self.listener = QuicSocket()
        self.listener.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_ALPN, alpn.encode())
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.port = self.listener.getsockname()[1]
        self.handshaken = threading.Event()
        self.closed = threading.Event()

        def serve() -> None:
            conn, _ = self.listener.accept()
            try:
                quic_server_handshake(conn, str(pki.server_key), str(pki.server_cert), alpn)
                self.handshaken.set()
                self.closed.wait(30)
            finally:
                conn.close()

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.closed.set()
        self.listener.close()
        self.thread.join(10)


def interrupt_after_handshake(argv: list[str], server: SilentServer) -> tuple[int, str]:
    """Start a client, press Ctrl-C (SIGINT) once ``server`` has its handshake, and
    return the client's exit status and stderr. It must be gone within 5 s: a close
    that lingered for unacknowledged data would take 10."""
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(), cwd=ROOT
    )
    try:
        if server.handshaken.wait(30):
            proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=5)
    finally:
        proc.kill()
        server.close()
    return proc.returncode, stderr


def assert_credentials_refused(
    tool: str, client: list[str], server: list[str], pki, tmp_path
) -> None:
    """Each of :func:`credential_mistakes` given to ``tool``'s client (--ca) or server
    (the rest): exit 2 with the problem named, before any ``ready``, no traceback."""
    for options, words in credential_mistakes(pki, tmp_path):
        argv = [*(client if options[0] == "--ca" else server), *options]
        result = subprocess.run(
            python("-m", tool, *argv), capture_output=True, text=True, env=env(), timeout=20
        )
        assert result.returncode == 2 and words in result.stderr, (argv, result.stderr)
        assert "ready" not in result.stdout and "Traceback" not in result.stderr


def credential_mistakes(pki, tmp_path) -> list[tuple[list[str], str]]:
    """Server and client options GnuTLS refuses, and words of the error each gets."""
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a certificate\n")
    return [
        (["--cert", str(pki.server_cert), "--key", str(pki.client_key)], "do not match"),
        (["--cert", str(not_pem), "--key", str(pki.server_key)], f"--cert {not_pem}"),
        (["--cert", str(pki.server_cert), "--key", str(not_pem)], f"--key {not_pem}"),
        (["--ca", "/etc/passwd"], "no certificate in /etc/passwd"),
    ]
