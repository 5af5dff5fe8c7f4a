"""Sans-I/O netcheck core: the probe plan (full and incremental) and the STUN phase of one report.

Rules (netcheck.md §3-§5):
- A plan is a list of probe sets, one per (region, family); a probe is sent at its delay after the start.
- When a probe of a set gets an answer, the set's other probes are cancelled (late answers ignored).
- Before sending, a probe that "would not help" cancels its set: its region already has a latency AND
  (IPv6) some IPv6 result exists AND (IPv4) MappingVariesByDestIP is decided.
- The phase ends (state DONE, with a reason) at the first of: `stun_timeout` after the start; every set
  answered, cancelled or failed to send; or the "enough regions" timer, started when the number of regions
  with a latency reaches `enough_regions`, for the largest latency so far (x2 for full reports).
- IPv4: the first answer's mapping is GlobalV4; a later different one makes MappingVariesByDestIP true
  (sticky), an equal one false if undecided. IPv6: GlobalV6 is the latest. Every answer is counted.
Time comes in as `now`; transaction ids from the injected `rand`.
- The HTTPS/ICMP fallback (§6) is merged by `apply_fallback`: an HTTPS answer came from the region's DERP
  node and is a latency of the region; an ICMP echo answer is kept apart (`Report.region_icmp_latency`) and
  never makes a region reachable or nearest (natprobe/report.py).
"""
from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

from natprobe import constants as C
from natprobe.regions import Region
from natprobe.report import HTTPS, Report, hostport
from natprobe.transaction import BindingSucceeded, RetransmitConfig, SendDatagram, Transactions

log = logging.getLogger("natprobe.netcheck")
Addr = tuple[str, int]


@dataclass(frozen=True)
class Probe:
    region_id: int
    node: str
    family: int          # 4 or 6
    delay: float         # seconds after the start of the report
    dest: Addr


@dataclass(frozen=True)
class NetcheckConfig:
    stun_timeout: float = C.STUN_PHASE_TIMEOUT
    enough_regions: int = C.ENOUGH_REGIONS
    full_spacing: float = C.INITIAL_RETRANSMIT
    default_spacing: float = C.DEFAULT_RETRANSMIT


@dataclass(frozen=True)
class SendStun:
    """Output: send `data` from the socket of `probe.family` to `probe.dest`, then call `on_sent`."""
    probe: Probe
    txid: bytes
    data: bytes


class State(enum.Enum):
    PROBING = "probing"
    DONE = "done"


def _probe(region: Region, index: int, family: int, delay: float) -> Probe | None:
    node = region.nodes[index % len(region.nodes)]
    ip = node.addr(family)
    if ip is None or node.stun_port is None:
        return None
    return Probe(region.region_id, node.name, family, delay, (ip, node.stun_port))


def make_full_plan(regions: Iterable[Region], *, have_v4: bool, have_v6: bool,
                   config: NetcheckConfig = NetcheckConfig()) -> list[list[Probe]]:
    """§3.1: every measurable region, each family the host has: 3 probes at 0/100/200 ms to Nodes[0..2]."""
    plan: list[list[Probe]] = []
    for region in regions:
        if not region.measurable:
            continue
        for family, have in ((4, have_v4), (6, have_v6)):
            if not have:
                continue
            probes = [_probe(region, i, family, i * config.full_spacing) for i in range(C.PROBES_PER_SET_FULL)]
            probes = [p for p in probes if p is not None]
            if probes:
                plan.append(probes)
    return plan


