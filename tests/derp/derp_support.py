"""Helpers for DERP tests: key pairs, client construction, raw DERP sockets and HTTP GETs on loopback."""
from __future__ import annotations

import asyncio
import os
import ssl

from derp import frames as F
from derp import protocol as P
from derp.aio.client import DerpClient, targets_for_url
from derp.keys import private_key_from_random, public_key_of


def new_key() -> tuple[bytes, bytes]:
    priv = private_key_from_random(os.urandom(32))
    return priv, public_key_of(priv)


def client(url: str, priv: bytes, ca: str | None = None, **kw) -> DerpClient:
    return DerpClient(priv, targets_for_url(url), ca_file=ca, **kw)


async def exchange(a: DerpClient, b: DerpClient, b_pub: bytes, data: bytes, timeout: float = 3.0) -> None:
    """Send from a to b until b receives `data` (retries cover routes that are still being learned)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        a.send_packet(b_pub, data)
        try:
            ev = await b.recv_packet(min(0.3, max(0.01, deadline - loop.time())))
            if ev.data == data:
                return
        except asyncio.TimeoutError:
            if loop.time() >= deadline:
                raise AssertionError(f"{data!r} did not arrive within {timeout} s") from None


async def until(pred, timeout: float, what: str) -> None:
    """Wait until pred() holds (polled), or fail naming `what`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.01)


async def http_get(port: int, path: str, headers: dict[str, str] | None = None, tls_ca: str | None = None,
                   method: str = "GET", timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    ctx = None
    if tls_ca:
        ctx = ssl.create_default_context(cafile=tls_ca)
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=ctx), timeout)
    try:
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        raw = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *hdr_lines = head.decode("latin-1").split("\r\n")
    hdrs = {}
    for line in hdr_lines:
        k, _, v = line.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    return int(status_line.split()[1]), hdrs, body


async def metric(srv, name: str) -> float:
    """One sample of a `wgc derper`'s /metrics, by its exact name and labels (0 when absent)."""
    _, _, body = await http_get(int(srv.metrics.rsplit(":", 1)[1]), "/metrics")
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


async def dropped(srv) -> float:
    """All packet drops, whatever the reason."""
    _, _, body = await http_get(int(srv.metrics.rsplit(":", 1)[1]), "/metrics")
    return sum(float(ln.split()[-1]) for ln in body.decode().splitlines()
               if ln.startswith("derp_packets_dropped_total{"))


async def fill_until_queue_full(sender: DerpClient, srv, dst: bytes, tries: int = 2000) -> int:
    """Send 60 kB packets to `dst` (a client that reads nothing) until the relay drops some as queue_full;
    returns how many the sender accepted."""
    payload = os.urandom(60000)
    sent = 0
    for i in range(tries):  # up to 120 MB
        if sender.send_packet(dst, payload):
            sent += 1
        else:
            await asyncio.sleep(0.005)
        if i % 50 == 49 and await metric(srv, 'derp_packets_dropped_total{reason="queue_full"}') > 0:
            break
    return sent


class RawDerp:
    """A hand-driven DERP connection over plain HTTP, for tests that misbehave on purpose."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, core: P.ClientConnection):
        self.reader, self.writer, self.core = reader, writer, core

    @classmethod
    async def connect(cls, port: int, priv: bytes, timeout: float = 5.0, ca: str | None = None) -> "RawDerp":
        ctx = ssl.create_default_context(cafile=ca) if ca else None
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
        writer.write(b"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        assert head.startswith(b"HTTP/1.1 101"), head
        core = P.ClientConnection(priv, os.urandom, 0.0)
        raw = cls(reader, writer, core)
        while core.state != P.ClientState.CONNECTED:
            data = await asyncio.wait_for(reader.read(65536), timeout)
            assert data, "server closed during the handshake"
            for out in core.receive_data(data, 0.0):
                if isinstance(out, P.Transmit):
                    writer.write(out.data)
        return raw

    async def closed_by_server(self, timeout: float) -> bool:
        """True if the server closes the connection within `timeout` (any data read is discarded)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while loop.time() < deadline:
                data = await asyncio.wait_for(self.reader.read(65536), deadline - loop.time())
                if not data:
                    return True
        except ConnectionError:
            return True
        except asyncio.TimeoutError:
            return False
        return False

    def close(self) -> None:
        self.writer.close()


__all__ = ["F", "new_key", "client", "exchange", "until", "http_get", "metric", "dropped", "fill_until_queue_full", "RawDerp"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
