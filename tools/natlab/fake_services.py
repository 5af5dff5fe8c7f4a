"""Small stand-ins for what sits on a real network, to run on lab nodes:

    python3 -m tools.natlab.fake_services portmap [--pmp] [--pcp] [--upnp]   # a gateway's port mappers
    python3 -m tools.natlab.fake_services captive --mode ok|portal           # /generate_204 on port 80
    python3 -m tools.natlab.fake_services https --port 443                   # /derp/probe over TLS

Replies are written from the RFCs' layouts here, independently of natprobe's encoders. Each prints "ready"
once listening. The HTTPS server makes itself a throwaway self-signed certificate.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import socket
import ssl
import struct
import sys
import tempfile


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, answer) -> None:
        self.answer = answer

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data, addr) -> None:
        reply = self.answer(data)
        if reply:
            self.transport.sendto(reply, addr)


def _pmp_pcp(data: bytes, pmp: bool, pcp: bool) -> bytes | None:
    if pmp and data == b"\x00\x00":            # RFC 6886 §3.2: external address reply
        return struct.pack("!BBHI4s", 0, 128, 0, 1234, socket.inet_aton("198.51.100.77"))
    if data[:1] == b"\x02" and len(data) >= 24:
        if pcp:                                 # RFC 6887 §7.2: response header, opcode ANNOUNCE | R
            return struct.pack("!BBBBII", 2, 0x80, 0, 0, 0, 1234) + bytes(12)
        if pmp:                                 # a NAT-PMP-only box: UNSUPP_VERSION (RFC 6886 §3.5)
            return struct.pack("!BBHI", 0, 128, 1, 1234)
    return None


def _ssdp(data: bytes) -> bytes | None:
    if not data.startswith(b"M-SEARCH"):
        return None
    return (b"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\n"
            b"ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n"
            b"USN: uuid:natlab::urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n"
            b"LOCATION: http://192.0.2.1:5000/rootDesc.xml\r\nSERVER: natlab/1 UPnP/1.1\r\n\r\n")


async def portmap(args) -> None:
    loop = asyncio.get_running_loop()
    if args.pmp or args.pcp:
        await loop.create_datagram_endpoint(lambda: _Udp(lambda d: _pmp_pcp(d, args.pmp, args.pcp)),
                                            local_addr=("0.0.0.0", 5351))
    if args.upnp:
        await loop.create_datagram_endpoint(lambda: _Udp(_ssdp), local_addr=("0.0.0.0", 1900))
    print("ready", flush=True)
    await asyncio.Event().wait()


async def _http(reader, writer, respond) -> None:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:] if l)}
        writer.write(respond(lines[0].split()[1], headers))
        await writer.drain()
    except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, IndexError):
        pass
    finally:
        writer.close()


async def captive(args) -> None:
    def respond(path: str, headers: dict) -> bytes:
        if args.mode == "portal":
            return b"HTTP/1.1 302 Found\r\nLocation: http://portal.example/login\r\nContent-Length: 0\r\n\r\n"
        if not path.startswith("/generate_204"):
            return b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
        challenge = headers.get("x-tailscale-challenge", "")
        extra = f"X-Tailscale-Response: response {challenge}\r\n".encode() if challenge else b""
        return b"HTTP/1.1 204 No Content\r\n" + extra + b"\r\n"
    server = await asyncio.start_server(lambda r, w: _http(r, w, respond), "0.0.0.0", args.port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def _self_signed() -> ssl.SSLContext:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "natlab")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.NamedTemporaryFile() as c, tempfile.NamedTemporaryFile() as k:
        c.write(cert.public_bytes(serialization.Encoding.PEM))
        k.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
        c.flush()
        k.flush()
        ctx.load_cert_chain(c.name, k.name)
    return ctx


async def https(args) -> None:
    def respond(path: str, headers: dict) -> bytes:
        if path in ("/derp/probe", "/derp/latency-check"):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        return b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
    server = await asyncio.start_server(lambda r, w: _http(r, w, respond), args.listen, args.port,
                                        ssl=_self_signed())
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m tools.natlab.fake_services")
    sub = p.add_subparsers(dest="cmd", required=True)
    pm = sub.add_parser("portmap")
    for flag in ("--pmp", "--pcp", "--upnp"):
        pm.add_argument(flag, action="store_true")
    cp = sub.add_parser("captive")
    cp.add_argument("--mode", choices=("ok", "portal"), default="ok")
    cp.add_argument("--port", type=int, default=80)
    hs = sub.add_parser("https")
    hs.add_argument("--listen", default="0.0.0.0")
    hs.add_argument("--port", type=int, default=443)
    args = p.parse_args(argv)
    try:
        asyncio.run({"portmap": portmap, "captive": captive, "https": https}[args.cmd](args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
