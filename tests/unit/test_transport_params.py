"""QUIC transport parameters, RFC 9000 §7.4 and §18: wire layout, validation, socket records."""

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
from quic.uapi import QuicTransportParam
from quic.varint import VARINT_MAX, encode_varint

TP = TransportParameterId
TOKEN = bytes(range(16))


def param(pid: int, value: bytes) -> bytes:
    return encode_varint(pid) + encode_varint(len(value)) + value


def int_param(pid: int, value: int) -> bytes:
    return param(pid, encode_varint(value))


def decode_error(data: bytes, from_server: bool = True) -> QuicError:
    with pytest.raises(QuicError) as info:
        decode_transport_parameters(data, from_server=from_server)
    assert info.value.code == TransportError.TRANSPORT_PARAMETER_ERROR
    return info.value


# ---------------------------------------------------------------- byte-exact encodings


def test_defaults_encode_to_nothing() -> None:
    assert encode_transport_parameters(TransportParameters()) == b""
    assert decode_transport_parameters(b"", from_server=True) == TransportParameters()


def test_client_encoding_is_byte_exact() -> None:
    params = TransportParameters(
        max_idle_timeout=30_000,
        initial_max_data=1_048_576,
        initial_max_streams_bidi=100,
        initial_source_connection_id=bytes.fromhex("0102030405060708"),
        disable_active_migration=True,
    )
    expected = bytes.fromhex(
        "01"
        "04"
        "80007530"  # max_idle_timeout 30000
        "04"
        "04"
        "80100000"  # initial_max_data 2^20
        "08"
        "02"
        "4064"  # initial_max_streams_bidi 100
        "0c"
        "00"  # disable_active_migration
        "0f"
        "08"
        "0102030405060708"  # initial_source_connection_id
    )
    assert encode_transport_parameters(params) == expected
    assert decode_transport_parameters(expected, from_server=False) == params


def test_server_encoding_is_byte_exact() -> None:
    params = TransportParameters(
        original_destination_connection_id=b"\xaa" * 4,
        stateless_reset_token=TOKEN,
        retry_source_connection_id=b"",
        max_datagram_frame_size=0,
        grease_quic_bit=True,
        version_information=VersionInformation(1, [1, 0x6B3343CF]),
    )
    expected = (
        bytes.fromhex("0004aaaaaaaa")
        + bytes.fromhex("0210")
        + TOKEN
        + bytes.fromhex("1000")  # retry_source_connection_id, present but empty
        + bytes.fromhex("110c00000001000000016b3343cf")
        + bytes.fromhex("200100")  # max_datagram_frame_size 0, kept as sent
        + bytes.fromhex("6ab200")  # grease_quic_bit, two-byte id
    )
    assert encode_transport_parameters(params) == expected
    assert decode_transport_parameters(expected, from_server=True) == params


def test_preferred_address_encoding_is_byte_exact() -> None:
    address = PreferredAddress(
        ipv4=("192.0.2.1", 443),
        ipv6=None,
        connection_id=b"\x11\x22",
        stateless_reset_token=TOKEN,
    )
    value = bytes.fromhex("c000020101bb") + bytes(18) + bytes.fromhex("021122") + TOKEN
    wire = param(TP.PREFERRED_ADDRESS, value)
    assert encode_transport_parameters(TransportParameters(preferred_address=address)) == wire
    decoded = decode_transport_parameters(wire, from_server=True)
    assert decoded.preferred_address == address


def test_grease_adds_one_reserved_parameter() -> None:
    params = TransportParameters(initial_max_data=10)
    plain = encode_transport_parameters(params)
    for _ in range(50):
        greased = encode_transport_parameters(params, grease=True)
        assert len(greased) > len(plain)
        assert decode_transport_parameters(greased, from_server=False) == params


def test_unknown_and_reserved_ids_are_ignored() -> None:
    data = (
        param(27, b"xyz")
        + param(31 * 1000 + 27, b"")
        + int_param(TP.INITIAL_MAX_DATA, 5)
        + param(0x1234, b"\xff" * 40)
    )
    assert decode_transport_parameters(data, from_server=False).initial_max_data == 5


