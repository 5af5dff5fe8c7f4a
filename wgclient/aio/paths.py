"""The path adapter: runs the sans-I/O PathManager (wgclient/path) beside the WireGuard device.

It owns what `wgc up --derpmap` adds to a plain interface:
- one DERP client per region in use (home region, the regions peers are reached in), opened and closed as
  the manager asks, with NotePreferred on the home connection only; each is told what netcheck says of UDP
  to its region (`set_relay_udp`, wgclient/relayudp.py), which decides whether it dials QUIC first
  (docs/derp-quic.md); `transports` names each connected region's transport (quic, upgrade, websocket);
- where each sealed WireGuard packet goes: the device stores a `PathEndpoint` token as a managed peer's
  endpoint; `route_sealed` turns tokens into the manager's `route()` (direct UDP address and/or DERP);
- the demux of what is not WireGuard: disco (to the manager, from UDP and from DERP), STUN answers (to the
  netcheck running through the WireGuard port, so the STUN-mapped address is that port's mapping;
  wgclient/aio/pathnet.py runs netcheck and watches the local addresses);
- where authenticated WireGuard packets came from (`Outputs.heard`) → `on_wireguard_from`;
- the manager's single timer;
- a new DERP map (`set_derpmap`, from `derpmap_source` while up): a removed region's connection is closed
  and its peers move to another region, a changed region's connection is redialed, a new region is
  measured by a full netcheck at once; WireGuard sessions are untouched;
- relay nodes (docs/relaynode.md): the manager's `RelayNodeChanged` becomes `Device.route_through`, and
  peers whose packets went to their relay node (`Outputs.via`) count as active for the manager.
Packets received over DERP enter the device with the source `("127.3.3.40", region)`, Tailscale's
magic DERP address, so the core needs no new type of endpoint; what came over DERP and is neither
WireGuard nor disco is dropped at once and counted (and logged, rate-limited) under its region.
Lines that a flapping relay would repeat (region up/down, home changes) are rate-limited per region.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from typing import TYPE_CHECKING, Callable

from derp import protocol as DP
from derp.aio.client import DerpClient, Disconnected, TransportChanged
from derp.aio.targets import targets_for_region
from derp.derpmap import DerpMap, MapChange, diff_derpmaps
from derp.ratelog import RateLimitedLog
from derp.transport_choice import UDP

from ..derpregions import regions_from_derpmap
from ..keys import short
from ..path import demux, disco
from ..path.manager import PathManager
from ..path.peerstate import (CloseRegion, ConnectRegion, PathChanged, PingResult, RelayNodeChanged, Route,
                              SendDisco, SetHome)
from ..path.relaychoice import AUTO, Policy
from .pathnet import NetWatch

if TYPE_CHECKING:  # pragma: no cover
    from .derpmap_source import DerpMapSource
    from .runner import Runner

log = logging.getLogger("wgc.paths")

DERP_MAGIC_IP = "127.3.3.40"   # the source of packets that came over DERP: (this, region id, sender key)
PENDING_PER_REGION = 64        # packets held for a DERP region while its connection is being made
PENDING_TIMEOUT = 5.0          # ... for at most this long
CONNECT_GRACE = 3.0            # a region not connected this long after the dial started counts as down
LOG_INTERVAL = 30.0            # a line a flapping relay or a flood would repeat: at most this often per region


class PathEndpoint:
    """The endpoint token of a managed peer: where its packets really go is asked of the manager."""

    __slots__ = ("key",)

    def __init__(self, key: bytes) -> None:
        self.key = key

    def __repr__(self) -> str:
        return f"PathEndpoint({short(self.key)})"


class Paths:
    """The path manager wired to a Runner's UDP port, a set of DERP clients and netcheck."""

    def __init__(self, runner: "Runner", derpmap: DerpMap, *, interface: str, ca_file: str | None = None,
                 netcheck_interval: float | None = None, random_bytes: Callable[[int], bytes] = os.urandom,
                 source: "DerpMapSource | None" = None, transport: str = "auto") -> None:
        self.runner = runner
        self.device = runner.device
        self.derpmap = derpmap
        self.source = source
        if source is not None:   # map refreshes are fetched with the UDP port's mark, as the DERP links
            source.follow_fwmark(lambda: runner.udp.fwmark)
        self.interface = interface
        self.ca_file = ca_file
        self.transport = transport               # DerpClient transport: auto, or forced (wgc up --derp-transport)
        self.pm = PathManager(self.device.identity.private_key, random_bytes=random_bytes)
        self.regions = regions_from_derpmap(derpmap)
        self.clients: dict[int, DerpClient] = {}
        self.transports: dict[int, str] = {}     # region -> "quic" | "upgrade" | "websocket" while connected
        self.relay_udp: dict[int, UDP] = {}      # region -> what the last netcheck said of UDP to it
        self.derp_heard: dict[int, float] = {}   # region -> loop time of its last frame (home stickiness)
        self.home = 0
        self.loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._derp_in: list[tuple[bytes, tuple]] = []
        self._derp_drain_scheduled = False
        self._pings: dict[bytes, list[asyncio.Future]] = {}
        self._pending: dict[int, collections.deque] = {}
        self._route_of: dict[bytes, Route] = {}  # peer -> the route of its last PathChanged
        self._tasks: list[asyncio.Task] = []
        self._closing = False
        self.drops: dict[str, int] = {}
        self.endpoints: dict[bytes, PathEndpoint] = {}
        self._rlog = RateLimitedLog(log, LOG_INTERVAL)
        self._garbage_keys: dict[int, str] = {}  # region -> its drop counter's name (not formatted per packet)
        self.net = NetWatch(self, netcheck_interval)

    # -- peers ---------------------------------------------------------------------------------------------
    def add_peer(self, key: bytes, *, psk: bytes | None = None, name: str | None = None, region_hint: int = 0,
                 endpoint: tuple | None = None, relay_node: bool = False, policy: Policy = AUTO) -> None:
        peer = self.device.peers[key]
        self.pm.add_peer(key, psk=psk, name=name, region_hint=region_hint, endpoint=endpoint,
                         relay_node=relay_node, policy=policy)
        token = self.endpoints[key] = PathEndpoint(key)
        peer.managed = True
        peer.endpoint = token

    def add_candidate(self, key: bytes, addr: tuple) -> None:
        """An address to try for the peer (`wg set ... endpoint`), as if it came from the config."""
        self._apply(self.pm.add_candidate(key, addr, time.monotonic()))

    def remove_peer(self, key: bytes) -> None:
        self.pm.remove_peer(key)
        self.endpoints.pop(key, None)
        self._route_of.pop(key, None)
        self._apply(self.pm.refresh(time.monotonic()))  # peers it was the relay node of move at once

    def set_relay_udp(self, udp: dict[int, UDP]) -> None:
        """netcheck's word on UDP per region (STUN answered or not): each DERP client's transport choice."""
        self.relay_udp = dict(udp)
        for rid, client in self.clients.items():
            client.set_udp(self.relay_udp.get(rid, UDP.UNKNOWN))

    def set_fwmark(self, mark: int) -> None:
        """`wg set NAME fwmark M`: the DERP connections follow the UDP port (netcheck reads it per run)."""
        for client in self.clients.values():
            client.set_fwmark(mark)

    def direct_endpoint(self, key: bytes) -> tuple | None:
        """The UDP address packets to the peer go to now (None while only relayed): for `wg show`."""
        return self.pm.route(key, time.monotonic()).direct

    # -- lifecycle -----------------------------------------------------------------------------------------
    async def start(self, first_netcheck_timeout: float = 3.5) -> None:
        """Learn the regions, run a first netcheck (bounded), connect home; then keep things fresh."""
        now = time.monotonic()
        self.runner.device.collect_foreign = True
        self._apply(self.pm.set_regions(self._region_codes(), now))
        await self.net.start(now, first_netcheck_timeout)
        self._tasks.append(asyncio.create_task(self.net.netcheck_loop()))
        self._tasks.append(asyncio.create_task(self.net.address_loop()))
        if self.source is not None:
            self._tasks.append(asyncio.create_task(self.source.run(self.set_derpmap)))

    def _region_codes(self) -> dict[int, str]:
        return {r.region_id: r.code for r in self.regions if self.derpmap.regions[r.region_id].derp_nodes()}

    def set_derpmap(self, derpmap: DerpMap, change: MapChange | None = None) -> None:
        """Apply a new DERP map without a restart (see the module docstring)."""
        if change is None:
            change = diff_derpmaps(self.derpmap, derpmap)
        if not change or self._closing:
            return
        self.derpmap = derpmap
        self.regions = regions_from_derpmap(derpmap)
        for region in change.removed + change.changed:
            client = self.clients.pop(region, None)
            self.transports.pop(region, None)
            self.derp_heard.pop(region, None)
            if client is not None:
                self._tasks.append(asyncio.create_task(client.close()))
        self._apply(self.pm.set_regions(self._region_codes(), time.monotonic(), reconnect=change.changed))
        self.net.soon(full=True)

    async def close(self) -> None:
        self._closing = True
        stats = {rid: c.stats for rid, c in self.clients.items()}
        log.info("paths closing: drops %s, path manager drops %s, DERP %s", self.drops or "none",
                 self.pm.drops or "none",
                 "; ".join(f"{rid}: sent {st.sent} received {st.received} dropped "
                           f"{st.dropped_not_connected}+{st.dropped_backpressure}" for rid, st in stats.items()))
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(c.close() for c in self.clients.values()), return_exceptions=True)
        self.clients.clear()
        for futures in self._pings.values():
            for fut in futures:
                if not fut.done():
                    fut.cancel()

    # -- from the runner -----------------------------------------------------------------------------------
    def on_foreign(self, datagrams: list, now: float) -> None:
        """Datagrams the device did not take as WireGuard: disco or STUN from UDP; from DERP only garbage
        that looked like WireGuard (the rest was sorted out on arrival)."""
        for data, source in datagrams:
            if source[0] == DERP_MAGIC_IP:
                self._derp_garbage(source[1], None, now)
                continue
            kind = demux.classify(data)
            if kind == demux.DISCO:
                log.debug("disco in via UDP from %s", source)
                self._apply(self.pm.on_disco(data, now, addr=disco.canonical_addr(source)), now)
            elif kind == demux.STUN and self.net.stun_receive is not None:
                self.net.stun_receive(data, source)
            else:
                self._drop("udp: not WireGuard, disco or STUN")

    def on_via(self, peers: list, now: float) -> None:
        """Peers whose packets went to their relay node this batch: they are active for the manager
        (discovery goes on, so they go direct when hole punching works)."""
        pm = self.pm
        for peer in peers:
            outs = pm.on_data_sent(peer.public_key, now)
            if outs:
                self._apply(outs, now)

    def on_heard(self, heard: list, now: float) -> None:
        """Authenticated WireGuard packets' sources, once per peer and batch."""
        pm = self.pm
        for peer, source in heard:
            if source[0] == DERP_MAGIC_IP:
                outs = pm.on_wireguard_from(peer.public_key, now, region=source[1])
            else:
                outs = pm.on_wireguard_from(peer.public_key, now, addr=disco.canonical_addr(source))
            if outs:
                self._apply(outs, now)

    def route_sealed(self, buf: bytearray, sealed: list, now: float) -> list:
        """The UDP part of the sealed messages (tokens replaced by direct addresses); relays the rest."""
        out = []
        routes: dict = {}
        relayed: dict[int, list] = {}
        pm = self.pm
        for item in sealed:
            endpoint = item[0]
            if type(endpoint) is not PathEndpoint:
                out.append(item)
                continue
            route = routes.get(endpoint)
            if route is None:
                outs = pm.on_data_sent(endpoint.key, now)
                if outs:
                    self._apply(outs, now)
                route = routes[endpoint] = pm.route(endpoint.key, now)
            if route.direct is not None:
                out.append((route.direct, item[1], item[2]))
            if route.relay is not None:
                batch = relayed.get(route.relay)
                if batch is None:
                    batch = relayed[route.relay] = []
                batch.append((endpoint.key, bytes(buf[item[1]:item[2]])))
            elif route.direct is None:
                self._drop("no path to peer yet")
        for region, batch in relayed.items():
            client = self.clients.get(region)
            if client is not None and client.connected:
                if client.send_packets(batch) < len(batch):
                    self._drop("relay not connected or backlogged")
            else:
                for key, data in batch:
                    self._relay(region, key, data)
        return out

    def send_datagram(self, endpoint, data: bytes, now: float) -> None:
        """A handshake (or cookie) message the device addressed to a token or a DERP source."""
        if type(endpoint) is PathEndpoint:
            outs = self.pm.on_data_sent(endpoint.key, now)
            if outs:
                self._apply(outs, now)
            route = self.pm.route(endpoint.key, now)
            if route.direct is not None:
                self.runner.udp.send(data, route.direct)
            if route.relay is not None:
                self._relay(route.relay, endpoint.key, data)
            elif route.direct is None:
                self._drop("no path to peer yet")
        elif endpoint[0] == DERP_MAGIC_IP:   # a cookie reply to a DERP source: back to its sender key
            self._relay(endpoint[1], endpoint[2], data)
        else:
            self.runner.udp.send(data, endpoint)

    def _relay(self, region: int, key: bytes, data: bytes) -> None:
        client = self.clients.get(region)
        if client is None or not client.connected:
            # Held until the connection is up (a first handshake or CallMeMaybe is not lost to a dial).
            if client is None:
                self._connect(region)
            pending = self._pending.get(region)
            if pending is None:
                pending = self._pending[region] = collections.deque(maxlen=PENDING_PER_REGION)
                self._tasks.append(asyncio.create_task(self._send_when_connected(region)))
            if len(pending) == pending.maxlen:
                self._drop("relay backlog while connecting")
            pending.append((key, data))
            return
        if not client.send_packet(key, data):
            self._drop("relay not connected or backlogged")

    async def _send_when_connected(self, region: int) -> None:
        try:
            client = self.clients.get(region)
            if client is not None:
                await client.wait_connected(PENDING_TIMEOUT)
        except asyncio.TimeoutError:
            pass
        finally:
            pending = self._pending.pop(region, ())
        client = self.clients.get(region)
        for key, data in pending:
            if client is None or not client.send_packet(key, data):
                self._drop("relay not connected or backlogged")

    # -- DERP ----------------------------------------------------------------------------------------------
    def _connect(self, region: int) -> None:
        if region in self.clients or self._closing:
            return
        reg = self.derpmap.regions.get(region)
        if reg is None or not reg.derp_nodes():
            self._drop("unknown DERP region")
            return
        me: list[DerpClient] = []      # events of a client replaced after a map change are ignored
        targets = targets_for_region(reg)
        transport = self.transport
        if transport == "quic" and not any(t.quic_port for t in targets):
            log.warning("DERP region %d has no node with WgcQUICPort; reaching it the usual way, not QUIC only",
                        region)
            transport = "auto"
        client = DerpClient(self.device.identity.private_key, targets, ca_file=self.ca_file, transport=transport,
                            on_packet=lambda src, data, r=region: self._on_derp_packet(r, src, data),
                            on_event=lambda ev, r=region: self._on_derp_event(r, ev, me[0]),
                            preferred=(region == self.home), label=f"region {region}",
                            fwmark=self.runner.udp.fwmark, udp=self.relay_udp.get(region, UDP.UNKNOWN))
        me.append(client)
        self.clients[region] = client
        self._tasks.append(asyncio.create_task(client.start(wait=False)))
        self._tasks.append(asyncio.create_task(self._watch_connect(region, client)))
        log.info("connecting to DERP region %s (%d)", reg.region_code, region)

    async def _watch_connect(self, region: int, client: DerpClient) -> None:
        """A region that does not connect in time counts as down (home failover), while the client keeps
        retrying with backoff; its first connection brings it back."""
        try:
            await client.wait_connected(CONNECT_GRACE)
        except asyncio.TimeoutError:
            if self.clients.get(region) is client and not client.connected and not self._closing:
                log.warning("DERP region %d: no connection after %.0f s; treating it as down", region,
                            CONNECT_GRACE)
                self._apply(self.pm.on_region_down(region, time.monotonic()))

    def _on_derp_packet(self, region: int, src: bytes, data: bytes) -> None:
        self.derp_heard[region] = self.loop.time()
        kind = demux.classify(data)
        if kind == demux.WIREGUARD:
            self._derp_in.append((data, (DERP_MAGIC_IP, region, src)))   # sender key: handshake_gate.py
            if not self._derp_drain_scheduled:
                self._derp_drain_scheduled = True
                self.loop.call_soon(self._drain_derp)
        elif kind == demux.DISCO:
            log.debug("disco in via DERP %d from %s (drops %s)", region, short(src), self.pm.drops)
            self._apply(self.pm.on_disco(data, time.monotonic(), region=region, derp_src=src))
        else:
            self._derp_garbage(region, src, time.monotonic())

    def _derp_garbage(self, region: int, src: bytes | None, now: float) -> None:
        """A packet over DERP that is neither WireGuard nor disco: counted under its region, cheaply."""
        name = self._garbage_keys.get(region)
        if name is None:
            name = self._garbage_keys[region] = f"derp region {region}: not WireGuard or disco"
        self.drops[name] = self.drops.get(name, 0) + 1
        self._rlog.log(logging.INFO, ("garbage", region), now,
                       "DERP region %d: dropping packets that are neither WireGuard nor disco (last from %s)",
                       region, short(src) if src else "?")

    def _drain_derp(self) -> None:
        """WireGuard packets that came over DERP, in one batch into the device."""
        self._derp_drain_scheduled = False
        batch, self._derp_in = self._derp_in, []
        if batch:
            self.device.receive_datagrams(batch, time.monotonic())
            self.runner.flush()

    def _on_derp_event(self, region: int, ev, sender: DerpClient | None = None) -> None:
        now = time.monotonic()
        client = self.clients.get(region)
        if sender is not None and sender is not client:
            return  # a connection closed because its region left or changed in the DERP map
        if isinstance(ev, DP.Connected):
            self.derp_heard[region] = self.loop.time()
            self.transports[region] = (client.link if client is not None else "") or "upgrade"
            self._rlog.log(logging.INFO, ("up", region), now, "DERP region %d connected (%s)", region,
                           self.transports[region])
            if client is not None:
                client.note_preferred(region == self.home)
            self._apply(self.pm.on_region_up(region, now), now)
        elif isinstance(ev, TransportChanged):   # no gap: the region stays up, only the transport moved
            if region in self.transports:
                self.transports[region] = ev.transport
            self._rlog.log(logging.INFO, ("transport", region), now, "DERP region %d now over %s (was %s: %s)",
                           region, ev.transport, ev.previous, ev.reason)
        elif isinstance(ev, Disconnected):
            if self.transports.pop(region, None) is not None:
                self._rlog.log(logging.INFO, ("down", region), now, "DERP region %d disconnected: %s", region,
                               ev.reason)
                self._apply(self.pm.on_region_down(region, now), now)
        elif isinstance(ev, DP.PeerGoneReceived):
            if ev.key in self.pm.peers:
                self._apply(self.pm.on_peer_gone(ev.key, region, now), now)
        elif isinstance(ev, DP.HealthChanged) and ev.problem:
            self._rlog.log(logging.WARNING, ("health", region), now, "DERP region %d reports a problem: %s",
                           region, ev.problem)

    # -- manager outputs -----------------------------------------------------------------------------------
    def _apply(self, outs: list, now: float | None = None) -> None:
        for o in outs:
            kind = type(o)
            if kind is SendDisco:
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("[peer:%s] disco out via %s", short(o.peer),
                              o.addr if o.addr is not None else f"DERP {o.region}")
                if o.addr is not None:
                    self.runner.udp.send(o.packet, o.addr)
                if o.region is not None:
                    self._relay(o.region, o.peer, o.packet)
            elif kind is ConnectRegion:
                self._connect(o.region)
            elif kind is CloseRegion:
                client = self.clients.pop(o.region, None)
                self.transports.pop(o.region, None)
                if client is not None:
                    log.info("closing idle DERP region %d", o.region)
                    self._tasks.append(asyncio.create_task(client.close()))
            elif kind is SetHome:
                self.home = o.region
                self._rlog.log(logging.INFO, ("home", o.region), time.monotonic(), "home DERP region: %s (%d)",
                               self.pm.home.code(o.region), o.region)
                for rid, client in self.clients.items():
                    client.note_preferred(rid == o.region)
                if o.region and o.region not in self.clients:
                    self._connect(o.region)
            elif kind is PingResult:
                for fut in self._pings.pop(o.peer, []):
                    if not fut.done():
                        fut.set_result(o)
            elif kind is RelayNodeChanged:  # the manager logged it: steer the core
                peer = self.device.peers.get(o.peer)
                relay = self.device.peers.get(o.relay_node) if o.relay_node is not None else None
                if peer is not None:
                    self.device.route_through(peer, relay)
                    if relay is None:  # back to the peer's own session (DERP or direct): no wait
                        self.loop.call_soon(self._resend_handshake, o.peer)
            elif kind is PathChanged:  # the manager logged it; status reads the manager
                if o.peer in self._route_of and self._route_of[o.peer] != o.route:
                    self.loop.call_soon(self._resend_handshake, o.peer)
                self._route_of[o.peer] = o.route
        self._rearm()

    def apply(self, outs: list) -> None:
        """Carry out outputs of a manager call made from outside (a config reload)."""
        self._apply(outs, time.monotonic())

    def _resend_handshake(self, key: bytes) -> None:
        """A handshake that went by the old route may be lost (e.g. to a DERP region the peer had not
        joined yet, as when both start at once): send it on the new path (direct, another region) now."""
        peer = self.device.peers.get(key)
        if peer is not None and not self._closing:
            self.device.resend_handshake(peer, time.monotonic())
            self.runner.flush()

    def _rearm(self) -> None:
        deadline = self.pm.next_deadline()
        if deadline == self._timer_at or self._closing:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = None if deadline is None else \
            self.loop.call_later(max(0.0, deadline - time.monotonic()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self._apply(self.pm.on_timer(time.monotonic()))

    def _drop(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1

    # -- for the control socket ----------------------------------------------------------------------------
    async def ping(self, key: bytes, timeout: float) -> PingResult | None:
        fut = self.loop.create_future()
        self._pings.setdefault(key, []).append(fut)
        self._apply(self.pm.ping(key, time.monotonic()))
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            return None
        finally:
            waiting = self._pings.get(key)
            if waiting and fut in waiting:
                waiting.remove(fut)

    def netcheck_summary(self) -> dict | None:
        return self.net.summary()

    def region_list(self) -> list[dict]:
        return [{"id": r.region_id, "code": r.code, "connected": r.region_id in self.transports,
                 "home": r.region_id == self.home, "transport": self.transport_of(r.region_id)}
                for r in self.regions if r.region_id in self.clients or r.region_id == self.home]

    def transport_of(self, region: int) -> str | None:
        """How a connected region is reached: "quic", "upgrade" or "websocket" (None: not connected)."""
        client = self.clients.get(region)
        if region in self.transports and client is not None and client.link:
            return client.link
        return self.transports.get(region)


__all__ = ["Paths", "PathEndpoint", "DERP_MAGIC_IP"]
