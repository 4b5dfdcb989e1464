"""The tunnel's timer heap: a re-armed timer fires once, at its new deadline, and the
I/O thread does not wake for the deadline it replaced."""

from __future__ import annotations

import threading
import time

from quic.tunnel import get_tunnel, put_tunnel


class Clock:
    def __init__(self) -> None:
        self.fired: list[float] = []
        self.done = threading.Event()

    def timer_expired(self, now: float) -> None:
        self.fired.append(now)
        self.done.set()


def test_a_replaced_deadline_neither_fires_nor_wakes_the_thread() -> None:
    tunnel = get_tunnel(("127.0.0.1", 0), 8)
    endpoint = Clock()
    try:
        now = time.monotonic()
        tunnel.schedule(endpoint, now + 0.05)
        tunnel.schedule(endpoint, now + 30)  # pushed back: the 50 ms entry is stale
        assert tunnel._next_timeout() > 20
        later = time.monotonic() + 0.1
        tunnel.schedule(endpoint, later)  # brought forward: this one is live
        assert endpoint.done.wait(5)
        time.sleep(0.05)
        assert endpoint.fired == [endpoint.fired[0]] and endpoint.fired[0] >= later
        assert tunnel._next_timeout() is None  # the 30 s entry was dropped, not kept
    finally:
        tunnel.schedule(endpoint, None)
        put_tunnel(tunnel)