# ---------------------------------------------------------------- round trips

cids = st.binary(max_size=20)
u62 = st.integers(0, VARINT_MAX)
versions = st.integers(1, 0xFFFF_FFFF)


@st.composite
def addresses(draw: st.DrawFn, family: type, bits: int) -> tuple[str, int] | None:
    host = str(family(draw(st.integers(0, (1 << bits) - 1))))
    port = draw(st.integers(0, 0xFFFF))
    if draw(st.booleans()) or (port == 0 and family(host).packed == bytes(bits // 8)):
        return None
    return host, port


preferred_addresses = st.builds(
    PreferredAddress,
    ipv4=addresses(ipaddress.IPv4Address, 32),
    ipv6=addresses(ipaddress.IPv6Address, 128),
    connection_id=st.binary(min_size=1, max_size=20),
    stateless_reset_token=st.binary(min_size=16, max_size=16),
)


def parameter_sets(from_server: bool) -> st.SearchStrategy[TransportParameters]:
    server_only = {
        "original_destination_connection_id": st.none() | cids,
        "stateless_reset_token": st.none() | st.binary(min_size=16, max_size=16),
        "preferred_address": st.none() | preferred_addresses,
        "retry_source_connection_id": st.none() | cids,
    }
    return st.builds(
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
        | st.builds(VersionInformation, versions, st.lists(versions, max_size=5)),
        max_datagram_frame_size=st.none() | u62,
        grease_quic_bit=st.booleans(),
        **(server_only if from_server else {}),
    )


@settings(max_examples=300, deadline=None)
@given(parameter_sets(from_server=False), st.booleans())
def test_client_parameters_round_trip(params: TransportParameters, grease: bool) -> None:
    data = encode_transport_parameters(params, grease=grease)
    assert decode_transport_parameters(data, from_server=False) == params
    assert decode_transport_parameters(data, from_server=True) == params


@settings(max_examples=300, deadline=None)
@given(parameter_sets(from_server=True), st.booleans())
def test_server_parameters_round_trip(params: TransportParameters, grease: bool) -> None:
    data = encode_transport_parameters(params, grease=grease)
    assert decode_transport_parameters(data, from_server=True) == params


def test_default_local_parameters_round_trip() -> None:
    params = default_local_parameters()
    params.initial_source_connection_id = b"\x01" * 8
    data = encode_transport_parameters(params)
    assert decode_transport_parameters(data, from_server=False) == params


# ---------------------------------------------------------------- validation, one rule each


def test_duplicate_parameter_is_rejected() -> None:
    decode_error(int_param(TP.INITIAL_MAX_DATA, 1) + int_param(TP.INITIAL_MAX_DATA, 1))


def test_duplicate_unknown_parameter_is_rejected() -> None:
    decode_error(param(27, b"") + param(27, b""))


@pytest.mark.parametrize(
    "value",
    [b"", b"\x05\x00", b"\x40", bytes.fromhex("4005") + b"\x00", b"\x80\x00\x00"],
    ids=["empty", "trailing", "truncated-2", "trailing-2", "truncated-4"],
)
def test_integer_value_must_be_exactly_one_varint(value: bytes) -> None:
    decode_error(param(TP.INITIAL_MAX_DATA, value))


def test_non_shortest_varint_filling_its_length_is_accepted() -> None:
    data = param(TP.INITIAL_MAX_DATA, bytes.fromhex("4005"))
    assert decode_transport_parameters(data, from_server=True).initial_max_data == 5


def test_max_udp_payload_size_below_1200() -> None:
    decode_error(int_param(TP.MAX_UDP_PAYLOAD_SIZE, 1199))
    decoded = decode_transport_parameters(
        int_param(TP.MAX_UDP_PAYLOAD_SIZE, 1200), from_server=True
    )
    assert decoded.max_udp_payload_size == 1200


def test_ack_delay_exponent_above_20() -> None:
    decode_error(int_param(TP.ACK_DELAY_EXPONENT, 21))
    assert (
        decode_transport_parameters(
            int_param(TP.ACK_DELAY_EXPONENT, 20), from_server=True
        ).ack_delay_exponent
        == 20
    )


def test_max_ack_delay_of_2_to_the_14() -> None:
    decode_error(int_param(TP.MAX_ACK_DELAY, 1 << 14))
    assert (
        decode_transport_parameters(
            int_param(TP.MAX_ACK_DELAY, (1 << 14) - 1), from_server=True
        ).max_ack_delay
        == (1 << 14) - 1
    )


def test_active_connection_id_limit_below_2() -> None:
    decode_error(int_param(TP.ACTIVE_CONNECTION_ID_LIMIT, 1))
    decode_error(int_param(TP.ACTIVE_CONNECTION_ID_LIMIT, 0))


@pytest.mark.parametrize("pid", [TP.INITIAL_MAX_STREAMS_BIDI, TP.INITIAL_MAX_STREAMS_UNI])
def test_initial_max_streams_above_2_to_the_60(pid: int) -> None:
    decode_error(int_param(pid, (1 << 60) + 1))
    decode_transport_parameters(int_param(pid, 1 << 60), from_server=True)


@pytest.mark.parametrize("size", [0, 15, 17])
def test_stateless_reset_token_must_be_16_bytes(size: int) -> None:
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
    decoded = decode_transport_parameters(param(pid, bytes(20)), from_server=True)
    assert getattr(decoded, TP(pid).name.lower()) == bytes(20)


@pytest.mark.parametrize("pid", [TP.DISABLE_ACTIVE_MIGRATION, TP.GREASE_QUIC_BIT])
def test_flag_with_a_value(pid: int) -> None:
    decode_error(param(pid, b"\x01"))


@pytest.mark.parametrize(
    "data",
    [
        param(TP.ORIGINAL_DESTINATION_CONNECTION_ID, b"\x01"),
        param(TP.STATELESS_RESET_TOKEN, TOKEN),
        param(TP.RETRY_SOURCE_CONNECTION_ID, b""),
        param(TP.PREFERRED_ADDRESS, bytes(24) + b"\x01\x01" + TOKEN),
    ],
    ids=["odcid", "reset-token", "retry-scid", "preferred-address"],
)
def test_server_only_parameter_from_a_client(data: bytes) -> None:
    decode_error(data, from_server=False)
    decode_transport_parameters(data, from_server=True)


@pytest.mark.parametrize(
    "value",
    [
        bytes(24) + b"\x00" + TOKEN,  # zero-length CID
        bytes(24) + b"\x15" + bytes(21) + TOKEN,  # 21-byte CID
        bytes(24) + b"\x01\x01" + TOKEN[:15],  # truncated token
        bytes(24) + b"\x01\x01" + TOKEN + b"\x00",  # trailing byte
        bytes(23),  # truncated addresses
        b"",
    ],
    ids=["zero-cid", "long-cid", "short-token", "trailing", "short-address", "empty"],
)
def test_malformed_preferred_address(value: bytes) -> None:
    decode_error(param(TP.PREFERRED_ADDRESS, value))


@pytest.mark.parametrize(
    "value",
    [
        b"",
        bytes.fromhex("000000010000"),
        bytes.fromhex("000001"),
        bytes.fromhex("0000000000000001"),
        bytes.fromhex("0000000100000000"),
    ],
    ids=["empty", "ragged", "short", "chosen-zero", "available-zero"],
)
def test_malformed_version_information(value: bytes) -> None:
    decode_error(param(TP.VERSION_INFORMATION, value))


def test_version_information_without_available_versions() -> None:
    data = param(TP.VERSION_INFORMATION, bytes.fromhex("00000001"))
    decoded = decode_transport_parameters(data, from_server=False)
    assert decoded.version_information == VersionInformation(1, [])


@pytest.mark.parametrize(
    "data",
    [b"\x40", b"\x04", b"\x04\x05\x01", b"\x04\x80\x00"],
    ids=["truncated-id", "missing-length", "short-value", "truncated-length"],
)
def test_truncated_list(data: bytes) -> None:
    decode_error(data)


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=200), st.booleans())
def test_fuzz_raises_only_transport_parameter_error(data: bytes, from_server: bool) -> None:
    try:
        decode_transport_parameters(data, from_server=from_server)
    except QuicError as error:
        assert error.code == TransportError.TRANSPORT_PARAMETER_ERROR


