"""An in-memory pair of WireGuard device cores joined by a lossless, reorderable 'wire', with stepped time.

Nothing here sleeps or opens a socket: `Pair.now` is the clock, `advance()` steps it to each timer deadline
of either device in turn, and the 'wire' is a list of datagrams a test may deliver, drop, reorder, replay
or tamper with. Every datagram either device emits is also logged in `Pair.sent` with its time and the
endpoint it was addressed to, so timer and roaming tests can check when and where things were sent.
"""
from __future__ import annotations

import ipaddress
import random
import struct

from wgclient.device import Device, DeviceConfig
from wgclient.noise import crypto
from wgclient.noise.messages import message_type

EP_A = ("192.0.2.1", 51820)
EP_B = ("192.0.2.2", 51821)

INITIATION, RESPONSE, COOKIE_REPLY, TRANSPORT = 1, 2, 3, 4


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


_SAME = object()


class Pair:
    """Device a (10.0.0.1, fd00::1) and device b (10.0.0.2, fd00::2), each the other's only peer.

    `pa` is a's view of b, `pb` is b's view of a. `psk_b` defaults to `psk`; `config_b` to `config`.
    """

    def __init__(self, psk: bytes | None = None, config: DeviceConfig = DeviceConfig(), seed: int = 1,
                 b_endpoint_known: bool = True, *, psk_b=_SAME, config_b: DeviceConfig | None = None) -> None:
        self.now = 1000.0
        keys = random.Random(seed * 7919)
        self.key_a, self.key_b = keys.randbytes(32), keys.randbytes(32)
        self.a = Device(self.key_a, random_bytes=Seeded(seed), config=config, wall_offset=1.7e9)
        self.b = Device(self.key_b, random_bytes=Seeded(seed + 1), config=config_b or config, wall_offset=1.7e9)
        self.pa = self.a.add_peer(crypto.public_key(self.key_b))  # a's view of b
        self.pb = self.b.add_peer(crypto.public_key(self.key_a))  # b's view of a
        for dev, peer, nets, key in ((self.a, self.pa, ["10.0.0.2/32", "fd00::2/128"], psk),
                                     (self.b, self.pb, ["10.0.0.1/32", "fd00::1/128"],
                                      psk if psk_b is _SAME else psk_b)):
            for net in nets:
                dev.allowed_ips.insert(net, peer)
            dev.set_preshared_key(peer, key)
        self.a.set_endpoint(self.pa, EP_B)
        if b_endpoint_known:
            self.b.set_endpoint(self.pb, EP_A)
        self.source = {"a": EP_A, "b": EP_B}  # the UDP source each device's datagrams carry (roaming)
        self.wire: list[tuple[str, bytes, tuple]] = []  # (to, data, source)
        self.sent: list[tuple[float, str, bytes, tuple]] = []  # (time, from, data, endpoint): all emitted
        self.tun: dict[str, list[bytes]] = {"a": [], "b": []}
        self.events: dict[str, list[object]] = {"a": [], "b": []}

    def dev(self, name: str) -> Device:
        return self.a if name == "a" else self.b

    def peer(self, name: str):
        """The peer object inside device `name` (its view of the other side)."""
        return self.pa if name == "a" else self.pb

    def collect(self, name: str) -> None:
        dev = self.dev(name)
        out = dev.out
        src = self.source[name]
        to = "b" if name == "a" else "a"
        for endpoint, data in out.datagrams + out.sealed_bytes():
            self.wire.append((to, data, src))
            self.sent.append((self.now, name, data, endpoint))
        self.tun[name].extend(out.tun_packets(dev.config.tun_headroom))
        self.events[name].extend(out.events)
        out.clear()

    def send(self, name: str, packets: list[bytes]) -> None:
        self.dev(name).send_packets(packets, self.now)
        self.collect(name)

    def ping(self, name: str, payload: bytes = b"ping", v6: bool = False) -> bytes:
        """Send one inner packet from device `name` to the other side; returns the packet."""
        if v6:
            src, dst = ("fd00::1", "fd00::2") if name == "a" else ("fd00::2", "fd00::1")
            packet = ipv6_packet(src, dst, payload)
        else:
            src, dst = ("10.0.0.1", "10.0.0.2") if name == "a" else ("10.0.0.2", "10.0.0.1")
            packet = ipv4_packet(src, dst, payload)
        self.send(name, [packet])
        return packet

    def receive(self, to: str, data: bytes, source: tuple | None = None) -> None:
        """Hand one datagram to device `to` (from the other side's current source unless given)."""
        if source is None:
            source = self.source["b" if to == "a" else "a"]
        self.dev(to).receive_datagram(data, source, self.now)
        self.collect(to)

    def deliver(self, limit: int | None = None) -> int:
        """Deliver queued datagrams in order (and what they cause) until the wire is empty."""
        count = 0
        while self.wire and (limit is None or count < limit):
            to, data, src = self.wire.pop(0)
            self.dev(to).receive_datagram(data, src, self.now)
            self.collect(to)
            count += 1
        return count

    def take(self, kind: int | None = None, to: str | None = None) -> list[bytes]:
        """Remove from the wire (and return) the datagrams of a message type and/or direction."""
        kept, taken = [], []
        for item in self.wire:
            match = (kind is None or message_type(item[1]) == kind) and (to is None or item[0] == to)
            (taken if match else kept).append(item)
        self.wire = kept
        return [data for _, data, _ in taken]

    def drop_all(self) -> int:
        n = len(self.wire)
        self.wire.clear()
        return n

    def handshake(self, initiator: str = "a") -> None:
        """Complete a handshake started by `initiator`, including the key-confirming keepalive."""
        self.dev(initiator).initiate(self.peer(initiator), self.now)
        self.collect(initiator)
        self.deliver()

    def sent_of(self, kind: int, frm: str | None = None, since: float = float("-inf")) -> list[tuple[float, bytes]]:
        """(time, data) of every datagram of a type emitted (by `frm`) at or after `since`."""
        return [(t, d) for t, f, d, _ in self.sent
                if message_type(d) == kind and (frm is None or f == frm) and t >= since]

    def advance(self, seconds: float, deliver: bool = False) -> None:
        """Step time, firing timers on both devices at each deadline on the way.

        With deliver=True what the timers send is delivered at once (a live, lossless network);
        otherwise it stays on the wire for the test to inspect or drop.
        """
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
            if deliver:
                self.deliver()
        self.now = target
