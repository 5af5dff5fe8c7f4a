"""The netcheck `Report`: its fields, its stable JSON form (Go field names, nanoseconds) and the human text.

JSON schema (netcheck.md §1; documented in docs/natprobe.md): `Now` RFC 3339 UTC; `UDP`, `IPv4`, `IPv6`,
`IPv4CanSend`, `IPv6CanSend`, `OSHasIPv6`, `ICMPv4` booleans; `MappingVariesByDestIP`, `UPnP`, `PMP`,
`PCP`, `CaptivePortal` true/false/null; `PreferredDERP` int; `RegionLatency`, `RegionV4Latency`,
`RegionV6Latency` maps of decimal region id -> integer nanoseconds; `GlobalV4`, `GlobalV6` "ip:port"
strings ("" when unknown); `GlobalV4Counters`, `GlobalV6Counters` maps of "ip:port" -> count.

What counts as a region's latency (the rule that decides the nearest region): only a probe that reached the
region's relay service, a STUN answer or an HTTPS answer from its DERP node. An ICMP echo answer only shows
that the node's address is up (any host may answer it, relay or not), so unlike Tailscale it is kept apart:
`RegionICMPLatency` (same form) holds it, and it never enters `RegionLatency`, the history or the choice of
the nearest region. `RegionLatencyProbe` maps region id -> "STUN" or "HTTPS", the probe that measured its
`RegionLatency`; both are additions to Tailscale's schema.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any

from natprobe.errors import ParseError
from natprobe.regions import Region


STUN, HTTPS, ICMP = "STUN", "HTTPS", "ICMP"
RELAY_PROBES = (STUN, HTTPS)


def hostport(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


@dataclass
class Report:
    """What netcheck learned in one run. Latencies are in seconds; `now` is Unix wall time."""

    now: float = 0.0
    udp: bool = False
    ipv4: bool = False
    ipv6: bool = False
    ipv4_can_send: bool = False
    ipv6_can_send: bool = False
    os_has_ipv6: bool = False
    icmpv4: bool = False
    mapping_varies_by_dest_ip: bool | None = None
    upnp: bool | None = None
    pmp: bool | None = None
    pcp: bool | None = None
    preferred_derp: int = 0
    region_latency: dict[int, float] = field(default_factory=dict)
    region_v4_latency: dict[int, float] = field(default_factory=dict)
    region_v6_latency: dict[int, float] = field(default_factory=dict)
    global_v4: str = ""
    global_v6: str = ""
    global_v4_counters: dict[str, int] = field(default_factory=dict)
    global_v6_counters: dict[str, int] = field(default_factory=dict)
    captive_portal: bool | None = None
    region_probe: dict[int, str] = field(default_factory=dict)         # region -> "STUN" | "HTTPS"
    region_icmp_latency: dict[int, float] = field(default_factory=dict)  # echo answers: never "nearest"

    def add_latency(self, region_id: int, latency: float, family: int | None, probe: str = STUN) -> None:
        """Record one latency sample of a probe that reached the region's relay (STUN with family 4/6,
        HTTPS with family None); keeps minima (§4) and which probe measured each."""
        if probe not in RELAY_PROBES:
            raise ValueError(f"{probe!r} does not reach a relay: use add_icmp_latency")
        if region_id not in self.region_latency or latency < self.region_latency[region_id]:
            self.region_latency[region_id] = latency
            self.region_probe[region_id] = probe
        table = self.region_v4_latency if family == 4 else self.region_v6_latency if family == 6 else None
        if table is not None and (region_id not in table or latency < table[region_id]):
            table[region_id] = latency

    def add_icmp_latency(self, region_id: int, latency: float) -> None:
        """An ICMPv4 echo answer from a region's node: shown, but it does not make the region reachable."""
        if region_id not in self.region_icmp_latency or latency < self.region_icmp_latency[region_id]:
            self.region_icmp_latency[region_id] = latency
        self.icmpv4 = True

    def probe_of(self, region_id: int) -> str | None:
        """Which probe measured the latency shown for a region: STUN, HTTPS, ICMP, or None (no answer)."""
        if region_id in self.region_latency:
            return self.region_probe.get(region_id, STUN)
        return ICMP if region_id in self.region_icmp_latency else None

    def to_json(self) -> dict[str, Any]:
        def ns(table: dict[int, float]) -> dict[str, int]:
            return {str(k): int(round(v * 1e9)) for k, v in sorted(table.items())}
        when = _dt.datetime.fromtimestamp(self.now, _dt.timezone.utc)
        stamp = when.strftime("%Y-%m-%dT%H:%M:%S")
        frac = f"{when.microsecond:06d}".rstrip("0")      # RFC 3339 with Go's trailing-zero trimming
        return {
            "Now": stamp + (f".{frac}" if frac else "") + "Z",
            "UDP": self.udp, "IPv4": self.ipv4, "IPv6": self.ipv6,
            "IPv4CanSend": self.ipv4_can_send, "IPv6CanSend": self.ipv6_can_send,
            "OSHasIPv6": self.os_has_ipv6, "ICMPv4": self.icmpv4,
            "MappingVariesByDestIP": self.mapping_varies_by_dest_ip,
            "UPnP": self.upnp, "PMP": self.pmp, "PCP": self.pcp,
            "PreferredDERP": self.preferred_derp,
            "RegionLatency": ns(self.region_latency),
            "RegionV4Latency": ns(self.region_v4_latency),
            "RegionV6Latency": ns(self.region_v6_latency),
            "GlobalV4": self.global_v4, "GlobalV6": self.global_v6,
            "GlobalV4Counters": dict(self.global_v4_counters),
            "GlobalV6Counters": dict(self.global_v6_counters),
            "CaptivePortal": self.captive_portal,
            "RegionLatencyProbe": {str(k): self.region_probe.get(k, STUN) for k in sorted(self.region_latency)},
            "RegionICMPLatency": ns(self.region_icmp_latency),
        }

    @classmethod
    def from_json(cls, data: Any) -> "Report":
        """Inverse of `to_json` (used for the history file); raises ParseError on a malformed object."""
        try:
            def lat(key: str) -> dict[int, float]:
                return {int(k): int(v) / 1e9 for k, v in (data.get(key) or {}).items()}

            def tri(key: str) -> bool | None:
                value = data.get(key)
                if value is not None and not isinstance(value, bool):
                    raise TypeError(f"{key} must be true, false or null")
                return value
            when = _dt.datetime.fromisoformat(str(data["Now"]).replace("Z", "+00:00"))
            return cls(
                now=when.timestamp(), udp=bool(data.get("UDP")), ipv4=bool(data.get("IPv4")),
                ipv6=bool(data.get("IPv6")), ipv4_can_send=bool(data.get("IPv4CanSend")),
                ipv6_can_send=bool(data.get("IPv6CanSend")), os_has_ipv6=bool(data.get("OSHasIPv6")),
                icmpv4=bool(data.get("ICMPv4")), mapping_varies_by_dest_ip=tri("MappingVariesByDestIP"),
                upnp=tri("UPnP"), pmp=tri("PMP"), pcp=tri("PCP"),
                preferred_derp=int(data.get("PreferredDERP") or 0),
                region_latency=lat("RegionLatency"), region_v4_latency=lat("RegionV4Latency"),
                region_v6_latency=lat("RegionV6Latency"),
                global_v4=str(data.get("GlobalV4") or ""), global_v6=str(data.get("GlobalV6") or ""),
                global_v4_counters={str(k): int(v) for k, v in (data.get("GlobalV4Counters") or {}).items()},
                global_v6_counters={str(k): int(v) for k, v in (data.get("GlobalV6Counters") or {}).items()},
                captive_portal=tri("CaptivePortal"),
                region_probe={int(k): _probe(v) for k, v in (data.get("RegionLatencyProbe") or {}).items()},
                region_icmp_latency=lat("RegionICMPLatency"))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ParseError(f"not a netcheck report: {exc}") from exc


