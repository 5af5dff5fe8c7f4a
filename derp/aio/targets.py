"""Where a DERP client dials: targets from a DERP map node/region or a URL, TLS contexts, backoff.

`targets_for_region` follows derpmap.md: nodes in map order, STUN-only nodes skipped, pinned IPv4/IPv6
replace DNS, "none" disables a family, DERPPort 0 means 443, CertName `sha256-raw:` pins the leaf, and
`Ideal-Node` names the region's first node when dialing another. A node's `WgcQUICPort` becomes the target's
`quic_port` (0: no DERP over QUIC; never set for plain-HTTP targets, QUIC always runs TLS).
"""
from __future__ import annotations

import ipaddress
import random
import ssl
import urllib.parse
from dataclasses import dataclass

from derp.constants import RECONNECT_MAX_DELAY
from derp.derpmap import DerpNode, DerpRegion
from derp.errors import UsageError


@dataclass(frozen=True)
class DialTarget:
    host: str                  # address or name to dial
    port: int
    tls: bool = True
    server_name: str = ""      # SNI (and the name the certificate must carry unless cert_name is set)
    insecure: bool = False
    pin: bytes | None = None   # SHA-256 of the leaf certificate (CertName sha256-raw:)
    ideal_node: str = ""       # sent as Ideal-Node when this is not the region's first node
    host_header: str = ""
    cert_name: str = ""        # DERP map CertName when it differs from HostName: checked after the handshake
    quic_port: int = 0         # UDP port of DERP over QUIC (WgcQUICPort); 0: the node does not speak it

    def url(self, ws: bool = False) -> str:
        scheme = ("wss" if self.tls else "ws") if ws else ("https" if self.tls else "http")
        return f"{scheme}://{self.host_header}/derp"


def targets_for_url(url: str, insecure: bool = False) -> list[DialTarget]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"DERP URL must be http(s)://host[:port]/derp, got {url!r}")
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    return [DialTarget(parts.hostname, port, tls, parts.hostname, insecure, None, "", parts.netloc)]


def targets_for_node(node: DerpNode, plain_http: bool = False, ideal: str = "") -> list[DialTarget]:
    port = node.derp_port or (80 if plain_http else 443)
    default = 80 if plain_http else 443
    host = node.host_name
    netloc = (f"[{host}]" if ":" in host else host) + ("" if port == default else f":{port}")
    addrs = [a for a in (node.pinned_ipv4(), node.pinned_ipv6()) if a]
    if not addrs:
        addrs = [host] if (node.ipv4_enabled() or node.ipv6_enabled()) else []
    cert_name = node.tls_name() if node.tls_name() != host else ""
    quic = 0 if plain_http else node.wgc_quic_port
    return [DialTarget(a, port, not plain_http, host, node.insecure_for_tests, node.cert_pin(),
                       ideal if ideal and ideal != node.name else "", netloc, cert_name, quic) for a in addrs]


def targets_for_region(region: DerpRegion, plain_http: bool = False) -> list[DialTarget]:
    nodes = region.derp_nodes()
    first = nodes[0].name if nodes else ""
    return [t for node in nodes for t in targets_for_node(node, plain_http, first)]


def backoff_delay(failures: int, rng: random.Random) -> float:
    """derp.md §10: min(n^2 x 10 ms, 5 s) x U[0.5, 1.5)."""
    return min(failures * failures * 0.010, RECONNECT_MAX_DELAY) * (0.5 + rng.random())


def make_ssl_context(target: DialTarget, ca_file: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.set_alpn_protocols(["http/1.1"])
    if target.insecure or target.pin is not None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif target.cert_name:
        ctx.check_hostname = False  # the chain is still verified; the name is checked against CertName after
    if ca_file and ctx.verify_mode != ssl.CERT_NONE:
        try:
            ctx.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(f"cannot load CA file {ca_file!r}: {exc}") from None
    return ctx


def cert_matches(cert: dict, name: str) -> bool:
    """Does a verified peer certificate (ssl getpeercert() form) carry `name` (DNS with one-label
    wildcards, or an IP address) in its subjectAltName?"""
    try:
        want_ip = ipaddress.ip_address(name)
    except ValueError:
        want_ip = None
    name = name.lower().rstrip(".")
    for kind, value in cert.get("subjectAltName", ()):
        if kind == "IP Address" and want_ip is not None:
            try:
                if ipaddress.ip_address(value.strip()) == want_ip:
                    return True
            except ValueError:
                continue
        elif kind == "DNS" and want_ip is None:
            pattern = value.lower().rstrip(".")
            if pattern == name:
                return True
            if pattern.startswith("*.") and "." in name and name.split(".", 1)[1] == pattern[2:]:
                return True
    return False
