"""Interop: the stock `wg` tool (Debian's wireguard-tools) against the device under test's UAPI socket.

`wg show`, `wg showconf` and `wg set` while the tunnel runs: adding and removing peers, changing
AllowedIPs, endpoints, the listen port, the private key and persistent keepalive, each checked both in
what `wg show` reports and in what the tunnel then does. Side `a` is the DUT, side `b` wireguard-go.
"""
from __future__ import annotations

import contextlib
import time

import pytest

from tests.integration.peers import WgGoPeer, dut_class, genkey, peer_pair, ping, pubkey
from tests.support.prereq import require_binary, require_root

pytestmark = [pytest.mark.netns, pytest.mark.timeout(60)]

B_ROUTES = ["10.99.0.2/32", "fd99::2/128"]


@pytest.fixture
def make_pair():
    """Returns a function building a DUT <-> wireguard-go `Pair`; all pairs are torn down afterwards."""
    require_root()
    require_binary("wireguard-go", "wg", "ping")
    with contextlib.ExitStack() as stack:
        yield lambda **kw: stack.enter_context(peer_pair(dut_class(), WgGoPeer, report=True, **kw))


def test_wg_show_and_showconf(make_pair) -> None:
    p = make_pair(endpoints="a")
    dump = p.a.show()
    assert dump.private_key == p.a.private_key
    assert dump.public_key == p.a.public_key
    assert dump.listen_port == p.a.listen_port and dump.fwmark == 0
    assert list(dump.peers) == [p.b.public_key]
    peer = dump.peers[p.b.public_key]
    assert peer.allowed_ips == tuple(sorted(B_ROUTES))
    assert peer.endpoint == f"{p.outer_b}:{p.b.listen_port}"
    assert (peer.preshared_key, peer.latest_handshake, peer.persistent_keepalive) == (None, 0, 0)
    assert p.a.name in p.a.wg("show", "interfaces").stdout.split()
    human = p.a.wg("show", p.a.name).stdout
    assert f"interface: {p.a.name}" in human and f"listening port: {p.a.listen_port}" in human
    assert f"peer: {p.b.public_key}" in human
    conf = p.a.wg("showconf", p.a.name).stdout
    assert f"PrivateKey = {p.a.private_key}" in conf and f"ListenPort = {p.a.listen_port}" in conf
    assert f"PublicKey = {p.b.public_key}" in conf and f"Endpoint = {p.outer_b}:{p.b.listen_port}" in conf
    assert ping(p.ns_a, p.b.address(4))
    peer = p.a.show().peers[p.b.public_key]
    assert peer.latest_handshake > time.time() - 30 and peer.rx_bytes > 0 and peer.tx_bytes > 0
    assert "latest handshake:" in p.a.wg("show", p.a.name).stdout


def test_wg_set_add_and_remove_peers(make_pair) -> None:
    p = make_pair()
    extra_key, extra_psk = pubkey(genkey()), genkey()
    p.a.add_peer(extra_key, ["10.99.7.0/24", "fd99:7::/64"], ("192.0.2.77", 4242), psk=extra_psk, keepalive=25)
    extra = p.a.show().peers[extra_key]
    assert extra.allowed_ips == ("10.99.7.0/24", "fd99:7::/64")
    assert (extra.endpoint, extra.preshared_key, extra.persistent_keepalive) == ("192.0.2.77:4242", extra_psk, 25)
    assert ping(p.ns_a, p.b.address(4)), "adding another peer broke the first"
    p.a.remove_peer(extra_key)
    assert list(p.a.show().peers) == [p.b.public_key]
    # Removing the working peer cuts the tunnel; adding it back restores it.
    p.a.remove_peer(p.b.public_key)
    assert p.a.show().peers == {}
    assert not ping(p.ns_b, p.a.address(4), count=1, deadline=2)
    p.a.add_peer(p.b.public_key, B_ROUTES, (p.outer_b, p.b.listen_port))
    assert ping(p.ns_a, p.b.address(4)) and ping(p.ns_b, p.a.address(4))


