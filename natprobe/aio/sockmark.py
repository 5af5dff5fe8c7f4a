"""SO_MARK on the sockets natprobe opens, so a full tunnel's policy rules (`not fwmark M`) let the probes of
the client that owns the tunnel go past it; and a TCP connect that marks its socket before connecting."""
from __future__ import annotations

import asyncio
import socket


def mark(sock: socket.socket, fwmark: int) -> socket.socket:
    if fwmark:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, fwmark)
    return sock


async def connect_tcp(host: str, port: int, fwmark: int) -> socket.socket:
    """A connected non-blocking TCP socket to host:port (first address that answers), marked before connect."""
    loop = asyncio.get_running_loop()
    last: OSError = OSError(f"no address for {host}")
    for family, kind, proto, _, addr in await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        sock = mark(socket.socket(family, kind, proto), fwmark)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, addr)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
        except BaseException:
            sock.close()
            raise
    raise last
