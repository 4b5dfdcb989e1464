"""QUIC frames: every type of RFC 9000 §19 and the DATAGRAM frame of RFC 9221.

Each frame class encodes itself with ``encode(buf)`` (a method call on a slotted class
is cheaper than a type-keyed dispatch, see ``bench/micro_frame.py``). Decoding goes
through :class:`~quic.varint.Reader`, so every length from the wire is bounds-checked
and malformed input surfaces only as :class:`~quic.errors.QuicError`.

The packetizer's hot path does not build frame objects for STREAM, CRYPTO and ACK: it
writes :func:`encode_stream_header` / :func:`encode_crypto_header` followed by the data
it already holds, and :func:`write_ack` from the packet-number space's ranges.

Two choices the RFC leaves open: a STREAM or CRYPTO frame reaching past 2^62-1 is
FRAME_ENCODING_ERROR (not FLOW_CONTROL_ERROR / CRYPTO_BUFFER_EXCEEDED), because the
decoder has no flow-control context and the frame cannot be encoded in any stream;
and RETIRE_CONNECTION_ID in a 0-RTT packet is refused, as the note under Table 3 of
RFC 9000 §12.4 permits, since a client cannot yet know which CIDs the server issued.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

from .errors import QuicError, TransportError
from .packet import PacketType
from .varint import VARINT_MAX, Reader, encode_varint, varint_size

FRAME_ENCODING_ERROR = TransportError.FRAME_ENCODING_ERROR
PROTOCOL_VIOLATION = TransportError.PROTOCOL_VIOLATION

STREAM_OFF_BIT = 0x04
STREAM_LEN_BIT = 0x02
STREAM_FIN_BIT = 0x01

MAX_STREAMS_LIMIT = 1 << 60  # RFC 9000 §19.11: a stream ID must stay below 2^62
MAX_CID_LENGTH = 20
STATELESS_RESET_TOKEN_SIZE = 16
PATH_DATA_SIZE = 8


class FrameType(IntEnum):
    PADDING = 0x00
    PING = 0x01
    ACK = 0x02
    ACK_ECN = 0x03
    RESET_STREAM = 0x04
    STOP_SENDING = 0x05
    CRYPTO = 0x06
    NEW_TOKEN = 0x07
    STREAM = 0x08
    STREAM_FIN = 0x09
    STREAM_LEN = 0x0A
    STREAM_LEN_FIN = 0x0B
    STREAM_OFF = 0x0C
    STREAM_OFF_FIN = 0x0D
    STREAM_OFF_LEN = 0x0E
    STREAM_OFF_LEN_FIN = 0x0F
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


# ---------------------------------------------------------------------------
# Hot-path encoders used by the packetizer without building frame objects.

# The STREAM frame of a bulk packet (see decode_bulk_stream): type, a 1-byte stream ID,
# a 4- or 8-byte offset and a 2- or 4-byte length, as one struct each.
_BULK_4_2, _BULK_4_4, _BULK_8_2, _BULK_8_4 = (
    struct.Struct(">BB" + fields) for fields in ("IH", "II", "QH", "QI")
)


def encode_stream_header(
    stream_id: int, offset: int, length: int, fin: bool, with_length: bool = True
) -> bytes:
    """Everything of a STREAM frame before its data. The Offset field is left out at
    offset 0, and the Length field may be, when the frame ends the packet."""
    if with_length and stream_id < 0x40 and 0x4000 <= offset < 0x4000_0000:
        # Nearly every packet of a transfer has one of these: in one pack.
        if 0x40 <= length < 0x4000:
            return _BULK_4_2.pack(0x0E | fin, stream_id, offset | 0x8000_0000, length | 0x4000)
        if 0x4000 <= length < 0x4000_0000:
            return _BULK_4_4.pack(0x0E | fin, stream_id, offset | 0x8000_0000, length | 0x8000_0000)
    ftype = 0x08
    out = encode_varint(stream_id)
    if offset:
        ftype |= STREAM_OFF_BIT
        out += encode_varint(offset)
    if with_length:
        ftype |= STREAM_LEN_BIT
        out += encode_varint(length)
    if fin:
        ftype |= STREAM_FIN_BIT
    return bytes((ftype,)) + out


def stream_header_size(stream_id: int, offset: int, length: int, with_length: bool = True) -> int:
    """``len(encode_stream_header(...))`` without building it, to size a frame to a packet."""
    size = 1 + varint_size(stream_id)
    if offset:
        size += varint_size(offset)
    if with_length:
        size += varint_size(length)
    return size


def encode_crypto_header(offset: int, length: int) -> bytes:
    """Everything of a CRYPTO frame before its data."""
    return b"\x06" + encode_varint(offset) + encode_varint(length)


def encode_ack(
    ranges: list[tuple[int, int]], ack_delay: int, ecn: Sequence[int] | None = None
) -> bytes:
    """An ACK (or ACK_ECN) frame from inclusive ``(low, high)`` ranges, highest first.

    ``ack_delay`` is already scaled down by the ack_delay_exponent.
    """
    buf = bytearray()
    write_ack(buf, ranges, ack_delay, ecn)
    return bytes(buf)


def write_ack(
    buf: bytearray,
    ranges: list[tuple[int, int]],
    ack_delay: int,
    ecn: Sequence[int] | None = None,
) -> None:
    """:func:`encode_ack` appending to ``buf``. Gaps and range lengths are nearly always
    below 64, so they are appended as single bytes without building varints."""
    low, largest = ranges[0]
    buf.append(0x03 if ecn else 0x02)
    buf += encode_varint(largest)
    buf += encode_varint(ack_delay)
    buf += encode_varint(len(ranges) - 1)
    buf += encode_varint(largest - low)
    append = buf.append
    for next_low, high in ranges[1:]:
        gap = low - high - 2
        length = high - next_low
        if gap < 0x40 and length < 0x40:
            append(gap)
            append(length)
        else:
            buf += encode_varint(gap)
            buf += encode_varint(length)
        low = next_low
    if ecn:
        buf += encode_varint(ecn[0])
        buf += encode_varint(ecn[1])
        buf += encode_varint(ecn[2])


# ---------------------------------------------------------------------------
# Frame classes.


@dataclass(slots=True)
class Padding:
    length: int = 1

    def encode(self, buf: bytearray) -> None:
        buf += bytes(self.length)


@dataclass(slots=True)
class Ping:
    def encode(self, buf: bytearray) -> None:
        buf.append(0x01)


@dataclass(slots=True)
class Ack:
    """``largest`` equals ``ranges[0][1]``; ``ack_delay`` is the raw wire value, before
    scaling by the peer's ack_delay_exponent; ``ecn`` is (ECT0, ECT1, ECN-CE)."""

    largest: int
    ack_delay: int
    ranges: list[tuple[int, int]]
    ecn: tuple[int, int, int] | None = None

    def encode(self, buf: bytearray) -> None:
        write_ack(buf, self.ranges, self.ack_delay, self.ecn)


