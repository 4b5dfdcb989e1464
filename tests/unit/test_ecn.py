"""ECN between two sans-I/O connections (RFC 9000 §13.4, RFC 9002 §7.1).

The simulated link of :class:`Pair` carries each datagram's ECN codepoint and can clear,
rewrite or CE-mark it, or drop marked datagrams, as paths in the wild do.
"""

from __future__ import annotations

import os

from quic.ecn import CE, ECT_0, ECT_1, NOT_ECT, EcnState
from tests.unit.test_connection import CLIENT_ADDR, SERVER_ADDR, Pair, transfer

APP_SPACE = 2


def ack_counts(conn) -> list[tuple[int, int, int] | None]:
    """Start recording the ECN counts of the ACK frames ``conn`` receives (None: none)."""
    seen: list[tuple[int, int, int] | None] = []

    def trace(name: str, data: dict) -> None:
        if name != "transport:packet_received":
            return
        for frame in data["frames"]:
            if frame["frame_type"] == "ack":
                counts = (frame["ect0"], frame["ect1"], frame["ce"]) if "ect0" in frame else None
                seen.append(counts)

    conn.trace = trace
    return seen


def one_rtt_packets_received(conn) -> list[int]:
    """Start counting the 1-RTT packets ``conn`` processes (a one-element list)."""
    count = [0]

    def trace(name: str, data: dict) -> None:
        if name == "transport:packet_received" and data["header"]["packet_type"] == "1RTT":
            count[0] += 1

    conn.trace = trace
    return count


def test_marks_are_counted_and_echoed_and_validation_succeeds() -> None:
    pair = Pair(ecn=True)
    seen = ack_counts(pair.client)
    pair.handshake()
    received = one_rtt_packets_received(pair.server)
    before = pair.server.spaces[APP_SPACE].ecn_counts[0]
    transfer(pair, 100_000)
    # Every 1-RTT packet arrived ECT(0) and the server counted each one once.
    assert pair.server.spaces[APP_SPACE].ecn_counts[0] - before == received[0] > 0
    assert pair.server.spaces[APP_SPACE].ecn_counts[1:] == [0, 0]
    assert seen and all(counts is not None for counts in seen)
    for conn in (pair.client, pair.server):
        assert conn.recovery.ecn.state == EcnState.CAPABLE
        assert conn.ecn_codepoint == ECT_0


def test_without_ecn_nothing_is_marked_or_counted() -> None:
    pair = Pair()
    seen = ack_counts(pair.client)
    pair.handshake()
    transfer(pair, 20_000)
    assert seen and all(counts is None for counts in seen)
    for conn in (pair.client, pair.server):
        assert conn.recovery.ecn.state == EcnState.DISABLED
        assert conn.ecn_codepoint == NOT_ECT
        assert all(space.ecn_counts is None for space in conn.spaces)


def test_bleaching_path_fails_validation_and_stops_marking() -> None:
    """Marks cleared towards the server: it has nothing to count, so its ACKs carry no
    counts, as those of a peer without ECN; the client must stop marking."""
    pair = Pair(ecn=True)
    pair.remark = lambda to, codepoint: NOT_ECT if to == "server" else codepoint
    seen = ack_counts(pair.client)
    pair.handshake()
    transfer(pair, 50_000)
    assert seen and all(counts is None for counts in seen)
    assert pair.client.recovery.ecn.state == EcnState.FAILED
    assert pair.client.ecn_codepoint == NOT_ECT
    # The other direction is untouched and validates.
    assert pair.server.recovery.ecn.state == EcnState.CAPABLE


def test_partly_bleached_marks_fail_validation_though_counts_are_sent() -> None:
    """Counts arrive but fall short of the marked packets acknowledged."""
    pair = Pair(ecn=True)
    arrivals = [0]

    def every_other(to: str, codepoint: int) -> int:
        if to != "server":
            return codepoint
        arrivals[0] += 1
        return codepoint if arrivals[0] % 2 else NOT_ECT

    pair.remark = every_other
    seen = ack_counts(pair.client)
    pair.handshake()
    transfer(pair, 50_000)
    assert any(counts is not None for counts in seen)
    assert pair.client.recovery.ecn.state == EcnState.FAILED
    assert pair.client.ecn_codepoint == NOT_ECT


def test_remarking_to_ect1_fails_validation() -> None:
    pair = Pair(ecn=True)
    pair.remark = lambda to, codepoint: ECT_1 if codepoint == ECT_0 else codepoint
    pair.handshake()
    transfer(pair, 20_000)
    for conn in (pair.client, pair.server):
        assert conn.recovery.ecn.state == EcnState.FAILED


def test_a_path_dropping_marked_packets_falls_back_to_unmarked() -> None:
    """Without the fallback no packet would ever arrive: after probe timeouts with no
    marked packet acknowledged, the client sends unmarked and the handshake completes."""
    pair = Pair(ecn=True)
    pair.remark = lambda to, codepoint: None if codepoint != NOT_ECT else codepoint
    pair.handshake()
    transfer(pair, 20_000)
    for conn in (pair.client, pair.server):
        assert conn.recovery.ecn.state == EcnState.FAILED


def test_ce_marks_reduce_the_window_once_per_round_trip() -> None:
    """A flight CE-marked in full, acknowledged datagram by datagram: each ACK raises
    the CE count, but only the first reduces the window, since the rest report packets
    sent before the reduction (RFC 9002 §7.3.2). A flight sent after it reduces again."""
    pair = Pair(ecn=True)
    pair.handshake()
    client, server = pair.client, pair.server
    sid = client.open_stream(uni=False)
    client.send_stream(sid, os.urandom(3_000_000), True, True)
    for _ in range(20):  # let the window grow, unmarked, as the application reads
        pair.exchange()
        while server.read_stream(65536) is not None:
            pass
    seen = ack_counts(client)

    def marked_flight() -> int:
        """Send one flight CE-marked, ACK each datagram at once; return the reductions."""
        reductions = 0
        pair.now += 0.001
        flight = client.datagrams_to_send(pair.now)
        assert len(flight) > 2
        for datagram in flight:
            window = client.recovery.cc.congestion_window
            pair.now += 0.0001
            server.receive_datagram(datagram, CLIENT_ADDR, pair.now, CE)
            for ack in server.datagrams_to_send(pair.now):
                client.receive_datagram(ack, SERVER_ADDR, pair.now, ECT_0)
            reductions += client.recovery.cc.congestion_window < window
        return reductions

    assert marked_flight() == 1
    assert len({counts[2] for counts in seen}) > 2  # several ACKs raised the CE count
    assert marked_flight() == 1
    assert server.spaces[APP_SPACE].ecn_counts[2] > 4
    assert client.recovery.ecn.state == EcnState.CAPABLE
