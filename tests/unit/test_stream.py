"""Streams: ID helpers, reassembly, retransmission by range, flow control, stream limits."""

from __future__ import annotations

import itertools
import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quic import uapi
from quic.errors import QuicError, TransportError
from quic.frame import FrameType
from quic.stream import (
    CRYPTO_BUFFER_LIMIT,
    CryptoStream,
    FlowController,
    RangeSet,
    RecvStream,
    SendStream,
    StreamGoneError,
    StreamLimitError,
    StreamManager,
    StreamStateError,
    stream_index,
    stream_is_local,
    stream_is_server_initiated,
    stream_is_uni,
    stream_type,
)
from quic.transport_params import TransportParameters

S = uapi  # the state numbers of the socket API


def params(bidi: int = 4, uni: int = 4, window: int = 1000) -> TransportParameters:
    return TransportParameters(
        initial_max_data=1 << 20,
        initial_max_stream_data_bidi_local=window,
        initial_max_stream_data_bidi_remote=window,
        initial_max_stream_data_uni=window,
        initial_max_streams_bidi=bidi,
        initial_max_streams_uni=uni,
    )


def manager(is_client: bool = True, **kw) -> StreamManager:
    streams = StreamManager(is_client, params(**kw))
    streams.set_peer_params(params(**kw))
    return streams


def error_code(excinfo) -> int:
    return excinfo.value.code


# ---------------------------------------------------------------------------
# stream IDs


def test_stream_id_helpers() -> None:
    assert [stream_type(s) for s in (0, 1, 2, 3, 4, 7)] == [0, 1, 2, 3, 0, 3]
    assert [stream_is_uni(s) for s in (0, 1, 2, 3)] == [False, False, True, True]
    assert [stream_is_server_initiated(s) for s in (0, 1, 2, 3)] == [False, True, False, True]
    assert stream_is_local(0, is_client=True) and not stream_is_local(0, is_client=False)
    assert stream_is_local(5, is_client=False) and not stream_is_local(5, is_client=True)
    assert stream_index(0) == 0 and stream_index(4) == 1 and stream_index(11) == 2


# ---------------------------------------------------------------------------
# RangeSet


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 60), st.integers(0, 20)), max_size=40))
def test_rangeset_matches_a_set_of_offsets(ops) -> None:
    ranges, model = RangeSet(), set()
    for add, start, n in ops:
        if add:
            ranges.add(start, start + n)
            model |= set(range(start, start + n))
        else:
            ranges.subtract(start, start + n)
            model -= set(range(start, start + n))
        covered = {i for s, e in ranges for i in range(s, e)}
        assert covered == model
        pairs = list(ranges)
        assert all(s < e for s, e in pairs)
        assert all(a[1] < b[0] for a, b in itertools.pairwise(pairs))  # disjoint, not adjacent
    gaps = {i for s, e in ranges.gaps(10, 50) for i in range(s, e)}
    assert gaps == set(range(10, 50)) - model


# ---------------------------------------------------------------------------
# reassembly


@st.composite
def chunked(draw):
    """A payload cut into chunks, plus duplicates and overlapping pieces, shuffled."""
    data = draw(st.binary(min_size=0, max_size=3000))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=20)))
    bounds = [0, *cuts, len(data)]
    pieces = [(a, b) for a, b in itertools.pairwise(bounds)]
    extra = draw(st.lists(st.tuples(st.integers(0, len(data)), st.integers(0, 400)), max_size=8))
    pieces += [(a, min(len(data), a + n)) for a, n in extra]
    pieces += draw(st.lists(st.sampled_from(pieces), max_size=5))  # exact duplicates
    order = draw(st.permutations(pieces))
    return data, order


@given(chunked(), st.lists(st.integers(1, 700), min_size=1, max_size=10), st.booleans())
def test_reassembly_delivers_exactly_once_in_order(case, read_sizes, as_view) -> None:
    data, order = case
    window = len(data) + 7
    recv = RecvStream(max_stream_data=window)
    out = bytearray()
    fins = 0
    reads = itertools.cycle(read_sizes)
    for a, b in order:
        piece = memoryview(data)[a:b] if as_view else data[a:b]
        recv.on_frame(a, piece, b == len(data))
        assert recv.stored <= recv.max_stream_data - recv.read_offset
        assert recv.stored <= window
        chunk, fin = recv.read(next(reads))
        out += chunk
        fins += fin
        assert len(out) == recv.read_offset
        assert data.startswith(bytes(out))
    while True:
        chunk, fin = recv.read(next(reads))
        out += chunk
        fins += fin
        if not chunk and not fin:
            break
    assert bytes(out) == data
    assert fins == 1
    assert recv.state == S.QUIC_STREAM_RECV_STATE_READ
    assert recv.stored == 0
    assert recv.read(100) == (b"", False)


