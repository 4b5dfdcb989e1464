"""Transport parameters (RFC 9000 §18, §7.4; RFC 9221; RFC 9287; RFC 9368).

The TLS extension 0x39 carries them; the handshake layer moves the bytes
(QUIC_SOCKOPT_TRANSPORT_PARAM_EXT) and this module encodes, decodes and validates them.
It also converts to and from lxin/quic's ``struct quic_transport_param``, whose zero
fields mean "unchanged" and whose timeouts are in microseconds.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, replace
from enum import IntEnum

from . import uapi
from .errors import QuicError, TransportError
from .varint import Reader, encode_varint

MAX_CID_LENGTH = 20


class TransportParameterId(IntEnum):
    ORIGINAL_DESTINATION_CONNECTION_ID = 0x00
    MAX_IDLE_TIMEOUT = 0x01
    STATELESS_RESET_TOKEN = 0x02
    MAX_UDP_PAYLOAD_SIZE = 0x03
    INITIAL_MAX_DATA = 0x04
    INITIAL_MAX_STREAM_DATA_BIDI_LOCAL = 0x05
    INITIAL_MAX_STREAM_DATA_BIDI_REMOTE = 0x06
    INITIAL_MAX_STREAM_DATA_UNI = 0x07
    INITIAL_MAX_STREAMS_BIDI = 0x08
    INITIAL_MAX_STREAMS_UNI = 0x09
    ACK_DELAY_EXPONENT = 0x0A
    MAX_ACK_DELAY = 0x0B
    DISABLE_ACTIVE_MIGRATION = 0x0C
    PREFERRED_ADDRESS = 0x0D
    ACTIVE_CONNECTION_ID_LIMIT = 0x0E
    INITIAL_SOURCE_CONNECTION_ID = 0x0F
    RETRY_SOURCE_CONNECTION_ID = 0x10
    VERSION_INFORMATION = 0x11
    MAX_DATAGRAM_FRAME_SIZE = 0x20
    GREASE_QUIC_BIT = 0x2AB2


@dataclass
class PreferredAddress:
    ipv4: tuple[str, int] | None
    ipv6: tuple[str, int] | None
    connection_id: bytes
    stateless_reset_token: bytes


@dataclass
class VersionInformation:
    chosen_version: int
    available_versions: list[int] = field(default_factory=list)


@dataclass
class TransportParameters:
    """Every parameter with the RFC's default; timeouts in milliseconds as on the wire.
    For connection IDs, None means absent and b"" present but empty."""

    original_destination_connection_id: bytes | None = None
    max_idle_timeout: int = 0
    stateless_reset_token: bytes | None = None
    max_udp_payload_size: int = 65527
    initial_max_data: int = 0
    initial_max_stream_data_bidi_local: int = 0
    initial_max_stream_data_bidi_remote: int = 0
    initial_max_stream_data_uni: int = 0
    initial_max_streams_bidi: int = 0
    initial_max_streams_uni: int = 0
    ack_delay_exponent: int = 3
    max_ack_delay: int = 25
    disable_active_migration: bool = False
    preferred_address: PreferredAddress | None = None
    active_connection_id_limit: int = 2
    initial_source_connection_id: bytes | None = None
    retry_source_connection_id: bytes | None = None
    version_information: VersionInformation | None = None
    max_datagram_frame_size: int | None = None
    grease_quic_bit: bool = False


P = TransportParameterId
_INTEGERS = {
    P.MAX_IDLE_TIMEOUT: "max_idle_timeout",
    P.MAX_UDP_PAYLOAD_SIZE: "max_udp_payload_size",
    P.INITIAL_MAX_DATA: "initial_max_data",
    P.INITIAL_MAX_STREAM_DATA_BIDI_LOCAL: "initial_max_stream_data_bidi_local",
    P.INITIAL_MAX_STREAM_DATA_BIDI_REMOTE: "initial_max_stream_data_bidi_remote",
    P.INITIAL_MAX_STREAM_DATA_UNI: "initial_max_stream_data_uni",
    P.INITIAL_MAX_STREAMS_BIDI: "initial_max_streams_bidi",
    P.INITIAL_MAX_STREAMS_UNI: "initial_max_streams_uni",
    P.ACK_DELAY_EXPONENT: "ack_delay_exponent",
    P.MAX_ACK_DELAY: "max_ack_delay",
    P.ACTIVE_CONNECTION_ID_LIMIT: "active_connection_id_limit",
    P.MAX_DATAGRAM_FRAME_SIZE: "max_datagram_frame_size",
}
_CIDS = {
    P.ORIGINAL_DESTINATION_CONNECTION_ID: "original_destination_connection_id",
    P.INITIAL_SOURCE_CONNECTION_ID: "initial_source_connection_id",
    P.RETRY_SOURCE_CONNECTION_ID: "retry_source_connection_id",
}
_FLAGS = {
    P.DISABLE_ACTIVE_MIGRATION: "disable_active_migration",
    P.GREASE_QUIC_BIT: "grease_quic_bit",
}
# RFC 9000 §18.2: only a server may send these.
_SERVER_ONLY = {
    P.ORIGINAL_DESTINATION_CONNECTION_ID,
    P.PREFERRED_ADDRESS,
    P.RETRY_SOURCE_CONNECTION_ID,
    P.STATELESS_RESET_TOKEN,
}
_DEFAULTS = TransportParameters()


def _encode_preferred_address(pa: PreferredAddress) -> bytes:
    v4 = pa.ipv4 or ("0.0.0.0", 0)
    v6 = pa.ipv6 or ("::", 0)
    return (
        ipaddress.IPv4Address(v4[0]).packed
        + v4[1].to_bytes(2, "big")
        + ipaddress.IPv6Address(v6[0]).packed
        + v6[1].to_bytes(2, "big")
        + bytes((len(pa.connection_id),))
        + pa.connection_id
        + pa.stateless_reset_token
    )


def _encode_value(pid: P, params: TransportParameters) -> bytes | None:
    """The parameter's value bytes, or None when it keeps its default (not sent)."""
    if pid in _INTEGERS:
        value = getattr(params, _INTEGERS[pid])
        if value is None or (value == getattr(_DEFAULTS, _INTEGERS[pid])):
            return None
        return encode_varint(value)
    if pid in _CIDS:
        return getattr(params, _CIDS[pid])
    if pid in _FLAGS:
        return b"" if getattr(params, _FLAGS[pid]) else None
    if pid == P.STATELESS_RESET_TOKEN:
        return params.stateless_reset_token
    if pid == P.PREFERRED_ADDRESS:
        pa = params.preferred_address
        return None if pa is None else _encode_preferred_address(pa)
    vi = params.version_information
    if vi is None:
        return None
    return b"".join(v.to_bytes(4, "big") for v in (vi.chosen_version, *vi.available_versions))


