"""The data path's fallbacks carry traffic intact too: a TUN without virtio-net header (no TCP merging)
and the stock asyncio loop instead of uvloop, each against wireguard-go with a sha256-checked transfer."""
from __future__ import annotations

import pytest

from tests.integration.peers import WgcPeer, WgGoPeer, peer_pair, ping, transfer
from tests.support.prereq import require_binary, require_root

pytestmark = [pytest.mark.netns, pytest.mark.timeout(90)]

MIB = 1 << 20


@pytest.mark.parametrize("env,logged", [({"WGC_TUN_VNET_HDR": "0"}, "TUN plain, uvloop loop"),
                                        ({"WGC_ASYNCIO_LOOP": "1"}, "(TCP merging), asyncio loop")],
                         ids=["plain-tun", "asyncio-loop"])
def test_transfer_both_ways(monkeypatch, env, logged) -> None:
    require_root()
    require_binary("wireguard-go", "wg", "ping")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with peer_pair(WgcPeer, WgGoPeer, report=True) as p:
        assert logged in p.a.log_tail()
        assert ping(p.ns_a, p.b.address(4))
        for src, dst, peer in ((p.ns_a, p.ns_b, p.b), (p.ns_b, p.ns_a, p.a)):
            sent, received = transfer(src, dst, peer.address(4), 8 * MIB, timeout=60)
            assert sent[0] == 8 * MIB
            assert received == sent
