"""The DERP map (Tailscale's `tailcfg.DERPMap` JSON): parsing with validation, defaults, re-encoding, and
the difference between two maps.

Pure: bytes/str in, frozen dataclasses out. Keys are matched case-insensitively as Go's encoding/json does;
unknown keys are ignored (and listed in `warnings` when the caller asks); a `null` region is dropped
(headscale's way of disabling a region). Every validation failure raises `derp.errors.ParseError` naming
the region/node and the field at fault.
Also accepted: a Tailscale policy file (or its fragment) `{"derpMap": {...}}`, in JSON or HuJSON (comments
and trailing commas, as policy files are written); its `OmitDefaultRegions` is the map's.
Defaulting rules (derpmap.md §5): STUNPort 0 => 3478, negative => no STUN; DERPPort 0 => 443; an IPv4/IPv6
field that is not an address of that family (conventionally "none") disables that family; "" means DNS.
`WgcQUICPort` is wgc's own node field (docs/derp-quic.md): the UDP port the node speaks DERP over QUIC on;
absent or 0 means it does not. Tailscale's parser ignores it, so a map carrying it stays valid there.
"""
from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any

from derp.errors import ParseError

DEFAULT_STUN_PORT = 3478
DEFAULT_DERP_PORT = 443
MAX_REGION_ID = 2**53 - 1


@dataclass(frozen=True)
class DerpNode:
    """One DERP/STUN server of a region, with the raw fields of the map."""

    name: str
    region_id: int
    host_name: str
    ipv4: str = ""
    ipv6: str = ""
    stun_port: int = 0
    stun_only: bool = False
    derp_port: int = 0
    insecure_for_tests: bool = False
    can_port80: bool = False
    stun_test_ip: str = ""
    cert_name: str = ""
    wgc_quic_port: int = 0     # WgcQUICPort (docs/derp-quic.md): 0 = the node does not speak DERP over QUIC

    # -- defaulting helpers (derpmap.md §5) --
    def effective_stun_port(self) -> int | None:
        """The UDP STUN port, or None when STUN is disabled on this node."""
        if self.stun_port < 0:
            return None
        return self.stun_port or DEFAULT_STUN_PORT

    def effective_derp_port(self) -> int:
        return self.derp_port or DEFAULT_DERP_PORT

    def _family_addr(self, value: str, version: int) -> str | None:
        if value == "":
            return None
        try:
            addr = ipaddress.ip_address(value)
        except ValueError:
            return None
        return str(addr) if addr.version == version else None

    def ipv4_enabled(self) -> bool:
        """False when the IPv4 field is set to something that is not an IPv4 address (e.g. "none")."""
        return self.ipv4 == "" or self._family_addr(self.ipv4, 4) is not None

    def ipv6_enabled(self) -> bool:
        return self.ipv6 == "" or self._family_addr(self.ipv6, 6) is not None

    def pinned_ipv4(self) -> str | None:
        """The forced IPv4 address, or None (use DNS if ipv4_enabled(), else no IPv4)."""
        return self._family_addr(self.ipv4, 4)

    def pinned_ipv6(self) -> str | None:
        return self._family_addr(self.ipv6, 6)

    def stun_target(self, version: int) -> str | None:
        """The IP to send STUN to for a family: STUNTestIP, else the pinned IP; None means use DNS/skip."""
        if self.stun_test_ip:
            return self.stun_test_ip
        return self.pinned_ipv4() if version == 4 else self.pinned_ipv6()

    def tls_name(self) -> str:
        """The name the certificate must carry (CertName unless it is a sha256-raw pin)."""
        if self.cert_name and not self.cert_name.startswith("sha256-raw:"):
            return self.cert_name
        return self.host_name

    def cert_pin(self) -> bytes | None:
        """The pinned SHA-256 of the leaf certificate when CertName is `sha256-raw:<hex>`."""
        if self.cert_name.startswith("sha256-raw:"):
            return bytes.fromhex(self.cert_name[len("sha256-raw:"):])
        return None

    def url(self, scheme: str = "https") -> str:
        host = self.host_name
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        port = self.effective_derp_port()
        default = 443 if scheme == "https" else 80
        return f"{scheme}://{host}/derp" if port == default else f"{scheme}://{host}:{port}/derp"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"Name": self.name, "RegionID": self.region_id, "HostName": self.host_name}
        for key, value in (("CertName", self.cert_name), ("IPv4", self.ipv4), ("IPv6", self.ipv6),
                           ("STUNPort", self.stun_port), ("STUNOnly", self.stun_only),
                           ("DERPPort", self.derp_port), ("InsecureForTests", self.insecure_for_tests),
                           ("STUNTestIP", self.stun_test_ip), ("CanPort80", self.can_port80),
                           ("WgcQUICPort", self.wgc_quic_port)):
            if value:
                out[key] = value
        return out


