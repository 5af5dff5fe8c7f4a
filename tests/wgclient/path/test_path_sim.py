"""Two (or three) path managers exchanging disco over a simulated network with NATs and DERP regions, in
virtual time: direct within 5 s behind cone NATs, first contact within 2 s of both being up whichever
starts first, relayed (and why() says why) behind symmetric NATs or a UDP block, fallback to DERP without a gap when UDP dies, upgrade retried while relayed, home failover,
regions tried in order until the peer is found, and data delivered throughout."""
from __future__ import annotations

import pytest

from wgclient.path.peerstate import PathState, Route, SendDisco

from tests.wgclient.path.pathsim import Sim


def pair(kind_a: str, kind_b: str, **kw) -> tuple[Sim, object, object]:
    sim = Sim(**kw)
    a = sim.add_node("a", kind_a)
    b = sim.add_node("b", kind_b)
    sim.start()
    return sim, a, b


def first_direct(node) -> float | None:
    return next((t for t, c in node.changes if c.state is PathState.DIRECT), None)


@pytest.mark.parametrize("kinds", [("cone", "cone"), ("port-restricted", "port-restricted"),
                                   ("cone", "symmetric"), ("none", "symmetric"), ("none", "none")])
def test_direct_within_five_seconds(kinds):
    sim, a, b = pair(*kinds)
    sim.run_until(5.0)
    for me, peer in ((a, b), (b, a)):
        route = me.manager.route(peer.key, sim.now)
        assert route.direct is not None and route.relay is None, me.manager.why(peer.key, sim.now)
        assert route.direct[0] == peer.nat.public_ip
        assert first_direct(me) < 5.0
        assert me.manager.why(peer.key, sim.now).startswith("direct ")
    # Traffic flowed from the start (over DERP first) and nothing was lost on the switch.
    assert sim.delivered("b", "a", 0, 4.9) == sim.sent("b", "a", 0, 4.9)
    assert any(via == 1 for _, _, via in b.received) and any(via == "udp" for _, _, via in b.received)


def test_direct_path_is_kept_by_heartbeats():
    sim, a, b = pair("cone", "cone")
    sim.run_until(120.0)
    # One DIRECT transition, never dropped back: heartbeats every 3 s keep renewing the 6.5 s trust.
    assert [c.state for _, c in a.changes] == [PathState.RELAY, PathState.DIRECT]
    assert a.manager.route(b.key, sim.now) == Route(("198.51.100.2", 40000), None)
    recent = [via for t, _, via in b.received if t > 10]
    assert recent and all(via == "udp" for via in recent)


@pytest.mark.parametrize("kinds,words", [
    (("symmetric", "symmetric"), "both NATs map ports per destination"),
    (("port-restricted", "symmetric"), "peer's NAT maps ports per destination"),
])
def test_hard_nat_stays_relayed_and_says_why(kinds, words):
    sim, a, b = pair(*kinds)
    sim.run_until(90.0)
    assert first_direct(a) is None and first_direct(b) is None
    assert a.manager.route(b.key, sim.now) == Route(None, 1)
    assert words in a.manager.why(b.key, sim.now)
    assert 'relayed via DERP region "fra"' in a.manager.why(b.key, sim.now)
    # Relayed traffic keeps working the whole time.
    assert sim.delivered("b", "a", 0, 89) == sim.sent("b", "a", 0, 89)
    assert sim.delivered("a", "b", 0, 89) == sim.sent("a", "b", 0, 89)


def test_udp_blocked_on_one_side():
    sim, a, b = pair("blocked", "cone")
    sim.run_until(30.0)
    assert a.manager.route(b.key, sim.now) == Route(None, 1)
    assert "UDP is blocked on this network" in a.manager.why(b.key, sim.now)
    assert "peer's network blocks UDP" in b.manager.why(a.key, sim.now)
    assert sim.delivered("a", "b", 0, 29) == sim.sent("a", "b", 0, 29)


