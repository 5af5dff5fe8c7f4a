"""The anti-replay window for transport counters (RFC 6479 style, as wireguard-go `replay/replay.go`).

A ring of 128 blocks of 64 bits; one block is kept free so the window is (128 - 1) * 64 = 8128 counters
behind the highest accepted. `validate` is called only after a packet authenticated.
"""
from __future__ import annotations

from .constants import REJECT_AFTER_MESSAGES, REPLAY_RING_BLOCKS, REPLAY_WINDOW

_BLOCK_MASK = REPLAY_RING_BLOCKS - 1
_EMPTY_RING = (0,) * REPLAY_RING_BLOCKS


class ReplayFilter:
    __slots__ = ("last", "ring")

    def __init__(self) -> None:
        self.last = 0
        self.ring = [0] * REPLAY_RING_BLOCKS

    def reset(self) -> None:
        self.last = 0
        self.ring = [0] * REPLAY_RING_BLOCKS

    def validate(self, counter: int, limit: int = REJECT_AFTER_MESSAGES) -> bool:
        """Accept counter once (True) or reject it as replayed, too old or past the limit (False)."""
        if counter >= limit:
            return False
        last = self.last
        ring = self.ring
        index = (counter >> 6) & _BLOCK_MASK
        bit = 1 << (counter & 63)
        if counter > last:
            current = last >> 6
            diff = (counter >> 6) - current
            if diff:
                if diff >= REPLAY_RING_BLOCKS:
                    ring[:] = _EMPTY_RING
                else:
                    for i in range(current + 1, current + diff + 1):
                        ring[i & _BLOCK_MASK] = 0
            # A counter above the highest seen lands in a block that holds only lower counters of its
            # own (or was just cleared): its bit cannot be set yet.
            self.last = counter
            ring[index] |= bit
            return True
        if last - counter > REPLAY_WINDOW:
            return False
        old = ring[index]
        if old & bit:
            return False
        ring[index] = old | bit
        return True
