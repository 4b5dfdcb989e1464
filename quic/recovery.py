"""Loss detection and RTT estimation (RFC 9002 §5, §6, App. A).

Sans-I/O: the connection reports packets sent and ACK frames received, asks for the
loss-detection deadline, and calls back when it passes; every call carries the caller's
``now``. Answers say which packets were acknowledged or lost and when to send probes;
the frames inside packets are the connection's business and are never looked at here.

Per-ACK work follows what the ACK newly covers, not the number of packets in flight.
Packet numbers of a space are sent in increasing order and acknowledged packets leave
the map at once, so after each round of loss detection the only unacknowledged packets
at or below the largest acknowledged are the last ``kPacketThreshold - 1`` (older ones
are lost by packet threshold). Each space remembers the lowest such packet number
(``scan_start``): ranges of an ACK are clipped to it, so ranges repeated from earlier
ACKs cost nothing, and loss detection looks only at the gaps between this ACK's ranges.
"""

from __future__ import annotations

from collections.abc import ValuesView
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from quic.cong import CongestionControl, kInitialRtt, kPersistentCongestionThreshold
from quic.ecn import EcnState, EcnValidation
from quic.errors import QuicError, TransportError

# RFC 9002 §6.1.1, §6.1.2.
kPacketThreshold = 3
kTimeThreshold = 9 / 8
kGranularity = 0.001
# The smallest RTT sample taken; clock readings from two threads can cross by microseconds.
kMinRttSample = 1e-6
# RFC 9000 §18.2: the peer's max_ack_delay when it sends no transport parameter.
DEFAULT_MAX_ACK_DELAY = 0.025

# ACK frame types (RFC 9000 §19.3), named in errors about the frame being processed.
_ACK = 0x02
_ACK_ECN = 0x03


class PacketNumberSpace(IntEnum):
    INITIAL = 0
    HANDSHAKE = 1
    APPLICATION = 2


# Iterating the enum class builds a generator each time; the timers do it per packet.
SPACES = tuple(PacketNumberSpace)


@dataclass(slots=True)
class SentPacket:
    """What recovery keeps of a packet until it is acknowledged, lost or discarded.

    Ack-eliciting packets are always in flight (RFC 9002 §2). ``ect`` says the packet
    left with an ECT(0) mark, which ECN validation counts. ``frames`` holds whatever the
    connection needs to retransmit; it is handed back untouched.
    """

    packet_number: int
    space: int
    time_sent: float
    sent_bytes: int
    ack_eliciting: bool = True
    in_flight: bool = True
    is_pmtu_probe: bool = False
    frames: list[Any] = field(default_factory=list)
    ect: bool = False


@dataclass(slots=True)
class AckResult:
    acked: list[SentPacket] = field(default_factory=list)  # ascending packet numbers
    lost: list[SentPacket] = field(default_factory=list)
    rtt_sampled: bool = False
    persistent_congestion: bool = False
    ecn_failed: bool = False  # ECN validation failed with this ACK: marking stopped


@dataclass(slots=True)
class TimeoutAction:
    """Either packets declared lost by time threshold, or probes to send (PTO)."""

    lost: list[SentPacket] = field(default_factory=list)
    persistent_congestion: bool = False
    probe_space: PacketNumberSpace | None = None
    probe_count: int = 0  # ack-eliciting packets to send in probe_space


