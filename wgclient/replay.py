"""The anti-replay window for transport counters (RFC 6479 style, as wireguard-go `replay/replay.go`).

A ring of 128 blocks of 64 bits; one block is kept free so the window is (128 - 1) * 64 = 8128 counters
behind the highest accepted. `validate` is called only after a packet authenticated.
"""
from __future__ import annotations

from .constants import REJECT_AFTER_MESSAGES, REPLAY_RING_BLOCKS, REPLAY_WINDOW

_BLOCK_MASK = REPLAY_RING_BLOCKS - 1


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
        block = counter >> 6
        last = self.last
        ring = self.ring
        if counter > last:
            current = last >> 6
            diff = block - current
            if diff > REPLAY_RING_BLOCKS:
                diff = REPLAY_RING_BLOCKS
            for i in range(current + 1, current + diff + 1):
                ring[i & _BLOCK_MASK] = 0
            self.last = counter
        elif last - counter > REPLAY_WINDOW:
            return False
        index = block & _BLOCK_MASK
        bit = 1 << (counter & 63)
        old = ring[index]
        if old & bit:
            return False
        ring[index] = old | bit
        return True
