"""Packetization Layer Path MTU Discovery (RFC 9000 §14.3, RFC 8899 DPLPMTUD), sans-I/O.

QUIC may not rely on ICMP reaching it, and must never have its datagrams fragmented,
so it learns the largest UDP payload a path carries by sending probes: a PING padded to
the size under test. An acknowledged probe confirms its size; a probe that is lost
says little, since loss has other causes, so a size only counts as too big after
MAX_PROBES probes of it are lost. The connection does the sending and tells this
module what happened; all sizes here are UDP payload sizes, QUIC's max_datagram_size.

The QUIC handshake already proves BASE_PLPMTU (RFC 9000 §14.1), so the search starts in
SEARCHING. It first tries the upper bound, which on loopback and on paths whose MTU the
host knows is usually right, then halves the range between the confirmed size and the
smallest size known to fail. One probe at a time: the next goes only once the previous
was acknowledged or lost, at least an RTT apart as RFC 8899 §3 asks of probes that are
not held back by congestion control.
"""

from __future__ import annotations

from enum import IntEnum

# RFC 8899 §5.1.2: QUIC's BASE_PLPMTU is its minimum datagram size (RFC 9000 §14).
BASE_PLPMTU = 1200
# RFC 8899 §5.1.2: lost probes of one size before that size is taken as too big.
MAX_PROBES = 3
# RFC 8899 §5.1.1: how long an unacknowledged probe waits before it counts as lost,
# when the socket layer sets no interval. At least 1 s, and "SHOULD be larger than 15 s".
PROBE_TIMER = 15.0
# RFC 8899 §5.1.1: after the search completes below the upper bound, look again.
PMTU_RAISE_TIMER = 600.0
# The search stops once the confirmed size is this close to the smallest failed one:
# a few bytes more per packet are not worth more probes.
SEARCH_GRANULARITY = 8

# The largest UDP payloads: IPv4 counts its header in the 16-bit total length, IPv6
# does not; and what the IP and UDP headers take out of a link MTU.
MAX_UDP_PAYLOAD_IPV4 = 65535 - 20 - 8
MAX_UDP_PAYLOAD_IPV6 = 65535 - 8
UDP_IPV4_OVERHEAD = 20 + 8
UDP_IPV6_OVERHEAD = 40 + 8


class SearchState(IntEnum):
    """RFC 8899 §5.2 states."""

    DISABLED = 0  # not started: the handshake is not confirmed yet
    BASE = 1  # confirming BASE_PLPMTU again, after a black hole
    SEARCHING = 2
    SEARCH_COMPLETE = 3  # waiting for PMTU_RAISE_TIMER
    ERROR = 4  # even BASE_PLPMTU probes are lost: retry one every PROBE_TIMER


def max_udp_payload(ipv6: bool, link_mtu: int | None = None) -> int:
    """The largest UDP payload one IP packet of this family carries, and over a link of
    ``link_mtu`` (a route or interface MTU, when the host knows it) unfragmented."""
    if ipv6:
        limit, overhead = MAX_UDP_PAYLOAD_IPV6, UDP_IPV6_OVERHEAD
    else:
        limit, overhead = MAX_UDP_PAYLOAD_IPV4, UDP_IPV4_OVERHEAD
    if link_mtu is not None:
        limit = min(limit, link_mtu - overhead)
    return max(limit, BASE_PLPMTU)


