"""The sender's stream run charges pacing, the congestion window and loss recovery once
for all its packets: the books must read as if each packet had been charged alone."""

from __future__ import annotations

import os

import pytest

from quic.connection import Connection
from tests.unit.test_connection import Pair, read_all


def check_books(conn: Connection) -> None:
    recovery = conn.recovery
    in_flight = 0
    for sp in recovery._spaces:
        packets = list(sp.sent.values())
        in_flight += sum(p.sent_bytes for p in packets if p.in_flight)
        assert sp.ack_eliciting_in_flight == sum(p.ack_eliciting for p in packets)
        if packets:
            assert sp.largest_sent >= max(p.packet_number for p in packets)
    assert recovery.cc.bytes_in_flight == in_flight


def transfer(pair: Pair, size: int, check) -> None:
    data = os.urandom(size)
    sid = pair.server.open_stream(uni=False)
    pair.server.send_stream(sid, data, True, True)
    got = bytearray()

    def done() -> bool:
        check()
        return read_all(pair.client, sid, got)

    pair.run_until(done, limit=300_000)
    assert bytes(got) == data


@pytest.mark.parametrize("loss", [0.0, 0.1])
def test_bytes_in_flight_and_counts_add_up(loss: float) -> None:
    pair = Pair(loss=loss, seed=5)
    pair.handshake()
    transfer(pair, 400_000, lambda: check_books(pair.server))
    assert pair.server.spaces[2].next_pn > 300  # the run built most of them


def test_every_packet_number_is_logged_once() -> None:
    pair = Pair()
    pair.handshake()
    sent: list[int] = []
    pair.server.trace = lambda name, data: (
        sent.append(data["header"]["packet_number"])
        if name == "transport:packet_sent" and data["header"]["packet_type"] == "1RTT"
        else None
    )
    first = pair.server.spaces[2].next_pn
    transfer(pair, 200_000, lambda: None)
    assert sent == list(range(first, pair.server.spaces[2].next_pn))


def test_ecn_counts_every_marked_packet() -> None:
    pair = Pair(ecn=True)
    pair.handshake()
    before = pair.server.recovery.ecn._sent[2]
    first = pair.server.spaces[2].next_pn
    transfer(pair, 200_000, lambda: None)
    assert pair.server.recovery.ecn._sent[2] - before == pair.server.spaces[2].next_pn - first


def test_keys_update_within_runs() -> None:
    """A confidentiality limit small enough to be reached many times in one transfer:
    runs stop at it, keys update, and every byte arrives."""
    pair = Pair()
    pair.handshake()
    pair.server.confidentiality_limit = 64
    phases = set()
    transfer(pair, 300_000, lambda: phases.add(pair.server.key_phase))
    assert phases == {0, 1}
