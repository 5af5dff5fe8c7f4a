"""The asyncio DERP server: one HTTP(S) listener carrying `/derp` (Upgrade: DERP or WebSocket) and the
small HTTP endpoints, feeding the pure relay core (`derp.server`) and carrying out its outputs.

Per connection: read one request head (bounded, with a read-header timeout against slowloris; per-IP
connection rate limit answered with 429), then either an endpoint answer or a DERP session. Sessions
write through a per-connection batch flushed once per read burst; packets beyond the transport's
high-water mark go to a bounded queue of `send_queue_depth` packets (disco separately), and further
packets are dropped and counted. A session whose writes stall longer than the write timeout is cut.
One bad client only ever closes its own connection.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable

from websockets.frames import Opcode
from websockets.server import ServerProtocol

from derp import frames as F
from derp import httpwire
from derp.aio import endpoints
from derp.constants import MAX_CLIENT_FRAME, SEND_QUEUE_DEPTH, FrameType
from derp.errors import ParseError
from derp.keys import short
from derp.ratelimit import PerKeyLimiter
from derp.server import (CloseConn, Conn, Deliver, Forward, Rejected, Relay, ServerHandshake, Write)

log = logging.getLogger(__name__)
_ws_log = logging.getLogger("derp.aio.server.websocket")
_ws_log.setLevel(logging.WARNING)
_SEND = FrameType.SEND_PACKET
HIGH_WATER = 256 << 10
CONTROL_LIMIT = 4 << 20   # a client that lets this much control traffic pile up is cut


@dataclass
class ServerOptions:
    read_header_timeout: float = 5.0
    write_timeout: float = 2.0
    mesh_write_timeout: float = 30.0
    conn_rate: float = 5.0
    conn_burst: float = 10.0
    trust_proxy: bool = False
    metrics_token: str = ""
    derpmap_json: bytes | None = None
    send_queue_depth: int = SEND_QUEUE_DEPTH
    restart_reconnect_ms: int = 500
    restart_try_for_ms: int = 5000
    tls_engine: str = "lean"      # "lean": derp.aio.tlstransport; "asyncio": the event loop's SSL protocol


class DerpServer:
    """Owns the listener(s), all connections, housekeeping timers and graceful shutdown."""

    def __init__(self, relay: Relay, options: ServerOptions, ssl_context: Any = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.relay = relay
        self.options = options
        self.ssl = ssl_context
        self.clock = clock
        self.limiter = PerKeyLimiter(options.conn_rate, options.conn_burst)
        self.conns: set[HttpConn] = set()
        self.dirty: list[HttpConn] = []
        self.servers: list[asyncio.base_events.Server] = []
        self.http_counters = {"requests": 0, "rate_limited": 0, "header_timeouts": 0, "bad_requests": 0,
                              "rejected": 0, "handshake_failures": 0, "bad_frames": 0, "write_timeouts": 0,
                              "ws_sessions": 0}
        self.started = time.time()
        self.closing = False
        self._tick: asyncio.Task | None = None
        self.mesh_links: list[Any] = []
        self.certs: Any = None        # derp.aio.certstore.CertStore of a TLS relay (ACME HTTP-01, metrics)

    # ---- lifecycle ----------------------------------------------------------------------------------
    async def listen(self, host: str | None, port: int) -> int:
        loop = asyncio.get_running_loop()
        if self.ssl is not None and self.options.tls_engine == "lean":
            from derp.aio.tlstransport import TlsListener
            if host is None and socket.has_dualstack_ipv6():
                lsock = socket.create_server(("", port), family=socket.AF_INET6, backlog=4096,
                                             dualstack_ipv6=True)
            else:
                infos = socket.getaddrinfo(host or "0.0.0.0", port, type=socket.SOCK_STREAM)
                lsock = socket.create_server(infos[0][4][:2], family=infos[0][0], backlog=4096)
            listener = TlsListener(loop, lsock, self.ssl, lambda: HttpConn(self),
                                   handshake_timeout=max(1.0, self.options.read_header_timeout))
            self.servers.append(listener)
            if self._tick is None:
                self._tick = asyncio.create_task(self._housekeeping())
            return lsock.getsockname()[1]
        timeout = max(1.0, self.options.read_header_timeout)
        server = await loop.create_server(lambda: HttpConn(self), host, port, ssl=self.ssl, backlog=4096,
                                          ssl_handshake_timeout=timeout if self.ssl else None, reuse_address=True)
        self.servers.append(server)
        if self._tick is None:
            self._tick = asyncio.create_task(self._housekeeping())
        return server.sockets[0].getsockname()[1]

    async def listen_port80(self, host: str | None, port: int) -> int:
        """The plain-HTTP companion of a TLS relay (derper's -http-port): /generate_204 for captive-portal
        checks; other GET/HEAD requests are redirected to https, other methods refused."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: HttpConn(self, port80=True), host, port, backlog=1024,
                                          reuse_address=True)
        self.servers.append(server)
        return server.sockets[0].getsockname()[1]

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = self.clock()
            self.apply(self.relay.on_timer(now))
            for conn in list(self.conns):
                if conn.paused_since is not None:
                    limit = self.options.mesh_write_timeout if conn.is_mesh else self.options.write_timeout
                    if limit and now - conn.paused_since > limit:
                        self.http_counters["write_timeouts"] += 1
                        conn.abort("write timed out")
            self.limiter.prune(now)
            self.flush()

    async def shutdown(self, timeout: float) -> None:
        """Stop accepting, tell DERP clients we are restarting, drain for at most `timeout` seconds."""
        self.closing = True
        for server in self.servers:
            server.close()
        restarting = F.Restarting(self.options.restart_reconnect_ms, self.options.restart_try_for_ms).encode()
        for conn in list(self.conns):
            conn.going_away(restarting)
        self.flush()
        for link in self.mesh_links:
            link.stop()
        deadline = self.clock() + timeout
        while self.conns and self.clock() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.conns):
            conn.abort("shutdown")
        if self._tick:
            self._tick.cancel()
        await asyncio.sleep(0)

    # ---- carrying out relay outputs -----------------------------------------------------------------
    def apply(self, outs: list) -> None:
        for out in outs:
            kind = type(out)
            if kind is Write:
                out.conn.sink.write_control(out.data)
            elif kind is Deliver:
                out.conn.sink.deliver(out.data, out.disco)
            elif kind is Forward:
                out.link.forward(out.data)
            elif kind is CloseConn:
                out.conn.sink.abort(out.reason)

    def flush(self) -> None:
        dirty, self.dirty = self.dirty, []
        for conn in dirty:
            conn.flush()


