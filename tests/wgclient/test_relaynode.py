"""The relay role in the WireGuard core (wgclient/relaynode.py): a device with `Relay = true` forwards packets
between the peers its config lists, inside the device (open, cryptokey-route lookup, seal to the other),
in batches, counting per pair, and its own tunnel keeps working. In-memory hub and spokes, stepped time."""
from __future__ import annotations

import struct

import pytest

from tests.support.mesh import Mesh
from tests.support.pair import ipv4_packet, ipv6_packet
from wgclient import relaynode

NET = "10.0.0.0/24"


def ip_checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def with_checksum(packet: bytes) -> bytes:
    header = bytearray(packet[:20])
    header[10:12] = b"\0\0"
    header[10:12] = struct.pack("!H", ~ip_checksum(bytes(header)) & 0xFFFF)
    return bytes(header) + packet[20:]


def hub(relay: bool = True, v6: bool = False) -> Mesh:
    """Relay r (10.0.0.1) with spokes a (.2) and b (.3); each spoke's r entry holds the whole network."""
    m = Mesh({"r": "10.0.0.1", "a": "10.0.0.2", "b": "10.0.0.3"})
    for s in ("a", "b"):
        m.link(s, "r", allowed=NET + (", fd00::/64" if v6 else ""))
        m.link("r", s, allowed=f"{m.addr[s]}/32" + (f", fd00::{m.addr[s].rsplit('.', 1)[1]}/128" if v6 else ""))
    if relay:
        m.dev["r"].enable_relay()
    m.handshake("a", "r")
    m.handshake("b", "r")
    for n in m.names:
        m.tun[n].clear()
    return m


def test_relay_forwards_between_its_peers_without_the_tun() -> None:
    m = hub()
    packet = with_checksum(ipv4_packet("10.0.0.2", "10.0.0.3", b"through the hub"))
    m.send("a", [packet])
    m.deliver()
    assert m.tun["r"] == [], "a relayed packet must not go through the relay's TUN"
    [got] = m.tun["b"]
    assert got[20:] == b"through the hub" and got[8] == packet[8] - 1, "TTL lowered by one"
    assert ip_checksum(got[:20]) == 0xFFFF, "the header checksum was updated with the TTL"
    count = m.dev["r"].forwarder.pairs[(m.pub["a"], m.pub["b"])]
    assert (count.packets, count.bytes) == (1, len(packet))
    # and back the other way, counted under its own pair
    m.send("b", [with_checksum(ipv4_packet("10.0.0.3", "10.0.0.2", b"reply"))])
    m.deliver()
    assert [p[20:] for p in m.tun["a"]] == [b"reply"]
    assert m.dev["r"].forwarder.pairs[(m.pub["b"], m.pub["a"])].packets == 1
    assert not m.dev["r"].drops


def test_without_the_relay_role_packets_go_to_the_tun() -> None:
    m = hub(relay=False)
    m.send("a", [ipv4_packet("10.0.0.2", "10.0.0.3", b"x")])
    m.deliver()
    assert len(m.tun["r"]) == 1 and m.tun["b"] == []
    assert m.dev["r"].forwarder is None


def test_relay_own_tunnel_and_unlisted_destinations_go_to_its_tun() -> None:
    m = hub()
    m.send("a", [ipv4_packet("10.0.0.2", "10.0.0.1", b"to the relay itself"),
                 ipv4_packet("10.0.0.2", "10.0.0.99", b"to nobody listed"),
                 ipv4_packet("10.0.0.2", "10.0.0.2", b"back to the sender")])
    m.deliver()
    assert [p[20:] for p in m.tun["r"]] == [b"to the relay itself", b"to nobody listed", b"back to the sender"]
    assert m.tun["b"] == [] and m.tun["a"] == []
    assert m.dev["r"].forwarder.pairs == {}
    m.send("r", [ipv4_packet("10.0.0.1", "10.0.0.3", b"from the relay")])  # its own packets as a peer
    m.deliver()
    assert [p[20:] for p in m.tun["b"]] == [b"from the relay"]


