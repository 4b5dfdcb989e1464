"""Loss detection, RTT estimation and PTO (RFC 9002), driven by a synthetic clock."""

import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quic import recovery
from quic.cong import Cubic, NewReno, kMinimumWindow
from quic.ecn import ECT_0, NOT_ECT, EcnState
from quic.errors import QuicError, TransportError
from quic.recovery import (
    LossRecovery,
    PacketNumberSpace,
    RttEstimator,
    SentPacket,
    kGranularity,
    kInitialRtt,
    kPacketThreshold,
    kTimeThreshold,
)

MSS = 1200
INITIAL = PacketNumberSpace.INITIAL
HANDSHAKE = PacketNumberSpace.HANDSHAKE
APP = PacketNumberSpace.APPLICATION


def ranges_of(pns):
    """ACK frame ranges, highest first, for a set of packet numbers."""
    out = []
    for pn in sorted(pns, reverse=True):
        if out and out[-1][0] == pn + 1:
            out[-1] = (pn, out[-1][1])
        else:
            out.append((pn, pn))
    return out


class Conn:
    """Stands in for the connection: numbers packets and feeds recovery."""

    def __init__(self, is_client=False, confirmed=True, cc=None):
        self.cc = cc or NewReno(MSS)
        self.rec = LossRecovery(self.cc, is_client=is_client)
        self.rec.handshake_confirmed = confirmed
        self.next_pn = [0, 0, 0]

    def send(self, space, now, size=MSS, **kw):
        pkt = SentPacket(self.next_pn[space], space, now, size, **kw)
        self.next_pn[space] += 1
        self.rec.on_packet_sent(pkt)
        return pkt

    def ack(self, space, pns, now, ack_delay=0.0, ecn=None):
        return self.rec.on_ack_received(space, ranges_of(pns), ack_delay, now, ecn)

    def sample(self, rtt=0.1, now=0.0, space=APP):
        """One packet out and back, for an RTT sample of ``rtt``."""
        pkt = self.send(space, now)
        return self.ack(space, [pkt.packet_number], now + rtt)


def pns(pkts):
    return [p.packet_number for p in pkts]


# RTT estimation (RFC 9002 §5)


def test_rtt_initial_values():
    est = RttEstimator()
    assert kInitialRtt == 0.333
    assert est.smoothed_rtt == 0.333
    assert est.rttvar == 0.333 / 2
    assert not est.has_sample
    assert est.pto(0.025, True) == pytest.approx(0.333 + 0.666 + 0.025)
    assert RttEstimator(0.1).pto(0.025, False) == pytest.approx(0.3)


def test_rtt_first_sample():
    est = RttEstimator()
    est.update(0.1, 0.05, 0.025, True)  # ack delay plays no part in the first sample
    assert est.has_sample
    assert est.latest_rtt == est.smoothed_rtt == est.min_rtt == 0.1
    assert est.rttvar == 0.05


def test_rtt_ack_delay_after_confirmation_capped_by_max_ack_delay():
    est = RttEstimator()
    est.update(0.1, 0.0, 0.025, True)
    est.update(0.2, 0.05, 0.025, True)
    adjusted = 0.2 - 0.025
    assert est.rttvar == pytest.approx(0.75 * 0.05 + 0.25 * abs(0.1 - adjusted))
    assert est.smoothed_rtt == pytest.approx(0.875 * 0.1 + 0.125 * adjusted)
    assert est.latest_rtt == 0.2
    assert est.min_rtt == 0.1


def test_rtt_ack_delay_ignored_before_confirmation():
    est = RttEstimator()
    est.update(0.1, 0.0, 0.025, False)
    est.update(0.2, 0.02, 0.025, False)
    assert est.rttvar == pytest.approx(0.75 * 0.05 + 0.25 * 0.1)
    assert est.smoothed_rtt == pytest.approx(0.875 * 0.1 + 0.125 * 0.2)


def test_rtt_ack_delay_not_subtracted_below_min_rtt():
    est = RttEstimator()
    est.update(0.1, 0.0, 0.025, True)
    est.update(0.11, 0.02, 0.025, True)  # 0.11 - 0.02 would undercut min_rtt
    assert est.smoothed_rtt == pytest.approx(0.875 * 0.1 + 0.125 * 0.11)