class HttpConn(asyncio.Protocol):
    """One accepted connection: HTTP head, then an endpoint answer or a DERP session (raw or WebSocket)."""

    __slots__ = ("server", "relay", "transport", "ip", "port", "buf", "mode", "timer", "handshake", "decoder",
                 "conn", "ws", "out", "is_mesh", "paused_since", "queued", "closed", "not_ideal", "port80")

    def __init__(self, server: DerpServer, port80: bool = False) -> None:
        self.server = server
        self.port80 = port80
        self.relay = server.relay
        self.transport: Any = None
        self.ip, self.port = "", 0
        self.not_ideal = False
        self.buf: bytearray | None = bytearray()
        self.mode = "head"
        self.timer: asyncio.TimerHandle | None = None
        self.handshake: ServerHandshake | None = None
        self.decoder: F.FrameDecoder | None = None
        self.conn: Conn | None = None
        self.ws: ServerProtocol | None = None
        self.out: list[bytes] = []
        self.is_mesh = False
        self.paused_since: float | None = None
        self.queued = [0, 0]   # packets queued while paused: [bulk, disco]
        self.closed = False

    # ---- asyncio.Protocol --------------------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER)
        peer = transport.get_extra_info("peername") or ("", 0)
        self.ip, self.port = str(peer[0]), int(peer[1])
        if self.ip.startswith("::ffff:"):
            self.ip = self.ip[7:]
        self.server.conns.add(self)
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.server.options.read_header_timeout, self._head_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.conns.discard(self)
        if self.timer:
            self.timer.cancel()
        if self.conn is not None:
            self.server.apply(self.relay.unregister(self.conn))
            self.server.flush()

    def pause_writing(self) -> None:
        self.paused_since = self.server.clock()

    def resume_writing(self) -> None:
        self.paused_since = None
        self.queued[0] = self.queued[1] = 0

    def data_received(self, data: bytes) -> None:
        try:
            if self.mode == "derp":
                self._derp_bytes(data)
            elif self.mode == "ws":
                self._ws_bytes(data)
            elif self.mode == "head":
                self._head_bytes(data)
        except ParseError as exc:
            self.server.http_counters["bad_frames"] += 1
            self.abort(f"bad input: {exc}")
        self.server.flush()

    def eof_received(self) -> bool | None:
        return None

    # ---- HTTP ---------------------------------------------------------------------------------------
    def _head_timeout(self) -> None:
        self.server.http_counters["header_timeouts" if self.mode == "head" else "handshake_failures"] += 1
        self.abort("read-header/handshake timeout")

    def _head_bytes(self, data: bytes) -> None:
        self.buf += data
        try:
            end = httpwire.find_head_end(self.buf)
            if end < 0:
                return
            req = httpwire.parse_request(bytes(self.buf[:end]))
        except ParseError:
            self.server.http_counters["bad_requests"] += 1
            self._reply(400, b"bad request\n")
            return
        head, rest = bytes(self.buf[:end]), bytes(self.buf[end:])
        self.buf = None
        if self.timer:
            self.timer.cancel()
            self.timer = None
        self.server.http_counters["requests"] += 1
        if self.server.options.trust_proxy and req.header("x-forwarded-for"):
            self.ip = req.header("x-forwarded-for").split(",")[0].strip()
        if not self.server.limiter.allow(self.ip, self.server.clock()):
            self.server.http_counters["rate_limited"] += 1
            self._reply(429, b"too many connections from your address; slow down\n", {"Retry-After": "1"})
            return
        if self.port80 and req.path != "/generate_204":
            answer = self.server.certs.http01_answer(req.path) if self.server.certs is not None else None
            if answer is not None:
                self._reply(200, answer, {"Content-Type": "application/octet-stream"})
            elif req.method not in ("GET", "HEAD"):
                self._reply(400, b"Use HTTPS\n")
            else:
                host = req.header("host") or "localhost"
                self._reply(302, b"", {"Location": f"https://{host.split(':')[0]}{req.first[1]}"},
                            head_only=req.method == "HEAD")
            return
        if req.path == "/derp":
            self._derp_request(req, head, rest)
            return
        status, headers, body = endpoints.answer(self.server, req, self.ip)
        self._reply(status, body, headers, head_only=req.method == "HEAD")

    def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None,
               head_only: bool = False) -> None:
        self.mode = "done"
        hdrs = {"Content-Type": "text/plain; charset=utf-8"} if body else {}
        hdrs.update(headers or {})
        self.transport.write(httpwire.response(status, hdrs, body, head_only=head_only))
        self.transport.close()

    def _derp_request(self, req: httpwire.Head, head: bytes, rest: bytes) -> None:
        upgrade = req.header("upgrade").lower()
        if self.server.closing:
            self._reply(503, b"server is shutting down\n")
            return
        if upgrade not in ("derp", "websocket"):
            self._reply(426, b"DERP requires connection upgrade\n", {"X-Content-Type-Options": "nosniff"})
            return
        # like derper: only an explicit "derp" subprotocol means WebSocket framing (very old clients sent
        # "Upgrade: WebSocket" but spoke raw DERP)
        if upgrade == "websocket" and "derp" in req.header("sec-websocket-protocol"):
            self._start_ws(head, rest)
            return
        if req.header("derp-fast-start") != "1":
            self.transport.write(httpwire.response(101, {
                "Upgrade": "DERP", "Connection": "Upgrade", "Derp-Version": "2",
                "Derp-Public-Key": self.relay.public_key.hex()}))
        self._start_derp(req)
        if rest:
            self._derp_bytes(rest)

    def _start_derp(self, req: httpwire.Head) -> None:
        self.mode = "derp" if self.ws is None else "ws"
        now = self.server.clock()
        self.handshake = ServerHandshake(self.relay.private_key, now, self.relay.config)
        self.not_ideal = bool(req.header("ideal-node"))
        self.timer = asyncio.get_running_loop().call_later(self.relay.config.handshake_timeout, self._head_timeout)
        self._write(self.handshake.greeting())
        self.flush()

    def _start_ws(self, head: bytes, rest: bytes) -> None:
        self.server.http_counters["ws_sessions"] += 1
        ws = ServerProtocol(subprotocols=["derp"], max_size=MAX_CLIENT_FRAME + 1024, logger=_ws_log)
        ws.receive_data(head)
        events = ws.events_received()
        if not events:
            self._reply(400, b"bad websocket request\n")
            return
        response = ws.accept(events[0])
        ws.send_response(response)
        self.transport.writelines(ws.data_to_send())
        if response.status_code != 101 or ws.subprotocol != "derp":
            if response.status_code == 101:
                ws.send_close(1008, "client must speak the derp subprotocol")
                self.transport.writelines(ws.data_to_send())
            self.transport.close()
            self.mode = "done"
            return
        self.ws = ws
        self._start_derp(httpwire.Head(("GET", "/derp", "HTTP/1.1"), {}))
        if rest:
            self._ws_bytes(rest)

    # ---- DERP session -----------------------------------------------------------------------------------
    def _ws_bytes(self, data: bytes) -> None:
        ws = self.ws
        assert ws is not None
        ws.receive_data(data)
        chunks = []
        for ev in ws.events_received():
            if ev.opcode in (Opcode.BINARY, Opcode.CONT, Opcode.TEXT):
                chunks.append(ev.data)
        pending = ws.data_to_send()
        if pending:
            self.transport.writelines(pending)
        if ws.close_expected() or ws.state.name == "CLOSED":
            self.transport.close()
        if chunks:
            self._derp_bytes(b"".join(chunks))

    def _derp_bytes(self, data: bytes) -> None:
        if self.conn is None:
            self._handshake_bytes(data)
            return
        assert self.decoder is not None
        relay, conn, server = self.relay, self.conn, self.server
        now = server.clock()
        for ftype, payload in self.decoder.feed(data):
            if ftype == _SEND:
                out = relay.send_packet(conn, payload, now)
                if out is None:
                    continue
                if type(out) is Deliver:
                    out.conn.sink.deliver(out.data, out.disco)
                else:
                    server.apply((out,))
            else:
                server.apply(relay.handle_frame(conn, ftype, payload, now))
            if self.closed:
                return

    def _handshake_bytes(self, data: bytes) -> None:
        assert self.handshake is not None
        try:
            got = self.handshake.receive_data(data)
        except ParseError as exc:
            self.server.http_counters["handshake_failures"] += 1
            self.abort(f"handshake failed: {exc}")
            return
        if got is None:
            return
        key, info, rest = got
        try:
            self.is_mesh = self.relay.admit(key, info)
        except Rejected as exc:
            self.server.http_counters["rejected"] += 1
            self.relay.drops[exc.counter] = self.relay.drops.get(exc.counter, 0) + 1
            log.info("refused %s from %s: %s", short(key), self.ip, exc)
            self.abort(str(exc))
            return
        if self.timer:
            self.timer.cancel()
            self.timer = None
        self.conn = Conn(key, self.ip, self.port, self.is_mesh, self, is_prober=info.is_prober,
                         not_ideal=self.not_ideal, can_ack_pings=info.can_ack_pings)
        self.handshake = None
        self.decoder = F.FrameDecoder(MAX_CLIENT_FRAME)
        self.server.apply(self.relay.register(self.conn, self.server.clock()))
        self._write(F.server_info_frame(self.relay.private_key, key, os.urandom(24), F.ServerInfo()))
        self.flush()
        if rest:
            self._derp_bytes(rest)

    # ---- writes -----------------------------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        if not self.out:
            self.server.dirty.append(self)
        self.out.append(data)

    def write_control(self, data: bytes) -> None:
        if self.closed:
            return
        if self.transport.get_write_buffer_size() > CONTROL_LIMIT:
            self.abort("control frames piling up")
            return
        self._write(data)

    def deliver(self, data: bytes, disco: bool) -> None:
        if self.closed:
            self.relay.drops["gone"] = self.relay.drops.get("gone", 0) + 1
            return
        if self.paused_since is not None:
            q = self.queued
            i = 1 if disco else 0
            if q[i] >= self.server.options.send_queue_depth:
                reason = "queue_full_disco" if disco else "queue_full"
                self.relay.drops[reason] = self.relay.drops.get(reason, 0) + 1
                return
            q[i] += 1
        self._write(data)

    def flush(self) -> None:
        if not self.out or self.closed:
            self.out = []
            return
        data = self.out[0] if len(self.out) == 1 else b"".join(self.out)
        self.out = []
        if self.ws is not None:
            self.ws.send_binary(data)
            self.transport.writelines(self.ws.data_to_send())
        else:
            self.transport.write(data)

    def going_away(self, restarting: bytes) -> None:
        """Graceful shutdown: Restarting to DERP clients, a going-away close to WebSocket clients."""
        if self.conn is None:
            if self.mode != "done":
                self.abort("shutdown")
            return
        if self.is_mesh:
            self.abort("shutdown")
            return
        self._write(restarting)
        self.flush()
        if self.ws is not None:
            self.ws.send_close(1001, "server restarting")
            self.transport.writelines(self.ws.data_to_send())

    def abort(self, reason: str) -> None:
        if self.closed:
            return
        log.debug("closing %s:%s: %s", self.ip, self.port, reason)
        self.closed = True
        self.mode = "done"
        if self.transport is not None:
            self.transport.abort() if reason.startswith(("bad input", "write timed out")) else self.transport.close()


__all__ = ["DerpServer", "HttpConn", "ServerOptions"]
