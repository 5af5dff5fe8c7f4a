"""The congestion window of a DERP-over-QUIC connection, as a pure core (time passed in, no I/O).

What travels in the connection's DATAGRAM frames is WireGuard packets, and what is inside those is mostly
traffic with its own end-to-end congestion control (the TCP in the tunnel). RFC 9221 §5.4 keeps DATAGRAM
frames under the QUIC connection's congestion controller (a sender delays or drops what the controller
does not allow). RFC 9298 §6 (UDP proxying) notes the two nested controllers this makes and forbids
disabling the outer one without certainty that the inner traffic is controlled; RFC 9484 §10 (IP
proxying, the case closest to a WireGuard relay) lets the outer connection disable it for packets holding
only tunnelled IP, pointing at RFC 8085 §3.1.11. A relay cannot know a WireGuard payload is controlled
(UDP floods travel in tunnels too), so the window here still bounds what is in flight, but it does not
react to loss the way Reno/CUBIC do: a halving on every lost packet makes 1 % random loss throttle the
relay link once more on top of the inner TCP, which already backs off for the same loss.

The rules (close to BBR's window, draft-cardwell-iccrg-bbr, and BBRv2's "inflight_hi"):

- Rounds. A round ends when a packet sent after the round began is acknowledged (about one RTT). At the
  end of a round, the bytes acknowledged in it over its duration is one delivery-rate sample.
- Cap from the path. ``cap = cwnd_gain × max_rate × max(min_rtt, rtt_floor) + headroom``: max_rate is
  the largest sample of the last ``rate_rounds`` rounds; ``rtt_floor`` covers the peer's ACK delay. At a
  bottleneck the rate samples stop growing, so the window stops at twice the path's BDP whatever the loss:
  a queue can grow to one BDP at most, never an unbounded blast (Reno with a deep buffer and no loss would
  grow for ever).
- ProbeRTT. min_rtt is the smallest RTT seen; when no sample has matched it for ``min_rtt_window``
  seconds, the window is held at ``probe_rtt_packets`` for ``probe_rtt_time`` so the queue drains, and the
  smallest RTT seen meanwhile becomes min_rtt (a longer path is learnt, a standing queue is not).
- Growth. Each acknowledged byte adds a byte to the window (slow-start-like: the window can double per
  round), but never beyond the cap nor ``inflight_hi``.
- Which losses count (TCP Veno's idea: tell random loss from congestion loss by the queue). A loss while
  the smallest RTT sample of this round and the last (``queue_rtt``: a queue raises all of them, a
  busy process only some) exceeds ``queue_rtt_factor × min_rtt + margin`` happens with a queue standing, so a
  buffer is overflowing: ``inflight_hi`` becomes ``queue_loss_reduction × window`` (and the window with
  it), once per RTT at most: not again until a packet sent after the cut is acknowledged (the RTT
  samples before it still show the queue the cut is draining), and grows back by one packet per round without a cut. A loss with no queue
  is taken as random and only counted (``ignored_losses``): random loss of a few percent costs the lost
  packets themselves, not the window.
- Loss *rate* as the backstop (policers and buffers too shallow to raise the RTT drop without a queue
  signal): outcomes (acked or lost packets) are counted until at least ``loss_sample_packets`` are known;
  if more than ``loss_rate_threshold`` of them were lost, ``inflight_hi`` becomes ``loss_reduction ×
  window``. Random loss of a few percent stays far below that threshold.
- The datagram queue in front of the window (``queue_limit``): datagrams that the window or the pacer do
  not take yet wait, up to QUIC_DATAGRAM_QUEUE_TIME (20 ms) at the pacing rate, never fewer than
  QUIC_DATAGRAM_QUEUE nor more than QUIC_DATAGRAM_QUEUE_MAX; then they are dropped (RFC 9221 §5.4). A
  fixed count was wrong at speed: a relay descheduled for 10 ms on a busy machine reads 10 ms of arrivals
  in one batch, and the pacer lets out only 2 ms of them at once, so a 256-datagram queue dropped at
  100 Mbit/s with the path idle. 20 ms of queue is what a router's buffer holds, and the window still
  bounds what is in flight.
- Persistent congestion (RFC 9002 §7.6.2): the window MUST go to the minimum; the rate and RTT samples are
  forgotten too (the path may have changed), so the window slow-starts again from there.
"""
from __future__ import annotations

