"""UDP GSO in the tunnel: a flush's datagrams leave in few system calls and arrive
as the same datagrams, in order; without GSO they arrive the same way."""

from __future__ import annotations

import contextlib
import itertools
import socket
import sys
import threading

import pytest

from quic.tunnel import SOL_UDP, UDP_GRO, get_tunnel, put_tunnel


@pytest.mark.parametrize("gso", [True, False])
def test_batches_arrive_as_the_datagrams_they_were(gso: bool) -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(2)
    tunnel = get_tunnel(("127.0.0.1", 0), 8)
    try:
        tunnel.gso = tunnel.gso and gso
        datagrams = [bytes([i]) * 1200 for i in range(12)] + [b"short" * 10]
        datagrams += [bytes([99]) * 700] * 3  # a second run of another size
        tunnel.send_batch(datagrams, receiver.getsockname())
        got = [receiver.recv(65536) for _ in datagrams]
        assert got == datagrams
        if gso and sys.platform.startswith("linux"):
            assert tunnel.gso  # loopback takes GSO: the batched path was the one used
    finally:
        put_tunnel(tunnel)
        receiver.close()


@contextlib.contextmanager
def tunnel_pair(gro: bool):
    """A receiving tunnel, GRO turned off unless ``gro``, and a sending one."""
    receiver = get_tunnel(("127.0.0.1", 0), 8)
    sender = get_tunnel(("127.0.0.1", 0), 8)
    try:
        if not gro and receiver.gro:
            receiver.sock.setsockopt(SOL_UDP, UDP_GRO, 0)
            receiver.gro = False
        yield receiver, sender
    finally:
        put_tunnel(sender)
        put_tunnel(receiver)


class Sink:
    """An endpoint that keeps the datagrams it is handed, and each call's owner."""

    def __init__(self, owner: str, got: list, calls: list, expected: int, done) -> None:
        self.owner, self.got, self.calls, self.expected, self.done = (
            owner, got, calls, expected, done,
        )  # fmt: skip

    def datagrams_received(self, run, addr, now, ecn) -> None:
        self.calls.append(self.owner)
        self.got.extend((self.owner, bytes(data)) for data in run)
        if len(self.got) == self.expected:
            self.done.set()

    def flush(self, now) -> None:
        pass


@pytest.mark.parametrize("gro", [True, False])
def test_a_gso_batch_reaches_a_tunnel_as_its_datagrams(gro: bool) -> None:
    """With GRO the receiving tunnel reads a batch as one buffer and splits it by the
    segment size the kernel reports; without, it reads the datagrams one by one. Either
    way the endpoint sees the datagrams as they were sent, in order."""
    datagrams = [bytes([0x40 | i]) + bytes([i]) * 1199 for i in range(10)]
    datagrams.append(bytes([0x40]) + b"tail" * 100)
    got: list = []
    done = threading.Event()
    with tunnel_pair(gro) as (receiver, sender):
        sink = Sink("a", got, [], len(datagrams), done)
        for datagram in datagrams:
            receiver.add_route(datagram[1:9], sink)
        sender.send_batch(datagrams, receiver.local_addr)
        assert done.wait(5), f"{len(got)} of {len(datagrams)} datagrams arrived"
        assert [data for _, data in got] == datagrams
        if gro and sys.platform.startswith("linux"):
            assert receiver.gro  # loopback takes GRO: the split path was the one used


@pytest.mark.parametrize("gro", [True, False])
def test_connections_sharing_a_batch_each_get_theirs_in_order(gro: bool) -> None:
    """Connections behind one address pair (a client tunnel's sockets to one server)
    can share a GRO batch: the tunnel hands each its own datagrams, in order, a run at
    a time."""
    pattern = "aabababbbaab"
    datagrams = [
        bytes([0x40]) + bytes([ord(owner)]) * 8 + bytes([i]) + bytes(1191)
        for i, owner in enumerate(pattern)
    ]
    got: list = []
    calls: list[str] = []
    done = threading.Event()
    with tunnel_pair(gro) as (receiver, sender):
        for owner in "ab":
            sink = Sink(owner, got, calls, len(datagrams), done)
            receiver.add_route(bytes([ord(owner)]) * 8, sink)
        sender.send_batch(datagrams, receiver.local_addr)
        assert done.wait(5), f"{len(got)} of {len(datagrams)} datagrams arrived"
    for owner in "ab":
        mine = [data for o, data in got if o == owner]
        sent = zip(datagrams, pattern, strict=True)
        assert mine == [datagram for datagram, o in sent if o == owner]
    runs = 1 + sum(x != y for x, y in itertools.pairwise(pattern))
    assert runs <= len(calls) <= len(pattern)  # a run is never split across owners
