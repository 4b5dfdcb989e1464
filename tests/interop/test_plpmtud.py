"""PLPMTUD against aioquic: its ACKs confirm kquic's probes, and the max_udp_payload_size
it advertises bounds them."""

from __future__ import annotations

import json
import re

import pytest

from quic.packet import MIN_INITIAL_SIZE
from tests.interop.conftest import (
    FILES,
    aioquic_client,
    aioquic_server,
    check_files,
    kquic_server,
    perf_commands,
    python,
    run,
    urls,
)

# The largest UDP payload over IPv4: what loopback's 65536-byte MTU lets through.
LOOPBACK_IPV4_PAYLOAD = 65507


def datagram_size(stderr: str) -> tuple[int, int]:
    """(max_datagram_size, the peer's max_udp_payload_size) as the client logged them."""
    found = re.search(r"max_datagram_size (\d+), peer max_udp_payload_size (\d+)", stderr)
    assert found, stderr[-3000:]
    return int(found[1]), int(found[2])


@pytest.mark.parametrize(("advertised", "expected"), [(None, LOOPBACK_IPV4_PAYLOAD), (1500, 1500)])
def test_kquic_client_probes_up_to_what_aioquic_accepts(
    pki, www, tmp_path, start_server, advertised, expected
) -> None:
    argv = aioquic_server(pki, www)
    if advertised:
        argv += ["--max-udp-payload-size", str(advertised)]
    server = start_server(argv)
    result = run(
        python(
            "-m",
            "kquic_tools.interop",
            "-v",
            "client",
            *urls(server.port, FILES),
            "--output",
            str(tmp_path),
            "--ca",
            str(pki.ca),
            "--server-name",
            "server.test",
            "--plpmtud",
        )
    )
    assert result.returncode == 0, result.stderr[-3000:]
    check_files(www, tmp_path, FILES)
    size, peer_limit = datagram_size(result.stderr)
    assert peer_limit == (advertised or 65527)
    assert MIN_INITIAL_SIZE < size <= peer_limit
    assert size == expected


def test_aioquic_client_against_a_probing_kquic_server(pki, www, tmp_path, start_server) -> None:
    server = start_server([*kquic_server(pki, www), "--plpmtud"])
    result = run(aioquic_client(server.port, FILES, tmp_path, pki))
    assert result.returncode == 0, result.stderr[-3000:]
    check_files(www, tmp_path, FILES)


@pytest.mark.parametrize("direction", ["send", "recv"])
def test_kquic_perf_with_plpmtud_on_both_ends(pki, start_server, direction) -> None:
    server_argv, client_argv = perf_commands("kquic", pki, direction, 4 << 20)
    server = start_server([*server_argv, "--plpmtud"])
    result = run([*client_argv(server.port), "--plpmtud"])
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["bytes"] == 4 << 20
    assert figures["max_datagram_size"] == LOOPBACK_IPV4_PAYLOAD