def make_incremental_plan(regions: Iterable[Region], last: Report, *, have_v4: bool, have_v6: bool,
                          home: int, config: NetcheckConfig = NetcheckConfig()) -> list[list[Probe]]:
    """§3.2: the 3 fastest regions of the last report plus the home region, with extra tries for both."""
    if not (have_v4 or have_v6):
        return []
    candidates = [r for r in regions if r.measurable and (not r.avoid or r.region_id == home)]
    lat = last.region_latency
    candidates.sort(key=lambda r: (r.region_id not in lat, lat.get(r.region_id, 0.0), r.region_id))
    chosen = candidates[:C.INCREMENTAL_REGIONS]
    chosen += [r for r in candidates[C.INCREMENTAL_REGIONS:] if r.region_id == home]
    had4, had6 = bool(last.region_v4_latency), bool(last.region_v6_latency)
    had_both = have_v6 and had4 and had6
    plan: list[list[Probe]] = []
    for rank, region in enumerate(chosen):
        do4, do6 = have_v4, have_v6
        fastest_two = rank < 2
        tries = 2 if fastest_two else 1
        if not fastest_two and had_both:
            do4, do6 = rank % 2 == 0, rank % 2 == 1
        if not fastest_two and not had6:
            do6 = False
        if region.region_id == home:
            tries = 4
        last_lat = lat.get(region.region_id)
        spacing = C.INCREMENTAL_SPACING_FACTOR * last_lat if last_lat else config.default_spacing
        sets: dict[int, list[Probe]] = {4: [], 6: []}
        for attempt in range(tries):
            delay = attempt * spacing + (attempt * C.INCREMENTAL_EXTRA_SPACING if attempt > 1 else 0.0)
            for family, wanted in ((4, do4), (6, do6 and (attempt == 0 or had6))):
                probe = _probe(region, attempt, family, delay) if wanted else None
                if probe is not None:
                    sets[family].append(probe)
        plan += [s for s in (sets[4], sets[6]) if s]
    return plan


@dataclass
class _Set:
    probes: list[Probe]
    finished: bool = False


