"""One DERP connection on the wire, for `derp.aio.client.DerpClient`: the HTTP (or WebSocket) upgrade, then
DERP frames through the `derp.protocol.ClientConnection` core, its single timer, writes with a bound on
the write buffer, the certificate pin check, and dial errors in words.

One read callback feeds the core at most READ_BUDGET bytes; the rest waits (reading paused) and is fed
one slice per turn of the event loop, so a relay flooding frames cannot starve the UDP data path (and a
slice allocates few enough objects that a flood does not set off the garbage collector's full passes).
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import ssl
from typing import TYPE_CHECKING, Any

from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.uri import parse_uri

from derp import httpwire
from derp import protocol as P
from derp.aio.targets import DialTarget, cert_matches
from derp.constants import MAX_CLIENT_FRAME
from derp.errors import Error, ParseError

if TYPE_CHECKING:  # pragma: no cover
    from derp.aio.client import DerpClient

_ws_log = logging.getLogger("derp.aio.client.websocket")
_ws_log.setLevel(logging.WARNING)
WRITE_LIMIT = 1 << 20
READ_BUDGET = 16 << 10   # bytes of DERP stream fed to the core per turn of the event loop


class ConnectError(Error):
    """No connection could be made to any target."""


class UpgradeRefused(ConnectError):
    def __init__(self, status: int) -> None:
        super().__init__(f"server answered HTTP {status} to the upgrade")
        self.status = status


def describe_error(exc: BaseException) -> str:
    """A dial failure in words: TLS verification failures say why the certificate was refused."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verify failed: {exc.verify_message or exc.reason or exc}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


