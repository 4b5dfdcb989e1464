"""QUIC transport parameters (RFC 9000 §7.4, §18) and their socket-API record.

The TLS layer carries these bytes opaquely in the ``quic_transport_parameters``
extension; this module is the one place that gives them meaning. The decoder is the
gate for everything the peer declares about itself, so every rule §18.2 states as a
``MUST`` is enforced here and reported as TRANSPORT_PARAMETER_ERROR, leaving the
connection to check only what needs connection state (the CID cross-checks of §7.3).

Extensions handled besides RFC 9000: max_datagram_frame_size (RFC 9221),
grease_quic_bit (RFC 9287) and version_information (RFC 9368).
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import IntEnum

from .errors import QuicError, TransportError
from .uapi import QuicTransportParam
from .varint import VARINT_MAX, Reader, encode_varint

_TP_ERROR = TransportError.TRANSPORT_PARAMETER_ERROR

MAX_CID_LENGTH = 20
STATELESS_RESET_TOKEN_LENGTH = 16
MIN_MAX_UDP_PAYLOAD_SIZE = 1200
MAX_ACK_DELAY_EXPONENT = 20
MAX_MAX_ACK_DELAY = 1 << 14  # exclusive, in milliseconds
MAX_STREAMS_LIMIT = 1 << 60
MIN_ACTIVE_CONNECTION_ID_LIMIT = 2


class TransportParameterId(IntEnum):
    """Transport parameter codepoints (RFC 9000 §18.2, RFC 9221, RFC 9287, RFC 9368)."""

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
    """The server's preferred_address (RFC 9000 §18.2); a family it lacks is ``None``."""

    ipv4: tuple[str, int] | None
    ipv6: tuple[str, int] | None
    connection_id: bytes
    stateless_reset_token: bytes


@dataclass
class VersionInformation:
    """RFC 9368 §3: the version in use and those the sender would accept."""

    chosen_version: int
    available_versions: list[int] = field(default_factory=list)


@dataclass
class TransportParameters:
    """One endpoint's parameters; every default is the value an absent parameter means.

    Times are in milliseconds, as on the wire. Connection IDs and the reset token are
    ``None`` when absent, because an empty CID is a legitimate value distinct from none.
    """

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


_ID = TransportParameterId

# Integer parameters: (id, field, smallest valid, largest valid). Bounds are §18.2's.
_INTEGERS: tuple[tuple[int, str, int, int], ...] = (
    (_ID.MAX_IDLE_TIMEOUT, "max_idle_timeout", 0, VARINT_MAX),
    (_ID.MAX_UDP_PAYLOAD_SIZE, "max_udp_payload_size", MIN_MAX_UDP_PAYLOAD_SIZE, VARINT_MAX),
    (_ID.INITIAL_MAX_DATA, "initial_max_data", 0, VARINT_MAX),
    (_ID.INITIAL_MAX_STREAM_DATA_BIDI_LOCAL, "initial_max_stream_data_bidi_local", 0, VARINT_MAX),
    (_ID.INITIAL_MAX_STREAM_DATA_BIDI_REMOTE, "initial_max_stream_data_bidi_remote", 0, VARINT_MAX),
    (_ID.INITIAL_MAX_STREAM_DATA_UNI, "initial_max_stream_data_uni", 0, VARINT_MAX),
    (_ID.INITIAL_MAX_STREAMS_BIDI, "initial_max_streams_bidi", 0, MAX_STREAMS_LIMIT),
    (_ID.INITIAL_MAX_STREAMS_UNI, "initial_max_streams_uni", 0, MAX_STREAMS_LIMIT),
    (_ID.ACK_DELAY_EXPONENT, "ack_delay_exponent", 0, MAX_ACK_DELAY_EXPONENT),
    (_ID.MAX_ACK_DELAY, "max_ack_delay", 0, MAX_MAX_ACK_DELAY - 1),
    (
        _ID.ACTIVE_CONNECTION_ID_LIMIT,
        "active_connection_id_limit",
        MIN_ACTIVE_CONNECTION_ID_LIMIT,
        VARINT_MAX,
    ),
    (_ID.MAX_DATAGRAM_FRAME_SIZE, "max_datagram_frame_size", 0, VARINT_MAX),
)
_CIDS: tuple[tuple[int, str], ...] = (
    (_ID.ORIGINAL_DESTINATION_CONNECTION_ID, "original_destination_connection_id"),
    (_ID.INITIAL_SOURCE_CONNECTION_ID, "initial_source_connection_id"),
    (_ID.RETRY_SOURCE_CONNECTION_ID, "retry_source_connection_id"),
)
_FLAGS: tuple[tuple[int, str], ...] = (
    (_ID.DISABLE_ACTIVE_MIGRATION, "disable_active_migration"),
    (_ID.GREASE_QUIC_BIT, "grease_quic_bit"),
)
# §18.2: a client MUST NOT send these; only a server knows their values.
_SERVER_ONLY = frozenset(
    {
        _ID.ORIGINAL_DESTINATION_CONNECTION_ID,
        _ID.PREFERRED_ADDRESS,
        _ID.RETRY_SOURCE_CONNECTION_ID,
        _ID.STATELESS_RESET_TOKEN,
    }
)
_DEFAULTS = TransportParameters()

