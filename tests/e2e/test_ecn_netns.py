"""ECN through a real kernel path that remarks: two network namespaces joined by a veth
pair, with an nftables rule on the client's side that clears the ECN bits of what it
sends (bleaching) or sets CE on it (a congested router). Needs root, ``ip`` and ``nft``;
skipped where any is missing."""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import threading
from collections.abc import Callable

import pytest

from handshake.libquic import quic_client_handshake
from quic import uapi
from quic.ecn import EcnState
from quic.socket import QuicSocket, quic_sendmsg
from tests.e2e.test_socket import TIMEOUT, echo_digest, read_stream

pytestmark = pytest.mark.netns

CLONE_NEWNET = 0x40000000
CLIENT_IP, SERVER_IP = "10.201.0.1", "10.201.0.2"
APP_SPACE = 2
# The rule on the client namespace's way out, per path.
REMARK = {
    "bleaching": "ip ecn set not-ect",
    "ce-marking": "ip ecn ect0 ip ecn set ce",
}


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=10)


class Namespaces:
    """A client and a server namespace, a veth pair between them, and the remark rule."""

    def __init__(self) -> None:
        tag = os.getpid()
        self.client, self.server = f"kquic-ecn-c{tag}", f"kquic-ecn-s{tag}"
        self.created: list[str] = []

    def build(self, remark: str) -> None:
        for name in (self.client, self.server):
            sh("ip", "netns", "add", name)
            self.created.append(name)
        sh("ip", "link", "add", "veth-c", "netns", self.client, "type", "veth", "peer",
           "name", "veth-s", "netns", self.server)  # fmt: skip
        for ns, dev, ip in ((self.client, "veth-c", CLIENT_IP), (self.server, "veth-s", SERVER_IP)):
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        nft = ("ip", "netns", "exec", self.client, "nft")
        sh(*nft, "add", "table", "ip", "ecntest")
        sh(*nft, "add chain ip ecntest out { type filter hook postrouting priority 0; }")
        sh(*nft, f"add rule ip ecntest out meta l4proto udp {remark}")

    def close(self) -> None:
        for name in self.created:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


def can_make_namespaces() -> str | None:
    """Why this machine cannot run these tests, or None if it can."""
    if os.geteuid() != 0:
        return "needs root"
    if not shutil.which("ip") or not shutil.which("nft"):
        return "needs ip and nft"
    return None


@pytest.fixture(params=list(REMARK))
def path(request):
    reason = can_make_namespaces()
    if reason:
        pytest.skip(reason)
    namespaces = Namespaces()
    try:
        namespaces.build(REMARK[request.param])
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        namespaces.close()
        stderr = (getattr(exc, "stderr", None) or b"").decode(errors="replace")
        pytest.skip(f"cannot build the namespaces: {stderr[-300:]}")
    try:
        yield request.param, namespaces
    finally:
        namespaces.close()


def in_namespace(name: str, target: Callable):
    """``target`` run in a thread that has entered network namespace ``name``: the
    sockets it makes live there, whatever thread uses them later."""
    outcome: dict = {}

    def run() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(fd)
            outcome["result"] = target()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def finish(thread: threading.Thread, outcome: dict):
    thread.join(60)
    assert not thread.is_alive(), "namespace thread did not finish in time"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def ecn_outcome(sock: QuicSocket) -> dict:
    conn = sock.conn
    return {
        "state": conn.recovery.ecn.state,
        "received": conn.spaces[APP_SPACE].ecn_counts,
        "ssthresh": conn.recovery.cc.ssthresh,
    }


def test_remarking_path(pki, path) -> None:
    kind, namespaces = path
    ready = threading.Event()
    port: list[int] = []

    def serve() -> dict:
        srv = QuicSocket()
        srv.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_ALPN, b"smb")
        srv.bind((SERVER_IP, 0))
        srv.listen()
        srv.settimeout(TIMEOUT)
        port.append(srv.getsockname()[1])
        ready.set()
        try:
            return echo_digest(srv, pki, 1, report=ecn_outcome)
        finally:
            srv.close()

    payload = os.urandom(2 << 20)

    def client() -> dict:
        assert ready.wait(TIMEOUT)
        cli = QuicSocket()
        cli.settimeout(30)
        cli.connect((SERVER_IP, port[0]))
        quic_client_handshake(cli, None, "server.test", "smb", ca_file=str(pki.ca), timeout=10)
        try:
            quic_sendmsg(cli, payload, -1, uapi.MSG_QUIC_STREAM_NEW | uapi.MSG_QUIC_STREAM_FIN)
            _, digest = read_stream(cli)
            assert digest == hashlib.sha256(payload).digest()
            return ecn_outcome(cli)
        finally:
            cli.close()

    server = in_namespace(namespaces.server, serve)
    client_side = finish(*in_namespace(namespaces.client, client))
    server_side = finish(*server)
    # The server's marks reach the client untouched and validate.
    assert server_side["state"] == EcnState.CAPABLE
    assert client_side["received"][0] > 0
    if kind == "bleaching":
        assert client_side["state"] == EcnState.FAILED
        assert server_side["received"] is None  # not one mark crossed
    else:
        ect0, ect1, ce = server_side["received"]
        assert ect0 == ect1 == 0 and ce > 100
        assert client_side["state"] == EcnState.CAPABLE
        assert client_side["ssthresh"] != float("inf")  # CE was a congestion signal
