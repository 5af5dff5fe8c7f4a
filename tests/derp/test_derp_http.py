"""HTTP head framing used by the derper and the client, and the per-IP token buckets (time passed in)."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from derp import httpwire
from derp.errors import ParseError
from derp.ratelimit import PerKeyLimiter, TokenBucket


def test_request_and_response_heads() -> None:
    raw = httpwire.request("GET", "/derp?x=1", "derp.example", {"Upgrade": "DERP", "Connection": "Upgrade"})
    end = httpwire.find_head_end(raw + b"rest")
    assert end == len(raw)
    req = httpwire.parse_request(raw[:end])
    assert (req.method, req.path, req.query) == ("GET", "/derp", "x=1")
    assert req.header("UPGRADE") == "DERP" and req.header("host") == "derp.example"
    resp = httpwire.parse_response(httpwire.response(101, {"Upgrade": "DERP", "Derp-Version": "2"}))
    assert resp.status == 101 and resp.header("derp-version") == "2"
    assert b"Content-Length" not in httpwire.response(101, {})
    assert httpwire.response(404, {}, b"nope").endswith(b"Content-Length: 4\r\nConnection: close\r\n\r\nnope")
    assert httpwire.find_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n") == -1


def test_repeated_headers_are_joined_and_bad_heads_refused() -> None:
    req = httpwire.parse_request(b"GET / HTTP/1.1\r\nSec-WebSocket-Protocol: a\r\nsec-websocket-protocol: derp")
    assert req.header("sec-websocket-protocol") == "a, derp"
    for bad in (b"GET /\r\n", b"GET / HTTP/2\r\n", b"GET / HTTP/1.1\r\nno colon here", b"G@T / HTTP/1.1",
                b"GET /\xff HTTP/1.1"):
        with pytest.raises(ParseError):
            httpwire.parse_request(bad)
    with pytest.raises(ParseError, match="too large"):
        httpwire.find_head_end(b"x" * (httpwire.MAX_HEAD + 1))


@given(st.binary(max_size=300))
def test_garbage_heads_raise_only_parse_error(blob) -> None:
    for fn in (httpwire.parse_request, httpwire.parse_response, httpwire.find_head_end):
        try:
            fn(blob)
        except ParseError:
            pass


def test_token_bucket_with_stepped_time() -> None:
    b = TokenBucket(rate=5, burst=10, now=0.0)
    assert [b.allow(0.0) for _ in range(11)] == [True] * 10 + [False]
    assert b.allow(0.1) is False and b.allow(0.2) is True  # 5/s: one token per 200 ms
    lim = PerKeyLimiter(rate=1, burst=2)
    assert [lim.allow("10.0.0.1", 0) for _ in range(3)] == [True, True, False]
    assert lim.allow("10.0.0.2", 0) and lim.limited == 1
    lim.prune(10.0)  # idle buckets (refilled) are forgotten
    assert lim.buckets == {}
    assert PerKeyLimiter(rate=0, burst=0).allow("x", 0)  # rate 0 disables the limit


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.floats(0, 0.5)), max_size=60))
def test_limiter_never_exceeds_burst_plus_rate(events) -> None:
    lim = PerKeyLimiter(rate=5, burst=10)
    now, allowed = 0.0, {}
    for key, step in events:
        now += step
        if lim.allow(key, now):
            allowed[key] = allowed.get(key, 0) + 1
    for count in allowed.values():
        assert count <= 10 + 5 * now + 1e-9


def _head(*headers: str) -> httpwire.Head:
    return httpwire.parse_request(("GET /derp HTTP/1.1\r\n" + "".join(h + "\r\n" for h in headers)).encode())


def test_client_address_is_the_entry_the_trusted_proxy_added() -> None:
    forged = _head("X-Forwarded-For: 198.51.100.7, 203.0.113.9")  # client sent the first, the proxy appended
    assert httpwire.client_address(forged, "10.0.0.1") == "203.0.113.9"
    assert httpwire.client_address(forged, "10.0.0.1", hops=2) == "198.51.100.7"  # two proxies in front
    assert httpwire.client_address(forged, "10.0.0.1", hops=5) == "198.51.100.7"  # fewer entries: leftmost
    lines = _head("X-Forwarded-For: 198.51.100.7", "X-Forwarded-For: 203.0.113.9:4711")  # appended as a line
    assert httpwire.client_address(lines, "10.0.0.1") == "203.0.113.9"
    assert httpwire.client_address(_head("X-Forwarded-For: [2001:db8::5]:80"), "p") == "2001:db8::5"
    assert httpwire.client_address(_head("X-Forwarded-For: ::ffff:192.0.2.4"), "p") == "192.0.2.4"
    assert httpwire.client_address(_head("X-Forwarded-For: 1.2.3.4, not-an-ip"), "10.0.0.1") == "10.0.0.1"
    assert httpwire.client_address(_head(), "10.0.0.1") == "10.0.0.1"
    fly = _head("Fly-Client-IP: 192.0.2.8", "X-Forwarded-For: 198.51.100.7")
    assert httpwire.client_address(fly, "10.0.0.1") == "198.51.100.7"  # only the header the operator named
    assert httpwire.client_address(fly, "10.0.0.1", "Fly-Client-IP") == "192.0.2.8"
    assert httpwire.client_address(_head("X-Forwarded-For: 192.0.2.8"), "10.0.0.1", "X-Real-IP") == "10.0.0.1"


@given(st.text(max_size=80), st.integers(1, 4))
def test_client_address_never_raises(value, hops) -> None:
    import ipaddress
    req = httpwire.Head(("GET", "/", "HTTP/1.1"), {"x-forwarded-for": value})
    got = httpwire.client_address(req, "peer", hops=hops)
    assert got == "peer" or ipaddress.ip_address(got)