def test_loss_of_trust_falls_back_to_relay_without_gap():
    sim, a, b = pair("cone", "cone")
    sim.run_until(20.0)
    assert a.manager.route(b.key, sim.now).relay is None
    sim.udp_cut = True  # a firewall starts dropping UDP between the sites
    cut = sim.now
    trusted_until = a.manager.peers[b.key].trust_until

    def check(now):
        route = a.manager.route(b.key, now)
        assert route.direct is not None or route.relay is not None  # never no path at all
        if now > trusted_until:
            assert route.relay == 1  # trust gone: DERP is always in the route
    sim.step_until(40.0, 0.05, check)
    states = [c.state for t, c in a.changes if t >= cut]
    assert states[:2] == [PathState.LAPSING, PathState.RELAY]
    lapse = next(t for t, c in a.changes if t >= cut and c.state is PathState.LAPSING)
    assert lapse <= cut + 6.5 + 0.01
    # Every packet sent once trust lapsed arrives over DERP (the only loss is inside the trust window).
    assert sim.delivered("b", "a", lapse, 39.9) == sim.sent("b", "a", lapse, 39.9)
    assert a.manager.route(b.key, sim.now) == Route(None, 1)


def test_upgrade_retried_while_relayed():
    sim = Sim()
    a = sim.add_node("a", "cone")
    b = sim.add_node("b", "cone")
    sim.udp_cut = True
    sim.start()
    sim.run_until(150.0)
    assert first_direct(a) is None
    cmm_times = []
    orig = a.manager._send

    def spy(p, message, **kw):
        cmm_times.append((sim.now, type(message).__name__))
        return orig(p, message, **kw)
    a.manager._send = spy
    sim.run_until(200.0)
    # Discovery keeps going every few seconds while relayed (CallMeMaybe at most every 5 s).
    calls = [t for t, name in cmm_times if name == "CallMeMaybe"]
    assert len(calls) >= 7 and max(y - x for x, y in zip(calls, calls[1:])) <= 6.1
    sim.udp_cut = False
    sim.run_until(210.0)
    assert a.manager.route(b.key, sim.now).relay is None and b.manager.route(a.key, sim.now).relay is None
    assert 200.0 < first_direct(a) <= 206.1


def test_home_failover_within_five_seconds_and_peers_follow():
    sim = Sim(regions={1: "fra", 2: "ams"})
    a = sim.add_node("a", "blocked", {1: 0.010, 2: 0.020})
    b = sim.add_node("b", "blocked", {1: 0.012, 2: 0.015})
    sim.start()
    sim.run_until(10.0)
    assert a.homes[-1] == (0.0, 1) and b.homes[-1][1] == 1
    assert a.manager.route(b.key, sim.now) == Route(None, 1)
    sim.set_region_up(1, False)
    down = sim.now
    sim.run_until(down + 5.0)
    for me, peer in ((a, b), (b, a)):
        t, region = me.homes[-1]
        assert region == 2 and t <= down + 5.0
        assert me.manager.route(peer.key, sim.now) == Route(None, 2)
    sim.run_until(down + 30.0)
    # After the failover, everything sent arrives through region 2.
    assert sim.delivered("b", "a", down + 5.0, down + 29.0) == sim.sent("b", "a", down + 5.0, down + 29.0)
    # The old home coming back does not take traffic away from a working region until netcheck says so.
    sim.set_region_up(1, True)
    sim.run_until(down + 40.0)
    assert a.homes[-1][1] == 2
    sim.netcheck(a)
    assert a.homes[-1][1] == 1  # netcheck (with its own hysteresis) prefers the faster region again


def test_relay_restart_keeps_home_and_traffic_resumes():
    sim = Sim(regions={1: "fra", 2: "ams"})
    a = sim.add_node("a", "blocked", {1: 0.010, 2: 0.020})
    b = sim.add_node("b", "blocked", {1: 0.010, 2: 0.020})
    sim.start()
    sim.run_until(10.0)
    sim.set_region_up(1, False)
    sim.at(10.5, lambda: sim.set_region_up(1, True))  # back before the failover delay
    sim.run_until(30.0)
    assert [r for _, r in a.homes] == [1]
    assert sim.delivered("b", "a", 12.0, 29.0) == sim.sent("b", "a", 12.0, 29.0)


def test_peer_found_by_trying_regions_in_order():
    # a's nearest region is 1, b's is 2: neither knows where the other is, both try regions in order.
    sim = Sim(regions={1: "fra", 2: "ams", 3: "lhr"})
    a = sim.add_node("a", "blocked", {1: 0.010, 2: 0.030, 3: 0.040})
    b = sim.add_node("b", "blocked", {1: 0.030, 2: 0.010, 3: 0.040})
    sim.start()
    sim.run_until(20.0)
    ra, rb = a.manager.route(b.key, sim.now).relay, b.manager.route(a.key, sim.now).relay
    assert ra == rb and ra in (1, 2)
    assert ra in a.connected and ra in b.connected
    assert sim.delivered("b", "a", 15.0, 19.5) == sim.sent("b", "a", 15.0, 19.5)
    assert 3 not in a.connected and 3 not in b.connected