def test_read_never_passes_a_gap() -> None:
    recv = RecvStream(100)
    recv.on_frame(10, b"x" * 10, False)
    assert recv.readable == 0 and recv.read(100) == (b"", False)
    recv.on_frame(0, b"a" * 5, False)
    assert recv.read(100) == (b"a" * 5, False)
    recv.on_frame(3, b"b" * 17, True)  # overlaps both sides of the gap; keeps [5, 10)
    assert recv.state == S.QUIC_STREAM_RECV_STATE_RECVD
    assert recv.read(100) == (b"b" * 5 + b"x" * 10, True)


def test_on_frame_reports_growth_of_highest_offset() -> None:
    recv = RecvStream(1000)
    assert recv.on_frame(100, b"x" * 50, False) == 150
    assert recv.on_frame(0, b"y" * 100, False) == 0  # a gap filled: no new credit used
    assert recv.on_frame(120, b"z" * 40, False) == 10
    assert recv.on_frame(0, b"", False) == 0


def test_ascending_arrivals_after_a_hole_grow_one_segment() -> None:
    recv = RecvStream(1 << 20)
    for offset in range(1200, 120_000, 1200):
        recv.on_frame(offset, bytes(1200), False)
    assert len(recv._buf._seg_starts) == 1
    recv.on_frame(0, bytes(1200), False)
    assert recv.readable == 120_000


# ---------------------------------------------------------------------------
# sending with random acknowledgments and losses


@settings(max_examples=150, deadline=None)
@given(
    st.binary(min_size=0, max_size=6000),
    st.lists(st.integers(1, 20_000), min_size=1, max_size=4),
    st.integers(50, 3000),
    st.integers(0, 2**32).map(random.Random),  # seeded: the loop draws a lot
)
def test_send_with_random_acks_and_losses(payload, write_sizes, window, rng) -> None:
    send = SendStream(max_stream_data=window)
    recv = RecvStream(max_stream_data=window)
    flow_send, flow_recv = FlowController(window * 2), FlowController(window * 2)
    pos = 0
    sizes = itertools.cycle(write_sizes)
    while pos < len(payload):
        n = next(sizes)
        send.write(payload[pos : pos + n])
        pos += n
    send.write(b"", fin=True)
    assert send.buffered == len(payload)

    in_flight: list[tuple[int, bytes, bool]] = []
    out = bytearray()
    for _ in range(20_000):
        if send.state == S.QUIC_STREAM_SEND_STATE_RECVD:
            break
        for _ in range(rng.randint(0, 4)):
            frame = send.next_frame(rng.randint(1, 1500), flow_send.credit)
            if frame is None:
                break
            offset, data, fin, new = frame
            assert len(data) or fin
            flow_send.consume(new)
            in_flight.append((offset, bytes(data), fin))
        rng.shuffle(in_flight)
        keep = []
        for offset, data, fin in in_flight:
            fate = rng.random()
            if fate < 0.5:  # delivered and acknowledged
                flow_recv.on_received(recv.on_frame(offset, data, fin))
                send.on_acked(offset, len(data), fin)
            elif fate < 0.7:  # lost (sometimes it arrived after all)
                if rng.random() < 0.3:
                    flow_recv.on_received(recv.on_frame(offset, data, fin))
                send.on_lost(offset, len(data), fin)
            else:
                keep.append((offset, data, fin))
        in_flight = keep
        chunk, _ = recv.read(rng.randint(1, 2000))
        out += chunk
        flow_recv.on_consumed(len(chunk))
        assert recv.stored <= window
        update = recv.max_stream_data_update(0.0, 0.0)
        if update is not None:
            send.on_max_stream_data(update)
        update = flow_recv.max_data_update(0.0, 0.0)
        if update is not None:
            flow_send.on_max_data(update)
    else:
        pytest.fail("transfer did not finish")
    while True:
        chunk, fin = recv.read(4096)
        out += chunk
        if fin or not chunk:
            break
    assert bytes(out) == payload
    assert send.buffered == 0 and send.memory == 0
    assert not send.has_data()
    assert send.next_frame(1000, 1000) is None
    assert recv.state == S.QUIC_STREAM_RECV_STATE_READ
    assert flow_send.used == len(payload)


