"""Reading the client's ALPN from its first Initial, and the Initial that refuses it."""

from __future__ import annotations

import os
import socket
import threading
from itertools import pairwise

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handshake.libquic import quic_client_handshake
from quic import uapi
from quic.alpn import (
    CRYPTO_ERROR_NO_APPLICATION_PROTOCOL,
    EXTENSION_ALPN,
    no_application_protocol_close,
    offered_alpns,
    split_alpns,
)
from quic.connection import Connection, ConnectionConfig, State
from quic.crypto import AEAD_TAG_SIZE, CipherSuite, PacketKeys, initial_secrets
from quic.frame import ConnectionClose, Crypto, FrameType, decode_frames
from quic.packet import MIN_INITIAL_SIZE, PacketType, encode_long_header, parse_header
from quic.socket import QuicSocket
from quic.transport_params import default_local_parameters
from quic.tunnel import Tunnel

CID_LENGTH = 8
VERSIONS = [uapi.QUIC_VERSION_V1, uapi.QUIC_VERSION_V2]
SERVER_ADDR = ("127.0.0.1", 4433)


def gnutls_initial(alpns: str, version: int) -> bytes:
    """The first datagram of a real client handshake (GnuTLS over a QuicSocket), caught
    on a plain UDP socket that never answers."""
    catcher = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    catcher.bind(("127.0.0.1", 0))
    catcher.settimeout(5)
    cli = QuicSocket()
    config = uapi.QuicConfig.unpack(cli.getsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_CONFIG))
    config.version = version
    cli.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_CONFIG, config.pack())
    cli.settimeout(1)
    cli.connect(catcher.getsockname())

    def handshake() -> None:
        try:
            quic_client_handshake(cli, None, "server.test", alpns, timeout=1)
        except Exception:
            pass  # nobody answers: the handshake times out, as intended

    thread = threading.Thread(target=handshake, daemon=True)
    thread.start()
    try:
        return catcher.recv(65536)
    finally:
        thread.join(5)
        cli.close()
        catcher.close()


@pytest.fixture(scope="module")
def real_initials() -> dict[int, bytes]:
    return {version: gnutls_initial("smb,sunrpc", version) for version in VERSIONS}


def client_hello(extensions: bytes) -> bytes:
    """A minimal TLS 1.3 ClientHello handshake message (RFC 8446 §4.1.2)."""
    body = (
        b"\x03\x03"
        + os.urandom(32)
        + b"\x00"  # legacy_session_id
        + b"\x00\x02\x13\x01"  # cipher_suites: TLS_AES_128_GCM_SHA256
        + b"\x01\x00"  # legacy_compression_methods: null
        + len(extensions).to_bytes(2, "big")
        + extensions
    )
    return b"\x01" + len(body).to_bytes(3, "big") + body


def extension(ext_type: int, data: bytes) -> bytes:
    return ext_type.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data


def alpn_extension(*names: bytes) -> bytes:
    names_list = b"".join(bytes((len(n),)) + n for n in names)
    return extension(EXTENSION_ALPN, len(names_list).to_bytes(2, "big") + names_list)


def seal_initial(
    payload: bytes, dcid: bytes, version: int, pn: int = 0, *, pad: bool = True
) -> bytes:
    """One client Initial protecting ``payload`` (already framed), padded to fill a
    1200-byte datagram unless ``pad`` is False (to coalesce another after it)."""
    client_secret, _ = initial_secrets(dcid, version)
    keys = PacketKeys.from_secret(CipherSuite.AES_128_GCM, client_secret, version)
    overhead = 1 + 4 + 1 + len(dcid) + 1 + CID_LENGTH + 1 + 2 + 4 + AEAD_TAG_SIZE
    if pad:
        payload += bytes(max(0, MIN_INITIAL_SIZE - overhead - len(payload)))
    header = encode_long_header(
        PacketType.INITIAL,
        version,
        dcid,
        b"c" * CID_LENGTH,
        b"",
        4 + len(payload) + AEAD_TAG_SIZE,
        pn,
        4,
    )
    return keys.protect(header, payload, pn)


def crypto_frames(data: bytes, *cuts: int) -> list[bytes]:
    """``data`` as CRYPTO frames split at ``cuts``."""
    bounds = [0, *cuts, len(data)]
    frames = []
    for start, end in pairwise(bounds):
        buf = bytearray()
        Crypto(start, data[start:end]).encode(buf)
        frames.append(bytes(buf))
    return frames


def client_connection(version: int) -> Connection:
    return Connection(
        ConnectionConfig(is_client=True, version=version, local_params=default_local_parameters()),
        dcid=os.urandom(CID_LENGTH),
        scid=os.urandom(CID_LENGTH),
        peer_addr=SERVER_ADDR,
        now=1000.0,
    )


def connection_initials(hello: bytes, version: int) -> tuple[Connection, list[bytes]]:
    """The datagrams a client Connection sends for ``hello``: how kquic pads and frames."""
    conn = client_connection(version)
    conn.handshake_send(uapi.QUIC_CRYPTO_INITIAL, hello)
    return conn, conn.datagrams_to_send(1000.0)


