"""The running device seen through the UAPI: what `wg show` reads and what `wg set` changes.

Implements `wgclient.uapi.UapiTarget` over a Runner: reads the clock for the changes that need it
(turning on persistent keepalive sends one at once), rebinds the UDP port, and flushes what the core
asks to send after each change.
"""
from __future__ import annotations

import ipaddress
import time
from typing import TYPE_CHECKING

from ..errors import UsageError
from ..uapi import DeviceState, PeerState

if TYPE_CHECKING:  # pragma: no cover
    from .runner import Runner


class DeviceTarget:
    def __init__(self, runner: "Runner") -> None:
        self.runner = runner
        self.device = runner.device

    def _peer(self, public_key: bytes):
        peer = self.device.peers.get(public_key)
        if peer is None:
            raise UsageError("no such peer")
        return peer

    def uapi_get(self) -> DeviceState:
        dev = self.device
        peers = []
        for peer in dev.peers.values():
            endpoint = None
            where = peer.endpoint
            if peer.managed:  # the path manager's direct address, none while relayed
                paths = self.runner.paths
                where = paths.direct_endpoint(peer.public_key) if paths is not None else None
            if where is not None:
                host = where[0]
                if host.startswith("::ffff:") and "." in host:
                    host = host[7:]
                endpoint = (host, where[1])
            psk = peer.handshake.preshared_key
            peers.append(PeerState(
                public_key=peer.public_key,
                preshared_key=psk if psk != bytes(32) else None,
                endpoint=endpoint,
                last_handshake_ns=int(peer.last_handshake_wall * 1e9),
                tx_bytes=peer.tx_bytes,
                rx_bytes=peer.rx_bytes,
                persistent_keepalive=peer.timers.persistent_keepalive_interval,
                allowed_ips=dev.allowed_ips.entries(peer),
            ))
        return DeviceState(
            private_key=dev.identity.private_key if dev.identity else None,
            listen_port=self.runner.udp.port,
            fwmark=self.runner.udp.fwmark,
            peers=peers,
        )

    def uapi_set_private_key(self, key: bytes | None) -> None:
        self.device.set_private_key(key)

    def uapi_set_listen_port(self, port: int) -> None:
        if port != self.runner.udp.port or port == 0:
            self.runner.rebind(port)

    def uapi_set_fwmark(self, mark: int) -> None:
        self.runner.udp.set_fwmark(mark)
        if self.runner.paths is not None:   # DERP connections and netcheck probes carry the same mark
            self.runner.paths.set_fwmark(mark)

    def uapi_remove_all_peers(self) -> None:
        for key in list(self.device.peers):
            self.device.remove_peer(key)

    def uapi_has_peer(self, public_key: bytes) -> bool:
        return public_key in self.device.peers

    def uapi_add_peer(self, public_key: bytes) -> None:
        if self.device.public_key != public_key:
            self.device.add_peer(public_key)
            if self.runner.paths is not None:  # with a DERP map every peer is path-managed
                self.runner.paths.add_peer(public_key)

    def uapi_remove_peer(self, public_key: bytes) -> None:
        self.device.remove_peer(public_key)
        if self.runner.paths is not None:
            self.runner.paths.remove_peer(public_key)

    def uapi_set_preshared_key(self, public_key: bytes, psk: bytes | None) -> None:
        self.device.set_preshared_key(self._peer(public_key), psk)

    def uapi_set_endpoint(self, public_key: bytes, host: str, port: int) -> None:
        ip = ipaddress.ip_address(host)
        peer = self._peer(public_key)
        if peer.managed:  # a candidate for the path manager to ping, not a fixed destination
            self.runner.paths.add_candidate(public_key, (str(ip), port))
            return
        endpoint = (str(ip), port, 0, 0) if ip.version == 6 else (str(ip), port)
        self.device.set_endpoint(peer, endpoint)

    def uapi_set_persistent_keepalive(self, public_key: bytes, seconds: int) -> None:
        self.device.set_persistent_keepalive(self._peer(public_key), seconds, time.monotonic())
        self.runner.flush()

    def uapi_clear_allowed_ips(self, public_key: bytes) -> None:
        peer = self._peer(public_key)
        for net in self.device.allowed_ips.entries(peer):
            self.device.allowed_ips.remove(net, peer)

    def uapi_add_allowed_ip(self, public_key: bytes, network) -> None:
        self.device.allowed_ips.insert(network, self._peer(public_key))

    def uapi_remove_allowed_ip(self, public_key: bytes, network) -> None:
        self.device.allowed_ips.remove(network, self._peer(public_key))
