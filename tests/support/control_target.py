"""A scripted ControlTarget (what wgclient/aio/control_server.py serves): a fixed status snapshot and disco
pings answered from a per-peer script, so the control socket and `wgc status`/`wgc ping` are tested without
a running interface. Also `sample_status()`, a snapshot in the schema of docs/control.md.
"""
from __future__ import annotations

import asyncio
import base64
import copy

from wgclient.errors import UsageError

NOW = 1_790_000_000.0


def key(n: int) -> bytes:
    return bytes([n]) * 32


def b64(n: int) -> str:
    return base64.b64encode(key(n)).decode()


def peer(n: int, name: str | None, allowed: list[str], path: str, *, direct: str | None = None,
         relay: tuple[int, str] | None = None, latency_ms: float | None = None,
         handshake: float | None = None, rx: int = 0, tx: int = 0, why: str = "") -> dict:
    return {"public_key": b64(n), "short": b64(n)[:8], "name": name, "allowed_ips": allowed, "path": path,
            "direct": direct, "relay": {"id": relay[0], "code": relay[1]} if relay else None,
            "latency_ms": latency_ms, "last_handshake": handshake, "rx_bytes": rx, "tx_bytes": tx,
            "why": why or f"{path} (scripted)"}


def sample_status(interface: str = "wgt0") -> dict:
    return {
        "interface": interface, "public_key": b64(1), "listen_port": 51820,
        "home_region": {"id": 901, "code": "fra"},
        "netcheck": {"udp": True, "ipv4": "198.51.100.7:41641", "ipv6": None,
                     "mapping_varies_by_dest_ip": True, "preferred_region": 901,
                     "latency_ms": {"ams": 19.7, "fra": 12.3}, "at": NOW - 40},
        "regions": [{"id": 901, "code": "fra", "connected": True, "home": True, "transport": "upgrade"},
                    {"id": 902, "code": "ams", "connected": True, "home": False, "transport": "websocket"}],
        "peers": [
            peer(2, "laptop", ["100.64.0.2/32", "fd7a::2/128"], "direct", direct="198.51.100.9:41641",
                 latency_ms=3.1, handshake=NOW - 12, rx=123, tx=4_567_890,
                 why="direct to 198.51.100.9:41641: a pong 1.2s ago"),
            peer(3, "phone", ["100.64.0.3/32"], "relay", relay=(901, "fra"), latency_ms=25.0,
                 handshake=NOW - 300, rx=2048, tx=1024,
                 why='relayed via DERP region "fra": the peer\'s NAT maps ports per destination'),
            peer(4, None, ["10.9.0.0/24", "100.64.0.4/32"], "lapsing", direct="203.0.113.5:1234",
                 relay=(902, "ams")),
            peer(5, "Office", ["10.9.0.128/25"], "none", why="no endpoint and no DERP region yet"),
        ],
    }


class ScriptedTarget:
    """status() returns `self.snapshot`; ping(key) pops the next entry of `self.pongs[key]` (the last one
    repeats): a pong dict, None (no pong: the call waits out its timeout), or an Exception to raise.
    `delay` seconds pass before each pong. Calls are recorded in `self.calls`."""

    def __init__(self, snapshot: dict | None = None, pongs: dict | None = None, delay: float = 0.0) -> None:
        self.snapshot = snapshot if snapshot is not None else sample_status()
        self.pongs: dict[bytes, list] = pongs or {}
        self.delay = delay
        self.calls: list[tuple] = []

    def status(self) -> dict:
        self.calls.append(("status",))
        return copy.deepcopy(self.snapshot)

    async def ping(self, peer_key: bytes, timeout: float) -> dict | None:
        self.calls.append(("ping", peer_key, timeout))
        if peer_key not in self.pongs:
            raise UsageError(f"no such peer {base64.b64encode(peer_key).decode()[:8]}")
        script = self.pongs[peer_key]
        entry = script.pop(0) if len(script) > 1 else script[0]
        if isinstance(entry, Exception):
            raise entry
        if entry is None:
            await asyncio.sleep(timeout)
            return None
        await asyncio.sleep(self.delay)
        return dict(entry)


def derp_pong(latency: float = 0.012, region: int = 901, code: str | None = "fra") -> dict:
    return {"latency": latency, "via": "derp", "addr": None, "region": region, "region_code": code}


def direct_pong(latency: float = 0.003, addr: str = "198.51.100.9:41641") -> dict:
    return {"latency": latency, "via": "direct", "addr": addr, "region": None, "region_code": None}