# ---------------------------------------------------------------------------
# reading the offer


@pytest.mark.parametrize("version", VERSIONS)
def test_real_gnutls_initial(real_initials, version) -> None:
    datagram = real_initials[version]
    assert parse_header(datagram, 0, CID_LENGTH).version == version
    assert offered_alpns(datagram, CID_LENGTH) == [b"smb", b"sunrpc"]


@pytest.mark.parametrize("version", VERSIONS)
def test_initial_from_a_client_connection(version) -> None:
    hello = client_hello(extension(0, b"") + alpn_extension(b"h3", b"hq-interop"))
    _, datagrams = connection_initials(hello, version)
    assert offered_alpns(datagrams[0], CID_LENGTH) == [b"h3", b"hq-interop"]


def test_real_client_without_alpn_offers_none() -> None:
    datagram = gnutls_initial("", uapi.QUIC_VERSION_V1)
    assert offered_alpns(datagram, CID_LENGTH) is None


@pytest.mark.parametrize("version", VERSIONS)
def test_reading_the_alpn_leaves_the_clients_initial_keys(version) -> None:
    """The keys derived to read the ALPN are the client's Initial keys of its version:
    the connection the Initial starts takes them instead of deriving its own."""
    _, datagrams = connection_initials(client_hello(alpn_extension(b"h3")), version)
    keys: dict[int, PacketKeys] = {}
    assert offered_alpns(datagrams[0], CID_LENGTH, keys) == [b"h3"]
    client_secret, _ = initial_secrets(parse_header(datagrams[0], 0, CID_LENGTH).dcid, version)
    expected = PacketKeys.from_secret(CipherSuite.AES_128_GCM, client_secret, version)
    assert list(keys) == [version]
    assert (keys[version].key, keys[version].iv, keys[version].hp) == (
        expected.key,
        expected.iv,
        expected.hp,
    )


def test_the_tunnel_hands_the_keys_it_read_with_to_the_listener() -> None:
    """A listener chosen by ALPN gets the keys the tunnel derived to read the ALPN."""
    got: list = []
    arrived = threading.Event()

    class Listener:
        def alpn_list(self) -> list[bytes]:
            return [b"h3"]

        def accept_initial(self, tunnel, data, addr, dcid, now, client_keys=None):
            got.append((dcid, client_keys))
            arrived.set()

    _, datagrams = connection_initials(client_hello(alpn_extension(b"h3")), 1)
    tunnel = Tunnel(("127.0.0.1", 0), CID_LENGTH)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        tunnel.add_listener(Listener())
        sender.sendto(datagrams[0], tunnel.local_addr)
        assert arrived.wait(5)
    finally:
        sender.close()
        tunnel.close()
    (dcid, client_keys), *_ = got
    client_secret, _ = initial_secrets(dcid, 1)
    assert client_keys.key == PacketKeys.from_secret(CipherSuite.AES_128_GCM, client_secret, 1).key


def test_client_hello_split_across_datagrams_is_unreadable() -> None:
    hello = client_hello(extension(21, bytes(3000)) + alpn_extension(b"smb"))
    _, datagrams = connection_initials(hello, uapi.QUIC_VERSION_V1)
    assert len(datagrams) > 1
    assert offered_alpns(datagrams[0], CID_LENGTH) is None


@pytest.mark.parametrize("version", VERSIONS)
def test_crypto_frames_out_of_order_and_coalesced(version) -> None:
    hello = client_hello(alpn_extension(b"smb") + extension(21, bytes(100)))
    first, second, third = crypto_frames(hello, 40, 90)
    dcid = os.urandom(CID_LENGTH)
    one = seal_initial(third + first, dcid, version, pn=0, pad=False)
    two = seal_initial(second, dcid, version, pn=1)
    assert offered_alpns(one + two, CID_LENGTH) == [b"smb"]
    assert offered_alpns(one + bytes(1200), CID_LENGTH) is None  # the gap at 40 stays open


def test_zero_padding_after_the_packet_is_ignored() -> None:
    hello = client_hello(alpn_extension(b"smb"))
    datagram = seal_initial(b"".join(crypto_frames(hello)), os.urandom(8), uapi.QUIC_VERSION_V1)
    assert offered_alpns(datagram + bytes(200), CID_LENGTH) == [b"smb"]


@pytest.mark.parametrize(
    "extensions",
    [
        b"",  # no extensions at all
        extension(0, b"\x00\x00"),  # no ALPN extension
        extension(EXTENSION_ALPN, b"\x00\x00"),  # empty protocol list
        extension(EXTENSION_ALPN, b"\x00\x01\x00"),  # empty protocol name
        extension(EXTENSION_ALPN, b"\x00\x05\x03smb"),  # list longer than the extension
        extension(EXTENSION_ALPN, b"\x00\x04\x04smb"),  # name longer than the list
        extension(EXTENSION_ALPN, b"\x00\x04\x03smb")[:-2],  # extension cut short
    ],
)
def test_missing_or_malformed_alpn_is_none(extensions) -> None:
    hello = client_hello(extensions)
    datagram = seal_initial(b"".join(crypto_frames(hello)), os.urandom(8), uapi.QUIC_VERSION_V1)
    assert offered_alpns(datagram, CID_LENGTH) is None


