"""TLS 1.3 from the system GnuTLS, driven over an in-memory stand-in for a QUIC socket.

Two handshakes run in two threads, connected back to back; the stand-in records what a
QUIC socket would be told (secrets, transport parameters, ALPN)."""

from __future__ import annotations

import errno
import queue
import threading

import pytest

from handshake import gnutls
from handshake.libquic import (
    HandshakeError,
    HandshakeParams,
    quic_client_handshake,
    quic_handshake,
    quic_server_handshake,
)
from quic import uapi
from tests.certs import make_pki

NO_APPLICATION_PROTOCOL = 0x100 + 120
TIMEOUT = 5.0


class MemorySocket:
    """The four HandshakeSocket operations over queues, recording what they are told."""

    def __init__(self, is_server: bool, transport_params: bytes) -> None:
        self.is_server = is_server
        self.transport_params = transport_params
        self.inbox: queue.Queue = queue.Queue()
        self.peer: MemorySocket | None = None
        self.secrets: dict[tuple[int, int], tuple[int, bytes]] = {}
        self.peer_params: bytes | None = None
        self.alpn = b""
        self.tamper = None  # optional function applied to outgoing messages

    def recv_handshake(self, timeout: float) -> tuple[int, bytes]:
        try:
            item = self.inbox.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(errno.ETIMEDOUT, "no handshake data") from None
        if item is None:
            raise ConnectionResetError(errno.ECONNRESET, "peer closed the connection")
        return item

    def close(self) -> None:
        """What a failed handshake does to a QUIC socket: the peer sees the close."""
        if self.peer is not None:
            self.peer.inbox.put(None)

    def send_handshake(self, level: int, data: bytes, more: bool) -> None:
        if self.tamper is not None:
            data = self.tamper(level, data)
        if self.peer is not None and data:
            self.peer.inbox.put((level, data))

    def setsockopt(self, level: int, optname: int, value: bytes) -> None:
        if optname == uapi.QUIC_SOCKOPT_CRYPTO_SECRET:
            rec = uapi.QuicCryptoSecret.unpack(value)
            self.secrets[(rec.level, rec.send)] = (rec.type, rec.secret)
        elif optname == uapi.QUIC_SOCKOPT_TRANSPORT_PARAM_EXT:
            self.peer_params = value
        elif optname == uapi.QUIC_SOCKOPT_ALPN:
            self.alpn = value

    def getsockopt(self, level: int, optname: int, buflen: int | bytes = 0) -> bytes:
        if optname == uapi.QUIC_SOCKOPT_TOKEN and self.is_server:
            raise OSError(errno.EINVAL, "a server has no token")
        if optname == uapi.QUIC_SOCKOPT_TRANSPORT_PARAM_EXT:
            return self.transport_params
        if optname == uapi.QUIC_SOCKOPT_SESSION_TICKET:
            return bytes(range(64))
        return b""


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def run_pair(
    client_params: HandshakeParams,
    server_params: HandshakeParams,
    *,
    connect: bool = True,
    tamper=None,
):
    client, server = MemorySocket(False, b"client-tp"), MemorySocket(True, b"server-tp")
    if connect:
        client.peer, server.peer = server, client
    client.tamper = tamper
    results: dict[str, object] = {}

    def serve() -> None:
        try:
            results["server"] = quic_handshake(server, server_params)
        except Exception as exc:
            results["server"] = exc
            server.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        results["client"] = quic_handshake(client, client_params)
    except Exception as exc:
        results["client"] = exc
        client.close()
    thread.join(TIMEOUT * 3)
    assert not thread.is_alive()
    assert gnutls.Session.live == 0 and gnutls.Credentials._live == 0  # nothing leaked
    return client, server, results["client"], results["server"]


def cert_server(pki, **extra) -> HandshakeParams:
    return HandshakeParams(
        is_server=True,
        cert_file=str(pki.server_cert),
        key_file=str(pki.server_key),
        alpns="smb",
        timeout=TIMEOUT,
        **extra,
    )


