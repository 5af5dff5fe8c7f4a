"""Token buckets (time passed in, pure): per-source-IP and global connection rates, and per-client byte
rates, where a bucket may go into debt by one frame (`spend`) and the client waits until it is repaid."""
from __future__ import annotations


class TokenBucket:
    __slots__ = ("rate", "burst", "tokens", "last")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst, self.tokens, self.last = rate, burst, float(burst), now

    def refill(self, now: float) -> float:
        """Tokens available now (negative while a debt is being repaid)."""
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.last) * self.rate)
        self.last = now
        return self.tokens

    def spend(self, cost: float) -> None:
        """Take `cost` tokens even if that leaves a debt."""
        self.tokens -= cost

    def debt_seconds(self) -> float:
        """How long until the bucket is out of debt (0 when it is not in debt)."""
        return -self.tokens / self.rate if self.tokens < 0 and self.rate > 0 else 0.0

    def allow(self, now: float, cost: float = 1.0) -> bool:
        if self.refill(now) >= cost:
            self.tokens -= cost
            return True
        return False


class PerKeyLimiter:
    """One bucket per key (a client IP); full, idle buckets are pruned so the table stays bounded."""

    def __init__(self, rate: float, burst: float, max_keys: int = 100_000) -> None:
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self.buckets: dict[str, TokenBucket] = {}
        self.limited = 0

    def allow(self, key: str, now: float) -> bool:
        if self.rate <= 0:
            return True
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= self.max_keys:
                self.prune(now)
            bucket = self.buckets[key] = TokenBucket(self.rate, self.burst, now)
        ok = bucket.allow(now)
        if not ok:
            self.limited += 1
        return ok

    def prune(self, now: float) -> None:
        refill = self.burst / self.rate if self.rate > 0 else 0.0
        for key in [k for k, b in self.buckets.items() if now - b.last >= refill]:
            del self.buckets[key]
