"""Variable-length integers, RFC 9000 §16 and App. A.1."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quic.errors import QuicError, TransportError
from quic.varint import VARINT_MAX, Reader, encode_varint, encode_varint_len, varint_size

RFC_EXAMPLES = [
    ("c2197c5eff14e88c", 151288809941952652),
    ("9d7f3e7d", 494878333),
    ("7bbd", 15293),
    ("25", 37),
    ("4025", 37),  # a non-minimal encoding still decodes
]


@pytest.mark.parametrize(("wire", "value"), RFC_EXAMPLES)
def test_rfc9000_appendix_a1_examples(wire: str, value: int) -> None:
    reader = Reader(bytes.fromhex(wire))
    assert reader.varint() == value
    assert reader.eof()


def test_shortest_encoding_matches_rfc() -> None:
    for wire, value in RFC_EXAMPLES[:4]:
        assert encode_varint(value).hex() == wire


@given(st.integers(min_value=0, max_value=VARINT_MAX))
def test_round_trip_and_size(value: int) -> None:
    wire = encode_varint(value)
    assert len(wire) == varint_size(value)
    assert Reader(wire).varint() == value


@given(st.integers(min_value=0, max_value=VARINT_MAX), st.sampled_from([1, 2, 4, 8]))
def test_fixed_width_encoding(value: int, size: int) -> None:
    if value >= 1 << (8 * size - 2):
        with pytest.raises(ValueError):
            encode_varint_len(value, size)
    else:
        wire = encode_varint_len(value, size)
        assert len(wire) == size
        assert Reader(wire).varint() == value


@pytest.mark.parametrize("value", [-1, VARINT_MAX + 1])
def test_out_of_range_is_refused(value: int) -> None:
    with pytest.raises(ValueError):
        encode_varint(value)


@given(st.binary(max_size=9))
def test_truncated_input_raises_the_readers_code(data: bytes) -> None:
    reader = Reader(data, error=TransportError.TRANSPORT_PARAMETER_ERROR)
    try:
        reader.varint()
    except QuicError as exc:
        assert exc.code == TransportError.TRANSPORT_PARAMETER_ERROR


def test_length_field_is_bounds_checked() -> None:
    reader = Reader(b"\x05abc")
    with pytest.raises(QuicError) as info:
        reader.varint_bytes()
    assert info.value.code == TransportError.FRAME_ENCODING_ERROR
