"""ECN against aioquic, which neither marks nor reports ECN counts: a kquic client must
find validation failed (RFC 9000 §13.4.2.1), stop marking, and lose no data."""

from __future__ import annotations

from handshake.libquic import quic_client_handshake
from quic import uapi
from quic.ecn import NOT_ECT, EcnState
from quic.socket import QuicSocket, quic_recvmsg, quic_sendmsg
from tests.interop.conftest import aioquic_server

FILE = "medium.bin"


def fetch(sock: QuicSocket, path: str) -> bytes:
    """One hq-interop request: ``GET path`` on a new stream, the body until FIN."""
    quic_sendmsg(
        sock, f"GET /{path}\r\n".encode(), -1, uapi.MSG_QUIC_STREAM_NEW | uapi.MSG_QUIC_STREAM_FIN
    )
    body = bytearray()
    while True:
        data, _, flags = quic_recvmsg(sock, 1 << 16)
        body += data
        if flags & uapi.MSG_QUIC_STREAM_FIN:
            return bytes(body)


def test_kquic_client_fails_ecn_validation_against_aioquic(pki, www, start_server) -> None:
    server = start_server(aioquic_server(pki, www))
    sock = QuicSocket()
    sock.settimeout(30)
    sock.connect(("127.0.0.1", server.port))
    quic_client_handshake(sock, None, "server.test", "hq-interop", ca_file=str(pki.ca), timeout=10)
    try:
        assert fetch(sock, FILE) == (www / FILE).read_bytes()
        assert sock.conn.recovery.ecn.state == EcnState.FAILED
        assert sock.conn.ecn_codepoint == NOT_ECT
        # aioquic does not mark either: nothing was counted on our side.
        assert all(space.ecn_counts is None for space in sock.conn.spaces)
    finally:
        sock.close()
