"""ECN over UDP loopback (RFC 9000 §13.4): the tunnel marks and reads codepoints, and two
kquic endpoints validate each other's marks."""

from __future__ import annotations

import hashlib
import os
import socket
import threading

import pytest

from quic import uapi
from quic.ecn import CE, ECT_0, NOT_ECT, EcnState
from quic.socket import QuicSocket, quic_sendmsg
from quic.tunnel import Tunnel, enable_ecn
from tests.e2e.test_socket import TIMEOUT, connect, echo_digest, read_stream

APP_SPACE = 2
CID = bytes(range(8))

# (listening address, address the client connects to): IPv4, IPv6, and IPv4 clients of
# a dual-stack socket, whose datagrams carry IP_TOS rather than IPV6_TCLASS.
PATHS = {
    "ipv4": ("127.0.0.1", "127.0.0.1"),
    "ipv6": ("::1", "::1"),
    "v4-mapped": ("::", "127.0.0.1"),
}


def ecn_outcome(sock: QuicSocket) -> tuple[EcnState, list[int] | None]:
    """The validation state of what ``sock`` sent, and the counts of what it received."""
    return sock.conn.recovery.ecn.state, sock.conn.spaces[APP_SPACE].ecn_counts


@pytest.mark.parametrize("path", PATHS)
def test_kquic_peers_validate_ecn(pki, server_thread, path) -> None:
    listen_host, connect_host = PATHS[path]
    srv = QuicSocket(socket.AF_INET6 if ":" in listen_host else socket.AF_INET)
    srv.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_ALPN, b"smb")
    srv.bind((listen_host, 0))
    srv.listen()
    srv.settimeout(TIMEOUT)

    server = server_thread(lambda: echo_digest(srv, pki, 1, report=ecn_outcome))
    family = socket.AF_INET6 if ":" in connect_host else socket.AF_INET
    cli = connect(srv.getsockname()[1], pki, family)
    cli.settimeout(30)
    payload = os.urandom(1 << 20)
    quic_sendmsg(cli, payload, -1, uapi.MSG_QUIC_STREAM_NEW | uapi.MSG_QUIC_STREAM_FIN)
    _, digest = read_stream(cli)
    assert digest == hashlib.sha256(payload).digest()
    client_state, client_counts = ecn_outcome(cli)
    server_state, server_counts = server.join()
    cli.close()
    srv.close()
    assert client_state == server_state == EcnState.CAPABLE
    # What each received arrived ECT(0)-marked, none remarked or CE on loopback.
    for ect0, ect1, ce in (client_counts, server_counts):
        assert ect0 > 0 and ect1 == ce == 0
    assert server_counts[0] > 100  # a megabyte in 1200-byte datagrams


class Recorder:
    """An endpoint of a tunnel that keeps the codepoints of the datagrams it receives."""

    def __init__(self) -> None:
        self.codepoints: list[int] = []
        self.arrived = threading.Event()
        self.expected = 0

    def datagrams_received(self, datagrams: list, addr, now: float, ecn: int) -> None:
        self.codepoints.extend(ecn for _ in datagrams)
        if len(self.codepoints) >= self.expected:
            self.arrived.set()

    def flush(self, now: float) -> None:
        pass

    def timer_expired(self, now: float) -> None:
        pass


# (receiver's address, sender's address, the address the sender sends to).
TUNNEL_PATHS = {
    "ipv4": ("127.0.0.1", "127.0.0.1", "127.0.0.1"),
    "ipv6": ("::1", "::1", "::1"),
    "dual-stack receiver": ("::", "127.0.0.1", "127.0.0.1"),
    "dual-stack sender": ("127.0.0.1", "::", "::ffff:127.0.0.1"),
}


@pytest.mark.parametrize("path", TUNNEL_PATHS)
def test_tunnel_marks_per_datagram_and_reports_codepoints(path) -> None:
    """A tunnel marks everything ECT(0) by socket option; a datagram may go out with
    another codepoint, as a connection whose validation failed sends them."""
    receiver_host, sender_host, destination = TUNNEL_PATHS[path]
    receiver = Tunnel((receiver_host, 0), len(CID))
    sender = Tunnel((sender_host, 0), len(CID))
    try:
        assert receiver.ecn_receive and sender.ecn_codepoint == ECT_0
        recorder = Recorder()
        recorder.expected = 4
        receiver.add_route(CID, recorder)
        short_header = b"\x40" + CID + os.urandom(40)
        addr = (destination, receiver.local_addr[1])
        for ecn in (None, NOT_ECT, ECT_0, CE):
            sender.sendto(short_header, addr, ecn)
        assert recorder.arrived.wait(TIMEOUT)
        assert recorder.codepoints == [ECT_0, NOT_ECT, ECT_0, CE]
    finally:
        sender.close()
        receiver.close()


class RefusingSocket:
    """A socket whose kernel knows no TOS, Traffic Class or per-datagram options."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def setsockopt(self, level: int, option: int, value: int) -> None:
        raise OSError(92, "Protocol not available")

    def sendmsg(self, buffers, ancdata, flags, addr) -> int:
        raise OSError(22, "Invalid argument")

    def sendto(self, data: bytes, addr) -> int:
        self.sent.append(data)
        return len(data)


def test_without_kernel_support_the_tunnel_goes_without_ecn() -> None:
    assert enable_ecn(RefusingSocket(), socket.AF_INET6) == (NOT_ECT, False)


def test_a_refused_per_datagram_codepoint_stops_marking_but_sends() -> None:
    tunnel = Tunnel.__new__(Tunnel)  # the sending half only: no socket, no I/O thread
    tunnel.sock, tunnel.family, tunnel.ecn_codepoint = RefusingSocket(), socket.AF_INET, ECT_0
    tunnel._thread = threading.main_thread()  # counts as running: none is to be started
    tunnel.sendto(b"unmarked", ("127.0.0.1", 9), NOT_ECT)
    tunnel.sendto(b"default", ("127.0.0.1", 9))
    assert tunnel.sock.sent == [b"unmarked", b"default"]
    assert tunnel.ecn_codepoint == NOT_ECT
