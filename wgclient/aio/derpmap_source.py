"""The DERP map of a running interface: its sources, the on-disk copy of the last good map, and refreshing.

`wgc up --derpmap A --derpmap B`: the sources (files or http(s) URLs) are tried in order and the first that
gives a usable map (it parses and has a region with a DERP node) wins.
- At start, `load_initial()` (before anything is created) does that; when every source fails it starts
  from the map cached at the last good load, with a warning naming each source's failure, and fails only
  when there is no cached map either.
- `run(on_change)` keeps it current while the interface is up: it caches the map it started with (if it
  came from a source), then loads again every `interval` seconds (after a failed round sooner, every
  RETRY_INTERVAL), and at once on `request_refresh()` (SIGHUP). A map that differs from the current one is
  handed to `on_change(map, change)` and cached; a round where every source fails keeps the current map,
  is counted, and is logged once per streak of failures.
Loads run in a worker thread (urllib is synchronous), each bounded by `timeout`, a URL fetched on a socket
carrying the interface's firewall mark (`fwmark`: the mark `up` will use, then, once the interface is up,
the UDP port's current one through `follow_fwmark`, so a full tunnel's rules let the fetch out). The cache is
`$WGC_STATE_DIR/NAME.derpmap.json` (default /var/lib/wgc), or `--derpmap-cache FILE`.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import Callable

from derp.aio.derpmap_loader import load_cached_map, load_derpmap, save_cached_map
from derp.derpmap import DerpMap, MapChange, diff_derpmaps
from derp.errors import Error as DerpError

from ..errors import UsageError

log = logging.getLogger("wgc.derpmap")

DEFAULT_STATE_DIR = "/var/lib/wgc"
DEFAULT_INTERVAL = 300.0       # a relay fleet changes seldom; SIGHUP applies a change at once
RETRY_INTERVAL = 30.0          # after a round where every source failed
LOAD_TIMEOUT = 10.0


def default_cache_path(name: str) -> str:
    return os.path.join(os.environ.get("WGC_STATE_DIR") or DEFAULT_STATE_DIR, f"{name}.derpmap.json")


def problem(dm: DerpMap) -> str | None:
    """Why a parsed map cannot be used (None when it can)."""
    if not any(r.derp_nodes() for r in dm.regions.values()):
        return "has no region with a DERP node"
    return None


@dataclass
class Loaded:
    derpmap: DerpMap
    source: str          # the source it came from, or "cache"
    at: float            # wall time it was loaded


class DerpMapSource:
    """See the module docstring. `load` and `clock` are injectable for tests."""

    def __init__(self, sources: list[str], *, cache_path: str | None, ca_file: str | None = None,
                 interval: float = DEFAULT_INTERVAL, timeout: float = LOAD_TIMEOUT, fwmark: int = 0,
                 load: Callable[..., DerpMap] = load_derpmap, clock: Callable[[], float] = time.time) -> None:
        if not sources:
            raise UsageError("no DERP map source given (a file path or an http(s) URL)")
        self.sources = list(sources)
        self.cache_path = cache_path
        self.ca_file = ca_file
        self.interval = interval
        self.timeout = timeout
        self.fwmark: Callable[[], int] = lambda: fwmark
        self._load = load
        self._clock = clock
        self.current: Loaded | None = None
        self.refreshes = 0             # rounds that gave a map (changed or not)
        self.failures = 0              # rounds where every source failed
        self.changes = 0
        self.last_error: str | None = None
        self._wake: asyncio.Event | None = None
        self._wake_early = False

    # -- loading -------------------------------------------------------------------------------------------
    def follow_fwmark(self, mark: Callable[[], int]) -> None:
        """Fetch with the mark `mark()` gives at each load (the UDP port's, which `wg set fwmark` changes)."""
        self.fwmark = mark

    def try_sources(self) -> tuple[Loaded | None, list[str]]:
        """The first usable map of the sources in order, and the failures before it ("source: reason")."""
        errors = []
        for source in self.sources:
            try:
                dm = self._load(source, ca_file=self.ca_file, timeout=self.timeout, fwmark=self.fwmark())
            except DerpError as exc:
                text = str(exc)
                errors.append(text if source in text else f"{source}: {text}")
                continue
            why = problem(dm)
            if why is not None:
                errors.append(f"{source}: the DERP map {why}")
                continue
            return Loaded(dm, source, self._clock()), errors
        return None, errors

    def load_initial(self) -> DerpMap:
        """The map to start with (UsageError when no source and no cache gives one)."""
        loaded, errors = self.try_sources()
        if loaded is None:
            loaded = self._from_cache(errors)
        self.current = loaded
        return loaded.derpmap

    def _from_cache(self, errors: list[str]) -> Loaded:
        cached, why = None, "no cached map"
        if self.cache_path:
            try:
                cached = load_cached_map(self.cache_path)
            except DerpError as exc:
                why = str(exc)
            if cached is not None and problem(cached) is not None:
                cached, why = None, f"the cached map {self.cache_path} {problem(cached)}"
        if cached is None:
            if len(errors) == 1 and not self.cache_path:
                raise UsageError(errors[0])
            raise UsageError("; ".join(errors) + (f" (and {why} at {self.cache_path})" if self.cache_path else ""))
        self.last_error = "; ".join(errors)
        return Loaded(cached, "cache", os.path.getmtime(self.cache_path))

    def cache_warning(self) -> str | None:
        """The warning to give when the map in use came from the cache (None otherwise)."""
        if self.current is None or self.current.source != "cache":
            return None
        saved = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.current.at))
        return (f"every DERP map source failed ({self.last_error}); starting from the cached map "
                f"{self.cache_path} (saved {saved})")

    def _save(self) -> None:
        if self.cache_path and self.current is not None and self.current.source != "cache":
            try:
                save_cached_map(self.cache_path, self.current.derpmap)
            except DerpError as exc:
                log.warning("%s", exc)

    # -- refreshing ----------------------------------------------------------------------------------------
    def request_refresh(self) -> None:
        """Load again now (SIGHUP); safe to call before `run` started."""
        self._wake_early = True
        if self._wake is not None:
            self._wake.set()

    async def refresh(self) -> MapChange | None:
        """One round: the new map's change (empty when the same), or None when every source failed."""
        loaded, errors = await asyncio.to_thread(self.try_sources)
        if loaded is None:
            self.failures += 1
            reason = "; ".join(errors)
            level = logging.WARNING if self.last_error is None else logging.DEBUG
            log.log(level, "DERP map refresh failed (%s); keeping the map from %s", reason, self.describe_source())
            self.last_error = reason
            return None
        self.refreshes += 1
        if self.last_error is not None:
            log.info("DERP map source %s answers again", loaded.source)
            self.last_error = None
        old = self.current
        change = diff_derpmaps(old.derpmap, loaded.derpmap) if old is not None else MapChange()
        if old is None or change or old.source != loaded.source:
            self.current = loaded
            self._save()
        else:
            old.at = loaded.at
        if change:
            self.changes += 1
            log.info("DERP map from %s: %s", loaded.source,
                     change.describe(loaded.derpmap, old.derpmap if old is not None else None))
        return change

    async def run(self, on_change: Callable[[DerpMap, MapChange], None]) -> None:
        """Refresh until cancelled; each changed map goes to on_change (which must not raise)."""
        self._wake = asyncio.Event()
        self._save()
        if self.cache_warning():
            log.warning("%s", self.cache_warning())
        from_cache = self.current is not None and self.current.source == "cache"
        delay = min(self.interval or RETRY_INTERVAL, RETRY_INTERVAL) if from_cache else self.interval
        while True:
            if not self._wake_early:
                try:
                    await asyncio.wait_for(self._wake.wait(), delay if delay > 0 else None)
                except asyncio.TimeoutError:
                    pass
            self._wake.clear()
            self._wake_early = False
            change = await self.refresh()
            if change:
                try:
                    on_change(self.current.derpmap, change)
                except Exception:  # applying must never end the refresh loop
                    log.exception("applying the new DERP map failed")
            delay = self.interval if change is not None else min(self.interval or RETRY_INTERVAL, RETRY_INTERVAL)

    # -- for status, the control socket and metrics --------------------------------------------------------
    def describe_source(self) -> str:
        if self.current is None:
            return "nowhere yet"
        return f"the cache {self.cache_path}" if self.current.source == "cache" else self.current.source

    def describe(self) -> dict:
        cur = self.current
        return {"sources": list(self.sources), "source": cur.source if cur else None,
                "loaded_at": cur.at if cur else None, "cache": self.cache_path, "interval": self.interval,
                "refreshes": self.refreshes, "failures": self.failures, "changes": self.changes,
                "last_error": self.last_error}


__all__ = ["DerpMapSource", "Loaded", "default_cache_path", "problem", "DEFAULT_INTERVAL"]
