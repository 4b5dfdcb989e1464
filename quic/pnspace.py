"""Packet number spaces (RFC 9000 §12.3, §13.2): what we received and when to ACK it.

Each space numbers its own packets. On the receive side it remembers which packet
numbers arrived, as a short list of ranges, so it can detect duplicates and build ACK
frames; on the send side it hands out the next packet number and remembers the largest
one the peer acknowledged, which sets how many bytes a packet number needs.
"""

from __future__ import annotations

from bisect import bisect_right

from .ecn import CE, COUNT_INDEX

# RFC 9000 §13.2.2: acknowledge at least every second ack-eliciting packet.
ACK_ELICITING_THRESHOLD = 2
# Ranges kept for ACK frames and duplicate detection; older ones are forgotten and
# anything below them counts as a duplicate (RFC 9000 §13.2.3 lets a receiver do so).
MAX_ACK_RANGES = 64


class PnSpace:
    """One packet number space of one connection."""

    __slots__ = (
        "ack_eliciting_unacked",
        "ack_immediately",
        "ecn_counts",
        "floor",
        "largest_acked",
        "largest_received",
        "largest_received_time",
        "next_pn",
        "ranges",
        "unreported",
    )

    def __init__(self) -> None:
        self.next_pn = 0
        self.largest_acked: int | None = None
        # Received packet numbers as sorted, disjoint, non-adjacent [low, high] ranges.
        self.ranges: list[list[int]] = []
        self.floor = 0  # every packet number below this is treated as already seen
        self.largest_received = -1
        self.largest_received_time = 0.0
        self.ack_eliciting_unacked = 0
        self.ack_immediately = False
        self.unreported = False  # a packet arrived that no ACK of ours has listed yet
        # ECT(0), ECT(1), CE counts of the packets received (RFC 9000 §13.4.1); None
        # until a marked one arrives, so ACKs carry counts only on paths that mark.
        self.ecn_counts: list[int] | None = None

    # send side

    def take_pn(self) -> int:
        pn = self.next_pn
        self.next_pn = pn + 1
        return pn

    def on_acked(self, largest: int) -> None:
        if self.largest_acked is None or largest > self.largest_acked:
            self.largest_acked = largest

    # receive side

    def is_duplicate(self, pn: int) -> bool:
        if pn > self.largest_received:
            return False  # newer than any received, the usual case (floor is below)
        if pn < self.floor:
            return True
        ranges = self.ranges
        i = bisect_right(ranges, [pn, float("inf")]) - 1
        return i >= 0 and ranges[i][1] >= pn

    def on_received(self, pn: int, ack_eliciting: bool, now: float, ecn: int = 0) -> None:
        """Record a packet that decrypted; call after :meth:`is_duplicate` said no.

        ``ecn`` is the ECN codepoint of the datagram that carried it.
        """
        ranges = self.ranges
        self.unreported = True
        largest = self.largest_received
        if pn == largest + 1 and ranges:
            # The next in order, the usual case: the newest range (the one that holds
            # the largest, never forgotten) grows.
            ranges[-1][1] = pn
            self.largest_received = pn
            self.largest_received_time = now
        else:
            if pn > largest:
                if largest >= 0:
                    # A gap: RFC 9000 §13.2.1 asks for an immediate ACK on reordering.
                    self.ack_immediately = True
                self.largest_received = pn
                self.largest_received_time = now
                ranges.append([pn, pn])
            else:
                self.ack_immediately = True
                self._insert(pn)
            if len(ranges) > MAX_ACK_RANGES:
                dropped = ranges.pop(0)
                self.floor = dropped[1] + 1
        if ecn:
            counts = self.ecn_counts
            if counts is None:
                counts = self.ecn_counts = [0, 0, 0]
            counts[COUNT_INDEX[ecn]] += 1
            if ecn == CE:
                # RFC 9000 §13.2.1: report congestion without delay.
                self.ack_immediately = True
        if ack_eliciting:
            self.ack_eliciting_unacked += 1
            if self.ack_eliciting_unacked >= ACK_ELICITING_THRESHOLD:
                self.ack_immediately = True

    def on_received_run(self, last: int, count: int, now: float, ecn: int) -> None:
        """:meth:`on_received` for ``count`` ack-eliciting packets, each the next in order,
        up to ``last``: the first was ``largest_received + 1``, and a range is held."""
        self.ranges[-1][1] = last
        self.largest_received = last
        self.largest_received_time = now
        self.unreported = True
        if ecn:
            counts = self.ecn_counts
            if counts is None:
                counts = self.ecn_counts = [0, 0, 0]
            counts[COUNT_INDEX[ecn]] += count
            if ecn == CE:
                self.ack_immediately = True
        self.ack_eliciting_unacked += count
        if self.ack_eliciting_unacked >= ACK_ELICITING_THRESHOLD:
            self.ack_immediately = True

    def _insert(self, pn: int) -> None:
        ranges = self.ranges
        i = bisect_right(ranges, [pn, float("inf")])
        prev = ranges[i - 1] if i > 0 else None
        nxt = ranges[i] if i < len(ranges) else None
        if prev is not None and prev[1] + 1 == pn:
            prev[1] = pn
            if nxt is not None and nxt[0] == pn + 1:
                prev[1] = nxt[1]
                del ranges[i]
        elif nxt is not None and nxt[0] == pn + 1:
            nxt[0] = pn
        else:
            ranges.insert(i, [pn, pn])

    def ack_deadline(self, max_ack_delay: float) -> float | None:
        """When an ACK must be sent at the latest; None when nothing needs acknowledging."""
        if not self.ack_eliciting_unacked:
            return None
        if self.ack_immediately:
            return self.largest_received_time
        return self.largest_received_time + max_ack_delay

    def ack_ranges(self) -> list[tuple[int, int]]:
        """Received ranges, highest first, as an ACK frame lists them."""
        return [(low, high) for low, high in reversed(self.ranges)]

    def on_ack_sent(self) -> None:
        self.ack_eliciting_unacked = 0
        self.ack_immediately = False
        self.unreported = False

    def on_ack_of_ack(self, largest_in_ack: int) -> None:
        """The peer got an ACK of ours covering up to ``largest_in_ack``: stop repeating those
        ranges (RFC 9000 §13.2.4). Keep the newest range so duplicates are still caught."""
        ranges = self.ranges
        while len(ranges) > 1 and ranges[0][1] <= largest_in_ack:
            self.floor = ranges.pop(0)[1] + 1