_Family = type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address]

# Reserved ids are 31 * N + 27 (§18.1); a small N keeps them to one or two bytes.
_GREASE_MAX_N = 1 << 9
_GREASE_MAX_VALUE_LENGTH = 16


def _fail(reason: str) -> QuicError:
    return QuicError(_TP_ERROR, 0, reason)


# ---------------------------------------------------------------- value decoders


def _integer_decoder(name: str, low: int, high: int) -> Callable[[memoryview], int]:
    def decode(value: memoryview) -> int:
        reader = Reader(value, error=_TP_ERROR)
        number = reader.varint()
        if not reader.eof():
            raise _fail(f"{name}: {len(value)}-byte value is not a single varint")
        if not low <= number <= high:
            raise _fail(f"{name}: {number} is out of range")
        return number

    return decode


def _cid_decoder(name: str) -> Callable[[memoryview], bytes]:
    def decode(value: memoryview) -> bytes:
        if len(value) > MAX_CID_LENGTH:
            raise _fail(f"{name}: {len(value)}-byte connection ID")
        return bytes(value)

    return decode


def _flag_decoder(name: str) -> Callable[[memoryview], bool]:
    def decode(value: memoryview) -> bool:
        if len(value):
            raise _fail(f"{name}: a flag parameter must be empty")
        return True

    return decode


def _decode_reset_token(value: memoryview) -> bytes:
    if len(value) != STATELESS_RESET_TOKEN_LENGTH:
        raise _fail(f"stateless_reset_token: {len(value)} bytes")
    return bytes(value)


def _address(raw: bytes, port: int, family: _Family) -> tuple[str, int] | None:
    if port == 0 and not any(raw):
        return None
    return str(family(raw)), port


def _decode_preferred_address(value: memoryview) -> PreferredAddress:
    reader = Reader(value, error=_TP_ERROR)
    ipv4 = _address(reader.bytes(4), reader.uint(2), ipaddress.IPv4Address)
    ipv6 = _address(reader.bytes(16), reader.uint(2), ipaddress.IPv6Address)
    cid_length = reader.uint8()
    if not 0 < cid_length <= MAX_CID_LENGTH:
        raise _fail(f"preferred_address: {cid_length}-byte connection ID")
    cid = reader.bytes(cid_length)
    token = reader.bytes(STATELESS_RESET_TOKEN_LENGTH)
    if not reader.eof():
        raise _fail("preferred_address: trailing bytes")
    return PreferredAddress(ipv4, ipv6, cid, token)


def _decode_version_information(value: memoryview) -> VersionInformation:
    count, odd = divmod(len(value), 4)
    if odd or not count:
        raise _fail(f"version_information: {len(value)} bytes")
    chosen, *available = struct.unpack(f">{count}I", value)
    # RFC 9368 §3: a zero version anywhere is a parsing failure.
    if chosen == 0 or 0 in available:
        raise _fail("version_information: version 0")
    return VersionInformation(chosen, available)


_DECODERS: dict[int, tuple[str, Callable[[memoryview], object]]] = {
    **{pid: (name, _integer_decoder(name, low, high)) for pid, name, low, high in _INTEGERS},
    **{pid: (name, _cid_decoder(name)) for pid, name in _CIDS},
    **{pid: (name, _flag_decoder(name)) for pid, name in _FLAGS},
    _ID.STATELESS_RESET_TOKEN: ("stateless_reset_token", _decode_reset_token),
    _ID.PREFERRED_ADDRESS: ("preferred_address", _decode_preferred_address),
    _ID.VERSION_INFORMATION: ("version_information", _decode_version_information),
}


