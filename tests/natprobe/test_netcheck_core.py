"""The sans-I/O netcheck core: probe plans, the STUN phase driven in virtual time, and home selection."""
from __future__ import annotations

import heapq
import itertools

import pytest

from natprobe import stun
from natprobe.home import History, select_home
from natprobe.netcheck import (NetcheckConfig, NetcheckRun, State, apply_fallback, make_full_plan,
                               make_incremental_plan)
from natprobe.regions import Node, Region
from natprobe.report import Report


def region(rid: int, n_nodes: int = 1, **kw) -> Region:
    nodes = tuple(Node(f"{rid}{chr(97 + i)}", ipv4=f"198.18.{rid}.{10 + i}", ipv6=f"2001:db8:{rid}::{10 + i}")
                  for i in range(n_nodes))
    return Region(rid, f"r{rid}", f"Region {rid}", nodes, **kw)


def rand_counter():
    c = itertools.count(1)
    return lambda n: next(c).to_bytes(n, "big")


# --- plans ------------------------------------------------------------------------------------------------

def test_full_plan_three_probes_per_region_and_family_rotating_nodes():
    plan = make_full_plan([region(1, 3), region(2, 1)], have_v4=True, have_v6=True)
    assert [(s[0].region_id, s[0].family) for s in plan] == [(1, 4), (1, 6), (2, 4), (2, 6)]
    assert [(p.node, p.delay, p.dest) for p in plan[0]] == [
        ("1a", 0.0, ("198.18.1.10", 3478)), ("1b", 0.1, ("198.18.1.11", 3478)), ("1c", 0.2, ("198.18.1.12", 3478))]
    assert [p.node for p in plan[2]] == ["2a", "2a", "2a"]


def test_full_plan_skips_unmeasurable_regions_disabled_families_and_stun_less_nodes():
    no_v6 = Region(3, "c", "C", (Node("3a", ipv4="198.18.3.1", ipv6=None),))
    no_stun = Region(4, "d", "D", (Node("4a", ipv4="198.18.4.1", stun_port=None),))
    plan = make_full_plan([region(1, no_measure_no_home=True), no_v6, no_stun, Region(5, "e", "E", ())],
                          have_v4=True, have_v6=True)
    assert [(s[0].region_id, s[0].family, len(s)) for s in plan] == [(3, 4, 3)]
    assert make_full_plan([region(1)], have_v4=False, have_v6=False) == []


def test_incremental_plan_tries_and_delays():
    regions = [region(i, 2) for i in range(1, 6)]
    last = Report(region_latency={1: 0.010, 2: 0.020, 3: 0.030, 4: 0.040, 5: 0.050},
                  region_v4_latency={1: 0.010})
    plan = make_incremental_plan(regions, last, have_v4=True, have_v6=True, home=5)
    by_region = {s[0].region_id: s for s in plan if s[0].family == 4}
    assert sorted(by_region) == [1, 2, 3, 5]
    # No IPv6 result last time: only the two fastest try IPv6, once (retries are IPv4-only).
    assert [(s[0].region_id, len(s)) for s in plan if s[0].family == 6] == [(1, 1), (2, 1)]
    assert [p.delay for p in by_region[1]] == pytest.approx([0.0, 0.012])
    assert len(by_region[3]) == 1
    # Home: 4 tries at i*P + (i>1 ? i*50ms : 0), P = 1.2 x 50 ms, nodes rotating.
    assert [p.delay for p in by_region[5]] == pytest.approx([0.0, 0.06, 0.12 + 0.1, 0.18 + 0.15])
    assert [p.node for p in by_region[5]] == ["5a", "5b", "5a", "5b"]


def test_incremental_plan_avoid_and_dual_stack_alternation():
    regions = [region(1), region(2), region(3), region(4, avoid=True)]
    last = Report(region_latency={1: 0.01, 2: 0.02, 3: 0.03, 4: 0.001},
                  region_v4_latency={1: 0.01}, region_v6_latency={1: 0.01})
    plan = make_incremental_plan(regions, last, have_v4=True, have_v6=True, home=0)
    assert sorted({(s[0].region_id, s[0].family) for s in plan}) == [(1, 4), (1, 6), (2, 4), (2, 6), (3, 4)]
    plan = make_incremental_plan(regions, last, have_v4=True, have_v6=True, home=4)
    assert 4 in {s[0].region_id for s in plan}
    assert [p.delay for p in make_incremental_plan([region(9)], Report(), have_v4=True, have_v6=False,
                                                   home=0)[0]] == [0.0, 0.2]


