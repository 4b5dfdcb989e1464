"""QUIC packets on the wire: headers of v1 and v2 (RFC 9000 §17, RFC 9369 §3.2),
coalescing, Version Negotiation, Retry, and packet numbers (RFC 9000 §17.1, App. A).

Only what header protection leaves readable is parsed here; the first byte's low bits
and the packet number are read again after :mod:`quic.crypto` removes the mask.
"""

from __future__ import annotations

import hmac
import random
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import IntEnum

from . import uapi
from .errors import TransportError
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
    candidate_pn = (expected_pn & -pn_win) | truncated_pn
    if expected_pn - pn_hwin < candidate_pn <= expected_pn + pn_hwin:
        return candidate_pn  # the usual case, every packet: neither correction applies
    if candidate_pn <= expected_pn - pn_hwin and candidate_pn < (1 << 62) - pn_win:
        return candidate_pn + pn_win
    if candidate_pn > expected_pn + pn_hwin and candidate_pn >= pn_win:
        return candidate_pn - pn_win
    return candidate_pn


QUIC_VERSION_1 = uapi.QUIC_VERSION_V1
QUIC_VERSION_2 = uapi.QUIC_VERSION_V2
# Preference order: what a Version Negotiation packet lists and a server picks first.
SUPPORTED_VERSIONS = (QUIC_VERSION_2, QUIC_VERSION_1)
MAX_CID_LENGTH = 20
MIN_INITIAL_SIZE = 1200
RETRY_INTEGRITY_TAG_SIZE = 16

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


# RFC 9000 §17.2 (v1) and RFC 9369 §3.2 (v2): v2 rotates the bits so that middleboxes
# cannot ossify on v1's assignment.
_TYPE_BITS: dict[int, dict[PacketType, int]] = {
    QUIC_VERSION_1: {
        PacketType.INITIAL: 0b00,
        PacketType.ZERO_RTT: 0b01,
        PacketType.HANDSHAKE: 0b10,
        PacketType.RETRY: 0b11,
    },
    QUIC_VERSION_2: {
        PacketType.INITIAL: 0b01,
        PacketType.ZERO_RTT: 0b10,
        PacketType.HANDSHAKE: 0b11,
        PacketType.RETRY: 0b00,
    },
}
# Indexed by the two type bits, so parsing is a list lookup.
_BITS_TYPE: dict[int, list[PacketType]] = {
    version: sorted(bits, key=bits.__getitem__) for version, bits in _TYPE_BITS.items()
}


def long_type_bits(packet_type: PacketType, version: int) -> int:
    """The two long-header type bits of ``packet_type`` in ``version`` (KeyError if the
    version is not one we speak or the type has no long header)."""
    return _TYPE_BITS[version][packet_type]


def long_packet_type(bits: int, version: int) -> PacketType:
    """Inverse of :func:`long_type_bits`."""
    return _BITS_TYPE[version][bits & 0x03]


