"""Prometheus metrics for the derper (prometheus-client), collected from the relay's counters on scrape
(nothing is updated per packet), served by a tiny asyncio HTTP listener at `/metrics` on --metrics-addr
(`serve_registry`, which `wgc up --metrics-addr` uses too) and on the DERP port at `/debug/varz`.

Where a metric mirrors one of Tailscale's derper it is also exported under derper's name (derp_packets_sent,
derp_bytes_sent, derp_current_connections, derp_current_home_connections, derp_got_ping, derp_sent_pong,
derp_sclient_write_timeouts; counters with Prometheus' `_total` suffix); our older names stay.
The certificate metrics (`derp_tls_cert_expiry_timestamp_seconds`, reloads, ACME orders) come from the
relay's CertStore (derp/aio/certstore.py).
"""
from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from derp import httpwire
from derp.errors import ParseError


class RelayCollector:
    def __init__(self, server: Any) -> None:
        self.server = server

    def collect(self):
        relay = self.server.relay
        stats = relay.stats()
        yield GaugeMetricFamily("derp_active_clients", "Connected DERP clients (not mesh peers)",
                                value=stats["clients"])
        yield GaugeMetricFamily("derp_home_clients", "Clients that said this is their home node",
                                value=stats["home_clients"])
        yield GaugeMetricFamily("derp_current_connections", "Connected clients and mesh peers (derper's name)",
                                value=stats["clients"] + stats["mesh_peers"])
        yield GaugeMetricFamily("derp_current_home_connections", "Same as derp_home_clients (derper's name)",
                                value=stats["home_clients"])
        yield GaugeMetricFamily("derp_mesh_peers", "Connected mesh peers (inbound)", value=stats["mesh_peers"])
        up = sum(1 for link in self.server.mesh_links if link.client.connected)
        yield GaugeMetricFamily("derp_mesh_links_up", "Outbound mesh links that are connected", value=up)
        yield GaugeMetricFamily("derp_mesh_routes", "Keys reachable through a mesh peer",
                                value=stats["mesh_routes"])
        yield CounterMetricFamily("derp_accepts", "DERP connections admitted", value=stats["accepted"])
        for name in ("derp_packets_relayed", "derp_packets_sent"):
            yield CounterMetricFamily(name, "Packets queued or written to local clients (drops not included)",
                                      value=stats["packets_relayed"])
        for name in ("derp_bytes_relayed", "derp_bytes_sent"):
            yield CounterMetricFamily(name, "Packet bytes queued or written to local clients",
                                      value=stats["bytes_relayed"])
        yield CounterMetricFamily("derp_got_ping", "Ping frames received", value=stats["got_ping"])
        yield CounterMetricFamily("derp_sent_pong", "Pong frames sent (Pings beyond one pending Pong are ignored)",
                                  value=stats["sent_pong"])
        yield CounterMetricFamily("derp_packets_forwarded_out", "Packets forwarded to mesh peers",
                                  value=stats["packets_forwarded_out"])
        yield CounterMetricFamily("derp_packets_forwarded_in", "Packets received from mesh peers",
                                  value=stats["packets_forwarded_in"])
        drops = CounterMetricFamily("derp_packets_dropped", "Packets dropped, by reason", labels=["reason"])
        for reason, count in sorted(stats["drops"].items()):
            drops.add_metric([reason], count)
        yield drops
        refused = CounterMetricFamily("derp_admission_refused", "Clients refused after their ClientInfo, by reason",
                                      labels=["reason"])
        for reason, count in sorted(stats["refused"].items()):
            refused.add_metric([reason], count)
        yield refused
        http = self.server.http_counters
        yield CounterMetricFamily("derp_sclient_write_timeouts", "Clients cut for stalled writes (derper's name)",
                                  value=http["write_timeouts"])
        yield CounterMetricFamily("derp_conn_rate_limited", "Connections refused by the per-IP rate limit (429)",
                                  value=http["rate_limited"])
        events = CounterMetricFamily("derp_http_events", "HTTP-level events", labels=["event"])
        for name, count in sorted(http.items()):
            events.add_metric([name], count)
        yield events
        yield GaugeMetricFamily("derp_max_clients", "The --max-clients limit (0: none)",
                                value=relay.config.max_clients)
        yield GaugeMetricFamily("derp_start_time_seconds", "Wall time the relay started",
                                value=self.server.started)
        certs = getattr(self.server, "certs", None)
        if certs is not None:
            yield from certs.collect()
        quic = getattr(self.server, "quic", None)
        if quic is not None:
            yield from quic_metrics(quic)


def quic_metrics(quic: Any):
    """DERP over QUIC (derp.aio.quic_server.QuicListener's counters)."""
    from derp.aio.quic_server import DROP_REASONS
    st = quic.stats
    yield GaugeMetricFamily("derp_quic_clients", "DERP clients connected over QUIC", value=quic.clients())
    yield CounterMetricFamily("derp_quic_connections", "QUIC connections started (Initial accepted)",
                              value=st["connections"])
    yield CounterMetricFamily("derp_quic_datagrams_relayed", "Packets sent to QUIC clients as DATAGRAM frames",
                              value=st["datagrams_relayed"])
    yield CounterMetricFamily("derp_quic_datagrams_received", "SendPacket DATAGRAM frames handed to the relay",
                              value=st["datagrams_received"])
    yield CounterMetricFamily("derp_quic_stream_packets", "Packets to QUIC clients that had to go on the DERP "
                              "stream (too big for a datagram, or no DATAGRAM negotiated)", value=st["stream_packets"])
    dropped = CounterMetricFamily("derp_quic_datagrams_dropped", "UDP datagrams and DATAGRAM frames dropped, "
                                  "by reason", labels=["reason"])
    for reason in DROP_REASONS:
        dropped.add_metric([reason], st["dropped_" + reason])
    yield dropped


def make_registry(server: Any) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RelayCollector(server))
    return registry


async def serve_metrics(server: Any, host: str, port: int) -> asyncio.base_events.Server:
    return await serve_registry(make_registry(server), host, port)


async def serve_registry(registry: CollectorRegistry, host: str, port: int) -> asyncio.base_events.Server:
    """GET/HEAD /metrics answered with `registry` in Prometheus' text format; anything else is a 404."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            req = httpwire.parse_request(head)
            if req.path == "/metrics" and req.method in ("GET", "HEAD"):
                body = generate_latest(registry)
                writer.write(httpwire.response(200, {"Content-Type": "text/plain; version=0.0.4"}, body,
                                               head_only=req.method == "HEAD"))
            else:
                writer.write(httpwire.response(404, {}, b"not found\n"))
            await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ParseError,
                ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)
