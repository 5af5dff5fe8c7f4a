"""One ICMPv4 echo to a node, timed (netcheck.md §6): a datagram ICMP socket when the system allows it,
else a raw socket (marked with `fwmark`, sockmark.py); no permission, or no reply within the timeout, is
simply "no result".
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket

from natprobe import icmp
from natprobe.aio.sockmark import mark

log = logging.getLogger("natprobe.icmp")


def _open(fwmark: int) -> tuple[socket.socket, bool] | None:
    for kind, raw in ((socket.SOCK_DGRAM, False), (socket.SOCK_RAW, True)):
        try:
            sock = socket.socket(socket.AF_INET, kind, socket.IPPROTO_ICMP)
            sock.setblocking(False)
            mark(sock, fwmark)
            return sock, raw
        except OSError:
            continue
    return None


async def icmp_latency(ip: str, payload: bytes, *, timeout: float = 1.0, fwmark: int = 0) -> float | None:
    opened = _open(fwmark)
    if opened is None:
        log.debug("no permission for ICMP sockets: skipping the ICMP probe")
        return None
    sock, raw = opened
    loop = asyncio.get_running_loop()
    ident = int.from_bytes(os.urandom(2), "big")
    seq = int.from_bytes(os.urandom(2), "big")
    got: asyncio.Future = loop.create_future()

    def on_readable() -> None:
        for _ in range(32):
            try:
                data = sock.recv(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if icmp.is_echo_reply(data, seq, payload, ident=ident if raw else None) and not got.done():
                got.set_result(loop.time())

    try:
        loop.add_reader(sock.fileno(), on_readable)
        start = loop.time()
        sock.sendto(icmp.echo_request(ident, seq, payload), (ip, 0))
        return await asyncio.wait_for(got, timeout) - start
    except (OSError, asyncio.TimeoutError) as exc:
        log.debug("ICMP echo to %s: %s", ip, exc or "timeout")
        return None
    finally:
        loop.remove_reader(sock.fileno())
        sock.close()
