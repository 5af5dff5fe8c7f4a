"""Interop: a tunnel between the device under test and wireguard-go in network namespaces.

The DUT (side `a`) is picked by WGC_INTEROP_DUT (see tests/integration/peers.py); the reference (side
`b`) is always Debian's wireguard-go configured with `wg`. Covers ping both ways, the handshake started
by either side, IPv6 inside the tunnel, IPv6 outer endpoints and preshared keys.
"""
from __future__ import annotations

import contextlib

import pytest

from tests.integration.peers import WgGoPeer, dut_class, dut_kind, genkey, peer_pair, ping, transfer
from tests.support.prereq import require_binary, require_root

pytestmark = [pytest.mark.netns, pytest.mark.timeout(60)]


@pytest.fixture
def make_pair():
    """Returns a function building a DUT <-> wireguard-go `Pair`; all pairs are torn down afterwards."""
    require_root()
    require_binary("wireguard-go", "wg", "ping")
    with contextlib.ExitStack() as stack:
        yield lambda **kw: stack.enter_context(peer_pair(dut_class(), WgGoPeer, report=True, **kw))


def test_dut_kind_is_known() -> None:
    assert dut_kind() in ("wgc", "wireguard-go")


def test_ping_both_ways(make_pair) -> None:
    p = make_pair()
    assert ping(p.ns_a, p.b.address(4)), "DUT -> wireguard-go ping failed"
    assert ping(p.ns_b, p.a.address(4)), "wireguard-go -> DUT ping failed"
    a_view = p.a.show().peers[p.b.public_key]
    b_view = p.b.show().peers[p.a.public_key]
    assert a_view.latest_handshake > 0 and b_view.latest_handshake > 0
    assert a_view.endpoint == f"{p.outer_b}:{p.b.listen_port}"
    assert b_view.endpoint == f"{p.outer_a}:{p.a.listen_port}"
    # Each side received what the other sent (handshake + 6 echo packets at least).
    assert a_view.rx_bytes > 6 * 32 and b_view.rx_bytes > 6 * 32
    assert a_view.tx_bytes > 6 * 32 and b_view.tx_bytes > 6 * 32


@pytest.mark.parametrize("initiator", ["dut", "wireguard-go"])
def test_handshake_started_from_either_side(make_pair, initiator: str) -> None:
    # Only the initiator knows the other's endpoint, so only it can start the handshake.
    side = "a" if initiator == "dut" else "b"
    p = make_pair(endpoints=side)
    init_ns, init, resp_ns, resp = (p.ns_a, p.a, p.ns_b, p.b) if side == "a" else (p.ns_b, p.b, p.ns_a, p.a)
    before = resp.show().peers[init.public_key]
    assert before.endpoint is None and before.latest_handshake == 0
    # The responder cannot reach the initiator before it has heard from it.
    assert not ping(resp_ns, init.address(4), count=1, deadline=1)
    assert resp.show().peers[init.public_key].latest_handshake == 0
    assert ping(init_ns, resp.address(4)), f"ping from the initiator ({init.kind}) failed"
    after = resp.show().peers[init.public_key]
    assert after.latest_handshake > 0
    assert after.endpoint == "{}:{}".format(*p.endpoint_of(side)), "responder did not learn the endpoint"
    assert ping(resp_ns, init.address(4)), f"ping back from the responder ({resp.kind}) failed"


def test_ipv6_inside_the_tunnel(make_pair) -> None:
    p = make_pair()
    assert ping(p.ns_a, p.b.address(6)), "DUT -> wireguard-go ping6 failed"
    assert ping(p.ns_b, p.a.address(6)), "wireguard-go -> DUT ping6 failed"
    sent, received = transfer(p.ns_a, p.ns_b, p.b.address(6), 2 << 20)
    assert sent == received and sent[0] == 2 << 20
    sent, received = transfer(p.ns_b, p.ns_a, p.a.address(6), 2 << 20)
    assert sent == received and sent[0] == 2 << 20


def test_ipv6_outer_endpoints(make_pair) -> None:
    p = make_pair(outer=6)
    assert ping(p.ns_a, p.b.address(4)), "DUT -> wireguard-go ping over an IPv6 outer path failed"
    assert ping(p.ns_b, p.a.address(6)), "wireguard-go -> DUT ping6 over an IPv6 outer path failed"
    assert p.a.show().peers[p.b.public_key].endpoint == f"[{p.outer_b}]:{p.b.listen_port}"
    assert p.b.show().peers[p.a.public_key].endpoint == f"[{p.outer_a}]:{p.a.listen_port}"
    sent, received = transfer(p.ns_a, p.ns_b, p.b.address(4), 2 << 20)
    assert sent == received and sent[0] == 2 << 20


def test_preshared_key(make_pair) -> None:
    psk = genkey()
    p = make_pair(psk=psk)
    assert p.a.show().peers[p.b.public_key].preshared_key == psk
    assert ping(p.ns_a, p.b.address(4)) and ping(p.ns_b, p.a.address(4))
    assert p.a.show().peers[p.b.public_key].latest_handshake > 0


@pytest.mark.parametrize("initiator", ["dut", "wireguard-go"])
def test_mismatched_preshared_key_never_completes(make_pair, initiator: str) -> None:
    p = make_pair(psk=genkey())
    p.b.add_peer(p.a.public_key, ["10.99.0.1/32", "fd99::1/128"], psk=genkey())  # now the PSKs differ
    ns, dst = (p.ns_a, p.b.address(4)) if initiator == "dut" else (p.ns_b, p.a.address(4))
    assert not ping(ns, dst, count=1, deadline=2)
    assert p.a.show().peers[p.b.public_key].latest_handshake == 0
    assert p.b.show().peers[p.a.public_key].latest_handshake == 0