# --- the STUN phase in virtual time ---------------------------------------------------------------------

class FakeNet:
    """Answers STUN probes after the region's round-trip time, with a NAT mapping chosen by `nat`."""

    def __init__(self, rtts: dict[int, float | None], nat: str = "cone", public="203.0.113.7"):
        self.rtts, self.nat, self.public = rtts, nat, public
        self.ports = itertools.count(40000)
        self.cone_port = 41641
        self.sent: list[tuple[float, str]] = []

    def run(self, plan, *, full=True, config=NetcheckConfig(), fail_sends=False):
        run = NetcheckRun(plan, 0.0, 1_700_000_000.0, rand_counter(), full=full, config=config)
        events: list = []
        now = 0.0
        while run.state is State.PROBING:
            deadline = run.next_deadline()
            if events and events[0][0] <= deadline:
                now, _, data, src = heapq.heappop(events)
                run.on_datagram(data, src, now)
                continue
            now = deadline
            for send in run.on_timer(now):
                self.sent.append((now, send.probe.node))
                run.on_sent(send.txid, not fail_sends)
                rtt = self.rtts.get(send.probe.region_id)
                if rtt is None or fail_sends:
                    continue
                port = self.cone_port if self.nat == "cone" else next(self.ports)
                ip = self.public if send.probe.family == 4 else "2001:db8:ff::7"
                answer = stun.binding_success(stun.parse_message(send.data), (ip, port))
                heapq.heappush(events, (now + rtt, len(self.sent), answer, send.probe.dest))
        return run, now


def test_cone_nat_full_report():
    regions = [region(1, 3), region(2, 3), region(3, 3)]
    run, end = FakeNet({1: 0.030, 2: 0.010, 3: 0.050}).run(
        make_full_plan(regions, have_v4=True, have_v6=False))
    r = run.report
    assert r.udp and r.ipv4 and r.ipv4_can_send and not r.ipv6
    assert r.global_v4 == "203.0.113.7:41641" and r.mapping_varies_by_dest_ip is False
    assert r.region_latency == pytest.approx({1: 0.030, 2: 0.010, 3: 0.050})
    assert run.done_reason == "all probes finished" and end == pytest.approx(0.050)


def test_symmetric_nat_mapping_varies():
    run, _ = FakeNet({1: 0.02, 2: 0.03}, nat="symmetric").run(
        make_full_plan([region(1), region(2)], have_v4=True, have_v6=False))
    assert run.report.mapping_varies_by_dest_ip is True
    assert sum(run.report.global_v4_counters.values()) == 2


def test_udp_blocked_ends_at_the_stun_timeout():
    config = NetcheckConfig(stun_timeout=2.0)
    run, end = FakeNet({}).run(make_full_plan([region(1), region(2)], have_v4=True, have_v6=True),
                               config=config)
    assert not run.report.udp and run.report.region_latency == {}
    assert run.done_reason == "stun timeout" and end == pytest.approx(2.0)
    assert run.report.ipv4_can_send and run.report.ipv6_can_send


def test_only_icmp_answered_no_region_is_nearest():
    """UDP blocked, no HTTPS answer, but an ICMP echo came back (from a host with no relay, 600 µs): the
    region is shown with its ICMP latency but is neither reachable nor the nearest (home) region."""
    regions = [region(1), region(2)]
    run = NetcheckRun(make_full_plan(regions, have_v4=True, have_v6=False), 0.0, 1e9, rand_counter(), full=True,
                      config=NetcheckConfig(stun_timeout=2.0))
    run.on_timer(0.0), run.on_timer(0.1), run.on_timer(0.2)     # every STUN probe goes unanswered
    run.on_timer(2.0)
    assert run.state is State.DONE and not run.report.udp
    report = run.report
    apply_fallback(report, {1: (None, 0.0006), 2: (None, None)})
    history = History()
    history.add(report, True)
    assert report.region_latency == {} and report.region_icmp_latency == {1: 0.0006} and report.icmpv4
    assert select_home(history, report) == 0
    assert report.probe_of(1) == "ICMP" and report.probe_of(2) is None
    assert history.entries[-1].latency == {}                    # nor does it enter the history
    # an HTTPS answer from region 2's DERP node does count, and wins over region 1's faster ping
    apply_fallback(report, {2: ((0.030, 4), None)})
    history.add(report, True)
    assert select_home(history, report) == 2 and report.probe_of(2) == "HTTPS"


