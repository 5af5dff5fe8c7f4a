"""Transport keypairs and a peer's three keypair slots (whitepaper §5.4.6; wireguard-go keypair.go).

A keypair holds the two ChaCha20-Poly1305 contexts of one session, its send counter, the receive replay
window and both indices. Slots: `previous`, `current`, `next`. The initiator installs a new session as
current at once; the responder parks it as `next` until the first packet under it arrives (key confirmation).
"""
from __future__ import annotations

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from .replay import ReplayFilter


class Keypair:
    __slots__ = ("send", "recv", "send_counter", "replay", "local_index", "remote_index", "created",
                 "is_initiator", "peer", "__weakref__")

    def __init__(self, send_key: bytes, recv_key: bytes, *, local_index: int, remote_index: int,
                 created: float, is_initiator: bool, peer) -> None:
        self.send = ChaCha20Poly1305(send_key)
        self.recv = ChaCha20Poly1305(recv_key)
        self.send_counter = 0
        self.replay = ReplayFilter()
        self.local_index = local_index
        self.remote_index = remote_index
        self.created = created
        self.is_initiator = is_initiator
        self.peer = peer

    def __repr__(self) -> str:
        return f"Keypair(local={self.local_index:#x}, remote={self.remote_index:#x}, initiator={self.is_initiator})"


class KeypairSlots:
    __slots__ = ("previous", "current", "next")

    def __init__(self) -> None:
        self.previous: Keypair | None = None
        self.current: Keypair | None = None
        self.next: Keypair | None = None

    def all(self) -> list[Keypair]:
        return [k for k in (self.previous, self.current, self.next) if k is not None]

    def install(self, keypair: Keypair) -> list[Keypair]:
        """Add a freshly derived keypair; returns the keypairs that fell out (to unregister their indices)."""
        dropped: list[Keypair] = []
        if keypair.is_initiator:
            if self.next is not None:
                # An unconfirmed responder session becomes previous; the current one goes.
                if self.current is not None:
                    dropped.append(self.current)
                if self.previous is not None:
                    dropped.append(self.previous)
                self.previous, self.next = self.next, None
            else:
                if self.previous is not None:
                    dropped.append(self.previous)
                self.previous = self.current
            self.current = keypair
        else:
            for old in (self.next, self.previous):
                if old is not None:
                    dropped.append(old)
            self.next = keypair
            self.previous = None
        return dropped

    def received_with(self, keypair: Keypair) -> tuple[bool, list[Keypair]]:
        """A packet authenticated under keypair: promote it if it was `next`. Returns (promoted, dropped)."""
        if keypair is not self.next:
            return False, []
        dropped = [self.previous] if self.previous is not None else []
        self.previous = self.current
        self.current = keypair
        self.next = None
        return True, dropped

    def clear(self) -> list[Keypair]:
        dropped = self.all()
        self.previous = self.current = self.next = None
        return dropped
