"""Bulk transfer over a simulated long path, which loopback cannot show: kquic's sans-I/O
core and aioquic's QuicConnection (qh3's too, when installed), each moving SIZE bytes
from server to client through the same link. The link delays every datagram by half the
RTT and carries at most RATE bytes a second, queueing up to one bandwidth-delay product
and dropping beyond it. Time is simulated, so the figures are the protocol's (flow
control, congestion control, the windows and send buffer of quic/stream.py), not this
machine's speed; the CPU seconds each side spent are printed beside them.

    python bench/longpath.py [--size 32M] [--rtt 10,40,100] [--rate 100M]
"""

from __future__ import annotations

import argparse
import functools
import heapq
import importlib
import itertools
import ssl
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kquic_tools.perf import size
from quic import connection as qconnection
from quic import stream as qstream
from tests.certs import make_pki
from tests.unit.test_connection import CLIENT_ADDR, SERVER_ADDR, Pair

MAX_STEP = 0.001  # simulated seconds between rounds, at most
MIN_STEP = 1e-6  # and at least: a timer due now has just been handled
BLOCK = bytes(1 << 16)
MAX_EVENTS = 5_000_000


class Link:
    """One direction: a rate-limited queue of one bandwidth-delay product, then a delay."""

    def __init__(self, rate: float, one_way: float) -> None:
        self.rate, self.one_way = rate, one_way
        self.limit = max(64 << 10, int(rate * 2 * one_way))
        self.free_at = 0.0  # when the last queued datagram has left
        self.dropped = 0

    def departure(self, now: float, size: int) -> float | None:
        """When a datagram offered now has been put on the wire; None if the queue is full."""
        start = max(now, self.free_at)
        if (start - now) * self.rate + size > self.limit:
            self.dropped += 1
            return None
        self.free_at = start + size / self.rate
        return self.free_at


class Endpoint:
    """What the loop needs of one side: its datagrams, timers and delivered data."""

    def __init__(self, send, receive, deadline, timer) -> None:
        self.send: Callable[[float], list[bytes]] = send
        self.receive: Callable[[bytes, float], None] = receive
        self.deadline: Callable[[], float | None] = deadline
        self.timer: Callable[[float], None] = timer


def run(server: Endpoint, client: Endpoint, feed, drain, total: int, now: float, link_args):
    """Move ``total`` bytes; (simulated seconds from the first write, datagrams dropped
    by the queue). ``feed`` writes and says whether the transfer has begun: a peer's
    handshake crosses the link first, and is not counted. Time jumps from event to
    event (a datagram's arrival, a side's timer, pacing included), at most MAX_STEP
    apart so the application's side keeps writing and reading."""
    links = {id(server): Link(*link_args), id(client): Link(*link_args)}
    wire: list = []
    order = itertools.count()
    start, got = None, 0
    for _ in range(MAX_EVENTS):
        if feed(now) and start is None:
            start = now
        for sender, receiver in ((server, client), (client, server)):
            deadline = sender.deadline()
            if deadline is not None and deadline <= now:
                sender.timer(now)
            link = links[id(sender)]
            for datagram in sender.send(now):
                left = link.departure(now, len(datagram))
                if left is not None:
                    heapq.heappush(wire, (left + link.one_way, next(order), receiver, datagram))
        while wire and wire[0][0] <= now:
            _, _, receiver, datagram = heapq.heappop(wire)
            receiver.receive(datagram, now)
        got += drain()
        if got >= total and start is not None:
            return now - start, sum(link.dropped for link in links.values())
        events = [now + MAX_STEP]
        if wire:
            events.append(wire[0][0])
        events.extend(d for d in (server.deadline(), client.deadline()) if d is not None)
        now = max(min(events), now + MIN_STEP)
    raise RuntimeError("transfer did not finish")


def kquic_fixed(total: int, link_args, pki=None) -> tuple[float, int]:
    """kquic held to its configured windows and send buffer: what autotuning adds."""
    saved = qstream.WINDOW_GROWTH_RTTS, qconnection.MAX_SEND_BUFFER
    qstream.WINDOW_GROWTH_RTTS = qconnection.MAX_SEND_BUFFER = 0
    try:
        return kquic(total, link_args, pki)
    finally:
        qstream.WINDOW_GROWTH_RTTS, qconnection.MAX_SEND_BUFFER = saved