@dataclass(slots=True)
class Header:
    """What can be read of a packet before removing its protection.

    ``packet_type`` is None for a long header of a version we do not speak: only the
    invariant fields (RFC 8999: version, dcid, scid) are then meaningful, enough to
    answer with Version Negotiation. ``version`` is 0 both for Version Negotiation (its
    wire value) and for short headers, which carry none: the connection knows its own.

    ``first_byte`` is as received, so still masked for packets under header protection.
    ``pn_offset`` is the datagram offset of the packet number (0 for Retry, Version
    Negotiation and unknown versions, which have none). ``packet_end`` is where this
    packet stops in the datagram: after its Length for Initial, 0-RTT and Handshake, the
    end of the datagram for every other kind.
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
    """Parse the packet starting at ``offset``; malformed input is PROTOCOL_VIOLATION.

    ``short_dcid_len`` is the length of our own connection IDs, since a short header
    does not say. ``fixed_bit_required`` is False once we advertised grease_quic_bit
    (RFC 9287): the peer may then send the fixed bit as 0.
    """
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
        return _parse_version_negotiation(reader, first, dcid, scid, offset)
    type_bits = _BITS_TYPE.get(version)
    if type_bits is None:
        return Header(
            None, version, dcid, scid, first_byte=first, packet_start=offset, packet_end=reader.end
        )
    if len(dcid) > MAX_CID_LENGTH or len(scid) > MAX_CID_LENGTH:
        raise reader.fail("connection ID longer than 20 bytes")
    if fixed_bit_required and not first & FIXED_BIT:
        raise reader.fail("fixed bit is zero")
    packet_type = type_bits[(first >> 4) & 0x03]
    if packet_type == PacketType.RETRY:
        return _parse_retry(reader, first, version, dcid, scid, offset)
    token = reader.varint_bytes() if packet_type == PacketType.INITIAL else b""
    length = reader.varint()
    pn_offset = reader.pos
    if length > reader.remaining():
        raise reader.fail(f"Length {length} exceeds the {reader.remaining()} bytes left")
    if length < 1:
        raise reader.fail("packet without packet number")
    return Header(
        packet_type, version, dcid, scid, token, first, pn_offset, offset, pn_offset + length
    )


def _parse_version_negotiation(
    reader: Reader, first: int, dcid: bytes, scid: bytes, offset: int
) -> Header:
    if reader.remaining() % 4:
        raise reader.fail("version list is not a multiple of 4 bytes")
    view = reader.view(reader.remaining())
    versions = [int.from_bytes(view[i : i + 4], "big") for i in range(0, len(view), 4)]
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


def _parse_retry(
    reader: Reader, first: int, version: int, dcid: bytes, scid: bytes, offset: int
) -> Header:
    if reader.remaining() < RETRY_INTEGRITY_TAG_SIZE:
        raise reader.fail("Retry packet without integrity tag")
    retry_token = reader.bytes(reader.remaining() - RETRY_INTEGRITY_TAG_SIZE)
    return Header(
        PacketType.RETRY,
        version,
        dcid,
        scid,
        first_byte=first,
        packet_start=offset,
        packet_end=reader.end,
        retry_token=retry_token,
        integrity_tag=reader.bytes(RETRY_INTEGRITY_TAG_SIZE),
    )


# Packets after which nothing may be coalesced: their extent is the rest of the datagram.
_LAST_IN_DATAGRAM = frozenset(
    (PacketType.ONE_RTT, PacketType.RETRY, PacketType.VERSION_NEGOTIATION, None)
)


def iter_packets(
    datagram: bytes | bytearray | memoryview,
    short_dcid_len: int,
    *,
    fixed_bit_required: bool = True,
) -> Iterator[Header]:
    """The coalesced packets of one datagram (RFC 9000 §12.2).

    A malformed packet raises QuicError(PROTOCOL_VIOLATION) where it starts; the packets
    yielded before it stand, so a receiver drops just the remainder. A packet whose
    DCID differs from the first one's ends the walk silently, as §12.2 asks receivers
    to ignore it: this is also how trailing zero padding reads once the fixed bit is
    greased.
    """
    offset = 0
    end = len(datagram)
    first_dcid: bytes | None = None
    while offset < end:
        header = parse_header(
            datagram, offset, short_dcid_len, fixed_bit_required=fixed_bit_required
        )
        if first_dcid is None:
            first_dcid = header.dcid
        elif header.dcid != first_dcid:
            return
        yield header
        if header.packet_type in _LAST_IN_DATAGRAM:
            return
        offset = header.packet_end


def peek_dcid(datagram: bytes | bytearray | memoryview, short_dcid_len: int) -> bytes:
    """The Destination Connection ID from the invariant header fields (RFC 8999 §5), for
    demultiplexing before knowing whether the version is one we speak."""
    reader = Reader(datagram, error=TransportError.PROTOCOL_VIOLATION)
    if reader.uint8() & HEADER_FORM_BIT:
        reader.uint(4)
        return reader.bytes(reader.uint8())
    return reader.bytes(short_dcid_len)


# The greased bit only has to be unpredictable enough that middleboxes cannot rely on
# it (RFC 9287 §3); a per-packet system call for it cost more than sealing the packet.
grease_bits = random.Random(secrets.randbits(64)).getrandbits


def _fixed_bit(grease_fixed_bit: bool) -> int:
    """The fixed bit: 1, or random once the peer advertised grease_quic_bit (RFC 9287)."""
    return grease_bits(1) << 6 if grease_fixed_bit else FIXED_BIT


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
    """A plaintext Initial, 0-RTT or Handshake header ending with the truncated packet
    number.

    ``length`` counts the packet number, payload and AEAD tag. It is written in two
    bytes whenever it fits (four otherwise), never shorter, so a sender can reserve the
    header before the payload size is final and the header size does not change when
    it is. ``token`` is written only for Initial packets. ``grease_fixed_bit`` is for
    the caller to set only when the peer's grease_quic_bit is known: a client's first
    Initial keeps the bit at 1 (RFC 9287 §3).
    """
    first = (
        HEADER_FORM_BIT
        | _fixed_bit(grease_fixed_bit)
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
    """A plaintext 1-RTT header ending with the truncated packet number; the reserved
    bits are 0, as RFC 9000 §17.3.1 requires before protection."""
    fixed = _fixed_bit(True) if grease_fixed_bit else FIXED_BIT
    first = fixed | (spin << 5) | (key_phase << 2) | (pn_len - 1)
    truncated = pn & ((1 << (8 * pn_len)) - 1)  # every packet: truncate_packet_number inline
    return bytes((first,)) + dcid + truncated.to_bytes(pn_len, "big")


def short_header_starts(dcid: bytes, pn_len: int, key_phase: int) -> tuple[bytes, bytes]:
    """A 1-RTT header up to its packet number, with the fixed bit 0 and with it 1: a
    sender building a run of packets appends each number to one of them (the first
    only toward a peer that allows greasing, RFC 9287)."""
    first = (key_phase << 2) | (pn_len - 1)
    return bytes((first,)) + dcid, bytes((first | FIXED_BIT,)) + dcid


def grease_version() -> int:
    """A reserved version of the form 0x?a?a?a?a (RFC 9000 §15), never a real one."""
    return (secrets.randbits(32) & 0xF0F0F0F0) | 0x0A0A0A0A


def encode_version_negotiation(
    dcid: bytes, scid: bytes, versions: list[int], *, grease: bool = False
) -> bytes:
    """A Version Negotiation packet (RFC 9000 §17.2.1).

    ``dcid`` and ``scid`` are the client's SCID and DCID, already swapped by the caller.
    The seven low bits of the first byte are random, the fixed bit included: VN is
    version-independent and RFC 8999 gives it no fixed bit. ``grease`` appends a
    reserved version so clients do not come to depend on the list's exact contents.
    """
    listed = [*versions, grease_version()] if grease else versions
    out = bytearray((HEADER_FORM_BIT | secrets.randbits(7),))
    out += bytes(4)
    out.append(len(dcid))
    out += dcid
    out.append(len(scid))
    out += scid
    for version in listed:
        out += version.to_bytes(4, "big")
    return bytes(out)


def _retry_without_tag(first: int, version: int, dcid: bytes, scid: bytes, token: bytes) -> bytes:
    return (
        bytes((first,))
        + version.to_bytes(4, "big")
        + bytes((len(dcid),))
        + dcid
        + bytes((len(scid),))
        + scid
        + token
    )


def encode_retry(
    version: int,
    dcid: bytes,
    scid: bytes,
    token: bytes,
    odcid: bytes,
    *,
    unused: int | None = None,
) -> bytes:
    """A Retry packet with its integrity tag (RFC 9000 §17.2.5, RFC 9001 §5.8).

    ``odcid`` is the DCID of the client's Initial, which the tag binds. The four unused
    bits of the first byte are random unless ``unused`` fixes them. Retry is never
    greased: the server does not know yet whether the client accepts it.
    """
    # crypto imports this module: a top-level import would be circular.
    from .crypto import retry_integrity_tag

    first = HEADER_FORM_BIT | FIXED_BIT | (_TYPE_BITS[version][PacketType.RETRY] << 4)
    first |= secrets.randbits(4) if unused is None else unused & 0x0F
    packet = _retry_without_tag(first, version, dcid, scid, token)
    return packet + retry_integrity_tag(odcid, packet, version)


def verify_retry(header: Header, odcid: bytes) -> bool:
    """Whether a parsed Retry may be acted on: a nonempty token (RFC 9000 §17.2.5.2) and
    an integrity tag matching the DCID the client first sent (RFC 9001 §5.8)."""
    from .crypto import retry_integrity_tag

    if header.packet_type != PacketType.RETRY or not header.retry_token:
        return False
    packet = _retry_without_tag(
        header.first_byte, header.version, header.dcid, header.scid, header.retry_token
    )
    expected = retry_integrity_tag(odcid, packet, header.version)
    return hmac.compare_digest(expected, header.integrity_tag)
