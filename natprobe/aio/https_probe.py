"""HTTPS latency to a region when UDP is blocked (netcheck.md §6): TLS-dial the region's nodes in order
(1.5 s each), then time one `GET /derp/probe` on that connection, from writing the request to reading the
response headers (the dial is not counted). Status must be <= 299; the body is read up to 8 KiB.
`fwmark` marks the connection (sockmark.py).
"""
from __future__ import annotations

import asyncio
import functools
import logging
import ssl

from natprobe import constants as C
from natprobe.aio.sockmark import connect_tcp
from natprobe.regions import Node, Region

log = logging.getLogger("natprobe.https_probe")
PROBE_PATH = "/derp/probe"


@functools.lru_cache(maxsize=8)
def _verifying_context(ca_file: str | None) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca_file)


@functools.lru_cache(maxsize=1)
def _insecure_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def ssl_context(node: Node, ca_file: str | None) -> ssl.SSLContext:
    """The TLS client context for a node, built once and off the event loop (loading CAs takes ~100 ms)."""
    if node.insecure_for_tests:
        return _insecure_context()
    return await asyncio.to_thread(_verifying_context, ca_file)


async def _open(host: str, port: int, ctx: ssl.SSLContext, server_name: str, fwmark: int):
    if not fwmark:
        return await asyncio.open_connection(host, port, ssl=ctx, server_hostname=server_name)
    sock = await connect_tcp(host, port, fwmark)
    return await asyncio.open_connection(sock=sock, ssl=ctx, server_hostname=server_name)


async def _node_latency(node: Node, ca_file: str | None, dial_timeout: float,
                        fwmark: int = 0) -> tuple[float, int] | None:
    loop = asyncio.get_running_loop()
    host = node.ipv4 or node.ipv6 or node.host_name
    if not host:
        return None
    server_name = node.tls_name or node.host_name or host
    ctx = await ssl_context(node, ca_file)
    try:
        reader, writer = await asyncio.wait_for(_open(host, node.derp_port, ctx, server_name, fwmark),
                                                dial_timeout)
    except (OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
        log.debug("HTTPS dial to %s (%s:%d) failed: %s", node.name, host, node.derp_port, exc)
        return None
    try:
        family = 6 if ":" in writer.get_extra_info("peername")[0] else 4
        host_header = server_name if ":" not in server_name else f"[{server_name}]"
        request = (f"GET {PROBE_PATH} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: wgc-netcheck\r\n"
                   "Connection: close\r\n\r\n").encode()
        start = loop.time()
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        latency = loop.time() - start
        status_line = head.split(b"\r\n", 1)[0].split()
        if len(status_line) < 2 or not status_line[1].isdigit() or int(status_line[1]) > 299:
            log.debug("HTTPS probe of %s: rejected status %r", node.name, head[:40])
            return None
        try:
            await asyncio.wait_for(reader.read(C.HTTPS_BODY_LIMIT), 0.2)
        except asyncio.TimeoutError:
            pass
        return latency, family
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ssl.SSLError) as exc:
        log.debug("HTTPS probe of %s failed: %s", node.name, exc)
        return None
    finally:
        writer.close()


async def region_https_latency(region: Region, *, ca_file: str | None = None,
                               dial_timeout: float = C.HTTPS_NODE_DIAL_TIMEOUT,
                               fwmark: int = 0) -> tuple[float, int] | None:
    """(latency seconds, address family) over HTTPS to the first node of `region` that answers, or None."""
    for node in region.https_nodes:
        result = await _node_latency(node, ca_file, dial_timeout, fwmark)
        if result is not None:
            return result
    return None