def test_three_nodes_mixed_nats():
    sim = Sim()
    a = sim.add_node("a", "cone")
    b = sim.add_node("b", "symmetric")
    c = sim.add_node("c", "symmetric")
    sim.start()
    sim.run_until(10.0)
    assert a.manager.route(b.key, sim.now).relay is None
    assert a.manager.route(c.key, sim.now).relay is None
    assert b.manager.route(c.key, sim.now) == Route(None, 1)
    assert "both NATs map ports per destination" in b.manager.why(c.key, sim.now)


def test_idle_peer_stops_heartbeats_and_restarts_on_traffic():
    sim, a, b = pair("cone", "cone")
    sim.run_until(10.0)
    sim.traffic = False
    sim.run_until(100.0)  # > 45 s without data: heartbeats stop, trust lapses, no more pings
    p = a.manager.peers[b.key]
    assert p.next_heartbeat is None
    outputs = []
    orig = sim._apply
    sim._apply = lambda node, outs: (outputs.extend(outs), orig(node, outs))
    sim.run_until(150.0)
    assert not [o for o in outputs if isinstance(o, SendDisco)]
    sim._apply = orig
    sim.traffic = True
    sim.at(150.0, lambda: sim._data_tick(a))
    sim.at(150.0, lambda: sim._data_tick(b))
    sim.run_until(152.0)
    assert a.manager.route(b.key, sim.now).relay is None


def test_set_home_emitted_once_per_change():
    sim, a, b = pair("cone", "cone")
    sim.run_until(30.0)
    sim.netcheck(a)
    sim.netcheck(a)
    assert [r for _, r in a.homes] == [1]


def test_peer_roaming_behind_a_new_nat_mapping():
    sim, a, b = pair("port-restricted", "port-restricted")
    sim.run_until(20.0)
    old = b.manager.route(a.key, sim.now).direct
    assert old is not None
    a.nat.mappings.clear()  # a's NAT reboots: new public port for everything
    a.nat.reverse.clear()
    a.nat.allowed.clear()
    roam = sim.now
    sim.at(roam + 1.0, lambda: sim.netcheck(a))  # a re-STUNs and learns its new mapping

    def check(now):
        route = b.manager.route(a.key, now)
        assert route.direct is not None or route.relay is not None
    sim.step_until(roam + 15.0, 0.05, check)
    new = b.manager.route(a.key, sim.now)
    assert new.direct is not None and new.direct != old and new.relay is None
    assert a.manager.route(b.key, sim.now).relay is None
    regained = next(t for t, c in b.changes if t > roam and c.state is PathState.DIRECT)
    assert regained <= roam + 10.0
    lapse = roam + 6.5
    assert sim.delivered("a", "b", lapse + 0.1, roam + 14.0) == sim.sent("a", "b", lapse + 0.1, roam + 14.0)


@pytest.mark.parametrize("kind", ["cone", "port-restricted"])
@pytest.mark.parametrize("senders,echo", [({"a"}, True), (None, True), ({"a"}, False)],
                         ids=["a-pings-b", "both-send", "b-silent"])
@pytest.mark.parametrize("lead", [-4.0, -1.0, -0.05, 0.0, 0.01, 0.05, 0.2, 1.0, 2.5, 4.0])
def test_simultaneous_start_direct_within_two_seconds_of_both_up(kind, senders, echo, lead):
    """Issue 9 point 3: whichever node starts first (a by `lead` seconds; negative: b first), both are
    direct within 2 s of the later one's home region connecting, with traffic both ways, only a's pings
    (b answering each), or b silent (as when a's first handshake went to DERP before b was there, so b
    sends nothing until WireGuard retries it 5 s later). Before the fix: 3 s (b's first ping met a's
    closed NAT and waited for the next heartbeat) or 5-6 s (a's CallMeMaybe reached DERP before b did
    and waited for the 5 s retry)."""
    sim = Sim(senders=senders, echo=echo)
    a = sim.add_node("a", kind)
    b = sim.add_node("b", kind)
    sim.start(at={"a": max(0.0, -lead), "b": max(0.0, lead)})
    sim.run_until(abs(lead) + 10.0)
    both_up = max(a.up_at, b.up_at)
    for me, peer in ((a, b), (b, a)):
        t = first_direct(me)
        assert t is not None and t - both_up <= 2.0, (me.name, t, both_up, me.manager.why(peer.key, sim.now))
        assert me.manager.route(peer.key, sim.now).relay is None