def test_relay_checks_the_inner_source_before_forwarding() -> None:
    m = hub()
    m.send("a", [ipv4_packet("10.0.0.3", "10.0.0.3", b"a pretending to be b")])
    m.deliver()
    assert m.tun["b"] == [] and m.tun["r"] == []
    assert m.dev["r"].drops["transport: source address not allowed for peer"] == 1
    assert m.dev["r"].forwarder.pairs == {}


def test_a_batch_is_forwarded_as_one_run_of_sealed_messages() -> None:
    m = hub()
    packets = [ipv4_packet("10.0.0.2", "10.0.0.3", i.to_bytes(2, "big") * 50) for i in range(64)]
    m.dev["a"].send_packets(packets, m.now)
    sealed = m.collect("a")
    assert len(sealed) == 64
    # all 64 reach r in one receive call; r answers with 64 sealed messages to b from that one call
    r = m.dev["r"]
    out = r.receive_datagrams([(d, m.ep["a"]) for _, d, _ in m.wire], m.now)
    m.wire.clear()
    assert len(out.sealed) == 64 and {ep for ep, _, _ in out.sealed} == {m.ep["b"]} and not out.tun
    m.collect("r")
    m.deliver()
    assert [p[20:] for p in m.tun["b"]] == [p[20:] for p in packets]
    assert r.forwarder.pairs[(m.pub["a"], m.pub["b"])].packets == 64


def test_forwarding_to_a_peer_without_a_session_stages_and_handshakes() -> None:
    m = Mesh({"r": "10.0.0.1", "a": "10.0.0.2", "b": "10.0.0.3"})
    for s in ("a", "b"):
        m.link(s, "r", allowed=NET)
        m.link("r", s)
    m.dev["r"].enable_relay()
    m.handshake("a", "r")          # b has never talked to r
    m.send("a", [ipv4_packet("10.0.0.2", "10.0.0.3", b"first")])
    m.deliver()
    assert [p[20:] for p in m.tun["b"]] == [b"first"], "staged at the relay until its handshake with b"


def test_ttl_one_is_dropped_and_counted_not_forwarded() -> None:
    m = hub(v6=True)
    low = bytearray(ipv4_packet("10.0.0.2", "10.0.0.3", b"ttl"))
    low[8] = 1
    v6 = bytearray(ipv6_packet("fd00::2", "fd00::3", b"hop"))
    v6[7] = 1
    m.send("a", [with_checksum(bytes(low)), bytes(v6)])
    m.deliver()
    assert m.tun["b"] == [] and m.tun["r"] == []
    assert m.dev["r"].drops[relaynode.TTL_EXPIRED] == 2


def test_ipv6_is_forwarded_with_the_hop_limit_lowered() -> None:
    m = hub(v6=True)
    m.send("a", [ipv6_packet("fd00::2", "fd00::3", b"six")])
    m.deliver()
    [got] = m.tun["b"]
    assert got[40:] == b"six" and got[7] == 63


@pytest.mark.parametrize("ttl", [2, 64, 255])
@pytest.mark.parametrize("check_seed", [0, 1, 0x1234, 0xFEFF, 0xFF00])
def test_incremental_checksum_matches_a_full_recomputation(ttl: int, check_seed: int) -> None:
    m = hub()
    packet = bytearray(ipv4_packet("10.0.0.2", "10.0.0.3", b"c"))
    packet[8] = ttl
    packet[4:6] = check_seed.to_bytes(2, "big")  # vary the identification so the checksum takes many values
    m.send("a", [with_checksum(bytes(packet))])
    m.deliver()
    [got] = m.tun["b"]
    assert got[8] == ttl - 1 and got == with_checksum(got)


def test_removing_a_peer_forgets_its_pairs() -> None:
    m = hub()
    m.send("a", [ipv4_packet("10.0.0.2", "10.0.0.3")])
    m.deliver()
    assert m.dev["r"].forwarder.pairs
    m.dev["r"].remove_peer(m.pub["b"])
    assert m.dev["r"].forwarder.pairs == {}
