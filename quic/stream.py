"""Streams (RFC 9000 §2-4): send and receive halves, reassembly, flow control, limits.

Sans-I/O like the rest of the core. Data lives in one ``bytearray`` per direction with
a base offset; acknowledged or consumed bytes are cut from the front (CPython makes
that cheap), so bulk transfers never re-join or copy whole buffers.
"""

from __future__ import annotations

from bisect import bisect_left

from . import uapi
from .errors import QuicError, TransportError
from .frame import FrameType

MAX_OFFSET = (1 << 62) - 1
DEFAULT_SEND_BUFFER = 1 << 20
CRYPTO_BUFFER_LIMIT = 64 * 1024


class StreamStateError(Exception):
    """An operation the stream's state does not allow (socket: EINVAL)."""


class StreamLimitError(Exception):
    """The peer's MAX_STREAMS forbids opening another stream now (socket: EAGAIN)."""


def stream_is_uni(sid: int) -> bool:
    return bool(sid & uapi.QUIC_STREAM_TYPE_UNI_MASK)


def stream_is_local(sid: int, is_client: bool) -> bool:
    """Whether this endpoint opened ``sid`` (bit 0 is 1 for server-initiated streams)."""
    return bool(sid & uapi.QUIC_STREAM_TYPE_SERVER_MASK) != is_client


class RangeSet:
    """Disjoint half-open ranges [start, end), kept sorted."""

    __slots__ = ("ranges",)

    def __init__(self) -> None:
        self.ranges: list[list[int]] = []

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def add(self, start: int, end: int) -> None:
        if start >= end:
            return
        ranges = self.ranges
        i = bisect_left(ranges, [start, start])
        if i > 0 and ranges[i - 1][1] >= start:
            i -= 1
        j = i
        while j < len(ranges) and ranges[j][0] <= end:
            start = min(start, ranges[j][0])
            end = max(end, ranges[j][1])
            j += 1
        ranges[i:j] = [[start, end]]

    def subtract(self, start: int, end: int) -> None:
        if start >= end:
            return
        out = []
        for s, e in self.ranges:
            if e <= start or s >= end:
                out.append([s, e])
                continue
            if s < start:
                out.append([s, start])
            if e > end:
                out.append([end, e])
        self.ranges = out

    def first(self) -> tuple[int, int]:
        return self.ranges[0][0], self.ranges[0][1]

    def pop_front(self, upto: int) -> None:
        """Drop everything below ``upto``."""
        self.subtract(0, upto)


