"""Peeks at the ClientHello of an accepted TCP connection (MSG_PEEK: the bytes stay for OpenSSL) and then
starts TLS with the context a router picks for it: how the lean TLS listener answers an ACME TLS-ALPN-01
validation (RFC 8737) on the DERP port. Used only while a validation is pending, so the relay's normal
accept path is untouched the rest of the time.

The router is the listener context's `hello_router` (derp.aio.certstore.CertStore): `wants_hello()` and
`context_for_hello(hello or None)`. A hello that does not parse, or does not arrive within the handshake
timeout, gets the normal context (OpenSSL then fails or times out the handshake as usual).
"""
from __future__ import annotations

import asyncio
import socket
from typing import Any

from derp.errors import ParseError
from derp.tlshello import MAX_RECORD, parse_client_hello

POLL = 0.01   # a ClientHello split over segments: look again after this long (MSG_PEEK keeps fd readable)


class HelloPeek:
    __slots__ = ("listener", "sock", "addr", "router", "loop", "timer", "handle", "reading")

    def __init__(self, listener: Any, sock: socket.socket, addr: Any, router: Any) -> None:
        self.listener, self.sock, self.addr, self.router = listener, sock, addr, router
        self.loop: asyncio.AbstractEventLoop = listener.loop
        self.timer = self.loop.call_later(listener.handshake_timeout, self._expire)
        self.handle: asyncio.TimerHandle | None = None
        self.reading = False
        self._try()

    def _expire(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
        self._stop_reading()
        self.listener.handshake_failures += 1
        self.sock.close()

    def _try(self) -> None:
        self.handle = None
        try:
            data = self.sock.recv(5 + MAX_RECORD, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            data = b""
            if not self.reading:          # nothing yet: wait for the first bytes
                self.reading = True
                self.loop.add_reader(self.sock.fileno(), self._try)
                return
        except OSError:
            self._close()
            return
        if not data and self.reading:
            return
        self._stop_reading()
        if not data:                      # EOF before any byte
            self._close()
            return
        try:
            hello = parse_client_hello(data)
        except ParseError:
            self._start(None)
            return
        if hello is not None:
            self._start(hello)
        else:                             # part of the hello is here: poll, the socket stays readable
            self.handle = self.loop.call_later(POLL, self._try)

    def _stop_reading(self) -> None:
        if self.reading:
            self.reading = False
            self.loop.remove_reader(self.sock.fileno())

    def _close(self) -> None:
        self._stop_reading()
        self.timer.cancel()
        self.sock.close()

    def _start(self, hello: Any) -> None:
        self.timer.cancel()
        self.listener.start_tls(self.sock, self.addr, self.router.context_for_hello(hello))
