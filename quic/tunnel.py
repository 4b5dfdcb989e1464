"""The UDP tunnel: one UDP socket serving many QUIC connections (DESIGN §1).

An I/O thread per tunnel receives datagrams, routes each to its connection by the
Destination Connection ID, hands new Initials to the listener serving the client's ALPN,
answers unknown versions with Version Negotiation, and fires connection timers. Sending
happens in whatever thread holds the connection (the caller of ``sendmsg`` or this I/O
thread).

ECN (RFC 9000 §13.4) costs little here because marking is a socket option, set once:
every datagram of the tunnel leaves ECT(0), including those sent for no connection
(Version Negotiation, Retry, Stateless Reset). A connection whose ECN validation failed
must stop marking while the others go on, so only its datagrams pay for a ``sendmsg``
carrying their codepoint as ancillary data; on the common paths, where validation
succeeds, nothing changes per datagram. The codepoint of each datagram received comes
with it as ancillary data of ``recvmsg``. When the kernel refuses any of this, the
tunnel works without ECN.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import selectors
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Protocol

from .alpn import alpns_in, initial_crypto, no_application_protocol_close
from .connid import (
    STATELESS_RESET_TOKEN_LENGTH,
    WorkerCids,
    endpoint_reset_key,
    stateless_reset,
)
from .crypto import PacketKeys
from .ecn import ECN_MASK, ECT_0, NOT_ECT
from .errors import QuicError
from .keys import EndpointKeys
from .malloc import keep_freed_memory
from .packet import (
    FIXED_BIT,
    HEADER_FORM_BIT,
    MIN_INITIAL_SIZE,
    SUPPORTED_VERSIONS,
    Header,
    PacketType,
    encode_version_negotiation,
    parse_header,
)
from .token import TokenAuthority
from .udp_mtu import forbid_fragmentation

log = logging.getLogger(__name__)

Address = tuple  # (host, port) or (host, port, flowinfo, scope_id)

# Datagrams read in one wake-up before the touched connections flush their output:
# bounded so timers still fire under a flood.
RECV_BATCH = 64
RECV_BUFFER = 65536
SOCKET_BUFFER = 4 * 1024 * 1024
# UDP generic segmentation offload (linux/udp.h); Python's socket module lacks the names.
SOL_UDP = 17
UDP_SEGMENT = 103
GSO_MAX_SEGMENTS = 64  # UDP_MAX_SEGMENTS
GSO_MAX_BYTES = 65000  # one UDP payload of at most 64 KiB, headers aside
_SEGMENT = struct.Struct("=H")
# UDP generic receive offload: the kernel hands over runs of equal-sized datagrams of
# one flow as one buffer, with their size in a control message (an int).
UDP_GRO = 104
_GRO_SIZE = struct.Struct("=i")
RESETS_PER_SECOND = 100
# ICMP errors for what a tunnel sent, queued by the kernel (Linux ip(7), ipv6(7)): each
# read from the error queue gives the datagram's destination and a struct
# sock_extended_err, whose first field is the errno (ECONNREFUSED: port unreachable).
IP_RECVERR = 11
IPV6_RECVERR = 25
_EE_ERRNO = struct.Struct("=I")
# Room for the control messages of a read: the TOS / Traffic Class of the datagrams
# and, with GRO, their segment size; and the byte of the TOS data holding the ECN bits
# (IP_TOS data is one byte, IPV6_TCLASS an int).
CMSG_SPACE = 2 * socket.CMSG_SPACE(4)
ECN_BYTE = 0 if sys.byteorder == "little" else -1


class Endpoint(Protocol):
    """A connection as the tunnel sees it."""

    def datagrams_received(self, datagrams: list, addr: Address, now: float, ecn: int) -> None:
        """Datagrams for this connection from one receive call (a GRO batch shares its
        address, time and ``ecn``, the ECN codepoint of their IP headers), in order."""
        ...

    def flush(self, now: float) -> None: ...

    def timer_expired(self, now: float) -> None: ...

    def unreachable(self, addr: Address, code: int) -> None:
        """An ICMP error (as errno ``code``) for a datagram sent to ``addr``."""
        ...


class Listener(Protocol):
    """A listening socket: it may turn a new Initial into a connection."""

    def accept_initial(
        self,
        tunnel: Tunnel,
        data: bytes,
        addr: Address,
        dcid: bytes,
        now: float,
        client_keys: PacketKeys | None = None,
    ) -> Endpoint | None:
        """``client_keys``: the Initial keys of the client's version, when the tunnel
        already derived them to read the ClientHello's ALPN."""

    def alpn_list(self) -> list[bytes]:
        """The application protocols this listener serves; empty for any protocol."""
        ...


