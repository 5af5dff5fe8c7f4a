"""State-machine properties of the path manager under random input sequences with stepped time: it never
raises on peer input, time always moves its deadline forward, a usable region always gives a route,
`route()` agrees with the state, and why() always has an answer. Also the why() texts one by one."""
from __future__ import annotations

import random

from hypothesis import given, settings, strategies as st

from wgclient import keys
from wgclient.path import disco
from wgclient.path.discokeys import derive_pair
from wgclient.path.manager import NetInfo, PathManager
from wgclient.path.peerstate import CloseRegion, ConnectRegion, PathState, Route, SendDisco

KA = keys.clamp(bytes(range(32)))
KB = keys.clamp(bytes(range(7, 39)))
A, B = keys.public_key(KA), keys.public_key(KB)
ADDRS = [("198.51.100.2", 40000), ("198.51.100.2", 40001), ("10.0.2.2", 41641), ("2001:db8::2", 41641)]
SEAL_B = derive_pair(KB, A).box

actions = st.lists(st.one_of(
    st.tuples(st.just("advance"), st.floats(0.0, 8.0)),
    st.tuples(st.just("data"), st.none()),
    st.tuples(st.just("ping"), st.tuples(st.sampled_from(ADDRS + [1, 2, 3]), st.binary(min_size=12, max_size=12))),
    st.tuples(st.just("pong"), st.tuples(st.sampled_from(ADDRS), st.integers(0, 5))),
    st.tuples(st.just("cmm"), st.lists(st.sampled_from(ADDRS), max_size=4)),
    st.tuples(st.just("nodeinfo"), st.tuples(st.integers(0, 3), st.integers(0, 255))),
    st.tuples(st.just("region"), st.tuples(st.integers(1, 3), st.booleans())),
    st.tuples(st.just("gone"), st.integers(1, 3)),
    st.tuples(st.just("wg"), st.one_of(st.sampled_from(ADDRS), st.integers(1, 3))),
    st.tuples(st.just("netcheck"), st.tuples(st.integers(0, 3), st.booleans(), st.booleans())),
    st.tuples(st.just("garbage"), st.binary(max_size=80)),
), max_size=40)


@settings(max_examples=150)
@given(actions)
def test_random_inputs_keep_invariants(script):
    run_script(script)


def run_script(script) -> set:
    """Feed the actions to a fresh manager, checking the invariants after each; returns the states seen."""
    seen = set()
    m = PathManager(KA, random_bytes=random.Random(3).randbytes)
    m.add_peer(B)
    now = 0.0
    nonce = iter(range(10**6))

    opened = set()

    def check_outputs(outputs):
        # A DERP send only ever goes to a region the manager has asked to connect (and not closed).
        for o in outputs:
            if isinstance(o, ConnectRegion):
                opened.add(o.region)
            elif isinstance(o, CloseRegion):
                opened.discard(o.region)
            elif isinstance(o, SendDisco) and o.region is not None:
                assert o.region in opened
            elif isinstance(o, SendDisco):
                assert o.addr is not None

    check_outputs(m.set_regions({1: "fra", 2: "ams", 3: "lhr"}, now))

    def seal(message):
        return SEAL_B.seal(message.encode(), next(nonce).to_bytes(24, "big"))
    for kind, arg in script:
        if kind == "advance":
            now += arg
            deadline = m.next_deadline()
            while deadline is not None and deadline <= now:
                check_outputs(m.on_timer(deadline))
                following = m.next_deadline()
                assert following is None or following > deadline  # time makes progress
                deadline = following
            out = m.on_timer(now)
        elif kind == "data":
            out = m.on_data_sent(B, now)
        elif kind == "ping":
            addr, tx = arg
            kw = {"addr": addr} if isinstance(addr, tuple) else {"region": addr, "derp_src": B}
            out = m.on_disco(seal(disco.Ping(tx, B)), now, **kw)
        elif kind == "pong":
            addr, pick = arg
            txids = list(m.peers[B].pings) or [bytes(12)]
            out = m.on_disco(seal(disco.Pong(txids[pick % len(txids)], ("198.51.100.1", 1))), now, addr=addr)
        elif kind == "cmm":
            out = m.on_disco(seal(disco.CallMeMaybe(tuple(arg))), now, region=2, derp_src=B)
        elif kind == "nodeinfo":
            out = m.on_disco(seal(disco.NodeInfo(*arg)), now, region=1, derp_src=B)
        elif kind == "region":
            region, up = arg
            out = (m.on_region_up if up else m.on_region_down)(region, now)
        elif kind == "gone":
            out = m.on_peer_gone(B, arg, now)
        elif kind == "wg":
            if isinstance(arg, tuple):
                out = m.on_wireguard_from(B, now, addr=arg)
            else:
                out = m.on_wireguard_from(B, now, region=arg)
        elif kind == "netcheck":
            pref, udp, hard = arg
            out = m.on_netcheck(NetInfo(pref, {1: 0.02, 2: 0.01}, udp, hard, (("198.51.100.1", 40000),)), now)
        elif kind == "garbage":
            out = m.on_disco(arg, now, addr=ADDRS[0])
        check_outputs(out)
        p = m.peers[B]
        route = m.route(B, now)
        if any(m.home.usable(r) for r in (1, 2, 3)):
            assert route != Route()
        if p.state is PathState.DIRECT:
            assert route == Route(p.best, None) and p.trusted(now)
        if p.state is PathState.RELAY:
            assert route.direct is None
        assert m.why(B, now)
        seen.add(p.state)
    return seen


def test_invariant_harness_reaches_every_state():
    # The invariants above cover all states: a fixed script through RELAY -> DIRECT -> LAPSING -> RELAY.
    script = [("data", None), ("cmm", [ADDRS[0]]), ("pong", (ADDRS[0], 1)), ("advance", 2.0),
              ("advance", 5.0), ("advance", 8.0)]
    assert run_script(script) == set(PathState)


def _manager():
    m = PathManager(KA, random_bytes=random.Random(1).randbytes)
    m.add_peer(B)
    m.set_regions({1: "fra"}, 0.0)
    return m


def test_why_texts():
    m = _manager()
    assert "nothing has been sent to the peer yet" in m.why(B, 0.0)
    m.on_data_sent(B, 1.0)
    assert "no direct address of the peer is known yet" in m.why(B, 1.0)
    assert m.why(B, 1.0).startswith('relayed via DERP region "fra": ')
    m.on_disco(SEAL_B.seal(disco.CallMeMaybe((ADDRS[0],)).encode(), bytes(24)), 1.5, region=1, derp_src=B)
    assert "disco pings to 1 candidate address (1 advertised) got no answer" in m.why(B, 1.5)
    # Direct, then lapsing.
    tx = next(t for t, s in m.peers[B].pings.items() if s.addr == ADDRS[0])
    m.on_disco(SEAL_B.seal(disco.Pong(tx, ("198.51.100.1", 1)).encode(), b"1" * 24), 1.52, addr=ADDRS[0])
    assert m.why(B, 2.0).startswith("direct 198.51.100.2:40000 (20.0 ms)")
    m.on_timer(8.02)
    assert "the direct path stopped answering pings" in m.why(B, 8.1)
    m2 = PathManager(KA, random_bytes=random.Random(1).randbytes)
    m2.add_peer(B)
    assert "no DERP region is usable" in m2.why(B, 0.0)