class PlpmtuSearch:
    """The DPLPMTUD state machine of one path.

    The owner starts it once the handshake is confirmed, sends a probe of
    ``probed_size`` whenever ``probe_pending`` is set (reporting it with
    :meth:`on_probe_sent`), reports each probe acknowledged or lost, and calls
    :meth:`on_timer` at ``deadline``. A change of ``plpmtu`` is returned by the call
    that made it. Reports about probes the search has moved past are ignored, except
    an acknowledgment that still proves a larger size.
    """

    __slots__ = (
        "_last_sent",
        "deadline",
        "in_flight",
        "max_plpmtu",
        "plpmtu",
        "probe_count",
        "probe_pending",
        "probe_timer",
        "probed_size",
        "search_high",
        "state",
    )

    def __init__(self, probe_timer: float = PROBE_TIMER) -> None:
        self.probe_timer = probe_timer
        self.state = SearchState.DISABLED
        self.plpmtu = BASE_PLPMTU  # the confirmed size
        self.max_plpmtu = BASE_PLPMTU
        self.probed_size = 0  # PROBED_SIZE: the size the next or outstanding probe tests
        self.probe_count = 0  # PROBE_COUNT: probes of probed_size lost so far
        self.search_high = BASE_PLPMTU + 1  # the smallest size known to fail
        self.probe_pending = False
        self.in_flight = False
        self.deadline: float | None = None
        self._last_sent = 0.0

    def start(self, max_plpmtu: int) -> None:
        """The handshake is confirmed: search up to ``max_plpmtu`` (MAX_PLPMTU, the
        smallest of the local, peer and path limits)."""
        if self.state != SearchState.DISABLED:
            return
        self.max_plpmtu = max(max_plpmtu, BASE_PLPMTU)
        self.search_high = self.max_plpmtu + 1
        self.state = SearchState.SEARCHING
        self._continue_search()

    def on_probe_sent(self, now: float) -> None:
        """A probe of ``probed_size`` left: PROBE_TIMER starts."""
        self.probe_pending = False
        self.in_flight = True
        self.probe_count += 1
        self.deadline = now + self.probe_timer
        self._last_sent = now

    def on_probe_acked(self, size: int) -> bool:
        """A probe of ``size`` was acknowledged; True when that raised ``plpmtu``."""
        raised = size > self.plpmtu
        if raised:
            self.plpmtu = size
            if size >= self.search_high:
                # A late acknowledgment of a size given up on: the range is open again.
                self.search_high = self.max_plpmtu + 1
        elif size != self.probed_size:
            return False
        if size >= self.probed_size:
            # The probe under test, or a larger one that makes it moot: go on.
            self.in_flight = False
            self.probe_count = 0
            self.deadline = None
            self.state = SearchState.SEARCHING
            self._continue_search()
        return raised

    def on_probe_lost(self, size: int) -> None:
        """Loss detection declared a probe of ``size`` lost."""
        if self.in_flight and size == self.probed_size:
            self.in_flight = False
            self._probe_failed()

    def on_timer(self, now: float) -> None:
        """``deadline`` passed: PROBE_TIMER of the outstanding probe, the ERROR state's
        retry, or PMTU_RAISE_TIMER."""
        if self.deadline is None or now < self.deadline:
            return
        self.deadline = None
        if self.in_flight:
            self.in_flight = False
            self._probe_failed()
        elif self.state == SearchState.SEARCH_COMPLETE:
            self.state = SearchState.SEARCHING
            self.search_high = self.max_plpmtu + 1
            self._continue_search()
        elif self.state == SearchState.ERROR:
            self.probe_pending = True

    def on_black_hole(self) -> bool:
        """Packets of ``plpmtu`` stopped getting through while smaller ones may: fall
        back to BASE_PLPMTU and confirm it before searching again (RFC 8899 §4.3).
        True when ``plpmtu`` dropped."""
        if self.state == SearchState.DISABLED or self.plpmtu <= BASE_PLPMTU:
            return False
        self.plpmtu = BASE_PLPMTU
        self.state = SearchState.BASE
        self.probed_size = BASE_PLPMTU
        self.probe_count = 0
        self.search_high = self.max_plpmtu + 1
        self.in_flight = False
        self.probe_pending = True
        self.deadline = None
        return True

    def _probe_failed(self) -> None:
        if self.state == SearchState.ERROR:
            self.deadline = self._last_sent + self.probe_timer
            return
        if self.probe_count < MAX_PROBES:
            self.probe_pending = True
            self.deadline = None
            return
        self.probe_count = 0
        if self.state == SearchState.BASE:
            self.state = SearchState.ERROR
            self.deadline = self._last_sent + self.probe_timer
            return
        self.search_high = self.probed_size
        self._continue_search()

    def _continue_search(self) -> None:
        size = self._next_size()
        if size is None:
            self.state = SearchState.SEARCH_COMPLETE
            self.probe_pending = False
            complete = self.plpmtu >= self.max_plpmtu
            self.deadline = None if complete else self._last_sent + PMTU_RAISE_TIMER
            return
        self.probed_size = size
        self.probe_pending = True
        self.deadline = None

    def _next_size(self) -> int | None:
        """The upper bound while nothing above ``plpmtu`` has failed, else the middle of
        the range left; None once the range is narrower than SEARCH_GRANULARITY."""
        low, high = self.plpmtu, self.search_high
        if high > self.max_plpmtu:
            return self.max_plpmtu if self.max_plpmtu > low else None
        if high - low <= SEARCH_GRANULARITY:
            return None
        return (low + high) // 2
