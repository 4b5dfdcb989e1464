"""QUIC transport parameters (RFC 9000 §7.4, §18) and their socket-API record.

TLS carries these bytes opaquely in the ``quic_transport_parameters`` extension; this
module is the one place that gives them meaning. The decoder is the gate for all the
peer declares about itself, so every rule that can be judged from the extension alone
is enforced here as TRANSPORT_PARAMETER_ERROR. What needs connection state stays with
the connection:

- the CID authentication of RFC 9000 §7.3: initial_source_connection_id present and
  equal to the peer's SCID; from a server, original_destination_connection_id equal to
  the client's first DCID, and retry_source_connection_id present exactly when a Retry
  was received and equal to its SCID;
- the version checks of RFC 9368 §4 (see :class:`VersionInformation`).

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
MAX_STREAMS_LIMIT = 1 << 60  # inclusive
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
    """The server's preferred_address (RFC 9000 §18.2).

    A family the server does not offer is ``None``; on the wire it is the all-zero
    address and port (0.0.0.0:0 or [::]:0). Addresses are kept as ``(host, port)`` so
    they can be handed to a socket call unchanged.
    """

    ipv4: tuple[str, int] | None
    ipv6: tuple[str, int] | None
    connection_id: bytes
    stateless_reset_token: bytes


@dataclass
class VersionInformation:
    """RFC 9368 §3: the version the sender chose and the versions it would accept.

    The decoder enforces what §3 makes a parsing failure: a length that is not a
    non-zero multiple of four, a zero Chosen Version or a zero Available Version, and,
    in a client's parameters, a Chosen Version missing from Available Versions (so a
    client's list is never empty; a server's may be).

    The connection must check the rest (RFC 9368 §4), with VERSION_NEGOTIATION_ERROR:
    the Chosen Version must equal the version in use (the Version of the long header
    that carried the handshake); a client that acted on a Version Negotiation packet
    must close if the server sent no version_information, or if it would have picked a
    different version from the server's Available Versions plus the negotiated one
    (downgrade prevention). A server must not switch to a version absent from the
    client's Available Versions. After the handshake the version in use is the
    server's Chosen Version, whatever later long headers say.
    """

    chosen_version: int
    available_versions: list[int] = field(default_factory=list)


@dataclass
class TransportParameters:
    """One endpoint's parameters; every default is the value an absent parameter means.

    Times are in milliseconds, as on the wire. Connection IDs, the reset token and the
    structured parameters are ``None`` when absent: an empty CID is a value distinct
    from none (RFC 9000 §7.3 authenticates zero-length CIDs too).
    ``max_datagram_frame_size`` ``None`` means DATAGRAM is not offered (RFC 9221 §3).
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
_DEFAULTS = TransportParameters()

# Integer parameters: id -> (field, smallest valid, largest valid); bounds from §18.2.
_INTEGERS: dict[int, tuple[str, int, int]] = {
    _ID.MAX_IDLE_TIMEOUT: ("max_idle_timeout", 0, VARINT_MAX),
    _ID.MAX_UDP_PAYLOAD_SIZE: ("max_udp_payload_size", MIN_MAX_UDP_PAYLOAD_SIZE, VARINT_MAX),
    _ID.INITIAL_MAX_DATA: ("initial_max_data", 0, VARINT_MAX),
    _ID.INITIAL_MAX_STREAM_DATA_BIDI_LOCAL: ("initial_max_stream_data_bidi_local", 0, VARINT_MAX),
    _ID.INITIAL_MAX_STREAM_DATA_BIDI_REMOTE: (
        "initial_max_stream_data_bidi_remote",
        0,
        VARINT_MAX,
    ),
    _ID.INITIAL_MAX_STREAM_DATA_UNI: ("initial_max_stream_data_uni", 0, VARINT_MAX),
    _ID.INITIAL_MAX_STREAMS_BIDI: ("initial_max_streams_bidi", 0, MAX_STREAMS_LIMIT),
    _ID.INITIAL_MAX_STREAMS_UNI: ("initial_max_streams_uni", 0, MAX_STREAMS_LIMIT),
    _ID.ACK_DELAY_EXPONENT: ("ack_delay_exponent", 0, MAX_ACK_DELAY_EXPONENT),
    _ID.MAX_ACK_DELAY: ("max_ack_delay", 0, MAX_MAX_ACK_DELAY - 1),
    _ID.ACTIVE_CONNECTION_ID_LIMIT: (
        "active_connection_id_limit",
        MIN_ACTIVE_CONNECTION_ID_LIMIT,
        VARINT_MAX,
    ),
    _ID.MAX_DATAGRAM_FRAME_SIZE: ("max_datagram_frame_size", 0, VARINT_MAX),
}
_CIDS: dict[int, str] = {
    _ID.ORIGINAL_DESTINATION_CONNECTION_ID: "original_destination_connection_id",
    _ID.INITIAL_SOURCE_CONNECTION_ID: "initial_source_connection_id",
    _ID.RETRY_SOURCE_CONNECTION_ID: "retry_source_connection_id",
}
_FLAGS: dict[int, str] = {
    _ID.DISABLE_ACTIVE_MIGRATION: "disable_active_migration",
    _ID.GREASE_QUIC_BIT: "grease_quic_bit",
}
# §18.2: only a server knows these values, so a client MUST NOT send them.
_SERVER_ONLY = frozenset(
    {
        _ID.ORIGINAL_DESTINATION_CONNECTION_ID,
        _ID.PREFERRED_ADDRESS,
        _ID.RETRY_SOURCE_CONNECTION_ID,
        _ID.STATELESS_RESET_TOKEN,
    }
)

