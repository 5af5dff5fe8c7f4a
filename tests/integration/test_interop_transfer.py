"""Interop: bulk TCP through the tunnel, checked by sha256, and roaming of the wireguard-go side.

Side `a` is the device under test (WGC_INTEROP_DUT), side `b` Debian's wireguard-go. The roaming tests
move wireguard-go's outer address while a paced transfer runs; the transfer must complete intact and the
DUT must end up sending to the new address (it learns it from authenticated packets, whitepaper §2.1).
"""
from __future__ import annotations

import contextlib
import time

import pytest

from tests.integration.peers import WgGoPeer, dut_class, peer_pair, start_transfer, transfer
from tests.support.prereq import require_binary, require_root
from tools.natlab.netns import link

pytestmark = [pytest.mark.netns, pytest.mark.timeout(90)]

MIB = 1 << 20


@pytest.fixture
def make_pair():
    """Returns a function building a DUT <-> wireguard-go `Pair`; all pairs are torn down afterwards."""
    require_root()
    require_binary("wireguard-go", "wg", "ping")
    with contextlib.ExitStack() as stack:
        yield lambda **kw: stack.enter_context(peer_pair(dut_class(), WgGoPeer, report=True, **kw))


@pytest.mark.parametrize("direction", ["dut_to_wggo", "wggo_to_dut"])
def test_tcp_transfer_20mib(make_pair, direction: str) -> None:
    p = make_pair()
    if direction == "dut_to_wggo":
        sent, received = transfer(p.ns_a, p.ns_b, p.b.address(4), 20 * MIB, timeout=60)
    else:
        sent, received = transfer(p.ns_b, p.ns_a, p.a.address(4), 20 * MIB, timeout=60)
    assert sent[0] == 20 * MIB
    assert received == sent, "bytes or sha256 differ between sender and receiver"
    # The counters saw the whole payload go through the DUT.
    a_view = p.a.show().peers[p.b.public_key]
    assert (a_view.tx_bytes if direction == "dut_to_wggo" else a_view.rx_bytes) > 20 * MIB


def _readdress(p) -> str:
    """wireguard-go's host gets a new address on the same link (DHCP renumbering)."""
    p.ns_b.run("ip", "address", "del", f"{p.outer_b}/24", "dev", p.veth_b)
    p.ns_b.run("ip", "address", "add", "192.0.2.3/24", "dev", p.veth_b)
    return "192.0.2.3"


def _new_link(p) -> str:
    """wireguard-go's host moves to another network (Wi-Fi to LTE): the old link goes down and the
    route to the DUT's endpoint goes over a second veth with a different subnet."""
    p.ns_b.run("ip", "address", "flush", "dev", p.veth_b)
    p.ns_b.run("ip", "link", "set", p.veth_b, "down")
    p.ns_b.run("ip", "route", "add", f"{p.outer_a}/32", "via", "198.51.100.1")
    return "198.51.100.2"


@pytest.mark.parametrize("direction", ["dut_to_wggo", "wggo_to_dut"])
@pytest.mark.parametrize("move", [_readdress, _new_link], ids=["readdress", "new_link"])
def test_roaming_mid_transfer(make_pair, move, direction: str) -> None:
    p = make_pair()
    if move is _new_link:
        link(p.ns_a, ["198.51.100.1/24"], p.ns_b, ["198.51.100.2/24"])
    # A roaming client keeps a persistent keepalive, so it speaks from its new address even while it
    # only receives (a silent TCP receiver sends no ACKs while the DUT's data goes to the old address).
    p.b.wg_set("peer", p.a.public_key, "persistent-keepalive", "1")
    size, rate = 12 * MIB, 6 * MIB  # about two seconds of paced traffic
    if direction == "dut_to_wggo":
        xfer = start_transfer(p.ns_a, p.ns_b, p.b.address(4), size, rate=rate, timeout=20)
    else:
        xfer = start_transfer(p.ns_b, p.ns_a, p.a.address(4), size, rate=rate, timeout=20)
    # Wait until the tunnel carries the transfer, then move while it is still running.
    deadline = time.monotonic() + 10
    while max(p.a.show().peers[p.b.public_key].rx_bytes, p.a.show().peers[p.b.public_key].tx_bytes) < MIB:
        assert time.monotonic() < deadline, "transfer did not start"
        time.sleep(0.05)
    new_address = move(p)
    # wireguard-go pins the source address it last used per peer and keeps it while sends fail with
    # ENETUNREACH; its mobile front ends rebind on a network change, which clears that. Do the same.
    p.b.wg_set("listen-port", str(p.b.listen_port))
    assert xfer.sender.poll() is None, "transfer finished before the move: the test proved nothing"
    sent, received = xfer.result()
    assert sent[0] == size
    assert received == sent, "bytes or sha256 differ after roaming"
    assert p.a.show().peers[p.b.public_key].endpoint == f"{new_address}:{p.b.listen_port}"