def test_lost_range_skips_data_acknowledged_since() -> None:
    send = SendStream(max_stream_data=10_000)
    send.write(bytes(range(200)) * 15)
    frames = [send.next_frame(1000, 10_000) for _ in range(3)]
    assert [f[0] for f in frames] == [0, 1000, 2000]
    send.on_acked(500, 1000, False)  # e.g. a retransmission of the middle was acked
    send.on_lost(0, 1000, False)
    send.on_lost(1000, 1000, False)
    again = []
    while (frame := send.next_frame(2000, 0)) is not None:
        again.append((frame[0], len(frame[1]), frame[3]))
    assert again == [(0, 500, 0), (1500, 500, 0)]


def test_acks_in_any_order_and_duplicates() -> None:
    send = SendStream(max_stream_data=10_000)
    send.write(b"a" * 3000, fin=True)
    frames = [send.next_frame(1000, 10_000) for _ in range(3)]
    assert frames[-1][2] is True
    assert send.state == S.QUIC_STREAM_SEND_STATE_SENT
    send.on_acked(2000, 1000, True)
    send.on_acked(2000, 1000, True)
    assert send.buffered == 3000 and send.state == S.QUIC_STREAM_SEND_STATE_SENT
    send.on_acked(1000, 1000, False)
    send.on_acked(0, 1000, False)
    assert send.buffered == 0
    assert send.state == S.QUIC_STREAM_SEND_STATE_RECVD
    send.on_acked(0, 1000, False)
    send.on_lost(0, 1000, False)
    assert send.next_frame(1000, 1000) is None


def test_lost_fin_alone_is_resent_as_an_empty_frame() -> None:
    send = SendStream(max_stream_data=100)
    send.write(b"abc")
    assert send.next_frame(100, 100)[:3] == (0, b"abc", False)
    send.write(b"", fin=True)
    frame = send.next_frame(100, 0)  # a FIN needs no credit
    assert (frame[0], bytes(frame[1]), frame[2], frame[3]) == (3, b"", True, 0)
    send.on_acked(0, 3, False)
    send.on_lost(3, 0, True)
    frame = send.next_frame(100, 0)
    assert (frame[0], bytes(frame[1]), frame[2]) == (3, b"", True)
    send.on_acked(3, 0, True)
    assert send.state == S.QUIC_STREAM_SEND_STATE_RECVD


def test_credit_limits_new_data_not_retransmissions() -> None:
    send = SendStream(max_stream_data=1000)
    send.write(bytes(3000))
    offset, data, _, new = send.next_frame(5000, 300)  # the connection's credit
    assert (offset, len(data), new) == (0, 300, 300)
    offset, data, _, new = send.next_frame(5000, 5000)  # the stream's credit
    assert (offset, len(data), new) == (300, 700, 700)
    assert send.next_frame(5000, 5000) is None
    assert send.blocked() and send.has_data() is False
    send.on_lost(0, 300, False)
    offset, data, _, new = send.next_frame(5000, 0)
    assert (offset, len(data), new) == (0, 300, 0)
    send.on_max_stream_data(500)  # never lowers the limit
    assert send.max_stream_data == 1000
    send.on_max_stream_data(2000)
    assert not send.blocked() and send.has_data()


def test_write_after_fin_or_reset_raises() -> None:
    send = SendStream(100)
    send.write(b"x", fin=True)
    with pytest.raises(StreamStateError):
        send.write(b"y")
    other = SendStream(100)
    other.reset(7)
    with pytest.raises(StreamStateError):
        other.write(b"y")
    assert other.room(other.buffer_limit) == 0


def test_frames_are_views_and_small_writes_coalesce() -> None:
    send = SendStream(max_stream_data=1 << 20)
    for _ in range(100):
        send.write(b"abcdefghij")
    assert send.memory == 1000
    frame = send.next_frame(600, 1 << 20)
    assert isinstance(frame[1], memoryview) and len(frame[1]) == 600
    assert len(send._chunks) == 1
    big = bytes(70_000)
    send.write(big)
    assert send._chunks[-1] is big  # kept without a copy
    offset, data, _, _ = send.next_frame(1200, 1 << 20)
    assert offset == 600 and bytes(data) == b"abcdefghij" * 40 + bytes(800)  # spans chunks


# ---------------------------------------------------------------------------
# state machines (RFC 9000 §3) and the socket API's state numbers


def test_send_states() -> None:
    send = SendStream(100)
    assert send.state == S.QUIC_STREAM_SEND_STATE_READY == 0
    send.write(b"abc")
    assert send.state == S.QUIC_STREAM_SEND_STATE_SEND == 1
    send.write(b"d", fin=True)
    assert send.final_size == 4
    send.next_frame(100, 100)
    assert send.state == S.QUIC_STREAM_SEND_STATE_SENT == 2
    send.on_acked(0, 4, True)
    assert send.state == S.QUIC_STREAM_SEND_STATE_RECVD == 3
    assert send.terminal
    with pytest.raises(StreamStateError):
        send.reset(1)
    assert send.on_stop_sending(1) is None


