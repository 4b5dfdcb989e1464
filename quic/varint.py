"""Variable-length integers (RFC 9000 §16) and a bounds-checked reader for wire formats.

Every decoder in the stack reads through :class:`Reader`, so no length field is ever
trusted: running past the end raises :class:`~quic.errors.QuicError` with the error code
the caller chose (FRAME_ENCODING_ERROR for frames, TRANSPORT_PARAMETER_ERROR for
transport parameters, PROTOCOL_VIOLATION for packet headers).
"""

from __future__ import annotations

from .errors import QuicError, TransportError

VARINT_MAX = (1 << 62) - 1

_U16 = 1 << 14
_U32 = 1 << 30


def varint_size(value: int) -> int:
    """Bytes the shortest encoding of ``value`` takes."""
    if value < 0x40:
        return 1
    if value < _U16:
        return 2
    if value < _U32:
        return 4
    if value <= VARINT_MAX:
        return 8
    raise ValueError(f"varint out of range: {value}")


def encode_varint(value: int) -> bytes:
    """Shortest encoding of ``value`` (RFC 9000 §16, App. A.1)."""
    if value < 0x40:
        if value < 0:
            raise ValueError(f"varint out of range: {value}")
        return bytes((value,))
    if value < _U16:
        return (value | 0x4000).to_bytes(2, "big")
    if value < _U32:
        return (value | 0x8000_0000).to_bytes(4, "big")
    if value <= VARINT_MAX:
        return (value | 0xC000_0000_0000_0000).to_bytes(8, "big")
    raise ValueError(f"varint out of range: {value}")


def encode_varint_len(value: int, size: int) -> bytes:
    """Encoding of ``value`` in exactly ``size`` bytes (1, 2, 4 or 8), for fixed-width fields
    such as a packet's Length that is written before the payload is known."""
    if size == 1 and value < 0x40:
        return bytes((value,))
    if size == 2 and value < _U16:
        return (value | 0x4000).to_bytes(2, "big")
    if size == 4 and value < _U32:
        return (value | 0x8000_0000).to_bytes(4, "big")
    if size == 8 and 0 <= value <= VARINT_MAX:
        return (value | 0xC000_0000_0000_0000).to_bytes(8, "big")
    raise ValueError(f"varint {value} does not fit {size} bytes")


class Reader:
    """A cursor over ``data[pos:end]`` whose every read is bounds-checked.

    ``error`` is the transport error code raised on truncation, so one class serves
    frames, transport parameters and headers with the right code for each.
    """

    __slots__ = ("data", "end", "error", "frame_type", "pos")

    def __init__(
        self,
        data: bytes | bytearray | memoryview,
        pos: int = 0,
        end: int | None = None,
        error: int = TransportError.FRAME_ENCODING_ERROR,
    ) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end
        self.error = error
        self.frame_type = 0

    def fail(self, reason: str) -> QuicError:
        """The error to raise for malformed input at the current position."""
        return QuicError(self.error, self.frame_type, reason)

    def remaining(self) -> int:
        return self.end - self.pos

    def eof(self) -> bool:
        return self.pos >= self.end

    def varint(self) -> int:
        pos = self.pos
        if pos >= self.end:
            raise self.fail("truncated varint")
        data = self.data
        first = data[pos]
        size = 1 << (first >> 6)
        if pos + size > self.end:
            raise self.fail("truncated varint")
        self.pos = pos + size
        if size == 1:
            return first
        return int.from_bytes(data[pos : pos + size], "big") & ((1 << (8 * size - 2)) - 1)

    def uint8(self) -> int:
        pos = self.pos
        if pos >= self.end:
            raise self.fail("truncated field")
        self.pos = pos + 1
        return self.data[pos]

    def uint(self, size: int) -> int:
        """A big-endian unsigned integer of ``size`` bytes."""
        pos = self.pos
        if pos + size > self.end:
            raise self.fail("truncated field")
        self.pos = pos + size
        return int.from_bytes(self.data[pos : pos + size], "big")

    def bytes(self, size: int) -> bytes:
        """``size`` bytes; ``size`` usually comes from the wire, so it is checked here."""
        pos = self.pos
        if size < 0 or pos + size > self.end:
            raise self.fail(f"length {size} exceeds the {self.end - pos} bytes left")
        self.pos = pos + size
        return bytes(self.data[pos : pos + size])

    def view(self, size: int) -> memoryview:
        """Like :meth:`bytes` but without a copy, for payloads handed on unchanged."""
        pos = self.pos
        if size < 0 or pos + size > self.end:
            raise self.fail(f"length {size} exceeds the {self.end - pos} bytes left")
        self.pos = pos + size
        return memoryview(self.data)[pos : pos + size]

    def varint_bytes(self) -> bytes:
        """A varint length followed by that many bytes."""
        return self.bytes(self.varint())

    def rest(self) -> bytes:
        data = bytes(self.data[self.pos : self.end])
        self.pos = self.end
        return data
