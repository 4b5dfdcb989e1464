"""A server in several processes: N workers on one port, each owning its connections.

Python runs one thread of the stack at a time, so a busy server spreads over cores
only as processes. :func:`serve_workers` binds a reuseport group
(``quic.reuseport``), draws the keys every worker must share (``quic.keys``) and
forks one process per socket. In each, the socket becomes a tunnel that mints
connection IDs naming its worker, registered so that a listener bound to the address
serves it, and the program's ``worker_main`` runs: it sets up its listener exactly
as a one-process server would.

The parent only supervises. It keeps every socket of the group open (closing one
would renumber the workers), reports readiness once every worker listens, forwards
SIGTERM and SIGINT to the workers, in which they raise ``KeyboardInterrupt`` as
Ctrl-C does in a one-process server, and reaps them. A worker that dies unbidden is
restarted on the same socket: the connections it had are lost, and the restarted
worker, holding the same reset key, resets them at their next packet. One that dies
within ``MIN_UPTIME`` of starting is failing rather than crashing now and then: the
parent then stops the others and returns 1. If the parent is killed, the workers get
SIGTERM (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from .connid import WorkerCids
from .keys import EndpointKeys
from .reuseport import ReuseportGroup, open_group
from .socket import CID_LENGTH
from .tunnel import Address, Tunnel, adopt_tunnel

log = logging.getLogger(__name__)

READY_TIMEOUT = 30.0  # for every worker to listen
MIN_UPTIME = 5.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass(frozen=True)
class Worker:
    """What a worker is told: which one it is, of how many, and the address to bind."""

    index: int
    count: int
    address: Address


WorkerMain = Callable[[Worker], object]


def serve_workers(
    local_addr: Address,
    workers: int,
    worker_main: WorkerMain,
    on_ready: Callable[[Address], None] | None = None,
) -> int:
    """Serve ``local_addr`` with ``workers`` processes running ``worker_main`` until
    SIGTERM or SIGINT; ``on_ready`` is called in this process with the bound address
    once all of them listen. Returns 0 after a requested stop, 1 on failure."""
    if sys.platform != "linux":
        raise OSError("worker processes need Linux (SO_REUSEPORT steering)")
    group = open_group(local_addr, workers)
    try:
        return _Supervisor(group, EndpointKeys.generate(), worker_main).run(on_ready)
    finally:
        group.close()


class _Supervisor:
    """The parent's side: forks, watches and stops the workers of one group."""

    def __init__(self, group: ReuseportGroup, keys: EndpointKeys, worker_main: WorkerMain):
        self.group = group
        self.keys = keys
        self.worker_main = worker_main
        self.pids: dict[int, tuple[int, float]] = {}  # pid: (worker index, start time)
        self.stopping = False
        self.failed = False

    def run(self, on_ready: Callable[[Address], None] | None) -> int:
        previous = {signum: signal.signal(signum, self._stop) for signum in STOP_SIGNALS}
        try:
            ready_r, ready_w = os.pipe()
            try:
                for index in range(len(self.group.sockets)):
                    self._spawn(index, ready_w)
            finally:
                os.close(ready_w)
            with os.fdopen(ready_r, "rb", buffering=0) as ready:
                if self._wait_ready(ready) and on_ready is not None:
                    on_ready(self.group.address)
            while self.pids:
                self._reap(os.waitpid(-1, 0))
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return 1 if self.failed else 0

    def _spawn(self, index: int, ready_w: int | None) -> None:
        """Fork worker ``index``; signals stay blocked until each side has its handlers."""
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            _worker_process(
                self._worker(index), self.group, self.keys, parent, ready_w, self.worker_main
            )
        self.pids[pid] = (index, time.monotonic())
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

    def _worker(self, index: int) -> Worker:
        return Worker(index, len(self.group.sockets), self.group.address)

    def _wait_ready(self, ready) -> bool:
        """Whether every worker listened in time; False (and stopping) otherwise."""
        waiting = set(range(len(self.group.sockets)))
        deadline = time.monotonic() + READY_TIMEOUT
        while waiting and not self.stopping and time.monotonic() < deadline:
            if select.select([ready], [], [], 0.1)[0]:
                waiting.difference_update(ready.read(len(waiting)) or b"")
            while self.pids and not self.stopping:
                pid, status = os.waitpid(-1, os.WNOHANG)
                if not pid:
                    break
                self._reap((pid, status))
        if waiting and not self.stopping:
            log.error("workers %s did not start listening", sorted(waiting))
            self._fail()
        return not waiting

    def _reap(self, waited: tuple[int, int]) -> None:
        pid, status = waited
        index, started = self.pids.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        if self.stopping:
            self.failed |= code not in (0, -signal.SIGTERM)
            return
        if time.monotonic() - started < MIN_UPTIME:
            log.error("worker %d exited (%d) within %.0f s of starting", index, code, MIN_UPTIME)
            self._fail()
            return
        log.warning("worker %d exited (%d): restarting it", index, code)
        self._spawn(index, None)

    def _fail(self) -> None:
        self.failed = True
        self._stop(signal.SIGTERM, None)

    def _stop(self, signum: int, frame) -> None:
        """SIGTERM/SIGINT here: tell every worker to stop, once."""
        if self.stopping:
            return
        self.stopping = True
        for pid in list(self.pids):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


def _worker_process(
    worker: Worker,
    group: ReuseportGroup,
    keys: EndpointKeys,
    parent: int,
    ready_w: int | None,
    worker_main: WorkerMain,
) -> None:
    """The child after fork: never returns into the parent's code."""
    code = 1
    try:
        _become_worker(parent)
        sock = group.sockets[worker.index]
        for other in group.sockets:
            if other is not sock:
                other.close()
        tunnel = Tunnel(
            worker.address,
            CID_LENGTH,
            sock=sock,
            keys=keys,
            cids=WorkerCids(worker.index, worker.count),
        )
        adopt_tunnel(tunnel, worker.address)
        if ready_w is not None:
            _report_ready(tunnel, worker.index, ready_w)
        result = worker_main(worker)
        code = result if isinstance(result, int) else 0
    except KeyboardInterrupt:
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _become_worker(parent: int) -> None:
    """Stop signals raise KeyboardInterrupt, once; the parent's death sends SIGTERM."""
    stopping = threading.Event()

    def interrupt(signum: int, frame) -> None:
        if not stopping.is_set():
            stopping.set()
            raise KeyboardInterrupt

    for signum in STOP_SIGNALS:
        signal.signal(signum, interrupt)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    if os.getppid() != parent:  # the parent died before prctl took effect
        raise KeyboardInterrupt


def _report_ready(tunnel: Tunnel, index: int, ready_w: int) -> None:
    """Write ``index`` to the parent once worker_main's listener is on the tunnel."""

    def wait() -> None:
        if tunnel.listening.wait(READY_TIMEOUT):
            os.write(ready_w, bytes((index,)))
        os.close(ready_w)

    threading.Thread(target=wait, name="quic-worker-ready", daemon=True).start()