def test_reset_states_and_final_size() -> None:
    send = SendStream(100)
    send.write(b"x" * 50)
    send.next_frame(20, 100)
    assert send.reset(9) == 20  # what flow control has consumed
    with pytest.raises(StreamStateError):  # once reset, nothing is left to abandon
        send.reset(9)
    assert send.state == S.QUIC_STREAM_SEND_STATE_RESET_SENT == 4
    assert send.final_size == 20 and send.reset_code == 9
    assert send.next_frame(100, 100) is None and not send.has_data()
    send.on_acked(0, 20, False)
    send.on_lost(0, 20, False)
    assert send.memory == 0
    send.on_reset_acked()
    assert send.state == S.QUIC_STREAM_SEND_STATE_RESET_RECVD == 5


def test_stop_sending_answers_with_reset() -> None:
    send = SendStream(100)
    assert send.on_stop_sending(3) == 0  # from Ready
    assert send.stop_code == 3 and send.reset_code == 3
    assert send.on_stop_sending(3) is None  # already reset
    sent = SendStream(100)
    sent.write(b"abc", fin=True)
    sent.next_frame(100, 100)
    assert sent.on_stop_sending(4) == 3  # from Data Sent
    assert sent.state == S.QUIC_STREAM_SEND_STATE_RESET_SENT


def test_recv_states() -> None:
    recv = RecvStream(100)
    assert recv.state == S.QUIC_STREAM_RECV_STATE_RECV == 6
    recv.on_frame(5, b"world", True)
    assert recv.state == S.QUIC_STREAM_RECV_STATE_SIZE_KNOWN == 7
    assert not recv.fin_ready
    recv.on_frame(0, b"hello", False)
    assert recv.state == S.QUIC_STREAM_RECV_STATE_RECVD == 8
    assert recv.fin_ready
    assert recv.read(3) == (b"hel", False)
    assert recv.read(100) == (b"loworld", True)
    assert recv.state == S.QUIC_STREAM_RECV_STATE_READ == 9
    assert recv.terminal and not recv.fin_ready
    recv.on_frame(0, b"hello", False)  # a late retransmission changes nothing
    assert recv.read(100) == (b"", False)


def test_recv_reset_states() -> None:
    recv = RecvStream(100)
    recv.on_frame(0, b"abc", False)
    recv.on_frame(10, b"xyz", False)
    assert recv.on_reset(5, 20) == 7  # highest was 13
    assert recv.state == S.QUIC_STREAM_RECV_STATE_RESET_RECVD == 10
    assert recv.discarded == 20 and recv.stored == 0
    assert recv.fin_ready
    assert recv.on_reset(5, 20) == 0
    assert recv.on_frame(15, b"late", False) == 0
    assert recv.read(100) == (b"", True)
    assert recv.state == S.QUIC_STREAM_RECV_STATE_RESET_READ == 11
    assert recv.terminal


def test_reset_after_all_data_arrived_is_ignored() -> None:
    recv = RecvStream(100)
    recv.on_frame(0, b"done", True)
    assert recv.on_reset(1, 4) == 0
    assert recv.state == S.QUIC_STREAM_RECV_STATE_RECVD
    assert recv.read(100) == (b"done", True)


# ---------------------------------------------------------------------------
# flow control violations


def test_stream_window_exceeded() -> None:
    recv = RecvStream(100)
    recv.on_frame(0, bytes(100), False)
    with pytest.raises(QuicError) as exc:
        recv.on_frame(90, bytes(11), False)
    assert error_code(exc) == TransportError.FLOW_CONTROL_ERROR
    with pytest.raises(QuicError) as exc:
        RecvStream(100).on_reset(0, 101)
    assert error_code(exc) == TransportError.FLOW_CONTROL_ERROR


@pytest.mark.parametrize(
    "frames",
    [
        [(0, 10, True), (0, 11, False)],  # data beyond the final size
        [(0, 10, True), (0, 5, True)],  # final size changed (smaller)
        [(0, 10, True), (0, 12, True)],  # final size changed (larger)
        [(0, 10, False), (0, 5, True)],  # final size below data already received
    ],
)
def test_final_size_errors(frames) -> None:
    recv = RecvStream(100)
    *ok, (offset, end, fin) = frames
    for a, b, f in ok:
        recv.on_frame(a, bytes(b - a), f)
    with pytest.raises(QuicError) as exc:
        recv.on_frame(offset, bytes(end - offset), fin)
    assert error_code(exc) == TransportError.FINAL_SIZE_ERROR