def kquic(total: int, link_args, pki=None) -> tuple[float, int]:
    """The core with its fake TLS (tests.unit.test_connection.Pair): no certificate."""
    pair = Pair()
    pair.handshake()
    s, c = pair.server, pair.client
    sid = s.open_stream(uni=False)
    sent = 0

    def feed(now: float) -> bool:
        nonlocal sent
        while sent < total and s.stream_send_room(sid) >= len(BLOCK):
            s.send_stream(sid, BLOCK, sent + len(BLOCK) >= total, sent == 0)
            sent += len(BLOCK)
        return True

    def drain() -> int:
        n = 0
        while (chunk := c.read_stream(1 << 20)) is not None:
            n += len(chunk[1])
        return n

    def side(conn, addr) -> Endpoint:
        return Endpoint(
            conn.datagrams_to_send,
            lambda d, now: conn.receive_datagram(d, addr, now),
            conn.next_deadline,
            conn.handle_timer,
        )

    return run(side(s, CLIENT_ADDR), side(c, SERVER_ADDR), feed, drain, total, pair.now, link_args)


def peer(library: str, total: int, link_args, pki) -> tuple[float, int]:
    """aioquic or qh3: a real TLS handshake over the same link, then the transfer."""
    configuration = importlib.import_module(f"{library}.quic.configuration")
    connection = importlib.import_module(f"{library}.quic.connection")
    events = importlib.import_module(f"{library}.quic.events")
    server_config = configuration.QuicConfiguration(is_client=False, alpn_protocols=["perf"])
    server_config.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    client_config = configuration.QuicConfiguration(is_client=True, alpn_protocols=["perf"])
    client_config.verify_mode = ssl.CERT_NONE
    now = 1000.0
    c = connection.QuicConnection(configuration=client_config)
    c.connect(SERVER_ADDR, now=now)
    first = c.datagrams_to_send(now=now)
    s = connection.QuicConnection(
        configuration=server_config,
        original_destination_connection_id=c.original_destination_connection_id,
    )
    for datagram, _ in first:
        s.receive_datagram(datagram, CLIENT_ADDR, now=now)
    ready = False
    sid: int | None = None
    received = [0]

    def feed(now: float) -> bool:
        nonlocal ready, sid
        for conn, name in ((c, "client"), (s, "server")):
            while (event := conn.next_event()) is not None:
                if isinstance(event, events.HandshakeCompleted) and name == "server":
                    ready = True
                elif isinstance(event, events.StreamDataReceived) and name == "client":
                    received[0] += len(event.data)
        if ready and sid is None:
            sid = s.get_next_available_stream_id()
            s.send_stream_data(sid, bytes(total), end_stream=True)
        return sid is not None

    def drain() -> int:
        n, received[0] = received[0], 0
        return n

    def side(conn, addr) -> Endpoint:
        return Endpoint(
            lambda now: [d for d, _ in conn.datagrams_to_send(now=now)],
            lambda d, now: conn.receive_datagram(d, addr, now=now),
            conn.get_timer,
            lambda now: conn.handle_timer(now=now),
        )

    return run(side(s, CLIENT_ADDR), side(c, SERVER_ADDR), feed, drain, total, now, link_args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=size, default=size("32M"))
    parser.add_argument("--rtt", default="10,40,100", help="round-trip times in ms")
    parser.add_argument("--rate", type=size, default=size("100M"), help="bytes a second")
    args = parser.parse_args()
    impls: list[tuple[str, Callable]] = [("kquic", kquic), ("fixed", kquic_fixed)]
    for library in ("aioquic", "qh3"):
        try:
            importlib.import_module(f"{library}.quic.connection")
        except ImportError:
            continue
        impls.append((library, functools.partial(peer, library)))
    print(
        f"{args.size / 2**20:.0f} MiB server to client, link {args.rate / 1e6:.0f} MB/s,"
        " queue of one bandwidth-delay product; simulated time"
    )
    print("fixed: kquic held to its configured windows and send buffer (no autotuning)")
    print(f"{'rtt ms':>6} {'impl':>8} {'seconds':>8} {'MB/s':>7} {'dropped':>8} {'cpu s':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        pki = make_pki(Path(tmp))
        for rtt in (float(v) / 1000 for v in args.rtt.split(",")):
            link_args = (float(args.rate), rtt / 2)
            for name, transfer in impls:
                cpu = time.process_time()
                seconds, dropped = transfer(args.size, link_args, pki)
                cpu = time.process_time() - cpu
                print(
                    f"{rtt * 1000:>6.0f} {name:>8} {seconds:>8.2f} "
                    f"{args.size / seconds / 1e6:>7.1f} {dropped:>8} {cpu:>6.1f}"
                )


if __name__ == "__main__":
    main()