def decode_transport_parameters(
    data: bytes | bytearray | memoryview, *, from_server: bool
) -> TransportParameters:
    """Parse the peer's parameters; any malformed input is TRANSPORT_PARAMETER_ERROR.

    ``from_server`` says who sent them, since a client may not send the server-only
    parameters (§18.2). Unknown ids, GREASE included, are skipped as §7.4.2 requires.
    """
    reader = Reader(data, error=_TP_ERROR)
    seen: set[int] = set()
    values: dict[str, object] = {}
    while not reader.eof():
        pid = reader.varint()
        value = reader.view(reader.varint())
        if pid in seen:
            raise _fail(f"parameter 0x{pid:x} sent twice")
        seen.add(pid)
        entry = _DECODERS.get(pid)
        if entry is None:
            continue
        name, decode = entry
        if not from_server and pid in _SERVER_ONLY:
            raise _fail(f"{name} sent by a client")
        values[name] = decode(value)
    return TransportParameters(**values)


# ---------------------------------------------------------------- encoder


def _pack_address(address: tuple[str, int] | None, family: _Family) -> bytes:
    if address is None:
        return bytes(len(family(0).packed) + 2)
    host, port = address
    return family(host).packed + port.to_bytes(2, "big")


def _encode_preferred_address(address: PreferredAddress) -> bytes:
    cid = address.connection_id
    return b"".join(
        (
            _pack_address(address.ipv4, ipaddress.IPv4Address),
            _pack_address(address.ipv6, ipaddress.IPv6Address),
            bytes((len(cid),)),
            cid,
            address.stateless_reset_token,
        )
    )


def _encode_version_information(info: VersionInformation) -> bytes:
    versions = (info.chosen_version, *info.available_versions)
    return struct.pack(f">{len(versions)}I", *versions)


def _grease_parameter() -> tuple[int, bytes]:
    """A reserved parameter (§18.1) so that peers keep ignoring unknown ids."""
    pid = 31 * secrets.randbelow(_GREASE_MAX_N) + 27
    return pid, os.urandom(secrets.randbelow(_GREASE_MAX_VALUE_LENGTH + 1))


def encode_transport_parameters(params: TransportParameters, *, grease: bool = False) -> bytes:
    """Encode the parameters whose value differs from what their absence means.

    Omitting defaults keeps the TLS extension small; CIDs, the reset token and the
    structured parameters go out whenever set, as an empty CID still carries meaning.
    """
    items: list[tuple[int, bytes]] = []
    for pid, name, _low, _high in _INTEGERS:
        number = getattr(params, name)
        if number is not None and number != getattr(_DEFAULTS, name):
            items.append((pid, encode_varint(number)))
    for pid, name in _CIDS:
        cid = getattr(params, name)
        if cid is not None:
            items.append((pid, cid))
    for pid, name in _FLAGS:
        if getattr(params, name):
            items.append((pid, b""))
    if params.stateless_reset_token is not None:
        items.append((_ID.STATELESS_RESET_TOKEN, params.stateless_reset_token))
    if params.preferred_address is not None:
        items.append((_ID.PREFERRED_ADDRESS, _encode_preferred_address(params.preferred_address)))
    if params.version_information is not None:
        items.append(
            (_ID.VERSION_INFORMATION, _encode_version_information(params.version_information))
        )
    if grease:
        items.append(_grease_parameter())
    items.sort(key=lambda item: item[0])
    return b"".join(encode_varint(pid) + encode_varint(len(value)) + value for pid, value in items)


# ---------------------------------------------------------------- socket API record

_S32_MAX = (1 << 31) - 1
_U8_MAX, _U16_MAX, _U32_MAX = 0xFF, 0xFFFF, 0xFFFF_FFFF
_US_PER_MS = 1000

