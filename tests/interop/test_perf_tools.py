"""kquic-perf and the aioquic perf peer in smoke mode: small transfers, both directions,
several streams. The figures are printed by bench/suite.py, never asserted here."""

from __future__ import annotations

import json
import threading
import time

import pytest

from handshake.libquic import quic_server_handshake
from kquic_tools import perf
from kquic_tools.perf import size
from quic import uapi
from quic.socket import QuicSocket, quic_recvmsg, quic_sendmsg
from tests.interop.conftest import (
    SilentServer,
    assert_credentials_refused,
    interrupt_after_handshake,
    perf_commands,
    python,
    run,
)


def report(result) -> dict:
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("direction", "streams", "nbytes"),
    [("send", 1, 2 << 20), ("recv", 1, 2 << 20), ("recv", 4, 2 << 20), ("send", 150, 150_000)],
)
def test_kquic_perf_moves_the_bytes(pki, start_server, direction, streams, nbytes) -> None:
    """150 streams: more than the server lets the client open at once (100)."""
    server_argv, client_argv = perf_commands("kquic", pki, direction, nbytes)
    server = start_server(server_argv)
    figures = report(run([*client_argv(server.port), "--streams", str(streams)]))
    assert figures["bytes"] == nbytes
    assert {"seconds", "MBps", "handshake_ms", "cpu_seconds"} <= set(figures)


@pytest.mark.parametrize("direction", ["send", "recv"])
def test_kquic_perf_zero_bytes_is_a_handshake_and_an_empty_stream(
    pki, start_server, direction
) -> None:
    server_argv, client_argv = perf_commands("kquic", pki, direction, 0)
    server = start_server(server_argv)
    assert report(run(client_argv(server.port)))["bytes"] == 0


def test_kquic_perf_sizes() -> None:
    assert [size(v) for v in ("0", "1.5k", "2M", "1e3", str((1 << 62) - 1))] == [
        0,
        1536,
        2 << 20,
        1000,
        (1 << 62) - 1,
    ]


def test_aioquic_perf_client_against_kquic_perf_server(pki, start_server) -> None:
    server_argv, _ = perf_commands("kquic", pki, "recv", 1 << 20)
    server = start_server(server_argv)
    _, client_argv = perf_commands("aioquic", pki, "recv", 1 << 20)
    assert report(run(client_argv(server.port)))["bytes"] == 1 << 20


@pytest.mark.parametrize(
    "argv",
    [
        ["server", "--cert", "/nonexistent.pem", "--key", "/nonexistent.key"],
        ["server", "--cert", "/nonexistent.pem", "--key", "/nonexistent.key", "--workers", "0"],
        ["client", "127.0.0.1:4433", "--recv", "1k", "--ca", "/nonexistent.pem"],
        ["client", "127.0.0.1:4433", "--recv", "lots"],
        ["client", "127.0.0.1:4433", "--send", "-5"],
        ["client", "127.0.0.1:4433", "--send", "0.5"],
        ["client", "127.0.0.1:4433", "--recv", "1e20"],
        ["client", "127.0.0.1:4433", "--send", "inf"],
        ["client", "127.0.0.1:4433", "--send", "nan"],
        ["client", "127.0.0.1:4433", "--send", "4294967296g"],
    ],
)
def test_kquic_perf_user_mistakes_get_a_message_not_a_traceback(argv) -> None:
    result = run(python("-m", "kquic_tools.perf", *argv))
    assert result.returncode == 2 and "error:" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["server", "--listen", "127.0.0.1:70000", "--cert", "c.pem", "--key", "k.pem"],
        ["client", "127.0.0.1:70000", "--recv", "1k"],
        ["client", "127.0.0.1:0", "--recv", "1k"],
    ],
)
def test_kquic_perf_port_out_of_range_is_a_usage_error(argv) -> None:
    result = run(python("-m", "kquic_tools.perf", *argv))
    assert result.returncode == 2 and "to 65535" in result.stderr
    assert "Traceback" not in result.stderr


class ShortTimeoutSocket(QuicSocket):
    """Any socket timeout the client sets, cut to 0.3 s: a transfer of a second then
    outlasts it as a long upload outlasts a timeout of a minute."""

    def settimeout(self, timeout: float | None) -> None:
        super().settimeout(None if timeout is None else min(timeout, 0.3))


def answer_slowly(listener: QuicSocket, pki) -> None:
    """A perf server that takes a second over its answer to a client's upload."""
    conn, _ = listener.accept()
    conn.settimeout(10)
    try:
        quic_server_handshake(conn, str(pki.server_key), str(pki.server_cert), "perf")
        for _ in range(10_000):
            _, sid, flags = quic_recvmsg(conn, 1 << 16)
            if flags & uapi.MSG_QUIC_STREAM_FIN:
                break
        time.sleep(1.0)
        quic_sendmsg(conn, b"", sid, uapi.MSG_QUIC_STREAM_FIN)
        for _ in range(10_000):
            quic_recvmsg(conn, 1 << 16)  # until the client closes
    except OSError:
        pass
    finally:
        conn.close()


def test_kquic_perf_transfer_outlasting_a_socket_timeout_succeeds(pki, monkeypatch, capsys) -> None:
    listener = QuicSocket()
    listener.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_ALPN, b"perf")
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    server = threading.Thread(target=answer_slowly, args=(listener, pki), daemon=True)
    server.start()
    monkeypatch.setattr(perf, "QuicSocket", ShortTimeoutSocket)
    port = listener.getsockname()[1]
    trust = ["--ca", str(pki.ca), "--server-name", "server.test"]
    try:
        assert perf.main(["client", f"127.0.0.1:{port}", "--send", "100k", *trust]) == 0
    finally:
        listener.close()
        server.join(10)
    assert json.loads(capsys.readouterr().out)["bytes"] == 100 << 10


def test_kquic_perf_client_ctrl_c_exits_quietly_at_once(pki) -> None:
    """Mid-upload, with data the server has not acknowledged: close() would linger
    up to 10 s for it, which a user who pressed Ctrl-C does not want."""
    server = SilentServer(pki, "perf")
    argv = python(
        "-m", "kquic_tools.perf", "client", f"127.0.0.1:{server.port}", "--send", "1g", "--insecure"
    )
    returncode, stderr = interrupt_after_handshake(argv, server)
    assert returncode == 130, stderr
    assert "Traceback" not in stderr


def test_kquic_perf_refuses_credentials_gnutls_cannot_use(pki, tmp_path) -> None:
    assert_credentials_refused(
        "kquic_tools.perf",
        ["client", "127.0.0.1:4433", "--recv", "1k"],
        ["server", "--listen", "127.0.0.1:0"],
        pki,
        tmp_path,
    )
