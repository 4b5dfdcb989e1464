"""PLPMTUD in the sans-I/O connection: two connections over a link with a path MTU."""

from __future__ import annotations

import dataclasses
import math
import os

import pytest

from quic.connection import Connection, ConnectionConfig
from quic.path import BASE_PLPMTU, MAX_UDP_PAYLOAD_IPV6, SEARCH_GRANULARITY, SearchState

from .test_connection import CLIENT_ADDR, SERVER_ADDR, Pair, transfer

PROBE_INTERVAL = 5.0


class MtuPair(Pair):
    """A Pair whose link drops datagrams longer than ``path_mtu`` (a UDP payload size),
    as a path that will not fragment does, with PLPMTUD on at the ends that ask."""

    def __init__(
        self,
        path_mtu: int,
        client_probes: bool = True,
        server_probes: bool = True,
        **kw,
    ) -> None:
        super().__init__(**kw)
        self.path_mtu = path_mtu
        self.dropped = 0
        self.largest = {"client": 0, "server": 0}  # the largest datagram each received
        self._server_probes = server_probes
        config = self._plpmtud(self.client.config, client_probes)
        self.client = self._linked(
            Connection(
                config,
                dcid=os.urandom(8),
                scid=os.urandom(8),
                peer_addr=SERVER_ADDR,
                now=self.now,
            ),
            "client",
        )

    @staticmethod
    def _plpmtud(config: ConnectionConfig, on: bool) -> ConnectionConfig:
        return dataclasses.replace(config, plpmtud_probe_interval=PROBE_INTERVAL if on else 0.0)

    def _make_server(self, datagram: bytes) -> None:
        super()._make_server(datagram)
        server = self.server
        self.server = self._linked(
            Connection(
                self._plpmtud(server.config, self._server_probes),
                dcid=server.dest_cids.active.cid,
                scid=server.scid,
                peer_addr=CLIENT_ADDR,
                now=self.now,
                original_dcid=server.original_dcid,
            ),
            "server",
        )

    def _linked(self, conn: Connection, name: str) -> Connection:
        receive = conn.receive_datagram

        def deliver(data: bytes, addr: tuple, now: float, *args) -> None:
            if len(data) > self.path_mtu:
                self.dropped += 1
                return
            self.largest[name] = max(self.largest[name], len(data))
            receive(data, addr, now, *args)

        conn.receive_datagram = deliver
        return conn


def searched(conn: Connection) -> bool:
    return conn.plpmtud.state == SearchState.SEARCH_COMPLETE


def assert_found(conn: Connection, path_mtu: int) -> None:
    expected = min(path_mtu, MAX_UDP_PAYLOAD_IPV6)
    assert expected - SEARCH_GRANULARITY <= conn.max_datagram_size <= expected
    assert conn.recovery.cc.max_datagram_size == conn.max_datagram_size
    assert conn.pacer.max_datagram_size == conn.max_datagram_size


@pytest.mark.parametrize("path_mtu", [1472, 8972, 65527])
def test_max_datagram_size_grows_to_the_path_mtu(path_mtu: int) -> None:
    pair = MtuPair(path_mtu)
    pair.handshake()
    pair.run_until(lambda: searched(pair.client) and searched(pair.server))
    for conn in (pair.client, pair.server):
        assert_found(conn, path_mtu)
    transfer(pair, 1_000_000)
    transfer(pair, 1_000_000, client_to_server=False)
    assert pair.largest["server"] > BASE_PLPMTU and pair.largest["client"] > BASE_PLPMTU
    assert max(pair.largest.values()) <= path_mtu


def test_transfer_during_the_search_stays_intact_and_lost_probes_are_no_congestion() -> None:
    pair = MtuPair(1472, server_probes=False)
    pair.handshake()
    transfer(pair, 2_000_000)
    client = pair.client
    pair.run_until(lambda: searched(client))
    assert_found(client, 1472)
    assert pair.dropped >= 3  # the probes above the path MTU
    # No probe loss was taken for congestion: the window never came down from slow start.
    assert client.recovery.cc.ssthresh == math.inf
    assert client.recovery.cc.congestion_window >= client.recovery.cc.initial_window
    assert pair.server.plpmtud is None and pair.server.max_datagram_size == BASE_PLPMTU


def test_transfer_with_loss_while_searching() -> None:
    pair = MtuPair(8972, loss=0.03, seed=5)
    pair.handshake()
    transfer(pair, 500_000)
    pair.run_until(lambda: searched(pair.client))
    assert_found(pair.client, 8972)


def test_disabled_sends_no_probe_and_keeps_the_size() -> None:
    pair = MtuPair(65527, client_probes=False, server_probes=False)
    pair.handshake()
    transfer(pair, 300_000)
    for conn in (pair.client, pair.server):
        assert conn.plpmtud is None and conn.max_datagram_size == BASE_PLPMTU
    assert max(pair.largest.values()) <= BASE_PLPMTU


def test_the_peers_max_udp_payload_size_bounds_the_search() -> None:
    pair = MtuPair(65527, server_probes=False, max_udp_payload_size=1500)
    pair.handshake()
    pair.run_until(lambda: searched(pair.client))
    assert pair.client.max_datagram_size == 1500
    assert pair.largest["server"] == 1500


def test_a_black_hole_falls_back_to_base_and_the_search_finds_the_new_mtu() -> None:
    pair = MtuPair(8972, server_probes=False)
    pair.handshake()
    client = pair.client
    pair.run_until(lambda: searched(client))
    assert_found(client, 8972)
    pair.path_mtu = 1472  # the route changed: big packets vanish without a word
    transfer(pair, 1_000_000)
    pair.run_until(lambda: searched(client))
    assert_found(client, 1472)


def test_datagram_frames_follow_the_size() -> None:
    pair = MtuPair(8972, server_probes=False, max_datagram_frame_size=65535)
    pair.client.local_params.max_datagram_frame_size = 65535
    pair.handshake()
    client = pair.client
    with pytest.raises(OverflowError):
        client.send_datagram(bytes(4000))
    pair.run_until(lambda: searched(client))
    assert client.send_datagram(bytes(4000))
    assert client.send_datagram(bytes(8000))
    pair.run_until(lambda: len(pair.server.datagrams_in) == 2)
    # Shrinking drops what no longer fits and keeps the rest.
    assert client.send_datagram(bytes(8000)) and client.send_datagram(b"small")
    client._set_max_datagram_size(BASE_PLPMTU)
    assert list(client.datagrams_out) == [b"small"]


def test_probes_are_padded_pings_of_the_probed_size() -> None:
    pair = MtuPair(65527, server_probes=False)
    pair.handshake()
    client = pair.client
    seen = []
    client.trace = lambda name, data: seen.append((name, data))
    pair.run_until(lambda: searched(client))
    probes = [d for n, d in seen if n == "transport:packet_sent" and d["raw"]["length"] > 1200]
    assert probes and all(p["frames"] == [{"frame_type": "ping"}] for p in probes)
    assert probes[0]["raw"]["length"] == MAX_UDP_PAYLOAD_IPV6
    updates = [d for n, d in seen if n == "connectivity:mtu_updated"]
    assert updates == [{"old": BASE_PLPMTU, "new": MAX_UDP_PAYLOAD_IPV6, "done": True}]