class RttEstimator:
    """RFC 9002 §5: latest, minimum and smoothed RTT and its variation."""

    __slots__ = ("has_sample", "initial_rtt", "latest_rtt", "min_rtt", "rttvar", "smoothed_rtt")

    def __init__(self, initial_rtt: float = kInitialRtt) -> None:
        self.initial_rtt = initial_rtt
        self.reset()

    def reset(self) -> None:
        self.has_sample = False
        self.latest_rtt = 0.0
        self.min_rtt = 0.0
        self.smoothed_rtt = self.initial_rtt
        self.rttvar = self.initial_rtt / 2

    def update(
        self, latest_rtt: float, ack_delay: float, max_ack_delay: float, handshake_confirmed: bool
    ) -> None:
        """Take one RTT sample (RFC 9002 §5.3).

        The peer's ack delay is only trusted once the handshake is confirmed, and then
        no further than the max_ack_delay it promised; before that Initial and Handshake
        ACKs are not deliberately delayed and the claimed delay proves nothing. min_rtt
        never subtracts ack delay, so a lying peer cannot lower it.
        """
        self.latest_rtt = latest_rtt
        if not self.has_sample:
            self.has_sample = True
            self.min_rtt = latest_rtt
            self.smoothed_rtt = latest_rtt
            self.rttvar = latest_rtt / 2
            return
        if latest_rtt < self.min_rtt:
            self.min_rtt = latest_rtt
        adjusted = latest_rtt
        if handshake_confirmed:
            if ack_delay > max_ack_delay:
                ack_delay = max_ack_delay
            if latest_rtt >= self.min_rtt + ack_delay:
                adjusted = latest_rtt - ack_delay
        self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.smoothed_rtt - adjusted)
        self.smoothed_rtt = 0.875 * self.smoothed_rtt + 0.125 * adjusted

    def pto(self, max_ack_delay: float, include_ack_delay: bool) -> float:
        """One probe timeout before backoff (RFC 9002 §6.2.1)."""
        pto = self.smoothed_rtt + max(4 * self.rttvar, kGranularity)
        return pto + max_ack_delay if include_ack_delay else pto


class _Space:
    __slots__ = (
        "ack_eliciting_in_flight",
        "largest_acked",
        "largest_sent",
        "loss_time",
        "scan_start",
        "sent",
        "time_of_last_ack_eliciting",
    )

    def __init__(self) -> None:
        # Insertion order is packet-number order: numbers are sent increasing.
        self.sent: dict[int, SentPacket] = {}
        self.largest_sent = -1
        self.largest_acked = -1
        # Every packet number below this and at most largest_acked is settled.
        self.scan_start = 0
        self.loss_time: float | None = None
        self.ack_eliciting_in_flight = 0
        self.time_of_last_ack_eliciting = 0.0  # meaningful while the count above is > 0


