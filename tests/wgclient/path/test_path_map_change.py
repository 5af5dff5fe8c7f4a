"""A DERP map that changes under a running path manager (issue 10 §5), with hand-stepped time: a removed
region is closed at once and its peers move to another region (a direct path stays direct), a new region is
used, a changed region is closed before it is reopened; and the per-peer upgrade/fallback counters that the
metrics export."""
from __future__ import annotations

import random

from wgclient.path.manager import NetInfo, PathManager
from wgclient.path.peerstate import CloseRegion, ConnectRegion, PathChanged, PathState, Route, SetHome

from tests.wgclient.path.test_path_manager import B, B_ADDR, KA, direct, manager


def kinds(out, kind) -> list:
    return [o for o in out if isinstance(o, kind)]


def test_removed_region_is_closed_at_once_and_its_peers_move() -> None:
    m = manager()
    m.on_netcheck(NetInfo(1, {1: 0.01, 2: 0.02}), 0.0)
    m.on_wireguard_from(B, 1.0, region=1)          # the peer was heard there just now
    assert m.route(B, 1.0) == Route(None, 1)
    out = m.set_regions({2: "ams"}, 2.0)
    assert CloseRegion(1) in out and ConnectRegion(2) in out
    assert SetHome(2) in out and m.home.home == 2
    assert m.route(B, 2.0) == Route(None, 2)
    [change] = kinds(out, PathChanged)
    assert change.state is PathState.RELAY and change.route == Route(None, 2)
    assert 1 not in m.peers[B].derp_heard
    # the gone region is not closed again, nor reopened, later
    later = m.on_timer(100.0)
    assert CloseRegion(1) not in later and ConnectRegion(1) not in later


def test_removed_region_of_a_direct_peer_keeps_the_direct_path() -> None:
    m = manager()
    direct(m, 1.0)
    out = m.set_regions({2: "ams"}, 2.0)
    assert CloseRegion(1) in out
    assert m.route(B, 2.0) == Route(B_ADDR, None)
    assert m.peers[B].state is PathState.DIRECT and m.peers[B].relay == 2


def test_added_region_is_used() -> None:
    m = PathManager(KA, random_bytes=random.Random(1).randbytes)
    m.add_peer(B, region_hint=2)                   # the config names a region the first map lacks
    m.set_regions({1: "fra"}, 0.0)
    assert m.route(B, 0.0) == Route(None, 1)
    out = m.set_regions({1: "fra", 2: "ams"}, 1.0)
    assert ConnectRegion(2) in out and m.route(B, 1.0) == Route(None, 2)
    # and netcheck may make the new region home
    out = m.on_netcheck(NetInfo(2, {1: 0.04, 2: 0.01}), 2.0)
    assert SetHome(2) in out and m.home.home == 2


def test_region_removed_then_added_back_before_idle_timeout_is_reopened() -> None:
    m = manager()
    m.on_netcheck(NetInfo(1, {1: 0.01, 2: 0.02}), 0.0)
    m.set_regions({2: "ams"}, 1.0)
    out = m.set_regions({1: "fra", 2: "ams"}, 2.0)
    out += m.on_netcheck(NetInfo(1, {1: 0.01, 2: 0.02}), 2.0)
    assert SetHome(1) in out and ConnectRegion(1) in out and m.route(B, 2.0) == Route(None, 1)


def test_changed_region_is_closed_before_it_is_reopened() -> None:
    m = manager()
    out = m.set_regions({1: "fra", 2: "ams"}, 1.0, reconnect=[1, 2])   # 2 is not open: nothing to redial
    assert out.index(CloseRegion(1)) < out.index(ConnectRegion(1))
    assert CloseRegion(2) not in out and ConnectRegion(2) not in out
    assert m.route(B, 1.0) == Route(None, 1)


def test_upgrades_and_fallbacks_are_counted_per_peer() -> None:
    m = manager()
    p = m.peers[B]
    assert (p.upgrades, p.fallbacks) == (0, 0)
    direct(m, 1.0)
    assert (p.upgrades, p.fallbacks) == (1, 0)
    m.on_timer(1.02 + 6.5)                         # trust lapses: LAPSING is no fallback yet
    assert p.state is PathState.LAPSING and (p.upgrades, p.fallbacks) == (1, 0)
    m.on_data_sent(B, 8.0)
    m.on_timer(11.0)
    m.on_timer(16.1)                               # the ping to the lapsed address timed out: relayed
    assert p.state is PathState.RELAY and (p.upgrades, p.fallbacks) == (1, 1)
    direct(m, 20.0)
    assert (p.upgrades, p.fallbacks) == (2, 1)
