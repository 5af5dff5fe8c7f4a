"""The NAT lab's link impairment core (tools/natlab/impair.py), without I/O: the loss decision (seeded,
repeatable, at the asked rate, none at 0 %), the delay queue (due times, order kept when the delay
changes) and the delayer config entries (garbage raises ValueError only)."""
from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tools.natlab.impair import Link, LinkConfig, parse_config


def drops(link: Link, n: int) -> list[int]:
    return [i for i in range(n) if not link.offer(b"p%d" % i, 0.0)]


def test_zero_loss_loses_nothing_and_never_draws() -> None:
    link = Link("dly1", LinkConfig(loss=0.0, seed=7))
    state = link._rng.getstate()
    assert drops(link, 20_000) == []
    assert link._rng.getstate() == state, "0 % must not consult the generator"
    assert link.counts() == {"offered": 20_000, "dropped": 0, "sent": 0, "queued": 20_000}
    assert len(link.due(0.0)) == 20_000 and link.counts()["sent"] == 20_000


@pytest.mark.parametrize("pct", [1, 3, 10, 50])
def test_loss_at_about_the_asked_rate(pct: float) -> None:
    n = 50_000
    link = Link("dly1", LinkConfig(loss=pct / 100, seed=1))
    dropped = len(drops(link, n))
    assert link.dropped == dropped and link.offered == n and len(link.queue) == n - dropped
    assert abs(dropped / n - pct / 100) < 0.2 * pct / 100 + 0.002, dropped


def test_full_loss_drops_everything() -> None:
    assert len(drops(Link("x", LinkConfig(loss=1.0)), 1000)) == 1000


def test_the_same_seed_drops_the_same_packets() -> None:
    cfg = LinkConfig(loss=0.05, seed=42)
    first, again = drops(Link("dly1", cfg), 5000), drops(Link("dly1", cfg), 5000)
    assert first == again and first
    assert drops(Link("dly1", LinkConfig(loss=0.05, seed=43)), 5000) != first
    assert drops(Link("dly2", cfg), 5000) != first, "two links of one lab must drop independently"


def test_reconfigure_keeps_the_sequence_unless_the_seed_changes() -> None:
    whole = drops(Link("d", LinkConfig(loss=0.1, seed=3)), 2000)
    link = Link("d", LinkConfig(loss=0.1, seed=3))
    head = drops(link, 1000)
    link.configure(LinkConfig(delay=0.05, loss=0.1, seed=3))
    tail = [i + 1000 for i in drops(link, 1000)]
    assert head + tail == whole


def test_delay_queue_due_times_and_order() -> None:
    link = Link("d", LinkConfig(delay=0.010))
    assert link.next_deadline() is None and link.due(5.0) == []
    link.offer(b"a", 1.000)
    link.offer(b"b", 1.002)
    assert link.next_deadline() == pytest.approx(1.010)
    assert link.due(1.009) == []
    assert link.due(1.010) == [b"a"]
    # the delay shrinks: a later packet is never due before the one ahead of it
    link.configure(LinkConfig(delay=0.0))
    link.offer(b"c", 1.003)
    assert link.next_deadline() == pytest.approx(1.012)
    assert link.due(1.011) == []
    assert link.due(1.012) == [b"b", b"c"]
    link.offer(b"d", 2.0)
    assert link.due(2.0) == [b"d"]
    assert link.counts() == {"offered": 4, "dropped": 0, "sent": 4, "queued": 0}


def test_config_entries() -> None:
    assert parse_config(5) == LinkConfig(delay=0.005)
    assert parse_config({"delay_ms": 5, "loss_pct": 2.5, "seed": 9}) == LinkConfig(0.005, 0.025, 9)
    assert parse_config({}) == LinkConfig()
    for bad in (True, None, "5", [5], {"delay": 5}, {"loss_pct": 101}, {"loss_pct": -1}, {"delay_ms": -1},
                {"seed": 1.5}, {"seed": float("inf")}, {"loss_pct": "1"}, {"seed": True}):
        with pytest.raises(ValueError):
            parse_config(bad)


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                    lambda inner: st.lists(inner) | st.dictionaries(st.sampled_from(["delay_ms", "loss_pct", "seed", "x"]), inner),
                    max_leaves=8))
def test_garbage_config_raises_only_value_error(entry) -> None:
    try:
        cfg = parse_config(json.loads(json.dumps(entry)) if _jsonable(entry) else entry)
    except ValueError:
        return
    assert 0 <= cfg.loss <= 1 and 0 <= cfg.delay <= 60


def _jsonable(entry) -> bool:
    try:
        json.dumps(entry, allow_nan=False)
        return True
    except ValueError:
        return False
