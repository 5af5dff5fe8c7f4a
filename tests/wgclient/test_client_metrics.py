"""`wgc up --metrics-addr` (issue 10 §4) without an interface: the collector reads a real Device and
PathManager (a peer made direct by disco, one relayed) plus stand-in DERP clients and map source at scrape
time; the exposition parses and says per peer the path, bytes, handshake age and upgrades, per region the
connection state; the listener answers GET /metrics on loopback; addresses are loopback unless named."""
from __future__ import annotations

import asyncio
import os
import time
from types import SimpleNamespace

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from derp.aio.client import ClientStats
from derp.aio.metrics import serve_registry
from derp.derpmap import parse_derpmap
from wgclient import keys
from wgclient.aio.metrics import InterfaceCollector, make_registry, parse_metrics_addr
from wgclient.derpregions import regions_from_derpmap
from wgclient.device import Device
from wgclient.errors import UsageError

from tests.wgclient.path.test_path_manager import B, KA, direct, manager

C = keys.public_key(keys.clamp(bytes(range(100, 132))))
DM = parse_derpmap('{"Regions": {"1": {"RegionID": 1, "RegionCode": "fra", "Nodes": [{"Name": "1a", '
                   '"RegionID": 1, "HostName": "h1"}]}, "2": {"RegionID": 2, "RegionCode": "ams", "Nodes": '
                   '[{"Name": "2a", "RegionID": 2, "HostName": "h2"}]}}}')


def runner():
    dev = Device(KA, random_bytes=os.urandom)
    for key in (B, C):
        dev.add_peer(key)
    dev.peers[B].rx_bytes, dev.peers[B].tx_bytes = 1234, 5678
    dev.peers[B].last_handshake_wall = time.time() - 30
    pm = manager()
    pm.add_peer(C, name="phone")
    direct(pm, time.monotonic())
    source = SimpleNamespace(describe=lambda: {"source": "cache", "loaded_at": 1.5e9, "refreshes": 2,
                                               "failures": 1, "changes": 0})
    paths = SimpleNamespace(pm=pm, home=1, regions=regions_from_derpmap(DM), derpmap=DM, transports={1: "quic"},
                            clients={1: SimpleNamespace(stats=ClientStats(sent=7, received=9, failures=1,
                                                                          quic_fallbacks=2, quic_retries=3,
                                                                          extra={"quic_datagrams_sent": 5,
                                                                                 "quic_datagrams_received": 8,
                                                                                 "quic_stream_packets": 1,
                                                                                 "quic_dropped_queue_full": 4}))},
                            source=source)
    return SimpleNamespace(device=dev, paths=paths)


def scrape(run) -> dict[str, list]:
    collector = InterfaceCollector(run, "wgt0", {B: "laptop"}, drops=lambda: {"no endpoint": 3})
    text = generate_latest(make_registry(collector)).decode()
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


def value(samples, metric, **labels):
    found = [v for lab, v in samples.get(metric, []) if all(lab.get(k) == w for k, w in labels.items())]
    assert len(found) == 1, (metric, labels, samples.get(metric))
    return found[0]


def test_per_peer_path_bytes_handshake_and_upgrades() -> None:
    s = scrape(runner())
    b, c = keys.short(B), keys.short(C)
    assert value(s, "wgc_peer_path", peer=b, name="laptop", path="direct") == 1
    assert [value(s, "wgc_peer_path", peer=b, path=p) for p in ("relay", "lapsing", "none")] == [0, 0, 0]
    assert value(s, "wgc_peer_path", peer=c, name="phone", path="relay") == 1
    assert value(s, "wgc_peer_relay_region", peer=c, region="1", region_code="fra") == 1
    assert [lab["peer"] for lab, _ in s["wgc_peer_relay_region"]] == [c]     # b is direct: no relay region
    assert value(s, "wgc_peer_rx_bytes_total", peer=b) == 1234 and value(s, "wgc_peer_tx_bytes_total", peer=b) == 5678
    assert 29 <= value(s, "wgc_peer_handshake_age_seconds", peer=b) < 120
    assert [lab["peer"] for lab, _ in s["wgc_peer_handshake_age_seconds"]] == [b]   # never: no sample
    assert value(s, "wgc_peer_last_handshake_timestamp_seconds", peer=c) == 0
    assert value(s, "wgc_peer_upgrades_total", peer=b) == 1 and value(s, "wgc_peer_upgrades_total", peer=c) == 0
    assert value(s, "wgc_peer_fallbacks_total", peer=b) == 0
    assert 0 < value(s, "wgc_peer_direct_latency_seconds", peer=b) < 1
    assert value(s, "wgc_peers", interface="wgt0") == 2
    assert value(s, "wgc_peer_rx_bytes_total", peer=c, name="phone") == 0   # the name from the path manager


