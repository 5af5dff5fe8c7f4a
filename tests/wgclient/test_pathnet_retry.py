"""The path adapter's netcheck loop (wgclient/aio/pathnet.py): a netcheck that fails or times out is tried
again soon, not a whole interval later, and a full report that was asked for (after a DERP map change)
stays asked for until one is made."""
from __future__ import annotations

import asyncio
import os
from types import SimpleNamespace

from derp.derpmap import parse_derpmap
from natprobe.report import Report
from wgclient import keys
from wgclient.aio import pathnet
from wgclient.aio.paths import Paths

DERPMAP = parse_derpmap('{"Regions": {"901": {"RegionID": 901, "RegionCode": "fra", "Nodes": [{"Name": "901a", '
                        '"RegionID": 901, "HostName": "127.0.0.1", "DERPPort": 9}]}}}')


def run_loop(monkeypatch, outcomes: list) -> list[bool]:
    """Run the loop with a huge interval, ask for one full netcheck, and return force_full per call until
    the outcomes are used up (each outcome: an exception to raise, "hang", or a Report)."""
    monkeypatch.setattr(pathnet, "NETCHECK_RETRY", 0.05)
    monkeypatch.setattr(pathnet, "NETCHECK_TIMEOUT", 0.2)
    calls: list[bool] = []
    done = asyncio.Event()

    async def fake_netcheck(regions, *, history, options, **kw):
        calls.append(options.force_full)
        outcome = outcomes.pop(0)
        if not outcomes:
            done.set()
        if outcome == "hang":
            await asyncio.sleep(10)
        if isinstance(outcome, Exception):
            raise outcome
        history.add(outcome, options.force_full)
        return outcome

    async def main():
        device = SimpleNamespace(identity=SimpleNamespace(private_key=keys.genkey(os.urandom)))
        runner = SimpleNamespace(device=device, flush=lambda: None, udp=SimpleNamespace(fwmark=0, port=1))
        p = Paths(runner, DERPMAP, interface="wgtest0", netcheck_interval=1000.0)
        monkeypatch.setattr(pathnet, "run_netcheck", fake_netcheck)
        loop = asyncio.create_task(p.net.netcheck_loop())
        p.net.soon(full=True)
        await asyncio.wait_for(done.wait(), 5)
        await asyncio.sleep(0.1)              # the last one is applied (and nothing more is started)
        loop.cancel()
        await p.close()
    asyncio.run(asyncio.wait_for(main(), 30))
    return calls


def good() -> Report:
    return Report(udp=True, region_v4_latency={901: 0.01}, region_latency={901: 0.01})


def test_a_failed_full_netcheck_is_tried_again_soon_and_still_full(monkeypatch) -> None:
    calls = run_loop(monkeypatch, [OSError("no route"), good()])
    assert calls == [True, True]


def test_a_timed_out_full_netcheck_is_tried_again_soon_and_still_full(monkeypatch) -> None:
    calls = run_loop(monkeypatch, ["hang", good()])
    assert calls == [True, True]

