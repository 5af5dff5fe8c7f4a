"""A peer's timers, in wireguard-go's vocabulary of hooks (wireguard-go timers.go, whitepaper §6).

Each timer is a deadline (monotonic seconds) or None. Hooks are called by the device as packets move;
`expired(now)` tells which timers have fired and clears them. Nothing here reads the clock: `now` comes in,
jitter comes from an injected callable.

| timer                | armed by                                        | on expiry                          |
|----------------------|-------------------------------------------------|------------------------------------|
| retransmit_handshake | initiation sent: REKEY_TIMEOUT + jitter          | resend (or give up after 18 tries) |
| send_keepalive       | data received, if not armed: KEEPALIVE_TIMEOUT   | send keepalive (again if needed)   |
| new_handshake        | data sent, if not armed: KEEPALIVE+REKEY+jitter  | initiate a new handshake           |
| zero_key_material    | session derived: 3 * REJECT_AFTER_TIME           | wipe keys, drop staged packets     |
| persistent_keepalive | any authenticated packet sent or received        | send keepalive                     |

Cancelled: send_keepalive by any authenticated packet sent; new_handshake by any authenticated packet
received; retransmit_handshake when a handshake completes.

Arming a timer also calls `on_armed()` (the device uses it to learn which peers' deadlines may have moved
earlier, so it need not scan every peer after every batch). Cancelling does not: a timer that fires
for nothing costs one spurious wake-up, never a missed deadline.
"""
from __future__ import annotations

import enum
from typing import Callable

from .constants import KEEPALIVE_TIMEOUT, KEY_ZERO_AFTER, REKEY_TIMEOUT


class Timer(enum.Enum):
    RETRANSMIT_HANDSHAKE = "retransmit_handshake"
    SEND_KEEPALIVE = "send_keepalive"
    NEW_HANDSHAKE = "new_handshake"
    ZERO_KEY_MATERIAL = "zero_key_material"
    PERSISTENT_KEEPALIVE = "persistent_keepalive"


class PeerTimers:
    __slots__ = ("retransmit_handshake", "send_keepalive", "new_handshake", "zero_key_material",
                 "persistent_keepalive", "handshake_attempts", "need_another_keepalive",
                 "sent_last_minute_handshake", "persistent_keepalive_interval", "jitter", "on_armed")

    def __init__(self, jitter: Callable[[], float], on_armed: Callable[[], None] = lambda: None) -> None:
        self.on_armed = on_armed
        self.retransmit_handshake: float | None = None
        self.send_keepalive: float | None = None
        self.new_handshake: float | None = None
        self.zero_key_material: float | None = None
        self.persistent_keepalive: float | None = None
        self.handshake_attempts = 0
        self.need_another_keepalive = False
        self.sent_last_minute_handshake = False
        self.persistent_keepalive_interval = 0
        self.jitter = jitter

    # -- hooks ---------------------------------------------------------------------------------------
    def on_data_sent(self, now: float) -> None:
        if self.new_handshake is None:
            self.new_handshake = now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + self.jitter()
            self.on_armed()

    def on_data_received(self, now: float) -> None:
        if self.send_keepalive is None:
            self.send_keepalive = now + KEEPALIVE_TIMEOUT
            self.on_armed()
        else:
            self.need_another_keepalive = True

    def on_any_authenticated_packet_sent(self) -> None:
        self.send_keepalive = None

    def on_any_authenticated_packet_received(self) -> None:
        self.new_handshake = None

    def on_any_authenticated_packet_traversal(self, now: float) -> None:
        if self.persistent_keepalive_interval > 0:
            self.persistent_keepalive = now + self.persistent_keepalive_interval
            self.on_armed()

    def on_handshake_initiated(self, now: float) -> None:
        self.retransmit_handshake = now + REKEY_TIMEOUT + self.jitter()
        self.on_armed()

    def on_handshake_complete(self) -> None:
        self.retransmit_handshake = None
        self.handshake_attempts = 0
        self.sent_last_minute_handshake = False

    def on_session_derived(self, now: float) -> None:
        self.zero_key_material = now + KEY_ZERO_AFTER
        self.on_armed()

    def stop(self) -> None:
        self.retransmit_handshake = self.send_keepalive = self.new_handshake = None
        self.zero_key_material = self.persistent_keepalive = None
        self.handshake_attempts = 0
        self.need_another_keepalive = False
        self.sent_last_minute_handshake = False

    # -- deadlines -----------------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        best = None
        for t in (self.retransmit_handshake, self.send_keepalive, self.new_handshake, self.zero_key_material,
                  self.persistent_keepalive):
            if t is not None and (best is None or t < best):
                best = t
        return best

    def expired(self, now: float) -> list[Timer]:
        """The timers due at now, in a fixed order, each cleared before it is returned."""
        fired = []
        for timer in Timer:
            deadline = getattr(self, timer.value)
            if deadline is not None and deadline <= now:
                setattr(self, timer.value, None)
                fired.append(timer)
        return fired
