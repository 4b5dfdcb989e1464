"""PLPMTUD over UDP loopback: QUIC_SOCKOPT_CONFIG's plpmtud_probe_interval on both ends
lets datagrams grow past 1200 bytes toward loopback's 65536-byte MTU."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket

import pytest

from handshake.libquic import quic_client_handshake
from quic import uapi
from quic.packet import MIN_INITIAL_SIZE
from quic.socket import QuicSocket, quic_sendmsg
from quic.udp_mtu import route_max_udp_payload

from .test_socket import TIMEOUT, accept, listener, read_stream, read_streams

PROBE_INTERVAL = 5_000_000  # µs, lxin's smallest


def enable_plpmtud(sock: QuicSocket, interval: int = PROBE_INTERVAL) -> None:
    config = uapi.QuicConfig.unpack(sock.getsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_CONFIG))
    config.plpmtud_probe_interval = interval
    sock.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_CONFIG, config.pack())


def stream_datagram_sizes(qlog_dir) -> list[int]:
    """Sizes of the packets a qlog trace shows carrying STREAM frames."""
    sizes = []
    for path in qlog_dir.iterdir():
        for record in path.read_text().split("\x1e")[2:]:
            event = json.loads(record)
            if event["name"] != "transport:packet_sent":
                continue
            if any(f["frame_type"] == "stream" for f in event["data"]["frames"]):
                sizes.append(event["data"]["raw"]["length"])
    return sizes


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_transfer_uses_datagrams_beyond_1200_bytes(pki, server_thread, tmp_path, family) -> None:
    size = 8 << 20
    srv = listener(family=family)
    enable_plpmtud(srv)
    download = os.urandom(size)

    def serve():
        child = accept(srv, pki)
        child.settimeout(60)
        try:
            for sid, data in read_streams(child, 1):
                reply = hashlib.sha256(data).digest() + download
                quic_sendmsg(child, reply, sid, uapi.MSG_QUIC_STREAM_FIN)
            return child.conn.max_datagram_size
        finally:
            child.close()

    server = server_thread(serve)
    cli = QuicSocket(family)
    cli.settimeout(60)
    cli.qlog_dir = str(tmp_path)
    enable_plpmtud(cli)
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    cli.connect((host, srv.getsockname()[1]))
    quic_client_handshake(cli, None, "server.test", "smb", ca_file=str(pki.ca), timeout=TIMEOUT)
    payload = os.urandom(size)
    quic_sendmsg(cli, payload, -1, uapi.MSG_QUIC_STREAM_NEW | uapi.MSG_QUIC_STREAM_FIN)
    _, reply = read_stream(cli)
    assert reply[:32] == hashlib.sha256(payload).digest()
    assert hashlib.sha256(reply[32:]).digest() == hashlib.sha256(download).digest()
    bound = route_max_udp_payload(cli.conn.peer_addr)
    assert MIN_INITIAL_SIZE < cli.conn.max_datagram_size <= bound
    assert MIN_INITIAL_SIZE < server.join() <= bound
    cli.close()
    srv.close()
    assert max(stream_datagram_sizes(tmp_path)) > MIN_INITIAL_SIZE


def test_plpmtud_is_off_by_default_and_the_interval_is_checked(pki, server_thread) -> None:
    srv = listener()
    server = server_thread(lambda: accept(srv, pki).conn.plpmtud)
    cli = QuicSocket()
    cli.settimeout(TIMEOUT)
    config = uapi.QuicConfig.unpack(cli.getsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_CONFIG))
    assert config.plpmtud_probe_interval == 0
    with pytest.raises(OSError) as exc:
        enable_plpmtud(cli, PROBE_INTERVAL - 1)
    assert exc.value.errno == errno.EINVAL
    cli.connect(("127.0.0.1", srv.getsockname()[1]))
    quic_client_handshake(cli, None, "server.test", "smb", ca_file=str(pki.ca), timeout=TIMEOUT)
    assert cli.conn.plpmtud is None and cli.conn.max_datagram_size == MIN_INITIAL_SIZE
    assert server.join() is None
    cli.close()
    srv.close()
