"""Device.armed_deadline(): after any packet input, asking only the peers that armed a timer finds every
deadline that moved earlier, so the runner may skip scanning all peers after each batch."""
from __future__ import annotations

from hypothesis import given, strategies as st

from tests.support.pair import Pair, ipv4_packet

OPS = st.lists(st.sampled_from(["send_a", "send_b", "deliver_one", "deliver_all", "advance_1", "advance_20"]),
               max_size=40)


@given(OPS)
def test_armed_deadline_sees_every_earlier_deadline(ops):
    p = Pair()
    for op in ops:
        before = {n: p.dev(n).next_deadline() for n in "ab"}  # a full scan also resets the armed sets
        if op == "send_a":
            p.send("a", [ipv4_packet("10.0.0.1", "10.0.0.2", b"x" * 100)])
        elif op == "send_b":
            p.send("b", [ipv4_packet("10.0.0.2", "10.0.0.1", b"y" * 100)])
        elif op == "deliver_one":
            p.deliver(limit=1)
        elif op == "deliver_all":
            p.deliver()
        else:
            p.advance(1 if op == "advance_1" else 20)  # timers: the runner rescans fully after these
            continue
        for name in "ab":
            dev = p.dev(name)
            hint = dev.armed_deadline()
            after = dev.next_deadline()
            if after is not None and (before[name] is None or after < before[name]):
                assert hint == after, (op, name, before[name], hint, after)


def test_armed_deadline_is_empty_without_new_timers():
    p = Pair()
    p.send("a", [ipv4_packet("10.0.0.1", "10.0.0.2", b"x")])
    assert p.a.armed_deadline() is not None  # the initiation armed its retransmit timer
    assert p.a.armed_deadline() is None      # and the query consumed it
