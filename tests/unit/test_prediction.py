"""Header prediction on receive: the bulk packets it takes, the ones it leaves to the
general path, and the same outcome either way."""

from __future__ import annotations

import os

import pytest

from quic import connection as connection_module
from quic.connection import Connection, State
from quic.errors import TransportError
from tests.unit.test_connection import Pair, read_all

BULK_START = 1 << 14  # from here on a STREAM frame's offset takes four bytes: bulk shape


def count_general(conn: Connection) -> list[int]:
    """Count the packets ``conn`` hands to the general path (its ``_on_packet``)."""
    calls = [0]
    general = conn._on_packet

    def counted(*args):
        calls[0] += 1
        return general(*args)

    conn._on_packet = counted
    return calls


def no_prediction(conn: Connection) -> None:
    conn._receive_predicted = lambda *args: False


def transfer(pair: Pair, size: int) -> bytes:
    """``size`` bytes from server to client on a new stream, checked as the client reads
    them."""
    data = os.urandom(size)
    sid = pair.server.open_stream(uni=False)
    pair.server.send_stream(sid, data, True, True)
    got = bytearray()
    pair.run_until(lambda: read_all(pair.client, sid, got), limit=200_000)
    assert bytes(got) == data
    return data


def test_in_order_bulk_packets_skip_the_general_path() -> None:
    pair = Pair()
    pair.handshake()
    general = count_general(pair.client)
    before = pair.client.spaces[2].largest_received
    transfer(pair, 400_000)
    received = pair.client.spaces[2].largest_received - before
    # Only the first 16 KiB (short offsets), the FIN and packets with ACKs or credit
    # go the general way; the rest is taken by prediction.
    assert general[0] < received / 4
    assert pair.client.flow_recv.used == 400_000


@pytest.mark.parametrize("loss", [0.0, 0.05, 0.2])
def test_prediction_changes_nothing_but_the_path_taken(loss: float) -> None:
    """The same link (seeded loss) with prediction over whole flights, packet by packet,
    and not at all: the same bytes, the same acknowledged ranges, the same flow
    control counts."""
    outcomes = []
    for batch, predict in ((True, True), (False, True), (False, False)):
        pair = Pair(loss=loss, seed=7, batch=batch)
        pair.handshake()
        if not predict:
            no_prediction(pair.client)
        transfer(pair, 300_000)
        client = pair.client
        outcomes.append(
            (
                [list(r) for r in client.spaces[2].ranges],
                client.flow_recv.used,
                client.flow_recv.consumed,
                client.bytes_received,
                client.last_activity,
            )
        )
    assert outcomes[0] == outcomes[1] == outcomes[2]


def test_a_replayed_bulk_packet_is_a_duplicate() -> None:
    pair = Pair()
    pair.handshake()
    sid = pair.server.open_stream(uni=False)
    pair.server.send_stream(sid, bytes(range(256)) * 200, False, True)
    datagrams = []
    while True:
        pair.now += 0.001
        out = pair.server.datagrams_to_send(pair.now)
        if not out:
            break
        datagrams += out
    for datagram in datagrams:
        pair.client.receive_datagram(datagram, pair.client.peer_addr, pair.now)
    used = pair.client.flow_recv.used
    readable = pair.client.streams.get(sid).recv.readable
    for datagram in datagrams[-3:]:
        pair.client.receive_datagram(datagram, pair.client.peer_addr, pair.now)
    assert pair.client.flow_recv.used == used
    assert pair.client.streams.get(sid).recv.readable == readable
    assert pair.client.state == State.ESTABLISHED


@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("limit", ["stream", "connection"])
def test_a_bulk_packet_beyond_the_window_closes_the_connection(limit: str, batch: bool) -> None:
    window = 3 * BULK_START  # the offending frame is of bulk shape
    params = (
        {"initial_max_stream_data_bidi_remote": window}
        if limit == "stream"
        else {"initial_max_data": window}
    )
    pair = Pair(batch=batch, **params)
    pair.handshake()
    sid = pair.client.open_stream(uni=False)
    # A misbehaving peer ignores our windows.
    pair.client.streams.get(sid).send.max_stream_data = 1 << 24
    pair.client.flow_send.limit = 1 << 24
    pair.client.send_stream(sid, bytes(2 * window), True, True)
    pair.run_until(lambda: pair.server.state >= State.CLOSING)
    assert pair.server.close_info.error_code == TransportError.FLOW_CONTROL_ERROR
    # Closed on the first packet beyond the window, not some packets later.
    assert pair.server.streams.get(sid).recv.highest <= window + pair.server.max_datagram_size
    assert pair.server.flow_recv.used <= window + pair.server.max_datagram_size


