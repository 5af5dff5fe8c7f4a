"""Relay nodes in the path manager, in the in-memory NAT simulation (virtual time): spokes behind symmetric
NATs go through a public relay node (not DERP); a dead relay node falls back to DERP and is used again when
it returns; hole punching that works wins over the relay node; a designated relayed peer never goes direct
(on either side) until its designation is removed; AvoidPath keeps a peer off the relay node."""
from __future__ import annotations

from wgclient.path.peerstate import RelayNodeChanged
from wgclient.path.relaychoice import DERP, DIRECT, RELAY_NODE, Policy

from tests.wgclient.path.pathsim import Sim


class RelaySim(Sim):
    """Sim where a peer routed through a relay node (the manager's choice) sends its data to the relay
    node over the relay node's route, and the relay node forwards it on its own route to the peer."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.dead: set[str] = set()        # nodes whose UDP is cut (killed)
        self.relay_changes: list = []      # (time, node, RelayNodeChanged)

    def start_with_relay(self, relay: str, policies: dict | None = None) -> None:
        super().start()
        r = self.node(relay)
        for node in self.nodes:
            if node is not r:
                self._apply(node, node.manager.set_relay_node(r.key, True, self.now))
                for peer, policy in (policies or {}).get(node.name, {}).items():
                    self._apply(node, node.manager.set_policy(self.node(peer).key, policy, self.now))

    def _apply(self, node, outputs: list) -> None:
        for o in outputs:
            if isinstance(o, RelayNodeChanged):
                self.relay_changes.append((self.now, node.name, o))
        super()._apply(node, outputs)

    def _udp(self, node, dst, deliver) -> None:
        target = self.by_public.get(dst[0])
        if node.name in self.dead or (target is not None and target.name in self.dead):
            return
        super()._udp(node, dst, deliver)

    def _send_data(self, node, peer) -> None:
        via = node.manager.peers[peer.key].via
        if via is None:
            return super()._send_data(node, peer)
        self._apply(node, node.manager.on_data_sent(peer.key, self.now))
        relay = next(n for n in self.nodes if n.key == via)
        seq = next(self._data_seq)
        self.data_sent.append((self.now, seq, node.name, peer.name))
        route = node.manager.route(relay.key, self.now)
        if route.direct is None:
            return

        def at_relay(r, src, s=seq) -> None:
            out = r.manager.route(peer.key, self.now)
            if out.direct is not None:
                self._udp(r, out.direct, lambda dst, src2: self._data_in(dst, r, s, addr=src2, via_node=node))
        self._udp(node, route.direct, at_relay)

    def _data_in(self, dst, src, seq, *, addr=None, region=None, via_node=None) -> None:
        if via_node is not None:
            dst.received.append((self.now, seq, "relay-node"))
            self._apply(dst, dst.manager.on_wireguard_from(src.key, self.now, addr=addr))
            return
        super()._data_in(dst, src, seq, addr=addr, region=region)

    def kind(self, a: str, b: str) -> str | None:
        return self.node(a).manager.peers[self.node(b).key].choice.kind


def three(kind_a: str = "symmetric", kind_b: str = "symmetric", policies: dict | None = None) -> RelaySim:
    sim = RelaySim(senders={"a", "b"}, echo=False)
    sim.add_node("a", kind_a)
    sim.add_node("b", kind_b)
    sim.add_node("r", "none")
    sim.start_with_relay("r", policies)
    return sim


def via_counts(sim: RelaySim, node: str, start: float, end: float) -> dict:
    counts: dict = {}
    for t, _, how in sim.node(node).received:
        if start <= t < end:
            counts[how] = counts.get(how, 0) + 1
    return counts


def test_symmetric_spokes_go_through_the_relay_node_not_derp() -> None:
    sim = three()
    sim.run_until(10.0)
    a, b = sim.node("a"), sim.node("b")
    for x, y in (("a", "b"), ("b", "a")):
        assert sim.kind(x, y) == RELAY_NODE, sim.node(x).manager.why(sim.node(y).key, sim.now)
    why = a.manager.why(b.key, sim.now)
    assert why.startswith('relay-node "r"') and "per destination" in why and "relay node r reachable" in why, why
    assert a.manager.status(b.key, sim.now)["Path"] == "relay-node r"
    assert set(via_counts(sim, "b", 5.0, 10.0)) == {"relay-node"}, "DERP carries none of it"
    # nothing sent after both had switched was lost
    switched = max(t for t, _, c in sim.relay_changes if c.relay_node == sim.node("r").key)
    assert sim.delivered("b", "a", switched + 0.1, 9.9) == sim.sent("b", "a", switched + 0.1, 9.9)
    assert sim.kind("a", "r") == DIRECT, "the relay node itself is reached direct"


def test_a_dead_relay_node_falls_back_to_derp_and_is_used_again() -> None:
    sim = three()
    sim.run_until(8.0)
    assert sim.kind("a", "b") == RELAY_NODE
    sim.dead.add("r")
    t_dead = sim.now
    sim.run_until(t_dead + 20.0)
    assert sim.kind("a", "b") == DERP and sim.kind("b", "a") == DERP
    fell = min(t for t, n, c in sim.relay_changes if n == "a" and c.relay_node is None and t > t_dead)
    assert fell - t_dead < 15.0, f"fallback after {fell - t_dead:.1f} s"
    assert "no relay node reachable" in sim.node("a").manager.why(sim.node("b").key, sim.now)
    assert set(via_counts(sim, "b", sim.now - 5, sim.now)) == {1}, "data over DERP region 1"
    sim.dead.clear()
    t_back = sim.now
    sim.run_until(t_back + 10.0)
    assert sim.kind("a", "b") == RELAY_NODE and sim.kind("b", "a") == RELAY_NODE
    assert set(via_counts(sim, "b", sim.now - 3, sim.now)) == {"relay-node"}


def test_hole_punching_that_works_wins_over_the_relay_node() -> None:
    sim = three("cone", "cone")
    sim.run_until(8.0)
    assert sim.kind("a", "b") == DIRECT and sim.kind("b", "a") == DIRECT
    assert set(via_counts(sim, "b", 5.0, 8.0)) == {"udp"}


def test_a_designated_relayed_peer_never_goes_direct_until_released() -> None:
    sim = three("cone", "cone", policies={"a": {"b": Policy(pin=RELAY_NODE)}})
    sim.run_until(30.0)
    a, b = sim.node("a"), sim.node("b")
    assert sim.kind("a", "b") == RELAY_NODE and sim.kind("b", "a") == RELAY_NODE, \
        "the other side sees no direct path either (no UDP pings or pongs, no endpoints announced)"
    assert a.manager.peers[b.key].best is None and b.manager.peers[a.key].best is None
    assert "pinned to relay-node" in a.manager.why(b.key, sim.now)
    assert set(via_counts(sim, "b", 5.0, 30.0)) == {"relay-node"}
    sim._apply(a, a.manager.set_policy(b.key, Policy(), sim.now))
    t = sim.now
    sim.run_until(t + 12.0)
    assert sim.kind("a", "b") == DIRECT and sim.kind("b", "a") == DIRECT
    assert set(via_counts(sim, "b", sim.now - 2, sim.now)) == {"udp"}


def test_avoid_relay_node_stays_on_derp_and_pinned_without_relay_is_no_path() -> None:
    sim = three(policies={"a": {"b": Policy(avoid=frozenset({RELAY_NODE}))}})
    sim.run_until(10.0)
    assert sim.kind("a", "b") == DERP and sim.kind("b", "a") == RELAY_NODE
    sim2 = three(policies={"a": {"b": Policy(pin=RELAY_NODE)}})
    sim2.run_until(5.0)
    sim2.dead.add("r")
    sim2.run_until(25.0)
    a, b = sim2.node("a"), sim2.node("b")
    assert sim2.kind("a", "b") is None
    route = a.manager.route(b.key, sim2.now)
    assert route.direct is None and route.relay is None, "pinned: nothing goes to DERP either"
    assert a.manager.why(b.key, sim2.now).startswith("no path")


def test_removing_the_relay_node_falls_back_to_derp_at_once() -> None:
    sim = three()
    sim.run_until(8.0)
    a, r = sim.node("a"), sim.node("r")
    sim._apply(a, a.manager.set_relay_node(r.key, False, sim.now))
    assert sim.kind("a", "b") == DERP
    _, who, change = sim.relay_changes[-1]
    assert who == "a" and change.relay_node is None and "per destination" in change.reason
    sim._apply(a, a.manager.set_relay_node(r.key, True, sim.now))
    assert sim.kind("a", "b") == RELAY_NODE, "added back: used at once (it is still trusted)"


def test_a_designated_host_with_a_known_endpoint_answers_no_udp_pings() -> None:
    """The designated host a is public and b has its Endpoint: b's UDP pings get no pong, a sends none,
    so b too goes through the relay node."""
    sim = RelaySim(senders={"a", "b"}, echo=False)
    a = sim.add_node("a", "none")
    b = sim.add_node("b", "cone")
    sim.add_node("r", "none")
    sim.start_with_relay("r", {"a": {"b": Policy(pin=RELAY_NODE)}})
    sim._apply(b, b.manager.add_candidate(a.key, a.private_addr, sim.now))
    sim._apply(a, a.manager.ping(b.key, sim.now))          # `wgc ping` on a: no UDP ping either
    sim.run_until(15.0)
    assert sim.kind("a", "b") == RELAY_NODE and sim.kind("b", "a") == RELAY_NODE
    assert b.manager.peers[a.key].udp_pings_sent > 0 and b.manager.peers[a.key].udp_pongs == 0
    assert a.manager.peers[b.key].udp_pings_sent == 0
    assert a.manager.drops.get("UDP ping from a peer kept off direct paths", 0) > 0
