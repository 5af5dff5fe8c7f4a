"""Home ("preferred DERP") region selection with hysteresis, over a history of recent reports (netcheck.md §8).

Rules:
- history keeps the reports of the last 5 min 5 s (by their wall time), plus the newest full one;
- best[r] = the smallest latency of region r across the history, times the region's score (if > 0);
- the candidate is the region with the smallest best[r] among those with a latency in the current report;
- stickiness: switching away from a still reachable previous home (current latency, or a DERP frame heard
  within 8 s) happens only when the candidate is at least 10 ms AND more than a third faster than the old
  home's current latency; a reachable old home without a current sample is always kept;
- a forced region wins when it has a sample or recent DERP activity; if nothing could be chosen but the old
  home sent DERP frames within 120 s, it is kept.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from natprobe import constants as C
from natprobe.errors import ParseError
from natprobe.report import Report

RECENT_DERP_FRAME = C.HOME_RECENT_DERP_FRAME
KEEP_OLD_IF_HEARD_WITHIN = C.HOME_KEEP_IF_HEARD_WITHIN


@dataclass
class HistoryEntry:
    at: float                      # wall time of the report
    full: bool
    latency: dict[int, float]      # region id -> seconds


@dataclass
class History:
    """Reports kept between runs, and the current home region."""

    entries: list[HistoryEntry] = field(default_factory=list)
    preferred: int = 0
    last: Report | None = None     # the newest report of this process (plans incremental reports)

    def add(self, report: Report, full: bool) -> None:
        self.entries.append(HistoryEntry(report.now, full, dict(report.region_latency)))
        self.last = report
        self.prune(report.now)

    def prune(self, now: float) -> None:
        keep = [e for e in self.entries if now - e.at <= C.HISTORY_WINDOW]
        fulls = [e for e in self.entries if e.full]
        if fulls and not any(e.full for e in keep):
            keep.insert(0, max(fulls, key=lambda e: e.at))
        self.entries = keep

    def last_full_at(self) -> float | None:
        return max((e.at for e in self.entries if e.full), default=None)

    def best(self, scores: Mapping[int, float] | None = None) -> dict[int, float]:
        best: dict[int, float] = {}
        for entry in self.entries:
            for rid, lat in entry.latency.items():
                if rid not in best or lat < best[rid]:
                    best[rid] = lat
        return {rid: lat * _score(scores, rid) for rid, lat in best.items()}

    def to_json(self) -> dict[str, Any]:
        return {"Preferred": self.preferred,
                "Reports": [{"At": e.at, "Full": e.full,
                             "Latency": {str(k): int(round(v * 1e9)) for k, v in e.latency.items()}}
                            for e in self.entries]}

    @classmethod
    def from_json(cls, data: Any) -> "History":
        try:
            entries = [HistoryEntry(float(e["At"]), bool(e["Full"]),
                                    {int(k): int(v) / 1e9 for k, v in e["Latency"].items()})
                       for e in data.get("Reports", [])]
            return cls(entries, int(data.get("Preferred", 0)))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ParseError(f"not a netcheck history: {exc}") from exc


def _score(scores: Mapping[int, float] | None, rid: int) -> float:
    value = (scores or {}).get(rid, 1.0)
    return value if value > 0 else 1.0


def select_home(history: History, current: Report, *, scores: Mapping[int, float] | None = None,
                derp_heard: Mapping[int, float] | None = None, now: float | None = None,
                report_start: float | None = None, forced: int = 0) -> int:
    """The preferred region after `current` (which must already be in `history`).

    `derp_heard` maps region id -> time of the last DERP frame from it (same clock as `now`/`report_start`).
    """
    heard = derp_heard or {}
    old = history.preferred

    def heard_recently(rid: int, within: float) -> bool:
        if rid not in heard or now is None:
            return False
        return (report_start is not None and heard[rid] >= report_start) or now - heard[rid] <= within

    best = history.best(scores)
    pref, best_any = 0, float("inf")
    for rid in sorted(current.region_latency):
        value = best.get(rid, current.region_latency[rid] * _score(scores, rid))
        if value < best_any:
            pref, best_any = rid, value
    if pref == 0 and old and heard_recently(old, KEEP_OLD_IF_HEARD_WITHIN):
        pref = old
    old_lat = current.region_latency.get(old, 0.0) * _score(scores, old)
    reachable = old_lat != 0.0 or heard_recently(old, RECENT_DERP_FRAME)
    if old and pref != old and pref != 0 and reachable:
        if old_lat == 0.0 or old_lat - best_any < C.HOME_SWITCH_MIN_GAIN or best_any > old_lat * C.HOME_SWITCH_FACTOR:
            pref = old
    if forced and (forced in current.region_latency or heard_recently(forced, RECENT_DERP_FRAME)):
        pref = forced
    return pref
