"""Streams (RFC 9000 §2-4): send and receive halves, reassembly, flow control, limits.

Sans-I/O like the rest of the core. Bulk transfers push hundreds of megabytes through
these classes, so data is never copied per byte or re-joined as a whole: the send side
keeps immutable chunks and hands out memoryview slices of them, the receive side keeps
only bytes it has not seen, in a queue of ready chunks plus sorted out-of-order segments.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Iterator

from . import uapi
from .errors import QuicError, TransportError
from .frame import FrameType

MAX_OFFSET = (1 << 62) - 1
DEFAULT_SEND_BUFFER = 1 << 20
# A window gives the peer at most one window per round trip, so the configured ones
# (lxin's 1 MiB a stream, 2 MiB a connection) cap a 40 ms path at about 25 MB/s. A
# window the application drains within WINDOW_GROWTH_RTTS round trips doubles at its
# next update, as Chromium's QUIC and Linux TCP's receive autotuning grow theirs, up to
# these: what a receiver may have to hold per stream and per connection when the
# application stops reading. Chromium and quiche stop at the same 16 and 24 MiB. Since
# the update goes out when half the window is consumed, a stream keeps about half its
# window in flight: 8 MiB, 84 MB/s at 100 ms. The send buffer follows the congestion
# window likewise.
MAX_STREAM_WINDOW = 16 << 20
# Pieces of data held past gaps that a stream may have before they must average at
# least MIN_FRAGMENT bytes (see Reassembly.too_fragmented).
FRAGMENTS_FREE = 1024
MIN_FRAGMENT = 256
MAX_CONNECTION_WINDOW = 24 << 20
MAX_SEND_BUFFER = 16 << 20
WINDOW_GROWTH_RTTS = 2
CRYPTO_BUFFER_LIMIT = 64 * 1024
# Writes below this size are gathered into one chunk, so a chatty writer does not leave
# thousands of tiny objects behind; larger ones are kept as they are, without a copy.
CHUNK_MIN = 16 * 1024

_S_READY = uapi.QUIC_STREAM_SEND_STATE_READY
_S_SEND = uapi.QUIC_STREAM_SEND_STATE_SEND
_S_SENT = uapi.QUIC_STREAM_SEND_STATE_SENT
_S_RECVD = uapi.QUIC_STREAM_SEND_STATE_RECVD
_S_RESET_SENT = uapi.QUIC_STREAM_SEND_STATE_RESET_SENT
_S_RESET_RECVD = uapi.QUIC_STREAM_SEND_STATE_RESET_RECVD
_R_RECV = uapi.QUIC_STREAM_RECV_STATE_RECV
_R_SIZE_KNOWN = uapi.QUIC_STREAM_RECV_STATE_SIZE_KNOWN
_R_RECVD = uapi.QUIC_STREAM_RECV_STATE_RECVD
_R_READ = uapi.QUIC_STREAM_RECV_STATE_READ
_R_RESET_RECVD = uapi.QUIC_STREAM_RECV_STATE_RESET_RECVD
_R_RESET_READ = uapi.QUIC_STREAM_RECV_STATE_RESET_READ

# Frames that act on the receiving half of a stream, and those that act on the sending half.
_RECV_FRAMES = frozenset(
    {FrameType.RESET_STREAM, FrameType.STREAM_DATA_BLOCKED, *range(0x08, 0x10)}
)
_SEND_FRAMES = frozenset({FrameType.MAX_STREAM_DATA, FrameType.STOP_SENDING})


class StreamStateError(Exception):
    """An operation the stream's state does not allow (socket: EINVAL)."""


class StreamGoneError(StreamStateError):
    """The stream was opened once and is closed and forgotten now (socket: ENOSTR)."""


class StreamLimitError(Exception):
    """The peer's MAX_STREAMS forbids opening another stream now (socket: EAGAIN)."""


# ---------------------------------------------------------------------------
# stream IDs (RFC 9000 §2.1): bit 0 the initiator, bit 1 the direction


def stream_is_uni(sid: int) -> bool:
    return bool(sid & uapi.QUIC_STREAM_TYPE_UNI_MASK)


def stream_is_server_initiated(sid: int) -> bool:
    return bool(sid & uapi.QUIC_STREAM_TYPE_SERVER_MASK)


def stream_is_local(sid: int, is_client: bool) -> bool:
    """Whether this endpoint opened ``sid``."""
    return bool(sid & uapi.QUIC_STREAM_TYPE_SERVER_MASK) != is_client


def stream_type(sid: int) -> int:
    return sid & uapi.QUIC_STREAM_TYPE_MASK


def stream_index(sid: int) -> int:
    """The stream's ordinal within its type; stream limits count these."""
    return sid >> 2


def make_stream_id(index: int, uni: bool, server: bool) -> int:
    return (index << 2) | (uapi.QUIC_STREAM_TYPE_UNI_MASK if uni else 0) | int(server)


# ---------------------------------------------------------------------------


