"""The sans-I/O QUIC connection: bytes and time in, datagrams, events and a deadline out.

It owns no socket, thread or clock (DESIGN §1). The socket layer feeds it datagrams
(:meth:`Connection.receive_datagram`) and timer expiries (:meth:`Connection.handle_timer`),
drives the TLS handshake through the same seam the kernel offers to ``tlshd``
(handshake records in and out per crypto level, secrets, transport-parameter extension
bytes), and collects datagrams to send with :meth:`Connection.datagrams_to_send`.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import IntEnum
from functools import partial

from . import uapi
from .cong import Pacer, make_congestion_control
from .connid import DestinationConnectionIds, SourceConnectionIds, is_stateless_reset
from .crypto import (
    CONFIDENTIALITY_LIMIT,
    INTEGRITY_LIMIT,
    SAMPLE_SIZE,
    CipherSuite,
    DecryptionError,
    DeferredPacketKeys,
    PacketKeys,
    initial_secrets,
)
from .ecn import ECT_0, NOT_ECT
from .errors import QuicError, TransportError
from .frame import (
    Ack,
    ConnectionClose,
    Crypto,
    DataBlocked,
    Datagram,
    FrameType,
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
    decode_bulk_stream,
    decode_frames,
    encode_ack,
    encode_crypto_header,
    encode_frame,
    encode_stream_header,
)
from .migration import MAX_CHALLENGES, PathCheck, same_host, validation_timeout
from .packet import (
    FIXED_BIT,
    HEADER_FORM_BIT,
    MIN_INITIAL_SIZE,
    SUPPORTED_VERSIONS,
    PacketType,
    decode_packet_number,
    encode_long_header,
    encode_short_header,
    grease_bits,
    iter_packets,
    packet_number_length,
    short_header_starts,
    verify_retry,
)
from .path import BASE_PLPMTU, MAX_PROBES, MAX_UDP_PAYLOAD_IPV6, PlpmtuSearch, SearchState
from .pnspace import PnSpace
from .recovery import LossRecovery, PacketNumberSpace, SentPacket
from .stream import (
    CRYPTO_BUFFER_LIMIT,
    MAX_SEND_BUFFER,
    CryptoStream,
    FlowController,
    SendStream,
    StreamLimitError,
    StreamManager,
    StreamStateError,
    make_stream_id,
    stream_is_uni,
)
from .stream import Stream as QuicStream  # .frame's Stream is the STREAM frame
from .transport_params import (
    PreferredAddress,
    TransportParameters,
    VersionInformation,
    decode_transport_parameters,
    encode_transport_parameters,
)
from .varint import varint_size

log = logging.getLogger(__name__)

AEAD_TAG_SIZE = 16
# Undecryptable packets kept per level until its keys arrive (RFC 9001 §5.7).
MAX_BUFFERED_PACKETS = 16
# Datagrams produced per call, so one call cannot monopolise the caller's thread.
MAX_DATAGRAMS_PER_FLUSH = 64
# Full packets a stream sends in its turn when several share a stream run: fair within
# a flush, while each turn's frames still come from one call (SendStream.full_frames).
STREAM_TURN = 8
# DATAGRAM frames queued each way (RFC 9221 §5: they may be dropped, never block).
MAX_QUEUED_DATAGRAMS = 256
# The TLS handshake message a server sends after the handshake for resumption
# (RFC 8446 §4.6.1); a client's QUIC_SOCKOPT_SESSION_TICKET returns the last one.
TLS_NEW_SESSION_TICKET = 4
TLS_ALERT_UNEXPECTED_MESSAGE = 10  # RFC 8446 §6.2
# Consecutive PTOs that make full-sized packets suspect of a PMTU black hole: as many as
# the lost probes that condemn a probe size (RFC 8899 §4.3). A PTO probe carries data at
# full size when there is some, so in a black hole nothing at all comes back.
BLACK_HOLE_PTO_COUNT = MAX_PROBES
# Full-sized packets declared lost with none acknowledged in between that also reveal
# one: small packets (ACKs, PINGs) that do get through reset the PTO count, so PTOs
# alone miss a black hole that only swallows the large ones.
BLACK_HOLE_LOSSES = MAX_PROBES

INITIAL, HANDSHAKE, APP, EARLY = (
    uapi.QUIC_CRYPTO_INITIAL,
    uapi.QUIC_CRYPTO_HANDSHAKE,
    uapi.QUIC_CRYPTO_APP,
    uapi.QUIC_CRYPTO_EARLY,
)
LEVEL_SPACE = {
    INITIAL: PacketNumberSpace.INITIAL,
    HANDSHAKE: PacketNumberSpace.HANDSHAKE,
    APP: PacketNumberSpace.APPLICATION,
    EARLY: PacketNumberSpace.APPLICATION,
}
PACKET_LEVEL = {
    PacketType.INITIAL: INITIAL,
    PacketType.HANDSHAKE: HANDSHAKE,
    PacketType.ZERO_RTT: EARLY,
    PacketType.ONE_RTT: APP,
}
LEVEL_PACKET = {level: ptype for ptype, level in PACKET_LEVEL.items()}


class State(IntEnum):
    ESTABLISHING = 0
    ESTABLISHED = 1
    CLOSING = 2  # we sent CONNECTION_CLOSE (RFC 9000 §10.2.1)
    DRAINING = 3  # the peer did (RFC 9000 §10.2.2)
    CLOSED = 4


# The states and the space the per-packet paths read, as plain names: on Python 3.11 a
# member looked up on an Enum class goes through EnumType's __getattr__ hook, some
# 0.2 µs each time, a few times a packet.
ESTABLISHING, ESTABLISHED, CLOSING, DRAINING, CLOSED = State
APP_SPACE = PacketNumberSpace.APPLICATION


@dataclass
class ConnectionConfig:
    """What a socket fixes before the connection starts."""

    is_client: bool
    version: int = uapi.QUIC_VERSION_V1
    local_params: TransportParameters = field(default_factory=TransportParameters)
    cid_length: int = 8
    # Makes the IDs issued after the first (NEW_CONNECTION_ID, preferred_address); None:
    # random ones of cid_length bytes. A worker's tunnel makes IDs that steer to it.
    new_cid: Callable[[], bytes] | None = None
    congestion_control: int = uapi.QUIC_CONG_ALG_RENO
    initial_rtt: float = uapi.QUIC_DEF_INITIAL_SMOOTHED_RTT / 1e6
    max_datagram_size: int = MIN_INITIAL_SIZE
    reset_key: bytes = field(default_factory=lambda: os.urandom(32))
    token: bytes = b""  # client: token for the first Initial
    # RFC 9368: offer (client) or accept (server) a switch between v1 and v2.
    compatible_versions: bool = True
    # Server: makes the token sent in NEW_TOKEN once the handshake completes; made then,
    # not with the connection, so that the first flight does not wait for it.
    new_token: Callable[[], bytes] | None = None
    preferred_address: tuple | None = None  # server: offered in preferred_address
    event_mask: int = 0  # bit N set: lxin event type N is reported
    # PLPMTUD (RFC 8899): PROBE_TIMER in seconds, 0 to keep max_datagram_size; and the
    # largest UDP payload the path may carry as far as the host knows (its MAX_PLPMTU
    # before the transport parameters cut it).
    plpmtud_probe_interval: float = 0.0
    max_plpmtu: int = MAX_UDP_PAYLOAD_IPV6
    # Seconds without an ack-eliciting packet either way, once the handshake is done,
    # after which a PING goes out (lxin/quic's keepalive_probe_interval): it keeps a NAT
    # binding and the peer's idle timer alive (RFC 9000 §10.1.2). 0 is off.
    keepalive_interval: float = 0.0
    # Use ECN (RFC 9000 §13.4): the I/O layer can send each datagram with the codepoint
    # ``Connection.ecn_codepoint`` asks for. Received codepoints are counted either way.
    ecn: bool = False


# RFC 9000 §9.1: frames that probe a path without moving the connection onto it. A
# probe is padded to 1200 bytes (§8.2.1), so PADDING is one of them.
PROBING_FRAMES = (PathChallenge, PathResponse, NewConnectionId, Padding)
# A packet for another path carries its whole packet number. The length RFC 9000 §17.1
# asks for (twice the distance to the largest acknowledged) covers reordering on one
# path; the current path's packets may overtake the other's by any number, and a short
# number the peer then decodes wrongly fails to open and is dropped unseen: a
# PATH_RESPONSE read 300 packets late validated nothing.
PROBE_PN_LENGTH = 4

# Records kept in SentPacket.frames, telling what to do when a packet is acked or lost.
REC_ACK, REC_CRYPTO, REC_STREAM, REC_CONTROL, REC_HANDSHAKE_DONE = range(5)
REC_MAX_DATA, REC_MAX_STREAM_DATA, REC_MAX_STREAMS, REC_DATAGRAM, REC_PING = range(5, 10)
REC_PMTU_PROBE = 10


@dataclass(slots=True)
class CloseInfo:
    error_code: int
    frame_type: int | None  # None for an application close
    reason: bytes
    remote: bool

    def record(self) -> uapi.QuicConnectionClose:
        """As QUIC_SOCKOPT_CONNECTION_CLOSE and its event carry it. The record's fields
        are a u32 and a u8, and a peer's code and frame type are 62-bit varints: the
        fields keep their low bits, as the kernel's C assignments do."""
        return uapi.QuicConnectionClose(
            self.error_code & 0xFFFFFFFF, (self.frame_type or 0) & 0xFF, self.reason[:64]
        )


class _RunStopped(Exception):
    """A batch's run closed the connection; the datagrams from ``index`` on go one by one."""

    def __init__(self, index: int) -> None:
        super().__init__(index)
        self.index = index