def test_min_rtt_never_adjusted_by_ack_delay():
    est = RttEstimator()
    est.update(0.1, 0.0, 0.025, True)
    est.update(0.08, 0.02, 0.025, True)
    assert est.min_rtt == 0.08
    est.update(0.3, 0.025, 0.025, True)
    assert est.min_rtt == 0.08


def test_rtt_sample_rules():
    conn = Conn()
    # Only a non-ack-eliciting packet newly acked: no sample.
    ack_only = conn.send(APP, 0.0, 50, ack_eliciting=False, in_flight=False)
    res = conn.ack(APP, [ack_only.packet_number], 0.1)
    assert pns(res.acked) == [0]
    assert not res.rtt_sampled
    assert not conn.rec.rtt.has_sample
    # Largest acknowledged newly acked and ack-eliciting: a sample.
    a = conn.send(APP, 1.0)
    b = conn.send(APP, 1.0)
    res = conn.ack(APP, [b.packet_number], 1.2)
    assert res.rtt_sampled
    assert conn.rec.rtt.latest_rtt == pytest.approx(0.2)
    assert conn.cc.smoothed_rtt == conn.rec.rtt.smoothed_rtt
    # The largest acknowledged was acked before: no sample even if `a` is new.
    res = conn.ack(APP, [a.packet_number, b.packet_number], 1.5)
    assert pns(res.acked) == [a.packet_number]
    assert not res.rtt_sampled
    assert conn.rec.rtt.latest_rtt == pytest.approx(0.2)


# Loss detection (RFC 9002 §6.1)


def test_packet_threshold():
    conn = Conn()
    sent = [conn.send(APP, i * 0.001) for i in range(6)]
    res = conn.ack(APP, [5], 0.05)
    assert kPacketThreshold == 3
    assert pns(res.acked) == [5]
    assert pns(res.lost) == [0, 1, 2]  # 5 >= pn + 3
    assert pns(conn.rec.unacked(APP)) == [3, 4]
    assert conn.cc.bytes_in_flight == 2 * MSS
    # The rest wait for the time threshold, measured from the oldest.
    loss_delay = kTimeThreshold * conn.rec.rtt.latest_rtt
    assert conn.rec.loss_detection_deadline() == pytest.approx(sent[3].time_sent + loss_delay)


def test_time_threshold_and_loss_timer():
    conn = Conn()
    conn.sample(0.1)
    old = conn.send(APP, 1.0)
    newer = conn.send(APP, 1.01)
    res = conn.ack(APP, [newer.packet_number], 1.11)
    assert res.lost == []
    loss_delay = kTimeThreshold * max(conn.rec.rtt.latest_rtt, conn.rec.rtt.smoothed_rtt)
    deadline = conn.rec.loss_detection_deadline()
    assert deadline == pytest.approx(old.time_sent + loss_delay)
    # Too early: nothing happens and the deadline stands.
    early = conn.rec.on_loss_detection_timeout(deadline - 0.001)
    assert early.lost == [] and early.probe_space is None
    assert conn.rec.loss_detection_deadline() == deadline
    action = conn.rec.on_loss_detection_timeout(deadline)
    assert action.lost == [old]
    assert action.probe_space is None
    assert conn.cc.bytes_in_flight == 0
    assert conn.cc.congestion_window == 6000  # halved from the initial window
    assert conn.rec.loss_detection_deadline() is None


def test_time_threshold_floor_is_granularity():
    conn = Conn()
    conn.sample(0.0)  # a zero RTT (loopback under a coarse clock)
    old = conn.send(APP, 1.0)
    newer = conn.send(APP, 1.0)
    conn.ack(APP, [newer.packet_number], 1.0)
    assert conn.rec.loss_detection_deadline() == pytest.approx(1.0 + kGranularity)
    assert conn.rec.on_loss_detection_timeout(1.0 + kGranularity).lost == [old]


