"""The ALPN a new client offers, read from its first Initial, and the refusal sent when no
listener speaks any of it (DESIGN §1: listener lookup by ALPN).

Several listeners may share one UDP port, each serving its own application protocols
(RFC 7301). The tunnel must pick one before any connection exists, so it peeks at the
ClientHello: the Initial keys derive from the client's Destination Connection ID alone
(RFC 9001 §5.2), which lets anyone on the path read them. Only the ClientHello's
extension list is walked, and only to the ALPN extension: the rest of the handshake
belongs to TLS, not to the tunnel.
"""

from __future__ import annotations

from .crypto import AEAD_TAG_SIZE, CipherSuite, DecryptionError, PacketKeys, initial_secrets
from .errors import QuicError, TransportError
from .frame import ConnectionClose, Crypto, FrameType, decode_frames
from .packet import Header, PacketType, encode_long_header, iter_packets
from .varint import Reader

# RFC 8446 §4: the handshake message type, and §4.1.2: the fixed part of a ClientHello
# before its session ID (legacy_version, random).
CLIENT_HELLO = 1
HANDSHAKE_HEADER_SIZE = 4
CLIENT_HELLO_FIXED_SIZE = 2 + 32
# RFC 7301 §3.1: application_layer_protocol_negotiation.
EXTENSION_ALPN = 16
# RFC 9001 §4.8: a TLS alert travels as CRYPTO_ERROR 0x100 + alert; RFC 7301 §3.2 names
# the alert a server sends when it supports none of the client's protocols.
NO_APPLICATION_PROTOCOL = 120
CRYPTO_ERROR_NO_APPLICATION_PROTOCOL = TransportError.CRYPTO_ERROR + NO_APPLICATION_PROTOCOL
NO_APPLICATION_PROTOCOL_REASON = b"no application protocol"
# The refusal is the server's first packet in its Initial space.
REFUSAL_PACKET_NUMBER = 0
REFUSAL_PN_LENGTH = 1


def split_alpns(value: bytes) -> list[bytes]:
    """The protocol names of a QUIC_SOCKOPT_ALPN value, a comma-separated list as libquic
    reads it (b"smb,sunrpc"); blanks around names and empty names are ignored."""
    return [name.strip() for name in value.rstrip(b"\0").split(b",") if name.strip()]


def offered_alpns(
    datagram: bytes, cid_length: int, keys: dict[int, PacketKeys] | None = None
) -> list[bytes] | None:
    """The protocols the ClientHello in a client's first datagram offers, in the client's
    order of preference, or None when they cannot be read from this datagram alone.

    None covers a ClientHello split across datagrams, one without an ALPN extension, and
    any malformed or undecryptable input: the caller then routes without ALPN. Nothing
    is raised, since the input comes straight off the network. ``keys``, if given,
    receives the client's Initial keys derived to read the datagram, by version: the
    connection the datagram starts needs the same, and need not derive them again.
    """
    crypto = initial_crypto(datagram, cid_length, keys)
    return None if crypto is None else alpns_in(crypto)


def initial_crypto(
    datagram: bytes, cid_length: int, keys: dict[int, PacketKeys] | None = None
) -> bytes | None:
    """The CRYPTO data of the datagram's Initial packets (see _initial_crypto_data), or
    None when they do not authenticate under the client Initial keys of their DCID.
    Anyone can make such keys, but a datagram whose packets do not open is not a
    client's first flight, and must not cost a listener a connection (and its
    application a handshake thread). ``keys`` receives the keys, as for offered_alpns."""
    try:
        return _initial_crypto_data(datagram, cid_length, keys)
    except (QuicError, DecryptionError):
        return None


def alpns_in(crypto: bytes) -> list[bytes] | None:
    """The ALPN list of the ClientHello at the start of ``crypto``, as offered_alpns."""
    try:
        hello = _client_hello(crypto)
        return None if hello is None else _alpn_extension(hello)
    except QuicError:
        return None


