"""The path manager: for every peer, whether WireGuard packets go direct over UDP, through DERP, or both.

Sans-I/O: inputs are method calls with `now` (monotonic seconds); each returns a list of outputs
(`SendDisco`, `ConnectRegion`, `CloseRegion`, `SetHome`) and events (`PathChanged`, `PingResult`).
`route(peer, now)` answers where a packet goes; `next_deadline()` / `on_timer(now)` drive the timers.

Rules (shared/protocol/disco.md §5-§7, derp.md §10; timings in `PathConfig`):
- every peer starts RELAY: its packets go to DERP, in the region picked by `_pick_region`: where the
  peer last reached us over DERP (recently), else the home region it announced (wgc NodeInfo), else its
  config hint, else our regions home first then by latency; a region that answered PeerGone or left a
  DERP ping unanswered is skipped for a while, so regions are tried in order until one works;
- while a peer is active a heartbeat runs discovery rounds (disco pings to its candidates, our endpoints
  in a CallMeMaybe over DERP) for as long as it is relayed; a round after new information is repeated
  on a short backoff until a pong (discovery.py owns when pings and announcements go out);
- a CallMeMaybe (accepted only over DERP from the peer's own node key) replaces the peer's CallMeMaybe
  candidates and pings all candidates at once (simultaneous hole punching);
- a Ping is answered with a Pong on the path it came by; a UDP ping's source becomes a candidate and,
  while we have no trusted path, is pinged straight back (at most once a second);
- a Pong over UDP makes the pinged address the best one if it is better (§7.7) or the current one is
  untrusted, and sets trust to now + 6.5 s: state DIRECT, packets go over UDP only;
- trust expiring makes the state LAPSING: packets go to both UDP and DERP (no gap), discovery restarts;
  a ping to an untrusted best address timing out (5 s) clears it: state RELAY;
- messages whose sender key is no peer's derived disco key, or whose box does not open, are dropped and
  counted in `drops`; nothing a peer sends raises;
- a new DERP map (`set_regions`): a region that left it is closed at once and its peers move to another
  region like after a PeerGone; a changed region is closed and reopened; a new one is usable at once;
- per peer, `upgrades` counts RELAY -> DIRECT and `fallbacks` DIRECT/LAPSING -> RELAY (for metrics).
Every state change goes through `_set_state`, which logs it and emits `PathChanged`.
"""
from __future__ import annotations

import ipaddress
import logging
from typing import Callable, Iterable, Mapping

from wgclient.errors import ParseError, UsageError
from wgclient.keys import public_key, short

from . import constants as C
from . import disco
from .discokeys import derive_pair
from .discovery import Discovery
from .home import HomeTracker
from .inputs import NetInfo, PathConfig
from .peerstate import (FROM_CMM, FROM_CONFIG, FROM_PING, FROM_WG, Addr, Candidate, CloseRegion,
                        ConnectRegion, PathChanged, PathState, PeerPath, PingResult, Route, SetHome,
                        better_addr)
from .why import describe, explain

log = logging.getLogger("wgclient.path")
_NO_ROUTE = Route()


def _pingable(addr: Addr) -> bool:
    ip = ipaddress.ip_address(addr[0])
    return bool(addr[1]) and not (ip.is_unspecified or ip.is_multicast
                                  or (ip.version == 6 and ip.is_link_local))