def test_region_down_ends_by_the_enough_regions_timer():
    regions = [region(i) for i in range(1, 5)]
    run, end = FakeNet({1: 0.01, 2: 0.02, 3: 0.04, 4: None}).run(
        make_full_plan(regions, have_v4=True, have_v6=False))
    assert run.done_reason == "enough regions"
    assert end == pytest.approx(0.04 + 2 * 0.04)           # third region at 40 ms, then 2 x max latency
    assert sorted(run.report.region_latency) == [1, 2, 3]


def test_probes_that_would_not_help_are_skipped():
    # One region, both families: after the v4 and v6 answers the rest of the sets are cancelled.
    net = FakeNet({1: 0.150})
    run, _ = net.run(make_full_plan([region(1, 3)], have_v4=True, have_v6=True))
    # The 0 and 100 ms probes went out for both families; the answer at 150 ms cancels the 200 ms ones.
    assert sorted(t for t, _ in net.sent) == pytest.approx([0.0, 0.0, 0.1, 0.1])
    assert run.report.mapping_varies_by_dest_ip is None       # a single IPv4 answer decides nothing


def test_send_failures_finish_the_phase_early():
    run, end = FakeNet({1: 0.01}).run(make_full_plan([region(1)], have_v4=True, have_v6=False),
                                      fail_sends=True)
    assert run.done_reason == "all probes finished" and end == pytest.approx(0.2)
    assert not run.report.ipv4_can_send


def test_late_and_foreign_datagrams_are_ignored():
    run = NetcheckRun(make_full_plan([region(1)], have_v4=True, have_v6=False), 0.0, 0.0, rand_counter(),
                      full=True)
    sends = run.on_timer(0.0)
    assert not run.on_datagram(b"junk", ("198.18.1.10", 3478), 0.01)
    answer = stun.binding_success(stun.parse_message(sends[0].data), ("203.0.113.1", 1))
    assert not run.on_datagram(answer, ("198.18.1.99", 3478), 0.01)           # wrong source
    run.on_timer(3.0)
    assert run.state is State.DONE and not run.on_datagram(answer, ("198.18.1.10", 3478), 3.1)
    assert run.late_answers == 1 and run.report.region_latency == {}


# --- home selection ------------------------------------------------------------------------------------

def _report(at: float, lat: dict[int, float]) -> Report:
    return Report(now=at, region_latency=lat)


def choose(history: History, at: float, lat: dict[int, float], **kw) -> int:
    rep = _report(at, lat)
    history.add(rep, full=True)
    history.preferred = select_home(history, rep, **kw)
    return history.preferred


def test_home_hysteresis_holds_for_small_changes_and_switches_for_large_ones():
    h = History()
    assert choose(h, 0, {1: 0.020, 2: 0.040}) == 1
    assert choose(h, 10, {1: 0.030, 2: 0.025}) == 1       # 2 is better now, but not by 10 ms and a third
    assert choose(h, 20, {1: 0.036, 2: 0.027}) == 1       # best[1] is still 20 ms from history
    h2 = History()
    assert choose(h2, 0, {1: 0.020, 2: 0.040}) == 1
    assert choose(h2, 10, {1: 0.080, 2: 0.010}) == 2      # 70 ms faster and 8x: switch


def test_home_switch_boundaries():
    # old current latency 30 ms: a new best of 20 ms is exactly 10 ms and exactly 2/3 -> kept? 20 > 20 is false.
    h = History(preferred=1)
    rep = _report(0, {1: 0.030, 2: 0.0195})
    h.add(rep, True)
    assert select_home(h, rep) == 2
    h = History(preferred=1)
    rep = _report(0, {1: 0.030, 2: 0.0205})
    h.add(rep, True)
    assert select_home(h, rep) == 1                          # only 9.5 ms faster
    h = History(preferred=1)
    rep = _report(0, {1: 0.300, 2: 0.210})
    h.add(rep, True)
    assert select_home(h, rep) == 1                          # 90 ms faster, but not a third


