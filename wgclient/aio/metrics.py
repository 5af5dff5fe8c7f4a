"""`wgc up --metrics-addr ADDR`: Prometheus metrics of one interface, read from the live state at scrape time.

A custom prometheus-client collector walks the device's peers, the path manager, the DERP clients, the DERP
map source and the drop counters on every scrape; nothing is counted or allocated per packet for it (the
cores only count, as they always did). Metric names and their meaning are listed in docs/metrics.md.
The listener is `derp.aio.metrics.serve_registry` (GET /metrics). `parse_metrics_addr` takes `PORT`,
`:PORT`, `HOST:PORT` or `[V6]:PORT`: without a host it is loopback only; another address has to be given
explicitly (`0.0.0.0:9586`).
"""
from __future__ import annotations

import importlib.metadata
import ipaddress
import time
from typing import TYPE_CHECKING, Any, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..errors import UsageError
from ..keys import short

if TYPE_CHECKING:  # pragma: no cover
    from .runner import Runner

PATH_STATES = ("direct", "relay", "lapsing", "relay-node", "none")
DERP_TRANSPORTS = ("quic", "upgrade", "websocket")   # derp.aio.client's link kinds (docs/derp-quic.md)


def parse_metrics_addr(text: str) -> tuple[str, int]:
    """(host, port) to listen on; loopback unless a host is named (UsageError on a bad address)."""
    text = text.strip()
    host, port = "127.0.0.1", text
    if text.startswith("["):
        inner, _, rest = text[1:].partition("]")
        host, port = inner, rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port = text.split(":")
        host = host or "127.0.0.1"
    elif ":" in text:
        raise UsageError(f"--metrics-addr {text!r}: write an IPv6 address as [ADDR]:PORT")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise UsageError(f"--metrics-addr {text!r}: {host!r} is not an IP address") from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--metrics-addr {text!r}: give a port (1-65535), e.g. 127.0.0.1:9586")
    return host, int(port)