class Tunnel:
    """A bound UDP socket, its demux table, its listeners and its timer heap."""

    def __init__(
        self,
        local_addr: Address,
        cid_length: int,
        *,
        sock: socket.socket | None = None,
        keys: EndpointKeys | None = None,
        cids: WorkerCids | None = None,
        start: bool = True,
    ) -> None:
        """Bind ``local_addr``, or serve ``sock``, a UDP socket already bound (a worker's
        socket of a reuseport group). ``keys`` are secrets shared with other processes
        serving the same address, ``cids`` how this endpoint's connection IDs steer to
        it; without them the keys are the process's own and the IDs random. Without
        ``start`` the I/O thread waits for a datagram sent, a timer or a listener (see
        :meth:`start`)."""
        keep_freed_memory()
        if sock is None:
            sock = udp_socket(socket.AF_INET6 if ":" in local_addr[0] else socket.AF_INET)
            sock.bind(local_addr)
        self.sock = sock
        self.sock.setblocking(False)
        family = self.family = sock.family
        self.local_addr = self.sock.getsockname()
        self.ecn_codepoint, self.ecn_receive = enable_ecn(self.sock, family)
        self.gro = enable_gro(self.sock)
        self.cid_length = cid_length
        self.cids = cids or WorkerCids()
        self.keys = keys
        self.routes: dict[bytes, Endpoint] = {}
        # The peers' stateless reset tokens: a reset's DCID is random (RFC 9000 §10.3).
        self.reset_routes: dict[bytes, Endpoint] = {}
        self.listeners: list[Listener] = []
        self.users = 0
        self.gso = sys.platform.startswith("linux")  # cleared on the first refusal
        # Retry and NEW_TOKEN tokens of this UDP endpoint, and its Stateless Resets' key.
        self.tokens = TokenAuthority(keys.token_key if keys else None)
        self.reset_key = keys.reset_key if keys else endpoint_reset_key()
        # Set once a listener is added: a supervisor announces the port after that.
        self.listening = threading.Event()
        self._reset_budget = float(RESETS_PER_SECOND)
        self._reset_time = 0.0
        self._lock = threading.Lock()
        self._timers: list[tuple[float, int, Endpoint]] = []
        self._deadlines: dict[int, float] = {}
        self._seq = itertools.count()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._closed = False
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        if start:
            self.start()

    def new_cid(self) -> bytes:
        """A connection ID for this endpoint to issue (RFC 9000 §5.1)."""
        return self.cids.mint(self.cid_length)

    def ticket_key(self, alpn: bytes) -> bytes:
        """The session-ticket key for a new listener serving ``alpn``: shared when the
        keys are, else its own."""
        return self.keys.ticket_key(alpn) if self.keys else os.urandom(64)

    # routing table

    def add_route(self, cid: bytes, endpoint: Endpoint) -> None:
        with self._lock:
            self.routes[cid] = endpoint

    def remove_route(self, cid: bytes) -> None:
        with self._lock:
            self.routes.pop(cid, None)

    def add_reset_route(self, token: bytes, endpoint: Endpoint) -> None:
        with self._lock:
            self.reset_routes[token] = endpoint

    def remove_reset_route(self, token: bytes) -> None:
        with self._lock:
            self.reset_routes.pop(token, None)

    def add_listener(self, listener: Listener) -> None:
        with self._lock:
            self.listeners.append(listener)
        self.start()
        self.listening.set()

    def remove_listener(self, listener: Listener) -> None:
        with self._lock:
            if listener in self.listeners:
                self.listeners.remove(listener)

    # output and timers, callable from any thread

    def sendto(self, datagram: bytes, addr: Address, ecn: int | None = None) -> None:
        """Send one datagram with ECN codepoint ``ecn``; None takes the socket's own,
        ``ecn_codepoint``."""
        try:
            if ecn is None or ecn == self.ecn_codepoint:
                self.sock.sendto(datagram, addr)
            else:
                self._send_with_codepoint(datagram, addr, ecn)
        except (BlockingIOError, InterruptedError):
            pass  # a full socket buffer is loss; recovery repairs it
        except OSError as exc:
            log.debug("sendto %s failed: %s", addr, exc)
        self.start()

    def send_batch(self, datagrams: list[bytes], addr: Address, ecn: int | None = None) -> None:
        """Send a flush's datagrams. With UDP GSO (Linux 4.18+) each run of equal-sized
        datagrams, plus one shorter at its end, leaves in one sendmsg that the kernel
        splits: one system call instead of dozens. Without it, or when the connection's
        ECN codepoint is not the socket's, one sendto each."""
        if not self.gso or len(datagrams) < 2 or (ecn is not None and ecn != self.ecn_codepoint):
            for datagram in datagrams:
                self.sendto(datagram, addr, ecn)
            return
        i, count = 0, len(datagrams)
        while i < count:
            size = len(datagrams[i])
            end = min(count, i + min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // size))
            j = i + 1
            while j < end and len(datagrams[j]) == size:
                j += 1
            if j < end and len(datagrams[j]) < size:
                j += 1  # the kernel allows a shorter last segment
            if j - i == 1:
                self.sendto(datagrams[i], addr)
            else:
                self._send_segments(datagrams[i:j], size, addr)
            i = j
        self.start()

    def _send_segments(self, parts: list[bytes], size: int, addr: Address) -> None:
        """One sendmsg of ``parts`` as the segments of one GSO buffer: gathered by the
        kernel from the list as it is, not joined here first."""
        try:
            self.sock.sendmsg(parts, [(SOL_UDP, UDP_SEGMENT, _SEGMENT.pack(size))], 0, addr)
        except (BlockingIOError, InterruptedError):
            pass  # as for sendto: loss that recovery repairs
        except OSError as exc:
            # EIO/EINVAL/EOPNOTSUPP: no GSO here (old kernel, device, or route); fall back.
            log.info("UDP GSO unavailable (%s): sending datagrams one by one", exc)
            self.gso = False
            for datagram in parts:
                self.sendto(datagram, addr)

    def _send_with_codepoint(self, datagram: bytes, addr: Address, ecn: int) -> None:
        """Send with a codepoint other than the socket's. Should the kernel refuse it
        per datagram, the whole tunnel stops marking: connections still marking then
        see their marks vanish and fail ECN validation, which is safe, while datagrams
        of connections that must not be marked would otherwise leave marked."""
        if self.ecn_codepoint == NOT_ECT:
            self.sock.sendto(datagram, addr)
            return
        if self.family == socket.AF_INET6 and not addr[0].startswith("::ffff:"):
            level, option = socket.IPPROTO_IPV6, socket.IPV6_TCLASS
        else:
            level, option = socket.IPPROTO_IP, socket.IP_TOS
        try:
            self.sock.sendmsg((datagram,), [(level, option, struct.pack("i", ecn))], 0, addr)
        except (BlockingIOError, InterruptedError):
            raise
        except OSError as exc:
            log.info("the kernel refused a per-datagram ECN codepoint (%s): not marking", exc)
            set_ecn_codepoint(self.sock, self.family, NOT_ECT)
            self.ecn_codepoint = NOT_ECT
            self.sock.sendto(datagram, addr)

    def schedule(self, endpoint: Endpoint, deadline: float | None) -> None:
        """Arm (or with None, disarm) ``endpoint``'s single timer."""
        self.start()
        key = id(endpoint)
        with self._lock:
            if deadline is None:
                self._deadlines.pop(key, None)
                return
            if self._deadlines.get(key) == deadline:
                return
            self._deadlines[key] = deadline
            first = not self._timers or deadline < self._timers[0][0]
            heapq.heappush(self._timers, (deadline, next(self._seq), endpoint))
        if first and threading.current_thread() is not self._thread:
            self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass

    def start(self) -> None:
        """Start the I/O thread, if not yet running. A tunnel made without ``start``
        runs this on its first datagram sent, timer armed or listener added: a client's
        own tunnel, which nothing can reach before its first Initial, thus starts the
        thread while the server works on that Initial. Starting a thread costs a
        fraction of a millisecond, which would otherwise delay the ClientHello."""
        if self._thread is not None:
            return  # running: every send and timer asks, so this answer takes no lock
        with self._start_lock:
            if self._thread is not None or self._closed:
                return
            thread = threading.Thread(
                target=self._run, name=f"quic-tunnel-{self.local_addr[1]}", daemon=True
            )
            thread.start()
            self._thread = thread

    def close(self) -> None:
        with self._start_lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        self._wake()
        if thread is not None and threading.current_thread() is not thread:
            thread.join(timeout=2)
        self.sock.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    # the I/O thread

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        while not self._closed:
            timeout = self._next_timeout()
            for key, _ in sel.select(timeout):
                if key.fileobj is self.sock:
                    self._receive_batch()
                else:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
            self._fire_timers()
        sel.close()

    def _next_timeout(self) -> float | None:
        """Seconds until the earliest live deadline. Re-arming leaves the old deadline
        in the heap; those at the top are dropped here, so that the thread does not wake
        for them (each wake-up takes the GIL from whoever is working)."""
        with self._lock:
            timers, deadlines = self._timers, self._deadlines
            while timers and deadlines.get(id(timers[0][2])) != timers[0][0]:
                heapq.heappop(timers)
            if not timers:
                return None
            return max(0.0, timers[0][0] - time.monotonic())

    def _fire_timers(self) -> None:
        now = time.monotonic()
        due: list[Endpoint] = []
        with self._lock:
            while self._timers and self._timers[0][0] <= now:
                deadline, _, endpoint = heapq.heappop(self._timers)
                if self._deadlines.get(id(endpoint)) == deadline:
                    del self._deadlines[id(endpoint)]
                    due.append(endpoint)
        for endpoint in due:
            self._guard(endpoint.timer_expired, now)

    def _receive_batch(self) -> None:
        touched: dict[int, Endpoint] = {}
        recvfrom = self.sock.recvfrom
        recvmsg = self.sock.recvmsg if self.ecn_receive or self.gro else None
        monotonic = time.monotonic
        ecn = segment = 0
        for _ in range(RECV_BATCH):
            try:
                if recvmsg is not None:
                    data, ancdata, _, addr = recvmsg(RECV_BUFFER, CMSG_SPACE)
                    ecn, segment = _received_cmsgs(ancdata) if ancdata else (NOT_ECT, 0)
                else:
                    data, addr = recvfrom(RECV_BUFFER)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # an ICMP error for something we sent
                log.debug("recvfrom: %s", exc)
                self._read_errors()
                continue
            # Each datagram's own arrival time: RTT samples must not predate sends that
            # application threads made while this batch was being read.
            now = monotonic()
            if segment and len(data) > segment:
                segments = [data[i : i + segment] for i in range(0, len(data), segment)]
                self._deliver_segments(segments, addr, now, ecn, touched)
                continue
            endpoint = self._route(data, addr, now)
            if endpoint is not None:
                self._guard(endpoint.datagrams_received, [data], addr, now, ecn)
                touched[id(endpoint)] = endpoint
        now = monotonic()
        for endpoint in touched.values():
            self._guard(endpoint.flush, now)

    def _read_errors(self) -> None:
        """Hand the ICMP errors queued on the socket to the connections of a tunnel
        that serves no listener: a client whose server's port is closed hears so at
        once, as a TCP connect does, instead of at its handshake timeout. A server's
        tunnel only empties the queue: an ICMP error is easily forged, and one
        connection among thousands is not worth a search."""
        for _ in range(RECV_BATCH):
            try:
                _, ancdata, _, addr = self.sock.recvmsg(1, 512, socket.MSG_ERRQUEUE)
            except OSError:
                return  # the queue is empty
            code = _icmp_errno(ancdata)
            if code is None or self.listeners:
                continue
            for endpoint in {id(e): e for e in self.routes.values()}.values():
                self._guard(endpoint.unreachable, addr, code)

    def _deliver_segments(
        self, segments: list, addr: Address, now: float, ecn: int, touched: dict
    ) -> None:
        """A GRO batch's datagrams, handed over a run at a time: one call and one socket
        lock for the segments that go to one connection, nearly always all."""
        run: list[bytes] = []
        runner = None
        for datagram in segments:
            endpoint = self._route(datagram, addr, now)
            if endpoint is None:
                continue
            if endpoint is not runner:
                if run:
                    self._guard(runner.datagrams_received, run, addr, now, ecn)
                run, runner = [], endpoint
                touched[id(endpoint)] = endpoint
            run.append(datagram)
        if run:
            self._guard(runner.datagrams_received, run, addr, now, ecn)

    def _route(self, data: bytes, addr: Address, now: float) -> Endpoint | None:
        """The connection a datagram belongs to, a new one from a listener, or None (dropped
        or answered here)."""
        if not data:
            return None
        if not data[0] & HEADER_FORM_BIT:
            # Nearly every datagram: a short header, whose DCID is ours at a fixed place.
            endpoint = self.routes.get(data[1 : 1 + self.cid_length])
            if endpoint is not None:
                return endpoint
        try:
            # The QUIC bit may be greased (RFC 9287): the connection, which knows whether
            # it allowed that, checks it; a new connection's first Initial must have it.
            header = parse_header(data, 0, self.cid_length, fixed_bit_required=False)
        except QuicError:
            return None
        endpoint = self.routes.get(header.dcid)
        if endpoint is not None:
            return endpoint
        if header.packet_type is not None and not header.first_byte & FIXED_BIT:
            return None
        if header.packet_type is None:
            self._version_negotiation(data, header.dcid, header.scid, addr)
            return None
        if header.packet_type == PacketType.ONE_RTT:
            endpoint = self.reset_routes.get(bytes(data[-STATELESS_RESET_TOKEN_LENGTH:]))
            if endpoint is None:
                self._stateless_reset(data, header.dcid, addr, now)
            return endpoint  # a Stateless Reset for one of ours: it checks the token
        if header.packet_type != PacketType.INITIAL or len(data) < MIN_INITIAL_SIZE:
            return None
        keys: dict[int, PacketKeys] = {}
        crypto = initial_crypto(data, self.cid_length, keys)
        if crypto is None:
            return None  # not a client's Initial: it makes no connection
        candidates = self._listeners_for(crypto, header, addr)
        for listener in candidates:
            endpoint = self._guard(
                listener.accept_initial,
                self,
                data,
                addr,
                header.dcid,
                now,
                keys.get(header.version),
            )
            if endpoint is not None:
                return endpoint
        return None

    def _stateless_reset(self, data: bytes, dcid: bytes, addr: Address, now: float) -> None:
        """RFC 9000 §10.3: a short-header packet for a connection we do not know (we
        restarted, or it ended) gets a Stateless Reset, so the peer stops at once instead
        of timing out; a bounded number a second, so it cannot be used as a flood."""
        self._reset_budget = min(
            RESETS_PER_SECOND, self._reset_budget + (now - self._reset_time) * RESETS_PER_SECOND
        )
        self._reset_time = now
        if self._reset_budget < 1:
            return
        reset = stateless_reset(self.reset_key, dcid, len(data))
        if reset is not None:
            self._reset_budget -= 1
            self.sendto(reset, addr)

    def _listeners_for(self, crypto: bytes, header: Header, addr: Address) -> list[Listener]:
        """The listeners to offer a new Initial to, in order (DESIGN §1).

        With several listeners, or any with an ALPN list, the client's ALPN chooses: for
        each protocol the client offers, in its order of preference, the listeners
        serving it, in registration order. A listener without an ALPN list is a wildcard,
        offered the client only when no specific listener matches; with neither, the
        client is refused here with no_application_protocol and no connection is made.

        When the ALPN cannot be read from ``crypto``, the CRYPTO data of this first
        datagram (a ClientHello split across datagrams, or none offered), every listener
        is offered the Initial in registration order, as with a single listener.
        """
        listeners = list(self.listeners)
        if not listeners:
            return []
        served = [(listener, listener.alpn_list()) for listener in listeners]
        if len(listeners) == 1 and not served[0][1]:
            return listeners
        offered = alpns_in(crypto)
        if offered is None:
            return listeners
        chosen: list[Listener] = []
        for protocol in offered:
            for listener, names in served:
                if protocol in names and listener not in chosen:
                    chosen.append(listener)
        if chosen:
            return chosen
        wildcards = [listener for listener, names in served if not names]
        if not wildcards:
            self._refuse(header, addr, offered)
        return wildcards

    def _refuse(self, header: Header, addr: Address, offered: list[bytes]) -> None:
        """Close a client whose protocols no listener serves, statelessly (RFC 7301 §3.2,
        RFC 9001 §4.8): one small Initial in answer to each of its Initials."""
        log.debug("no listener serves ALPN %s from %s: refusing", offered, addr)
        self.sendto(no_application_protocol_close(header, os.urandom(self.cid_length)), addr)

    def _version_negotiation(self, data: bytes, dcid: bytes, scid: bytes, addr: Address) -> None:
        """RFC 9000 §6.1: answer an unknown version, but only to a datagram large enough to
        be an Initial, so we cannot be used to amplify."""
        if len(data) < MIN_INITIAL_SIZE or not self.listeners:
            return
        versions = encode_version_negotiation(scid, dcid, list(SUPPORTED_VERSIONS), grease=True)
        self.sendto(versions, addr)

    @staticmethod
    def _guard(func: Callable, *args):
        """Run one connection's handler; a bug triggered by one peer must not stop the I/O
        thread that serves every other connection."""
        try:
            return func(*args)
        except Exception:
            log.exception("connection handler failed")
            return None


def udp_socket(family: int) -> socket.socket:
    """An unbound UDP socket set up as a tunnel's: large buffers, dual-stack for IPv6,
    and no fragmentation (RFC 9000 §14)."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
        except OSError:
            pass
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    forbid_fragmentation(sock, family)
    receive_errors(sock, family)
    return sock


def receive_errors(sock: socket.socket, family: int) -> None:
    """Queue ICMP errors for what ``sock`` sends (see Tunnel._read_errors): without it
    an unconnected UDP socket never hears them. Where the kernel refuses, nothing
    changes but that a client learns of a closed port only by its timeout."""
    options = [(socket.IPPROTO_IP, IP_RECVERR)]
    if family == socket.AF_INET6:
        options.append((socket.IPPROTO_IPV6, IPV6_RECVERR))
    for level, option in options:
        try:
            sock.setsockopt(level, option, 1)
        except OSError:
            pass


def enable_ecn(sock: socket.socket, family: int) -> tuple[int, bool]:
    """Mark what ``sock`` sends ECT(0) and ask for the codepoint of what it receives.

    Returns the codepoint its datagrams now carry (NOT_ECT if the kernel refused) and
    whether received datagrams come with theirs. A dual-stack socket sets both the
    IPv6 and the IPv4 options, the latter for peers at IPv4-mapped addresses.
    """
    codepoint = ECT_0 if set_ecn_codepoint(sock, family, ECT_0) else NOT_ECT
    if codepoint == NOT_ECT:
        set_ecn_codepoint(sock, family, NOT_ECT)  # undo a half-applied setting
    options = [(socket.IPPROTO_IP, socket.IP_RECVTOS)]
    if family == socket.AF_INET6:
        options.append((socket.IPPROTO_IPV6, socket.IPV6_RECVTCLASS))
    try:
        for level, option in options:
            sock.setsockopt(level, option, 1)
    except OSError as exc:
        log.info("no ECN codepoints on received datagrams: %s", exc)
        return codepoint, False
    return codepoint, True


def enable_gro(sock: socket.socket) -> bool:
    """Ask for runs of datagrams in one read (UDP GRO, Linux 5.0+); False where the
    kernel does not have it, and datagrams then come one per read."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError as exc:
        log.info("UDP GRO unavailable (%s): reading datagrams one by one", exc)
        return False
    return True


def _icmp_errno(ancdata: list) -> int | None:
    """The errno of an error-queue read's sock_extended_err, if it has one."""
    for level, kind, data in ancdata:
        recverr = (level, kind) in (
            (socket.IPPROTO_IP, IP_RECVERR),
            (socket.IPPROTO_IPV6, IPV6_RECVERR),
        )
        if recverr and len(data) >= _EE_ERRNO.size:
            return _EE_ERRNO.unpack_from(data)[0]
    return None


def _received_cmsgs(ancdata: list) -> tuple[int, int]:
    """The ECN codepoint and the GRO segment size (0: one datagram) of a read."""
    ecn, segment = NOT_ECT, 0
    for level, kind, data in ancdata:
        if level == SOL_UDP and kind == UDP_GRO:
            segment = _GRO_SIZE.unpack_from(data)[0]
        else:
            ecn = data[ECN_BYTE] & ECN_MASK
    return ecn, segment


def set_ecn_codepoint(sock: socket.socket, family: int, codepoint: int) -> bool:
    """Set the TOS / Traffic Class byte of everything ``sock`` sends; False if refused."""
    options = [(socket.IPPROTO_IP, socket.IP_TOS)]
    if family == socket.AF_INET6:
        options.append((socket.IPPROTO_IPV6, socket.IPV6_TCLASS))
    try:
        for level, option in options:
            sock.setsockopt(level, option, codepoint)
    except OSError as exc:
        log.info("cannot set the ECN codepoint of sent datagrams: %s", exc)
        return False
    return True


_registry: dict[tuple, Tunnel] = {}
_registry_lock = threading.Lock()


def get_tunnel(local_addr: Address, cid_length: int, *, wait: bool = False) -> Tunnel:
    """The tunnel bound to ``local_addr``, created on first use. Port 0 always makes a new
    tunnel on an ephemeral port, as a client's implicit bind does. With ``wait`` (a
    client's connect) a new ephemeral tunnel's I/O thread waits for its first datagram
    sent (or timer, or listener), since nothing can reach an unknown port before. A
    tunnel another user shares runs at once."""
    with _registry_lock:
        key = (local_addr[0], local_addr[1])
        tunnel = _registry.get(key) if local_addr[1] else None
        if tunnel is None or tunnel._closed:
            start = not (wait and local_addr[1] == 0)
            tunnel = Tunnel(local_addr, cid_length, start=start)
            _registry[(tunnel.local_addr[0], tunnel.local_addr[1])] = tunnel
            if local_addr[1]:
                _registry[key] = tunnel
        else:
            tunnel.start()
        tunnel.users += 1
        return tunnel


def adopt_tunnel(tunnel: Tunnel, local_addr: Address) -> None:
    """Make ``tunnel`` the one ``get_tunnel`` returns for ``local_addr`` and for the
    address it is bound to, holding one use of it: a worker process registers the
    tunnel of its reuseport socket so that the listener it then binds serves it."""
    with _registry_lock:
        _registry[(local_addr[0], local_addr[1])] = tunnel
        _registry[(tunnel.local_addr[0], tunnel.local_addr[1])] = tunnel
        tunnel.users += 1


def put_tunnel(tunnel: Tunnel) -> None:
    """Drop one user; the last one closes the UDP socket."""
    with _registry_lock:
        tunnel.users -= 1
        if tunnel.users > 0:
            return
        for key in [k for k, t in _registry.items() if t is tunnel]:
            del _registry[key]
    tunnel.close()
