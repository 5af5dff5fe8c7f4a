"""The spoke side of relay nodes in the WireGuard core: a peer routed through a relay node (Device.route_through)
has its packets sealed to the relay node, and the cryptokey rule is widened for exactly the peers routed
through it, only while they are: a relay node can't inject the sources of peers not routed through it."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.mesh import Mesh
from tests.support.pair import ipv4_packet, ipv6_packet
from wgclient.errors import UsageError

NOT_ALLOWED = "transport: source address not allowed for peer"
SPOKES = {"a": "10.0.0.2", "b": "10.0.0.3", "c": "10.0.0.4", "d": "10.0.0.5"}


def mesh(v6: bool = False) -> Mesh:
    """Relay node r (10.0.0.1, Relay = true) and spokes a-d; every spoke lists r (its own /32 only: a
    RelayNode peer, not a hub-and-spoke catch-all) and every other spoke as its own peer (no endpoint:
    they can't reach each other)."""
    m = Mesh({"r": "10.0.0.1", **SPOKES})
    six = lambda n: f", fd00::{m.addr[n].rsplit('.', 1)[1]}/128" if v6 else ""  # noqa: E731
    for s in SPOKES:
        m.link(s, "r", allowed=f"10.0.0.1/32{six('r')}")
        m.link("r", s, allowed=f"{m.addr[s]}/32{six(s)}")
        for t in SPOKES:
            if t != s:
                m.link(s, t, allowed=f"{m.addr[t]}/32{six(t)}", endpoint=False)
    m.dev["r"].enable_relay()
    for s in SPOKES:
        m.handshake(s, "r")
    for n in m.names:
        m.tun[n].clear()
    return m


def via(m: Mesh, node: str, other: str, relay: str | None = "r") -> None:
    m.dev[node].route_through(m.peer(node, other), m.peer(node, relay) if relay else None)


def test_a_peer_routed_through_the_relay_node_is_reached_both_ways() -> None:
    m = mesh()
    via(m, "a", "b")
    via(m, "b", "a")
    m.dev["a"].send_packets([ipv4_packet("10.0.0.2", "10.0.0.3", b"via r")], m.now)
    assert m.dev["a"].out.via == [m.peer("a", "b")], "the batch says which peers went through a relay node"
    assert {ep for ep, _, _ in m.dev["a"].out.sealed} == {m.ep["r"]}
    m.collect("a")
    m.deliver()
    assert [p[20:] for p in m.tun["b"]] == [b"via r"]
    m.send("b", [ipv4_packet("10.0.0.3", "10.0.0.2", b"back")])
    m.deliver()
    assert [p[20:] for p in m.tun["a"]] == [b"back"]
    assert m.peer("a", "b").keypairs.current is None, "no session with b itself was needed"
    assert not any(m.dev[n].drops for n in m.names)


def test_the_widened_rule_needs_the_receiver_to_route_the_source_through_the_relay() -> None:
    m = mesh()
    via(m, "a", "b")                                  # a sends to b through r; b does not route a so
    m.send("a", [ipv4_packet("10.0.0.2", "10.0.0.3", b"one-sided")])
    m.deliver()
    assert m.tun["b"] == [] and m.dev["b"].drops[NOT_ALLOWED] == 1


def test_the_relay_node_cannot_inject_sources_of_peers_not_routed_through_it() -> None:
    m = mesh()
    via(m, "b", "a")                                  # b reaches a (only a) through r
    forged = [ipv4_packet("10.0.0.2", "10.0.0.3", b"a, routed via r: allowed"),
              ipv4_packet("10.0.0.4", "10.0.0.3", b"c, not routed via r"),
              ipv4_packet("10.0.0.9", "10.0.0.3", b"nobody's address"),
              ipv4_packet("10.0.0.1", "10.0.0.3", b"r's own address: allowed as always")]
    m.dev["r"].enable_relay(False)                    # r seals what it likes to b (a malicious relay)
    m.send("r", forged)
    m.deliver()
    assert [p[20:] for p in m.tun["b"]] == [forged[0][20:], forged[3][20:]]
    assert m.dev["b"].drops[NOT_ALLOWED] == 2


def test_the_rule_is_widened_only_while_the_path_is_in_use() -> None:
    m = mesh()
    via(m, "b", "a")
    m.dev["r"].enable_relay(False)
    m.send("r", [ipv4_packet("10.0.0.2", "10.0.0.3", b"while routed")])
    m.deliver()
    via(m, "b", "a", None)                            # b's path to a no longer uses r
    m.send("r", [ipv4_packet("10.0.0.2", "10.0.0.3", b"after")])
    m.deliver()
    assert [p[20:] for p in m.tun["b"]] == [b"while routed"]
    assert m.dev["b"].drops[NOT_ALLOWED] == 1


def test_ipv6_sources_follow_the_same_rule() -> None:
    m = mesh(v6=True)
    via(m, "b", "a")
    m.dev["r"].enable_relay(False)
    m.send("r", [ipv6_packet("fd00::2", "fd00::3", b"a"), ipv6_packet("fd00::4", "fd00::3", b"c")])
    m.deliver()
    assert [p[40:] for p in m.tun["b"]] == [b"a"] and m.dev["b"].drops[NOT_ALLOWED] == 1


def test_removing_the_relay_node_routes_its_peers_to_themselves_again() -> None:
    m = mesh()
    via(m, "a", "b")
    m.dev["a"].remove_peer(m.pub["r"])
    assert m.peer("a", "b").send_to is m.peer("a", "b")


def test_route_through_refuses_itself_and_strangers() -> None:
    m = mesh()
    with pytest.raises(UsageError):
        m.dev["a"].route_through(m.peer("a", "b"), m.peer("a", "b"))
    with pytest.raises(UsageError):
        m.dev["a"].route_through(m.peer("a", "b"), m.peer("c", "d"))  # another device's peer object


@settings(max_examples=40, deadline=None)
@given(routed=st.sets(st.sampled_from(["a", "c", "d"])), sources=st.lists(st.sampled_from(["a", "c", "d", "r"]),
                                                                          min_size=1, max_size=8))
def test_property_exactly_the_routed_sources_get_through(routed: set, sources: list) -> None:
    m = mesh()
    for s in routed:
        via(m, "b", s)
    m.dev["r"].enable_relay(False)
    m.send("r", [ipv4_packet(m.addr[s], "10.0.0.3", s.encode()) for s in sources])
    m.deliver()
    assert [p[20:].decode() for p in m.tun["b"]] == [s for s in sources if s in routed or s == "r"]