class RangeSet:
    """Disjoint, non-adjacent half-open ranges [start, end), sorted; two parallel lists
    so that every lookup is a bisect rather than a scan."""

    __slots__ = ("ends", "starts")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def __bool__(self) -> bool:
        return bool(self.starts)

    def __len__(self) -> int:
        return len(self.starts)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return zip(self.starts, self.ends, strict=True)

    def add(self, start: int, end: int) -> None:
        if start >= end:
            return
        starts, ends = self.starts, self.ends
        i = bisect_left(ends, start)
        j = bisect_right(starts, end)
        if i < j:
            start = min(start, starts[i])
            end = max(end, ends[j - 1])
        starts[i:j] = [start]
        ends[i:j] = [end]

    def subtract(self, start: int, end: int) -> None:
        if start >= end:
            return
        starts, ends = self.starts, self.ends
        i = bisect_right(ends, start)
        j = bisect_left(starts, end)
        if i >= j:
            return
        new_starts, new_ends = [], []
        if starts[i] < start:
            new_starts.append(starts[i])
            new_ends.append(start)
        if ends[j - 1] > end:
            new_starts.append(end)
            new_ends.append(ends[j - 1])
        starts[i:j] = new_starts
        ends[i:j] = new_ends

    def gaps(self, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of [start, end) this set does not cover."""
        starts, ends = self.starts, self.ends
        out = []
        i = bisect_right(ends, start)
        while start < end:
            if i < len(starts) and starts[i] <= start:
                start = ends[i]
                i += 1
                continue
            stop = min(end, starts[i]) if i < len(starts) else end
            out.append((start, stop))
            start = stop
        return out

    def first(self) -> tuple[int, int]:
        return self.starts[0], self.ends[0]


# ---------------------------------------------------------------------------
# sending half


class SendStream:
    """The sending half (RFC 9000 §3.1): data is held until acknowledged and resent by
    range when lost. The buffer is a list of immutable chunks, so frames are memoryview
    slices that stay valid however the buffer changes afterwards."""

    __slots__ = (
        "_acked",
        "_base",
        "_chunks",
        "_fin_acked",
        "_fin_lost",
        "_fin_sent",
        "_frozen_end",
        "_head",
        "_lost",
        "_starts",
        "_tail",
        "blocked_reported",
        "buffer_limit",
        "fin_written",
        "final_size",
        "max_stream_data",
        "reset_code",
        "sent_end",
        "state",
        "stop_code",
        "write_end",
    )

    def __init__(self, max_stream_data: int = 0, buffer_limit: int = DEFAULT_SEND_BUFFER) -> None:
        self._chunks: list[bytes] = []
        self._starts: list[int] = []  # stream offset of each chunk
        self._head = 0  # chunks before this index are acknowledged and dropped
        self._tail = bytearray()  # small writes not yet frozen into a chunk
        self._frozen_end = 0  # offset where _tail begins
        self._base = 0  # everything below is acknowledged
        self._acked = RangeSet()  # acknowledged ranges above _base
        self._lost = RangeSet()  # ranges to send again
        self._fin_sent = False
        self._fin_lost = False
        self._fin_acked = False
        self.write_end = 0
        self.sent_end = 0  # highest offset ever sent: what flow control has consumed
        self.fin_written = False
        self.final_size: int | None = None
        self.blocked_reported = -1  # the limit last named in STREAM_DATA_BLOCKED
        self.max_stream_data = max_stream_data
        self.buffer_limit = buffer_limit
        self.state = _S_READY
        self.reset_code: int | None = None
        self.stop_code: int | None = None

    # the application's side

    def check_writable(self) -> None:
        """StreamStateError once the stream takes no more data: its FIN is written, or
        it is reset (by us, or answering the peer's STOP_SENDING)."""
        if self.fin_written or self.reset_code is not None:
            raise StreamStateError("stream already finished or reset")

    def write(self, data: bytes | bytearray | memoryview, fin: bool = False) -> None:
        self.check_writable()
        n = len(data)
        if n >= CHUNK_MIN:
            self._freeze()
            self._chunks.append(bytes(data))  # no copy when ``data`` is already bytes
            self._starts.append(self.write_end)
            self._frozen_end = self.write_end + n
        elif n:
            self._tail += data
            if len(self._tail) >= CHUNK_MIN:
                self._freeze_at(self.write_end + n)
        self.write_end += n
        if fin:
            self.fin_written = True
            self.final_size = self.write_end
        if self.state == _S_READY:
            self.state = _S_SEND

    def _freeze(self) -> None:
        self._freeze_at(self.write_end)

    def _freeze_at(self, end: int) -> None:
        if self._tail:
            self._chunks.append(bytes(self._tail))
            self._starts.append(self._frozen_end)
            self._tail = bytearray()
            self._frozen_end = end

    @property
    def buffered(self) -> int:
        """Bytes written and not yet acknowledged."""
        return self.write_end - self._base

    @property
    def memory(self) -> int:
        """Bytes actually held: ``buffered`` plus the acknowledged head of one chunk."""
        if self._head < len(self._starts):
            return self.write_end - self._starts[self._head]
        return self.write_end - self._frozen_end

    def room(self, limit: int) -> int:
        """Bytes ``write`` may add before the writer should wait for acknowledgments,
        with a buffer of ``limit`` bytes (see :meth:`Connection.send_buffer`)."""
        if self.fin_written or self.reset_code is not None:
            return 0
        return max(0, limit - self.buffered)

    # what to send

    def _fin_pending(self) -> bool:
        return self.fin_written and (not self._fin_sent or self._fin_lost) and not self._fin_acked

    def has_data(self) -> bool:
        if self.reset_code is not None:
            return False
        if self._lost.starts:
            return True
        if self.sent_end < min(self.write_end, self.max_stream_data):
            return True
        return self._fin_pending() and self.sent_end == self.write_end

    def blocked(self) -> bool:
        """Data waits but the peer's MAX_STREAM_DATA holds it back (STREAM_DATA_BLOCKED)."""
        return (
            self.reset_code is None
            and self.sent_end < self.write_end
            and self.sent_end >= self.max_stream_data
        )

    def on_max_stream_data(self, limit: int) -> None:
        if limit > self.max_stream_data:
            self.max_stream_data = limit

    def next_frame(
        self, max_payload: int, connection_credit: int
    ) -> tuple[int, memoryview | bytes, bool, int] | None:
        """(offset, data, fin, new bytes) for one STREAM frame: :meth:`next_pieces`
        with its data in one piece."""
        frame = self.next_pieces(max_payload, connection_credit)
        if frame is None:
            return None
        offset, pieces, _, fin, new_bytes = frame
        return offset, pieces[0] if len(pieces) == 1 else b"".join(pieces), fin, new_bytes

    def next_pieces(
        self, max_payload: int, connection_credit: int
    ) -> tuple[int, list[memoryview | bytes], int, bool, int] | None:
        """(offset, data pieces, length, fin, new bytes) for one STREAM frame of at most
        ``max_payload`` data bytes: lost ranges first, then new data within the
        stream's and the connection's credit. ``new bytes`` is what the connection's
        credit must be charged; retransmissions cost none. The data comes as views of
        the chunks it spans, so a packet's sealing is its one copy."""
        if self.reset_code is not None or max_payload <= 0:
            return None
        lost = self._lost
        if lost.starts:
            start, end = lost.first()
            end = min(end, start + max_payload)
            lost.subtract(start, end)
            fin = self._fin_lost and end == self.write_end
            if fin:
                self._fin_lost = False
            return start, self._pieces(start, end), end - start, fin, 0
        start = self.sent_end
        limit = min(
            self.write_end,
            self.max_stream_data,
            start + max_payload,
            start + max(connection_credit, 0),
        )
        if limit <= start:
            if not (self._fin_pending() and start == self.write_end):
                return None
            limit = start
        self.sent_end = limit
        fin = limit == self.write_end and self._fin_pending()
        if fin:
            self._fin_sent = True
            self._fin_lost = False
            if self.state == _S_SEND:
                self.state = _S_SENT
        return start, self._pieces(start, limit), limit - start, fin, limit - start

    def full_frames(self, size: int, count: int, connection_credit: int) -> list[list[memoryview]]:
        """Up to ``count`` frames of exactly ``size`` new bytes each, in order from
        ``sent_end``, as :meth:`next_pieces` would give them one by one: the bulk of a
        sender's stream run, taken in one call; none when anything else comes first
        (lost data, a reset); the frame that carries the FIN is never among them."""
        if self.reset_code is not None or self._lost.starts:
            return []
        start = self.sent_end
        limit = min(self.write_end, self.max_stream_data, start + connection_credit)
        if self._fin_pending():
            limit = min(limit, self.write_end - 1)
        count = min(count, (limit - start) // size)
        if count <= 0:
            return []
        end = start + count * size
        if end > self._frozen_end:
            self._freeze()
        starts, chunks = self._starts, self._chunks
        i = bisect_right(starts, start, self._head) - 1
        base, view = starts[i], memoryview(chunks[i])
        held = len(view)
        frames = []
        for at in range(start, end, size):
            a = at - base
            if a + size <= held:  # nearly always: a frame inside one written chunk
                frames.append([view[a : a + size]])
                continue
            frames.append(self._pieces(at, at + size))
            i = bisect_right(starts, at + size, i) - 1
            base, view = starts[i], memoryview(chunks[i])
            held = len(view)
        self.sent_end = end
        return frames

    def _pieces(self, start: int, end: int) -> list[memoryview | bytes]:
        """Bytes [start, end) as views of the chunks that hold them, in order."""
        if start == end:
            return [b""]
        if end > self._frozen_end:
            self._freeze()
        starts, chunks = self._starts, self._chunks
        i = bisect_right(starts, start, self._head) - 1
        chunk = chunks[i]
        a = start - starts[i]
        if a + (end - start) <= len(chunk):
            return [memoryview(chunk)[a : a + end - start]]
        pieces = [memoryview(chunk)[a:]]
        pos = starts[i] + len(chunk)
        while pos < end:
            i += 1
            chunk = chunks[i]
            pieces.append(memoryview(chunk)[: end - pos])
            pos += len(chunk)
        return pieces

    # what the peer acknowledged or lost

    def on_acked(self, offset: int, length: int, fin: bool) -> None:
        if self.reset_code is not None or self.state == _S_RECVD:
            return
        end = offset + length
        base = self._base
        acked = self._acked
        if end > base:
            if self._lost.starts:
                self._lost.subtract(offset, end)
            if offset <= base and not acked.starts:
                # Acknowledged in order, the usual case: only the base moves.
                self._base = end
                self._drop_acked()
            else:
                acked.add(max(offset, base), end)
        if fin:
            self._fin_acked = True
            self._fin_lost = False
        if acked.starts and acked.starts[0] <= self._base:
            self._base = acked.ends[0]
            del acked.starts[0], acked.ends[0]
            self._drop_acked()
        if self._fin_acked and self._base == self.write_end:
            self.state = _S_RECVD

    def _drop_acked(self) -> None:
        base, starts, chunks = self._base, self._starts, self._chunks
        head, n = self._head, len(starts)
        while head < n and starts[head] + len(chunks[head]) <= base:
            chunks[head] = b""
            head += 1
        if head > 32 and head * 2 > n:
            del starts[:head], chunks[:head]
            head = 0
        self._head = head

    def on_lost(self, offset: int, length: int, fin: bool) -> None:
        """Queue [offset, offset+length) again, except what was acknowledged since."""
        if self.reset_code is not None or self.state == _S_RECVD:
            return
        start = max(offset, self._base)
        end = offset + length
        if start < end:
            lost = self._lost
            for a, b in self._acked.gaps(start, end):
                lost.add(a, b)
        if fin and not self._fin_acked:
            self._fin_lost = True

    # abandoning

    def reset(self, error_code: int) -> int:
        """Abandon the stream (RESET_STREAM, RFC 9000 §3.1); returns the final size to
        announce, the flow-control credit consumed so far. Only from Ready, Send or
        Data Sent: once all data is acknowledged, or the stream reset, there is nothing
        to abandon (lxin/quic: EINVAL from Data Recvd on)."""
        if self.state in (_S_RECVD, _S_RESET_SENT, _S_RESET_RECVD):
            raise StreamStateError("stream already fully acknowledged or reset")
        self.reset_code = error_code
        self.final_size = self.sent_end
        self._chunks, self._starts, self._head = [], [], 0
        self._tail = bytearray()
        self._frozen_end = self.write_end
        self._lost = RangeSet()
        self._acked = RangeSet()
        self.state = _S_RESET_SENT
        return self.sent_end

    def on_stop_sending(self, error_code: int) -> int | None:
        """The peer asked us to stop; returns the final size of the RESET_STREAM to send
        (RFC 9000 §3.5), or None when the stream is already reset or fully delivered."""
        self.stop_code = error_code
        if self.reset_code is not None or self.state == _S_RECVD:
            return None
        return self.reset(error_code)

    def on_reset_acked(self) -> None:
        if self.state == _S_RESET_SENT:
            self.state = _S_RESET_RECVD

    @property
    def terminal(self) -> bool:
        """Nothing more for the stream object to do. Reset Sent counts: the connection's
        control queue, not this object, carries RESET_STREAM until acknowledged."""
        return self.state in (_S_RECVD, _S_RESET_SENT, _S_RESET_RECVD)


# ---------------------------------------------------------------------------
# receiving half


class Reassembly:
    """In-order bytes from frames that arrive in any order, repeated or overlapping.

    Ready data (contiguous from the read offset) is a deque of chunks; data past a gap
    lives in sorted, non-overlapping segments. Only bytes never seen before are stored,
    so memory is bounded by how far past the read offset the peer may send.
    """

    __slots__ = ("_ready", "_seg_data", "_seg_starts", "pending_bytes", "read_offset", "ready")

    def __init__(self) -> None:
        self._ready: deque[bytes | memoryview] = deque()
        self.ready = 0  # bytes in _ready
        self.read_offset = 0  # stream offset of the first ready byte
        self._seg_starts: list[int] = []
        self._seg_data: list[bytearray] = []
        self.pending_bytes = 0  # bytes held past a gap

    @property
    def contiguous_end(self) -> int:
        return self.read_offset + self.ready

    @property
    def stored(self) -> int:
        return self.ready + self.pending_bytes

    def insert(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        end = offset + len(data)
        start = self.read_offset + self.ready
        if end <= start:
            return
        seg_starts = self._seg_starts
        if start < offset or (seg_starts and seg_starts[0] < end):
            self._insert_segments(offset, data, max(start, offset))
        else:
            if start > offset or type(data) is not bytes:
                data = bytes(memoryview(data)[start - offset :])
            self._ready.append(data)
            self.ready += len(data)
        if seg_starts and seg_starts[0] <= self.read_offset + self.ready:
            self._drain()

    def extend(self, offset: int, data: bytes | memoryview) -> bool:
        """:meth:`insert` for data that continues the ready bytes with nothing held past
        a gap, the in-order case; False, and nothing taken, for any other.

        ``data`` is kept as it is, not copied: the caller passes a packet's data, its
        own small copy or a view of a payload that is little more than that."""
        if offset != self.read_offset + self.ready or self._seg_starts:
            return False
        self._ready.append(data)
        self.ready += len(data)
        return True

    def _insert_segments(self, offset: int, data: bytes | bytearray | memoryview, lo: int) -> None:
        """Store the parts of the frame from ``lo`` on that are not held yet."""
        view = memoryview(data)
        end = offset + len(view)
        starts, segs = self._seg_starts, self._seg_data
        start = lo
        i = max(0, bisect_right(starts, start) - 1)
        while start < end:
            if i < len(starts) and starts[i] <= start:
                start = max(start, starts[i] + len(segs[i]))
                i += 1
                continue
            stop = min(end, starts[i]) if i < len(starts) else end
            piece = view[start - offset : stop - offset]
            if i > 0 and starts[i - 1] + len(segs[i - 1]) == start:
                segs[i - 1] += piece  # ascending arrivals after a hole grow one segment
            else:
                starts.insert(i, start)
                segs.insert(i, bytearray(piece))
                i += 1
            self.pending_bytes += stop - start
            start = stop

    @property
    def too_fragmented(self) -> bool:
        """More than FRAGMENTS_FREE pieces held past gaps, averaging under MIN_FRAGMENT
        bytes. A peer sending whole packets leaves a gap at most per lost packet; tiny
        pieces out of order cost a list slot and an object each, over a hundred bytes
        a byte, and make every insert slower: a peer doing that is attacking."""
        pieces = len(self._seg_starts)
        return pieces > FRAGMENTS_FREE and self.pending_bytes < pieces * MIN_FRAGMENT

    def _drain(self) -> None:
        """Move segments that now touch the ready data over to it."""
        starts, segs = self._seg_starts, self._seg_data
        n = 0
        end = self.read_offset + self.ready
        while n < len(starts) and starts[n] == end:
            seg = segs[n]
            self._ready.append(seg)
            end += len(seg)
            n += 1
        moved = end - self.read_offset - self.ready
        self.ready += moved
        self.pending_bytes -= moved
        del starts[:n], segs[:n]

    def read(self, max_bytes: int) -> bytes:
        ready = self._ready
        if not ready or max_bytes <= 0:
            return b""
        first = ready[0]
        if len(first) > max_bytes:
            # The read ends inside the first chunk: a large packet's data, a small read.
            view = memoryview(first)
            out = bytes(view[:max_bytes])
            ready[0] = view[max_bytes:]
        elif len(ready) == 1 or len(first) == max_bytes:
            ready.popleft()
            out = first if type(first) is bytes else bytes(first)
        elif self.ready <= max_bytes:
            # All of it, the usual read of a transfer: one join of every chunk.
            out = b"".join(ready)
            ready.clear()
        else:
            parts = []
            want = max_bytes
            while ready and want:
                chunk = ready[0]
                if len(chunk) <= want:
                    parts.append(ready.popleft())
                    want -= len(chunk)
                else:
                    view = memoryview(chunk)
                    parts.append(view[:want])
                    ready[0] = view[want:]
                    want = 0
            out = b"".join(parts)
        self.ready -= len(out)
        self.read_offset += len(out)
        return out

    def clear(self) -> None:
        self._ready.clear()
        self._seg_starts.clear()
        self._seg_data.clear()
        self.ready = self.pending_bytes = 0


class RecvStream:
    """The receiving half (RFC 9000 §3.2): in-order delivery within our window, final
    size checks, and the MAX_STREAM_DATA policy."""

    __slots__ = (
        "_buf",
        "_fin_delivered",
        "_update_lost",
        "_updated_at",
        "discarded",
        "final_size",
        "highest",
        "max_stream_data",
        "reset_code",
        "state",
        "stop_code",
        "window",
    )

    def __init__(self, max_stream_data: int) -> None:
        self._buf = Reassembly()
        self.highest = 0  # highest offset received: what flow control counts
        self.final_size: int | None = None
        self.max_stream_data = max_stream_data  # the limit we advertised
        self.window = max_stream_data
        self.state = _R_RECV
        self.reset_code: int | None = None
        self.stop_code: int | None = None
        self.discarded = 0  # bytes a reset dropped unread; the connection releases them
        self._fin_delivered = False
        self._update_lost = False
        self._updated_at: float | None = None

    @property
    def readable(self) -> int:
        return self._buf.ready

    @property
    def read_offset(self) -> int:
        return self._buf.read_offset

    @property
    def stored(self) -> int:
        """Bytes held in memory, ready or past a gap."""
        return self._buf.stored

    @property
    def fin_ready(self) -> bool:
        """A read would report the end of the stream (FIN or reset) now."""
        if self._fin_delivered:
            return False
        if self.reset_code is not None:
            return True
        return self.final_size is not None and self._buf.contiguous_end == self.final_size

    def on_next(self, offset: int, data: bytes | memoryview) -> int | None:
        """:meth:`on_frame` for a frame without FIN that continues the stream in order,
        within the window, before its final size is known: how far the highest offset
        grew. None, and nothing taken, for any other frame."""
        end = offset + len(data)
        if self.state != _R_RECV or end > self.max_stream_data:
            return None
        if not self._buf.extend(offset, data):
            return None
        grown = end - self.highest
        if grown <= 0:
            return 0
        self.highest = end
        return grown

    def on_frame(self, offset: int, data: bytes | bytearray | memoryview, fin: bool) -> int:
        """Take a STREAM frame; returns how far the highest received offset grew, which
        is what counts against connection-level flow control (RFC 9000 §4.5)."""
        end = offset + len(data)
        if end > self.max_stream_data:
            raise QuicError(
                TransportError.FLOW_CONTROL_ERROR, FrameType.STREAM, "stream window exceeded"
            )
        final = self.final_size
        if final is not None:
            if end > final or (fin and end != final):
                raise QuicError(TransportError.FINAL_SIZE_ERROR, FrameType.STREAM, "final size")
        elif fin:
            if end < self.highest:
                raise QuicError(
                    TransportError.FINAL_SIZE_ERROR, FrameType.STREAM, "final size below data"
                )
            self.final_size = end
            if self.state == _R_RECV:
                self.state = _R_SIZE_KNOWN
        grown = end - self.highest
        if grown > 0:
            self.highest = end
        else:
            grown = 0
        if self.state in (_R_RECV, _R_SIZE_KNOWN):
            buf = self._buf
            buf.insert(offset, data)
            if buf.too_fragmented:
                raise QuicError(
                    TransportError.PROTOCOL_VIOLATION, FrameType.STREAM, "data in tiny pieces"
                )
            if self.final_size is not None and buf.contiguous_end == self.final_size:
                self.state = _R_RECVD
        return grown

    def read(self, max_bytes: int) -> tuple[bytes, bool]:
        """Up to ``max_bytes`` in order, never past a gap; ``fin`` is True once, with the
        last byte (or alone, after a reset)."""
        if self.reset_code is not None:
            fin = not self._fin_delivered
            self._fin_delivered = True
            self.state = _R_RESET_READ
            return b"", fin
        data = self._buf.read(max_bytes)
        fin = False
        if (
            not self._fin_delivered
            and self.final_size is not None
            and self._buf.read_offset == self.final_size
        ):
            fin = True
            self._fin_delivered = True
            self.state = _R_READ
        return data, fin

    def on_reset(self, error_code: int, final_size: int) -> int:
        """RESET_STREAM: returns the flow-control growth its final size implies."""
        if final_size > self.max_stream_data:
            raise QuicError(
                TransportError.FLOW_CONTROL_ERROR, FrameType.RESET_STREAM, "beyond window"
            )
        if (self.final_size is not None and final_size != self.final_size) or (
            final_size < self.highest
        ):
            raise QuicError(
                TransportError.FINAL_SIZE_ERROR, FrameType.RESET_STREAM, "final size changed"
            )
        grown = final_size - self.highest
        self.highest = self.final_size = final_size
        # Once all data is in, the reset may be ignored (RFC 9000 §3.2); we do, so the
        # application still gets everything it was sent.
        if self.reset_code is None and self.state in (_R_RECV, _R_SIZE_KNOWN):
            self.reset_code = error_code
            self.discarded = final_size - self._buf.read_offset
            self._buf.clear()
            self.state = _R_RESET_RECVD
        return grown

    def stop_sending(self, error_code: int) -> None:
        self.stop_code = error_code

    def update_due(self) -> bool:
        """Whether :meth:`max_stream_data_update` would announce a limit now."""
        if self.final_size is not None or self.reset_code is not None:
            return False
        return self._update_lost or self._buf.read_offset > self.max_stream_data - self.window // 2

    def max_stream_data_update(self, now: float, rtt: float) -> int | None:
        """A larger MAX_STREAM_DATA once the application has consumed more than half the
        window: the new limit is what it consumed plus the window, which first doubles
        if the last update is less than WINDOW_GROWTH_RTTS round trips old. None when no
        update is due, or the final size is known (the peer needs no more credit)."""
        if not self.update_due():
            return None
        consumed = self._buf.read_offset
        if consumed > self.max_stream_data - self.window // 2:
            self.window = _grown(self.window, self._updated_at, now, rtt, MAX_STREAM_WINDOW)
            self._updated_at = now
            self.max_stream_data = consumed + self.window
        self._update_lost = False
        return self.max_stream_data

    def window_update_lost(self) -> None:
        """The packet carrying our MAX_STREAM_DATA was lost: announce the limit again."""
        if self.final_size is None:
            self._update_lost = True

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


# ---------------------------------------------------------------------------
# CRYPTO


class CryptoStream:
    """CRYPTO data of one encryption level: offsets and retransmission as for streams,
    without flow control, and a bounded reassembly buffer (RFC 9000 §7.5)."""

    __slots__ = ("_recv", "_send", "limit")

    def __init__(self, limit: int = CRYPTO_BUFFER_LIMIT) -> None:
        self._send = SendStream(MAX_OFFSET, buffer_limit=MAX_OFFSET)
        self._recv = Reassembly()
        self.limit = limit

    def write(self, data: bytes) -> None:
        self._send.write(data)

    def has_data(self) -> bool:
        return self._send.has_data()

    def next_frame(self, max_payload: int) -> tuple[int, memoryview | bytes] | None:
        chunk = self._send.next_frame(max_payload, MAX_OFFSET)
        return None if chunk is None else (chunk[0], chunk[1])

    def on_acked(self, offset: int, length: int) -> None:
        self._send.on_acked(offset, length, False)

    def on_lost(self, offset: int, length: int) -> None:
        self._send.on_lost(offset, length, False)

    def retransmit_unacked(self) -> None:
        """A PTO: everything sent and not yet acknowledged goes out again."""
        send = self._send
        send.on_lost(send._base, send.sent_end - send._base, False)

    def on_frame(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        recv = self._recv
        if offset + len(data) > recv.read_offset + self.limit:
            raise QuicError(
                TransportError.CRYPTO_BUFFER_EXCEEDED,
                FrameType.CRYPTO,
                "too much CRYPTO data buffered",
            )
        recv.insert(offset, data)
        if recv.too_fragmented:
            raise QuicError(
                TransportError.CRYPTO_BUFFER_EXCEEDED, FrameType.CRYPTO, "data in tiny pieces"
            )

    @property
    def stored(self) -> int:
        return self._recv.stored

    def read(self) -> bytes:
        return self._recv.read(self._recv.ready)


# ---------------------------------------------------------------------------
# connection-level flow control


class FlowController:
    """Connection-level flow control (MAX_DATA, RFC 9000 §4.1), one per direction."""

    __slots__ = ("consumed", "limit", "updated_at", "used", "window")

    def __init__(self, limit: int) -> None:
        self.limit = limit  # the peer's MAX_DATA (send) or ours (receive)
        self.window = limit
        self.used = 0  # send: new bytes sent; receive: highest offsets received, summed
        self.consumed = 0  # receive: bytes the application read or a reset released
        self.updated_at: float | None = None  # receive: when MAX_DATA last grew

    # sending

    @property
    def credit(self) -> int:
        return self.limit - self.used

    def on_max_data(self, limit: int) -> None:
        if limit > self.limit:
            self.limit = limit

    def consume(self, n: int) -> None:
        self.used += n

    def blocked(self) -> bool:
        """No credit left (DATA_BLOCKED, if data waits)."""
        return self.used >= self.limit

    # receiving

    def on_received(self, n: int, frame_type: int = FrameType.STREAM) -> None:
        self.used += n
        if self.used > self.limit:
            raise QuicError(
                TransportError.FLOW_CONTROL_ERROR, frame_type, "connection window exceeded"
            )

    def on_consumed(self, n: int) -> None:
        self.consumed += n

    def update_due(self) -> bool:
        """Whether :meth:`max_data_update` would announce a limit now."""
        return self.consumed > self.limit - self.window // 2

    def max_data_update(self, now: float, rtt: float) -> int | None:
        """A larger MAX_DATA once the application has consumed more than half the window,
        which grows as a stream's does (:meth:`RecvStream.max_stream_data_update`)."""
        if self.update_due():
            self.window = _grown(self.window, self.updated_at, now, rtt, MAX_CONNECTION_WINDOW)
            self.updated_at = now
            new_limit = self.consumed + self.window
            if new_limit > self.limit:
                self.limit = new_limit
                return new_limit
        return None

    def follow_stream_window(self, window: int) -> None:
        """Keep the connection's window half again as large as any stream's, so one
        stream's growth is not held back by the connection's (as Chromium does)."""
        self.window = max(self.window, min(window * 3 // 2, MAX_CONNECTION_WINDOW))


def _grown(window: int, updated_at: float | None, now: float, rtt: float, cap: int) -> int:
    """``window`` doubled, within ``cap``, if the application drained it within
    WINDOW_GROWTH_RTTS round trips of the last update: the window, not the reader, is
    what holds the peer back then."""
    if updated_at is not None and now - updated_at < WINDOW_GROWTH_RTTS * rtt:
        return max(window, min(2 * window, cap))
    return window


# ---------------------------------------------------------------------------
# stream limits


class StreamManager:
    """Which streams exist, who may open more (RFC 9000 §4.6), and their windows.

    ``local_params`` are our transport parameters (what the peer may open and send),
    the peer's arrive later through :meth:`set_peer_params`. Stream IDs of a type are
    used in order, so closed streams need no record beyond a count.
    """

    def __init__(self, is_client: bool, local_params) -> None:
        self.is_client = is_client
        self.local = local_params
        self.peer = None
        self.streams: dict[int, Stream] = {}
        # Streams whose receive window may have to be announced: only reads and lost
        # MAX_STREAM_DATA frames change that, so the packetizer looks at these alone.
        self.window_candidates: dict[int, Stream] = {}
        # Streams we may open, indexed [bidi, uni]: the peer's limits (0 until its
        # parameters arrive) and how many we opened.
        self.peer_max = [0, 0]
        self.next_local = [0, 0]
        # Streams the peer may open: our limits, how many it opened, how many closed.
        self.local_max = [
            local_params.initial_max_streams_bidi,
            local_params.initial_max_streams_uni,
        ]
        self.local_initial = list(self.local_max)
        self.next_peer = [0, 0]
        self.closed_peer = [0, 0]

    def set_peer_params(self, peer) -> None:
        self.peer = peer
        self.peer_max = [
            max(self.peer_max[0], peer.initial_max_streams_bidi),
            max(self.peer_max[1], peer.initial_max_streams_uni),
        ]
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

    def _open_upto(self, index: int, uni: bool, local: bool) -> None:
        opened = self.next_local if local else self.next_peer
        server = (not self.is_client) if local else self.is_client
        for i in range(opened[uni], index + 1):
            self._create(make_stream_id(i, uni, server))
        opened[uni] = index + 1

    def get(self, sid: int) -> Stream | None:
        return self.streams.get(sid)

    def was_closed(self, sid: int) -> bool:
        """Opened once and gone now."""
        if sid in self.streams:
            return False
        opened = self.next_local if stream_is_local(sid, self.is_client) else self.next_peer
        return stream_index(sid) < opened[stream_is_uni(sid)]

    # opening our own

    def can_open_local(self, uni: bool) -> bool:
        return self.next_local[uni] < self.peer_max[uni]

    def open_local(self, uni: bool) -> Stream:
        """The next stream of our own of that type; StreamLimitError at the peer's limit."""
        if not self.can_open_local(uni):
            raise StreamLimitError("peer's stream limit reached")
        index = self.next_local[uni]
        self._open_upto(index, uni, local=True)
        return self.streams[make_stream_id(index, uni, not self.is_client)]

    def open_specific(self, sid: int) -> Stream:
        """Open ``sid`` and every lower stream of its type (lxin/quic semantics)."""
        stream = self.streams.get(sid)
        if stream is not None:
            return stream
        if not stream_is_local(sid, self.is_client):
            raise StreamStateError("the peer has not opened that stream")
        if self.was_closed(sid):
            raise StreamGoneError("stream already closed")
        uni = stream_is_uni(sid)
        index = stream_index(sid)
        if index >= self.peer_max[uni]:
            raise StreamLimitError("peer's stream limit reached")
        self._open_upto(index, uni, local=True)
        return self.streams[sid]

    # streams the peer opens

    def get_or_create_peer(self, sid: int, frame_type: int) -> Stream | None:
        """The stream a peer frame names, creating it (and all lower ones of its type)
        if the peer opens it now. None for a stream already closed and forgotten: the
        frame is then a late retransmission and changes nothing."""
        stream = self.streams.get(sid)
        if stream is not None and not sid & uapi.QUIC_STREAM_TYPE_UNI_MASK:
            return stream  # an open bidirectional stream: any frame may name it
        local = stream_is_local(sid, self.is_client)
        uni = stream_is_uni(sid)
        # RFC 9000 §19.5, §19.8, §19.10: a frame for the half a uni stream lacks.
        if uni and (frame_type in _RECV_FRAMES if local else frame_type in _SEND_FRAMES):
            raise QuicError(
                TransportError.STREAM_STATE_ERROR, frame_type, "wrong direction for stream"
            )
        if stream is not None:
            return stream
        index = stream_index(sid)
        if local:
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
            return None
        self._open_upto(index, uni, local=False)
        return self.streams[sid]

    # limits

    def on_max_streams(self, bidi: bool, maximum: int) -> bool:
        """MAX_STREAMS from the peer; True when it raised the limit."""
        uni = not bidi
        if maximum > self.peer_max[uni]:
            self.peer_max[uni] = maximum
            return True
        return False

    def local_max_streams(self, uni: bool) -> int:
        return self.local_max[uni]

    def _max_streams_target(self, uni: bool) -> int | None:
        initial = self.local_initial[uni]
        target = self.closed_peer[uni] + initial
        return target if target - self.local_max[uni] >= max(1, initial // 2) else None

    def max_streams_due(self) -> bool:
        """Whether :meth:`max_streams_update` would raise either limit now."""
        target = self._max_streams_target
        return target(False) is not None or target(True) is not None

    def max_streams_update(self, uni: bool) -> int | None:
        """Raise our MAX_STREAMS as peer streams close, so that the peer may always have
        its initial allowance open; announced once half of it has been used up."""
        target = self._max_streams_target(uni)
        if target is not None:
            self.local_max[uni] = target
        return target

    def note_window_change(self, stream: Stream) -> None:
        """The application read from ``stream``, or its MAX_STREAM_DATA was lost."""
        self.window_candidates[stream.stream_id] = stream

    def window_update_due(self) -> bool:
        """Whether :meth:`window_updates` would name a stream. Candidates with nothing
        due are forgotten, as that call would forget them."""
        candidates = self.window_candidates
        if candidates and not any(
            stream.recv is not None and stream.recv.update_due() for stream in candidates.values()
        ):
            candidates.clear()
        return bool(candidates)

    def window_updates(self, now: float, rtt: float) -> list[Stream]:
        """Streams whose larger receive window must be announced (MAX_STREAM_DATA);
        their ``recv.max_stream_data`` holds the new limit."""
        if not self.window_candidates:
            return []
        due = [
            stream
            for stream in self.window_candidates.values()
            if stream.recv is not None and stream.recv.max_stream_data_update(now, rtt) is not None
        ]
        self.window_candidates.clear()
        return due

    def maybe_forget(self, sid: int) -> None:
        """Drop a stream whose halves are both done, counting it toward MAX_STREAMS."""
        stream = self.streams.get(sid)
        if stream is None or not stream.finished:
            return
        del self.streams[sid]
        if not stream_is_local(sid, self.is_client):
            self.closed_peer[stream_is_uni(sid)] += 1
