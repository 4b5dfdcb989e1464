"""QUIC packets on the wire: headers of v1 and v2 (RFC 9000 §17, RFC 9369 §3.2),
coalescing, Version Negotiation, Retry, and packet numbers (RFC 9000 §17.1, App. A).

Only what header protection leaves readable is parsed here; the first byte's low bits
and the packet number are read again after :mod:`quic.crypto` removes the mask.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import IntEnum

from . import uapi
from .errors import QuicError, TransportError
from .varint import Reader, encode_varint, encode_varint_len

PACKET_NUMBER_MAX = (1 << 62) - 1


def packet_number_length(full_pn: int, largest_acked: int | None) -> int:
    """Bytes needed to send ``full_pn`` so the peer can recover it (RFC 9000 App. A.2).

    The encoding must represent more than twice the number of packets in flight,
    i.e. the distance to the largest acknowledged packet number.
    """
    num_unacked = full_pn + 1 if largest_acked is None else full_pn - largest_acked
    min_bits = num_unacked.bit_length() + 1
    return min(max((min_bits + 7) // 8, 1), 4)


def truncate_packet_number(full_pn: int, length: int) -> int:
    """The low ``length`` bytes of ``full_pn``, as sent in a header."""
    return full_pn & ((1 << (8 * length)) - 1)


def decode_packet_number(truncated_pn: int, pn_nbits: int, largest_pn: int) -> int:
    """Recover a full packet number from its truncated form (RFC 9000 App. A.3).

    ``largest_pn`` is the largest packet number successfully processed in this space,
    -1 before any.
    """
    expected_pn = largest_pn + 1
    pn_win = 1 << pn_nbits
    pn_hwin = pn_win // 2
    pn_mask = pn_win - 1
    candidate_pn = (expected_pn & ~pn_mask) | truncated_pn
    if candidate_pn <= expected_pn - pn_hwin and candidate_pn < (1 << 62) - pn_win:
        return candidate_pn + pn_win
    if candidate_pn > expected_pn + pn_hwin and candidate_pn >= pn_win:
        return candidate_pn - pn_win
    return candidate_pn


QUIC_VERSION_1 = uapi.QUIC_VERSION_V1
QUIC_VERSION_2 = uapi.QUIC_VERSION_V2
SUPPORTED_VERSIONS = (QUIC_VERSION_1, QUIC_VERSION_2)
MAX_CID_LENGTH = 20
MIN_INITIAL_SIZE = 1200

HEADER_FORM_BIT = 0x80
FIXED_BIT = 0x40


class PacketType(IntEnum):
    """Version-independent packet types; the long-header type bits differ by version."""

    INITIAL = 0
    ZERO_RTT = 1
    HANDSHAKE = 2
    RETRY = 3
    ONE_RTT = 4
    VERSION_NEGOTIATION = 5


# RFC 9000 §17.2 (v1) and RFC 9369 §3.2 (v2): type -> the two type bits.
_TYPE_BITS = {
    QUIC_VERSION_1: {
        PacketType.INITIAL: 0,
        PacketType.ZERO_RTT: 1,
        PacketType.HANDSHAKE: 2,
        PacketType.RETRY: 3,
    },
    QUIC_VERSION_2: {
        PacketType.INITIAL: 1,
        PacketType.ZERO_RTT: 2,
        PacketType.HANDSHAKE: 3,
        PacketType.RETRY: 0,
    },
}
_BITS_TYPE = {v: {bits: t for t, bits in m.items()} for v, m in _TYPE_BITS.items()}


def long_type_bits(packet_type: PacketType, version: int) -> int:
    return _TYPE_BITS[version][packet_type]


def long_packet_type(bits: int, version: int) -> PacketType:
    return _BITS_TYPE[version][bits]


@dataclass(slots=True)
class Header:
    """What can be read of a packet before removing its protection.

    ``packet_type`` is None for a long header of a version we do not speak: only the
    invariant fields (RFC 8999) are then meaningful. ``version`` is 0 for Version
    Negotiation and for short headers (which carry none).
    """

    packet_type: PacketType | None
    version: int
    dcid: bytes
    scid: bytes = b""
    token: bytes = b""
    first_byte: int = 0
    pn_offset: int = 0
    packet_start: int = 0
    packet_end: int = 0
    retry_token: bytes = b""
    integrity_tag: bytes = b""
    supported_versions: list[int] = field(default_factory=list)


def parse_header(
    data: bytes | bytearray | memoryview,
    offset: int,
    short_dcid_len: int,
    *,
    fixed_bit_required: bool = True,
) -> Header:
    """Parse the packet starting at ``offset``; malformed input is PROTOCOL_VIOLATION."""
    reader = Reader(data, offset, error=TransportError.PROTOCOL_VIOLATION)
    first = reader.uint8()
    if not first & HEADER_FORM_BIT:
        if fixed_bit_required and not first & FIXED_BIT:
            raise reader.fail("fixed bit is zero")
        dcid = reader.bytes(short_dcid_len)
        return Header(
            PacketType.ONE_RTT,
            0,
            dcid,
            first_byte=first,
            pn_offset=reader.pos,
            packet_start=offset,
            packet_end=reader.end,
        )
    version = reader.uint(4)
    dcid = reader.bytes(reader.uint8())
    scid = reader.bytes(reader.uint8())
    if version == 0:
        if reader.remaining() < 4 or reader.remaining() % 4:
            raise reader.fail("malformed version list")
        versions = [reader.uint(4) for _ in range(reader.remaining() // 4)]
        return Header(
            PacketType.VERSION_NEGOTIATION,
            0,
            dcid,
            scid,
            first_byte=first,
            packet_start=offset,
            packet_end=reader.end,
            supported_versions=versions,
        )
    if version not in _TYPE_BITS:
        return Header(
            None, version, dcid, scid, first_byte=first, packet_start=offset, packet_end=reader.end
        )
    if len(dcid) > MAX_CID_LENGTH or len(scid) > MAX_CID_LENGTH:
        raise reader.fail("connection ID longer than 20 bytes")
    if fixed_bit_required and not first & FIXED_BIT:
        raise reader.fail("fixed bit is zero")
    packet_type = _BITS_TYPE[version][(first >> 4) & 0x03]
    if packet_type == PacketType.RETRY:
        if reader.remaining() < 16:
            raise reader.fail("Retry packet without integrity tag")
        retry_token = reader.bytes(reader.remaining() - 16)
        return Header(
            packet_type,
            version,
            dcid,
            scid,
            first_byte=first,
            packet_start=offset,
            packet_end=reader.end,
            retry_token=retry_token,
            integrity_tag=reader.bytes(16),
        )
    token = reader.varint_bytes() if packet_type == PacketType.INITIAL else b""
    length = reader.varint()
    pn_offset = reader.pos
    if length > reader.remaining():
        raise reader.fail(f"Length {length} exceeds the datagram")
    if length < 1:
        raise reader.fail("packet without packet number")
    return Header(
        packet_type, version, dcid, scid, token, first, pn_offset, offset, pn_offset + length
    )


def iter_packets(
    datagram: bytes | bytearray | memoryview,
    short_dcid_len: int,
    *,
    fixed_bit_required: bool = True,
) -> Iterator[Header]:
    """The coalesced packets of one datagram (RFC 9000 §12.2). A malformed packet raises
    QuicError at its position; the packets yielded before it stand."""
    offset = 0
    end = len(datagram)
    while offset < end:
        header = parse_header(
            datagram, offset, short_dcid_len, fixed_bit_required=fixed_bit_required
        )
        yield header
        if header.packet_type in (
            PacketType.ONE_RTT,
            PacketType.RETRY,
            PacketType.VERSION_NEGOTIATION,
            None,
        ):
            return
        offset = header.packet_end


def peek_dcid(datagram: bytes | bytearray | memoryview, short_dcid_len: int) -> bytes:
    """The Destination Connection ID from the invariant header fields (RFC 8999)."""
    reader = Reader(datagram, error=TransportError.PROTOCOL_VIOLATION)
    first = reader.uint8()
    if first & HEADER_FORM_BIT:
        reader.uint(4)
        return reader.bytes(reader.uint8())
    return reader.bytes(short_dcid_len)


def _first_bits(grease_fixed_bit: bool) -> int:
    """The fixed bit: 1, or random when the peer advertised grease_quic_bit (RFC 9287)."""
    return (secrets.randbits(1) << 6) if grease_fixed_bit else FIXED_BIT


def encode_long_header(
    packet_type: PacketType,
    version: int,
    dcid: bytes,
    scid: bytes,
    token: bytes,
    length: int,
    pn: int,
    pn_len: int,
    *,
    grease_fixed_bit: bool = False,
) -> bytes:
    """A plaintext long header ending with the truncated packet number.

    ``length`` counts the packet number, payload and AEAD tag. It is written in two
    bytes whenever it fits, so a sender can size the header before the payload is final.
    """
    first = (
        HEADER_FORM_BIT
        | _first_bits(grease_fixed_bit)
        | (_TYPE_BITS[version][packet_type] << 4)
        | (pn_len - 1)
    )
    out = bytearray((first,))
    out += version.to_bytes(4, "big")
    out.append(len(dcid))
    out += dcid
    out.append(len(scid))
    out += scid
    if packet_type == PacketType.INITIAL:
        out += encode_varint(len(token))
        out += token
    out += encode_varint_len(length, 2 if length < 0x4000 else 4)
    out += truncate_packet_number(pn, pn_len).to_bytes(pn_len, "big")
    return bytes(out)


def encode_short_header(
    dcid: bytes,
    pn: int,
    pn_len: int,
    key_phase: int,
    spin: int = 0,
    *,
    grease_fixed_bit: bool = False,
) -> bytes:
    """A plaintext 1-RTT header ending with the truncated packet number."""
    first = _first_bits(grease_fixed_bit) | (spin << 5) | (key_phase << 2) | (pn_len - 1)
    return bytes((first,)) + dcid + truncate_packet_number(pn, pn_len).to_bytes(pn_len, "big")


def encode_version_negotiation(
    dcid: bytes, scid: bytes, versions: list[int], *, grease: bool = True
) -> bytes:
    """A Version Negotiation packet (RFC 9000 §17.2.1). ``dcid``/``scid`` are already the
    client's SCID/DCID swapped. A reserved 0x?a?a?a?a version keeps clients honest
    (RFC 9000 §15)."""
    listed = list(versions)
    if grease:
        listed.append((secrets.randbits(32) & 0xF0F0F0F0) | 0x0A0A0A0A)
    out = bytearray((HEADER_FORM_BIT | secrets.randbits(7),))
    out += bytes(4)
    out.append(len(dcid))
    out += dcid
    out.append(len(scid))
    out += scid
    for version in listed:
        out += version.to_bytes(4, "big")
    return bytes(out)


def encode_retry(
    version: int, dcid: bytes, scid: bytes, token: bytes, odcid: bytes, unused: int | None = None
) -> bytes:
    """A Retry packet with its integrity tag (RFC 9000 §17.2.5, RFC 9001 §5.8). The four
    unused bits of the first byte are random unless ``unused`` fixes them."""
    from .crypto import retry_integrity_tag

    first = HEADER_FORM_BIT | FIXED_BIT | (_TYPE_BITS[version][PacketType.RETRY] << 4)
    first |= secrets.randbits(4) if unused is None else unused & 0x0F
    out = bytes((first,)) + version.to_bytes(4, "big") + bytes((len(dcid),)) + dcid
    out += bytes((len(scid),)) + scid + token
    return out + retry_integrity_tag(odcid, out, version)


def verify_retry(data: bytes, odcid: bytes) -> bool:
    """Whether a whole Retry packet carries the right integrity tag for ``odcid``."""
    from .crypto import retry_integrity_tag

    try:
        header = parse_header(data, 0, 0)
    except QuicError:
        return False
    if header.packet_type != PacketType.RETRY:
        return False
    return hmac.compare_digest(
        retry_integrity_tag(odcid, bytes(data[:-16]), header.version), header.integrity_tag
    )
