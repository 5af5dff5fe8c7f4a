"""What the path manager is configured and told with: `PathConfig` (frozen timing knobs, Tailscale's values
by default, disco.md §6) and `NetInfo` (the parts of a netcheck report it uses)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from . import constants as C


@dataclass(frozen=True)
class PathConfig:
    heartbeat_interval: float = C.HEARTBEAT_INTERVAL
    trust_duration: float = C.TRUST_UDP_ADDR_DURATION
    session_active_timeout: float = C.SESSION_ACTIVE_TIMEOUT
    disco_ping_interval: float = C.DISCO_PING_INTERVAL
    ping_timeout: float = C.PING_TIMEOUT
    good_enough_latency: float = C.GOOD_ENOUGH_LATENCY
    upgrade_interval: float = C.UPGRADE_UDP_DIRECT_INTERVAL
    candidate_expiry: float = C.SESSION_ACTIVE_TIMEOUT
    reply_ping_interval: float = 1.0
    punch_backoff: tuple[float, ...] = C.PUNCH_BACKOFF
    region_idle_timeout: float = C.REGION_IDLE_TIMEOUT
    home_failover_delay: float = C.HOME_FAILOVER_DELAY
    derp_heard_window: float = C.SESSION_ACTIVE_TIMEOUT
    region_skip: float = 30.0


@dataclass(frozen=True)
class NetInfo:
    """What the manager needs from a netcheck report."""

    preferred: int = 0
    latency: Mapping[int, float] = field(default_factory=dict)
    udp: bool = True
    mapping_varies: bool | None = None
    endpoints: tuple = ()                # STUN-mapped addresses (ip, port)

    @classmethod
    def from_report(cls, report) -> "NetInfo":
        """From a natprobe `Report` (read by attribute, so this package does not import natprobe)."""
        eps = []
        for text in (report.global_v4, report.global_v6):
            if text:
                host, _, port = text.rpartition(":")
                eps.append((host.strip("[]"), int(port)))
        return cls(report.preferred_derp, dict(report.region_latency), bool(report.udp),
                   report.mapping_varies_by_dest_ip, tuple(eps))
