"""When the path manager pings and announces: the heartbeat of an active peer, discovery rounds, the short
backoff that repeats a round until a pong, and our CallMeMaybe announcements (shared/protocol/disco.md
§5-§6; the backoff and the resend on the peer's appearance are wgc's, issue 9).

Rules (timings in `PathConfig`):
- while a peer is active (we sent it data within 45 s) a heartbeat runs every 3 s: it pings the best
  address and, unless a trusted direct path is good enough, runs a discovery round: a disco Ping to every
  candidate not pinged within 5 s, and over DERP a CallMeMaybe with our endpoints (and NodeInfo) when a
  ping went out or no candidate is known (at most every 5 s). This goes on for as long as the peer is
  relayed, so an upgrade is always retried;
- a round that follows new information (first traffic, the peer's CallMeMaybe with new addresses, new
  endpoints of ours, the peer appearing on DERP, trust lapsing) is repeated 0.25, 0.5, 1 and 2 s later
  until a pong: a first ping often reaches the peer's NAT before the peer has punched it. The steady
  rounds are not, so a peer that stays relayed costs no more than before;
- DERP drops what it cannot deliver (the peer not connected there yet): a CallMeMaybe sent to a region
  the peer was not heard in lately goes again with each backoff step, and at once when the peer is heard
  there, so two peers started together meet as soon as both are on a common region.

A mixin of `PathManager` (manager.py), which provides `config`, `netinfo`, `home`, `node_key`,
`endpoints()`, the random source and the output list; every change of a peer's path state stays there.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from . import constants as C
from . import disco
from .peerstate import FROM_CMM, FROM_CONFIG, Addr, PeerPath, SendDisco, SentPing

if TYPE_CHECKING:  # pragma: no cover
    from .home import HomeTracker
    from .inputs import NetInfo, PathConfig


class Discovery:
    config: "PathConfig"
    netinfo: "NetInfo"
    home: "HomeTracker"
    node_key: bytes
    peers: dict
    _random: Callable[[int], bytes]
    _out: list
    _written: set

    def endpoints(self) -> tuple:  # pragma: no cover - the manager's
        raise NotImplementedError

    def _endpoints_changed(self, before: tuple, now: float) -> None:
        """New endpoints of ours (UDP came back, a new mapping or address): active peers without a trusted
        path hear them at once (CallMeMaybe) instead of at the next ~5 s retry."""
        if self.endpoints() == before:
            return
        for p in self.peers.values():
            if p.relay and not p.trusted(now) and p.active(now, self.config.session_active_timeout):
                p.last_cmm_sent = None
                self._discover(p, now)
                if p.last_cmm_sent is None:   # its candidates were pinged < 5 s ago: no CallMeMaybe went
                    self._announce(p, now)
                self._start_punching(p, now)

    def _heartbeat(self, p: PeerPath, now: float) -> None:
        cfg = self.config
        if not p.active(now, cfg.session_active_timeout):
            p.next_heartbeat = None
            return
        p.next_heartbeat = now + cfg.heartbeat_interval
        self._expire_candidates(p, now)
        if p.best is not None:
            self._send_ping(p, now, "heartbeat", addr=p.best)
        if (p.best is None or p.last_full is None or not p.trusted(now)
                or (p.best_latency > cfg.good_enough_latency and now - p.last_full >= cfg.upgrade_interval)):
            self._discover(p, now)

    def _discover(self, p: PeerPath, now: float) -> None:
        cfg = self.config
        p.last_full = now
        sent_any = False
        for cand in list(p.candidates.values()):
            if cand.last_ping is None or now - cand.last_ping >= cfg.disco_ping_interval:
                self._send_ping(p, now, "discovery", addr=cand.addr)
                sent_any = True
        if not p.relay:
            return
        if not any(s.region is not None for s in p.pings.values()) \
                and now - p.derp_heard.get(p.relay, float("-inf")) > cfg.derp_heard_window:
            self._send_ping(p, now, "probe", region=p.relay)  # is the peer connected in that region?
        if (sent_any or not p.candidates) and (p.last_cmm_sent is None
                                               or now - p.last_cmm_sent >= cfg.disco_ping_interval):
            self._announce(p, now)

    def _announce(self, p: PeerPath, now: float, region: int = 0) -> None:
        """Our endpoints (CallMeMaybe) and NodeInfo to the peer over DERP. DERP drops what it cannot
        deliver, so one sent where the peer has not been heard lately is sent again when it is heard there."""
        region = region or p.relay
        p.last_cmm_sent = now
        p.cmm_unconfirmed = now - p.derp_heard.get(region, float("-inf")) > self.config.derp_heard_window
        self._send(p, disco.CallMeMaybe(() if p.policy.no_direct else self.endpoints()), region=region)
        self._send(p, self._node_info(), region=region)

    def _peer_appeared(self, p: PeerPath, region: int, now: float) -> None:
        """The peer reached us over DERP `region` for the first time lately (it just connected there, or
        came back): if our last CallMeMaybe may have been dropped there, announce at once and punch."""
        if p.cmm_unconfirmed and not p.trusted(now) and p.active(now, self.config.session_active_timeout):
            self._announce(p, now, region)
            self._start_punching(p, now)

    def _start_punching(self, p: PeerPath, now: float) -> None:
        """A discovery round that follows new information: repeat it on the short backoff until a pong."""
        if self.config.punch_backoff and not p.trusted(now):
            p.punch_step, p.punch_at = 0, now + self.config.punch_backoff[0]

    def _punch_retry(self, p: PeerPath, now: float) -> None:
        backoff = self.config.punch_backoff
        p.punch_step += 1
        p.punch_at = now + backoff[p.punch_step] if p.punch_step < len(backoff) else None
        if p.trusted(now):
            p.punch_at = None
            return
        for cand in list(p.candidates.values()):
            self._send_ping(p, now, "discovery", addr=cand.addr)
        if p.relay and p.cmm_unconfirmed:
            self._announce(p, now)  # still not heard where it went: it may not have arrived

    def _node_info(self) -> disco.NodeInfo:
        flags = disco.NI_UDP if self.netinfo.udp else 0
        if self.netinfo.mapping_varies is not None:
            flags |= disco.NI_MAPPING_KNOWN | (disco.NI_HARD_NAT if self.netinfo.mapping_varies else 0)
        return disco.NodeInfo(self.home.home, flags)

    def _expire_candidates(self, p: PeerPath, now: float) -> None:
        for addr, cand in list(p.candidates.items()):
            if cand.sources & {FROM_CONFIG, FROM_CMM}:
                continue
            if now - cand.seen > self.config.candidate_expiry:
                del p.candidates[addr]

    def _send_ping(self, p: PeerPath, now: float, purpose: str, *, addr: Addr | None = None,
                   region: int | None = None) -> None:
        if addr is not None and p.policy.no_direct:
            return  # a peer kept off direct paths (AvoidPath / a pin) is never pinged over UDP
        tx_id = self._random(C.TXID_LEN)
        p.pings[tx_id] = SentPing(addr, region, now, purpose)
        if addr is not None:
            p.udp_pings_sent += 1
            cand = p.candidates.get(addr)
            if cand is not None:
                cand.last_ping = now
        self._send(p, disco.Ping(tx_id, self.node_key), addr=addr, region=region)

    def _send(self, p: PeerPath, message, *, addr: Addr | None = None, region: int | None = None) -> None:
        packet = p.pair.box.seal(message.encode(), self._random(C.NONCE_LEN))
        self._out.append(SendDisco(p.key, packet, addr, region))
        if region is not None:
            self._written.add(region)  # a write keeps (or makes) the region's connection wanted
