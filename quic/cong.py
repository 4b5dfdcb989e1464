"""Congestion control (RFC 9002 §7, RFC 9438) and pacing (RFC 9002 §7.7).

A controller decides how many bytes may be in flight. It learns only what loss recovery
tells it (packets acknowledged or lost, ECN congestion marks, persistent congestion),
each with a time the caller supplies, so the same code runs under the real clock and a
synthetic one. Windows are counted in bytes as QUIC counts them, not in segments as the
TCP texts do; CUBIC converts where its formulas need segments.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

from quic.uapi import QUIC_CONG_ALG_CUBIC, QUIC_CONG_ALG_RENO

if TYPE_CHECKING:
    from quic.recovery import SentPacket

# RFC 9002 §6.2.2 and App. B.2.
kInitialRtt = 0.333
kLossReductionFactor = 0.5
kPersistentCongestionThreshold = 3
# N of RFC 9002 §7.7: pace a little faster than cwnd/RTT so pacing never caps throughput.
kPacingFactor = 1.25

# RFC 9438 §4.1 and §4.3.
BETA_CUBIC = 0.7
C_CUBIC = 0.4
ALPHA_CUBIC = 3 * (1 - BETA_CUBIC) / (1 + BETA_CUBIC)

# Smallest RTT the pacer divides by; below a millisecond no timer could honour the rate.
_MIN_PACING_RTT = 0.001
# The pacer's bucket holds what the pacing rate releases in PACING_BURST_INTERVAL, at
# most PACING_BURST_DATAGRAMS full datagrams, and never less than an initial window
# (RFC 9002 §7.7). A sender woken by a timer thread cannot space packets much finer
# than its wake-ups, which come about a millisecond apart at best: with a bucket of one
# initial window a fast flow of 1200-byte datagrams waited for a timer after every
# tenth, and the wake-ups cost more than the packets they let out. The cap is what one
# GSO send carries at 1200 bytes (65000 // 1200): since receiving takes a GRO batch in
# one pass, a wake-up and an ACK per 54 such datagrams moved more on loopback than per
# 32 (100 MB downloads in alternating pairs: 70-127 against 63-101 MB/s). The cap
# counts datagrams, not bytes: held to 32 * 1200 bytes, 64 KiB datagrams (PLPMTUD on
# loopback) left two at a time, and each pair cost both ends a wake-up and an ACK.
PACING_BURST_INTERVAL = 0.002
PACING_BURST_DATAGRAMS = 54
# A sender held back by pacing wakes when this many datagrams may leave, not one: on a
# paced path each wake-up (a timer, a flush, a system call) costs more than the datagram
# it would let out, and a simulated 40 ms path woke the sender once per 1.04 datagrams.
PACING_WAKE_DATAGRAMS = 8


def kInitialWindow(max_datagram_size: int) -> int:
    """RFC 9002 §7.2: ten datagrams, but no more than 14720 bytes unless datagrams are big."""
    return min(10 * max_datagram_size, max(14720, 2 * max_datagram_size))


def kMinimumWindow(max_datagram_size: int) -> int:
    """RFC 9002 §7.2: two datagrams, so loss can still be detected by packet threshold."""
    return 2 * max_datagram_size


class CongestionControl:
    """What both algorithms share: bytes in flight, slow start, the recovery period.

    The recovery period is keyed on send times (RFC 9002 §7.3.2): a congestion signal
    for a packet sent before the current period began is the same congestion event and
    does not reduce the window again. ``smoothed_rtt`` is kept current by the owner of
    the RTT estimator; CUBIC aims its window one RTT ahead.
    """

    __slots__ = (
        "_cwnd",
        "_peak_in_flight",
        "_recovery_start",
        "bytes_in_flight",
        "initial_window",
        "max_datagram_size",
        "minimum_window",
        "smoothed_rtt",
        "ssthresh",
    )

    def __init__(self, max_datagram_size: int = 1200) -> None:
        self.bytes_in_flight = 0
        self.smoothed_rtt = kInitialRtt
        self.max_datagram_size = max_datagram_size
        self.initial_window = kInitialWindow(max_datagram_size)
        self.minimum_window = kMinimumWindow(max_datagram_size)
        self.reset()

    @property
    def congestion_window(self) -> int:
        return int(self._cwnd)

    def reset(self) -> None:
        """Start over on a new path (RFC 9000 §9.4).

        Bytes in flight are kept: those packets are still tracked and will leave the
        count when they are acknowledged, lost or discarded.
        """
        self._cwnd: float = self.initial_window
        self.ssthresh: float = math.inf
        self._recovery_start = -math.inf
        self._peak_in_flight = self.bytes_in_flight

    def set_max_datagram_size(self, size: int) -> None:
        """Follow a PLPMTUD change; the window never drops below the new minimum."""
        self.max_datagram_size = size
        self.initial_window = kInitialWindow(size)
        self.minimum_window = kMinimumWindow(size)
        if self._cwnd < self.minimum_window:
            self._cwnd = self.minimum_window

    def available(self, now: float) -> int:
        """Bytes that may be sent now without exceeding the window."""
        room = int(self._cwnd) - self.bytes_in_flight
        return room if room > 0 else 0

    def on_packet_sent(self, size: int, now: float) -> None:
        inflight = self.bytes_in_flight + size
        self.bytes_in_flight = inflight
        if inflight > self._peak_in_flight:
            self._peak_in_flight = inflight

    def on_packets_acked(self, packets: Iterable[SentPacket], now: float) -> None:
        recovery_start = self._recovery_start
        inflight = self.bytes_in_flight
        acked = 0
        for pkt in packets:
            if pkt.in_flight:
                inflight -= pkt.sent_bytes
                # Acks of packets sent before recovery began do not grow the window.
                if pkt.time_sent > recovery_start:
                    acked += pkt.sent_bytes
        self.bytes_in_flight = inflight
        cwnd_limited = self._cwnd_limited()
        self._peak_in_flight = inflight
        if acked:
            self._on_ack(acked, cwnd_limited, now)

    def on_packets_lost(self, packets: Iterable[SentPacket], now: float) -> None:
        inflight = self.bytes_in_flight
        last_loss: float | None = None
        for pkt in packets:
            if pkt.in_flight:
                inflight -= pkt.sent_bytes
                # A lost PMTU probe says the path MTU is smaller, not that it is congested.
                if not pkt.is_pmtu_probe and (last_loss is None or pkt.time_sent > last_loss):
                    last_loss = pkt.time_sent
        self.bytes_in_flight = inflight
        if last_loss is not None:
            self._congestion_event(last_loss, now)

    def on_persistent_congestion(self, now: float) -> None:
        """RFC 9002 §7.6.2: collapse to the minimum window and leave recovery."""
        self._cwnd = self.minimum_window
        self._recovery_start = -math.inf

    def discard(self, packets: Iterable[SentPacket]) -> None:
        """Forget packets of a discarded packet number space; no congestion signal."""
        inflight = self.bytes_in_flight
        for pkt in packets:
            if pkt.in_flight:
                inflight -= pkt.sent_bytes
        self.bytes_in_flight = inflight

    def on_ecn_ce(self, sent_time_of_largest_acked: float, now: float) -> None:
        """An increased ECN-CE count is a congestion event (RFC 9002 §7.1)."""
        self._congestion_event(sent_time_of_largest_acked, now)

    def _congestion_event(self, sent_time: float, now: float) -> None:
        if sent_time <= self._recovery_start:
            return
        self._recovery_start = now
        self._reduce()

    def _cwnd_limited(self) -> bool:
        """Whether the sender used its window since the previous ACK (RFC 9002 §7.8).

        In slow start half the window is enough, as in Linux's tcp_is_cwnd_limited: the
        window doubles per RTT and pacing alone may hold the flight below it. Otherwise
        the flight must have come within two datagrams of the window.
        """
        peak = self._peak_in_flight
        if self._cwnd < self.ssthresh:
            return 2 * peak >= self._cwnd
        return peak + 2 * self.max_datagram_size > self._cwnd

    def _slow_start(self, acked: float) -> float:
        """Grow by the bytes acknowledged up to ssthresh; return what is left for CA."""
        cwnd = self._cwnd
        room = self.ssthresh - cwnd
        if room <= 0:
            return acked
        if acked <= room:
            self._cwnd = cwnd + acked
            return 0
        self._cwnd = self.ssthresh
        return acked - room

    def _on_ack(self, acked: int, cwnd_limited: bool, now: float) -> None:
        raise NotImplementedError

    def _reduce(self) -> None:
        raise NotImplementedError


class NewReno(CongestionControl):
    """RFC 9002 App. B: halve on loss, then one datagram per window acknowledged."""

    __slots__ = ("_acked_in_avoidance",)

    def reset(self) -> None:
        super().reset()
        self._acked_in_avoidance = 0.0

    def _on_ack(self, acked: int, cwnd_limited: bool, now: float) -> None:
        if not cwnd_limited:
            return
        rest = self._slow_start(acked)
        if not rest:
            return
        # Byte counting: a datagram's worth of growth for each full window acknowledged.
        counted = self._acked_in_avoidance + rest
        cwnd = self._cwnd
        while counted >= cwnd:
            counted -= cwnd
            cwnd += self.max_datagram_size
        self._cwnd = cwnd
        self._acked_in_avoidance = counted

    def _reduce(self) -> None:
        self.ssthresh = self._cwnd * kLossReductionFactor
        self._cwnd = max(self.ssthresh, self.minimum_window)
        self._acked_in_avoidance = 0.0


class Cubic(CongestionControl):
    """RFC 9438 CUBIC.

    After a reduction the window follows W_cubic(t) = C*(t-K)^3 + W_max, t counted from
    the start of congestion avoidance, unless the Reno estimate W_est is larger (the
    Reno-friendly region). Time in which the sender did not fill its window is taken
    out of t, so an idle or application-limited sender does not come back to a window
    it never tested (RFC 9438 §5.8).
    """

    __slots__ = (
        "_app_limited_since",
        "_cwnd_prior",
        "_idle_since",
        "_t_epoch",
        "k",
        "w_est",
        "w_max",
    )

    def reset(self) -> None:
        super().reset()
        self.w_max = 0.0
        self.w_est = 0.0
        self.k = 0.0
        self._cwnd_prior = 0.0
        self._t_epoch: float | None = None
        self._app_limited_since: float | None = None
        self._idle_since: float | None = None

    def on_packet_sent(self, size: int, now: float) -> None:
        if self._idle_since is not None:
            # An idle spell inside an application-limited one is skipped with it.
            if self._app_limited_since is None:
                self._skip_time(now - self._idle_since)
            self._idle_since = None
        CongestionControl.on_packet_sent(self, size, now)

    def on_packets_acked(self, packets: Iterable[SentPacket], now: float) -> None:
        CongestionControl.on_packets_acked(self, packets, now)
        if not self.bytes_in_flight:
            self._idle_since = now

    def on_persistent_congestion(self, now: float) -> None:
        # RFC 9438 §4.8: the next avoidance stage starts from K = 0 and W_max = cwnd.
        super().on_persistent_congestion(now)
        self.w_max = 0.0
        self._t_epoch = None

    def _skip_time(self, duration: float) -> None:
        if self._t_epoch is not None and duration > 0:
            self._t_epoch += duration

    def _on_ack(self, acked: int, cwnd_limited: bool, now: float) -> None:
        if not cwnd_limited:
            if self._app_limited_since is None:
                self._app_limited_since = now
            return
        if self._app_limited_since is not None:
            self._skip_time(now - self._app_limited_since)
            self._app_limited_since = None
        rest = self._slow_start(acked)
        if rest:
            self._avoid(rest, now)

    def _start_epoch(self, now: float) -> None:
        cwnd = self._cwnd
        self._t_epoch = now
        self.w_est = cwnd
        if self.w_max <= cwnd:
            self.w_max = cwnd
            self.k = 0.0
        else:
            self.k = ((self.w_max - cwnd) / self.max_datagram_size / C_CUBIC) ** (1 / 3)

    def _w_cubic(self, t: float) -> float:
        return C_CUBIC * (t - self.k) ** 3 * self.max_datagram_size + self.w_max

    def _avoid(self, acked: float, now: float) -> None:
        if self._t_epoch is None:
            self._start_epoch(now)
        cwnd = self._cwnd
        # RFC 9438 §4.3: once W_est reaches the pre-reduction window, grow as Reno does.
        alpha = 1.0 if self.w_est >= self._cwnd_prior else ALPHA_CUBIC
        self.w_est += alpha * self.max_datagram_size * acked / cwnd
        t = now - self._t_epoch
        if self._w_cubic(t) < self.w_est:
            if self.w_est > cwnd:
                self._cwnd = self.w_est
            return
        # RFC 9438 §4.4, §4.5: close (target - cwnd)/cwnd per datagram acknowledged,
        # aiming one RTT ahead, never shrinking and at most 1.5x per RTT.
        target = self._w_cubic(t + self.smoothed_rtt)
        if target < cwnd:
            target = cwnd
        elif target > 1.5 * cwnd:
            target = 1.5 * cwnd
        self._cwnd = cwnd + (target - cwnd) * acked / cwnd

    def _reduce(self) -> None:
        cwnd = self._cwnd
        self._cwnd_prior = cwnd
        # Fast convergence (RFC 9438 §4.7): a flow losing ground releases bandwidth sooner.
        self.w_max = cwnd * (1 + BETA_CUBIC) / 2 if cwnd < self.w_max else cwnd
        self.ssthresh = cwnd * BETA_CUBIC
        self._cwnd = max(self.ssthresh, self.minimum_window)
        self._t_epoch = None
        self._app_limited_since = None


class Pacer:
    """Token bucket spreading a window over an RTT (RFC 9002 §7.7).

    Tokens accrue at N * cwnd / smoothed_rtt bytes per second up to ``burst`` bytes:
    PACING_BURST_INTERVAL of that rate within PACING_BURST_DATAGRAMS, or an initial window
    when more (as at the start), unless the caller fixes the burst. Both calls are a
    few float operations: the packetizer asks per packet.
    """

    __slots__ = ("_adaptive", "_last", "_rate", "_tokens", "burst", "max_datagram_size")

    def __init__(self, max_datagram_size: int = 1200, burst: int | None = None) -> None:
        self.max_datagram_size = max_datagram_size
        self._rate = kPacingFactor * kInitialWindow(max_datagram_size) / kInitialRtt
        self._adaptive = burst is None
        self.burst = self._rate_burst() if burst is None else burst
        self._tokens = float(self.burst)
        self._last = -math.inf

    def _rate_burst(self) -> float:
        burst = min(
            self._rate * PACING_BURST_INTERVAL, PACING_BURST_DATAGRAMS * self.max_datagram_size
        )
        return max(kInitialWindow(self.max_datagram_size), burst)

    def set_max_datagram_size(self, size: int) -> None:
        """Follow a PLPMTUD change: the bucket must hold a full datagram, or none
        would ever leave."""
        self.max_datagram_size = size
        self.burst = self._rate_burst() if self._adaptive else max(self.burst, size)
        if self._tokens > self.burst:
            self._tokens = float(self.burst)

    def update_rate(self, congestion_window: int, smoothed_rtt: float) -> None:
        self._rate = kPacingFactor * congestion_window / max(smoothed_rtt, _MIN_PACING_RTT)
        if self._adaptive:
            self.burst = self._rate_burst()

    def tokens(self, now: float) -> float:
        """Bytes the bucket holds at ``now``: what may leave at once."""
        return min(self._tokens + (now - self._last) * self._rate, self.burst)

    def next_send_time(self, now: float) -> float:
        """When a full-sized datagram may leave: ``now`` if it may leave at once."""
        tokens = self.tokens(now)
        if tokens >= self.max_datagram_size:
            return now
        return now + (self.max_datagram_size - tokens) / self._rate

    def wake_time(self, now: float) -> float:
        """When a sender that :meth:`next_send_time` held back should try again: once
        PACING_WAKE_DATAGRAMS full datagrams may leave, or a full bucket if smaller."""
        want = min(PACING_WAKE_DATAGRAMS * self.max_datagram_size, self.burst)
        tokens = self.tokens(now)
        return now if tokens >= want else now + (want - tokens) / self._rate

    def on_sent(self, size: int, now: float) -> None:
        tokens = self._tokens + (now - self._last) * self._rate
        if tokens > self.burst:
            tokens = self.burst
        self._tokens = tokens - size
        self._last = now


def make_congestion_control(algo: int, max_datagram_size: int) -> CongestionControl:
    """The controller for a quic_config congestion_control_algo value."""
    if algo == QUIC_CONG_ALG_RENO:
        return NewReno(max_datagram_size)
    if algo == QUIC_CONG_ALG_CUBIC:
        return Cubic(max_datagram_size)
    raise ValueError(f"unknown congestion control algorithm {algo}")
