"""netcheck's word on UDP per DERP region reaches the DERP clients (docs/derp-quic.md): the pure rule
(wgclient/relayudp.py: STUN answered => works; no STUN answer at all, or unanswered in a full report =>
blocked; not probed => unchanged) and the path adapter passing it to each client after every netcheck and to
clients it creates later."""
from __future__ import annotations

import asyncio
import os
from types import SimpleNamespace

from derp.derpmap import parse_derpmap
from derp.transport_choice import QUIC, UDP, UPGRADE
from natprobe.report import Report
from wgclient import keys
from wgclient.aio import pathnet
from wgclient.aio.paths import Paths
from wgclient.relayudp import udp_by_region

W, B, U = UDP.WORKS, UDP.BLOCKED, UDP.UNKNOWN
DERPMAP = parse_derpmap('{"Regions": {"901": {"RegionID": 901, "RegionCode": "fra", "Nodes": [{"Name": "901a", '
                        '"RegionID": 901, "HostName": "127.0.0.1", "DERPPort": 9, "WgcQUICPort": 9}]}, '
                        '"902": {"RegionID": 902, "RegionCode": "ams", "Nodes": [{"Name": "902a", '
                        '"RegionID": 902, "HostName": "127.0.0.1", "DERPPort": 9, "WgcQUICPort": 9}]}}}')


def report(udp: bool, v4: dict | None = None, v6: dict | None = None) -> Report:
    return Report(udp=udp, region_v4_latency=v4 or {}, region_v6_latency=v6 or {},
                  region_latency={**(v4 or {}), **(v6 or {})})


def test_the_rule() -> None:
    regions = [1, 2, 3]
    prev = {2: W, 3: B}
    assert udp_by_region(report(True, {1: 0.01}), regions, prev, full=False) == {1: W, 2: W, 3: B}
    assert udp_by_region(report(True, None, {3: 0.02}), regions, prev, full=False) == {1: U, 2: W, 3: W}
    assert udp_by_region(report(True, {1: 0.01}), regions, prev, full=True) == {1: W, 2: B, 3: B}
    assert udp_by_region(report(False), regions, prev, full=False) == {1: B, 2: B, 3: B}
    # an HTTPS-only latency (UDP blocked, the fallback measured the region) is no STUN answer
    https = Report(udp=False, region_latency={1: 0.03}, region_probe={1: "HTTPS"})
    assert udp_by_region(https, regions, {}, full=True) == {1: B, 2: B, 3: B}


def test_paths_pass_each_netcheck_to_the_derp_clients(monkeypatch) -> None:
    async def main():
        device = SimpleNamespace(identity=SimpleNamespace(private_key=keys.genkey(os.urandom)))
        runner = SimpleNamespace(device=device, flush=lambda: None, udp=SimpleNamespace(fwmark=0, port=1))
        p = Paths(runner, DERPMAP, interface="wgtest0")
        reports = [report(True, {901: 0.01}), report(False)]

        async def fake_netcheck(*args, **kw):
            r = reports.pop(0)
            kw["history"].add(r, False)
            return r

        monkeypatch.setattr(pathnet, "run_netcheck", fake_netcheck)
        p._connect(901)
        client = p.clients[901]
        choice = client.switch.choice
        assert choice.udp is U and choice.order(0.0)[0] == UPGRADE   # nothing known yet: TCP first
        await p.net.run()
        assert p.relay_udp == {901: W, 902: U} and choice.udp is W and choice.order(0.0)[0] == QUIC
        p._connect(902)                           # created later: starts from what is known of its region
        assert p.clients[902].switch.choice.udp is U
        await p.net.run()                         # no STUN answer at all now
        assert choice.udp is B and p.clients[902].switch.choice.udp is B
        assert choice.order(0.0)[0] == UPGRADE
        await p.close()
    asyncio.run(asyncio.wait_for(main(), 30))


def test_paths_track_the_transport_per_region() -> None:
    """`transports` (status, metrics) names quic too, and a make-before-break swap moves it without the
    region going down."""
    from derp import frames as F
    from derp import protocol as DP
    from derp.aio.client import Disconnected, TransportChanged

    async def main():
        device = SimpleNamespace(identity=SimpleNamespace(private_key=keys.genkey(os.urandom)))
        runner = SimpleNamespace(device=device, flush=lambda: None, udp=SimpleNamespace(fwmark=0, port=1))
        p = Paths(runner, DERPMAP, interface="wgtest0")
        p._connect(901)
        client = p.clients[901]
        client.stats.transport = "upgrade"        # as DerpClient._install sets it before Connected goes out
        p._on_derp_event(901, DP.Connected(b"\x01" * 32, F.ServerInfo()), client)
        assert p.transports == {901: "upgrade"} and p.transport_of(901) == "upgrade"
        client.stats.transport = "quic"
        p._on_derp_event(901, TransportChanged("quic", "upgrade", "QUIC connected in the background"), client)
        assert p.transports == {901: "quic"} and p.transport_of(901) == "quic"
        assert [r["transport"] for r in p.region_list() if r["id"] == 901] == ["quic"]
        p._on_derp_event(901, Disconnected("stalled", "quic"), client)
        assert p.transports == {}
        await p.close()
    asyncio.run(asyncio.wait_for(main(), 30))


def test_forced_transport_reaches_the_derp_clients() -> None:
    """`wgc up --derp-transport`: the mode of every DERP client; QUIC-only on a region without a QUIC node
    falls back to the usual choice there instead of refusing the region."""
    no_quic = parse_derpmap('{"Regions": {"903": {"RegionID": 903, "RegionCode": "nyc", "Nodes": [{"Name": '
                            '"903a", "RegionID": 903, "HostName": "127.0.0.1", "DERPPort": 9}]}}}')

    async def main():
        device = SimpleNamespace(identity=SimpleNamespace(private_key=keys.genkey(os.urandom)))
        runner = SimpleNamespace(device=device, flush=lambda: None, udp=SimpleNamespace(fwmark=0, port=1))
        for dm, forced, want in ((DERPMAP, "websocket", "websocket"), (DERPMAP, "quic", "quic"),
                                 (no_quic, "quic", "auto")):
            p = Paths(runner, dm, interface="wgtest0", transport=forced)
            region = next(iter(dm.regions))
            p._connect(region)
            assert p.clients[region].transport == want
            await p.close()
    asyncio.run(asyncio.wait_for(main(), 30))
