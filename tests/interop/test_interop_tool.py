"""kquic-interop as a user meets it: missing files, user mistakes and Ctrl-C."""

from __future__ import annotations

import subprocess

import pytest

from kquic_tools import interop
from tests.interop.conftest import (
    SilentServer,
    assert_credentials_refused,
    check_files,
    env,
    interrupt_after_handshake,
    kquic_client,
    kquic_server,
    python,
    run,
)


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1:70000/x",
        "https://127.0.0.1:0/x",
        "https://127.0.0.1/x",
        "https://127.0.0.1:port/x",
    ],
)
def test_a_url_without_a_usable_port_is_a_usage_error(tmp_path, url) -> None:
    result = run(
        python("-m", "kquic_tools.interop", "client", url, "--output", str(tmp_path), "--insecure")
    )
    assert result.returncode == 2 and "port from 1 to 65535" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_file_fails_the_client_and_leaves_no_file(
    pki, www, tmp_path, start_server
) -> None:
    server = start_server(kquic_server(pki, www))
    result = run(kquic_client(server.port, ["small.txt", "missing.txt"], tmp_path, pki))
    assert result.returncode == 1
    assert "/missing.txt (stream reset, error 404)" in result.stderr
    assert not (tmp_path / "missing.txt").exists()
    check_files(www, tmp_path, ["small.txt"])


def test_a_root_that_is_not_a_directory_is_a_usage_error(pki, tmp_path) -> None:
    argv = kquic_server(pki, tmp_path / "nowhere")
    result = subprocess.run(argv, capture_output=True, text=True, env=env(), timeout=30)
    assert result.returncode == 2 and "no such directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_client_ctrl_c_exits_quietly(pki, tmp_path) -> None:
    server = SilentServer(pki, "hq-interop")
    url = f"https://127.0.0.1:{server.port}/small.txt"
    argv = python(
        "-m", "kquic_tools.interop", "client", url, "--output", str(tmp_path), "--insecure"
    )
    returncode, stderr = interrupt_after_handshake(argv, server)
    assert returncode == 130, stderr
    assert "Traceback" not in stderr


def test_credentials_gnutls_cannot_use_are_refused_at_startup(pki, tmp_path) -> None:
    assert_credentials_refused(
        "kquic_tools.interop",
        ["client", "https://127.0.0.1:4433/x", "--output", str(tmp_path)],
        ["server", "--listen", "127.0.0.1:0", "--root", str(tmp_path)],
        pki,
        tmp_path,
    )


@pytest.mark.parametrize("timeout", ["0", "-1", "inf", "nan", "soon"])
def test_timeout_must_be_a_positive_number(tmp_path, capsys, timeout) -> None:
    argv = ["client", "https://127.0.0.1:4433/x", "--output", str(tmp_path), "--insecure"]
    with pytest.raises(SystemExit) as exc:
        interop.main([*argv, "--timeout", timeout])
    assert exc.value.code == 2
    assert "positive number of seconds" in capsys.readouterr().err


def test_help_describes_the_tool_in_a_whole_sentence(capsys) -> None:
    with pytest.raises(SystemExit):
        interop.main(["--help"])
    assert "server and client." in capsys.readouterr().out
