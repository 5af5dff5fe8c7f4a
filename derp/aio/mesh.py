"""Mesh links: this server dials each `--mesh-with` peer as a DERP client with its own server key and the
mesh key, sends WatchConns, and learns which keys are reachable there (PeerPresent / PeerGone), so the
relay core can forward packets one hop with ForwardPacket (derp.md §6). A broken link drops every route
it taught and is redialled (every <= 5 s); a link that reaches our own key stops.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from derp import protocol as P
from derp.aio.client import DerpClient, Disconnected, DialTarget
from derp.keys import short
from derp.server import Relay

log = logging.getLogger(__name__)


class MeshLink:
    def __init__(self, relay: Relay, target: DialTarget, mesh_key_hex: str, ca_file: str | None,
                 apply: Callable[[list], None] = lambda outs: None) -> None:
        self.relay = relay
        self.apply = apply
        self.target = target
        self.forwarded = 0
        self.dropped = 0
        self.self_connect = False
        self.client = DerpClient(relay.private_key, [target], ca_file=ca_file, transport="upgrade",
                                 config=P.ClientConfig(mesh_key=mesh_key_hex), watch_conns=True,
                                 on_packet=lambda src, data: None, on_event=self._event, reconnect=True)

    async def start(self) -> None:
        await self.client.start(wait=False)

    def stop(self) -> None:
        self.client._closing = True
        self.client._connected.clear()
        if self.client.stream is not None:
            self.client.stream._finish("mesh link stopped")
        if self.client._task is not None:
            self.client._task.cancel()

    def _event(self, ev: Any) -> None:
        kind = type(ev)
        if kind is P.PeerPresentReceived:
            if ev.key != self.relay.public_key:
                self.relay.add_route(ev.key, self)
        elif kind is P.PeerGoneReceived:
            self.apply(self.relay.remove_route(ev.key, self))
        elif kind is P.Connected:
            if ev.server_key == self.relay.public_key:
                log.info("mesh peer %s is ourselves; not using it", self.target.host_header)
                self.self_connect = True
                self.stop()
            else:
                log.info("mesh link to %s (%s) up", self.target.host_header, short(ev.server_key))
        elif kind is Disconnected:
            self.apply(self.relay.remove_link(self))

    def forward(self, frame: bytes) -> None:
        """A ForwardPacket frame: counted forwarded once written to the link, else dropped (mesh_write)."""
        if self.client.write_raw(frame):
            self.forwarded += 1
            self.relay.counters["packets_forwarded_out"] += 1
        else:
            self.dropped += 1
            self.relay.drops["mesh_write"] = self.relay.drops.get("mesh_write", 0) + 1

    def describe(self) -> dict[str, Any]:
        return {"peer": self.target.host_header, "connected": self.client.connected,
                "self": self.self_connect, "forwarded": self.forwarded, "dropped": self.dropped,
                "routes": sum(1 for v in self.relay.mesh_routes.values() if v is self)}
