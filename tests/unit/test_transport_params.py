"""Transport parameters (RFC 9000 §7.4, §18; RFC 9221, 9287, 9368) and their socket record."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quic.errors import QuicError, TransportError
from quic.transport_params import (
    PreferredAddress,
    TransportParameterId,
    TransportParameters,
    VersionInformation,
    decode_transport_parameters,
    default_local_parameters,
    encode_transport_parameters,
    params_from_uapi,
    params_to_uapi,
)
from quic.uapi import QUIC_VERSION_V1, QUIC_VERSION_V2, QuicTransportParam
from quic.varint import VARINT_MAX, Reader, encode_varint

TP = TransportParameterId
TOKEN = bytes(range(0xA0, 0xB0))
S32_MAX = (1 << 31) - 1


def param(pid: int, value: bytes) -> bytes:
    return encode_varint(pid) + encode_varint(len(value)) + value


def int_param(pid: int, value: int) -> bytes:
    return param(pid, encode_varint(value))


def ids_of(data: bytes) -> list[int]:
    reader = Reader(data)
    ids = []
    while not reader.eof():
        ids.append(reader.varint())
        reader.varint_bytes()
    return ids


def decode_error(data: bytes, *, from_server: bool = True) -> QuicError:
    with pytest.raises(QuicError) as info:
        decode_transport_parameters(data, from_server=from_server)
    assert info.value.code == TransportError.TRANSPORT_PARAMETER_ERROR
    return info.value


def decode_ok(data: bytes, *, from_server: bool = True) -> TransportParameters:
    return decode_transport_parameters(data, from_server=from_server)


# ---------------------------------------------------------------- identifiers


def test_parameter_ids_are_the_registered_codepoints() -> None:
    assert [int(pid) for pid in TP] == [*range(0x12), 0x20, 0x2AB2]
    assert TP.VERSION_INFORMATION == 0x11
    assert TP.MAX_DATAGRAM_FRAME_SIZE == 0x20
    assert TP.GREASE_QUIC_BIT == 0x2AB2


# ---------------------------------------------------------------- byte-exact encodings


def test_defaults_encode_to_nothing() -> None:
    assert encode_transport_parameters(TransportParameters()) == b""
    assert decode_ok(b"") == TransportParameters()


def test_client_set_is_byte_exact() -> None:
    params = TransportParameters(
        max_idle_timeout=30_000,
        initial_max_data=65535 * 32,
        initial_max_streams_bidi=100,
        active_connection_id_limit=7,
        initial_source_connection_id=bytes.fromhex("c0ffee0102030405"),
        grease_quic_bit=True,
    )
    expected = bytes.fromhex(
        "01 04 80007530"  # max_idle_timeout 30000: a 4-byte varint
        "04 04 801fffe0"  # initial_max_data 2097120
        "08 02 4064"  # initial_max_streams_bidi 100
        "0e 01 07"  # active_connection_id_limit 7
        "0f 08 c0ffee0102030405"  # initial_source_connection_id
        "6ab2 00"  # grease_quic_bit: id 0x2ab2 as a 2-byte varint, empty value
    )
    assert encode_transport_parameters(params) == expected
    assert decode_ok(expected, from_server=False) == params


def test_server_set_is_byte_exact() -> None:
    params = TransportParameters(
        original_destination_connection_id=bytes.fromhex("83941e"),
        stateless_reset_token=TOKEN,
        max_ack_delay=20,
        disable_active_migration=True,
        initial_source_connection_id=b"",
        retry_source_connection_id=bytes.fromhex("ab"),
        version_information=VersionInformation(QUIC_VERSION_V2, [QUIC_VERSION_V2, 1]),
        max_datagram_frame_size=65535,
    )
    expected = (
        bytes.fromhex("00 03 83941e")  # original_destination_connection_id
        + bytes.fromhex("02 10")
        + TOKEN  # stateless_reset_token
        + bytes.fromhex("0b 01 14")  # max_ack_delay 20
        + bytes.fromhex("0c 00")  # disable_active_migration
        + bytes.fromhex("0f 00")  # initial_source_connection_id: present, empty
        + bytes.fromhex("10 01 ab")  # retry_source_connection_id
        + bytes.fromhex("11 0c 6b3343cf 6b3343cf 00000001")  # version_information
        + bytes.fromhex("20 04 8000ffff")  # max_datagram_frame_size 65535
    )
    assert encode_transport_parameters(params) == expected
    assert decode_ok(expected) == params


def test_preferred_address_is_byte_exact() -> None:
    address = PreferredAddress(
        ipv4=("192.0.2.1", 443),
        ipv6=("2001:db8::1", 4433),
        connection_id=bytes.fromhex("1122"),
        stateless_reset_token=TOKEN,
    )
    value = (
        bytes.fromhex("c0000201 01bb")
        + bytes.fromhex("20010db8000000000000000000000001 1151")
        + bytes.fromhex("02 1122")
        + TOKEN
    )
    wire = bytes.fromhex("0d 2b") + value  # 6 + 18 + 3 + 16 = 43 bytes
    params = TransportParameters(preferred_address=address)
    assert encode_transport_parameters(params) == wire
    assert decode_ok(wire) == params


def test_preferred_address_all_zero_family_is_absent() -> None:
    address = PreferredAddress(None, ("2001:db8::2", 443), b"\x07", TOKEN)
    value = bytes(6) + bytes.fromhex("20010db8000000000000000000000002 01bb 01 07") + TOKEN
    wire = param(TP.PREFERRED_ADDRESS, value)
    assert encode_transport_parameters(TransportParameters(preferred_address=address)) == wire
    assert decode_ok(wire).preferred_address == address


def test_max_datagram_frame_size_zero_is_kept_distinct_from_absent() -> None:
    wire = bytes.fromhex("20 01 00")
    params = decode_ok(wire)
    assert params.max_datagram_frame_size == 0
    assert encode_transport_parameters(params) == wire
    assert decode_ok(b"").max_datagram_frame_size is None


def test_non_shortest_varint_filling_its_value_is_accepted() -> None:
    assert decode_ok(param(TP.INITIAL_MAX_DATA, bytes.fromhex("4005"))).initial_max_data == 5
    data = param(TP.MAX_IDLE_TIMEOUT, bytes.fromhex("c000000000000009"))
    assert decode_ok(data).max_idle_timeout == 9


def test_decoder_takes_memoryview_and_bytearray() -> None:
    wire = int_param(TP.INITIAL_MAX_DATA, 1000) + param(TP.INITIAL_SOURCE_CONNECTION_ID, b"ab")
    expected = TransportParameters(initial_max_data=1000, initial_source_connection_id=b"ab")
    assert decode_ok(memoryview(b"xx" + wire)[2:]) == expected
    assert decode_ok(bytearray(wire)) == expected


# ---------------------------------------------------------------- grease and unknown ids


def test_grease_adds_one_reserved_parameter_in_id_order() -> None:
    params = TransportParameters(
        initial_max_data=10, initial_source_connection_id=b"\x01", grease_quic_bit=True
    )
    plain_ids = ids_of(encode_transport_parameters(params))
    for _ in range(100):
        greased = encode_transport_parameters(params, grease=True)
        ids = ids_of(greased)
        extra = [pid for pid in ids if pid not in plain_ids]
        assert len(ids) == len(plain_ids) + 1
        assert len(extra) == 1
        assert extra[0] % 31 == 27
        assert ids == sorted(ids)
        assert decode_ok(greased, from_server=False) == params


def test_unknown_and_reserved_ids_are_ignored() -> None:
    data = (
        param(27, b"grease")
        + int_param(TP.INITIAL_MAX_DATA, 5)
        + param(31 * 1000 + 27, b"")
        + param(0x12, b"\xff" * 40)
        + param(VARINT_MAX, b"\x00")
    )
    assert decode_ok(data, from_server=False) == TransportParameters(initial_max_data=5)


# ---------------------------------------------------------------- round trips

cids = st.binary(max_size=20)
u62 = st.integers(0, VARINT_MAX)
versions = st.integers(1, 0xFFFF_FFFF)
tokens = st.binary(min_size=16, max_size=16)


@st.composite
def addresses(
    draw: st.DrawFn, family: type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address]
) -> tuple[str, int] | None:
    """A family's address, canonical as the decoder spells it; never the all-zero 'absent'."""
    if draw(st.booleans()):
        return None
    bits = 32 if family is ipaddress.IPv4Address else 128
    number = draw(st.integers(0, (1 << bits) - 1))
    port = draw(st.integers(0 if number else 1, 0xFFFF))
    return str(family(number)), port