class LossRecovery:
    """RFC 9002 loss detection over the three packet number spaces of one connection.

    The connection keeps ``handshake_confirmed``, ``has_handshake_keys`` and
    ``peer_completed_address_validation`` current (a client also learns the last one
    itself from a Handshake ACK) and ``max_ack_delay`` once the peer's transport
    parameters arrive. A server blocked by its anti-amplification limit must not arm
    the timer from ``loss_detection_deadline()`` (RFC 9002 App. A.8); that budget lives
    in the connection. ``ecn`` validates the peer's ECN counts (RFC 9000 §13.4.2); its
    codepoint says how the connection marks the packets it sends.
    """

    __slots__ = (
        "_first_rtt_sample",
        "_spaces",
        "_timer_base",
        "cc",
        "ecn",
        "handshake_confirmed",
        "has_handshake_keys",
        "is_client",
        "max_ack_delay",
        "peer_completed_address_validation",
        "pto_count",
        "rtt",
    )

    def __init__(
        self,
        cc: CongestionControl,
        *,
        is_client: bool,
        initial_rtt: float = kInitialRtt,
        max_ack_delay: float = DEFAULT_MAX_ACK_DELAY,
        ecn: bool = True,
    ) -> None:
        self.cc = cc
        self.rtt = RttEstimator(initial_rtt)
        self.is_client = is_client
        self.max_ack_delay = max_ack_delay
        self.handshake_confirmed = False
        self.has_handshake_keys = False
        # RFC 9002 App. A.6: a server takes the client's address validation as given.
        self.peer_completed_address_validation = not is_client
        self.pto_count = 0
        self.ecn = EcnValidation(ecn)
        self._spaces = [_Space(), _Space(), _Space()]
        self._first_rtt_sample: float | None = None
        # When the timer was last (re)armed: the client's anti-deadlock PTO runs from it.
        # None until the first packet goes out: before the ClientHello there is nothing
        # to probe for (a resuming client may queue 0-RTT data before it).
        self._timer_base: float | None = None
        cc.smoothed_rtt = self.rtt.smoothed_rtt

    @property
    def bytes_in_flight(self) -> int:
        return self.cc.bytes_in_flight

    def pto_interval(self) -> float:
        """The current PTO without backoff, which RFC 9000 §10 multiplies for the idle
        timeout floor and the closing and draining periods."""
        return self.rtt.pto(self.max_ack_delay, True)

    def unacked(self, space: int) -> ValuesView[SentPacket]:
        """Outstanding packets of a space, oldest first (a live view: copy to keep)."""
        return self._spaces[space].sent.values()

    def on_new_path(self) -> None:
        """RFC 9000 §9.4: a new path starts with fresh RTT, window and ECN validation."""
        self.rtt.reset()
        self.cc.reset()
        self.cc.smoothed_rtt = self.rtt.smoothed_rtt
        self.ecn.restart()
        self._first_rtt_sample = None

    def on_packet_sent(self, pkt: SentPacket) -> None:
        sp = self._spaces[pkt.space]
        sp.sent[pkt.packet_number] = pkt
        sp.largest_sent = pkt.packet_number
        if pkt.ect:
            self.ecn.on_sent(pkt.space)
        if pkt.ack_eliciting:
            sp.ack_eliciting_in_flight += 1
            sp.time_of_last_ack_eliciting = pkt.time_sent
        if pkt.in_flight:
            self.cc.on_packet_sent(pkt.sent_bytes, pkt.time_sent)
            self._timer_base = pkt.time_sent

    def on_packets_sent(self, pkts: list[SentPacket]) -> int:
        """:meth:`on_packet_sent` for packets of one space sent at one time, each
        ack-eliciting and in flight, all ECN-marked or none (a stream run); returns
        their size."""
        last = pkts[-1]
        sp = self._spaces[last.space]
        sent = sp.sent
        size = 0
        for pkt in pkts:
            sent[pkt.packet_number] = pkt
            size += pkt.sent_bytes
        sp.largest_sent = last.packet_number
        if last.ect:
            self.ecn.on_sent(last.space, len(pkts))
        sp.ack_eliciting_in_flight += len(pkts)
        sp.time_of_last_ack_eliciting = last.time_sent
        self.cc.on_packet_sent(size, last.time_sent)
        self._timer_base = last.time_sent
        return size

    def on_ack_received(
        self,
        space: int,
        ack_ranges: list[tuple[int, int]],
        ack_delay: float,
        now: float,
        ecn_counts: tuple[int, int, int] | None = None,
    ) -> AckResult:
        """Process one ACK frame (RFC 9002 App. A.7).

        ``ack_ranges`` are the frame's inclusive (low, high) ranges, highest first;
        ``ack_delay`` is already scaled to seconds; ``ecn_counts`` is (ECT(0), ECT(1),
        ECN-CE) of an ACK_ECN frame.
        """
        if not ack_ranges:
            return AckResult()
        sp = self._spaces[space]
        largest = ack_ranges[0][1]
        if largest > sp.largest_sent:
            raise QuicError(
                TransportError.PROTOCOL_VIOLATION,
                _ACK_ECN if ecn_counts is not None else _ACK,
                "ACK of a packet number never sent",
            )
        new_largest = largest if largest > sp.largest_acked else sp.largest_acked
        acked, gaps = _remove_acked(sp, ack_ranges, new_largest)
        result = AckResult(acked)
        if not acked:
            return result
        increased = new_largest != sp.largest_acked
        sp.largest_acked = new_largest
        if self.is_client and space == PacketNumberSpace.HANDSHAKE:
            self.peer_completed_address_validation = True

        eliciting = ect = 0
        for pkt in acked:
            if pkt.ack_eliciting:
                eliciting += 1
            if pkt.ect:
                ect += 1
        sp.ack_eliciting_in_flight -= eliciting
        newest = acked[-1]
        if eliciting and newest.packet_number == largest:
            if self._first_rtt_sample is None:
                self._first_rtt_sample = now
            # Clamped: the caller's clock reading for this ACK may predate the send time
            # another thread stamped on the packet by a few microseconds.
            self.rtt.update(
                max(now - newest.time_sent, kMinRttSample),
                ack_delay,
                self.max_ack_delay,
                self.handshake_confirmed,
            )
            self.cc.smoothed_rtt = self.rtt.smoothed_rtt
            result.rtt_sampled = True
        if increased:
            result.ecn_failed = self._process_ecn(space, ecn_counts, ect, newest.time_sent, now)

        lost, persistent = self._detect_lost(sp, gaps, now)
        if lost:
            result.lost = lost
            self._on_lost(lost, persistent, now)
            result.persistent_congestion = persistent
        self.cc.on_packets_acked(acked, now)
        # RFC 9002 §6.2.1: a client unsure whether the server validated its address keeps
        # backing off, so ACKs of its Initials do not reset the count.
        if self.peer_completed_address_validation or self.handshake_confirmed:
            self.pto_count = 0
        self._timer_base = now
        return result

    def loss_detection_deadline(self) -> float | None:
        """When ``on_loss_detection_timeout`` is due; None when no timer is needed."""
        loss_time, _ = self._earliest_loss_time()
        if loss_time is not None:
            return loss_time
        return self._pto_time_and_space()[0]

    def on_loss_detection_timeout(self, now: float) -> TimeoutAction:
        """RFC 9002 App. A.9. Called early, it does nothing and the deadline stands."""
        loss_time, space = self._earliest_loss_time()
        if loss_time is not None:
            if now < loss_time:
                return TimeoutAction()
            sp = self._spaces[space]
            lost, persistent = self._detect_lost(sp, (range(sp.scan_start, sp.largest_acked),), now)
            self._on_lost(lost, persistent, now)
            self._timer_base = now
            return TimeoutAction(lost, persistent)
        pto_time, space = self._pto_time_and_space()
        if pto_time is None or now < pto_time:
            return TimeoutAction()
        # Nothing ack-eliciting in flight means this is the client's anti-deadlock probe:
        # one packet earns the server amplification credit or proves the address.
        probe_count = 2 if self._ack_eliciting_in_flight() else 1
        self.pto_count += 1
        self.ecn.on_probe_timeout(self.pto_count)
        self._timer_base = now
        return TimeoutAction(probe_space=space, probe_count=probe_count)

    def discard_space(self, space: int) -> None:
        """Drop a space whose keys were discarded (RFC 9002 App. A.11)."""
        sp = self._spaces[space]
        self.cc.discard(sp.sent.values())
        sp.sent = {}
        sp.scan_start = sp.largest_sent + 1
        sp.ack_eliciting_in_flight = 0
        sp.loss_time = None
        self.pto_count = 0

    def _ack_eliciting_in_flight(self) -> bool:
        return any(sp.ack_eliciting_in_flight for sp in self._spaces)

    def _earliest_loss_time(self) -> tuple[float | None, PacketNumberSpace]:
        earliest: float | None = None
        earliest_space = PacketNumberSpace.INITIAL
        for space in SPACES:
            t = self._spaces[space].loss_time
            if t is not None and (earliest is None or t < earliest):
                earliest, earliest_space = t, space
        return earliest, earliest_space

    def _pto_time_and_space(self) -> tuple[float | None, PacketNumberSpace]:
        """RFC 9002 App. A.8 GetPtoTimeAndSpace and the cases that arm no timer."""
        backoff = 1 << self.pto_count
        rtt = self.rtt
        if not self._ack_eliciting_in_flight():
            if (
                self.peer_completed_address_validation
                or self.handshake_confirmed
                or self._timer_base is None
            ):
                return None, PacketNumberSpace.INITIAL
            space = (
                PacketNumberSpace.HANDSHAKE
                if self.has_handshake_keys
                else PacketNumberSpace.INITIAL
            )
            return self._timer_base + rtt.pto(0.0, False) * backoff, space
        pto_time: float | None = None
        pto_space = PacketNumberSpace.INITIAL
        for space in SPACES:
            sp = self._spaces[space]
            if not sp.ack_eliciting_in_flight:
                continue
            if space == PacketNumberSpace.APPLICATION:
                # 1-RTT probes wait for confirmation: until then the peer may be
                # unable to decrypt them, and the handshake spaces carry the timer.
                if not self.handshake_confirmed:
                    break
                duration = rtt.pto(self.max_ack_delay, True)
            else:
                duration = rtt.pto(0.0, False)
            t = sp.time_of_last_ack_eliciting + duration * backoff
            if pto_time is None or t < pto_time:
                pto_time, pto_space = t, space
        return pto_time, pto_space

    def _process_ecn(
        self,
        space: int,
        counts: tuple[int, int, int] | None,
        ect_acked: int,
        sent_time: float,
        now: float,
    ) -> bool:
        """RFC 9002 App. B.8 ProcessECN after validation; True if validation failed here.

        A CE increase is one congestion event, dated by the send time of the newest
        packet acknowledged, so marks from one window reduce it once.
        """
        ecn = self.ecn
        before = ecn.state
        if ecn.on_ack(space, counts, ect_acked) > 0:
            self.cc.on_ecn_ce(sent_time, now)
        return before != EcnState.FAILED and ecn.state == EcnState.FAILED

    def _detect_lost(
        self, sp: _Space, segments: tuple[range, ...] | list[range], now: float
    ) -> tuple[list[SentPacket], bool]:
        """RFC 9002 App. A.10 over the candidate packet numbers; also persistent congestion.

        Segments are runs of packet numbers not acknowledged by the current ACK,
        ascending. Persistent congestion (RFC 9002 §7.6.2) needs two ack-eliciting
        packets lost with nothing acknowledged in between, sent after the first RTT
        sample, further apart than the persistent congestion duration; a packet
        acknowledged (or not known) between them ends the lost span.
        """
        rtt = self.rtt
        largest_acked = sp.largest_acked
        loss_delay = kTimeThreshold * max(rtt.latest_rtt, rtt.smoothed_rtt)
        if loss_delay < kGranularity:
            loss_delay = kGranularity
        threshold_pn = largest_acked - kPacketThreshold
        first_sample = self._first_rtt_sample
        pc_after = first_sample if first_sample is not None else float("inf")
        pc_duration = rtt.pto(self.max_ack_delay, True) * kPersistentCongestionThreshold

        sent = sp.sent
        get = sent.get
        lost: list[SentPacket] = []
        loss_time: float | None = None
        scan_start = largest_acked + 1
        persistent = False
        span_first: float | None = None
        span_last = 0.0
        for segment in segments:
            if span_first is not None:
                persistent = persistent or span_last - span_first > pc_duration
                span_first = None
            for pn in segment:
                pkt = get(pn)
                if pkt is None:
                    if span_first is not None:
                        persistent = persistent or span_last - span_first > pc_duration
                        span_first = None
                    continue
                t = pkt.time_sent
                # time_sent <= now - loss_delay, written so that a timer set for
                # time_sent + loss_delay finds the packet lost despite rounding.
                deadline = t + loss_delay
                if deadline <= now or pn <= threshold_pn:
                    del sent[pn]
                    lost.append(pkt)
                    if pkt.ack_eliciting:
                        sp.ack_eliciting_in_flight -= 1
                        if t > pc_after and not pkt.is_pmtu_probe:
                            if span_first is None:
                                span_first = t
                            span_last = t
                    continue
                if span_first is not None:
                    persistent = persistent or span_last - span_first > pc_duration
                    span_first = None
                if loss_time is None or deadline < loss_time:
                    loss_time = deadline
                if pn < scan_start:
                    scan_start = pn
        if span_first is not None:
            persistent = persistent or span_last - span_first > pc_duration
        sp.loss_time = loss_time
        sp.scan_start = scan_start
        return lost, persistent

    def _on_lost(self, lost: list[SentPacket], persistent: bool, now: float) -> None:
        self.cc.on_packets_lost(lost, now)
        if persistent:
            self.cc.on_persistent_congestion(now)


def _remove_acked(
    sp: _Space, ack_ranges: list[tuple[int, int]], largest_acked: int
) -> tuple[list[SentPacket], list[range]]:
    """Pop the packets an ACK newly covers; return them and the gaps left to examine.

    Ranges are walked lowest first and clipped to ``scan_start``, so only packet
    numbers that may still be outstanding are visited.
    """
    pop = sp.sent.pop
    acked: list[SentPacket] = []
    gaps: list[range] = []
    cursor = sp.scan_start
    for low, high in reversed(ack_ranges):
        if high < cursor:
            continue
        if low > cursor:
            gaps.append(range(cursor, low))
        else:
            low = cursor
        for pn in range(low, high + 1):
            pkt = pop(pn, None)
            if pkt is not None:
                acked.append(pkt)
        cursor = high + 1
    if cursor < largest_acked:
        gaps.append(range(cursor, largest_acked))
    return acked, gaps