def _initial_crypto_data(
    datagram: bytes, cid_length: int, keys: dict[int, PacketKeys] | None = None
) -> bytes:
    """The CRYPTO stream of the datagram's Initial packets, contiguous from offset 0.

    Coalesced Initials (RFC 9000 §12.2) and CRYPTO frames in any order are joined; the
    data stops at the first gap, since what follows a gap cannot be parsed yet. The
    client's keys are derived once a version, into ``keys``.
    """
    frames: list[Crypto] = []
    if keys is None:
        keys = {}
    packets = iter_packets(datagram, cid_length)
    while True:
        try:
            header = next(packets)
        except StopIteration:
            break
        except QuicError:
            break  # bytes after the packets that are none, such as zero padding
        if header.packet_type != PacketType.INITIAL:
            break
        version_keys = keys.get(header.version)
        if version_keys is None:
            client_secret, _ = initial_secrets(header.dcid, header.version)
            version_keys = PacketKeys.from_secret(
                CipherSuite.AES_128_GCM, client_secret, header.version
            )
            keys[header.version] = version_keys
        packet = memoryview(datagram)[header.packet_start : header.packet_end]
        # A client's first packet numbers are small: any largest works for recovery.
        _, _, payload = version_keys.unprotect(packet, header.pn_offset - header.packet_start, -1)
        frames.extend(f for f in decode_frames(payload) if type(f) is Crypto)
    stream = bytearray()
    for frame in sorted(frames, key=lambda f: f.offset):
        if frame.offset > len(stream):
            break
        stream += frame.data[len(stream) - frame.offset :]
    return bytes(stream)


def _client_hello(stream: bytes) -> bytes | None:
    """The body of the ClientHello at the start of the CRYPTO stream, or None while it is
    incomplete or the stream starts with anything else."""
    if len(stream) < HANDSHAKE_HEADER_SIZE or stream[0] != CLIENT_HELLO:
        return None
    length = int.from_bytes(stream[1:HANDSHAKE_HEADER_SIZE], "big")
    if HANDSHAKE_HEADER_SIZE + length > len(stream):
        return None
    return stream[HANDSHAKE_HEADER_SIZE : HANDSHAKE_HEADER_SIZE + length]


def _vector(reader: Reader, length_size: int) -> Reader:
    """A reader over a TLS vector<..> (RFC 8446 §3.4) whose length takes ``length_size``
    bytes; the outer reader moves past it."""
    length = reader.uint(length_size)
    start = reader.pos
    reader.view(length)  # bounds-checks the length against what is left
    return Reader(reader.data, start, start + length)


def _alpn_extension(hello: bytes) -> list[bytes] | None:
    """The ProtocolNameList of the ClientHello's ALPN extension (RFC 7301 §3.1), or None
    without one. Malformed fields raise QuicError from :class:`Reader`."""
    reader = Reader(hello)
    reader.view(CLIENT_HELLO_FIXED_SIZE)
    _vector(reader, 1)  # legacy_session_id
    _vector(reader, 2)  # cipher_suites
    _vector(reader, 1)  # legacy_compression_methods
    extensions = _vector(reader, 2)
    while not extensions.eof():
        ext_type = extensions.uint(2)
        ext_data = _vector(extensions, 2)
        if ext_type == EXTENSION_ALPN:
            return _protocol_names(ext_data)
    return None


def _protocol_names(ext_data: Reader) -> list[bytes] | None:
    """ProtocolName protocol_name_list<2..2^16-1>, each name opaque<1..2^8-1>; an empty
    list or an empty name is malformed."""
    names_reader = _vector(ext_data, 2)
    names: list[bytes] = []
    while not names_reader.eof():
        name = names_reader.bytes(names_reader.uint8())
        if not name:
            return None
        names.append(name)
    return names or None


def no_application_protocol_close(header: Header, scid: bytes) -> bytes:
    """A server Initial carrying CONNECTION_CLOSE(CRYPTO_ERROR no_application_protocol) in
    answer to the client Initial ``header``, with ``scid`` as the server's CID.

    It is sealed with the server's Initial keys for the client's DCID and addressed to the
    client's SCID, as a server's first Initial would be. At well under 100 bytes it stays
    inside the 3x anti-amplification limit (RFC 9000 §8.1) of the 1200-byte Initial that
    caused it, and it is not ack-eliciting, so it needs no padding (RFC 9000 §14.1).
    """
    _, server_secret = initial_secrets(header.dcid, header.version)
    keys = PacketKeys.from_secret(CipherSuite.AES_128_GCM, server_secret, header.version)
    payload = bytearray()
    ConnectionClose(
        CRYPTO_ERROR_NO_APPLICATION_PROTOCOL, FrameType.CRYPTO, NO_APPLICATION_PROTOCOL_REASON
    ).encode(payload)
    packet_header = encode_long_header(
        PacketType.INITIAL,
        header.version,
        header.scid,
        scid,
        b"",
        REFUSAL_PN_LENGTH + len(payload) + AEAD_TAG_SIZE,
        REFUSAL_PACKET_NUMBER,
        REFUSAL_PN_LENGTH,
    )
    return keys.protect(packet_header, bytes(payload), REFUSAL_PACKET_NUMBER)
