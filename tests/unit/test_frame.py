"""Frames: byte-exact encodings, round-trips of every type, and hostile input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quic.errors import QuicError, TransportError
from quic.frame import (
    Ack,
    ConnectionClose,
    Crypto,
    DataBlocked,
    Datagram,
    HandshakeDone,
    MaxData,
    MaxStreamData,
    MaxStreams,
    NewConnectionId,
    NewToken,
    Padding,
    PathChallenge,
    PathResponse,
    Ping,
    ResetStream,
    RetireConnectionId,
    StopSending,
    Stream,
    StreamDataBlocked,
    StreamsBlocked,
    check_frames_allowed,
    decode_frames,
    encode_frame,
    encode_stream_header,
    is_ack_eliciting,
    stream_header_size,
)
from quic.packet import PacketType

V = st.integers(min_value=0, max_value=(1 << 62) - 1)
SMALL = st.integers(min_value=0, max_value=1 << 40)


def encode(*frames) -> bytes:
    buf = bytearray()
    for frame in frames:
        encode_frame(frame, buf)
    return bytes(buf)


@st.composite
def acks(draw):
    largest = draw(st.integers(min_value=0, max_value=1 << 40))
    first = draw(st.integers(min_value=0, max_value=min(largest, 1000)))
    ranges = [(largest - first, largest)]
    for _ in range(draw(st.integers(0, 6))):
        low = ranges[-1][0]
        if low < 2:
            break
        high = low - 2 - draw(st.integers(0, max(0, min(low - 2, 50))))
        if high < 0:
            break
        ranges.append((high - draw(st.integers(0, min(high, 50))), high))
    ecn = draw(st.none() | st.tuples(SMALL, SMALL, SMALL))
    return Ack(largest, draw(SMALL), ranges, ecn)


FRAMES = st.one_of(
    st.builds(Ping),
    acks(),
    st.builds(ResetStream, V, V, V),
    st.builds(StopSending, V, V),
    st.builds(Crypto, SMALL, st.binary(max_size=100)),
    st.builds(NewToken, st.binary(min_size=1, max_size=50)),
    st.builds(Stream, V, SMALL, st.binary(max_size=100), st.booleans()),
    st.builds(MaxData, V),
    st.builds(MaxStreamData, V, V),
    st.builds(MaxStreams, st.booleans(), st.integers(0, 1 << 60)),
    st.builds(DataBlocked, V),
    st.builds(StreamDataBlocked, V, V),
    st.builds(StreamsBlocked, st.booleans(), st.integers(0, 1 << 60)),
    st.integers(0, 1 << 40).flatmap(
        lambda seq: st.builds(
            NewConnectionId,
            st.just(seq),
            st.integers(0, seq),
            st.binary(min_size=1, max_size=20),
            st.binary(min_size=16, max_size=16),
        )
    ),
    st.builds(RetireConnectionId, V),
    st.builds(PathChallenge, st.binary(min_size=8, max_size=8)),
    st.builds(PathResponse, st.binary(min_size=8, max_size=8)),
    st.builds(ConnectionClose, V, st.none() | V, st.binary(max_size=40)),
    st.builds(HandshakeDone),
    st.builds(Datagram, st.binary(max_size=100), st.just(True)),
)


@given(FRAMES)
def test_every_frame_round_trips(frame) -> None:
    assert decode_frames(encode(frame)) == [frame]


@given(st.lists(FRAMES, min_size=1, max_size=8), st.binary(max_size=60))
def test_mixed_payload_round_trips(frames, tail) -> None:
    decoded = decode_frames(encode(*frames, Datagram(tail, with_length=False)))
    assert decoded == [*frames, Datagram(tail, with_length=False)]


def test_byte_exact_encodings() -> None:
    assert encode(Ack(10, 3, [(8, 10), (2, 5)], None)).hex() == "020a0301020103"
    assert encode(Ack(10, 3, [(10, 10)], (1, 2, 3))).hex() == "030a030000010203"
    assert encode(Stream(4, 0, b"hi", True)).hex() == "0b04026869"
    assert encode(Stream(4, 100, b"hi", False)).hex() == "0e04406402" + "6869"
    assert encode(ConnectionClose(0x0A, 0x08, b"x")).hex() == "1c0a080178"
    assert encode(ConnectionClose(0x42, None, b"")).hex() == "1d4042" + "00"
    assert encode(NewConnectionId(1, 0, b"\xaa", bytes(16))).hex() == "18010001aa" + "00" * 16
    assert encode(MaxStreams(False, 5), HandshakeDone(), Ping()).hex() == "13051e01"
    assert encode_stream_header(1, 0, 1200, False) == bytes.fromhex("0a01" + "44b0")
    assert stream_header_size(1, 70000, 1200) == 1 + 1 + 4 + 2


def test_padding_runs_collapse() -> None:
    assert decode_frames(bytes(1000) + b"\x01" + bytes(5)) == [Padding(1000), Ping(), Padding(5)]


def expect(payload: bytes, code: int = TransportError.FRAME_ENCODING_ERROR) -> QuicError:
    with pytest.raises(QuicError) as info:
        decode_frames(payload)
    assert info.value.code == code
    return info.value


def test_validation_rules() -> None:
    assert expect(bytes.fromhex("21")).frame_type == 0x21  # unknown type
    expect(b"", TransportError.PROTOCOL_VIOLATION)
    expect(bytes.fromhex("4001"), TransportError.PROTOCOL_VIOLATION)  # PING in two bytes
    assert expect(bytes.fromhex("0205000600")).frame_type == 0x02  # first range > largest
    expect(bytes.fromhex("020a000102" + "0a01"))  # second range below zero
    expect(bytes.fromhex("020a0040ff00"))  # absurd range count
    expect(bytes.fromhex("0e04" + "ffffffffffffffff" + "02" + "6869"))  # beyond 2^62-1
    expect(bytes.fromhex("12" + "d000000000000001"))  # MAX_STREAMS above 2^60
    expect(bytes.fromhex("180100" + "00") + bytes(16))  # zero-length CID
    expect(bytes.fromhex("180100" + "15") + bytes(21 + 16))  # CID of 21 bytes
    expect(bytes.fromhex("180002" + "01aa") + bytes(16))  # retire_prior_to > sequence
    expect(bytes.fromhex("180100" + "01aa") + bytes(15))  # short reset token
    expect(bytes.fromhex("0700"))  # empty NEW_TOKEN
    expect(bytes.fromhex("1a0102"))  # short PATH_CHALLENGE
    expect(bytes.fromhex("1c00000a6869"))  # reason longer than the frame


def test_frames_allowed_per_packet_type() -> None:
    check_frames_allowed(
        [Padding(3), Ping(), Ack(1, 0, [(0, 1)]), Crypto(0, b"x")], PacketType.INITIAL
    )
    check_frames_allowed([ConnectionClose(1, 0, b"")], PacketType.HANDSHAKE)
    for frame, ptype in [
        (Stream(0, 0, b"x"), PacketType.INITIAL),
        (ConnectionClose(1, None, b""), PacketType.HANDSHAKE),
        (Ack(1, 0, [(0, 1)]), PacketType.ZERO_RTT),
        (HandshakeDone(), PacketType.ZERO_RTT),
    ]:
        with pytest.raises(QuicError) as info:
            check_frames_allowed([frame], ptype)
        assert info.value.code == TransportError.PROTOCOL_VIOLATION
    check_frames_allowed([Stream(0, 0, b"x"), HandshakeDone()], PacketType.ONE_RTT)
    assert not is_ack_eliciting(0x02) and is_ack_eliciting(0x08)


def _only_protocol_errors(data: bytes) -> None:
    try:
        decode_frames(data)
    except QuicError as exc:
        assert exc.code in (TransportError.FRAME_ENCODING_ERROR, TransportError.PROTOCOL_VIOLATION)


@given(st.binary(max_size=300))
def test_fuzz_random_bytes(data: bytes) -> None:
    _only_protocol_errors(data)


@given(FRAMES, st.data())
def test_fuzz_truncated_and_flipped(frame, data) -> None:
    wire = encode(frame)
    for cut in range(len(wire)):
        _only_protocol_errors(wire[:cut])
    if wire:
        pos = data.draw(st.integers(0, len(wire) - 1))
        flipped = bytearray(wire)
        flipped[pos] ^= data.draw(st.integers(1, 255))
        _only_protocol_errors(bytes(flipped))
