"""Streams: reassembly, retransmission by range, flow control, stream limits."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quic import uapi
from quic.errors import QuicError, TransportError
from quic.stream import (
    CryptoStream,
    FlowController,
    RecvStream,
    SendStream,
    StreamLimitError,
    StreamManager,
    StreamStateError,
)
from quic.transport_params import TransportParameters


@st.composite
def chunked(draw):
    """A payload cut into chunks, shuffled, some duplicated or overlapping."""
    data = draw(st.binary(min_size=0, max_size=3000))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=20)))
    bounds = [0, *cuts, len(data)]
    pieces = [(a, data[a:b]) for a, b in itertools.pairwise(bounds)]
    extra = draw(st.lists(st.tuples(st.integers(0, len(data)), st.integers(0, 200)), max_size=5))
    pieces += [(a, data[a : a + n]) for a, n in extra]
    order = draw(st.permutations(pieces))
    return data, order


@given(chunked())
def test_reassembly_delivers_exactly_once_in_order(case) -> None:
    data, pieces = case
    recv = RecvStream(max_stream_data=len(data) + 10)
    out = bytearray()
    fins = 0
    for offset, piece in pieces:
        recv.on_frame(offset, piece, offset + len(piece) == len(data))
        chunk, fin = recv.read(1 << 20)
        out += chunk
        fins += fin
    recv.on_frame(len(data), b"", True)
    chunk, fin = recv.read(1 << 20)
    out += chunk
    fins += fin
    assert bytes(out) == data
    assert fins == 1


@given(st.binary(min_size=1, max_size=20000), st.integers(0, 2**32), st.floats(0, 0.5))
def test_send_side_with_random_loss_reconstructs(data: bytes, seed: int, loss: float) -> None:
    rng = random.Random(seed)
    send = SendStream(max_stream_data=1 << 30)
    send.write(data, fin=True)
    recv = RecvStream(max_stream_data=1 << 30)
    out = bytearray()
    for _ in range(10000):
        chunk = send.next_frame(rng.randint(1, 1500), 1 << 30)
        if chunk is None:
            if send.state == uapi.QUIC_STREAM_SEND_STATE_RECVD:
                break
            continue
        offset, piece, fin, _ = chunk
        if rng.random() < loss:
            send.on_lost(offset, len(piece), fin)
            continue
        recv.on_frame(offset, piece, fin)
        out += recv.read(1 << 20)[0]
        send.on_acked(offset, len(piece), fin)
    assert bytes(out) == data
    assert send.state == uapi.QUIC_STREAM_SEND_STATE_RECVD
    assert send.room() == 0  # finished streams take no more data


def test_retransmission_skips_ranges_acked_since() -> None:
    send = SendStream(max_stream_data=10_000)
    send.write(bytes(3000))
    frames = [send.next_frame(1000, 10_000) for _ in range(3)]
    send.on_acked(1000, 1000, False)
    send.on_lost(0, 3000, False)
    again = []
    while (chunk := send.next_frame(5000, 10_000)) is not None:
        again.append((chunk[0], len(chunk[1])))
    assert again == [(0, 1000), (2000, 1000)]
    assert [f[3] for f in frames] == [1000, 1000, 1000]


def test_stream_and_connection_credit_limit_new_data() -> None:
    send = SendStream(max_stream_data=1500)
    send.write(bytes(5000))
    offset, data, fin, new = send.next_frame(1200, 700)
    assert (offset, len(data), fin, new) == (0, 700, False, 700)
    offset, data, _, _ = send.next_frame(1200, 10_000)
    assert (offset, len(data)) == (700, 800)
    assert send.next_frame(1200, 10_000) is None
    assert send.blocked()
    send.on_max_stream_data(6000)
    assert send.next_frame(1200, 10_000)[0] == 1500


def test_flow_control_violation() -> None:
    recv = RecvStream(max_stream_data=1000)
    with pytest.raises(QuicError) as info:
        recv.on_frame(900, bytes(200), False)
    assert info.value.code == TransportError.FLOW_CONTROL_ERROR


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ((0, 100, True), (0, 120, False)),
        ((0, 100, True), (0, 90, True)),
        ((0, 100, False), (0, 50, True)),
    ],
)
def test_final_size_errors(first, second) -> None:
    recv = RecvStream(max_stream_data=10_000)
    recv.on_frame(first[0], bytes(first[1]), first[2])
    with pytest.raises(QuicError) as info:
        recv.on_frame(second[0], bytes(second[1]), second[2])
    assert info.value.code == TransportError.FINAL_SIZE_ERROR


def test_window_update_after_half_is_read() -> None:
    recv = RecvStream(max_stream_data=1000)
    recv.on_frame(0, bytes(400), False)
    recv.read(400)
    assert not recv.update_pending
    recv.on_frame(400, bytes(200), False)
    recv.read(200)
    assert recv.update_pending and recv.max_stream_data == 1600


def test_connection_flow_control() -> None:
    flow = FlowController(1000)
    flow.on_received(800)
    with pytest.raises(QuicError) as info:
        flow.on_received(300)
    assert info.value.code == TransportError.FLOW_CONTROL_ERROR
    flow.on_consumed(600)
    assert flow.max_data_update() == 1600
    assert flow.max_data_update() is None


def test_reset_and_stop_sending_states() -> None:
    send = SendStream(max_stream_data=10_000)
    send.write(bytes(100))
    send.next_frame(50, 10_000)
    assert send.on_stop_sending(7) == 50
    assert send.state == uapi.QUIC_STREAM_SEND_STATE_RESET_SENT
    with pytest.raises(StreamStateError):
        send.write(b"more")
    recv = RecvStream(max_stream_data=1000)
    recv.on_frame(0, bytes(10), False)
    assert recv.on_reset(9, 300) == 290
    assert recv.state == uapi.QUIC_STREAM_RECV_STATE_RESET_RECVD
    assert recv.read(100) == (b"", True)


def test_crypto_stream_bounds_its_buffer() -> None:
    crypto = CryptoStream()
    crypto.on_frame(0, b"hello")
    assert crypto.read() == b"hello"
    with pytest.raises(QuicError) as info:
        crypto.on_frame(70_000, b"x")
    assert info.value.code == TransportError.CRYPTO_BUFFER_EXCEEDED


def manager(is_client: bool, bidi: int = 2, uni: int = 2) -> StreamManager:
    params = TransportParameters(
        initial_max_streams_bidi=bidi,
        initial_max_streams_uni=uni,
        initial_max_stream_data_bidi_local=1000,
        initial_max_stream_data_bidi_remote=1000,
        initial_max_stream_data_uni=1000,
    )
    streams = StreamManager(is_client, params)
    streams.set_peer_params(params)
    return streams


def test_stream_limits_and_ids() -> None:
    client = manager(True)
    assert [client.open_local(False).stream_id for _ in range(2)] == [0, 4]
    with pytest.raises(StreamLimitError):
        client.open_local(False)
    assert client.open_local(True).stream_id == 2
    server = manager(False)
    assert server.open_local(False).stream_id == 1
    assert server.open_local(True).stream_id == 3


def test_peer_stream_errors() -> None:
    server = manager(False, bidi=2)
    assert server.get_or_create_peer(4, 0x08).stream_id == 4
    assert server.get(0) is not None  # lower IDs of the type open implicitly
    with pytest.raises(QuicError) as info:
        server.get_or_create_peer(8, 0x08)
    assert info.value.code == TransportError.STREAM_LIMIT_ERROR
    with pytest.raises(QuicError) as info:
        server.get_or_create_peer(5, 0x08)  # server-initiated, never opened
    assert info.value.code == TransportError.STREAM_STATE_ERROR


def test_max_streams_grows_as_peer_streams_close() -> None:
    server = manager(False, bidi=2)
    for sid in (0, 4):
        stream = server.get_or_create_peer(sid, 0x08)
        stream.recv.on_frame(0, b"x", True)
        stream.recv.read(10)
        stream.send.write(b"y", fin=True)
        offset, data, fin, _ = stream.send.next_frame(10, 10)
        stream.send.on_acked(offset, len(data), fin)
        server.maybe_forget(sid)
    assert server.was_closed(0) and server.get_or_create_peer(0, 0x08) is None
    assert server.max_streams_update(False) == 4
    with pytest.raises(StreamStateError):
        server.open_specific(0)


def test_bulk_send_keeps_only_unacked_bytes() -> None:
    send = SendStream(max_stream_data=1 << 40, buffer_limit=1 << 20)
    block = bytes(65536)
    written = 0
    peak = 0
    while written < 64 << 20:
        while send.room() >= len(block) and written < 64 << 20:
            send.write(block)
            written += len(block)
        while (chunk := send.next_frame(1200, 1 << 40)) is not None:
            offset, data, fin, _ = chunk
            send.on_acked(offset, len(data), fin)
        peak = max(peak, len(send._buf))
    assert peak <= 1 << 20
    assert send.sent_end == 64 << 20
