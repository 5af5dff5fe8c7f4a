"""In-memory network for path-manager tests: nodes behind simulated NATs, DERP regions, virtual time.

Each node owns a real `PathManager`; the simulator carries out its outputs (UDP through the NATs, DERP
through regions that can go down) and advances virtual time to the next event or manager deadline.
NAT kinds: "none" (public address), "cone" (endpoint-independent mapping, address-dependent filtering),
"port-restricted" (endpoint-independent mapping, address-and-port-dependent filtering), "symmetric" (a new
port per destination, address-and-port-dependent filtering), "blocked" (no UDP at all). Every kind but
"none" needs both sides to send first (simultaneous opening). DERP sends wait in a per-region queue
(32 deep, as the adapter's) while the connection is being made; a node started later (`start(at=...)`)
is on no region until then, so what reaches DERP for it is answered with PeerGone. Application traffic
is modelled as a data packet every `data_interval` seconds from each node (or only the `senders`) to each
peer, sent the way `route()` says, and delivered as `on_wireguard_from`; a node that is not a sender
answers each packet with one of its own (as a ping's echo reply) unless `echo` is off.
"""
from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field

from wgclient import keys
from wgclient.path.manager import NetInfo, PathConfig, PathManager
from wgclient.path.peerstate import CloseRegion, ConnectRegion, PathChanged, SendDisco, SetHome

STUN_SERVER = ("203.0.113.100", 3478)
UDP_LATENCY = 0.010
DERP_LATENCY = 0.030
WG_PORT = 41641


class Nat:
    def __init__(self, kind: str, public_ip: str) -> None:
        self.kind = kind
        self.public_ip = public_ip
        self.mappings: dict[tuple, int] = {}     # (private src, dst or None) -> public port
        self.reverse: dict[int, tuple] = {}      # public port -> private src
        self.allowed: set[tuple] = set()         # (public port, remote addr) that may come in
        self._ports = itertools.count(40000)

    def outbound(self, src: tuple, dst: tuple) -> tuple | None:
        if self.kind == "blocked":
            return None
        if self.kind == "none":
            return src
        key = (src, dst if self.kind == "symmetric" else None)
        if key not in self.mappings:
            port = next(self._ports)
            self.mappings[key] = port
            self.reverse[port] = src
        port = self.mappings[key]
        self.allowed.add((port, dst[0] if self.kind == "cone" else dst))
        return (self.public_ip, port)

    def inbound(self, dst: tuple, src: tuple) -> tuple | None:
        if self.kind == "blocked":
            return None
        if self.kind == "none":
            return dst
        port = dst[1]
        if port in self.reverse and (port, src[0] if self.kind == "cone" else src) in self.allowed:
            return self.reverse[port]
        return None


@dataclass
class Node:
    name: str
    private_key: bytes
    manager: PathManager
    private_addr: tuple
    nat: Nat
    region_latency: dict
    connected: set = field(default_factory=set)
    up_at: float | None = None                          # when its home region first connected
    queued: dict = field(default_factory=dict)         # region -> DERP sends waiting for the connection
    homes: list = field(default_factory=list)          # (time, region) of every SetHome
    changes: list = field(default_factory=list)        # (time, PathChanged)
    received: list = field(default_factory=list)       # (time, seq, "udp"|region) data packets

    @property
    def key(self) -> bytes:
        return keys.public_key(self.private_key)


