"""A DERP map (derp.derpmap) seen as natprobe's neutral regions, for netcheck; and DERP region lookup
by id or code (the `DerpRegion` config key)."""
from __future__ import annotations

from derp.derpmap import DerpMap
from natprobe.regions import Node, Region

from .errors import ConfigError


def regions_from_derpmap(dm: DerpMap) -> list[Region]:
    """natprobe's view of a DERP map (STUNTestIP, when set, replaces the pinned address of its family)."""
    regions = []
    for rid in sorted(dm.regions):
        reg = dm.regions[rid]
        nodes = []
        for n in reg.nodes:
            v4, v6 = n.pinned_ipv4(), n.pinned_ipv6()
            if n.stun_test_ip:
                if ":" in n.stun_test_ip:
                    v6 = n.stun_test_ip
                else:
                    v4 = n.stun_test_ip
            nodes.append(Node(name=n.name, host_name=n.host_name, ipv4=v4, ipv6=v6,
                              ipv4_enabled=n.ipv4_enabled(), ipv6_enabled=n.ipv6_enabled(),
                              stun_port=n.effective_stun_port(), derp_port=n.effective_derp_port(),
                              stun_only=n.stun_only, insecure_for_tests=n.insecure_for_tests,
                              can_port80=n.can_port80, tls_name=n.tls_name()))
        regions.append(Region(rid, reg.region_code, reg.region_name, tuple(nodes), reg.avoid,
                              reg.no_measure_no_home))
    return regions


def find_region(dm: DerpMap, text: str) -> int | None:
    """The id of the region named by `text` (its numeric id or its RegionCode, case-insensitive)."""
    if text.isdigit() and int(text) in dm.regions:
        return int(text)
    for rid, reg in dm.regions.items():
        if reg.region_code.lower() == text.lower():
            return rid
    return None


def region_hints(config, dm: DerpMap) -> dict[bytes, int]:
    """Each peer's `DerpRegion` hint as a region id of the map (ConfigError naming the line if unknown)."""
    hints = {}
    for peer in config.peers:
        if peer.derp_region is None:
            continue
        rid = find_region(dm, peer.derp_region)
        if rid is None:
            known = ", ".join(f"{r} ({dm.regions[r].region_code})" for r in sorted(dm.regions))
            raise ConfigError(config.path, peer.derp_region_line, "DerpRegion",
                              f"no region {peer.derp_region!r} in the DERP map (it has: {known})")
        hints[peer.public_key] = rid
    return hints
