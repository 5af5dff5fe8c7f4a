"""Port-mapping probe packets and reply classification, gateway discovery, and the HTTPS latency probe
against a real TLS server on loopback."""
from __future__ import annotations

import asyncio
import socket
import ssl
import struct

import pytest
from hypothesis import given, strategies as st

from natprobe import portmap
from natprobe.aio.https_probe import region_https_latency
from natprobe.aio.interfaces import default_gateway_v4, routable
from natprobe.regions import Node, Region
from natprobe.portmap import Service, classify_reply


def test_request_layouts():
    assert portmap.natpmp_request() == b"\x00\x00"
    pcp = portmap.pcp_announce("10.1.0.2")
    assert len(pcp) == 24 and pcp[:8] == bytes([2, 0, 0, 0, 0, 0, 0, 0])
    assert pcp[8:] == bytes(10) + b"\xff\xff" + bytes([10, 1, 0, 2])
    search = portmap.ssdp_search(portmap.SSDP_IGD).decode()
    assert search.startswith("M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\n")
    assert "ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n" in search
    assert 'MAN: "ssdp:discover"\r\nMX: 2\r\n\r\n' in search


def test_reply_classification():
    pmp_ok = struct.pack("!BBHI4s", 0, 128, 0, 7, socket.inet_aton("198.51.100.1"))
    assert classify_reply(pmp_ok, 5351) is Service.PMP
    assert classify_reply(struct.pack("!BBHI4s", 0, 128, 3, 7, bytes(4)), 5351) is None  # result code 3
    assert classify_reply(pmp_ok, 5352) is None                                          # wrong port
    assert classify_reply(struct.pack("!BBBBII", 2, 0x80, 0, 2, 0, 1) + bytes(12), 5351) is None  # NOT_AUTHORIZED
    pcp = struct.pack("!BBBBII", 2, 0x80, 0, 0, 0, 1) + bytes(12)
    assert classify_reply(pcp, 5351) is Service.PCP
    assert classify_reply(pcp[:20], 5351) is None
    upnp = b"HTTP/1.1 200 OK\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\r\n"
    assert classify_reply(upnp, 1900) is Service.UPNP
    assert classify_reply(b"HTTP/1.1 200 OK\r\nST: upnp:rootdevice\r\n\r\n", 1900) is None  # not a gateway
    assert classify_reply(upnp, 2869) is Service.UPNP        # some routers answer from another port
    assert classify_reply(upnp, 5351) is None


@given(st.binary(max_size=64), st.sampled_from([1900, 5351, 53, 0]))
def test_classification_never_raises(data, port):
    assert classify_reply(data, port) in (None, Service.UPNP, Service.PMP, Service.PCP)


def test_pcp_needs_an_ip():
    from natprobe.errors import UsageError
    with pytest.raises(UsageError):
        portmap.pcp_announce("gateway")


def test_default_gateway_from_a_route_table(tmp_path):
    table = tmp_path / "route"
    table.write_text(
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        "eth0\t0000007F\t00000000\t0001\t0\t0\t0\t000000FF\t0\t0\t0\n"
        "eth0\t00000000\t0100007F\t0003\t0\t0\t0\t00000000\t0\t0\t0\n")
    assert default_gateway_v4(str(table)) == ("127.0.0.1", "127.0.0.1")
    table.write_text("Iface\tDestination\tGateway\n")
    assert default_gateway_v4(str(table)) is None
    assert default_gateway_v4(str(tmp_path / "absent")) is None
    assert routable("127.0.0.1") and routable("::1")


def _self_signed_context(tmp_path) -> ssl.SSLContext:
    import datetime
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "probe.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                       serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    return ctx


@pytest.mark.timeout(20)
def test_https_latency_probe_on_loopback(tmp_path):
    ctx = _self_signed_context(tmp_path)
    paths: list[str] = []

    async def handle(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        path = head.split()[1].decode()
        paths.append(path)
        await asyncio.sleep(0.05)
        status = b"200 OK" if path == "/derp/probe" else b"404 Not Found"
        writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            def region(**kw):
                return Region(1, "t", "T", (Node("1a", "probe.test", ipv4="127.0.0.1", derp_port=port, **kw),))
            lat, family = await region_https_latency(region(insecure_for_tests=True))
            assert family == 4 and 0.05 <= lat < 1.5 and paths == ["/derp/probe"]   # the 50 ms the server waits
            # Certificate verification is on unless the node says InsecureForTests.
            assert await region_https_latency(region()) is None
            # ... and a CA file that holds the self-signed certificate makes it verify.
            got = await region_https_latency(region(), ca_file=str(tmp_path / "c.pem"))
            assert got is not None and got[1] == 4
            stun_only = Region(2, "s", "S", (Node("2a", ipv4="127.0.0.1", derp_port=port, stun_only=True),))
            assert await region_https_latency(stun_only) is None
            closed = socket.socket()
            closed.bind(("127.0.0.1", 0))
            dead_port = closed.getsockname()[1]
            closed.close()
            dead = Region(3, "d", "D", (Node("3a", ipv4="127.0.0.1", derp_port=dead_port,
                                             insecure_for_tests=True),))
            assert await region_https_latency(dead) is None
        finally:
            server.close()
            await server.wait_closed()
    asyncio.run(main())