@dataclass(slots=True)
class ResetStream:
    stream_id: int
    error_code: int
    final_size: int

    def encode(self, buf: bytearray) -> None:
        buf.append(0x04)
        buf += encode_varint(self.stream_id)
        buf += encode_varint(self.error_code)
        buf += encode_varint(self.final_size)


@dataclass(slots=True)
class StopSending:
    stream_id: int
    error_code: int

    def encode(self, buf: bytearray) -> None:
        buf.append(0x05)
        buf += encode_varint(self.stream_id)
        buf += encode_varint(self.error_code)


@dataclass(slots=True)
class Crypto:
    offset: int
    data: bytes

    def encode(self, buf: bytearray) -> None:
        data = self.data
        buf += encode_crypto_header(self.offset, len(data))
        buf += data


@dataclass(slots=True)
class NewToken:
    token: bytes

    def encode(self, buf: bytearray) -> None:
        buf.append(0x07)
        buf += encode_varint(len(self.token))
        buf += self.token


@dataclass(slots=True)
class Stream:
    """On decode ``data`` is a memoryview into the packet payload: no copy is made
    until the receive buffer decides what it keeps."""

    stream_id: int
    offset: int
    data: bytes | memoryview
    fin: bool = False

    def encode(self, buf: bytearray) -> None:
        data = self.data
        buf += encode_stream_header(self.stream_id, self.offset, len(data), self.fin)
        buf += data


@dataclass(slots=True)
class MaxData:
    maximum: int

    def encode(self, buf: bytearray) -> None:
        buf.append(0x10)
        buf += encode_varint(self.maximum)


@dataclass(slots=True)
class MaxStreamData:
    stream_id: int
    maximum: int

    def encode(self, buf: bytearray) -> None:
        buf.append(0x11)
        buf += encode_varint(self.stream_id)
        buf += encode_varint(self.maximum)


