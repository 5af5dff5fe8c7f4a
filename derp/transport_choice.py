"""How a DERP client reaches a relay: which transports to dial in which order, when to try QUIC again, and
when a QUIC link has stalled (docs/derp-quic.md, "Client transport choice").

Pure: no sockets, no clock (`now` is passed in). `derp.aio.client.DerpClient` holds one `TransportChoice`
and, per QUIC link, one `StallWatch`.

Rules of `TransportChoice` (transport "auto"):
- a node without `WgcQUICPort` is never sent a UDP packet: the order is TCP (`upgrade`) then `websocket`;
- what the client knows of UDP to the region (netcheck's STUN answer) is `UDP.WORKS`, `UDP.BLOCKED` or
  `UDP.UNKNOWN` (no netcheck has said yet);
- QUIC is dialed first only when UDP WORKS and QUIC is not backing off after a failure;
- with UDP UNKNOWN the client dials TCP first (no wait on a QUIC dial that might be blackholed) and tries
  QUIC in the background at once; with UDP BLOCKED it never tries QUIC, until netcheck says UDP works;
- a QUIC failure (a dial that did not connect, a link that stalled or was lost) backs QUIC off: the next
  try waits `retry_first` (30 s), doubling with each failure in a row up to `retry_max` (5 min); a QUIC
  link that stayed up `healthy_after` resets the backoff; a Restarting relay is no failure;
- while the link is TCP or WebSocket, QUIC is tried in the background at `background_at`; once it
  connects it replaces the TCP link (make-before-break, the adapter's job).
A forced transport ("quic", "upgrade", "websocket") is the only one dialed, and nothing runs in the
background.

Rules of `StallWatch` (one QUIC link): progress is a packet received from the relay, the answer to a
probe (a DERP Ping), or anything else the adapter hears from the relay (`on_heard`: QUIC ACKs). After `probe_after` seconds without progress while packets were sent, or
`idle_probe` seconds without progress at all, the watch asks for a probe; a probe unanswered for
`stall_after` seconds is a stall: the adapter drops the link and dials TCP at once. So a blackholed QUIC
path is noticed within about `1.5 x probe_after + stall_after` seconds of sending (4.5 s by default),
not after the 30 s of the DERP core's keepalive watchdog.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

QUIC = "quic"
UPGRADE = "upgrade"
WEBSOCKET = "websocket"
TRANSPORTS = ("auto", QUIC, UPGRADE, WEBSOCKET)


class UDP(enum.Enum):
    UNKNOWN = "unknown"
    WORKS = "works"
    BLOCKED = "blocked"


@dataclass(frozen=True)
class ChoiceConfig:
    retry_first: float = 30.0        # a QUIC failure: the next QUIC try this much later ...
    retry_max: float = 300.0         # ... doubling per failure in a row up to this
    healthy_after: float = 60.0      # a QUIC link up this long resets the backoff
    connect_timeout: float = 2.5     # one QUIC dial (handshake + DERP ServerInfo) before TCP is tried
    probe_after: float = 1.0         # sending, and nothing heard this long: probe with a DERP Ping
    idle_probe: float = 10.0         # nothing heard this long even when idle: probe
    stall_after: float = 3.0         # a probe unanswered this long: the link has stalled
    swap_drain: float = 1.0          # after a swap, the old link is read this long for packets in flight


class TransportChoice:
    """The transport order and QUIC's retry schedule for one DERP client (see the module docstring)."""

    def __init__(self, speaks_quic: bool, forced: str | None = None, udp: UDP = UDP.UNKNOWN,
                 config: ChoiceConfig = ChoiceConfig()) -> None:
        self.speaks_quic = speaks_quic
        self.forced = forced
        self.udp = udp
        self.config = config
        self.failures = 0                      # QUIC failures in a row
        self.retry_at: float | None = None     # QUIC is not tried before this (None: no backoff)
        self.up_since: float | None = None     # the current QUIC link's start

    # -- inputs ------------------------------------------------------------------------------------------
    def set_udp(self, udp: UDP) -> bool:
        """What netcheck says of UDP to the region; True when it changed."""
        changed = udp is not self.udp
        self.udp = udp
        return changed

    def on_quic_failed(self, now: float) -> None:
        """A QUIC dial did not connect, or a QUIC link stalled or was lost."""
        self.up_since = None
        self.failures += 1
        cfg = self.config
        self.retry_at = now + min(cfg.retry_first * 2 ** min(self.failures - 1, 30), cfg.retry_max)

    def on_quic_up(self, now: float) -> None:
        self.up_since = now

    def on_quic_down(self, now: float, failed: bool) -> None:
        """The QUIC link ended: `failed` unless the relay said Restarting or the client closed it."""
        if self.up_since is not None and now - self.up_since >= self.config.healthy_after:
            self.failures, self.retry_at = 0, None
        self.up_since = None
        if failed:
            self.on_quic_failed(now)

    # -- decisions ---------------------------------------------------------------------------------------
    def quic_allowed(self) -> bool:
        """May QUIC be dialed at all (now or later)?"""
        if self.forced is not None:
            return self.forced == QUIC
        return self.speaks_quic and self.udp is not UDP.BLOCKED

    def order(self, now: float) -> tuple[str, ...]:
        """The transports to dial for a new link, in order."""
        if self.forced is not None:
            return (self.forced,)
        if (self.speaks_quic and self.udp is UDP.WORKS
                and (self.retry_at is None or now >= self.retry_at)):
            return (QUIC, UPGRADE, WEBSOCKET)
        return (UPGRADE, WEBSOCKET)

    def background_at(self, now: float, link: str) -> float | None:
        """When to try QUIC in the background while the link is `link` (None: not at all)."""
        if self.forced is not None or link in (QUIC, "") or not self.quic_allowed():
            return None
        return max(now, self.retry_at) if self.retry_at is not None else now

    def next_deadline(self) -> float | None:
        return self.retry_at


