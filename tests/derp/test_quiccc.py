"""The tunnel congestion window (derp/quiccc.py) driven by a small discrete-event path model in stepped
virtual time: a bottleneck of fixed rate and buffer, a fixed delay, seeded random loss; the sender always
has data. No wall clock, no aioquic."""
from __future__ import annotations

import heapq
import random

from derp.quiccc import TunnelWindow

MSS = 1200
RATE = 1.25e6          # bytes/s: 10 Mbit/s
DELAY = 0.02           # one way: RTT 40 ms, BDP 50 kB (about 42 packets)
BDP = RATE * 2 * DELAY


class Run:
    def __init__(self, window, loss, *, duration, buffer=None, seed=1):
        self.w, self.loss, self.duration, self.buffer = window, loss, duration, buffer
        self.rng = random.Random(seed)
        self.delivered = self.overflowed = 0
        self.max_window = self.max_queue_delay = 0.0
        self.windows: list[tuple[float, int]] = []
        self.events: list[tuple[float, int, str, float]] = []
        self.seq = 0
        self.free_at = self.now = 0.0
        self.delay = DELAY

    def send(self):
        w, now = self.w, self.now
        while w.in_flight + MSS <= w.window:
            w.on_sent(MSS)
            self.seq += 1
            start = max(now, self.free_at)
            if self.buffer is not None and (start - now) * RATE + MSS > self.buffer:
                self.overflowed += 1
                heapq.heappush(self.events, (now + 2 * self.delay + 0.005, self.seq, "lost", now))
                continue
            self.free_at = start + MSS / RATE
            self.max_queue_delay = max(self.max_queue_delay, start - now)
            if self.rng.random() < self.loss(now):
                heapq.heappush(self.events, (self.free_at + 2 * self.delay + 0.005, self.seq, "lost", now))
            else:
                heapq.heappush(self.events, (self.free_at + 2 * self.delay, self.seq, "ack", now))

    def until(self, end):
        w = self.w
        while self.now < end:
            self.send()
            self.max_window = max(self.max_window, w.window)
            t, _, kind, sent = heapq.heappop(self.events)
            self.now = t
            if kind == "ack":
                w.on_rtt(t, t - sent)
                w.on_acked(t, sent, MSS)
                if t > 1.0:
                    self.delivered += MSS
            else:
                w.on_lost(t, MSS)
            self.windows.append((t, w.window))
        return self

    def goodput(self, since=1.0):
        return self.delivered / (self.now - since)

    def mean_window(self, start, end):
        values = [v for t, v in self.windows if start <= t < end]
        return sum(values) / len(values)


def run(loss: float | None = 0.0, duration=20.0, loss_fn=None, **kw) -> Run:
    return Run(TunnelWindow(MSS), loss_fn or (lambda now: loss), duration=duration, **kw).until(duration)


def test_random_loss_of_one_and_three_percent_keeps_the_bottleneck_busy():
    for loss in (0.01, 0.03):
        r = run(loss, buffer=int(2 * BDP))
        assert r.goodput() > 0.9 * RATE, (loss, r.goodput())
        assert r.mean_window(5, 20) > BDP, loss          # the pipe stays full
        assert r.w.ignored_losses > 0.5 * r.loss(0) * r.seq, loss


def test_a_one_bdp_buffer_is_not_kept_overflowing():
    # The cap alone (2 x BDP + headroom) would overflow a 1-BDP buffer every round, a few percent of loss
    # for the tunnelled TCP to suffer; losses while the RTT shows that queue are congestion.
    r = run(0.0, duration=5.0, buffer=int(BDP))
    overflowed, sent = r.overflowed, r.seq
    r.until(20.0)
    assert r.overflowed - overflowed < 0.005 * (r.seq - sent)
    assert r.goodput() > 0.95 * RATE


def rtt_round(w: TunnelWindow, t: float, rtts: list[float]) -> float:
    """One round: packets sent at t, acknowledged after these RTTs; returns when the next round starts."""
    for rtt in rtts:
        w.on_sent(MSS)
        w.on_acked(t + rtt, t, MSS)
        w.on_rtt(t + rtt, rtt)
    return t + max(rtts) + 0.001


