"""kquic against aioquic, an implementation nobody here wrote: hq-interop file transfers
in both roles, directly and through a lossy, reordering relay."""

from __future__ import annotations

import pytest

from tests.interop.conftest import (
    FILES,
    LossyRelay,
    aioquic_client,
    aioquic_server,
    check_files,
    kquic_client,
    kquic_server,
    python,
    run,
    urls,
)


def test_aioquic_client_against_kquic_server(pki, www, tmp_path, start_server) -> None:
    server = start_server(kquic_server(pki, www))
    result = run(aioquic_client(server.port, FILES, tmp_path, pki))
    assert result.returncode == 0, result.stderr[-3000:]
    check_files(www, tmp_path, FILES)


def test_kquic_client_against_aioquic_server(pki, www, tmp_path, start_server) -> None:
    server = start_server(aioquic_server(pki, www))
    result = run(kquic_client(server.port, FILES, tmp_path, pki))
    assert result.returncode == 0, result.stderr[-3000:]
    check_files(www, tmp_path, FILES)


@pytest.mark.parametrize("cipher", ["aes256gcm", "chacha20"])
def test_kquic_client_cipher_against_aioquic(pki, www, tmp_path, start_server, cipher) -> None:
    server = start_server(aioquic_server(pki, www))
    result = run(
        python(
            "-m",
            "kquic_tools.interop",
            "client",
            *urls(server.port, ["medium.bin"]),
            "--output",
            str(tmp_path),
            "--insecure",
            "--cipher",
            cipher,
        )
    )
    assert result.returncode == 0, result.stderr[-3000:]
    check_files(www, tmp_path, ["medium.bin"])


def test_lossy_relay_both_implementations(pki, www, tmp_path, start_server) -> None:
    names = ["small.txt", "medium.bin", "large.bin"]
    for role, server_argv in (
        ("kquic-server", kquic_server(pki, www)),
        ("aioquic-server", aioquic_server(pki, www)),
    ):
        server = start_server(server_argv)
        relay = LossyRelay(("127.0.0.1", server.port), loss=0.05, reorder=0.05, seed=3)
        out = tmp_path / role
        try:
            make_client = aioquic_client if role == "kquic-server" else kquic_client
            result = run(make_client(relay.port, names, out, pki))
        finally:
            relay.close()
        assert result.returncode == 0, (role, result.stderr[-3000:])
        assert relay.dropped > 0
        check_files(www, out, names)


def test_user_mistakes_get_a_message_not_a_traceback(tmp_path) -> None:
    result = run(
        python(
            "-m",
            "kquic_tools.interop",
            "server",
            "--root",
            str(tmp_path),
            "--cert",
            "/nonexistent.pem",
            "--key",
            "/nonexistent.key",
        )
    )
    assert result.returncode == 2 and "no such file" in result.stderr
    assert "Traceback" not in result.stderr


def test_qlog_files_are_valid_json_seq(pki, www, tmp_path, start_server) -> None:
    import json

    qlog = tmp_path / "qlog"
    server = start_server([*kquic_server(pki, www), "--qlog", str(qlog / "server")])
    result = run(
        python(
            "-m",
            "kquic_tools.interop",
            "client",
            *urls(server.port, ["medium.bin"]),
            "--output",
            str(tmp_path / "out"),
            "--ca",
            str(pki.ca),
            "--server-name",
            "server.test",
            "--qlog",
            str(qlog / "client"),
        )
    )
    assert result.returncode == 0, result.stderr[-3000:]
    client_files = list((qlog / "client").glob("*_client.sqlog"))
    assert len(client_files) == 1
    records = [json.loads(r) for r in client_files[0].read_text().split("\x1e") if r.strip()]
    assert records[0]["qlog_format"] == "JSON-SEQ"
    names = {r["name"] for r in records[1:]}
    assert {"transport:packet_sent", "transport:packet_received"} <= names
    first_sent = next(r for r in records[1:] if r["name"] == "transport:packet_sent")
    assert first_sent["data"]["header"]["packet_type"] == "initial"
    assert any(
        f["frame_type"] == "stream" for r in records[1:] for f in r["data"].get("frames", [])
    )
    assert list((qlog / "server").glob("*_server.sqlog"))
