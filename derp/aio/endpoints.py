"""The derper's small HTTP endpoints: probes, captive-portal check, health, debug pages (/debug/vars JSON,
/debug/varz Prometheus text as derper's), DERP map, robots, `/bootstrap-dns` and the home page (derper's
-home: default, blank, or a redirect).

`answer(server, request, client_ip)` returns (status, headers, body); it only reads server state (and the
process's memory use, for the detailed /healthz).
"""
from __future__ import annotations

import hmac
import html
import ipaddress
import json
import re
import resource
import time
import urllib.parse
from typing import Any

from derp import httpwire
from derp.constants import CHALLENGE_HEADER, RESPONSE_HEADER

_CHALLENGE = re.compile(r"^[A-Za-z0-9._:-]{0,64}$")
NO_CACHE = "no-cache, no-store, must-revalidate, no-transform, max-age=0"


def _loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


def _bearer_ok(server: Any, req: httpwire.Head) -> bool:
    token = server.options.metrics_token
    auth = req.header("authorization")
    return bool(token) and auth.startswith("Bearer ") and hmac.compare_digest(auth[7:].strip(), token)


def memory() -> dict[str, int]:
    """The process's resident memory now and at its peak, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            rss = int(fh.read().split()[1]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        rss = peak
    return {"rss_bytes": rss, "peak_rss_bytes": peak}


def admission(server: Any) -> dict[str, Any]:
    relay = server.relay
    out: dict[str, Any] = {"refused": dict(relay.refused)}
    if relay.acl.allowed is not None:
        out["allowed_keys"] = len(relay.acl.allowed)
    if server.local_peers is not None:
        lp = server.local_peers
        out["verify_clients"] = {"socket": lp.path, "keys": len(relay.acl.local or ()), "polls": lp.polls,
                                 "failures": lp.failures, "failing": lp.failing}
    if server.webhook is not None:
        out["verify_client_url"] = {**server.webhook.counters, "cache_hits": server.webhook.cache.hits,
                                    "cached": len(server.webhook.cache.entries)}
    if relay.bindings is not None:
        out["bindings"] = {"bound": len(relay.bindings.entries), "full": relay.counters["bindings_full"],
                           "writes": server.bindings_file.writes if server.bindings_file else 0}
    rate, burst = server.client_rate
    if rate:
        out["client_rate"] = {"bytes_per_second": rate, "burst_bytes": burst}
    return out


def details(server: Any) -> dict[str, Any]:
    stats = server.relay.stats()
    return {"status": "ok", "uptime_seconds": round(time.time() - server.started, 1),
            "clients": stats["clients"], "memory": memory(),
            "server_key": "nodekey:" + server.relay.public_key.hex(), "relay": stats,
            "admission": admission(server),
            "http": dict(server.http_counters), "rate_limited_ips": len(server.limiter.buckets),
            "mesh_links": [link.describe() for link in server.mesh_links],
            **({"quic": {"clients": server.quic.clients(), **server.quic.stats}} if server.quic is not None else {})}


def _home(server: Any) -> tuple[int, dict[str, str], bytes]:
    home = server.options.home
    if home == "blank":
        return 200, {"Content-Type": "text/html; charset=utf-8"}, b""
    if home:
        return 302, {"Location": home}, b""
    return 200, {"Content-Type": "text/html; charset=utf-8"}, (
        b"<!doctype html><html><body><h1>DERP</h1><p>This is a "
        b"<a href='https://tailscale.com/kb/1232/derp-servers'>DERP</a> relay server (wgc derper).</p>"
        b"</body></html>")


def _debug_page(server: Any) -> bytes:
    d = details(server)
    rows = []
    flat = {**{f"relay.{k}": v for k, v in d["relay"].items() if k not in ("drops", "refused")},
            **{f"drops.{k}": v for k, v in d["relay"]["drops"].items()},
            **{f"refused.{k}": v for k, v in d["relay"]["refused"].items()},
            **{f"http.{k}": v for k, v in d["http"].items()}}
    for key, value in sorted(flat.items()):
        rows.append(f"<tr><td>{html.escape(key)}</td><td>{html.escape(str(value))}</td></tr>")
    links = "".join(f"<li>{html.escape(str(m))}</li>" for m in d["mesh_links"]) or "<li>none</li>"
    page = (f"<!doctype html><html><head><title>wgc derper</title><meta http-equiv=refresh content=2></head>"
            f"<body><h1>wgc derper</h1><p>server key {html.escape(d['server_key'])}; up "
            f"{d['uptime_seconds']} s</p><table border=1>{''.join(rows)}</table><h2>mesh</h2><ul>{links}</ul>"
            f"<p><a href='/debug/vars'>/debug/vars</a> (JSON), <a href='/debug/varz'>/debug/varz</a> "
            f"(Prometheus)</p></body></html>")
    return page.encode()


def answer(server: Any, req: httpwire.Head, ip: str) -> tuple[int, dict[str, str], bytes]:
    path, method = req.path, req.method
    get = method in ("GET", "HEAD")
    if path in ("/derp/probe", "/derp/latency-check"):
        if not get:
            return 405, {}, b"bogus probe method\n"
        return 200, {"Access-Control-Allow-Origin": "*"}, b""
    if path == "/generate_204":
        headers = {"Cache-Control": NO_CACHE}
        challenge = req.header(CHALLENGE_HEADER)
        if challenge and _CHALLENGE.match(challenge):
            headers[RESPONSE_HEADER] = "response " + challenge
        return 204, headers, b""
    if path == "/healthz":
        if req.header("authorization"):
            if not _bearer_ok(server, req):
                return 401, {"WWW-Authenticate": "Bearer"}, b"bad or missing token\n"
            return 200, {"Content-Type": "application/json"}, json.dumps(details(server), indent=1).encode()
        return 200, {}, b"ok\n"
    if path.startswith("/debug"):
        if req.header("x-forwarded-for") or not (_loopback(ip) or _bearer_ok(server, req)):
            return 403, {}, b"debug access denied\n"
        if path in ("/debug", "/debug/"):
            return 200, {"Content-Type": "text/html; charset=utf-8"}, _debug_page(server)
        if path == "/debug/vars":
            return 200, {"Content-Type": "application/json"}, json.dumps(details(server), indent=1).encode()
        if path == "/debug/varz":   # derper's Prometheus page (tsweb): the collector /metrics serves
            from prometheus_client import generate_latest

            from derp.aio.metrics import make_registry
            return 200, {"Content-Type": "text/plain; version=0.0.4"}, generate_latest(make_registry(server))
        return 404, {}, b"not found\n"
    if path == "/derpmap/default":
        if server.options.derpmap_json is None:
            return 404, {}, b"no DERP map configured (--derpmap-file)\n"
        return 200, {"Content-Type": "application/json"}, server.options.derpmap_json
    if path == "/robots.txt":
        return 200, {}, b"User-agent: *\nDisallow: /\n"
    if path == "/bootstrap-dns":
        server.http_counters["bootstrap_dns_requests"] += 1
        query = urllib.parse.parse_qs(req.query).get("q", [""])[0][:253]
        body = server.bootstrap.answer(query) if server.bootstrap is not None else b"{}"
        return 200, {"Content-Type": "application/json"}, body
    if path == "/":
        return _home(server)
    return 404, {}, b"not found\n"
