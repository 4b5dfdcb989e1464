"""aioquic's client, whose ClientHello nobody here wrote, reaches the right one of two
kquic listeners sharing a port by its ALPN."""

from __future__ import annotations

import argparse
import errno
from concurrent.futures import ThreadPoolExecutor

import pytest

from kquic_tools.interop import ALPN, serve_connection
from quic import uapi
from quic.socket import QuicSocket
from tests.interop.conftest import python, run

TIMEOUT = 10.0


def alpn_listener(alpn: bytes, port: int = 0) -> QuicSocket:
    sock = QuicSocket()
    sock.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_ALPN, alpn)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    sock.settimeout(TIMEOUT)
    return sock


def test_aioquic_hq_interop_client_skips_the_smb_listener(pki, tmp_path) -> None:
    root = tmp_path / "www"
    root.mkdir()
    (root / "hello.txt").write_bytes(b"hello over a shared port\n")
    smb = alpn_listener(b"smb")
    port = smb.getsockname()[1]
    hq = alpn_listener(ALPN.encode(), port)
    args = argparse.Namespace(
        timeout=TIMEOUT, key=str(pki.server_key), cert=str(pki.server_cert), root=root.resolve()
    )
    with ThreadPoolExecutor(max_workers=1) as pool:
        served = pool.submit(lambda: serve_connection(hq.accept()[0], args))
        result = run(
            python(
                "-m",
                "tests.interop.aioquic_peer",
                "client",
                f"https://127.0.0.1:{port}/hello.txt",
                "--output",
                str(tmp_path / "out"),
                "--ca",
                str(pki.ca),
            )
        )
        served.result(timeout=TIMEOUT + 5)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "hello.txt").read_bytes() == (root / "hello.txt").read_bytes()
    smb.settimeout(0)
    with pytest.raises(OSError) as info:
        smb.accept()
    assert info.value.errno == errno.EAGAIN
    smb.close()
    hq.close()