class SendStream:
    """The sending half: buffered until acknowledged, retransmitted by range on loss."""

    __slots__ = (
        "_acked",
        "_base",
        "_buf",
        "_fin_acked",
        "_fin_lost",
        "_fin_sent",
        "_lost",
        "buffer_limit",
        "fin_written",
        "final_size",
        "max_stream_data",
        "reset_code",
        "sent_end",
        "state",
        "write_end",
    )

    def __init__(self, max_stream_data: int = 0, buffer_limit: int = DEFAULT_SEND_BUFFER) -> None:
        self._buf = bytearray()
        self._base = 0  # offset of _buf[0]; everything below is acknowledged
        self.write_end = 0
        self.sent_end = 0
        self._acked = RangeSet()
        self._lost = RangeSet()
        self.fin_written = False
        self._fin_sent = False
        self._fin_lost = False
        self._fin_acked = False
        self.final_size: int | None = None
        self.max_stream_data = max_stream_data
        self.buffer_limit = buffer_limit
        self.state = uapi.QUIC_STREAM_SEND_STATE_READY
        self.reset_code: int | None = None

    def write(self, data: bytes | memoryview, fin: bool = False) -> None:
        if self.fin_written or self.reset_code is not None:
            raise StreamStateError("stream already finished or reset")
        self._buf += data
        self.write_end += len(data)
        if fin:
            self.fin_written = True
            self.final_size = self.write_end
        if self.state == uapi.QUIC_STREAM_SEND_STATE_READY:
            self.state = uapi.QUIC_STREAM_SEND_STATE_SEND

    def room(self) -> int:
        """Bytes ``write`` may add before the writer should wait for acknowledgments."""
        if self.fin_written or self.reset_code is not None:
            return 0
        return max(0, self.buffer_limit - (self.write_end - self._base))

    def _fin_pending(self) -> bool:
        return self.fin_written and (not self._fin_sent or self._fin_lost) and not self._fin_acked

    def has_data(self) -> bool:
        if self.reset_code is not None:
            return False
        if self._lost:
            return True
        if self.sent_end < min(self.write_end, self.max_stream_data):
            return True
        return self._fin_pending() and self.sent_end == self.write_end

    def blocked(self) -> bool:
        """Data waits but the peer's MAX_STREAM_DATA holds it back."""
        return self.sent_end < self.write_end and self.sent_end >= self.max_stream_data

    def next_frame(
        self, max_payload: int, connection_credit: int
    ) -> tuple[int, memoryview | bytes, bool, int] | None:
        """(offset, data, fin, new bytes) for one STREAM frame of at most ``max_payload``
        data bytes: lost ranges first, then new data within stream and connection credit."""
        if self.reset_code is not None or max_payload <= 0:
            return None
        if self._lost:
            start, end = self._lost.first()
            end = min(end, start + max_payload)
            self._lost.subtract(start, end)
            fin = self.fin_written and end == self.write_end and self._fin_lost
            if fin:
                self._fin_lost = False
            return start, self._slice(start, end), fin, 0
        limit = min(self.write_end, self.max_stream_data, self.sent_end + max_payload)
        limit = min(limit, self.sent_end + max(connection_credit, 0))
        start = self.sent_end
        if limit <= start and not (self._fin_pending() and start == self.write_end):
            return None
        self.sent_end = limit
        fin = self.fin_written and limit == self.write_end and self._fin_pending()
        if fin:
            self._fin_sent = True
            self._fin_lost = False
            self.state = uapi.QUIC_STREAM_SEND_STATE_SENT
        return start, self._slice(start, limit), fin, limit - start

    def _slice(self, start: int, end: int) -> bytes:
        base = self._base
        return bytes(self._buf[start - base : end - base])

    def on_acked(self, offset: int, length: int, fin: bool) -> None:
        if self.reset_code is not None:
            return
        end = offset + length
        if end > self._base:
            self._acked.add(max(offset, self._base), end)
        self._lost.subtract(offset, end)
        if fin:
            self._fin_acked = True
            self._fin_lost = False
        if self._acked and self._acked.ranges[0][0] <= self._base:
            new_base = self._acked.ranges[0][1]
            del self._buf[: new_base - self._base]
            self._base = new_base
            self._acked.pop_front(new_base)
        if self._fin_acked and self._base == self.write_end:
            self.state = uapi.QUIC_STREAM_SEND_STATE_RECVD

    def on_lost(self, offset: int, length: int, fin: bool) -> None:
        if self.reset_code is not None or self.state == uapi.QUIC_STREAM_SEND_STATE_RECVD:
            return
        start = max(offset, self._base)
        end = offset + length
        if start < end:
            self._lost.add(start, end)
            for s, e in self._acked.ranges:
                if s < end and e > start:
                    self._lost.subtract(s, e)
        if fin and not self._fin_acked:
            self._fin_lost = True

    def on_max_stream_data(self, limit: int) -> None:
        if limit > self.max_stream_data:
            self.max_stream_data = limit

    def reset(self, error_code: int) -> int:
        """Abandon the stream (RESET_STREAM); returns the final size to announce."""
        if self.state in (
            uapi.QUIC_STREAM_SEND_STATE_RECVD,
            uapi.QUIC_STREAM_SEND_STATE_RESET_RECVD,
        ):
            raise StreamStateError("stream already fully acknowledged")
        if self.reset_code is None:
            self.reset_code = error_code
            self.final_size = self.sent_end
            self._buf = bytearray()
            self._lost = RangeSet()
            self.state = uapi.QUIC_STREAM_SEND_STATE_RESET_SENT
        return self.final_size

    def on_stop_sending(self, error_code: int) -> int | None:
        """The peer asked us to stop; the answer is a RESET_STREAM (RFC 9000 §3.5)."""
        if self.reset_code is not None or self.state == uapi.QUIC_STREAM_SEND_STATE_RECVD:
            return None
        return self.reset(error_code)

    def on_reset_acked(self) -> None:
        self.state = uapi.QUIC_STREAM_SEND_STATE_RESET_RECVD

    @property
    def terminal(self) -> bool:
        return self.state in (
            uapi.QUIC_STREAM_SEND_STATE_RECVD,
            uapi.QUIC_STREAM_SEND_STATE_RESET_SENT,
            uapi.QUIC_STREAM_SEND_STATE_RESET_RECVD,
        )


