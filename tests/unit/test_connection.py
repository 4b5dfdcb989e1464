"""The sans-I/O connection driven directly: no sockets, no threads, a fake clock.

The handshake is faked the way lxin/quic's selftests fake it: fixed secrets are installed
per level and opaque bytes stand in for the TLS messages, so these tests exercise the
transport (packetization, ACKs, loss recovery, flow control, streams, close) alone.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import random
from collections.abc import Callable

import pytest

from quic import uapi
from quic.connection import REC_STREAM, STREAM_TURN, Connection, ConnectionConfig, State
from quic.crypto import DeferredPacketKeys
from quic.errors import QuicError, TransportError
from quic.stream import StreamLimitError
from quic.transport_params import default_local_parameters

INITIAL, HANDSHAKE, APP = uapi.QUIC_CRYPTO_INITIAL, uapi.QUIC_CRYPTO_HANDSHAKE, uapi.QUIC_CRYPTO_APP
CLIENT_ADDR = ("127.0.0.1", 40000)
SERVER_ADDR = ("127.0.0.1", 4433)
STEP = 0.001


def secret(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


class Pair:
    """A client and a server connected back to back through a programmable link."""

    def __init__(
        self,
        loss: float = 0.0,
        seed: int = 1,
        cipher: int = uapi.TLS_CIPHER_AES_GCM_128,
        version: int = uapi.QUIC_VERSION_V1,
        client_compatible: bool = True,
        server_compatible: bool = True,
        ecn: bool = False,
        batch: bool = False,
        **server_params,
    ) -> None:
        """``batch`` hands each flight over as one batch, as a GRO read does."""
        self.now = 1000.0
        self.batch = batch
        self.rng = random.Random(seed)
        self.loss = loss
        self.ecn = ecn
        # What the link does to the ECN codepoint of a datagram bound for "server" or
        # "client": the codepoint it arrives with, or None to drop it. By default it
        # arrives as sent.
        self.remark = lambda receiver_name, codepoint: codepoint
        client_params = default_local_parameters()
        server_tp = default_local_parameters()
        for name, value in server_params.items():
            setattr(server_tp, name, value)
        self.cipher = cipher
        self.client = Connection(
            ConnectionConfig(
                is_client=True,
                local_params=client_params,
                version=version,
                compatible_versions=client_compatible,
                ecn=ecn,
            ),
            dcid=os.urandom(8),
            scid=os.urandom(8),
            peer_addr=SERVER_ADDR,
            now=self.now,
        )
        self.server: Connection | None = None
        self._server_params = server_tp
        self._server_compatible = server_compatible
        self.delivered = 0

    def _make_server(self, datagram: bytes) -> None:
        from quic.packet import parse_header

        header = parse_header(datagram, 0, 8)
        self.server = Connection(
            ConnectionConfig(
                is_client=False,
                local_params=self._server_params,
                version=header.version,
                compatible_versions=self._server_compatible,
                ecn=self.ecn,
            ),
            dcid=header.scid,
            scid=os.urandom(8),
            peer_addr=CLIENT_ADDR,
            now=self.now,
            original_dcid=header.dcid,
        )

    def exchange(self, rounds: int = 1) -> int:
        """Move datagrams both ways ``rounds`` times, firing due timers; returns how many
        datagrams crossed."""
        moved = 0
        for _ in range(rounds):
            self.now += STEP
            for sender, receiver_name, addr in (
                (self.client, "server", CLIENT_ADDR),
                (self.server, "client", SERVER_ADDR),
            ):
                if sender is None:
                    continue
                deadline = sender.next_deadline()
                if deadline is not None and deadline <= self.now:
                    sender.handle_timer(self.now)
                codepoint = sender.ecn_codepoint
                flight = []
                for datagram in sender.datagrams_to_send(self.now):
                    moved += 1
                    if self.server is None:
                        self._make_server(datagram)
                    if self.rng.random() < self.loss:
                        continue
                    receiver = self.server if receiver_name == "server" else self.client
                    ecn = self.remark(receiver_name, codepoint)
                    if ecn is None:
                        continue
                    if self.batch:
                        flight.append(datagram)
                    else:
                        receiver.receive_datagram(datagram, addr, self.now, ecn)
                if flight:
                    receiver.receive_datagrams(flight, addr, self.now, ecn)
        return moved

    def run_until(self, condition, limit: int = 20000) -> None:
        for _ in range(limit):
            if condition():
                return
            if not self.exchange():
                # Nothing to send: jump to the next timer.
                deadlines = [c.next_deadline() for c in (self.client, self.server) if c is not None]
                deadlines = [d for d in deadlines if d is not None]
                if deadlines:
                    self.now = max(self.now, min(deadlines) - STEP)
        raise AssertionError("condition not reached")

    def receive_crypto(self, conn_name: str, level: int, expected: bytes) -> None:
        """Run until ``expected`` arrived at ``level`` on that side, in however many chunks."""
        got = bytearray()

        def done() -> bool:
            conn = getattr(self, conn_name)
            while conn is not None and conn.crypto_inbox:
                lvl, data = conn.crypto_inbox.popleft()
                assert lvl == level
                got.extend(data)
            return len(got) >= len(expected)

        self.run_until(done)
        assert bytes(got) == expected

    def handshake(self) -> None:
        """The fake TLS exchange, in the order a real one installs secrets."""
        client, c = self.client, self.cipher
        hello = b"client hello" * 20
        flight = b"encrypted extensions, certificate, finished" * 30
        client.handshake_send(INITIAL, hello)
        self.receive_crypto("server", INITIAL, hello)
        server = self.server
        server.set_peer_transport_params(client.local_transport_params())
        server.handshake_send(INITIAL, b"server hello")
        server.set_secret(HANDSHAKE, True, c, secret("s hs"))
        server.set_secret(HANDSHAKE, False, c, secret("c hs"))
        server.handshake_send(HANDSHAKE, flight)
        server.set_secret(APP, True, c, secret("s ap"))
        self.receive_crypto("client", INITIAL, b"server hello")
        client.set_secret(HANDSHAKE, True, c, secret("c hs"))
        client.set_secret(HANDSHAKE, False, c, secret("s hs"))
        self.receive_crypto("client", HANDSHAKE, flight)
        client.set_peer_transport_params(server.local_transport_params())
        client.set_secret(APP, True, c, secret("c ap"))
        client.set_secret(APP, False, c, secret("s ap"))
        client.handshake_send(HANDSHAKE, b"client finished")
        self.receive_crypto("server", HANDSHAKE, b"client finished")
        server.set_secret(APP, False, c, secret("c ap"))
        self.run_until(lambda: client.handshake_confirmed)


def streams_drained(conn: Connection, sinks: dict[int, bytearray]) -> Callable[[], bool]:
    """A run_until condition: each stream of ``sinks`` read into its sink up to its FIN."""
    done: set[int] = set()

    def drained() -> bool:
        while (chunk := conn.read_stream(65536)) is not None:
            sid, data, fin = chunk
            sinks[sid] += data
            if fin:
                done.add(sid)
        return done == set(sinks)

    return drained


def read_all(conn: Connection, sid: int, sink: bytearray) -> bool:
    """Drain what ``conn`` has for ``sid``; True once FIN was read."""
    fin_seen = False
    while True:
        chunk = conn.read_stream(65536)
        if chunk is None:
            return fin_seen
        got_sid, data, fin = chunk
        assert got_sid == sid
        sink += data
        fin_seen = fin_seen or fin


@pytest.mark.parametrize(
    "cipher",
    [uapi.TLS_CIPHER_AES_GCM_128, uapi.TLS_CIPHER_AES_GCM_256, uapi.TLS_CIPHER_CHACHA20_POLY1305],
)
def test_handshake_completes_and_discards_keys(cipher: int) -> None:
    pair = Pair(cipher=cipher)
    pair.handshake()
    assert pair.client.state == State.ESTABLISHED and pair.server.state == State.ESTABLISHED
    assert pair.server.handshake_confirmed and pair.client.handshake_confirmed
    for conn in (pair.client, pair.server):
        assert conn.send_keys[INITIAL] is None and conn.send_keys[HANDSHAKE] is None


def test_client_initial_datagrams_are_padded() -> None:
    pair = Pair()
    pair.client.handshake_send(INITIAL, b"hello")
    datagrams = pair.client.datagrams_to_send(pair.now)
    assert datagrams and all(len(d) >= 1200 for d in datagrams)


def transfer(pair: Pair, size: int, client_to_server: bool = True) -> bytes:
    data = os.urandom(size)
    sender, receiver = (
        (pair.client, pair.server) if client_to_server else (pair.server, pair.client)
    )
    sid = sender.open_stream(uni=False)
    sent = 0
    sink = bytearray()
    done = False

    def step() -> bool:
        nonlocal sent, done
        room = sender.stream_send_room(sid)
        if sent < size and room:
            take = min(room, size - sent)
            sender.send_stream(sid, data[sent : sent + take], sent + take == size, True)
            sent += take
        done = read_all(receiver, sid, sink) or done
        return done

    pair.run_until(step, limit=200000)
    assert bytes(sink) == data
    return bytes(sink)


def test_stream_transfer_both_directions() -> None:
    pair = Pair()
    pair.handshake()
    transfer(pair, 300_000, client_to_server=True)
    transfer(pair, 300_000, client_to_server=False)


def test_transfer_survives_loss() -> None:
    pair = Pair(loss=0.05, seed=7)
    pair.handshake()
    transfer(pair, 200_000)


def test_flow_control_limits_what_is_in_flight() -> None:
    pair = Pair(initial_max_data=50_000, initial_max_stream_data_bidi_remote=30_000)
    pair.handshake()
    transfer(pair, 500_000)


def test_a_bulk_flush_shares_packets_between_streams_within_the_window() -> None:
    """The packets after a flush's first carry one STREAM frame each, taken from the
    streams in turns of at most STREAM_TURN packets, and stop where the congestion
    window does."""
    pair = Pair()
    pair.handshake()
    server = pair.server
    sids = [server.open_stream(uni=False) for _ in range(2)]
    payloads = {sid: os.urandom(200_000) for sid in sids}
    for sid, payload in payloads.items():
        server.send_stream(sid, payload, True, False)
    window = server.recovery.cc.congestion_window
    sent = server.datagrams_to_send(pair.now)
    assert len(sent) > 4
    assert server.recovery.cc.bytes_in_flight <= window
    packets = sorted(server.recovery._spaces[2].sent.items())[-len(sent) :]
    owners = []
    for _, packet in packets:
        assert all(rec[0] == REC_STREAM for rec in packet.frames)
        assert packet.sent_bytes == len(sent[len(owners)])
        owners.append(packet.frames[0][1].stream_id)
    turns = [(sid, len(list(run))) for sid, run in itertools.groupby(owners)]
    assert len(turns) > 2 and set(owners) == set(sids)
    assert all(length <= STREAM_TURN for _, length in turns)
    assert max(length for _, length in turns) > 1  # a turn is taken in one batch
    sinks = {sid: bytearray() for sid in sids}
    for datagram in sent:
        pair.client.receive_datagram(datagram, SERVER_ADDR, pair.now)
    pair.run_until(streams_drained(pair.client, sinks))
    assert sinks == payloads


def test_application_close_reaches_peer() -> None:
    pair = Pair()
    pair.handshake()
    pair.client.close(0x42, b"bye", None, now=pair.now)
    pair.run_until(lambda: pair.server.state >= State.DRAINING)
    info = pair.server.close_info
    assert info.remote and info.error_code == 0x42 and info.reason == b"bye"
    assert info.frame_type is None


def test_garbage_datagrams_are_dropped() -> None:
    pair = Pair()
    pair.handshake()
    rng = random.Random(3)
    for size in (0, 1, 5, 30, 1200):
        pair.server.receive_datagram(
            bytes(rng.getrandbits(8) for _ in range(size)), CLIENT_ADDR, pair.now
        )
    assert pair.server.state == State.ESTABLISHED
    transfer(pair, 10_000)


def test_idle_timeout_closes() -> None:
    pair = Pair(max_idle_timeout=2000)
    pair.handshake()
    pair.now += 10
    pair.server.handle_timer(pair.now)
    assert pair.server.state == State.CLOSED
    assert pair.server.close_info.error_code == TransportError.NO_ERROR


def count_sent(conn: Connection) -> list[float]:
    """From now on, the time of each datagram ``conn`` sends."""
    times: list[float] = []
    send = conn.datagrams_to_send

    def counted(now: float) -> list[bytes]:
        out = send(now)
        times.extend([now] * len(out))
        return out

    conn.datagrams_to_send = counted
    return times


def test_an_idle_connection_falls_silent() -> None:
    """Once the handshake's last ACKs are out, two idle ends send nothing: an ACK that
    carries a PING (RFC 9000 §13.2.4) is not answered with another."""
    pair = Pair()
    pair.handshake()
    start = pair.now
    sent = [count_sent(pair.client), count_sent(pair.server)]
    pair.run_until(lambda: pair.now - start > 5)
    assert [t for times in sent for t in times if t > start + 0.2] == []


def test_keepalive_pings_keep_an_idle_connection_open() -> None:
    """With keepalive_interval below the idle timeout, a connection nobody uses stays
    open: the client PINGs each interval, and each ACK renews both idle timers."""
    pair = Pair(max_idle_timeout=2000)
    pair.handshake()
    pair.client.config.keepalive_interval = 0.5
    sent = count_sent(pair.client)
    start = pair.now
    pair.run_until(lambda: pair.now - start > 10)
    assert pair.client.state == State.ESTABLISHED
    assert pair.server.state == State.ESTABLISHED
    # A PING each half second, and now and then an ACK of the server's ACK that
    # carried a PING of its own.
    assert 18 <= len(sent) <= 40


def test_many_streams_with_heavy_loss() -> None:
    pair = Pair(loss=0.15, seed=11)
    pair.handshake()
    payloads = {}
    for _ in range(8):
        sid = pair.client.open_stream(uni=False)
        payloads[sid] = os.urandom(20_000)
        pair.client.send_stream(sid, payloads[sid], True, True)
    got: dict[int, bytearray] = {sid: bytearray() for sid in payloads}
    pair.run_until(streams_drained(pair.server, got), limit=200000)
    assert {sid: bytes(data) for sid, data in got.items()} == payloads


def test_peer_exceeding_flow_control_is_closed_with_the_right_code() -> None:
    pair = Pair(initial_max_stream_data_bidi_remote=5000)
    pair.handshake()
    sid = pair.client.open_stream(uni=False)
    stream = pair.client.streams.get(sid)
    stream.send.max_stream_data = 1 << 20  # a misbehaving peer ignores our window
    pair.client.send_stream(sid, bytes(20_000), True, True)
    pair.run_until(lambda: pair.server.state >= State.CLOSING)
    assert pair.server.close_info.error_code == TransportError.FLOW_CONTROL_ERROR
    pair.run_until(lambda: pair.client.state >= State.DRAINING)
    assert pair.client.close_info.remote


def test_frames_for_a_closed_stream_are_ignored() -> None:
    pair = Pair()
    pair.handshake()
    transfer(pair, 5000)
    sid = 0
    pair.server.send_stream(sid, b"done", True, False)
    pair.run_until(lambda: pair.server.streams.get(sid) is None)
    assert pair.server.streams.get(sid) is None and pair.server.streams.was_closed(sid)
    from quic.frame import MaxStreamData, ResetStream, StopSending, Stream

    for frame in (
        Stream(sid, 0, b"late", True),
        ResetStream(sid, 1, 5000),
        StopSending(sid, 1),
        MaxStreamData(sid, 1 << 20),
    ):
        assert Connection._handlers[type(frame)](pair.server, frame, APP, pair.now)
    assert pair.server.state == State.ESTABLISHED


def test_peer_reset_releases_connection_credit() -> None:
    """Unread bytes a RESET_STREAM drops must not keep holding connection credit."""
    pair = Pair(initial_max_data=40_000, initial_max_stream_data_bidi_remote=40_000)
    pair.handshake()
    client = pair.client
    sid = client.open_stream(uni=False)
    client.send_stream(sid, bytes(30_000), False, True)
    pair.run_until(
        lambda: (
            pair.server.streams.get(sid) is not None
            and pair.server.streams.get(sid).recv.readable >= 30_000
        )
    )
    client.reset_stream(sid, 7)
    pair.run_until(
        lambda: (
            pair.server.streams.get(sid) is None
            or pair.server.streams.get(sid).recv.reset_code is not None
        )
    )
    assert pair.server.flow_recv.consumed >= 30_000
    while pair.server.read_stream(65536) is not None:
        pass  # the application sees the reset stream end
    transfer(pair, 100_000)  # more than the initial window: credit keeps flowing


def test_a_read_says_when_it_made_credit_due() -> None:
    """The socket flushes after a read only when credit_due: it must hold exactly when
    the next packet would carry MAX_STREAM_DATA or MAX_DATA, and after a FIN."""
    pair = Pair(initial_max_data=38_000, initial_max_stream_data_bidi_remote=20_000)
    pair.handshake()
    client, server = pair.client, pair.server
    sid = client.open_stream(uni=False)
    client.send_stream(sid, bytes(20_000), False, True)
    pair.run_until(lambda: server.streams.get(sid) and server.streams.get(sid).recv.readable)
    pair.run_until(lambda: server.streams.get(sid).recv.readable == 20_000)
    stream = server.streams.get(sid)
    sid_read, data, fin = server.read_stream(8_000)
    assert (sid_read, len(data), fin) == (sid, 8_000, False)
    assert not server.credit_due and stream.recv.max_stream_data_update(pair.now, 0.0) is None
    server.read_stream(3_000)  # past half the stream window
    assert server.credit_due
    assert stream.recv.update_due() and not server.flow_recv.update_due()
    server.read_stream(10_000)  # past half the connection window too
    assert server.credit_due and server.flow_recv.update_due()
    client.send_stream(sid, b"", True, False)
    pair.run_until(lambda: stream.recv.fin_ready)
    assert not stream.recv.update_due()  # the final size is known: no more credit
    *_, fin = server.read_stream(100_000)
    assert fin and server.credit_due  # the stream's end may free a MAX_STREAMS slot


def test_a_flush_skips_building_only_when_nothing_is_queued() -> None:
    """_build_datagram ends a flush without building a packet when _nothing_queued()
    says so: whatever any kind of frame is waiting, it must say no, and the frame
    must leave in that flush."""
    from quic.frame import PathChallenge

    pair = Pair(initial_max_data=38_000, initial_max_stream_data_bidi_remote=20_000)
    pair.handshake()
    client, server = pair.client, pair.server
    pair.exchange(5)
    assert server._nothing_queued() and server.datagrams_to_send(pair.now) == []

    sid = client.open_stream(uni=False)
    client.send_stream(sid, bytes(11_000), False, True)
    pair.run_until(lambda: server.streams.get(sid) and server.streams.get(sid).recv.readable)
    pair.run_until(lambda: server.streams.get(sid).recv.readable == 11_000)
    pair.exchange(5)
    server.read_stream(100_000)  # past half the stream window: MAX_STREAM_DATA
    waiting = {
        "a window update": lambda: None,
        "a control frame": lambda: server._queue_control(PathChallenge(bytes(8))),
        "a probe": lambda: server._send_probe(2, 1),
        "stream data": lambda: server.send_stream(sid, b"x", False, False),
    }
    for what, queue in waiting.items():
        queue()
        assert not server._nothing_queued(), what
        assert server.datagrams_to_send(pair.now), what
        pair.exchange(5)
        assert server._nothing_queued(), f"after {what}"


def test_pacing_spreads_a_window_over_the_rtt() -> None:
    pair = Pair()
    pair.handshake()
    client = pair.client
    client.pacer.update_rate(client.recovery.cc.congestion_window, 1.0)  # a slow path: 1 s RTT
    sid = client.open_stream(uni=False)
    client.send_stream(sid, bytes(200_000), True, True)
    first = client.datagrams_to_send(pair.now)
    assert first and client.pacing_deadline is not None and client.pacing_deadline > pair.now
    assert client.datagrams_to_send(pair.now) == []  # held by the pacer, not by the window
    assert client.recovery.cc.available(pair.now) > 0
    assert client.next_deadline() <= client.pacing_deadline
    later = client.pacing_deadline + 0.001
    client.handle_timer(later)
    assert client.datagrams_to_send(later)


def test_probe_packets_do_not_lift_the_congestion_window() -> None:
    """A PTO allows one or two packets beyond the window, not a whole queue of data."""
    pair = Pair()
    pair.handshake()
    client = pair.client
    client.pacer.burst = 1 << 30  # take pacing out of the picture
    sid = client.open_stream(uni=False)
    client.send_stream(sid, bytes(500_000), False, True)
    while client.datagrams_to_send(pair.now):
        pass  # fill the window; nothing is delivered
    assert client.recovery.cc.available(pair.now) < 1200
    deadline = client.next_deadline()
    client.handle_timer(deadline)
    assert client.pending_ping > 0
    probes = []
    for _ in range(10):
        probes += client.datagrams_to_send(deadline)
    assert 1 <= len(probes) <= 2
    assert client.pending_ping == 0


def received_frame_types(conn: Connection) -> set[str]:
    seen: set[str] = set()

    def trace(name: str, data: dict) -> None:
        if name == "transport:packet_received":
            seen.update(f["frame_type"] for f in data["frames"])

    conn.trace = trace
    return seen


def test_blocked_frames_report_the_limits_that_hold_data_back() -> None:
    """RFC 9000 §4.1, §4.6: STREAM_DATA_BLOCKED, DATA_BLOCKED and STREAMS_BLOCKED name
    the limit reached, once per limit."""
    pair = Pair(
        initial_max_data=15_000,
        initial_max_stream_data_bidi_remote=10_000,
        initial_max_streams_bidi=2,
    )
    pair.handshake()
    seen = received_frame_types(pair.server)
    client = pair.client
    first = client.open_stream(uni=False)
    client.send_stream(first, bytes(30_000), False, True)
    pair.run_until(lambda: "stream_data_blocked" in seen)
    assert client.streams.get(first).send.blocked_reported == 10_000
    second = client.open_stream(uni=False)
    client.send_stream(second, bytes(30_000), False, True)
    pair.run_until(lambda: "data_blocked" in seen)
    assert client.data_blocked_at == 15_000
    with pytest.raises(StreamLimitError):
        client.open_stream(uni=False)
    pair.run_until(lambda: "streams_blocked" in seen)
    assert client.streams_blocked_at == [2, -1]
    queued = len(client.control)
    with pytest.raises(StreamLimitError):
        client.open_stream(uni=False)
    assert len(client.control) == queued  # the same limit is not reported twice


def test_peer_exceeding_stream_limit_is_closed_with_the_right_code() -> None:
    pair = Pair(initial_max_streams_bidi=2)
    pair.handshake()
    client = pair.client
    client.streams.peer_max[0] = 100  # a misbehaving peer ignores our MAX_STREAMS
    for _ in range(3):
        client.send_stream(client.open_stream(uni=False), b"x", True, True)
    pair.run_until(lambda: pair.server.state >= State.CLOSING)
    assert pair.server.close_info.error_code == TransportError.STREAM_LIMIT_ERROR
    assert len(pair.server.streams.streams) <= 2


def test_key_update_initiated_by_either_side_keeps_data_flowing() -> None:
    """RFC 9001 §6: the initiator flips its phase, the peer follows on first sight, and
    the next update waits until a packet on the new keys is acknowledged."""
    pair = Pair(loss=0.02, seed=3)
    pair.handshake()
    client, server = pair.client, pair.server
    first_keys = client.send_keys[APP]
    assert client.update_keys()
    assert client.key_phase == 1 and not client.update_keys()  # one at a time
    transfer(pair, 100_000)
    assert (client.key_phase, client.recv_phase, server.key_phase, server.recv_phase) == (1,) * 4
    assert client.send_keys[APP] is not first_keys
    pair.run_until(client.can_update_keys)
    assert server.update_keys()
    transfer(pair, 100_000, client_to_server=False)
    assert (client.key_phase, server.key_phase) == (0, 0)
    assert client.state == server.state == State.ESTABLISHED


def test_reordered_packets_from_the_old_phase_still_open() -> None:
    pair = Pair()
    pair.handshake()
    client, server = pair.client, pair.server
    sid = client.open_stream(uni=False)
    client.send_stream(sid, b"old phase", False, True)
    late = client.datagrams_to_send(pair.now)
    assert client.update_keys()
    client.send_stream(sid, b" new phase", True, False)
    for datagram in client.datagrams_to_send(pair.now):
        server.receive_datagram(datagram, CLIENT_ADDR, pair.now)
    assert server.recv_phase == 1
    for datagram in late:
        server.receive_datagram(datagram, CLIENT_ADDR, pair.now)
    sink = bytearray()
    assert read_all(server, sid, sink)
    assert bytes(sink) == b"old phase new phase"
    # After three PTOs the old keys are gone and such a packet is dropped.
    server.receive_datagram(late[0], CLIENT_ADDR, pair.now + 10)
    assert server.recv_keys_prev is None


def test_confidentiality_limit_triggers_an_update_on_its_own() -> None:
    pair = Pair()
    pair.handshake()
    client = pair.client
    client.confidentiality_limit = 40
    client.config.event_mask = 1 << uapi.QUIC_EVENT_KEY_UPDATE
    transfer(pair, 200_000)  # about 170 packets
    updates = [e for e, _ in client.notifications if e == uapi.QUIC_EVENT_KEY_UPDATE]
    assert len(updates) >= 3
    assert client.packets_on_key < 40
    assert client.state == State.ESTABLISHED


def test_a_spent_key_holds_sending_until_its_update_may_start() -> None:
    """RFC 9001 §6.1, §6.6: a key update waits for the ACK of a packet on the current
    keys, so a sender unacknowledged that long stops one packet short of the limit, and
    goes on once the ACK lets it update, instead of ending the connection."""
    pair = Pair()
    pair.handshake()
    client = pair.client
    client.confidentiality_limit = 40
    client.pacer.burst = 1 << 30
    client.recovery.cc._cwnd = 1 << 30
    sid = client.open_stream(uni=False)
    client.send_stream(sid, os.urandom(200_000), True, True)
    assert client.update_keys()  # its first packets on the new keys wait for an ACK
    held = []
    for _ in range(50):  # pacing spreads them over a few milliseconds
        pair.now += 0.002
        held += client.datagrams_to_send(pair.now)
    assert len(held) == 39
    assert client.state == State.ESTABLISHED and client.packets_on_key == 39
    for datagram in held:
        pair.server.receive_datagram(datagram, CLIENT_ADDR, pair.now)
    for ack in pair.server.datagrams_to_send(pair.now):
        client.receive_datagram(ack, SERVER_ADDR, pair.now)
    assert client.datagrams_to_send(pair.now)
    assert client.key_phase == 0  # the next update started, and the data goes on
    assert client.state == State.ESTABLISHED and client.packets_on_key <= 39


def test_integrity_limit_closes_with_aead_limit_reached() -> None:
    pair = Pair()
    pair.handshake()
    server = pair.server
    server.integrity_limit = 3
    short_header = bytes([0x40]) + server.scid + bytes(40)
    for _ in range(3):
        server.receive_datagram(short_header, CLIENT_ADDR, pair.now)
    assert server.state == State.CLOSING
    assert server.close_info.error_code == TransportError.AEAD_LIMIT_REACHED


def datagram_pair(**kw) -> Pair:
    pair = Pair(max_datagram_frame_size=1200, **kw)
    pair.client.local_params.max_datagram_frame_size = 1200
    pair.handshake()
    return pair


def test_datagrams_both_ways_and_never_retransmitted() -> None:
    pair = datagram_pair()
    client, server = pair.client, pair.server
    for i in range(5):
        assert client.send_datagram(b"up %d" % i)
        assert server.send_datagram(b"down %d" % i)
    pair.run_until(lambda: len(server.datagrams_in) == 5 and len(client.datagrams_in) == 5)
    assert list(server.datagrams_in) == [b"up %d" % i for i in range(5)]
    assert list(client.datagrams_in) == [b"down %d" % i for i in range(5)]
    # A lost datagram stays lost: nothing comes back for it.
    client.send_datagram(b"lost")
    assert client.datagrams_to_send(pair.now)
    pair.run_until(lambda: not client.recovery.bytes_in_flight, limit=5000)
    assert b"lost" not in server.datagrams_in and not client.datagrams_out


def test_datagram_sizes_are_checked_both_ways() -> None:
    pair = datagram_pair()
    client, server = pair.client, pair.server
    with pytest.raises(OverflowError):
        client.send_datagram(bytes(1200))  # the frame would exceed the peer's 1200
    assert client.send_datagram(bytes(1100))
    server.local_params.max_datagram_frame_size = 100  # the server now accepts less
    pair.run_until(lambda: server.state != State.ESTABLISHED, limit=200)
    assert server.close_info.error_code == TransportError.PROTOCOL_VIOLATION

    plain = Pair()
    plain.handshake()
    with pytest.raises(ValueError):
        plain.client.send_datagram(b"x")  # not negotiated


def test_datagrams_wait_for_the_congestion_window() -> None:
    pair = datagram_pair()
    client = pair.client
    queued = sum(client.send_datagram(bytes(1000)) for _ in range(300))
    assert queued == 256  # the queue is bounded; the rest is refused, not buffered
    sent = client.datagrams_to_send(pair.now)
    window = client.recovery.cc.congestion_window
    assert sum(map(len, sent)) <= window + 1200
    assert client.datagrams_out  # the rest waits for acknowledgements


V1, V2 = uapi.QUIC_VERSION_V1, uapi.QUIC_VERSION_V2


@pytest.mark.parametrize(
    ("start", "client_compatible", "server_compatible", "negotiated"),
    [
        (V1, True, True, V2),  # compatible negotiation upgrades (RFC 9368, RFC 9369)
        (V2, True, True, V2),  # direct start
        (V1, True, False, V1),  # the server keeps to the client's first version
        (V1, False, True, V1),  # a client that offers no other version stays
        (V2, False, False, V2),
    ],
)
def test_version_negotiation(start, client_compatible, server_compatible, negotiated) -> None:
    pair = Pair(
        version=start, client_compatible=client_compatible, server_compatible=server_compatible
    )
    pair.handshake()
    assert (pair.client.version, pair.server.version) == (negotiated, negotiated)
    transfer(pair, 50_000)


def test_initial_keys_derived_ahead_serve_the_switch_for_their_dcid_only() -> None:
    """A client derives the Initial keys of the version a server may switch to while its
    first flight is out (RFC 9368 §4); following the server's switched Initial then takes
    them. Keys made for a DCID that has since changed (as after a Retry) are not used."""
    pair = Pair()
    client = pair.client
    v1_receive = client.recv_keys[INITIAL]
    assert client.keys_ahead_due
    client.derive_ahead()
    assert not client.keys_ahead_due
    dcid, send, recv = client._keys_ahead[V2]
    assert dcid == client.initial_dcid
    client.handshake_send(INITIAL, b"client hello")
    pair.receive_crypto("server", INITIAL, b"client hello")
    pair.server.set_peer_transport_params(client.local_transport_params())
    pair.server.handshake_send(INITIAL, b"server hello")
    pair.receive_crypto("client", INITIAL, b"server hello")
    assert client.version == V2
    assert client.send_keys[INITIAL] is send and client.recv_keys[INITIAL] is recv
    assert not client._keys_ahead
    assert type(v1_receive) is DeferredPacketKeys  # nothing came in v1: never derived

    kept = Pair()
    kept.client.derive_ahead()
    kept.handshake()  # the pair starts in v1 and the server switches: V2 is taken...
    assert not kept.client._keys_ahead
    unused = Pair(server_compatible=False)
    unused.client.derive_ahead()
    unused.handshake()  # ...while a server that keeps v1 leaves them to be dropped
    assert unused.client.version == V1 and not unused.client._keys_ahead

    other = Pair().client
    other.derive_ahead()
    _, stale_send, _ = other._keys_ahead[V2]
    other.initial_dcid = b"retry-ds"  # what a Retry's SCID does to the Initial secrets
    other._switch_version(V2)
    fresh_send, _ = other._initial_keys(b"retry-ds", V2)
    assert other.send_keys[INITIAL] is not stale_send
    assert other.send_keys[INITIAL].key == fresh_send.key != stale_send.key


def test_a_forged_chosen_version_is_a_version_negotiation_error() -> None:
    """RFC 9368 §4: the client's chosen_version must be its first Initial's version;
    a difference means someone rewrote the packet (a downgrade attempt)."""
    from quic.transport_params import decode_transport_parameters, encode_transport_parameters

    pair = Pair(version=V2)
    pair.client.handshake_send(INITIAL, b"hello")
    pair.receive_crypto("server", INITIAL, b"hello")
    params = decode_transport_parameters(pair.client.local_transport_params(), from_server=False)
    params.version_information.chosen_version = V1
    with pytest.raises(QuicError) as exc:
        pair.server.set_peer_transport_params(encode_transport_parameters(params))
    assert exc.value.code == TransportError.VERSION_NEGOTIATION_ERROR


def test_the_server_must_confirm_the_version_it_switched_to() -> None:
    from quic.transport_params import decode_transport_parameters, encode_transport_parameters

    pair = Pair()
    pair.handshake()
    assert pair.client.version == V2
    params = decode_transport_parameters(pair.server.local_transport_params(), from_server=True)
    params.version_information.chosen_version = V1
    client = Pair().client
    client.version = V2  # as after following the server's v2 Initial
    client.dest_cids.active.cid = params.initial_source_connection_id
    client.original_dcid = params.original_destination_connection_id
    with pytest.raises(QuicError) as exc:
        client.set_peer_transport_params(encode_transport_parameters(params))
    assert exc.value.code == TransportError.VERSION_NEGOTIATION_ERROR


def test_client_accepts_one_genuine_retry_only() -> None:
    from quic.packet import encode_retry

    pair = Pair()
    client = pair.client
    client.handshake_send(INITIAL, b"client hello")
    first = client.datagrams_to_send(pair.now)[0]
    odcid = client.dest_cids.active.cid
    forged = encode_retry(V1, client.scid, b"forged-s", b"token", b"not-odcid")
    client.receive_datagram(forged, SERVER_ADDR, pair.now)
    assert client.retry_scid is None and client.token == b""
    genuine = encode_retry(V1, client.scid, b"retry-s1", b"token-1", odcid)
    client.receive_datagram(genuine, SERVER_ADDR, pair.now)
    assert client.retry_scid == b"retry-s1" and client.token == b"token-1"
    again = encode_retry(V1, client.scid, b"retry-s2", b"token-2", b"retry-s1")
    client.receive_datagram(again, SERVER_ADDR, pair.now)
    assert client.retry_scid == b"retry-s1"  # a second Retry is ignored
    resent = client.datagrams_to_send(pair.now)[0]
    from quic.packet import parse_header

    header = parse_header(resent, 0, 8)
    assert header.dcid == b"retry-s1" and header.token == b"token-1"
    assert b"client hello" not in resent and len(resent) >= 1200 and resent != first


def test_stateless_reset_is_recognised_and_forgeries_are_not() -> None:
    from quic.connid import stateless_reset

    pair = Pair()
    pair.handshake()
    pair.run_until(lambda: len(pair.client.dest_cids.ids) > 1)  # NEW_CONNECTION_IDs came
    client, server = pair.client, pair.server
    forged = stateless_reset(os.urandom(32), server.scid, 100)
    client.receive_datagram(forged, SERVER_ADDR, pair.now)
    assert client.state == State.ESTABLISHED
    genuine = stateless_reset(server.config.reset_key, server.scid, 100)
    assert len(genuine) == 43
    client.receive_datagram(genuine, SERVER_ADDR, pair.now)
    assert client.state == State.DRAINING
    assert client.close_info.reason == b"stateless reset" and client.close_info.remote
    assert client.datagrams_to_send(pair.now) == []  # nothing more goes to the peer


def test_stateless_reset_is_smaller_than_its_trigger() -> None:
    from quic.connid import stateless_reset

    key, cid = os.urandom(32), os.urandom(8)
    assert stateless_reset(key, cid, 21) is None  # too small to answer without a loop
    for size in (22, 30, 43, 44, 1200):
        reset = stateless_reset(key, cid, size)
        assert 21 <= len(reset) < size and reset[0] & 0xC0 == 0x40


def test_grease_quic_bit_is_varied_only_toward_a_peer_that_allows_it() -> None:
    """RFC 9287: with both sides advertising, 1-RTT packets carry a random QUIC bit
    both ways and still arrive; a peer that did not advertise always gets 1."""
    pair = Pair(grease_quic_bit=True)
    pair.client.local_params.grease_quic_bit = True
    seen: list[int] = []
    original = pair.client.receive_datagram

    def spy(datagram, addr, now, *ecn) -> None:
        if not datagram[0] & 0x80:
            seen.append(datagram[0] & 0x40)
        original(datagram, addr, now, *ecn)

    pair.client.receive_datagram = spy
    pair.handshake()
    transfer(pair, 100_000, client_to_server=False)
    assert 0 in seen and 0x40 in seen

    plain = Pair(grease_quic_bit=False)  # the server does not advertise; the client does
    plain.client.local_params.grease_quic_bit = True
    plain.handshake()
    assert not plain.client.grease_bit and plain.server.grease_bit
    for _ in range(20):
        sid = plain.client.open_stream(uni=True)
        plain.client.send_stream(sid, b"x", True, True)
        for datagram in plain.client.datagrams_to_send(plain.now):
            assert datagram[0] & 0x40
            plain.server.receive_datagram(datagram, CLIENT_ADDR, plain.now)


def test_a_client_arms_no_probe_before_its_first_packet() -> None:
    """RFC 9002 App. A.8's anti-deadlock PTO covers a sent ClientHello; a resuming client
    that queues 0-RTT data before the handshake must not probe with an empty Initial."""
    from quic.transport_params import TransportParameters

    client = Pair().client
    client.remember_peer_params(
        TransportParameters(
            initial_max_data=10_000,
            initial_max_streams_bidi=4,
            initial_max_stream_data_bidi_remote=10_000,
        )
    )
    sid = client.open_stream(uni=False)
    client.send_stream(sid, b"early request", True, True)
    assert client.recovery.loss_detection_deadline() is None
    assert client.datagrams_to_send(1000.0) == []  # no keys for 0-RTT yet, no probe


def move_client(pair: Pair, new_addr: tuple, rounds: int, deliver_to_new: bool = True) -> None:
    """Exchange with the client seen from ``new_addr``; the server's answers reach the
    client only if ``deliver_to_new``."""
    client, server = pair.client, pair.server
    for _ in range(rounds):
        pair.now += STEP
        for conn in (client, server):
            deadline = conn.next_deadline()
            if deadline is not None and deadline <= pair.now:
                conn.handle_timer(pair.now)
        for datagram in client.datagrams_to_send(pair.now):
            server.receive_datagram(datagram, new_addr, pair.now)
        outgoing = [(d, server.peer_addr) for d in server.datagrams_to_send(pair.now)]
        while server.probes_out:
            datagram, addr, _ = server.probes_out.popleft()
            outgoing.append((datagram, addr))
        for datagram, addr in outgoing:
            if addr != new_addr or deliver_to_new:
                client.receive_datagram(datagram, SERVER_ADDR, pair.now)


def test_peer_address_change_is_validated_and_followed() -> None:
    pair = Pair()
    pair.handshake()
    pair.run_until(lambda: len(pair.server.dest_cids.ids) > 1)
    server = pair.server
    sid = pair.client.open_stream(uni=False)
    pair.client.send_stream(sid, b"after the move", True, True)
    old_dcid = server.dest_cids.active.cid
    new_addr = ("127.0.0.1", 40001)  # a NAT rebinding: same host, new port
    window = server.recovery.cc.congestion_window
    move_client(pair, new_addr, 50)
    assert server.peer_addr == new_addr and server.path_check is None
    assert server.peer_address_validated
    assert server.dest_cids.active.cid != old_dcid  # a fresh CID for the new path
    assert server.recovery.cc.congestion_window >= window  # port only: state kept


def test_unanswered_path_falls_back_and_forged_responses_do_nothing() -> None:
    from quic.frame import PathResponse

    pair = Pair()
    pair.handshake()
    pair.run_until(lambda: len(pair.server.dest_cids.ids) > 1)
    server = pair.server
    sid = pair.client.open_stream(uni=False)
    pair.client.send_stream(sid, b"x", False, True)
    new_addr = ("192.0.2.9", 5555)  # a new host: congestion state starts over
    move_client(pair, new_addr, 1, deliver_to_new=False)
    assert server.peer_addr == new_addr and server.path_check is not None
    assert not server.peer_address_validated
    server._on_path_response(PathResponse(b"12345678"), APP, pair.now)  # not our data
    assert server.path_check is not None and not server.peer_address_validated
    # Nothing answers: after the validation timeout the server goes back.
    for _ in range(5000):
        if server.path_check is None:
            break
        pair.now += 0.01
        server.handle_timer(pair.now)
        server.datagrams_to_send(pair.now)
        server.probes_out.clear()
    assert server.path_check is None
    assert server.peer_addr == CLIENT_ADDR and server.peer_address_validated


def test_an_unvalidated_new_address_gets_at_most_three_times_what_it_sent() -> None:
    pair = Pair()
    pair.handshake()
    pair.run_until(lambda: len(pair.server.dest_cids.ids) > 1)
    server = pair.server
    sid = server.open_stream(uni=False)
    server.send_stream(sid, bytes(200_000), True, True)  # plenty to send
    sid_c = pair.client.open_stream(uni=False)
    pair.client.send_stream(sid_c, b"hello", False, True)
    datagram = pair.client.datagrams_to_send(pair.now)[0]
    server.receive_datagram(datagram, ("192.0.2.9", 5555), pair.now)
    sent = sum(map(len, server.datagrams_to_send(pair.now)))
    assert sent <= 3 * len(datagram)


def test_a_path_response_to_another_address_carries_the_cid_a_move_would_use() -> None:
    """RFC 9000 §9.5: the current path's connection ID must not go to another address.
    The answer to a PATH_CHALLENGE from a new address carries the next unused one, the
    one the server switches to if the peer moves there: the current one may be retired
    before the answer arrives, and the peer then no longer routes it."""
    from quic.frame import PathChallenge

    pair = Pair()
    pair.handshake()
    pair.run_until(lambda: len(pair.server.dest_cids.ids) > 1)
    server = pair.server
    active, spare = server.dest_cids.active.cid, server.dest_cids.spare().cid
    new_addr = ("192.0.2.9", 5555)
    server._packet_addr = new_addr
    server._credit_probe_path(new_addr, 1200)  # as a 1200-byte datagram from there gives
    server._on_path_challenge(PathChallenge(b"abcdefgh"), APP, pair.now)
    probe, addr, _ = server.probes_out.popleft()
    assert addr == new_addr and len(probe) >= 1200
    assert probe[1 : 1 + len(spare)] == spare != active
    assert server.dest_cids.active.cid == active  # a probe moves nothing
    sid = pair.client.open_stream(uni=False)
    pair.client.send_stream(sid, b"from the new address", True, True)
    move_client(pair, new_addr, 50)  # the peer follows with non-probing packets
    assert server.peer_addr == new_addr and server.dest_cids.active.cid == spare


def test_a_padded_path_probe_does_not_move_the_connection() -> None:
    """RFC 9000 §9.1: PADDING is a probing frame. A client's PATH_CHALLENGE from its
    new address, padded to 1200 bytes as §8.2.1 asks, must leave the server on the old
    path: moving it there (and back at the client's next packet from the old address)
    rotated the server's connection IDs twice and retired the one its answer carried."""
    pair = Pair()
    pair.handshake()
    pair.run_until(
        lambda: len(pair.client.dest_cids.ids) > 1 and len(pair.server.dest_cids.ids) > 1
    )
    client, server = pair.client, pair.server
    server_dcid = server.dest_cids.active.cid
    assert client.migrate(pair.now)
    probe, _, local = client.probes_out.popleft()
    assert local == 1 and len(probe) >= 1200
    new_addr = ("127.0.0.1", 40001)
    server.receive_datagram(probe, new_addr, pair.now)
    assert server.peer_addr == CLIENT_ADDR and server.path_check is None
    assert server.dest_cids.active.cid == server_dcid
    answer, addr, _ = server.probes_out.popleft()
    assert addr == new_addr
    client.receive_datagram(answer, SERVER_ADDR, pair.now)
    assert client.migrated_local  # validated: the socket may switch


def test_a_path_response_overtaken_on_the_current_path_still_validates() -> None:
    """A PATH_RESPONSE goes out on the new path, so any number of packets on the current
    path may overtake it: here the client reads it after 300 later packets of a
    download (its new socket read late). It must still open and complete the move.
    Sent with the packet number length the current path needed (1 byte, a window of
    128 around the largest number received), it decoded to a wrong number, failed to
    open, and was dropped unseen: the move waited for another challenge, or never came."""
    pair = Pair()
    pair.handshake()
    pair.run_until(
        lambda: len(pair.client.dest_cids.ids) > 1 and len(pair.server.dest_cids.ids) > 1
    )
    client, server = pair.client, pair.server
    assert client.migrate(pair.now)
    challenge, _, local = client.probes_out.popleft()
    assert local == 1
    server.receive_datagram(challenge, ("127.0.0.1", 40001), pair.now)
    answer, _, _ = server.probes_out.popleft()
    answer_pn = server.spaces[2].next_pn - 1
    sid = server.open_stream(uni=False)
    server.send_stream(sid, bytes(2_000_000), True, True)
    sink = bytearray()

    def overtaken() -> bool:
        return client.spaces[2].largest_received > answer_pn + 300

    pair.run_until(lambda: read_all(client, sid, sink) or overtaken(), limit=5000)
    assert overtaken() and client.path_check is not None  # still waiting for the answer
    client.probes_out.clear()  # challenges sent again meanwhile: their answers never come
    failed_opens = client.failed_opens
    client.receive_datagram(answer, SERVER_ADDR, pair.now)
    assert client.failed_opens == failed_opens
    assert client.migrated_local and client.path_check is None


def test_a_move_of_ours_never_validated_is_reported_and_may_be_asked_again() -> None:
    """RFC 9000 §9.2: a client whose new local path is never validated stays on the old
    one. The check giving up must say so (migration_failed, on which the socket releases
    the new address): it used to end in silence, the move neither made nor refused, and
    the socket, moving once at a time, refused every later request."""
    pair = Pair()
    pair.handshake()
    pair.run_until(lambda: len(pair.client.dest_cids.ids) > 1)
    client = pair.client
    assert client.migrate(pair.now)
    for _ in range(1000):  # 10 s of the fake clock; the check gives up after about 2
        if client.path_check is None:
            break
        pair.now += 0.01
        pair.exchange()
        client.probes_out.clear()  # the new path loses everything
    assert client.path_check is None and client.migration_failed
    assert not client.migrated_local
    assert client.state == State.ESTABLISHED and client.peer_addr == SERVER_ADDR
    transfer(pair, 10_000)  # the old path carries on
    client.migration_failed = False  # as the socket does on releasing the address
    pair.run_until(lambda: len(client.dest_cids.ids) > 1)
    assert client.migrate(pair.now)  # asked again: this time the answer comes
    challenge, _, _ = client.probes_out.popleft()
    pair.server.receive_datagram(challenge, ("127.0.0.1", 40001), pair.now)
    answer, _, _ = pair.server.probes_out.popleft()
    client.receive_datagram(answer, SERVER_ADDR, pair.now)
    assert client.migrated_local and not client.migration_failed


def test_the_ack_of_a_path_probe_is_expected() -> None:
    """A PATH_RESPONSE sent on another path takes a packet number; the peer's ACK of it
    must not look like the ACK of a packet never sent."""
    from quic.frame import PathChallenge

    pair = Pair()
    pair.handshake()
    server, client = pair.server, pair.client
    server._packet_addr = ("192.0.2.9", 5555)
    server._credit_probe_path(server._packet_addr, 1200)  # a datagram came from there
    server._on_path_challenge(PathChallenge(b"abcdefgh"), APP, pair.now)
    probe, _, _ = server.probes_out.popleft()
    client.receive_datagram(probe, SERVER_ADDR, pair.now)
    pair.run_until(lambda: not client.spaces[2].ack_eliciting_unacked, limit=200)
    pair.exchange(20)
    assert server.state == State.ESTABLISHED
