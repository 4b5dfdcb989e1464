"""What the host's IP layer contributes to path MTU discovery for QUIC's UDP sockets.

RFC 9000 §14 forbids IP fragmentation of QUIC datagrams: with the kernel's default
policy a datagram larger than the route MTU would leave in fragments, and a PLPMTUD
probe would "succeed" at a size the path cannot carry whole. IP_PMTUDISC_PROBE sets DF
and also ignores the kernel's cached path MTU, so probes above it still go out and the
probe's acknowledgment, not ICMP, decides (RFC 8899 §4.6). The route MTU the host
knows (the interface MTU, or a learnt PMTU) is still worth reading once: it bounds the
search, and on loopback and LANs is usually the answer.

These options are Linux's; elsewhere the calls fail and everything works as before,
with fragmentation left to the OS and no bound but the protocol's.
"""

from __future__ import annotations

import logging
import socket
import sys

from .path import max_udp_payload

log = logging.getLogger(__name__)

# <linux/in.h> and <linux/in6.h>; Python's socket module lacks them before 3.12/3.13.
IP_MTU_DISCOVER = 10
IP_MTU = 14
IP_PMTUDISC_PROBE = 3
IPV6_MTU_DISCOVER = 23
IPV6_MTU = 24
IPV6_PMTUDISC_PROBE = 3

_LINUX = sys.platform.startswith("linux")


def forbid_fragmentation(sock: socket.socket, family: int) -> bool:
    """Set DF on everything ``sock`` sends, whatever size (IP_PMTUDISC_PROBE). A
    dual-stack socket sets the IPv4 option too, for peers at IPv4-mapped addresses.
    False when the OS refused: datagrams then go out under its default policy."""
    if not _LINUX:
        return False
    options = [(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_PROBE)]
    if family == socket.AF_INET6:
        options.insert(0, (socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_PROBE))
    try:
        for level, option, value in options:
            sock.setsockopt(level, option, value)
    except OSError as exc:
        log.info("the kernel refused IP_PMTUDISC_PROBE (%s): fragmentation is its call", exc)
        return False
    return True


def is_ipv6_peer(addr: tuple) -> bool:
    """An IPv4-mapped IPv6 address travels in IPv4 packets."""
    host = addr[0]
    return ":" in host and not host.lower().startswith("::ffff:")


def route_max_udp_payload(addr: tuple) -> int:
    """The largest UDP payload toward ``addr`` the host would send unfragmented: the
    route MTU from a connected probe socket (nothing is sent), less the IP and UDP
    headers; the protocol's maximum when the host cannot tell."""
    ipv6 = is_ipv6_peer(addr)
    if ":" in addr[0]:
        family, level, option = socket.AF_INET6, socket.IPPROTO_IPV6, IPV6_MTU
    else:
        family, level, option = socket.AF_INET, socket.IPPROTO_IP, IP_MTU
    mtu: int | None = None
    if _LINUX:
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect(addr)
                mtu = probe.getsockopt(level, option)
        except OSError as exc:
            log.debug("no route MTU toward %s: %s", addr, exc)
    return max_udp_payload(ipv6, mtu)
