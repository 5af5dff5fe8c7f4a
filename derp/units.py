"""Flag values as Go programs write them: durations (`30s`, `1m30s`, `500ms`, `2h`), byte sizes (`100KB`,
`64KiB`, `1MB/s`) and booleans (`true`, `false`, `1`, `0`, `t`, `f`). Pure; garbage raises ParseError.

Durations follow Go's time.ParseDuration: an optional sign, then one or more `<number><unit>` parts
(number `12`, `1.5`, `.5` or `1.`; unit ns, us, µs, μs, ms, s, m, h), or a lone `0`; at most 2^63-1 ns.
wgc also takes `d` (24h; certificate lifetimes) and a bare number as seconds (`30`, `0.5`), as its flags
did before they took durations.
Sizes are a number (`1.5` allowed) with an optional unit: k/K, M, G, T (powers of 1000) or Ki, Mi, Gi, Ti
(powers of 1024), an optional `B` and, for rates, an optional `/s`; case-insensitive.
"""
from __future__ import annotations

import re
from fractions import Fraction

from derp.errors import ParseError

MAX_TEXT = 100
MAX_NS = (1 << 63) - 1
_UNITS_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
             "m": 60_000_000_000, "h": 3_600_000_000_000, "d": 86_400_000_000_000}
_PART = re.compile(r"([0-9]*)(?:\.([0-9]*))?([^0-9.]*)")
_BARE = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")
_SIZE = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([kmgt]i?)?b?(?:/s)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
               "ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30, "ti": 1 << 40}
_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_FALSE = ("0", "f", "F", "FALSE", "false", "False")


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ParseError(f"{what} must be text")
    if len(value) > MAX_TEXT:
        raise ParseError(f"{what} {value[:20]!r}... is too long")
    return value


def parse_duration_ns(text: str) -> int:
    """A Go duration (or a bare number of seconds) as integer nanoseconds; ParseError if it is not one."""
    text = _text(text, "duration")
    if _BARE.fullmatch(text):
        total = Fraction(text) * _UNITS_NS["s"]
        if total > MAX_NS:
            raise ParseError(f"duration {text!r} is out of range")
        return int(total)
    body, sign = text, 1
    if body[:1] in ("-", "+"):
        sign, body = (-1 if body[0] == "-" else 1), body[1:]
    if body == "0":
        return 0
    if not body:
        raise ParseError(f"invalid duration {text!r}")
    total, pos = Fraction(0), 0
    while pos < len(body):
        m = _PART.match(body, pos)
        whole, frac, unit = m.group(1), m.group(2), m.group(3)
        if not whole and not frac:
            raise ParseError(f"invalid duration {text!r}")
        if not unit:
            raise ParseError(f"missing unit in duration {text!r} (e.g. 30s, 1m30s, 500ms)")
        if unit not in _UNITS_NS:
            raise ParseError(f"unknown unit {unit!r} in duration {text!r} (ns, us, ms, s, m, h, d)")
        number = Fraction(int(whole or "0")) + (Fraction(int(frac), 10 ** len(frac)) if frac else 0)
        total += number * _UNITS_NS[unit]
        if total > MAX_NS:
            raise ParseError(f"duration {text!r} is out of range")
        pos = m.end()
    return sign * int(total)


def parse_duration(text: str) -> float:
    """A Go duration (or a bare number of seconds) in seconds."""
    return parse_duration_ns(text) / 1e9


def format_duration(seconds: float) -> str:
    """Seconds as a short Go-style duration (`1m30s`, `500ms`, `0s`), for help texts and logs."""
    return format_duration_ns(round(seconds * 1e9))


def format_duration_ns(ns: int) -> str:
    """Nanoseconds as Go's Duration.String() writes them (`1h2m3.5s`, `1.000000001s`, `250us`)."""
    if ns == 0:
        return "0s"
    sign, ns = ("-" if ns < 0 else ""), abs(ns)
    if ns < 1_000_000_000:
        unit, size = next((u, s) for u, s in (("ms", 1_000_000), ("us", 1_000), ("ns", 1)) if ns % s == 0)
        return f"{sign}{ns // size}{unit}"
    out = []
    for unit, size in (("h", 3_600_000_000_000), ("m", 60_000_000_000)):
        if ns >= size:
            out.append(f"{ns // size}{unit}")
            ns %= size
    whole, frac = divmod(ns, 1_000_000_000)
    if whole or frac:
        out.append(f"{whole}" + (f".{frac:09d}".rstrip("0") if frac else "") + "s")
    return sign + "".join(out)


def parse_size(text: str) -> int:
    """A byte count (`65536`, `100KB`, `64KiB`, `1.5MB`, `100KB/s`) as an integer; ParseError if not one."""
    text = _text(text, "size").strip()
    m = _SIZE.fullmatch(text)
    if m is None:
        raise ParseError(f"invalid size {text!r} (e.g. 65536, 100KB, 64KiB, 1MB)")
    value = Fraction(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower()]
    if value > MAX_NS:
        raise ParseError(f"size {text!r} is out of range")
    return int(value)


def parse_bool(text: str) -> bool:
    """Go's strconv.ParseBool: 1 t T TRUE true True / 0 f F FALSE false False."""
    text = _text(text, "boolean")
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ParseError(f"invalid boolean {text!r} (true or false)")
