"""The userspace socket API: lxin/quic's ``IPPROTO_QUIC`` sockets, in Python.

A :class:`QuicSocket` is one QUIC connection (or a listener). Its calls mirror the BSD
socket calls a program makes on a kernel QUIC socket: ``sendmsg``/``recvmsg`` carry
``(SOL_QUIC, QUIC_STREAM_INFO | QUIC_HANDSHAKE_INFO, bytes)`` ancillary records exactly
as Python's :meth:`socket.socket.sendmsg` does, ``setsockopt``/``getsockopt`` take and
return the packed ``quic.uapi`` records, and errors are :class:`OSError` with the errno a
socket user expects.

Work happens in process context, as in the kernel: ``sendmsg`` packs, encrypts and
transmits in the caller's thread under the connection's lock; the tunnel's I/O thread
receives, acknowledges and fires timers. Blocking calls wait on a condition, bounded by
the socket timeout; a non-blocking socket raises ``EAGAIN``, and :meth:`QuicSocket.fileno`
is readable whenever ``recvmsg``/``accept`` would not block, so ``selectors`` and
``asyncio`` can wait on it.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import socket as _socket
import threading
import time
from _thread import allocate_lock
from collections import deque
from collections.abc import Iterable
from functools import partial

from . import netwatch, uapi
from .alpn import split_alpns
from .connection import (
    CLOSED,
    CLOSING,
    DRAINING,
    ESTABLISHED,
    ESTABLISHING,
    MAX_QUEUED_DATAGRAMS,
    Connection,
    ConnectionConfig,
    StreamClosedError,
)
from .crypto import PacketKeys
from .ecn import ECT_0
from .errors import QuicError, TransportError
from .packet import encode_retry, parse_header
from .path import MAX_UDP_PAYLOAD_IPV6
from .qlog import QlogWriter
from .stream import StreamGoneError, StreamLimitError, StreamStateError
from .token import TokenError, TokenType, ValidatedToken
from .transport_params import (
    TransportParameters,
    default_local_parameters,
    params_from_uapi,
    params_to_uapi,
)
from .tunnel import Tunnel, get_tunnel, put_tunnel
from .udp_mtu import route_max_udp_payload

log = logging.getLogger(__name__)

SOCK_CLOSED, SOCK_LISTENING, SOCK_ESTABLISHING, SOCK_ESTABLISHED = range(4)
CID_LENGTH = 8
DEFAULT_BACKLOG = 128
# Longest a blocking close() waits for sent stream data to be acknowledged.
LINGER = 10.0
# Longest the handshake holds back what a received flight calls for (ACKs, mostly)
# so that it leaves with the handshake's answer to that flight: see _corked.
HANDSHAKE_CORK = 0.010
# lxin/quic's smallest plpmtud_probe_interval (µs): probes are not meant to be frequent.
QUIC_MIN_PROBE_TIMEOUT = 5_000_000
# lxin/quic's smallest keepalive_probe_interval (µs).
MIN_KEEPALIVE_INTERVAL = 1_500_000

AncData = list[tuple[int, int, bytes]]


def _err(code: int, message: str | None = None) -> OSError:
    return OSError(code, message or os.strerror(code))


class QuicSocket:
    """``socket(AF_INET/AF_INET6, SOCK_STREAM/SOCK_DGRAM, IPPROTO_QUIC)``."""

    def __init__(
        self,
        family: int = _socket.AF_INET,
        type: int = _socket.SOCK_STREAM,
        proto: int = uapi.IPPROTO_QUIC,
    ) -> None:
        if family not in (_socket.AF_INET, _socket.AF_INET6):
            raise _err(errno.EAFNOSUPPORT)
        if type not in (_socket.SOCK_STREAM, _socket.SOCK_DGRAM) or proto != uapi.IPPROTO_QUIC:
            raise _err(errno.EPROTONOSUPPORT)
        self.family = family
        self.type = type
        self.proto = proto
        self._lock = threading.RLock()
        self._sleepers: list = []  # a lock per thread blocked in _wait, held until woken
        self._timeout: float | None = None
        self.state = SOCK_CLOSED
        self.local_params = default_local_parameters()
        self.config = uapi.QuicConfig(
            version=uapi.QUIC_VERSION_V1,
            initial_smoothed_rtt=uapi.QUIC_DEF_INITIAL_SMOOTHED_RTT,
        )
        self.alpn = b""
        self.compatible_versions = True  # QUIC_SOCKOPT_TRANSPORT_PARAM disable_compatible_version
        self.token = b""
        self.session_ticket = b""
        self.remote_params: uapi.QuicTransportParam | None = None
        self.close_record = uapi.QuicConnectionClose()
        self.event_mask = 0
        self.tunnel: Tunnel | None = None
        self.conn: Connection | None = None
        self.active_stream = -1
        self._peer_bidi_seen = -1  # the newest bidi stream of the peer's that was read
        self._accept_queue: deque[QuicSocket] = deque()
        self._backlog = 0
        # Listener: connections made here whose handshake has not ended. Child: that
        # set, until it leaves it (see _handshakes_in_progress).
        self._handshaking: set[QuicSocket] = set()
        self._in_backlog: set[QuicSocket] | None = None
        self._unreachable = 0  # the errno of an ICMP error that ended the connect
        self._extra_routes: list[bytes] = []
        self._waiters = 0  # threads blocked in _wait
        self._checks: list = []  # the pure predicates some of them wait on
        self._new_tunnel: Tunnel | None = None  # a local address being migrated to
        self._old_tunnels: list[Tunnel] = []
        # Server: the preferred address's UDP endpoint, and whether the client uses it.
        self._preferred_tunnel: Tunnel | None = None
        self._preferred_path: _PreferredPath | None = None
        self._via_preferred = False
        self._reset_routes: set[bytes] = set()
        # The readiness pipe behind fileno(), made by its first call: until then no
        # selector can watch it, and keeping it in step costs two system calls per
        # wake-up of a blocking reader.
        self._ready_r = self._ready_w = -1
        self._ready = False
        self._released = False
        # Handshake output held back until this time (None: not held); see _corked.
        self._cork_until: float | None = None
        self._hs_waiting = False  # the handshake driver is blocked in recv_handshake
        # qlog: a directory for one .sqlog per connection (QLOGDIR, as the interop
        # runner sets it, unless the application sets this attribute).
        self.qlog_dir: str | None = os.environ.get("QLOGDIR") or None
        self._qlog = None

    # ------------------------------------------------------------------
    # plain socket housekeeping

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout

    def gettimeout(self) -> float | None:
        return self._timeout

    def setblocking(self, flag: bool) -> None:
        self._timeout = None if flag else 0.0

    def fileno(self) -> int:
        """Readable when recvmsg/accept would not block (for selectors and asyncio); -1
        once closed."""
        with self._lock:
            if self._ready_r < 0 and not self._released:
                self._ready_r, self._ready_w = os.pipe()
                os.set_blocking(self._ready_r, False)
                os.set_blocking(self._ready_w, False)
                self._update_ready()
            return self._ready_r

    def getsockname(self) -> tuple:
        if self.tunnel is None:
            return ("0.0.0.0", 0) if self.family == _socket.AF_INET else ("::", 0, 0, 0)
        return self.tunnel.local_addr

    def getpeername(self) -> tuple:
        if self.conn is None:
            raise _err(errno.ENOTCONN)
        return self.conn.peer_addr

    def __enter__(self) -> QuicSocket:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _wait(self, ready, deadline: float | None, flags: int = 0, pure: bool = False) -> None:
        """Block until ``ready()`` holds, under the lock; EAGAIN when non-blocking.

        A ``pure`` predicate (no side effects; raising OSError counts as ready) is
        checked by :meth:`flush` before it wakes anyone, so a thread is not woken
        to find it still has to wait: each wake-up costs a GIL hand-over.
        """
        while not ready():
            if flags & uapi.MSG_DONTWAIT or self._timeout == 0.0:
                raise _err(errno.EAGAIN)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(errno.ETIMEDOUT, "timed out")
            self._waiters += 1
            if pure:
                self._checks.append(ready)
            try:
                self._sleep(remaining)
            finally:
                self._waiters -= 1
                if pure:
                    self._checks.remove(ready)

    def _sleep(self, timeout: float | None) -> None:
        """What Condition.wait does on the socket lock, with a lock of the sleeper's own
        to be woken by, so that :meth:`flush` can wake it after letting go of the socket
        lock: woken under it, the sleeper ran only to block on that lock, and the I/O
        thread lost its CPU twice per wake-up instead of once."""
        waiter = allocate_lock()
        waiter.acquire()
        self._sleepers.append(waiter)
        saved = self._lock._release_save()
        try:
            waiter.acquire(True, -1 if timeout is None else timeout)
        finally:
            self._lock._acquire_restore(saved)
            if waiter in self._sleepers:  # timed out: no waker took it
                self._sleepers.remove(waiter)

    def _take_sleepers(self) -> list:
        sleepers, self._sleepers = self._sleepers, []
        return sleepers

    def _wake_all(self) -> None:
        for waiter in self._take_sleepers():
            waiter.release()

    def _wake_due(self) -> bool:
        """Whether a blocked thread could go on now (see :meth:`_wait`)."""
        if self._waiters > len(self._checks):
            return True
        for ready in self._checks:
            try:
                if ready():
                    return True
            except OSError:
                return True
        return False

    def _deadline(self) -> float | None:
        return None if self._timeout is None else time.monotonic() + self._timeout

    # ------------------------------------------------------------------
    # bind, listen, accept, connect

    def _resolve(self, address: tuple) -> tuple:
        host, port = address[0], address[1]
        infos = _socket.getaddrinfo(host or None, port, self.family, _socket.SOCK_DGRAM)
        if not infos:
            raise _err(errno.EADDRNOTAVAIL)
        return infos[0][4]

    def bind(self, address: tuple) -> None:
        with self._lock:
            if self.tunnel is not None:
                raise _err(errno.EINVAL, "already bound")
            try:
                self.tunnel = get_tunnel(self._resolve(address), CID_LENGTH)
            except OSError as exc:
                raise _err(exc.errno or errno.EADDRINUSE, exc.strerror) from None

    def listen(self, backlog: int = DEFAULT_BACKLOG) -> None:
        with self._lock:
            if self.tunnel is None:
                raise _err(errno.EINVAL, "listen on an unbound socket")
            if self.state == SOCK_LISTENING:
                if backlog == 0:
                    self._stop_listening()  # lxin/quic §1.8: listen(fd, 0) leaves listening
                else:
                    self._backlog = backlog
                return
            if self.state != SOCK_CLOSED:
                raise _err(errno.EINVAL)
            self._backlog = backlog or DEFAULT_BACKLOG
            if not self.session_ticket:
                # One ticket key for every connection of this listener, so a ticket one
                # of them issued resumes on another (in another worker process too).
                self.session_ticket = self.tunnel.ticket_key(self.alpn)
            self.state = SOCK_LISTENING
            self.tunnel.add_listener(self)

    def _stop_listening(self) -> None:
        """New Initials no longer reach this socket, and connections not yet accepted
        are closed; accepted ones carry on, and the socket may listen again."""
        self.tunnel.remove_listener(self)
        while self._accept_queue:
            self._accept_queue.popleft().close()
        self.state = SOCK_CLOSED
        self._wake_all()
        self._update_ready()

    def accept(self) -> tuple[QuicSocket, tuple]:
        """A new connection; it is ESTABLISHING until a server handshake runs on it."""
        with self._lock:
            if self.state != SOCK_LISTENING:
                raise _err(errno.EINVAL)
            self._wait(
                lambda: self._accept_queue or self._released or self.state != SOCK_LISTENING,
                self._deadline(),
            )
            if self._released:
                raise _err(errno.EBADF)
            if self.state != SOCK_LISTENING:
                raise _err(errno.EINVAL)
            child = self._accept_queue.popleft()
            self._update_ready()
        return child, child.conn.peer_addr

    def connect(self, address: tuple) -> None:
        """Set up the client connection. As in the kernel, nothing is sent until the
        handshake (``quic_client_handshake``) writes the ClientHello."""
        with self._lock:
            if self.state != SOCK_CLOSED:
                raise _err(errno.EISCONN if self.conn else errno.EINVAL)
            peer = self._resolve(address)
            if self.tunnel is None:
                wildcard = "0.0.0.0" if self.family == _socket.AF_INET else "::"
                self.tunnel = get_tunnel((wildcard, 0), CID_LENGTH, wait=True)
            if self.family == _socket.AF_INET6 and len(peer) == 2:
                peer = (peer[0], peer[1], 0, 0)
            self.conn = Connection(
                self._connection_config(is_client=True, peer=peer),
                dcid=os.urandom(CID_LENGTH),
                scid=os.urandom(CID_LENGTH),
                peer_addr=peer,
                now=time.monotonic(),
                on_cid_add=self._route_add,
                on_cid_remove=self._route_remove,
                on_reset_token=self._reset_route_add,
                on_reset_token_gone=self._reset_route_remove,
            )
            if not netwatch.is_wildcard(self.tunnel.local_addr[0]):
                netwatch.watch(self.tunnel.local_addr[0], self)
            if self.remote_params is not None:
                self.conn.remember_peer_params(
                    params_from_uapi(self.remote_params, TransportParameters())
                )
            self._start_qlog()
            self.state = SOCK_ESTABLISHING

    def _start_qlog(self) -> None:
        if self.qlog_dir and self.conn is not None:
            self._qlog = QlogWriter(self.qlog_dir, self.conn.original_dcid, self.conn.is_client)
            self.conn.trace = self._qlog

    def _connection_config(self, is_client: bool, peer: tuple) -> ConnectionConfig:
        """The connection's settings from the socket's.

        PLPMTUD stays off unless ``plpmtud_probe_interval`` is set, as in lxin/quic:
        0 is that field's documented default, a program written for the kernel reads it
        back unchanged, and its datagrams stay at 1200 bytes, the one size every QUIC
        path must carry. With an interval, the search is bounded by the route MTU
        toward ``peer`` (65536 on loopback).
        """
        cfg = self.config
        interval = cfg.plpmtud_probe_interval / 1e6
        return ConnectionConfig(
            is_client=is_client,
            version=cfg.version or uapi.QUIC_VERSION_V1,
            local_params=self.local_params,
            cid_length=CID_LENGTH,
            new_cid=self.tunnel.new_cid,
            congestion_control=cfg.congestion_control_algo,
            initial_rtt=(cfg.initial_smoothed_rtt or uapi.QUIC_DEF_INITIAL_SMOOTHED_RTT) / 1e6,
            token=self.token,
            reset_key=self.tunnel.reset_key,
            event_mask=self.event_mask,
            compatible_versions=self.compatible_versions,
            plpmtud_probe_interval=interval,
            keepalive_interval=cfg.keepalive_probe_interval / 1e6,
            # One look at the route when PLPMTUD will use it, none otherwise.
            max_plpmtu=route_max_udp_payload(peer) if interval else MAX_UDP_PAYLOAD_IPV6,
            ecn=self.tunnel.ecn_codepoint == ECT_0,
        )

    def _reset_route_add(self, token: bytes) -> None:
        self._reset_routes.add(token)
        for tunnel in self._tunnels():
            tunnel.add_reset_route(token, self._endpoint_for(tunnel))

    def _reset_route_remove(self, token: bytes) -> None:
        self._reset_routes.discard(token)
        for tunnel in self._tunnels():
            tunnel.remove_reset_route(token)

    def _tunnels(self) -> list[Tunnel]:
        """Every UDP endpoint that routes to this socket: the one in use, one being
        migrated to, and those left by earlier migrations."""
        extra = [t for t in (self._new_tunnel, self._preferred_tunnel) if t is not None]
        return [self.tunnel, *extra, *self._old_tunnels]

    def _endpoint_for(self, tunnel: Tunnel):
        """What a tunnel routes this connection's packets to: the preferred address's
        tunnel notes that the client uses it before handing them on."""
        if tunnel is self._preferred_tunnel and self._preferred_path is not None:
            return self._preferred_path
        return self

    def _route_add(self, cid: bytes) -> None:
        for tunnel in self._tunnels():
            tunnel.add_route(cid, self._endpoint_for(tunnel))

    def _route_remove(self, cid: bytes) -> None:
        for tunnel in self._tunnels():
            tunnel.remove_route(cid)

    # the tunnel's Listener protocol

    def alpn_list(self) -> list[bytes]:
        """The protocols of QUIC_SOCKOPT_ALPN, by which the tunnel picks among listeners
        sharing a port; fixed once listening, since setsockopt refuses it then."""
        return split_alpns(self.alpn)

    def accept_initial(
        self,
        tunnel: Tunnel,
        data: bytes,
        addr: tuple,
        dcid: bytes,
        now: float,
        client_keys: PacketKeys | None = None,
    ) -> QuicSocket | None:
        """A new Initial reached this listener: make the child socket that will own it,
        or with ``validate_peer_address`` first send a Retry (RFC 9000 §8.1.2).
        ``client_keys`` are its Initial keys, if the tunnel derived them already."""
        with self._lock:
            if self.state != SOCK_LISTENING or len(self._accept_queue) >= self._backlog:
                return None
            if self._handshakes_in_progress() >= self._backlog:
                return None  # as a full SYN backlog: the client sends its Initial again
            header = parse_header(data, 0, CID_LENGTH)
            proof = self._check_token(tunnel, header, addr)
            if proof is False:
                return None
            if proof is None and self.config.validate_peer_address:
                retry_scid = tunnel.new_cid()  # the client's next DCID: it steers too
                token = tunnel.tokens.retry_token(addr, header.dcid, retry_scid)
                tunnel.sendto(
                    encode_retry(header.version, header.scid, retry_scid, token, header.dcid),
                    addr,
                )
                return None
            return self._new_child(tunnel, header, addr, proof, now, client_keys)

    def _handshakes_in_progress(self) -> int:
        """Connections made here whose handshake has not ended, accepted or not. The
        backlog bounds them too: accepting at once, an application would otherwise run
        a handshake (and a thread) for every Initial a flood brings. A child leaves the
        count when established or closed (:meth:`_leave_backlog`)."""
        return len(self._handshaking)

    def _leave_backlog(self) -> None:
        if self._in_backlog is not None:
            self._in_backlog.discard(self)
            self._in_backlog = None

    def _check_token(self, tunnel: Tunnel, header, addr: tuple) -> ValidatedToken | bool | None:
        """What the Initial's token proves: None without a usable one, False when the
        packet must be dropped (a bad Retry token: the client takes no second Retry)."""
        if not header.token:
            return None
        try:
            return tunnel.tokens.validate(header.token, addr, header.dcid)
        except TokenError as exc:
            log.info("token from %s refused: %s", addr, exc)
            return False if header.token[0] == TokenType.RETRY else None

    def _new_child(
        self,
        tunnel: Tunnel,
        header,
        addr: tuple,
        proof: ValidatedToken | None,
        now: float,
        client_keys: PacketKeys | None,
    ) -> QuicSocket:
        child = QuicSocket(self.family, self.type, self.proto)
        child.tunnel = tunnel
        tunnel.users += 1
        child.local_params = self.local_params
        child.config = self.config
        child.alpn = self.alpn
        child.compatible_versions = self.compatible_versions
        child.event_mask = self.event_mask
        child.session_ticket = self.session_ticket
        child.qlog_dir = self.qlog_dir
        config = child._connection_config(is_client=False, peer=addr)
        config.version = header.version  # a server answers in the client's version first
        config.new_token = partial(tunnel.tokens.new_token, addr)
        if self._preferred_tunnel is not None:
            config.preferred_address = self._preferred_tunnel.local_addr
            child._preferred_tunnel = self._preferred_tunnel
            child._preferred_path = _PreferredPath(child)
            self._preferred_tunnel.users += 1
        retried = proof is not None and proof.kind == TokenType.RETRY
        child.conn = Connection(
            config,
            dcid=header.scid,
            scid=tunnel.new_cid(),
            peer_addr=addr,
            now=now,
            original_dcid=proof.original_dcid if retried else header.dcid,
            retry_scid=proof.retry_scid if retried else None,
            address_validated=proof is not None,
            client_initial_keys=client_keys,
            on_cid_add=child._route_add,
            on_cid_remove=child._route_remove,
            on_reset_token=child._reset_route_add,
            on_reset_token_gone=child._reset_route_remove,
        )
        child._start_qlog()
        # The ACK of the ClientHello waits to leave with the ServerHello.
        child._cork_until = now + HANDSHAKE_CORK
        tunnel.add_route(header.dcid, child)
        child._extra_routes.append(header.dcid)
        child.state = SOCK_ESTABLISHING
        self._handshaking.add(child)
        child._in_backlog = self._handshaking
        self._accept_queue.append(child)
        self._wake_all()
        self._update_ready()
        return child

    # ------------------------------------------------------------------
    # the tunnel's Endpoint protocol (called from the I/O thread)

    def datagrams_received(self, datagrams: list, addr: tuple, now: float, ecn: int) -> None:
        with self._lock:
            conn = self.conn
            if conn is not None:
                conn.receive_datagrams(datagrams, addr, now, ecn)

    def flush(self, now: float | None = None) -> None:
        """Send what the connection has, re-arm its timer, wake waiters: once the socket
        lock is let go, if this was its outermost holder (see :meth:`_sleep`)."""
        with self._lock:
            woken = self._flush(now)
        for waiter in woken:
            waiter.release()

    def _flush(self, now: float | None) -> list:
        """:meth:`flush` under the lock; the sleepers it is to wake."""
        conn = self.conn
        if conn is None or self.tunnel is None:
            return []
        now = time.monotonic() if now is None else now
        if (self._cork_until is not None or self._hs_waiting) and self._corked(conn, now):
            # The connection's own deadline is not armed: it is mostly the held ACK's,
            # due at once. The hold ends within HANDSHAKE_CORK anyway.
            self.tunnel.schedule(self, self._cork_until)
        else:
            self._send(conn, now)
        self._update_ready()
        # Taken last: nothing may fail between here and their release in flush.
        return self._take_sleepers() if self._waiters and self._wake_due() else []

    def _send(self, conn: Connection, now: float) -> None:
        current = self._preferred_tunnel if self._via_preferred else self.tunnel
        while conn.probes_out:
            datagram, addr, local = conn.probes_out.popleft()
            tunnel = self._new_tunnel if local and self._new_tunnel else current
            tunnel.sendto(datagram, addr, conn.ecn_codepoint)
        if conn.migrated_local:
            self._switch_tunnel(conn)
            current = self.tunnel
        elif conn.migration_failed:
            self._abandon_migration(conn)
        datagrams = conn.datagrams_to_send(now)
        current.send_batch(datagrams, conn.peer_addr, conn.ecn_codepoint)
        if conn.keys_ahead_due and datagrams:
            conn.derive_ahead()  # the first flight is out: spare time until an answer
        if conn.state == ESTABLISHED and self.state == SOCK_ESTABLISHING:
            self.state = SOCK_ESTABLISHED
            self._leave_backlog()
        if conn.state == CLOSED:
            self._finish()
        else:
            self.tunnel.schedule(self, conn.next_deadline())

    def _corked(self, conn: Connection, now: float) -> bool:
        """Whether to hold back output while the handshake driver answers a flight.

        Handshake messages arrive through the I/O thread but are answered by the driver
        thread (libquic's loop). Sent at once, the ACKs a received flight calls for would
        each leave in a datagram of their own, just before the driver's answer: on a
        loopback handshake that is 3 of 6 client datagrams and 2 of 5 server ones, each
        costing both ends a packet's build, system calls and a thread wake-up. So from
        the moment a flight reaches a waiting driver (or a server's first Initial makes
        the connection) until the driver sends its answer or waits for more, the
        connection's output is held and then leaves coalesced, as a single-threaded stack
        sends it. The hold never outlasts HANDSHAKE_CORK: a slow driver's peer still
        gets its ACKs, a timer (PTO, idle) due meanwhile fires at its end, and a close
        ends it at once.
        """
        until = self._cork_until
        if until is None:
            if conn.handshake_complete or not conn.crypto_inbox:
                return False
            until = self._cork_until = now + HANDSHAKE_CORK
        if now < until and conn.state < CLOSING:
            return True
        self._cork_until = None
        return False

    def _uncork(self) -> None:
        if self._cork_until is not None:
            self._cork_until = None
            self.flush()

    def _set_connection_migration(self, value: bytes) -> None:
        """Established client: move to a new local address (port 0: any), probing it with
        PATH_CHALLENGE first; the switch happens when the server answers. A server
        socket before any connection, or a connection it accepted before the handshake:
        offer this address as preferred_address."""
        addr = uapi.unpack_sockaddr(value)
        if self.conn is None:
            self._set_preferred_address(addr)
            return
        conn = self._check_alive()
        if not conn.is_client and conn.state == ESTABLISHING:
            self._offer_preferred_address(conn, addr)
            return
        if not conn.is_client or conn.state != ESTABLISHED or self._new_tunnel:
            raise ValueError("only an established client migrates, once at a time")
        if (":" in addr[0]) != (self.family == _socket.AF_INET6):
            raise ValueError("migration keeps the address family")
        try:
            tunnel = get_tunnel(addr, CID_LENGTH)
        except OSError as exc:
            raise ValueError(f"cannot bind {addr}: {exc.strerror}") from None
        self._add_routes(tunnel)
        if not conn.migrate(time.monotonic()):
            self._drop_routes(tunnel)
            put_tunnel(tunnel)
            raise ValueError("no spare connection ID, migration disabled, or handshake unconfirmed")
        self._new_tunnel = tunnel

    def _set_preferred_address(self, addr: tuple) -> None:
        """RFC 9000 §9.6: the connections accepted here offer ``addr`` to move to; it is
        bound now, so that what the clients are told is an address that answers."""
        if addr[0] in ("0.0.0.0", "::") or not addr[1]:
            raise ValueError("a preferred address needs a specific address and port")
        if self._preferred_tunnel is not None:
            raise ValueError("the preferred address is already set")
        try:
            self._preferred_tunnel = get_tunnel(addr, CID_LENGTH)
        except OSError as exc:
            raise ValueError(f"cannot bind {addr}: {exc.strerror}") from None

    def _offer_preferred_address(self, conn: Connection, addr: tuple) -> None:
        """A server connection, accepted and not yet past its ClientHello, offers
        ``addr`` as its preferred_address (reference §1.3 #6), in place of any its
        listener offers; the family may differ from the socket's."""
        if conn.send_keys[uapi.QUIC_CRYPTO_HANDSHAKE] is not None:
            raise ValueError("the transport parameters have gone out already")
        inherited, self._preferred_tunnel = self._preferred_tunnel, None
        try:
            self._set_preferred_address(addr)
        except ValueError:
            self._preferred_tunnel = inherited
            raise
        if inherited is not None:
            self._drop_routes(inherited)
            put_tunnel(inherited)
        conn.config.preferred_address = self._preferred_tunnel.local_addr
        self._preferred_path = _PreferredPath(self)

    def _switch_tunnel(self, conn: Connection) -> None:
        """The new local path is validated: send from it; the old tunnel keeps our
        routes until the connection ends, for packets still in flight to it."""
        netwatch.unwatch(self.tunnel.local_addr[0], self)
        self._old_tunnels.append(self.tunnel)
        self.tunnel, self._new_tunnel = self._new_tunnel, None
        conn.on_local_migration()
        if not netwatch.is_wildcard(self.tunnel.local_addr[0]):
            netwatch.watch(self.tunnel.local_addr[0], self)

    def _abandon_migration(self, conn: Connection) -> None:
        """The new local path was never validated: the connection stays where it is
        (RFC 9000 §9.2) and the new address is released. Moves go one at a time, so a
        failed one kept would refuse every later request; now the application may ask
        again."""
        conn.migration_failed = False
        tunnel, self._new_tunnel = self._new_tunnel, None
        if tunnel is not None:
            log.info(
                "migration to %s not validated: staying on %s",
                tunnel.local_addr,
                self.tunnel.local_addr,
            )
            self._drop_routes(tunnel)
            put_tunnel(tunnel)

    def local_address_gone(self, replacement: str | None) -> None:
        """The address this client sends from was removed from the machine: migrate
        (called from the address watcher's thread)."""
        with self._lock:
            conn = self.conn
            if conn is None or conn.state != ESTABLISHED or replacement is None:
                return
            try:
                self._set_connection_migration(uapi.pack_sockaddr((replacement, 0)))
            except ValueError as exc:
                log.info("cannot migrate away from a removed address: %s", exc)
                return
            self.flush()

    def _add_routes(self, tunnel: Tunnel) -> None:
        for entry in self.conn.source_cids.ids.values():
            tunnel.add_route(entry.cid, self)
        for token in self._reset_routes:
            tunnel.add_reset_route(token, self)

    def _drop_routes(self, tunnel: Tunnel) -> None:
        for entry in self.conn.source_cids.ids.values():
            tunnel.remove_route(entry.cid)
        for token in self._reset_routes:
            tunnel.remove_reset_route(token)

    def unreachable(self, addr: tuple, code: int) -> None:
        """The tunnel's ICMP error report (see Connection.on_unreachable): a connect to
        a closed port ends with ECONNREFUSED (or the error's errno) for its waiters."""
        with self._lock:
            conn = self.conn
            if conn is None or not conn.on_unreachable(addr, os.strerror(code).encode()):
                return
            self._unreachable = code
            woken = self._flush(time.monotonic())
        for waiter in woken:
            waiter.release()

    def timer_expired(self, now: float) -> None:
        with self._lock:
            self._cork_until = None  # a due timer, or the end of a hold: send now
            if self.conn is not None:
                self.conn.handle_timer(now)
        self.flush(now)

    def _finish(self) -> None:
        """The connection is over: stop routing its IDs; release the tunnel once closed."""
        self._leave_backlog()
        if self.conn is not None:
            self.conn.source_cids.release_all()
        if self._qlog is not None:
            self._qlog.close()
        for tunnel in self._tunnels():
            for cid in self._extra_routes:
                tunnel.remove_route(cid)
            for token in self._reset_routes:
                tunnel.remove_reset_route(token)
            tunnel.schedule(self, None)
        self._extra_routes.clear()
        self._reset_routes.clear()
        for tunnel in self._tunnels()[1:]:
            put_tunnel(tunnel)
        self._new_tunnel = None
        self._old_tunnels.clear()
        netwatch.unwatch(self.tunnel.local_addr[0], self)
        if self._released and self.tunnel is not None:
            tunnel, self.tunnel = self.tunnel, None
            put_tunnel(tunnel)

    def _update_ready(self) -> None:
        """Keep the readiness pipe in step with whether recvmsg/accept would block."""
        if self._ready_w < 0:
            return
        ready = self._readable() or self._released
        if ready and not self._ready:
            os.write(self._ready_w, b"\0")
            self._ready = True
        elif not ready and self._ready:
            try:
                os.read(self._ready_r, 1)
            except BlockingIOError:
                pass
            self._ready = False

    def _readable(self) -> bool:
        if self.state == SOCK_LISTENING:
            return bool(self._accept_queue)
        conn = self.conn
        if conn is None:
            return False
        return bool(
            conn.notifications
            or conn.datagrams_in
            or conn.readable
            or self._handshake_pending()
            or conn.state >= DRAINING
        )

    def _handshake_pending(self) -> bool:
        inbox = self.conn.crypto_inbox
        return bool(inbox) and inbox[0][0] != uapi.QUIC_CRYPTO_APP

    def _check_alive(self) -> Connection:
        conn = self.conn
        if conn is None:
            raise _err(errno.ENOTCONN)
        if conn.state >= CLOSING:
            raise self._closed_error()
        return conn

    def _closed_error(self) -> OSError:
        if self._unreachable:
            return _err(self._unreachable)  # ECONNREFUSED: nothing listens there
        info = self.conn.close_info if self.conn else None
        if info is None or not info.remote:
            if info is not None and info.reason == b"idle timeout":
                return TimeoutError(errno.ETIMEDOUT, "connection idle timeout")
            return _err(errno.EPIPE)
        reason = info.reason.decode("utf-8", "replace")
        return ConnectionResetError(
            errno.ECONNRESET, f"peer closed the connection: 0x{info.error_code:x} {reason}".strip()
        )

    # ------------------------------------------------------------------
    # sendmsg / recvmsg

    def sendmsg(
        self,
        buffers: Iterable[bytes],
        ancdata: Iterable[tuple[int, int, bytes]] = (),
        flags: int = 0,
        address: tuple | None = None,
    ) -> int:
        """Send stream data, a datagram (MSG_QUIC_DATAGRAM) or a handshake message (a
        QUIC_HANDSHAKE_INFO record), as lxin/quic's sendmsg does."""
        data = b"".join(buffers)
        if flags & ~(uapi.QUIC_MSG_FLAGS | uapi.MSG_EOR):
            raise _err(errno.EINVAL, "unsupported flags")
        stream_info = None
        for level, kind, payload in ancdata:
            if level != uapi.SOL_QUIC:
                raise _err(errno.EINVAL)
            if kind == uapi.QUIC_HANDSHAKE_INFO:
                info = uapi.QuicHandshakeInfo.unpack(payload)
                self.send_handshake(info.crypto_level, data, bool(flags & uapi.MSG_MORE))
                return len(data)
            if kind == uapi.QUIC_STREAM_INFO:
                stream_info = uapi.QuicStreamInfo.unpack(payload)
            else:
                raise _err(errno.EINVAL)
        if flags & uapi.MSG_QUIC_DATAGRAM:
            return self._send_datagram(data, flags)
        if stream_info is None:
            stream_info = uapi.QuicStreamInfo(-1, flags & uapi.MSG_QUIC_STREAM_FLAGS)
        return self._send_stream(data, stream_info, flags, has_cmsg=bool(ancdata))

    def send(self, data: bytes, flags: int = 0) -> int:
        return self.sendmsg([data], (), flags)

    def _wait_established(self, flags: int, early: bool = False) -> Connection:
        """The connection once established; with ``early``, a resuming client's at once
        (its data goes in 0-RTT packets, or 1-RTT if the server declines them)."""
        conn = self.conn
        if conn is not None and conn.state == ESTABLISHED:
            return conn  # every send after the handshake: nothing to wait for
        if conn is None:
            # Never connected (or a listener): nothing will ever establish it. EPIPE,
            # as Linux TCP's sendmsg gives outside SYN_SENT/SYN_RECV.
            raise _err(errno.EPIPE, "not connected")
        deadline = self._deadline()
        self._wait(
            lambda: (
                conn.state != ESTABLISHING
                or conn.handshake_complete
                or (early and conn.zero_rtt_allowed)
            ),
            deadline,
            flags,
        )
        return self._check_alive()

    def _send_datagram(self, data: bytes, flags: int) -> int:
        if not data:
            raise _err(errno.EMSGSIZE, "an empty datagram")  # lxin/quic §1.7: 1..sndbuf
        with self._lock:
            conn = self._wait_established(flags)
            deadline = self._deadline()
            while True:
                try:
                    if conn.send_datagram(data):
                        break
                except ValueError as exc:
                    raise _err(errno.EINVAL, str(exc)) from None
                except OverflowError as exc:
                    raise _err(errno.EMSGSIZE, str(exc)) from None
                self.flush()
                self._wait(partial(_datagram_room, conn), deadline, flags)
                conn = self._check_alive()
            if not flags & uapi.MSG_MORE:
                self.flush()
            return len(data)

    def _send_stream(
        self, data: bytes, info: uapi.QuicStreamInfo, flags: int, has_cmsg: bool
    ) -> int:
        sflags = info.stream_flags
        fin = bool(sflags & uapi.MSG_QUIC_STREAM_FIN)
        if not data and not fin:
            raise _err(errno.EMSGSIZE, "empty send without FIN")  # lxin/quic §7
        with self._lock:
            conn = self._wait_established(flags, early=True)
            sid = self._choose_stream(conn, info.stream_id, sflags, flags)
            self._ensure_open(conn, sid, sflags, flags)
            view = memoryview(data)
            sent = 0
            deadline = self._deadline()

            def has_room() -> bool:
                # A bare FIN needs no buffer space; data waits for the low watermark
                # (or for room for all it has left), so one wake-up moves a lot.
                live = self._check_alive()
                try:
                    live.check_writable(sid)
                except StreamClosedError:
                    raise _err(errno.ENOSTR, "stream is closed") from None
                except StreamStateError as exc:
                    raise _err(errno.EINVAL, str(exc)) from None
                room, low_watermark = live.stream_send_space(sid)
                return room >= min(len(view) - sent, low_watermark)

            while True:
                if not has_room():
                    if flags & uapi.MSG_MORE:
                        # Corked data must leave before the writer waits for room, or
                        # nothing would send it (as TCP pushes before
                        # sk_stream_wait_memory).
                        self.flush()
                    try:
                        self._wait(has_room, deadline, flags, pure=True)
                    except OSError as exc:
                        if sent:
                            break  # as TCP: what was taken is reported; the next call fails
                        if exc.errno == errno.EAGAIN and has_cmsg and conn.stream_blocked(sid):
                            raise _err(errno.ENOSPC) from None
                        raise
                take = min(len(view) - sent, conn.stream_send_room(sid))
                last = sent + take == len(view)
                try:
                    conn.send_stream(
                        sid,
                        # Whole, immutable bytes are kept by the stream without a copy.
                        data if take == len(view) else view[sent : sent + take],
                        fin and last,
                        bool(sflags & uapi.MSG_QUIC_STREAM_NEW),
                    )
                except StreamClosedError:
                    raise _err(errno.ENOSTR, "stream is closed") from None
                except (StreamStateError, ValueError) as exc:
                    raise _err(errno.EINVAL, str(exc)) from None
                sent += take
                if not flags & uapi.MSG_MORE:
                    self.flush()
                if last:
                    break
            return sent

    def _ensure_open(self, conn: Connection, sid: int, sflags: int, flags: int) -> None:
        """lxin/quic §1.7: a stream not yet open needs MSG_QUIC_STREAM_NEW (else EINVAL); a
        stream already gone is ENOSTR; the peer's uni stream, open or gone, is EINVAL."""
        if sid & uapi.QUIC_STREAM_TYPE_UNI_MASK and self._peer_initiated(conn, sid):
            raise _err(errno.EINVAL, "the peer's uni stream takes no data from us")
        if conn.streams.get(sid) is not None:
            return
        if conn.streams.was_closed(sid):
            raise _err(errno.ENOSTR, "stream is closed")
        if not sflags & uapi.MSG_QUIC_STREAM_NEW:
            raise _err(errno.EINVAL, "stream not open: MSG_QUIC_STREAM_NEW needed")
        self._open_specific(conn, sid, sflags | flags)

    def _open_specific(self, conn: Connection, sid: int, flags: int) -> None:
        """Open ``sid`` and the lower streams of its type. Beyond the peer's stream limit
        a blocking socket waits for MAX_STREAMS, reporting STREAMS_BLOCKED once; with
        DONTWAIT it is EAGAIN (lxin/quic §1.7). A gone stream is ENOSTR, the peer's
        own unopened stream EINVAL."""

        def opened() -> bool:
            self._check_alive()
            try:
                conn.streams.open_specific(sid)
            except StreamLimitError:
                if conn.report_streams_blocked(bool(sid & uapi.QUIC_STREAM_TYPE_UNI_MASK)):
                    self.flush()
                return False
            return True

        dontwait = flags & (uapi.MSG_QUIC_STREAM_DONTWAIT | uapi.MSG_DONTWAIT)
        try:
            self._wait(opened, self._deadline(), uapi.MSG_DONTWAIT if dontwait else 0)
        except StreamGoneError:
            raise _err(errno.ENOSTR, "stream is closed") from None
        except StreamStateError as exc:
            raise _err(errno.EINVAL, str(exc)) from None
        self.active_stream = sid

    def _choose_stream(self, conn: Connection, sid: int, sflags: int, flags: int) -> int:
        """lxin/quic §1.7: -1 means the most recently opened stream, else a new one."""
        uni = bool(sflags & uapi.MSG_QUIC_STREAM_UNI)
        if sid >= 0:
            return sid
        if self.active_stream >= 0 and not (sflags & uapi.MSG_QUIC_STREAM_NEW):
            return self.active_stream
        sid = self._open_stream(conn, uni, sflags | flags)
        return sid

    def _open_stream(self, conn: Connection, uni: bool, flags: int) -> int:
        def can_open() -> bool:
            self._check_alive()
            if conn.streams.can_open_local(uni):
                return True
            if conn.report_streams_blocked(uni):
                self.flush()
            return False

        dontwait = flags & (uapi.MSG_QUIC_STREAM_DONTWAIT | uapi.MSG_DONTWAIT)
        self._wait(can_open, self._deadline(), uapi.MSG_DONTWAIT if dontwait else 0)
        try:
            sid = conn.open_stream(uni)
        except StreamLimitError:
            raise _err(errno.EAGAIN) from None
        self.active_stream = sid
        return sid

    def recvmsg(
        self, bufsize: int, ancbufsize: int = 0, flags: int = 0
    ) -> tuple[bytes, AncData, int, tuple]:
        """One event, handshake message, datagram, or piece of one stream's data, with its
        record: ``(data, ancdata, msg_flags, address)``."""
        with self._lock:
            conn = self.conn
            if conn is None:
                raise _err(errno.ENOTCONN)
            self._wait(self._readable, self._deadline(), flags, pure=True)
            peer = conn.peer_addr
            try:
                if conn.notifications and self._event_due(conn):
                    event, payload = conn.notifications.popleft()
                    return (
                        bytes((event,)) + payload,
                        [],
                        uapi.MSG_QUIC_NOTIFICATION | uapi.MSG_EOR,
                        peer,
                    )
                if self._handshake_pending():
                    level, data = conn.crypto_inbox.popleft()
                    record = uapi.QuicHandshakeInfo(level).pack()
                    msg_flags = uapi.MSG_EOR
                    if len(data) > bufsize:  # the rest is lost, as of a datagram
                        data, msg_flags = data[:bufsize], msg_flags | uapi.MSG_TRUNC
                    return (
                        data,
                        [(uapi.SOL_QUIC, uapi.QUIC_HANDSHAKE_INFO, record)],
                        msg_flags,
                        peer,
                    )
                if conn.datagrams_in:
                    data = conn.datagrams_in.popleft()
                    msg_flags = uapi.MSG_QUIC_DATAGRAM | uapi.MSG_EOR
                    if len(data) > bufsize:
                        data, msg_flags = data[:bufsize], msg_flags | uapi.MSG_TRUNC
                    return data, [], msg_flags, peer
                chunk = conn.read_stream(bufsize)
                if chunk is not None:
                    sid, data, fin = chunk
                    if (
                        sid > self._peer_bidi_seen
                        and not sid & uapi.QUIC_STREAM_TYPE_UNI_MASK
                        and self._peer_initiated(conn, sid)
                    ):
                        # lxin/quic §1.7: a bidi stream the peer opens becomes the one
                        # that -1 names, as the most recently opened stream.
                        self._peer_bidi_seen = self.active_stream = sid
                    sflags = uapi.MSG_QUIC_STREAM_FIN if fin else 0
                    record = uapi.QuicStreamInfo(sid, sflags).pack()
                    if conn.credit_due:
                        self.flush()  # the new credit leaves at once; nothing else is due
                    return data, [(uapi.SOL_QUIC, uapi.QUIC_STREAM_INFO, record)], sflags, peer
                raise self._closed_error() if conn.state >= CLOSING else _err(errno.EAGAIN)
            finally:
                self._update_ready()

    @staticmethod
    def _peer_initiated(conn: Connection, sid: int) -> bool:
        return bool(sid & uapi.QUIC_STREAM_TYPE_SERVER_MASK) == conn.is_client

    @staticmethod
    def _event_due(conn: Connection) -> bool:
        """The close event comes after the data that arrived before it, as it would from
        the kernel's single receive queue; other events come at once."""
        if conn.notifications[0][0] != uapi.QUIC_EVENT_CONNECTION_CLOSE:
            return True
        return not (conn.readable or conn.datagrams_in)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        return self.recvmsg(bufsize, 0, flags)[0]

    # ------------------------------------------------------------------
    # the handshake library's socket operations (handshake.libquic.HandshakeSocket)

    def recv_handshake(self, timeout: float) -> tuple[int, bytes]:
        with self._lock:
            conn = self.conn
            if conn is None:
                raise _err(errno.ENOTCONN)
            deadline = time.monotonic() + timeout

            def ready() -> bool:
                return bool(conn.crypto_inbox) or conn.state >= CLOSING

            if not ready():
                self._uncork()  # the driver's answer is complete: send what was held
            old, self._timeout = self._timeout, None
            self._hs_waiting = True
            try:
                self._wait(ready, deadline)
            finally:
                self._timeout = old
                self._hs_waiting = False
            if conn.crypto_inbox:
                level, data = conn.crypto_inbox.popleft()
                self._update_ready()
                return level, data
            raise self._closed_error()

    def send_handshake(self, level: int, data: bytes, more: bool) -> None:
        with self._lock:
            conn = self.conn
            if conn is None:
                raise _err(errno.ENOTCONN)
            if conn.state >= CLOSING:
                raise self._closed_error()
            try:
                conn.handshake_send(level, data)
            except ValueError as exc:
                raise _err(errno.EINVAL, str(exc)) from None
            if not more:
                self._cork_until = None
                self.flush()

    # ------------------------------------------------------------------
    # options

    def setsockopt(self, level: int, optname: int, value: bytes | int = b"") -> None:
        if level == _socket.SOL_SOCKET:
            return  # buffer sizes and the like: the tunnel sizes its own socket
        if level != uapi.SOL_QUIC:
            raise _err(errno.ENOPROTOOPT)
        if isinstance(value, int):
            value = value.to_bytes(4, "little")
        if len(value) > uapi.QUIC_SOCKOPT_MAX_LEN:
            raise _err(errno.EINVAL, "option too long")
        handler = self._setters.get(optname)
        if handler is None:
            raise _err(errno.ENOPROTOOPT)
        with self._lock:
            try:
                handler(self, bytes(value))
            except (ValueError, StreamStateError) as exc:
                raise _err(errno.EINVAL, str(exc)) from None
            except QuicError as exc:
                self.conn.close(
                    exc.code, exc.reason.encode()[:64], exc.frame_type or 0, now=time.monotonic()
                )
                self.flush()
                raise _err(errno.EINVAL, str(exc)) from None
            if self.conn is not None:
                if self.conn.handshake_complete and not self.conn.is_client:
                    # A server's handshake ends on reading the client's Finished: its
                    # last secret; what is held (ACK, HANDSHAKE_DONE) goes now.
                    self._cork_until = None
                self.flush()

    def getsockopt(self, level: int, optname: int, buflen: int | bytes = 0) -> bytes:
        """``buflen`` may be the input record for options that read one (EVENT,
        STREAM_OPEN, TRANSPORT_PARAM with ``remote``), as their optval is in/out."""
        if level != uapi.SOL_QUIC:
            raise _err(errno.ENOPROTOOPT)
        request = buflen if isinstance(buflen, (bytes, bytearray)) else b""
        handler = self._getters.get(optname)
        if handler is None:
            raise _err(errno.ENOPROTOOPT)
        with self._lock:
            try:
                return handler(self, bytes(request))
            except ValueError as exc:
                raise _err(errno.EINVAL, str(exc)) from None

    def _establishing(self) -> Connection:
        if self.conn is None or self.conn.state != ESTABLISHING or self.conn.handshake_complete:
            raise ValueError("only while the connection is establishing")
        return self.conn

    def _set_event(self, value: bytes) -> None:
        opt = uapi.QuicEventOption.unpack(value)
        if not uapi.QUIC_EVENT_NONE < opt.type < uapi.QUIC_EVENT_MAX:
            raise ValueError("unknown event type")
        if opt.on:
            self.event_mask |= 1 << opt.type
        else:
            self.event_mask &= ~(1 << opt.type)
        if self.conn is not None:
            self.conn.config.event_mask = self.event_mask

    def _get_event(self, request: bytes) -> bytes:
        opt = uapi.QuicEventOption.unpack(request)
        if not uapi.QUIC_EVENT_NONE < opt.type < uapi.QUIC_EVENT_MAX:
            raise ValueError("unknown event type")
        opt.on = int(bool(self.event_mask & (1 << opt.type)))
        return opt.pack()

    def _get_stream_open(self, request: bytes) -> bytes:
        info = uapi.QuicStreamInfo.unpack(request) if request else uapi.QuicStreamInfo()
        conn = self._check_alive()
        if info.stream_id >= 0:
            sid = info.stream_id
            if conn.streams.get(sid) is None:
                self._open_specific(conn, sid, info.stream_flags)
        else:
            uni = bool(info.stream_flags & uapi.MSG_QUIC_STREAM_UNI)
            sid = self._open_stream(conn, uni, info.stream_flags)
        return uapi.QuicStreamInfo(sid, info.stream_flags).pack()

    def _set_stream_reset(self, value: bytes) -> None:
        info = uapi.QuicErrinfo.unpack(value)
        self._check_alive().reset_stream(info.stream_id, info.errcode)

    def _set_stop_sending(self, value: bytes) -> None:
        info = uapi.QuicErrinfo.unpack(value)
        if not self._check_alive().stop_sending(info.stream_id, info.errcode):
            raise _err(errno.EAGAIN, "STOP_SENDING already sent on this stream")

    def _set_key_update(self, value: bytes) -> None:
        """Start a 1-RTT key update: EPIPE unless established, EAGAIN while the previous
        update is unconfirmed (RFC 9001 §6.1 allows one at a time)."""
        conn = self.conn
        if conn is None or conn.state != ESTABLISHED:
            raise _err(errno.EPIPE, "not established")
        if not conn.update_keys():
            raise _err(errno.EAGAIN, "the previous key update is not yet confirmed")

    def _set_connection_close(self, value: bytes) -> None:
        if len(value) < 5:
            raise ValueError("short connection close record")
        self.close_record = uapi.QuicConnectionClose.unpack(value.ljust(72, b"\0")[:72])

    def _get_connection_close(self, request: bytes) -> bytes:
        info = self.conn.close_info if self.conn else None
        if info is None:
            return self.close_record.pack()
        return info.record().pack()

    def _set_transport_param(self, value: bytes) -> None:
        rec = uapi.QuicTransportParam.unpack(value)
        if self.conn is not None and self.conn.state != ESTABLISHING:
            raise ValueError("transport parameters are fixed once established")
        if rec.remote:
            # The server's parameters saved from an earlier connection, for 0-RTT: set
            # before connect() they wait for it; after, they apply at once.
            self.remote_params = rec
            if self.conn is not None and self.conn.is_client:
                self.conn.remember_peer_params(params_from_uapi(rec, TransportParameters()))
            return
        if rec.disable_compatible_version:
            self.compatible_versions = False
        self.local_params = params_from_uapi(rec, self.local_params)
        if self.conn is not None:
            self.conn.local_params = self.local_params

    def _get_transport_param(self, request: bytes) -> bytes:
        if request and uapi.QuicTransportParam.unpack(request).remote:
            conn = self.conn
            if conn is None or conn.peer_params is None:
                raise ValueError("no peer transport parameters yet")
            rec = params_to_uapi(conn.peer_params)
            rec.remote = 1
            return rec.pack()
        rec = params_to_uapi(self.local_params)
        rec.disable_compatible_version = int(not self.compatible_versions)
        return rec.pack()

    def _set_config(self, value: bytes) -> None:
        rec = uapi.QuicConfig.unpack(value)
        if self.conn is not None and self.conn.state != ESTABLISHING:
            raise ValueError("config is fixed once established")
        if rec.version and rec.version not in (uapi.QUIC_VERSION_V1, uapi.QUIC_VERSION_V2):
            raise ValueError("unsupported version")
        if rec.congestion_control_algo >= uapi.QUIC_CONG_ALG_MAX:
            raise ValueError("unknown congestion control algorithm")
        if rec.initial_smoothed_rtt and not 1000 <= rec.initial_smoothed_rtt <= 6_000_000:
            raise ValueError("initial_smoothed_rtt out of range")
        if rec.plpmtud_probe_interval and rec.plpmtud_probe_interval < QUIC_MIN_PROBE_TIMEOUT:
            raise ValueError("plpmtud_probe_interval below the minimum")
        if rec.keepalive_probe_interval and rec.keepalive_probe_interval < MIN_KEEPALIVE_INTERVAL:
            raise ValueError("keepalive_probe_interval below 1500000 µs")
        merged = uapi.QuicConfig(
            *[
                new or old
                for new, old in zip(
                    rec.__dict__.values(), self.config.__dict__.values(), strict=True
                )
            ]
        )
        # Every field merges, congestion_control_algo too, as in the kernel: a later
        # partial set (tlshd's receive_session_ticket, say) keeps an earlier CUBIC.
        self.config = merged

    def _get_config(self, request: bytes) -> bytes:
        """The settings; ``version`` is the negotiated one once a connection exists."""
        if self.conn is None:
            return self.config.pack()
        return dataclasses.replace(self.config, version=self.conn.version).pack()

    def _set_token(self, value: bytes) -> None:
        """Client: the token for the next Initial. Server, established, with no value:
        send the client another NEW_TOKEN (reference §1.3 #10)."""
        conn = self.conn
        if conn is not None and not conn.is_client:
            if value or conn.state != ESTABLISHED or not conn.send_new_token():
                raise ValueError("a server sends NEW_TOKEN: optlen 0, once established")
            return
        if len(value) > uapi.QUIC_TOKEN_MAX_LEN:
            raise ValueError("token too long")
        self.token = value
        if conn is not None:
            conn.token = value

    def _get_token(self, request: bytes) -> bytes:
        conn = self.conn
        if (conn is not None and not conn.is_client) or self.state == SOCK_LISTENING:
            raise ValueError("a server has no token to read")  # libquic's role test
        return conn.new_token if conn is not None else self.token

    def _set_alpn(self, value: bytes) -> None:
        if self.state == SOCK_LISTENING:
            raise ValueError("ALPN must be set before listen()")
        value = value.rstrip(b"\0")
        if len(value) > uapi.QUIC_ALPN_MAX_LEN:
            raise ValueError("ALPN list too long")
        self.alpn = value

    def _get_alpn(self, request: bytes) -> bytes:
        return self.alpn

    def _set_session_ticket(self, value: bytes) -> None:
        """Reference §1.3 #12: 64..4096 bytes, EPIPE on a listening socket."""
        if self.state == SOCK_LISTENING:
            raise _err(errno.EPIPE, "no session ticket on a listening socket")
        if len(value) < uapi.QUIC_SESSION_TICKET_MIN_LEN:
            raise ValueError("a session ticket is at least 64 bytes")
        self.session_ticket = value
        if self.conn is not None:
            self.conn.session_ticket = b""  # what was set last is what a get returns

    def _get_session_ticket(self, request: bytes) -> bytes:
        """Client: the last NewSessionTicket message received, or what was set after it
        (session data, as libquic stores it). Server: the ticket master key."""
        conn = self.conn
        if conn is not None and conn.is_client and conn.session_ticket:
            return conn.session_ticket
        if conn is not None and not conn.is_client and not self.session_ticket:
            self.session_ticket = os.urandom(64)  # ticket master key for this server socket
        return self.session_ticket

    def _set_crypto_secret(self, value: bytes) -> None:
        rec = uapi.QuicCryptoSecret.unpack(value)
        conn = self._establishing()
        size = 48 if rec.type == uapi.TLS_CIPHER_AES_GCM_256 else 32
        conn.set_secret(rec.level, bool(rec.send), rec.type, rec.secret[:size])

    def _set_transport_param_ext(self, value: bytes) -> None:
        self._establishing().set_peer_transport_params(value)

    def _get_transport_param_ext(self, request: bytes) -> bytes:
        return self._establishing().local_transport_params()

    def _set_connection_id(self, value: bytes) -> None:
        info = uapi.QuicConnectionIdInfo.unpack(value)
        conn = self.conn
        if conn is None or conn.state != ESTABLISHED:
            raise ValueError("connection IDs change only once established")
        conn.set_connection_id(bool(info.dest), info.active, info.prior_to)

    def _get_connection_id(self, request: bytes) -> bytes:
        info = uapi.QuicConnectionIdInfo.unpack(request) if request else None
        conn = self.conn
        if conn is None or conn.state != ESTABLISHED:
            raise ValueError("no connection IDs before the connection is established")
        return conn.connection_id_info(bool(info and info.dest)).pack()

    _setters = {
        uapi.QUIC_SOCKOPT_EVENT: _set_event,
        uapi.QUIC_SOCKOPT_STREAM_RESET: _set_stream_reset,
        uapi.QUIC_SOCKOPT_STREAM_STOP_SENDING: _set_stop_sending,
        uapi.QUIC_SOCKOPT_CONNECTION_CLOSE: _set_connection_close,
        uapi.QUIC_SOCKOPT_CONNECTION_MIGRATION: _set_connection_migration,
        uapi.QUIC_SOCKOPT_KEY_UPDATE: _set_key_update,
        uapi.QUIC_SOCKOPT_CONNECTION_ID: _set_connection_id,
        uapi.QUIC_SOCKOPT_TRANSPORT_PARAM: _set_transport_param,
        uapi.QUIC_SOCKOPT_CONFIG: _set_config,
        uapi.QUIC_SOCKOPT_TOKEN: _set_token,
        uapi.QUIC_SOCKOPT_ALPN: _set_alpn,
        uapi.QUIC_SOCKOPT_SESSION_TICKET: _set_session_ticket,
        uapi.QUIC_SOCKOPT_CRYPTO_SECRET: _set_crypto_secret,
        uapi.QUIC_SOCKOPT_TRANSPORT_PARAM_EXT: _set_transport_param_ext,
    }
    _getters = {
        uapi.QUIC_SOCKOPT_EVENT: _get_event,
        uapi.QUIC_SOCKOPT_STREAM_OPEN: _get_stream_open,
        uapi.QUIC_SOCKOPT_CONNECTION_ID: _get_connection_id,
        uapi.QUIC_SOCKOPT_CONNECTION_CLOSE: _get_connection_close,
        uapi.QUIC_SOCKOPT_TRANSPORT_PARAM: _get_transport_param,
        uapi.QUIC_SOCKOPT_CONFIG: _get_config,
        uapi.QUIC_SOCKOPT_TOKEN: _get_token,
        uapi.QUIC_SOCKOPT_ALPN: _get_alpn,
        uapi.QUIC_SOCKOPT_SESSION_TICKET: _get_session_ticket,
        uapi.QUIC_SOCKOPT_TRANSPORT_PARAM_EXT: _get_transport_param_ext,
    }

    # ------------------------------------------------------------------
    # close

    def shutdown(self, how: int = _socket.SHUT_RDWR) -> None:
        """Close the connection (CONNECTION_CLOSE with the configured code) but keep the
        socket object usable for reading the close information. A blocking socket first
        lingers, up to its timeout (at most LINGER seconds), until the peer has
        acknowledged the stream data already sent, so a send followed by close loses
        nothing."""
        with self._lock:
            conn = self.conn
            if conn is not None and conn.state < CLOSING and self._timeout != 0.0:
                linger = LINGER if self._timeout is None else min(self._timeout, LINGER)
                deadline = time.monotonic() + linger
                try:
                    self._wait(
                        lambda: conn.state >= CLOSING or not conn.unacked_stream_data(),
                        deadline,
                    )
                except TimeoutError:
                    pass  # lingered long enough: close with what is still unacknowledged
            self._cork_until = None
            if conn is not None and conn.state < CLOSING:
                rec = self.close_record
                # A failed handshake reports its TLS alert as CRYPTO_ERROR (0x100 + alert):
                # a transport close, which RFC 9000 §10.2.3 lets through before 1-RTT.
                crypto_error = 0x100 <= rec.errcode <= 0x1FF and not conn.handshake_complete
                frame_type = 0 if crypto_error else None
                conn.close(rec.errcode, rec.phrase.rstrip(b"\0"), frame_type, now=time.monotonic())
                self.flush()

    def close(self) -> None:
        """Release the socket. An open connection sends CONNECTION_CLOSE and lingers in the
        tunnel through its closing period; the UDP port is released after it."""
        with self._lock:
            if self._released:
                return
            self._released = True
            self._leave_backlog()
            if self.state == SOCK_LISTENING:
                self._stop_listening()
            if self.conn is None and self._preferred_tunnel is not None:
                tunnel, self._preferred_tunnel = self._preferred_tunnel, None
                put_tunnel(tunnel)
            self.shutdown()
            self._wake_all()
            conn = self.conn
            if self.tunnel is not None and (conn is None or conn.state == CLOSED):
                if conn is not None:
                    self._finish()
                else:
                    tunnel, self.tunnel = self.tunnel, None
                    put_tunnel(tunnel)
            # A lingering connection still flushes through this object: mark the pipe
            # gone so that no write lands on a descriptor number reused elsewhere.
            ready_r, ready_w = self._ready_r, self._ready_w
            self._ready_r = self._ready_w = -1
            if ready_r >= 0:
                os.close(ready_r)
                os.close(ready_w)


class _PreferredPath:
    """A server connection as its preferred address's tunnel sees it: packets arriving
    there mean the client has moved to it, so replies leave from it too."""

    def __init__(self, sock: QuicSocket) -> None:
        self.sock = sock

    def datagrams_received(self, datagrams: list, addr: tuple, now: float, ecn: int) -> None:
        self.sock._via_preferred = True
        self.sock.datagrams_received(datagrams, addr, now, ecn)

    def flush(self, now: float) -> None:
        self.sock.flush(now)

    def timer_expired(self, now: float) -> None:
        self.sock.timer_expired(now)

    def unreachable(self, addr: tuple, code: int) -> None:
        self.sock.unreachable(addr, code)


def _datagram_room(conn: Connection) -> bool:
    return len(conn.datagrams_out) < MAX_QUEUED_DATAGRAMS or conn.state >= CLOSING


def socket(
    family: int = _socket.AF_INET, type: int = _socket.SOCK_STREAM, proto: int = uapi.IPPROTO_QUIC
) -> QuicSocket:
    """``socket(AF_INET, SOCK_STREAM, IPPROTO_QUIC)``."""
    return QuicSocket(family, type, proto)


def quic_sendmsg(sock: QuicSocket, data: bytes, sid: int, flags: int) -> int:
    """libquic's helper: the stream flags ride in a QUIC_STREAM_INFO record."""
    record = uapi.QuicStreamInfo(sid, flags & uapi.MSG_QUIC_STREAM_FLAGS).pack()
    return sock.sendmsg(
        [data],
        [(uapi.SOL_QUIC, uapi.QUIC_STREAM_INFO, record)],
        flags & ~uapi.MSG_QUIC_STREAM_FLAGS,
    )


def quic_recvmsg(sock: QuicSocket, bufsize: int, flags: int = 0) -> tuple[bytes, int, int]:
    """libquic's helper: returns (data, stream id, msg_flags | stream flags)."""
    data, ancdata, msg_flags, _ = sock.recvmsg(bufsize, 64, flags)
    sid = -1
    for level, kind, payload in ancdata:
        if level == uapi.SOL_QUIC and kind == uapi.QUIC_STREAM_INFO:
            info = uapi.QuicStreamInfo.unpack(payload)
            sid, msg_flags = info.stream_id, msg_flags | info.stream_flags
    return data, sid, msg_flags


__all__ = ["QuicSocket", "TransportError", "quic_recvmsg", "quic_sendmsg", "socket"]
