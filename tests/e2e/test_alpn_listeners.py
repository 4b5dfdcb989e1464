"""Listeners sharing one UDP port, chosen by the client's ALPN (DESIGN §1), as lxin/quic's
alpn_test does: each client reaches the listener of its protocol, a wildcard listener
gets only the clients nobody else serves, and a client nobody serves is refused with
CRYPTO_ERROR no_application_protocol before any connection exists."""

from __future__ import annotations

import errno

import pytest

from handshake.libquic import HandshakeError, quic_client_handshake, quic_server_handshake
from quic import uapi
from quic.socket import QuicSocket

TIMEOUT = 3.0
NO_APPLICATION_PROTOCOL = 0x178


def alpn_listener(alpn: bytes, port: int = 0) -> QuicSocket:
    sock = QuicSocket()
    sock.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_ALPN, alpn)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    sock.settimeout(TIMEOUT)
    return sock


def listeners_on_one_port(*alpns: bytes) -> list[QuicSocket]:
    first = alpn_listener(alpns[0])
    port = first.getsockname()[1]
    return [first, *(alpn_listener(alpn, port) for alpn in alpns[1:])]


def client(port: int, pki, alpn: str, version: int = uapi.QUIC_VERSION_V1) -> QuicSocket:
    """A client socket after its handshake offering ``alpn`` (a comma list)."""
    sock = QuicSocket()
    sock.settimeout(TIMEOUT)
    if version != uapi.QUIC_VERSION_V1:
        config = uapi.QuicConfig.unpack(sock.getsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_CONFIG))
        config.version = version
        sock.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_CONFIG, config.pack())
    sock.connect(("127.0.0.1", port))
    try:
        quic_client_handshake(sock, None, "server.test", alpn, ca_file=str(pki.ca), timeout=TIMEOUT)
    except BaseException:
        sock.close()
        raise
    return sock


def serve_one(srv: QuicSocket, pki, alpn: str) -> bytes:
    """Accept one client on ``srv``, complete the TLS handshake offering ``alpn``, and
    return the ALPN negotiated on the child."""
    child, _ = srv.accept()
    child.settimeout(TIMEOUT)
    try:
        quic_server_handshake(child, str(pki.server_key), str(pki.server_cert), alpn, timeout=5)
        return child.getsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_ALPN)
    finally:
        child.close()


def negotiated(sock: QuicSocket) -> bytes:
    return sock.getsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_ALPN)


def assert_nothing_queued(srv: QuicSocket) -> None:
    srv.settimeout(0)
    with pytest.raises(OSError) as info:
        srv.accept()
    assert info.value.errno == errno.EAGAIN


def close_all(*socks: QuicSocket) -> None:
    for sock in socks:
        sock.close()


def test_each_client_reaches_the_listener_of_its_alpn(pki, server_thread) -> None:
    smb, rpc = listeners_on_one_port(b"smb", b"sunrpc")
    port = smb.getsockname()[1]
    assert rpc.getsockname()[1] == port and smb.tunnel is rpc.tunnel
    smb_server = server_thread(lambda: serve_one(smb, pki, "smb"))
    rpc_server = server_thread(lambda: serve_one(rpc, pki, "sunrpc"))
    rpc_client = client(port, pki, "sunrpc")  # the second listener first: not just order
    smb_client = client(port, pki, "smb")
    assert rpc_server.join() == b"sunrpc" and negotiated(rpc_client) == b"sunrpc"
    assert smb_server.join() == b"smb" and negotiated(smb_client) == b"smb"
    close_all(smb_client, rpc_client, smb, rpc)


def test_client_preference_order_chooses_among_listeners(pki, server_thread) -> None:
    """A client offering "sunrpc,smb" prefers sunrpc, though the smb listener came first."""
    smb, rpc = listeners_on_one_port(b"smb", b"sunrpc")
    server = server_thread(lambda: serve_one(rpc, pki, "sunrpc"))
    cli = client(smb.getsockname()[1], pki, "sunrpc,smb")
    assert server.join() == b"sunrpc" and negotiated(cli) == b"sunrpc"
    assert_nothing_queued(smb)
    close_all(cli, smb, rpc)


@pytest.mark.parametrize("version", [uapi.QUIC_VERSION_V1, uapi.QUIC_VERSION_V2])
def test_client_nobody_serves_is_refused_with_no_application_protocol(pki, version) -> None:
    smb, rpc = listeners_on_one_port(b"smb", b"sunrpc")
    with pytest.raises((HandshakeError, ConnectionResetError)) as info:
        client(smb.getsockname()[1], pki, "h3", version)
    text = str(info.value) + repr(getattr(info.value, "code", ""))
    assert f"0x{NO_APPLICATION_PROTOCOL:x}" in text or str(NO_APPLICATION_PROTOCOL) in text
    assert_nothing_queued(smb)
    assert_nothing_queued(rpc)
    assert not smb.tunnel.routes  # no connection was made for the refused client
    close_all(smb, rpc)


def test_wildcard_listener_gets_only_unmatched_clients(pki, server_thread) -> None:
    """The wildcard registers first, yet the smb client still goes to the smb listener."""
    wildcard, smb = listeners_on_one_port(b"", b"smb")
    port = smb.getsockname()[1]
    wild_server = server_thread(lambda: serve_one(wildcard, pki, "h3"))
    smb_server = server_thread(lambda: serve_one(smb, pki, "smb"))
    smb_client = client(port, pki, "smb")
    h3_client = client(port, pki, "h3")
    assert smb_server.join() == b"smb" and negotiated(smb_client) == b"smb"
    assert wild_server.join() == b"h3" and negotiated(h3_client) == b"h3"
    assert_nothing_queued(wildcard)
    assert_nothing_queued(smb)
    close_all(smb_client, h3_client, wildcard, smb)


def test_single_listener_without_alpn_takes_everyone(pki, server_thread) -> None:
    """One listener and no ALPN on it: the tunnel does not look at the ClientHello."""
    (srv,) = listeners_on_one_port(b"")
    server = server_thread(lambda: serve_one(srv, pki, "sunrpc"))
    cli = client(srv.getsockname()[1], pki, "sunrpc")
    assert server.join() == b"sunrpc" and negotiated(cli) == b"sunrpc"
    close_all(cli, srv)


def test_alpn_list_reads_the_comma_separated_socket_option() -> None:
    """QUIC_SOCKOPT_ALPN holds a comma list, as libquic reads it."""
    srv = alpn_listener(b"smb, sunrpc,")
    assert srv.alpn_list() == [b"smb", b"sunrpc"]
    srv.close()