def encode_transport_parameters(params: TransportParameters, *, grease: bool = False) -> bytes:
    """The extension body: non-default parameters in id order, plus optionally one reserved
    parameter (31*N+27, RFC 9000 §18.1) so peers keep ignoring unknown ones."""
    out = bytearray()
    for pid in sorted(P):
        value = _encode_value(pid, params)
        if value is None:
            continue
        out += encode_varint(pid)
        out += encode_varint(len(value))
        out += value
    if grease:
        n = int.from_bytes(os.urandom(2), "big")
        value = os.urandom(n % 8)
        out += encode_varint(31 * n + 27) + encode_varint(len(value)) + value
    return bytes(out)


def _fail(reason: str) -> QuicError:
    return QuicError(TransportError.TRANSPORT_PARAMETER_ERROR, 0, reason)


def _decode_integer(pid: P, value: bytes) -> int:
    reader = Reader(value, error=TransportError.TRANSPORT_PARAMETER_ERROR)
    number = reader.varint()
    if not reader.eof():
        raise _fail(f"{pid.name.lower()}: value longer than its integer")
    return number


def _decode_preferred_address(value: bytes) -> PreferredAddress:
    r = Reader(value, error=TransportError.TRANSPORT_PARAMETER_ERROR)
    v4, v4port = ipaddress.IPv4Address(r.bytes(4)), r.uint(2)
    v6, v6port = ipaddress.IPv6Address(r.bytes(16)), r.uint(2)
    cid = r.bytes(r.uint8())
    if not 1 <= len(cid) <= MAX_CID_LENGTH:
        raise _fail("preferred_address with a bad connection ID length")
    token = r.bytes(16)
    if not r.eof():
        raise _fail("preferred_address longer than its fields")
    return PreferredAddress(
        None if v4.packed == bytes(4) and not v4port else (str(v4), v4port),
        None if v6.packed == bytes(16) and not v6port else (str(v6), v6port),
        cid,
        token,
    )