def cert_client(pki, **extra) -> HandshakeParams:
    extra.setdefault("server_name", "server.test")
    extra.setdefault("alpns", "sunrpc,smb")
    return HandshakeParams(is_server=False, ca_file=str(pki.ca), timeout=TIMEOUT, **extra)


def test_certificate_handshake_agrees_on_everything(pki) -> None:
    client, server, cres, sres = run_pair(cert_client(pki), cert_server(pki))
    assert cres.alpn == sres.alpn == "smb" and client.alpn == server.alpn == b"smb"
    for level in (uapi.QUIC_CRYPTO_HANDSHAKE, uapi.QUIC_CRYPTO_APP):
        assert client.secrets[(level, 1)] == server.secrets[(level, 0)]
        assert client.secrets[(level, 0)] == server.secrets[(level, 1)]
    assert client.peer_params == b"server-tp" and server.peer_params == b"client-tp"
    assert cres.peer_identity == "CN=server.test"


def test_alpn_mismatch_fails_with_no_application_protocol(pki) -> None:
    *_, cres, sres = run_pair(cert_client(pki, alpns="h3"), cert_server(pki))
    assert isinstance(sres, HandshakeError) and sres.code == NO_APPLICATION_PROTOCOL
    assert isinstance(cres, (HandshakeError, ConnectionResetError))


@pytest.mark.parametrize(
    ("server_extra", "client_extra"),
    [
        ({}, {"server_name": "wrong.test"}),
        ({"cert_file": "expired_cert", "key_file": "expired_key"}, {}),
        ({"cert_file": "rogue_cert", "key_file": "rogue_key"}, {}),
    ],
    ids=["wrong-name", "expired", "unknown-ca"],
)
def test_bad_certificates_are_rejected(pki, server_extra, client_extra) -> None:
    server = cert_server(pki)
    for field_name, attr in server_extra.items():
        setattr(server, field_name, str(getattr(pki, attr)))
    *_, cres, _ = run_pair(cert_client(pki, **client_extra), server)
    assert isinstance(cres, HandshakeError)
    assert "certificate" in str(cres).lower()


def test_mutual_tls(pki) -> None:
    client = cert_client(pki, cert_file=str(pki.client_cert), key_file=str(pki.client_key))
    server = cert_server(pki, cert_request=gnutls.GNUTLS_CERT_REQUIRE, ca_file=str(pki.ca))
    *_, cres, sres = run_pair(client, server)
    assert sres.peer_identity == "CN=client.test" and cres.alpn == "smb"
    *_, cres, sres = run_pair(cert_client(pki), server)
    assert isinstance(sres, HandshakeError)


def test_psk(pki) -> None:
    key = bytes(range(32))
    server = HandshakeParams(
        is_server=True, psk_identity="test1", psk_key=key, alpns="smb", timeout=TIMEOUT
    )
    client = HandshakeParams(
        is_server=False, psk_identity="test1", psk_key=key, alpns="smb", timeout=TIMEOUT
    )
    *_, cres, sres = run_pair(client, server)
    assert sres.peer_identity == "test1" and cres.alpn == "smb"
    wrong = HandshakeParams(
        is_server=False, psk_identity="test1", psk_key=bytes(32), alpns="smb", timeout=TIMEOUT
    )
    *_, cres, sres = run_pair(wrong, server)
    assert isinstance(cres, (HandshakeError, ConnectionResetError))
    assert isinstance(sres, HandshakeError)


def test_psk_file_through_libquic_calls(pki, tmp_path) -> None:
    psk = tmp_path / "psk.txt"
    psk.write_text("test1:" + bytes(range(32)).hex() + "\n")
    client, server = MemorySocket(False, b"c"), MemorySocket(True, b"s")
    client.peer, server.peer = server, client
    out = {}
    thread = threading.Thread(
        target=lambda: out.setdefault(
            "s", quic_server_handshake(server, str(psk), None, "smb", timeout=TIMEOUT)
        )
    )
    thread.start()
    cres = quic_client_handshake(client, str(psk), None, "smb", timeout=TIMEOUT)
    thread.join(TIMEOUT)
    assert cres.alpn == "smb" and out["s"].peer_identity == "test1"


