"""Steering datagrams to worker processes: the connection IDs workers mint, the keys
they share, and the reuseport program that reads the one to pick the other."""

from __future__ import annotations

import os
import socket

import pytest

from quic.connid import WorkerCids
from quic.keys import EndpointKeys
from quic.reuseport import open_group, pack_program, steering_program
from quic.token import TokenAuthority


def test_worker_cids_name_their_worker() -> None:
    for workers in (2, 3, 7, 256):
        for worker in (0, workers - 1):
            cids = WorkerCids(worker, workers)
            for _ in range(50):
                cid = cids.mint(8)
                assert len(cid) == 8
                assert cid[0] % workers == worker == cids.worker_of(cid)


def test_worker_cids_keep_the_first_byte_random() -> None:
    cids = WorkerCids(1, 3)
    seen = {cids.mint(4)[0] for _ in range(2000)}
    assert seen == set(range(1, 256, 3))


def test_one_worker_mints_plain_random_cids() -> None:
    firsts = {WorkerCids().mint(8)[0] for _ in range(2000)}
    assert len(firsts) > 200


@pytest.mark.parametrize(("worker", "workers"), [(2, 2), (-1, 2), (0, 0), (0, 257)])
def test_worker_cids_refuse_impossible_workers(worker: int, workers: int) -> None:
    with pytest.raises(ValueError):
        WorkerCids(worker, workers)


def test_steering_program_reads_the_dcid_of_either_header() -> None:
    assert steering_program(4) == [
        (0x30, 0, 0, 0),  # ldb [0]
        (0x45, 2, 0, 0x80),  # jset #0x80: long header jumps to ldb [6]
        (0x30, 0, 0, 1),  # ldb [1]: the short header's DCID
        (0x05, 0, 0, 1),  # ja over the long header's load
        (0x30, 0, 0, 6),  # ldb [6]: the long header's DCID
        (0x94, 0, 0, 4),  # mod #4
        (0x16, 0, 0, 0),  # ret a
    ]
    assert len(pack_program(steering_program(4))) == 7 * 8
    with pytest.raises(ValueError):
        steering_program(0)


def test_shared_keys_give_the_same_ticket_key_per_alpn() -> None:
    keys = EndpointKeys.generate()
    assert keys.ticket_key(b"smb") == keys.ticket_key(b"smb")
    assert len(keys.ticket_key(b"smb")) == 64
    assert keys.ticket_key(b"smb") != keys.ticket_key(b"nfs")
    assert EndpointKeys.generate().ticket_key(b"smb") != keys.ticket_key(b"smb")


def test_a_token_from_one_worker_validates_in_another() -> None:
    keys = EndpointKeys.generate()
    addr = ("192.0.2.1", 4433)
    token = TokenAuthority(keys.token_key).new_token(addr)
    TokenAuthority(keys.token_key).validate(token, addr, b"")


def _short(cid0: int) -> bytes:
    return bytes((0x40, cid0)) + os.urandom(30)


def _long(cid0: int) -> bytes:
    return bytes((0xC0, 0, 0, 0, 1, 8, cid0)) + os.urandom(30)


def test_the_kernel_steers_by_the_dcid() -> None:
    if not hasattr(socket, "SO_REUSEPORT"):
        pytest.skip("no SO_REUSEPORT")
    group = open_group(("127.0.0.1", 0), 3)
    try:
        if not group.steered:
            pytest.skip("the kernel refused SO_ATTACH_REUSEPORT_CBPF")
        for sock in group.sockets:
            sock.settimeout(2)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            for cid0 in range(12):
                for datagram in (_short(cid0), _long(cid0)):
                    client.sendto(datagram, group.address)
                    assert group.sockets[cid0 % 3].recv(2048) == datagram
            client.sendto(b"\x40", group.address)  # too short to read: index 0
            assert group.sockets[0].recv(2048) == b"\x40"
    finally:
        group.close()
