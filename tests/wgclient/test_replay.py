"""The anti-replay window against a slow reference model (a set of accepted counters, the highest seen, 8128)."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from wgclient.constants import REJECT_AFTER_MESSAGES, REPLAY_WINDOW
from wgclient.replay import ReplayFilter


class Model:
    """The rule written out plainly: accept a counter once, never one more than 8128 behind the highest."""

    def __init__(self, limit: int = REJECT_AFTER_MESSAGES) -> None:
        self.accepted: set[int] = set()
        self.highest = 0
        self.limit = limit

    def validate(self, c: int) -> bool:
        if c >= self.limit or c in self.accepted:
            return False
        if c <= self.highest and self.highest - c > REPLAY_WINDOW:
            return False
        self.accepted.add(c)
        self.highest = max(self.highest, c)
        return True


def test_window_is_8128() -> None:
    assert REPLAY_WINDOW == 8128


# Counters that exercise the interesting places: near a recent one (reorder, duplicates), just around
# the window edge, jumps of whole rings, and the REJECT_AFTER_MESSAGES limit.
def counters():
    small = st.integers(0, 20_000)
    edge = st.integers(-70, 70).map(lambda d: max(0, 8128 + d))
    big = st.integers(0, 2**64 - 1)
    near_limit = st.integers(-3, 2).map(lambda d: REJECT_AFTER_MESSAGES + d)
    return st.lists(st.one_of(small, edge, big, near_limit, st.integers(0, 300)), max_size=120)


@given(counters())
def test_filter_agrees_with_model(seq: list[int]) -> None:
    f, m = ReplayFilter(), Model()
    for c in seq:
        assert f.validate(c) == m.validate(c), c


@given(st.lists(st.one_of(st.integers(0, 70_000).map(lambda c: ("abs", c)),
                          st.integers(-3, 3).map(lambda d: ("behind", REPLAY_WINDOW + d)),
                          st.integers(-3, 3).map(lambda d: ("behind", REPLAY_WINDOW + 64 + d)),
                          st.integers(-200, 200).map(lambda d: ("behind", d))), min_size=2, max_size=150))
def test_filter_agrees_with_model_relative_to_highest(ops: list[tuple[str, int]]) -> None:
    # Counters chosen relative to the highest accepted so far hit the window edge (8128 behind) often.
    f, m = ReplayFilter(), Model()
    for kind, v in ops:
        c = v if kind == "abs" else max(0, m.highest - v)
        assert f.validate(c) == m.validate(c), c


@given(st.integers(0, 2**63), st.lists(st.integers(-9000, 9000), max_size=150))
def test_filter_agrees_with_model_around_a_base(base: int, offsets: list[int]) -> None:
    # Walks around an arbitrary starting point: window slides, reorders, duplicates, just-too-old counters.
    f, m = ReplayFilter(), Model()
    for d in offsets:
        c = max(0, base + d)
        assert f.validate(c) == m.validate(c), c


@given(st.lists(st.integers(0, 2**64 - 1), max_size=60), st.integers(1, 2**64 - 1))
def test_filter_agrees_with_model_under_any_limit(seq: list[int], limit: int) -> None:
    f, m = ReplayFilter(), Model(limit)
    for c in seq:
        assert f.validate(c, limit) == m.validate(c), c


def test_examples() -> None:
    f = ReplayFilter()
    assert f.validate(0) and not f.validate(0)
    assert f.validate(5) and f.validate(3) and not f.validate(3)  # reordered within the window: once
    assert f.validate(10_000)
    assert f.validate(10_000 - 8128)  # exactly at the window edge
    assert not f.validate(10_000 - 8129)  # one past it
    assert f.validate(2**63)  # a big jump clears the whole ring
    assert not f.validate(10_001)
    assert not f.validate(REJECT_AFTER_MESSAGES)
    assert f.validate(REJECT_AFTER_MESSAGES - 1)
    assert not f.validate(REJECT_AFTER_MESSAGES - 1)
    f.reset()
    assert f.validate(0) and f.validate(1)


def test_sequential_stream_over_many_rings() -> None:
    f, m = ReplayFilter(), Model()
    for c in range(0, 40_000, 3):
        assert f.validate(c) and m.validate(c)
    for c in range(40_000 - 8200, 40_000, 7):  # replays and too-old ones, all rejected or fresh
        assert f.validate(c) == m.validate(c)