# lxin/quic's local limits (quic_param_check_and_copy): record field -> (min, max).
_UAPI_LIMITS: dict[str, tuple[int, int]] = {
    "active_connection_id_limit": (2, 8),
    "ack_delay_exponent": (0, MAX_ACK_DELAY_EXPONENT),
    "max_datagram_frame_size": (MIN_MAX_UDP_PAYLOAD_SIZE, _U16_MAX),
    "max_udp_payload_size": (MIN_MAX_UDP_PAYLOAD_SIZE, 65527),
    "max_idle_timeout": (1_000_000, _U32_MAX),
    "max_ack_delay": (0, MAX_MAX_ACK_DELAY * _US_PER_MS - 1),
    "max_streams_bidi": (0, 4096),
    "max_streams_uni": (0, 4096),
    "max_data": (1200, _S32_MAX // 4),
    "max_stream_data_bidi_local": (1200, _S32_MAX // 8),
    "max_stream_data_bidi_remote": (1200, _S32_MAX // 8),
    "max_stream_data_uni": (1200, _S32_MAX // 8),
}
# Record field -> TransportParameters field, for the fields copied unconverted.
_UAPI_NAMES: dict[str, str] = {
    "active_connection_id_limit": "active_connection_id_limit",
    "ack_delay_exponent": "ack_delay_exponent",
    "max_datagram_frame_size": "max_datagram_frame_size",
    "max_udp_payload_size": "max_udp_payload_size",
    "max_streams_bidi": "initial_max_streams_bidi",
    "max_streams_uni": "initial_max_streams_uni",
    "max_data": "initial_max_data",
    "max_stream_data_bidi_local": "initial_max_stream_data_bidi_local",
    "max_stream_data_bidi_remote": "initial_max_stream_data_bidi_remote",
    "max_stream_data_uni": "initial_max_stream_data_uni",
}
_UAPI_MICROSECONDS = ("max_idle_timeout", "max_ack_delay")
_UAPI_FLAGS = ("disable_active_migration", "grease_quic_bit")


def default_local_parameters() -> TransportParameters:
    """The parameters a fresh lxin/quic socket advertises (quic_transport_param_init)."""
    return TransportParameters(
        max_idle_timeout=30_000,
        max_udp_payload_size=65527,
        initial_max_data=65535 * 32,
        initial_max_stream_data_bidi_local=65535 * 16,
        initial_max_stream_data_bidi_remote=65535 * 16,
        initial_max_stream_data_uni=65535 * 16,
        initial_max_streams_bidi=100,
        initial_max_streams_uni=100,
        ack_delay_exponent=3,
        max_ack_delay=25,
        active_connection_id_limit=7,
    )


def params_from_uapi(rec: QuicTransportParam, base: TransportParameters) -> TransportParameters:
    """``base`` updated by a QUIC_SOCKOPT_TRANSPORT_PARAM set, as a new object.

    As in lxin/quic a zero field leaves the value unchanged (so a flag cannot be
    cleared, nor a limit set to 0). Values outside the kernel's local limits raise
    ValueError naming the field; the socket layer turns that into EINVAL.
    """
    changes: dict[str, object] = {}
    for name, (low, high) in _UAPI_LIMITS.items():
        value = getattr(rec, name)
        if not value:
            continue
        if not low <= value <= high:
            raise ValueError(f"{name} {value} is outside {low}..{high}")
        if name in _UAPI_MICROSECONDS:
            changes[name] = value // _US_PER_MS
        else:
            changes[_UAPI_NAMES[name]] = value
    for name in _UAPI_FLAGS:
        if getattr(rec, name):
            changes[name] = True
    return replace(base, **changes)


def params_to_uapi(params: TransportParameters) -> QuicTransportParam:
    """The record a QUIC_SOCKOPT_TRANSPORT_PARAM get returns.

    A peer may declare values wider than the C struct's fields; those saturate at the
    field's maximum so the record always packs.
    """
    return QuicTransportParam(
        disable_active_migration=int(params.disable_active_migration),
        grease_quic_bit=int(params.grease_quic_bit),
        stateless_reset=int(params.stateless_reset_token is not None),
        active_connection_id_limit=min(params.active_connection_id_limit, _U8_MAX),
        ack_delay_exponent=params.ack_delay_exponent,
        max_datagram_frame_size=min(params.max_datagram_frame_size or 0, _U16_MAX),
        max_udp_payload_size=min(params.max_udp_payload_size, _U16_MAX),
        max_idle_timeout=min(params.max_idle_timeout * _US_PER_MS, _U32_MAX),
        max_ack_delay=min(params.max_ack_delay * _US_PER_MS, _U32_MAX),
        max_streams_bidi=min(params.initial_max_streams_bidi, _U16_MAX),
        max_streams_uni=min(params.initial_max_streams_uni, _U16_MAX),
        max_data=params.initial_max_data,
        max_stream_data_bidi_local=params.initial_max_stream_data_bidi_local,
        max_stream_data_bidi_remote=params.initial_max_stream_data_bidi_remote,
        max_stream_data_uni=params.initial_max_stream_data_uni,
    )