def test_reset_final_size_errors() -> None:
    recv = RecvStream(100)
    recv.on_frame(0, bytes(10), False)
    with pytest.raises(QuicError) as exc:
        recv.on_reset(0, 9)
    assert error_code(exc) == TransportError.FINAL_SIZE_ERROR
    known = RecvStream(100)
    known.on_frame(0, bytes(10), True)
    with pytest.raises(QuicError) as exc:
        known.on_reset(0, 11)
    assert error_code(exc) == TransportError.FINAL_SIZE_ERROR
    reset = RecvStream(100)
    reset.on_reset(0, 10)
    with pytest.raises(QuicError) as exc:
        reset.on_frame(0, bytes(11), False)
    assert error_code(exc) == TransportError.FINAL_SIZE_ERROR


def test_connection_window_exceeded() -> None:
    flow = FlowController(1000)
    flow.on_received(600)
    flow.on_received(400)
    with pytest.raises(QuicError) as exc:
        flow.on_received(1, FrameType.RESET_STREAM)
    assert error_code(exc) == TransportError.FLOW_CONTROL_ERROR
    assert exc.value.frame_type == FrameType.RESET_STREAM


# ---------------------------------------------------------------------------
# window updates


def test_stream_window_update_at_half() -> None:
    recv = RecvStream(max_stream_data=1000)
    recv.on_frame(0, bytes(1000), False)
    recv.read(500)
    assert recv.max_stream_data_update(0.0, 0.0) is None  # exactly half: not more than half
    recv.read(1)
    assert recv.max_stream_data_update(0.0, 0.0) == 1501
    assert recv.max_stream_data == 1501
    assert recv.max_stream_data_update(0.0, 0.0) is None
    recv.window_update_lost()
    assert recv.max_stream_data_update(0.0, 0.0) == 1501  # announced again
    assert recv.max_stream_data_update(0.0, 0.0) is None
    recv.on_frame(1000, bytes(10), True)
    recv.read(1000)
    assert recv.max_stream_data_update(0.0, 0.0) is None  # the final size is known


def test_connection_window_update_at_half() -> None:
    flow = FlowController(1000)
    flow.on_received(1000)
    flow.on_consumed(500)
    assert flow.max_data_update(0.0, 0.0) is None
    flow.on_consumed(1)
    assert flow.max_data_update(0.0, 0.0) == 1501
    assert flow.limit == 1501 and flow.max_data_update(0.0, 0.0) is None
    flow.on_received(501)
    with pytest.raises(QuicError):
        flow.on_received(1)


def test_connection_send_credit() -> None:
    flow = FlowController(100)
    assert flow.credit == 100 and not flow.blocked()
    flow.consume(100)
    assert flow.credit == 0 and flow.blocked()
    flow.on_max_data(50)
    assert flow.credit == 0
    flow.on_max_data(150)
    assert flow.credit == 50 and not flow.blocked()


def test_manager_window_updates() -> None:
    streams = manager(is_client=True, window=1000)
    stream = streams.get_or_create_peer(1, FrameType.STREAM)
    stream.recv.on_frame(0, bytes(800), False)
    assert streams.window_updates(0.0, 0.0) == []
    stream.recv.read(800)
    assert streams.window_updates(0.0, 0.0) == []  # only streams noted as read are looked at
    streams.note_window_change(stream)
    assert streams.window_updates(0.0, 0.0) == [stream]
    assert stream.recv.max_stream_data == 1800
    assert streams.window_updates(0.0, 0.0) == []


# ---------------------------------------------------------------------------
# stream limits


def test_open_local_up_to_the_peer_limit() -> None:
    streams = manager(is_client=True, bidi=2, uni=1)
    assert [streams.open_local(False).stream_id for _ in range(2)] == [0, 4]
    with pytest.raises(StreamLimitError):
        streams.open_local(False)
    assert streams.open_local(True).stream_id == 2
    with pytest.raises(StreamLimitError):
        streams.open_local(True)
    assert streams.on_max_streams(bidi=True, maximum=3)
    assert not streams.on_max_streams(bidi=True, maximum=2)
    assert streams.open_local(False).stream_id == 8
    server = manager(is_client=False, bidi=1, uni=1)
    assert server.open_local(False).stream_id == 1
    assert server.open_local(True).stream_id == 3


def test_open_specific_opens_lower_streams() -> None:
    streams = manager(is_client=True, bidi=10)
    stream = streams.open_specific(8)
    assert stream.stream_id == 8
    assert sorted(streams.streams) == [0, 4, 8]
    assert streams.open_local(False).stream_id == 12
    assert streams.open_specific(4) is streams.get(4)
    with pytest.raises(StreamLimitError):
        streams.open_specific(40)
    with pytest.raises(StreamStateError):
        streams.open_specific(1)  # the peer's stream