class Sim:
    def __init__(self, regions: dict[int, str] | None = None, config: PathConfig = PathConfig(),
                 data_interval: float = 0.5, seed: int = 1, senders: set[str] | None = None, echo: bool = True) -> None:
        self.now = 0.0
        self.regions = regions or {1: "fra"}
        self.region_up = {r: True for r in self.regions}
        self.config = config
        self.data_interval = data_interval
        self.rng = random.Random(seed)
        self.nodes: list[Node] = []
        self.by_public: dict[str, Node] = {}
        self.udp_cut = False                   # a firewall between the NATs drops all UDP
        self._events: list = []
        self._seq = itertools.count()
        self._data_seq = itertools.count()
        self.data_sent: list = []              # (time, seq, src name, dst name)
        self.traffic = True
        self.senders = senders                 # None: every node sends; else the others only echo
        self.echo = echo

    # --- set-up ----------------------------------------------------------------------------------

    def add_node(self, name: str, nat_kind: str, region_latency: dict | None = None) -> Node:
        index = len(self.nodes) + 1
        private = keys.clamp(self.rng.randbytes(32))
        rng = random.Random(index)
        manager = PathManager(private, random_bytes=rng.randbytes, config=self.config)
        private_addr = (f"10.0.{index}.2", WG_PORT)
        nat = Nat(nat_kind, f"198.51.100.{index}")
        node = Node(name, private, manager, private_addr, nat, region_latency or {1: 0.01})
        if nat_kind == "none":
            private_addr = node.private_addr = (nat.public_ip, WG_PORT)
        self.nodes.append(node)
        self.by_public[nat.public_ip] = node
        return node

    def start(self, at: dict[str, float] | None = None) -> None:
        """Peers know each other (as from a wg-quick config); regions, endpoints and netcheck arrive, at
        once or for node NAME at time `at[NAME]`."""
        for node in self.nodes:
            for other in self.nodes:
                if other is not node:
                    node.manager.add_peer(other.key, name=other.name)
        for node in self.nodes:
            t = (at or {}).get(node.name, self.now)
            if t <= self.now:
                self._start_node(node)
            else:
                self.at(t, lambda n=node: self._start_node(n))

    def _start_node(self, node: Node) -> None:
        m = node.manager
        self._apply(node, m.set_regions(self.regions, self.now))
        self._apply(node, m.set_local_endpoints([node.private_addr], self.now))
        self.netcheck(node)
        if self.traffic and (self.senders is None or node.name in self.senders):
            self.at(self.now, lambda: self._data_tick(node))

    def netcheck(self, node: Node) -> None:
        mapped = node.nat.outbound(node.private_addr, STUN_SERVER)
        latency = {r: v for r, v in node.region_latency.items() if self.region_up.get(r)}
        preferred = min(latency, key=lambda r: latency[r]) if latency else 0
        info = NetInfo(preferred, latency, udp=mapped is not None,
                       mapping_varies=None if mapped is None else node.nat.kind == "symmetric",
                       endpoints=(mapped,) if mapped else ())
        self._apply(node, node.manager.on_netcheck(info, self.now))

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    # --- event loop ------------------------------------------------------------------------------

    def at(self, t: float, fn) -> None:
        heapq.heappush(self._events, (t, next(self._seq), fn))

    def run_until(self, until: float) -> None:
        spins = 0
        while True:
            t_event = self._events[0][0] if self._events else float("inf")
            deadlines = [(n.manager.next_deadline(), n) for n in self.nodes]
            t_timer = min((d for d, _ in deadlines if d is not None), default=float("inf"))
            t = min(t_event, t_timer)
            if t > until:
                self.now = until
                return
            spins = spins + 1 if t <= self.now else 0
            assert spins < 10000, "a deadline does not move forward"
            self.now = max(self.now, t)
            if t_event <= t_timer:
                _, _, fn = heapq.heappop(self._events)
                fn()
            else:
                for d, n in deadlines:
                    if d is not None and d <= self.now:
                        self._apply(n, n.manager.on_timer(self.now))

    def step_until(self, until: float, step: float, check) -> None:
        """Run in small steps, calling `check(now)` after each."""
        while self.now < until:
            self.run_until(min(until, self.now + step))
            check(self.now)

    # --- carrying out outputs ----------------------------------------------------------------------

    def _apply(self, node: Node, outputs: list) -> None:
        for o in outputs:
            if isinstance(o, SendDisco):
                if o.addr is not None:
                    self._udp(node, o.addr, lambda dst, src, p=o.packet: self._apply(
                        dst, dst.manager.on_disco(p, self.now, addr=src)))
                else:
                    self._derp(node, o.peer, o.region, lambda dst, p=o.packet, r=o.region: self._apply(
                        dst, dst.manager.on_disco(p, self.now, region=r, derp_src=node.key)))
            elif isinstance(o, ConnectRegion):
                self.at(self.now + DERP_LATENCY, lambda r=o.region: self._connect(node, r))
            elif isinstance(o, CloseRegion):
                node.connected.discard(o.region)
            elif isinstance(o, SetHome):
                node.homes.append((self.now, o.region))
            elif isinstance(o, PathChanged):
                node.changes.append((self.now, o))

    def _connect(self, node: Node, region: int) -> None:
        if self.region_up.get(region):
            node.connected.add(region)
            if node.up_at is None and region == node.manager.home.home:
                node.up_at = self.now
            for send in node.queued.pop(region, []):
                send()
            self._apply(node, node.manager.on_region_up(region, self.now))
        else:
            self._apply(node, node.manager.on_region_down(region, self.now))
            # the adapter retries with backoff
            self.at(self.now + 1.0, lambda: self._connect(node, region))

    def set_region_up(self, region: int, up: bool) -> None:
        self.region_up[region] = up
        for node in self.nodes:
            if not up and region in node.connected:
                node.connected.discard(region)
                self._apply(node, node.manager.on_region_down(region, self.now))
                self.at(self.now + 1.0, lambda n=node: self._connect(n, region))

    def _udp(self, node: Node, dst: tuple, deliver) -> None:
        src = node.nat.outbound(node.private_addr, dst)
        if src is None or self.udp_cut:
            return
        target = self.by_public.get(dst[0])
        if target is None:
            return  # a private address of another site: unroutable

        def arrive() -> None:
            inner = target.nat.inbound(dst, src)
            if inner == target.private_addr:
                deliver(target, src)
        self.at(self.now + UDP_LATENCY, arrive)

    def _derp(self, node: Node, peer_key: bytes, region: int, deliver) -> None:
        if region not in node.connected:
            queue = node.queued.setdefault(region, [])
            queue.append(lambda: self._derp(node, peer_key, region, deliver))
            del queue[:-32]
            return
        target = next(n for n in self.nodes if n.key == peer_key)

        def arrive() -> None:
            if not self.region_up.get(region):
                return
            if region in target.connected:
                deliver(target)
            else:  # DERP answers PeerGone(NotHere)
                self.at(self.now + DERP_LATENCY, lambda: self._apply(
                    node, node.manager.on_peer_gone(peer_key, region, self.now)))
        self.at(self.now + DERP_LATENCY, arrive)

    # --- application data --------------------------------------------------------------------------

    def _data_tick(self, node: Node) -> None:
        for peer in self.nodes:
            if peer is not node:
                self._send_data(node, peer)
        if self.traffic:
            self.at(self.now + self.data_interval, lambda: self._data_tick(node))

    def _send_data(self, node: Node, peer: Node) -> None:
        self._apply(node, node.manager.on_data_sent(peer.key, self.now))
        route = node.manager.route(peer.key, self.now)
        seq = next(self._data_seq)
        self.data_sent.append((self.now, seq, node.name, peer.name))
        if route.direct is not None:
            self._udp(node, route.direct, lambda dst, src, s=seq: self._data_in(dst, node, s, addr=src))
        if route.relay is not None:
            self._derp(node, peer.key, route.relay,
                       lambda dst, s=seq, r=route.relay: self._data_in(dst, node, s, region=r))

    def _data_in(self, dst: Node, src: Node, seq: int, *, addr=None, region=None) -> None:
        dst.received.append((self.now, seq, "udp" if addr else region))
        self._apply(dst, dst.manager.on_wireguard_from(src.key, self.now, addr=addr, region=region))
        if self.traffic and self.echo and self.senders is not None and dst.name not in self.senders:
            self._send_data(dst, src)  # the echo reply

    def delivered(self, dst: str, src: str, start: float, end: float) -> list:
        """Data packets src -> dst sent in [start, end) that arrived (by any path)."""
        sent = {s for t, s, a, b in self.data_sent if a == src and b == dst and start <= t < end}
        return sorted(sent & {s for _, s, _ in self.node(dst).received})

    def sent(self, dst: str, src: str, start: float, end: float) -> list:
        return sorted(s for t, s, a, b in self.data_sent if a == src and b == dst and start <= t < end)
