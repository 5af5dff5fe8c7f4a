"""Dial targets from DERP map regions/nodes and URLs, and the reconnect backoff (derpmap.md §5-6, derp.md §10)."""
from __future__ import annotations

import json
import random

import pytest

from derp.aio.targets import backoff_delay, cert_matches, targets_for_region, targets_for_url
from derp.derpmap import parse_derpmap
from derp.errors import UsageError

REGION = parse_derpmap(json.dumps({"Regions": {"900": {"RegionID": 900, "Nodes": [
    {"Name": "900s", "RegionID": 900, "HostName": "stun.example", "STUNOnly": True},
    {"Name": "900a", "RegionID": 900, "HostName": "a.example", "IPv4": "192.0.2.1", "IPv6": "2001:db8::1"},
    {"Name": "900b", "RegionID": 900, "HostName": "b.example", "IPv4": "none", "DERPPort": 8443,
     "CertName": "derp.example"},
    {"Name": "900c", "RegionID": 900, "HostName": "c.example", "IPv4": "none", "IPv6": "none"},
    {"Name": "900d", "RegionID": 900, "HostName": "2001:db8::9", "InsecureForTests": True}]}}})).regions[900]


def test_region_targets_follow_the_map() -> None:
    ts = targets_for_region(REGION)
    assert [(t.host, t.port, t.server_name, t.host_header, t.ideal_node) for t in ts] == [
        ("192.0.2.1", 443, "a.example", "a.example", ""),          # first DERP node: no Ideal-Node header
        ("2001:db8::1", 443, "a.example", "a.example", ""),
        ("b.example", 8443, "b.example", "b.example:8443", "900a"),  # DNS (IPv6 only); SNI is the HostName
        ("2001:db8::9", 443, "2001:db8::9", "[2001:db8::9]", "900a"),  # c: both families disabled, skipped
    ]
    assert all(t.tls for t in ts) and ts[-1].insecure and not ts[0].insecure
    assert ts[2].cert_name == "derp.example" and ts[0].cert_name == ""  # CertName checked after the handshake
    plain = targets_for_region(REGION, plain_http=True)
    assert not plain[0].tls and plain[0].port == 80 and plain[2].port == 8443
    assert plain[0].url() == "http://a.example/derp" and ts[2].url(ws=True) == "wss://b.example:8443/derp"


def test_quic_port_comes_from_the_node_and_never_for_plain_http() -> None:
    region = parse_derpmap(json.dumps({"Regions": {"900": {"RegionID": 900, "Nodes": [
        {"Name": "900a", "RegionID": 900, "HostName": "a.example", "IPv4": "192.0.2.1", "WgcQUICPort": 4443},
        {"Name": "900b", "RegionID": 900, "HostName": "b.example", "IPv4": "192.0.2.2"}]}}})).regions[900]
    assert [t.quic_port for t in targets_for_region(region)] == [4443, 0]
    assert [t.quic_port for t in targets_for_region(region, plain_http=True)] == [0, 0]
    assert targets_for_url("https://a.example/derp")[0].quic_port == 0


def test_url_targets() -> None:
    [t] = targets_for_url("https://derp.example:8443/derp")
    assert (t.host, t.port, t.tls, t.server_name, t.host_header) == ("derp.example", 8443, True, "derp.example",
                                                                     "derp.example:8443")
    [t] = targets_for_url("http://127.0.0.1/derp")
    assert (t.port, t.tls) == (80, False)
    with pytest.raises(UsageError, match="http"):
        targets_for_url("ftp://x/derp")


def test_backoff_is_quadratic_capped_and_jittered() -> None:
    rng = random.Random(1)
    for n, base in ((1, 0.01), (3, 0.09), (10, 1.0), (30, 5.0), (1000, 5.0)):
        delays = [backoff_delay(n, rng) for _ in range(200)]
        assert all(0.5 * base <= d < 1.5 * base for d in delays)
        assert max(delays) - min(delays) > 0.5 * base  # jitter spreads clients out


def test_cert_matches() -> None:
    cert = {"subjectAltName": (("DNS", "derp.example"), ("DNS", "*.relay.example"), ("IP Address", "192.0.2.1"),
                               ("IP Address", "2001:DB8:0:0:0:0:0:1\n"))}
    assert cert_matches(cert, "derp.example") and cert_matches(cert, "DERP.example.")
    assert cert_matches(cert, "a.relay.example") and not cert_matches(cert, "a.b.relay.example")
    assert cert_matches(cert, "192.0.2.1") and cert_matches(cert, "2001:db8::1")
    assert not cert_matches(cert, "192.0.2.2") and not cert_matches(cert, "other.example")
    assert not cert_matches({}, "derp.example")
