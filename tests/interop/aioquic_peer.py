"""An independent QUIC peer for interop tests: aioquic speaking hq-interop (HTTP/0.9).
(tests.interop.qh3_peer runs the same commands on qh3.)

Runs in its own process so that it shares nothing with kquic but the network:

    python -m tests.interop.aioquic_peer server --port P --root DIR --cert C --key K
                                         [--max-udp-payload-size N]
    python -m tests.interop.aioquic_peer client https://127.0.0.1:P/file ... --output DIR
    python -m tests.interop.aioquic_peer perf-server --port P --cert C --key K
    python -m tests.interop.aioquic_peer perf-client --port P (--send N | --recv N) [--streams S]
    python -m tests.interop.aioquic_peer handshake-client --port P --count N
    python -m tests.interop.aioquic_peer datagram-server --port P --cert C --key K
    python -m tests.interop.aioquic_peer datagram-client --port P --count N

The server prints ``ready <port>`` once listening. The client exits 0 only if every
file arrived. The perf pair moves N bytes over S streams and prints a JSON line, as
kquic-perf does; the handshake client makes N handshakes in a row against a perf server
and prints a JSON line of their latencies. Every command takes --max-datagram-size
(1200 by default). The datagram server echoes each DATAGRAM frame (RFC 9221); the
datagram client sends N, resending those not yet echoed, and prints how many came back.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib
import json
import os
import ssl
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

# The library this peer runs on: aioquic, or qh3 (a fork of aioquic with the same API),
# which tests.interop.qh3_peer selects before importing this module.
LIBRARY = os.environ.get("QUIC_PEER_LIBRARY", "aioquic")
if LIBRARY not in ("aioquic", "qh3"):
    raise SystemExit(f"QUIC_PEER_LIBRARY: aioquic or qh3, not {LIBRARY!r}")


def _library(module: str):
    return importlib.import_module(f"{LIBRARY}.{module}")


tls = _library("tls")
QuicConnectionProtocol = _library("asyncio").QuicConnectionProtocol
connect = _library("asyncio").connect
serve = _library("asyncio").serve
library_connection = _library("quic.connection")
QuicConfiguration = _library("quic.configuration").QuicConfiguration
DatagramFrameReceived = _library("quic.events").DatagramFrameReceived
StreamDataReceived = _library("quic.events").StreamDataReceived
QuicProtocolVersion = _library("quic.packet").QuicProtocolVersion

ALPN = "hq-interop"
PERF_ALPN = "perf"
DATAGRAM_ALPN = "dgram"
CHUNK = 65536


class HqServer(QuicConnectionProtocol):
    """Answers ``GET /path`` on each bidirectional stream with the file and FIN."""

    root: Path

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._requests: dict[int, bytes] = {}

    def quic_event_received(self, event) -> None:
        if not isinstance(event, StreamDataReceived):
            return
        buf = self._requests.get(event.stream_id, b"") + event.data
        self._requests[event.stream_id] = buf
        if not event.end_stream:
            return
        line = buf.decode("ascii", "replace").strip()
        path = line[4:] if line.startswith("GET ") else ""
        target = (self.root / path.lstrip("/")).resolve()
        if self.root.resolve() in target.parents and target.is_file():
            body = target.read_bytes()
        else:
            body = b""
        self._quic.send_stream_data(event.stream_id, body, end_stream=True)
        self.transmit()


class PerfServer(QuicConnectionProtocol):
    """Perf protocol: the client sends 8 bytes (big-endian size to send back, 0 for an
    upload), then optionally its upload, then FIN; the server answers and FINs."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._head: dict[int, bytes] = {}

    def quic_event_received(self, event) -> None:
        if not isinstance(event, StreamDataReceived):
            return
        head = self._head.get(event.stream_id, b"")
        if len(head) < 8:
            head += event.data[: 8 - len(head)]
            self._head[event.stream_id] = head
        if event.end_stream:
            size = int.from_bytes(head[:8], "big")
            sent = 0
            while sent < size:
                n = min(CHUNK, size - sent)
                self._quic.send_stream_data(event.stream_id, bytes(n), end_stream=sent + n == size)
                sent += n
            if size == 0:
                self._quic.send_stream_data(event.stream_id, b"", end_stream=True)
            self.transmit()


class DatagramEcho(QuicConnectionProtocol):
    def quic_event_received(self, event) -> None:
        if isinstance(event, DatagramFrameReceived):
            self._quic.send_datagram_frame(event.data)
            self.transmit()


