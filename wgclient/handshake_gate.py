"""The gate in front of handshake work: which handshake messages of a batch get processed, and "under load".

A Python responder spends ~20 us on a cookie reply and ~150 us on a handshake, against ~2 us to read a
datagram, so a flood of initiations must be turned away before any of that work, and never ahead of
the data packets it arrived with. wireguard-go does this with separate queues: transport packets go to
the decryption workers, handshake messages to a bounded handshake queue whose overflow is dropped
(device/receive.go). Here the device defers the handshake messages of a batch until its transport
messages are done (datapath.py), then asks `admit()` which of them to process:

- at most `budget` per batch (DeviceConfig.handshake_budget, 16), `budget_under_load` (4) while under
  load, where each costs a cookie reply (~25 us with its send); the rest are dropped and counted;
- under load, at most one per source address per batch, so one flooding address cannot crowd out
  another peer's handshake, and the flood's own share shrinks as batches fill up (a batch is at most
  32 reads, so a one-address flood costs one cookie reply per 32 datagrams when it outruns us).

Under load (wireguard-go: the handshake queue at least 1/8 full, sticky for 1 s; IsUnderLoad): a batch
brought more handshake messages than its budget (a backlog we had to drop), or `threshold` handshake
messages arrived within one second; it lasts until UNDER_LOAD_AFTER after the last such batch. The device
then demands mac2 (cookie replies) and applies `rate_limited()`, the per-source-IP token bucket of
wireguard-go's ratelimiter (device.py). Entering and leaving are logged, one line each, at most once per
`log_interval` (a flapping flood is summed up in the next line), and the state's end is a deadline of
the device (`deadline()`, `on_timer()`), so "no longer under load" is logged when it happens.

A source is an address `(host, port)` (or IPv6's 4-tuple), judged by its host; or a relayed one,
`(pseudo-host, relay, sender key)` (a DERP packet: the relay authenticated the sender's key, and every
packet it relays carries the same pseudo-host), judged by its sender key (`source_identity`): so a
flooding DERP client gets one share like a flooding address, and its cookie (`cookie_source`) is its own.

Pure: time comes in as `now`; counters go into the device's `drops` by reason.
"""
from __future__ import annotations

import collections
import ipaddress
import logging

from .constants import HANDSHAKE_BURST, HANDSHAKES_PER_SECOND, UNDER_LOAD_AFTER
from .noise.cookie import source_bytes

log = logging.getLogger("wgc.device")


def source_identity(source: tuple):
    """What a source is judged by under load: its host, or a relayed source's sender key."""
    return source[2] if len(source) == 3 else source[0]

OVER_BUDGET = "handshake: over budget"
OVER_SHARE = "under load: source over its share of the batch"
COOKIE_SENT = "under load: cookie sent"
RATE_LIMITED = "under load: rate limited"
_SUMMED = (OVER_BUDGET, OVER_SHARE, COOKIE_SENT, RATE_LIMITED)
MAX_TRACKED_SOURCES = 4096  # token buckets and packed addresses kept; all forgotten at once beyond this