def _probe(name) -> str:
    if name not in RELAY_PROBES:
        raise ValueError(f"RegionLatencyProbe holds {str(name)[:20]!r}")
    return name


# --- human output (netcheck.md §10) ---------------------------------------------------------------------

def go_duration(seconds: float) -> str:
    """Go's time.Duration.String() of a latency rounded to 0.1 ms: 9.8ms, 70ms, 300µs, 1.2s."""
    ns = int(round(seconds * 1e4)) * 100_000
    if ns == 0:
        return "0s"
    if ns < 1_000_000:
        return _trim(ns / 1e3) + "µs"
    if ns < 1_000_000_000:
        return _trim(ns / 1e6) + "ms"
    minutes, rest = divmod(ns, 60_000_000_000)
    secs = _trim(rest / 1e9) + "s"
    return f"{minutes}m{secs}" if minutes else secs


def _trim(value: float) -> str:
    text = f"{value:.9f}".rstrip("0").rstrip(".")
    return text or "0"


def go_time(unix: float, tz: _dt.tzinfo | None = None) -> str:
    """Layout `2006-01-02 15:04:05.999999999Z07:00` in local time (or `tz`)."""
    when = _dt.datetime.fromtimestamp(unix, tz) if tz else _dt.datetime.fromtimestamp(unix).astimezone()
    text = when.strftime("%Y-%m-%d %H:%M:%S")
    frac = f"{when.microsecond:06d}".rstrip("0")
    if frac:
        text += "." + frac
    off = when.utcoffset() or _dt.timedelta(0)
    if off == _dt.timedelta(0):
        return text + "Z"
    sign = "-" if off < _dt.timedelta(0) else "+"
    minutes = abs(int(off.total_seconds())) // 60
    return f"{text}{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def _tri(value: bool | None) -> str:
    return "" if value is None else str(value).lower()