preferred_addresses = st.builds(
    PreferredAddress,
    ipv4=addresses(ipaddress.IPv4Address),
    ipv6=addresses(ipaddress.IPv6Address),
    connection_id=st.binary(min_size=1, max_size=20),
    stateless_reset_token=tokens,
)


@st.composite
def client_version_information(draw: st.DrawFn) -> VersionInformation:
    available = draw(st.lists(versions, min_size=1, max_size=5))
    return VersionInformation(draw(st.sampled_from(available)), available)


server_version_information = st.builds(VersionInformation, versions, st.lists(versions, max_size=5))


def parameter_sets(*, from_server: bool) -> st.SearchStrategy[TransportParameters]:
    server_only = {
        "original_destination_connection_id": st.none() | cids,
        "stateless_reset_token": st.none() | tokens,
        "preferred_address": st.none() | preferred_addresses,
        "retry_source_connection_id": st.none() | cids,
    }
    sets = st.builds(
        TransportParameters,
        max_idle_timeout=u62,
        max_udp_payload_size=st.integers(1200, VARINT_MAX),
        initial_max_data=u62,
        initial_max_stream_data_bidi_local=u62,
        initial_max_stream_data_bidi_remote=u62,
        initial_max_stream_data_uni=u62,
        initial_max_streams_bidi=st.integers(0, 1 << 60),
        initial_max_streams_uni=st.integers(0, 1 << 60),
        ack_delay_exponent=st.integers(0, 20),
        max_ack_delay=st.integers(0, (1 << 14) - 1),
        disable_active_migration=st.booleans(),
        active_connection_id_limit=st.integers(2, VARINT_MAX),
        initial_source_connection_id=st.none() | cids,
        version_information=st.none()
        | (server_version_information if from_server else client_version_information()),
        max_datagram_frame_size=st.none() | u62,
        grease_quic_bit=st.booleans(),
        **(server_only if from_server else {}),
    )
    return sets.filter(
        lambda p: p.preferred_address is None or p.initial_source_connection_id != b""
    )


