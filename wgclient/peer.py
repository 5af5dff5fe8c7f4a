"""One WireGuard peer's state: handshake, keypairs, staged packets, endpoint, timers and counters.

The device drives it (device.py owns the protocol rules); this module keeps what belongs to one peer and
the small decisions that need nothing else (is there a usable key to send with, should we rekey).
"""
from __future__ import annotations

import collections
import logging
from typing import Callable

from .constants import (KEEPALIVE_TIMEOUT, MAX_STAGED_PACKETS, REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME,
                        REKEY_AFTER_MESSAGES, REKEY_AFTER_TIME, REKEY_TIMEOUT)
from .keypair import Keypair, KeypairSlots
from .keys import short
from .noise.cookie import CookieGenerator
from .noise.handshake import Handshake
from .timers import PeerTimers

Endpoint = tuple  # (host, port) or (host, port, flowinfo, scope_id) as the socket module gives them


short_key = short  # logs show a key as its first 8 base64 characters


class _PeerLog(logging.LoggerAdapter):
    """Prefixes every message with `[peer:abcd1234]` (ARCHITECTURE.md rule 6)."""

    def process(self, msg, kwargs):
        msg, kwargs = super().process(msg, kwargs)  # keeps `peer` as a record attribute too
        return f"[peer:{self.extra['peer']}] {msg}", kwargs


class Peer:
    def __init__(self, public_key: bytes, jitter: Callable[[], float],
                 on_armed: Callable[["Peer"], None] = lambda peer: None) -> None:
        self.public_key = public_key
        self.short = short_key(public_key)
        self.log = _PeerLog(logging.getLogger("wgc.peer"), {"peer": self.short})
        self.handshake = Handshake(remote_static=public_key)
        self.cookie = CookieGenerator(public_key)
        self.keypairs = KeypairSlots()
        self.timers = PeerTimers(jitter, lambda: on_armed(self))
        self.endpoint: Endpoint | None = None
        # True when a path manager chooses where this peer's packets go: the endpoint is then a fixed
        # token and authenticated sources are reported (Outputs.heard) instead of roamed to.
        self.managed = False
        # The peer whose session carries this peer's packets: itself, or a relay node it is routed
        # through; the relay node's packets may then carry this peer's inner sources (datapath.py).
        self.send_to: Peer = self
        self.staged: collections.deque[bytes] = collections.deque(maxlen=MAX_STAGED_PACKETS)
        self.last_sent_handshake: float | None = None  # monotonic time of our last initiation or response
        # Our last initiation while it awaits its response (None once a session is derived or we answered
        # the peer's): what resend_handshake sends again, byte for byte.
        self.pending_initiation: bytes | None = None
        self.last_handshake_wall = 0.0  # wall-clock time of the last completed handshake, for `wg show`
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.rx_data_packets = 0
        self.tx_data_packets = 0

    def __repr__(self) -> str:
        return f"Peer({self.short})"

    @property
    def preshared_key(self) -> bytes:
        return self.handshake.preshared_key

    def sending_keypair(self, now: float) -> Keypair | None:
        """The current keypair if it may still be used to send, else None (a handshake is needed)."""
        kp = self.keypairs.current
        if kp is None or kp.send_counter >= REJECT_AFTER_MESSAGES or now - kp.created >= REJECT_AFTER_TIME:
            return None
        return kp

    def should_rekey_after_send(self, now: float) -> bool:
        kp = self.keypairs.current
        return kp is not None and (kp.send_counter > REKEY_AFTER_MESSAGES
                                   or (kp.is_initiator and now - kp.created > REKEY_AFTER_TIME))

    def should_rekey_after_receive(self, now: float) -> bool:
        if self.timers.sent_last_minute_handshake:
            return False
        kp = self.keypairs.current
        if kp is not None and kp.is_initiator and \
                now - kp.created > REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT:
            self.timers.sent_last_minute_handshake = True
            return True
        return False

    def stage(self, packet: bytes) -> None:
        self.staged.append(packet)  # the deque drops the oldest when full
