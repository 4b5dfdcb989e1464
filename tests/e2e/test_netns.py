"""Address changes of the machine, in a network namespace the test creates: a client
bound to an address that is then removed migrates to another one by itself."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.netns

CLIENT_SCRIPT = r"""
import hashlib, json, logging, os, subprocess, sys, threading, time
logging.basicConfig(level=logging.INFO, stream=sys.stderr)  # the migration is logged
from handshake.libquic import quic_client_handshake, quic_server_handshake
from quic import uapi
from quic.socket import QuicSocket, quic_recvmsg, quic_sendmsg
from tests.certs import make_pki

pki = make_pki(sys.argv[1])
srv = QuicSocket()
srv.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_ALPN, b"smb")
srv.bind(("10.77.0.3", 0))
srv.listen()
digests = []

def serve():
    child, _ = srv.accept()
    child.settimeout(20)
    quic_server_handshake(child, str(pki.server_key), str(pki.server_cert), "smb", timeout=20)
    body = bytearray()
    while True:
        data, sid, flags = quic_recvmsg(child, 65536)
        body += data
        if flags & uapi.MSG_QUIC_STREAM_FIN:
            break
    digests.append(child.getpeername())
    quic_sendmsg(child, hashlib.sha256(body).digest(), sid, uapi.MSG_QUIC_STREAM_FIN)

server = threading.Thread(target=serve, daemon=True)
server.start()
cli = QuicSocket()
cli.settimeout(20)
cli.bind(("10.77.0.1", 0))
cli.connect(("10.77.0.3", srv.getsockname()[1]))
quic_client_handshake(cli, None, "server.test", "smb", ca_file=str(pki.ca), timeout=20)
data = os.urandom(4 << 20)
quic_sendmsg(cli, data[: 1 << 20], 0, uapi.MSG_QUIC_STREAM_NEW)
before = cli.getsockname()
subprocess.run(["ip", "addr", "del", "10.77.0.1/32", "dev", "lo"], check=True)
for _ in range(500):
    if cli.getsockname()[0] != before[0]:
        break
    time.sleep(0.01)
quic_sendmsg(cli, data[1 << 20 :], 0, uapi.MSG_QUIC_STREAM_FIN)
reply, _, _ = quic_recvmsg(cli, 100)
server.join(10)
print(json.dumps({
    "before": before[0],
    "after": cli.getsockname()[0],
    "intact": reply == hashlib.sha256(data).digest(),
    "server_saw": digests[0][0] if digests else None,
}))
"""


@pytest.fixture
def netns():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to create a network namespace")
    name = f"kquic-{uuid.uuid4().hex[:8]}"
    if subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode:
        pytest.skip("network namespaces are not available here")
    try:
        for cmd in (
            ["ip", "link", "set", "lo", "up"],
            *(["ip", "addr", "add", f"10.77.0.{i}/32", "dev", "lo"] for i in (1, 2, 3)),
        ):
            subprocess.run(["ip", "netns", "exec", name, *cmd], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_client_leaves_a_removed_address(netns, tmp_path) -> None:
    result = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", CLIENT_SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome == {
        "before": "10.77.0.1",
        "after": "10.77.0.2",
        "intact": True,
        "server_saw": "10.77.0.2",
    }
