"""Regexes for figures the CLIs print whose value depends on the machine, so that a test checks the form
of a line and never one machine's speed (a round trip on an idle machine is `0.8ms`, on a loaded one
`12ms` or `1.2s`)."""
from __future__ import annotations

# Any duration wgc prints: `format_ms` (wgc ping/status: 12ms, 0.8ms, <0.1ms, 1234ms) and
# `go_duration` (wgc netcheck: 9.8ms, 300µs, 1.2s, 0s, 1m2.5s).
DURATION = r"(?:<0\.1ms|(?:\d+m)?\d+(?:\.\d+)?(?:µs|ms|s))"
