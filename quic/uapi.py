"""The socket API's constants and records, as lxin/quic's ``include/uapi/linux/quic.h``.

Names, numbers and struct layouts are kept exactly so that code written against the
Linux in-kernel QUIC reads the same here. Records pack to the same bytes as the C
structs (little-endian, natural alignment), so ``setsockopt``/``getsockopt`` take and
return ``bytes`` just as the kernel's ``optval`` buffers do.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field
from typing import ClassVar, Self

from .errors import TransportError

IPPROTO_QUIC = 261
SOL_QUIC = 288

# enum quic_cmsg_type
QUIC_STREAM_INFO = 0
QUIC_HANDSHAKE_INFO = 1

QUIC_STREAM_TYPE_SERVER_MASK = 0x01
QUIC_STREAM_TYPE_UNI_MASK = 0x02
QUIC_STREAM_TYPE_MASK = 0x03

# enum quic_msg_flags: stream flags (carried in quic_stream_info.stream_flags)
MSG_QUIC_STREAM_NEW = 0x400  # MSG_SYN
MSG_QUIC_STREAM_FIN = 0x200  # MSG_FIN
MSG_QUIC_STREAM_UNI = 0x800  # MSG_CONFIRM
MSG_QUIC_STREAM_DONTWAIT = 0x10000  # MSG_WAITFORONE
MSG_QUIC_STREAM_SNDBLOCK = 0x2000  # MSG_ERRQUEUE
# extended flags for msg_flags
MSG_QUIC_DATAGRAM = 0x1000  # MSG_RST
MSG_QUIC_NOTIFICATION = 0x8000  # MSG_MORE

MSG_QUIC_STREAM_FLAGS = (
    MSG_QUIC_STREAM_NEW
    | MSG_QUIC_STREAM_FIN
    | MSG_QUIC_STREAM_UNI
    | MSG_QUIC_STREAM_DONTWAIT
    | MSG_QUIC_STREAM_SNDBLOCK
)

# Linux MSG_* bits the socket API accepts alongside the QUIC flags.
MSG_DONTWAIT = 0x40
MSG_EOR = 0x80
MSG_TRUNC = 0x20
MSG_CTRUNC = 0x08
MSG_WAITALL = 0x100
MSG_NOSIGNAL = 0x4000
MSG_MORE = 0x8000
MSG_BATCH = 0x40000
QUIC_MSG_FLAGS = (
    MSG_QUIC_STREAM_FLAGS
    | MSG_BATCH
    | MSG_MORE
    | MSG_DONTWAIT
    | MSG_NOSIGNAL
    | MSG_WAITALL
    | MSG_QUIC_DATAGRAM
)

# enum quic_crypto_level
QUIC_CRYPTO_APP = 0
QUIC_CRYPTO_INITIAL = 1
QUIC_CRYPTO_HANDSHAKE = 2
QUIC_CRYPTO_EARLY = 3
QUIC_CRYPTO_MAX = 4

# socket options
QUIC_SOCKOPT_EVENT = 0
QUIC_SOCKOPT_STREAM_OPEN = 1
QUIC_SOCKOPT_STREAM_RESET = 2
QUIC_SOCKOPT_STREAM_STOP_SENDING = 3
QUIC_SOCKOPT_CONNECTION_ID = 4
QUIC_SOCKOPT_CONNECTION_CLOSE = 5
QUIC_SOCKOPT_CONNECTION_MIGRATION = 6
QUIC_SOCKOPT_KEY_UPDATE = 7
QUIC_SOCKOPT_TRANSPORT_PARAM = 8
QUIC_SOCKOPT_CONFIG = 9
QUIC_SOCKOPT_TOKEN = 10
QUIC_SOCKOPT_ALPN = 11
QUIC_SOCKOPT_SESSION_TICKET = 12
QUIC_SOCKOPT_CRYPTO_SECRET = 13
QUIC_SOCKOPT_TRANSPORT_PARAM_EXT = 14

QUIC_SOCKOPT_MAX_LEN = 4096
QUIC_TOKEN_MAX_LEN = 120
QUIC_ALPN_MAX_LEN = 128
QUIC_TRANSPORT_PARAM_EXT_MAX_LEN = 512
QUIC_SESSION_TICKET_MIN_LEN = 64
QUIC_CRYPTO_SECRET_BUFFER_SIZE = 48

QUIC_VERSION_V1 = 0x1
QUIC_VERSION_V2 = 0x6B3343CF

# <linux/tls.h> cipher types, used in quic_crypto_secret.type and quic_config
TLS_CIPHER_AES_GCM_128 = 51
TLS_CIPHER_AES_GCM_256 = 52
TLS_CIPHER_AES_CCM_128 = 53
TLS_CIPHER_CHACHA20_POLY1305 = 54

# enum quic_cong_algo
QUIC_CONG_ALG_RENO = 0
QUIC_CONG_ALG_CUBIC = 1
QUIC_CONG_ALG_MAX = 2

# enum quic_event_type
QUIC_EVENT_NONE = 0
QUIC_EVENT_STREAM_UPDATE = 1
QUIC_EVENT_STREAM_MAX_DATA = 2
QUIC_EVENT_STREAM_MAX_STREAM = 3
QUIC_EVENT_CONNECTION_ID = 4
QUIC_EVENT_CONNECTION_CLOSE = 5
QUIC_EVENT_CONNECTION_MIGRATION = 6
QUIC_EVENT_KEY_UPDATE = 7
QUIC_EVENT_NEW_TOKEN = 8
QUIC_EVENT_NEW_SESSION_TICKET = 9
QUIC_EVENT_MAX = 10  # one past the last type, as lxin/quic's enum ends

# stream states reported in quic_stream_update.state
QUIC_STREAM_SEND_STATE_READY = 0
QUIC_STREAM_SEND_STATE_SEND = 1
QUIC_STREAM_SEND_STATE_SENT = 2
QUIC_STREAM_SEND_STATE_RECVD = 3
QUIC_STREAM_SEND_STATE_RESET_SENT = 4
QUIC_STREAM_SEND_STATE_RESET_RECVD = 5
QUIC_STREAM_RECV_STATE_RECV = 6
QUIC_STREAM_RECV_STATE_SIZE_KNOWN = 7
QUIC_STREAM_RECV_STATE_RECVD = 8
QUIC_STREAM_RECV_STATE_READ = 9
QUIC_STREAM_RECV_STATE_RESET_RECVD = 10
QUIC_STREAM_RECV_STATE_RESET_READ = 11

# transport error codes, as quic.h names them
QUIC_TRANSPORT_ERROR_NONE = TransportError.NO_ERROR
QUIC_TRANSPORT_ERROR_INTERNAL = TransportError.INTERNAL_ERROR
QUIC_TRANSPORT_ERROR_CONNECTION_REFUSED = TransportError.CONNECTION_REFUSED
QUIC_TRANSPORT_ERROR_FLOW_CONTROL = TransportError.FLOW_CONTROL_ERROR
QUIC_TRANSPORT_ERROR_STREAM_LIMIT = TransportError.STREAM_LIMIT_ERROR
QUIC_TRANSPORT_ERROR_STREAM_STATE = TransportError.STREAM_STATE_ERROR
QUIC_TRANSPORT_ERROR_FINAL_SIZE = TransportError.FINAL_SIZE_ERROR
QUIC_TRANSPORT_ERROR_FRAME_ENCODING = TransportError.FRAME_ENCODING_ERROR
QUIC_TRANSPORT_ERROR_TRANSPORT_PARAM = TransportError.TRANSPORT_PARAMETER_ERROR
QUIC_TRANSPORT_ERROR_CONNECTION_ID_LIMIT = TransportError.CONNECTION_ID_LIMIT_ERROR
QUIC_TRANSPORT_ERROR_PROTOCOL_VIOLATION = TransportError.PROTOCOL_VIOLATION
QUIC_TRANSPORT_ERROR_INVALID_TOKEN = TransportError.INVALID_TOKEN
QUIC_TRANSPORT_ERROR_APPLICATION = TransportError.APPLICATION_ERROR
QUIC_TRANSPORT_ERROR_CRYPTO_BUF_EXCEEDED = TransportError.CRYPTO_BUFFER_EXCEEDED
QUIC_TRANSPORT_ERROR_KEY_UPDATE = TransportError.KEY_UPDATE_ERROR
QUIC_TRANSPORT_ERROR_AEAD_LIMIT_REACHED = TransportError.AEAD_LIMIT_REACHED
QUIC_TRANSPORT_ERROR_NO_VIABLE_PATH = TransportError.NO_VIABLE_PATH
QUIC_TRANSPORT_ERROR_VERSION_NEGOTIATION = TransportError.VERSION_NEGOTIATION_ERROR
QUIC_TRANSPORT_ERROR_CRYPTO = TransportError.CRYPTO_ERROR

# Defaults of quic_transport_param_init() (protocol.c).
QUIC_DEF_ACTIVE_CONNECTION_ID_LIMIT = 7
QUIC_DEF_ACK_DELAY_EXPONENT = 3
QUIC_DEF_MAX_UDP_PAYLOAD_SIZE = 65527
QUIC_DEF_MAX_IDLE_TIMEOUT = 30_000_000
QUIC_DEF_MAX_ACK_DELAY = 25_000
QUIC_DEF_MAX_STREAMS = 100
QUIC_DEF_MAX_DATA = 65535 * 32
QUIC_DEF_MAX_STREAM_DATA = 65535 * 16
QUIC_DEF_INITIAL_SMOOTHED_RTT = 333_000


class _Record:
    """A fixed-layout C struct: ``pack()`` gives the kernel's bytes, ``unpack()`` reads them.

    ``unpack`` raises ``ValueError`` on a short buffer; the socket layer turns that into
    ``EINVAL`` as the kernel does for a wrong ``optlen``.
    """

    FORMAT: ClassVar[struct.Struct]

    def pack(self) -> bytes:
        return self.FORMAT.pack(*self.__dict__.values())

    @classmethod
    def unpack(cls, data: bytes | bytearray | memoryview) -> Self:
        if len(data) < cls.FORMAT.size:
            raise ValueError(f"{cls.__name__} needs {cls.FORMAT.size} bytes, got {len(data)}")
        return cls(*cls.FORMAT.unpack_from(data))

    @classmethod
    def size(cls) -> int:
        return cls.FORMAT.size


@dataclass
class QuicStreamInfo(_Record):
    """``struct quic_stream_info``: the QUIC_STREAM_INFO cmsg."""

    FORMAT: ClassVar[struct.Struct] = struct.Struct("<qI4x")
    stream_id: int = -1
    stream_flags: int = 0


@dataclass
class QuicHandshakeInfo(_Record):
    """``struct quic_handshake_info``: the QUIC_HANDSHAKE_INFO cmsg."""

    FORMAT: ClassVar[struct.Struct] = struct.Struct("<B")
    crypto_level: int = QUIC_CRYPTO_INITIAL


@dataclass
class QuicTransportParam(_Record):
    """``struct quic_transport_param`` (56 bytes). Zero fields mean "unchanged" on set."""

    FORMAT: ClassVar[struct.Struct] = struct.Struct("<8BHHIIHHQQQQ")
    remote: int = 0
    disable_active_migration: int = 0
    grease_quic_bit: int = 0
    stateless_reset: int = 0
    disable_1rtt_encryption: int = 0
    disable_compatible_version: int = 0
    active_connection_id_limit: int = 0
    ack_delay_exponent: int = 0
    max_datagram_frame_size: int = 0
    max_udp_payload_size: int = 0
    max_idle_timeout: int = 0
    max_ack_delay: int = 0
    max_streams_bidi: int = 0
    max_streams_uni: int = 0
    max_data: int = 0
    max_stream_data_bidi_local: int = 0
    max_stream_data_bidi_remote: int = 0
    max_stream_data_uni: int = 0


@dataclass
class QuicConfig(_Record):
    """``struct quic_config`` (28 bytes): settings that are not transport parameters."""

    FORMAT: ClassVar[struct.Struct] = struct.Struct("<IIIIBBBBB3xI")
    version: int = 0
    plpmtud_probe_interval: int = 0
    initial_smoothed_rtt: int = 0
    payload_cipher_type: int = 0
    congestion_control_algo: int = 0
    validate_peer_address: int = 0
    stream_data_nodelay: int = 0
    receive_session_ticket: int = 0
    certificate_request: int = 0
    keepalive_probe_interval: int = 0


@dataclass
class QuicCryptoSecret(_Record):
    """``struct quic_crypto_secret`` (56 bytes): one traffic secret for one direction."""

    FORMAT: ClassVar[struct.Struct] = struct.Struct("<BBHI48s")
    send: int = 0
    level: int = QUIC_CRYPTO_APP
    rsv: int = 0
    type: int = TLS_CIPHER_AES_GCM_128
    secret: bytes = b""


@dataclass
class QuicErrinfo(_Record):
    """``struct quic_errinfo`` (16 bytes): STREAM_RESET and STREAM_STOP_SENDING."""

    FORMAT: ClassVar[struct.Struct] = struct.Struct("<qI4x")
    stream_id: int = 0
    errcode: int = 0


@dataclass
class QuicConnectionIdInfo(_Record):
    """``struct quic_connection_id_info`` (12 bytes)."""

    FORMAT: ClassVar[struct.Struct] = struct.Struct("<B3xII")
    dest: int = 0
    active: int = 0
    prior_to: int = 0


@dataclass
class QuicEventOption(_Record):
    """``struct quic_event_option`` (2 bytes)."""

    FORMAT: ClassVar[struct.Struct] = struct.Struct("<BB")
    type: int = 0
    on: int = 0


@dataclass
class QuicStreamUpdate(_Record):
    """``struct quic_stream_update`` (24 bytes): payload of QUIC_EVENT_STREAM_UPDATE."""

    FORMAT: ClassVar[struct.Struct] = struct.Struct("<qB3xIQ")
    id: int = 0
    state: int = 0
    errcode: int = 0
    finalsz: int = 0


@dataclass
class QuicStreamMaxData(_Record):
    """``struct quic_stream_max_data`` (16 bytes): payload of QUIC_EVENT_STREAM_MAX_DATA."""

    FORMAT: ClassVar[struct.Struct] = struct.Struct("<qQ")
    id: int = 0
    max_data: int = 0


@dataclass
class QuicConnectionClose(_Record):
    """``struct quic_connection_close`` (72 bytes): close code, frame and reason phrase."""

    FORMAT: ClassVar[struct.Struct] = struct.Struct("<IB3x64s")
    errcode: int = 0
    frame: int = 0
    phrase: bytes = field(default=b"")

    @property
    def reason(self) -> str:
        """The phrase as text, without the NUL padding of the C buffer."""
        return self.phrase.split(b"\0", 1)[0].decode("utf-8", "replace")


def pack_sockaddr(addr: tuple) -> bytes:
    """``struct sockaddr_in`` or ``sockaddr_in6`` for an address tuple, the optval of
    QUIC_SOCKOPT_CONNECTION_MIGRATION."""
    host, port = addr[0], addr[1]
    if ":" in host:
        flowinfo = addr[2] if len(addr) > 2 else 0
        scope_id = addr[3] if len(addr) > 3 else 0
        raw = socket.inet_pton(socket.AF_INET6, host)
        return (
            struct.pack("=H", socket.AF_INET6)
            + struct.pack("!HI", port, flowinfo)
            + raw
            + (struct.pack("=I", scope_id))
        )
    raw = socket.inet_pton(socket.AF_INET, host)
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + raw + bytes(8)


def unpack_sockaddr(data: bytes) -> tuple:
    """The address tuple in a ``struct sockaddr_in``/``sockaddr_in6``; ValueError else."""
    if len(data) < 2:
        raise ValueError("short sockaddr")
    (family,) = struct.unpack_from("=H", data)
    if family == socket.AF_INET and len(data) >= 8:
        (port,) = struct.unpack_from("!H", data, 2)
        return socket.inet_ntop(socket.AF_INET, data[4:8]), port
    if family == socket.AF_INET6 and len(data) >= 28:
        port, flowinfo = struct.unpack_from("!HI", data, 2)
        (scope_id,) = struct.unpack_from("=I", data, 24)
        return socket.inet_ntop(socket.AF_INET6, data[8:24]), port, flowinfo, scope_id
    raise ValueError("not a sockaddr_in or sockaddr_in6")