def test_ack_of_unsent_packet_is_protocol_violation():
    conn = Conn()
    conn.send(APP, 0.0)
    with pytest.raises(QuicError) as exc:
        conn.ack(APP, [0, 1], 0.1)
    assert exc.value.code == TransportError.PROTOCOL_VIOLATION
    with pytest.raises(QuicError):
        conn.ack(HANDSHAKE, [0], 0.1)


def test_duplicate_and_reordered_acks():
    conn = Conn()
    for i in range(4):
        conn.send(APP, i * 0.001)
    assert pns(conn.ack(APP, [2, 3], 0.1).acked) == [2, 3]
    again = conn.ack(APP, [2, 3], 0.2)
    assert again.acked == [] and again.lost == [] and not again.rtt_sampled
    # pn 0 is lost by packet threshold (3 >= 0 + 3); pn 1 is a hole an older ACK fills.
    late = conn.ack(APP, [1], 0.21)
    assert pns(late.acked) == [1]
    assert pns(conn.rec.unacked(APP)) == []


def test_empty_ranges_do_nothing():
    conn = Conn()
    conn.send(APP, 0.0)
    res = conn.rec.on_ack_received(APP, [], 0.0, 0.1)
    assert res.acked == [] and conn.cc.bytes_in_flight == MSS


# Probe timeout (RFC 9002 §6.2)


def test_pto_application_space_backoff_and_reset():
    conn = Conn()
    conn.sample(0.1)  # srtt 0.1, rttvar 0.05
    pkt = conn.send(APP, 0.2)
    pto = 0.1 + 4 * 0.05 + 0.025
    assert conn.rec.loss_detection_deadline() == pytest.approx(0.2 + pto)
    action = conn.rec.on_loss_detection_timeout(0.2 + pto)
    assert action.probe_space == APP and action.probe_count == 2 and action.lost == []
    assert conn.rec.pto_count == 1
    assert conn.rec.loss_detection_deadline() == pytest.approx(0.2 + 2 * pto)
    conn.rec.on_loss_detection_timeout(0.2 + 2 * pto)
    assert conn.rec.pto_count == 2
    assert conn.rec.loss_detection_deadline() == pytest.approx(0.2 + 4 * pto)
    # A PTO declares nothing lost and leaves the window alone.
    assert conn.cc.bytes_in_flight == MSS
    assert conn.cc.congestion_window == 12000
    conn.ack(APP, [pkt.packet_number], 1.0)
    assert conn.rec.pto_count == 0
    assert conn.rec.loss_detection_deadline() is None


def test_pto_granularity_floor():
    conn = Conn()
    conn.sample(0.0)
    conn.send(APP, 1.0)
    assert conn.rec.loss_detection_deadline() == pytest.approx(1.0 + kGranularity + 0.025)


def test_pto_uses_peer_max_ack_delay():
    conn = Conn()
    conn.rec.max_ack_delay = 0.1
    conn.sample(0.1)
    conn.send(APP, 0.2)
    assert conn.rec.loss_detection_deadline() == pytest.approx(0.2 + 0.3 + 0.1)


def test_pto_earliest_of_initial_and_handshake_without_max_ack_delay():
    conn = Conn(is_client=True, confirmed=False)
    conn.send(INITIAL, 0.0)
    conn.send(HANDSHAKE, 0.05)
    conn.send(APP, 0.06)  # 0-RTT: no application PTO before confirmation
    pto = kInitialRtt + 4 * kInitialRtt / 2
    assert conn.rec.loss_detection_deadline() == pytest.approx(pto)
    action = conn.rec.on_loss_detection_timeout(pto)
    assert action.probe_space == INITIAL and action.probe_count == 2
    conn.rec.discard_space(INITIAL)
    assert conn.rec.pto_count == 0
    assert conn.rec.loss_detection_deadline() == pytest.approx(0.05 + pto)
    conn.rec.discard_space(HANDSHAKE)
    # Only application packets in flight and not confirmed: no timer at all.
    conn.rec.peer_completed_address_validation = True
    assert conn.rec.loss_detection_deadline() is None
    conn.rec.handshake_confirmed = True
    assert conn.rec.loss_detection_deadline() == pytest.approx(0.06 + pto + 0.025)