from dataclasses import dataclass

from derp.constants import QUIC_DATAGRAM_QUEUE, QUIC_DATAGRAM_QUEUE_MAX, QUIC_DATAGRAM_QUEUE_TIME


@dataclass(frozen=True)
class TunnelCCConfig:
    initial_window_packets: int = 10       # RFC 9002 §7.2 (the default window before any sample)
    minimum_window_packets: int = 2        # RFC 9002 §7.2 (kMinimumWindow)
    cwnd_gain: float = 2.0                 # BBR's cwnd_gain: window = 2 × BDP
    headroom_packets: int = 4              # on top of the cap, for ACK aggregation and delayed ACKs
    rate_rounds: int = 10                  # BBR's BtlBwFilterLen
    min_rtt_window: float = 10.0           # BBR's MinRTTFilterLen, seconds
    probe_rtt_time: float = 0.2            # BBR's ProbeRTTDuration: window held at probe_rtt_packets
    probe_rtt_packets: int = 4             # BBR's MinPipeCwnd
    rtt_floor: float = 0.002               # the BDP uses at least this RTT: a sample on the packet that
                                           # triggered an ACK misses the peer's ACK delay (aioquic: 1 ms)
    loss_sample_packets: int = 64          # outcomes judged together (fewer would make one loss 30 %)
    loss_rate_threshold: float = 0.10      # well above random loss on a real path (a few percent)
    loss_reduction: float = 0.7            # CUBIC's beta, applied to inflight_hi on a high loss rate
    queue_rtt_factor: float = 1.25         # a loss while the RTT exceeds min_rtt x this + margin ...
    queue_rtt_margin: float = 0.001        # ... (aioquic's ACK delay) is a queue overflowing: congestion
    queue_loss_reduction: float = 0.85     # applied to inflight_hi, at most once per round


DEFAULT_CONFIG = TunnelCCConfig()
INFINITE = float("inf")


def queue_limit(packet_time: float) -> int:
    """Datagrams that may wait for the window or the pacer when the pacer lets one out every
    ``packet_time`` seconds (the module docstring: why)."""
    if packet_time <= 0:
        return QUIC_DATAGRAM_QUEUE_MAX
    return max(QUIC_DATAGRAM_QUEUE, min(QUIC_DATAGRAM_QUEUE_MAX, int(QUIC_DATAGRAM_QUEUE_TIME / packet_time + 0.5)))


