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
    """The same link (seeded loss) with and without prediction: the same bytes, the
    same acknowledged ranges, the same flow control counts."""
    outcomes = []
    for predict in (True, False):
        pair = Pair(loss=loss, seed=7)
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
    assert outcomes[0] == outcomes[1]


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


@pytest.mark.parametrize("limit", ["stream", "connection"])
def test_a_bulk_packet_beyond_the_window_closes_the_connection(limit: str) -> None:
    window = 3 * BULK_START  # the offending frame is of bulk shape
    params = (
        {"initial_max_stream_data_bidi_remote": window}
        if limit == "stream"
        else {"initial_max_data": window}
    )
    pair = Pair(**params)
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
    # Only packets of the bulk loop, which hold one STREAM frame each and follow the
    # flush's first packet in order: the packets prediction would take.
    encode, run = connection_module.encode_short_header, pair.server._stream_run
    in_run = [False]

    def marked_run(now, out) -> None:
        in_run[0] = True
        try:
            run(now, out)
        finally:
            in_run[0] = False

    def reserved_bits(*args, **kwargs) -> bytes:
        header = encode(*args, **kwargs)
        return bytes((header[0] | 0x08,)) + header[1:] if in_run[0] else header

    pair.server._stream_run = marked_run
    monkeypatch.setattr(connection_module, "encode_short_header", reserved_bits)
    pair.server.send_stream(sid, bytes(4000), False, False)
    pair.run_until(lambda: pair.client.state >= State.CLOSING)
    assert pair.client.close_info.error_code == TransportError.PROTOCOL_VIOLATION
