"""An in-memory pair of WireGuard device cores joined by a lossless, reorderable 'wire', with stepped time."""
from __future__ import annotations

import ipaddress
import os
import random
import struct

from wgclient.device import Device, DeviceConfig
from wgclient.noise import crypto

EP_A = ("192.0.2.1", 51820)
EP_B = ("192.0.2.2", 51821)


def ipv4_packet(src: str, dst: str, payload: bytes = b"", proto: int = 17) -> bytes:
    total = 20 + len(payload)
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, proto, 0,
                         ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    return header + payload


def ipv6_packet(src: str, dst: str, payload: bytes = b"", next_header: int = 17) -> bytes:
    header = struct.pack("!IHBB16s16s", 6 << 28, len(payload), next_header, 64,
                         ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed)
    return header + payload


class Seeded:
    """Deterministic randomness for cores."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def __call__(self, n: int) -> bytes:
        return self.rng.randbytes(n)


class Pair:
    """Device a (10.0.0.1, fd00::1) and device b (10.0.0.2, fd00::2), each the other's only peer."""

    def __init__(self, psk: bytes | None = None, config: DeviceConfig = DeviceConfig(), seed: int = 1,
                 b_endpoint_known: bool = True) -> None:
        self.now = 1000.0
        ka, kb = os.urandom(32), os.urandom(32)
        self.a = Device(ka, random_bytes=Seeded(seed), config=config, wall_offset=1.7e9)
        self.b = Device(kb, random_bytes=Seeded(seed + 1), config=config, wall_offset=1.7e9)
        self.pa = self.a.add_peer(crypto.public_key(kb))  # a's view of b
        self.pb = self.b.add_peer(crypto.public_key(ka))  # b's view of a
        for dev, peer, nets in ((self.a, self.pa, ["10.0.0.2/32", "fd00::2/128"]),
                                (self.b, self.pb, ["10.0.0.1/32", "fd00::1/128"])):
            for net in nets:
                dev.allowed_ips.insert(net, peer)
            dev.set_preshared_key(peer, psk)
        self.a.set_endpoint(self.pa, EP_B)
        if b_endpoint_known:
            self.b.set_endpoint(self.pb, EP_A)
        self.wire: list[tuple[str, bytes, tuple]] = []  # (to, data, source)
        self.tun: dict[str, list[bytes]] = {"a": [], "b": []}

    def dev(self, name: str) -> Device:
        return self.a if name == "a" else self.b

    def collect(self, name: str) -> None:
        dev = self.dev(name)
        out = dev.out
        src = EP_A if name == "a" else EP_B
        to = "b" if name == "a" else "a"
        for endpoint, data in out.datagrams:
            self.wire.append((to, data, src))
        for endpoint, data in out.sealed_bytes():
            self.wire.append((to, data, src))
        self.tun[name].extend(out.tun_packets(dev.config.tun_headroom))
        out.clear()

    def send(self, name: str, packets: list[bytes]) -> None:
        self.dev(name).send_packets(packets, self.now)
        self.collect(name)

    def deliver(self, limit: int | None = None) -> int:
        """Deliver queued datagrams in order (and what they cause) until the wire is empty."""
        count = 0
        while self.wire and (limit is None or count < limit):
            to, data, src = self.wire.pop(0)
            self.dev(to).receive_datagram(data, src, self.now)
            self.collect(to)
            count += 1
        return count

    def advance(self, seconds: float) -> None:
        """Step time, firing timers on both devices at each deadline on the way."""
        target = self.now + seconds
        while True:
            deadlines = [d for d in (self.a.next_deadline(), self.b.next_deadline()) if d is not None]
            nxt = min(deadlines) if deadlines else None
            if nxt is None or nxt > target:
                break
            self.now = max(self.now, nxt)
            for name in ("a", "b"):
                self.dev(name).on_timer(self.now)
                self.collect(name)
        self.now = target
