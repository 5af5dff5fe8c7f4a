"""The patterns tests use to match printed figures accept every value the formatters can print: a test
that matches a pong line holds on a fast idle machine (0.8ms) as on a loaded slow one (1.2s)."""
from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from natprobe.report import go_duration
from tests.support.patterns import DURATION, seconds
from wgclient.control import format_ms

SECONDS = st.floats(min_value=0, max_value=600, allow_nan=False)


@given(SECONDS)
def test_every_wgc_latency_matches(secs: float) -> None:
    assert re.fullmatch(DURATION, format_ms(secs * 1e3))


@given(SECONDS)
def test_every_netcheck_latency_matches(secs: float) -> None:
    assert re.fullmatch(DURATION, go_duration(secs))


@given(SECONDS)
def test_printed_durations_read_back(secs: float) -> None:
    assert abs(seconds(go_duration(secs)) - secs) <= 0.00005 + 1e-9
    assert abs(seconds(format_ms(secs * 1e3)) - secs) <= max(0.0005, secs * 0.01)


def test_the_forms_of_each_speed() -> None:
    for text in ("<0.1ms", "0.8ms", "12ms", "1234ms", "300µs", "9.8ms", "1.2s", "0s"):
        assert re.fullmatch(DURATION, text), text
    for text in ("ms", "12", "1.ms", "-3ms", "12 ms"):
        assert not re.fullmatch(DURATION, text), text
