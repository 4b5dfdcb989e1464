"""kquic-interop: an hq-interop (HTTP/0.9 over QUIC) server and client.

It follows the QUIC interop runner's conventions: the client sends ``GET /path\\r\\n``
on a new bidirectional stream with FIN; the server answers with the file and FIN, or
resets the stream for a file it does not have.

    kquic-interop server --listen HOST:PORT --root DIR --cert FILE --key FILE [--retry]
                         [--timeout SECONDS] [--plpmtud]
    kquic-interop client URL... --output DIR [--insecure | --ca FILE] [--server-name NAME]
                         [--version 1|2] [--cipher aes128gcm|aes256gcm|chacha20]
                         [--key-update] [--resume | --zero-rtt] [--migrate]
                         [--timeout SECONDS] [--plpmtud]
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import threading
from pathlib import Path
from urllib.parse import ParseResult, urlparse

from handshake.libquic import HandshakeError, quic_client_handshake, quic_server_handshake
from kquic_tools.common import (
    INTERRUPTED,
    add_plpmtud_flag,
    enable_plpmtud,
    family_of,
    missing_file,
    serve_forever,
    split_hostport,
    unusable_credentials,
)
from quic import uapi
from quic.socket import QuicSocket, quic_recvmsg, quic_sendmsg

ALPN = "hq-interop"
CIPHERS = {
    "aes128gcm": uapi.TLS_CIPHER_AES_GCM_128,
    "aes256gcm": uapi.TLS_CIPHER_AES_GCM_256,
    "chacha20": uapi.TLS_CIPHER_CHACHA20_POLY1305,
}
CHUNK = 1 << 16
# HTTP/0.9 has no status line: a file the server does not have ends its stream with
# RESET_STREAM and this application error code, never with an empty body and FIN.
FILE_NOT_FOUND = 404
MIGRATE_AFTER = 1 << 20  # bytes of a response before --migrate moves the client
log = logging.getLogger("kquic.interop")


# server


def respond(conn: QuicSocket, root: Path, sid: int, request: bytes) -> None:
    line = request.decode("ascii", "replace").strip()
    path = line[4:].strip() if line.startswith("GET ") else ""
    target = (root / path.lstrip("/")).resolve()
    if root in target.parents and target.is_file():
        quic_sendmsg(conn, target.read_bytes(), sid, uapi.MSG_QUIC_STREAM_FIN)
        return
    log.info("no such file: %r", path)
    reset = uapi.QuicErrinfo(sid, FILE_NOT_FOUND).pack()
    conn.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_STREAM_RESET, reset)


def seconds(value: str) -> float:
    """--timeout: a positive, finite number of seconds; 0 or less would fail every wait
    at once, and infinity is what the idle timeout is for."""
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not 0 < number < math.inf:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {value!r}")
    return number


def directory(value: str) -> Path:
    """--root, checked at startup: a missing directory would fail every request."""
    path = Path(value).resolve()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"no such directory: {value}")
    return path


def serve_connection(conn: QuicSocket, args: argparse.Namespace) -> None:
    conn.settimeout(args.timeout)
    try:
        quic_server_handshake(
            conn, args.key, args.cert, ALPN, timeout=args.timeout, early_data=True
        )
        requests: dict[int, bytearray] = {}
        while True:
            data, sid, flags = quic_recvmsg(conn, CHUNK)
            if flags & uapi.MSG_QUIC_NOTIFICATION:
                continue
            requests.setdefault(sid, bytearray()).extend(data)
            if flags & uapi.MSG_QUIC_STREAM_FIN:
                request = bytes(requests.pop(sid))
                worker = threading.Thread(
                    target=respond, args=(conn, args.root, sid, request), daemon=True
                )
                worker.start()
    except (OSError, HandshakeError) as exc:
        log.info("connection ended: %s", exc)
    finally:
        conn.close()


def run_server(args: argparse.Namespace) -> int:
    return serve_forever(
        args.listen,
        ALPN,
        lambda conn: serve_connection(conn, args),
        args.qlog,
        args.retry,
        args.plpmtud,
    )


# client


class NotServed(Exception):
    """Files whose streams the server reset instead of sending them."""


def hq_url(value: str) -> ParseResult:
    """A URL to fetch, for argparse: it must name a host and a port from 1 to 65535."""
    url = urlparse(value)
    try:
        port = url.port
    except ValueError:  # outside 0..65535, or not a number
        port = None
    if not url.hostname or not port:
        raise argparse.ArgumentTypeError(f"URL needs a host and a port from 1 to 65535: {value}")
    return url


def run_client(args: argparse.Namespace) -> int:
    """Fetch every URL on one connection; with --resume or --zero-rtt, the first URL on
    one connection and the rest on a second that resumes the first's session (the
    interop runner's resumption and zerortt cases), its requests sent in 0-RTT with
    --zero-rtt."""
    urls = args.urls
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    batches = [urls[:1], urls[1:]] if (args.resume or args.zero_rtt) and len(urls) > 1 else [urls]
    resume: tuple[bytes, bytes] | None = None
    try:
        for batch in batches:
            resume = fetch_batch(args, batch, out, resume)
    except (OSError, HandshakeError, NotServed) as exc:
        print(f"kquic-interop: {exc}", file=sys.stderr)
        return 1
    return 0


def fetch_batch(
    args: argparse.Namespace, urls: list, out: Path, resume: tuple[bytes, bytes] | None
) -> tuple[bytes, bytes] | None:
    """One connection's worth of requests; returns (ticket, server parameters) for the
    next connection when the session can be resumed."""
    first = urls[0]
    sock = QuicSocket(family_of(first.hostname))
    sock.settimeout(args.timeout)
    if args.qlog:
        sock.qlog_dir = args.qlog
    if args.version == 2:
        config = uapi.QuicConfig(version=uapi.QUIC_VERSION_V2)
        sock.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_CONFIG, config.pack())
    early = resume is not None and args.zero_rtt
    if resume is not None:
        sock.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_SESSION_TICKET, resume[0])
        if early:
            sock.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_TRANSPORT_PARAM, resume[1])
    if args.plpmtud:
        enable_plpmtud(sock)
    try:
        sock.connect((first.hostname, first.port))
        paths = send_requests(sock, urls) if early else {}
        result = quic_client_handshake(
            sock,
            None,
            args.server_name or first.hostname,
            ALPN,
            ca_file=args.ca,
            insecure=args.insecure,
            cipher=CIPHERS.get(args.cipher, 0),
            timeout=args.timeout,
            receive_ticket=2.0 if (args.resume or args.zero_rtt) and resume is None else 0.0,
        )
        config = uapi.QuicConfig.unpack(sock.getsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_CONFIG))
        log.info("QUIC version 0x%08x", config.version)
        if resume is not None:
            print(f"resumed: {result.resumed}, 0-RTT accepted: {result.early_data}", flush=True)
        paths = paths or send_requests(sock, urls)
        read_responses(args, sock, paths, out)
        log_datagram_size(sock)
        if not result.session_data:
            return None
        remote = uapi.QuicTransportParam(remote=1).pack()
        params = sock.getsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_TRANSPORT_PARAM, remote)
        return result.session_data, params
    except KeyboardInterrupt:
        sock.settimeout(0)  # close at once: no lingering to deliver what is unsent
        raise
    finally:
        sock.close()


def send_requests(sock: QuicSocket, urls: list) -> dict[int, str]:
    """One bidirectional stream per URL; the stream ID and the path it fetches."""
    paths: dict[int, str] = {}
    for url in urls:
        info = sock.getsockopt(
            uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_STREAM_OPEN, uapi.QuicStreamInfo(-1, 0).pack()
        )
        sid = uapi.QuicStreamInfo.unpack(info).stream_id
        quic_sendmsg(sock, f"GET {url.path}\r\n".encode(), sid, uapi.MSG_QUIC_STREAM_FIN)
        paths[sid] = url.path
    return paths


def read_responses(
    args: argparse.Namespace, sock: QuicSocket, paths: dict[int, str], out: Path
) -> None:
    """Write each file as its stream ends; NotServed, once all have ended, for those
    the server reset. A reset stream also ends with an empty FIN, so the STREAM_UPDATE
    event that comes first is what tells a missing file from an empty one."""
    bodies: dict[int, bytearray] = {sid: bytearray() for sid in paths}
    not_served: list[str] = []
    update_due, migrate_due = args.key_update, args.migrate
    for wanted, event_type in (
        (True, uapi.QUIC_EVENT_STREAM_UPDATE),
        (update_due, uapi.QUIC_EVENT_KEY_UPDATE),
        (migrate_due, uapi.QUIC_EVENT_CONNECTION_MIGRATION),
    ):
        if wanted:
            event = uapi.QuicEventOption(event_type, 1).pack()
            sock.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_EVENT, event)
    while paths:
        data, sid, flags = quic_recvmsg(sock, CHUNK)
        if flags & uapi.MSG_QUIC_NOTIFICATION:
            if data[:1] == bytes((uapi.QUIC_EVENT_STREAM_UPDATE,)):
                reset = reset_stream(data[1:])
                if reset is not None and reset[0] in paths:
                    del bodies[reset[0]]
                    not_served.append(f"{paths.pop(reset[0])} (stream reset, error {reset[1]})")
            elif data[:1] == bytes((uapi.QUIC_EVENT_KEY_UPDATE,)):
                print(f"key update: both sides on key phase {data[1]}", flush=True)
            elif data[:1] == bytes((uapi.QUIC_EVENT_CONNECTION_MIGRATION,)):
                print(f"migrated: now on {sock.getsockname()}", flush=True)
            continue
        if sid not in bodies:
            continue
        bodies[sid] += data
        if update_due:
            update_due = not start_key_update(sock)
        if migrate_due and len(bodies[sid]) > MIGRATE_AFTER:
            migrate_due = not start_migration(sock)
        if flags & uapi.MSG_QUIC_STREAM_FIN:
            (out / Path(paths.pop(sid)).name).write_bytes(bodies.pop(sid))
    if not_served:
        raise NotServed("the server did not send " + ", ".join(not_served))


def reset_stream(update: bytes) -> tuple[int, int] | None:
    """(stream ID, application error code) if a STREAM_UPDATE event reports that the
    peer reset a stream."""
    info = uapi.QuicStreamUpdate.unpack(update)
    if info.state != uapi.QUIC_STREAM_RECV_STATE_RESET_RECVD:
        return None
    return info.id, info.errcode


def log_datagram_size(sock: QuicSocket) -> None:
    """What PLPMTUD reached, against what the peer said it accepts."""
    remote = uapi.QuicTransportParam(remote=1).pack()
    peer = uapi.QuicTransportParam.unpack(
        sock.getsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_TRANSPORT_PARAM, remote)
    )
    log.info(
        "max_datagram_size %d, peer max_udp_payload_size %d",
        sock.conn.max_datagram_size,
        peer.max_udp_payload_size,
    )


def start_key_update(sock: QuicSocket) -> bool:
    """Mid-transfer, as the interop runner's keyupdate case asks; False while the
    handshake is not yet confirmed, to be tried again with the next data."""
    try:
        sock.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_KEY_UPDATE, b"")
    except BlockingIOError:
        return False
    return True


def start_migration(sock: QuicSocket) -> bool:
    """Move to a new local port mid-transfer (QUIC_SOCKOPT_CONNECTION_MIGRATION); False
    when it cannot start yet (no spare connection ID or handshake unconfirmed)."""
    host = sock.getsockname()[0]
    try:
        sock.setsockopt(
            uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_CONNECTION_MIGRATION, uapi.pack_sockaddr((host, 0))
        )
    except OSError as exc:
        log.info("migration not started yet: %s", exc)
        return False
    print(f"migrating from {host} port {sock.getsockname()[1]}", flush=True)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kquic-interop", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="role", required=True)
    server = sub.add_parser("server", help="serve files over hq-interop")
    server.add_argument("--listen", type=split_hostport, default=("0.0.0.0", 443))
    server.add_argument("--root", type=directory, required=True)
    server.add_argument("--cert", required=True)
    server.add_argument("--key", required=True)
    server.add_argument("--retry", action="store_true")
    server.add_argument("--timeout", type=seconds, default=30.0)
    client = sub.add_parser("client", help="fetch URLs over hq-interop")
    client.add_argument("urls", nargs="+", type=hq_url, metavar="URL")
    client.add_argument("--output", required=True)
    trust = client.add_mutually_exclusive_group()
    trust.add_argument("--insecure", action="store_true")
    trust.add_argument("--ca")
    client.add_argument("--server-name")
    client.add_argument("--version", type=int, choices=(1, 2), default=1)
    client.add_argument("--cipher", choices=sorted(CIPHERS))
    for flag in ("--resume", "--zero-rtt", "--key-update", "--migrate"):
        client.add_argument(flag, action="store_true")
    client.add_argument("--timeout", type=seconds, default=30.0)
    for sub_parser in (server, client):
        sub_parser.add_argument("--qlog", metavar="DIR", help="write one qlog file per connection")
        add_plpmtud_flag(sub_parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    problem = missing_file(args) or unusable_credentials(args)
    if problem:
        print(f"kquic-interop: {problem}", file=sys.stderr)
        return 2
    try:
        return run_server(args) if args.role == "server" else run_client(args)
    except OSError as exc:
        print(f"kquic-interop: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
