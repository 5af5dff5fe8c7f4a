"""Cryptokey routing table: longest-prefix lookup against a linear scan, moves, owner-checked removal."""
from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from wgclient.allowedips import AllowedIPs

PEERS = ["p0", "p1", "p2", "p3"]


def reference_lookup(entries: dict, address: ipaddress._BaseAddress):
    """Linear scan: the owner of the longest prefix containing the address."""
    best = None
    for net, peer in entries.items():
        if net.version == address.version and address in net:
            if best is None or net.prefixlen > best[0].prefixlen:
                best = (net, peer)
    return best[1] if best else None


def _clustered(version: int):
    """Addresses inside 10.0.0.0/8 or fd00::/16 with few distinct values, so prefixes overlap often."""
    bits = 32 if version == 4 else 128
    base = 0x0A000000 if version == 4 else 0xFD00 << 112
    offset = st.one_of(st.integers(0, 15), st.integers(0, 2**16 - 1))
    return offset.map(lambda o: base | (o << (bits - 24)))


def networks(version: int):
    bits = 32 if version == 4 else 128
    return st.tuples(_clustered(version), st.integers(0, bits)).map(
        lambda a: ipaddress.ip_network(a, strict=False))


def addresses(version: int):
    bits = 32 if version == 4 else 128
    cls = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    # host bits, so probes are not all on prefix boundaries
    low = st.one_of(st.just(0), st.integers(0, 255), st.integers(0, 2**(bits - 24) - 1))
    near = st.tuples(_clustered(version), low).map(lambda t: t[0] | t[1])
    return st.one_of(near, st.integers(0, 2**bits - 1)).map(cls)


ops = st.lists(st.one_of(
    st.tuples(st.just("insert"), st.one_of(networks(4), networks(6)), st.sampled_from(PEERS)),
    st.tuples(st.just("remove"), st.one_of(networks(4), networks(6)), st.sampled_from(PEERS)),
    st.tuples(st.just("remove_peer"), st.none(), st.sampled_from(PEERS)),
), max_size=40)


def apply(table: AllowedIPs, ref: dict, op) -> None:
    kind, net, peer = op
    if kind == "insert":
        table.insert(net, peer)
        ref[net] = peer
    elif kind == "remove":
        removed = table.remove(net, peer)
        assert removed == (ref.get(net) == peer)
        if removed:
            del ref[net]
    else:
        table.remove_peer(peer)
        for n in [n for n, p in ref.items() if p == peer]:
            del ref[n]


@settings(max_examples=150)
@given(ops, st.lists(st.one_of(addresses(4), addresses(6)), max_size=30))
def test_lookup_agrees_with_linear_scan(operations, probes) -> None:
    table: AllowedIPs[str] = AllowedIPs()
    ref: dict = {}
    for op in operations:
        apply(table, ref, op)
        for net in list(ref)[:3]:  # warm the cache so later changes must invalidate it
            family = table.v4 if net.version == 4 else table.v6
            family.lookup_cached(int(net.network_address))
    # Probe every stored network's own address too, and random ones.
    probes = list(probes) + [n.network_address for n in ref] + [n.broadcast_address for n in ref]
    for address in probes:
        expected = reference_lookup(ref, address)
        assert table.lookup(address.packed) == expected, address
        assert table.lookup_ip(address) == expected
        if address.version == 4:
            assert table.lookup_v4(int(address)) == expected
        else:
            assert table.lookup_v6(int(address)) == expected
        # The data path's way: the per-address cache first, then a lookup that fills it (twice: miss, hit).
        family = table.v4 if address.version == 4 else table.v6
        for _ in range(2):
            assert (family.cache.get(int(address)) or family.lookup_cached(int(address))) == expected
    for peer in PEERS:
        assert set(table.entries(peer)) == {n for n, p in ref.items() if p == peer}


def test_examples_v4_and_v6() -> None:
    t: AllowedIPs[str] = AllowedIPs()
    t.insert("0.0.0.0/0", "default")
    t.insert("10.0.0.0/8", "wide")
    t.insert("10.1.2.0/24", "narrow")
    t.insert("10.1.2.3/32", "host")
    t.insert("::/0", "default6")
    t.insert("fd00::/64", "net6")
    assert t.lookup_ip("10.1.2.3") == "host"
    assert t.lookup_ip("10.1.2.4") == "narrow"
    assert t.lookup_ip("10.9.9.9") == "wide"
    assert t.lookup_ip("192.0.2.1") == "default"
    assert t.lookup_ip("fd00::5") == "net6"
    assert t.lookup_ip("2001:db8::1") == "default6"
    # v4 and v6 tables are apart: ::a01:203 is not 10.1.2.3.
    assert t.lookup_ip("::a01:203") == "default6"


def test_prefix_is_stored_masked() -> None:
    t: AllowedIPs[str] = AllowedIPs()
    t.insert("10.1.2.3/24", "p")  # host bits set: stored as 10.1.2.0/24
    assert t.lookup_ip("10.1.2.200") == "p"
    assert t.entries("p") == [ipaddress.ip_network("10.1.2.0/24")]
    assert t.remove("10.1.2.0/24", "p")
    assert t.lookup_ip("10.1.2.200") is None


def test_reinsert_moves_prefix_to_new_peer() -> None:
    t: AllowedIPs[str] = AllowedIPs()
    t.insert("10.0.0.0/24", "a")
    t.insert("fd00::/120", "a")
    t.insert("10.0.0.0/24", "b")
    assert t.lookup_ip("10.0.0.7") == "b"
    assert t.entries("a") == [ipaddress.ip_network("fd00::/120")]
    assert t.entries("b") == [ipaddress.ip_network("10.0.0.0/24")]
    # a no longer owns it, so a cannot remove it
    assert not t.remove("10.0.0.0/24", "a")
    assert t.lookup_ip("10.0.0.7") == "b"


def test_remove_needs_the_owner() -> None:
    t: AllowedIPs[str] = AllowedIPs()
    t.insert("10.0.0.0/24", "a")
    assert not t.remove("10.0.0.0/24", "b")
    assert t.lookup_ip("10.0.0.1") == "a"
    assert not t.remove("10.0.1.0/24", "a")  # never inserted
    assert t.remove("10.0.0.0/24", "a")
    assert t.lookup_ip("10.0.0.1") is None
    assert not t.remove("10.0.0.0/24", "a")


def test_remove_peer_removes_all_and_only_its_prefixes() -> None:
    t: AllowedIPs[str] = AllowedIPs()
    for net in ("10.0.0.0/24", "10.0.1.0/24", "fd00::/64"):
        t.insert(net, "a")
    t.insert("10.0.0.0/16", "b")
    t.remove_peer("a")
    assert t.entries("a") == []
    assert t.lookup_ip("10.0.0.1") == "b"
    assert t.lookup_ip("fd00::1") is None
    t.remove_peer("a")  # twice is harmless
    t.remove_peer("nobody")
    assert t.lookup_ip("10.0.200.1") == "b"