def test_reserved_bits_in_a_bulk_packet_are_a_protocol_violation(monkeypatch) -> None:
    pair = Pair()
    pair.handshake()
    sid = pair.server.open_stream(uni=False)
    pair.server.send_stream(sid, bytes(BULK_START * 2), False, True)
    got = bytearray()
    pair.run_until(lambda: read_all(pair.client, sid, got) or len(got) >= BULK_START * 2)
    # Only packets of the stream run, which hold one STREAM frame each and follow the
    # flush's first packet in order: the packets prediction would take.
    starts = connection_module.short_header_starts

    def reserved_bits(*args) -> tuple[bytes, bytes]:
        return tuple(bytes((start[0] | 0x08,)) + start[1:] for start in starts(*args))

    monkeypatch.setattr(connection_module, "short_header_starts", reserved_bits)
    pair.server.send_stream(sid, bytes(4000), False, False)
    pair.run_until(lambda: pair.client.state >= State.CLOSING)
    assert pair.client.close_info.error_code == TransportError.PROTOCOL_VIOLATION


def bulk_flight(pair: Pair, size: int) -> tuple[int, list[bytes]]:
    """A stream past BULK_START with ``size`` more bytes from the server, sent but not
    delivered: the stream and the datagrams, in the order they left."""
    sid = pair.server.open_stream(uni=False)
    pair.server.send_stream(sid, bytes(BULK_START), False, True)
    got = bytearray()
    pair.run_until(lambda: read_all(pair.client, sid, got) or len(got) >= BULK_START)
    pair.server.send_stream(sid, os.urandom(size), False, False)
    datagrams = []
    for _ in range(1000):
        pair.now += 0.001
        out = pair.server.datagrams_to_send(pair.now)
        if not out:
            break
        datagrams += out
    return sid, datagrams


def deliver(pair: Pair, datagrams: list[bytes]) -> None:
    pair.client.receive_datagrams(datagrams, pair.client.peer_addr, pair.now)


def test_a_batch_is_taken_in_one_pass() -> None:
    pair = Pair(batch=True)
    pair.handshake()
    general = count_general(pair.client)
    singles = [0]
    single = pair.client.receive_datagram

    def counted(*args) -> None:
        singles[0] += 1
        single(*args)

    pair.client.receive_datagram = counted
    before = pair.client.spaces[2].largest_received
    transfer(pair, 400_000)
    received = pair.client.spaces[2].largest_received - before
    assert general[0] + singles[0] < received / 4


def test_a_batch_with_a_hole_then_the_late_packet_and_a_replay() -> None:
    pair = Pair()
    pair.handshake()
    sid, datagrams = bulk_flight(pair, 8_000)  # within the first congestion window
    client = pair.client
    space = client.spaces[2]
    low, first = space.ranges[-1][0], space.largest_received + 1
    last = first + len(datagrams) - 1
    used = client.flow_recv.used
    deliver(pair, datagrams[:3] + datagrams[4:])
    assert [list(r) for r in space.ranges[-2:]] == [[low, first + 2], [first + 4, last]]
    assert space.ack_immediately  # the hole is reported at once (RFC 9000 §13.2.1)
    deliver(pair, [datagrams[3], datagrams[5]])
    assert [list(r) for r in space.ranges[-1:]] == [[low, last]]
    assert client.flow_recv.used == used + 8_000
    got = bytearray()
    read_all(client, sid, got)
    assert len(got) == 8_000


def test_a_forged_packet_in_a_batch_is_dropped_alone() -> None:
    pair = Pair()
    pair.handshake()
    _sid, datagrams = bulk_flight(pair, 8_000)
    client = pair.client
    first = client.spaces[2].largest_received + 1
    forged = bytearray(datagrams[2])
    forged[-1] ^= 1
    deliver(pair, [*datagrams[:2], bytes(forged), *datagrams[3:]])
    assert client.failed_opens == 1
    assert client.state == State.ESTABLISHED
    assert client.spaces[2].largest_received == first + len(datagrams) - 1
    assert client.spaces[2].ranges[-1][0] == first + 3


def test_a_key_update_inside_a_batch_is_followed() -> None:
    pair = Pair()
    pair.handshake()
    transfer(pair, 1000)  # a packet on the first keys acknowledged: updates may start
    sid = pair.server.open_stream(uni=False)
    data = os.urandom(BULK_START + 8_000)  # within the first congestion window
    pair.server.send_stream(sid, data[:BULK_START], False, True)
    got = bytearray()
    pair.run_until(lambda: read_all(pair.client, sid, got) or len(got) >= BULK_START)
    pair.server.send_stream(sid, data[BULK_START : BULK_START + 4_000], False, False)
    pair.now += 0.001
    flight = pair.server.datagrams_to_send(pair.now)
    assert pair.server.update_keys()
    pair.server.send_stream(sid, data[BULK_START + 4_000 :], True, False)
    pair.now += 0.001
    flight += pair.server.datagrams_to_send(pair.now)
    deliver(pair, flight)
    assert pair.client.recv_phase == 1
    read_all(pair.client, sid, got)
    assert bytes(got) == data


@pytest.mark.parametrize("loss", [0.02, 0.1])
def test_batches_over_a_lossy_link_deliver_intact(loss: float) -> None:
    pair = Pair(loss=loss, seed=3, batch=True)
    pair.handshake()
    transfer(pair, 300_000)
