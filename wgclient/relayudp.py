"""What netcheck says of UDP to each DERP region, for the DERP clients' transport choice (docs/derp-quic.md):
a region whose STUN answered works over UDP (QUIC first); a region measured without a STUN answer is
blocked (TCP, no QUIC tries); a region this report did not probe keeps what the last one said.

Pure: a netcheck report (natprobe.report.Report, read by its fields) in, `derp.transport_choice.UDP` per
region out.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from derp.transport_choice import UDP


def udp_by_region(report: Any, regions: Iterable[int], previous: Mapping[int, UDP], full: bool) -> dict[int, UDP]:
    """`full`: the report probed every measurable region, so an unanswered one is blocked.
    A report without any STUN answer (`udp` false) means UDP is blocked everywhere."""
    answered = set(report.region_v4_latency) | set(report.region_v6_latency)
    out: dict[int, UDP] = {}
    for rid in regions:
        if rid in answered:
            out[rid] = UDP.WORKS
        elif not report.udp or full:
            out[rid] = UDP.BLOCKED
        else:
            out[rid] = previous.get(rid, UDP.UNKNOWN)
    return out


__all__ = ["udp_by_region"]