def test_open_specific_on_a_closed_stream() -> None:
    streams = manager(is_client=True, bidi=10)
    stream = streams.open_specific(0)
    stream.send.write(b"x", fin=True)
    stream.send.next_frame(10, 10)
    stream.send.on_acked(0, 1, True)
    stream.recv.on_frame(0, b"y", True)
    stream.recv.read(10)
    streams.maybe_forget(0)
    assert streams.get(0) is None and streams.was_closed(0)
    with pytest.raises(StreamGoneError):
        streams.open_specific(0)
    assert issubclass(StreamGoneError, StreamStateError)


def test_peer_streams_are_opened_implicitly() -> None:
    streams = manager(is_client=False, bidi=4, uni=4)
    stream = streams.get_or_create_peer(8, FrameType.STREAM)
    assert sorted(streams.streams) == [0, 4, 8]
    assert stream.send is not None and stream.recv is not None
    uni = streams.get_or_create_peer(6, FrameType.STREAM)
    assert uni.send is None and uni.recv is not None
    assert sorted(streams.streams) == [0, 2, 4, 6, 8]
    assert streams.get_or_create_peer(8, FrameType.STREAM) is stream


def test_peer_stream_limit() -> None:
    streams = manager(is_client=False, bidi=2, uni=1)
    streams.get_or_create_peer(4, FrameType.STREAM)
    with pytest.raises(QuicError) as exc:
        streams.get_or_create_peer(8, FrameType.STREAM)
    assert error_code(exc) == TransportError.STREAM_LIMIT_ERROR
    with pytest.raises(QuicError) as exc:
        streams.get_or_create_peer(6, FrameType.RESET_STREAM)
    assert error_code(exc) == TransportError.STREAM_LIMIT_ERROR


@pytest.mark.parametrize(
    ("is_client", "sid", "frame_type"),
    [
        (True, 0, FrameType.STREAM),  # our bidi stream, never opened
        (True, 4, FrameType.MAX_STREAM_DATA),
        (True, 2, FrameType.STREAM_OFF_LEN_FIN),  # STREAM on our own uni stream
        (True, 2, FrameType.RESET_STREAM),
        (True, 3, FrameType.MAX_STREAM_DATA),  # the peer's uni stream has no send half
        (True, 3, FrameType.STOP_SENDING),
        (False, 1, FrameType.STOP_SENDING),  # the server's bidi stream, never opened
    ],
)
def test_frames_for_impossible_stream_states(is_client, sid, frame_type) -> None:
    streams = manager(is_client=is_client)
    if sid == 2:
        streams.open_local(True)  # even once opened, our uni stream takes no data
    with pytest.raises(QuicError) as exc:
        streams.get_or_create_peer(sid, frame_type)
    assert error_code(exc) == TransportError.STREAM_STATE_ERROR
    assert exc.value.frame_type == frame_type


def test_frames_for_forgotten_streams_are_ignored() -> None:
    streams = manager(is_client=True)
    stream = streams.open_local(True)
    stream.send.write(b"x", fin=True)
    stream.send.next_frame(10, 10)
    stream.send.on_acked(0, 1, True)
    streams.maybe_forget(2)
    assert streams.get(2) is None
    assert streams.get_or_create_peer(2, FrameType.MAX_STREAM_DATA) is None
    peer = streams.get_or_create_peer(3, FrameType.STREAM)
    peer.recv.on_frame(0, b"", True)
    peer.recv.read(10)
    streams.maybe_forget(3)
    assert streams.get_or_create_peer(3, FrameType.STREAM) is None


def _close_peer_stream(streams: StreamManager, sid: int) -> None:
    stream = streams.get_or_create_peer(sid, FrameType.STREAM)
    stream.recv.on_frame(0, b"", True)
    stream.recv.read(10)
    if stream.send is not None:
        stream.send.reset(0)
    streams.maybe_forget(sid)


def test_max_streams_update_after_closing_streams() -> None:
    streams = manager(is_client=True, bidi=4, uni=4)
    for index in range(4):
        streams.get_or_create_peer(index * 4 + 1, FrameType.STREAM)
    with pytest.raises(QuicError):
        streams.get_or_create_peer(17, FrameType.STREAM)
    _close_peer_stream(streams, 1)
    assert streams.max_streams_update(False) is None  # one of four closed: not yet half
    _close_peer_stream(streams, 5)
    assert streams.max_streams_update(False) == 6
    assert streams.local_max_streams(False) == 6
    assert streams.max_streams_update(False) is None
    assert streams.max_streams_update(True) is None
    streams.get_or_create_peer(21, FrameType.STREAM)  # index 5 is allowed now
    with pytest.raises(QuicError):
        streams.get_or_create_peer(25, FrameType.STREAM)


