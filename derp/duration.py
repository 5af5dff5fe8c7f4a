"""Durations as derper's flags take them, for callers that want a user's mistake as a UsageError:
`parse_duration(text) -> seconds >= 0` over derp.units (Go's syntax `30s`, `1m30s`, `720h`, `1.5h`,
`250ms`, wgc's `d` for days, and a bare number of seconds)."""
from __future__ import annotations

from derp import units
from derp.errors import ParseError, UsageError


def parse_duration(text: str) -> float:
    try:
        seconds = units.parse_duration(text.strip())
    except ParseError as exc:
        raise UsageError(f"bad duration {text!r}: {exc} (examples: 30s, 1m30s, 720h, 7d)") from None
    if seconds < 0:
        raise UsageError(f"bad duration {text!r}: must be >= 0")
    return seconds
