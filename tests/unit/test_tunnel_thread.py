"""A connecting client's own tunnel starts its I/O thread only once there is something
to wait for: after its first datagram has left, so the thread's start-up overlaps the
peer's work instead of delaying the ClientHello. Other tunnels run from the start."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from quic.tunnel import Tunnel, get_tunnel, put_tunnel


def _io_thread(tunnel: Tunnel) -> threading.Thread | None:
    name = f"quic-tunnel-{tunnel.local_addr[1]}"
    return next((t for t in threading.enumerate() if t.name == name), None)


class Clock:
    def __init__(self) -> None:
        self.done = threading.Event()

    def timer_expired(self, now: float) -> None:
        self.done.set()


class Listener:
    def alpn_list(self) -> list[bytes]:
        return []


@pytest.fixture
def tunnel():
    tunnel = Tunnel(("127.0.0.1", 0), 8, start=False)
    yield tunnel
    tunnel.close()


def test_a_new_tunnel_has_no_thread_and_closes_without_one(tunnel: Tunnel) -> None:
    assert _io_thread(tunnel) is None
    tunnel.close()
    assert tunnel.sock.fileno() == -1


def test_the_first_datagram_sent_starts_the_thread(tunnel: Tunnel) -> None:
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        peer.bind(("127.0.0.1", 0))
        tunnel.sendto(b"\x40" + bytes(40), peer.getsockname())
        peer.settimeout(5)
        assert peer.recv(100)  # the datagram left before the thread was started
        thread = _io_thread(tunnel)
        assert thread is not None and thread.is_alive()
        tunnel.close()
        thread.join(5)
        assert not thread.is_alive()
    finally:
        peer.close()


def test_a_batch_sent_starts_the_thread(tunnel: Tunnel) -> None:
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        peer.bind(("127.0.0.1", 0))
        tunnel.send_batch([b"\x40" + bytes(1199)] * 3, peer.getsockname())
        peer.settimeout(5)
        assert peer.recv(2000)
        assert _io_thread(tunnel) is not None
    finally:
        peer.close()


def test_a_timer_starts_the_thread_and_fires(tunnel: Tunnel) -> None:
    clock = Clock()
    tunnel.schedule(clock, time.monotonic() + 0.01)
    assert _io_thread(tunnel) is not None
    assert clock.done.wait(5)


def test_a_listener_starts_the_thread(tunnel: Tunnel) -> None:
    tunnel.add_listener(Listener())
    assert _io_thread(tunnel) is not None
    assert tunnel.listening.is_set()


def test_only_a_connecting_clients_tunnel_waits_and_sharing_starts_it() -> None:
    eager = Tunnel(("127.0.0.1", 0), 8)
    try:
        assert _io_thread(eager) is not None  # a receiver: routes alone may be used
    finally:
        eager.close()
    moved = get_tunnel(("127.0.0.1", 0), 8)  # as for a migration: answers come at once
    try:
        assert _io_thread(moved) is not None
    finally:
        put_tunnel(moved)
    lazy = get_tunnel(("127.0.0.1", 0), 8, wait=True)
    try:
        assert _io_thread(lazy) is None
        shared = get_tunnel(lazy.local_addr, 8)
        assert shared is lazy and _io_thread(lazy) is not None
        put_tunnel(shared)
    finally:
        put_tunnel(lazy)