def test_home_history_window_scores_and_derp_activity():
    h = History()
    choose(h, 0, {1: 0.010, 2: 0.050})
    # 306 s later the 10 ms sample has aged out, but the newest full report is always kept.
    h.add(_report(100, {1: 0.04}), full=False)
    h.prune(406)
    assert [e.at for e in h.entries] == [0]
    h = History()
    assert choose(h, 0, {1: 0.010, 2: 0.012}, scores={1: 2.0}) == 2
    h = History(preferred=3)
    rep = _report(0, {1: 0.010})
    h.add(rep, True)
    assert select_home(h, rep, derp_heard={3: 95.0}, now=100.0) == 3      # heard within 8 s: kept
    assert select_home(h, rep, derp_heard={3: 80.0}, now=100.0) == 1
    empty = _report(0, {})
    assert select_home(h, empty, derp_heard={3: 10.0}, now=100.0) == 3    # nothing measured, heard < 120 s
    assert select_home(h, empty, derp_heard={3: 10.0}, now=200.0) == 0
    assert select_home(h, rep, forced=2, derp_heard={2: 99.0}, now=100.0) == 2


def test_history_json_round_trip_and_garbage():
    from natprobe.errors import ParseError
    h = History()
    choose(h, 5, {1: 0.0123})
    again = History.from_json(h.to_json())
    assert again.preferred == 1 and again.entries[0].latency == pytest.approx({1: 0.0123})
    with pytest.raises(ParseError):
        History.from_json({"Reports": [{"At": "x"}]})


# --- properties ----------------------------------------------------------------------------------------

from hypothesis import given, strategies as st  # noqa: E402


@given(st.lists(st.tuples(st.sampled_from(["timer", "datagram", "answer", "sent-fail"]),
                          st.floats(0, 0.5), st.binary(max_size=48)), max_size=40))
def test_run_never_raises_and_always_ends_by_the_timeout(events):
    regions = [region(1, 2), region(2, 1)]
    run = NetcheckRun(make_full_plan(regions, have_v4=True, have_v6=True), 0.0, 0.0, rand_counter(), full=True,
                      config=NetcheckConfig(stun_timeout=2.0))
    now, outstanding = 0.0, []
    for kind, step, data in events:
        now += step
        if kind == "timer":
            outstanding += run.on_timer(now)
        elif kind == "datagram":
            run.on_datagram(data, ("198.18.1.10", 3478), now)
        elif kind == "answer" and outstanding:
            send = outstanding.pop(0)
            run.on_datagram(stun.binding_success(stun.parse_message(send.data), ("203.0.113.9", int(step * 1000))),
                            send.probe.dest, now)
        elif kind == "sent-fail" and outstanding:
            run.on_sent(outstanding.pop().txid, False)
        deadline = run.next_deadline()
        assert run.state is State.DONE or deadline is not None and deadline <= 2.0
    run.on_timer(max(now, 2.0))
    assert run.state is State.DONE and run.next_deadline() is None
    assert all(0 <= lat <= 2.0 for lat in run.report.region_latency.values())
    assert set(run.report.region_latency) <= {1, 2}


reports = st.builds(
    Report, now=st.floats(0, 4e9).map(lambda t: round(t, 6)), udp=st.booleans(), ipv4=st.booleans(),
    mapping_varies_by_dest_ip=st.none() | st.booleans(), upnp=st.none() | st.booleans(),
    preferred_derp=st.integers(0, 2**31),
    region_latency=st.dictionaries(st.integers(1, 2**31), st.integers(1, 10**10).map(lambda ns: ns / 1e9)),
    region_icmp_latency=st.dictionaries(st.integers(1, 2**31), st.integers(1, 10**10).map(lambda ns: ns / 1e9)),
    global_v4=st.sampled_from(["", "203.0.113.7:41641"]),
    global_v4_counters=st.dictionaries(st.sampled_from(["1.2.3.4:5", "[2001:db8::1]:7"]), st.integers(1, 99)))


@given(reports)
def test_report_json_round_trip(report):
    data = report.to_json()
    assert Report.from_json(data).to_json() == data