@dataclass(frozen=True)
class DerpRegion:
    region_id: int
    region_code: str
    region_name: str
    nodes: tuple[DerpNode, ...]
    avoid: bool = False
    no_measure_no_home: bool = False
    latitude: float = 0.0
    longitude: float = 0.0

    def derp_nodes(self) -> tuple[DerpNode, ...]:
        """The nodes a client may dial for DERP, in priority order (STUN-only ones skipped)."""
        return tuple(n for n in self.nodes if not n.stun_only)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"RegionID": self.region_id, "RegionCode": self.region_code,
                               "RegionName": self.region_name}
        if self.latitude:
            out["Latitude"] = self.latitude
        if self.longitude:
            out["Longitude"] = self.longitude
        if self.avoid:
            out["Avoid"] = True
        if self.no_measure_no_home:
            out["NoMeasureNoHome"] = True
        out["Nodes"] = [n.to_dict() for n in self.nodes]
        return out


@dataclass(frozen=True)
class DerpHomeParams:
    """Home-selection tuning: a latency multiplier per region (missing => 1.0; values <= 0 ignored)."""

    region_score: dict[int, float] | None = None

    def score(self, region_id: int) -> float:
        value = (self.region_score or {}).get(region_id, 1.0)
        return value if value > 0 else 1.0


@dataclass(frozen=True)
class DerpMap:
    regions: dict[int, DerpRegion]
    omit_default_regions: bool = False
    home_params: DerpHomeParams | None = None

    def node_by_name(self, name: str) -> DerpNode | None:
        for region in self.regions.values():
            for node in region.nodes:
                if node.name == name:
                    return node
        return None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.home_params is not None:
            hp: dict[str, Any] = {}
            if self.home_params.region_score is not None:
                hp["RegionScore"] = {str(k): v for k, v in self.home_params.region_score.items()}
            out["HomeParams"] = hp
        out["Regions"] = {str(rid): r.to_dict() for rid, r in sorted(self.regions.items())}
        if self.omit_default_regions:
            out["omitDefaultRegions"] = True
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


# ---------------------------------------------------------------------------------------------------------
# parsing

