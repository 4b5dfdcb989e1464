"""kquic-interop: an hq-interop (HTTP/0.9 over QUIC) server and client, following the
QUIC interop runner's conventions: the client sends ``GET /path\\r\\n`` on a new
bidirectional stream with FIN; the server answers with the file and FIN.

    kquic-interop server --listen HOST:PORT --root DIR --cert FILE --key FILE [--plpmtud]
    kquic-interop client URL... --output DIR [--insecure | --ca FILE] [--version 1|2]
                         [--cipher aes128gcm|aes256gcm|chacha20] [--key-update] [--plpmtud]
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

from handshake.libquic import HandshakeError, quic_client_handshake, quic_server_handshake
from kquic_tools.common import (
    add_plpmtud_flag,
    enable_plpmtud,
    family_of,
    serve_forever,
    split_hostport,
)
from quic import uapi
from quic.socket import QuicSocket, quic_recvmsg, quic_sendmsg

ALPN = "hq-interop"
CIPHERS = {
    "aes128gcm": uapi.TLS_CIPHER_AES_GCM_128,
    "aes256gcm": uapi.TLS_CIPHER_AES_GCM_256,
    "chacha20": uapi.TLS_CIPHER_CHACHA20_POLY1305,
}
NOT_YET = ("resume", "zero_rtt", "migrate")
EXIT_UNSUPPORTED = 127
CHUNK = 1 << 16
log = logging.getLogger("kquic.interop")


# server


def respond(conn: QuicSocket, root: Path, sid: int, request: bytes) -> None:
    line = request.decode("ascii", "replace").strip()
    path = line[4:].strip() if line.startswith("GET ") else ""
    target = (root / path.lstrip("/")).resolve()
    body = b""
    if root in target.parents and target.is_file():
        body = target.read_bytes()
    else:
        log.info("no such file: %r", path)
    quic_sendmsg(conn, body, sid, uapi.MSG_QUIC_STREAM_FIN)


def serve_connection(conn: QuicSocket, args: argparse.Namespace) -> None:
    conn.settimeout(args.timeout)
    try:
        quic_server_handshake(conn, args.key, args.cert, ALPN, timeout=args.timeout)
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
    args.root = Path(args.root).resolve()
    return serve_forever(
        args.listen,
        ALPN,
        lambda conn: serve_connection(conn, args),
        args.qlog,
        args.retry,
        args.plpmtud,
    )


# client


def run_client(args: argparse.Namespace) -> int:
    urls = [urlparse(u) for u in args.urls]
    first = urls[0]
    if not first.hostname or not first.port:
        print(f"kquic-interop: URL needs a host and port: {args.urls[0]}", file=sys.stderr)
        return 2
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    sock = QuicSocket(family_of(first.hostname))
    sock.settimeout(args.timeout)
    if args.qlog:
        sock.qlog_dir = args.qlog
    if args.version == 2:
        config = uapi.QuicConfig(version=uapi.QUIC_VERSION_V2)
        sock.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_CONFIG, config.pack())
    if args.plpmtud:
        enable_plpmtud(sock)
    try:
        sock.connect((first.hostname, first.port))
        quic_client_handshake(
            sock,
            None,
            args.server_name or first.hostname,
            ALPN,
            ca_file=args.ca,
            insecure=args.insecure,
            cipher=CIPHERS.get(args.cipher, 0),
            timeout=args.timeout,
        )
        config = uapi.QuicConfig.unpack(sock.getsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_CONFIG))
        log.info("QUIC version 0x%08x", config.version)
        names: dict[int, str] = {}
        for url in urls:
            flags = uapi.MSG_QUIC_STREAM_NEW | uapi.MSG_QUIC_STREAM_FIN
            info = sock.getsockopt(
                uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_STREAM_OPEN, uapi.QuicStreamInfo(-1, 0).pack()
            )
            sid = uapi.QuicStreamInfo.unpack(info).stream_id
            quic_sendmsg(
                sock, f"GET {url.path}\r\n".encode(), sid, flags & ~uapi.MSG_QUIC_STREAM_NEW
            )
            names[sid] = Path(url.path).name
        bodies: dict[int, bytearray] = {sid: bytearray() for sid in names}
        update_due = args.key_update
        if update_due:
            event = uapi.QuicEventOption(uapi.QUIC_EVENT_KEY_UPDATE, 1).pack()
            sock.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_EVENT, event)
        while names:
            data, sid, flags = quic_recvmsg(sock, CHUNK)
            if flags & uapi.MSG_QUIC_NOTIFICATION:
                if data[:1] == bytes((uapi.QUIC_EVENT_KEY_UPDATE,)):
                    print(f"key update: both sides on key phase {data[1]}", flush=True)
                continue
            if sid not in bodies:
                continue
            bodies[sid] += data
            if update_due:
                update_due = not start_key_update(sock)
            if flags & uapi.MSG_QUIC_STREAM_FIN:
                (out / names.pop(sid)).write_bytes(bodies.pop(sid))
        log_datagram_size(sock)
    except (OSError, HandshakeError) as exc:
        print(f"kquic-interop: {exc}", file=sys.stderr)
        return 1
    finally:
        sock.close()
    return 0


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kquic-interop", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="role", required=True)
    server = sub.add_parser("server", help="serve files over hq-interop")
    server.add_argument("--listen", type=split_hostport, default=("0.0.0.0", 443))
    server.add_argument("--root", required=True)
    server.add_argument("--cert", required=True)
    server.add_argument("--key", required=True)
    server.add_argument("--retry", action="store_true")
    server.add_argument("--timeout", type=float, default=30.0)
    client = sub.add_parser("client", help="fetch URLs over hq-interop")
    client.add_argument("urls", nargs="+")
    client.add_argument("--output", required=True)
    trust = client.add_mutually_exclusive_group()
    trust.add_argument("--insecure", action="store_true")
    trust.add_argument("--ca")
    client.add_argument("--server-name")
    client.add_argument("--version", type=int, choices=(1, 2), default=1)
    client.add_argument("--cipher", choices=sorted(CIPHERS))
    for flag in ("--resume", "--zero-rtt", "--key-update", "--migrate"):
        client.add_argument(flag, action="store_true")
    client.add_argument("--timeout", type=float, default=30.0)
    for sub_parser in (server, client):
        sub_parser.add_argument("--qlog", metavar="DIR", help="write one qlog file per connection")
        add_plpmtud_flag(sub_parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    wanted = [name for name in NOT_YET if getattr(args, name, False)]
    if wanted:
        print(f"kquic-interop: --{wanted[0].replace('_', '-')}: not supported yet", file=sys.stderr)
        return EXIT_UNSUPPORTED
    for path in ("cert", "key", "ca"):
        value = getattr(args, path, None)
        if value and not Path(value).is_file():
            print(f"kquic-interop: --{path}: no such file: {value}", file=sys.stderr)
            return 2
    try:
        return run_server(args) if args.role == "server" else run_client(args)
    except OSError as exc:
        print(f"kquic-interop: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
