"""The relay role of a WireGuard device (`[Interface] Relay = true`): forwarding between its peers.

A relay node opens a transport message from one peer, checks the inner source against that peer's
AllowedIPs as always (datapath.py), and when the destination belongs to *another* configured peer it
seals the packet to that peer instead of writing it to the TUN: no kernel `ip_forward`, no trip through
the kernel. The data path collects a batch's forwarded packets as (start, end, from_peer, to_peer) into
the receive buffer and hands them here once per batch; this module

- lowers the TTL / hop limit by one (the IPv4 header checksum is updated incrementally, RFC 1624), and
  drops packets whose TTL would reach zero, so two relays that point at each other cannot loop a packet;
- counts what it forwards per (from, to) pair of public keys (`Forwarder.pairs`);
- seals the batch with the device's ordinary batched path (`datapath.seal_packets`), so forwarded
  packets to one peer leave as one run of sealed messages like packets read from the TUN.

Only packets whose destination is in some other peer's AllowedIPs are forwarded; everything else (the
relay's own addresses, unknown destinations) goes to the TUN as on any node. Pure: no I/O, no clock.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from . import datapath

if TYPE_CHECKING:  # pragma: no cover
    from .device import Device

TTL_EXPIRED = "forward: TTL expired"
_u32 = struct.Struct("!I").unpack_from


class PairCount:
    """Packets and inner bytes forwarded from one peer to another."""

    __slots__ = ("packets", "bytes")

    def __init__(self) -> None:
        self.packets = 0
        self.bytes = 0

    def __repr__(self) -> str:
        return f"PairCount(packets={self.packets}, bytes={self.bytes})"


class Forwarder:
    """A device's forwarding state: per-pair counters (keyed by the two public keys)."""

    def __init__(self) -> None:
        self.pairs: dict[tuple[bytes, bytes], PairCount] = {}

    def forwarded_bytes(self) -> int:
        return sum(c.bytes for c in self.pairs.values())

    def forget_peer(self, key: bytes) -> None:
        for pair in [p for p in self.pairs if key in p]:
            del self.pairs[pair]


def destination_peer(allowed_ips, buf: bytearray, pkt: int, version: int):
    """The peer whose AllowedIPs hold the destination of the checked packet at buf[pkt:] (or None)."""
    if version == 4:
        family, dst = allowed_ips.v4, _u32(buf, pkt + 16)[0]
    else:
        family, dst = allowed_ips.v6, int.from_bytes(buf[pkt + 24:pkt + 40], "big")
    return family.cache.get(dst) or family.lookup_cached(dst)


def forward(dev: "Device", buf: bytearray, items: list, now: float) -> None:
    """Seal the batch's forwarded packets (recv_buf[start:end], from, to) to their destination peers."""
    fwd = dev.forwarder
    pairs = fwd.pairs
    drops = dev.drops
    packets = []
    append = packets.append
    last_from = last_to = count = None
    with memoryview(buf) as mv:
        for start, end, src, dst in items:
            version = buf[start] >> 4
            if version == 4:
                ttl = buf[start + 8]
                if ttl <= 1:
                    drops[TTL_EXPIRED] += 1
                    continue
                buf[start + 8] = ttl - 1
                # RFC 1624 (as Linux's ip_decrease_ttl): the TTL's 16-bit word fell by 0x0100.
                check = ((buf[start + 10] << 8) | buf[start + 11]) + 0x0100
                check = (check + (check >= 0xFFFF)) & 0xFFFF
                buf[start + 10] = check >> 8
                buf[start + 11] = check & 0xFF
            else:
                hops = buf[start + 7]
                if hops <= 1:
                    drops[TTL_EXPIRED] += 1
                    continue
                buf[start + 7] = hops - 1
            if src is not last_from or dst is not last_to:
                last_from, last_to = src, dst
                pair = (src.public_key, dst.public_key)
                count = pairs.get(pair)
                if count is None:
                    count = pairs[pair] = PairCount()
            count.packets += 1
            count.bytes += end - start
            append(mv[start:end])
        if packets:
            datapath.seal_packets(dev, packets, now)
        for view in packets:
            view.release()