class _Obj:
    """Case-insensitive view of a JSON object, with typed getters that name `where` in errors."""

    def __init__(self, raw: Any, where: str) -> None:
        if not isinstance(raw, dict):
            raise ParseError(f"{where}: expected a JSON object, got {type(raw).__name__}")
        self.where = where
        self.items: dict[str, Any] = {}
        self.spelled: dict[str, str] = {}
        self.used: set[str] = set()
        for key, value in raw.items():
            self.items.setdefault(key.lower(), value)
            self.spelled.setdefault(key.lower(), key)

    def unknown(self, warnings: list[str] | None) -> None:
        """List the keys no getter asked for (Go ignores them; a typo is worth a word)."""
        if warnings is not None:
            warnings.extend(f"{self.where}: unknown field {self.spelled[k]!r} (ignored)"
                            for k in self.items if k not in self.used)

    def get(self, key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        self.used.add(key.lower())
        value = self.items.get(key.lower())
        if value is None:
            return default
        if kind is int or kind == (int,):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
                raise ParseError(f"{self.where}: {key} must be an integer, got {value!r}")
            return int(value)
        if kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ParseError(f"{self.where}: {key} must be a number, got {value!r}")
            return float(value)
        if not isinstance(value, kind):
            name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise ParseError(f"{self.where}: {key} must be {name}, got {value!r}")
        return value


def _parse_node(raw: Any, region_id: int, index: int, warnings: list[str] | None) -> DerpNode:
    o = _Obj(raw, f"region {region_id} node #{index}")
    name = o.get("Name", str, "")
    if name:
        o.where = f"region {region_id} node {name!r}"
    if not name:
        raise ParseError(f"{o.where}: Name is required")
    node_region = o.get("RegionID", int, 0)
    if node_region != region_id:
        raise ParseError(f"{o.where}: RegionID {node_region} does not match its region {region_id}")
    host = o.get("HostName", str, "")
    if not host:
        raise ParseError(f"{o.where}: HostName is required")
    derp_port = o.get("DERPPort", int, 0)
    if not 0 <= derp_port <= 65535:
        raise ParseError(f"{o.where}: DERPPort {derp_port} out of range")
    stun_port = o.get("STUNPort", int, 0)
    if stun_port > 65535:
        raise ParseError(f"{o.where}: STUNPort {stun_port} out of range")
    quic_port = o.get("WgcQUICPort", int, 0)
    if not 0 <= quic_port <= 65535:
        raise ParseError(f"{o.where}: WgcQUICPort {quic_port} out of range (1-65535, or 0 for no QUIC)")
    cert_name = o.get("CertName", str, "")
    if cert_name.startswith("sha256-raw:"):
        digest = cert_name[len("sha256-raw:"):]
        try:
            ok = len(bytes.fromhex(digest)) == 32
        except ValueError:
            ok = False
        if not ok:
            raise ParseError(f"{o.where}: CertName sha256-raw: needs 64 hex characters")
    stun_test_ip = o.get("STUNTestIP", str, "")
    if stun_test_ip:
        try:
            ipaddress.ip_address(stun_test_ip)
        except ValueError:
            raise ParseError(f"{o.where}: STUNTestIP {stun_test_ip!r} is not an IP address") from None
    node = DerpNode(
        name=name, region_id=node_region, host_name=host, ipv4=o.get("IPv4", str, ""),
        ipv6=o.get("IPv6", str, ""), stun_port=stun_port, stun_only=o.get("STUNOnly", bool, False),
        derp_port=derp_port, insecure_for_tests=o.get("InsecureForTests", bool, False),
        can_port80=o.get("CanPort80", bool, False), stun_test_ip=stun_test_ip, cert_name=cert_name,
        wgc_quic_port=quic_port)
    o.unknown(warnings)
    return node


def _parse_region_id(key: str) -> int:
    if not key.isascii() or not key.isdigit():
        raise ParseError(f"region key {key!r} is not a decimal region ID")
    rid = int(key)
    if not 0 < rid <= MAX_REGION_ID:
        raise ParseError(f"region ID {rid} out of range (1..2^53-1)")
    return rid


def _parse_region(key: str, raw: Any, warnings: list[str] | None) -> DerpRegion:
    rid = _parse_region_id(key)
    o = _Obj(raw, f"region {rid}")
    body_id = o.get("RegionID", int, 0)
    if body_id != rid:
        raise ParseError(f"region {rid}: RegionID {body_id} does not match its key {key!r}")
    nodes_raw = o.get("Nodes", list, [])
    nodes = tuple(_parse_node(n, rid, i, warnings) for i, n in enumerate(nodes_raw))
    region = DerpRegion(
        region_id=rid, region_code=o.get("RegionCode", str, ""), region_name=o.get("RegionName", str, ""),
        nodes=nodes, avoid=o.get("Avoid", bool, False),
        no_measure_no_home=o.get("NoMeasureNoHome", bool, False),
        latitude=o.get("Latitude", float, 0.0), longitude=o.get("Longitude", float, 0.0))
    o.unknown(warnings)
    return region


def _parse_home_params(raw: Any) -> DerpHomeParams | None:
    if raw is None:
        return None
    o = _Obj(raw, "HomeParams")
    scores_raw = o.get("RegionScore", dict, None)
    if scores_raw is None:
        return DerpHomeParams(None)
    scores: dict[int, float] = {}
    for key, value in scores_raw.items():
        rid = _parse_region_id(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParseError(f"HomeParams: RegionScore for region {rid} must be a number, got {value!r}")
        scores[rid] = float(value)
    return DerpHomeParams(scores)


def parse_derpmap(data: bytes | str, warnings: list[str] | None = None) -> DerpMap:
    """Parse a DERP map from Tailscale's JSON (or a policy file's `derpMap`); raise ParseError with a clear
    message on bad input. Fields nobody reads are appended to `warnings` when a list is given."""
    raw = _load_json(data)
    top = _Obj(raw, "DERP map")
    if "derpmap" in top.items and "regions" not in top.items:
        try:  # a policy file: its other keys (acls, groups, ...) are not ours to judge
            return _parse_map(_Obj(top.items["derpmap"] or {}, "DERP map"), warnings)
        except ParseError as exc:
            raise ParseError(f"derpMap: {exc}") from None
    return _parse_map(top, warnings)


def _parse_map(top: _Obj, warnings: list[str] | None) -> DerpMap:
    regions_raw = top.get("Regions", dict, {})
    regions: dict[int, DerpRegion] = {}
    names: dict[str, int] = {}
    for key, value in regions_raw.items():
        if value is None:
            _parse_region_id(key)
            continue
        region = _parse_region(key, value, warnings)
        if region.region_id in regions:
            raise ParseError(f"region {region.region_id} appears twice")
        for node in region.nodes:
            if node.name in names:
                raise ParseError(f"region {region.region_id} node {node.name!r}: Name also used in region "
                                 f"{names[node.name]} (node names must be unique)")
            names[node.name] = region.region_id
        regions[region.region_id] = region
    top.used.add("homeparams")
    result = DerpMap(regions=regions, omit_default_regions=top.get("omitDefaultRegions", bool, False),
                     home_params=_parse_home_params(top.items.get("homeparams")))
    top.unknown(warnings)
    return result


def _load_json(data: bytes | str) -> Any:
    """JSON, else HuJSON (Tailscale policy files: // and /* */ comments, trailing commas)."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        error = exc
    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
        return json.loads(standardize_hujson(text))
    except (ValueError, RecursionError):
        raise ParseError(f"DERP map is not valid JSON: {error}") from None


def standardize_hujson(text: str) -> str:
    """HuJSON to JSON: comments become spaces (positions kept for error messages), trailing commas go.
    Text that is not HuJSON comes out as text that json.loads rejects."""
    out: list[str] = []
    i, n = 0, len(text)
    comma = -1                     # index in `out` of a comma that may turn out to be trailing
    while i < n:
        c = text[i]
        if c == '"':
            end = i + 1
            while end < n and text[end] != '"':
                end += 2 if text[end] == "\\" else 1
            out.append(text[i:end + 1])
            i, comma = end + 1, -1
        elif text.startswith("//", i):
            end = text.find("\n", i)
            end = n if end < 0 else end
            out.append(" " * (end - i))
            i = end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            end = n if end < 0 else end + 2
            out.append("".join(ch if ch == "\n" else " " for ch in text[i:end]))
            i = end
        else:
            if c in "}]" and comma >= 0:
                out[comma] = " "
            if not c.isspace():
                comma = len(out) if c == "," else -1
            out.append(c)
            i += 1
    return "".join(out)


# ---------------------------------------------------------------------------------------------------------
# differences


@dataclass(frozen=True)
class MapChange:
    """What changed from one map to the next, by region id (a changed region differs in any field)."""

    added: tuple[int, ...] = ()
    removed: tuple[int, ...] = ()
    changed: tuple[int, ...] = ()
    other: bool = False            # HomeParams or OmitDefaultRegions

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed or self.other)

    def describe(self, new: DerpMap, old: DerpMap | None = None) -> str:
        parts = [f"{what} {', '.join(_region_label(where, r) for r in ids)}" for what, ids, where in
                 (("added", self.added, new), ("removed", self.removed, old or new), ("changed", self.changed, new))
                 if ids]
        if self.other:
            parts.append("home parameters changed")
        return "; ".join(parts) or "no change"


def _region_label(dm: DerpMap, rid: int) -> str:
    region = dm.regions.get(rid)
    return f"{rid} ({region.region_code})" if region is not None and region.region_code else str(rid)


def diff_derpmaps(old: DerpMap, new: DerpMap) -> MapChange:
    return MapChange(
        added=tuple(sorted(set(new.regions) - set(old.regions))),
        removed=tuple(sorted(set(old.regions) - set(new.regions))),
        changed=tuple(sorted(r for r in set(old.regions) & set(new.regions) if old.regions[r] != new.regions[r])),
        other=(old.home_params, old.omit_default_regions) != (new.home_params, new.omit_default_regions))


__all__ = ["DerpMap", "DerpRegion", "DerpNode", "DerpHomeParams", "MapChange", "parse_derpmap", "diff_derpmaps",
           "standardize_hujson", "DEFAULT_STUN_PORT", "DEFAULT_DERP_PORT"]
