"""Abuse limits of `wgc derper` as derper and nefia-derp have them: the per-client byte rate (--client-rate-limit,
derper's -rate-config, reloaded on SIGHUP) measured end to end, the global accept limit
(-accept-connection-limit/-burst), and the TCP options of accepted sockets (-tcp-keepalive-time,
-tcp-user-timeout). Time bounds are lower bounds the rate itself imposes, with wide margins."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import ssl
import time

import pytest

from derp.aio import derper as D
from derp.aio.derper_args import parse_command_line
from derp.aio.server import DerpServer
from derp.ratelimit import TokenBucket
from derp.server import AccessList, Relay, ServerConfig

from derp_support import client, dropped, http_get, metric, new_key

pytestmark = pytest.mark.timeout(180)
PACKETS, SIZE = 400, 1000            # 412,800 frame bytes (each SendPacket: 32-byte key + 1000)
RATE = 100_000                       # bytes/s; the burst is raised to one whole packet frame, 65,568
FLOOR = (PACKETS * (SIZE + 32) - 65_568) / RATE   # 3.47 s: no limited run can be faster


def run(coro, timeout: float = 120.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def relay_time(url: str) -> tuple[float, int]:
    """Send PACKETS packets from one client to another as fast as the sender's link takes them; (seconds until
    the last arrived, packets that arrived)."""
    (ka, pa), (kb, pb) = new_key(), new_key()
    got = [0]
    done = asyncio.Event()

    def on_packet(src: bytes, data: bytes) -> None:
        got[0] += 1
        if got[0] == PACKETS:
            done.set()

    a, b = client(url, ka), client(url, kb, on_packet=on_packet, on_event=lambda ev: None)
    await a.start()
    await b.start()
    try:
        while got[0] == 0:                                # the relay knows b: one packet gets through
            a.send_packet(pb, b"hello")
            await asyncio.sleep(0.05)
        got[0] = 0
        payload = os.urandom(SIZE)
        t0 = time.monotonic()
        sent = 0
        while sent < PACKETS:
            if a.send_packet(pb, payload):
                sent += 1
            else:
                await asyncio.sleep(0.002)                # the link pushes back: wait, never drop
        try:
            await asyncio.wait_for(done.wait(), 60)
        except asyncio.TimeoutError:
            pass
        return time.monotonic() - t0, got[0]
    finally:
        await a.close()
        await b.close()


def test_the_byte_rate_delays_a_client_and_drops_nothing(derper) -> None:
    free = derper("--open-relay", tls=False)
    limited = derper("--open-relay", "--client-rate-limit=100KB", "--client-rate-burst=64KiB", tls=False)

    async def main():
        fast, fast_got = await relay_time(free.url)
        slow, slow_got = await relay_time(limited.url)
        assert fast_got == slow_got == PACKETS                       # delayed, not dropped
        assert slow >= FLOOR * 0.8, (slow, FLOOR)                    # the rate held (a lower bound only)
        assert slow > 2 * fast, (slow, fast)
        assert await dropped(limited) == 0
        assert await metric(limited, 'derp_http_events_total{event="rate_limit_waits"}') > 0
        assert await metric(free, 'derp_http_events_total{event="rate_limit_waits"}') == 0
        print(f"\n{PACKETS} x {SIZE} B: no limit {fast:.2f} s, 100 KB/s {slow:.2f} s (floor {FLOOR:.2f} s)")
    run(main())


def test_rate_config_is_derpers_format_and_sighup_applies_it_to_connected_clients(derper, tmp_path) -> None:
    conf = tmp_path / "rate.json"
    conf.write_text(json.dumps({"PerClientRateLimitBytesPerSec": 0}))
    srv = derper("--open-relay", "-rate-config", str(conf), tls=False)

    async def main():
        fast, _ = await relay_time(srv.url)
        conf.write_text(json.dumps({"PerClientRateLimitBytesPerSec": RATE, "PerClientRateBurstBytes": 1}))
        srv.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while "client-rate=100000 bytes/sec, client-burst=65568 bytes" not in srv.log():
            assert time.monotonic() < deadline, srv.log()
            await asyncio.sleep(0.05)
        slow, got = await relay_time(srv.url)
        assert got == PACKETS and slow >= FLOOR * 0.8 and slow > 2 * fast, (slow, fast)
    run(main())


def test_a_bad_rate_config_is_one_line(tmp_path) -> None:
    from admit_support import derper_fails
    conf = tmp_path / "rate.json"
    conf.write_text('{"PerClientRateLimitBytesPerSec": "fast"}')
    line = derper_fails("-rate-config", str(conf))
    assert str(conf) in line and "PerClientRateLimitBytesPerSec" in line
    line = derper_fails("-rate-config", str(conf), "--client-rate-limit", "1MB")
    assert "not both" in line


def test_the_bucket_in_stepped_time() -> None:
    b = TokenBucket(100.0, 1000.0, 0.0)
    assert b.refill(0.0) == 1000.0
    b.spend(1500.0)                                  # one frame into debt
    assert b.debt_seconds() == pytest.approx(5.0)
    assert b.refill(5.0) == pytest.approx(0.0) and b.debt_seconds() == 0.0
    assert b.refill(100.0) == 1000.0                 # never above the burst


# ---- the global accept limit ---------------------------------------------------------------------------------

async def probe(port: int, ca: str | None) -> bool:
    """GET /derp/probe on a new connection: True when answered, False when the relay closed it unanswered."""
    try:
        status, _, _ = await http_get(port, "/derp/probe", tls_ca=ca, timeout=5)
    except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, IndexError, ValueError):
        return False
    return status == 200


@pytest.mark.parametrize("tls", [False, True])
def test_accept_connection_limit_closes_new_connections_beyond_it(derper, pki, tls) -> None:
    srv = derper("--open-relay", "--conn-rate=0", "-accept-connection-limit=0.5", "-accept-connection-burst=3",
                 tls=tls)

    async def main():
        answered = [await probe(srv.port, pki["ca"] if tls else None) for _ in range(8)]
        assert answered[:3] == [True] * 3 and answered.count(True) <= 4, answered
        assert await metric(srv, 'derp_http_events_total{event="accept_limited"}') >= 4
        await asyncio.sleep(2.2)                     # a token back
        assert await probe(srv.port, pki["ca"] if tls else None)
    run(main())


# ---- TCP keepalive and user timeout on accepted sockets --------------------------------------------------------

def test_derper_flags_reach_the_server_options() -> None:
    args = parse_command_line(D.build_parser(), ["-tcp-keepalive-time=3m", "-tcp-user-timeout=7s",
                                                 "-accept-connection-limit=50", "-accept-connection-burst=100",
                                                 "--client-rate-limit=1MB/s", "-home=blank", "-derp=false"], {})
    args.metrics_token = ""
    o = D.server_options(args)
    assert (o.tcp_keepalive, o.tcp_user_timeout, o.accept_limit, o.accept_burst, o.client_rate, o.home,
            o.run_derp) == (180, 7, 50, 100, 1_000_000, "blank", False)
    assert D.server_options(parse_command_line(D.build_parser(), [], {})).accept_limit == 0   # +Inf: none


@pytest.mark.parametrize("engine", ["plain", "lean", "asyncio"])
def test_accepted_sockets_get_keepalive_and_user_timeout(pki, engine) -> None:
    async def main():
        from derp.aio.tls import load_server_context
        ctx = None if engine == "plain" else load_server_context(os.path.join(pki["certdir"], "127.0.0.1.crt"),
                                                                 os.path.join(pki["certdir"], "127.0.0.1.key"))
        options = D.ServerOptions(tcp_keepalive=180.0, tcp_user_timeout=7.0,
                                  tls_engine="asyncio" if engine == "asyncio" else "lean")
        relay = Relay(bytes(range(32)), ServerConfig(open_relay=True), AccessList(None), lambda: 0.5)
        server = DerpServer(relay, options, ctx)
        port = await server.listen("127.0.0.1", 0)
        cctx = ssl.create_default_context(cafile=pki["ca"]) if ctx else None
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=cctx)
        try:
            deadline = time.monotonic() + 5
            while not server.conns:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            sock = next(iter(server.conns)).transport.get_extra_info("socket")
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 180
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 180
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 7000
        finally:
            writer.close()
            await server.shutdown(0)
    run(main())