def _decode_version_information(value: bytes) -> VersionInformation:
    """RFC 9368 §3: chosen version then available versions, 4 bytes each. The decoder checks
    the format; the connection checks the chosen version against the packet's and the
    downgrade rules of §4."""
    if not value or len(value) % 4:
        raise _fail("version_information length not a positive multiple of 4")
    versions = [int.from_bytes(value[i : i + 4], "big") for i in range(0, len(value), 4)]
    if versions[0] == 0:
        raise _fail("version_information with chosen version 0")
    if 0 in versions[1:]:
        raise _fail("version_information lists version 0")
    return VersionInformation(versions[0], versions[1:])


def _check_limits(params: TransportParameters) -> None:
    if params.max_udp_payload_size < 1200:
        raise _fail("max_udp_payload_size below 1200")
    if params.ack_delay_exponent > 20:
        raise _fail("ack_delay_exponent above 20")
    if params.max_ack_delay >= 1 << 14:
        raise _fail("max_ack_delay of 2^14 or more")
    if params.active_connection_id_limit < 2:
        raise _fail("active_connection_id_limit below 2")
    if max(params.initial_max_streams_bidi, params.initial_max_streams_uni) > 1 << 60:
        raise _fail("initial_max_streams above 2^60")


def decode_transport_parameters(
    data: bytes | bytearray | memoryview, *, from_server: bool
) -> TransportParameters:
    """Parse and validate the peer's parameters; any fault is TRANSPORT_PARAMETER_ERROR."""
    reader = Reader(data, error=TransportError.TRANSPORT_PARAMETER_ERROR)
    params = TransportParameters()
    seen: set[int] = set()
    while not reader.eof():
        pid = reader.varint()
        value = reader.varint_bytes()
        if pid in seen:
            raise _fail(f"duplicate transport parameter 0x{pid:x}")
        seen.add(pid)
        try:
            pid = P(pid)
        except ValueError:
            continue  # unknown or reserved: ignored (RFC 9000 §18.1)
        if pid in _SERVER_ONLY and not from_server:
            raise _fail(f"{pid.name.lower()} sent by a client")
        if pid in _INTEGERS:
            setattr(params, _INTEGERS[pid], _decode_integer(pid, value))
        elif pid in _CIDS:
            if len(value) > MAX_CID_LENGTH:
                raise _fail(f"{pid.name.lower()} longer than 20 bytes")
            setattr(params, _CIDS[pid], value)
        elif pid in _FLAGS:
            if value:
                raise _fail(f"{pid.name.lower()} carries a value")
            setattr(params, _FLAGS[pid], True)
        elif pid == P.STATELESS_RESET_TOKEN:
            if len(value) != 16:
                raise _fail("stateless_reset_token not 16 bytes")
            params.stateless_reset_token = value
        elif pid == P.PREFERRED_ADDRESS:
            params.preferred_address = _decode_preferred_address(value)
        else:
            params.version_information = _decode_version_information(value)
    _check_limits(params)
    return params


# ---------------------------------------------------------------------------
# lxin/quic's struct quic_transport_param


