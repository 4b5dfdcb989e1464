"""Transport errors of RFC 9000 §20 and the exception the protocol core raises.

Every decoder in ``quic/`` reports malformed input as :class:`QuicError` carrying the
transport error code the RFC prescribes, so the connection can turn it straight into a
CONNECTION_CLOSE frame. No other exception may escape a decoder.
"""

from __future__ import annotations

from enum import IntEnum


class TransportError(IntEnum):
    """Transport error codes, RFC 9000 §20.1 (plus RFC 9368's VERSION_NEGOTIATION_ERROR)."""

    NO_ERROR = 0x00
    INTERNAL_ERROR = 0x01
    CONNECTION_REFUSED = 0x02
    FLOW_CONTROL_ERROR = 0x03
    STREAM_LIMIT_ERROR = 0x04
    STREAM_STATE_ERROR = 0x05
    FINAL_SIZE_ERROR = 0x06
    FRAME_ENCODING_ERROR = 0x07
    TRANSPORT_PARAMETER_ERROR = 0x08
    CONNECTION_ID_LIMIT_ERROR = 0x09
    PROTOCOL_VIOLATION = 0x0A
    INVALID_TOKEN = 0x0B
    APPLICATION_ERROR = 0x0C
    CRYPTO_BUFFER_EXCEEDED = 0x0D
    KEY_UPDATE_ERROR = 0x0E
    AEAD_LIMIT_REACHED = 0x0F
    NO_VIABLE_PATH = 0x10
    VERSION_NEGOTIATION_ERROR = 0x11
    CRYPTO_ERROR = 0x100  # 0x100 + TLS alert, 0x100..0x1ff


class QuicError(Exception):
    """A protocol error that closes the connection with ``code``.

    ``frame_type`` names the frame that triggered it (0 when none applies), as the
    CONNECTION_CLOSE frame of type 0x1c reports it.
    """

    def __init__(self, code: int, frame_type: int = 0, reason: str = "") -> None:
        super().__init__(code, frame_type, reason)
        self.code = code
        self.frame_type = frame_type
        self.reason = reason

    def __str__(self) -> str:
        try:
            name = TransportError(self.code).name
        except ValueError:
            if 0x100 <= self.code <= 0x1FF:
                name = f"CRYPTO_ERROR(alert {self.code - 0x100})"
            else:
                name = hex(self.code)
        where = f" in frame 0x{self.frame_type:x}" if self.frame_type else ""
        return f"{name}{where}: {self.reason}" if self.reason else f"{name}{where}"