def _version() -> str:
    try:
        return importlib.metadata.version("wgc")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class InterfaceCollector:
    """Reads one running interface (a Runner, its config's peer names) on each scrape."""

    def __init__(self, runner: "Runner", interface: str, names: dict[bytes, str],
                 drops: Any = None) -> None:
        self.runner = runner
        self.interface = interface
        self.names = names
        self.drops = drops                 # () -> {reason: count}, the status snapshot's drop counters
        self.version = _version()

    def collect(self) -> Iterator[Any]:
        iface = [self.interface]
        info = GaugeMetricFamily("wgc_info", "The running wgc interface (value 1)", labels=["interface", "version"])
        info.add_metric(iface + [self.version], 1)
        yield info
        yield from self._peers(iface)
        paths = self.runner.paths
        if paths is not None:
            yield from self._regions(iface, paths)
            if paths.source is not None:
                yield from self._derpmap(iface, paths)
        yield from self._load(iface)

    # -- peers -----------------------------------------------------------------------------------------------
    def _peers(self, iface: list[str]) -> Iterator[Any]:
        labels = ["interface", "peer", "name"]
        dev, paths = self.runner.device, self.runner.paths
        now, wall = time.monotonic(), time.time()
        path = GaugeMetricFamily("wgc_peer_path", "The peer's path: 1 for its state now, 0 for the others "
                                 "(direct, relay, lapsing = direct and relay at once, relay-node, none)",
                                 labels=labels + ["path"])
        relay = GaugeMetricFamily("wgc_peer_relay_region", "1 for the DERP region the peer's packets go through "
                                  "(while relayed or lapsing)", labels=labels + ["region", "region_code"])
        node = GaugeMetricFamily("wgc_peer_relay_node", "1 for the relay node the peer's packets go through "
                                 "(path relay-node)", labels=labels + ["relay_node", "relay_node_name"])
        rx = CounterMetricFamily("wgc_peer_rx_bytes", "Bytes received from the peer (WireGuard payload)", labels=labels)
        tx = CounterMetricFamily("wgc_peer_tx_bytes", "Bytes sent to the peer (WireGuard payload)", labels=labels)
        last = GaugeMetricFamily("wgc_peer_last_handshake_timestamp_seconds",
                                 "Wall time of the last completed handshake (0: never)", labels=labels)
        age = GaugeMetricFamily("wgc_peer_handshake_age_seconds",
                                "Seconds since the last completed handshake (absent: never)", labels=labels)
        up = CounterMetricFamily("wgc_peer_upgrades", "Times the path went from relayed to direct", labels=labels)
        down = CounterMetricFamily("wgc_peer_fallbacks", "Times the path fell back from direct to relayed",
                                   labels=labels)
        latency = GaugeMetricFamily("wgc_peer_direct_latency_seconds", "Round trip of the last disco pong on "
                                    "the direct path", labels=labels)
        pm = paths.pm if paths is not None else None
        for peer in dev.peers.values():
            key = peer.public_key
            p = pm.peers.get(key) if pm is not None else None
            who = [self.interface, short(key), self.names.get(key) or (p.name if p is not None else "") or ""]
            rx.add_metric(who, peer.rx_bytes)
            tx.add_metric(who, peer.tx_bytes)
            last.add_metric(who, peer.last_handshake_wall)
            if peer.last_handshake_wall:
                age.add_metric(who, max(0.0, wall - peer.last_handshake_wall))
            if p is None:
                state, region = ("direct" if peer.endpoint is not None else "none"), 0
            elif p.via is not None:          # sealed to a relay node (docs/relaynode.md), not DERP
                state, region = "relay-node", 0
                hub = pm.peers.get(p.via)
                node.add_metric(who + [short(p.via), self.names.get(p.via) or (hub.name if hub else "") or ""], 1)
            else:
                state, region = p.state.value, pm.route(key, now).relay or 0
            if p is not None:
                up.add_metric(who, p.upgrades)
                down.add_metric(who, p.fallbacks)
                if p.best is not None and p.best_latency:
                    latency.add_metric(who, p.best_latency)
            for name in PATH_STATES:
                path.add_metric(who + [name], 1 if name == state else 0)
            if region:
                relay.add_metric(who + [str(region), pm.home.code(region)], 1)
        yield from (path, relay, node, rx, tx, last, age, up, down, latency)
        peers = GaugeMetricFamily("wgc_peers", "Configured peers", labels=["interface"])
        peers.add_metric(iface, len(dev.peers))
        yield peers
        yield from self._forwarding(iface)

    def _forwarding(self, iface: list[str]) -> Iterator[Any]:
        """A relay node's forwarding (`[Interface] Relay = true`, relaynode.py), per (from, to) pair."""
        labels = ["interface", "from", "to"]
        packets = CounterMetricFamily("wgc_relay_forwarded_packets", "Packets this relay node forwarded from "
                                      "one peer to another", labels=labels)
        size = CounterMetricFamily("wgc_relay_forwarded_bytes", "Inner bytes this relay node forwarded from "
                                   "one peer to another", labels=labels)
        fwd = self.runner.device.forwarder
        for (a, b), count in (fwd.pairs.items() if fwd is not None else ()):
            pair = [self.interface, short(a), short(b)]
            packets.add_metric(pair, count.packets)
            size.add_metric(pair, count.bytes)
        yield packets
        yield size

    # -- DERP regions ----------------------------------------------------------------------------------------
    def _regions(self, iface: list[str], paths: Any) -> Iterator[Any]:
        labels = ["interface", "region", "region_code"]
        connected = GaugeMetricFamily("wgc_derp_region_connected", "1 while the DERP connection to the region "
                                      "is up, 0 otherwise (every region of the map with a DERP node)",
                                      labels=labels + ["home"])
        home = GaugeMetricFamily("wgc_derp_home_region_id", "The home DERP region (0: none yet)", labels=["interface"])
        home.add_metric(iface, paths.home)
        transport = GaugeMetricFamily("wgc_derp_region_transport", "1 for the transport the region's relay is "
                                      "reached over now (quic, upgrade: TLS, websocket), 0 for the others",
                                      labels=labels + ["transport"])
        families = {name: CounterMetricFamily(f"wgc_derp_region_{name}", text, labels=labels) for name, text in (
            ("packets_sent", "Packets sent to the region's relay"),
            ("packets_received", "Packets received from the region's relay"),
            ("packets_dropped", "Packets for the region dropped (not connected, backpressure, queue full)"),
            ("connects", "Connections made to the region's relay"),
            ("dial_failures", "Dials to the region's relay that did not connect"),
            ("quic_fallbacks", "QUIC dials that failed and QUIC links that stalled or broke, before TCP"),
            ("quic_retries", "Background QUIC attempts while the region was reached over TCP or WebSocket"),
            ("quic_datagrams_sent", "Packets sent to the region's relay in QUIC datagrams"),
            ("quic_datagrams_received", "Packets received from the region's relay in QUIC datagrams"),
            ("quic_stream_packets", "Packets sent on the QUIC link's DERP stream (too big for a datagram)"))}
        quic_dropped = CounterMetricFamily("wgc_derp_region_quic_datagrams_dropped", "QUIC datagrams dropped "
                                           "by the client: queue_full (the congestion window was full), "
                                           "bad_datagram (from the relay, not a RecvPacket)",
                                           labels=labels + ["reason"])
        for region in paths.regions:
            rid = region.region_id
            if not paths.derpmap.regions[rid].derp_nodes():
                continue
            row = [self.interface, str(rid), region.code]
            connected.add_metric(row + ["true" if rid == paths.home else "false"],
                                 1 if rid in paths.transports else 0)
            now = paths.transports.get(rid)
            for kind in DERP_TRANSPORTS:
                transport.add_metric(row + [kind], 1 if kind == now else 0)
            client = paths.clients.get(rid)
            if client is not None:
                st = client.stats
                for name, value in (("packets_sent", st.sent), ("packets_received", st.received),
                                    ("packets_dropped", st.dropped_not_connected + st.dropped_backpressure
                                     + st.dropped_queue_full),
                                    ("connects", st.connects), ("dial_failures", st.failures),
                                    ("quic_fallbacks", st.quic_fallbacks), ("quic_retries", st.quic_retries),
                                    *((f"quic_{name}", st.extra.get(f"quic_{name}", 0)) for name in
                                      ("datagrams_sent", "datagrams_received", "stream_packets"))):
                    families[name].add_metric(row, value)
                for reason in ("queue_full", "bad_datagram"):
                    quic_dropped.add_metric(row + [reason], st.extra.get(f"quic_dropped_{reason}", 0))
        yield connected
        yield transport
        yield home
        yield from families.values()
        yield quic_dropped

    def _derpmap(self, iface: list[str], paths: Any) -> Iterator[Any]:
        src = paths.source.describe()
        regions = GaugeMetricFamily("wgc_derpmap_regions", "Regions in the DERP map in use", labels=["interface"])
        regions.add_metric(iface, len(paths.derpmap.regions))
        yield regions
        loaded = GaugeMetricFamily("wgc_derpmap_loaded_timestamp_seconds", "Wall time the map in use was last "
                                   "loaded (from a source, or saved to the cache it came from)", labels=["interface"])
        loaded.add_metric(iface, src["loaded_at"] or 0)
        yield loaded
        cached = GaugeMetricFamily("wgc_derpmap_from_cache", "1 while the map in use came from the on-disk "
                                   "cache because every source failed", labels=["interface"])
        cached.add_metric(iface, 1 if src["source"] == "cache" else 0)
        yield cached
        for name, key, text in (("refreshes", "refreshes", "Refresh rounds that got a map from a source"),
                                ("refresh_failures", "failures", "Refresh rounds where every source failed"),
                                ("changes", "changes", "New maps applied while up")):
            family = CounterMetricFamily(f"wgc_derpmap_{name}", text, labels=["interface"])
            family.add_metric(iface, src[key])
            yield family

    # -- load and drops --------------------------------------------------------------------------------------
    def _load(self, iface: list[str]) -> Iterator[Any]:
        gate = self.runner.device.gate
        under = GaugeMetricFamily("wgc_handshake_under_load", "1 while handshakes are rate-limited (cookies)",
                                  labels=["interface"])
        under.add_metric(iface, 1 if gate.under_load(time.monotonic()) else 0)
        yield under
        episodes = CounterMetricFamily("wgc_handshake_load_episodes", "Times the device went under load",
                                       labels=["interface"])
        episodes.add_metric(iface, gate.episodes)
        yield episodes
        drops = CounterMetricFamily("wgc_drops", "Packets dropped by the interface, by reason (the drops of "
                                    "`wgc status`)", labels=["interface", "reason"])
        for reason, count in (self.drops() if self.drops is not None else {}).items():
            drops.add_metric(iface + [reason], count)
        yield drops


def make_registry(collector: InterfaceCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


async def start_metrics(runner: "Runner", config: Any, addr: str):
    """Listen on `addr` (parse_metrics_addr) and serve the interface's metrics; returns the asyncio server."""
    from derp.aio.metrics import serve_registry

    from .control_target import NodeControl
    host, port = parse_metrics_addr(addr)
    control = NodeControl(runner, config)
    collector = InterfaceCollector(runner, config.name, control.names, drops=control.drops)
    try:
        return await serve_registry(make_registry(collector), host, port)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port} for metrics: {exc.strerror or exc}") from None


__all__ = ["InterfaceCollector", "parse_metrics_addr", "start_metrics", "make_registry"]
