"""QUIC frames (RFC 9000 §19, RFC 9221 DATAGRAM): one data class each, encode and decode.

Decoding reads through :class:`~quic.varint.Reader`, so every length is bounds-checked
and every malformed frame raises :class:`~quic.errors.QuicError` with
FRAME_ENCODING_ERROR (or PROTOCOL_VIOLATION where RFC 9000 says so) and the frame type.
STREAM and DATAGRAM payloads come out as memoryviews into the packet: no copy on the
hot path.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from .errors import QuicError, TransportError
from .varint import VARINT_MAX, Reader, encode_varint, varint_size

STREAM_OFF_BIT = 0x04
STREAM_LEN_BIT = 0x02
STREAM_FIN_BIT = 0x01
MAX_STREAMS_LIMIT = 1 << 60
MAX_CID_LENGTH = 20


class FrameType(IntEnum):
    PADDING = 0x00
    PING = 0x01
    ACK = 0x02
    ACK_ECN = 0x03
    RESET_STREAM = 0x04
    STOP_SENDING = 0x05
    CRYPTO = 0x06
    NEW_TOKEN = 0x07
    STREAM = 0x08  # 0x08..0x0f with the OFF, LEN and FIN bits
    MAX_DATA = 0x10
    MAX_STREAM_DATA = 0x11
    MAX_STREAMS_BIDI = 0x12
    MAX_STREAMS_UNI = 0x13
    DATA_BLOCKED = 0x14
    STREAM_DATA_BLOCKED = 0x15
    STREAMS_BLOCKED_BIDI = 0x16
    STREAMS_BLOCKED_UNI = 0x17
    NEW_CONNECTION_ID = 0x18
    RETIRE_CONNECTION_ID = 0x19
    PATH_CHALLENGE = 0x1A
    PATH_RESPONSE = 0x1B
    CONNECTION_CLOSE = 0x1C
    CONNECTION_CLOSE_APP = 0x1D
    HANDSHAKE_DONE = 0x1E
    DATAGRAM = 0x30
    DATAGRAM_LEN = 0x31


@dataclass(slots=True)
class Padding:
    length: int = 1


@dataclass(slots=True)
class Ping:
    pass


@dataclass(slots=True)
class Ack:
    largest: int
    ack_delay: int  # as on the wire, before scaling by ack_delay_exponent
    ranges: list[tuple[int, int]]  # inclusive (low, high), highest first
    ecn: tuple[int, int, int] | None = None  # ECT(0), ECT(1), CE


@dataclass(slots=True)
class ResetStream:
    stream_id: int
    error_code: int
    final_size: int


@dataclass(slots=True)
class StopSending:
    stream_id: int
    error_code: int


@dataclass(slots=True)
class Crypto:
    offset: int
    data: bytes


@dataclass(slots=True)
class NewToken:
    token: bytes


@dataclass(slots=True)
class Stream:
    stream_id: int
    offset: int
    data: bytes | memoryview
    fin: bool = False

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Stream)
            and (self.stream_id, self.offset, self.fin)
            == (other.stream_id, other.offset, other.fin)
            and bytes(self.data) == bytes(other.data)
        )


@dataclass(slots=True)
class MaxData:
    maximum: int


@dataclass(slots=True)
class MaxStreamData:
    stream_id: int
    maximum: int


@dataclass(slots=True)
class MaxStreams:
    bidi: bool
    maximum: int


@dataclass(slots=True)
class DataBlocked:
    limit: int


@dataclass(slots=True)
class StreamDataBlocked:
    stream_id: int
    limit: int


@dataclass(slots=True)
class StreamsBlocked:
    bidi: bool
    limit: int


@dataclass(slots=True)
class NewConnectionId:
    sequence: int
    retire_prior_to: int
    cid: bytes
    stateless_reset_token: bytes


@dataclass(slots=True)
class RetireConnectionId:
    sequence: int


@dataclass(slots=True)
class PathChallenge:
    data: bytes


@dataclass(slots=True)
class PathResponse:
    data: bytes


@dataclass(slots=True)
class ConnectionClose:
    error_code: int
    frame_type: int | None  # None: the application variant 0x1d
    reason: bytes = b""


@dataclass(slots=True)
class HandshakeDone:
    pass


@dataclass(slots=True)
class Datagram:
    data: bytes | memoryview
    with_length: bool = True

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Datagram)
            and self.with_length == other.with_length
            and bytes(self.data) == bytes(other.data)
        )


Frame = (
    Padding
    | Ping
    | Ack
    | ResetStream
    | StopSending
    | Crypto
    | NewToken
    | Stream
    | MaxData
    | MaxStreamData
    | MaxStreams
    | DataBlocked
    | StreamDataBlocked
    | StreamsBlocked
    | NewConnectionId
    | RetireConnectionId
    | PathChallenge
    | PathResponse
    | ConnectionClose
    | HandshakeDone
    | Datagram
)

# ---------------------------------------------------------------------------
# encoding


def encode_stream_header(stream_id: int, offset: int, length: int, fin: bool) -> bytes:
    """The STREAM frame header (always with a Length; Offset only when not zero)."""
    ftype = FrameType.STREAM | STREAM_LEN_BIT | (STREAM_FIN_BIT if fin else 0)
    if offset:
        ftype |= STREAM_OFF_BIT
        return (
            bytes((ftype,))
            + encode_varint(stream_id)
            + encode_varint(offset)
            + encode_varint(length)
        )
    return bytes((ftype,)) + encode_varint(stream_id) + encode_varint(length)


def stream_header_size(stream_id: int, offset: int, length: int) -> int:
    return 1 + varint_size(stream_id) + (varint_size(offset) if offset else 0) + varint_size(length)


def _encode_ack(frame: Ack, buf: bytearray) -> None:
    ranges = frame.ranges
    buf.append(FrameType.ACK_ECN if frame.ecn else FrameType.ACK)
    low, high = ranges[0]
    buf += encode_varint(high)
    buf += encode_varint(frame.ack_delay)
    buf += encode_varint(len(ranges) - 1)
    buf += encode_varint(high - low)
    previous_low = low
    for low, high in ranges[1:]:
        buf += encode_varint(previous_low - high - 2)
        buf += encode_varint(high - low)
        previous_low = low
    if frame.ecn:
        for count in frame.ecn:
            buf += encode_varint(count)


def _encode_connection_close(frame: ConnectionClose, buf: bytearray) -> None:
    if frame.frame_type is None:
        buf.append(FrameType.CONNECTION_CLOSE_APP)
        buf += encode_varint(frame.error_code)
    else:
        buf.append(FrameType.CONNECTION_CLOSE)
        buf += encode_varint(frame.error_code)
        buf += encode_varint(frame.frame_type)
    buf += encode_varint(len(frame.reason))
    buf += frame.reason


def encode_frame(frame: Frame, buf: bytearray) -> None:
    """Append ``frame`` to ``buf``."""
    kind = type(frame)
    if kind is Stream:
        data = frame.data
        buf += encode_stream_header(frame.stream_id, frame.offset, len(data), frame.fin)
        buf += data
    elif kind is Ack:
        _encode_ack(frame, buf)
    elif kind is Padding:
        buf += bytes(frame.length)
    elif kind is Ping:
        buf.append(FrameType.PING)
    elif kind is Crypto:
        buf.append(FrameType.CRYPTO)
        buf += encode_varint(frame.offset)
        buf += encode_varint(len(frame.data))
        buf += frame.data
    elif kind is ConnectionClose:
        _encode_connection_close(frame, buf)
    elif kind is Datagram:
        if frame.with_length:
            buf.append(FrameType.DATAGRAM_LEN)
            buf += encode_varint(len(frame.data))
        else:
            buf.append(FrameType.DATAGRAM)
        buf += frame.data
    elif kind is NewConnectionId:
        buf.append(FrameType.NEW_CONNECTION_ID)
        buf += encode_varint(frame.sequence)
        buf += encode_varint(frame.retire_prior_to)
        buf.append(len(frame.cid))
        buf += frame.cid
        buf += frame.stateless_reset_token
    elif kind is NewToken:
        buf.append(FrameType.NEW_TOKEN)
        buf += encode_varint(len(frame.token))
        buf += frame.token
    elif kind in (PathChallenge, PathResponse):
        buf.append(FrameType.PATH_CHALLENGE if kind is PathChallenge else FrameType.PATH_RESPONSE)
        buf += frame.data
    elif kind is HandshakeDone:
        buf.append(FrameType.HANDSHAKE_DONE)
    else:
        ftype, fields = _simple_fields(frame)
        buf += encode_varint(ftype)
        for value in fields:
            buf += encode_varint(value)


def _simple_fields(frame: Frame) -> tuple[int, tuple[int, ...]]:
    """Frames made only of varints: their type and field values."""
    kind = type(frame)
    if kind is ResetStream:
        return FrameType.RESET_STREAM, (frame.stream_id, frame.error_code, frame.final_size)
    if kind is StopSending:
        return FrameType.STOP_SENDING, (frame.stream_id, frame.error_code)
    if kind is MaxData:
        return FrameType.MAX_DATA, (frame.maximum,)
    if kind is MaxStreamData:
        return FrameType.MAX_STREAM_DATA, (frame.stream_id, frame.maximum)
    if kind is MaxStreams:
        ftype = FrameType.MAX_STREAMS_BIDI if frame.bidi else FrameType.MAX_STREAMS_UNI
        return ftype, (frame.maximum,)
    if kind is DataBlocked:
        return FrameType.DATA_BLOCKED, (frame.limit,)
    if kind is StreamDataBlocked:
        return FrameType.STREAM_DATA_BLOCKED, (frame.stream_id, frame.limit)
    if kind is StreamsBlocked:
        ftype = FrameType.STREAMS_BLOCKED_BIDI if frame.bidi else FrameType.STREAMS_BLOCKED_UNI
        return ftype, (frame.limit,)
    if kind is RetireConnectionId:
        return FrameType.RETIRE_CONNECTION_ID, (frame.sequence,)
    raise TypeError(f"not a frame: {frame!r}")


# ---------------------------------------------------------------------------
# decoding


def _decode_ack(r: Reader, ftype: int) -> Ack:
    largest = r.varint()
    delay = r.varint()
    count = r.varint()
    first = r.varint()
    if first > largest:
        raise r.fail("first ACK range below zero")
    if count > r.remaining() // 2:
        raise r.fail("ACK range count exceeds the frame")
    low = largest - first
    ranges = [(low, largest)]
    for _ in range(count):
        gap = r.varint()
        length = r.varint()
        high = low - gap - 2
        if high < 0 or length > high:
            raise r.fail("ACK range below zero")
        low = high - length
        ranges.append((low, high))
    ecn = (r.varint(), r.varint(), r.varint()) if ftype == FrameType.ACK_ECN else None
    return Ack(largest, delay, ranges, ecn)


def _decode_stream(r: Reader, ftype: int) -> Stream:
    stream_id = r.varint()
    offset = r.varint() if ftype & STREAM_OFF_BIT else 0
    length = r.varint() if ftype & STREAM_LEN_BIT else r.remaining()
    if offset + length > VARINT_MAX:
        raise r.fail("stream data beyond 2^62-1")
    return Stream(stream_id, offset, r.view(length), bool(ftype & STREAM_FIN_BIT))


def _decode_crypto(r: Reader, ftype: int) -> Crypto:
    offset = r.varint()
    length = r.varint()
    if offset + length > VARINT_MAX:
        raise r.fail("crypto data beyond 2^62-1")
    return Crypto(offset, r.bytes(length))


def _decode_new_token(r: Reader, ftype: int) -> NewToken:
    token = r.varint_bytes()
    if not token:
        raise r.fail("empty NEW_TOKEN")
    return NewToken(token)


def _decode_max_streams(r: Reader, ftype: int) -> MaxStreams | StreamsBlocked:
    value = r.varint()
    if value > MAX_STREAMS_LIMIT:
        raise r.fail("stream count above 2^60")
    bidi = ftype in (FrameType.MAX_STREAMS_BIDI, FrameType.STREAMS_BLOCKED_BIDI)
    if ftype in (FrameType.MAX_STREAMS_BIDI, FrameType.MAX_STREAMS_UNI):
        return MaxStreams(bidi, value)
    return StreamsBlocked(bidi, value)


def _decode_new_connection_id(r: Reader, ftype: int) -> NewConnectionId:
    sequence = r.varint()
    retire_prior_to = r.varint()
    if retire_prior_to > sequence:
        raise r.fail("retire_prior_to above sequence number")
    length = r.uint8()
    if not 1 <= length <= MAX_CID_LENGTH:
        raise r.fail(f"connection ID length {length}")
    cid = r.bytes(length)
    return NewConnectionId(sequence, retire_prior_to, cid, r.bytes(16))


def _decode_close(r: Reader, ftype: int) -> ConnectionClose:
    code = r.varint()
    frame_type = r.varint() if ftype == FrameType.CONNECTION_CLOSE else None
    return ConnectionClose(code, frame_type, r.varint_bytes())


def _decode_datagram(r: Reader, ftype: int) -> Datagram:
    if ftype == FrameType.DATAGRAM_LEN:
        return Datagram(r.view(r.varint()), True)
    return Datagram(r.view(r.remaining()), False)


_DECODERS = {
    FrameType.PING: lambda r, t: Ping(),
    FrameType.ACK: _decode_ack,
    FrameType.ACK_ECN: _decode_ack,
    FrameType.RESET_STREAM: lambda r, t: ResetStream(r.varint(), r.varint(), r.varint()),
    FrameType.STOP_SENDING: lambda r, t: StopSending(r.varint(), r.varint()),
    FrameType.CRYPTO: _decode_crypto,
    FrameType.NEW_TOKEN: _decode_new_token,
    FrameType.MAX_DATA: lambda r, t: MaxData(r.varint()),
    FrameType.MAX_STREAM_DATA: lambda r, t: MaxStreamData(r.varint(), r.varint()),
    FrameType.MAX_STREAMS_BIDI: _decode_max_streams,
    FrameType.MAX_STREAMS_UNI: _decode_max_streams,
    FrameType.DATA_BLOCKED: lambda r, t: DataBlocked(r.varint()),
    FrameType.STREAM_DATA_BLOCKED: lambda r, t: StreamDataBlocked(r.varint(), r.varint()),
    FrameType.STREAMS_BLOCKED_BIDI: _decode_max_streams,
    FrameType.STREAMS_BLOCKED_UNI: _decode_max_streams,
    FrameType.NEW_CONNECTION_ID: _decode_new_connection_id,
    FrameType.RETIRE_CONNECTION_ID: lambda r, t: RetireConnectionId(r.varint()),
    FrameType.PATH_CHALLENGE: lambda r, t: PathChallenge(r.bytes(8)),
    FrameType.PATH_RESPONSE: lambda r, t: PathResponse(r.bytes(8)),
    FrameType.CONNECTION_CLOSE: _decode_close,
    FrameType.CONNECTION_CLOSE_APP: _decode_close,
    FrameType.HANDSHAKE_DONE: lambda r, t: HandshakeDone(),
    FrameType.DATAGRAM: _decode_datagram,
    FrameType.DATAGRAM_LEN: _decode_datagram,
}
for _t in range(FrameType.STREAM, FrameType.STREAM + 8):
    _DECODERS[_t] = _decode_stream


def decode_frames(payload: bytes | bytearray | memoryview) -> list[Frame]:
    """Every frame of a packet payload, in order."""
    if not payload:
        raise QuicError(TransportError.PROTOCOL_VIOLATION, 0, "packet without frames")
    data = payload if isinstance(payload, (bytes, bytearray)) else bytes(payload)
    r = Reader(data)
    frames: list[Frame] = []
    decoders = _DECODERS
    end = r.end
    while r.pos < end:
        start = r.pos
        first = data[start]
        if first == 0:
            stop = _skip_zeros(data, start, end)
            frames.append(Padding(stop - start))
            r.pos = stop
            continue
        r.frame_type = 0
        ftype = r.varint()
        if r.pos - start != varint_size(ftype):
            raise QuicError(
                TransportError.PROTOCOL_VIOLATION, ftype, "frame type not minimally encoded"
            )
        decoder = decoders.get(ftype)
        if decoder is None:
            raise QuicError(
                TransportError.FRAME_ENCODING_ERROR, ftype, f"unknown frame type 0x{ftype:x}"
            )
        r.frame_type = ftype
        frames.append(decoder(r, ftype))
    return frames


def _skip_zeros(data: bytes | bytearray, start: int, end: int) -> int:
    """First non-zero position at or after ``start`` (PADDING runs), without a byte loop."""
    stripped = len(data[start:end].lstrip(b"\0"))
    return end - stripped


# ---------------------------------------------------------------------------
# classification (RFC 9000 §12.4, §13.2.1, §9.1)

_NOT_ACK_ELICITING = {
    FrameType.PADDING,
    FrameType.ACK,
    FrameType.ACK_ECN,
    FrameType.CONNECTION_CLOSE,
    FrameType.CONNECTION_CLOSE_APP,
}
_PROBING = {
    FrameType.PATH_CHALLENGE,
    FrameType.PATH_RESPONSE,
    FrameType.NEW_CONNECTION_ID,
    FrameType.PADDING,
}


def is_ack_eliciting(frame_type: int) -> bool:
    return frame_type not in _NOT_ACK_ELICITING


def is_probing(frame_type: int) -> bool:
    return frame_type in _PROBING


_HANDSHAKE_FRAMES = (Padding, Ping, Ack, Crypto)
_ZERO_RTT_FORBIDDEN = (Ack, Crypto, NewToken, HandshakeDone, PathResponse, RetireConnectionId)


def check_frames_allowed(frames: list[Frame], packet_type) -> None:
    """RFC 9000 §12.4 Table 3: which frames each packet type may carry. ``packet_type`` is
    a :class:`quic.packet.PacketType`; a forbidden frame is PROTOCOL_VIOLATION."""
    name = packet_type.name
    if name == "ONE_RTT":
        return
    for frame in frames:
        if name in ("INITIAL", "HANDSHAKE"):
            allowed = isinstance(frame, _HANDSHAKE_FRAMES) or (
                isinstance(frame, ConnectionClose) and frame.frame_type is not None
            )
        else:
            allowed = not isinstance(frame, _ZERO_RTT_FORBIDDEN)
        if not allowed:
            raise QuicError(
                TransportError.PROTOCOL_VIOLATION,
                0,
                f"{type(frame).__name__} not allowed in a {name} packet",
            )