def test_no_timer_when_nothing_ack_eliciting_in_flight():
    server = Conn(is_client=False, confirmed=False)
    server.send(APP, 0.0, 50, ack_eliciting=False, in_flight=False)
    assert server.rec.loss_detection_deadline() is None
    confirmed_client = Conn(is_client=True, confirmed=True)
    confirmed_client.send(INITIAL, 0.0)
    confirmed_client.ack(INITIAL, [0], 0.1)
    assert confirmed_client.rec.loss_detection_deadline() is None


@pytest.mark.parametrize("handshake_keys", [False, True])
def test_client_anti_deadlock_probe(handshake_keys):
    conn = Conn(is_client=True, confirmed=False)
    conn.send(INITIAL, 0.0)
    conn.rec.has_handshake_keys = handshake_keys
    conn.ack(INITIAL, [0], 0.1)  # nothing ack-eliciting left in flight
    pto = 0.1 + 4 * 0.05
    assert conn.rec.loss_detection_deadline() == pytest.approx(0.1 + pto)
    action = conn.rec.on_loss_detection_timeout(0.1 + pto)
    assert action.probe_space == (HANDSHAKE if handshake_keys else INITIAL)
    assert action.probe_count == 1
    assert conn.rec.pto_count == 1
    # The next one runs from when this one fired, backed off.
    assert conn.rec.loss_detection_deadline() == pytest.approx(0.1 + pto + 2 * pto)


def test_client_initial_ack_does_not_reset_pto_count():
    conn = Conn(is_client=True, confirmed=False)
    first = conn.send(INITIAL, 0.0)
    deadline = conn.rec.loss_detection_deadline()
    conn.rec.on_loss_detection_timeout(deadline)
    conn.send(INITIAL, deadline)  # the probe
    assert conn.rec.pto_count == 1
    conn.ack(INITIAL, [first.packet_number], deadline + 0.1)
    assert conn.rec.pto_count == 1
    conn.rec.has_handshake_keys = True
    hs = conn.send(HANDSHAKE, deadline + 0.2)
    conn.ack(HANDSHAKE, [hs.packet_number], deadline + 0.3)
    assert conn.rec.peer_completed_address_validation
    assert conn.rec.pto_count == 0


def test_server_ack_resets_pto_count():
    conn = Conn(is_client=False, confirmed=False)
    first = conn.send(INITIAL, 0.0)
    conn.rec.on_loss_detection_timeout(conn.rec.loss_detection_deadline())
    assert conn.rec.pto_count == 1
    conn.ack(INITIAL, [first.packet_number], 1.1)
    assert conn.rec.pto_count == 0


def test_discard_space_removes_bytes_in_flight_and_timers():
    conn = Conn(is_client=True, confirmed=False)
    conn.send(INITIAL, 0.0)
    conn.send(INITIAL, 0.01, 50, ack_eliciting=False, in_flight=False)
    conn.send(HANDSHAKE, 0.02)
    assert conn.rec.bytes_in_flight == 2 * MSS
    conn.rec.discard_space(INITIAL)
    assert conn.rec.bytes_in_flight == MSS
    assert list(conn.rec.unacked(INITIAL)) == []
    assert conn.cc.congestion_window == 12000
    assert conn.rec.loss_detection_deadline() == pytest.approx(0.02 + 3 * kInitialRtt)
    # A late ACK for the discarded space finds nothing.
    assert conn.ack(INITIAL, [0], 0.5).acked == []


def test_discard_space_clears_loss_timer():
    conn = Conn()
    conn.send(HANDSHAKE, 0.0)
    conn.send(HANDSHAKE, 0.001)
    conn.ack(HANDSHAKE, [1], 0.1)
    assert conn.rec.loss_detection_deadline() is not None
    conn.rec.discard_space(HANDSHAKE)
    assert conn.rec.loss_detection_deadline() is None
    assert conn.rec.bytes_in_flight == 0


# Persistent congestion (RFC 9002 §7.6)