def test_wg_set_allowed_ips_while_running(make_pair) -> None:
    p = make_pair()
    p.ns_b.run("ip", "address", "add", "10.99.0.3/24", "dev", p.b.name)
    assert ping(p.ns_a, "10.99.0.2")
    assert not ping(p.ns_a, "10.99.0.3", count=1, deadline=1), "routed to a peer without an AllowedIP for it"
    p.a.wg_set("peer", p.b.public_key, "allowed-ips", ",".join(B_ROUTES + ["10.99.0.3/32"]))
    assert p.a.show().peers[p.b.public_key].allowed_ips == tuple(sorted(B_ROUTES + ["10.99.0.3/32"]))
    assert ping(p.ns_a, "10.99.0.3"), "a newly added AllowedIP is not used"
    p.a.wg_set("peer", p.b.public_key, "allowed-ips", ",".join(B_ROUTES))
    assert not ping(p.ns_a, "10.99.0.3", count=1, deadline=1), "a removed AllowedIP is still used"
    assert ping(p.ns_a, "10.99.0.2")
    # Inbound packets must come from an AllowedIP of the sending peer: without fd99::2/128 the DUT drops
    # wireguard-go's IPv6 packets (its IPv4 ones still pass).
    p.a.wg_set("peer", p.b.public_key, "allowed-ips", "10.99.0.2/32")
    assert not ping(p.ns_b, p.a.address(6), count=1, deadline=1)
    assert ping(p.ns_b, p.a.address(4))
    p.a.wg_set("peer", p.b.public_key, "allowed-ips", "")
    assert p.a.show().peers[p.b.public_key].allowed_ips == ()


def test_wg_set_endpoint_while_running(make_pair) -> None:
    p = make_pair(endpoints="")  # wireguard-go never learns an endpoint it could start from
    p.a.wg_set("peer", p.b.public_key, "endpoint", f"{p.outer_b}:51999")  # nobody listens there
    assert not ping(p.ns_a, p.b.address(4), count=1, deadline=1)
    assert p.a.show().peers[p.b.public_key].latest_handshake == 0
    p.a.wg_set("peer", p.b.public_key, "endpoint", f"{p.outer_b}:{p.b.listen_port}")
    assert p.a.show().peers[p.b.public_key].endpoint == f"{p.outer_b}:{p.b.listen_port}"
    assert ping(p.ns_a, p.b.address(4)), "the new endpoint is not used"
    assert p.a.show().peers[p.b.public_key].latest_handshake > 0


def test_wg_set_listen_port_while_running(make_pair) -> None:
    p = make_pair()
    assert ping(p.ns_a, p.b.address(4))
    p.a.wg_set("listen-port", "51830")
    assert p.a.show().listen_port == 51830
    p.b.wg_set("peer", p.a.public_key, "endpoint", f"{p.outer_a}:51830")
    assert ping(p.ns_b, p.a.address(4)), "the DUT does not receive on its new port"
    assert p.b.show().peers[p.a.public_key].endpoint == f"{p.outer_a}:51830"


def test_wg_set_private_key_while_running(make_pair) -> None:
    p = make_pair()
    assert ping(p.ns_a, p.b.address(4))
    new_private = genkey()
    p.a.wg_set("private-key", p.a.secret_file(new_private))
    dump = p.a.show()
    assert (dump.private_key, dump.public_key) == (new_private, pubkey(new_private))
    # wireguard-go still knows the old public key: no session can be made until it learns the new one.
    assert not ping(p.ns_a, p.b.address(4), count=1, deadline=2)
    p.b.remove_peer(p.a.public_key)
    p.b.add_peer(pubkey(new_private), ["10.99.0.1/32", "fd99::1/128"], (p.outer_a, p.a.listen_port))
    assert ping(p.ns_a, p.b.address(4)) and ping(p.ns_b, p.a.address(4))


def test_wg_set_persistent_keepalive_while_running(make_pair) -> None:
    p = make_pair()
    assert ping(p.ns_a, p.b.address(4))
    p.a.wg_set("peer", p.b.public_key, "persistent-keepalive", "1")
    assert p.a.show().peers[p.b.public_key].persistent_keepalive == 1
    before = p.b.show().peers[p.a.public_key].rx_bytes
    # The tunnel is otherwise idle: only keepalives (32 bytes each) flow. Two are due within ~2 s; a
    # loaded machine gets 6 s (still too short for two of the 10 s passive keepalives).
    deadline = time.monotonic() + 6
    while (grown := p.b.show().peers[p.a.public_key].rx_bytes - before) < 2 * 32 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert grown >= 2 * 32, f"expected at least two keepalives from the DUT, got {grown} bytes"
    p.a.wg_set("peer", p.b.public_key, "persistent-keepalive", "off")
    assert p.a.show().peers[p.b.public_key].persistent_keepalive == 0
