"""Receive windows and send buffers that grow with the path (quic/stream.py): a long,
fast path must not be held to the configured window per round trip, and a slow reader
must not make the receiver promise more than it configured."""

from __future__ import annotations

import heapq
import itertools

import pytest

from quic import stream as qstream
from quic.stream import (
    DEFAULT_SEND_BUFFER,
    MAX_CONNECTION_WINDOW,
    MAX_SEND_BUFFER,
    MAX_STREAM_WINDOW,
    FlowController,
    RecvStream,
)
from quic.transport_params import default_local_parameters
from tests.unit.test_connection import CLIENT_ADDR, SERVER_ADDR, Pair

WINDOW = 1 << 20
RTT = 0.040
CONFIGURED = default_local_parameters()


def drain(recv: RecvStream, n: int) -> None:
    recv.on_frame(recv.read_offset, bytes(n), False)
    recv.read(n)


def test_a_window_drained_within_two_round_trips_doubles_up_to_its_cap() -> None:
    recv = RecvStream(WINDOW)
    drain(recv, WINDOW // 2 + 1)
    assert recv.max_stream_data_update(0.0, RTT) == WINDOW // 2 + 1 + WINDOW  # first: as is
    expected = WINDOW
    for step in range(8):
        drain(recv, recv.window // 2 + 1)
        recv.max_stream_data_update(0.050 * (step + 1), RTT)  # 50 ms later: < 2 RTTs
        expected = min(2 * expected, MAX_STREAM_WINDOW)
        assert recv.window == expected
        assert recv.max_stream_data == recv.read_offset + recv.window
    assert recv.window == MAX_STREAM_WINDOW


def test_a_window_drained_slowly_stays() -> None:
    recv = RecvStream(WINDOW)
    for step in range(4):
        drain(recv, WINDOW // 2 + 1)
        recv.max_stream_data_update(0.1 * step, RTT)  # 100 ms apart: 2.5 RTTs
    assert recv.window == WINDOW


def test_the_connection_window_grows_and_follows_its_streams() -> None:
    flow = FlowController(2 * WINDOW)
    flow.on_received(WINDOW + 1)
    flow.on_consumed(WINDOW + 1)
    assert flow.max_data_update(0.0, RTT) == 3 * WINDOW + 1
    flow.on_received(WINDOW + 1)
    flow.on_consumed(WINDOW + 1)
    assert flow.max_data_update(0.010, RTT) == 2 * WINDOW + 2 + 4 * WINDOW
    flow.follow_stream_window(MAX_STREAM_WINDOW)
    assert flow.window == MAX_CONNECTION_WINDOW >= MAX_STREAM_WINDOW * 3 // 2


def transfer(total: int, read_per_ms: int | None, one_way: float = RTT / 2):
    """Send ``total`` bytes server to client over a link delaying each datagram by
    ``one_way`` seconds, the client reading at most ``read_per_ms`` bytes a millisecond
    (None: all it has). Returns (simulated seconds, largest send buffer the server
    offered, the client's stream and connection windows, the most it ever buffered)."""
    pair = Pair()
    pair.handshake()
    server, client = pair.server, pair.client
    sid = server.open_stream(uni=False)
    block = bytes(1 << 16)
    wire: list = []
    order = itertools.count()
    now = start = pair.now
    sent = got = buffer_peak = stored_peak = 0
    for _ in range(20_000):  # simulated milliseconds
        send = server.streams.get(sid).send
        buffer_peak = max(buffer_peak, server.send_buffer(send))
        while sent < total and server.stream_send_room(sid) >= len(block):
            server.send_stream(sid, block, sent + len(block) >= total, sent == 0)
            sent += len(block)
        for conn, peer, addr in ((server, client, SERVER_ADDR), (client, server, CLIENT_ADDR)):
            deadline = conn.next_deadline()
            if deadline is not None and deadline <= now:
                conn.handle_timer(now)
            for datagram in conn.datagrams_to_send(now):
                heapq.heappush(wire, (now + one_way, next(order), peer, datagram, addr))
        while wire and wire[0][0] <= now:
            _, _, peer, datagram, addr = heapq.heappop(wire)
            peer.receive_datagram(datagram, addr, now)
        recv = client.streams.get(sid)
        if recv is not None:
            stored_peak = max(stored_peak, recv.recv.stored)
        budget = read_per_ms
        while (budget is None or budget > 0) and (chunk := client.read_stream(budget or 1 << 20)):
            got += len(chunk[1])
            budget = None if budget is None else budget - len(chunk[1])
        if got >= total:
            recv = client.streams.get(sid).recv
            return now - start, buffer_peak, recv.window, client.flow_recv.window, stored_peak
        now += 0.001
    pytest.fail("transfer did not finish")


def test_a_long_fast_path_grows_windows_and_send_buffer(monkeypatch) -> None:
    seconds, buffer_peak, stream_window, conn_window, _ = transfer(24 << 20, None)
    assert DEFAULT_SEND_BUFFER < buffer_peak <= MAX_SEND_BUFFER
    assert CONFIGURED.initial_max_stream_data_bidi_local < stream_window <= MAX_STREAM_WINDOW
    assert stream_window * 3 // 2 <= conn_window <= MAX_CONNECTION_WINDOW
    # The same transfer held to the configured window and buffer takes far longer.
    monkeypatch.setattr(qstream, "WINDOW_GROWTH_RTTS", 0)
    monkeypatch.setattr("quic.connection.MAX_SEND_BUFFER", 0)
    fixed, fixed_buffer, fixed_window, _, _ = transfer(24 << 20, None)
    assert fixed_buffer == DEFAULT_SEND_BUFFER
    assert fixed_window == CONFIGURED.initial_max_stream_data_bidi_local
    assert seconds < fixed / 2


def test_a_slow_reader_keeps_the_configured_windows() -> None:
    """A window grows when half of it is read within two round trips, so a reader of R
    bytes a second can grow it to about 4 * R * RTT and no further: what it takes to
    keep that reader fed. At 4 KiB a millisecond that is 0.66 MB, under the configured
    windows, so they stay, and what waits unread stays within them."""
    _, _, stream_window, conn_window, stored_peak = transfer(4 << 20, 4 << 10)
    assert stream_window == CONFIGURED.initial_max_stream_data_bidi_local
    assert conn_window == CONFIGURED.initial_max_data
    assert stored_peak <= stream_window
