"""When to renew an ACME certificate: pure, wall-clock `now` (Unix seconds) passed in, no I/O.

Rules:
- With no certificate, obtain one at once.
- A certificate is due when less than `renew_before` seconds of it remain (a duration, clamped to half
  the lifetime so a long setting cannot make every new certificate due at once), or, by default, when
  less than `renew_fraction` of its lifetime remains (a third, as Let's Encrypt advises).
- A failed attempt is retried after `retry_min`, doubling up to `retry_max`; the certificate in hand is
  served meanwhile. Success resets the backoff.
- The adapter never sleeps longer than `recheck_max`, so a suspended machine or a jumped clock is noticed.
"""
from __future__ import annotations

from dataclasses import dataclass

from derp.duration import parse_duration
from derp.errors import UsageError


@dataclass(frozen=True)
class RenewalConfig:
    renew_before: float | None = None    # seconds before notAfter; None: use renew_fraction
    renew_fraction: float = 1 / 3        # renew when less than this share of the lifetime remains
    retry_min: float = 60.0
    retry_max: float = 3600.0
    recheck_max: float = 6 * 3600.0


def parse_renew_before(text: str) -> tuple[float | None, float]:
    """`33%` (share of the lifetime left) or a duration (`720h`, `30d`) → (renew_before, renew_fraction)."""
    s = text.strip()
    if s.endswith("%"):
        try:
            pct = float(s[:-1])
        except ValueError:
            pct = -1.0
        if not 0 < pct < 100:
            raise UsageError(f"bad share {text!r}: a percentage must be between 0 and 100")
        return None, pct / 100
    seconds = parse_duration(s)
    if seconds <= 0:
        raise UsageError(f"bad duration {text!r}: must be more than 0")
    return seconds, RenewalConfig.renew_fraction


class Renewal:
    """The renewal schedule of one certificate name."""

    def __init__(self, config: RenewalConfig) -> None:
        self.config = config
        self.window: tuple[float, float] | None = None   # (notBefore, notAfter) of the certificate served
        self.failures = 0
        self.retry_at: float | None = None

    def on_certificate(self, not_before: float, not_after: float) -> None:
        """A certificate is now served (loaded from the cache or just issued)."""
        self.window = (not_before, not_after)
        self.failures = 0
        self.retry_at = None

    def due_now(self, now: float) -> None:
        """Make the next check order a new certificate (e.g. the cached one is from another CA)."""
        self.retry_at = now

    def renew_at(self) -> float | None:
        if self.window is None:
            return None
        not_before, not_after = self.window
        lifetime = max(0.0, not_after - not_before)
        cfg = self.config
        if cfg.renew_before is not None:
            before = min(cfg.renew_before, lifetime / 2)
        else:
            before = cfg.renew_fraction * lifetime
        return not_after - before

    def due(self, now: float) -> bool:
        if self.retry_at is not None:
            return now >= self.retry_at
        at = self.renew_at()
        return at is None or now >= at

    def on_failure(self, now: float) -> float:
        """An attempt failed: returns when to try again."""
        self.failures += 1
        cfg = self.config
        delay = min(cfg.retry_max, cfg.retry_min * 2 ** min(self.failures - 1, 32))
        self.retry_at = now + delay
        return self.retry_at

    def next_deadline(self, now: float) -> float:
        """When the adapter should look again (`due` may still be False then: it just rechecks)."""
        if self.retry_at is not None:
            at = self.retry_at
        else:
            at = self.renew_at()
            if at is None:
                return now
        return max(now, min(at, now + self.config.recheck_max))

    def expired(self, now: float) -> bool:
        return self.window is not None and now >= self.window[1]