_IPv4, _IPv6 = ipaddress.IPv4Address, ipaddress.IPv6Address
_Family = type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address]
_ZERO_ADDRESS_LENGTH: dict[_Family, int] = {_IPv4: 4 + 2, _IPv6: 16 + 2}  # address + port

# Reserved ids are 31 * N + 27 (§18.1); N below 2**9 keeps the id to two bytes.
_GREASE_MAX_N = 1 << 9
_GREASE_MAX_VALUE_LENGTH = 16


def _fail(reason: str) -> QuicError:
    return QuicError(_TP_ERROR, 0, reason)


# ---------------------------------------------------------------- value decoders
# Each takes the value bytes of one parameter and whether a server sent them.

_Decoder = Callable[[memoryview, bool], object]


def _integer_decoder(name: str, low: int, high: int) -> _Decoder:
    def decode(value: memoryview, from_server: bool) -> int:
        reader = Reader(value, error=_TP_ERROR)
        number = reader.varint()
        if not reader.eof():
            raise _fail(f"{name}: {len(value)}-byte value is not one varint")
        if not low <= number <= high:
            raise _fail(f"{name}: {number} is out of range")
        return number

    return decode


def _cid_decoder(name: str) -> _Decoder:
    def decode(value: memoryview, from_server: bool) -> bytes:
        if len(value) > MAX_CID_LENGTH:
            raise _fail(f"{name}: {len(value)}-byte connection ID")
        return bytes(value)

    return decode


def _flag_decoder(name: str) -> _Decoder:
    def decode(value: memoryview, from_server: bool) -> bool:
        if len(value):
            raise _fail(f"{name}: a flag parameter must be empty")
        return True

    return decode


def _decode_reset_token(value: memoryview, from_server: bool) -> bytes:
    if len(value) != STATELESS_RESET_TOKEN_LENGTH:
        raise _fail(f"stateless_reset_token: {len(value)} bytes")
    return bytes(value)


def _unpack_address(raw: bytes, port: int, family: _Family) -> tuple[str, int] | None:
    if port == 0 and not any(raw):
        return None
    return str(family(raw)), port


def _decode_preferred_address(value: memoryview, from_server: bool) -> PreferredAddress:
    reader = Reader(value, error=_TP_ERROR)
    ipv4 = _unpack_address(reader.bytes(4), reader.uint(2), _IPv4)
    ipv6 = _unpack_address(reader.bytes(16), reader.uint(2), _IPv6)
    cid_length = reader.uint8()
    if not 0 < cid_length <= MAX_CID_LENGTH:
        raise _fail(f"preferred_address: {cid_length}-byte connection ID")
    cid = reader.bytes(cid_length)
    token = reader.bytes(STATELESS_RESET_TOKEN_LENGTH)
    if not reader.eof():
        raise _fail("preferred_address: trailing bytes")
    return PreferredAddress(ipv4, ipv6, cid, token)


def _decode_version_information(value: memoryview, from_server: bool) -> VersionInformation:
    count, odd = divmod(len(value), 4)
    if odd or not count:
        raise _fail(f"version_information: {len(value)} bytes")
    chosen, *available = struct.unpack(f">{count}I", value)
    if chosen == 0 or 0 in available:
        raise _fail("version_information: version 0")
    if not from_server and chosen not in available:
        raise _fail("version_information: the client's chosen version is not available")
    return VersionInformation(chosen, available)