@dataclass(slots=True)
class MaxStreams:
    bidi: bool
    maximum: int

    def encode(self, buf: bytearray) -> None:
        buf.append(0x12 if self.bidi else 0x13)
        buf += encode_varint(self.maximum)


@dataclass(slots=True)
class DataBlocked:
    limit: int

    def encode(self, buf: bytearray) -> None:
        buf.append(0x14)
        buf += encode_varint(self.limit)


@dataclass(slots=True)
class StreamDataBlocked:
    stream_id: int
    limit: int

    def encode(self, buf: bytearray) -> None:
        buf.append(0x15)
        buf += encode_varint(self.stream_id)
        buf += encode_varint(self.limit)


@dataclass(slots=True)
class StreamsBlocked:
    bidi: bool
    limit: int

    def encode(self, buf: bytearray) -> None:
        buf.append(0x16 if self.bidi else 0x17)
        buf += encode_varint(self.limit)


@dataclass(slots=True)
class NewConnectionId:
    sequence: int
    retire_prior_to: int
    cid: bytes
    stateless_reset_token: bytes

    def encode(self, buf: bytearray) -> None:
        buf.append(0x18)
        buf += encode_varint(self.sequence)
        buf += encode_varint(self.retire_prior_to)
        buf.append(len(self.cid))
        buf += self.cid
        buf += self.stateless_reset_token


@dataclass(slots=True)
class RetireConnectionId:
    sequence: int

    def encode(self, buf: bytearray) -> None:
        buf.append(0x19)
        buf += encode_varint(self.sequence)


@dataclass(slots=True)
class PathChallenge:
    data: bytes

    def encode(self, buf: bytearray) -> None:
        buf.append(0x1A)
        buf += self.data


@dataclass(slots=True)
class PathResponse:
    data: bytes

    def encode(self, buf: bytearray) -> None:
        buf.append(0x1B)
        buf += self.data


@dataclass(slots=True)
class ConnectionClose:
    """``frame_type`` is None for the application variant (0x1d), which carries none."""

    error_code: int
    frame_type: int | None = None
    reason: bytes = b""

    def encode(self, buf: bytearray) -> None:
        if self.frame_type is None:
            buf.append(0x1D)
            buf += encode_varint(self.error_code)
        else:
            buf.append(0x1C)
            buf += encode_varint(self.error_code)
            buf += encode_varint(self.frame_type)
        buf += encode_varint(len(self.reason))
        buf += self.reason


@dataclass(slots=True)
class HandshakeDone:
    def encode(self, buf: bytearray) -> None:
        buf.append(0x1E)


@dataclass(slots=True)
class Datagram:
    """Without a length the frame runs to the end of the packet, saving a byte or two
    for the last frame."""

    data: bytes
    with_length: bool = True

    def encode(self, buf: bytearray) -> None:
        if self.with_length:
            buf.append(0x31)
            buf += encode_varint(len(self.data))
        else:
            buf.append(0x30)
        buf += self.data


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


def encode_frame(frame: Frame, buf: bytearray) -> None:
    """Append ``frame``'s wire encoding to ``buf``."""
    frame.encode(buf)


def frame_size(frame: Frame) -> int:
    """Bytes ``frame`` takes on the wire. Exact by construction; meant for control
    frames (STREAM and CRYPTO are sized with the header helpers instead)."""
    buf = bytearray()
    frame.encode(buf)
    return len(buf)


def frame_type_of(frame: Frame) -> int:
    """The wire type ``frame`` encodes as (the base type 0x08 for any STREAM frame)."""
    cls = type(frame)
    if cls is Ack:
        return FrameType.ACK_ECN if frame.ecn is not None else FrameType.ACK
    if cls is ConnectionClose:
        return FrameType.CONNECTION_CLOSE_APP if frame.frame_type is None else 0x1C
    if cls is MaxStreams:
        return FrameType.MAX_STREAMS_BIDI if frame.bidi else FrameType.MAX_STREAMS_UNI
    if cls is StreamsBlocked:
        return FrameType.STREAMS_BLOCKED_BIDI if frame.bidi else FrameType.STREAMS_BLOCKED_UNI
    if cls is Datagram:
        return FrameType.DATAGRAM_LEN if frame.with_length else FrameType.DATAGRAM
    return _CLASS_TYPE[cls]