class NetcheckRun:
    """The STUN phase of one report. Drive it with `on_timer`, `on_datagram` and `on_sent`."""

    def __init__(self, plan: list[list[Probe]], now: float, wall_now: float, rand: Callable[[int], bytes], *,
                 full: bool, config: NetcheckConfig = NetcheckConfig()) -> None:
        self.start = now
        self.full = full
        self.config = config
        self.report = Report(now=wall_now)
        self.state = State.PROBING
        self.done_reason = ""
        self._sets = [_Set(list(s)) for s in plan]
        self._queue = sorted(((p.delay, i, j) for i, s in enumerate(plan) for j, p in enumerate(s)),
                             reverse=True)
        self._txns = Transactions(rand, RetransmitConfig(rto=config.stun_timeout, rc=1, rm=1))
        self._outstanding: dict[bytes, tuple[int, Probe]] = {}
        self._sent: dict[int, int] = {}          # set index -> probes sent and not failed
        self._enough_at: float | None = None
        self.late_answers = 0
        if not self._sets:
            self._finish("nothing to probe")

    # -- timing --
    def next_deadline(self) -> float | None:
        if self.state is State.DONE:
            return None
        deadlines = [self.start + self.config.stun_timeout]
        if self._queue:
            deadlines.append(self.start + self._queue[-1][0])
        if self._enough_at is not None:
            deadlines.append(self._enough_at)
        return min(deadlines)

    def on_timer(self, now: float) -> list[SendStun]:
        if self.state is State.DONE:
            return []
        if now >= self.start + self.config.stun_timeout:
            self._finish("stun timeout")
            return []
        if self._enough_at is not None and now >= self._enough_at:
            self._finish("enough regions")
            return []
        out: list[SendStun] = []
        while self._queue and self.start + self._queue[-1][0] <= now:
            _, i, j = self._queue.pop()
            send = self._maybe_send(i, self._sets[i].probes[j], now)
            if send is not None:
                out.append(send)
        self._check_all_finished()
        return out

    def _maybe_send(self, index: int, probe: Probe, now: float) -> SendStun | None:
        pset = self._sets[index]
        if pset.finished:
            return None
        if not self._would_help(probe):
            self._cancel_set(index)
            return None
        txid, outputs = self._txns.start(probe.dest, now)
        assert isinstance(outputs[0], SendDatagram)
        self._outstanding[txid] = (index, probe)
        self._sent[index] = self._sent.get(index, 0) + 1
        return SendStun(probe, txid, outputs[0].data)

    def _would_help(self, probe: Probe) -> bool:
        r = self.report
        if probe.region_id not in r.region_latency:
            return True
        if probe.family == 6 and not r.region_v6_latency:
            return True
        if probe.family == 4 and r.mapping_varies_by_dest_ip is None:
            return True
        return False

    def _cancel_set(self, index: int) -> None:
        self._sets[index].finished = True
        for txid, (i, _) in list(self._outstanding.items()):
            if i == index:
                del self._outstanding[txid]
                self._txns.cancel(txid)

    def _check_all_finished(self) -> None:
        if self.state is State.PROBING and all(s.finished for s in self._sets):
            self._finish("all probes finished")

    def _finish(self, reason: str) -> None:
        if self.state is State.DONE:
            return
        log.debug("netcheck STUN phase: %s -> %s (%s)", self.state.value, State.DONE.value, reason)
        self.state = State.DONE
        self.done_reason = reason
        self._queue.clear()

    # -- inputs --
    def on_sent(self, txid: bytes, ok: bool) -> None:
        """Result of carrying out a SendStun: ok sets IPv4CanSend/IPv6CanSend; a failure ends that probe."""
        entry = self._outstanding.get(txid)
        if entry is None:
            return
        index, probe = entry
        if ok:
            if probe.family == 4:
                self.report.ipv4_can_send = True
            else:
                self.report.ipv6_can_send = True
            return
        del self._outstanding[txid]
        self._txns.cancel(txid)
        self._sent[index] -= 1
        if self._sent[index] == 0 and not any(q[1] == index for q in self._queue):
            self._sets[index].finished = True
            self._check_all_finished()

    def on_datagram(self, data: bytes, source: Addr, now: float) -> bool:
        """Feed a datagram from a probe socket; True if it answered an outstanding probe."""
        if self.state is State.PROBING and (now >= self.start + self.config.stun_timeout or
                                            self._enough_at is not None and now >= self._enough_at):
            self._finish("stun timeout" if now >= self.start + self.config.stun_timeout else "enough regions")
        if self.state is State.DONE:
            self.late_answers += 1
            return False
        events = self._txns.on_datagram(data, source, now)
        if not events or not isinstance(events[0], BindingSucceeded):
            return False
        event = events[0]
        index, probe = self._outstanding.pop(event.txid)
        self._record(probe, event.mapped, event.rtt, now)
        self._cancel_set(index)
        self._check_all_finished()
        return True

    def _record(self, probe: Probe, mapped: Addr, rtt: float, now: float) -> None:
        r = self.report
        r.udp = True
        ipport = hostport(*mapped)
        if probe.family == 4:
            r.ipv4 = True
            if not r.global_v4:
                r.global_v4 = ipport
            elif ipport != r.global_v4:
                r.mapping_varies_by_dest_ip = True
            elif r.mapping_varies_by_dest_ip is None:
                r.mapping_varies_by_dest_ip = False
            r.global_v4_counters[ipport] = r.global_v4_counters.get(ipport, 0) + 1
        else:
            r.ipv6 = True
            r.global_v6 = ipport
            r.global_v6_counters[ipport] = r.global_v6_counters.get(ipport, 0) + 1
        r.add_latency(probe.region_id, rtt, probe.family)
        if len(r.region_latency) == self.config.enough_regions and self._enough_at is None:
            wait = max(r.region_latency.values()) * (2 if self.full else 1)
            self._enough_at = now + wait

    @property
    def drops(self):
        return self._txns.drops


FallbackResult = tuple["tuple[float, int] | None", "float | None"]   # (HTTPS (latency, family), ICMP latency)


def apply_fallback(report: Report, results: Mapping[int, FallbackResult]) -> None:
    """Merge the UDP-blocked fallback's results (region id -> (HTTPS (latency, family) or None, ICMP
    latency or None)) into the report."""
    for rid, (https, icmp_lat) in results.items():
        if https is not None:
            latency, family = https
            report.add_latency(rid, latency, None, HTTPS)
            if family == 4:
                report.ipv4 = True
            else:
                report.ipv6 = True
        if icmp_lat is not None:
            report.add_icmp_latency(rid, icmp_lat)
            report.ipv4 = True
