"""The path adapter's handling of what arrives over DERP, with a stand-in device (no TUN, no sockets):
garbage is dropped on arrival and counted under its DERP region, never as "udp:"; the lines a flapping
relay repeats are rate-limited."""
from __future__ import annotations

import asyncio
import logging
import os
import time
from types import SimpleNamespace

from derp import frames as F
from derp import protocol as DP
from derp.aio.client import Disconnected
from derp.derpmap import parse_derpmap
from wgclient import keys
from wgclient.aio.paths import DERP_MAGIC_IP, Paths

DERPMAP = parse_derpmap('{"Regions": {"901": {"RegionID": 901, "RegionCode": "fra", "Nodes": '
                        '[{"Name": "901a", "RegionID": 901, "HostName": "127.0.0.1", "DERPPort": 9}]}}}')
SRC = b"\x07" * 32
WG_LOOKING = b"\x04\x00\x00\x00" + bytes(28)    # a transport-data header (the device decides the rest)


class Device:
    def __init__(self) -> None:
        self.identity = SimpleNamespace(private_key=keys.genkey(os.urandom))
        self.received: list = []

    def receive_datagrams(self, batch: list, now: float) -> None:
        self.received.extend(batch)


def paths() -> Paths:
    return Paths(SimpleNamespace(device=Device(), flush=lambda: None), DERPMAP, interface="wgtest0")


def test_garbage_over_derp_is_counted_under_its_region_not_udp(caplog) -> None:
    async def main():
        p = paths()
        with caplog.at_level(logging.INFO, logger="wgc.paths"):
            for _ in range(1000):
                p._on_derp_packet(901, SRC, b"\xee" * 40)
            p._on_derp_packet(901, SRC, WG_LOOKING)
            await asyncio.sleep(0)
            # what the device did not take as WireGuard comes back through on_foreign with the DERP source
            p.on_foreign([(b"\x04\x00\x00\x00short", (DERP_MAGIC_IP, 901, SRC)), (b"junk", ("192.0.2.1", 5))],
                         time.monotonic())
        assert p.device.received == [(WG_LOOKING, (DERP_MAGIC_IP, 901, SRC))]   # the sender key goes along
        assert p.drops == {"derp region 901: not WireGuard or disco": 1001, "udp: not WireGuard, disco or STUN": 1}
        lines = [r.getMessage() for r in caplog.records if "neither WireGuard nor disco" in r.getMessage()]
        assert lines == [f"DERP region 901: dropping packets that are neither WireGuard nor disco "
                         f"(last from {keys.short(SRC)})"]
    asyncio.run(main())


def test_a_flapping_region_logs_up_and_down_once_per_interval(caplog) -> None:
    async def main():
        p = paths()
        connected = DP.Connected(b"\x01" * 32, F.ServerInfo())
        with caplog.at_level(logging.INFO, logger="wgc.paths"):
            for _ in range(70):   # one second of the reconnect storm of issue 9
                p._on_derp_event(901, connected)
                p._on_derp_event(901, Disconnected("connection closed by the server"))
        messages = [r.getMessage() for r in caplog.records if r.name == "wgc.paths"]
        assert sum("DERP region 901 connected" in m for m in messages) == 1
        assert sum("DERP region 901 disconnected" in m for m in messages) == 1
        assert len(messages) <= 4, messages
        await p.close()
    asyncio.run(main())


def test_a_cookie_reply_to_a_derp_source_goes_back_to_its_sender_key() -> None:
    """Under load the device answers an initiation with a cookie reply to its source; for a packet that
    came over DERP that source is (DERP_MAGIC_IP, region, sender key), and the reply is relayed there."""
    async def main():
        p = paths()
        sent = []

        p.clients[901] = SimpleNamespace(connected=True, send_packet=lambda key, data: sent.append((key, data)) or True)
        p.send_datagram((DERP_MAGIC_IP, 901, SRC), b"\x03\x00\x00\x00cookie", time.monotonic())
        assert sent == [(SRC, b"\x03\x00\x00\x00cookie")]
        assert not p.drops
        del p.clients[901]
        await p.close()
    asyncio.run(main())