@settings(max_examples=300, deadline=None)
@given(parameter_sets(from_server=False), st.booleans())
def test_client_sets_round_trip(params: TransportParameters, grease: bool) -> None:
    data = encode_transport_parameters(params, grease=grease)
    assert decode_ok(data, from_server=False) == params
    assert decode_ok(data, from_server=True) == params


@settings(max_examples=300, deadline=None)
@given(parameter_sets(from_server=True), st.booleans())
def test_server_sets_round_trip(params: TransportParameters, grease: bool) -> None:
    data = encode_transport_parameters(params, grease=grease)
    assert decode_ok(data, from_server=True) == params


def test_default_local_parameters_round_trip() -> None:
    params = default_local_parameters()
    params.initial_source_connection_id = bytes(8)
    assert decode_ok(encode_transport_parameters(params), from_server=False) == params


# ---------------------------------------------------------------- validation, one rule each


def test_duplicate_parameter() -> None:
    decode_error(int_param(TP.INITIAL_MAX_DATA, 1) + int_param(TP.INITIAL_MAX_DATA, 1))


def test_duplicate_parameter_with_different_values() -> None:
    decode_error(int_param(TP.MAX_IDLE_TIMEOUT, 1) + int_param(TP.MAX_IDLE_TIMEOUT, 2))


def test_duplicate_unknown_parameter() -> None:
    decode_error(param(27, b"") + param(27, b"x"))


@pytest.mark.parametrize(
    "value",
    [b"", b"\x05\x00", b"\x40", bytes.fromhex("400500"), bytes.fromhex("800000")],
    ids=["empty", "trailing-byte", "truncated-2", "trailing-after-2", "truncated-4"],
)
@pytest.mark.parametrize(
    "pid", [TP.MAX_IDLE_TIMEOUT, TP.INITIAL_MAX_DATA, TP.MAX_DATAGRAM_FRAME_SIZE]
)
def test_integer_value_must_be_exactly_one_varint(pid: int, value: bytes) -> None:
    decode_error(param(pid, value))


def test_value_length_beyond_the_list() -> None:
    decode_error(bytes.fromhex("04 05 01"))