# After a 0.1 s sample and another 0.1 s sample with the ACK that declares the loss:
# srtt 0.1, rttvar 0.0375, so (0.1 + 4 * 0.0375 + 0.025) * 3.
PC_DURATION = 0.825


def _lose_span(span, cc=None):
    """Everything sent over ``span`` seconds after an RTT sample is lost; then an ACK."""
    conn = Conn(cc=cc)
    conn.sample(0.1)  # srtt 0.1, rttvar 0.05
    start = 1.0
    lost = [conn.send(APP, start + span * i / 10) for i in range(11)]
    last = conn.send(APP, start + span + 0.05)
    res = conn.ack(APP, [last.packet_number], start + span + 0.15)
    assert res.lost == lost
    return conn, res


@pytest.mark.parametrize("cc_cls", [NewReno, Cubic])
def test_persistent_congestion_collapses_window(cc_cls):
    conn, res = _lose_span(PC_DURATION + 0.005, cc_cls(MSS))
    assert conn.rec.rtt.pto(0.025, True) * 3 == pytest.approx(PC_DURATION)
    assert res.persistent_congestion
    # Collapsed; then, recovery left (RFC 9002 App. B.8), slow start on the packet
    # this same ACK acknowledged.
    assert conn.cc.congestion_window == kMinimumWindow(MSS) + MSS


@pytest.mark.parametrize("cc_cls", [NewReno, Cubic])
def test_shorter_lost_span_is_not_persistent_congestion(cc_cls):
    conn, res = _lose_span(PC_DURATION - 0.005, cc_cls(MSS))
    assert not res.persistent_congestion
    assert conn.cc.congestion_window == int(12000 * (0.5 if cc_cls is NewReno else 0.7))


def test_persistent_congestion_needs_packets_after_first_rtt_sample():
    conn = Conn()
    lost = [conn.send(APP, i * 0.2) for i in range(11)]  # 2 s of packets, no sample yet
    last = conn.send(APP, 2.1)
    res = conn.ack(APP, [last.packet_number], 2.2)
    assert res.lost == lost
    assert not res.persistent_congestion


def test_acknowledged_packet_breaks_lost_span():
    conn = Conn()
    conn.sample(0.1)
    early = [conn.send(APP, 1.0 + i * 0.1) for i in range(6)]
    survivor = conn.send(APP, 1.6)
    late = [conn.send(APP, 1.7 + i * 0.1) for i in range(6)]
    last = conn.send(APP, 2.5)
    res = conn.ack(APP, [survivor.packet_number, last.packet_number], 2.6)
    assert res.lost == early + late  # each span 0.5 s, together 1.2 s > PC_DURATION
    assert not res.persistent_congestion


def test_persistent_congestion_via_pto_probes():
    """The usual path: nothing comes back, PTOs fire, a late probe is acknowledged."""
    conn = Conn()
    conn.sample(0.1)
    now = 1.0
    sent = [conn.send(APP, now)]
    for _ in range(3):
        now = conn.rec.loss_detection_deadline()
        action = conn.rec.on_loss_detection_timeout(now)
        sent += [conn.send(APP, now) for _ in range(action.probe_count)]
    res = conn.ack(APP, [sent[-1].packet_number], now + 0.1)
    assert res.lost == sent[:-2]  # its twin is not yet overdue
    assert res.persistent_congestion
    assert conn.cc.congestion_window == kMinimumWindow(MSS) + MSS


def test_lost_pmtu_probe_is_not_congestion():
    conn = Conn()
    conn.sample(0.1)
    probe = conn.send(APP, 1.0, 1500, is_pmtu_probe=True)
    others = [conn.send(APP, 1.0) for _ in range(3)]
    res = conn.ack(APP, pns(others), 1.1)
    assert res.lost == [probe]
    assert conn.cc.congestion_window == 12000
    assert conn.cc.bytes_in_flight == 0


