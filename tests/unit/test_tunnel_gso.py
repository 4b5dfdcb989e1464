"""UDP GSO in the tunnel: a flush's datagrams leave in few system calls and arrive
as the same datagrams, in order; without GSO they arrive the same way."""

from __future__ import annotations

import socket
import sys

import pytest

from quic.tunnel import get_tunnel, put_tunnel


@pytest.mark.parametrize("gso", [True, False])
def test_batches_arrive_as_the_datagrams_they_were(gso: bool) -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(2)
    tunnel = get_tunnel(("127.0.0.1", 0), 8)
    try:
        tunnel.gso = tunnel.gso and gso
        datagrams = [bytes([i]) * 1200 for i in range(12)] + [b"short" * 10]
        datagrams += [bytes([99]) * 700] * 3  # a second run of another size
        tunnel.send_batch(datagrams, receiver.getsockname())
        got = [receiver.recv(65536) for _ in datagrams]
        assert got == datagrams
        if gso and sys.platform.startswith("linux"):
            assert tunnel.gso  # loopback takes GSO: the batched path was the one used
    finally:
        put_tunnel(tunnel)
        receiver.close()
