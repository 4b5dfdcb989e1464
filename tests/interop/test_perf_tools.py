"""kquic-perf and the aioquic perf peer in smoke mode: small transfers, both directions,
several streams. The figures are printed by bench/throughput.py, never asserted here."""

from __future__ import annotations

import json

import pytest

from tests.interop.conftest import python, run


@pytest.mark.parametrize(("direction", "streams"), [("send", 1), ("recv", 1), ("recv", 4)])
def test_kquic_perf_moves_the_bytes(pki, start_server, direction, streams) -> None:
    server = start_server(
        python(
            "-m",
            "kquic_tools.perf",
            "server",
            "--listen",
            "127.0.0.1:0",
            "--cert",
            str(pki.server_cert),
            "--key",
            str(pki.server_key),
        )
    )
    result = run(
        python(
            "-m",
            "kquic_tools.perf",
            "client",
            f"127.0.0.1:{server.port}",
            f"--{direction}",
            "2M",
            "--streams",
            str(streams),
            "--ca",
            str(pki.ca),
            "--server-name",
            "server.test",
        )
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["bytes"] == 2 << 20
    assert {"seconds", "MBps", "handshake_ms", "cpu_seconds"} <= set(report)


def test_aioquic_perf_peer_talks_to_kquic_perf_server(pki, start_server) -> None:
    server = start_server(
        python(
            "-m",
            "kquic_tools.perf",
            "server",
            "--listen",
            "127.0.0.1:0",
            "--cert",
            str(pki.server_cert),
            "--key",
            str(pki.server_key),
        )
    )
    result = run(
        python(
            "-m",
            "tests.interop.aioquic_peer",
            "perf-client",
            "--port",
            str(server.port),
            "--recv",
            str(1 << 20),
        )
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["bytes"] == 1 << 20
