"""What a device core asks its adapter to do after an input: datagrams to send, packets to write to TUN.

Transport messages are sealed in place into one reusable buffer (`send_buf`) and listed as
(endpoint, start, end), so an adapter can hand runs of equal-size messages to one UDP GSO send without
copying. Decrypted packets are likewise listed as (start, end) into `recv_buf`, each preceded by
`headroom` free bytes (room for a virtio-net header when the TUN uses one). Both stay valid until the
next input; the adapter must be done with them by then and call `clear()`.
"""
from __future__ import annotations


class Outputs:
    __slots__ = ("datagrams", "sealed", "send_buf", "tun", "recv_buf", "events", "heard", "foreign", "via")

    def __init__(self) -> None:
        self.datagrams: list[tuple[tuple, bytes]] = []  # handshake and cookie messages
        self.sealed: list[tuple[tuple, int, int]] = []  # transport messages in send_buf[start:end]
        self.send_buf = bytearray(1 << 18)
        self.tun: list[tuple[int, int]] = []  # packets in recv_buf[start:end], headroom included
        self.recv_buf = bytearray(1 << 18)
        self.events: list[object] = []
        # For peers whose path is managed elsewhere (DERP/disco, wgclient/path): where their authenticated
        # packets came from, instead of roaming; and datagrams that are not WireGuard (disco, STUN).
        self.heard: list[tuple[object, tuple]] = []
        self.foreign: list[tuple[bytes, tuple]] = []
        # Peers whose packets went to the relay node they are routed through (Peer.send_to), per batch.
        self.via: list[object] = []

    def clear(self) -> None:
        self.datagrams.clear()
        self.sealed.clear()
        self.tun.clear()
        self.events.clear()
        self.heard.clear()
        self.foreign.clear()
        self.via.clear()

    def __bool__(self) -> bool:
        return bool(self.datagrams or self.sealed or self.tun or self.events)

    def sealed_bytes(self) -> list[tuple[tuple, bytes]]:
        """The sealed messages as (endpoint, bytes) copies: for tests and slow paths."""
        buf = self.send_buf
        return [(ep, bytes(buf[a:b])) for ep, a, b in self.sealed]

    def tun_packets(self, headroom: int = 0) -> list[bytes]:
        buf = self.recv_buf
        return [bytes(buf[a + headroom:b]) for a, b in self.tun]


class HandshakeCompleted:
    __slots__ = ("peer",)

    def __init__(self, peer) -> None:
        self.peer = peer

    def __repr__(self) -> str:
        return f"HandshakeCompleted({self.peer!r})"