class RecvStream:
    """The receiving half: in-order delivery from out-of-order frames, within our window."""

    __slots__ = (
        "_buf",
        "_fin_delivered",
        "_pending",
        "_read_offset",
        "final_size",
        "highest",
        "max_stream_data",
        "reset_code",
        "state",
        "stop_code",
        "update_pending",
        "window",
    )

    def __init__(self, max_stream_data: int) -> None:
        self._buf = bytearray()  # contiguous, unread data starting at _read_offset
        self._read_offset = 0
        self._pending: dict[int, bytes] = {}  # out-of-order data by offset
        self.highest = 0
        self.final_size: int | None = None
        self.max_stream_data = max_stream_data
        self.window = max_stream_data
        self.state = uapi.QUIC_STREAM_RECV_STATE_RECV
        self.reset_code: int | None = None
        self.stop_code: int | None = None
        self._fin_delivered = False
        self.update_pending = False

    @property
    def readable(self) -> int:
        return len(self._buf)

    @property
    def fin_ready(self) -> bool:
        if self._fin_delivered:
            return False
        if self.reset_code is not None:
            return True
        return self.final_size is not None and self._read_offset + len(self._buf) == self.final_size

    def _check_final(self, end: int, fin: bool, frame_type: int) -> None:
        if self.final_size is not None:
            if end > self.final_size or (fin and end != self.final_size):
                raise QuicError(TransportError.FINAL_SIZE_ERROR, frame_type, "final size changed")
        elif fin and end < self.highest:
            raise QuicError(TransportError.FINAL_SIZE_ERROR, frame_type, "final size below data")

    def on_frame(self, offset: int, data: bytes | memoryview, fin: bool) -> int:
        """Take a STREAM frame; returns how far the highest received offset grew, which is
        what counts against connection-level flow control (RFC 9000 §4.5)."""
        end = offset + len(data)
        if end > self.max_stream_data:
            raise QuicError(
                TransportError.FLOW_CONTROL_ERROR, FrameType.STREAM, "stream window exceeded"
            )
        self._check_final(end, fin, FrameType.STREAM)
        if fin:
            self.final_size = end
            if self.state == uapi.QUIC_STREAM_RECV_STATE_RECV:
                self.state = uapi.QUIC_STREAM_RECV_STATE_SIZE_KNOWN
        grown = max(0, end - self.highest)
        self.highest = max(self.highest, end)
        if self.reset_code is not None:
            return grown
        contiguous = self._read_offset + len(self._buf)
        if end > contiguous:
            if offset <= contiguous:
                self._buf += data[contiguous - offset :]
                self._drain_pending()
            else:
                known = self._pending.get(offset)
                if known is None or len(known) < len(data):
                    self._pending[offset] = bytes(data)
        if self.final_size is not None and self._read_offset + len(self._buf) == self.final_size:
            self.state = uapi.QUIC_STREAM_RECV_STATE_RECVD
        return grown

    def _drain_pending(self) -> None:
        pending = self._pending
        while pending:
            contiguous = self._read_offset + len(self._buf)
            progressed = False
            for offset in sorted(pending):
                if offset > contiguous:
                    break
                data = pending.pop(offset)
                if offset + len(data) > contiguous:
                    self._buf += data[contiguous - offset :]
                    contiguous = self._read_offset + len(self._buf)
                progressed = True
            if not progressed:
                return

    def read(self, max_bytes: int) -> tuple[bytes, bool]:
        """Up to ``max_bytes`` in order; ``fin`` is True once, with the last byte."""
        if self.reset_code is not None:
            fin = not self._fin_delivered
            self._fin_delivered = True
            self.state = uapi.QUIC_STREAM_RECV_STATE_RESET_READ
            return b"", fin
        data = bytes(self._buf[:max_bytes])
        del self._buf[:max_bytes]
        self._read_offset += len(data)
        fin = False
        if (
            self.final_size is not None
            and self._read_offset == self.final_size
            and not self._fin_delivered
        ):
            fin = True
            self._fin_delivered = True
            self.state = uapi.QUIC_STREAM_RECV_STATE_READ
        if self.final_size is None and self._read_offset > self.max_stream_data - self.window // 2:
            new_limit = self._read_offset + self.window
            if new_limit > self.max_stream_data:
                self.max_stream_data = new_limit
                self.update_pending = True
        return data, fin

    def on_reset(self, error_code: int, final_size: int) -> int:
        """RESET_STREAM: returns the flow-control growth the final size implies."""
        if final_size > self.max_stream_data:
            raise QuicError(
                TransportError.FLOW_CONTROL_ERROR,
                FrameType.RESET_STREAM,
                "final size beyond window",
            )
        if (
            self.final_size is not None and final_size != self.final_size
        ) or final_size < self.highest:
            raise QuicError(
                TransportError.FINAL_SIZE_ERROR, FrameType.RESET_STREAM, "final size changed"
            )
        grown = max(0, final_size - self.highest)
        self.highest = self.final_size = final_size
        if self.reset_code is None and self.state not in (
            uapi.QUIC_STREAM_RECV_STATE_RECVD,
            uapi.QUIC_STREAM_RECV_STATE_READ,
        ):
            self.reset_code = error_code
            self._buf = bytearray()
            self._pending.clear()
            self.state = uapi.QUIC_STREAM_RECV_STATE_RESET_RECVD
        return grown

    def stop_sending(self, error_code: int) -> None:
        self.stop_code = error_code

    def window_update_lost(self) -> None:
        self.update_pending = True

    @property
    def terminal(self) -> bool:
        return self._fin_delivered


