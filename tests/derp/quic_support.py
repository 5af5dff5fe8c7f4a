"""Helpers for DERP-over-QUIC tests: an in-process TLS relay with its QUIC listener on loopback, and DERP
clients whose one connection is a `derp.aio.quic_client.QuicDerpConn`."""
from __future__ import annotations

import asyncio
import os
from contextlib import asynccontextmanager

from derp.aio.client import DerpClient, targets_for_url
from derp.aio.quic_client import dial_quic
from derp.aio.quic_server import start_quic
from derp.aio.server import DerpServer, ServerOptions
from derp.aio.tls import load_server_context
from derp.server import AccessList, Relay, ServerConfig


def pem_pair(pki) -> tuple[bytes, bytes]:
    d = pki["certdir"]
    with open(os.path.join(d, "127.0.0.1.crt"), "rb") as c, open(os.path.join(d, "127.0.0.1.key"), "rb") as k:
        return c.read(), k.read()


@asynccontextmanager
async def quic_relay(pki, host: str = "127.0.0.1", acl: AccessList | None = None,
                     config: ServerConfig | None = None, **options):
    """A TLS DerpServer on `host` with QUIC on the same port number; yields (server, port)."""
    d = pki["certdir"]
    ctx = load_server_context(os.path.join(d, "127.0.0.1.crt"), os.path.join(d, "127.0.0.1.key"))
    relay = Relay(os.urandom(32), config or ServerConfig(open_relay=acl is None), acl or AccessList(None),
                  lambda: 0.5)
    options.setdefault("conn_rate", 0)
    server = DerpServer(relay, ServerOptions(**options), ctx)
    port = await server.listen(host, 0)
    pem = pem_pair(pki)
    listener = await start_quic(server, host, port, lambda: pem)
    try:
        yield server, port
    finally:
        await server.shutdown(0)
        listener.close_all()


async def quic_client(priv: bytes, port: int, ca: str | None, host: str = "127.0.0.1", timeout: float = 5.0,
                      **kw) -> DerpClient:
    """A DerpClient connected over QUIC (its stream is the QUIC connection; no reconnect)."""
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    c = DerpClient(priv, targets_for_url(f"https://{netloc}/derp"), ca_file=ca, reconnect=False, **kw)
    conn = await asyncio.wait_for(dial_quic(c, c.targets[0], port), timeout)
    c.stream = conn
    c._connected.set()
    return c


def send_datagram(c: DerpClient, dst: bytes, data: bytes) -> bool:
    conn = c.stream
    return conn.write_packet(conn.core.send_packet(dst, data))


@asynccontextmanager
async def quic_pair(port: int, ca: str | None):
    """Two QUIC clients of the relay at `port`: yields (a, a's key, b, b's key); both closed after."""
    from derp_support import new_key
    (pa, ka), (pb, kb) = new_key(), new_key()
    a = await quic_client(pa, port, ca)
    try:
        b = await quic_client(pb, port, ca)
    except BaseException:
        await a.close()
        raise
    try:
        yield a, ka, b, kb
    finally:
        await close_all(a, b)


async def close_all(*clients: DerpClient) -> None:
    for c in clients:
        await c.close()
