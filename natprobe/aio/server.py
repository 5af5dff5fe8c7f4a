"""asyncio STUN server: binds a UDP socket (IPv4, IPv6 or dual-stack) and answers Binding requests.

`start_stun_server(host, port)` returns a running `StunServer` (`.port`, `.requests`, `.dropped`,
`.close()`). The protocol decisions live in `natprobe.responder`; this adapter only reads with
`loop.add_reader` + `recvfrom_into` into one reused buffer and sends the answers.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket

from natprobe.errors import UsageError
from natprobe.responder import StunResponder

log = logging.getLogger("natprobe.stun_server")
_BATCH = 64


class StunServer:
    """A running STUN server; create it with `start_stun_server`."""

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self._sock = sock
        self._loop = loop
        self._buf = bytearray(2048)
        self._view = memoryview(self._buf)
        self.responder = StunResponder()
        self.send_errors = 0
        self.host = sock.getsockname()[0]
        self.port: int = sock.getsockname()[1]
        self.closed = False
        loop.add_reader(sock.fileno(), self._on_readable)

    @property
    def requests(self) -> int:
        return self.responder.requests

    @property
    def dropped(self) -> int:
        return self.responder.dropped

    def _on_readable(self) -> None:
        sock, view = self._sock, self._view
        for _ in range(_BATCH):
            try:
                n, source = sock.recvfrom_into(self._buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ICMP errors surfacing on the socket
                log.debug("STUN server receive error: %s", exc)
                return
            reply = self.responder.answer(bytes(view[:n]), source)
            if reply is None:
                continue
            try:
                sock.sendto(reply, source)
            except OSError:
                self.send_errors += 1

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()

    async def __aenter__(self) -> "StunServer":
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()


def _make_socket(host: str, port: int) -> socket.socket:
    if host in ("", "*"):
        host = "::"
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError as exc:
        raise UsageError(f"STUN server needs an IP address to listen on, not {host!r}") from exc
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            # The wildcard serves IPv4 too (as IPv4-mapped addresses, unmapped in the answer).
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if ip.is_unspecified else 1)
        sock.setblocking(False)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen for STUN on [{host}]:{port}: {exc.strerror or exc}") from exc
    return sock


async def start_stun_server(host: str, port: int) -> StunServer:
    """Bind `host:port` (port 0 = any; host "::" or "" = dual-stack) and start answering."""
    if not 0 <= port <= 65535:
        raise UsageError(f"port out of range: {port}")
    server = StunServer(_make_socket(host, port), asyncio.get_running_loop())
    log.info("STUN server listening on [%s]:%d", server.host, server.port)
    return server
