"""Regexes for figures the CLIs print whose value depends on the machine, so that a test checks the form
of a line and never one machine's speed (a round trip on an idle machine is `0.8ms`, on a loaded one
`12ms` or `1.2s`)."""
from __future__ import annotations

import re

# Any duration wgc prints: `format_ms` (wgc ping/status: 12ms, 0.8ms, <0.1ms, 1234ms) and
# `go_duration` (wgc netcheck: 9.8ms, 300µs, 1.2s, 0s, 1m2.5s).
DURATION = r"(?:<0\.1ms|(?:\d+m)?\d+(?:\.\d+)?(?:µs|ms|s))"

_UNITS = {"µs": 1e-6, "ms": 1e-3, "s": 1.0}


def seconds(text: str) -> float:
    """The value of a printed DURATION in seconds (`<0.1ms` counts as 0.1 ms)."""
    match = re.fullmatch(r"<?(?:(\d+)m)?(\d+(?:\.\d+)?)(µs|ms|s)", text)
    if not match:
        raise ValueError(f"not a duration: {text!r}")
    minutes, value, unit = match.groups()
    return int(minutes or 0) * 60 + float(value) * _UNITS[unit]