class DatagramClient(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.echoed: set[bytes] = set()
        self.changed = asyncio.Event()

    def quic_event_received(self, event) -> None:
        if isinstance(event, DatagramFrameReceived):
            self.echoed.add(event.data)
            self.changed.set()


async def datagram_client(args: argparse.Namespace) -> int:
    config = client_config(args, DATAGRAM_ALPN)
    config.max_datagram_frame_size = 65536
    wanted = {b"datagram %d" % i for i in range(args.count)}
    async with connect(
        args.host, args.port, configuration=config, create_protocol=DatagramClient
    ) as proto:
        for _ in range(20):  # rounds: send what is missing, wait a little for echoes
            for data in sorted(wanted - proto.echoed):
                proto._quic.send_datagram_frame(data)
            proto.transmit()
            proto.changed.clear()
            try:
                await asyncio.wait_for(proto.changed.wait(), 0.5)
            except TimeoutError:
                pass
            if wanted <= proto.echoed:
                break
    print(json.dumps({"echoed": len(wanted & proto.echoed)}), flush=True)
    return 0 if wanted <= proto.echoed else 1


def advertise_max_udp_payload_size(size: int) -> None:
    """aioquic has no setting for this transport parameter and sends none (65527 by
    default): fill it in where aioquic builds its own parameters."""
    library_connection.QuicTransportParameters = functools.partial(
        library_connection.QuicTransportParameters, max_udp_payload_size=size
    )


async def run_server(args: argparse.Namespace, alpn: str, protocol) -> None:
    if args.max_udp_payload_size:
        advertise_max_udp_payload_size(args.max_udp_payload_size)
    config = QuicConfiguration(
        is_client=False,
        alpn_protocols=[alpn],
        max_datagram_frame_size=65536,
        max_datagram_size=args.max_datagram_size,
    )
    config.load_cert_chain(args.cert, args.key)
    if protocol is HqServer:
        HqServer.root = Path(args.root)
    tickets: dict[bytes, object] = {}  # resumption and 0-RTT need the server to keep them
    server = await serve(
        args.host,
        args.port,
        configuration=config,
        create_protocol=protocol,
        retry=args.retry,
        session_ticket_fetcher=tickets.pop,
        session_ticket_handler=lambda ticket: tickets.__setitem__(ticket.ticket, ticket),
    )
    port = server._transport.get_extra_info("sockname")[1]
    print(f"ready {port}", flush=True)
    await asyncio.Event().wait()


def client_config(args: argparse.Namespace, alpn: str) -> QuicConfiguration:
    config = QuicConfiguration(
        is_client=True, alpn_protocols=[alpn], max_datagram_size=args.max_datagram_size
    )
    if LIBRARY == "qh3":  # its client discovers the path MTU by default, from 1280
        config.probe_datagram_size = args.max_datagram_size > 1200
    if getattr(args, "prefer_v2", False):
        # Start in v1 and offer v2 first: compatible version negotiation (RFC 9368).
        config.original_version = QuicProtocolVersion.VERSION_1
        config.supported_versions = [QuicProtocolVersion.VERSION_2, QuicProtocolVersion.VERSION_1]
    if args.ca:
        config.load_verify_locations(args.ca)
        config.server_name = args.server_name
    else:
        config.verify_mode = ssl.CERT_NONE
    return config


class HqClient(QuicConnectionProtocol):
    """Remembers which streams ended with FIN: aioquic's stream reader also reports end of
    file when the connection dies, and a truncated file must not count as received."""

    key_update = False  # --key-update: update keys once the first data has arrived

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.finished: set[int] = set()

    def quic_event_received(self, event) -> None:
        if isinstance(event, StreamDataReceived):
            if event.end_stream:
                self.finished.add(event.stream_id)
            if self.key_update and event.data:
                self._quic.request_key_update()
                self.key_update = False
        super().quic_event_received(event)

    def key_phase(self) -> int:
        return self._quic._cryptos[tls.Epoch.ONE_RTT].key_phase


async def fetch(args: argparse.Namespace) -> int:
    """All URLs on one connection; with --resume/--zero-rtt the first on one and the
    rest on a second resuming it, requests sent before the handshake ends with --zero-rtt."""
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    urls = args.urls
    if (args.resume or args.zero_rtt) and len(urls) > 1:
        tickets: list = []
        ok = await fetch_batch(args, urls[:1], out, tickets, None)
        if not tickets:
            print("no session ticket to resume with", file=sys.stderr)
            return 1
        return 0 if ok and await fetch_batch(args, urls[1:], out, None, tickets[-1]) else 1
    return 0 if await fetch_batch(args, urls, out, None, None) else 1


async def fetch_batch(args, urls: list[str], out: Path, tickets: list | None, ticket) -> bool:
    first = urlparse(urls[0])
    config = client_config(args, ALPN)
    config.session_ticket = ticket
    async with connect(
        first.hostname,
        first.port,
        configuration=config,
        create_protocol=HqClient,
        session_ticket_handler=tickets.append if tickets is not None else None,
        wait_connected=not (ticket is not None and args.zero_rtt),
    ) as proto:

        async def one(url: str) -> bool:
            reader, writer = await proto.create_stream()
            writer.write(f"GET {urlparse(url).path}\r\n".encode())
            writer.write_eof()
            body = await reader.read()
            (out / Path(urlparse(url).path).name).write_bytes(body)
            if writer.get_extra_info("stream_id") not in proto.finished:
                print(f"{url}: connection ended before the stream's FIN", file=sys.stderr)
                return False
            return True

        HqClient.key_update = args.key_update
        results = await asyncio.wait_for(asyncio.gather(*(one(u) for u in urls)), args.timeout)
        if args.key_update:
            print(f"key phase {proto.key_phase()}", flush=True)
        print(f"version 0x{proto._quic._version:08x}", flush=True)
        print(f"retries {proto._quic._retry_count}", flush=True)
        if ticket is not None:
            tls = proto._quic.tls
            print(f"resumed {tls.session_resumed} early_data {tls.early_data_accepted}", flush=True)
        for _ in range(40):  # the ticket follows the handshake; give it a moment
            if tickets is None or tickets:
                break
            await asyncio.sleep(0.05)
    return all(results)


class PerfClient(QuicConnectionProtocol):
    """Notes the largest datagram sent or received (the size the bulk data moved in),
    and which streams ended with FIN (a reader also ends when the connection dies)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.finished: set[int] = set()
        self.largest_datagram = 0
        to_send = self._quic.datagrams_to_send

        def datagrams_to_send(now: float) -> list:
            datagrams = to_send(now=now)
            for data, _ in datagrams:
                self.largest_datagram = max(self.largest_datagram, len(data))
            return datagrams

        self._quic.datagrams_to_send = datagrams_to_send

    def datagram_received(self, data, addr) -> None:
        self.largest_datagram = max(self.largest_datagram, len(data))
        super().datagram_received(data, addr)

    def datagrams_received(self, data, addr) -> None:  # qh3's batched receive
        self.largest_datagram = max(self.largest_datagram, *map(len, data))
        super().datagrams_received(data, addr)

    def quic_event_received(self, event) -> None:
        if isinstance(event, StreamDataReceived) and event.end_stream:
            self.finished.add(event.stream_id)
        super().quic_event_received(event)


async def perf_stream(proto: PerfClient, upload: int, download: int) -> int:
    """One perf stream: ask for ``download`` bytes, send ``upload``, read to the FIN."""
    reader, writer = await proto.create_stream()
    writer.write(download.to_bytes(8, "big"))
    sent = 0
    block = bytes(CHUNK)
    while sent < upload:
        n = min(CHUNK, upload - sent)
        writer.write(block[:n])
        sent += n
        if sent % (CHUNK * 16) == 0:
            await asyncio.sleep(0)  # let the loop send: neither library's drain() waits
    writer.write_eof()
    received = 0
    while data := await reader.read(CHUNK):
        received += len(data)
    if writer.get_extra_info("stream_id") not in proto.finished:
        raise ConnectionError("the connection ended before the stream's FIN")
    return sent + received


async def perf_client(args: argparse.Namespace) -> int:
    """SEND or RECV bytes split over ``--streams`` concurrent streams; one JSON line with
    the figures kquic-perf prints (CPU seconds of this process from connect to close)."""
    config = client_config(args, PERF_ALPN)
    per_up, per_down = args.send // args.streams, args.recv // args.streams
    cpu0, start = time.process_time(), time.monotonic()
    async with connect(
        args.host, args.port, configuration=config, create_protocol=PerfClient
    ) as proto:
        hs = time.monotonic() - start
        t0 = time.monotonic()
        moved = sum(
            await asyncio.gather(
                *(perf_stream(proto, per_up, per_down) for _ in range(args.streams))
            )
        )
        seconds = time.monotonic() - t0
    print(
        json.dumps(
            {
                "impl": LIBRARY,
                "bytes": moved,
                "seconds": round(seconds, 4),
                "MBps": round(moved / seconds / 1e6, 2),
                "handshake_ms": round(hs * 1000, 2),
                "cpu_seconds": round(time.process_time() - cpu0, 3),
                "streams": args.streams,
                "max_datagram_size": proto.largest_datagram,
            }
        ),
        flush=True,
    )
    return 0


async def handshake_client(args: argparse.Namespace) -> int:
    """COUNT full handshakes one after another, each a new connection on a new UDP
    socket, timed from opening it to the handshake's completion. Each connection is
    closed (CONNECTION_CLOSE) as soon as its handshake completes and goes through its
    closing period in the background, as a closed kquic socket does: the figure is
    handshakes, not closing timers. One untimed connection first pays the one-time
    costs (lazy imports, loading the CA). One JSON line: latencies, total seconds, CPU."""
    config = client_config(args, PERF_ALPN)
    async with connect(args.host, args.port, configuration=config):
        pass
    latencies, closing = [], []
    cpu0, t0 = time.process_time(), time.perf_counter()
    for _ in range(args.count):
        start = time.perf_counter()
        stack = contextlib.AsyncExitStack()
        await stack.enter_async_context(connect(args.host, args.port, configuration=config))
        latencies.append(time.perf_counter() - start)
        closing.append(asyncio.create_task(stack.aclose()))
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    await asyncio.gather(*closing)
    print(
        json.dumps(
            {
                "impl": LIBRARY,
                "handshakes": len(latencies),
                "seconds": round(seconds, 4),
                "latency_ms": [round(x * 1000, 3) for x in latencies],
                "cpu_seconds": round(cpu, 3),
            }
        ),
        flush=True,
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="aioquic_peer")
    sub = parser.add_subparsers(dest="cmd", required=True)
    servers = []
    for name in ("server", "perf-server", "datagram-server"):
        p = sub.add_parser(name)
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=0)
        p.add_argument("--root", default=".")
        p.add_argument("--cert", required=True)
        p.add_argument("--key", required=True)
        p.add_argument("--retry", action="store_true")
        p.add_argument("--max-udp-payload-size", type=int, default=0)
        servers.append(p)
    c = sub.add_parser("client")
    c.add_argument("urls", nargs="+")
    c.add_argument("--output", required=True)
    c.add_argument("--key-update", action="store_true")
    c.add_argument("--prefer-v2", action="store_true")
    c.add_argument("--resume", action="store_true")
    c.add_argument("--zero-rtt", action="store_true")
    pc = sub.add_parser("perf-client")
    pc.add_argument("--host", default="127.0.0.1")
    pc.add_argument("--port", type=int, required=True)
    pc.add_argument("--send", type=int, default=0)
    pc.add_argument("--recv", type=int, default=0)
    pc.add_argument("--streams", type=int, default=1)
    hc = sub.add_parser("handshake-client")
    hc.add_argument("--host", default="127.0.0.1")
    hc.add_argument("--port", type=int, required=True)
    hc.add_argument("--count", type=int, default=100)
    dc = sub.add_parser("datagram-client")
    dc.add_argument("--host", default="127.0.0.1")
    dc.add_argument("--port", type=int, required=True)
    dc.add_argument("--count", type=int, default=10)
    for p in (c, pc, dc, hc):
        p.add_argument("--ca")
        p.add_argument("--server-name", default="server.test")
        p.add_argument("--timeout", type=float, default=60)
    for p in (*servers, c, pc, dc, hc):
        p.add_argument(
            "--max-datagram-size",
            type=int,
            default=1200,
            help="largest datagram to send (qh3 discovers the path MTU up to it when > 1200)",
        )
    args = parser.parse_args()
    if getattr(args, "streams", 1) < 1:
        parser.error("--streams must be at least 1")
    try:
        if args.cmd == "server":
            asyncio.run(run_server(args, ALPN, HqServer))
        elif args.cmd == "perf-server":
            asyncio.run(run_server(args, PERF_ALPN, PerfServer))
        elif args.cmd == "datagram-server":
            asyncio.run(run_server(args, DATAGRAM_ALPN, DatagramEcho))
        elif args.cmd == "client":
            return asyncio.run(fetch(args))
        elif args.cmd == "datagram-client":
            return asyncio.run(datagram_client(args))
        elif args.cmd == "handshake-client":
            return asyncio.run(handshake_client(args))
        else:
            return asyncio.run(perf_client(args))
    except (TimeoutError, ConnectionError, OSError) as exc:
        print(f"aioquic_peer: {exc!r}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
