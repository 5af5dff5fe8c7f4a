"""Neutral description of what netcheck probes: regions of relay/STUN nodes (no dependency on derp).

The CLI converts a DERP map into these; the asyncio runner resolves host names into `ipv4`/`ipv6`
before the sans-I/O core sees them. A node's `ipv4`/`ipv6` of None means "no address of that family".
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from natprobe import constants as C
from natprobe.errors import UsageError


@dataclass(frozen=True)
class Node:
    """One server of a region: where to send STUN (UDP) and HTTPS (TCP) probes."""

    name: str
    host_name: str = ""
    ipv4: str | None = None
    ipv6: str | None = None
    ipv4_enabled: bool = True          # False: the map disables IPv4 for this node ("none")
    ipv6_enabled: bool = True
    stun_port: int | None = C.DEFAULT_STUN_PORT   # None: no STUN on this node
    derp_port: int = C.DEFAULT_DERP_PORT
    stun_only: bool = False
    insecure_for_tests: bool = False
    can_port80: bool = False
    tls_name: str = ""

    def __post_init__(self) -> None:
        for value, version in ((self.ipv4, 4), (self.ipv6, 6)):
            if value is None:
                continue
            try:
                ok = ipaddress.ip_address(value).version == version
            except ValueError:
                ok = False
            if not ok:
                raise UsageError(f"node {self.name}: {value!r} is not an IPv{version} address")

    def addr(self, family: int) -> str | None:
        return self.ipv4 if family == 4 else self.ipv6

    def needs_dns(self, family: int) -> bool:
        enabled = self.ipv4_enabled if family == 4 else self.ipv6_enabled
        return enabled and self.addr(family) is None and bool(self.host_name)


@dataclass(frozen=True)
class Region:
    """A relay region: an id, short code, long name and its nodes in priority order."""

    region_id: int
    code: str = ""
    name: str = ""
    nodes: tuple[Node, ...] = field(default_factory=tuple)
    avoid: bool = False
    no_measure_no_home: bool = False

    @property
    def measurable(self) -> bool:
        return not self.no_measure_no_home and bool(self.nodes)

    @property
    def https_nodes(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if not n.stun_only)