def test_lost_pmtu_probes_do_not_make_persistent_congestion():
    conn = Conn()
    conn.sample(0.1)
    probes = [conn.send(APP, 1.0 + i * 0.2, 1500, is_pmtu_probe=True) for i in range(10)]
    last = conn.send(APP, 3.0)
    res = conn.ack(APP, [last.packet_number], 3.1)
    assert res.lost == probes
    assert not res.persistent_congestion
    assert conn.cc.ssthresh == float("inf")
    assert conn.cc.congestion_window == 12000 + MSS  # slow start went on


# ECN (RFC 9000 §13.4.2, RFC 9002 §7.1)


def test_ecn_ce_reduces_window_once_per_rtt():
    conn = Conn()
    a = conn.send(APP, 0.0, ect=True)
    assert not conn.ack(APP, [a.packet_number], 0.1, ecn=(1, 0, 0)).ecn_failed
    b = conn.send(APP, 0.2, ect=True)
    c = conn.send(APP, 0.2, ect=True)
    conn.ack(APP, [b.packet_number], 0.3, ecn=(1, 0, 1))
    assert conn.cc.congestion_window == 6000
    conn.ack(APP, [c.packet_number], 0.31, ecn=(1, 0, 2))  # sent before the reduction
    assert conn.cc.congestion_window == 6000
    assert conn.rec.ecn.state != EcnState.FAILED


def test_ecn_validation_fails_when_counts_decrease():
    conn = Conn()
    a = conn.send(APP, 0.0, ect=True)
    conn.ack(APP, [0], 0.1, ecn=(1, 0, 0))
    b = conn.send(APP, 0.2, ect=True)
    res = conn.ack(APP, [a.packet_number, b.packet_number], 0.3, ecn=(0, 0, 1))
    assert res.ecn_failed
    assert conn.rec.ecn.state == EcnState.FAILED
    assert conn.cc.congestion_window == 12000  # invalid counts signal nothing
    # Once failed, later ACKs are not validated again.
    conn.send(APP, 0.4, ect=True)
    assert not conn.ack(APP, [2], 0.5).ecn_failed


def test_ecn_validation_fails_on_too_few_marks():
    conn = Conn()
    sent = [conn.send(APP, 0.0, ect=True) for _ in range(3)]
    assert conn.ack(APP, pns(sent), 0.1, ecn=(2, 0, 0)).ecn_failed


def test_ecn_validation_fails_without_counts():
    conn = Conn()
    conn.send(APP, 0.0, ect=True)
    assert conn.ack(APP, [0], 0.1).ecn_failed


def test_ecn_validation_fails_on_remarking_or_overcount():
    conn = Conn()
    conn.send(APP, 0.0, ect=True)
    assert conn.ack(APP, [0], 0.1, ecn=(0, 1, 0)).ecn_failed
    conn = Conn()
    conn.send(APP, 0.0, ect=True)
    assert conn.ack(APP, [0], 0.1, ecn=(5, 0, 0)).ecn_failed


def test_ecn_unmarked_packets_need_no_counts():
    conn = Conn()
    conn.send(APP, 0.0)
    res = conn.ack(APP, [0], 0.1)
    assert not res.ecn_failed and conn.rec.ecn.state != EcnState.FAILED


def test_ecn_not_validated_on_ack_that_does_not_raise_largest():
    conn = Conn()
    a, b = conn.send(APP, 0.0, ect=True), conn.send(APP, 0.0, ect=True)
    conn.ack(APP, [b.packet_number], 0.1, ecn=(1, 0, 0))
    # Reordered older ACK: counts look short, but it is not validated.
    res = conn.ack(APP, [a.packet_number], 0.1, ecn=(0, 0, 0))
    assert not res.ecn_failed


def test_ecn_validation_succeeds_when_marks_are_counted():
    conn = Conn()
    assert conn.rec.ecn.state == EcnState.TESTING
    assert conn.rec.ecn.codepoint == ECT_0
    sent = [conn.send(APP, 0.0, ect=True) for _ in range(3)]
    conn.ack(APP, pns(sent[:1]), 0.1, ecn=(1, 0, 0))
    assert conn.rec.ecn.state == EcnState.CAPABLE
    # CE counts as a mark that arrived; validation holds and the window halves.
    assert not conn.ack(APP, pns(sent), 0.2, ecn=(2, 0, 1)).ecn_failed
    assert conn.rec.ecn.state == EcnState.CAPABLE
    assert conn.cc.congestion_window == 6000