_CLASS_TYPE: dict[type, int] = {
    Padding: FrameType.PADDING,
    Ping: FrameType.PING,
    ResetStream: FrameType.RESET_STREAM,
    StopSending: FrameType.STOP_SENDING,
    Crypto: FrameType.CRYPTO,
    NewToken: FrameType.NEW_TOKEN,
    Stream: FrameType.STREAM,
    MaxData: FrameType.MAX_DATA,
    MaxStreamData: FrameType.MAX_STREAM_DATA,
    DataBlocked: FrameType.DATA_BLOCKED,
    StreamDataBlocked: FrameType.STREAM_DATA_BLOCKED,
    NewConnectionId: FrameType.NEW_CONNECTION_ID,
    RetireConnectionId: FrameType.RETIRE_CONNECTION_ID,
    PathChallenge: FrameType.PATH_CHALLENGE,
    PathResponse: FrameType.PATH_RESPONSE,
    HandshakeDone: FrameType.HANDSHAKE_DONE,
}


# ---------------------------------------------------------------------------
# Decoding. Each decoder is entered with the reader just past the type byte.


def _decode_ping(r: Reader, ftype: int) -> Ping:
    return Ping()


def _decode_ack(r: Reader, ftype: int) -> Ack:
    varint = r.varint
    largest = varint()
    ack_delay = varint()
    count = varint()
    first = varint()
    if first > largest:
        raise r.fail("first ACK range below packet number 0")
    # Each further range takes at least two bytes: a larger count cannot be genuine,
    # and bounding it here keeps a forged count from driving a long loop.
    if count > (r.end - r.pos) // 2:
        raise r.fail(f"ACK range count {count} exceeds the frame")
    low = largest - first
    ranges = [(low, largest)]
    append = ranges.append
    data = r.data
    end = r.end
    for _ in range(count):
        # Fast path for the usual one-byte gap and range length.
        pos = r.pos
        if pos + 2 <= end and data[pos] < 0x40 and data[pos + 1] < 0x40:
            gap = data[pos]
            length = data[pos + 1]
            r.pos = pos + 2
        else:
            gap = varint()
            length = varint()
        high = low - gap - 2
        if high < 0:
            raise r.fail("ACK gap below packet number 0")
        low = high - length
        if low < 0:
            raise r.fail("ACK range below packet number 0")
        append((low, high))
    ecn = (varint(), varint(), varint()) if ftype == 0x03 else None
    return Ack(largest, ack_delay, ranges, ecn)


def _decode_reset_stream(r: Reader, ftype: int) -> ResetStream:
    return ResetStream(r.varint(), r.varint(), r.varint())


def _decode_stop_sending(r: Reader, ftype: int) -> StopSending:
    return StopSending(r.varint(), r.varint())


def _decode_crypto(r: Reader, ftype: int) -> Crypto:
    offset = r.varint()
    length = r.varint()
    if offset + length > VARINT_MAX:
        raise r.fail("CRYPTO data beyond offset 2^62-1")
    return Crypto(offset, r.bytes(length))


def _decode_new_token(r: Reader, ftype: int) -> NewToken:
    token = r.varint_bytes()
    if not token:
        raise r.fail("empty NEW_TOKEN")
    return NewToken(token)


def _decode_stream(r: Reader, ftype: int) -> Stream:
    stream_id = r.varint()
    offset = r.varint() if ftype & STREAM_OFF_BIT else 0
    length = r.varint() if ftype & STREAM_LEN_BIT else r.end - r.pos
    if offset + length > VARINT_MAX:
        raise r.fail("STREAM data beyond offset 2^62-1")
    return Stream(stream_id, offset, r.view(length), bool(ftype & STREAM_FIN_BIT))


def _decode_max_data(r: Reader, ftype: int) -> MaxData:
    return MaxData(r.varint())


def _decode_max_stream_data(r: Reader, ftype: int) -> MaxStreamData:
    return MaxStreamData(r.varint(), r.varint())


def _stream_count(r: Reader) -> int:
    value = r.varint()
    if value > MAX_STREAMS_LIMIT:
        raise r.fail(f"stream count {value} above 2^60")
    return value


def _decode_max_streams(r: Reader, ftype: int) -> MaxStreams:
    return MaxStreams(ftype == 0x12, _stream_count(r))


def _decode_data_blocked(r: Reader, ftype: int) -> DataBlocked:
    return DataBlocked(r.varint())


def _decode_stream_data_blocked(r: Reader, ftype: int) -> StreamDataBlocked:
    return StreamDataBlocked(r.varint(), r.varint())


