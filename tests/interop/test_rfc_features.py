"""The RFC features beyond the core, each against aioquic where aioquic has it: key
update (RFC 9001 §6) and datagrams (RFC 9221)."""

from __future__ import annotations

import errno
import json
import threading
import time

import pytest

from handshake.libquic import quic_client_handshake, quic_server_handshake
from quic import uapi
from quic.socket import QuicSocket
from tests.interop.conftest import (
    LossyRelay,
    aioquic_client,
    aioquic_server,
    check_files,
    kquic_client,
    kquic_server,
    python,
    run,
)

LARGE = ["large.bin"]  # 10 MB


def test_key_update_by_the_kquic_client_mid_transfer(pki, www, tmp_path, start_server) -> None:
    server = start_server(aioquic_server(pki, www))
    result = run(kquic_client(server.port, LARGE, tmp_path, pki, "--key-update"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "key update: both sides on key phase 1" in result.stdout
    check_files(www, tmp_path, LARGE)


def test_key_update_by_the_aioquic_client_mid_transfer(pki, www, tmp_path, start_server) -> None:
    server = start_server(kquic_server(pki, www))
    result = run(aioquic_client(server.port, LARGE, tmp_path, pki, "--key-update"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "key phase 1" in result.stdout
    check_files(www, tmp_path, LARGE)


DATAGRAM_ALPN = "dgram"
DATAGRAMS = 20


def datagram_socket() -> QuicSocket:
    sock = QuicSocket()
    sock.settimeout(10)
    params = uapi.QuicTransportParam(max_datagram_frame_size=65535).pack()
    sock.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_TRANSPORT_PARAM, params)
    return sock


def send_datagram(sock: QuicSocket, data: bytes) -> None:
    sock.sendmsg([data], [], uapi.MSG_QUIC_DATAGRAM)


def recv_datagram(sock: QuicSocket) -> bytes:
    data, _, flags, _ = sock.recvmsg(65536)
    assert flags & uapi.MSG_QUIC_DATAGRAM
    return data


def test_datagrams_kquic_client_with_aioquic_echo(pki, start_server) -> None:
    server = start_server(
        python(
            "-m",
            "tests.interop.aioquic_peer",
            "datagram-server",
            "--cert",
            str(pki.server_cert),
            "--key",
            str(pki.server_key),
        )
    )
    sock = datagram_socket()
    sock.connect(("127.0.0.1", server.port))
    quic_client_handshake(sock, None, "server.test", DATAGRAM_ALPN, ca_file=str(pki.ca), timeout=10)
    wanted = {b"datagram %d" % i for i in range(DATAGRAMS)}
    echoed: set[bytes] = set()
    sock.settimeout(0.5)
    for _ in range(20):  # rounds: send what is missing, collect echoes
        for data in sorted(wanted - echoed):
            send_datagram(sock, data)
        try:
            while not wanted <= echoed:
                echoed.add(recv_datagram(sock))
        except TimeoutError:
            pass
        if wanted <= echoed:
            break
    assert echoed == wanted
    with pytest.raises(OSError) as exc:
        send_datagram(sock, bytes(2000))  # larger than a packet: refused, not queued
    assert exc.value.errno == errno.EMSGSIZE
    sock.close()


def test_datagrams_aioquic_client_with_kquic_echo(pki) -> None:
    listener = datagram_socket()
    listener.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_ALPN, DATAGRAM_ALPN.encode())
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    echoed = []

    def echo() -> None:
        child, _ = listener.accept()
        child.settimeout(10)
        quic_server_handshake(child, str(pki.server_key), str(pki.server_cert), DATAGRAM_ALPN)
        deadline = time.monotonic() + 30
        try:
            while time.monotonic() < deadline:
                data = recv_datagram(child)
                send_datagram(child, data)
                echoed.append(data)
        except OSError:
            pass  # the client closed the connection
        finally:
            child.close()

    server = threading.Thread(target=echo, daemon=True)
    server.start()
    port = listener.getsockname()[1]
    result = run(
        python(
            "-m",
            "tests.interop.aioquic_peer",
            "datagram-client",
            "--port",
            str(port),
            "--count",
            str(DATAGRAMS),
            "--ca",
            str(pki.ca),
        )
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout) == {"echoed": DATAGRAMS}
    server.join(15)
    assert len(set(echoed)) == DATAGRAMS
    listener.close()


V1, V2 = "0x00000001", "0x6b3343cf"


@pytest.mark.parametrize(
    ("extra", "version"),
    [((), V2), (("--version", "2"), V2)],
    ids=["compatible-upgrade", "direct-v2"],
)
def test_kquic_client_versions_with_aioquic(pki, www, tmp_path, start_server, extra, version):
    """A kquic client starting in v1 offers v2 first and aioquic upgrades (RFC 9368);
    one starting in v2 stays there (RFC 9369)."""
    server = start_server(aioquic_server(pki, www))
    argv = kquic_client(server.port, ["medium.bin"], tmp_path, pki, "-v", *extra)
    argv.insert(argv.index("client"), argv.pop(argv.index("-v")))  # -v before the role
    result = run(argv)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"QUIC version {version}" in result.stderr
    check_files(www, tmp_path, ["medium.bin"])


@pytest.mark.parametrize(("extra", "version"), [((), V1), (("--prefer-v2",), V2)])
def test_aioquic_client_versions_with_kquic(pki, www, tmp_path, start_server, extra, version):
    """The kquic server follows the client's order of preference: aioquic lists v1
    first by default, and v2 first when asked."""
    server = start_server(kquic_server(pki, www))
    result = run(aioquic_client(server.port, ["medium.bin"], tmp_path, pki, *extra))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"version {version}" in result.stdout
    check_files(www, tmp_path, ["medium.bin"])


def test_retry_kquic_server_with_aioquic_client(pki, www, tmp_path, start_server) -> None:
    server = start_server([*kquic_server(pki, www), "--retry"])
    result = run(aioquic_client(server.port, ["medium.bin"], tmp_path, pki))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "retries 1" in result.stdout
    check_files(www, tmp_path, ["medium.bin"])


@pytest.mark.parametrize("extra", [(), ("--version", "2")], ids=["v1", "v2"])
def test_retry_aioquic_server_with_kquic_client(pki, www, tmp_path, start_server, extra) -> None:
    """The Retry integrity tag differs between versions (RFC 9001 §5.8, RFC 9369 §3.3.3)."""
    server = start_server([*aioquic_server(pki, www), "--retry"])
    argv = kquic_client(server.port, ["medium.bin"], tmp_path, pki, *extra)
    argv.insert(argv.index("client"), "-v")
    result = run(argv)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Retry accepted" in result.stderr
    check_files(www, tmp_path, ["medium.bin"])


def fetch(sock: QuicSocket, path: str) -> bytes:
    info = sock.getsockopt(
        uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_STREAM_OPEN, uapi.QuicStreamInfo(-1, 0).pack()
    )
    sid = uapi.QuicStreamInfo.unpack(info).stream_id
    record = uapi.QuicStreamInfo(sid, uapi.MSG_QUIC_STREAM_FIN).pack()
    sock.sendmsg([f"GET /{path}\r\n".encode()], [(uapi.SOL_QUIC, uapi.QUIC_STREAM_INFO, record)])
    body = bytearray()
    for _ in range(10_000):
        data, _, flags, _ = sock.recvmsg(65536)
        body += data
        if flags & uapi.MSG_QUIC_STREAM_FIN:
            return bytes(body)
    raise AssertionError("no FIN")


def test_stateless_reset_after_a_server_restart(pki, www, tmp_path, start_server) -> None:
    """RFC 9000 §10.3: the restarted server knows the connection no more, but derives
    the same reset token from the key file, and the client stops at once."""
    key_file = str(tmp_path / "reset.key")
    server = start_server(kquic_server(pki, www), KQUIC_RESET_KEY_FILE=key_file)
    port = server.port
    sock = QuicSocket()
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    quic_client_handshake(sock, None, "server.test", "hq-interop", ca_file=str(pki.ca), timeout=10)
    assert fetch(sock, "small.txt") == (www / "small.txt").read_bytes()
    server.stop()  # killed: no CONNECTION_CLOSE
    argv = kquic_server(pki, www)
    argv[argv.index("127.0.0.1:0")] = f"127.0.0.1:{port}"
    start_server(argv, KQUIC_RESET_KEY_FILE=key_file)
    with pytest.raises(ConnectionResetError, match="stateless reset"):
        fetch(sock, "small.txt")
    sock.close()


TWO = ["small.txt", "medium.bin"]


@pytest.mark.parametrize("mode", ["--resume", "--zero-rtt"])
def test_resumption_kquic_client_with_aioquic(pki, www, tmp_path, start_server, mode) -> None:
    server = start_server(aioquic_server(pki, www))
    result = run(kquic_client(server.port, TWO, tmp_path, pki, mode))
    assert result.returncode == 0, result.stderr[-3000:]
    # Resuming, a client always offers early data; only --zero-rtt sends any in it.
    assert "resumed: True, 0-RTT accepted: True" in result.stdout
    check_files(www, tmp_path, TWO)


@pytest.mark.parametrize("mode", ["--resume", "--zero-rtt"])
def test_resumption_aioquic_client_with_kquic(pki, www, tmp_path, start_server, mode) -> None:
    server = start_server(kquic_server(pki, www))
    result = run(aioquic_client(server.port, TWO, tmp_path, pki, mode))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed True early_data True" in result.stdout
    check_files(www, tmp_path, TWO)


@pytest.mark.parametrize("server_impl", ["kquic", "aioquic"])
def test_nat_rebinding_mid_transfer(pki, www, tmp_path, start_server, server_impl) -> None:
    """RFC 9000 §9.3: the client's port changes under a NAT mid-download; the server
    follows it after validating the new address, and the 10 MB file arrives intact."""
    if server_impl == "kquic":
        server = start_server(kquic_server(pki, www))
    else:
        server = start_server(aioquic_server(pki, www))
    relay = LossyRelay(("127.0.0.1", server.port), loss=0, reorder=0, rebind_after=200)
    try:
        if server_impl == "kquic":
            argv = aioquic_client(relay.port, LARGE, tmp_path, pki)
        else:
            argv = kquic_client(relay.port, LARGE, tmp_path, pki)
        result = run(argv)
    finally:
        relay.close()
    assert result.returncode == 0, result.stderr[-3000:]
    assert relay.old_ports  # the rebinding happened
    check_files(www, tmp_path, LARGE)


@pytest.mark.parametrize("server_impl", ["aioquic", "kquic"])
def test_active_migration_kquic_client(pki, www, tmp_path, start_server, server_impl) -> None:
    """QUIC_SOCKOPT_CONNECTION_MIGRATION mid-download: the client probes from a new port,
    switches when the server answers the PATH_CHALLENGE, and the file arrives intact."""
    make = aioquic_server if server_impl == "aioquic" else kquic_server
    server = start_server(make(pki, www))
    result = run(kquic_client(server.port, LARGE, tmp_path, pki, "--migrate"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "migrating from" in result.stdout and "migrated: now on" in result.stdout
    check_files(www, tmp_path, LARGE)