def test_peer_windows_apply_after_parameters_arrive() -> None:
    streams = StreamManager(True, params(window=500))
    assert streams.peer_max == [0, 0]
    with pytest.raises(StreamLimitError):
        streams.open_local(False)
    peer = params(bidi=3, uni=2)
    peer.initial_max_stream_data_bidi_remote = 777
    peer.initial_max_stream_data_uni = 555
    streams.set_peer_params(peer)
    assert streams.open_local(False).send.max_stream_data == 777
    assert streams.open_local(True).send.max_stream_data == 555
    assert streams.open_local(False).recv.max_stream_data == 500


# ---------------------------------------------------------------------------
# CRYPTO


def test_crypto_stream_round_trip_with_loss() -> None:
    sender, receiver = CryptoStream(), CryptoStream()
    message = bytes(random.Random(1).randbytes(5000))
    sender.write(message)
    frames = []
    while (frame := sender.next_frame(1100)) is not None:
        frames.append((frame[0], bytes(frame[1])))
    assert sum(len(d) for _, d in frames) == 5000
    for offset, data in reversed(frames[1:]):
        receiver.on_frame(offset, data)
        sender.on_acked(offset, len(data))
    assert receiver.read() == b""
    sender.on_lost(frames[0][0], len(frames[0][1]))
    offset, data = sender.next_frame(2000)
    assert (offset, len(data)) == (0, 1100)
    receiver.on_frame(offset, data)
    receiver.on_frame(offset, data)  # a duplicate
    assert receiver.read() == message
    sender.on_acked(0, 1100)
    sender.retransmit_unacked()
    assert sender.next_frame(2000) is None


def test_crypto_retransmit_unacked_on_pto() -> None:
    sender = CryptoStream()
    sender.write(b"x" * 300)
    sender.next_frame(100)
    sender.next_frame(100)
    sender.on_acked(100, 100)
    sender.retransmit_unacked()
    assert [(o, len(d)) for o, d in iter(lambda: sender.next_frame(1000), None)] == [
        (0, 100),
        (200, 100),
    ]


def test_crypto_buffer_exceeded() -> None:
    receiver = CryptoStream()
    receiver.on_frame(1, bytes(CRYPTO_BUFFER_LIMIT - 1))
    assert receiver.stored == CRYPTO_BUFFER_LIMIT - 1
    with pytest.raises(QuicError) as exc:
        receiver.on_frame(CRYPTO_BUFFER_LIMIT, b"x")
    assert error_code(exc) == TransportError.CRYPTO_BUFFER_EXCEEDED
    receiver.on_frame(0, b"y")
    assert len(receiver.read()) == CRYPTO_BUFFER_LIMIT
    receiver.on_frame(CRYPTO_BUFFER_LIMIT, b"x")  # the window moved with the read offset


# ---------------------------------------------------------------------------
# bulk transfer: memory stays bounded by what is unacknowledged


