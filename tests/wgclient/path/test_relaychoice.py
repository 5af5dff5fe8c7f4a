"""The selection rule (wgclient/path/relaychoice.py, docs/relaynode.md) as a pure function: direct, then a
relay node, then DERP (own regions first); pins and avoids; designated relayed hosts."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from wgclient.path.relaychoice import (DERP, DIRECT, KINDS, RELAY_NODE, Choice, Policy, RelayNode, choose,
                                       derp_order)

R1 = RelayNode(b"1" * 32, "hub1", True)
R1_DOWN = RelayNode(b"1" * 32, "hub1", False)
R2 = RelayNode(b"2" * 32, "hub2", True)


def test_direct_first() -> None:
    assert choose(direct=True, relay_nodes=[R1], region=901).kind == DIRECT


def test_then_the_first_reachable_relay_node_in_config_order() -> None:
    c = choose(direct=False, relay_nodes=[R1_DOWN, R2], region=901)
    assert (c.kind, c.relay_node) == (RELAY_NODE, R2.key)
    assert c.skipped == ((DIRECT, "no working direct path"),)
    assert choose(direct=False, relay_nodes=[R1, R2], region=901).relay_node == R1.key


def test_then_derp() -> None:
    c = choose(direct=False, relay_nodes=[R1_DOWN], region=901)
    assert (c.kind, c.region) == (DERP, 901)
    assert dict(c.skipped)[RELAY_NODE] == "no relay node reachable"
    assert dict(choose(direct=False, relay_nodes=[], region=7).skipped)[RELAY_NODE] == "no relay node configured"


def test_nothing_usable() -> None:
    assert choose(direct=False, relay_nodes=[], region=0) == Choice(None)


def test_pin_relay_node_never_goes_direct_and_never_to_derp() -> None:
    designated = Policy(pin=RELAY_NODE)
    assert choose(direct=True, relay_nodes=[R1], region=901, policy=designated).kind == RELAY_NODE
    c = choose(direct=True, relay_nodes=[R1_DOWN], region=901, policy=designated)
    assert c.kind is None, "pinned: no fallback to another kind"
    assert designated.no_direct


def test_avoid() -> None:
    no_relay = Policy(avoid=frozenset({RELAY_NODE}))
    assert choose(direct=False, relay_nodes=[R1], region=901, policy=no_relay).kind == DERP
    no_direct = Policy(avoid=frozenset({DIRECT}))
    assert choose(direct=True, relay_nodes=[], region=901, policy=no_direct).kind == DERP
    assert choose(direct=True, relay_nodes=[R1], region=901, policy=no_direct).kind == RELAY_NODE
    no_derp = Policy(avoid=frozenset({DERP}))
    assert choose(direct=False, relay_nodes=[R1_DOWN], region=901, policy=no_derp).kind is None


def test_pin_derp_and_direct() -> None:
    assert choose(direct=True, relay_nodes=[R1], region=901, policy=Policy(pin=DERP)).kind == DERP
    assert choose(direct=False, relay_nodes=[R1], region=901, policy=Policy(pin=DIRECT)).kind is None


def test_derp_order_puts_own_regions_first() -> None:
    assert derp_order([1, 901, 2, 950, 3]) == [901, 950, 1, 2, 3]
    assert derp_order([1, 901, 2], own_regions={2}) == [901, 2, 1]
    assert derp_order([]) == []


kinds = st.sampled_from(KINDS)
policies = st.one_of(st.builds(Policy, pin=kinds),
                     st.builds(lambda a: Policy(avoid=frozenset(a)), st.sets(kinds, max_size=2)))
nodes = st.lists(st.builds(RelayNode, st.binary(min_size=32, max_size=32), st.just("n"), st.booleans()), max_size=3)


@given(direct=st.booleans(), relay_nodes=nodes, region=st.sampled_from([0, 1, 901]), policy=policies)
def test_property_the_choice_is_the_first_allowed_available_kind(direct, relay_nodes, region, policy) -> None:
    available = {DIRECT: direct, RELAY_NODE: any(n.reachable for n in relay_nodes), DERP: bool(region)}
    expected = next((k for k in KINDS if policy.allowed(k) and available[k]), None)
    c = choose(direct=direct, relay_nodes=relay_nodes, region=region, policy=policy)
    assert c.kind == expected
    assert (c.relay_node is not None) == (expected == RELAY_NODE)
    assert len(c.skipped) == (KINDS.index(expected) if expected else len(KINDS))


def test_the_manager_tries_own_regions_before_others_when_nothing_is_known_of_the_peer() -> None:
    import os

    from wgclient import keys
    from wgclient.path.inputs import NetInfo
    from wgclient.path.manager import PathManager
    pm = PathManager(keys.genkey(os.urandom), random_bytes=os.urandom)
    peer = keys.public_key(keys.genkey(os.urandom))
    pm.add_peer(peer)
    pm.set_regions({1: "public", 2: "public2", 901: "ours"}, 0.0, own=[901])
    pm.on_netcheck(NetInfo(preferred=2, latency={1: 0.005, 2: 0.001, 901: 0.050}), 0.0)
    assert pm.home.home == 2, "home still follows latency"
    assert pm.route(peer, 0.0).relay == 901, "an unknown peer is looked for in the operator's region first"
    pm.set_regions({1: "public", 2: "public2", 901: "ours"}, 1.0)   # own: every region of the map
    assert pm.route(peer, 1.0).relay == 2