@pytest.mark.parametrize(
    "data", [b"\x40", b"\x04", b"\x04\x40"], ids=["id", "length", "length-varint"]
)
def test_truncated_parameter_header(data: bytes) -> None:
    decode_error(data)


def test_max_udp_payload_size_below_1200() -> None:
    decode_error(int_param(TP.MAX_UDP_PAYLOAD_SIZE, 1199))
    assert decode_ok(int_param(TP.MAX_UDP_PAYLOAD_SIZE, 1200)).max_udp_payload_size == 1200


def test_ack_delay_exponent_above_20() -> None:
    decode_error(int_param(TP.ACK_DELAY_EXPONENT, 21))
    assert decode_ok(int_param(TP.ACK_DELAY_EXPONENT, 20)).ack_delay_exponent == 20


def test_max_ack_delay_of_2_to_the_14() -> None:
    decode_error(int_param(TP.MAX_ACK_DELAY, 1 << 14))
    assert decode_ok(int_param(TP.MAX_ACK_DELAY, (1 << 14) - 1)).max_ack_delay == (1 << 14) - 1


def test_active_connection_id_limit_below_2() -> None:
    decode_error(int_param(TP.ACTIVE_CONNECTION_ID_LIMIT, 0))
    decode_error(int_param(TP.ACTIVE_CONNECTION_ID_LIMIT, 1))
    assert decode_ok(int_param(TP.ACTIVE_CONNECTION_ID_LIMIT, 2)).active_connection_id_limit == 2


@pytest.mark.parametrize("pid", [TP.INITIAL_MAX_STREAMS_BIDI, TP.INITIAL_MAX_STREAMS_UNI])
def test_initial_max_streams_above_2_to_the_60(pid: int) -> None:
    decode_error(int_param(pid, (1 << 60) + 1))
    decode_ok(int_param(pid, 1 << 60))


@pytest.mark.parametrize("size", [0, 15, 17, 32])
def test_stateless_reset_token_not_16_bytes(size: int) -> None:
    decode_error(param(TP.STATELESS_RESET_TOKEN, bytes(size)))


@pytest.mark.parametrize(
    "pid",
    [
        TP.ORIGINAL_DESTINATION_CONNECTION_ID,
        TP.INITIAL_SOURCE_CONNECTION_ID,
        TP.RETRY_SOURCE_CONNECTION_ID,
    ],
)
def test_connection_id_longer_than_20_bytes(pid: int) -> None:
    decode_error(param(pid, bytes(21)))
    assert getattr(decode_ok(param(pid, bytes(20))), TP(pid).name.lower()) == bytes(20)


@pytest.mark.parametrize("pid", [TP.DISABLE_ACTIVE_MIGRATION, TP.GREASE_QUIC_BIT])
def test_flag_with_a_value(pid: int) -> None:
    decode_error(param(pid, b"\x00"))
    assert getattr(decode_ok(param(pid, b"")), TP(pid).name.lower()) is True


PREFERRED_ADDRESS = bytes(24) + b"\x01\x09" + TOKEN


@pytest.mark.parametrize(
    "data",
    [
        param(TP.ORIGINAL_DESTINATION_CONNECTION_ID, b"\x01"),
        param(TP.PREFERRED_ADDRESS, PREFERRED_ADDRESS),
        param(TP.RETRY_SOURCE_CONNECTION_ID, b""),
        param(TP.STATELESS_RESET_TOKEN, TOKEN),
    ],
    ids=["original-dcid", "preferred-address", "retry-scid", "reset-token"],
)
def test_server_only_parameter_from_a_client(data: bytes) -> None:
    decode_error(data, from_server=False)
    decode_ok(data, from_server=True)


@pytest.mark.parametrize(
    "value",
    [
        b"",
        bytes(23),  # cut inside the addresses
        bytes(24),  # no CID length
        bytes(24) + b"\x00" + TOKEN,  # zero-length CID
        bytes(24) + b"\x15" + bytes(21) + TOKEN,  # 21-byte CID
        bytes(24) + b"\x04\x01" + TOKEN,  # CID length beyond the value
        bytes(24) + b"\x01\x01" + TOKEN[:15],  # short token
        PREFERRED_ADDRESS + b"\x00",  # trailing byte
    ],
    ids=[
        "empty",
        "short-address",
        "no-cid-length",
        "zero-cid",
        "long-cid",
        "cid-overrun",
        "short-token",
        "trailing",
    ],
)
def test_malformed_preferred_address(value: bytes) -> None:
    decode_error(param(TP.PREFERRED_ADDRESS, value))


