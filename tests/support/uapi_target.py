"""An in-memory UapiTarget: a model device that records what the UAPI asked for, with wireguard-go's rules.

Used to test wgclient.uapi and the UAPI socket server against the stock `wg` tool without a real device.
Rules modelled: setting a private key removes the peer with the matching public key; an allowed IP
inserted for one peer moves away from any other peer; removing an allowed IP only works for its owner.
"""
from __future__ import annotations

import copy
from ipaddress import IPv4Network, IPv6Network

from wgclient import keys
from wgclient.uapi import DeviceState, PeerState

Network = IPv4Network | IPv6Network


class MemoryTarget:
    def __init__(self, private_key: bytes | None = None, listen_port: int = 0) -> None:
        self.state = DeviceState(private_key=private_key, listen_port=listen_port)
        self.busy_ports: set[int] = set()   # uapi_set_listen_port raises OSError for these
        self.calls: list[tuple] = []

    def peer(self, public_key: bytes) -> PeerState:
        for p in self.state.peers:
            if p.public_key == public_key:
                return p
        raise KeyError(public_key)

    def uapi_get(self) -> DeviceState:
        return copy.deepcopy(self.state)

    def uapi_set_private_key(self, key: bytes | None) -> None:
        self.calls.append(("private_key", key))
        self.state.private_key = key
        if key is not None:
            own = keys.public_key(key)
            self.state.peers = [p for p in self.state.peers if p.public_key != own]

    def uapi_set_listen_port(self, port: int) -> None:
        self.calls.append(("listen_port", port))
        if port in self.busy_ports:
            raise OSError(98, "Address already in use")
        self.state.listen_port = port or 40000

    def uapi_set_fwmark(self, mark: int) -> None:
        self.calls.append(("fwmark", mark))
        self.state.fwmark = mark

    def uapi_remove_all_peers(self) -> None:
        self.calls.append(("remove_all",))
        self.state.peers.clear()

    def uapi_has_peer(self, public_key: bytes) -> bool:
        return any(p.public_key == public_key for p in self.state.peers)

    def uapi_add_peer(self, public_key: bytes) -> None:
        self.calls.append(("add_peer", public_key))
        assert not self.uapi_has_peer(public_key)
        self.state.peers.append(PeerState(public_key=public_key))

    def uapi_remove_peer(self, public_key: bytes) -> None:
        self.calls.append(("remove_peer", public_key))
        self.state.peers.remove(self.peer(public_key))

    def uapi_set_preshared_key(self, public_key: bytes, psk: bytes | None) -> None:
        self.calls.append(("psk", public_key, psk))
        self.peer(public_key).preshared_key = psk

    def uapi_set_endpoint(self, public_key: bytes, host: str, port: int) -> None:
        self.calls.append(("endpoint", public_key, host, port))
        self.peer(public_key).endpoint = (host, port)

    def uapi_set_persistent_keepalive(self, public_key: bytes, seconds: int) -> None:
        self.calls.append(("keepalive", public_key, seconds))
        self.peer(public_key).persistent_keepalive = seconds

    def uapi_clear_allowed_ips(self, public_key: bytes) -> None:
        self.calls.append(("clear_ips", public_key))
        self.peer(public_key).allowed_ips.clear()

    def uapi_add_allowed_ip(self, public_key: bytes, network: Network) -> None:
        self.calls.append(("add_ip", public_key, network))
        for p in self.state.peers:
            if network in p.allowed_ips:
                p.allowed_ips.remove(network)
        self.peer(public_key).allowed_ips.append(network)

    def uapi_remove_allowed_ip(self, public_key: bytes, network: Network) -> None:
        self.calls.append(("remove_ip", public_key, network))
        ips = self.peer(public_key).allowed_ips
        if network in ips:
            ips.remove(network)
