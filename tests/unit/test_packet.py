"""Packet headers of v1 and v2, coalescing, Version Negotiation, Retry, packet numbers."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quic.errors import QuicError, TransportError
from quic.packet import (
    MAX_CID_LENGTH,
    QUIC_VERSION_1,
    QUIC_VERSION_2,
    PacketType,
    decode_packet_number,
    encode_long_header,
    encode_retry,
    encode_short_header,
    encode_version_negotiation,
    iter_packets,
    packet_number_length,
    parse_header,
    peek_dcid,
    truncate_packet_number,
    verify_retry,
)

DCID = bytes.fromhex("8394c8f03e515708")
SERVER_CID = bytes.fromhex("f067a5502a4262b5")
V1_RETRY = bytes.fromhex("ff000000010008f067a5502a4262b5746f6b656e04a265ba2eff4d829058fb3f0f2496ba")
V2_RETRY = bytes.fromhex("cf6b3343cf0008f067a5502a4262b5746f6b656ec8646ce8bfe33952d955543665dcc7b6")
VERSIONS = st.sampled_from([QUIC_VERSION_1, QUIC_VERSION_2])
CIDS = st.binary(max_size=MAX_CID_LENGTH)
LONG_TYPES = st.sampled_from([PacketType.INITIAL, PacketType.ZERO_RTT, PacketType.HANDSHAKE])


@pytest.mark.parametrize(
    ("wire", "version"),
    [
        ("c300000001088394c8f03e5157080000449e00000002", QUIC_VERSION_1),
        ("d36b3343cf088394c8f03e5157080000449e00000002", QUIC_VERSION_2),
    ],
)
def test_rfc_client_initial_header(wire: str, version: int) -> None:
    header_bytes = bytes.fromhex(wire)
    datagram = header_bytes + bytes(0x49E - 4)
    header = parse_header(datagram, 0, 8)
    assert header.packet_type == PacketType.INITIAL
    assert (header.version, header.dcid, header.scid, header.token) == (version, DCID, b"", b"")
    assert header.pn_offset == len(header_bytes) - 4
    assert header.packet_end == len(datagram)
    encoded = encode_long_header(PacketType.INITIAL, version, DCID, b"", b"", 0x49E, 2, 4)
    assert encoded == header_bytes


@pytest.mark.parametrize(
    ("wire", "version"), [(V1_RETRY, QUIC_VERSION_1), (V2_RETRY, QUIC_VERSION_2)]
)
def test_rfc_retry(wire: bytes, version: int) -> None:
    header = parse_header(wire, 0, 8)
    assert header.packet_type == PacketType.RETRY
    assert (header.version, header.dcid, header.scid) == (version, b"", SERVER_CID)
    assert header.retry_token == b"token"
    assert verify_retry(wire, DCID)
    assert not verify_retry(wire, bytes(8))
    assert encode_retry(version, b"", SERVER_CID, b"token", DCID, unused=0x0F) == wire
    # With random unused bits the tag still verifies.
    assert verify_retry(encode_retry(version, b"", SERVER_CID, b"token", DCID), DCID)


@given(
    LONG_TYPES,
    VERSIONS,
    CIDS,
    CIDS,
    st.binary(max_size=50),
    st.integers(min_value=0, max_value=2**32),
    st.integers(min_value=1, max_value=4),
    st.integers(min_value=4, max_value=1000),
)
def test_long_header_round_trip(ptype, version, dcid, scid, token, pn, pn_len, length) -> None:
    if ptype != PacketType.INITIAL:
        token = b""
    header_bytes = encode_long_header(ptype, version, dcid, scid, token, length, pn, pn_len)
    datagram = header_bytes + bytes(length - pn_len)
    header = parse_header(datagram, 0, 8)
    assert (header.packet_type, header.version, header.dcid, header.scid, header.token) == (
        ptype,
        version,
        dcid,
        scid,
        token,
    )
    assert header.pn_offset == len(header_bytes) - pn_len
    assert header.packet_end == len(datagram)


@given(
    CIDS,
    st.integers(min_value=0, max_value=2**32),
    st.integers(min_value=1, max_value=4),
    st.integers(min_value=0, max_value=1),
    st.binary(max_size=100),
)
def test_short_header_round_trip(dcid, pn, pn_len, key_phase, rest) -> None:
    wire = encode_short_header(dcid, pn, pn_len, key_phase) + rest
    header = parse_header(wire, 0, len(dcid))
    assert header.packet_type == PacketType.ONE_RTT
    assert header.dcid == dcid and header.pn_offset == 1 + len(dcid)
    assert (header.first_byte >> 2) & 1 == key_phase
    assert peek_dcid(wire, len(dcid)) == dcid


@given(VERSIONS, st.lists(st.integers(min_value=4, max_value=300), min_size=1, max_size=4), CIDS)
def test_coalesced_packets(version, lengths, dcid) -> None:
    datagram = b""
    kinds = [PacketType.INITIAL, PacketType.HANDSHAKE, PacketType.ZERO_RTT, PacketType.HANDSHAKE]
    for kind, length in zip(kinds, lengths, strict=False):
        datagram += encode_long_header(kind, version, dcid, b"s", b"", length, 0, 1) + bytes(
            length - 1
        )
    datagram += encode_short_header(dcid, 5, 1, 0) + b"tail" * 5
    headers = list(iter_packets(datagram, len(dcid)))
    assert [h.packet_type for h in headers[:-1]] == kinds[: len(lengths)]
    assert headers[-1].packet_type == PacketType.ONE_RTT
    assert headers[-1].packet_end == len(datagram)
    for before, after in itertools.pairwise(headers):
        assert before.packet_end == after.packet_start


@given(CIDS, CIDS, st.lists(st.integers(min_value=1, max_value=2**32 - 1), min_size=1, max_size=5))
def test_version_negotiation_round_trip(dcid, scid, versions) -> None:
    wire = encode_version_negotiation(dcid, scid, versions)
    header = parse_header(wire, 0, 8)
    assert header.packet_type == PacketType.VERSION_NEGOTIATION
    assert (header.dcid, header.scid) == (dcid, scid)
    assert header.supported_versions[: len(versions)] == versions
    greased = header.supported_versions[-1]
    assert greased & 0x0F0F0F0F == 0x0A0A0A0A


def test_unknown_version_keeps_invariant_fields() -> None:
    wire = (
        bytes([0xC0]) + (0x1A2A3A4A).to_bytes(4, "big") + bytes([3]) + b"abc" + bytes([2]) + b"xy"
    )
    header = parse_header(wire + bytes(1200), 0, 8)
    assert header.packet_type is None
    assert (header.version, header.dcid, header.scid) == (0x1A2A3A4A, b"abc", b"xy")


def test_fixed_bit_zero_only_with_grease() -> None:
    wire = bytearray(encode_short_header(DCID, 1, 1, 0) + bytes(30))
    wire[0] &= ~0x40
    with pytest.raises(QuicError) as info:
        parse_header(bytes(wire), 0, 8)
    assert info.value.code == TransportError.PROTOCOL_VIOLATION
    assert parse_header(bytes(wire), 0, 8, fixed_bit_required=False).dcid == DCID
    greased = {
        encode_short_header(DCID, 1, 1, 0, grease_fixed_bit=True)[0] & 0x40 for _ in range(64)
    }
    assert greased == {0, 0x40}


@pytest.mark.parametrize(
    "wire",
    [
        "c3000000011501" + "00" * 21,  # DCID of 21 bytes
        "c300000001088394c8f03e51570800004fff",  # Length beyond the datagram
        "c30000000108",  # truncated DCID
        "c300000001088394c8f03e515708004501",  # token length beyond the datagram
        "80000000000000000102",  # version list not a multiple of 4
    ],
)
def test_malformed_headers(wire: str) -> None:
    with pytest.raises(QuicError) as info:
        parse_header(bytes.fromhex(wire), 0, 8)
    assert info.value.code == TransportError.PROTOCOL_VIOLATION


@given(st.binary(max_size=300), st.integers(min_value=0, max_value=20))
def test_fuzz_parsers_raise_only_protocol_violation(data: bytes, dcid_len: int) -> None:
    for call in (
        lambda: list(iter_packets(data, dcid_len)),
        lambda: parse_header(data, 0, dcid_len),
        lambda: peek_dcid(data, dcid_len),
    ):
        try:
            call()
        except QuicError as exc:
            assert exc.code == TransportError.PROTOCOL_VIOLATION


def test_rfc9000_packet_number_examples() -> None:
    assert decode_packet_number(0x9B32, 16, 0xA82F30EA) == 0xA82F9B32
    assert packet_number_length(0xAC5C02, 0xABE8B3) == 2
    assert packet_number_length(0xACE8FE, 0xABE8B3) == 3


@given(st.integers(min_value=-1, max_value=2**40), st.integers(min_value=1, max_value=2**20))
def test_packet_number_truncation_round_trip(largest: int, ahead: int) -> None:
    pn = largest + ahead
    largest_acked = largest if largest >= 0 else None
    size = packet_number_length(pn, largest_acked)
    assert decode_packet_number(truncate_packet_number(pn, size), size * 8, largest) == pn