def test_preferred_address_from_a_server_with_an_empty_cid() -> None:
    address = param(TP.PREFERRED_ADDRESS, PREFERRED_ADDRESS)
    decode_error(address + param(TP.INITIAL_SOURCE_CONNECTION_ID, b""))
    decode_ok(address + param(TP.INITIAL_SOURCE_CONNECTION_ID, b"\x01"))


@pytest.mark.parametrize(
    "value",
    [b"", bytes.fromhex("000001"), bytes.fromhex("00000001 0000"), bytes.fromhex("00000001 01")],
    ids=["empty", "short", "ragged", "one-over"],
)
@pytest.mark.parametrize("from_server", [True, False])
def test_version_information_length_not_a_nonzero_multiple_of_4(
    value: bytes, from_server: bool
) -> None:
    decode_error(param(TP.VERSION_INFORMATION, value), from_server=from_server)


@pytest.mark.parametrize("from_server", [True, False])
def test_version_information_chosen_version_zero(from_server: bool) -> None:
    value = bytes.fromhex("00000000 00000000 00000001")
    decode_error(param(TP.VERSION_INFORMATION, value), from_server=from_server)


@pytest.mark.parametrize("from_server", [True, False])
def test_version_information_available_version_zero(from_server: bool) -> None:
    value = bytes.fromhex("00000001 00000001 00000000")
    decode_error(param(TP.VERSION_INFORMATION, value), from_server=from_server)


def test_version_information_client_chosen_version_not_available() -> None:
    value = bytes.fromhex("00000001 6b3343cf")
    decode_error(param(TP.VERSION_INFORMATION, value), from_server=False)


def test_version_information_client_with_empty_available_list() -> None:
    decode_error(param(TP.VERSION_INFORMATION, bytes.fromhex("00000001")), from_server=False)


def test_version_information_server_may_send_an_empty_or_foreign_list() -> None:
    empty = decode_ok(param(TP.VERSION_INFORMATION, bytes.fromhex("6b3343cf")))
    assert empty.version_information == VersionInformation(QUIC_VERSION_V2, [])
    foreign = decode_ok(param(TP.VERSION_INFORMATION, bytes.fromhex("00000001 6b3343cf")))
    assert foreign.version_information == VersionInformation(QUIC_VERSION_V1, [QUIC_VERSION_V2])


def test_version_information_reserved_versions_are_accepted() -> None:
    value = bytes.fromhex("00000001 0a1a2a3a 00000001")
    info = decode_ok(param(TP.VERSION_INFORMATION, value), from_server=False).version_information
    assert info == VersionInformation(1, [0x0A1A2A3A, 1])


# ---------------------------------------------------------------- fuzz


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=300), st.booleans())
def test_fuzz_arbitrary_bytes(data: bytes, from_server: bool) -> None:
    try:
        decode_transport_parameters(data, from_server=from_server)
    except QuicError as error:
        assert error.code == TransportError.TRANSPORT_PARAMETER_ERROR


@settings(max_examples=1000, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from([*TP, 27, 0x12]), st.binary(max_size=60)), max_size=8),
    st.booleans(),
)
def test_fuzz_well_framed_known_ids(items: list[tuple[int, bytes]], from_server: bool) -> None:
    data = b"".join(param(pid, value) for pid, value in items)
    try:
        decode_transport_parameters(data, from_server=from_server)
    except QuicError as error:
        assert error.code == TransportError.TRANSPORT_PARAMETER_ERROR


