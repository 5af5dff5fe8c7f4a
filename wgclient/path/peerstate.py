"""Per-peer path facts for the path manager: candidates, outstanding pings, the best direct address and the
`better_addr` ranking (disco.md §5, §7.7), plus the outputs and events the manager returns.

Plain data and pure functions only; the manager (manager.py) owns every change of a peer's state.
"""
from __future__ import annotations

import collections
import enum
import ipaddress
from dataclasses import dataclass, field
from typing import NamedTuple

from .discokeys import PairKeys

Addr = tuple  # (ip_text, port)


class PathState(enum.Enum):
    RELAY = "relay"          # no direct address: DERP only
    DIRECT = "direct"        # a pong within the trust window: UDP only
    LAPSING = "lapsing"      # a direct address whose trust expired: UDP and DERP both, discovery restarted


class Route(NamedTuple):
    """Where a WireGuard packet to a peer goes: `direct` (UDP addr), `relay` (DERP region id), or both."""

    direct: Addr | None = None
    relay: int | None = None


# --- outputs for the adapter and events for the layer above -----------------------------------------


@dataclass(frozen=True, slots=True)
class SendDisco:
    """Send `packet` over UDP to `addr`, or over DERP in `region` addressed to the peer's node key."""

    peer: bytes
    packet: bytes = field(repr=False)
    addr: Addr | None = None
    region: int | None = None


@dataclass(frozen=True, slots=True)
class ConnectRegion:
    region: int


@dataclass(frozen=True, slots=True)
class CloseRegion:
    region: int


@dataclass(frozen=True, slots=True)
class SetHome:
    """Our home region changed: send NotePreferred (true only here) on every open region connection."""

    region: int


@dataclass(frozen=True, slots=True)
class PathChanged:
    peer: bytes
    state: PathState
    route: Route
    reason: str


@dataclass(frozen=True, slots=True)
class PingResult:
    """A pong answering a `ping()` (wgc ping): via `addr` when direct, else via DERP `region`."""

    peer: bytes
    tx_id: bytes
    latency: float
    addr: Addr | None
    region: int | None


# --- per-peer data ------------------------------------------------------------------------------------

FROM_CONFIG, FROM_CMM, FROM_PING, FROM_WG = "config", "callmemaybe", "ping", "wireguard"


@dataclass
class Candidate:
    addr: Addr
    sources: set[str] = field(default_factory=set)
    last_ping: float | None = None
    last_pong: float | None = None
    seen: float = 0.0                     # last ping or WireGuard packet from it (expiry of learned ones)
    latencies: collections.deque = field(default_factory=lambda: collections.deque(maxlen=64))


@dataclass
class SentPing:
    addr: Addr | None                     # UDP destination, or None when sent over DERP
    region: int | None
    sent: float
    purpose: str                          # "discovery", "heartbeat", "reply", "probe", "cli"


@dataclass
class PeerPath:
    key: bytes
    pair: PairKeys = field(repr=False)
    name: str | None = None
    region_hint: int = 0
    state: PathState = PathState.RELAY
    best: Addr | None = None
    best_latency: float = 0.0
    trust_until: float = float("-inf")
    relay: int = 0                        # the DERP region packets to this peer go to (0: none known)
    route_trusted: Route = Route()        # cached answers of route(): while trusted, and otherwise
    route_untrusted: Route = Route()
    candidates: dict = field(default_factory=dict)          # Addr -> Candidate
    pings: dict = field(default_factory=dict)               # tx_id -> SentPing
    seen_txids: collections.OrderedDict = field(default_factory=collections.OrderedDict)
    last_send: float | None = None
    next_heartbeat: float | None = None
    last_full: float | None = None
    last_cmm_sent: float | None = None
    cmm_unconfirmed: bool = False         # our last CallMeMaybe went to a region the peer was not heard in
    punch_at: float | None = None         # the next retry of a discovery round on the short backoff
    punch_step: int = 0                   # index into PathConfig.punch_backoff
    cmm_received: int = 0
    derp_heard: dict = field(default_factory=dict)          # region -> last time the peer reached us there
    skip_region: dict = field(default_factory=dict)         # region -> until (PeerGone / unanswered probe)
    announced_home: int = 0
    peer_flags: int | None = None                           # NodeInfo flags the peer announced
    inferred_hard_nat: bool = False                         # its ping came from an unadvertised port
    udp_pings_sent: int = 0
    udp_pongs: int = 0
    udp_pings_received: int = 0
    upgrades: int = 0                     # RELAY -> DIRECT
    fallbacks: int = 0                    # DIRECT or LAPSING -> RELAY

    def active(self, now: float, timeout: float) -> bool:
        return self.last_send is not None and now - self.last_send <= timeout

    def trusted(self, now: float) -> bool:
        return self.best is not None and now < self.trust_until


# --- better_addr (disco.md §7.7) ----------------------------------------------------------------------


# Go's netip IsPrivate / IsLinkLocalUnicast (Python's is_private also counts documentation ranges).
_PRIVATE = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"))
_LINK_LOCAL = tuple(ipaddress.ip_network(n) for n in ("169.254.0.0/16", "fe80::/10"))


def _bonus(addr: Addr) -> int:
    ip = ipaddress.ip_address(addr[0])
    if ip.is_loopback:
        points = 50
    elif any(ip in net for net in _LINK_LOCAL if net.version == ip.version):
        points = 30
    elif any(ip in net for net in _PRIVATE if net.version == ip.version):
        points = 20
    else:
        points = 0
    return points + (10 if ip.version == 6 else 0)


def better_addr(a: Addr | None, a_latency: float, b: Addr | None, b_latency: float) -> bool:
    """Is direct address `a` (measured `a_latency`) better than the current `b`?"""
    if a is None:
        return False
    if b is None:
        return True
    if a == b:
        return False
    # Go's integer arithmetic on nanosecond durations: the faster gets 100 - 100*fast/slow points.
    a_ns, b_ns = int(round(a_latency * 1e9)), int(round(b_latency * 1e9))
    a_points = b_points = 0
    if a_ns > b_ns and a_ns > 0:
        b_points = 100 - (b_ns * 100) // a_ns
    elif b_ns > 0:
        a_points = 100 - (a_ns * 100) // b_ns
    a_points += _bonus(a)
    b_points += _bonus(b)
    if a_points <= 1 and b_points == 0:
        return False
    return a_points > b_points