def test_not_a_client_hello_is_none() -> None:
    hello = bytearray(client_hello(alpn_extension(b"smb")))
    hello[0] = 2  # ServerHello
    datagram = seal_initial(b"".join(crypto_frames(bytes(hello))), os.urandom(8), 1)
    assert offered_alpns(datagram, CID_LENGTH) is None


@pytest.mark.parametrize(
    "datagram",
    [
        b"",
        b"\xc0",
        os.urandom(1300),
        b"\xc3" + bytes(1250),
        b"\x40" + bytes(1250),  # a short header
        (0x1A2A3A4A).to_bytes(4, "big") + bytes(1200),
    ],
)
def test_garbage_is_none(datagram) -> None:
    assert offered_alpns(datagram, CID_LENGTH) is None


def test_truncated_and_bit_flipped_initials_are_none(real_initials) -> None:
    datagram = real_initials[uapi.QUIC_VERSION_V1]
    for cut in (10, 100, 600, len(datagram) - 1):
        assert offered_alpns(datagram[:cut], CID_LENGTH) is None
    flipped = bytearray(datagram)
    flipped[700] ^= 0x01
    assert offered_alpns(bytes(flipped), CID_LENGTH) is None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzzed_datagrams_never_raise(real_initials, data) -> None:
    """Corruption of the wire bytes: header fields, lengths, ciphertext."""
    base = bytearray(real_initials[uapi.QUIC_VERSION_V1])
    for _ in range(data.draw(st.integers(1, 8))):
        index = data.draw(st.integers(0, len(base) - 1))
        base[index] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(base)))
    result = offered_alpns(bytes(base[:cut]), CID_LENGTH)
    assert result is None or all(isinstance(name, bytes) for name in result)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzzed_client_hellos_never_raise(data) -> None:
    """Corruption under the protection, so the ClientHello parser itself is exercised."""
    hello = bytearray(client_hello(extension(0, b"\x00\x00") + alpn_extension(b"smb", b"h3")))
    for _ in range(data.draw(st.integers(1, 6))):
        index = data.draw(st.integers(0, len(hello) - 1))
        hello[index] = data.draw(st.integers(0, 255))
    hello = hello[: data.draw(st.integers(0, len(hello)))]
    framed = b"".join(crypto_frames(bytes(hello))) if hello else b"\x01"
    datagram = seal_initial(framed, b"d" * CID_LENGTH, uapi.QUIC_VERSION_V1)
    result = offered_alpns(datagram, CID_LENGTH)
    assert result is None or all(isinstance(name, bytes) and name for name in result)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_never_raise(blob) -> None:
    assert offered_alpns(blob, CID_LENGTH) is None


def test_split_alpns_follows_libquic() -> None:
    assert split_alpns(b"smb") == [b"smb"]
    assert split_alpns(b"smb, sunrpc,") == [b"smb", b"sunrpc"]
    assert split_alpns(b"") == [] and split_alpns(b"\0\0") == []


# ---------------------------------------------------------------------------
# the refusal


@pytest.mark.parametrize("version", VERSIONS)
def test_refusal_closes_the_client_with_no_application_protocol(version) -> None:
    conn, datagrams = connection_initials(client_hello(alpn_extension(b"h3")), version)
    header = parse_header(datagrams[0], 0, CID_LENGTH)
    server_cid = os.urandom(CID_LENGTH)
    refusal = no_application_protocol_close(header, server_cid)
    assert len(refusal) * 3 <= len(datagrams[0])  # within anti-amplification, by far
    reply = parse_header(refusal, 0, CID_LENGTH)
    assert reply.packet_type == PacketType.INITIAL and reply.version == version
    assert reply.dcid == header.scid and reply.scid == server_cid and reply.token == b""
    conn.receive_datagram(refusal, SERVER_ADDR, 1000.1)
    assert conn.state >= State.DRAINING
    info = conn.close_info
    assert info.remote and info.error_code == CRYPTO_ERROR_NO_APPLICATION_PROTOCOL == 0x178
    assert info.frame_type == FrameType.CRYPTO


def test_refusal_frame_as_sent() -> None:
    _, datagrams = connection_initials(client_hello(alpn_extension(b"h3")), 1)
    header = parse_header(datagrams[0], 0, CID_LENGTH)
    refusal = no_application_protocol_close(header, b"s" * CID_LENGTH)
    _, server_secret = initial_secrets(header.dcid, uapi.QUIC_VERSION_V1)
    keys = PacketKeys.from_secret(CipherSuite.AES_128_GCM, server_secret, uapi.QUIC_VERSION_V1)
    reply = parse_header(refusal, 0, CID_LENGTH)
    _, pn, payload = keys.unprotect(refusal, reply.pn_offset, -1)
    assert pn == 0
    assert decode_frames(payload) == [
        ConnectionClose(0x178, FrameType.CRYPTO, b"no application protocol")
    ]
