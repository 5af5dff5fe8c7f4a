"""Several in-memory WireGuard device cores joined by one lossless 'wire', with stepped time (like pair.py,
for relay-node tests: a hub and its spokes).

    m = Mesh({"r": "10.0.0.1", "a": "10.0.0.2", "b": "10.0.0.3"})
    m.link("a", "r", allowed="10.0.0.0/24")    # a's view of r: the whole network (hub-and-spoke)
    m.link("r", "a")                           # r's view of a: a's own /32
    m.send("a", [ipv4_packet("10.0.0.2", "10.0.0.3")]); m.deliver()
    m.tun["b"]                                 # what reached b's TUN

Every node has the UDP endpoint 192.0.2.<n>:51820; a datagram goes to the node owning its destination
endpoint and carries the sender's endpoint as its source. Nothing sleeps or opens a socket.
"""
from __future__ import annotations

import random

from tests.support.pair import Seeded
from wgclient.device import Device, DeviceConfig
from wgclient.noise import crypto


class Mesh:
    def __init__(self, addresses: dict[str, str], config: DeviceConfig = DeviceConfig(), seed: int = 3) -> None:
        self.now = 1000.0
        keys = random.Random(seed * 7919)
        self.addr = dict(addresses)
        self.names = list(addresses)
        self.key = {n: keys.randbytes(32) for n in self.names}
        self.pub = {n: crypto.public_key(k) for n, k in self.key.items()}
        self.ep = {n: (f"192.0.2.{i + 1}", 51820) for i, n in enumerate(self.names)}
        self.by_ep = {ep: n for n, ep in self.ep.items()}
        self.dev = {n: Device(self.key[n], random_bytes=Seeded(seed + i), config=config, wall_offset=1.7e9)
                    for i, n in enumerate(self.names)}
        self.wire: list[tuple[str, bytes, tuple]] = []     # (to, data, source)
        self.tun: dict[str, list[bytes]] = {n: [] for n in self.names}
        self.lost: list[tuple[str, bytes]] = []            # datagrams to an endpoint nobody owns

    def peer(self, node: str, other: str):
        """The peer object for `other` inside `node`'s device."""
        return self.dev[node].peers[self.pub[other]]

    def link(self, node: str, other: str, allowed: str | None = None, endpoint: bool = True):
        """Configure `other` as a peer of `node` (AllowedIPs: other's /32 unless given)."""
        dev = self.dev[node]
        peer = dev.add_peer(self.pub[other])
        for net in (allowed or f"{self.addr[other]}/32").split(","):
            dev.allowed_ips.insert(net.strip(), peer)
        if endpoint:
            dev.set_endpoint(peer, self.ep[other])
        return peer

    def collect(self, node: str) -> list:
        dev = self.dev[node]
        out = dev.out
        sent = out.datagrams + out.sealed_bytes()
        for endpoint, data in sent:
            to = self.by_ep.get(tuple(endpoint[:2]))
            if to is None:
                self.lost.append((node, data))
            else:
                self.wire.append((to, data, self.ep[node]))
        self.tun[node].extend(out.tun_packets(dev.config.tun_headroom))
        out.clear()
        return sent

    def send(self, node: str, packets: list[bytes]) -> None:
        self.dev[node].send_packets(packets, self.now)
        self.collect(node)

    def inject(self, to: str, data: bytes, source: str) -> None:
        self.dev[to].receive_datagrams([(data, self.ep[source])], self.now)
        self.collect(to)

    def deliver(self, batch: bool = False) -> int:
        """Deliver what is on the wire (and what that causes) until it is empty. With batch=True all
        datagrams queued for one node at that moment go to it in one receive_datagrams call."""
        count = 0
        while self.wire:
            if batch:
                to = self.wire[0][0]
                mine = [(d, s) for t, d, s in self.wire if t == to]
                self.wire = [w for w in self.wire if w[0] != to]
                self.dev[to].receive_datagrams(mine, self.now)
                count += len(mine)
            else:
                to, data, src = self.wire.pop(0)
                self.dev[to].receive_datagrams([(data, src)], self.now)
                count += 1
            self.collect(to)
        return count

    def handshake(self, node: str, other: str) -> None:
        self.dev[node].initiate(self.peer(node, other), self.now)
        self.collect(node)
        self.deliver()

    def advance(self, seconds: float) -> None:
        """Step time, firing every device's timers at each deadline on the way (and delivering)."""
        target = self.now + seconds
        while True:
            deadlines = [d for d in (dev.next_deadline() for dev in self.dev.values()) if d is not None]
            if not deadlines or min(deadlines) > target:
                break
            self.now = max(self.now, min(deadlines))
            for n in self.names:
                self.dev[n].on_timer(self.now)
                self.collect(n)
            self.deliver()
        self.now = target