def _decode_streams_blocked(r: Reader, ftype: int) -> StreamsBlocked:
    return StreamsBlocked(ftype == 0x16, _stream_count(r))


def _decode_new_connection_id(r: Reader, ftype: int) -> NewConnectionId:
    sequence = r.varint()
    retire_prior_to = r.varint()
    if retire_prior_to > sequence:
        raise r.fail("Retire Prior To above Sequence Number")
    length = r.uint8()
    if not 1 <= length <= MAX_CID_LENGTH:
        raise r.fail(f"connection ID length {length}")
    cid = r.bytes(length)
    return NewConnectionId(sequence, retire_prior_to, cid, r.bytes(STATELESS_RESET_TOKEN_SIZE))


def _decode_retire_connection_id(r: Reader, ftype: int) -> RetireConnectionId:
    return RetireConnectionId(r.varint())


def _decode_path_challenge(r: Reader, ftype: int) -> PathChallenge:
    return PathChallenge(r.bytes(PATH_DATA_SIZE))


def _decode_path_response(r: Reader, ftype: int) -> PathResponse:
    return PathResponse(r.bytes(PATH_DATA_SIZE))


def _decode_connection_close(r: Reader, ftype: int) -> ConnectionClose:
    error_code = r.varint()
    frame_type = r.varint() if ftype == 0x1C else None
    return ConnectionClose(error_code, frame_type, r.varint_bytes())


def _decode_handshake_done(r: Reader, ftype: int) -> HandshakeDone:
    return HandshakeDone()


def _decode_datagram(r: Reader, ftype: int) -> Datagram:
    if ftype == 0x31:
        return Datagram(r.varint_bytes(), True)
    return Datagram(r.rest(), False)


_DECODERS: list = [None] * 0x32
for _types, _decoder in (
    ((0x01,), _decode_ping),
    ((0x02, 0x03), _decode_ack),
    ((0x04,), _decode_reset_stream),
    ((0x05,), _decode_stop_sending),
    ((0x06,), _decode_crypto),
    ((0x07,), _decode_new_token),
    (range(0x08, 0x10), _decode_stream),
    ((0x10,), _decode_max_data),
    ((0x11,), _decode_max_stream_data),
    ((0x12, 0x13), _decode_max_streams),
    ((0x14,), _decode_data_blocked),
    ((0x15,), _decode_stream_data_blocked),
    ((0x16, 0x17), _decode_streams_blocked),
    ((0x18,), _decode_new_connection_id),
    ((0x19,), _decode_retire_connection_id),
    ((0x1A,), _decode_path_challenge),
    ((0x1B,), _decode_path_response),
    ((0x1C, 0x1D), _decode_connection_close),
    ((0x1E,), _decode_handshake_done),
    ((0x30, 0x31), _decode_datagram),
):
    for _t in _types:
        _DECODERS[_t] = _decoder
del _types, _decoder, _t

_NONZERO = re.compile(b"[^\x00]")


# A packet of a bulk transfer holds one STREAM frame with Offset and Length fields
# that ends the packet: a 1-byte stream ID, a 4- or 8-byte offset (from 16 KiB into the
# stream) and a 2- or 4-byte length (up to 1 GiB). Read with one unpack, chosen by the
# two varint prefixes, it decodes in a third of the time of the general walk.
_VARINT_4_MASK = (1 << 30) - 1
_VARINT_8_MASK = (1 << 62) - 1
_BULK_SHAPES = (
    # [offset's varint prefix][length's]: (layout, offset mask, length mask)
    None,
    None,
    (None, (_BULK_4_2, _VARINT_4_MASK, 0x3FFF), (_BULK_4_4, _VARINT_4_MASK, _VARINT_4_MASK), None),
    (None, (_BULK_8_2, _VARINT_8_MASK, 0x3FFF), (_BULK_8_4, _VARINT_8_MASK, _VARINT_4_MASK), None),
)
# Below this size a packet's data is copied out of its payload: a bytes slice of a
# 1200-byte packet costs less than the two memoryviews a view takes (160 against 260 ns).
_BULK_COPY_MAX = 2048