def test_ecn_failure_stops_marking():
    conn = Conn()
    conn.send(APP, 0.0, ect=True)
    conn.ack(APP, [0], 0.1, ecn=(0, 0, 0))  # bleached
    assert conn.rec.ecn.codepoint == NOT_ECT


def test_ecn_counts_checked_per_space():
    conn = Conn(confirmed=False)
    conn.send(INITIAL, 0.0, ect=True)
    conn.ack(INITIAL, [0], 0.1, ecn=(1, 0, 0))
    conn.send(HANDSHAKE, 0.1, ect=True)
    # The Handshake space's counts start from zero, not from the Initial space's.
    assert not conn.ack(HANDSHAKE, [0], 0.2, ecn=(1, 0, 0)).ecn_failed
    assert conn.rec.ecn.state == EcnState.CAPABLE


def test_ecn_stops_marking_after_probe_timeouts_while_testing():
    conn = Conn()
    conn.send(APP, 0.0, ect=True)
    for _ in range(2):
        deadline = conn.rec.loss_detection_deadline()
        assert conn.rec.on_loss_detection_timeout(deadline).probe_count
    assert conn.rec.ecn.state == EcnState.FAILED


def test_ecn_probe_timeouts_after_validation_keep_marking():
    conn = Conn()
    conn.send(APP, 0.0, ect=True)
    conn.ack(APP, [0], 0.1, ecn=(1, 0, 0))
    conn.send(APP, 0.2, ect=True)
    for _ in range(3):
        conn.rec.on_loss_detection_timeout(conn.rec.loss_detection_deadline())
    assert conn.rec.ecn.state == EcnState.CAPABLE


def test_ecn_disabled_never_marks_nor_validates():
    rec = LossRecovery(NewReno(MSS), is_client=False, ecn=False)
    assert rec.ecn.state == EcnState.DISABLED
    assert rec.ecn.codepoint == NOT_ECT
    rec.on_new_path()
    assert rec.ecn.state == EcnState.DISABLED


def test_initial_rtt_and_pto_interval():
    rec = LossRecovery(NewReno(MSS), is_client=True, initial_rtt=0.1)
    assert rec.rtt.smoothed_rtt == 0.1
    assert rec.cc.smoothed_rtt == 0.1
    assert rec.pto_interval() == pytest.approx(0.1 + 0.2 + 0.025)
    rec.max_ack_delay = 0.0
    assert rec.pto_interval() == pytest.approx(0.3)


def test_on_new_path_resets_estimates():
    conn = Conn()
    conn.sample(0.05)
    conn.send(APP, 0.2, ect=True)
    conn.ack(APP, [1], 0.3)  # marks acknowledged without counts: validation fails
    assert conn.rec.ecn.state == EcnState.FAILED
    conn.rec.on_new_path()
    assert conn.rec.rtt.smoothed_rtt == kInitialRtt
    assert conn.cc.smoothed_rtt == kInitialRtt
    assert conn.rec.ecn.state != EcnState.FAILED
    assert conn.cc.congestion_window == 12000


# Cost of an ACK (no quadratic behaviour, work proportional to what it newly covers)


def _count_recovery_lines(fn):
    """Lines executed in quic/recovery.py while running fn: a count of work, not time."""
    count = 0
    target = recovery.__file__

    def tracer(frame, event, arg):
        nonlocal count
        if frame.f_code.co_filename != target:
            return None
        if event == "line":
            count += 1
        return tracer

    old = sys.gettrace()
    sys.settrace(tracer)
    try:
        fn()
    finally:
        sys.settrace(old)
    return count


def test_ack_of_ten_thousand_packets_in_one_range():
    conn = Conn()
    sent = [conn.send(APP, i * 1e-5) for i in range(10_000)]
    res = conn.rec.on_ack_received(APP, [(0, 9_999)], 0.0, 0.2)
    assert res.acked == sent
    assert res.lost == []
    assert res.rtt_sampled
    assert conn.cc.bytes_in_flight == 0
    # The next ACK repeats the range and adds one packet: constant work.
    nxt = conn.send(APP, 0.3)
    lines = _count_recovery_lines(
        lambda: conn.rec.on_ack_received(APP, [(0, nxt.packet_number)], 0.0, 0.4)
    )
    assert lines < 200