class TunnelWindow:
    """One connection's window: feed it sends, acks, losses and RTT samples; read ``window`` and
    ``in_flight``. Every method takes the times it needs as arguments."""

    def __init__(self, max_datagram_size: int, config: TunnelCCConfig = DEFAULT_CONFIG) -> None:
        self.config = config
        self.mss = max_datagram_size
        self.minimum = config.minimum_window_packets * max_datagram_size
        self.window = config.initial_window_packets * max_datagram_size
        self.in_flight = 0
        self.inflight_hi = INFINITE
        self.cap = INFINITE
        self.min_rtt = INFINITE
        self._min_rtt_at = 0.0
        self._rates: list[float] = []          # one sample per round, newest last
        self._round_start: float | None = None
        self._round_delivered = 0
        self._probe_until: float | None = None # ProbeRTT: the window is held small until then
        self._probe_min = INFINITE
        self._round_congested = False
        self._outcomes = 0
        self._lost = 0
        self.latest_rtt = 0.0
        self._round_min_rtt = INFINITE         # the smallest RTT sample of the current round ...
        self._last_round_min_rtt = INFINITE    # ... and of the round before it: the queue signal
        self._acked_sent_time = 0.0            # send time of the newest packet acknowledged
        self._cut_at = -INFINITE               # when the window was last cut for a queue
        self.congestion_events = 0             # window reductions (for logs and tests)
        self.ignored_losses = 0                # losses without a queue: taken as random, no reaction

    # --- inputs -------------------------------------------------------------------------------------

    def on_sent(self, size: int) -> None:
        self.in_flight += size

    def on_expired(self, size: int) -> None:
        """A packet that is no longer tracked without a verdict (its space was discarded, or a PTO
        retransmitted it without declaring a congestion event)."""
        self.in_flight -= size

    def on_acked(self, now: float, sent_time: float, size: int) -> None:
        self.in_flight -= size
        self._acked_sent_time = sent_time
        self._round_delivered += size
        self._outcomes += 1
        if self._round_start is None:
            self._round_start = now
        elif sent_time >= self._round_start:
            self._end_round(now)
        window = self.window + size
        limit = min(self.cap, self.inflight_hi)
        self.window = int(window if window <= limit else max(limit, self.minimum))
        if self._outcomes >= self.config.loss_sample_packets:
            self._judge_losses()

    def on_lost(self, now: float, size: int) -> None:
        self.in_flight -= size
        self._outcomes += 1
        self._lost += 1
        config = self.config
        if self.queue_rtt() > self.min_rtt * config.queue_rtt_factor + config.queue_rtt_margin:
            if self._acked_sent_time > self._cut_at:     # the RTT is of a packet sent after the last cut
                self._cut_at = now
                self._reduce(config.queue_loss_reduction)
        else:
            self.ignored_losses += 1
        if self._outcomes >= self.config.loss_sample_packets:
            self._judge_losses()

    def queue_rtt(self) -> float:
        """The RTT that tells a standing queue: the smallest sample of this round and the last one. A
        queue raises every sample of a round; a busy sender or receiver (a process not scheduled for a few
        ms) raises some, and a loss next to one of those is still random loss."""
        rtt = min(self._round_min_rtt, self._last_round_min_rtt)
        return rtt if rtt != INFINITE else self.latest_rtt

    def on_rtt(self, now: float, rtt: float) -> None:
        self.latest_rtt = rtt
        if rtt < self._round_min_rtt:
            self._round_min_rtt = rtt
        if rtt <= self.min_rtt:
            self.min_rtt = rtt
            self._min_rtt_at = now
            self._probe_until = None         # a new minimum ends a ProbeRTT early
            self._update_cap()
        elif self._probe_until is not None:
            self._probe_min = min(self._probe_min, rtt)
            if now >= self._probe_until:
                self._end_probe_rtt(now)
        elif now - self._min_rtt_at > self.config.min_rtt_window:
            self._probe_until = now + self.config.probe_rtt_time
            self._probe_min = rtt
            self.cap = self.config.probe_rtt_packets * self.mss

    def _end_probe_rtt(self, now: float) -> None:
        self._probe_until = None
        self.min_rtt = self._probe_min
        self._min_rtt_at = now
        self._update_cap()

    def on_persistent_congestion(self) -> None:
        self.window = self.minimum
        self.cap = INFINITE
        self.min_rtt = INFINITE
        self._rates.clear()
        self._round_start = None
        self._round_delivered = 0
        self._round_min_rtt = self._last_round_min_rtt = INFINITE
        self._probe_until = None

    # --- rules --------------------------------------------------------------------------------------

    def _end_round(self, now: float) -> None:
        duration = now - self._round_start
        if duration > 0:
            self._rates.append(self._round_delivered / duration)
            if len(self._rates) > self.config.rate_rounds:
                del self._rates[0]
            self._update_cap()
        if self.inflight_hi != INFINITE and not self._round_congested:
            self.inflight_hi += self.mss
        self._round_congested = False
        self._round_start = now
        self._round_delivered = 0
        self._last_round_min_rtt, self._round_min_rtt = self._round_min_rtt, INFINITE

    def _update_cap(self) -> None:
        if self._probe_until is not None:
            return                           # the window stays small until the ProbeRTT ends
        if self._rates and self.min_rtt != INFINITE:
            bdp = max(self._rates) * max(self.min_rtt, self.config.rtt_floor)
            self.cap = max(self.config.cwnd_gain * bdp + self.config.headroom_packets * self.mss,
                           self.minimum)

    def _judge_losses(self) -> None:
        if self._lost > self.config.loss_rate_threshold * self._outcomes:
            self._reduce(self.config.loss_reduction)
        self._outcomes = 0
        self._lost = 0

    def _reduce(self, factor: float) -> None:
        self.congestion_events += 1
        self.inflight_hi = max(factor * self.window, self.minimum)
        self.window = int(self.inflight_hi)
        self._round_congested = True