def test_regions_map_source_load_and_drops() -> None:
    s = scrape(runner())
    assert value(s, "wgc_derp_region_connected", region="1", region_code="fra", home="true") == 1
    assert value(s, "wgc_derp_region_connected", region="2", region_code="ams", home="false") == 0
    assert value(s, "wgc_derp_home_region_id") == 1
    assert value(s, "wgc_derp_region_packets_sent_total", region="1") == 7
    assert value(s, "wgc_derp_region_dial_failures_total", region="1") == 1
    assert [value(s, "wgc_derp_region_transport", region="1", transport=t) for t in ("quic", "upgrade", "websocket")] \
        == [1, 0, 0]
    assert [value(s, "wgc_derp_region_transport", region="2", transport=t) for t in ("quic", "upgrade", "websocket")] \
        == [0, 0, 0]   # not connected
    assert value(s, "wgc_derp_region_quic_fallbacks_total", region="1") == 2
    assert value(s, "wgc_derp_region_quic_retries_total", region="1") == 3
    assert value(s, "wgc_derp_region_quic_datagrams_sent_total", region="1") == 5
    assert value(s, "wgc_derp_region_quic_datagrams_received_total", region="1") == 8
    assert value(s, "wgc_derp_region_quic_stream_packets_total", region="1") == 1
    assert value(s, "wgc_derp_region_quic_datagrams_dropped_total", region="1", reason="queue_full") == 4
    assert value(s, "wgc_derp_region_quic_datagrams_dropped_total", region="1", reason="bad_datagram") == 0
    assert value(s, "wgc_derpmap_regions") == 2 and value(s, "wgc_derpmap_from_cache") == 1
    assert value(s, "wgc_derpmap_refresh_failures_total") == 1
    assert value(s, "wgc_drops_total", reason="no endpoint") == 3
    assert value(s, "wgc_handshake_under_load") == 0
    assert value(s, "wgc_info", interface="wgt0") == 1


def test_without_a_derp_map_peers_are_direct_or_none() -> None:
    run = runner()
    run.paths = None
    run.device.peers[B].endpoint = ("192.0.2.1", 51820)
    s = scrape(run)
    assert value(s, "wgc_peer_path", peer=keys.short(B), path="direct") == 1
    assert value(s, "wgc_peer_path", peer=keys.short(C), path="none") == 1
    assert "wgc_derp_region_connected" not in s and "wgc_peer_upgrades_total" not in s


def test_listener_serves_metrics_on_loopback() -> None:
    async def main():
        server = await serve_registry(make_registry(InterfaceCollector(runner(), "wgt0", {})), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        body = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        server.close()
        return body
    body = asyncio.run(main())
    assert body.startswith(b"HTTP/1.1 200") and b'wgc_peer_path{' in body


@pytest.mark.parametrize("text, want", [("9586", ("127.0.0.1", 9586)), (":9586", ("127.0.0.1", 9586)),
                                        ("0.0.0.0:9586", ("0.0.0.0", 9586)), ("[::1]:9586", ("::1", 9586)),
                                        ("localhost:1", ("localhost", 1))])
def test_metrics_addr_is_loopback_unless_named(text, want) -> None:
    assert parse_metrics_addr(text) == want


@pytest.mark.parametrize("text", ["", "x:1", "127.0.0.1", "127.0.0.1:0", "::1:9", "1.2.3.4:70000"])
def test_bad_metrics_addr(text) -> None:
    with pytest.raises(UsageError, match="--metrics-addr"):
        parse_metrics_addr(text)