class HandshakeGate:
    def __init__(self, drops: collections.Counter, *, budget: int, budget_under_load: int, threshold: int,
                 log_interval: float) -> None:
        self.drops = drops
        self.budget = budget
        self.budget_under_load = budget_under_load
        self.threshold = threshold
        self.log_interval = log_interval
        self.episodes = 0           # times the device went under load
        self.armed = False          # a new deadline since the device last asked (armed_deadline)
        self._until = float("-inf")  # under load while now < _until
        self._active = False        # an episode began and its end is not yet logged/handled
        self._second = 0
        self._count = 0             # handshake messages arrived in second `_second`
        self._logged_at = float("-inf")
        self._logged = False        # this episode's start was logged (so its end is too)
        self._unlogged = 0          # episodes since the last logged one that were not logged
        self._at_start: dict[str, int] = {}
        self._buckets: dict[str, list[float]] = {}
        self._packed: dict[str, bytes] = {}

    # -- the batch ------------------------------------------------------------------------------------------
    def admit(self, messages: list, now: float) -> list:
        """messages: the batch's handshake messages as (data, kind, source), in arrival order. Returns those
        to process, in the same order; the others are counted in drops."""
        n = len(messages)
        second = int(now)
        if second != self._second:
            self._second, self._count = second, 0
        self._count += n
        budget = self.budget
        if n > budget:
            self._loaded(now, f"{n} handshake messages in one batch (budget {budget})")
        elif self._count >= self.threshold:
            self._loaded(now, f"{self._count} handshake messages within a second")
        if now >= self._until:
            return messages  # not under load, so n <= budget
        budget = self.budget_under_load
        admitted = []
        seen: set = set()
        over_share = over_budget = 0
        for message in messages:
            host = source_identity(message[2])
            if host in seen:
                over_share += 1
            elif len(admitted) >= budget:
                over_budget += 1
            else:
                seen.add(host)
                admitted.append(message)
        if over_share:
            self.drops[OVER_SHARE] += over_share
        if over_budget:
            self.drops[OVER_BUDGET] += over_budget
        return admitted

    def under_load(self, now: float) -> bool:
        return now < self._until

    def _loaded(self, now: float, why: str) -> None:
        if not self._active:
            self._active = True
            self.armed = True
            self.episodes += 1
            self._at_start = {k: self.drops[k] for k in _SUMMED}
            self._logged = now - self._logged_at >= self.log_interval
            if self._logged:
                self._logged_at = now
                also = (f"; {self._unlogged} shorter episodes since the last message" if self._unlogged else "")
                log.warning("under load: %s; until %.0f s after it ends, handshakes need a cookie (mac2), "
                            "each source gets one per batch and %d per second, %d per batch in all%s",
                            why, UNDER_LOAD_AFTER, HANDSHAKES_PER_SECOND, self.budget_under_load, also)
                self._unlogged = 0
            else:
                self._unlogged += 1
        self._until = now + UNDER_LOAD_AFTER

    # -- the deadline: the end of an episode ---------------------------------------------------------------
    def deadline(self) -> float | None:
        return self._until if self._active else None

    def on_timer(self, now: float) -> None:
        if not self._active or now < self._until:
            return
        self._active = False
        if self._logged:
            counts = {k: self.drops[k] - self._at_start.get(k, 0) for k in _SUMMED}
            log.info("no longer under load: meanwhile %d handshake messages dropped over the batch budget, "
                     "%d over a source's share, %d answered with a cookie, %d rate limited",
                     counts[OVER_BUDGET], counts[OVER_SHARE], counts[COOKIE_SENT], counts[RATE_LIMITED])

    # -- per source --------------------------------------------------------------------------------------------
    def packed_ip(self, host: str) -> bytes:
        """The address bytes the cookie is a MAC of (cached: ipaddress is slow for a hot path)."""
        packed = self._packed.get(host)
        if packed is None:
            if len(self._packed) >= MAX_TRACKED_SOURCES:
                self._packed.clear()
            packed = self._packed[host] = ipaddress.ip_address(host.split("%")[0]).packed
        return packed

    def cookie_source(self, source: tuple) -> bytes:
        """What a source's cookie is a MAC of: the IP and port (as wireguard-go), or for a relayed source
        its sender key and relay (only we make and check these cookies, so any stable identity serves)."""
        if len(source) == 3:
            return bytes(source[2]) + int(source[1]).to_bytes(4, "little")
        return source_bytes(source, self.packed_ip(source[0]))

    def rate_limited(self, host, now: float) -> bool:
        """Token bucket per source (IP, or a relayed source's sender key: `source_identity`):
        HANDSHAKES_PER_SECOND, burst HANDSHAKE_BURST (wireguard-go ratelimiter)."""
        bucket = self._buckets.get(host)
        if bucket is None:
            if len(self._buckets) >= MAX_TRACKED_SOURCES:
                self._buckets.clear()
            bucket = self._buckets[host] = [float(HANDSHAKE_BURST), now]
        tokens = min(float(HANDSHAKE_BURST), bucket[0] + (now - bucket[1]) * HANDSHAKES_PER_SECOND)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return True
        bucket[0] = tokens - 1.0
        return False
