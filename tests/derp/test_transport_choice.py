"""The DERP client's transport choice (derp/transport_choice.py, docs/derp-quic.md) with stepped time: the
order per node and UDP knowledge, QUIC's backoff (30 s doubling to 5 min, reset after a healthy link), the
background retry, and the stall watch; hypothesis properties on arbitrary event sequences."""
from __future__ import annotations

from hypothesis import given, strategies as st

from derp.transport_choice import (QUIC, UDP, UPGRADE, WEBSOCKET, ChoiceConfig, StallWatch, TransportChoice,
                                   Verdict)

TCP_ORDER = (UPGRADE, WEBSOCKET)
QUIC_ORDER = (QUIC, UPGRADE, WEBSOCKET)


def test_order_follows_the_node_field_and_udp() -> None:
    assert TransportChoice(True, udp=UDP.WORKS).order(0.0) == QUIC_ORDER
    assert TransportChoice(False, udp=UDP.WORKS).order(0.0) == TCP_ORDER   # no field: never QUIC
    assert TransportChoice(True, udp=UDP.BLOCKED).order(0.0) == TCP_ORDER
    assert TransportChoice(True, udp=UDP.UNKNOWN).order(0.0) == TCP_ORDER  # TCP first, QUIC in the background


def test_background_quic_only_where_allowed() -> None:
    assert TransportChoice(True, udp=UDP.UNKNOWN).background_at(5.0, UPGRADE) == 5.0   # at once
    assert TransportChoice(True, udp=UDP.WORKS).background_at(5.0, WEBSOCKET) == 5.0
    assert TransportChoice(True, udp=UDP.WORKS).background_at(5.0, QUIC) is None      # already on QUIC
    assert TransportChoice(True, udp=UDP.WORKS).background_at(5.0, "") is None        # not connected
    assert TransportChoice(True, udp=UDP.BLOCKED).background_at(5.0, UPGRADE) is None
    assert TransportChoice(False, udp=UDP.WORKS).background_at(5.0, UPGRADE) is None


def test_forced_transport_is_the_only_one() -> None:
    for forced in (QUIC, UPGRADE, WEBSOCKET):
        c = TransportChoice(True, forced=forced, udp=UDP.BLOCKED)
        assert c.order(0.0) == (forced,) and c.background_at(0.0, UPGRADE) is None
        c.on_quic_failed(0.0)
        assert c.order(1.0) == (forced,)


def test_backoff_doubles_to_five_minutes_and_resets_after_a_healthy_link() -> None:
    c = TransportChoice(True, udp=UDP.WORKS)
    now, waits = 0.0, []
    for _ in range(7):
        c.on_quic_failed(now)
        assert c.order(now) == TCP_ORDER
        assert c.order(c.retry_at - 0.001) == TCP_ORDER and c.order(c.retry_at) == QUIC_ORDER
        waits.append(c.retry_at - now)
        now = c.retry_at
    assert waits == [30.0, 60.0, 120.0, 240.0, 300.0, 300.0, 300.0]
    c.on_quic_up(now)
    c.on_quic_down(now + 10.0, failed=True)          # short-lived: still backing off
    assert c.retry_at - (now + 10.0) == 300.0
    now += 400.0
    c.on_quic_up(now)
    c.on_quic_down(now + 60.0, failed=True)          # lasted healthy_after: starts over at 30 s
    assert c.retry_at == now + 60.0 + 30.0 and c.failures == 1


def test_restarting_is_no_failure() -> None:
    c = TransportChoice(True, udp=UDP.WORKS)
    c.on_quic_up(0.0)
    c.on_quic_down(1.0, failed=False)
    assert c.order(1.0) == QUIC_ORDER and c.retry_at is None


def test_background_retry_waits_for_the_backoff() -> None:
    c = TransportChoice(True, udp=UDP.WORKS)
    c.on_quic_failed(100.0)
    assert c.background_at(101.0, UPGRADE) == 130.0
    assert c.background_at(200.0, UPGRADE) == 200.0
    assert c.set_udp(UDP.BLOCKED) and c.background_at(200.0, UPGRADE) is None
    assert not c.set_udp(UDP.BLOCKED)
    assert c.set_udp(UDP.WORKS) and c.background_at(101.0, UPGRADE) == 130.0   # the backoff is kept


def test_stall_watch_quiet_link_and_busy_link() -> None:
    cfg = ChoiceConfig()
    w = StallWatch(0.0, cfg)
    assert w.tick(0.0, 0, 0) is Verdict.OK
    # idle: no probe before idle_probe
    t = 0.0
    while t < cfg.idle_probe - 0.01:
        t = w.next_deadline(t)
        if t >= cfg.idle_probe:
            break
        assert t > 0 and w.tick(t, 0, 0) is Verdict.OK
    assert w.tick(cfg.idle_probe, 0, 0) is Verdict.PROBE
    w.on_heard(cfg.idle_probe + 0.05)                 # the Pong
    assert w.probe_at is None
    # packets flow both ways: never a probe
    w2, sent, recv, t = StallWatch(0.0, cfg), 0, 0, 0.0
    w2.tick(0.0, 0, 0)
    for _ in range(200):
        t = w2.next_deadline(t)
        sent, recv = sent + 10, recv + 10
        assert w2.tick(t, sent, recv) is Verdict.OK
    assert t > 50.0


