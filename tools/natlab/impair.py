"""The pure part of the NAT lab's link impairment: one link's delay queue and loss decision, with no I/O
and no clock (time comes in as `now`, monotonic seconds). `tools.natlab.delayer` feeds it the packets it
reads from a TUN device and writes back what `due(now)` returns.

    link = Link("dly1", delay=0.005, loss=0.01, seed=1)
    link.offer(packet, now)        # False: dropped (counted); True: queued until now + delay
    link.due(later)                # the packets whose time has come, in arrival order
    link.next_deadline()           # when the next one is due (None: nothing queued)

- Loss: each offered packet is dropped with probability `loss` (0..1), decided by a `random.Random`
  seeded from the seed and the link's name, so two runs with the same seed drop the same packets, and two
  links of one lab drop independently. Loss 0 never consults the generator: it loses nothing.
- Delay: a kept packet is due `delay` seconds after it arrived; when the delay shrinks (`configure`), a
  packet is never due before the one ahead of it, so the order within a link is always kept.
- Counters: `offered`, `dropped`, `sent` (handed out by `due`), and `queued` (waiting).
"""
from __future__ import annotations

import collections
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class LinkConfig:
    """One link's impairment: one-way delay in seconds, loss probability 0..1, RNG seed."""

    delay: float = 0.0
    loss: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.delay <= 60.0:
            raise ValueError(f"delay must be 0-60 s, not {self.delay!r}")
        if not 0.0 <= self.loss <= 1.0:
            raise ValueError(f"loss must be a probability 0..1, not {self.loss!r}")


def parse_config(entry) -> LinkConfig:
    """A delayer config entry: a number (one-way delay in ms, the old form) or an object with `delay_ms`,
    `loss_pct` and `seed`. Raises ValueError on anything else."""
    if isinstance(entry, bool):
        raise ValueError(f"bad link entry {entry!r}")
    if isinstance(entry, (int, float)):
        return LinkConfig(delay=float(entry) / 1000.0)
    if not isinstance(entry, dict) or not set(entry) <= {"delay_ms", "loss_pct", "seed"}:
        raise ValueError(f"bad link entry {entry!r}: a number or {{delay_ms, loss_pct, seed}}")
    values = [entry.get("delay_ms", 0), entry.get("loss_pct", 0), entry.get("seed", 0)]
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values) or not isinstance(values[2], int):
        raise ValueError(f"bad link entry {entry!r}: numbers expected (seed an integer)")
    return LinkConfig(delay=float(values[0]) / 1000.0, loss=float(values[1]) / 100.0, seed=int(values[2]))


class Link:
    """One direction-agnostic link (a TUN device of the delayer): a FIFO of (due, packet)."""

    def __init__(self, name: str, config: LinkConfig = LinkConfig()) -> None:
        self.name = name
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.offered = self.dropped = self.sent = 0
        self.config = config
        self._rng = random.Random(f"{config.seed}:{name}")

    def configure(self, config: LinkConfig) -> None:
        """New delay/loss; a new seed restarts the loss sequence (same seed: the sequence goes on)."""
        if config.seed != self.config.seed:
            self._rng = random.Random(f"{config.seed}:{self.name}")
        self.config = config

    def offer(self, packet: bytes, now: float) -> bool:
        """Take a packet that arrived at `now`: False when the loss decision drops it."""
        self.offered += 1
        loss = self.config.loss
        if loss and self._rng.random() < loss:
            self.dropped += 1
            return False
        due = now + self.config.delay
        queue = self.queue
        if queue and queue[-1][0] > due:
            due = queue[-1][0]
        queue.append((due, packet))
        return True

    def due(self, now: float) -> list[bytes]:
        """Remove and return the packets due at `now` (arrival order)."""
        queue = self.queue
        out = []
        while queue and queue[0][0] <= now:
            out.append(queue.popleft()[1])
        self.sent += len(out)
        return out

    def next_deadline(self) -> float | None:
        return self.queue[0][0] if self.queue else None

    def counts(self) -> dict[str, int]:
        return {"offered": self.offered, "dropped": self.dropped, "sent": self.sent, "queued": len(self.queue)}