def format_human(report: Report, regions: dict[int, Region], *, verbose: bool = False,
                 portmap_checked: bool = True, tz: _dt.tzinfo | None = None) -> str:
    """The `tailscale netcheck` text form of a report."""
    lines = ["", "Report:", f"\t* Time: {go_time(report.now, tz)}", f"\t* UDP: {_tri(report.udp)}"]
    lines.append(f"\t* IPv4: yes, {report.global_v4}" if report.global_v4 else "\t* IPv4: (no addr found)")
    if report.global_v6:
        lines.append(f"\t* IPv6: yes, {report.global_v6}")
    elif report.ipv6:
        lines.append("\t* IPv6: (no addr found)")
    elif report.os_has_ipv6:
        lines.append("\t* IPv6: no, but OS has support")
    else:
        lines.append("\t* IPv6: no, unavailable in OS")
    lines.append(f"\t* MappingVariesByDestIP: {_tri(report.mapping_varies_by_dest_ip)}")
    if not portmap_checked or report.upnp is None and report.pmp is None and report.pcp is None:
        lines.append("\t* PortMapping: not checked")
    else:
        found = [name for name, flag in (("UPnP", report.upnp), ("NAT-PMP", report.pmp), ("PCP", report.pcp))
                 if flag]
        lines.append(f"\t* PortMapping: {', '.join(found)}")
    if report.captive_portal is not None:
        lines.append(f"\t* CaptivePortal: {_tri(report.captive_portal)}")
    lat = report.region_latency
    if not lat and not report.region_icmp_latency:
        lines.append("\t* Nearest DERP: unknown (no response to latency probes)")
        return "\n".join(lines) + "\n"
    lines.append(f"\t* Nearest DERP: {nearest_name(report, regions)}")
    lines.append("\t* DERP latency:")
    icmp = report.region_icmp_latency
    order = sorted(regions, key=lambda r: (0, lat[r], r) if r in lat else (1, icmp[r], r) if r in icmp else (2, 0.0, r))
    for rid in order:
        region = regions[rid]
        probe = report.probe_of(rid)
        shown = go_duration(lat[rid] if rid in lat else icmp[rid]) if probe else ""
        prefix = f"derp{rid}, " if verbose else ""
        lines.append(f"\t\t- {region.code:>3}: {shown:<7} {probe or '':<5} ({prefix}{region.name})")
    if any(rid not in lat for rid in icmp):
        lines.append("\t* ICMP: only the node's address answered a ping, not its relay: never the nearest DERP")
    return "\n".join(lines) + "\n"


def nearest_name(report: Report, regions: dict[int, Region]) -> str:
    """The "Nearest DERP" text: only a region whose relay answered (a STUN or HTTPS latency) is named."""
    pref = report.preferred_derp
    if pref == 0 or pref not in report.region_latency:
        return "unknown (no relay answered STUN or HTTPS)" if not report.region_latency else "[none]"
    if pref in regions:
        return regions[pref].name
    return f"{pref} (region not found in map)"