@settings(max_examples=300, deadline=None)
@given(parameter_sets(from_server=True), st.data())
def test_fuzz_mutated_valid_sets(params: TransportParameters, data: st.DataObject) -> None:
    wire = bytearray(encode_transport_parameters(params))
    if wire:
        for _ in range(data.draw(st.integers(1, 4))):
            wire[data.draw(st.integers(0, len(wire) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(wire)))
    try:
        decode_transport_parameters(bytes(wire[:cut]), from_server=True)
    except QuicError as error:
        assert error.code == TransportError.TRANSPORT_PARAMETER_ERROR


# ---------------------------------------------------------------- socket API record


def test_default_local_parameters_are_lxins() -> None:
    params = default_local_parameters()
    assert params.active_connection_id_limit == 7
    assert params.max_udp_payload_size == 65527
    assert params.max_idle_timeout == 30_000
    assert params.max_ack_delay == 25
    assert params.ack_delay_exponent == 3
    assert (params.initial_max_streams_bidi, params.initial_max_streams_uni) == (100, 100)
    assert params.initial_max_data == 2_097_120
    assert params.initial_max_stream_data_bidi_local == 1_048_560
    assert params.initial_max_stream_data_bidi_remote == 1_048_560
    assert params.initial_max_stream_data_uni == 1_048_560
    assert params.max_datagram_frame_size is None
    assert default_local_parameters() is not default_local_parameters()


def test_to_uapi_gives_microseconds() -> None:
    rec = params_to_uapi(default_local_parameters())
    assert rec.max_idle_timeout == 30_000_000
    assert rec.max_ack_delay == 25_000
    assert rec.max_datagram_frame_size == 0
    assert (rec.remote, rec.disable_active_migration, rec.grease_quic_bit) == (0, 0, 0)
    assert (rec.max_streams_bidi, rec.max_streams_uni) == (100, 100)
    assert rec.max_data == 2_097_120
    assert rec.max_stream_data_bidi_local == rec.max_stream_data_uni == 1_048_560
    assert rec.active_connection_id_limit == 7
    assert QuicTransportParam.unpack(rec.pack()) == rec


def test_to_uapi_flags_and_saturation() -> None:
    peer = TransportParameters(
        disable_active_migration=True,
        grease_quic_bit=True,
        stateless_reset_token=TOKEN,
        max_datagram_frame_size=VARINT_MAX,
        max_udp_payload_size=VARINT_MAX,
        max_idle_timeout=VARINT_MAX,
        max_ack_delay=(1 << 14) - 1,
        active_connection_id_limit=1000,
        initial_max_streams_bidi=1 << 60,
        initial_max_streams_uni=70_000,
        initial_max_data=VARINT_MAX,
    )
    rec = params_to_uapi(peer)
    assert (rec.disable_active_migration, rec.grease_quic_bit, rec.stateless_reset) == (1, 1, 1)
    assert rec.max_datagram_frame_size == rec.max_udp_payload_size == 0xFFFF
    assert rec.max_idle_timeout == 0xFFFF_FFFF
    assert rec.max_ack_delay == 16_383_000
    assert rec.active_connection_id_limit == 0xFF
    assert rec.max_streams_bidi == rec.max_streams_uni == 0xFFFF
    assert rec.max_data == VARINT_MAX
    assert len(rec.pack()) == 56


def test_from_uapi_zero_record_changes_nothing() -> None:
    base = default_local_parameters()
    merged = params_from_uapi(QuicTransportParam(), base)
    assert merged == base
    assert merged is not base


def test_from_uapi_zero_cannot_clear_a_flag() -> None:
    base = TransportParameters(disable_active_migration=True, grease_quic_bit=True)
    assert params_from_uapi(QuicTransportParam(), base) == base


def test_from_uapi_merges_only_the_set_fields() -> None:
    base = default_local_parameters()
    rec = QuicTransportParam(
        max_idle_timeout=5_000_000,
        max_ack_delay=40_000,
        max_datagram_frame_size=1500,
        max_streams_uni=3,
        grease_quic_bit=1,
    )
    merged = params_from_uapi(rec, base)
    assert merged.max_idle_timeout == 5000
    assert merged.max_ack_delay == 40
    assert merged.max_datagram_frame_size == 1500
    assert merged.initial_max_streams_uni == 3
    assert merged.grease_quic_bit is True
    assert merged.initial_max_streams_bidi == 100
    assert merged.initial_max_data == 2_097_120
    assert merged.disable_active_migration is False
    assert base == default_local_parameters()


def test_from_uapi_microseconds_round_down_to_milliseconds() -> None:
    rec = QuicTransportParam(max_idle_timeout=1_500_999, max_ack_delay=999)
    merged = params_from_uapi(rec, TransportParameters())
    assert (merged.max_idle_timeout, merged.max_ack_delay) == (1500, 0)


@settings(max_examples=200, deadline=None)
@given(
    st.builds(
        QuicTransportParam,
        active_connection_id_limit=st.integers(2, 8),
        ack_delay_exponent=st.integers(1, 20),
        max_datagram_frame_size=st.integers(1200, 0xFFFF),
        max_udp_payload_size=st.integers(1200, 65527),
        max_idle_timeout=st.integers(1000, 0xFFFF_FFFF // 1000).map(lambda ms: ms * 1000),
        max_ack_delay=st.integers(1, (1 << 14) - 1).map(lambda ms: ms * 1000),
        max_streams_bidi=st.integers(1, 4096),
        max_streams_uni=st.integers(1, 4096),
        max_data=st.integers(1200, S32_MAX // 4),
        max_stream_data_bidi_local=st.integers(1200, S32_MAX // 8),
        max_stream_data_bidi_remote=st.integers(1200, S32_MAX // 8),
        max_stream_data_uni=st.integers(1200, S32_MAX // 8),
        disable_active_migration=st.integers(0, 1),
        grease_quic_bit=st.integers(0, 1),
    )
)
def test_uapi_record_round_trip(rec: QuicTransportParam) -> None:
    assert params_to_uapi(params_from_uapi(rec, TransportParameters())) == rec


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("active_connection_id_limit", 1),
        ("active_connection_id_limit", 9),
        ("ack_delay_exponent", 21),
        ("max_datagram_frame_size", 1199),
        ("max_udp_payload_size", 1199),
        ("max_udp_payload_size", 65528),
        ("max_idle_timeout", 999_999),
        ("max_ack_delay", 16_384_000),
        ("max_streams_bidi", 4097),
        ("max_streams_uni", 4097),
        ("max_data", 1199),
        ("max_data", S32_MAX // 4 + 1),
        ("max_stream_data_bidi_local", 1199),
        ("max_stream_data_bidi_local", S32_MAX // 8 + 1),
        ("max_stream_data_bidi_remote", 1199),
        ("max_stream_data_bidi_remote", S32_MAX // 8 + 1),
        ("max_stream_data_uni", 1199),
        ("max_stream_data_uni", S32_MAX // 8 + 1),
    ],
)
def test_from_uapi_rejects_local_values_out_of_range(name: str, value: int) -> None:
    with pytest.raises(ValueError, match=name):
        params_from_uapi(QuicTransportParam(**{name: value}), default_local_parameters())


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("active_connection_id_limit", 2),
        ("active_connection_id_limit", 8),
        ("ack_delay_exponent", 20),
        ("max_datagram_frame_size", 1200),
        ("max_udp_payload_size", 1200),
        ("max_udp_payload_size", 65527),
        ("max_idle_timeout", 1_000_000),
        ("max_ack_delay", 16_383_999),
        ("max_streams_bidi", 4096),
        ("max_data", 1200),
        ("max_data", S32_MAX // 4),
        ("max_stream_data_uni", S32_MAX // 8),
    ],
)
def test_from_uapi_limits_are_inclusive(name: str, value: int) -> None:
    params_from_uapi(QuicTransportParam(**{name: value}), default_local_parameters())


def test_from_uapi_remote_lifts_local_upper_bounds_and_clamps_streams() -> None:
    rec = QuicTransportParam(
        remote=1,
        max_data=1 << 40,
        max_stream_data_bidi_local=1 << 33,
        max_stream_data_uni=1 << 33,
        max_streams_bidi=5000,
        max_streams_uni=0xFFFF,
    )
    merged = params_from_uapi(rec, TransportParameters())
    assert merged.initial_max_data == 1 << 40
    assert merged.initial_max_stream_data_bidi_local == 1 << 33
    assert merged.initial_max_stream_data_uni == 1 << 33
    assert (merged.initial_max_streams_bidi, merged.initial_max_streams_uni) == (4096, 4096)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("max_data", 1199),
        ("max_data", VARINT_MAX + 1),
        ("active_connection_id_limit", 9),
        ("max_udp_payload_size", 65528),
        ("max_idle_timeout", 999_999),
    ],
)
def test_from_uapi_remote_still_checks_lower_and_wire_bounds(name: str, value: int) -> None:
    with pytest.raises(ValueError, match=name):
        params_from_uapi(QuicTransportParam(remote=1, **{name: value}), TransportParameters())