def decode_bulk_stream(
    payload: bytes | bytearray | memoryview,
) -> tuple[int, int, bytes | memoryview, bool] | None:
    """(stream ID, offset, data, fin) of a payload that is one STREAM frame of the bulk
    shape above, or None for any other payload."""
    end = len(payload)
    if end < 16 or payload[0] | 1 != 0x0F or payload[1] >> 6:
        return None
    offset_prefix = payload[2] >> 6
    if offset_prefix < 2:
        return None
    shape = _BULK_SHAPES[offset_prefix][payload[2 + (4 << (offset_prefix - 2))] >> 6]
    if shape is None:
        return None
    layout, offset_mask, length_mask = shape
    ftype, sid, offset, length = layout.unpack_from(payload)
    size = layout.size
    if length & length_mask != end - size:
        return None
    data = payload[size:] if end < _BULK_COPY_MAX else memoryview(payload)[size:]
    return sid, offset & offset_mask, data, ftype == 0x0F


def decode_frames(payload: bytes | bytearray | memoryview) -> list[Frame]:
    """All frames of a decrypted packet payload, in order.

    A run of PADDING becomes one ``Padding(length)``, found with a regex scan rather
    than byte by byte since Initial packets carry hundreds of them.
    """
    end = len(payload)
    if not end:
        raise QuicError(PROTOCOL_VIOLATION, 0, "packet without frames")
    bulk = decode_bulk_stream(payload)
    if bulk is not None:
        return [Stream(*bulk)]
    r = Reader(payload)
    frames: list[Frame] = []
    append = frames.append
    decoders = _DECODERS
    search = _NONZERO.search
    while r.pos < end:
        pos = r.pos
        ftype = payload[pos]
        if ftype == 0:
            found = search(payload, pos, end)
            stop = found.start() if found else end
            append(Padding(stop - pos))
            r.pos = stop
            continue
        if ftype < 0x40:
            r.pos = pos + 1
        else:
            r.frame_type = 0
            ftype = r.varint()
            if r.pos - pos != varint_size(ftype):
                raise QuicError(PROTOCOL_VIOLATION, ftype, "frame type not minimally encoded")
        decoder = decoders[ftype] if ftype < 0x32 else None
        if decoder is None:
            raise QuicError(FRAME_ENCODING_ERROR, ftype, f"unknown frame type 0x{ftype:x}")
        r.frame_type = ftype
        append(decoder(r, ftype))
    return frames


# ---------------------------------------------------------------------------
# Frame properties (RFC 9000 §12.4, §13.2, §9.1).

_NOT_ACK_ELICITING = frozenset((0x00, 0x02, 0x03, 0x1C, 0x1D))
_PROBING = frozenset((0x00, 0x18, 0x1A, 0x1B))


def is_ack_eliciting(frame_type: int) -> bool:
    return frame_type not in _NOT_ACK_ELICITING


def is_probing(frame_type: int) -> bool:
    """Probing frames may arrive on a new path without it counting as a migration."""
    return frame_type in _PROBING


_I = 1 << PacketType.INITIAL
_Z = 1 << PacketType.ZERO_RTT
_H = 1 << PacketType.HANDSHAKE
_O = 1 << PacketType.ONE_RTT

# RFC 9000 §12.4 Table 3 as bitmasks of packet types, indexed by frame type; RFC 9221
# §4 allows DATAGRAM in 0-RTT and 1-RTT.
_ALLOWED = [0] * 0x32
for _types, _mask in (
    ((0x00, 0x01, 0x1C), _I | _Z | _H | _O),
    ((0x02, 0x03, 0x06), _I | _H | _O),
    ((0x04, 0x05, *range(0x08, 0x19), 0x1A, 0x1D, 0x30, 0x31), _Z | _O),
    ((0x07, 0x19, 0x1B, 0x1E), _O),
):
    for _t in _types:
        _ALLOWED[_t] = _mask
del _types, _mask, _t


def frame_allowed(frame_type: int, packet_type: PacketType) -> bool:
    return 0 <= frame_type < 0x32 and bool(_ALLOWED[frame_type] & (1 << packet_type))


def check_frames_allowed(frames: list[Frame], packet_type: PacketType) -> None:
    """Raise PROTOCOL_VIOLATION for the first frame its packet type may not carry."""
    if packet_type == PacketType.ONE_RTT:
        return  # every frame we decode is allowed in 1-RTT
    bit = 1 << packet_type
    allowed = _ALLOWED
    for frame in frames:
        ftype = frame_type_of(frame)
        if not allowed[ftype] & bit:
            raise QuicError(
                PROTOCOL_VIOLATION,
                ftype,
                f"{FrameType(ftype).name} not allowed in {PacketType(packet_type).name} packet",
            )
