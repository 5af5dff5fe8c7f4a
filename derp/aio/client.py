"""The asyncio DERP client: dials a node (TLS or plain HTTP; Upgrade: DERP with automatic fallback to
WebSocket), runs the `derp.protocol.ClientConnection` core on the stream, and keeps the connection up
(reconnect with backoff and jitter, honouring Restarting by moving to the same or the next node).

Targets come from a DERP map region/node (HostName, IPv4/IPv6, DERPPort, InsecureForTests, CertName pins)
or a URL. TLS uses the system CA store plus an optional `ca_file`, ALPN http/1.1 only. `fwmark` (and `set_fwmark`)
puts SO_MARK on the connection's socket, so a full tunnel's policy rules send it past the tunnel.
Packets arrive through `on_packet(src, data)` (fast path) or the `events` queue; other events
(Connected, Disconnected, PeerGoneReceived, PeerPresentReceived, HealthChanged, RestartingReceived) go to
`events` (and `on_event` if given).
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import socket
import ssl
from dataclasses import dataclass, field
from typing import Any, Callable

from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.uri import parse_uri

from derp import httpwire
from derp import protocol as P
from derp.constants import MAX_CLIENT_FRAME
from derp.aio.targets import (DialTarget, backoff_delay, cert_matches, make_ssl_context,  # noqa: F401
                               targets_for_node, targets_for_region, targets_for_url)
from derp.errors import Error, ParseError, UsageError
from derp.keys import short

log = logging.getLogger(__name__)
_ws_log = logging.getLogger("derp.aio.client.websocket")
_ws_log.setLevel(logging.WARNING)
WRITE_LIMIT = 1 << 20


class ConnectError(Error):
    """No connection could be made to any target."""


class UpgradeRefused(ConnectError):
    def __init__(self, status: int) -> None:
        super().__init__(f"server answered HTTP {status} to the upgrade")
        self.status = status


@dataclass(frozen=True)
class Disconnected:
    reason: str


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
        self.received_any = False
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
        assert self.core is not None
        outs = self.core.receive_data(data, asyncio.get_running_loop().time())
        if outs:
            self.received_any = True
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


@dataclass
class ClientStats:
    sent: int = 0
    received: int = 0
    dropped_not_connected: int = 0
    dropped_backpressure: int = 0
    dropped_queue_full: int = 0
    connects: int = 0
    failures: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class DerpClient:
    """A self-healing connection to one DERP region/URL."""

    def __init__(self, private_key: bytes, targets: list[DialTarget], *, ca_file: str | None = None,
                 transport: str = "auto", config: P.ClientConfig = P.ClientConfig(),
                 on_packet: Callable[[bytes, bytes], None] | None = None,
                 on_event: Callable[[Any], None] | None = None, reconnect: bool = True,
                 connect_timeout: float = 10.0, node_timeout: float = 1.5, preferred: bool = False,
                 watch_conns: bool = False, fwmark: int = 0,
                 rng: random.Random | None = None, queue_size: int = 4096) -> None:
        if not targets:
            raise UsageError("no DERP node to connect to (all nodes STUN-only or disabled?)")
        if transport not in ("auto", "upgrade", "websocket"):
            raise UsageError(f"transport must be auto, upgrade or websocket, not {transport!r}")
        self.private_key = private_key
        self.targets = targets
        self.ca_file = ca_file
        self.transport = transport
        self.config = config
        self.on_packet = on_packet
        self.on_event = on_event
        self.reconnect = reconnect
        self.connect_timeout = connect_timeout   # TCP + TLS + upgrade + DERP handshake (derp.md §7.1)
        self.node_timeout = node_timeout         # TCP connect to one address before trying the next
        self.preferred = preferred
        self.watch_conns = watch_conns
        self.rng = rng or random.Random()
        self.events: asyncio.Queue = asyncio.Queue(queue_size)
        self.stats = ClientStats()
        self.stream: _Stream | None = None
        self.target_index = 0
        self._task: asyncio.Task | None = None
        self._connected = asyncio.Event()
        self._closing = False
        self.websocket_fallbacks = 0
        self._ssl_contexts: dict[tuple, ssl.SSLContext] = {}
        self.fwmark = fwmark                      # SO_MARK of every socket dialed (a full tunnel's policy rules)
        self._dialing: set[socket.socket] = set()

    def set_fwmark(self, mark: int) -> None:
        """Mark the sockets from now on, and the ones open or being dialed now."""
        self.fwmark = mark
        live = self.stream.transport.get_extra_info("socket") if self.stream and self.stream.transport else None
        for sock in [s for s in (live, *self._dialing) if s is not None]:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
            except OSError as exc:
                log.warning("%r: cannot set the firewall mark: %s", self, exc)

    def __repr__(self) -> str:
        return f"<DerpClient {short(P.public_key_of(self.private_key))}>"

    # ---- lifecycle -------------------------------------------------------------------------------------
    async def start(self, wait: bool = True, timeout: float | None = None) -> None:
        """Start the connection keeper; with `wait`, return once connected (ConnectError on timeout)."""
        self._task = asyncio.create_task(self._run())
        if wait:
            try:
                await asyncio.wait_for(self._connected.wait(), timeout or self.connect_timeout)
            except asyncio.TimeoutError:
                raise ConnectError(f"could not connect to {self.targets[0].url()}") from None

    async def wait_connected(self, timeout: float) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def close(self) -> None:
        self._closing = True
        if self.stream is not None:
            self.stream._finish("closed by the caller")
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    async def _run(self) -> None:
        failures = 0
        while not self._closing:
            try:
                stream = await self.connect_once()
            except (ConnectError, UsageError) as exc:
                if isinstance(exc, UsageError) or not self.reconnect:
                    self._event(Disconnected(str(exc)))
                    return
                failures += 1
                self.stats.failures += 1
                await asyncio.sleep(backoff_delay(failures, self.rng))
                continue
            reason = await stream.done
            self.stream = None
            self._connected.clear()
            self._event(Disconnected(reason))
            if not self.reconnect or self._closing:
                return
            if stream.restarting is not None:
                failures = 0
                await asyncio.sleep(stream.restarting.reconnect_in)
                continue
            failures = 1 if stream.received_any else failures + 1
            await asyncio.sleep(backoff_delay(failures, self.rng))

    async def connect_once(self) -> _Stream:
        """One pass over the targets starting at the current one; the first that completes wins."""
        errors = []
        n = len(self.targets)
        for i in range(n):
            index = (self.target_index + i) % n
            target = self.targets[index]
            modes = {"auto": (False, True), "upgrade": (False,), "websocket": (True,)}[self.transport]
            for websocket in modes:
                try:
                    stream = await asyncio.wait_for(self._dial(target, websocket), self.connect_timeout)
                except UpgradeRefused as exc:
                    errors.append(f"{target.host}:{target.port}: {exc}")
                    if not websocket and len(modes) > 1:
                        self.websocket_fallbacks += 1
                    continue
                except (ConnectError, OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
                    errors.append(f"{target.host}:{target.port}: {exc or type(exc).__name__}")
                    break  # a transport failure: WebSocket on the same target would not help
                if self._closing:
                    stream._finish("closed while connecting")
                    raise ConnectError("client closed")
                self.target_index = index
                self.stream = stream
                self.stats.connects += 1
                if self.preferred:
                    stream.write(stream.core.note_preferred(True))
                if self.watch_conns:
                    stream.write(stream.core.watch_conns())
                self._connected.set()
                return stream
        raise ConnectError("; ".join(errors) or "no targets")

    async def _dial(self, target: DialTarget, websocket: bool) -> _Stream:
        loop = asyncio.get_running_loop()
        ctx = None
        if target.tls:  # loading the system CA store costs ~20 ms: one context per kind of target
            ident = (target.insecure or target.pin is not None, bool(target.cert_name), self.ca_file)
            ctx = self._ssl_contexts.get(ident)
            if ctx is None:
                ctx = self._ssl_contexts[ident] = make_ssl_context(target, self.ca_file)
        stream = _Stream(self, target, websocket)
        sni = target.server_name or target.host
        try:
            sock = await asyncio.wait_for(self._tcp_connect(target), self.node_timeout)
            transport, _ = await loop.create_connection(lambda: stream, sock=sock, ssl=ctx,
                                                        server_hostname=sni if ctx is not None else None)
            sock = transport.get_extra_info("socket")
            if sock is not None:  # the server's KeepAlive frames reset the read timer; TCP keepalive as well
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                except OSError:
                    pass
            stream.verify_pin()
            await stream.upgraded
        except BaseException:
            stream._finish("dial failed")
            raise
        return stream

    async def _tcp_connect(self, target: DialTarget) -> socket.socket:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        last: Exception = ConnectError(f"no address for {target.host}")
        for family, kind, proto, _, addr in infos:
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            self._dialing.add(sock)
            try:
                if self.fwmark:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.fwmark)
                await loop.sock_connect(sock, addr)
                return sock
            except OSError as exc:
                sock.close()
                last = exc
            except BaseException:
                sock.close()
                raise
            finally:
                self._dialing.discard(sock)
        raise last

    # ---- sending ------------------------------------------------------------------------------------------
    def send_packet(self, dst: bytes, data: bytes) -> bool:
        stream = self.stream
        if stream is None or stream.core is None or not stream.core.can_send():
            self.stats.dropped_not_connected += 1
            return False
        if not stream.write(stream.core.send_packet(dst, data)):
            self.stats.dropped_backpressure += 1
            return False
        self.stats.sent += 1
        return True

    def send_packets(self, items: list[tuple[bytes, bytes]]) -> int:
        """Several (dst, data) SendPacket frames in one write; returns how many were accepted."""
        stream = self.stream
        if stream is None or stream.core is None or not stream.core.can_send():
            self.stats.dropped_not_connected += len(items)
            return 0
        core = stream.core
        if not stream.write(b"".join([core.send_packet(dst, data) for dst, data in items])):
            self.stats.dropped_backpressure += len(items)
            return 0
        self.stats.sent += len(items)
        return len(items)

    def note_preferred(self, preferred: bool) -> None:
        self.preferred = preferred
        if self.stream is not None and self.stream.core is not None:
            self.stream.write(self.stream.core.note_preferred(preferred))

    def write_raw(self, data: bytes) -> bool:
        """Write already-encoded frames (mesh ForwardPacket, tests)."""
        return self.stream is not None and self.stream.write(data)

    async def ping(self, timeout: float = 5.0) -> float:
        """Round-trip time of a DERP Ping to the server, in seconds."""
        stream = self.stream
        if stream is None or stream.core is None:
            raise ConnectError("not connected")
        loop = asyncio.get_running_loop()
        data, frame = stream.core.ping(loop.time())
        fut = loop.create_future()
        stream.pings[data] = fut
        stream.write(frame)
        stream._arm()
        return await asyncio.wait_for(fut, timeout)

    # ---- receiving ----------------------------------------------------------------------------------
    def _packet(self, src: bytes, data: bytes) -> None:
        self.stats.received += 1
        if self.on_packet is not None:
            self.on_packet(src, data)
            return
        self._event(P.PacketReceived(src, data))

    def _event(self, ev: Any) -> None:
        if self.on_event is not None and type(ev) is not P.PacketReceived:
            self.on_event(ev)
        try:
            self.events.put_nowait(ev)
        except asyncio.QueueFull:
            self.stats.dropped_queue_full += 1

    async def recv(self, timeout: float | None = None) -> Any:
        return await asyncio.wait_for(self.events.get(), timeout)

    async def recv_packet(self, timeout: float | None = None) -> P.PacketReceived:
        """The next packet, skipping other events."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - loop.time())
            ev = await asyncio.wait_for(self.events.get(), left)
            if type(ev) is P.PacketReceived:
                return ev
