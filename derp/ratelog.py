"""Rate-limited log lines: a line that repeats (a reconnect storm, a flood of garbage) is written at most
once per interval per key, and the next one that gets out says how many were held back.

Pure: time comes in as `now`; the caller picks the key that makes two lines "the same" (e.g. the kind
of message and the region). The table of keys is bounded, so varying keys cannot grow it without limit.
Used by the DERP client and by wgc's path adapter (wgclient imports it from here).
"""
from __future__ import annotations

import logging
from typing import Hashable


class RateLimitedLog:
    """`log(level, key, now, msg, *args)`: emits unless the same key was emitted less than `interval` ago."""

    __slots__ = ("logger", "interval", "max_keys", "_keys")

    def __init__(self, logger: logging.Logger, interval: float = 30.0, max_keys: int = 256) -> None:
        self.logger = logger
        self.interval = interval
        self.max_keys = max_keys
        self._keys: dict[Hashable, list] = {}   # key -> [time of the last line written, lines held back]

    def log(self, level: int, key: Hashable, now: float, msg: str, *args: object) -> bool:
        """True if the line was written."""
        if not self.logger.isEnabledFor(level):
            return False
        entry = self._keys.get(key)
        if entry is not None and now - entry[0] < self.interval:
            entry[1] += 1
            return False
        if entry is None:
            if len(self._keys) >= self.max_keys:
                self._prune(now)
            entry = self._keys[key] = [now, 0]
        elif entry[1]:
            msg += " (%d more like this in the last %.0f s)"
            args += (entry[1], now - entry[0])
        entry[0], entry[1] = now, 0
        self.logger.log(level, msg, *args, stacklevel=2)
        return True

    def suppressed(self, key: Hashable) -> int:
        entry = self._keys.get(key)
        return entry[1] if entry is not None else 0

    def _prune(self, now: float) -> None:
        stale = [k for k, (at, held) in self._keys.items() if now - at >= self.interval and not held]
        for k in stale:
            del self._keys[k]
        if len(self._keys) >= self.max_keys:
            self._keys.clear()
