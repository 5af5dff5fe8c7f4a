"""Go-style durations as derper's flags take them (`30s`, `1m30s`, `720h`, `1.5h`, `250ms`), plus `d` for
days; a bare number means seconds. `parse_duration(text) -> seconds` raises UsageError naming the text."""
from __future__ import annotations

import re

from derp.errors import UsageError

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h|d)")


def parse_duration(text: str) -> float:
    s = text.strip()
    try:
        value = float(s)
    except ValueError:
        value = None
    if value is not None:
        if value < 0 or value != value or value == float("inf"):
            raise UsageError(f"bad duration {text!r}: must be a finite number of seconds >= 0")
        return value
    pos, total = 0, 0.0
    while pos < len(s):
        m = _PART.match(s, pos)
        if m is None:
            raise UsageError(f"bad duration {text!r} (examples: 30s, 1m30s, 720h, 7d)")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not s:
        raise UsageError("empty duration (examples: 30s, 1m30s, 720h, 7d)")
    return total
