"""The tools' accept loop: each connection is handled in a thread of its own, the one
that accepted it, while the next acceptor takes the next connection."""

from __future__ import annotations

import queue
import threading

from kquic_tools.common import _accept_forever

TIMEOUT = 5


class Listener:
    """accept() hands out queued connections; close() makes it fail, as a closed
    QuicSocket's does."""

    def __init__(self) -> None:
        self.pending: queue.Queue = queue.Queue()
        self.closed = False

    def accept(self):
        conn = self.pending.get(timeout=TIMEOUT)
        if conn is None:
            self.pending.put(None)  # for every later acceptor too
            raise OSError(9, "Bad file descriptor")
        return conn, ("127.0.0.1", 1)

    def close(self) -> None:
        self.closed = True
        self.pending.put(None)


def run_loop(srv: Listener, handle, handled: list, conns: list[str]) -> threading.Thread:
    """The accept loop in a thread of its own, fed ``conns``; returns once ``handled``
    has as many entries (or after 5 s)."""
    loop = threading.Thread(target=_accept_forever, args=(srv, handle), daemon=True)
    loop.start()
    for conn in conns:
        srv.pending.put(conn)
    deadline = threading.Event()
    for _ in range(100):
        if len(handled) == len(conns):
            break
        deadline.wait(0.05)
    return loop


def test_connections_are_handled_at_once_and_side_by_side() -> None:
    srv = Listener()
    together = threading.Barrier(3, timeout=TIMEOUT)  # passes only if all 3 run at once
    handled: list[tuple[str, int]] = []

    def handle(conn: str) -> None:
        handled.append((conn, threading.get_ident()))
        together.wait()

    loop = run_loop(srv, handle, handled, ["a", "b", "c"])
    assert sorted(c for c, _ in handled) == ["a", "b", "c"]
    assert len({ident for _, ident in handled}) == 3
    srv.close()
    loop.join(TIMEOUT)
    assert not loop.is_alive() and srv.closed


def test_without_a_thread_to_spare_the_acceptor_accepts_in_turn(monkeypatch) -> None:
    """When no thread can be started for the next acceptor, the one that accepted
    handles its connection and then accepts again: slower, but the server goes on."""
    import _thread

    from kquic_tools import common

    started = []
    real_start = _thread.start_new_thread

    def start_once(func, args):
        if started:
            raise RuntimeError("can't start new thread")
        started.append(func)
        return real_start(func, args)

    monkeypatch.setattr(common._thread, "start_new_thread", start_once)
    srv = Listener()
    handled: list[str] = []
    loop = run_loop(srv, handled.append, handled, ["a", "b", "c"])
    assert handled == ["a", "b", "c"]
    srv.close()
    loop.join(TIMEOUT)
    assert not loop.is_alive()
