"""`wgc derper` as a real process, with real clients over TLS, plain HTTP and WebSocket on loopback."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import ssl
import subprocess
import sys

import pytest

from derp import protocol as P
from derp.aio.client import ConnectError, DerpClient, Disconnected, targets_for_url
from derp.constants import PeerGoneReason

from derp_support import RawDerp, client, dropped, exchange, fill_until_queue_full, http_get, metric, new_key

pytestmark = pytest.mark.timeout(60)


def run(coro, timeout: float = 30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def next_event(c: DerpClient, kind: type, timeout: float = 5.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        ev = await c.recv(max(0.01, deadline - loop.time()))
        if isinstance(ev, kind):
            return ev


@pytest.mark.parametrize("transport, engine", [("upgrade", "lean"), ("websocket", "lean"), ("upgrade", "asyncio"),
                                               ("websocket", "asyncio")])
def test_two_clients_over_tls(derper, pki, transport, engine) -> None:
    srv = derper("--open-relay", "--tls-engine", engine)

    async def main():
        (ka, pa), (kb, pb) = new_key(), new_key()
        a = client(srv.url, ka, pki["ca"], transport=transport)
        b = client(srv.url, kb, pki["ca"], transport=transport)
        await a.start()
        await b.start()
        try:
            await exchange(a, b, pb, b"hello b")
            await exchange(b, a, pa, b"hello a")
            big = os.urandom(65536)  # the largest packet DERP carries
            await exchange(a, b, pb, big)
            assert 0 < await a.ping() < 1.0
            await a.close()
            gone = await next_event(b, P.PeerGoneReceived)
            assert gone == P.PeerGoneReceived(pa, PeerGoneReason.DISCONNECTED)
        finally:
            await a.close()
            await b.close()

    run(main())


def test_untrusted_certificate_is_refused(derper) -> None:
    srv = derper("--open-relay")

    async def main():
        c = client(srv.url, new_key()[0], None, reconnect=False)
        with pytest.raises(ConnectError, match="TLS certificate verify failed: unable to get local issuer"):
            await c.connect_once()

    run(main())


def test_upgrade_falls_back_to_websocket_behind_a_websocket_only_proxy(derper) -> None:
    srv = derper("--open-relay", tls=False)

    async def proxy(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        if b"upgrade: derp" in head.lower():
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            writer.close()
            return
        up_r, up_w = await asyncio.open_connection("127.0.0.1", srv.port)
        up_w.write(head)

        async def pipe(r, w):
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except ConnectionError:
                pass
            finally:
                w.close()
        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))

    async def main():
        px = await asyncio.start_server(proxy, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{px.sockets[0].getsockname()[1]}/derp"
        (ka, pa), (kb, pb) = new_key(), new_key()
        a, b = client(url, ka), client(url, kb)
        try:
            await a.start()
            await b.start()
            assert a.websocket_fallbacks == 1 and a.stream.ws is not None
            await exchange(a, b, pb, b"through the websocket-only proxy")
        finally:
            await a.close()
            await b.close()
            px.close()

    run(main())


def test_acl_refusal_and_sighup_reload(derper, tmp_path) -> None:
    (ka, pa), (kb, pb) = new_key(), new_key()
    keys = tmp_path / "allowed"
    keys.write_text(f"# lab\n{base64.b64encode(pa).decode()}  # alice\n")
    srv = derper("--allowed-keys-file", str(keys), tls=False)

    async def main():
        a = client(srv.url, ka)
        await a.start()
        b = client(srv.url, kb, reconnect=False)
        with pytest.raises(ConnectError):
            await b.connect_once()
        text = (await http_get(int(srv.metrics.rsplit(":", 1)[1]), "/metrics"))[2].decode()
        assert 'derp_admission_refused_total{reason="acl"} 1.0' in text  # a refused admission ...
        assert not [ln for ln in text.splitlines() if ln.startswith("derp_packets_dropped_total")]  # ... no drop
        keys.write_text(keys.read_text() + base64.b64encode(pb).decode() + "\n")
        srv.proc.send_signal(signal.SIGHUP)
        b = client(srv.url, kb)
        for _ in range(50):
            try:
                await b.connect_once()
                break
            except ConnectError:
                await asyncio.sleep(0.1)
        assert a.connected and a.stream is not None and not a.stream.done.done()  # alice was not dropped
        try:
            await exchange(a, b, pb, b"allowed now")
            keys.write_text(base64.b64encode(pb).decode() + "\n")  # alice removed
            first = a.stream
            srv.proc.send_signal(signal.SIGHUP)
            assert await asyncio.wait_for(first.done, 5)  # her connection is closed ...
            assert b.stream is not None and not b.stream.done.done()  # ... bob's is not
        finally:
            await a.close()
            await b.close()

    run(main())


def test_refuses_to_start_without_acl_or_open_relay() -> None:
    out = subprocess.run([sys.executable, "-m", "derp", "-a", "127.0.0.1:0", "--no-stun", "--certmode", "none"],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 2
    assert "--allowed-keys-file" in out.stderr and "--open-relay" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("args, words", [
    (["--certmode", "manual", "--hostname", "nothere", "--certdir", "/nonexistent"], "nothere.crt"),
    (["--certmode", "letsencrypt"], "public DNS name"),
    (["--certmode", "none", "--mesh-with", "127.0.0.1:1"], "--mesh-psk-file"),
    (["--certmode", "none", "-a", "127.0.0.1:notaport"], "bad port"),
    (["--certmode", "none", "--derpmap-file", "/nonexistent.json"], "cannot read DERP map file"),
    (["--certmode", "none", "--trust-proxy-hops", "0"], "--trust-proxy-hops: 0 is out of range"),
    (["--certmode", "none", "--max-conns-per-ip", "-1"], "--max-conns-per-ip: -1 is out of range"),
])
def test_cli_usage_errors(args, words) -> None:
    out = subprocess.run([sys.executable, "-m", "derp", "--no-stun", "--open-relay", "--metrics-addr", "off",
                          "-a", "127.0.0.1:0", *args], capture_output=True, text=True, timeout=20)
    assert out.returncode == 2 and words in out.stderr and "Traceback" not in out.stderr


def test_connection_burst_gets_429(derper) -> None:
    srv = derper("--open-relay", "--conn-rate", "5", "--conn-burst", "10", tls=False)

    async def main():
        statuses = [r[0] for r in await asyncio.gather(*(http_get(srv.port, "/derp/probe") for _ in range(30)))]
        assert statuses.count(200) >= 10 and statuses.count(429) >= 10 and set(statuses) == {200, 429}
        await asyncio.sleep(0.5)  # the bucket refills at 5/s
        assert (await http_get(srv.port, "/derp/probe"))[0] == 200
        host, port = srv.metrics.rsplit(":", 1)
        _, _, body = await http_get(int(port), "/metrics")
        line = [ln for ln in body.decode().splitlines() if ln.startswith("derp_conn_rate_limited_total")][0]
        assert float(line.split()[1]) >= 5

    run(main())


def test_max_clients(derper) -> None:
    srv = derper("--open-relay", "--max-clients", "2", tls=False)

    async def main():
        (k1, _), (k2, _), (k3, _) = new_key(), new_key(), new_key()
        c1, c2 = client(srv.url, k1), client(srv.url, k2)
        await c1.start()
        await c2.start()
        c3 = client(srv.url, k3, reconnect=False)
        with pytest.raises(ConnectError):
            await c3.connect_once()
        await c1.close()
        await asyncio.sleep(0.2)
        c3 = client(srv.url, k3)
        await c3.start()
        await c2.close()
        await c3.close()

    run(main())


@pytest.mark.parametrize("garbage", [
    b"\x07\x00\x00\x00\x02\x01\x01",              # NotePreferred with 2 bytes
    b"\x04\x00\x00\x00\x05short",                 # SendPacket shorter than a key
    b"\x04\x7f\x00\x00\x00",                      # a 2 GiB frame
    b"\x10\x00\x00\x00\x00",                      # WatchConns without the mesh key
    b"\x04\x00\x10\x00\x00" + bytes(4000),         # a 1 MiB SendPacket: refused at its header
    b"\x12\x00\x00\x03\xe9",                      # a Ping header claiming 1001 bytes (no body needed)
])
def test_malformed_frame_closes_only_that_client(derper, garbage) -> None:
    srv = derper("--open-relay", tls=False)

    async def main():
        (ka, pa), (kb, pb) = new_key(), new_key()
        a, b = client(srv.url, ka), client(srv.url, kb)
        await a.start()
        await b.start()
        bad = await RawDerp.connect(srv.port, new_key()[0])
        try:
            bad.writer.write(garbage)
            assert await bad.closed_by_server(3.0)
            await exchange(a, b, pb, b"still fine")
            await exchange(b, a, pa, b"still fine too")
        finally:
            bad.close()
            await a.close()
            await b.close()

    run(main())


@pytest.mark.parametrize("tls", [False, True])
def test_slowloris_is_cut_and_others_unaffected(derper, pki, tls) -> None:
    srv = derper("--open-relay", "--read-header-timeout", "1", tls=tls)
    ca = pki["ca"] if tls else None

    async def main():
        ctx = ssl.create_default_context(cafile=ca) if tls else None
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port, ssl=ctx)
        (ka, pa), (kb, pb) = new_key(), new_key()
        a, b = client(srv.url, ka, ca), client(srv.url, kb, ca)
        try:
            loop = asyncio.get_running_loop()
            start = loop.time()
            writer.write(b"GET /derp HTTP/1.1\r\n")
            await a.start()
            await b.start()
            closed = False
            for ch in b"Host: x\r\nX-Slow: 1":  # one byte every 100 ms, never finishing the head
                writer.write(bytes([ch]))
                await asyncio.sleep(0.1)
                if reader.at_eof():
                    closed = True
                    break
            if not closed:
                closed = (await asyncio.wait_for(reader.read(), 3.0)) == b""
            assert closed and loop.time() - start < 3.5
            await exchange(a, b, pb, b"unaffected")
        finally:
            writer.close()
            await a.close()
            await b.close()

    run(main())


@pytest.mark.parametrize("tls", [False, True])
def test_slow_reader_is_bounded_and_does_not_stall_others(derper, pki, tls) -> None:
    srv = derper("--open-relay", "--tcp-write-timeout", "2", tls=tls)
    ca = pki["ca"] if tls else None

    async def main():
        (ka, pa), (kb, pb), (ks, ps) = new_key(), new_key(), new_key()
        a, b = client(srv.url, ka, ca), client(srv.url, kb, ca)
        await a.start()
        await b.start()
        slow = await RawDerp.connect(srv.port, ks, ca=ca)  # never reads again
        try:
            sent = await fill_until_queue_full(a, srv, ps)
            # dropped and counted rather than queued without bound
            assert await metric(srv, 'derp_packets_dropped_total{reason="queue_full"}') > 0
            for _ in range(50):  # each packet counted once: relayed (really queued) or dropped by reason
                relayed = await metric(srv, "derp_packets_relayed_total")
                if relayed + await dropped(srv) >= sent:
                    break
                await asyncio.sleep(0.1)
            assert relayed + await dropped(srv) == sent
            assert await metric(srv, "derp_packets_sent_total") == relayed  # derper's name for it
            await exchange(a, b, pb, b"not stalled")
            # The stalled writer is cut after --tcp-write-timeout. Data keeps going to it meanwhile: buffers
            # on the reader's side may still take what the server had pending, which ends the stall, and
            # with nothing more to send it would never start again.
            payload = os.urandom(60000)
            for _ in range(50):
                for _ in range(10):
                    a.send_packet(ps, payload)
                if await metric(srv, 'derp_http_events_total{event="write_timeouts"}') >= 1:
                    break
                await asyncio.sleep(0.1)
            assert await metric(srv, 'derp_http_events_total{event="write_timeouts"}') >= 1
            assert await metric(srv, "derp_active_clients") == 2
        finally:
            slow.close()
            await a.close()
            await b.close()

    run(main())


def test_meshed_servers_relay_between_their_clients(derper, pki, tmp_path) -> None:
    from derp_support import free_port
    psk = tmp_path / "mesh.key"
    psk.write_text(os.urandom(32).hex() + "\n")
    p1, p2 = free_port(), free_port()
    mesh = ["--open-relay", "--mesh-psk-file", str(psk), "--mesh-ca-file", pki["ca"],
            "--mesh-with", f"127.0.0.1:{p1},127.0.0.1:{p2}"]  # each lists both, itself included
    s1 = derper(*mesh, port=p1)
    s2 = derper(*mesh, port=p2)

    async def main():
        (ka, pa), (kb, pb) = new_key(), new_key()
        a = client(s1.url, ka, pki["ca"])
        b = client(s2.url, kb, pki["ca"])
        await a.start()
        await b.start()
        try:
            await exchange(a, b, pb, b"a on s1 to b on s2", timeout=10)
            await exchange(b, a, pa, b"b on s2 to a on s1", timeout=10)
            assert await metric(s1, "derp_packets_forwarded_out_total") >= 1
            assert await metric(s2, "derp_packets_forwarded_in_total") >= 1
            assert await metric(s1, "derp_mesh_links_up") == 1  # the link to itself was dropped
            assert await metric(s1, "derp_mesh_peers") == 1
        finally:
            await a.close()
            await b.close()

    run(main())


@pytest.mark.parametrize("engine", ["lean", "asyncio"])
def test_tls_handshake_stall_and_garbage_are_cut(derper, pki, engine) -> None:
    srv = derper("--open-relay", "--read-header-timeout", "1", "--tls-engine", engine)

    async def main():
        (ka, pa), (kb, pb) = new_key(), new_key()
        a, b = client(srv.url, ka, pki["ca"]), client(srv.url, kb, pki["ca"])
        await a.start()
        await b.start()
        try:
            silent = await asyncio.open_connection("127.0.0.1", srv.port)  # TCP only, never a ClientHello
            garbage = await asyncio.open_connection("127.0.0.1", srv.port)
            garbage[1].write(b"GET / HTTP/1.1\r\n\r\n" + os.urandom(500))  # not TLS at all
            t0 = asyncio.get_running_loop().time()
            for reader, writer in (garbage, silent):
                try:
                    await asyncio.wait_for(reader.read(), 4)  # EOF (or an alert, then EOF) in time
                except ConnectionError:
                    pass
                writer.close()
            assert asyncio.get_running_loop().time() - t0 < 4
            await exchange(a, b, pb, b"unaffected by broken TLS peers")
        finally:
            await a.close()
            await b.close()

    run(main())
