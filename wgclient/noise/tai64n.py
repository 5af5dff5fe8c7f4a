"""TAI64N timestamps for handshake initiations (whitepaper §5.4.2, wireguard-go tai64n/tai64n.go)."""
from __future__ import annotations

import struct

TAI64_BASE = (1 << 62) + 10
WHITENER_MASK = 0xFFFFFF  # wireguard-go clears the low 24 bits of the nanoseconds (~16.8 ms steps)
_pack = struct.Struct(">QI").pack


def tai64n(unix_time: float) -> bytes:
    """The 12-byte label for a wall-clock time (passed in: cores never read the clock)."""
    seconds = int(unix_time)
    nanos = int(round((unix_time - seconds) * 1e9))
    if nanos >= 1_000_000_000:
        seconds, nanos = seconds + 1, nanos - 1_000_000_000
    return _pack(TAI64_BASE + seconds, nanos & ~WHITENER_MASK)


def after(a: bytes, b: bytes) -> bool:
    """True if timestamp a is strictly later than b (byte-wise, as both are big-endian)."""
    return a > b