class Verdict(enum.Enum):
    OK = "ok"
    PROBE = "probe"       # send a DERP Ping and tell the watch when its Pong comes (`on_heard`)
    STALLED = "stalled"   # drop the link


class StallWatch:
    """Is a QUIC link still carrying? Fed the client's packet counters at each tick (see the module docstring)."""

    def __init__(self, now: float, config: ChoiceConfig = ChoiceConfig()) -> None:
        self.config = config
        self.heard_at = now
        self.probe_at: float | None = None
        self._sent = -1          # the sent counter when progress was last seen (-1: not yet read)
        self._received = -1

    def on_heard(self, now: float, sent: int | None = None) -> None:
        """A probe was answered (or anything else proves the relay hears us); `sent`: the sent counter
        now (what was sent before the answer counts as heard; None: from the next tick on)."""
        self.heard_at = max(self.heard_at, now)
        self.probe_at = None
        self._sent = -1 if sent is None else sent

    def tick(self, now: float, sent: int, received: int) -> Verdict:
        if self._received < 0:
            self._received = received
        if self._sent < 0:
            self._sent = sent
        if received != self._received:
            self._received, self._sent = received, sent
            self.on_heard(now)
        cfg = self.config
        if self.probe_at is not None:
            return Verdict.STALLED if now - self.probe_at >= cfg.stall_after else Verdict.OK
        silent = now - self.heard_at
        if (sent != self._sent and silent >= cfg.probe_after) or silent >= cfg.idle_probe:
            self.probe_at = now
            return Verdict.PROBE
        return Verdict.OK

    def next_deadline(self, now: float) -> float:
        """When to tick next (after a tick at `now`): the counters are polled every half `probe_after` at
        most, so a busy link costs one timer per half second, not one per packet."""
        cfg = self.config
        if self.probe_at is not None:
            return self.probe_at + cfg.stall_after
        return min(max(self.heard_at + cfg.probe_after, now + cfg.probe_after / 2), self.heard_at + cfg.idle_probe)


__all__ = ["TransportChoice", "StallWatch", "ChoiceConfig", "UDP", "Verdict", "TRANSPORTS", "QUIC", "UPGRADE",
           "WEBSOCKET"]
