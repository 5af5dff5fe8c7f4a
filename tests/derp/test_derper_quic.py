"""`wgc derper` with DERP over QUIC (docs/derp-quic.md): one process serving a QUIC client, a TCP
(Upgrade: DERP, the Tailscale protocol) client and a WebSocket client; its flags, metrics, self-signed map
node, bind errors and graceful shutdown."""
from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys

import pytest

from derp_support import client, exchange, metric, new_key
from quic_support import close_all, quic_client, send_datagram

pytestmark = pytest.mark.timeout(90)


def run(coro, timeout: float = 60.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def quic_port(d) -> int:
    fields = dict(p.split("=", 1) for p in d.ready.split()[2:])
    return int(fields["quic"])


def test_quic_tcp_and_websocket_clients_through_one_derper(derper, pki) -> None:
    d = derper("--open-relay")
    assert quic_port(d) == d.port   # on by default, at the DERP port's number

    async def main():
        (pq, kq), (pt, kt), (pw, kw) = new_key(), new_key(), new_key()
        q = await quic_client(pq, d.port, pki["ca"])
        t = client(d.url, pt, pki["ca"], transport="upgrade")
        w = client(d.url, pw, pki["ca"], transport="websocket")
        await t.start(timeout=5)
        await w.start(timeout=5)
        try:
            for src, dst, key in ((t, q, kq), (w, q, kq), (q, t, kt), (q, w, kw), (t, w, kw)):
                data = b"%s -> %s" % (repr(src).encode(), key.hex().encode())
                if src is q:
                    loop = asyncio.get_running_loop()
                    deadline = loop.time() + 3
                    while True:
                        send_datagram(q, key, data)
                        try:
                            if (await dst.recv_packet(0.3)).data == data:
                                break
                        except asyncio.TimeoutError:
                            assert loop.time() < deadline
                else:
                    await exchange(src, dst, key, data)
            assert await metric(d, "derp_quic_clients") == 1
            assert await metric(d, "derp_quic_datagrams_relayed_total") >= 2
            assert await metric(d, "derp_quic_datagrams_received_total") >= 2
            assert await metric(d, "derp_quic_stream_packets_total") == 0
            # graceful shutdown: the QUIC client is told Restarting, then its connection is closed
            d.proc.send_signal(signal.SIGTERM)
            reason = await asyncio.wait_for(q.stream.done, 10)
            assert q.stream.restarting is not None, reason
        finally:
            await close_all(q, t, w)
    run(main())
    assert d.proc.wait(15) == 0
    log = d.log()
    assert "transport=quic" in log and "transport=tls " in log


def test_no_quic_and_quic_port_flags(derper, pki) -> None:
    d = derper("--open-relay", "--no-quic")
    assert "quic=" not in d.ready
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    free = s.getsockname()[1]
    s.close()
    e = derper("--open-relay", "--quic-port", str(free))
    assert quic_port(e) == free

    async def main():
        (pa, ka), (pb, kb) = new_key(), new_key()
        a = await quic_client(pa, free, pki["ca"])
        b = await quic_client(pb, free, pki["ca"])
        try:
            assert send_datagram(a, kb, b"over --quic-port")
            assert (await b.recv_packet(3)).data == b"over --quic-port"
        finally:
            await close_all(a, b)
    run(main())


def test_plain_http_derper_has_no_quic(derper) -> None:
    d = derper("--open-relay", tls=False)
    assert "quic=" not in d.ready


def test_quic_bind_error_is_one_line_and_nothing_half_started(pki, tmp_path) -> None:
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind(("127.0.0.1", 0))
    port = busy.getsockname()[1]
    try:
        proc = subprocess.run([sys.executable, "-m", "derp", "-a", "127.0.0.1:0", "--no-stun", "--metrics-addr",
                               "off", "--http-port", "-1", "--certmode", "manual", "--hostname", "127.0.0.1",
                               "--certdir", pki["certdir"], "--open-relay", "--quic-port", str(port)],
                              capture_output=True, text=True, timeout=30)
    finally:
        busy.close()
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == f"wgc: cannot listen on 127.0.0.1:{port} (QUIC): address already in use"
    assert "Traceback" not in proc.stderr and "derper ready" not in proc.stdout


def test_selfsigned_node_carries_the_quic_port(derper, tmp_path) -> None:
    d = derper("--open-relay", "--certmode", "selfsigned", "--hostname", "127.0.0.1", "--certdir",
               str(tmp_path / "ss"), tls=False)
    line = next(ln for ln in d.log().splitlines() if "DERP map node:" in ln)
    node = json.loads(line.split("DERP map node: ", 1)[1])
    assert node["WgcQUICPort"] == quic_port(d) == d.port
    e = derper("--open-relay", "--no-quic", "--certmode", "selfsigned", "--hostname", "127.0.0.1", "--certdir",
               str(tmp_path / "ss"), tls=False)
    line = next(ln for ln in e.log().splitlines() if "DERP map node:" in ln)
    assert "WgcQUICPort" not in json.loads(line.split("DERP map node: ", 1)[1])


def test_mesh_peer_over_tcp_forwards_to_a_quic_client(derper, pki, tmp_path) -> None:
    import os
    from derp_support import free_port
    psk = tmp_path / "mesh.key"
    psk.write_text(os.urandom(32).hex() + "\n")
    p1, p2 = free_port(), free_port()
    mesh = ["--open-relay", "--mesh-psk-file", str(psk), "--mesh-ca-file", pki["ca"],
            "--mesh-with", f"127.0.0.1:{p1},127.0.0.1:{p2}"]
    s1 = derper(*mesh, port=p1)
    s2 = derper(*mesh, port=p2)

    async def main():
        (pt, kt), (pq, kq) = new_key(), new_key()
        t = client(s1.url, pt, pki["ca"], transport="upgrade")
        await t.start()
        q = await quic_client(pq, s2.port, pki["ca"])
        try:
            await exchange(t, q, kq, b"tcp on s1 to quic on s2", timeout=10)   # s1 -> mesh (TCP) -> s2 -> QUIC
            assert await metric(s2, "derp_packets_forwarded_in_total") >= 1
            assert await metric(s2, "derp_quic_datagrams_relayed_total") >= 1
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while True:   # and back: a QUIC datagram on s2, forwarded to s1 over the mesh
                send_datagram(q, kt, b"quic on s2 to tcp on s1")
                try:
                    if (await t.recv_packet(0.3)).data == b"quic on s2 to tcp on s1":
                        break
                except asyncio.TimeoutError:
                    assert loop.time() < deadline
            assert await metric(s2, "derp_packets_forwarded_out_total") >= 1
        finally:
            await close_all(t, q)
    run(main())


def test_the_admission_webhook_decides_for_quic_clients(derper, pki) -> None:
    from admit_support import Webhook
    from derp.aio.clientconn import ConnectError

    async def main():
        hook = await Webhook().start()
        hook.delay = 0.3          # the DERP stream is held while it thinks
        (pa, ka), (pb, kb), (pc, kc) = new_key(), new_key(), new_key()
        hook.allow = {"nodekey:" + ka.hex(), "nodekey:" + kc.hex()}
        d = derper("-verify-client-url", hook.url)
        try:
            c = await quic_client(pc, d.port, pki["ca"])
            a = await quic_client(pa, d.port, pki["ca"])
            try:
                assert send_datagram(a, kc, b"admitted by the webhook")
                assert (await c.recv_packet(3)).data == b"admitted by the webhook"
                with pytest.raises(ConnectError):
                    await quic_client(pb, d.port, pki["ca"])
                assert await metric(d, 'derp_admission_refused_total{reason="webhook_denied"}') == 1
                assert {r["json"]["NodePublic"] for r in hook.seen} == {"nodekey:" + k.hex() for k in (ka, kb, kc)}
            finally:
                await close_all(a, c)
        finally:
            hook.close()
    run(main())