class Connection:
    """One QUIC connection, either role. Not thread-safe: the socket layer locks."""

    def __init__(
        self,
        config: ConnectionConfig,
        *,
        dcid: bytes,
        scid: bytes,
        peer_addr: tuple,
        now: float,
        original_dcid: bytes | None = None,
        retry_scid: bytes | None = None,
        address_validated: bool = False,
        client_initial_keys: PacketKeys | None = None,
        on_cid_add: Callable[[bytes], None] | None = None,
        on_cid_remove: Callable[[bytes], None] | None = None,
        on_reset_token: Callable[[bytes], None] | None = None,
        on_reset_token_gone: Callable[[bytes], None] | None = None,
    ) -> None:
        self.config = config
        self.is_client = config.is_client
        self.version = config.version
        # RFC 9368: the version of the client's first Initial, kept after a switch to
        # check the client's chosen_version and to read Initials it still sends in it.
        self.original_version = config.version
        self.original_initial_keys: PacketKeys | None = None
        # Client: Initial keys, by version, of the versions a server may switch to, made
        # by derive_ahead() once the first flight is out (with the DCID they are for).
        self.keys_ahead_due = self.is_client and config.compatible_versions
        self._keys_ahead: dict[int, tuple[bytes, PacketKeys, PacketKeys]] = {}
        self.peer_addr = peer_addr
        self.state = ESTABLISHING
        self.close_info: CloseInfo | None = None
        # The DCID the client's first Initial carried: it keys the Initial secrets and
        # the server echoes it in original_destination_connection_id.
        self.original_dcid = dcid if self.is_client else (original_dcid or b"")
        # RFC 9000 §7.3: the Source Connection ID of the Retry, if there was one; the
        # Initial keys derive from it after a Retry, from the original DCID otherwise.
        self.retry_scid = retry_scid
        self.initial_dcid = retry_scid or self.original_dcid
        self.scid = scid
        self.source_cids = SourceConnectionIds(
            config.reset_key,
            scid,
            config.new_cid or partial(os.urandom, config.cid_length),
            on_cid_add,
            on_cid_remove,
        )
        self.dest_cids = DestinationConnectionIds(
            dcid,
            config.local_params.active_connection_id_limit,
            on_reset_token,
            on_reset_token_gone,
        )
        self.spaces = [PnSpace(), PnSpace(), PnSpace()]
        self.send_keys: list[PacketKeys | None] = [None] * 4
        self.recv_keys: list[PacketKeys | None] = [None] * 4
        # 1-RTT key updates (RFC 9001 §6): our send phase, the peer's, the keys either
        # side of the current receive generation, and what limits the next update.
        self.key_phase = 0
        self.recv_phase = 0
        self.recv_keys_next: PacketKeys | None = None
        self.recv_keys_prev: PacketKeys | None = None
        self.recv_prev_until = 0.0
        self.recv_phase_first_pn = 0
        self.key_update_pn: int | None = None  # first packet sent on keys not yet acked
        self.packets_on_key = 0
        self.confidentiality_limit = 0
        self.integrity_limit = 0
        self.failed_opens = 0
        self.crypto = {lvl: CryptoStream() for lvl in (INITIAL, HANDSHAKE, APP)}
        self.recovery = LossRecovery(
            make_congestion_control(config.congestion_control, config.max_datagram_size),
            is_client=self.is_client,
            initial_rtt=config.initial_rtt,
            ecn=config.ecn,
        )
        # RFC 9002 §6.2.2.1: only a client waits for the server to validate its address.
        self.recovery.peer_completed_address_validation = not self.is_client
        self.max_datagram_size = config.max_datagram_size
        self.pacer = Pacer(config.max_datagram_size)
        # None unless enabled: the per-packet paths then test nothing for it.
        self.plpmtud = (
            PlpmtuSearch(config.plpmtud_probe_interval) if config.plpmtud_probe_interval else None
        )
        self.pacing_deadline: float | None = None
        self.local_params = config.local_params
        self.peer_params: TransportParameters | None = None
        self.grease_bit = False
        self.zero_rtt_allowed = False  # client: remembered parameters let data go early
        # Migration (RFC 9000 §9): the path being validated, and datagrams for paths
        # other than the current one as (datagram, peer address, local path 0|1).
        self.path_check: PathCheck | None = None
        self.probes_out: deque[tuple[bytes, tuple, int]] = deque()
        self._packet_addr: tuple = peer_addr
        self._non_probing = False
        self.migrated_local = False
        # Our move's new path was never validated: the socket releases its address.
        self.migration_failed = False
        self.pad_next = False  # a PATH_CHALLENGE/RESPONSE is queued: pad its datagram
        self.large_losses = 0  # see BLACK_HOLE_LOSSES
        self.last_ping = 0.0  # when an ACK-only packet last carried a PING
        self._probe_addr: tuple | None = None  # see _credit_probe_path
        self._probe_credit = 0
        self.ack_only_sent = 0  # 1-RTT ACK-only packets since our last ack-eliciting one
        self.streams = StreamManager(self.is_client, self.local_params)
        self.flow_send = FlowController(0)
        self.flow_recv = FlowController(self.local_params.initial_max_data)
        self._install_initial_keys(self.initial_dcid)
        if client_initial_keys is not None:
            # Server: the same keys, derived by whoever read the ClientHello first (the
            # tunnel's ALPN lookup), for the version of the client's Initial.
            self.recv_keys[INITIAL] = client_initial_keys
        # What the socket layer reads.
        self.crypto_inbox: deque[tuple[int, bytes]] = deque()
        # Client: the last whole NewSessionTicket message received, which
        # QUIC_SOCKOPT_SESSION_TICKET reads, and post-handshake CRYPTO bytes not yet a
        # whole TLS message.
        self.session_ticket = b""
        self._ticket_bytes = bytearray()
        self.readable: dict[int, None] = {}
        # The last read_stream made new credit due (MAX_DATA, MAX_STREAM_DATA, or
        # MAX_STREAMS after a FIN): only then has the reader anything to send.
        self.credit_due = False
        self.datagrams_in: deque[bytes] = deque()
        self.notifications: deque[tuple[int, bytes]] = deque()
        # What is waiting to be sent.
        self.control: deque[tuple[object, tuple]] = deque()
        self.datagrams_out: deque[bytes] = deque()
        self.sending: dict[int, None] = {}
        self.pending_max_data = False
        self.pending_max_streams = [False, False]
        # The limits already reported blocked (RFC 9000 §4.1, §4.6): once per limit value.
        self.data_blocked_at = -1
        self.streams_blocked_at = [-1, -1]
        self.pending_ping = 0
        self.handshake_done_pending = False
        self.handshake_complete = False
        self.handshake_confirmed = False
        self.peer_address_validated = self.is_client or address_validated
        self.bytes_received = 0
        self.bytes_sent = 0
        self.buffered_packets: dict[int, list[tuple[bytes, float, int]]] = {}
        # RFC 9000 §10.1: the idle timer restarts on every packet received and on
        # ack-eliciting sends; the deadline is worked out only when a timer is armed.
        self.last_activity = now
        self.close_deadline: float | None = None
        self.close_pending = False
        self.last_close_sent = 0.0
        self.token = config.token  # what our Initials carry
        self.new_token = b""  # client: the last NEW_TOKEN, for the next connection
        self._packet_dcid = b""
        # qlog hook, trace(name, data); None keeps the hot paths free of tracing work.
        self.trace: Callable[[str, dict], None] | None = None

    # ------------------------------------------------------------------
    # handshake seam: what tlshd/libquic drive through the socket API

    def _install_initial_keys(self, dcid: bytes) -> None:
        ahead = self._keys_ahead.pop(self.version, None)
        if ahead is not None and ahead[0] == dcid:
            _, self.send_keys[INITIAL], self.recv_keys[INITIAL] = ahead
        else:
            self.send_keys[INITIAL], self.recv_keys[INITIAL] = self._initial_keys(
                dcid, self.version, DeferredPacketKeys
            )

    def _initial_keys(
        self, dcid: bytes, version: int, make: Callable = PacketKeys.from_secret
    ) -> tuple[PacketKeys, PacketKeys]:
        """(send, receive) Initial keys for ``dcid`` in ``version`` (RFC 9001 §5.2),
        derived now or, with ``make`` DeferredPacketKeys, on first use."""
        client, server = initial_secrets(dcid, version)
        suite = CipherSuite.AES_128_GCM
        mine, theirs = (client, server) if self.is_client else (server, client)
        return make(suite, mine, version), make(suite, theirs, version)

    def derive_ahead(self) -> None:
        """Client, its first Initial sent: derive the Initial keys of each version the
        server may switch to (RFC 9368 §4: those we list before ours) while the server
        works, rather than when its first answer arrives and waits for them."""
        self.keys_ahead_due = False
        for version in self._version_information().available_versions:
            if version == self.version:
                break
            self._keys_ahead[version] = (
                self.initial_dcid,
                *self._initial_keys(self.initial_dcid, version),
            )

    def handshake_send(self, level: int, data: bytes) -> None:
        """Handshake bytes from TLS, to go out in CRYPTO frames at ``level``."""
        if level not in self.crypto or self.send_keys[level] is None:
            raise ValueError(f"no send keys for crypto level {level}")
        self.crypto[level].write(data)

    def set_secret(self, level: int, send: bool, cipher_type: int, secret: bytes) -> None:
        """QUIC_SOCKOPT_CRYPTO_SECRET: install one traffic secret for one direction."""
        if self.state != ESTABLISHING:
            raise ValueError("secrets are set only while the connection is establishing")
        keys = PacketKeys.from_secret(CipherSuite(cipher_type), secret, self.version)
        if level == HANDSHAKE:
            self.recovery.has_handshake_keys = True
            self._keys_ahead.clear()  # no version switch is followed from here on
        if send:
            self.send_keys[level] = keys
        else:
            self.recv_keys[level] = keys
            if level == APP:
                self.recv_keys_next = keys.next_generation()
        if level == APP:
            self.confidentiality_limit = CONFIDENTIALITY_LIMIT[keys.suite]
            self.integrity_limit = INTEGRITY_LIMIT[keys.suite]
        if level in (HANDSHAKE, APP) and not send:
            self._replay_buffered(level)
        if level == EARLY and not send:
            self._replay_buffered(EARLY)
        if self.send_keys[APP] is not None and self.recv_keys[APP] is not None:
            self._on_handshake_complete()

    def local_transport_params(self) -> bytes:
        """QUIC_SOCKOPT_TRANSPORT_PARAM_EXT get: our parameters, encoded for TLS."""
        params = self.local_params
        params.initial_source_connection_id = self.scid
        params.version_information = self._version_information()
        if not self.is_client:
            params.original_destination_connection_id = self.original_dcid
            params.retry_source_connection_id = self.retry_scid
            params.stateless_reset_token = self.source_cids.ids[0].reset_token
            if self.config.preferred_address is not None and params.preferred_address is None:
                params = self._offer_preferred_address(params)
        return encode_transport_parameters(params)

    def _offer_preferred_address(self, params: TransportParameters) -> TransportParameters:
        """RFC 9000 §9.6: the address, and the connection ID of sequence 1 to reach it."""
        entry = self.source_cids.issue()
        addr = self.config.preferred_address
        v6 = ":" in addr[0]
        preferred = PreferredAddress(
            ipv4=None if v6 else (addr[0], addr[1]),
            ipv6=(addr[0], addr[1]) if v6 else None,
            connection_id=entry.cid,
            stateless_reset_token=entry.reset_token,
        )
        return replace(params, preferred_address=preferred)

    def remember_peer_params(self, params: TransportParameters) -> None:
        """RFC 9000 §7.4.1: a resuming client may open streams and send 0-RTT data within
        the limits the server gave on the earlier connection, until the new ones come."""
        self.zero_rtt_allowed = True
        self.streams.set_peer_params(params)
        self.flow_send.on_max_data(params.initial_max_data)

    def _version_information(self) -> VersionInformation:
        """Ours: the version in use and, unless switching is off, both versions, v2 first
        so a server that follows the client's order (RFC 9368 §4) upgrades."""
        if self.config.compatible_versions:
            return VersionInformation(self.version, list(SUPPORTED_VERSIONS))
        return VersionInformation(self.version, [self.version])

    def set_peer_transport_params(self, data: bytes) -> None:
        """QUIC_SOCKOPT_TRANSPORT_PARAM_EXT set: the peer's parameters from TLS."""
        params = decode_transport_parameters(data, from_server=self.is_client)
        self._check_version_information(params.version_information)
        if params.initial_source_connection_id != self.dest_cids.active.cid:
            raise QuicError(
                TransportError.TRANSPORT_PARAMETER_ERROR,
                0,
                "initial_source_connection_id does not match the peer's SCID",
            )
        if self.is_client:
            if params.original_destination_connection_id != self.original_dcid:
                raise QuicError(
                    TransportError.TRANSPORT_PARAMETER_ERROR,
                    0,
                    "original_destination_connection_id does not match",
                )
            if params.retry_source_connection_id != self.retry_scid:
                raise QuicError(
                    TransportError.TRANSPORT_PARAMETER_ERROR,
                    0,
                    "retry_source_connection_id does not match the Retry",
                )
            if params.stateless_reset_token is not None:
                self.dest_cids.set_reset_token(params.stateless_reset_token)
            if params.preferred_address is not None:
                preferred = params.preferred_address
                self.dest_cids.on_new_connection_id(
                    1, 0, preferred.connection_id, preferred.stateless_reset_token
                )
        self.peer_params = params
        # RFC 9287: once the peer said it accepts any QUIC bit, ours varies (Initials
        # excepted: their receiver may not have our parameters yet).
        self.grease_bit = params.grease_quic_bit
        self.streams.set_peer_params(params)
        self.flow_send.on_max_data(params.initial_max_data)
        self.recovery.max_ack_delay = params.max_ack_delay / 1000

    def _check_version_information(self, info: VersionInformation | None) -> None:
        """RFC 9368 §4: the peer's chosen_version must be the version its handshake
        used (for a client, the one of its first Initial; for a server, the negotiated
        one). A server then follows the client's preference to a compatible version."""
        if info is None:
            if self.is_client and self.version != self.config.version:
                raise QuicError(
                    TransportError.VERSION_NEGOTIATION_ERROR, 0, "version changed without VI"
                )
            return
        expected = self.version if self.is_client else self.original_version
        if info.chosen_version != expected:
            raise QuicError(
                TransportError.VERSION_NEGOTIATION_ERROR,
                0,
                f"chosen_version 0x{info.chosen_version:x} is not 0x{expected:x}",
            )
        if not self.is_client and self.config.compatible_versions:
            for version in info.available_versions:
                if version == self.version:
                    break
                if version in SUPPORTED_VERSIONS:
                    self._switch_version(version)
                    break

    def _switch_version(self, version: int) -> None:
        """Compatible version negotiation: from here on Initials use ``version``'s keys
        (RFC 9369 §3.3.1); a server still reads the client's original-version Initials."""
        if not self.is_client:
            self.original_initial_keys = self.recv_keys[INITIAL]
        self.version = version
        self._install_initial_keys(self.initial_dcid)
        log.debug("switched to QUIC version 0x%x", version)

    def _on_handshake_complete(self) -> None:
        self.handshake_complete = True
        self.state = ESTABLISHED
        # 0-RTT is over (RFC 9001 §4.9.3): a client sends 1-RTT only; a server that
        # declined early data drops the 0-RTT packets it kept.
        self.send_keys[EARLY] = None
        self.buffered_packets.pop(EARLY, None)
        if not self.is_client:
            # RFC 9001 §4.1.2: the server's handshake is confirmed once complete.
            self.handshake_done_pending = True
            self._confirm_handshake()
            self.send_new_token()
        self._issue_connection_ids()

    def send_new_token(self) -> bool:
        """Server: a NEW_TOKEN (RFC 9000 §8.1.3) for the client's next connection, as
        every handshake ends with and QUIC_SOCKOPT_TOKEN set asks for again. False when
        there is no token to give: a client's connection, or no token source."""
        if self.is_client or self.config.new_token is None:
            return False
        self._queue_control(NewToken(self.config.new_token()))
        return True

    def _confirm_handshake(self) -> None:
        """RFC 9001 §4.9.2: Handshake keys go once the handshake is confirmed."""
        if self.handshake_confirmed:
            return
        self.handshake_confirmed = True
        self.recovery.handshake_confirmed = True
        self._discard_level(HANDSHAKE)
        if self.plpmtud is not None:
            self._start_plpmtud()

    def _start_plpmtud(self) -> None:
        """RFC 9000 §14.3: the path is validated and BASE_PLPMTU proven by the handshake;
        search up to what both ends accept (max_udp_payload_size, RFC 9000 §18.2: ours
        too, taking the path as symmetric) and the host's limit for the path."""
        bound = min(self.local_params.max_udp_payload_size, self.config.max_plpmtu)
        if self.peer_params is not None:
            bound = min(bound, self.peer_params.max_udp_payload_size)
        self.plpmtud.start(bound)

    def _restart_plpmtud(self) -> None:
        """A new path may not carry what the old one did (RFC 8899 §4.3): back to
        BASE_PLPMTU, then search again."""
        if self.plpmtud is None:
            return
        self.plpmtud = PlpmtuSearch(self.config.plpmtud_probe_interval)
        if self.max_datagram_size != BASE_PLPMTU:
            self._set_max_datagram_size(BASE_PLPMTU)
        self._start_plpmtud()

    def _discard_level(self, level: int) -> None:
        if self.send_keys[level] is None and self.recv_keys[level] is None:
            return
        self.send_keys[level] = None
        self.recv_keys[level] = None
        self.recovery.discard_space(LEVEL_SPACE[level])
        self.buffered_packets.pop(level, None)

    def _issue_connection_ids(self) -> None:
        if self.peer_params is None:
            return
        for _ in range(
            self.source_cids.wanted(min(self.peer_params.active_connection_id_limit, 8))
        ):
            self._issue_connection_id()

    def _issue_connection_id(self) -> None:
        """A new ID of ours, announced in NEW_CONNECTION_ID with our retire_prior_to."""
        entry = self.source_cids.issue()
        frame = NewConnectionId(
            entry.sequence, self.source_cids.retire_prior_to, entry.cid, entry.reset_token
        )
        self._queue_control(frame)

    # ------------------------------------------------------------------
    # receiving

    def receive_datagram(self, data: bytes, addr: tuple, now: float, ecn: int = NOT_ECT) -> None:
        """One UDP datagram from ``addr``; may hold several coalesced packets. ``ecn`` is
        the ECN codepoint of its IP header, counted for each packet it carries."""
        if self.state >= CLOSING:
            if self.state == CLOSING:
                # RFC 9000 §10.2.1: answer anything with the close again, not every time.
                self.bytes_received += len(data)
                self.close_pending = True
            return
        self.bytes_received += len(data)
        moved = addr != self.peer_addr
        if moved:
            self._credit_probe_path(addr, len(data))
        self._packet_addr = addr
        self._non_probing = False
        first = data[0] if data else HEADER_FORM_BIT
        if (
            not first & HEADER_FORM_BIT
            and self.recv_keys[APP] is not None
            and len(data) > 1 + self.config.cid_length
            and (first & FIXED_BIT or self.local_params.grease_quic_bit)
        ):
            # Nearly every datagram: one 1-RTT packet, our CID at a fixed place.
            try:
                unopened = not self._receive_short(data, addr, now, ecn)
            except QuicError as exc:
                self._close_on_error(exc, now)
                return
        else:
            fixed_bit = not self.local_params.grease_quic_bit
            unopened = self._receive_packets(data, addr, now, ecn, fixed_bit)
        if unopened is None or self.state >= DRAINING:
            return
        if unopened and is_stateless_reset(data, self.dest_cids.reset_tokens()):
            self._on_stateless_reset(now)
        elif moved and self._non_probing and self.handshake_confirmed and not self.is_client:
            self._on_peer_address_change(addr, len(data), now)

    def receive_datagrams(
        self, datagrams: list, addr: tuple, now: float, ecn: int = NOT_ECT
    ) -> None:
        """Datagrams that arrived together from ``addr`` with one ECN codepoint, in order
        (a GRO batch): what :meth:`receive_datagram` does for each. An established
        connection takes the batch in one pass (:meth:`_receive_run`)."""
        start = 0
        if (
            len(datagrams) > 1
            and self.state == ESTABLISHED
            and addr == self.peer_addr
            and self.trace is None
        ):
            try:
                start = self._receive_run(datagrams, addr, now, ecn)
            except _RunStopped as stop:
                start = stop.index
        for data in datagrams[start:]:
            self.receive_datagram(data, addr, now, ecn)

    def _receive_run(self, datagrams: list, addr: tuple, now: float, ecn: int) -> int:
        """Header prediction (:meth:`_receive_predicted`) over a batch: the 1-RTT packets
        that each continue a stream in order are opened with one header-protection call
        for all, and counted for ACKs, flow control and idle time once per run instead
        of once per packet. Any other packet is handed to the general path where it
        stands, so order is kept. Returns how many datagrams were taken; the rest go one
        by one, as they do once the connection leaves the established state."""
        keys = self.recv_keys[APP]
        space = self.spaces[APP_SPACE]
        pn_offset = 1 + self.config.cid_length
        sample_at = pn_offset + 4
        sample_end = sample_at + SAMPLE_SIZE
        if keys is None or not space.ranges or min(map(len, datagrams)) < sample_end:
            return 0
        masks = keys.hp_masks(b"".join([data[sample_at:sample_end] for data in datagrams]))
        if masks is None:
            return 0
        fixed = 0 if self.local_params.grease_quic_bit else FIXED_BIT
        form = HEADER_FORM_BIT | fixed
        streams, readable = self.streams, self.readable
        self._packet_addr = addr
        self._non_probing = False
        (decrypt, iv), phase, largest = keys.opener(), self.recv_phase, space.largest_received
        count = grown = size = 0  # the run's in-order packets, stream growth, bytes
        flow = self.flow_recv
        room = flow.limit - flow.used  # past it the packet that crossed ends the batch
        last_sid, recv = -1, None
        for i, data in enumerate(datagrams):
            m = i * SAMPLE_SIZE
            raw = data[0]
            first = raw ^ (masks[m] & 0x1F)
            payload = None
            if raw & form == fixed and not first & 0x18 and (first >> 2) & 1 == phase:
                pn_len = (first & 0x03) + 1
                pn_end = pn_offset + pn_len
                truncated = int.from_bytes(data[pn_offset:pn_end], "big") ^ int.from_bytes(
                    masks[m + 1 : m + 1 + pn_len], "big"
                )
                pn = decode_packet_number(truncated, pn_len << 3, largest)
                if pn > largest:
                    header = bytes((first,)) + data[1:pn_offset] + truncated.to_bytes(pn_len, "big")
                    try:
                        payload = decrypt(
                            (iv ^ pn).to_bytes(12, "big"), memoryview(data)[pn_end:], header
                        )
                    except Exception:  # cryptography's InvalidTag, or too short
                        pass  # the general path counts it, or finds a Stateless Reset
            bulk = None if payload is None else decode_bulk_stream(payload)
            if bulk is not None and not bulk[3]:
                sid = bulk[0]
                if sid != last_sid:
                    stream = streams.get(sid)
                    last_sid, recv = sid, None if stream is None else stream.recv
                took = None if recv is None else recv.on_next(bulk[1], bulk[2])
                if took is not None:
                    grown += took
                    size += len(data)
                    readable[sid] = None
                    if pn == largest + 1 and grown <= room:
                        count += 1
                    else:  # a gap (packets lost or late), or the window crossed
                        self._take_run(space, count, grown, size, now, ecn, i + 1)
                        count = grown = size = 0
                        room = flow.limit - flow.used
                        space.on_received(pn, True, now, ecn)
                    largest = pn
                    continue
            self._take_run(space, count, grown, size, now, ecn, i)
            count = grown = size = 0
            if payload is None:
                self.receive_datagram(data, addr, now, ecn)
            else:
                self.bytes_received += len(data)
                try:
                    self._on_short_packet(
                        data, pn_offset, space, header, pn, payload, addr, now, ecn
                    )
                except QuicError as exc:
                    self._close_on_error(exc, now)
            keys = self.recv_keys[APP]
            if self.state != ESTABLISHED or keys is None or addr != self.peer_addr:
                return i + 1
            (decrypt, iv), phase, largest = keys.opener(), self.recv_phase, space.largest_received
            room = flow.limit - flow.used
            last_sid = -1
        self._take_run(space, count, grown, size, now, ecn, len(datagrams))
        return len(datagrams)

    def _take_run(
        self, space: PnSpace, count: int, grown: int, size: int, now: float, ecn: int, end: int
    ) -> None:
        """Account for a run's packets, all before index ``end`` of the batch; a run that
        broke flow control closes the connection, and the batch goes on from ``end``."""
        if not size:
            return
        self.bytes_received += size
        self.last_activity = now
        if count:
            space.on_received_run(space.largest_received + count, count, now, ecn)
        try:
            self.flow_recv.on_received(grown)
        except QuicError as exc:
            self._close_on_error(exc, now)
            raise _RunStopped(end) from None

    def _receive_packets(
        self, data: bytes, addr: tuple, now: float, ecn: int, fixed_bit: bool
    ) -> bool | None:
        """Each packet of a datagram in turn: whether one could not be opened, or None
        once one broke the protocol and closed the connection. A datagram whose rest
        does not parse keeps the packets before it."""
        unopened = False
        try:
            for header in iter_packets(data, self.config.cid_length, fixed_bit_required=fixed_bit):
                try:
                    unopened |= not self._receive_packet(data, header, addr, now, ecn)
                except QuicError as exc:
                    self._close_on_error(exc, now)
                    return None
                if self.state >= DRAINING:
                    return None
        except QuicError:
            unopened = True  # the rest of the datagram is malformed: drop it
        return unopened

    def on_unreachable(self, addr: tuple, reason: bytes) -> bool:
        """An ICMP error for a datagram to ``addr``. A client that has heard nothing
        from its server there gives up at once, as a TCP connect does on a refusal;
        anything else goes on (RFC 9000 §14.2.1: ICMP is easily forged, and a path
        that answered once is judged by its loss detection). True when it ended."""
        if not self.is_client or self.bytes_received or addr != self.peer_addr:
            return False
        if self.state >= CLOSING:
            return False
        self.close_info = CloseInfo(TransportError.NO_ERROR, None, reason, False)
        self.state = CLOSED
        self._notify_close()
        return True

    def _on_stateless_reset(self, now: float) -> None:
        """RFC 9000 §10.3.1: the peer lost the connection; go quiet at once."""
        log.info("stateless reset from the peer")
        self.close_info = CloseInfo(TransportError.NO_ERROR, None, b"stateless reset", True)
        self.state = DRAINING
        self.close_deadline = now + 3 * self.recovery.pto_interval()
        self._notify_close()

    def _receive_packet(self, data: bytes, header, addr: tuple, now: float, ecn: int) -> bool:
        """Process one packet; False if it could not be opened (a Stateless Reset looks
        like that), True otherwise, processed or deliberately ignored."""
        ptype = header.packet_type
        if ptype == PacketType.VERSION_NEGOTIATION:
            self._on_version_negotiation(header, now)
            return True
        if ptype == PacketType.RETRY:
            self._on_retry(header, now)
            return True
        if ptype is None:
            return True  # unknown versions drop
        level = PACKET_LEVEL[ptype]
        keys = self.recv_keys[level]
        if header.version and header.version != self.version:
            keys = self._keys_for_other_version(header.version, level)
            if keys is None:
                return True
        packet = memoryview(data)[header.packet_start : header.packet_end]
        pn_offset = header.pn_offset - header.packet_start
        if keys is None:
            self._buffer_packet(level, bytes(packet), now, ecn)
            return True
        space = self.spaces[LEVEL_SPACE[level]]
        try:
            if level == APP:
                plain_header, pn, payload = self._open_app_packet(packet, pn_offset, space, now)
            else:
                plain_header, pn, payload = keys.unprotect(
                    packet, pn_offset, space.largest_received
                )
        except DecryptionError:
            if level == APP:
                self._count_failed_open()
            return False
        cids = (header.dcid, header.scid)
        return self._on_packet(
            ptype, space, plain_header, pn, payload, len(packet), cids, addr, now, ecn
        )

    def _receive_short(self, data: bytes, addr: tuple, now: float, ecn: int) -> bool:
        """A datagram that is one 1-RTT packet, its keys at hand: what _receive_packet
        does for it, without parsing a Header first. False if it did not open."""
        packet = memoryview(data)
        pn_offset = 1 + self.config.cid_length
        space = self.spaces[APP_SPACE]
        try:
            plain_header, pn, payload = self._open_app_packet(packet, pn_offset, space, now)
        except DecryptionError:
            self._count_failed_open()
            return False
        if (
            pn > space.largest_received
            and not plain_header[0] & 0x18  # reserved bits: the general path objects
            and self._receive_predicted(payload, pn, space, addr, now, ecn)
        ):
            return True
        return self._on_short_packet(
            data, pn_offset, space, plain_header, pn, payload, addr, now, ecn
        )

    def _on_short_packet(
        self,
        data: bytes,
        pn_offset: int,
        space: PnSpace,
        plain_header: bytes,
        pn: int,
        payload: bytes,
        addr: tuple,
        now: float,
        ecn: int,
    ) -> bool:
        """An opened 1-RTT packet that prediction did not take, to the general path. Its
        Destination CID is what lies before its packet number; it has no Source CID."""
        cids = (bytes(data[1:pn_offset]), b"")
        return self._on_packet(
            PacketType.ONE_RTT, space, plain_header, pn, payload, len(data), cids, addr, now, ecn
        )

    def _receive_predicted(
        self, payload: bytes, pn: int, space: PnSpace, addr: tuple, now: float, ecn: int
    ) -> bool:
        """Header prediction, as TCP's receive fast path has it (Linux's
        tcp_rcv_established): the usual packet of a bulk transfer is the newest so far,
        from the current path, and holds one STREAM frame that continues an open stream
        in order. Such a packet is taken here in one pass, without the frame list, the
        dispatch and the checks the general path makes for every frame and packet kind;
        False leaves any other, untouched, to the general path."""
        bulk = decode_bulk_stream(payload)
        if bulk is None or bulk[3] or addr != self.peer_addr or self.trace is not None:
            return False
        sid, offset, data, _ = bulk
        stream = self.streams.get(sid)
        recv = None if stream is None else stream.recv
        grown = None if recv is None else recv.on_next(offset, data)
        if grown is None:
            return False
        self.flow_recv.on_received(grown)
        self.readable[sid] = None
        space.on_received(pn, True, now, ecn)
        self.last_activity = now
        return True

    def _on_packet(
        self,
        ptype: PacketType,
        space: PnSpace,
        plain_header: bytes,
        pn: int,
        payload: bytes,
        size: int,
        cids: tuple[bytes, bytes],
        addr: tuple,
        now: float,
        ecn: int,
    ) -> bool:
        """An opened packet: its frames, then its number for the ACKs. ``cids`` are its
        header's Destination and Source Connection IDs (none in a short header)."""
        first = plain_header[0]
        if first & (0x0C if first & 0x80 else 0x18):
            raise QuicError(TransportError.PROTOCOL_VIOLATION, 0, "reserved header bits set")
        if space.is_duplicate(pn):
            return True
        if ptype == PacketType.INITIAL and self.is_client and not self.spaces[0].ranges:
            # The server chose its own CID: our packets carry it from now on.
            self.dest_cids.replace_initial(cids[1])
        if ptype == PacketType.HANDSHAKE and not self.is_client:
            # RFC 9001 §4.9.1: a Handshake packet proves the client's address and ends
            # the Initial space for the server.
            self.peer_address_validated = True
            self._discard_level(INITIAL)
        self._packet_dcid = cids[0]
        frames = decode_frames(payload)
        check_frames_allowed(frames, ptype)
        if self.trace is not None:
            self.trace("transport:packet_received", _packet_event(ptype, pn, size, frames))
        level = PACKET_LEVEL[ptype]
        ack_eliciting = False
        handlers = self._handlers
        for frame in frames:
            handler = handlers.get(type(frame))
            if handler is not None and handler(self, frame, level, now):
                ack_eliciting = True
            if self.state >= DRAINING:
                return True
        space.on_received(pn, ack_eliciting, now, ecn)
        self.last_activity = now
        if addr != self.peer_addr and level == APP and pn == space.largest_received:
            # RFC 9000 §9.3: only the newest packet with a non-probing frame moves a path.
            self._non_probing |= any(type(f) not in PROBING_FRAMES for f in frames)
        return True

    def _on_retry(self, header, now: float) -> None:
        """RFC 9000 §17.2.5.2: a client accepts one Retry, before any other packet from
        the server, and only with a valid integrity tag (RFC 9001 §5.8); then it sends
        its Initials again to the Retry's SCID with the token, numbers continuing."""
        if (
            not self.is_client
            or self.retry_scid is not None
            or self.spaces[PacketNumberSpace.INITIAL].ranges
            or header.version != self.version
            or header.scid == self.dest_cids.active.cid
            or not verify_retry(header, self.dest_cids.active.cid)
        ):
            log.debug("Retry ignored")
            return
        log.info("Retry accepted: Initials go again with a %d-byte token", len(header.retry_token))
        self.retry_scid = self.initial_dcid = header.scid
        self.dest_cids.replace_initial(header.scid)
        self.token = header.retry_token
        self._install_initial_keys(self.initial_dcid)
        self.recovery.discard_space(PacketNumberSpace.INITIAL)
        self.crypto[INITIAL].retransmit_unacked()

    def _keys_for_other_version(self, version: int, level: int) -> PacketKeys | None:
        """Initial keys for a long header in another version, if compatible version
        negotiation allows it: a client follows the server's first switched Initial
        (before any Handshake keys); a server reads the client's original-version
        Initials. Anything else in another version is dropped."""
        if level != INITIAL or version not in SUPPORTED_VERSIONS:
            return None
        if not self.is_client:
            return self.original_initial_keys if version == self.original_version else None
        if (
            not self.config.compatible_versions
            or self.version != self.config.version
            or self.recv_keys[HANDSHAKE] is not None
        ):
            return None
        self._switch_version(version)
        return self.recv_keys[INITIAL]

    def _open_app_packet(self, packet: memoryview, pn_offset: int, space: PnSpace, now: float):
        """Open a 1-RTT packet with the keys its key phase bit and number call for
        (RFC 9001 §6.3): current, the previous generation for late packets, or the next
        one when the peer has updated."""
        keys = self.recv_keys[APP]
        plain_header, first, truncated, pn_len = keys.remove_header_protection(packet, pn_offset)
        pn = decode_packet_number(truncated, pn_len * 8, space.largest_received)
        body = pn_offset + pn_len
        if (first >> 2) & 1 == self.recv_phase:
            payload = keys.decrypt_payload(plain_header, packet, body, pn)
            if pn < self.recv_phase_first_pn:
                self.recv_phase_first_pn = pn
            return plain_header, pn, payload
        if pn < self.recv_phase_first_pn:
            prev = self.recv_keys_prev
            if prev is None or now > self.recv_prev_until:
                self.recv_keys_prev = None  # kept for 3 PTOs only (RFC 9001 §6.5)
                raise DecryptionError("late packet from a discarded key phase")
            return plain_header, pn, prev.decrypt_payload(plain_header, packet, body, pn)
        payload = self.recv_keys_next.decrypt_payload(plain_header, packet, body, pn)
        self._on_peer_key_phase(pn, now)
        return plain_header, pn, payload

    def _on_peer_key_phase(self, pn: int, now: float) -> None:
        """The peer's packets moved to the next key phase: follow on receive, and on send
        too unless this answers our own update."""
        self.recv_keys_prev = self.recv_keys[APP]
        self.recv_keys[APP] = self.recv_keys_next
        self.recv_keys_next = self.recv_keys_next.next_generation()
        self.recv_prev_until = now + 3 * self.recovery.pto_interval()
        self.recv_phase ^= 1
        self.recv_phase_first_pn = pn
        if self.recv_phase != self.key_phase:
            self._next_send_keys()
        self._notify(uapi.QUIC_EVENT_KEY_UPDATE, bytes((self.key_phase,)))

    def _next_send_keys(self) -> None:
        self.send_keys[APP] = self.send_keys[APP].next_generation()
        self.key_phase ^= 1
        self.key_update_pn = self.spaces[APP_SPACE].next_pn
        self.packets_on_key = 0

    def can_update_keys(self) -> bool:
        """RFC 9001 §6.1: only once the handshake is confirmed, the peer is on our phase,
        and a packet sent on the current keys has been acknowledged."""
        return (
            self.state == ESTABLISHED
            and self.handshake_confirmed
            and self.key_update_pn is None
            and self.recv_phase == self.key_phase
        )

    def update_keys(self) -> bool:
        """QUIC_SOCKOPT_KEY_UPDATE: start a key update now, if one may start."""
        if not self.can_update_keys():
            return False
        self._next_send_keys()
        return True

    def _count_failed_open(self) -> None:
        """RFC 9001 §6.6: past the integrity limit, forgeries could succeed; stop."""
        self.failed_opens += 1
        if self.integrity_limit and self.failed_opens >= self.integrity_limit:
            raise QuicError(TransportError.AEAD_LIMIT_REACHED, 0, "AEAD integrity limit reached")

    def _buffer_packet(self, level: int, packet: bytes, now: float, ecn: int) -> None:
        """Keep a packet whose keys are not there yet (RFC 9001 §5.7), unless that level is
        already over."""
        if level == INITIAL or (level == HANDSHAKE and self.handshake_confirmed):
            return
        queue = self.buffered_packets.setdefault(level, [])
        if len(queue) < MAX_BUFFERED_PACKETS:
            queue.append((packet, now, ecn))

    def _replay_buffered(self, level: int) -> None:
        for packet, when, ecn in self.buffered_packets.pop(level, []):
            self.bytes_received -= len(packet)  # counted when the datagram arrived
            self.receive_datagram(packet, self.peer_addr, when, ecn)

    def _on_version_negotiation(self, header, now: float) -> None:
        """RFC 9000 §6.2: a client gives up when none of its versions is offered, and ignores
        a VN once it has processed any other packet from the server."""
        if not self.is_client or any(s.ranges for s in self.spaces):
            return
        if self.version in header.supported_versions:
            return
        self.close_info = CloseInfo(
            TransportError.VERSION_NEGOTIATION_ERROR, 0, b"no common QUIC version", True
        )
        self.state = CLOSED
        self._notify_close()

    # frame handlers: return False for frames that are not ack-eliciting

    def _on_ack(self, frame: Ack, level: int, now: float) -> bool:
        space_id = LEVEL_SPACE[level]
        space = self.spaces[space_id]
        if frame.largest >= space.next_pn:
            raise QuicError(
                TransportError.PROTOCOL_VIOLATION, FrameType.ACK, "ack of unsent packet"
            )
        exponent = self.peer_params.ack_delay_exponent if self.peer_params else 3
        ack_delay = (frame.ack_delay << exponent) / 1e6 if level == APP else 0.0
        result = self.recovery.on_ack_received(space_id, frame.ranges, ack_delay, now, frame.ecn)
        if result.ecn_failed:
            log.info("ECN validation failed: packets go out unmarked")
        space.on_acked(frame.largest)
        if level == APP and self.key_update_pn is not None and frame.largest >= self.key_update_pn:
            self.key_update_pn = None
        self.pacer.update_rate(self.recovery.cc.congestion_window, self.recovery.rtt.smoothed_rtt)
        self._records_acked(result.acked)
        for pkt in result.lost:
            for rec in pkt.frames:
                self._record_lost(rec)
        if self.plpmtud is not None and (result.lost or self.large_losses):
            self._count_large_losses(result.acked, result.lost)
        if self.trace is not None:
            self._trace_recovery(result.lost)
        return False

    def _count_large_losses(self, acked: list[SentPacket], lost: list[SentPacket]) -> None:
        """RFC 8899 §4.3 black hole detection by loss: see BLACK_HOLE_LOSSES."""
        if any(p.sent_bytes > BASE_PLPMTU for p in acked):
            self.large_losses = 0
            return
        self.large_losses += sum(
            1 for p in lost if p.sent_bytes > BASE_PLPMTU and not p.is_pmtu_probe
        )
        if self.large_losses >= BLACK_HOLE_LOSSES:
            self.large_losses = 0
            if self.plpmtud.on_black_hole():
                log.info("PLPMTUD: large packets lost, small ones acknowledged: black hole")
                self._set_max_datagram_size(BASE_PLPMTU)

    def _on_crypto(self, frame: Crypto, level: int, now: float) -> bool:
        if level == APP and not self.is_client:
            # A client has no TLS message to send after its Finished in QUIC: no
            # KeyUpdate (RFC 9001 §6) and no post-handshake authentication (§4.4).
            # Kept, they would pile up unread; TLS would call them unexpected_message.
            raise QuicError(
                TransportError.CRYPTO_ERROR + TLS_ALERT_UNEXPECTED_MESSAGE,
                FrameType.CRYPTO,
                "CRYPTO data from a client in 1-RTT",
            )
        stream = self.crypto[level if level != EARLY else APP]
        stream.on_frame(frame.offset, frame.data)
        data = stream.read()
        if data:
            if level == APP and self.handshake_complete:
                self._notify(uapi.QUIC_EVENT_NEW_SESSION_TICKET, data)
                self._collect_ticket(data)
                self._drop_unread_tickets(len(data))
            self.crypto_inbox.append((level, data))
        return True

    def _drop_unread_tickets(self, incoming: int) -> None:
        """Post-handshake messages wait for a driver that reads them for a while after
        the handshake, or never: past CRYPTO_BUFFER_LIMIT bytes the oldest go, so that
        a server sending tickets without end costs a bounded amount of memory."""
        inbox = self.crypto_inbox
        queued = incoming + sum(len(d) for lvl, d in inbox if lvl == APP)
        while queued > CRYPTO_BUFFER_LIMIT and inbox and inbox[0][0] == APP:
            queued -= len(inbox.popleft()[1])

    def _collect_ticket(self, data: bytes) -> None:
        """Keep the last whole NewSessionTicket (TLS handshake type 4, RFC 8446 §4.6.1)
        among the post-handshake messages: type, 3-byte length, body."""
        pending = self._ticket_bytes
        pending += data
        while len(pending) >= 4:
            end = 4 + int.from_bytes(pending[1:4], "big")
            if len(pending) < end:
                break
            if pending[0] == TLS_NEW_SESSION_TICKET:
                self.session_ticket = bytes(pending[:end])
            del pending[:end]

    def _on_stream(self, frame: Stream, level: int, now: float) -> bool:
        uni = stream_is_uni(frame.stream_id)
        opened = self.streams.next_peer[uni]
        stream = self.streams.get_or_create_peer(frame.stream_id, FrameType.STREAM)
        if stream is None:
            return True  # a late retransmission for a stream already closed
        if self.streams.next_peer[uni] != opened:
            self._notify_opened(uni, opened)
        if stream.recv is None:
            raise QuicError(
                TransportError.STREAM_STATE_ERROR, FrameType.STREAM, "stream is send-only"
            )
        recv = stream.recv
        before = recv.state
        new = recv.on_frame(frame.offset, frame.data, frame.fin)
        self.flow_recv.on_received(new)
        if recv.readable or recv.fin_ready:
            self.readable[frame.stream_id] = None
        if recv.state != before:  # Size Known, Data Recvd (RFC 9000 §3.2)
            self._notify_stream(frame.stream_id, recv.state, 0, recv.final_size or 0)
        return True

    def _on_reset_stream(self, frame: ResetStream, level: int, now: float) -> bool:
        stream = self.streams.get_or_create_peer(frame.stream_id, FrameType.RESET_STREAM)
        if stream is None:
            return True
        if stream.recv is None:
            raise QuicError(
                TransportError.STREAM_STATE_ERROR, FrameType.RESET_STREAM, "no receive side"
            )
        already_reset = stream.recv.reset_code is not None
        grown = stream.recv.on_reset(frame.error_code, frame.final_size)
        self.flow_recv.on_received(grown, FrameType.RESET_STREAM)
        if already_reset or stream.recv.reset_code is None:
            return True  # a repeat, or a reset after all data arrived (kept, RFC 9000 §3.2)
        # Bytes the reset dropped unread will never be consumed by the application:
        # release their connection-level credit, or the window shrinks for good. Once:
        # each repeat of the frame releasing them again would let the peer past MAX_DATA.
        self.flow_recv.on_consumed(stream.recv.discarded)
        self.readable[frame.stream_id] = None
        self._notify_stream(
            frame.stream_id,
            uapi.QUIC_STREAM_RECV_STATE_RESET_RECVD,
            frame.error_code,
            frame.final_size,
        )
        return True

    def _on_stop_sending(self, frame: StopSending, level: int, now: float) -> bool:
        stream = self.streams.get_or_create_peer(frame.stream_id, FrameType.STOP_SENDING)
        if stream is None:
            return True
        if stream.send is None:
            raise QuicError(
                TransportError.STREAM_STATE_ERROR, FrameType.STOP_SENDING, "no send side"
            )
        final_size = stream.send.on_stop_sending(frame.error_code)
        if final_size is not None:
            reset = ResetStream(frame.stream_id, frame.error_code, final_size)
            self._queue_control(reset)
            self._notify_stream(
                frame.stream_id,
                uapi.QUIC_STREAM_SEND_STATE_RESET_SENT,
                frame.error_code,
                final_size,
            )
            self.streams.maybe_forget(frame.stream_id)
        return True

    def _on_max_data(self, frame: MaxData, level: int, now: float) -> bool:
        self.flow_send.on_max_data(frame.maximum)
        return True

    def _on_max_stream_data(self, frame: MaxStreamData, level: int, now: float) -> bool:
        stream = self.streams.get_or_create_peer(frame.stream_id, FrameType.MAX_STREAM_DATA)
        if stream is None:
            return True
        if stream.send is None:
            raise QuicError(
                TransportError.STREAM_STATE_ERROR, FrameType.MAX_STREAM_DATA, "no send side"
            )
        stream.send.on_max_stream_data(frame.maximum)
        if stream.send.has_data():
            self.sending[frame.stream_id] = None
        self._notify(
            uapi.QUIC_EVENT_STREAM_MAX_DATA,
            uapi.QuicStreamMaxData(frame.stream_id, frame.maximum).pack(),
        )
        return True

    def _on_max_streams(self, frame: MaxStreams, level: int, now: float) -> bool:
        if self.streams.on_max_streams(frame.bidi, frame.maximum):
            kind = 0 if frame.bidi else uapi.QUIC_STREAM_TYPE_UNI_MASK
            kind |= 0 if self.is_client else uapi.QUIC_STREAM_TYPE_SERVER_MASK
            self._notify(
                uapi.QUIC_EVENT_STREAM_MAX_STREAM,
                ((frame.maximum << 2) | kind).to_bytes(8, "little"),
            )
        return True

    def _on_blocked(self, frame, level: int, now: float) -> bool:
        return True  # informational: our window updates follow the application's reads

    def _on_stream_data_blocked(self, frame: StreamDataBlocked, level: int, now: float) -> bool:
        """Informational too, but it names a stream, which must be one the peer may send
        on (RFC 9000 §19.13): the same checks as any frame for a receiving half."""
        self.streams.get_or_create_peer(frame.stream_id, FrameType.STREAM_DATA_BLOCKED)
        return True

    def _on_new_connection_id(self, frame: NewConnectionId, level: int, now: float) -> bool:
        self.dest_cids.on_new_connection_id(
            frame.sequence, frame.retire_prior_to, frame.cid, frame.stateless_reset_token
        )
        self._retire_dest_cids()
        return True

    def _retire_dest_cids(self) -> None:
        """RETIRE_CONNECTION_ID for each of the peer's IDs we stopped using, and the
        CONNECTION_ID event that says so."""
        if not self.dest_cids.to_retire:
            return
        while self.dest_cids.to_retire:
            self._queue_control(RetireConnectionId(self.dest_cids.to_retire.pop(0)))
        self._notify(uapi.QUIC_EVENT_CONNECTION_ID, self.connection_id_info(True).pack())

    def _on_retire_connection_id(self, frame: RetireConnectionId, level: int, now: float) -> bool:
        known = len(self.source_cids.ids)
        self.source_cids.on_retire(frame.sequence, self._packet_dcid)
        if len(self.source_cids.ids) != known:
            self._notify(uapi.QUIC_EVENT_CONNECTION_ID, self.connection_id_info(False).pack())
        self._issue_connection_ids()
        return True

    def connection_id_info(self, dest: bool) -> uapi.QuicConnectionIdInfo:
        """QUIC_SOCKOPT_CONNECTION_ID get: the number of the ID in use and the lowest
        not retired, of the peer's IDs (``dest``) or of ours. Ours in use is the one
        the peer's last packet carried."""
        if dest:
            ids, active = self.dest_cids.ids, self.dest_cids.active.sequence
        else:
            ids = self.source_cids.ids
            in_use = [e.sequence for e in ids.values() if e.cid == self._packet_dcid]
            active = in_use[0] if in_use else min(ids, default=0)
        return uapi.QuicConnectionIdInfo(int(dest), active, min(ids, default=0))

    def set_connection_id(self, dest: bool, active: int, prior_to: int) -> None:
        """QUIC_SOCKOPT_CONNECTION_ID set; 0 leaves a field as it is. Peer's IDs: use
        the later one ``active``, retire those below ``prior_to``. Ours: ask the peer to
        retire those below ``prior_to`` (NEW_CONNECTION_ID's retire_prior_to, with a new
        ID to use instead); ``active`` is the peer's choice, not ours."""
        if dest:
            if active:
                self.dest_cids.use(active)
            if prior_to:
                self.dest_cids.retire_below(prior_to)
            self._retire_dest_cids()
            return
        if active:
            raise ValueError("the peer chooses which of our connection IDs it uses")
        source = self.source_cids
        if prior_to and prior_to > source.retire_prior_to:
            if prior_to > source.next_sequence:
                raise ValueError(f"no connection ID numbered {prior_to} can be issued yet")
            source.retire_prior_to = prior_to
            self._issue_connection_id()

    def _on_path_challenge(self, frame: PathChallenge, level: int, now: float) -> bool:
        """RFC 9000 §8.2.2: answer on the path the challenge came on, never again later."""
        response = PathResponse(frame.data)
        if self._packet_addr == self.peer_addr:
            self.control.append((response, (REC_PING,)))
            self.pad_next = True
        else:
            # §9.5: the current path's connection ID must not go to another address.
            # The answer carries the one a move there switches to (_use_new_dcid): the
            # current one may be retired by then, and its route gone at the peer.
            spare = self.dest_cids.spare()
            dcid = None if spare is None else spare.cid
            probe = self._probe([response], now, dcid, room=self._probe_credit)
            if probe is not None:
                self._probe_credit -= len(probe)
                self.probes_out.append((probe, self._packet_addr, 0))
        return True

    def _credit_probe_path(self, addr: tuple, size: int) -> None:
        """RFC 9000 §8.2.1, §9.3.1: answers to PATH_CHALLENGEs from an address not yet
        validated may total three times what came from it, or a spoofed source would
        turn one datagram full of challenges into a flood at its victim. One such
        address is followed at a time; another starts from its own datagram."""
        if addr != self._probe_addr:
            self._probe_addr, self._probe_credit = addr, 0
        self._probe_credit += 3 * size

    def _on_path_response(self, frame: PathResponse, level: int, now: float) -> bool:
        """RFC 9000 §8.2.3: only the data we sent validates; anything else is ignored."""
        check = self.path_check
        if check is None or not check.answers(frame.data):
            log.debug("PATH_RESPONSE that answers no challenge of ours: ignored")
            return True
        self.path_check = None
        if check.local:
            self.migrated_local = True  # the socket switches to the new local address
        elif self.is_client and check.peer_addr != self.peer_addr:
            self.peer_addr = check.peer_addr  # the server's preferred address
            self.recovery.on_new_path()
            self._restart_plpmtud()
        self.peer_address_validated = True
        self._notify(uapi.QUIC_EVENT_CONNECTION_MIGRATION, bytes((check.local,)))
        return True

    def _probe_preferred_address(self, now: float) -> None:
        """RFC 9000 §9.6.1: a client moves to the server's preferred address, of its own
        family, once it has been validated, with the connection ID that came with it."""
        peer = self.peer_params
        preferred = peer.preferred_address if peer is not None else None
        if preferred is None or peer.disable_active_migration:
            return
        addr = preferred.ipv6 if len(self.peer_addr) == 4 else preferred.ipv4
        if addr is None or not self._use_new_dcid():
            return
        if len(self.peer_addr) == 4:
            addr = (addr[0], addr[1], 0, 0)
        self._start_path_check(addr, 0, None, now)

    def _on_peer_address_change(self, addr: tuple, size: int, now: float) -> None:
        """The peer moved (RFC 9000 §9.3): follow, but prove the address before sending
        it more than three times what came from it, and reset congestion control
        unless only the port changed."""
        old = self.peer_addr
        log.info("peer moved from %s to %s", old, addr)
        self.peer_addr = addr
        if not same_host(old, addr):
            self.recovery.on_new_path()
            self._restart_plpmtud()
        self._use_new_dcid()
        fallback = old if self.path_check is None else self.path_check.fallback
        self._start_path_check(addr, 0, fallback, now)
        # Until the challenge is answered, at most 3x what arrived from it (§9.3.1).
        self.peer_address_validated = False
        self.bytes_received, self.bytes_sent = size, 0

    def migrate(self, now: float) -> bool:
        """QUIC_SOCKOPT_CONNECTION_MIGRATION on a client: probe from the new local
        address (local path 1) with a fresh connection ID; :attr:`migrated_local`
        turns True when the server has answered and the socket may switch, or
        :attr:`migration_failed` when the path check gave up and the socket stays."""
        peer = self.peer_params
        if (
            not self.is_client
            or not self.handshake_confirmed
            or self.path_check is not None
            or (peer is not None and peer.disable_active_migration)
            or not self._use_new_dcid()
        ):
            return False
        self._start_path_check(self.peer_addr, 1, None, now)
        return True

    def on_local_migration(self) -> None:
        """The socket now sends from the new local address: a new path (RFC 9000 §9.4)."""
        self.migrated_local = False
        self.recovery.on_new_path()
        self._restart_plpmtud()

    def _use_new_dcid(self) -> bool:
        """RFC 9000 §9.5: a new path gets a connection ID never used on another."""
        if not self.dest_cids.rotate():
            return False
        self._retire_dest_cids()
        return True

    def _start_path_check(self, addr: tuple, local: int, fallback, now: float) -> None:
        timeout = validation_timeout(self.recovery.pto_interval(), self.config.initial_rtt)
        self.path_check = PathCheck(addr, now + timeout, local, fallback)
        self._send_challenge(now)

    def _send_challenge(self, now: float) -> None:
        check = self.path_check
        check.sent += 1
        check.resend_at = now + self.recovery.pto_interval()
        challenge = PathChallenge(check.data)
        if check.local == 0 and check.peer_addr == self.peer_addr:
            self.control.append((challenge, (REC_PING,)))
            self.pad_next = True
        else:
            self.probes_out.append((self._probe([challenge], now), check.peer_addr, check.local))

    def _path_check_timer(self, now: float) -> None:
        check = self.path_check
        if now >= check.deadline:
            self.path_check = None
            log.info("path to %s not validated", check.peer_addr)
            if check.fallback is not None:
                self.peer_addr = check.fallback  # RFC 9000 §9.3.2: back to the old path
                self.peer_address_validated = True
            elif check.local == 0 and check.peer_addr == self.peer_addr:
                self.close_info = CloseInfo(TransportError.NO_ERROR, 0, b"path lost", False)
                self.state = CLOSED
                self._notify_close()
            elif check.local:
                # RFC 9000 §9.2: we stay on the current path, and say so: the socket
                # holds the new address, and refuses another move, until told.
                self.migration_failed = True
        elif now >= check.resend_at and check.sent < MAX_CHALLENGES:
            self._send_challenge(now)

    def _probe(
        self, frames: list, now: float, dcid: bytes | None = None, room: int | None = None
    ) -> bytes | None:
        """A 1-RTT packet for another path, padded to 1200 bytes (RFC 9000 §8.2.1), to
        ``dcid`` if given, else to the active connection ID, its packet number in full
        (PROBE_PN_LENGTH). It is recorded as sent but neither in flight nor to be
        retransmitted: PATH_CHALLENGE and PATH_RESPONSE are never resent as such, and the
        other path has its own congestion state. With ``room`` (an unvalidated address's
        anti-amplification credit) it is padded no further than that, and None when even
        the bare frames would not fit."""
        parts = []
        for frame in frames:
            buf = bytearray()
            encode_frame(frame, buf)
            parts.append(bytes(buf))
        bare = self._estimate_size(APP, parts, PROBE_PN_LENGTH)
        if dcid is not None:
            bare -= len(self.dest_cids.active.cid) - len(dcid)  # the estimate's header
        if room is not None and bare > room:
            return None
        space = self.spaces[APP_SPACE]
        sent = SentPacket(
            packet_number=space.next_pn,
            space=APP_SPACE,
            time_sent=now,
            sent_bytes=0,
            ack_eliciting=False,
            in_flight=False,
            is_pmtu_probe=False,
            frames=[],
            ect=self.ecn_codepoint == ECT_0,  # it leaves with the same marking
        )
        pad = (MIN_INITIAL_SIZE if room is None else min(MIN_INITIAL_SIZE, room)) - bare
        if pad > 0:
            parts.append(bytes(pad))
        datagram = self._seal(APP, parts, sent, PROBE_PN_LENGTH, dcid=dcid)
        space.take_pn()
        self.recovery.on_packet_sent(sent)  # so the peer's ACK of it is one we expect
        return datagram

    def _on_new_token(self, frame: NewToken, level: int, now: float) -> bool:
        if not self.is_client:
            raise QuicError(
                TransportError.PROTOCOL_VIOLATION, FrameType.NEW_TOKEN, "server got NEW_TOKEN"
            )
        self.new_token = frame.token
        self._notify(uapi.QUIC_EVENT_NEW_TOKEN, frame.token)
        return True

    def _on_connection_close(self, frame: ConnectionClose, level: int, now: float) -> bool:
        self.close_info = CloseInfo(frame.error_code, frame.frame_type, frame.reason, True)
        self.state = DRAINING
        self.close_deadline = now + 3 * self.recovery.pto_interval()
        self._notify_close()
        return False

    def _on_handshake_done(self, frame: HandshakeDone, level: int, now: float) -> bool:
        if not self.is_client:
            raise QuicError(
                TransportError.PROTOCOL_VIOLATION,
                FrameType.HANDSHAKE_DONE,
                "client sent HANDSHAKE_DONE",
            )
        if not self.handshake_confirmed:
            self._confirm_handshake()
            self._probe_preferred_address(now)
        return True

    def _on_datagram(self, frame: Datagram, level: int, now: float) -> bool:
        """RFC 9221 §3: a DATAGRAM frame larger than we advertised, or any when we did
        not, is a PROTOCOL_VIOLATION. A reader that falls behind loses the oldest."""
        limit = self.local_params.max_datagram_frame_size
        if not limit or datagram_frame_size(len(frame.data)) > limit:
            raise QuicError(
                TransportError.PROTOCOL_VIOLATION, FrameType.DATAGRAM, "unexpected DATAGRAM"
            )
        if len(self.datagrams_in) >= MAX_QUEUED_DATAGRAMS:
            self.datagrams_in.popleft()
        self.datagrams_in.append(bytes(frame.data))
        return True

    def _on_ping(self, frame: Ping, level: int, now: float) -> bool:
        return True

    _handlers = {
        Ack: _on_ack,
        Crypto: _on_crypto,
        Stream: _on_stream,
        ResetStream: _on_reset_stream,
        StopSending: _on_stop_sending,
        MaxData: _on_max_data,
        MaxStreamData: _on_max_stream_data,
        MaxStreams: _on_max_streams,
        DataBlocked: _on_blocked,
        StreamDataBlocked: _on_stream_data_blocked,
        StreamsBlocked: _on_blocked,
        NewConnectionId: _on_new_connection_id,
        RetireConnectionId: _on_retire_connection_id,
        PathChallenge: _on_path_challenge,
        PathResponse: _on_path_response,
        NewToken: _on_new_token,
        ConnectionClose: _on_connection_close,
        HandshakeDone: _on_handshake_done,
        Datagram: _on_datagram,
        Ping: _on_ping,
    }

    # ------------------------------------------------------------------
    # acked and lost records

    def _records_acked(self, packets: list[SentPacket]) -> None:
        """The records of newly acknowledged packets, in order. A stream's consecutive
        ranges without FIN, the run an ACK of a transfer covers, are acknowledged as
        one: the stream's bookkeeping then runs once an ACK, not once a packet."""
        run = None  # [stream, start, end] of the ranges merged so far
        for pkt in packets:
            for rec in pkt.frames:
                if rec[0] == REC_STREAM and not rec[4]:
                    stream, offset, length = rec[1], rec[2], rec[3]
                    if run is not None and run[0] is stream and run[2] == offset:
                        run[2] = offset + length
                        continue
                    if run is not None:
                        self._stream_acked(run[0], run[1], run[2] - run[1], False)
                    run = [stream, offset, offset + length]
                    continue
                if run is not None:
                    self._stream_acked(run[0], run[1], run[2] - run[1], False)
                    run = None
                self._record_acked(rec)
        if run is not None:
            self._stream_acked(run[0], run[1], run[2] - run[1], False)

    def _record_acked(self, rec: tuple) -> None:
        kind = rec[0]
        if kind == REC_STREAM:
            self._stream_acked(*rec[1:])
        elif kind == REC_ACK:
            self.spaces[rec[1]].on_ack_of_ack(rec[2])
        elif kind == REC_CRYPTO:
            self.crypto[rec[1]].on_acked(rec[2], rec[3])
        elif kind == REC_PMTU_PROBE and self.plpmtud.on_probe_acked(rec[1]):
            self._set_max_datagram_size(self.plpmtud.plpmtu)
        elif kind == REC_CONTROL and type(rec[1]) is ResetStream:
            self._reset_acked(rec[1])

    def _notify_opened(self, uni: bool, first: int) -> None:
        """STREAM_UPDATE Recv for each stream the peer has just opened, the ones below
        the frame's stream included (RFC 9000 §3.2: opening one opens those)."""
        if not self.config.event_mask & (1 << uapi.QUIC_EVENT_STREAM_UPDATE):
            return
        for index in range(first, self.streams.next_peer[uni]):
            sid = make_stream_id(index, uni, self.is_client)  # the peer's: server if we are not
            self._notify_stream(sid, uapi.QUIC_STREAM_RECV_STATE_RECV, 0, 0)

    def _reset_acked(self, frame: ResetStream) -> None:
        """The peer has our RESET_STREAM: the send half is Reset Recvd (RFC 9000 §3.1),
        which STREAM_UPDATE reports. The stream object may be forgotten by now."""
        stream = self.streams.get(frame.stream_id)
        if stream is not None and stream.send is not None:
            stream.send.on_reset_acked()
        self._notify_stream(
            frame.stream_id,
            uapi.QUIC_STREAM_SEND_STATE_RESET_RECVD,
            frame.error_code,
            frame.final_size,
        )

    def _stream_acked(self, stream: QuicStream, offset: int, length: int, fin: bool) -> None:
        stream.send.on_acked(offset, length, fin)
        if stream.send.state == uapi.QUIC_STREAM_SEND_STATE_RECVD:
            self._notify_stream(
                stream.stream_id, uapi.QUIC_STREAM_SEND_STATE_RECVD, 0, stream.send.final_size or 0
            )
            self.streams.maybe_forget(stream.stream_id)

    def _record_lost(self, rec: tuple) -> None:
        kind = rec[0]
        if kind == REC_STREAM:
            _, stream, offset, length, fin = rec
            stream.send.on_lost(offset, length, fin)
            self.sending[stream.stream_id] = None
        elif kind == REC_CRYPTO:
            if self.send_keys[rec[1]] is not None:
                self.crypto[rec[1]].on_lost(rec[2], rec[3])
        elif kind == REC_CONTROL:
            self.control.append((rec[1], rec))
        elif kind == REC_HANDSHAKE_DONE:
            self.handshake_done_pending = True
        elif kind == REC_MAX_DATA:
            self.pending_max_data = True
        elif kind == REC_MAX_STREAM_DATA:
            rec[1].recv.window_update_lost()
            self.streams.note_window_change(rec[1])
        elif kind == REC_MAX_STREAMS:
            self.pending_max_streams[rec[1]] = True
        elif kind == REC_PMTU_PROBE:
            # Never resent: a probe carries nothing but its size, which the search
            # tries again or gives up on.
            self.plpmtud.on_probe_lost(rec[1])

    # ------------------------------------------------------------------
    # sending

    @property
    def ecn_codepoint(self) -> int:
        """The ECN codepoint for the datagrams :meth:`datagrams_to_send` returns: ECT(0)
        while ECN validation tests or has passed, NOT_ECT once it failed or without ECN."""
        return self.recovery.ecn.codepoint

    def datagrams_to_send(self, now: float) -> list[bytes]:
        """Datagrams for ``self.peer_addr``, as many as congestion control and the
        anti-amplification limit allow (bounded per call)."""
        if self.state == CLOSING:
            return self._close_datagrams(now)
        if self.state != ESTABLISHING and self.state != ESTABLISHED:
            return []
        out = []
        if self._key_spent():
            return out
        if self.plpmtud is not None and self.plpmtud.probe_pending:
            out.append(self._build_pmtu_probe(now))
        while len(out) < MAX_DATAGRAMS_PER_FLUSH and not self._key_spent():
            datagram = self._build_datagram(now)
            if datagram is None:
                break
            out.append(datagram)
            if self._only_streams_left():
                self._stream_run(now, out)
        return out

    def _key_spent(self) -> bool:
        """RFC 9001 §6.6: one more packet would reach the key's confidentiality limit.
        Sending then waits until a key update can start (our previous one acknowledged,
        §6.1), instead of ending the connection, as reaching the limit must."""
        limit = self.confidentiality_limit  # 0 until the 1-RTT keys are known
        return 0 < limit <= self.packets_on_key + 1 and not self.update_keys()

    def _only_streams_left(self) -> bool:
        """Whether the next packets would carry STREAM frames and nothing else: 1-RTT
        only, nothing owed but stream data (see :meth:`_stream_run`)."""
        app = self.spaces[APP_SPACE]
        return bool(
            self.sending
            and self.peer_address_validated
            and not (app.ack_eliciting_unacked and app.unreported)
            and not self._frames_owed()
        )

    def _frames_owed(self) -> bool:
        """Whether a frame other than STREAM, ACK or a credit update waits, or a packet
        may have to be other than 1-RTT: where both the bulk loop and the shortcut out
        of an empty flush must leave the packet to the general path."""
        return bool(
            self.state != ESTABLISHED
            or self.send_keys[INITIAL] is not None
            or self.send_keys[HANDSHAKE] is not None
            or self.pending_ping
            or self.pad_next
            or self.handshake_done_pending
            or self.control
            or self.datagrams_out
            or self.crypto[APP].has_data()
        )

    def _stream_run(self, now: float, out: list) -> None:
        """Packets of one STREAM frame each, built in one loop, for as long as the
        congestion window, pacing and the streams allow.

        After a flush's first packet has taken what else was due (ACKs, control frames,
        datagrams, CRYPTO), the rest of a bulk transfer's packets carry nothing but
        stream data, and nothing else can become due within the call. Built here they
        skip the general path's passes over levels and frame kinds, about a third of a
        sender's per-packet work (bench/micro_core.py). Whatever this loop does not
        handle (a stream that ends or runs out of credit, a frame that leaves room for
        another stream's) stops it, and the general path carries on. Full packets come
        a batch at a time: all that may leave while one stream sends, STREAM_TURN a
        stream's turn while several do, their frames from one call
        (:meth:`SendStream.full_frames`).
        """
        space = self.spaces[APP_SPACE]
        sending, streams, flow = self.sending, self.streams, self.flow_send
        size = self.max_datagram_size
        dcid = self.dest_cids.active.cid
        overhead = 1 + len(dcid) + AEAD_TAG_SIZE
        ect = self.ecn_codepoint == ECT_0
        # Long enough for every number the run may take: a byte more now and then.
        pn_len = packet_number_length(space.next_pn + MAX_DATAGRAMS_PER_FLUSH, space.largest_acked)
        pn_mask = (1 << (8 * pn_len)) - 1
        # The key, its phase and the header's start stand still within the run: it
        # counts its packets against the key's limit, and may update keys, at its end.
        if self._key_spent():
            return
        limit = self.confidentiality_limit
        budget = limit - self.packets_on_key - 1 if limit else MAX_DATAGRAMS_PER_FLUSH
        keys = self.send_keys[APP]
        seal = keys.seal
        starts = short_header_starts(dcid, pn_len, self.key_phase)
        grease = self.grease_bit
        # ``now`` stands still within the call: the run counts the pacing bucket and the
        # congestion window down itself, and charges them its packets once, at its end.
        tokens = self.pacer.tokens(now)
        cc_room = self.recovery.cc.available(now)
        run: list[SentPacket] = []
        sealed: list[bytearray] = []
        sid = None  # the stream of the last packet, kept while it is the only one
        while len(out) < MAX_DATAGRAMS_PER_FLUSH and len(run) < budget:
            if tokens < size:
                self._end_run(keys, sealed, run, now)
                self.pacing_deadline = self.pacer.wake_time(now)
                return
            room = min(size, cc_room) - overhead - pn_len
            if room < 32:
                break
            if sid is None:
                sid = next(iter(sending))
                stream = streams.get(sid)
                send = None if stream is None else stream.send
                if send is None:
                    break
            length, fin = room - 24, False
            frames = None
            if cc_room >= size:
                # Full packets: as many as may leave are taken at once, up to a turn's
                # worth when streams share the run.
                count = min(
                    MAX_DATAGRAMS_PER_FLUSH - len(out),
                    budget - len(run),
                    int(tokens // size),
                    cc_room // size,
                    STREAM_TURN if len(sending) > 1 else MAX_DATAGRAMS_PER_FLUSH,
                )
                if count > 1:
                    frames = send.full_frames(length, count, flow.credit)
                    offset = send.sent_end - length * len(frames)
                    flow.consume(length * len(frames))
            if not frames:
                frame = send.next_pieces(length, flow.credit)
                if frame is None:
                    break
                offset, parts, length, fin, new_bytes = frame
                flow.consume(new_bytes)
                frames = [parts]
            pn = space.next_pn
            for parts in frames:
                stream_header = encode_stream_header(sid, offset, length, fin)
                parts.insert(0, stream_header)
                header = starts[grease_bits(1) if grease else 1] + (pn & pn_mask).to_bytes(
                    pn_len, "big"
                )
                datagram = seal(header, parts, pn, len(stream_header) + length)
                sent_bytes = len(datagram)
                run.append(
                    SentPacket(
                        pn, APP_SPACE, now, sent_bytes, True, True, False,
                        [(REC_STREAM, stream, offset, length, fin)], ect,
                    )
                )  # fmt: skip
                sealed.append(datagram)
                out.append(datagram)
                tokens -= sent_bytes
                cc_room -= sent_bytes
                offset += length
                pn += 1
            space.next_pn = pn
            if room - len(stream_header) - length >= 32:
                break  # the general path fills the room, with another stream's data
            if len(sending) > 1:
                # Round-robin, a turn at a time. A stream left without data stops the
                # run when its turn comes again, and the general path retires it.
                del sending[sid]
                sending[sid] = None
                sid = None
        self._end_run(keys, sealed, run, now)

    def _end_run(
        self, keys: PacketKeys, sealed: list[bytearray], run: list[SentPacket], now: float
    ) -> None:
        """What :meth:`_seal` and :meth:`_on_sealed` do for each packet of a stream run,
        for all of them at once: header protection, the key's count, the pacing bucket,
        the congestion window. Their numbers are taken already."""
        if not run:
            return
        keys.mask_run(sealed, 1 + len(self.dest_cids.active.cid))
        self._count_protected(len(run))
        size = self.recovery.on_packets_sent(run)
        self.pacer.on_sent(size, now)
        self.last_activity = now
        self.ack_only_sent = 0
        self.bytes_sent += size
        if self.trace is not None:
            for sent in run:
                self.trace("transport:packet_sent", _sent_event(PacketType.ONE_RTT, sent))

    def _build_pmtu_probe(self, now: float) -> bytes:
        """A PING padded to the probed size (RFC 9000 §14.4), alone in its datagram.

        It goes out whatever room the congestion window has: it carries no data, the
        search keeps only one outstanding, so probes are at least an RTT apart as RFC
        8899 §3 asks of probes congestion control does not hold back, and a window too
        small for a large probe would otherwise keep an idle or slow connection at its
        current size for good. It still counts in flight while outstanding, so data
        makes room for it, and its loss is not congestion (RFC 9002 §3).
        """
        search = self.plpmtud
        size = search.probed_size
        space = self.spaces[APP_SPACE]
        pn = space.next_pn
        pn_len = packet_number_length(pn, space.largest_acked)
        padding = size - self._header_size(APP, pn_len) - AEAD_TAG_SIZE - 1
        sent = SentPacket(
            packet_number=pn,
            space=APP_SPACE,
            time_sent=now,
            sent_bytes=size,
            is_pmtu_probe=True,
            frames=[(REC_PMTU_PROBE, size)],
            ect=self.ecn_codepoint == ECT_0,  # counted in ECN validation like any
        )
        datagram = self._seal(APP, [b"\x01", bytes(padding)], sent)
        space.take_pn()
        self.recovery.on_packet_sent(sent)
        self.pacer.on_sent(size, now)
        search.on_probe_sent(now)
        self.bytes_sent += size
        if self.trace is not None:
            self.trace("transport:packet_sent", _sent_event(PacketType.ONE_RTT, sent))
        return datagram

    def _set_max_datagram_size(self, size: int) -> None:
        """Packets are built up to ``size`` from now on; congestion control and pacing
        count in it. DATAGRAM frames queued for a larger size no longer fit any packet
        and are dropped, as RFC 9221 §5 allows."""
        old = self.max_datagram_size
        self.max_datagram_size = size
        self.recovery.cc.set_max_datagram_size(size)
        self.pacer.set_max_datagram_size(size)
        if size < old and self.datagrams_out:
            room = size - self._header_size(APP, 4) - AEAD_TAG_SIZE
            kept = [d for d in self.datagrams_out if datagram_frame_size(len(d)) <= room]
            self.datagrams_out = deque(kept)
        if self.trace is not None:
            done = self.plpmtud.state == SearchState.SEARCH_COMPLETE
            self.trace("connectivity:mtu_updated", {"old": old, "new": size, "done": done})

    def _send_budget(self) -> int:
        """Bytes the next datagram may take: the path MTU, cut by the 3x anti-amplification
        limit while the peer's address is unvalidated (RFC 9000 §8.1)."""
        if self.peer_address_validated:
            return self.max_datagram_size
        return min(self.max_datagram_size, 3 * self.bytes_received - self.bytes_sent)

    def _build_datagram(self, now: float) -> bytes | bytearray | None:
        budget = self._send_budget()
        if budget < 64:
            return None
        cc_room = self.recovery.cc.available(now)
        if self.pacer.next_send_time(now) > now:
            # RFC 9002 §7.7: spread the window over the RTT; ACKs are not held back.
            cc_room = 0
            self.pacing_deadline = self.pacer.wake_time(now)
        else:
            self.pacing_deadline = None
        if self.pending_ping:
            # RFC 9002 §7.5: probe packets are not blocked by the congestion window.
            cc_room = max(cc_room, budget)
        elif not self._ack_wanted() and (cc_room <= 0 or self._nothing_queued()):
            # Only an ACK may leave without room, and none is owed: this is how each
            # flush of a window-limited sender ends, and of a receiver once its ACK has
            # left, so neither builds a packet to find nothing in it.
            return None
        built = []
        remaining = budget
        for level in (INITIAL, HANDSHAKE, APP):
            if level == APP and self.send_keys[APP] is None:
                if self.send_keys[EARLY] is None or not self.is_client:
                    continue
                if not self.spaces[0].next_pn and not built:
                    continue  # 0-RTT follows the ClientHello, never precedes it
                level = EARLY
            if self.send_keys[level] is None:
                continue
            packet = self._build_packet(level, remaining, now, cc_room)
            if packet is None:
                continue
            built.append(packet)
            remaining -= packet[1]
            if level in (INITIAL, HANDSHAKE) and packet[3].ack_eliciting and self.is_client:
                cc_room -= packet[1]
        if not built:
            return None
        if self.pending_ping and any(p[3].ack_eliciting for p in built):
            # One probe spent, whatever it carried (RFC 9002 §6.2.4): the rest of the data
            # waits for the congestion window again.
            self.pending_ping -= 1
        # An Initial can only come first.
        first = built[0]
        needs_padding = self.pad_next or (
            first[0] == INITIAL and (self.is_client or first[3].ack_eliciting)
        )
        self.pad_next = False
        datagram = b""
        last = built[-1]
        for packet in built:
            level, _, payload_parts, sent, pn_len = packet
            if needs_padding and packet is last:
                target = min(MIN_INITIAL_SIZE, budget)  # RFC 9000 §8.2.1: within the 3x limit
                pad = target - (len(datagram) + self._estimate_size(level, payload_parts))
                if pad > 0:
                    payload_parts.append(bytes(pad))
                    sent.in_flight = True
            encoded = self._seal(level, payload_parts, sent, pn_len)
            # One packet (the usual case) is the datagram: no copy of it.
            datagram = datagram + encoded if datagram else encoded
            self._on_sealed(level, sent, now)
            if level == HANDSHAKE and self.is_client:
                self._discard_level(INITIAL)  # RFC 9001 §4.9.1
        self.bytes_sent += len(datagram)
        return datagram

    def _on_sealed(self, level: int, sent: SentPacket, now: float) -> None:
        """A packet sealed for sending: its number is taken, recovery and pacing count
        it, and an ack-eliciting one restarts the idle timer (RFC 9000 §10.1)."""
        self.spaces[LEVEL_SPACE[level]].take_pn()
        self.recovery.on_packet_sent(sent)
        if sent.ack_eliciting:
            self.pacer.on_sent(sent.sent_bytes, now)
            self.last_activity = now
            self.ack_only_sent = 0
        elif level == APP:
            self.ack_only_sent += 1
        if self.trace is not None:
            self.trace("transport:packet_sent", _sent_event(LEVEL_PACKET[level], sent))

    def _header_size(self, level: int, pn_len: int) -> int:
        dcid = len(self.dest_cids.active.cid)
        if level == APP:
            return 1 + dcid + pn_len
        size = 1 + 4 + 1 + dcid + 1 + len(self.scid) + 2 + pn_len
        if level == INITIAL:
            size += varint_size(len(self.token)) + len(self.token)
        return size

    def _estimate_size(self, level: int, payload_parts: list, pn_len: int | None = None) -> int:
        """The sealed packet's size, its packet number ``pn_len`` bytes or as long as
        the space needs."""
        if pn_len is None:
            space = self.spaces[LEVEL_SPACE[level]]
            pn_len = packet_number_length(space.next_pn, space.largest_acked)
        return self._header_size(level, pn_len) + sum(map(len, payload_parts)) + AEAD_TAG_SIZE

    def _seal(
        self,
        level: int,
        payload_parts: list,
        sent: SentPacket,
        pn_len: int | None = None,
        dcid: bytes | None = None,
        length: int | None = None,
    ) -> bytes:
        """``sent``'s packet protected, as it goes on the wire; its size is recorded.
        ``length`` is the payload's, when the caller knows it."""
        pn = sent.packet_number
        if pn_len is None:
            pn_len = packet_number_length(pn, self.spaces[LEVEL_SPACE[level]].largest_acked)
        if length is None:
            length = sum(map(len, payload_parts))
        if length + pn_len < 4:
            # Header protection samples 16 bytes starting 4 after the packet number.
            payload_parts = [*payload_parts, bytes(4 - pn_len - length)]
            length = 4 - pn_len
        if dcid is None:
            dcid = self.dest_cids.active.cid
        if level == APP:
            self._count_protected()
            header = encode_short_header(
                dcid, pn, pn_len, self.key_phase, grease_fixed_bit=self.grease_bit
            )
        else:
            header = encode_long_header(
                LEVEL_PACKET[level],
                self.version,
                dcid,
                self.scid,
                self.token if level == INITIAL else b"",
                pn_len + length + AEAD_TAG_SIZE,
                pn,
                pn_len,
                grease_fixed_bit=self.grease_bit and level != INITIAL,
            )
        packet = self.send_keys[level].protect_parts(header, payload_parts, pn, length)
        sent.sent_bytes = len(packet)
        return packet

    def _count_protected(self, count: int = 1) -> None:
        """RFC 9001 §6.6: update keys well before the confidentiality limit; a key that
        reaches it cannot be used any more."""
        self.packets_on_key += count
        if self.packets_on_key >= self.confidentiality_limit * 3 // 4:
            self.update_keys()
        if self.packets_on_key >= self.confidentiality_limit and self.state < CLOSED:
            # No key may protect more: end silently, as the RFC asks.
            self.close_info = CloseInfo(
                TransportError.AEAD_LIMIT_REACHED, 0, b"AEAD confidentiality limit", False
            )
            self.state = CLOSED
            self._notify_close()

    def _build_packet(self, level: int, max_size: int, now: float, cc_room: int):
        """Frames for one packet at ``level``: (level, size, payload parts, SentPacket, packet
        number length) or None.

        ACKs go out whether or not congestion control has room; everything else only
        when it has.
        """
        space_id = LEVEL_SPACE[level]
        space = self.spaces[space_id]
        pn = space.next_pn
        pn_len = packet_number_length(pn, space.largest_acked)
        room = max_size - self._header_size(level, pn_len) - AEAD_TAG_SIZE
        if room < 32:
            return None
        parts: list[bytes] = []
        records: list[tuple] = []
        ack_part = self._ack_frame(level, space_id, now, force=False)
        if ack_part is not None:
            room -= len(ack_part)
        # Frames that elicit an ACK only within the window, headers and ACK included.
        elicit_room = min(room, cc_room - (max_size - room))
        used = self._fill_packet(level, elicit_room, parts, records, now)
        if not parts:
            if ack_part is None or not self._ack_due(level, space, now):
                return None
            if level == APP:
                used = self._ping_now_and_then(parts, records, now)
        elif ack_part is None and space.unreported:
            # Not due, but free to ride along if it fits: it spares a later ACK-only
            # packet. Only when it says something new: repeating the same ranges in
            # every packet cost both ends about a tenth of their per-packet time.
            ack_part = self._ack_frame(level, space_id, now, force=True)
            if ack_part is not None and len(ack_part) > room - used:
                ack_part = None
        if ack_part is not None:
            parts.insert(0, ack_part)
            records.append((REC_ACK, space_id, space.ranges[-1][1]))
            space.on_ack_sent()
        ack_eliciting = used > 0
        sent = SentPacket(
            packet_number=pn,
            space=space_id,
            time_sent=now,
            sent_bytes=0,
            ack_eliciting=ack_eliciting,
            in_flight=ack_eliciting,
            is_pmtu_probe=False,
            frames=records,
            ect=self.ecn_codepoint == ECT_0,
        )
        size = self._header_size(level, pn_len) + sum(map(len, parts)) + AEAD_TAG_SIZE
        return (level, size, parts, sent, pn_len)

    def _ping_now_and_then(self, parts: list, records: list, now: float) -> int:
        """RFC 9000 §13.2.4: a receiver that only acknowledges never has its ACKs
        acknowledged, and has nothing for loss detection to resend if the path breaks
        (a peer validating a NAT-rebound address of ours gets no credit to send with,
        §9.3); so about once a round trip an ACK also carries a PING. Only after an
        ACK-only packet of ours: an ACK that answers the peer's own PING with another
        PING would have two idle peers PING each other for ever."""
        if not self.ack_only_sent or now - self.last_ping < self.recovery.rtt.smoothed_rtt:
            return 0
        self.last_ping = now
        parts.append(b"\x01")
        records.append((REC_PING,))
        return 1

    def _nothing_queued(self) -> bool:
        """Whether an established connection has no frame to send but ACKs: none queued,
        none due, no stream data (what :meth:`_fill_packet` draws from)."""
        streams = self.streams
        pending = self.pending_max_streams
        return not (
            self.sending
            or self._frames_owed()
            or self.pending_max_data
            or pending[0]
            or pending[1]
            or streams.window_update_due()
            or streams.max_streams_due()
            or self.flow_recv.update_due()
        )

    def _ack_wanted(self) -> bool:
        """Whether any space holds ack-eliciting packets not yet reported, the only case
        in which :meth:`_build_packet` sends an ACK without congestion window room."""
        return any(space.ack_eliciting_unacked and space.unreported for space in self.spaces)

    def _ack_due(self, level: int, space: PnSpace, now: float) -> bool:
        delay = self.local_params.max_ack_delay / 1000 if level == APP else 0.0
        deadline = space.ack_deadline(delay)
        return deadline is not None and deadline <= now

    def _ack_frame(self, level: int, space_id: int, now: float, force: bool) -> bytes | None:
        space = self.spaces[space_id]
        if not space.unreported or (not space.ack_eliciting_unacked and not force):
            return None
        delay = 0
        if level == APP:
            delay = (
                int((now - space.largest_received_time) * 1e6)
                >> self.local_params.ack_delay_exponent
            )
        return encode_ack(space.ack_ranges(), max(delay, 0), space.ecn_counts)

    def _fill_packet(self, level: int, room: int, parts: list, records: list, now: float) -> int:
        """Ack-eliciting frames for ``room`` bytes; returns the bytes used."""
        start = room
        if room <= 0:
            return 0
        stream_level = APP if level == EARLY else level
        if level != EARLY:
            room = self._fill_crypto(stream_level, room, parts, records)
        if level in (APP, EARLY):
            if level == APP:
                room = self._fill_control(room, parts, records, now)
            room = self._fill_datagrams(room, parts, records)
            room = self._fill_streams(room, parts, records)
        if self.pending_ping and room > 0 and room == start:
            parts.append(b"\x01")
            records.append((REC_PING,))
            room -= 1
        return start - room

    def _fill_crypto(self, level: int, room: int, parts: list, records: list) -> int:
        stream = self.crypto[level]
        if not stream.has_data():
            return room  # the usual case once established: spare the frame search
        while room > 16:
            chunk = stream.next_frame(room - 16)
            if chunk is None:
                break
            offset, data = chunk
            header = encode_crypto_header(offset, len(data))
            parts.append(header)
            parts.append(data)
            records.append((REC_CRYPTO, level, offset, len(data)))
            room -= len(header) + len(data)
        return room

    def _fill_control(self, room: int, parts: list, records: list, now: float) -> int:
        if self.handshake_done_pending and room > 1:
            parts.append(b"\x1e")
            records.append((REC_HANDSHAKE_DONE,))
            self.handshake_done_pending = False
            room -= 1
        rtt = self.recovery.rtt.smoothed_rtt
        stream_updates = self.streams.window_updates(now, rtt)
        for stream in stream_updates:
            self.flow_recv.follow_stream_window(stream.recv.window)
        update = self.flow_recv.max_data_update(now, rtt)
        if update is not None or self.pending_max_data:
            frame = MaxData(self.flow_recv.limit)
            room = self._append_frame(frame, (REC_MAX_DATA,), room, parts, records)
            self.pending_max_data = False
        for uni in (False, True):
            limit = self.streams.max_streams_update(uni)
            if limit is None and self.pending_max_streams[uni]:
                limit = self.streams.local_max_streams(uni)
            if limit is not None:
                frame = MaxStreams(not uni, limit)
                room = self._append_frame(frame, (REC_MAX_STREAMS, uni), room, parts, records)
                self.pending_max_streams[uni] = False
        for stream in stream_updates:
            frame = MaxStreamData(stream.stream_id, stream.recv.max_stream_data)
            room = self._append_frame(frame, (REC_MAX_STREAM_DATA, stream), room, parts, records)
        control = self.control
        while control and room > 0:
            frame, rec = control[0]
            buf = bytearray()
            encode_frame(frame, buf)
            if len(buf) > room:
                break
            control.popleft()
            parts.append(bytes(buf))
            records.append(rec)
            room -= len(buf)
        return room

    def _append_frame(self, frame, rec: tuple, room: int, parts: list, records: list) -> int:
        buf = bytearray()
        encode_frame(frame, buf)
        parts.append(bytes(buf))
        records.append(rec)
        return room - len(buf)

    def _fill_datagrams(self, room: int, parts: list, records: list) -> int:
        out = self.datagrams_out
        while out and room >= datagram_frame_size(len(out[0])):
            data = out.popleft()
            buf = bytearray()
            encode_frame(Datagram(data, True), buf)
            parts.append(bytes(buf))
            records.append((REC_DATAGRAM,))
            room -= len(buf)
        return room

    def _fill_streams(self, room: int, parts: list, records: list) -> int:
        """STREAM frames, round-robin over streams with something to send."""
        sending = self.sending
        for sid in list(sending):
            if room < 32:
                break
            stream = self.streams.get(sid)
            if stream is None or stream.send is None:
                del sending[sid]
                continue
            while room >= 32:
                header_room = room - 24  # stream header: type + id + offset + length
                frame = stream.send.next_pieces(header_room, self.flow_send.credit)
                if frame is None:
                    break
                offset, pieces, length, fin, new_bytes = frame
                self.flow_send.consume(new_bytes)
                header = encode_stream_header(sid, offset, length, fin)
                parts.append(header)
                parts += pieces
                records.append((REC_STREAM, stream, offset, length, fin))
                room -= len(header) + length
            if not stream.send.has_data():
                del sending[sid]
                if stream.send.blocked():
                    self._report_stream_data_blocked(stream)
            else:
                # Round-robin: the next packet starts with the next stream.
                del sending[sid]
                sending[sid] = None
        if sending and self.flow_send.blocked():
            self._report_data_blocked()
        return room

    def _queue_control(self, frame) -> None:
        """A control frame that goes out again if its packet is lost."""
        self.control.append((frame, (REC_CONTROL, frame)))

    def _report_data_blocked(self) -> None:
        """DATA_BLOCKED tells the peer its MAX_DATA, not our buffer, holds data back."""
        limit = self.flow_send.limit
        if self.data_blocked_at != limit:
            self.data_blocked_at = limit
            self._queue_control(DataBlocked(limit))

    def _report_stream_data_blocked(self, stream) -> None:
        limit = stream.send.max_stream_data
        if stream.send.blocked_reported != limit:
            stream.send.blocked_reported = limit
            self._queue_control(StreamDataBlocked(stream.stream_id, limit))

    def report_streams_blocked(self, uni: bool) -> bool:
        """The application wants a stream the peer's MAX_STREAMS does not allow yet.
        True when a STREAMS_BLOCKED was queued: this limit had not been reported."""
        limit = self.streams.peer_max[uni]
        if self.streams_blocked_at[uni] == limit:
            return False
        self.streams_blocked_at[uni] = limit
        self._queue_control(StreamsBlocked(not uni, limit))
        return True

    # ------------------------------------------------------------------
    # timers

    def idle_deadline(self) -> float:
        return self.last_activity + self._idle_timeout()

    def _idle_timeout(self) -> float:
        """RFC 9000 §10.1: the smaller non-zero max_idle_timeout of both sides, never below
        three PTOs; a large value when neither side sets one."""
        ours = self.local_params.max_idle_timeout
        theirs = self.peer_params.max_idle_timeout if self.peer_params is not None else 0
        timeout = min(ours, theirs) if ours and theirs else ours or theirs
        return max(timeout / 1000 if timeout else 3600.0, 3 * self.recovery.pto_interval())

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must run next."""
        if self.state == CLOSED:
            return None
        if self.state >= CLOSING:
            return self.close_deadline
        deadlines = [self.idle_deadline()]
        keepalive = self._keepalive_deadline()
        if keepalive is not None:
            deadlines.append(keepalive)
        if self.pacing_deadline is not None:
            deadlines.append(self.pacing_deadline)
        if self.path_check is not None:
            deadlines.append(min(self.path_check.resend_at, self.path_check.deadline))
        loss = self.recovery.loss_detection_deadline()
        if loss is not None:
            deadlines.append(loss)
        if self.plpmtud is not None and self.plpmtud.deadline is not None:
            deadlines.append(self.plpmtud.deadline)
        for level in (INITIAL, HANDSHAKE, APP):
            if self.send_keys[level] is None:
                continue
            space = self.spaces[LEVEL_SPACE[level]]
            delay = self.local_params.max_ack_delay / 1000 if level == APP else 0.0
            ack = space.ack_deadline(delay)
            if ack is not None:
                deadlines.append(ack)
        return min(deadlines)

    def handle_timer(self, now: float) -> None:
        """Whatever was due at ``now``: close/drain end, idle timeout, loss detection, PTO.
        Due ACKs simply go out with the next :meth:`datagrams_to_send`."""
        if self.state >= CLOSING:
            if self.close_deadline is not None and now >= self.close_deadline:
                self.state = CLOSED
            return
        if self.pacing_deadline is not None and now >= self.pacing_deadline:
            self.pacing_deadline = None  # the flush that follows sends what was held
        if self.path_check is not None:
            self._path_check_timer(now)
        if now >= self.idle_deadline():
            self.close_info = CloseInfo(TransportError.NO_ERROR, 0, b"idle timeout", False)
            self.state = CLOSED
            self._notify_close()
            return
        keepalive = self._keepalive_deadline()
        if keepalive is not None and now >= keepalive:
            self.pending_ping = max(self.pending_ping, 1)
        loss = self.recovery.loss_detection_deadline()
        if loss is not None and now >= loss:
            action = self.recovery.on_loss_detection_timeout(now)
            for pkt in action.lost:
                for rec in pkt.frames:
                    self._record_lost(rec)
            if self.trace is not None:
                self._trace_recovery(action.lost)
            if action.probe_space is not None:
                self._send_probe(action.probe_space, action.probe_count)
                if self.plpmtud is not None:
                    self._check_black_hole()
        if self.plpmtud is not None:
            self.plpmtud.on_timer(now)

    def _keepalive_deadline(self) -> float | None:
        """When a keepalive PING is due; None when keepalive is off, the handshake not
        done, or a PING is already waiting to leave."""
        interval = self.config.keepalive_interval
        if not interval or not self.handshake_complete or self.pending_ping:
            return None
        return self.last_activity + interval

    def _check_black_hole(self) -> None:
        """RFC 8899 §4.3: after BLACK_HOLE_PTO_COUNT PTOs in a row, fall back to
        BASE_PLPMTU; PTO probes and retransmissions then go out small."""
        if self.recovery.pto_count >= BLACK_HOLE_PTO_COUNT and self.plpmtud.on_black_hole():
            log.info("PLPMTUD: black hole at %d bytes", self.max_datagram_size)
            self._set_max_datagram_size(BASE_PLPMTU)

    def _send_probe(self, space_id: int, count: int) -> None:
        """A PTO fired (RFC 9002 §6.2.4): resend unacknowledged handshake data, or make sure
        an ack-eliciting packet goes out."""
        for level in (INITIAL, HANDSHAKE, APP):
            if LEVEL_SPACE[level] == space_id and self.send_keys[level] is not None:
                self.crypto[level].retransmit_unacked()
        self.pending_ping = max(self.pending_ping, count)

    # ------------------------------------------------------------------
    # closing

    def close(
        self, error_code: int, reason: bytes = b"", frame_type: int | None = None, *, now: float
    ) -> None:
        """Start an immediate close: CONNECTION_CLOSE 0x1d for an application close
        (``frame_type`` None), 0x1c for a transport error."""
        if self.state >= CLOSING:
            return
        self.close_info = CloseInfo(error_code, frame_type, reason, False)
        if (
            not self.handshake_complete
            and self.send_keys[INITIAL] is None
            and self.send_keys[HANDSHAKE] is None
            and self.send_keys[APP] is None
        ):
            self.state = CLOSED
        else:
            self.state = CLOSING
            self.close_pending = True
            self.close_deadline = now + 3 * self.recovery.pto_interval()
        self._notify_close()

    def _close_on_error(self, exc: QuicError, now: float) -> None:
        log.info("closing connection: %s", exc)
        self.close(exc.code, exc.reason.encode()[:64], exc.frame_type or 0, now=now)

    def _close_datagrams(self, now: float) -> list[bytes]:
        if not self.close_pending:
            return []
        self.close_pending = False
        info = self.close_info
        datagram = bytearray()
        levels = [lvl for lvl in (INITIAL, HANDSHAKE, APP) if self.send_keys[lvl] is not None]
        for level in levels:
            if info.frame_type is None and level != APP:
                # RFC 9000 §10.2.3: before 1-RTT, an application close must not leak
                # its code or reason.
                frame = ConnectionClose(TransportError.APPLICATION_ERROR, 0, b"")
            else:
                frame = ConnectionClose(info.error_code, info.frame_type, info.reason)
            buf = bytearray()
            encode_frame(frame, buf)
            parts = [bytes(buf)]
            if level == INITIAL and self.is_client:
                parts.append(bytes(max(0, MIN_INITIAL_SIZE - 64 - len(buf) - len(datagram))))
            space = self.spaces[LEVEL_SPACE[level]]
            sent = SentPacket(space.next_pn, LEVEL_SPACE[level], now, 0, False, False, False, [])
            space.take_pn()
            datagram += self._seal(level, parts, sent)
        return [bytes(datagram)] if datagram else []

    # ------------------------------------------------------------------
    # notifications (lxin/quic events, off unless enabled)

    def _notify(self, event: int, payload: bytes) -> None:
        if self.config.event_mask & (1 << event):
            self.notifications.append((event, payload))

    def _notify_stream(self, sid: int, state: int, errcode: int, final_size: int) -> None:
        """A STREAM_UPDATE event; its errcode field is a u32 holding the low bits of the
        peer's 62-bit code (see :meth:`CloseInfo.record`)."""
        if self.config.event_mask & (1 << uapi.QUIC_EVENT_STREAM_UPDATE):
            update = uapi.QuicStreamUpdate(sid, state, errcode & 0xFFFFFFFF, final_size)
            self._notify(uapi.QUIC_EVENT_STREAM_UPDATE, update.pack())

    def _trace_recovery(self, lost) -> None:
        for pkt in lost:
            self.trace("recovery:packet_lost", {"header": {"packet_number": pkt.packet_number}})
        rtt = self.recovery.rtt
        metrics = {
            "congestion_window": self.recovery.cc.congestion_window,
            "bytes_in_flight": self.recovery.bytes_in_flight,
        }
        if rtt.has_sample:
            metrics.update(
                smoothed_rtt=round(rtt.smoothed_rtt * 1000, 3),
                latest_rtt=round(rtt.latest_rtt * 1000, 3),
                min_rtt=round(rtt.min_rtt * 1000, 3),
            )
        self.trace("recovery:metrics_updated", metrics)

    def _notify_close(self) -> None:
        info = self.close_info
        if self.trace is not None:
            self.trace(
                "connectivity:connection_closed",
                {
                    "error_code": info.error_code,
                    "reason": info.reason.decode("utf-8", "replace"),
                    "trigger": "remote" if info.remote else "local",
                },
            )
        self._notify(uapi.QUIC_EVENT_CONNECTION_CLOSE, info.record().pack())

    # ------------------------------------------------------------------
    # the application's side: streams and datagrams

    def open_stream(self, uni: bool) -> int:
        """The next locally-initiated stream ID; raises StreamLimitError at the peer's limit."""
        try:
            return self.streams.open_local(uni).stream_id
        except StreamLimitError:
            self.report_streams_blocked(uni)
            raise

    def send_stream(self, sid: int, data: bytes, fin: bool, new: bool) -> int:
        """Queue ``data`` on stream ``sid``; returns the bytes taken. ``new`` is
        MSG_QUIC_STREAM_NEW: the stream may be opened by this send."""
        stream = self.streams.get(sid)
        if stream is None:
            if not new:
                raise (
                    StreamClosedError(sid)
                    if self.streams.was_closed(sid)
                    else ValueError("stream not open")
                )
            stream = self.streams.open_specific(sid)
        if stream.send is None:
            raise ValueError("stream has no send side")
        stream.send.write(data, fin)
        self.sending[sid] = None
        return len(data)

    def send_buffer(self, send: SendStream) -> int:
        """The stream's send buffer: its own size, or twice the congestion window within
        MAX_SEND_BUFFER, as Linux TCP sizes its send buffers. A buffer smaller than what
        the path can have in flight leaves the sender idle for part of each round trip."""
        grown = min(2 * self.recovery.cc.congestion_window, MAX_SEND_BUFFER)
        return grown if grown > send.buffer_limit else send.buffer_limit

    def stream_send_room(self, sid: int) -> int:
        """Bytes the stream's send buffer takes before a writer must wait."""
        return self.stream_send_space(sid)[0]

    def stream_send_space(self, sid: int) -> tuple[int, int]:
        """:meth:`stream_send_room`, and the free buffer bytes a blocked writer waits
        for: a quarter of the stream's send buffer, so it wakes once per many ACKs, not
        on each (the kernel's sk_stream_wspace rule is alike). Asked together: a
        blocked writer's wake-up condition is tested on each flush."""
        stream = self.streams.get(sid)
        send = None if stream is None else stream.send
        if send is None:
            return 0, 1
        limit = self.send_buffer(send)
        return send.room(limit), max(1, limit // 4)

    def check_writable(self, sid: int) -> None:
        """Raise unless stream ``sid`` takes more data, so that a writer fails at once
        instead of waiting for room that never comes (lxin/quic §1.7): StreamClosedError
        when it is gone, StreamStateError when it has no send side (the peer's uni
        stream) or is finished or reset (by us, or after the peer's STOP_SENDING)."""
        stream = self.streams.get(sid)
        if stream is None:
            raise StreamClosedError(sid)
        if stream.send is None:
            raise StreamStateError("stream has no send side")
        stream.send.check_writable()

    def unacked_stream_data(self) -> bool:
        """Whether any stream still has data or a FIN the peer has not acknowledged."""
        for stream in self.streams.streams.values():
            send = stream.send
            if send is not None and send.state in (
                uapi.QUIC_STREAM_SEND_STATE_SEND,
                uapi.QUIC_STREAM_SEND_STATE_SENT,
            ):
                return True
        return False

    def stream_blocked(self, sid: int) -> bool:
        """True when the peer's flow control, not our buffer, holds the stream back."""
        stream = self.streams.get(sid)
        return stream is not None and stream.send is not None and stream.send.blocked()

    def read_stream(self, max_bytes: int) -> tuple[int, bytes, bool] | None:
        """Data of one readable stream, as one recvmsg returns it (lxin/quic §1.7)."""
        readable = self.readable
        while readable:
            sid = next(iter(readable))
            stream = self.streams.get(sid)
            if stream is None or stream.recv is None:
                del readable[sid]
                continue
            data, fin = stream.recv.read(max_bytes)
            if not stream.recv.readable and not stream.recv.fin_ready:
                del readable[sid]
            if not data and not fin:
                continue
            self.flow_recv.on_consumed(len(data))
            self.streams.note_window_change(stream)
            if fin:
                self.streams.maybe_forget(sid)
            self.credit_due = fin or self.flow_recv.update_due() or stream.recv.update_due()
            return sid, data, fin
        return None

    def reset_stream(self, sid: int, error_code: int) -> None:
        stream = self.streams.get(sid)
        if stream is None or stream.send is None:
            raise ValueError("no such stream to reset")
        final_size = stream.send.reset(error_code)
        frame = ResetStream(sid, error_code, final_size)
        self._queue_control(frame)
        self.sending.pop(sid, None)
        self.streams.maybe_forget(sid)

    def stop_sending(self, sid: int, error_code: int) -> bool:
        """Ask the peer to stop sending on ``sid``; False, and nothing sent, when that
        was asked already (lxin/quic: EAGAIN while one is in flight)."""
        stream = self.streams.get(sid)
        if stream is None or stream.recv is None:
            raise ValueError("no such stream")
        if stream.recv.stop_code is not None:
            return False
        stream.recv.stop_sending(error_code)
        frame = StopSending(sid, error_code)
        self._queue_control(frame)
        return True

    def send_datagram(self, data: bytes) -> bool:
        """RFC 9221: queued once, sent when congestion control allows, never
        retransmitted. False when the queue is full (the caller waits or drops)."""
        limit = self.peer_params.max_datagram_frame_size if self.peer_params else None
        if not limit:
            raise ValueError("peer does not accept DATAGRAM frames")
        size = datagram_frame_size(len(data))
        room = self.max_datagram_size - self._header_size(APP, 4) - AEAD_TAG_SIZE
        if size > min(limit, room):
            raise OverflowError(f"a {len(data)}-byte datagram does not fit in one packet")
        if len(self.datagrams_out) >= MAX_QUEUED_DATAGRAMS:
            return False
        self.datagrams_out.append(bytes(data))
        return True


_QLOG_PACKET_TYPE = {
    PacketType.INITIAL: "initial",
    PacketType.HANDSHAKE: "handshake",
    PacketType.ZERO_RTT: "0RTT",
    PacketType.ONE_RTT: "1RTT",
}
_QLOG_RECORD = {
    REC_ACK: "ack",
    REC_CRYPTO: "crypto",
    REC_STREAM: "stream",
    REC_HANDSHAKE_DONE: "handshake_done",
    REC_MAX_DATA: "max_data",
    REC_MAX_STREAM_DATA: "max_stream_data",
    REC_MAX_STREAMS: "max_streams",
    REC_DATAGRAM: "datagram",
    REC_PING: "ping",
    REC_PMTU_PROBE: "ping",
}


def _qlog_name(cls_name: str) -> str:
    """``MaxStreamData`` -> ``max_stream_data``, the qlog frame_type spelling."""
    return "".join("_" + c.lower() if c.isupper() else c for c in cls_name).lstrip("_")


def _packet_event(ptype: PacketType, pn: int, size: int, frames: list) -> dict:
    summary = []
    for frame in frames:
        entry = {"frame_type": _qlog_name(type(frame).__name__)}
        if isinstance(frame, Stream):
            entry.update(
                stream_id=frame.stream_id,
                offset=frame.offset,
                length=len(frame.data),
                fin=frame.fin,
            )
        elif isinstance(frame, Ack):
            entry["acked_ranges"] = [[low, high] for low, high in frame.ranges]
            if frame.ecn is not None:
                entry.update(ect0=frame.ecn[0], ect1=frame.ecn[1], ce=frame.ecn[2])
        summary.append(entry)
    return {
        "header": {"packet_type": _QLOG_PACKET_TYPE[ptype], "packet_number": pn},
        "raw": {"length": size},
        "frames": summary,
    }


def _sent_event(ptype: PacketType, sent: SentPacket) -> dict:
    frames = []
    for rec in sent.frames:
        if rec[0] == REC_CONTROL:
            frames.append({"frame_type": _qlog_name(type(rec[1]).__name__)})
        elif rec[0] == REC_STREAM:
            _, stream, offset, length, fin = rec
            frames.append(
                {
                    "frame_type": "stream",
                    "stream_id": stream.stream_id,
                    "offset": offset,
                    "length": length,
                    "fin": fin,
                }
            )
        else:
            frames.append({"frame_type": _QLOG_RECORD[rec[0]]})
    return {
        "header": {"packet_type": _QLOG_PACKET_TYPE[ptype], "packet_number": sent.packet_number},
        "raw": {"length": sent.sent_bytes},
        "frames": frames,
    }


def datagram_frame_size(length: int) -> int:
    """Bytes of a DATAGRAM frame with a Length field (type 0x31) carrying ``length``."""
    return 1 + varint_size(length) + length


class StreamClosedError(Exception):
    """Sending on a stream that existed and is gone: ENOSTR at the socket."""