_DECODERS: dict[int, tuple[str, _Decoder]] = {
    **{
        pid: (name, _integer_decoder(name, low, high))
        for pid, (name, low, high) in _INTEGERS.items()
    },
    **{pid: (name, _cid_decoder(name)) for pid, name in _CIDS.items()},
    **{pid: (name, _flag_decoder(name)) for pid, name in _FLAGS.items()},
    _ID.STATELESS_RESET_TOKEN: ("stateless_reset_token", _decode_reset_token),
    _ID.PREFERRED_ADDRESS: ("preferred_address", _decode_preferred_address),
    _ID.VERSION_INFORMATION: ("version_information", _decode_version_information),
}


def decode_transport_parameters(
    data: bytes | bytearray | memoryview, *, from_server: bool
) -> TransportParameters:
    """Parse the peer's parameters; any malformed input is TRANSPORT_PARAMETER_ERROR.

    ``from_server`` says who sent them: a client may not send the server-only
    parameters (§18.2), and RFC 9368 treats the two senders' version lists differently.
    Duplicates are refused whatever the id (§7.4); unknown ids, GREASE included, are
    skipped (§7.4.2). Absent parameters take their defaults, which the connection can
    tell apart for CIDs because those default to ``None``.
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
        values[name] = decode(value, from_server)
    # §18.2: a server whose own CID is empty must not offer a preferred address.
    if "preferred_address" in values and values.get("initial_source_connection_id") == b"":
        raise _fail("preferred_address with a zero-length connection ID")
    return TransportParameters(**values)


# ---------------------------------------------------------------- encoder


def _pack_address(address: tuple[str, int] | None, family: _Family) -> bytes:
    if address is None:
        return bytes(_ZERO_ADDRESS_LENGTH[family])
    host, port = address
    return family(host).packed + port.to_bytes(2, "big")


def _encode_preferred_address(address: PreferredAddress) -> bytes:
    cid = address.connection_id
    return b"".join(
        (
            _pack_address(address.ipv4, _IPv4),
            _pack_address(address.ipv6, _IPv6),
            bytes((len(cid),)),
            cid,
            address.stateless_reset_token,
        )
    )


def _encode_version_information(info: VersionInformation) -> bytes:
    versions = (info.chosen_version, *info.available_versions)
    return struct.pack(f">{len(versions)}I", *versions)


def _grease_parameter() -> tuple[int, bytes]:
    """A reserved parameter (§18.1), so that peers keep ignoring unknown ids."""
    pid = 31 * secrets.randbelow(_GREASE_MAX_N) + 27
    return pid, os.urandom(secrets.randbelow(_GREASE_MAX_VALUE_LENGTH + 1))


def encode_transport_parameters(params: TransportParameters, *, grease: bool = False) -> bytes:
    """Encode the parameters whose value differs from what their absence means, by id.

    Leaving defaults out keeps the ClientHello small. CIDs and the structured
    parameters go out whenever they are not ``None``: an empty CID still means
    something. ``grease`` adds one reserved parameter with random id and value.
    """
    items: list[tuple[int, bytes]] = []
    for pid, (name, _low, _high) in _INTEGERS.items():
        number = getattr(params, name)
        if number is not None and number != getattr(_DEFAULTS, name):
            items.append((pid, encode_varint(number)))
    for pid, name in _CIDS.items():
        cid = getattr(params, name)
        if cid is not None:
            items.append((pid, cid))
    for pid, name in _FLAGS.items():
        if getattr(params, name):
            items.append((pid, b""))
    if params.stateless_reset_token is not None:
        items.append((_ID.STATELESS_RESET_TOKEN, params.stateless_reset_token))
    if params.preferred_address is not None:
        items.append((_ID.PREFERRED_ADDRESS, _encode_preferred_address(params.preferred_address)))
    if params.version_information is not None:
        info = _encode_version_information(params.version_information)
        items.append((_ID.VERSION_INFORMATION, info))
    if grease:
        items.append(_grease_parameter())
    items.sort(key=lambda item: item[0])
    return b"".join(encode_varint(pid) + encode_varint(len(value)) + value for pid, value in items)


# ---------------------------------------------------------------- socket API record

_S32_MAX = (1 << 31) - 1
_U8_MAX, _U16_MAX, _U32_MAX = 0xFF, 0xFFFF, 0xFFFF_FFFF
_US_PER_MS = 1000
LXIN_MAX_STREAMS = 4096


@dataclass(frozen=True, slots=True)
class _UapiField:
    """How one record field maps onto :class:`TransportParameters`.

    ``local_high`` bounds a value the application sets for its own side; the peer's
    saved values (``remote=1``, for 0-RTT) are only bounded by ``remote_high``, or
    clamped to ``local_high`` when ``clamp_remote`` (lxin/quic's
    quic_param_check_and_copy).
    """

    params_name: str
    low: int
    local_high: int
    remote_high: int
    scale: int = 1
    clamp_remote: bool = False


_UAPI_FIELDS: dict[str, _UapiField] = {
    "active_connection_id_limit": _UapiField("active_connection_id_limit", 2, 8, 8),
    "ack_delay_exponent": _UapiField(
        "ack_delay_exponent", 0, MAX_ACK_DELAY_EXPONENT, MAX_ACK_DELAY_EXPONENT
    ),
    "max_datagram_frame_size": _UapiField(
        "max_datagram_frame_size", MIN_MAX_UDP_PAYLOAD_SIZE, _U16_MAX, _U16_MAX
    ),
    "max_udp_payload_size": _UapiField(
        "max_udp_payload_size", MIN_MAX_UDP_PAYLOAD_SIZE, 65527, 65527
    ),
    "max_idle_timeout": _UapiField(
        "max_idle_timeout", 1_000_000, _U32_MAX, _U32_MAX, scale=_US_PER_MS
    ),
    "max_ack_delay": _UapiField(
        "max_ack_delay",
        0,
        MAX_MAX_ACK_DELAY * _US_PER_MS - 1,
        MAX_MAX_ACK_DELAY * _US_PER_MS - 1,
        scale=_US_PER_MS,
    ),
    "max_streams_bidi": _UapiField(
        "initial_max_streams_bidi", 0, LXIN_MAX_STREAMS, _U16_MAX, clamp_remote=True
    ),
    "max_streams_uni": _UapiField(
        "initial_max_streams_uni", 0, LXIN_MAX_STREAMS, _U16_MAX, clamp_remote=True
    ),
    "max_data": _UapiField("initial_max_data", 1200, _S32_MAX // 4, VARINT_MAX),
    "max_stream_data_bidi_local": _UapiField(
        "initial_max_stream_data_bidi_local", 1200, _S32_MAX // 8, VARINT_MAX
    ),
    "max_stream_data_bidi_remote": _UapiField(
        "initial_max_stream_data_bidi_remote", 1200, _S32_MAX // 8, VARINT_MAX
    ),
    "max_stream_data_uni": _UapiField(
        "initial_max_stream_data_uni", 1200, _S32_MAX // 8, VARINT_MAX
    ),
}
_UAPI_FLAGS = ("disable_active_migration", "grease_quic_bit")


def default_local_parameters() -> TransportParameters:
    """What a new socket advertises: lxin/quic's quic_transport_param_init() values.
    grease_quic_bit is off, as there: a program turns it on with TRANSPORT_PARAM, and
    with "0 means unchanged" could never turn it off again."""
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


def _checked(name: str, spec: _UapiField, value: int, remote: bool) -> int:
    high = spec.remote_high if remote else spec.local_high
    if remote and spec.clamp_remote:
        value = min(value, spec.local_high)
    if not spec.low <= value <= high:
        raise ValueError(f"{name} {value} is outside {spec.low}..{high}")
    return value // spec.scale


def params_from_uapi(rec: QuicTransportParam, base: TransportParameters) -> TransportParameters:
    """``base`` updated by a QUIC_SOCKOPT_TRANSPORT_PARAM set, as a new object.

    As in lxin/quic a zero field leaves the value unchanged, so a flag cannot be
    cleared nor a limit set to 0 this way. Values outside the kernel's limits raise
    ValueError naming the field, which the socket layer turns into EINVAL; with
    ``rec.remote`` set (the peer's parameters, saved for 0-RTT) the local-only upper
    bounds are lifted and stream counts are clamped instead. Microsecond times become
    milliseconds, rounded down. The record's non-RFC switches (stateless_reset,
    disable_1rtt_encryption, disable_compatible_version) are not transport parameters
    and are left to the caller.
    """
    remote = bool(rec.remote)
    changes: dict[str, object] = {}
    for name, spec in _UAPI_FIELDS.items():
        value = getattr(rec, name)
        if value:
            changes[spec.params_name] = _checked(name, spec, value, remote)
    for name in _UAPI_FLAGS:
        if getattr(rec, name):
            changes[name] = True
    return replace(base, **changes)


def params_to_uapi(params: TransportParameters) -> QuicTransportParam:
    """The record a QUIC_SOCKOPT_TRANSPORT_PARAM get returns.

    A peer may declare values wider than the C struct's fields; those saturate at the
    field's maximum so the record always packs. ``remote`` is left 0 for the caller.
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
