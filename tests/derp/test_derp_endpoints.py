"""The derper's HTTP endpoints, graceful SIGTERM with reconnecting clients, and DERP-map-driven dialing
(self-signed certificate pinned with CertName sha256-raw)."""
from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time

import pytest

from derp import protocol as P
from derp.aio.client import ConnectError, DerpClient, Disconnected, targets_for_region, targets_for_url
from derp.derpmap import parse_derpmap

from derp_support import client, exchange, http_get, new_key

pytestmark = pytest.mark.timeout(60)


def run(coro, timeout: float = 30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


MAP = {"Regions": {"900": {"RegionID": 900, "RegionCode": "lab", "RegionName": "Lab", "Nodes": [
    {"Name": "900a", "RegionID": 900, "HostName": "127.0.0.1", "DERPPort": 1}]}}, "omitDefaultRegions": True}


def test_http_endpoints(derper, pki, tmp_path) -> None:
    mapfile = tmp_path / "map.json"
    mapfile.write_text(json.dumps(MAP))
    srv = derper("--open-relay", "--conn-rate", "0", "--derpmap-file", str(mapfile), "--metrics-token", "s3cret")
    ca = pki["ca"]

    async def main():
        (ka, pa), (kb, pb) = new_key(), new_key()
        a, b = client(srv.url, ka, ca), client(srv.url, kb, ca)
        await a.start()
        await b.start()
        await exchange(a, b, pb, b"count me")
        try:
            st, hdrs, body = await http_get(srv.port, "/generate_204", {"X-Tailscale-Challenge": "ts_abc.def"}, ca)
            assert st == 204 and hdrs["x-tailscale-response"] == "response ts_abc.def" and body == b""
            assert "no-store" in hdrs["cache-control"]
            st, hdrs, _ = await http_get(srv.port, "/generate_204", {"X-Tailscale-Challenge": "bad chars!"}, ca)
            assert st == 204 and "x-tailscale-response" not in hdrs
            for path in ("/derp/probe", "/derp/latency-check"):
                st, hdrs, body = await http_get(srv.port, path, tls_ca=ca)
                assert st == 200 and hdrs["access-control-allow-origin"] == "*" and body == b""
                assert (await http_get(srv.port, path, tls_ca=ca, method="POST"))[0] == 405
            assert (await http_get(srv.port, "/healthz", tls_ca=ca))[2] == b"ok\n"
            st, _, body = await http_get(srv.port, "/healthz", {"Authorization": "Bearer s3cret"}, ca)
            detail = json.loads(body)
            assert st == 200 and detail["relay"]["clients"] == 2 and detail["relay"]["packets_relayed"] >= 1
            assert detail["server_key"] == srv.key
            assert (await http_get(srv.port, "/healthz", {"Authorization": "Bearer wrong"}, ca))[0] == 401
            st, hdrs, body = await http_get(srv.port, "/debug/", tls_ca=ca)
            assert st == 200 and b"<table" in body and re.search(rb"relay\.clients</td><td>2<", body)
            st, _, _ = await http_get(srv.port, "/debug/", {"X-Forwarded-For": "203.0.113.9"}, ca)
            assert st == 403
            st, _, body = await http_get(srv.port, "/derpmap/default", tls_ca=ca)
            assert st == 200 and parse_derpmap(body).regions[900].nodes[0].name == "900a"
            st, hdrs, body = await http_get(srv.port, "/derp", tls_ca=ca)
            assert st == 426 and body == b"DERP requires connection upgrade\n"
            assert (await http_get(srv.port, "/nope", tls_ca=ca))[0] == 404
            assert (await http_get(srv.port, "/robots.txt", tls_ca=ca))[2].startswith(b"User-agent: *")
            mport = int(srv.metrics.rsplit(":", 1)[1])
            st, _, body = await http_get(mport, "/metrics")
            text = body.decode()
            assert st == 200 and "derp_active_clients 2.0" in text
            assert re.search(r"^derp_packets_relayed_total [1-9]", text, re.M)
            assert re.search(r"^derp_bytes_relayed_total [1-9]", text, re.M)
            for name in ("derp_mesh_peers", "derp_conn_rate_limited_total", "derp_packets_dropped_total"):
                assert name in text
        finally:
            await a.close()
            await b.close()

    run(main())


def test_sighup_reloads_derpmap(derper, tmp_path) -> None:
    mapfile = tmp_path / "map.json"
    mapfile.write_text(json.dumps(MAP))
    srv = derper("--open-relay", "--conn-rate", "0", "--derpmap-file", str(mapfile), tls=False)

    async def main():
        changed = json.loads(json.dumps(MAP))
        changed["Regions"]["900"]["RegionCode"] = "new"
        mapfile.write_text(json.dumps(changed))
        srv.proc.send_signal(signal.SIGHUP)
        for _ in range(50):
            body = (await http_get(srv.port, "/derpmap/default"))[2]
            if parse_derpmap(body).regions[900].region_code == "new":
                break
            await asyncio.sleep(0.1)
        assert parse_derpmap(body).regions[900].region_code == "new"
        mapfile.write_text("{broken")  # a bad file keeps the old map
        srv.proc.send_signal(signal.SIGHUP)
        for _ in range(50):             # until the derper has tried it
            if "reload failed" in srv.log():
                break
            await asyncio.sleep(0.1)
        assert "reload failed" in srv.log()
        assert parse_derpmap((await http_get(srv.port, "/derpmap/default"))[2]).regions[900].region_code == "new"
        assert srv.proc.poll() is None

    run(main())


@pytest.mark.parametrize("transport", ["upgrade", "websocket"])
def test_sigterm_restarting_and_clients_move_to_the_next_node(derper, transport) -> None:
    s1 = derper("--open-relay", "--shutdown-timeout", "30", tls=False)
    s2 = derper("--open-relay", tls=False)

    async def main():
        (ka, pa), (kb, pb) = new_key(), new_key()
        targets = targets_for_url(s1.url) + targets_for_url(s2.url)  # one region, two nodes
        a = DerpClient(ka, targets, transport=transport)
        b = DerpClient(kb, targets_for_url(s2.url), transport=transport)
        await a.start()
        await b.start()
        try:
            assert a.stream.target.port == s1.port
            t0 = time.monotonic()
            s1.proc.send_signal(signal.SIGTERM)
            seen = []
            while not any(isinstance(e, Disconnected) for e in seen):
                seen.append(await a.recv(5))
            if transport == "upgrade":
                assert any(isinstance(e, P.RestartingReceived) for e in seen), seen
            await a.wait_connected(5)
            assert a.stream.target.port == s2.port
            await exchange(a, b, pb, b"after the restart")
            assert s1.proc.wait(20) == 0
            assert time.monotonic() - t0 < 15  # drained as soon as the clients left, not the full 30 s
        finally:
            await a.close()
            await b.close()

    run(main())


def test_sigterm_drains_for_at_most_the_shutdown_timeout(derper) -> None:
    from derp_support import RawDerp
    srv = derper("--open-relay", "--shutdown-timeout", "1", tls=False)

    async def main():
        stubborn = await RawDerp.connect(srv.port, new_key()[0])  # ignores Restarting
        t0 = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        data = await asyncio.wait_for(stubborn.reader.read(65536), 3)
        assert data[0] == 0x15  # a Restarting frame
        assert await stubborn.closed_by_server(4)
        assert srv.proc.wait(5) == 0
        assert 0.9 < time.monotonic() - t0 < 4
        stubborn.close()

    run(main())


def test_selfsigned_server_dialed_from_a_derp_map_with_pinned_cert(derper) -> None:
    srv = derper("--open-relay", "--certmode", "selfsigned", "--hostname", "127.0.0.1", tls=False)
    m = re.search(r'"CertName": "(sha256-raw:[0-9a-f]{64})"', srv.log())
    assert m, srv.log()
    node = {"Name": "900a", "RegionID": 900, "HostName": "127.0.0.1", "IPv4": "127.0.0.1", "IPv6": "none",
            "DERPPort": srv.port, "CertName": m.group(1)}
    good = parse_derpmap(json.dumps({"Regions": {"900": {"RegionID": 900, "Nodes": [node]}}}))
    bad = parse_derpmap(json.dumps({"Regions": {"900": {"RegionID": 900, "Nodes": [
        dict(node, CertName="sha256-raw:" + "00" * 32)]}}}))
    insecure = parse_derpmap(json.dumps({"Regions": {"900": {"RegionID": 900, "Nodes": [
        dict(node, CertName="", InsecureForTests=True)]}}}))

    async def main():
        for dm in (good, insecure):
            c = DerpClient(new_key()[0], targets_for_region(dm.regions[900]), reconnect=False)
            await c.start()
            assert 0 < await c.ping() < 1
            await c.close()
        c = DerpClient(new_key()[0], targets_for_region(bad.regions[900]), reconnect=False)
        with pytest.raises(ConnectError, match="pinned"):
            await c.connect_once()

    run(main())


def test_stun_and_key_file(derper, tmp_path) -> None:
    import socket
    import struct
    keyfile = tmp_path / "derper.key"
    srv = derper("--open-relay", "--stun", "--stun-port", "0", "-c", str(keyfile), tls=False)
    saved = json.loads(keyfile.read_text())
    assert saved["PrivateKey"].startswith("privkey:") and (keyfile.stat().st_mode & 0o777) == 0o600
    stun_port = int(re.search(r"stun=(\d+)", srv.ready).group(1))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        txid = os.urandom(12)
        s.sendto(struct.pack(">HHI", 1, 0, 0x2112A442) + txid, ("127.0.0.1", stun_port))
        reply, _ = s.recvfrom(2048)
    assert reply[:2] == b"\x01\x01" and reply[8:20] == txid  # Binding success for our transaction
    srv.proc.send_signal(signal.SIGTERM)
    srv.proc.wait(10)
    again = derper("--open-relay", "-c", str(keyfile), tls=False)
    assert again.key == srv.key  # the same identity after a restart


def test_old_websocket_upgrade_header_speaks_raw_derp_and_note_preferred(derper) -> None:
    srv = derper("--open-relay", tls=False)

    async def main():
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(b"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
        assert head.startswith(b"HTTP/1.1 101") and b"Upgrade: DERP" in head
        assert f"Derp-Public-Key: {srv.key[len('nodekey:'):]}".encode() in head
        frame = await asyncio.wait_for(reader.readexactly(45), 3)
        assert frame[:5] == b"\x01\x00\x00\x00\x28" and frame[5:13] == bytes.fromhex("44455250f09f9491")
        writer.close()
        c = DerpClient(new_key()[0], targets_for_url(srv.url), preferred=True)
        await c.start()
        mport = int(srv.metrics.rsplit(":", 1)[1])
        try:
            for _ in range(30):
                body = (await http_get(mport, "/metrics"))[2].decode()
                if "derp_home_clients 1.0" in body:
                    break
                await asyncio.sleep(0.1)
            assert "derp_home_clients 1.0" in body
            c.note_preferred(False)
            for _ in range(30):
                body = (await http_get(mport, "/metrics"))[2].decode()
                if "derp_home_clients 0.0" in body:
                    break
                await asyncio.sleep(0.1)
            assert "derp_home_clients 0.0" in body
        finally:
            await c.close()

    run(main())


def test_port80_companion_of_a_tls_relay(derper) -> None:
    srv = derper("--open-relay")
    http_port = int(re.search(r"http=(\d+)", srv.ready).group(1))

    async def main():
        st, hdrs, _ = await http_get(http_port, "/generate_204", {"X-Tailscale-Challenge": "ts_x"})
        assert st == 204 and hdrs["x-tailscale-response"] == "response ts_x"
        st, hdrs, _ = await http_get(http_port, "/derp?x=1")
        assert st == 302 and hdrs["location"] == "https://127.0.0.1/derp?x=1"
        assert (await http_get(http_port, "/derp", method="POST"))[0] == 400

    run(main())


def test_certname_is_checked_apart_from_the_sni_hostname(derper, pki) -> None:
    srv = derper("--open-relay")

    def region(cert_name: str):
        node = {"Name": "900a", "RegionID": 900, "HostName": "localhost", "IPv4": "127.0.0.1", "IPv6": "none",
                "DERPPort": srv.port, "CertName": cert_name}
        return parse_derpmap(json.dumps({"Regions": {"900": {"RegionID": 900, "Nodes": [node]}}})).regions[900]

    async def main():
        c = DerpClient(new_key()[0], targets_for_region(region("127.0.0.1")), ca_file=pki["ca"], reconnect=False)
        await c.start()  # SNI "localhost", certificate valid for CertName 127.0.0.1
        await c.close()
        c = DerpClient(new_key()[0], targets_for_region(region("derp.example")), ca_file=pki["ca"],
                       reconnect=False)
        with pytest.raises(ConnectError, match="CertName"):
            await c.connect_once()

    run(main())
