"""derp.ratelog with stepped time: one line per key and interval, then a count of what was held back."""
from __future__ import annotations

import logging

from derp.ratelog import RateLimitedLog


def test_repeats_are_held_back_and_counted(caplog) -> None:
    rl = RateLimitedLog(logging.getLogger("t.ratelog"), interval=10.0)
    with caplog.at_level(logging.INFO, logger="t.ratelog"):
        assert rl.log(logging.INFO, "up", 0.0, "region %d up", 1)
        assert not any(rl.log(logging.INFO, "up", t / 10, "region %d up", 1) for t in range(1, 99))
        assert rl.suppressed("up") == 98
        assert rl.log(logging.INFO, "down", 5.0, "region %d down", 1)   # another key is not held back
        assert rl.log(logging.INFO, "up", 10.0, "region %d up", 1)
        assert not rl.log(logging.INFO, "up", 12.0, "region %d up", 1)
        assert rl.log(logging.INFO, "up", 30.0, "region %d up", 1)
    assert [r.getMessage() for r in caplog.records] == [
        "region 1 up", "region 1 down", "region 1 up (98 more like this in the last 10 s)",
        "region 1 up (1 more like this in the last 20 s)"]
    assert caplog.records[0].funcName == "test_repeats_are_held_back_and_counted"   # the caller's line


def test_key_table_is_bounded_and_disabled_levels_cost_nothing(caplog) -> None:
    rl = RateLimitedLog(logging.getLogger("t.ratelog2"), interval=1.0, max_keys=8)
    with caplog.at_level(logging.WARNING, logger="t.ratelog2"):
        assert not rl.log(logging.INFO, "x", 0.0, "info is off")
        for i in range(1000):
            rl.log(logging.WARNING, i, float(i) / 1000, "key %d", i)
        assert len(rl._keys) <= 8
    assert len(caplog.records) == 1000 and not rl._keys.get("x")
