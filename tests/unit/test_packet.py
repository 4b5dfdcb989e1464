"""Packet headers of v1 and v2, coalescing, Version Negotiation, Retry, packet numbers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quic.errors import QuicError, TransportError
from quic.packet import (
    MAX_CID_LENGTH,
    QUIC_VERSION_1,
    QUIC_VERSION_2,
    SUPPORTED_VERSIONS,
    PacketType,
    decode_packet_number,
    encode_long_header,
    encode_retry,
    encode_short_header,
    encode_version_negotiation,
    iter_packets,
    long_packet_type,
    long_type_bits,
    packet_number_length,
    parse_header,
    peek_dcid,
    truncate_packet_number,
    verify_retry,
)

DCID = bytes.fromhex("8394c8f03e515708")
SERVER_CID = bytes.fromhex("f067a5502a4262b5")
V1_INITIAL = bytes.fromhex("c300000001088394c8f03e5157080000449e00000002")
V2_INITIAL = bytes.fromhex("d36b3343cf088394c8f03e5157080000449e00000002")
# RFC 9001 A.3 / RFC 9369 A.3: the server's Initial header.
V1_SERVER_INITIAL = bytes.fromhex("c1000000010008f067a5502a4262b50040750001")
V2_SERVER_INITIAL = bytes.fromhex("d16b3343cf0008f067a5502a4262b50040750001")
V1_RETRY = bytes.fromhex("ff000000010008f067a5502a4262b5746f6b656e04a265ba2eff4d829058fb3f0f2496ba")
V2_RETRY = bytes.fromhex("cf6b3343cf0008f067a5502a4262b5746f6b656ec8646ce8bfe33952d955543665dcc7b6")

VERSIONS = st.sampled_from([QUIC_VERSION_1, QUIC_VERSION_2])
CIDS = st.binary(max_size=MAX_CID_LENGTH)
LONG_TYPES = st.sampled_from([PacketType.INITIAL, PacketType.ZERO_RTT, PacketType.HANDSHAKE])
PN_LENS = st.integers(1, 4)
PNS = st.integers(0, (1 << 62) - 1)


def _protocol_violation(exc: QuicError) -> bool:
    return exc.code == TransportError.PROTOCOL_VIOLATION


def _long_packet(ptype, version, dcid, scid, token, pn, pn_len, payload_len, **kw) -> bytes:
    length = pn_len + payload_len
    header = encode_long_header(ptype, version, dcid, scid, token, length, pn, pn_len, **kw)
    return header + bytes(payload_len)


# RFC vectors


def test_constants() -> None:
    assert (QUIC_VERSION_1, QUIC_VERSION_2) == (0x00000001, 0x6B3343CF)
    assert SUPPORTED_VERSIONS == (QUIC_VERSION_2, QUIC_VERSION_1)


@pytest.mark.parametrize(
    ("version", "bits"),
    [
        (QUIC_VERSION_1, (0b00, 0b01, 0b10, 0b11)),
        (QUIC_VERSION_2, (0b01, 0b10, 0b11, 0b00)),
    ],
)
def test_long_type_bits(version: int, bits: tuple[int, ...]) -> None:
    types = (PacketType.INITIAL, PacketType.ZERO_RTT, PacketType.HANDSHAKE, PacketType.RETRY)
    for ptype, value in zip(types, bits, strict=True):
        assert long_type_bits(ptype, version) == value
        assert long_packet_type(value, version) == ptype


@pytest.mark.parametrize(
    ("wire", "version"), [(V1_INITIAL, QUIC_VERSION_1), (V2_INITIAL, QUIC_VERSION_2)]
)
def test_rfc_client_initial_header(wire: bytes, version: int) -> None:
    datagram = wire + bytes(0x49E - 4)
    header = parse_header(datagram, 0, 8)
    assert header.packet_type == PacketType.INITIAL
    assert (header.version, header.dcid, header.scid, header.token) == (version, DCID, b"", b"")
    assert header.first_byte == wire[0]
    assert header.first_byte & 0x03 == 3  # pn_len 4, readable since these are unprotected
    assert header.pn_offset == len(wire) - 4
    assert (header.packet_start, header.packet_end) == (0, len(datagram))
    assert encode_long_header(PacketType.INITIAL, version, DCID, b"", b"", 0x49E, 2, 4) == wire


@pytest.mark.parametrize(
    ("wire", "version"), [(V1_SERVER_INITIAL, QUIC_VERSION_1), (V2_SERVER_INITIAL, QUIC_VERSION_2)]
)
def test_rfc_server_initial_header(wire: bytes, version: int) -> None:
    datagram = wire + bytes(0x75 - 2)
    header = parse_header(datagram, 0, 8)
    assert header.packet_type == PacketType.INITIAL
    assert (header.version, header.dcid, header.scid) == (version, b"", SERVER_CID)
    assert header.packet_end == len(datagram)
    assert encode_long_header(PacketType.INITIAL, version, b"", SERVER_CID, b"", 0x75, 1, 2) == wire


@pytest.mark.parametrize(
    ("wire", "version"), [(V1_RETRY, QUIC_VERSION_1), (V2_RETRY, QUIC_VERSION_2)]
)
def test_rfc_retry_parses(wire: bytes, version: int) -> None:
    header = parse_header(wire, 0, 8)
    assert header.packet_type == PacketType.RETRY
    assert (header.version, header.dcid, header.scid) == (version, b"", SERVER_CID)
    assert header.retry_token == b"token"
    assert header.integrity_tag == wire[-16:]
    assert header.packet_end == len(wire)
    assert [h.packet_type for h in iter_packets(wire, 8)] == [PacketType.RETRY]


@pytest.mark.parametrize(
    ("wire", "version"), [(V1_RETRY, QUIC_VERSION_1), (V2_RETRY, QUIC_VERSION_2)]
)
def test_rfc_retry_encode_and_verify(wire: bytes, version: int) -> None:
    pytest.importorskip("quic.crypto")
    assert encode_retry(version, b"", SERVER_CID, b"token", DCID, unused=0x0F) == wire
    header = parse_header(wire, 0, 8)
    assert verify_retry(header, DCID)
    assert not verify_retry(header, SERVER_CID)
    tampered = parse_header(wire[:-1] + bytes((wire[-1] ^ 1,)), 0, 8)
    assert not verify_retry(tampered, DCID)


def test_retry_with_empty_token_is_refused() -> None:
    pytest.importorskip("quic.crypto")
    wire = encode_retry(QUIC_VERSION_1, DCID, SERVER_CID, b"", b"odcid")
    header = parse_header(wire, 0, 8)
    assert header.retry_token == b""
    assert not verify_retry(header, b"odcid")


@given(version=VERSIONS, dcid=CIDS, scid=CIDS, token=st.binary(max_size=64), odcid=CIDS)
@settings(max_examples=50)
def test_retry_round_trip(version: int, dcid: bytes, scid: bytes, token: bytes, odcid: bytes):
    pytest.importorskip("quic.crypto")
    wire = encode_retry(version, dcid, scid, b"t" + token, odcid)
    header = parse_header(wire, 0, 8)
    assert header.packet_type == PacketType.RETRY
    assert (header.version, header.dcid, header.scid) == (version, dcid, scid)
    assert header.retry_token == b"t" + token
    assert verify_retry(header, odcid)


def test_verify_retry_refuses_other_packets() -> None:
    pytest.importorskip("quic.crypto")
    header = parse_header(V1_INITIAL + bytes(0x49E - 4), 0, 8)
    assert not verify_retry(header, DCID)


# round trips


@given(
    ptype=LONG_TYPES,
    version=VERSIONS,
    dcid=CIDS,
    scid=CIDS,
    token=st.binary(max_size=100),
    pn=PNS,
    pn_len=PN_LENS,
    payload_len=st.integers(0, 20000),
    grease=st.booleans(),
)
def test_long_header_round_trip(
    ptype, version, dcid, scid, token, pn, pn_len, payload_len, grease
) -> None:
    length = pn_len + payload_len
    header_bytes = encode_long_header(
        ptype, version, dcid, scid, token, length, pn, pn_len, grease_fixed_bit=grease
    )
    datagram = header_bytes + bytes(payload_len)
    header = parse_header(datagram, 0, 8, fixed_bit_required=not grease)
    assert header.packet_type == ptype
    assert (header.version, header.dcid, header.scid) == (version, dcid, scid)
    assert header.token == (token if ptype == PacketType.INITIAL else b"")
    assert header.pn_offset == len(header_bytes) - pn_len
    assert header.packet_end == len(datagram)
    assert header.first_byte & 0x03 == pn_len - 1
    assert int.from_bytes(header_bytes[-pn_len:], "big") == truncate_packet_number(pn, pn_len)
    # The Length field keeps its size whatever the payload, up to 16383.
    reference = encode_long_header(ptype, version, dcid, scid, token, pn_len, pn, pn_len)
    assert len(header_bytes) == len(reference) + (2 if length >= 0x4000 else 0)


@given(
    dcid_len=st.integers(0, MAX_CID_LENGTH),
    data=st.data(),
    pn=PNS,
    pn_len=PN_LENS,
    key_phase=st.integers(0, 1),
    spin=st.integers(0, 1),
    payload=st.binary(max_size=64),
)
def test_short_header_round_trip(dcid_len, data, pn, pn_len, key_phase, spin, payload) -> None:
    dcid = data.draw(st.binary(min_size=dcid_len, max_size=dcid_len))
    header_bytes = encode_short_header(dcid, pn, pn_len, key_phase, spin)
    datagram = header_bytes + payload
    header = parse_header(datagram, 0, dcid_len)
    assert header.packet_type == PacketType.ONE_RTT
    assert (header.version, header.dcid, header.scid) == (0, dcid, b"")
    assert header.pn_offset == 1 + dcid_len
    assert header.packet_end == len(datagram)
    first = header.first_byte
    assert first & 0xC0 == 0x40
    assert ((first >> 5) & 1, (first >> 2) & 1, first & 3) == (spin, key_phase, pn_len - 1)
    assert first & 0x18 == 0
    assert peek_dcid(datagram, dcid_len) == dcid


@given(
    version=VERSIONS,
    dcid=CIDS,
    packets=st.lists(
        st.tuples(LONG_TYPES, CIDS, st.binary(max_size=20), PNS, PN_LENS, st.integers(0, 300)),
        min_size=1,
        max_size=4,
    ),
    short_payload=st.one_of(st.none(), st.binary(max_size=100)),
)
def test_coalesced_round_trip(version, dcid, packets, short_payload) -> None:
    datagram = b""
    starts = []
    for ptype, scid, token, pn, pn_len, payload_len in packets:
        starts.append(len(datagram))
        datagram += _long_packet(ptype, version, dcid, scid, token, pn, pn_len, payload_len)
    if short_payload is not None:
        starts.append(len(datagram))
        datagram += encode_short_header(dcid, 7, 2, 0) + short_payload
    headers = list(iter_packets(datagram, len(dcid)))
    expected = [p[0] for p in packets]
    if short_payload is not None:
        expected.append(PacketType.ONE_RTT)
    assert [h.packet_type for h in headers] == expected
    assert [h.packet_start for h in headers] == starts
    assert [h.packet_end for h in headers] == [*starts[1:], len(datagram)]
    assert all(h.dcid == dcid for h in headers)
    assert peek_dcid(datagram, len(dcid)) == dcid


def test_coalesced_walk_stops_at_another_dcid() -> None:
    first = _long_packet(PacketType.INITIAL, QUIC_VERSION_1, DCID, b"", b"", 0, 1, 30)
    second = _long_packet(PacketType.HANDSHAKE, QUIC_VERSION_1, SERVER_CID, b"", b"", 0, 1, 30)
    assert len(list(iter_packets(first + second, 8))) == 1


def test_trailing_zero_padding() -> None:
    packet = _long_packet(PacketType.INITIAL, QUIC_VERSION_1, DCID, b"", b"", 0, 1, 30)
    datagram = packet + bytes(100)
    packets = iter_packets(datagram, 8)
    assert next(packets).packet_end == len(packet)
    with pytest.raises(QuicError) as exc:
        next(packets)
    assert _protocol_violation(exc.value)
    # With the fixed bit greased the zeros read as a short header for another CID.
    assert len(list(iter_packets(datagram, 8, fixed_bit_required=False))) == 1


def test_trailing_garbage_after_valid_packet() -> None:
    packet = _long_packet(PacketType.HANDSHAKE, QUIC_VERSION_2, DCID, b"", b"", 0, 1, 30)
    datagram = packet + bytes.fromhex("e36b3343cf08") + DCID[:3]
    packets = iter_packets(datagram, 8)
    assert next(packets).packet_type == PacketType.HANDSHAKE
    with pytest.raises(QuicError) as exc:
        next(packets)
    assert _protocol_violation(exc.value)


def test_nothing_after_retry_or_short_header() -> None:
    short = encode_short_header(DCID, 1, 1, 0) + bytes(40)
    assert len(list(iter_packets(short + short, 8))) == 1
    retry_like = parse_header(V1_RETRY, 0, 8)
    assert retry_like.packet_end == len(V1_RETRY)


# Version Negotiation and unknown versions


@given(dcid=st.binary(max_size=255), scid=st.binary(max_size=255), grease=st.booleans())
def test_version_negotiation_round_trip(dcid: bytes, scid: bytes, grease: bool) -> None:
    wire = encode_version_negotiation(dcid, scid, list(SUPPORTED_VERSIONS), grease=grease)
    assert wire[0] & 0x80 and wire[1:5] == bytes(4)
    header = parse_header(wire, 0, 8)
    assert header.packet_type == PacketType.VERSION_NEGOTIATION
    assert (header.version, header.dcid, header.scid) == (0, dcid, scid)
    assert header.supported_versions[:2] == list(SUPPORTED_VERSIONS)
    if grease:
        assert len(header.supported_versions) == 3
        assert header.supported_versions[2] & 0x0F0F0F0F == 0x0A0A0A0A
    else:
        assert len(header.supported_versions) == 2
    assert [h.packet_type for h in iter_packets(wire, 8)] == [PacketType.VERSION_NEGOTIATION]
    assert peek_dcid(wire, 8) == dcid


def test_version_negotiation_list_must_be_whole_versions() -> None:
    wire = encode_version_negotiation(DCID, SERVER_CID, [QUIC_VERSION_1])
    with pytest.raises(QuicError) as exc:
        parse_header(wire + b"\x00", 0, 8)
    assert _protocol_violation(exc.value)


@given(
    version=st.integers(2, 0xFFFFFFFF), dcid=st.binary(max_size=255), scid=st.binary(max_size=255)
)
def test_unknown_version_keeps_invariant_fields(version: int, dcid: bytes, scid: bytes) -> None:
    if version == QUIC_VERSION_2:
        version = 0x0A0A0A0A
    wire = bytes((0x80,)) + version.to_bytes(4, "big") + bytes((len(dcid),)) + dcid
    wire += bytes((len(scid),)) + scid + bytes(1200)
    header = parse_header(wire, 0, 8)
    assert header.packet_type is None
    assert (header.version, header.dcid, header.scid) == (version, dcid, scid)
    assert header.packet_end == len(wire)
    assert peek_dcid(wire, 8) == dcid


@pytest.mark.parametrize("version", [QUIC_VERSION_1, QUIC_VERSION_2])
def test_long_cids_refused_for_known_versions(version: int) -> None:
    wire = bytes((0xC0,)) + version.to_bytes(4, "big") + bytes((21,)) + bytes(21) + b"\x00"
    wire += b"\x00\x41\x00" + bytes(0x100)
    with pytest.raises(QuicError) as exc:
        parse_header(wire, 0, 8)
    assert _protocol_violation(exc.value)


# malformed input


@pytest.mark.parametrize(
    "wire",
    [
        V1_INITIAL,  # Length runs past the datagram
        V1_INITIAL[:-5],  # truncated inside Length
        bytes.fromhex("c000000001088394c8f03e51570800") + b"\x41\x00",  # token past the end
        bytes.fromhex("e0000000010000") + b"\x00",  # Length 0
        V1_RETRY[:-1][:30],  # Retry shorter than its tag
        b"\xc0\x00\x00",  # truncated version
        b"",
    ],
)
def test_malformed_headers(wire: bytes) -> None:
    with pytest.raises(QuicError) as exc:
        parse_header(wire, 0, 8)
    assert _protocol_violation(exc.value)


@pytest.mark.parametrize("version", [QUIC_VERSION_1, QUIC_VERSION_2])
def test_grease_fixed_bit_long(version: int) -> None:
    wire = bytearray(_long_packet(PacketType.HANDSHAKE, version, DCID, b"", b"", 0, 1, 30))
    wire[0] &= ~0x40
    with pytest.raises(QuicError) as exc:
        parse_header(wire, 0, 8)
    assert _protocol_violation(exc.value)
    assert parse_header(wire, 0, 8, fixed_bit_required=False).packet_type == PacketType.HANDSHAKE


def test_grease_fixed_bit_short() -> None:
    wire = bytearray(encode_short_header(DCID, 5, 1, 1) + bytes(30))
    wire[0] &= ~0x40
    with pytest.raises(QuicError) as exc:
        parse_header(wire, 0, 8)
    assert _protocol_violation(exc.value)
    with pytest.raises(QuicError):
        list(iter_packets(wire, 8))
    assert parse_header(wire, 0, 8, fixed_bit_required=False).packet_type == PacketType.ONE_RTT


def test_grease_fixed_bit_encoders_vary_the_bit() -> None:
    bits = {encode_short_header(DCID, 1, 1, 0, grease_fixed_bit=True)[0] & 0x40 for _ in range(64)}
    assert bits == {0, 0x40}
    bits = {
        encode_long_header(
            PacketType.HANDSHAKE, QUIC_VERSION_1, DCID, b"", b"", 5, 0, 1, grease_fixed_bit=True
        )[0]
        & 0x40
        for _ in range(64)
    }
    assert bits == {0, 0x40}


@given(data=st.binary(max_size=300), short_len=st.integers(0, MAX_CID_LENGTH), grease=st.booleans())
@settings(max_examples=500)
def test_fuzz_arbitrary_bytes(data: bytes, short_len: int, grease: bool) -> None:
    for call in (
        lambda: parse_header(data, 0, short_len, fixed_bit_required=not grease),
        lambda: list(iter_packets(data, short_len, fixed_bit_required=not grease)),
        lambda: peek_dcid(data, short_len),
    ):
        try:
            call()
        except QuicError as exc:
            assert _protocol_violation(exc)


@given(
    prefix=st.sampled_from([V1_INITIAL, V2_INITIAL, V1_SERVER_INITIAL, V1_RETRY, V2_RETRY]),
    cut=st.integers(0, 60),
    junk=st.binary(max_size=40),
    short_len=st.integers(0, MAX_CID_LENGTH),
)
@settings(max_examples=300)
def test_fuzz_mutated_vectors(prefix: bytes, cut: int, junk: bytes, short_len: int) -> None:
    data = prefix[:cut] + junk + prefix[cut:]
    try:
        headers = list(iter_packets(memoryview(data), short_len))
    except QuicError as exc:
        assert _protocol_violation(exc)
    else:
        ends = [h.packet_end for h in headers]
        assert ends == sorted(ends) and all(e <= len(data) for e in ends)


# packet numbers


def test_rfc_packet_number_examples() -> None:
    assert decode_packet_number(0x9B32, 16, 0xA82F30EA) == 0xA82F9B32
    assert packet_number_length(0xAC5C02, 0xABE8B3) == 2
    assert packet_number_length(0xACE8FE, 0xABE8B3) == 3
    assert packet_number_length(0, None) == 1


@given(largest=st.integers(-1, (1 << 40)), pn_len=PN_LENS, data=st.data())
def test_packet_number_round_trip(largest: int, pn_len: int, data) -> None:
    hwin = 1 << (8 * pn_len - 1)
    expected = largest + 1
    pn = data.draw(st.integers(max(0, expected - hwin + 1), expected + hwin))
    truncated = truncate_packet_number(pn, pn_len)
    assert decode_packet_number(truncated, 8 * pn_len, largest) == pn


def rfc9000_decode(truncated_pn: int, pn_nbits: int, largest_pn: int) -> int:
    """RFC 9000 Appendix A.3, as written there."""
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


@given(
    largest=st.one_of(
        st.integers(-1, 1 << 16),
        st.integers(-1, 1 << 40),
        st.integers((1 << 62) - (1 << 34), (1 << 62) - 1),
    ),
    pn_len=PN_LENS,
    data=st.data(),
)
def test_packet_number_decoding_is_the_rfcs(largest: int, pn_len: int, data) -> None:
    """Any truncated number, near the expected one or not, decodes as Appendix A.3 does."""
    truncated = data.draw(st.integers(0, (1 << (8 * pn_len)) - 1))
    assert decode_packet_number(truncated, 8 * pn_len, largest) == rfc9000_decode(
        truncated, 8 * pn_len, largest
    )


@given(pn=st.integers(0, 1 << 40), gap=st.integers(0, (1 << 31) - 2))
def test_packet_number_length_suffices(pn: int, gap: int) -> None:
    largest_acked = pn - 1 - gap
    length = packet_number_length(pn, largest_acked if largest_acked >= 0 else None)
    # The peer has processed at least largest_acked; it recovers pn from that.
    largest = max(largest_acked, -1)
    assert decode_packet_number(truncate_packet_number(pn, length), 8 * length, largest) == pn
