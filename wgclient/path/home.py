"""The home DERP region and the set of regions a node can use, without a control server.

Rules (derp.md §10, netcheck.md §8, issue 5):
- netcheck's PreferredDERP (already sticky: natprobe.home applies the hysteresis) becomes home, unless that
  region is down; when netcheck found nothing, the current home is kept, else the first usable region;
- a region is usable when the DERP map has it and its connection is not reported down;
- home down: after `failover_delay` without the connection coming back (a relay restart is given that
  long to reconnect), the next usable region in latency order (then map order) becomes home, so a failover
  completes well within 5 s; the old home is not taken back while it is down;
- `order()` lists usable regions home first, then by netcheck latency, then the rest by region id: the
  order in which a peer's region is tried when nothing better is known.
Every change of home goes through `_set_home`, which logs it and returns True.
"""
from __future__ import annotations

import logging
from typing import Mapping

log = logging.getLogger("wgclient.path")


class HomeTracker:
    def __init__(self, failover_delay: float) -> None:
        self.failover_delay = failover_delay
        self.regions: dict[int, str] = {}          # region id -> code
        self.latency: dict[int, float] = {}        # from the last netcheck
        self.preferred = 0                          # netcheck's choice
        self.down: dict[int, float] = {}            # region -> time it went down
        self.home = 0
        self.failover_at: float | None = None

    def usable(self, region: int) -> bool:
        return region in self.regions and region not in self.down

    def code(self, region: int) -> str:
        return self.regions.get(region, str(region))

    def order(self) -> list[int]:
        timed = sorted((r for r in self.latency if self.usable(r)), key=lambda r: (self.latency[r], r))
        rest = sorted(r for r in self.regions if self.usable(r) and r not in self.latency)
        ordered = timed + rest
        if self.usable(self.home):
            ordered.remove(self.home)
            ordered.insert(0, self.home)
        return ordered

    def _set_home(self, region: int, reason: str) -> bool:
        if region == self.home:
            return False
        log.info("home region %s -> %s (%s)", self.code(self.home) if self.home else "none",
                 self.code(region) if region else "none", reason)
        self.home = region
        self.failover_at = None
        return True

    def _choose(self, reason: str) -> bool:
        if self.usable(self.preferred):
            return self._set_home(self.preferred, reason)
        if self.usable(self.home):
            return False
        ordered = self.order()
        return self._set_home(ordered[0] if ordered else 0, reason)

    def set_regions(self, regions: Mapping[int, str]) -> bool:
        self.regions = dict(regions)
        self.down = {r: t for r, t in self.down.items() if r in self.regions}
        self.latency = {r: v for r, v in self.latency.items() if r in self.regions}
        return self._choose("DERP map")

    def on_netcheck(self, preferred: int, latency: Mapping[int, float]) -> bool:
        self.preferred = preferred
        if latency:  # a report that measured nothing leaves the last known latencies in place
            self.latency = {r: v for r, v in latency.items() if r in self.regions}
        return self._choose("netcheck")

    def on_down(self, region: int, now: float) -> None:
        self.down.setdefault(region, now)
        if region == self.home and self.failover_at is None:
            self.failover_at = now + self.failover_delay

    def on_up(self, region: int) -> bool:
        self.down.pop(region, None)
        if region == self.home:
            self.failover_at = None
        return self._choose("region reconnected") if self.home == 0 else False

    def next_deadline(self) -> float | None:
        return self.failover_at

    def on_timer(self, now: float) -> bool:
        if self.failover_at is None or now < self.failover_at:
            return False
        self.failover_at = None
        if self.usable(self.home):
            return False
        ordered = self.order()
        return self._set_home(ordered[0] if ordered else 0, "home region down")