def test_resumption_and_early_data(pki) -> None:
    *_, first, _ = run_pair(cert_client(pki, receive_ticket=2.0), cert_server(pki, early_data=True))
    assert first.session_data and not first.resumed
    client, server, cres, sres = run_pair(
        cert_client(pki, session_data=first.session_data, early_data=True),
        cert_server(pki, early_data=True),
    )
    assert cres.resumed and sres.resumed and sres.early_data_accepted
    assert (uapi.QUIC_CRYPTO_EARLY, 1) in client.secrets
    assert (
        client.secrets[(uapi.QUIC_CRYPTO_EARLY, 1)] == server.secrets[(uapi.QUIC_CRYPTO_EARLY, 0)]
    )


@pytest.mark.parametrize(
    "cipher",
    [uapi.TLS_CIPHER_AES_GCM_128, uapi.TLS_CIPHER_AES_GCM_256, uapi.TLS_CIPHER_CHACHA20_POLY1305],
)
def test_cipher_can_be_pinned(pki, cipher: int) -> None:
    client, _, cres, sres = run_pair(
        cert_client(pki, cipher=cipher), cert_server(pki, cipher=cipher)
    )
    assert cres.cipher == sres.cipher == cipher
    assert {kind for kind, _ in client.secrets.values()} == {cipher}


def test_silent_peer_times_out(pki) -> None:
    client = cert_client(pki)
    client.timeout = 0.5
    server = cert_server(pki)
    server.timeout = 0.5
    *_, cres, sres = run_pair(client, server, connect=False)
    assert isinstance(cres, TimeoutError) and isinstance(sres, TimeoutError)
    assert "timed out" in str(cres)


@pytest.mark.parametrize("damage", ["truncate", "corrupt"])
def test_damaged_handshake_bytes_fail_clearly(pki, damage) -> None:
    def tamper(level: int, data: bytes) -> bytes:
        if damage == "truncate":
            return data[: len(data) // 2]
        return data[:10] + bytes(b ^ 0x5A for b in data[10:40]) + data[40:]

    client = cert_client(pki)
    server = cert_server(pki)
    client.timeout = server.timeout = 1.0
    *_, cres, sres = run_pair(client, server, tamper=tamper)
    assert isinstance(sres, (HandshakeError, TimeoutError, ConnectionResetError))
    assert isinstance(cres, (HandshakeError, TimeoutError, ConnectionResetError))


def test_handshake_secret_protects_a_packet_the_peer_opens(pki) -> None:
    """The TLS layer and the wire layer agree: the server's first Handshake-level secret
    seals a packet that keys derived from the client's copy open."""
    from quic.crypto import PacketKeys
    from quic.packet import PacketType, encode_long_header

    client, server, *_ = run_pair(cert_client(pki), cert_server(pki))
    kind, server_secret = server.secrets[(uapi.QUIC_CRYPTO_HANDSHAKE, 1)]
    _, client_copy = client.secrets[(uapi.QUIC_CRYPTO_HANDSHAKE, 0)]
    size = 48 if kind == uapi.TLS_CIPHER_AES_GCM_256 else 32
    sealer = PacketKeys.from_secret(kind, server_secret[:size], uapi.QUIC_VERSION_V1)
    opener = PacketKeys.from_secret(kind, client_copy[:size], uapi.QUIC_VERSION_V1)
    payload = b"\x06\x00\x10" + b"handshake flight"
    header = encode_long_header(
        PacketType.HANDSHAKE,
        uapi.QUIC_VERSION_V1,
        b"c" * 8,
        b"s" * 8,
        b"",
        2 + len(payload) + 16,
        0,
        2,
    )
    packet = sealer.protect(header, payload, 0)
    assert opener.unprotect(packet, len(header) - 2, -1) == (header, 0, payload)


@pytest.mark.parametrize(("name", "ok"), [("127.0.0.1", True), ("::1", True), ("192.0.2.7", False)])
def test_ip_address_verification(pki, name: str, ok: bool) -> None:
    *_, cres, _ = run_pair(cert_client(pki, server_name=name), cert_server(pki))
    assert isinstance(cres, HandshakeError) != ok
