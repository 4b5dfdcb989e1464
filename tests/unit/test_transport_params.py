"""Transport parameters: encodings, validation rules, hostile input, socket records."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quic import uapi
from quic.errors import QuicError, TransportError
from quic.transport_params import (
    PreferredAddress,
    TransportParameters,
    VersionInformation,
    decode_transport_parameters,
    default_local_parameters,
    encode_transport_parameters,
    params_from_uapi,
    params_to_uapi,
)

CID = st.binary(max_size=20)
INT = st.integers(min_value=0, max_value=(1 << 62) - 1)


def test_byte_exact_encoding() -> None:
    params = TransportParameters(
        max_idle_timeout=30000,
        initial_max_data=1 << 20,
        initial_source_connection_id=b"\x01\x02",
        disable_active_migration=True,
        max_datagram_frame_size=65535,
    )
    expected = (
        "0104" + "80007530" + "0404" + "80100000" + "0c00" + "0f02" + "0102" + "2004" + "8000ffff"
    )
    assert encode_transport_parameters(params).hex() == expected
    assert decode_transport_parameters(bytes.fromhex(expected), from_server=False) == params


def test_defaults_are_not_sent() -> None:
    assert encode_transport_parameters(TransportParameters()) == b""


@st.composite
def parameter_sets(draw, server: bool):
    params = TransportParameters(
        max_idle_timeout=draw(INT),
        max_udp_payload_size=draw(st.integers(1200, (1 << 62) - 1)),
        initial_max_data=draw(INT),
        initial_max_stream_data_bidi_local=draw(INT),
        initial_max_stream_data_bidi_remote=draw(INT),
        initial_max_stream_data_uni=draw(INT),
        initial_max_streams_bidi=draw(st.integers(0, 1 << 60)),
        initial_max_streams_uni=draw(st.integers(0, 1 << 60)),
        ack_delay_exponent=draw(st.integers(0, 20)),
        max_ack_delay=draw(st.integers(0, (1 << 14) - 1)),
        disable_active_migration=draw(st.booleans()),
        active_connection_id_limit=draw(st.integers(2, 1 << 30)),
        initial_source_connection_id=draw(CID),
        max_datagram_frame_size=draw(st.none() | st.integers(1, 1 << 30)),
        grease_quic_bit=draw(st.booleans()),
        version_information=draw(
            st.none()
            | st.builds(
                VersionInformation,
                st.integers(1, 2**32 - 1),
                st.lists(st.integers(1, 2**32 - 1), max_size=4),
            )
        ),
    )
    if server:
        params.original_destination_connection_id = draw(CID)
        params.retry_source_connection_id = draw(st.none() | CID)
        params.stateless_reset_token = draw(st.none() | st.binary(min_size=16, max_size=16))
        params.preferred_address = draw(
            st.none()
            | st.builds(
                PreferredAddress,
                st.none() | st.tuples(st.just("192.0.2.1"), st.integers(1, 65535)),
                st.none() | st.tuples(st.just("2001:db8::1"), st.integers(1, 65535)),
                st.binary(min_size=1, max_size=20),
                st.binary(min_size=16, max_size=16),
            )
        )
    return params


@given(parameter_sets(server=False), st.booleans())
def test_client_sets_round_trip(params, grease) -> None:
    wire = encode_transport_parameters(params, grease=grease)
    assert decode_transport_parameters(wire, from_server=False) == params


@given(parameter_sets(server=True), st.booleans())
def test_server_sets_round_trip(params, grease) -> None:
    wire = encode_transport_parameters(params, grease=grease)
    assert decode_transport_parameters(wire, from_server=True) == params


def reject(wire: str, from_server: bool = True) -> None:
    with pytest.raises(QuicError) as info:
        decode_transport_parameters(bytes.fromhex(wire), from_server=from_server)
    assert info.value.code == TransportError.TRANSPORT_PARAMETER_ERROR


@pytest.mark.parametrize(
    "wire",
    [
        "0401050401",  # duplicate initial_max_data
        "04020500",  # value longer than its integer
        "0302" + "44af",  # max_udp_payload_size 1199
        "0a0115",  # ack_delay_exponent 21
        "0b02" + "8000",  # truncated varint inside the value
        "0b04" + "80004000",  # max_ack_delay 2^14
        "0e0101",  # active_connection_id_limit 1
        "0808" + "d000000000000001",  # initial_max_streams_bidi above 2^60
        "020f" + "00" * 15,  # stateless_reset_token of 15 bytes
        "0f15" + "00" * 21,  # initial_source_connection_id of 21 bytes
        "0c0100",  # flag with a value
        "0d" + "29" + "00" * 24 + "00" + "00" * 16,  # preferred_address, empty CID
        "1103" + "000001",  # version_information not a multiple of 4
        "1104" + "00000000",  # chosen version 0
        "0105" + "01",  # length beyond the data
    ],
)
def test_validation_rules(wire: str) -> None:
    reject(wire)


@pytest.mark.parametrize(
    "wire", ["0000", "0210" + "00" * 16, "1000", "0d" + "2a" + "00" * 24 + "01aa" + "00" * 16]
)
def test_server_only_parameters_from_a_client(wire: str) -> None:
    reject(wire, from_server=False)


def test_unknown_and_reserved_parameters_are_ignored() -> None:
    assert (
        decode_transport_parameters(bytes.fromhex("4a2b03616263" + "3f00"), from_server=True)
        == TransportParameters()
    )


@given(st.binary(max_size=200), st.booleans())
def test_fuzz_only_transport_parameter_error(data: bytes, from_server: bool) -> None:
    try:
        decode_transport_parameters(data, from_server=from_server)
    except QuicError as exc:
        assert exc.code == TransportError.TRANSPORT_PARAMETER_ERROR


def test_uapi_defaults_and_units() -> None:
    params = default_local_parameters()
    rec = params_to_uapi(params)
    assert rec.max_idle_timeout == 30_000_000 and rec.max_ack_delay == 25_000
    assert rec.max_data == 65535 * 32 and rec.max_stream_data_uni == 65535 * 16
    assert rec.active_connection_id_limit == 7 and rec.max_streams_bidi == 100
    assert len(rec.pack()) == 56


def test_uapi_merge_semantics_and_limits() -> None:
    base = default_local_parameters()
    merged = params_from_uapi(
        uapi.QuicTransportParam(max_idle_timeout=5_000_000, max_streams_uni=7), base
    )
    assert merged.max_idle_timeout == 5000 and merged.initial_max_streams_uni == 7
    assert merged.initial_max_data == base.initial_max_data  # zero fields leave values alone
    for bad in (
        uapi.QuicTransportParam(active_connection_id_limit=9),
        uapi.QuicTransportParam(max_udp_payload_size=1000),
        uapi.QuicTransportParam(max_idle_timeout=500_000),
        uapi.QuicTransportParam(max_data=1 << 31),
    ):
        with pytest.raises(ValueError):
            params_from_uapi(bad, base)
