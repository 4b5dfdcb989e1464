"""kquic-perf: bulk transfer measurement over one or more streams.

    kquic-perf server --listen HOST:PORT --cert FILE --key FILE [--plpmtud] [--workers N]
    kquic-perf client HOST:PORT (--send SIZE | --recv SIZE) [--streams N]
                      [--insecure | --ca FILE] [--server-name NAME] [--plpmtud]

Protocol (ALPN "perf"): on each stream the client sends 8 bytes, the big-endian size it
wants back (0 for an upload), then its upload, then FIN; the server answers with that
many bytes and FIN. The client prints one JSON line: bytes, seconds, MB/s, handshake ms,
CPU seconds, and the datagram size the connection ended with.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from decimal import Decimal, InvalidOperation

from handshake.libquic import HandshakeError, quic_client_handshake, quic_server_handshake
from kquic_tools.common import (
    INTERRUPTED,
    add_plpmtud_flag,
    enable_plpmtud,
    family_of,
    missing_file,
    peer_hostport,
    serve_forever,
    split_hostport,
    unusable_credentials,
)
from quic import uapi
from quic.reuseport import MAX_WORKERS
from quic.socket import QuicSocket, quic_recvmsg, quic_sendmsg

ALPN = "perf"
CHUNK = 1 << 16
BLOCK = bytes(CHUNK)
SUFFIXES = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
MAX_SIZE = (1 << 62) - 1  # the largest stream offset QUIC can express


def size(value: str) -> int:
    """A byte count, optionally with k, m or g (KiB, MiB, GiB): a whole number of bytes
    that one stream can carry. Decimal keeps 1e20 and 1.5k exact where float would not."""
    text = value.strip().lower()
    scale = SUFFIXES.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in SUFFIXES else text
    try:
        amount = Decimal(number) * scale
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a size: {value!r}") from None
    if (
        not amount.is_finite()
        or amount != amount.to_integral_value()
        or not 0 <= amount <= MAX_SIZE
    ):
        raise argparse.ArgumentTypeError(
            f"a size is a whole number of bytes, 0 to 2^62-1: {value!r}"
        )
    return int(amount)


def send_zeros(sock: QuicSocket, sid: int, total: int) -> None:
    """MSG_MORE on all but the last write, as a bulk sender corks: otherwise each
    write's tail that does not fill a packet leaves as a packet of its own, which with
    64 KiB datagrams is every other packet."""
    sent = 0
    while sent < total:
        n = min(CHUNK, total - sent)
        last = sent + n == total
        quic_sendmsg(sock, BLOCK[:n], sid, uapi.MSG_QUIC_STREAM_FIN if last else uapi.MSG_MORE)
        sent += n
    if total == 0:
        quic_sendmsg(sock, b"", sid, uapi.MSG_QUIC_STREAM_FIN)


def serve_connection(conn: QuicSocket, args: argparse.Namespace) -> None:
    try:
        quic_server_handshake(conn, args.key, args.cert, ALPN, timeout=30)
        heads: dict[int, bytearray] = {}
        while True:
            data, sid, flags = quic_recvmsg(conn, CHUNK)
            head = heads.setdefault(sid, bytearray())
            if len(head) < 8:
                head += data[: 8 - len(head)]
            if flags & uapi.MSG_QUIC_STREAM_FIN:
                want = int.from_bytes(heads.pop(sid)[:8], "big")
                threading.Thread(target=send_zeros, args=(conn, sid, want), daemon=True).start()
    except (OSError, HandshakeError):
        pass
    finally:
        conn.close()


def run_server(args: argparse.Namespace) -> int:
    return serve_forever(
        args.listen,
        ALPN,
        lambda conn: serve_connection(conn, args),
        args.qlog,
        plpmtud=args.plpmtud,
        workers=args.workers,
    )


def one_stream(sock: QuicSocket, upload: int, download: int) -> None:
    """Open a stream and make its request. Opened here, not before the writers start:
    a blocking open waits for the peer's MAX_STREAMS while earlier streams finish, so
    --streams may exceed the peer's limit (100 for a kquic server)."""
    try:
        info = sock.getsockopt(
            uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_STREAM_OPEN, uapi.QuicStreamInfo(-1, 0).pack()
        )
        sid = uapi.QuicStreamInfo.unpack(info).stream_id
        quic_sendmsg(sock, download.to_bytes(8, "big"), sid, 0)
        send_zeros(sock, sid, upload)
    except OSError:
        pass  # the connection is gone: the reader says why