def default_local_parameters() -> TransportParameters:
    """What a new kquic socket advertises: lxin/quic's quic_transport_param_init()."""
    return TransportParameters(
        max_idle_timeout=uapi.QUIC_DEF_MAX_IDLE_TIMEOUT // 1000,
        max_udp_payload_size=uapi.QUIC_DEF_MAX_UDP_PAYLOAD_SIZE,
        initial_max_data=uapi.QUIC_DEF_MAX_DATA,
        initial_max_stream_data_bidi_local=uapi.QUIC_DEF_MAX_STREAM_DATA,
        initial_max_stream_data_bidi_remote=uapi.QUIC_DEF_MAX_STREAM_DATA,
        initial_max_stream_data_uni=uapi.QUIC_DEF_MAX_STREAM_DATA,
        initial_max_streams_bidi=uapi.QUIC_DEF_MAX_STREAMS,
        initial_max_streams_uni=uapi.QUIC_DEF_MAX_STREAMS,
        ack_delay_exponent=uapi.QUIC_DEF_ACK_DELAY_EXPONENT,
        max_ack_delay=uapi.QUIC_DEF_MAX_ACK_DELAY // 1000,
        active_connection_id_limit=uapi.QUIC_DEF_ACTIVE_CONNECTION_ID_LIMIT,
    )


S32_MAX = (1 << 31) - 1
# field: (lowest, highest) accepted on a local set (lxin/quic socket.c), None = no bound.
_UAPI_LIMITS = {
    "active_connection_id_limit": (2, 8),
    "ack_delay_exponent": (None, 20),
    "max_datagram_frame_size": (1200, None),
    "max_udp_payload_size": (1200, 65527),
    "max_idle_timeout": (1_000_000, None),
    "max_ack_delay": (None, 16_384_000 - 1),
    "max_streams_bidi": (None, 4096),
    "max_streams_uni": (None, 4096),
    "max_data": (1200, S32_MAX // 4),
    "max_stream_data_bidi_local": (1200, S32_MAX // 8),
    "max_stream_data_bidi_remote": (1200, S32_MAX // 8),
    "max_stream_data_uni": (1200, S32_MAX // 8),
}
# uapi field -> (TransportParameters field, scale from uapi units to ours)
_UAPI_FIELDS = {
    "active_connection_id_limit": ("active_connection_id_limit", 1),
    "ack_delay_exponent": ("ack_delay_exponent", 1),
    "max_datagram_frame_size": ("max_datagram_frame_size", 1),
    "max_udp_payload_size": ("max_udp_payload_size", 1),
    "max_idle_timeout": ("max_idle_timeout", 1000),
    "max_ack_delay": ("max_ack_delay", 1000),
    "max_streams_bidi": ("initial_max_streams_bidi", 1),
    "max_streams_uni": ("initial_max_streams_uni", 1),
    "max_data": ("initial_max_data", 1),
    "max_stream_data_bidi_local": ("initial_max_stream_data_bidi_local", 1),
    "max_stream_data_bidi_remote": ("initial_max_stream_data_bidi_remote", 1),
    "max_stream_data_uni": ("initial_max_stream_data_uni", 1),
}


def params_from_uapi(
    rec: uapi.QuicTransportParam, base: TransportParameters
) -> TransportParameters:
    """QUIC_SOCKOPT_TRANSPORT_PARAM set: merge ``rec`` into ``base`` (zero = unchanged).
    A value outside lxin/quic's limits raises ValueError naming the field."""
    changes: dict[str, object] = {}
    for name, (ours, scale) in _UAPI_FIELDS.items():
        value = getattr(rec, name)
        if not value:
            continue
        low, high = _UAPI_LIMITS[name]
        if (low is not None and value < low) or (high is not None and value > high):
            raise ValueError(f"{name} {value} out of range")
        changes[ours] = value // scale
    for flag in ("disable_active_migration", "grease_quic_bit"):
        if getattr(rec, flag):
            changes[flag] = True
    return replace(base, **changes)


def params_to_uapi(params: TransportParameters) -> uapi.QuicTransportParam:
    """QUIC_SOCKOPT_TRANSPORT_PARAM get."""
    rec = uapi.QuicTransportParam()
    for name, (ours, scale) in _UAPI_FIELDS.items():
        setattr(rec, name, (getattr(params, ours) or 0) * scale)
    rec.disable_active_migration = int(params.disable_active_migration)
    rec.grease_quic_bit = int(params.grease_quic_bit)
    return rec


__all__ = [
    "PreferredAddress",
    "TransportParameterId",
    "TransportParameters",
    "VersionInformation",
    "decode_transport_parameters",
    "default_local_parameters",
    "encode_transport_parameters",
    "params_from_uapi",
    "params_to_uapi",
]