def test_a_loss_with_a_queue_cuts_the_window_a_loss_without_one_does_not():
    w = TunnelWindow(MSS)
    w.on_rtt(0.0, 0.040)
    w.on_sent(MSS)
    w.on_lost(0.05, MSS)                         # RTT at its minimum: random loss
    assert (w.congestion_events, w.ignored_losses, w.window) == (0, 1, 10 * MSS)
    t = 0.10
    for _ in range(3):                           # whole rounds at twice the minimum: a queue stands
        t = rtt_round(w, t, [0.080] * 4)
    before = w.window
    w.on_sent(MSS)
    w.on_lost(t, MSS)
    assert w.congestion_events == 1 and w.window == int(0.85 * before)
    w.on_sent(MSS)
    w.on_lost(t + 0.001, MSS)                    # at most one such cut per RTT
    assert w.congestion_events == 1
    w.on_sent(MSS)
    w.on_rtt(t + 0.002, 0.080)
    w.on_acked(t + 0.002, t - 0.01, MSS)         # sent before the cut: its RTT still shows the old queue
    w.on_lost(t + 0.002, MSS)
    assert w.congestion_events == 1
    w.on_sent(MSS)
    w.on_rtt(t + 0.09, 0.080)
    w.on_acked(t + 0.09, t + 0.01, MSS)          # sent after the cut, and the queue is still there
    w.on_lost(t + 0.09, MSS)
    assert w.congestion_events == 2


def test_a_few_late_samples_are_no_queue():
    """A process not scheduled for a few ms raises some RTT samples, not a round's smallest: a loss
    beside them is random loss (this cut the window four times a second at 1 % loss on a busy machine)."""
    w = TunnelWindow(MSS)
    w.on_rtt(0.0, 0.010)
    t = 0.01
    for _ in range(3):
        t = rtt_round(w, t, [0.010, 0.011, 0.019, 0.024, 0.010])
    w.on_rtt(t, 0.030)                           # the latest sample is late too
    w.on_sent(MSS)
    w.on_lost(t, MSS)
    assert w.congestion_events == 0 and w.ignored_losses == 1
    assert w.queue_rtt() <= 0.011


def test_no_loss_and_an_endless_buffer_still_bound_the_window():
    # Reno and CUBIC would grow without end here (no loss ever); the window stops near 2 x BDP.
    r = run(0.0, buffer=None)
    assert r.goodput() > 0.95 * RATE
    assert r.max_window < 3 * BDP                # over 10 s: ProbeRTT keeps the queue from ratcheting
    assert r.max_queue_delay < 2 * (2 * DELAY)


def test_a_longer_path_is_learnt_again_by_probing_the_rtt():
    # The RTT triples at 5 s: a window capped by the old minimum RTT would carry 2/3 of the rate at most.
    r = Run(TunnelWindow(MSS), lambda now: 0.0, duration=40.0, buffer=None)
    r.until(5.0)
    r.delay = 3 * DELAY
    r.until(30.0)
    start = r.delivered
    r.until(40.0)
    assert (r.delivered - start) / 10.0 > 0.9 * RATE


def test_a_loss_rate_well_above_random_loss_shrinks_the_window():
    calm = run(0.0, buffer=None)
    heavy = run(0.25, buffer=None)
    assert heavy.w.congestion_events > 10
    assert heavy.mean_window(5, 20) < 0.5 * calm.mean_window(5, 20)


def test_a_loss_burst_cuts_the_window_then_it_recovers():
    r = Run(TunnelWindow(MSS), lambda now: 0.6 if 10.0 <= now < 10.3 else 0.0, duration=20.0, buffer=None)
    r.until(10.0)
    before = r.w.window
    r.until(10.3)
    assert r.w.congestion_events >= 1
    assert r.w.window <= 0.7 * before
    r.until(20.0)
    assert r.mean_window(16, 20) > 0.8 * before


def test_a_shallow_drop_tail_buffer_is_congestion_and_is_answered():
    # A buffer of a quarter BDP overflows in bursts when the window overshoots: those losses exceed the
    # threshold, the window backs off, and the overflow stays a small share of what was sent.
    r = run(0.0, buffer=int(BDP / 4))
    assert r.w.congestion_events >= 1
    assert r.goodput() > 0.7 * RATE
    assert r.overflowed < 0.05 * r.seq


def test_persistent_congestion_collapses_the_window_then_it_slow_starts():
    r = run(0.0, duration=5.0, buffer=None)
    r.w.on_persistent_congestion()
    assert r.w.window == r.w.minimum
    r.until(8.0)
    assert r.w.window > 0.8 * BDP


def test_app_limited_sender_gets_a_window_near_its_own_rate():
    w = TunnelWindow(MSS)
    now = 0.0
    # 10 packets per 40 ms round, acknowledged one RTT later: the window never needs more than that.
    for i in range(2000):
        now = i * 0.004
        w.on_sent(MSS)
        w.on_rtt(now + 0.04, 0.04)
        w.on_acked(now + 0.04, now, MSS)
    assert w.window <= 2 * 10 * MSS + 4 * MSS + MSS


def test_losses_are_judged_over_a_sample_not_one_by_one():
    w = TunnelWindow(MSS)
    w.on_sent(MSS)
    w.on_lost(0.1, MSS)                  # one loss out of one outcome: not yet a verdict
    assert w.congestion_events == 0
    assert w.window == 10 * MSS