@settings(max_examples=1000, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([*TP, 27, 58]), st.binary(max_size=50)),
        max_size=8,
    ),
    st.booleans(),
)
def test_fuzz_known_ids_raise_only_transport_parameter_error(
    items: list[tuple[int, bytes]], from_server: bool
) -> None:
    data = b"".join(param(pid, value) for pid, value in items)
    try:
        decode_transport_parameters(data, from_server=from_server)
    except QuicError as error:
        assert error.code == TransportError.TRANSPORT_PARAMETER_ERROR


# ---------------------------------------------------------------- socket API records


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


def test_to_uapi_converts_milliseconds_to_microseconds() -> None:
    rec = params_to_uapi(default_local_parameters())
    assert rec.max_idle_timeout == 30_000_000
    assert rec.max_ack_delay == 25_000
    assert rec.max_datagram_frame_size == 0
    assert (rec.disable_active_migration, rec.grease_quic_bit, rec.remote) == (0, 0, 0)
    assert rec.max_data == 2_097_120
    assert rec.max_stream_data_uni == 1_048_560
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
        active_connection_id_limit=1000,
        initial_max_streams_bidi=1 << 60,
        initial_max_data=VARINT_MAX,
    )
    rec = params_to_uapi(peer)
    assert (rec.disable_active_migration, rec.grease_quic_bit, rec.stateless_reset) == (1, 1, 1)
    assert rec.max_datagram_frame_size == 0xFFFF
    assert rec.max_idle_timeout == 0xFFFF_FFFF
    assert rec.max_data == VARINT_MAX
    rec.pack()  # every field fits its C type


