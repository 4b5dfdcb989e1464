"""``kquic-perf server --workers 2``: two processes on one port, each owning its
connections, with the kernel steering every datagram by its connection ID.

The clients run here, so each can tell which worker served it: the server's
connection ID it ends up sending to names the worker (first byte modulo 2). A client
whose address changes mid-transfer, under a NAT or by migrating, must still reach its
worker: with the kernel's address hash instead of the steering program about half of
them would land on the other worker and be reset.
"""

from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor

import pytest

from handshake.libquic import HandshakeResult, quic_client_handshake
from quic import uapi
from quic.reuseport import open_group
from quic.socket import QuicSocket, quic_recvmsg, quic_sendmsg
from tests.interop.conftest import LossyRelay, Server, python

WORKERS = 2
CLIENTS = 8
TIMEOUT = 30.0
DOWNLOAD = 2 << 20
MIGRATE_AFTER = 1 << 18


def steering_available() -> bool:
    group = open_group(("127.0.0.1", 0), WORKERS)
    group.close()
    return group.steered


@pytest.fixture
def workers_port(pki):
    if not steering_available():
        pytest.skip("the kernel refuses SO_ATTACH_REUSEPORT_CBPF")
    cert = ["--cert", str(pki.server_cert), "--key", str(pki.server_key)]
    argv = ["server", "--listen", "127.0.0.1:0", *cert, "--workers", str(WORKERS)]
    server = Server(python("-m", "kquic_tools.perf", *argv))
    try:
        yield server.port
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(10) == 0, server.proc.stderr.read()[-2000:]
    finally:
        server.stop()


def connect(
    port: int, pki, ticket: bytes = b"", **handshake: object
) -> tuple[QuicSocket, HandshakeResult]:
    """A client after its handshake, resuming from ``ticket`` if given."""
    sock = QuicSocket()
    sock.settimeout(TIMEOUT)
    if ticket:
        sock.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_SESSION_TICKET, ticket)
    sock.connect(("127.0.0.1", port))
    result = quic_client_handshake(
        sock, None, "server.test", "perf", ca_file=str(pki.ca), timeout=TIMEOUT, **handshake
    )
    return sock, result


def worker_of(sock: QuicSocket) -> int:
    """The worker the client's current Destination Connection ID steers to."""
    return sock.conn.dest_cids.active.cid[0] % WORKERS


def download(port: int, pki, size: int, migrate: bool = False) -> tuple[int, bool]:
    """Fetch ``size`` bytes over the perf protocol; the index of the worker that served,
    and whether the client ended on another port and connection ID than it began."""
    sock, _ = connect(port, pki)
    try:
        flags = uapi.MSG_QUIC_STREAM_NEW | uapi.MSG_QUIC_STREAM_FIN
        quic_sendmsg(sock, size.to_bytes(8, "big"), 0, flags)
        first_port, received = sock.getsockname()[1], 0
        while True:
            data, _, flags = quic_recvmsg(sock, 1 << 16)
            received += len(data)
            if migrate and received >= MIGRATE_AFTER:
                migrate = False
                sock.setsockopt(
                    uapi.SOL_QUIC,
                    uapi.QUIC_SOCKOPT_CONNECTION_MIGRATION,
                    uapi.pack_sockaddr(("127.0.0.1", 0)),
                )
            if flags & uapi.MSG_QUIC_STREAM_FIN:
                break
        assert received == size
        active = sock.conn.dest_cids.active
        moved = sock.getsockname()[1] != first_port and active.sequence > 0
        return worker_of(sock), moved
    finally:
        sock.close()


def test_connections_spread_over_the_workers(workers_port, pki) -> None:
    """A client's first DCID is random, so its connection may land on any worker: a
    batch of 8 all naming one worker happens 1 time in 128, four such batches in a row
    1 time in 2^28."""
    seen: set[int] = set()
    for _ in range(4):
        with ThreadPoolExecutor(CLIENTS) as pool:
            results = pool.map(lambda _: download(workers_port, pki, 64 << 10), range(CLIENTS))
            seen.update(worker for worker, _ in results)
        if seen == set(range(WORKERS)):
            break
    assert seen == set(range(WORKERS))


def test_a_nat_rebinding_keeps_each_connection_on_its_worker(workers_port, pki) -> None:
    relays = [
        LossyRelay(("127.0.0.1", workers_port), loss=0, reorder=0, rebind_after=20)
        for _ in range(4)
    ]
    try:
        with ThreadPoolExecutor(len(relays)) as pool:
            list(pool.map(lambda relay: download(relay.port, pki, DOWNLOAD), relays))
    finally:
        for relay in relays:
            relay.close()
    assert all(relay.old_ports for relay in relays)  # every one was rebound


def test_an_active_migration_keeps_each_connection_on_its_worker(workers_port, pki) -> None:
    """The client also moves to a connection ID the worker issued in NEW_CONNECTION_ID."""
    with ThreadPoolExecutor(4) as pool:
        results = list(
            pool.map(lambda _: download(workers_port, pki, DOWNLOAD, migrate=True), range(4))
        )
    assert all(moved for _, moved in results)


def test_a_session_ticket_resumes_on_either_worker(workers_port, pki) -> None:
    """The workers share the listener's ticket key: a client resumes wherever its random
    first DCID lands it, which in ten tries is the other worker but 1 time in 1024."""
    first, result = connect(workers_port, pki, receive_ticket=2)
    home = worker_of(first)
    first.close()
    assert result.session_data
    served = []
    for _ in range(10):
        sock, again = connect(workers_port, pki, result.session_data)
        served.append(worker_of(sock))
        sock.close()
        assert again.resumed
        if served[-1] != home:
            break
    assert set(served) - {home}