class _Stream(asyncio.Protocol):
    """One TCP/TLS connection: the HTTP (or WebSocket) upgrade, then DERP frames through the core."""

    def __init__(self, client: "DerpClient", target: DialTarget, websocket: bool) -> None:
        self.client = client
        self.target = target
        self.websocket = websocket
        self.transport: Any = None
        loop = asyncio.get_running_loop()
        self.upgraded: asyncio.Future = loop.create_future()
        self.done: asyncio.Future = loop.create_future()
        self.core: P.ClientConnection | None = None
        self.buf = bytearray()
        self.ws: ClientProtocol | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.backlog = bytearray()   # stream bytes beyond this turn's READ_BUDGET (reading is paused)
        self.restarting: P.RestartingReceived | None = None
        self.pings: dict[bytes, asyncio.Future] = {}

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        t = self.target
        if self.websocket:
            self.ws = ClientProtocol(parse_uri(t.url(ws=True)), subprotocols=["derp"],
                                     max_size=MAX_CLIENT_FRAME + 1024, logger=_ws_log)
            req = self.ws.connect()
            if t.ideal_node:
                req.headers["Ideal-Node"] = t.ideal_node
            self.ws.send_request(req)
            transport.writelines(self.ws.data_to_send())
        else:
            hdrs = {"Upgrade": "DERP", "Connection": "Upgrade"}
            if t.ideal_node:
                hdrs["Ideal-Node"] = t.ideal_node
            transport.write(httpwire.request("GET", "/derp", t.host_header, hdrs))

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f"connection lost: {exc}" if exc else "connection closed by the server"
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectError(reason))
        self._finish(reason)

    def _finish(self, reason: str) -> None:
        self.backlog.clear()
        if self.timer:
            self.timer.cancel()
        for fut in self.pings.values():
            if not fut.done():
                fut.set_exception(ConnectionError(reason))
        if not self.done.done():
            self.done.set_result(reason)
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        try:
            if self.ws is not None:
                data = self._ws_data(data)
                if not data:
                    return
            if self.core is None:
                data = self._http_data(data)
                if not data:
                    return
            self._frames(data)
        except (ParseError, ConnectError) as exc:
            if not self.upgraded.done():
                self.upgraded.set_exception(exc if isinstance(exc, ConnectError) else ConnectError(str(exc)))
            self._finish(f"bad input from the server: {exc}")

    def _ws_data(self, data: bytes) -> bytes:
        ws = self.ws
        assert ws is not None
        ws.receive_data(data)
        out = []
        for ev in ws.events_received():
            if hasattr(ev, "status_code"):  # the handshake response
                if ev.status_code != 101 or ws.subprotocol != "derp":
                    raise UpgradeRefused(ev.status_code if ev.status_code != 101 else 400)
                self._begin()
            elif ev.opcode in (Opcode.BINARY, Opcode.CONT, Opcode.TEXT):
                out.append(ev.data)
        if ws.handshake_exc is not None and not self.upgraded.done():
            raise ConnectError(f"WebSocket handshake failed: {ws.handshake_exc}")
        pending = ws.data_to_send()
        if pending:
            self.transport.writelines(pending)
        if ws.close_expected():
            self._finish("WebSocket closed by the server")
        return b"".join(out)

    def _http_data(self, data: bytes) -> bytes:
        self.buf += data
        end = httpwire.find_head_end(self.buf)
        if end < 0:
            return b""
        head = httpwire.parse_response(bytes(self.buf[:end]))
        rest = bytes(self.buf[end:])
        self.buf = bytearray()
        if head.status != 101:
            raise UpgradeRefused(head.status)
        self._begin()
        return rest

    def _begin(self) -> None:
        c = self.client
        loop = asyncio.get_running_loop()
        self.core = P.ClientConnection(c.private_key, os.urandom, loop.time(), c.config)
        self._carry(self.core.start(loop.time()))
        self._arm()

    def _arm(self) -> None:
        if self.core is None:
            return
        deadline = self.core.next_deadline()
        if deadline is None:
            return
        if self.timer:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        assert self.core is not None
        self._carry(self.core.on_timer(asyncio.get_running_loop().time()))
        self._arm()

    def _frames(self, data: bytes) -> None:
        if self.backlog:  # arrived although reading is paused: keep the order
            self.backlog += data
            return
        if len(data) > READ_BUDGET:
            self.backlog += memoryview(data)[READ_BUDGET:]
            data = data[:READ_BUDGET]
            self.transport.pause_reading()
            asyncio.get_running_loop().call_soon(self._next_slice)
        self._feed(data)

    def _next_slice(self) -> None:
        """The next READ_BUDGET bytes of a backlog, one slice per turn of the loop."""
        if not self.backlog or self.done.done():
            return
        data = bytes(self.backlog[:READ_BUDGET])
        del self.backlog[:READ_BUDGET]
        # the next slice, or reading again, in the next turn (a read in this turn would be a second slice)
        asyncio.get_running_loop().call_soon(self._next_slice if self.backlog else self._resume)
        self._feed(data)

    def _resume(self) -> None:
        if not self.backlog and not self.transport.is_closing():
            self.transport.resume_reading()

    def _feed(self, data: bytes) -> None:
        assert self.core is not None
        outs = self.core.receive_data(data, asyncio.get_running_loop().time())
        if outs:
            self._carry(outs)

    def _carry(self, outs: list) -> None:
        client = self.client
        for out in outs:
            kind = type(out)
            if kind is P.PacketReceived:
                client._packet(out.src, out.data)
            elif kind is P.Transmit:
                self.write(out.data)
            elif kind is P.Connected:
                if not self.upgraded.done():
                    self.upgraded.set_result(out)
                self._arm()   # the keepalive timer starts now
                client._event(out)
            elif kind is P.PongReceived:
                fut = self.pings.pop(out.data, None)
                if fut and not fut.done():
                    fut.set_result(out.rtt)
            elif kind is P.PingTimedOut:
                fut = self.pings.pop(out.data, None)
                if fut and not fut.done():
                    fut.set_exception(TimeoutError("DERP ping timed out"))
            elif kind is P.Closed:
                if not self.upgraded.done():
                    self.upgraded.set_exception(ConnectError(out.reason))
                self._finish(out.reason)
            else:
                if kind is P.RestartingReceived:
                    self.restarting = out
                client._event(out)
        if self.restarting is not None and not self.done.done():
            self._finish("server is restarting")

    def write(self, data: bytes) -> bool:
        if self.transport is None or self.transport.is_closing():
            return False
        if self.transport.get_write_buffer_size() > WRITE_LIMIT:
            return False
        if self.ws is not None:
            self.ws.send_binary(data)
            self.transport.writelines(self.ws.data_to_send())
        else:
            self.transport.write(data)
        return True

    def verify_pin(self) -> None:
        if self.target.cert_name and self.target.pin is None and not self.target.insecure:
            sslobj = self.transport.get_extra_info("ssl_object")
            if sslobj is None or not cert_matches(sslobj.getpeercert() or {}, self.target.cert_name):
                raise ConnectError(f"server certificate is not valid for CertName {self.target.cert_name!r}")
        if self.target.pin is None:
            return
        sslobj = self.transport.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True) if sslobj else None
        if der is None or hashlib.sha256(der).digest() != self.target.pin:
            raise ConnectError("server certificate does not match the pinned sha256-raw CertName")
