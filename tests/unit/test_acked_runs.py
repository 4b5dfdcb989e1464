"""An ACK's stream records are acknowledged a run at a time: the same end state as one
record at a time, whatever order the ACKs come in."""

from __future__ import annotations

import random

import pytest

from quic import uapi
from quic.connection import Connection
from quic.recovery import SentPacket
from quic.stream import SendStream
from tests.unit.test_connection import Pair


def sent_packets(pair: Pair, sids_and_sizes: list[tuple[int, int]]) -> list[SentPacket]:
    """The 1-RTT packets the server sends for these writes, each with FIN, unacknowledged."""
    server = pair.server
    app = server.recovery._spaces[2].sent
    before = set(app)
    server.recovery.cc._cwnd = 1 << 20  # all of it in flight at once
    for sid, size in sids_and_sizes:
        server.send_stream(sid, bytes(size), True, True)
    for _ in range(100):
        pair.now += 0.01  # past pacing
        if not server.datagrams_to_send(pair.now) and not server.sending:
            break
    assert not server.sending
    return [app[pn] for pn in sorted(set(app) - before)]


def stream_states(conn: Connection, sids: list[int]) -> list[tuple]:
    out = []
    for sid in sids:
        stream = conn.streams.get(sid)
        send = None if stream is None else stream.send
        out.append(None if send is None else (send.state, send._base, send._fin_acked))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_runs_end_where_single_records_do(seed: int) -> None:
    """Several streams' packets, acknowledged in random batches and order: merged runs and
    one-by-one acknowledgement leave every stream in the same state, all data and FINs
    acknowledged, with one SEND_STATE_RECVD update each."""
    rng = random.Random(seed)
    finals = []
    for merged in (True, False):
        pair = Pair(initial_max_streams_bidi=8)
        pair.handshake()
        server = pair.server
        server.config.event_mask |= 1 << uapi.QUIC_EVENT_STREAM_UPDATE
        sids = [server.open_stream(uni=False) for _ in range(3)]
        packets = sent_packets(pair, [(sid, 6000) for sid in sids])
        order = list(packets)
        random.Random(seed).shuffle(order)
        batches = []
        while order:
            take = rng.randint(1, 4) if merged else 1
            batches.append(sorted(order[:take], key=lambda p: p.packet_number))
            order = order[take:]
        server.notifications.clear()
        for batch in batches:
            if merged:
                server._records_acked(batch)
            else:
                for pkt in batch:
                    for rec in pkt.frames:
                        server._record_acked(rec)
        updates = [
            uapi.QuicStreamUpdate.unpack(payload)
            for event, payload in server.notifications
            if event == uapi.QUIC_EVENT_STREAM_UPDATE
        ]
        recvd = sorted(u.id for u in updates if u.state == uapi.QUIC_STREAM_SEND_STATE_RECVD)
        assert recvd == sids
        finals.append(stream_states(server, sids))
    assert finals[0] == finals[1]


def test_a_run_is_one_stream_update_per_ack(monkeypatch) -> None:
    """Consecutive ranges of one stream reach the stream as one acknowledgement."""
    pair = Pair()
    pair.handshake()
    server = pair.server
    sid = server.open_stream(uni=False)
    packets = sent_packets(pair, [(sid, 20_000)])
    send = server.streams.get(sid).send
    calls = []
    on_acked = SendStream.on_acked
    monkeypatch.setattr(
        SendStream, "on_acked", lambda self, *args: calls.append(args) or on_acked(self, *args)
    )
    server._records_acked(packets[:-1])  # all but the one with FIN
    assert len(calls) == 1
    offset, length, fin = calls[0]
    assert offset == 0 and not fin and length == send._base
