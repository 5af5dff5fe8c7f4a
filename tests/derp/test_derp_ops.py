"""What a relay operator watches (issue 10 §4), against `wgc derper` processes on loopback: one INFO line
when a client's session starts and one when it ends (short key, address, transport, NotePreferred,
duration, bytes, reason; the whole node key only with -v), and derper's `/debug/varz` (Prometheus text of
the same collector as /metrics, under the /debug access rules)."""
from __future__ import annotations

import asyncio
import re
import time

import pytest

from derp import frames as F
from derp.constants import FrameType
from derp.keys import short

from derp_support import RawDerp, client, exchange, http_get, new_key

pytestmark = pytest.mark.timeout(60)


def run(coro, timeout: float = 30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def session_lines(log: str, key: bytes) -> list[str]:
    return [line for line in log.splitlines() if f"key={short(key)} " in line or f"key=nodekey:{key.hex()} " in line]


def wait_for(fn, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = fn()
        if found:
            return found
        time.sleep(0.05)
    return fn()


def test_one_line_per_connection_and_disconnection(derper, pki) -> None:
    srv = derper("--open-relay", "--conn-rate", "0")

    async def main():
        (ka, pa), (kb, pb) = new_key(), new_key()
        a = client(srv.url, ka, pki["ca"], preferred=True)
        b = client(srv.url, kb, pki["ca"], transport="websocket")
        await a.start()
        await b.start()
        await exchange(a, b, pb, b"x" * 1000)
        await a.close()
        await asyncio.sleep(0.3)
        await b.close()
        return pa, pb
    pa, pb = run(main())
    lines_a = wait_for(lambda: [ln for ln in session_lines(srv.log(), pa) if "disconnected" in ln] and
                       session_lines(srv.log(), pa))
    lines_b = wait_for(lambda: [ln for ln in session_lines(srv.log(), pb) if "disconnected" in ln] and
                       session_lines(srv.log(), pb))
    assert len(lines_a) == 2 and len(lines_b) == 2, srv.log()
    assert re.search(rf"INFO .*client connected key={re.escape(short(pa))} addr=127\.0\.0\.1:\d+ transport=tls$",
                     lines_a[0]), lines_a[0]
    m = re.search(rf"client disconnected key={re.escape(short(pa))} addr=127\.0\.0\.1:\d+ transport=tls home=yes "
                  r'duration=(\d+\.\d)s rx=(\d+) tx=(\d+) reason="closed by the client"$', lines_a[1])
    assert m, lines_a[1]
    assert float(m.group(1)) < 30 and int(m.group(2)) > 1000 and int(m.group(3)) > 0
    assert "transport=tls+websocket home=no" in lines_b[1]
    m = re.search(r"rx=(\d+) tx=(\d+)", lines_b[1])
    assert int(m.group(2)) > 1000, lines_b[1]       # b received the 1000-byte packet
    assert pa.hex() not in srv.log() and pb.hex() not in srv.log()   # short keys only without -v


def test_whole_key_only_with_verbose_and_server_side_reasons(derper) -> None:
    srv = derper("--open-relay", "--conn-rate", "0", "-v", tls=False)

    async def main():
        ka, pa = new_key()
        raw = await RawDerp.connect(srv.port, ka)
        raw.writer.write(F.frame(FrameType.WATCH_CONNS))   # needs the mesh key: cut
        assert await raw.closed_by_server(5)
        return pa
    pa = run(main())
    lines = wait_for(lambda: [ln for ln in srv.log().splitlines() if f"key=nodekey:{pa.hex()} " in ln
                              and "client " in ln and "disconnected" in ln])
    assert len(lines) == 1, srv.log()[-2000:]
    assert "transport=http home=no" in lines[0]
    assert lines[0].endswith('reason="bad input: WatchConns needs the mesh key: insufficient permissions"'), lines[0]


def test_debug_varz_is_prometheus_text_on_loopback_only(derper, pki) -> None:
    srv = derper("--open-relay", "--conn-rate", "0")

    async def main():
        ka, _ = new_key()
        a = client(srv.url, ka, pki["ca"])
        await a.start()
        got = await http_get(srv.port, "/debug/varz", tls_ca=pki["ca"])
        proxied = await http_get(srv.port, "/debug/varz", {"X-Forwarded-For": "203.0.113.9"}, tls_ca=pki["ca"])
        await a.close()
        return got, proxied
    (status, headers, body), proxied = run(main())
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    assert "# TYPE derp_accepts_total counter" in text
    assert re.search(r"^derp_current_connections 1\.0$", text, re.M), text
    assert re.search(r"^derp_max_clients 0\.0$", text, re.M)
    assert proxied[0] == 403
