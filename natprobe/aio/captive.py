"""Captive-portal detection (netcheck.md §7): plain-HTTP `GET /generate_204` to up to 5 relay nodes that
serve port 80, each with a challenge header; anything but a 204 carrying the right response header means an
interceptor sits in the path. Transport errors do not count. Only the relay nodes of the map are asked
(no fixed third-party endpoints), so the result is None when the map has no such node.
"""
from __future__ import annotations

import asyncio
import logging
import time

from natprobe import constants as C
from natprobe.regions import Node

log = logging.getLogger("natprobe.captive")
MAX_ENDPOINTS = 5


async def _check(node: Node, timeout: float) -> bool | None:
    ip = node.ipv4
    challenge = f"ts_{ip}"
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(ip, 80), timeout)
    except (OSError, asyncio.TimeoutError):
        return None
    try:
        writer.write((f"GET /generate_204?t={int(time.time())} HTTP/1.1\r\nHost: {ip}\r\n"
                      f"X-Tailscale-Challenge: {challenge}\r\n"
                      "Cache-Control: no-cache, no-store, must-revalidate, no-transform, max-age=0\r\n"
                      "Connection: close\r\n\r\n").encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return None
    finally:
        writer.close()
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split()
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            key, value = line.split(":", 1)
            headers[key.strip().lower()] = value.strip()
    ok = len(status) >= 2 and status[1] == "204" and \
        headers.get("x-tailscale-response") == f"response {challenge}"
    if not ok:
        log.debug("captive portal suspected: %s answered %r", ip, lines[0])
    return not ok


async def detect_captive_portal(nodes: list[Node], *, timeout: float = C.CAPTIVE_TIMEOUT) -> bool | None:
    """True if any endpoint was intercepted, False if none was, None if there was nothing to ask."""
    endpoints = [n for n in nodes if n.can_port80 and n.ipv4][:MAX_ENDPOINTS]
    if not endpoints:
        return None
    results = await asyncio.gather(*(_check(n, timeout) for n in endpoints))
    return any(r is True for r in results)