class Stream:
    """A stream ID with the halves its direction allows."""

    __slots__ = ("recv", "send", "stream_id")

    def __init__(self, stream_id: int, send: SendStream | None, recv: RecvStream | None) -> None:
        self.stream_id = stream_id
        self.send = send
        self.recv = recv

    @property
    def finished(self) -> bool:
        return (self.send is None or self.send.terminal) and (
            self.recv is None or self.recv.terminal
        )


class CryptoStream:
    """CRYPTO data of one encryption level: offsets and retransmission as for streams,
    without flow control, and a bounded reassembly buffer (RFC 9000 §7.5)."""

    __slots__ = ("_recv", "_send", "_sent_unacked")

    def __init__(self) -> None:
        self._send = SendStream(MAX_OFFSET, buffer_limit=MAX_OFFSET)
        self._recv = RecvStream(CRYPTO_BUFFER_LIMIT)

    def write(self, data: bytes) -> None:
        self._send.write(data)

    def next_frame(self, max_payload: int) -> tuple[int, bytes] | None:
        chunk = self._send.next_frame(max_payload, MAX_OFFSET)
        if chunk is None:
            return None
        offset, data, _, _ = chunk
        return (offset, data) if data else None

    def on_acked(self, offset: int, length: int) -> None:
        self._send.on_acked(offset, length, False)

    def on_lost(self, offset: int, length: int) -> None:
        self._send.on_lost(offset, length, False)

    def retransmit_unacked(self) -> None:
        """A PTO: everything sent and not yet acknowledged goes out again."""
        send = self._send
        send.on_lost(send._base, send.sent_end - send._base, False)

    def on_frame(self, offset: int, data: bytes | memoryview) -> None:
        recv = self._recv
        recv.max_stream_data = recv._read_offset + len(recv._buf) + CRYPTO_BUFFER_LIMIT
        if offset + len(data) > recv.max_stream_data:
            raise QuicError(
                TransportError.CRYPTO_BUFFER_EXCEEDED,
                FrameType.CRYPTO,
                "too much CRYPTO data buffered",
            )
        if offset + len(data) <= recv._read_offset:
            return
        recv.on_frame(offset, data, False)

    def read(self) -> bytes:
        return self._recv.read(len(self._recv._buf))[0]


