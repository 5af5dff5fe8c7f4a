"""What the control socket (`wgc status`, `wgc ping`, `wgc derpmap show`) sees of a running interface: a
JSON-able snapshot of the node and its peers, disco pings, and the DERP map in use; the schema is in
docs/control.md.

With a DERP map it reads the path manager (wgclient/aio/paths.py); without one every peer's path is its
WireGuard endpoint and `ping` is refused with the reason. A peer reached through a relay node shows as
`relay-node` with the reason, and is pinged with an ICMP echo through the tunnel; a relay node's status
lists what it forwarded per pair (docs/relaynode.md).
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..errors import UsageError
from ..keys import key_to_base64, short
from .tunnelping import icmp_echo

if TYPE_CHECKING:  # pragma: no cover
    from ..config import InterfaceConfig
    from .runner import Runner


def format_addr(addr) -> str:
    host, port = addr[0], addr[1]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class NodeControl:
    """The ControlTarget of one interface."""

    def __init__(self, runner: "Runner", config: "InterfaceConfig") -> None:
        self.runner = runner
        self.config = config
        self.names = {p.public_key: p.name for p in config.peers if p.name}

    def status(self) -> dict:
        runner = self.runner
        dev = runner.device
        paths = runner.paths
        now = time.monotonic()
        peers = []
        for peer in dev.peers.values():
            key = peer.public_key
            entry = {"public_key": key_to_base64(key), "short": short(key), "name": self.names.get(key),
                     "allowed_ips": [str(n) for n in dev.allowed_ips.entries(peer)],
                     "last_handshake": peer.last_handshake_wall or None,
                     "rx_bytes": peer.rx_bytes, "tx_bytes": peer.tx_bytes,
                     "latency_ms": None, "direct": None, "relay": None}
            if paths is not None and key in paths.pm.peers:
                p = paths.pm.peers[key]
                route = paths.pm.route(key, now)
                entry["path"] = p.state.value
                entry["direct"] = format_addr(route.direct) if route.direct else None
                if route.relay:
                    entry["relay"] = {"id": route.relay, "code": paths.pm.home.code(route.relay),
                                      "transport": paths.transport_of(route.relay)}
                if p.best is not None and p.best_latency:
                    entry["latency_ms"] = round(p.best_latency * 1e3, 2)
                entry["why"] = paths.pm.why(key, now)
                if entry["name"] is None and p.name:
                    entry["name"] = p.name
                if p.via is not None:
                    entry["path"] = "relay-node"
                    entry["relay_node"] = {"name": self._name(p.via), "short": short(p.via)}
                    entry["reason"] = paths.pm.reason(key, now)
            else:
                ep = peer.endpoint
                entry["path"] = "direct" if ep is not None else "none"
                entry["direct"] = format_addr(ep) if ep is not None else None
                entry["why"] = (f"direct to {entry['direct']} (no DERP map configured: wgc up --derpmap)"
                                if ep is not None else
                                "no endpoint known yet and no DERP map configured (wgc up --derpmap)")
            peers.append(entry)
        home = None
        if paths is not None and paths.home:
            home = {"id": paths.home, "code": paths.pm.home.code(paths.home)}
        status = {"interface": self.config.name,
                "public_key": key_to_base64(dev.public_key) if dev.public_key else None,
                "listen_port": runner.udp.port,
                "home_region": home,
                "netcheck": paths.netcheck_summary() if paths is not None else None,
                "regions": paths.region_list() if paths is not None else [],
                "peers": peers,
                "under_load": dev.gate.under_load(now), "under_load_episodes": dev.gate.episodes,
                "drops": self.drops()}
        if dev.forwarder is not None:   # a relay node: what it forwarded, per pair
            status["forwarding"] = [{"from": self._name(a), "to": self._name(b), "packets": c.packets,
                                     "bytes": c.bytes} for (a, b), c in sorted(dev.forwarder.pairs.items(),
                                                                            key=lambda kv: -kv[1].bytes)]
        return status

    def _name(self, key: bytes) -> str:
        return self.names.get(key) or short(key)

    def drops(self) -> dict[str, int]:
        """Every drop counter of the interface by reason (also `wgc_drops_total` of wgc up --metrics-addr)."""
        runner = self.runner
        drops = dict(runner.device.drops)
        for reason, n in (("udp: send errors", runner.udp.send_errors),
                          ("tun: write errors", runner.tun_write_errors)):
            if n:
                drops[reason] = n
        if runner.paths is not None:
            for prefix, counts in (("paths: ", runner.paths.drops), ("path manager: ", runner.paths.pm.drops)):
                drops.update((prefix + reason, n) for reason, n in counts.items())
        return dict(sorted(drops.items(), key=lambda kv: (-kv[1], kv[0])))

    async def ping(self, key: bytes, timeout: float) -> dict | None:
        paths = self.runner.paths
        if paths is None:
            raise UsageError("wgc ping uses disco, which needs the interface started with --derpmap")
        if key not in paths.pm.peers:
            raise UsageError(f"no such peer {short(key)}")
        via = paths.pm.peers[key].via
        if via is not None:
            return await self._ping_through_relay_node(key, via, timeout)
        result = await paths.ping(key, timeout)
        if result is None:
            return None
        region = result.region
        return {"latency": result.latency, "via": "direct" if result.addr is not None else "derp",
                "addr": format_addr(result.addr) if result.addr is not None else None,
                "region": region, "region_code": paths.pm.home.code(region) if region else None}

    async def _ping_through_relay_node(self, key: bytes, via: bytes, timeout: float) -> dict | None:
        """An ICMP echo through the tunnel (tunnelping.py): from our first IPv4 address to the peer's."""
        peer = self.runner.device.peers.get(key)
        src = next((str(a.ip) for a in self.config.addresses if a.version == 4), None)
        dst = None
        if peer is not None:
            nets = [n for n in self.runner.device.allowed_ips.entries(peer) if n.version == 4]
            dst = next((str(n.network_address) for n in nets if n.num_addresses == 1), None)
        if src is None or dst is None:
            raise UsageError("a ping through a relay node needs an IPv4 Address and a /32 AllowedIPs of the peer")
        latency = await icmp_echo(src, dst, timeout)
        if latency is None:
            return None
        return {"latency": latency, "via": "relay-node", "relay_node": self._name(via), "addr": None,
                "region": None, "region_code": None}

    def derpmap(self) -> tuple[dict, dict | None]:
        """The DERP map in use (Tailscale's JSON) and where it came from."""
        paths = self.runner.paths
        if paths is None:
            raise UsageError(f"{self.config.name} runs without a DERP map (wgc up --derpmap)")
        return paths.derpmap.to_dict(), paths.source.describe() if paths.source is not None else None