def test_from_uapi_zero_record_changes_nothing() -> None:
    base = default_local_parameters()
    merged = params_from_uapi(QuicTransportParam(), base)
    assert merged == base
    assert merged is not base


def test_from_uapi_merges_and_converts_microseconds() -> None:
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
    assert merged.initial_max_streams_bidi == 100  # untouched
    assert merged.disable_active_migration is False
    assert base == default_local_parameters()  # base not mutated


def test_uapi_round_trip_of_local_parameters() -> None:
    base = TransportParameters()
    params = default_local_parameters()
    params.max_datagram_frame_size = 1200
    params.disable_active_migration = True
    assert params_from_uapi(params_to_uapi(params), base) == params


@pytest.mark.parametrize(
    ("field", "value"),
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
        ("max_data", (2**31 - 1) // 4 + 1),
        ("max_stream_data_bidi_local", 1199),
        ("max_stream_data_bidi_local", (2**31 - 1) // 8 + 1),
        ("max_stream_data_bidi_remote", (2**31 - 1) // 8 + 1),
        ("max_stream_data_uni", 1199),
    ],
)
def test_from_uapi_limits(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=field):
        params_from_uapi(QuicTransportParam(**{field: value}), default_local_parameters())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("active_connection_id_limit", 2),
        ("active_connection_id_limit", 8),
        ("ack_delay_exponent", 20),
        ("max_udp_payload_size", 1200),
        ("max_udp_payload_size", 65527),
        ("max_idle_timeout", 1_000_000),
        ("max_ack_delay", 16_383_999),
        ("max_streams_bidi", 4096),
        ("max_data", (2**31 - 1) // 4),
        ("max_stream_data_uni", (2**31 - 1) // 8),
    ],
)
def test_from_uapi_limits_inclusive(field: str, value: int) -> None:
    params_from_uapi(QuicTransportParam(**{field: value}), default_local_parameters())