class FlowController:
    """Connection-level flow control (MAX_DATA), one instance per direction."""

    __slots__ = ("consumed", "limit", "used", "window")

    def __init__(self, limit: int) -> None:
        self.limit = limit  # the peer's MAX_DATA (send) or ours (receive)
        self.window = limit
        self.used = 0  # send: bytes sent; receive: highest offsets received, summed
        self.consumed = 0  # receive: bytes the application read

    @property
    def credit(self) -> int:
        return self.limit - self.used

    def on_max_data(self, limit: int) -> None:
        if limit > self.limit:
            self.limit = limit

    def consume(self, n: int) -> None:
        self.used += n

    def blocked(self) -> bool:
        return self.used >= self.limit

    def on_received(self, n: int) -> None:
        self.used += n
        if self.used > self.limit:
            raise QuicError(
                TransportError.FLOW_CONTROL_ERROR, FrameType.STREAM, "connection window exceeded"
            )

    def on_consumed(self, n: int) -> None:
        self.consumed += n

    def max_data_update(self) -> int | None:
        """A larger MAX_DATA once the application has read half the window."""
        if self.consumed > self.limit - self.window // 2:
            new_limit = self.consumed + self.window
            if new_limit > self.limit:
                self.limit = new_limit
                return new_limit
        return None


