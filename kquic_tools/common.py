"""What every kquic tool shares: address parsing and the listen/accept loop."""

from __future__ import annotations

import _thread
import argparse
import logging
import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from handshake import gnutls
from quic import uapi
from quic.path import PROBE_TIMER
from quic.socket import QuicSocket
from quic.workers import serve_workers

log = logging.getLogger(__name__)

# --plpmtud's probe interval (µs): RFC 8899's recommended PROBE_TIMER. Probes lost on
# a busy path are found sooner by loss detection; the timer only bounds the wait.
PLPMTUD_PROBE_INTERVAL = int(PROBE_TIMER * 1_000_000)

# A client's exit status after Ctrl-C: what a shell reports for a command SIGINT killed.
INTERRUPTED = 128 + signal.SIGINT


def split_hostport(value: str, lowest_port: int = 0) -> tuple[str, int]:
    """HOST:PORT for argparse; port 0 (any free port) only where ``lowest_port`` is 0,
    as for a listener. Checked here: the socket layer would silently wrap 70000."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    if not lowest_port <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"port must be {lowest_port} to 65535, got {port}")
    return host.strip("[]") or "0.0.0.0", int(port)


def peer_hostport(value: str) -> tuple[str, int]:
    """A server to connect to: HOST:PORT with a port from 1 to 65535."""
    return split_hostport(value, lowest_port=1)


def missing_file(args: argparse.Namespace) -> str | None:
    """A complaint about the first of --cert, --key or --ca that names no file: a server
    would otherwise start and fail each handshake without saying why."""
    for name in ("cert", "key", "ca"):
        value = getattr(args, name, None)
        if value and not Path(value).is_file():
            return f"--{name}: no such file: {value}"
    return None


def unusable_credentials(args: argparse.Namespace) -> str | None:
    """What GnuTLS finds wrong with --cert and --key (not PEM, not a key, not a pair)
    or --ca (no certificate in it), loading them as every handshake will: a server
    would otherwise print ``ready`` and fail each handshake, and a client fail with a
    TLS error that names no file."""
    cert, key, ca = (getattr(args, name, None) for name in ("cert", "key", "ca"))
    creds = gnutls.CertificateCredentials()
    try:
        if cert:
            try:
                creds.set_key_file(cert, key or cert)
            except gnutls.GnutlsError as exc:
                return f"--cert {cert} --key {key}: {exc}"
        if ca:
            try:
                creds.set_trust_file(ca)
            except gnutls.GnutlsError as exc:
                return f"--ca {ca}: {exc}"
    finally:
        creds.close()
    return None


def family_of(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def add_plpmtud_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--plpmtud",
        action="store_true",
        help="discover the path MTU (RFC 8899) instead of keeping 1200-byte datagrams",
    )


def enable_plpmtud(sock: QuicSocket) -> None:
    """QUIC_SOCKOPT_CONFIG's plpmtud_probe_interval, which is 0 (off) by default."""
    config = uapi.QuicConfig(plpmtud_probe_interval=PLPMTUD_PROBE_INTERVAL)
    sock.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_CONFIG, config.pack())


def serve_forever(
    listen: tuple[str, int],
    alpn: str,
    handle: Callable[[QuicSocket], None],
    qlog: str | None = None,
    retry: bool = False,
    plpmtud: bool = False,
    workers: int = 1,
) -> int:
    """Listen on ``listen`` for ``alpn``, print ``ready PORT`` (scripts and tests wait for
    it), and run ``handle`` for each accepted connection in its own thread. With
    ``retry`` every client must first prove its address with a Retry token; with
    ``plpmtud`` connections discover the path MTU. With ``workers`` above 1, that many
    processes share the port (``quic.workers``), each running this loop; ``ready``
    comes once all of them listen."""

    def serve(address: tuple, announce: bool) -> int:
        srv = _listener(address, alpn, qlog, retry, plpmtud)
        if announce:
            _announce(srv.getsockname())
        return _accept_forever(srv, handle)

    if workers > 1:
        return serve_workers(
            listen, workers, lambda worker: serve(worker.address, False), on_ready=_announce
        )
    return serve(listen, True)


def _announce(address: tuple) -> None:
    print(f"ready {address[1]}", flush=True)


def _listener(listen: tuple, alpn: str, qlog: str | None, retry: bool, plpmtud: bool) -> QuicSocket:
    host = listen[0]
    srv = QuicSocket(family_of(host))
    if qlog:
        srv.qlog_dir = qlog
    srv.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_ALPN, alpn.encode())
    if retry:
        config = uapi.QuicConfig(validate_peer_address=1)
        srv.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_CONFIG, config.pack())
    if plpmtud:
        enable_plpmtud(srv)
    srv.bind(listen)
    srv.listen()
    return srv


def _accept_forever(srv: QuicSocket, handle: Callable[[QuicSocket], None]) -> int:
    """Run ``handle`` for each accepted connection in a thread of its own, until the
    listener closes or the user interrupts. The thread that accepts a connection is the
    one that handles it, so the handshake starts at once: starting a thread and waiting
    for it to run, as threading.Thread.start does, takes a fraction of a millisecond.
    It first starts the next acceptor, without waiting for that one to run."""
    closed = threading.Event()

    def acceptor() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                closed.set()  # the listener is closed
                return
            try:
                _thread.start_new_thread(acceptor, ())
                relieved = True
            except RuntimeError as exc:
                # No thread to spare (a thread or memory limit): this one handles the
                # connection and then accepts again, so the server slows down under
                # load but never stops accepting.
                log.warning("no thread for the next acceptor (%s): accepting in turn", exc)
                relieved = False
            handle(conn)
            if relieved:
                return

    try:
        _thread.start_new_thread(acceptor, ())
        closed.wait()
    except KeyboardInterrupt:
        pass
    finally:
        srv.close()
    return 0
