"""Congestion control (RFC 9002 §7, RFC 9438) and pacing, driven by a synthetic clock."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quic.cong import (
    ALPHA_CUBIC,
    BETA_CUBIC,
    C_CUBIC,
    PACING_BURST_DATAGRAMS,
    PACING_BURST_INTERVAL,
    PACING_WAKE_DATAGRAMS,
    Cubic,
    NewReno,
    Pacer,
    kInitialWindow,
    kMinimumWindow,
    make_congestion_control,
)
from quic.recovery import SentPacket
from quic.uapi import QUIC_CONG_ALG_CUBIC, QUIC_CONG_ALG_MAX, QUIC_CONG_ALG_RENO

MSS = 1200
RTT = 0.1


class Flow:
    """A sender that fills the window each round and sees it all acknowledged an RTT later."""

    def __init__(self, cc):
        self.cc = cc
        self.pn = 0

    def send(self, count, now, size=MSS, **kw):
        pkts = []
        for _ in range(count):
            pkt = SentPacket(self.pn, 2, now, size, **kw)
            self.pn += 1
            self.cc.on_packet_sent(size, now)
            pkts.append(pkt)
        return pkts

    def send_window(self, now):
        return self.send(self.cc.congestion_window // MSS, now)

    def round(self, now, rtt=RTT):
        pkts = self.send_window(now)
        self.cc.on_packets_acked(pkts, now + rtt)
        return now + rtt

    def grow_then_lose(self, cc_rounds, now=0.0, rtt=RTT):
        """Slow start for some rounds, then lose one packet of the next window."""
        for _ in range(cc_rounds):
            now = self.round(now, rtt)
        before = self.cc.congestion_window
        pkts = self.send_window(now)
        self.cc.on_packets_lost(pkts[:1], now + rtt / 2)
        self.cc.on_packets_acked(pkts[1:], now + rtt)
        return before, now + rtt


def w_cubic(t, k, w_max):
    """RFC 9438 Figure 1, in bytes."""
    return C_CUBIC * (t - k) ** 3 * MSS + w_max


def test_window_constants():
    assert kInitialWindow(1200) == 12000
    assert kInitialWindow(1472) == 14720
    assert kInitialWindow(1500) == 14720
    assert kInitialWindow(9000) == 18000
    assert kMinimumWindow(1200) == 2400


def test_factory():
    assert isinstance(make_congestion_control(QUIC_CONG_ALG_RENO, MSS), NewReno)
    cubic = make_congestion_control(QUIC_CONG_ALG_CUBIC, 1400)
    assert isinstance(cubic, Cubic)
    assert cubic.max_datagram_size == 1400
    for algo in (QUIC_CONG_ALG_MAX, -1, 7):
        with pytest.raises(ValueError):
            make_congestion_control(algo, MSS)


@pytest.mark.parametrize("cls", [NewReno, Cubic])
def test_initial_state_and_available(cls):
    cc = cls(MSS)
    assert cc.congestion_window == 12000
    assert cc.ssthresh == math.inf
    assert cc.bytes_in_flight == 0
    assert cc.available(0.0) == 12000
    Flow(cc).send(11, 0.0)
    assert cc.bytes_in_flight == 13200
    assert cc.available(0.0) == 0


@pytest.mark.parametrize("cls", [NewReno, Cubic])
def test_slow_start_doubles_per_rtt(cls):
    cc = cls(MSS)
    flow = Flow(cc)
    now = 0.0
    for expected in (24000, 48000, 96000):
        now = flow.round(now)
        assert cc.congestion_window == expected
        assert cc.bytes_in_flight == 0


@pytest.mark.parametrize("cls", [NewReno, Cubic])
def test_no_growth_when_application_limited(cls):
    cc = cls(MSS)
    flow = Flow(cc)
    cc.on_packets_acked(flow.send(2, 0.0), RTT)
    assert cc.congestion_window == 12000
    # Also in congestion avoidance.
    flow.grow_then_lose(2)
    window = cc.congestion_window
    now = 1.0
    for _ in range(20):
        cc.on_packets_acked(flow.send(3, now), now + RTT)
        now += RTT
    assert cc.congestion_window == window


def test_newreno_loss_halves_once_per_recovery_period():
    cc = NewReno(MSS)
    flow = Flow(cc)
    flow.round(flow.round(0.0))
    assert cc.congestion_window == 48000
    first = flow.send(10, 1.0)
    second = flow.send(10, 1.5)
    cc.on_packets_lost(first[:1], 2.0)
    assert cc.congestion_window == 24000
    assert cc.ssthresh == 24000
    # Sent before the recovery period began: the same congestion event.
    cc.on_packets_lost(second[:1], 2.2)
    cc.on_packets_lost(first[1:2], 2.3)
    assert cc.congestion_window == 24000
    # Acks of packets sent before recovery do not grow the window.
    cc.on_packets_acked(first[2:] + second[1:], 2.4)
    assert cc.congestion_window == 24000
    # A packet sent during recovery, once lost, starts a new period.
    later = flow.send(2, 2.5)
    cc.on_packets_lost(later[:1], 3.0)
    assert cc.congestion_window == 12000


def test_newreno_congestion_avoidance_one_datagram_per_window():
    cc = NewReno(MSS)
    flow = Flow(cc)
    _, now = flow.grow_then_lose(2)
    assert cc.congestion_window == 24000
    for expected in (25200, 26400, 27600, 28800):
        now = flow.round(now)
        assert cc.congestion_window == expected


def test_newreno_loss_floor_is_minimum_window():
    cc = NewReno(MSS)
    flow = Flow(cc)
    now = 0.0
    for _ in range(6):
        pkts = flow.send(1, now)
        cc.on_packets_lost(pkts, now + 0.05)
        now += 1.0
    assert cc.congestion_window == kMinimumWindow(MSS)
    assert cc.bytes_in_flight == 0


@pytest.mark.parametrize("cls", [NewReno, Cubic])
def test_persistent_congestion_collapses_window(cls):
    cc = cls(MSS)
    flow = Flow(cc)
    flow.round(flow.round(0.0))
    pkts = flow.send(5, 1.0)
    cc.on_packets_lost(pkts, 3.0)
    cc.on_persistent_congestion(3.0)
    assert cc.congestion_window == kMinimumWindow(MSS)
    assert cc.bytes_in_flight == 0
    # Recovery was left: the next loss (of a packet sent before 3.0) reduces again,
    # but never below the minimum window.
    cc.on_packets_lost(flow.send(1, 2.9), 3.5)
    assert cc.congestion_window == kMinimumWindow(MSS)
    # The window grows again from there.
    cc.on_packets_acked(flow.send(2, 4.0), 4.1)
    assert cc.congestion_window > kMinimumWindow(MSS)


@pytest.mark.parametrize("cls", [NewReno, Cubic])
def test_lost_pmtu_probe_is_not_congestion(cls):
    cc = cls(MSS)
    flow = Flow(cc)
    flow.send(2, 0.0)
    probe = flow.send(1, 0.0, size=1500, is_pmtu_probe=True)
    assert cc.bytes_in_flight == 3900
    cc.on_packets_lost(probe, 0.5)
    assert cc.bytes_in_flight == 2400
    assert cc.congestion_window == 12000
    assert cc.ssthresh == math.inf


@pytest.mark.parametrize("cls", [NewReno, Cubic])
def test_discard_removes_bytes_without_signal(cls):
    cc = cls(MSS)
    flow = Flow(cc)
    pkts = [*flow.send(5, 0.0), SentPacket(99, 0, 0.0, 50, ack_eliciting=False, in_flight=False)]
    cc.discard(pkts)
    assert cc.bytes_in_flight == 0
    assert cc.congestion_window == 12000


@pytest.mark.parametrize("cls", [NewReno, Cubic])
def test_ecn_ce_once_per_recovery_period(cls):
    cc = cls(MSS)
    flow = Flow(cc)
    flow.round(0.0)
    cc.on_ecn_ce(0.5, 1.0)
    reduced = cc.congestion_window
    assert reduced < 24000
    cc.on_ecn_ce(0.9, 1.1)
    assert cc.congestion_window == reduced
    cc.on_ecn_ce(1.05, 1.2)
    assert cc.congestion_window < reduced


@pytest.mark.parametrize("cls", [NewReno, Cubic])
def test_max_datagram_size_and_reset(cls):
    cc = cls(MSS)
    flow = Flow(cc)
    for _ in range(6):
        cc.on_packets_lost(flow.send(1, 0.0), 1.0)
        cc.on_persistent_congestion(1.0)
    assert cc.congestion_window == 2400
    cc.set_max_datagram_size(1500)
    assert cc.minimum_window == 3000
    assert cc.initial_window == 14720
    assert cc.congestion_window == 3000
    flow.send(2, 2.0)
    cc.reset()
    assert cc.congestion_window == 14720
    assert cc.ssthresh == math.inf
    assert cc.bytes_in_flight == 2400  # those packets are still outstanding


def test_cubic_reduction_is_beta():
    cc = Cubic(MSS)
    before, _ = Flow(cc).grow_then_lose(4)
    assert before == 192000
    assert cc.w_max == 192000
    assert cc.congestion_window == int(BETA_CUBIC * 192000)
    assert cc.ssthresh == pytest.approx(BETA_CUBIC * 192000)


def test_cubic_follows_the_cubic_curve():
    cc = Cubic(MSS)
    cc.smoothed_rtt = RTT
    flow = Flow(cc)
    _, now = flow.grow_then_lose(4)
    w_max = 192000
    k = ((w_max - BETA_CUBIC * w_max) / MSS / C_CUBIC) ** (1 / 3)
    epoch = now + RTT  # congestion avoidance starts with the first ACK after recovery
    checked = 0
    for i in range(70):
        before = cc._cwnd
        now = flow.round(now)
        t = now - epoch
        target = min(max(w_cubic(t + RTT, k, w_max), before), 1.5 * before)
        after = cc._cwnd
        if i == 0:
            # At t = 0 the curve equals the window, so the Reno estimate leads by a hair.
            assert after == cc.w_est
            continue
        # A whole window acknowledged moves cwnd (almost) all the way to the target.
        assert after <= target + 1e-6
        assert target - after <= (target - before) * MSS / before + 1e-6
        if i in (1, 10, 30, 48, 69):
            assert abs(after - w_cubic(t + RTT, k, w_max)) <= MSS
            checked += 1
    assert cc.k == pytest.approx(k)
    assert checked == 5
    # Concave up to W_max by t = K, convex beyond.
    assert cc.congestion_window > w_max


def test_cubic_fast_convergence():
    cc = Cubic(MSS)
    flow = Flow(cc)
    _, now = flow.grow_then_lose(4)
    assert cc.w_max == 192000
    window = cc.congestion_window  # 134400, below W_max
    cc.on_packets_lost(flow.send(1, now + 1.0), now + 1.5)
    assert cc.w_max == pytest.approx(window * (1 + BETA_CUBIC) / 2)
    assert cc.congestion_window == int(window * BETA_CUBIC)


def test_cubic_no_fast_convergence_when_window_grew():
    cc = Cubic(MSS)
    flow = Flow(cc)
    _, now = flow.grow_then_lose(4)
    for _ in range(80):
        now = flow.round(now)
    window = cc.congestion_window
    assert window > 192000
    cc.on_packets_lost(flow.send(1, now), now + 0.05)
    assert cc.w_max == pytest.approx(window, abs=1)


def test_cubic_reno_friendly_region():
    cc = Cubic(MSS)
    rtt = 0.001  # many RTTs per second: Reno outgrows the cubic curve near its plateau
    cc.smoothed_rtt = rtt
    flow = Flow(cc)
    _, now = flow.grow_then_lose(4, rtt=rtt)
    epoch = now + rtt
    w_max = cc.w_max
    k = ((w_max - cc._cwnd) / MSS / C_CUBIC) ** (1 / 3)
    for _ in range(20):
        before = cc._cwnd
        acked = cc.congestion_window // MSS * MSS
        now = flow.round(now, rtt)
        assert cc._cwnd == pytest.approx(before + ALPHA_CUBIC * MSS * acked / before, rel=1e-3)
        assert cc._cwnd == cc.w_est
        assert cc._cwnd > w_cubic(now - epoch, k, w_max)
    assert cc._cwnd > w_cubic(now - epoch, k, w_max) + 9 * MSS
    # Past the window before the reduction, W_est grows by one datagram per window.
    for _ in range(120):
        now = flow.round(now, rtt)
    before = cc._cwnd
    acked = cc.congestion_window // MSS * MSS
    flow.round(now, rtt)
    assert cc._cwnd - before == pytest.approx(MSS * acked / before, rel=1e-3)


def _cubic_after_loss():
    cc = Cubic(MSS)
    cc.smoothed_rtt = RTT
    flow = Flow(cc)
    _, now = flow.grow_then_lose(4)
    return cc, flow, now


def test_cubic_time_excludes_application_limited_spell():
    steady, flow_a, now_a = _cubic_after_loss()
    paused, flow_b, now_b = _cubic_after_loss()
    for _ in range(5):
        now_a = flow_a.round(now_a)
        now_b = flow_b.round(now_b)
    # Five seconds of sending a little: no growth, and the clock of the curve stops.
    window = paused.congestion_window
    for _ in range(50):
        paused.on_packets_acked(flow_b.send(2, now_b), now_b + RTT)
        now_b += RTT
    assert paused.congestion_window == window
    for _ in range(10):
        now_a = flow_a.round(now_a)
        now_b = flow_b.round(now_b)
    assert paused.congestion_window == pytest.approx(steady.congestion_window, rel=0.01)


def test_cubic_time_excludes_idle_spell():
    steady, flow_a, now_a = _cubic_after_loss()
    idle, flow_b, now_b = _cubic_after_loss()
    for _ in range(5):
        now_a = flow_a.round(now_a)
        now_b = flow_b.round(now_b)
    now_b += 5.0  # nothing in flight, nothing sent
    for _ in range(10):
        now_a = flow_a.round(now_a)
        now_b = flow_b.round(now_b)
    assert idle.congestion_window == pytest.approx(steady.congestion_window, rel=1e-6)


def test_cubic_persistent_congestion_restarts_curve_from_window():
    cc, flow, now = _cubic_after_loss()
    cc.on_packets_lost(flow.send(3, now + 1.0), now + 3.0)
    cc.on_persistent_congestion(now + 3.0)
    assert cc.congestion_window == kMinimumWindow(MSS)
    now += 3.0
    # Slow start up to ssthresh, then K = 0 from the window at that point.
    while cc.congestion_window < cc.ssthresh:
        now = flow.round(now)
    now = flow.round(now)
    assert cc.k == 0.0
    assert cc.w_max <= cc.congestion_window


@given(
    st.lists(
        st.tuples(st.sampled_from(["send", "ack", "lose", "ce"]), st.integers(1, 40)),
        max_size=60,
    ),
    st.sampled_from([NewReno, Cubic]),
)
def test_window_invariants(ops, cls):
    cc = cls(MSS)
    flow = Flow(cc)
    outstanding = []
    now = 0.0
    for op, n in ops:
        now += 0.01 * n
        if op == "send":
            outstanding += flow.send(n, now)
        elif op == "ack":
            cc.on_packets_acked(outstanding[:n], now)
            del outstanding[:n]
        elif op == "lose":
            cc.on_packets_lost(outstanding[-n:], now)
            del outstanding[-n:]
        else:
            cc.on_ecn_ce(now - 0.01, now)
        assert cc.bytes_in_flight == MSS * len(outstanding)
        assert cc.congestion_window >= kMinimumWindow(MSS)
        assert cc.available(now) == max(0, cc.congestion_window - cc.bytes_in_flight)


def test_pacer_initial_burst_then_paced():
    pacer = Pacer(MSS)
    window, srtt = 48000, RTT
    pacer.update_rate(window, srtt)
    now = 0.0
    sent = 0
    while pacer.next_send_time(now) == now:
        pacer.on_sent(MSS, now)
        sent += 1
    assert sent == kInitialWindow(MSS) // MSS
    # After the burst, a window's worth of datagrams takes srtt / N.
    start = now
    for _ in range(window // MSS):
        now = pacer.next_send_time(now)
        pacer.on_sent(MSS, now)
    assert now - start == pytest.approx(srtt / 1.25, rel=0.03)


def test_pacer_burst_is_two_milliseconds_of_the_rate_within_bounds():
    pacer = Pacer(MSS)
    assert pacer.burst == kInitialWindow(MSS)  # from idle: an initial window
    pacer.update_rate(20_000, 0.01)  # 2.5 MB/s: 5 kB in 2 ms, less than a window
    assert pacer.burst == kInitialWindow(MSS)
    pacer.update_rate(100_000, 0.01)  # 12.5 MB/s: 25 kB in 2 ms
    assert pacer.burst == pytest.approx(1.25 * 100_000 / 0.01 * PACING_BURST_INTERVAL)
    pacer.update_rate(20_000_000, 0.01)
    assert pacer.burst == PACING_BURST_DATAGRAMS * MSS
    pacer.set_max_datagram_size(65_000)  # 2 ms at this rate: 77 datagrams, so the cap
    assert pacer.burst == PACING_BURST_DATAGRAMS * 65_000
    pacer.update_rate(200_000, 0.01)  # 50 kB in 2 ms: less than a window of these
    assert pacer.burst == kInitialWindow(65_000)
    fixed = Pacer(MSS, burst=MSS)
    fixed.update_rate(10_000_000, 0.01)
    assert fixed.burst == MSS


def test_pacer_spacing_and_refill():
    pacer = Pacer(MSS, burst=MSS)
    pacer.update_rate(60000, 0.1)  # 750 kB/s: one datagram per 1.6 ms
    pacer.on_sent(MSS, 1.0)
    assert pacer.next_send_time(1.0) == pytest.approx(1.0016)
    assert pacer.next_send_time(1.0008) == pytest.approx(1.0016)
    # Idle time refills up to the burst allowance only.
    pacer.on_sent(MSS, 5.0)
    assert pacer.next_send_time(5.0) == pytest.approx(5.0016)


def test_pacer_zero_rtt_does_not_divide_by_zero():
    pacer = Pacer(MSS)
    pacer.update_rate(12000, 0.0)
    for i in range(100):
        pacer.on_sent(MSS, i * 1e-3)
    assert math.isfinite(pacer.next_send_time(1.0))


def test_a_paced_sender_wakes_for_several_datagrams_not_one():
    """next_send_time says when one datagram may leave; the sender held back sleeps
    until PACING_WAKE_DATAGRAMS may, or until the bucket is full if it holds fewer."""
    pacer = Pacer(MSS)
    pacer.update_rate(1_000_000, 0.1)  # 12.5 MB/s: a 25 kB bucket, 20 datagrams
    now = 10.0
    pacer.on_sent(int(pacer.burst), now)  # the bucket emptied
    one = pacer.next_send_time(now)
    wake = pacer.wake_time(now)
    assert one == pytest.approx(now + MSS / 12.5e6)
    assert wake == pytest.approx(now + PACING_WAKE_DATAGRAMS * MSS / 12.5e6)
    assert pacer.next_send_time(wake) == wake  # awake, it may send at once
    big = Pacer(65_000)  # large datagrams: a bucket of two, less than the quantum
    big.on_sent(int(big.burst), now)
    assert big.wake_time(now) == pytest.approx(now + big.burst / big._rate)