class StreamManager:
    """Which streams exist, who may open more, and their per-stream windows."""

    def __init__(self, is_client: bool, local_params) -> None:
        self.is_client = is_client
        self.local = local_params
        self.peer = None
        self.streams: dict[int, Stream] = {}
        # Streams we may open: the peer's limits (0 until its parameters arrive).
        self.peer_max = [0, 0]  # [bidi, uni]
        self.next_local = [0, 0]  # count opened by us, per type
        # Streams the peer may open: our limits and how many it opened / we closed.
        self.local_max = [
            local_params.initial_max_streams_bidi,
            local_params.initial_max_streams_uni,
        ]
        self.local_initial = list(self.local_max)
        self.next_peer = [0, 0]
        self.closed_peer = [0, 0]

    # identities

    def _sid(self, index: int, uni: bool, local: bool) -> int:
        server = (not self.is_client) if local else self.is_client
        return (index << 2) | (2 if uni else 0) | (1 if server else 0)

    def set_peer_params(self, peer) -> None:
        self.peer = peer
        self.peer_max = [peer.initial_max_streams_bidi, peer.initial_max_streams_uni]
        for stream in self.streams.values():
            if stream.send is not None:
                stream.send.on_max_stream_data(self._send_window(stream.stream_id))

    def _send_window(self, sid: int) -> int:
        peer = self.peer
        if peer is None:
            return 0
        if stream_is_uni(sid):
            return peer.initial_max_stream_data_uni
        if stream_is_local(sid, self.is_client):
            return peer.initial_max_stream_data_bidi_remote
        return peer.initial_max_stream_data_bidi_local

    def _recv_window(self, sid: int) -> int:
        local = self.local
        if stream_is_uni(sid):
            return local.initial_max_stream_data_uni
        if stream_is_local(sid, self.is_client):
            return local.initial_max_stream_data_bidi_local
        return local.initial_max_stream_data_bidi_remote

    def _create(self, sid: int) -> Stream:
        local = stream_is_local(sid, self.is_client)
        uni = stream_is_uni(sid)
        send = SendStream(self._send_window(sid)) if (local or not uni) else None
        recv = RecvStream(self._recv_window(sid)) if (not local or not uni) else None
        stream = Stream(sid, send, recv)
        self.streams[sid] = stream
        return stream

    def get(self, sid: int) -> Stream | None:
        return self.streams.get(sid)

    def was_closed(self, sid: int) -> bool:
        """Opened once and gone now: IDs are used in order, so no set of them is kept."""
        if sid in self.streams:
            return False
        uni = stream_is_uni(sid)
        opened = self.next_local if stream_is_local(sid, self.is_client) else self.next_peer
        return (sid >> 2) < opened[uni]

    # opening our own

    def can_open_local(self, uni: bool) -> bool:
        return self.next_local[uni] < self.peer_max[uni]

    def open_local(self, uni: bool) -> Stream:
        if not self.can_open_local(uni):
            raise StreamLimitError("peer's stream limit reached")
        sid = self._sid(self.next_local[uni], uni, local=True)
        self.next_local[uni] += 1
        return self._create(sid)

    def open_specific(self, sid: int) -> Stream:
        """Open ``sid`` and every lower stream of its type (lxin/quic semantics)."""
        if sid in self.streams:
            return self.streams[sid]
        if self.was_closed(sid):
            raise StreamStateError("stream already closed")
        if not stream_is_local(sid, self.is_client):
            raise StreamStateError("the peer has not opened that stream")
        uni = stream_is_uni(sid)
        index = sid >> 2
        if index >= self.peer_max[uni]:
            raise StreamLimitError("peer's stream limit reached")
        while self.next_local[uni] <= index:
            self._create(self._sid(self.next_local[uni], uni, local=True))
            self.next_local[uni] += 1
        return self.streams[sid]

    # streams the peer opens

    def get_or_create_peer(self, sid: int, frame_type: int) -> Stream | None:
        """The stream a peer frame names; None for a stream already closed and forgotten
        (the frame is then a late retransmission and changes nothing)."""
        stream = self.streams.get(sid)
        if stream is not None:
            return stream
        uni = stream_is_uni(sid)
        index = sid >> 2
        if stream_is_local(sid, self.is_client):
            if index >= self.next_local[uni]:
                raise QuicError(
                    TransportError.STREAM_STATE_ERROR, frame_type, "stream not opened by us"
                )
            return None
        if index >= self.local_max[uni]:
            raise QuicError(
                TransportError.STREAM_LIMIT_ERROR, frame_type, "peer exceeded its stream limit"
            )
        if index < self.next_peer[uni]:
            return None  # opened and closed already
        while self.next_peer[uni] <= index:
            self._create(self._sid(self.next_peer[uni], uni, local=False))
            self.next_peer[uni] += 1
        return self.streams[sid]

    def on_max_streams(self, bidi: bool, maximum: int) -> bool:
        uni = not bidi
        if maximum > self.peer_max[uni]:
            self.peer_max[uni] = maximum
            return True
        return False

    def local_max_streams(self, uni: bool) -> int:
        return self.local_max[uni]

    def max_streams_update(self, uni: bool) -> int | None:
        """Raise our MAX_STREAMS as peer streams close, keeping the peer's allowance near
        its initial size; announced once half of it is used up."""
        initial = self.local_initial[uni]
        target = self.closed_peer[uni] + initial
        if target - self.local_max[uni] >= max(1, initial // 2):
            self.local_max[uni] = target
            return target
        return None

    def window_updates(self) -> list[Stream]:
        """Streams whose larger receive window must be announced (MAX_STREAM_DATA)."""
        due = []
        for stream in self.streams.values():
            recv = stream.recv
            if recv is not None and recv.update_pending:
                recv.update_pending = False
                due.append(stream)
        return due

    def maybe_forget(self, sid: int) -> None:
        stream = self.streams.get(sid)
        if stream is None or not stream.finished:
            return
        del self.streams[sid]
        if not stream_is_local(sid, self.is_client):
            self.closed_peer[stream_is_uni(sid)] += 1
