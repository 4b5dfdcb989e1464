"""One UDP address shared by worker processes, each datagram steered by connection ID.

``SO_REUSEPORT`` lets several UDP sockets bind the same address; the kernel then
gives each datagram to one of them, by default by a hash of its source and
destination. That is not enough for QUIC: a connection's packets come from a new
source after a NAT rebinding or a migration, and the hash would then hand them to a
worker that does not know the connection. So a classic BPF program is attached to
the group (``SO_ATTACH_REUSEPORT_CBPF``, Linux 4.5; ``BPF_MOD`` needs 3.7) that
returns the index of the socket to deliver to, computed from the Destination
Connection ID, which is the same whatever the path::

        ldb  [0]            A = the first byte
        jset #0x80, long    header form bit: long header?
        ldb  [1]            short header: the DCID starts at offset 1
        ja   steer
    long:
        ldb  [6]            long header: flags, version (4), DCID length, then the DCID
    steer:
        mod  #N             A = A % workers
        ret  A              deliver to the group's socket number A

The program sees the datagram from its UDP payload on: the kernel pulls the UDP
header before running it. A datagram too short to hold the byte it reads ends the
program with 0 (worker 0, which drops it). Every connection ID a worker issues has a
first byte equal to its index modulo N (``quic.connid.WorkerCids``), and a client's
first Initials carry a DCID the client chose at random, so its first flight goes to
worker ``dcid[0] % N``, which answers and from then on is named by the client's DCID.

A socket's index in the group is the order it joined in, and closing one moves the
last socket into its slot: the process that made the group keeps every socket open
for as long as the group serves, so indexes, and thus workers, never change.

Without the program (refused by the kernel) the hash steers: connections work until
their peer's address changes, after which their packets may reach another worker,
which answers with a Stateless Reset.
"""

from __future__ import annotations

import ctypes
import logging
import socket
import struct
from dataclasses import dataclass

from .tunnel import Address, udp_socket

log = logging.getLogger(__name__)

# asm-generic/socket.h; Python's socket module lacks the name.
SO_ATTACH_REUSEPORT_CBPF = 51
# Classic BPF opcodes (linux/bpf_common.h, linux/filter.h).
BPF_LD_B_ABS = 0x00 | 0x10 | 0x20  # BPF_LD | BPF_B | BPF_ABS
BPF_JMP_JSET_K = 0x05 | 0x40 | 0x00  # BPF_JMP | BPF_JSET | BPF_K
BPF_JMP_JA = 0x05 | 0x00  # BPF_JMP | BPF_JA
BPF_ALU_MOD_K = 0x04 | 0x90 | 0x00  # BPF_ALU | BPF_MOD | BPF_K
BPF_RET_A = 0x06 | 0x10  # BPF_RET | BPF_A
# Offsets in the UDP payload (RFC 9000 §17.2, §17.3).
HEADER_FORM = 0x80
SHORT_DCID_OFFSET = 1
LONG_DCID_OFFSET = 6
MAX_WORKERS = 256  # one byte steers

_SOCK_FILTER = struct.Struct("=HBBI")  # struct sock_filter: code, jt, jf, k
_SOCK_FPROG = struct.Struct("@HP")  # struct sock_fprog: len, then a pointer to the code


def steering_program(workers: int) -> list[tuple[int, int, int, int]]:
    """The instructions (code, jt, jf, k) that pick the worker of a QUIC datagram."""
    if not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"{workers} workers: 1 to {MAX_WORKERS}")
    return [
        (BPF_LD_B_ABS, 0, 0, 0),
        (BPF_JMP_JSET_K, 2, 0, HEADER_FORM),
        (BPF_LD_B_ABS, 0, 0, SHORT_DCID_OFFSET),
        (BPF_JMP_JA, 0, 0, 1),
        (BPF_LD_B_ABS, 0, 0, LONG_DCID_OFFSET),
        (BPF_ALU_MOD_K, 0, 0, workers),
        (BPF_RET_A, 0, 0, 0),
    ]


def pack_program(program: list[tuple[int, int, int, int]]) -> bytes:
    """The program as the kernel's array of ``struct sock_filter``."""
    return b"".join(_SOCK_FILTER.pack(*insn) for insn in program)


def attach_steering(sock: socket.socket, workers: int) -> bool:
    """Attach the steering program to ``sock``'s reuseport group; False if refused."""
    program = steering_program(workers)
    code = ctypes.create_string_buffer(pack_program(program))
    fprog = _SOCK_FPROG.pack(len(program), ctypes.addressof(code))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
    except OSError as exc:
        log.warning(
            "the kernel refused the reuseport steering program (%s): datagrams go to "
            "workers by address hash, and connections whose address changes will fail",
            exc,
        )
        return False
    return True


@dataclass
class ReuseportGroup:
    """``workers`` UDP sockets bound to one address; socket i is the group's index i."""

    sockets: list[socket.socket]
    address: Address  # as bound: the port is known even if 0 was asked for
    steered: bool  # whether the connection-ID program steers, not the address hash

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def open_group(local_addr: Address, workers: int) -> ReuseportGroup:
    """Bind ``workers`` sockets to ``local_addr`` (port 0: one free port for all), in
    index order, and attach the steering program when there is more than one."""
    family = socket.AF_INET6 if ":" in local_addr[0] else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        for _ in range(workers):
            sock = udp_socket(family)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(sockets[0].getsockname() if len(sockets) > 1 else local_addr)
        steered = workers > 1 and attach_steering(sockets[0], workers)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return ReuseportGroup(sockets, sockets[0].getsockname(), steered)
