"""Cryptokey routing: the table of allowed IP prefixes per peer (whitepaper §2, wireguard-go allowedips.go).

Longest-prefix match over one hash table per prefix length (IPv4 and IPv6 apart). With the handful of
distinct lengths a real configuration has, a lookup is a few dict probes, which in Python beats walking a
bit trie node by node. Inserting a prefix another peer holds moves it; removing needs the owner.
"""
from __future__ import annotations

import ipaddress
from typing import Generic, Hashable, TypeVar

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
P = TypeVar("P", bound=Hashable)

_FROM = int.from_bytes


CACHE_LIMIT = 4096


class _Family(Generic[P]):
    __slots__ = ("bits", "tables", "lengths", "masks", "cache")

    def __init__(self, bits: int) -> None:
        self.bits = bits
        # address -> peer for addresses seen recently: the data path probes this dict first and falls
        # back to `lookup` (then fills it); any change of the table empties it.
        self.cache: dict[int, P] = {}
        self.tables: dict[int, dict[int, P]] = {}
        self.lengths: list[int] = []  # longest first
        self.masks = [((1 << bits) - 1) ^ ((1 << (bits - n)) - 1) for n in range(bits + 1)]

    def lookup_cached(self, addr: int) -> P | None:
        peer = self.lookup(addr)
        if peer is not None:
            cache = self.cache
            if len(cache) >= CACHE_LIMIT:
                cache.clear()
            cache[addr] = peer
        return peer

    def _relength(self) -> None:
        self.lengths = sorted((n for n, t in self.tables.items() if t), reverse=True)

    def insert(self, net: int, plen: int, peer: P) -> P | None:
        self.cache.clear()
        table = self.tables.setdefault(plen, {})
        previous = table.get(net)
        table[net] = peer
        if len(table) == 1:
            self._relength()
        return previous

    def remove(self, net: int, plen: int) -> None:
        self.cache.clear()
        table = self.tables.get(plen)
        if table is not None:
            table.pop(net, None)
            if not table:
                del self.tables[plen]
                self._relength()

    def lookup(self, addr: int) -> P | None:
        tables, masks = self.tables, self.masks
        for plen in self.lengths:
            peer = tables[plen].get(addr & masks[plen])
            if peer is not None:
                return peer
        return None


class AllowedIPs(Generic[P]):
    def __init__(self) -> None:
        self.v4: _Family[P] = _Family(32)
        self.v6: _Family[P] = _Family(128)
        self._by_peer: dict[P, set[Network]] = {}

    def _family(self, net: Network) -> _Family[P]:
        return self.v4 if net.version == 4 else self.v6

    def insert(self, network: Network | str, peer: P) -> None:
        net = ipaddress.ip_network(network, strict=False)
        previous = self._family(net).insert(int(net.network_address), net.prefixlen, peer)
        if previous is not None and previous != peer:
            self._by_peer.get(previous, set()).discard(net)
        self._by_peer.setdefault(peer, set()).add(net)

    def remove(self, network: Network | str, peer: P) -> bool:
        """Remove a prefix if this peer holds it; True if it did."""
        net = ipaddress.ip_network(network, strict=False)
        owned = self._by_peer.get(peer)
        if not owned or net not in owned:
            return False
        owned.discard(net)
        self._family(net).remove(int(net.network_address), net.prefixlen)
        return True

    def remove_peer(self, peer: P) -> None:
        for net in self._by_peer.pop(peer, set()):
            self._family(net).remove(int(net.network_address), net.prefixlen)

    def entries(self, peer: P) -> list[Network]:
        return sorted(self._by_peer.get(peer, ()), key=lambda n: (n.version, n.network_address, n.prefixlen))

    def lookup(self, address: bytes | bytearray | memoryview) -> P | None:
        """The peer for a raw 4- or 16-byte address, by longest prefix."""
        if len(address) == 4:
            return self.v4.lookup(_FROM(address, "big"))
        return self.v6.lookup(_FROM(address, "big"))

    def lookup_v4(self, addr: int) -> P | None:
        return self.v4.lookup(addr)

    def lookup_v6(self, addr: int) -> P | None:
        return self.v6.lookup(addr)

    def lookup_ip(self, ip: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> P | None:
        return self.lookup(ipaddress.ip_address(ip).packed)
