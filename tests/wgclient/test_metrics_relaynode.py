"""`wgc up --metrics-addr` with relay nodes (docs/relaynode.md, docs/metrics.md): a peer routed through a
relay node has the path `relay-node` (not `relay`, its packets do not go through DERP) and names its relay
node; a relay node exports what it forwarded per (from, to) pair."""
from __future__ import annotations

from wgclient import keys
from wgclient.path.relaychoice import RELAY_NODE, Choice
from wgclient.relaynode import PairCount

from tests.wgclient.path.test_path_manager import B
from tests.wgclient.test_client_metrics import C, runner, scrape, value


def test_a_peer_through_a_relay_node_has_the_relay_node_path() -> None:
    run = runner()
    run.paths.pm.peers[C].choice = Choice(RELAY_NODE, relay_node=B)   # B (laptop) carries C's packets
    s = scrape(run)
    c = keys.short(C)
    assert [value(s, "wgc_peer_path", peer=c, path=p) for p in ("direct", "relay", "lapsing", "relay-node", "none")] \
        == [0, 0, 0, 1, 0]
    assert value(s, "wgc_peer_relay_node", peer=c, relay_node=keys.short(B), relay_node_name="laptop") == 1
    assert [lab["peer"] for lab, _ in s["wgc_peer_relay_node"]] == [c]
    assert "wgc_peer_relay_region" not in s          # nothing goes through DERP now
    assert value(s, "wgc_peer_path", peer=keys.short(B), path="direct") == 1


def test_a_relay_node_exports_its_forwarding_per_pair() -> None:
    run = runner()
    assert "wgc_relay_forwarded_bytes_total" not in scrape(run)      # not a relay node: no samples
    run.device.enable_relay()
    count = run.device.forwarder.pairs[(B, C)] = PairCount()
    count.packets, count.bytes = 3, 4200
    s = scrape(run)
    pair = {"from": keys.short(B), "to": keys.short(C)}
    assert value(s, "wgc_relay_forwarded_packets_total", **pair) == 3
    assert value(s, "wgc_relay_forwarded_bytes_total", **pair) == 4200