def test_ack_work_independent_of_packets_in_flight():
    def cost(in_flight):
        conn = Conn()
        for i in range(in_flight):
            conn.send(APP, i * 1e-6)
        conn.rec.on_ack_received(APP, [(0, 0)], 0.0, 0.1)
        return _count_recovery_lines(
            lambda: conn.rec.on_ack_received(APP, [(1, 1), (0, 0)], 0.0, 0.1)
        )

    assert cost(10_000) == cost(10)


def test_many_ranges_repeated_cost_little():
    conn = Conn()
    for i in range(2_000):
        conn.send(APP, i * 1e-5)
    every_other = [(pn, pn) for pn in range(1_998, -1, -2)]
    res = conn.rec.on_ack_received(APP, every_other, 0.0, 0.1)
    assert len(res.acked) == 1_000
    assert len(res.lost) == 998  # odd numbers, but for the last within the threshold
    lines = _count_recovery_lines(
        lambda: conn.rec.on_ack_received(APP, [(1_999, 1_999), *every_other], 0.0, 0.2)
    )
    # One pass over the frame's ranges; no packet-number walk over what is settled.
    assert lines < 5 * len(every_other)


# Against a direct reading of RFC 9002 App. A


@given(st.data())
def test_matches_reference_model(data):
    conn = Conn()
    rec = conn.rec
    outstanding: dict[int, SentPacket] = {}
    received: set[int] = set()
    largest = -1
    now = 0.0
    for _ in range(data.draw(st.integers(1, 25), label="steps")):
        now += data.draw(st.sampled_from([0.0, 0.001, 0.01, 0.05, 0.3]))
        op = data.draw(st.sampled_from(["send", "ack", "timer"]))
        if op == "send":
            for _ in range(data.draw(st.integers(1, 8))):
                eliciting = data.draw(st.booleans())
                pkt = conn.send(
                    APP, now, MSS if eliciting else 40, ack_eliciting=eliciting, in_flight=eliciting
                )
                outstanding[pkt.packet_number] = pkt
        elif op == "ack" and conn.next_pn[APP]:
            top = conn.next_pn[APP] - 1
            received |= data.draw(st.sets(st.integers(0, top), min_size=1, max_size=12))
            expected_acked = sorted(pn for pn in received if pn in outstanding)
            res = rec.on_ack_received(APP, ranges_of(received), 0.0, now)
            assert pns(res.acked) == expected_acked
            for pn in expected_acked:
                del outstanding[pn]
            if expected_acked:
                largest = max(largest, max(received))
                assert pns(res.lost) == _reference_lost(rec, outstanding, largest, now)
            else:
                assert res.lost == []
            for pkt in res.lost:
                del outstanding[pkt.packet_number]
        elif op == "timer":
            deadline = rec.loss_detection_deadline()
            if deadline is not None and deadline <= now:
                has_loss_timer = any(pn < largest for pn in outstanding)
                action = rec.on_loss_detection_timeout(now)
                if action.probe_space is None:
                    assert has_loss_timer
                    assert pns(action.lost) == _reference_lost(rec, outstanding, largest, now)
                for pkt in action.lost:
                    del outstanding[pkt.packet_number]
        assert pns(rec.unacked(APP)) == sorted(outstanding)
        in_flight = sum(p.sent_bytes for p in outstanding.values() if p.in_flight)
        assert rec.bytes_in_flight == in_flight


def _reference_lost(rec, outstanding, largest, now):
    loss_delay = max(kTimeThreshold * max(rec.rtt.latest_rtt, rec.rtt.smoothed_rtt), kGranularity)
    return sorted(
        pn
        for pn, pkt in outstanding.items()
        if pn < largest and (pkt.time_sent + loss_delay <= now or largest >= pn + kPacketThreshold)
    )
