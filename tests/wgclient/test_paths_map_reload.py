"""The path adapter applying a new DERP map (issue 10 §5) with a stand-in device and stand-in DERP clients:
a removed region's connection is closed and its late events ignored, the manager learns the new regions,
a changed region is redialed with its new node (with the UDP port's firewall mark), and the next netcheck
measures every region; map refreshes are fetched with the UDP port's current mark."""
from __future__ import annotations

import asyncio
import json
import os
from types import SimpleNamespace

from derp.aio.client import ClientStats, Disconnected
from derp.aio.derpmap_loader import load_derpmap
from derp.derpmap import parse_derpmap
from wgclient import keys
from wgclient.aio.derpmap_source import DerpMapSource
from wgclient.aio.paths import Paths


def dm(**hosts: str):
    return parse_derpmap(json.dumps({"Regions": {rid: {"RegionID": int(rid), "RegionCode": f"r{rid}", "Nodes": [
        {"Name": f"{rid}a", "RegionID": int(rid), "HostName": host, "DERPPort": 9}]} for rid, host in hosts.items()}}))


class FakeClient:
    def __init__(self) -> None:
        self.closed, self.connected, self.stats, self.stream = False, True, ClientStats(), None

    async def close(self) -> None:
        self.closed = True

    def note_preferred(self, preferred: bool) -> None:
        pass


MARK = 0x77


def paths(derpmap, source=None) -> Paths:
    device = SimpleNamespace(identity=SimpleNamespace(private_key=keys.genkey(os.urandom)))
    runner = SimpleNamespace(device=device, flush=lambda: None, udp=SimpleNamespace(fwmark=MARK))
    return Paths(runner, derpmap, interface="wgtest0", source=source)


def test_removed_region_closed_changed_region_redialed() -> None:
    async def main():
        p = paths(dm(**{"901": "127.0.0.1", "902": "127.0.0.1"}))
        p._apply(p.pm.set_regions(p._region_codes(), 0.0))
        old = {901: FakeClient(), 902: FakeClient()}
        for rid, client in old.items():
            p.clients[rid] = client
            p.transports[rid] = "upgrade"
        p.pm._regions_open.update({901: 0.0, 902: 0.0})   # as if the manager had asked for both
        p.set_derpmap(dm(**{"902": "127.0.0.2"}))         # 901 removed, 902's node changed
        await asyncio.sleep(0)
        assert old[901].closed and old[902].closed
        assert 901 not in p.clients and 901 not in p.transports
        assert set(p.pm.home.regions) == {902} and p.home == 902
        assert p.clients[902] is not old[902]              # redialed ...
        assert p.clients[902].targets[0].host == "127.0.0.2"   # ... to the new node
        assert p.clients[902].fwmark == MARK                    # ... marked like the UDP port
        assert p.net._full                                 # the next netcheck measures every region
        p.transports[902] = "upgrade"
        p._on_derp_event(902, Disconnected("closed"), old[902])   # the old connection's last words
        assert 902 in p.transports and 902 not in p.pm.home.down
        p.set_derpmap(p.derpmap)                           # the same map: nothing happens
        assert p.clients[902] is not old[902]
        await p.close()
    asyncio.run(main())


def test_map_refreshes_are_fetched_with_the_udp_ports_current_mark(tmp_path) -> None:
    """`wg set NAME fwmark M` after `up`: the next map fetch carries M, as the DERP links do."""
    (tmp_path / "map.json").write_text(json.dumps({"Regions": {"901": {"RegionID": 901, "RegionCode": "r", "Nodes": [
        {"Name": "901a", "RegionID": 901, "HostName": "127.0.0.1", "DERPPort": 9}]}}}))
    marks = []

    def load(source, **kw):
        marks.append(kw["fwmark"])
        return load_derpmap(source, **kw)
    source = DerpMapSource([str(tmp_path / "map.json")], cache_path=None, fwmark=5, load=load)
    source.load_initial()

    async def main():
        p = paths(source.current.derpmap, source)
        await source.refresh()
        p.runner.udp.fwmark = MARK + 1
        await source.refresh()
        await p.close()
    asyncio.run(main())
    assert marks == [5, MARK, MARK + 1]