def test_stall_watch_blackholed_link_is_a_stall_within_seconds() -> None:
    cfg = ChoiceConfig()
    w = StallWatch(0.0, cfg)
    w.tick(0.0, 0, 0)
    t, sent, verdicts = 0.0, 0, []
    while not verdicts or verdicts[-1] is not Verdict.STALLED:
        t = w.next_deadline(t)
        sent += 5                                    # we keep sending, nothing comes back
        verdicts.append(w.tick(t, sent, 0))
        assert t < 20.0
    assert verdicts.count(Verdict.PROBE) == 1
    assert t <= 1.5 * cfg.probe_after + cfg.stall_after + 1e-9


def test_stall_watch_answered_probe_is_no_stall() -> None:
    w = StallWatch(0.0)
    w.tick(0.0, 0, 0)
    assert w.tick(1.0, 3, 0) is Verdict.PROBE
    w.on_heard(1.2)
    assert w.tick(w.next_deadline(1.2), 3, 0) is Verdict.OK
    assert w.tick(4.5, 3, 1) is Verdict.OK           # a packet received is progress too


events = st.lists(st.tuples(st.sampled_from(["fail", "up", "down", "down_ok", "udp_w", "udp_b", "udp_u"]),
                            st.floats(0, 1000, allow_nan=False)), max_size=40)


@given(st.booleans(), events)
def test_choice_properties(speaks: bool, evs) -> None:
    """Whatever happens: TCP is always in the order of "auto", QUIC never for a node without the field or
    with UDP blocked, the backoff stays within [30 s, 5 min], and a background time is never in the past."""
    c = TransportChoice(speaks)
    now = 0.0
    for kind, step in evs:
        now += step
        if kind == "fail":
            c.on_quic_failed(now)
        elif kind == "up":
            c.on_quic_up(now)
        elif kind in ("down", "down_ok"):
            c.on_quic_down(now, failed=kind == "down")
        else:
            c.set_udp({"udp_w": UDP.WORKS, "udp_b": UDP.BLOCKED, "udp_u": UDP.UNKNOWN}[kind])
        order = c.order(now)
        assert UPGRADE in order and order[-1] == WEBSOCKET
        if QUIC in order:
            assert speaks and c.udp is UDP.WORKS and order[0] == QUIC
        if c.retry_at is not None and kind == "fail":
            assert 30.0 - 1e-6 <= c.retry_at - now <= 300.0 + 1e-6
        for link in (UPGRADE, WEBSOCKET):
            at = c.background_at(now, link)
            assert at is None or at >= now
            assert (at is None) == (not speaks or c.udp is UDP.BLOCKED)


@given(st.lists(st.tuples(st.floats(0.0, 5.0, allow_nan=False), st.integers(0, 3), st.integers(0, 3),
                          st.booleans()), max_size=60))
def test_stall_watch_properties(steps) -> None:
    """The next tick is always in the future; a stall only follows a probe unanswered for stall_after."""
    cfg = ChoiceConfig()
    w = StallWatch(0.0, cfg)
    now, sent, recv = 0.0, 0, 0
    for dt, ds, dr, pong in steps:
        now += dt
        sent, recv = sent + ds, recv + dr
        probe_before = w.probe_at
        verdict = w.tick(now, sent, recv)
        if verdict is Verdict.STALLED:
            assert probe_before is not None and now - probe_before >= cfg.stall_after and dr == 0
            return
        assert w.next_deadline(now) > now
        if pong:
            w.on_heard(now)


def test_stall_watch_one_way_sender_is_probed_once_a_second_and_a_blackhole_found_fast() -> None:
    """A client that only sends (the relay never sends back) is kept alive by answered probes; when the
    answers stop, the stall comes within probe_after + stall_after of the last answer (plus a tick)."""
    cfg = ChoiceConfig()
    w = StallWatch(0.0, cfg)
    w.tick(0.0, 0, 0)
    t, sent, probes = 0.0, 0, 0
    while t < 30.0:                               # answered probes: never a stall
        t = w.next_deadline(t)
        sent += 10
        verdict = w.tick(t, sent, 0)
        assert verdict is not Verdict.STALLED
        if verdict is Verdict.PROBE:
            probes += 1
            w.on_heard(t + 0.01, sent)            # the Pong, 10 ms later
    assert 15 <= probes <= 31
    last_answer = w.heard_at
    while True:                                   # now nothing answers
        t = w.next_deadline(max(t, last_answer))
        sent += 10
        if w.tick(t, sent, 0) is Verdict.STALLED:
            break
    assert t - last_answer <= cfg.probe_after + cfg.probe_after / 2 + cfg.stall_after + 1e-9