def run_client(args: argparse.Namespace) -> int:
    host, port = args.server
    # No socket timeout: an upload hears nothing from the server until its FIN, however
    # long it runs. A dead peer is found by the idle timeout, which closes the
    # connection and fails the blocked calls; the handshake has a deadline of its own.
    sock = QuicSocket(family_of(host))
    if args.qlog:
        sock.qlog_dir = args.qlog
    if args.plpmtud:
        enable_plpmtud(sock)
    cpu0, t0 = time.process_time(), time.monotonic()
    try:
        sock.connect((host, port))
        quic_client_handshake(
            sock,
            None,
            args.server_name or host,
            ALPN,
            ca_file=args.ca,
            insecure=args.insecure,
            timeout=30,
        )
        handshake = time.monotonic() - t0
        start = time.monotonic()
        per_up, per_down = (args.send or 0) // args.streams, (args.recv or 0) // args.streams
        writers = [
            threading.Thread(target=one_stream, args=(sock, per_up, per_down), daemon=True)
            for _ in range(args.streams)
        ]
        for writer in writers:
            writer.start()
        received, finished = 0, 0
        while finished < args.streams:  # the server ends each stream once
            data, _, flags = quic_recvmsg(sock, CHUNK)
            received += len(data)
            if flags & uapi.MSG_QUIC_STREAM_FIN:
                finished += 1
        for writer in writers:
            writer.join(60)
        seconds = time.monotonic() - start
        datagram_size = sock.conn.max_datagram_size
    except (OSError, HandshakeError) as exc:
        print(f"kquic-perf: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        sock.settimeout(0)  # close at once: no lingering to deliver what is unsent
        raise
    finally:
        sock.close()
    moved = per_up * args.streams + received
    print(
        json.dumps(
            {
                "impl": "kquic",
                "bytes": moved,
                "seconds": round(seconds, 4),
                "MBps": round(moved / seconds / 1e6, 2),
                "handshake_ms": round(handshake * 1000, 2),
                "cpu_seconds": round(time.process_time() - cpu0, 3),
                "streams": args.streams,
                "max_datagram_size": datagram_size,
            }
        ),
        flush=True,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kquic-perf", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role", required=True)
    server = sub.add_parser("server")
    server.add_argument("--listen", type=split_hostport, default=("0.0.0.0", 443))
    server.add_argument("--cert", required=True)
    server.add_argument("--key", required=True)
    server.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes sharing the port, each owning its connections (Linux)",
    )
    client = sub.add_parser("client")
    client.add_argument("server", type=peer_hostport)
    direction = client.add_mutually_exclusive_group(required=True)
    # No default: argparse takes a value equal to the default for no value at all, so
    # with default=0 an explicit --send 0 would count as neither option given.
    direction.add_argument("--send", type=size)
    direction.add_argument("--recv", type=size)
    client.add_argument("--streams", type=int, default=1)
    trust = client.add_mutually_exclusive_group()
    trust.add_argument("--insecure", action="store_true")
    trust.add_argument("--ca")
    client.add_argument("--server-name")
    for sub_parser in (server, client):
        sub_parser.add_argument("--qlog", metavar="DIR", help="write one qlog file per connection")
        add_plpmtud_flag(sub_parser)
    args = parser.parse_args(argv)
    if args.role == "client" and args.streams < 1:
        parser.error("--streams must be at least 1")
    problem = missing_file(args) or unusable_credentials(args)
    if problem:
        parser.error(problem)
    if args.role == "server" and not 1 <= args.workers <= MAX_WORKERS:
        parser.error(f"--workers must be 1 to {MAX_WORKERS}")
    try:
        return run_server(args) if args.role == "server" else run_client(args)
    except OSError as exc:
        print(f"kquic-perf: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