class PathManager(Discovery):
    def __init__(self, private_key: bytes, *, random_bytes: Callable[[int], bytes],
                 config: PathConfig = PathConfig()) -> None:
        self.config = config
        self._private = private_key
        self.node_key = public_key(private_key)
        self._random = random_bytes
        self.home = HomeTracker(config.home_failover_delay)
        self.netinfo = NetInfo()
        self.local_endpoints: tuple = ()
        self.peers: dict[bytes, PeerPath] = {}
        self._by_disco: dict[bytes, PeerPath] = {}
        self._regions_open: dict[int, float] = {}   # region -> last time it was wanted
        self._wanted: set[int] = set()
        self._written: set[int] = set()              # regions sent to during the current input
        self.drops: dict[str, int] = {}
        self._out: list = []

    # --- configuration -------------------------------------------------------------------------------

    def add_peer(self, key: bytes, *, psk: bytes | None = None, name: str | None = None,
                 region_hint: int = 0, endpoint: Addr | None = None) -> None:
        if key in self.peers:
            raise UsageError(f"peer {short(key)} added twice")
        p = PeerPath(key, derive_pair(self._private, key, psk), name, region_hint)
        if endpoint is not None:
            self._candidate(p, disco.canonical_addr(endpoint), FROM_CONFIG, 0.0)
        self.peers[key] = p
        self._by_disco[p.pair.peer_public] = p

    def add_candidate(self, key: bytes, addr: Addr, now: float) -> list:
        """An address to try for the peer, as the config's Endpoint is (`wg set ... endpoint`)."""
        self._candidate(self._peer(key), disco.canonical_addr(addr), FROM_CONFIG, now)
        return self._finish(now)

    def remove_peer(self, key: bytes) -> None:
        p = self.peers.pop(key, None)
        if p is not None:
            self._by_disco.pop(p.pair.peer_public, None)

    def set_regions(self, regions: Mapping[int, str], now: float, *, reconnect: Iterable[int] = ()) -> list:
        """The DERP map's regions (id -> code), at start and whenever the map changes. A region that left
        the map is closed at once and forgotten in every peer's facts, so its peers move to another
        region (their WireGuard session is untouched); an open region in `reconnect` (its nodes changed)
        is closed and opened again if still wanted."""
        gone = [r for r in self.home.regions if r not in regions]
        for r in gone:
            self._forget_region(r)
        redial = [r for r in reconnect if r in regions and self._regions_open.pop(r, None) is not None]
        if self.home.set_regions(regions):
            self._home_changed(now)
        return [CloseRegion(r) for r in gone + redial] + self._finish(now)  # closed before reopened

    def _forget_region(self, region: int) -> None:
        if self._regions_open.pop(region, None) is not None:
            log.info("DERP region %s left the map: closing it", self.home.code(region))
        self._written.discard(region)
        for p in self.peers.values():
            p.derp_heard.pop(region, None)
            p.skip_region.pop(region, None)

    def on_netcheck(self, info: NetInfo, now: float) -> list:
        before = self.endpoints()
        self.netinfo = info
        if self.home.on_netcheck(info.preferred, info.latency or {}):
            self._home_changed(now)
        self._endpoints_changed(before, now)
        return self._finish(now)

    def set_local_endpoints(self, addrs: Iterable[Addr], now: float) -> list:
        before = self.endpoints()
        self.local_endpoints = tuple(disco.canonical_addr(a) for a in addrs)
        self._endpoints_changed(before, now)
        return self._finish(now)

    def endpoints(self) -> tuple:
        """Our candidate endpoints as advertised in CallMeMaybe: STUN-mapped first, then local ones."""
        seen: dict = {}
        for a in tuple(self.netinfo.endpoints) + self.local_endpoints:
            seen.setdefault(disco.canonical_addr(a), None)
        return tuple(seen)

    # --- DERP connection events ----------------------------------------------------------------------

    def on_region_up(self, region: int, now: float) -> list:
        if self.home.on_up(region):
            self._home_changed(now)
        return self._finish(now)

    def on_region_down(self, region: int, now: float) -> list:
        """A region's connection dropped (the adapter reconnects with backoff and calls on_region_up)."""
        self.home.on_down(region, now)
        return self._finish(now)

    def on_peer_gone(self, key: bytes, region: int, now: float) -> list:
        """DERP said the peer is not connected in `region` (PeerGone NotHere)."""
        p = self.peers.get(key)
        if p is not None:
            p.derp_heard.pop(region, None)
            p.skip_region[region] = now + self.config.region_skip
        return self._finish(now)

    # --- traffic notifications -----------------------------------------------------------------------

    def on_data_sent(self, key: bytes, now: float) -> list:
        """WireGuard sent to the peer: keeps the session active and starts discovery when not trusted."""
        p = self.peers.get(key)
        if p is None:
            return []
        p.last_send = now
        if p.next_heartbeat is not None:
            return []  # the hot path: a heartbeat is already armed
        p.next_heartbeat = now + self.config.heartbeat_interval
        if not p.trusted(now):
            self._discover(p, now)
            self._start_punching(p, now)
        return self._finish(now)

    def on_wireguard_from(self, key: bytes, now: float, *, addr: Addr | None = None,
                          region: int | None = None) -> list:
        """An authenticated WireGuard packet came from the peer over UDP `addr` or DERP `region`."""
        p = self.peers.get(key)
        if p is None:
            return []
        if addr is not None:
            cand = p.candidates.get(addr)
            if cand is not None and FROM_WG in cand.sources:
                cand.seen = now  # the per-packet case: a known source
                return []
            self._candidate(p, disco.canonical_addr(addr), FROM_WG, now)
        elif region is not None:
            if self._heard_via(p, region, now):
                self._peer_appeared(p, region, now)
            elif region == p.relay:
                return []
        return self._finish(now)

    # --- disco ---------------------------------------------------------------------------------------

    def on_disco(self, packet, now: float, *, addr: Addr | None = None, region: int | None = None,
                 derp_src: bytes | None = None) -> list:
        """A disco packet from UDP `addr`, or from DERP `region` sent by node key `derp_src`."""
        try:
            sender, _ = disco.parse_header(packet)
        except ParseError:
            return self._drop("not disco")
        p = self._by_disco.get(sender)
        if p is None:
            return self._drop("unknown disco key")
        try:
            message = disco.parse_message(p.pair.box.open(packet))
        except ParseError:
            return self._drop("bad box or body")
        appeared = False
        if region is not None:
            if derp_src != p.key:
                return self._drop("DERP source is not the peer")
            appeared = self._heard_via(p, region, now)
        elif addr is None:
            raise UsageError("on_disco needs addr or region")
        else:
            addr = disco.canonical_addr(addr)
        if isinstance(message, disco.Ping):
            self._on_ping(p, message, addr, region, now)
        elif isinstance(message, disco.Pong):
            self._on_pong(p, message, addr, now)
        elif isinstance(message, disco.CallMeMaybe):
            if region is None:
                return self._drop("CallMeMaybe not via DERP")
            self._on_call_me_maybe(p, message, now)
        elif isinstance(message, disco.NodeInfo):
            p.announced_home, p.peer_flags = message.home_region, message.flags
        else:
            self._drop("unknown message type")
        if appeared:
            self._peer_appeared(p, region, now)
        return self._finish(now)

    def ping(self, key: bytes, now: float) -> list:
        """`wgc ping`: a disco ping over DERP (unless trusted) and to the trusted path or every candidate."""
        p = self._peer(key)
        if p.trusted(now):
            self._send_ping(p, now, "cli", addr=p.best)
        else:
            if p.relay:
                self._send_ping(p, now, "cli", region=p.relay)
            for cand in list(p.candidates.values()):
                self._send_ping(p, now, "cli", addr=cand.addr)
            # Like `tailscale ping`, an idle peer's ping also asks it to punch: CallMeMaybe (rate-limited).
            if p.relay and (p.last_cmm_sent is None or now - p.last_cmm_sent >= self.config.disco_ping_interval):
                self._announce(p, now)
        return self._finish(now)

    # --- queries -------------------------------------------------------------------------------------

    def route(self, key: bytes, now: float) -> Route:
        p = self.peers.get(key)
        if p is None:
            return _NO_ROUTE
        if p.best is not None and now < p.trust_until:
            return p.route_trusted
        return p.route_untrusted

    def why(self, key: bytes, now: float) -> str:
        return explain(self, self._peer(key), now)

    def status(self, key: bytes, now: float) -> dict:
        return describe(self, self._peer(key), now)

    # --- timers --------------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        times = [t for t in (self.home.next_deadline(),) if t is not None]
        for p in self.peers.values():
            if p.next_heartbeat is not None:
                times.append(p.next_heartbeat)
            if p.punch_at is not None:
                times.append(p.punch_at)
            if p.state is PathState.DIRECT:
                times.append(p.trust_until)
            if p.pings:
                times.append(min(s.sent for s in p.pings.values()) + self.config.ping_timeout)
        times.extend(t + self.config.region_idle_timeout for r, t in self._regions_open.items()
                     if r not in self._wanted)
        return min(times, default=None)

    def on_timer(self, now: float) -> list:
        if self.home.on_timer(now):
            self._home_changed(now)
        for p in self.peers.values():
            self._expire_pings(p, now)
            if p.punch_at is not None and now >= p.punch_at:
                self._punch_retry(p, now)
            if p.next_heartbeat is not None and now >= p.next_heartbeat:
                self._heartbeat(p, now)
        return self._finish(now)

    # --- internals: disco handling -------------------------------------------------------------------

    def _on_ping(self, p: PeerPath, m: disco.Ping, addr: Addr | None, region: int | None, now: float) -> None:
        if m.node_key is not None and m.node_key != p.key:
            self._drop("ping node key is not the peer's")
            return
        duplicate = m.tx_id in p.seen_txids
        p.seen_txids[m.tx_id] = None
        while len(p.seen_txids) > 64:
            p.seen_txids.popitem(last=False)
        if addr is not None:
            p.udp_pings_received += 1
            self._note_ping_source(p, addr)
            self._candidate(p, addr, FROM_PING, now)
            if not duplicate:
                self._send(p, disco.Pong(m.tx_id, addr), addr=addr)
            cand = p.candidates[addr]
            if (not p.trusted(now) and (cand.last_ping is None
                                        or now - cand.last_ping >= self.config.reply_ping_interval)):
                self._send_ping(p, now, "reply", addr=addr)
        elif not duplicate:
            self._send(p, disco.Pong(m.tx_id, (C.DERP_MAGIC_IP, region)), region=region)

    def _note_ping_source(self, p: PeerPath, addr: Addr) -> None:
        """A ping from an address the peer never advertised, on an IP it did: its NAT maps per destination."""
        advertised = [c.addr for c in p.candidates.values() if FROM_CMM in c.sources]
        if any(a[0] == addr[0] for a in advertised) and addr not in advertised:
            p.inferred_hard_nat = True

    def _on_pong(self, p: PeerPath, m: disco.Pong, addr: Addr | None, now: float) -> None:
        sent = p.pings.pop(m.tx_id, None)
        if sent is None:
            self._drop("pong for unknown TxID")
            return
        latency = max(now - sent.sent, 0.0)
        if sent.purpose == "cli":
            self._out.append(PingResult(p.key, m.tx_id, latency, sent.addr if addr else None,
                                        None if addr else sent.region))
        if addr is None or sent.addr is None:
            return  # pongs via DERP never change the direct path
        p.udp_pongs += 1
        cand = p.candidates.get(sent.addr)
        if cand is not None:
            cand.last_pong = now
            cand.latencies.append(latency)
        if (not p.trusted(now) or better_addr(sent.addr, latency, p.best, p.best_latency)) \
                and sent.addr != p.best:
            p.best = sent.addr
            reason = f"pong from {sent.addr[0]}:{sent.addr[1]}"
        else:
            reason = "pong"
        if sent.addr == p.best:
            p.best_latency = latency
            p.trust_until = now + self.config.trust_duration
            p.punch_at = None  # the round got its pong
            self._refresh(p, now, reason)

    def _on_call_me_maybe(self, p: PeerPath, m: disco.CallMeMaybe, now: float) -> None:
        p.cmm_received += 1
        known = {a for a, c in p.candidates.items() if FROM_CMM in c.sources}
        listed = set()
        for a in m.endpoints[:C.MAX_CALL_ME_MAYBE_ENDPOINTS]:
            a = disco.canonical_addr(a)
            if not _pingable(a):
                continue  # IPv6 link-local (ignored, §5), unspecified, multicast, port 0
            listed.add(a)
            self._candidate(p, a, FROM_CMM, now)
        for addr, cand in list(p.candidates.items()):
            if FROM_CMM in cand.sources and addr not in listed:
                cand.sources.discard(FROM_CMM)
                if not cand.sources:
                    del p.candidates[addr]
        for cand in list(p.candidates.values()):
            cand.last_ping = None
            self._send_ping(p, now, "discovery", addr=cand.addr)
        if listed - known:
            self._start_punching(p, now)  # new addresses: our first pings may meet a NAT not yet open
        # With no control server the caller may not know our endpoints yet: answer with ours (at most
        # every 5 s, so two CallMeMaybes never echo back and forth), so both sides punch at once.
        if p.relay and not p.trusted(now) and (p.last_cmm_sent is None
                                               or now - p.last_cmm_sent >= self.config.disco_ping_interval):
            self._announce(p, now)

    def _expire_pings(self, p: PeerPath, now: float) -> None:
        for tx_id, sent in list(p.pings.items()):
            if now < sent.sent + self.config.ping_timeout:  # the same sum next_deadline() reports
                continue
            del p.pings[tx_id]
            if sent.region is not None and p.derp_heard.get(sent.region, float("-inf")) < sent.sent:
                p.skip_region[sent.region] = now + self.config.region_skip
            if sent.addr is not None and sent.addr == p.best and not p.trusted(now):
                p.best, p.best_latency = None, 0.0
                self._refresh(p, now, f"ping to {sent.addr[0]}:{sent.addr[1]} timed out")

    # --- internals: helpers ---------------------------------------------------------------------------

    def _peer(self, key: bytes) -> PeerPath:
        p = self.peers.get(key)
        if p is None:
            raise UsageError(f"no such peer {short(key)}")
        return p

    def _candidate(self, p: PeerPath, addr: Addr, source: str, now: float) -> None:
        cand = p.candidates.get(addr)
        if cand is None:
            cand = p.candidates[addr] = Candidate(addr)
        cand.sources.add(source)
        cand.seen = now

    def _heard_via(self, p: PeerPath, region: int, now: float) -> bool:
        """Note a packet from the peer over DERP `region`; True when it was not heard there lately."""
        last = p.derp_heard.pop(region, None)  # re-insert: arrival order breaks ties between equal times
        p.derp_heard[region] = now
        p.skip_region.pop(region, None)
        return last is None or now - last > self.config.derp_heard_window

    def _drop(self, reason: str) -> list:
        self.drops[reason] = self.drops.get(reason, 0) + 1
        return []

    def _home_changed(self, now: float) -> None:
        self._out.append(SetHome(self.home.home))
        for p in self.peers.values():
            self._refresh(p, now, "home region changed")
            if p.relay:
                self._send(p, self._node_info(), region=p.relay)

    def _pick_region(self, p: PeerPath, now: float) -> int:
        h = self.home
        heard = sorted((r for r, t in p.derp_heard.items() if now - t <= self.config.derp_heard_window),
                       key=p.derp_heard.__getitem__)
        recent = heard[::-1]
        order = recent + [p.announced_home, p.region_hint] + h.order()
        usable = [r for r in order if h.usable(r)]
        for r in usable:
            if p.skip_region.get(r, float("-inf")) <= now or r in recent:
                return r
        p.skip_region.clear()  # every region was tried: start over
        return usable[0] if usable else 0

    def _refresh(self, p: PeerPath, now: float, reason: str) -> None:
        """Recompute state, relay region and the cached routes from the peer's facts."""
        if p.trusted(now):
            state = PathState.DIRECT
        elif p.best is not None:
            state = PathState.LAPSING
        else:
            state = PathState.RELAY
        relay = self._pick_region(p, now)
        if p.route_trusted.direct != p.best:
            p.route_trusted = Route(p.best, None)
        if p.route_untrusted != (p.best, relay or None):
            p.route_untrusted = Route(p.best, relay or None)
        if state is not p.state or relay != p.relay:
            self._set_state(p, state, relay, now, reason)

    def _set_state(self, p: PeerPath, state: PathState, relay: int, now: float, reason: str) -> None:
        log.info("[peer:%s] path %s -> %s, relay %s (%s)", short(p.key), p.state.value, state.value,
                 self.home.code(relay) if relay else "none", reason)
        if state is PathState.DIRECT and p.state is PathState.RELAY:
            p.upgrades += 1
        elif state is PathState.RELAY and p.state is not PathState.RELAY:
            p.fallbacks += 1
        p.state, p.relay = state, relay
        if state is PathState.LAPSING and p.next_heartbeat is not None:
            self._discover(p, now)  # trust lapsed: restart discovery at once
            self._start_punching(p, now)
        self._out.append(PathChanged(p.key, state, self.route(p.key, now), reason))

    def _finish(self, now: float) -> list:
        for p in self.peers.values():
            if p.state is PathState.DIRECT and not p.trusted(now):
                self._refresh(p, now, "trust expired")
            else:
                self._refresh(p, now, "region choice")
        wanted = {self.home.home} | {p.relay for p in self.peers.values()} | self._written
        wanted.discard(0)
        self._written = set()
        self._wanted = wanted
        connects = [ConnectRegion(r) for r in sorted(wanted) if r not in self._regions_open]
        for r in wanted:
            self._regions_open[r] = now
        for r, t in list(self._regions_open.items()):
            if r not in wanted and now >= t + self.config.region_idle_timeout:
                del self._regions_open[r]
                self._out.append(CloseRegion(r))
        out = connects + self._out if connects else self._out  # a region is opened before it is used
        self._out = []
        return out