def test_bulk_send_keeps_only_unacked_bytes() -> None:
    total, chunk_size, frame_size, in_flight_max = 64 << 20, 64 << 10, 1200, 100
    chunk = bytes(chunk_size)
    send = SendStream(max_stream_data=1 << 62, buffer_limit=4 << 20)
    written = 0
    in_flight: list[tuple[int, int]] = []
    peak = joined = 0
    while written < total or in_flight or send.has_data():
        while written < total and send.room(send.buffer_limit) >= chunk_size:
            send.write(chunk, fin=written + chunk_size == total)
            written += chunk_size
        while len(in_flight) < in_flight_max:
            frame = send.next_frame(frame_size, 1 << 62)
            if frame is None:
                break
            joined += type(frame[1]) is not memoryview  # a copy only across chunks
            in_flight.append((frame[0], len(frame[1])))
        unacked = send.sent_end - in_flight[0][0] if in_flight else 0
        assert send.memory <= send.buffered + chunk_size
        assert send.buffered <= 4 << 20
        peak = max(peak, send.memory)
        for offset, length in in_flight[: in_flight_max // 2]:
            send.on_acked(offset, length, offset + length == total)
        del in_flight[: in_flight_max // 2]
        assert unacked <= in_flight_max * frame_size
    assert send.state == S.QUIC_STREAM_SEND_STATE_RECVD
    assert send.memory == 0 and send.buffered == 0
    assert peak <= (4 << 20) + chunk_size
    assert joined <= total // chunk_size
    assert len(send._chunks) < 64  # acknowledged chunks are dropped as they go


def test_bulk_receive_holds_only_unread_bytes() -> None:
    window, frame_size = 1 << 20, 1200
    recv = RecvStream(window)
    payload = random.Random(2).randbytes(frame_size * 64)
    offset = received = 0
    for _ in range(200):  # ~15 MiB, with every 17th frame reordered behind its successor
        frames = [
            (o, payload[o % len(payload) : o % len(payload) + frame_size])
            for o in range(offset, offset + 64 * frame_size, frame_size)
        ]
        for i in range(0, len(frames) - 1, 17):
            frames[i], frames[i + 1] = frames[i + 1], frames[i]
        for o, data in frames:
            recv.on_frame(o, data, False)
            assert recv.stored <= window
        offset += 64 * frame_size
        while recv.readable:
            data, _ = recv.read(65536)
            assert data == (payload * 2)[received % len(payload) :][: len(data)]
            received += len(data)
        if (update := recv.max_stream_data_update(0.0, 0.0)) is not None:
            assert update == received + window
    assert received == offset and recv.stored == 0


@pytest.mark.parametrize("size", [1000, 100_000])
@pytest.mark.parametrize("kind", ["bytearray", "memoryview"])
def test_a_write_of_a_mutable_buffer_is_copied(size: int, kind: str) -> None:
    """Only immutable bytes are kept as written; a buffer the caller may overwrite
    once the write returns is copied."""
    send = SendStream(max_stream_data=1 << 20)
    source = bytearray(os.urandom(size))
    original = bytes(source)
    send.write(source if kind == "bytearray" else memoryview(source), fin=True)
    source[:] = bytes(size)
    got = bytearray()
    while (chunk := send.next_frame(1 << 20, 1 << 20)) is not None and chunk[1]:
        got += chunk[1]
    assert bytes(got) == original


def test_a_frame_across_chunks_comes_as_views_of_them() -> None:
    """Data spanning written chunks is handed out as views, in order, so that sealing
    the packet is the one copy; next_frame joins them for callers that want one piece."""
    writes = [os.urandom(20_000) for _ in range(4)]
    send = SendStream(max_stream_data=1 << 20)
    for data in writes:
        send.write(data)
    offset, pieces, length, fin, new = send.next_pieces(50_000, 1 << 20)
    assert (offset, length, fin, new) == (0, 50_000, False, 50_000)
    assert len(pieces) == 3 and all(type(p) is memoryview for p in pieces)
    assert b"".join(pieces) == b"".join(writes)[:50_000]
    offset, data, fin, new = send.next_frame(50_000, 1 << 20)
    assert (offset, bytes(data), new) == (50_000, b"".join(writes)[50_000:], 30_000)


@settings(max_examples=200, deadline=None)
@given(
    writes=st.lists(st.integers(1, 5000), min_size=1, max_size=12),
    fin=st.booleans(),
    size=st.integers(1, 1500),
    count=st.integers(0, 70),
    credit=st.integers(-10, 40_000),
    window=st.integers(0, 40_000),
    sent_first=st.integers(0, 3000),
)
def test_full_frames_are_the_frames_next_pieces_gives_one_by_one(
    writes: list[int], fin: bool, size: int, count: int, credit: int, window: int, sent_first: int
) -> None:
    """full_frames takes at once what next_pieces would take frame by frame, stopping
    where one of them would be short, carry the FIN, or exceed a window."""
    streams = [SendStream(max_stream_data=window) for _ in range(2)]
    data = os.urandom(sum(writes))
    for send in streams:
        at = 0
        for n in writes:  # chunks of every size: small ones collect in the tail
            send.write(data[at : at + n])
            at += n
        if fin:
            send.write(b"", fin=True)
        send.next_pieces(sent_first, credit)  # some already sent
    batch, single = streams
    start = batch.sent_end
    frames = batch.full_frames(size, count, credit - start)
    expected = []
    for _ in range(count):
        frame = single.next_pieces(size, credit - single.sent_end)
        if frame is None or frame[2] != size or frame[3]:
            break
        expected.append(b"".join(frame[1]))
    assert [b"".join(parts) for parts in frames] == expected
    assert batch.sent_end == start + size * len(frames)
    assert data[start : batch.sent_end] == b"".join(expected)


def test_full_frames_leave_lost_data_to_next_pieces() -> None:
    send = SendStream(max_stream_data=100_000)
    send.write(bytes(50_000))
    send.next_pieces(10_000, 100_000)
    send.on_lost(0, 1000, False)
    assert send.full_frames(1000, 5, 100_000) == []
    assert send.next_pieces(1000, 100_000)[:3:2] == (0, 1000)
