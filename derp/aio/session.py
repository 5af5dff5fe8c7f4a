"""One accepted connection of the asyncio DERP server (`derp.aio.server`): its HTTP head, then an endpoint
answer or a DERP session (raw or WebSocket) fed to the relay core.

Per connection: read one request head (bounded, with a read-header timeout against slowloris; per-IP
connection rate limit answered with 429, except for /healthz and /generate_204; behind a trusted proxy
the client address is the entry the proxy added to its header), then either an endpoint answer or a DERP
session (at most `max_conns_per_ip` at once per address). Admission (derp.admission) runs after
ClientInfo; when the webhook must be asked, reading pauses until it answers. Sessions write through a per-connection batch
flushed once per read burst; packets beyond the transport's high-water mark go to a bounded queue of
`send_queue_depth` packets (disco separately, and at most WRITE_BUFFER_LIMIT bytes in all), further
packets are dropped and counted. A session whose writes stall longer than the write timeout is cut.

Fairness: each turn of the event loop handles at most FRAMES_PER_TURN frames / BYTES_PER_TURN bytes of a
client (mesh peers: all); the rest waits in the decoder, reading paused, for the next turn (one
call_soon per turn, never per packet). With a per-client byte rate (as derper's -rate-config: frame
bytes received, every frame type, mesh peers exempt) a turn takes at most what the client's bucket holds
and may leave it one frame in debt; then reading stays paused until the debt is repaid (one call_later),
so the excess is delayed, never dropped, and TCP slows the sender down. Memory: a frame's size is checked against its type's maximum at
the header, and a frame must be complete within `frame_timeout`. A closed connection is forgotten at once
(unregistered, its per-IP slot freed) and reset if it has not drained within the write timeout.
One bad client only ever closes its own connection.
Operators get one INFO line when a client's DERP session starts and one when it ends (`log_session`):
short key (the whole `nodekey:` with -v), address, transport, NotePreferred (home), duration, bytes on the
connection each way and the reason; bytes are counted per read and per flush, never per packet.
On the plain-HTTP port (`port80`) a request is /generate_204, an ACME HTTP-01 token the relay's CertStore
holds (`derp.aio.certstore`), or redirected to https.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from websockets.frames import Opcode
from websockets.protocol import State as WsState
from websockets.server import ServerProtocol

from derp import frames as F
from derp import httpwire
from derp.admission import identity_of
from derp.aio import endpoints
from derp.constants import BYTES_PER_TURN, FRAMES_PER_TURN, MAX_CLIENT_FRAME, FrameType
from derp.errors import ParseError
from derp.keys import short
from derp.ratelimit import TokenBucket
from derp.server import Conn, Deliver, Rejected, ServerHandshake

log = logging.getLogger(__name__)
_ws_log = logging.getLogger(__name__ + ".websocket")
_ws_log.setLevel(logging.WARNING)
_SEND = FrameType.SEND_PACKET
HIGH_WATER = 256 << 10
WRITE_BUFFER_LIMIT = 1 << 20   # packets beyond this much unsent data are dropped (queue_full)
CONTROL_LIMIT = 2 << 20        # a (non-mesh) client that lets this much pile up is cut at its next control frame
UNLIMITED_PATHS = ("/healthz", "/generate_204")   # health checks are not charged to the per-IP rate limit
_HARD = ("bad input", "write timed out", "frame timed out")   # close reasons that reset at once
_RECV_OVERHEAD = 5 + 32        # RecvPacket header and source key around the packet bytes

class HttpConn(asyncio.Protocol):
    """One accepted connection: HTTP head, then an endpoint answer or a DERP session (raw or WebSocket)."""

    __slots__ = ("server", "relay", "transport", "ip", "port", "buf", "mode", "timer", "handshake", "decoder",
                 "conn", "ws", "out", "is_mesh", "paused_since", "queued", "closed", "not_ideal", "port80",
                 "partial_since", "read_paused", "turn_pending", "ip_slot", "since", "rx", "tx", "reason",
                 "identity", "bucket", "limited")
    is_quic = False   # derp.aio.quic_server's subclass: a DERP stream on a QUIC connection

    def __init__(self, server: Any, port80: bool = False, limited: bool = True) -> None:
        self.server = server   # derp.aio.server.DerpServer
        self.port80 = port80
        self.limited = limited and not port80     # charge the global accept limit at connection_made
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
        self.partial_since: float | None = None   # when the frame now arriving started (None: between frames)
        self.read_paused = False                  # frames beyond this turn's budget are waiting ...
        self.turn_pending = False                 # ... and a call_soon will give them their turn
        self.ip_slot = False                      # counted in server.per_ip
        self.since = 0.0                          # when the DERP session was registered (for its log line)
        self.rx = self.tx = 0                     # bytes read / written on the connection
        self.reason = ""                          # why it closed (the first reason given)
        self.identity: str | None = None          # TOFU identity (--bindings-file), from the /derp request
        self.bucket: TokenBucket | None = None    # the per-client byte rate (-rate-config), not for mesh peers

    # ---- asyncio.Protocol --------------------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        server = self.server
        if self.limited and not server.accept_allowed():
            transport.abort()
            return
        server.tune_socket(transport)
        transport.set_write_buffer_limits(high=HIGH_WATER)
        peer = transport.get_extra_info("peername") or ("", 0)
        self.ip, self.port = str(peer[0]), int(peer[1])
        if self.ip.startswith("::ffff:"):
            self.ip = self.ip[7:]
        self.server.conns.add(self)
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.server.options.read_header_timeout, self._head_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.reason:
            self.reason = f"connection lost: {exc}" if exc else "closed by the client"
        self.closed = True
        self.mode = "done"
        self.server.conns.discard(self)
        self._forget()
        self.server.flush()

    def pause_writing(self) -> None:
        self.paused_since = self.server.clock()

    def resume_writing(self) -> None:
        self.paused_since = None
        self.queued[0] = self.queued[1] = 0
        if self.conn is not None:
            self.conn.pong_pending = False

    def data_received(self, data: bytes) -> None:
        self.rx += len(data)
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
        opts = self.server.options
        if opts.trust_proxy:
            self.ip = httpwire.client_address(req, self.ip, opts.trust_proxy_header, opts.trust_proxy_hops)
        if req.path not in UNLIMITED_PATHS and not self.server.limiter.allow(self.ip, self.server.clock()):
            self.server.http_counters["rate_limited"] += 1
            self._reply(429, b"too many connections from your address; slow down\n", {"Retry-After": "1"})
            return
        if self.port80 and req.path != "/generate_204":
            answer = self.server.certs.http01_answer(req.path) if self.server.certs is not None else None
            if answer is not None:   # ACME HTTP-01 (derp.aio.certstore)
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
        hdrs = {"Content-Type": "text/plain; charset=utf-8"} if body else {}
        hdrs.update(headers or {})
        self.transport.write(httpwire.response(status, hdrs, body, head_only=head_only))
        self._end(hard=False)

    def _derp_request(self, req: httpwire.Head, head: bytes, rest: bytes) -> None:
        upgrade = req.header("upgrade").lower()
        if self.server.closing:
            self._reply(503, b"server is shutting down\n")
            return
        if not self.server.options.run_derp:
            self._reply(404, b"derp server disabled\n")
            return
        if upgrade not in ("derp", "websocket"):
            self._reply(426, b"DERP requires connection upgrade\n", {"X-Content-Type-Options": "nosniff"})
            return
        if not self._take_ip_slot():
            self.server.http_counters["per_ip_limited"] += 1
            self._reply(429, b"too many connections from your address\n", {"Retry-After": "5"})
            return
        mode = self.server.bindings_identity
        if mode is not None:
            self.identity = identity_of(mode, req.header, self.ip)
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
            self._end(hard=False)
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
        events = ws.events_received()
        for ev in events:
            if ev.opcode in (Opcode.BINARY, Opcode.CONT, Opcode.TEXT):
                chunks.append(ev.data)
        pending = ws.data_to_send()
        if pending:
            self.transport.writelines(pending)
        if ws.close_expected() or ws.state.name == "CLOSED":
            self.abort("websocket closed")
            return
        if chunks:
            self._derp_bytes(b"".join(chunks))
        elif not events and self.partial_since is None:  # a WebSocket frame is still arriving: time it too
            self.partial_since = self.server.clock()

    def _derp_bytes(self, data: bytes) -> None:
        if self.conn is not None:
            self._turn(data)
        elif self.handshake is not None:
            self._handshake_bytes(data)
        elif self.buf is not None:   # the webhook is being asked: kept for after the admission
            self.buf += data

    def _turn(self, data: bytes = b"") -> None:
        """Handle this turn's share of frames; frames beyond it wait, with reading paused, for the next."""
        decoder = self.decoder
        assert decoder is not None
        relay, conn, server = self.relay, self.conn, self.server
        now = server.clock()
        bucket = self.bucket
        if self.is_mesh:
            pairs = decoder.feed(data)
        elif bucket is None:
            pairs = decoder.feed(data, FRAMES_PER_TURN, BYTES_PER_TURN)
        else:   # the byte rate: at most what the bucket holds (one frame into debt at most)
            budget = max(1, min(BYTES_PER_TURN, int(bucket.refill(now))))
            pairs = decoder.feed(data, FRAMES_PER_TURN, budget)
            if pairs:
                bucket.spend(sum(len(p) for _, p in pairs))
        for ftype, payload in pairs:
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
        if not decoder.partial():
            self.partial_since = None
        elif pairs or self.partial_since is None:  # a new frame started arriving
            self.partial_since = now
        wait = bucket.debt_seconds() if bucket is not None else 0.0
        if decoder.ready() or wait:
            if not self.read_paused:
                self.read_paused = True
                self.transport.pause_reading()
            if not self.turn_pending:
                self.turn_pending = True
                if wait:   # over its byte rate: nothing more is read until the debt is repaid
                    server.http_counters["rate_limit_waits"] += 1
                    asyncio.get_running_loop().call_later(wait, self._next_turn)
                else:
                    asyncio.get_running_loop().call_soon(self._next_turn)
        elif self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()

    def _next_turn(self) -> None:
        self.turn_pending = False
        if self.closed:
            return
        try:
            self._turn()
        except ParseError as exc:
            self.server.http_counters["bad_frames"] += 1
            self.abort(f"bad input: {exc}")
        self.server.flush()

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
        except Rejected as exc:  # counted by the relay in `refused`, by reason
            self._refuse(key, exc)
            return
        webhook = self.server.webhook
        if webhook is not None and not self.is_mesh:
            verdict = webhook.cached(key, self.ip)
            if verdict is None:   # ask it, reading paused meanwhile (what still arrives waits in buf)
                self.transport.pause_reading()
                self.handshake, self.buf = None, bytearray(rest)
                task = asyncio.ensure_future(webhook.check(key, self.ip))
                task.add_done_callback(lambda t: self._webhook_answered(t, key, info))
                return
            if not verdict.allow:
                self._refuse(key, self.relay.refuse(Rejected(verdict.reason, verdict.counter)))
                return
        self._admitted(key, info, rest)

    def _refuse(self, key: bytes, exc: Rejected) -> None:
        self.server.http_counters["rejected"] += 1
        log.info("refused %s from %s: %s", short(key), self.ip, exc)
        self.abort(str(exc))

    def _webhook_answered(self, task: asyncio.Future, key: bytes, info: F.ClientInfo) -> None:
        if self.closed or task.cancelled():
            return
        verdict = task.result()
        rest, self.buf = bytes(self.buf or b""), None
        self.transport.resume_reading()
        try:
            if verdict.allow:
                self._admitted(key, info, rest)
            else:
                self._refuse(key, self.relay.refuse(Rejected(verdict.reason, verdict.counter)))
        except ParseError as exc:
            self.server.http_counters["bad_frames"] += 1
            self.abort(f"bad input: {exc}")
        self.server.flush()

    def _admitted(self, key: bytes, info: F.ClientInfo, rest: bytes) -> None:
        """Past the checks that may wait: the TOFU binding and max clients, then registration."""
        if not self.is_mesh:
            try:
                self.relay.finish_admission(key, self.identity, time.time())
            except Rejected as exc:
                self._refuse(key, exc)
                return
            rate, burst = self.server.client_rate
            if rate:
                self.bucket = TokenBucket(rate, burst, self.server.clock())
        if self.timer:
            self.timer.cancel()
            self.timer = None
        self.conn = Conn(key, self.ip, self.port, self.is_mesh, self, is_prober=info.is_prober,
                         not_ideal=self.not_ideal, can_ack_pings=info.can_ack_pings)
        self.handshake = None
        self.decoder = F.FrameDecoder(limits=self.server.frame_limits)
        self.server.apply(self.relay.register(self.conn, self.server.clock()))
        self.since = self.server.clock()
        log_session(self, "connected")
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
        if not self.is_mesh and self.transport.get_write_buffer_size() > CONTROL_LIMIT:
            self.abort("control frames piling up")
            return
        self._write(data)

    def deliver(self, data: bytes, disco: bool) -> None:
        """A RecvPacket frame: queued (and only then counted relayed) or dropped and counted by reason."""
        relay = self.relay
        if self.closed:
            relay.drops["gone"] = relay.drops.get("gone", 0) + 1
            return
        if self.paused_since is not None:
            q = self.queued
            i = 1 if disco else 0
            if q[i] >= self.server.options.send_queue_depth or \
                    self.transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT:
                reason = "queue_full_disco" if disco else "queue_full"
                relay.drops[reason] = relay.drops.get(reason, 0) + 1
                return
            q[i] += 1
        counters = relay.counters
        counters["packets_relayed"] += 1
        counters["bytes_relayed"] += len(data) - _RECV_OVERHEAD
        self._write(data)

    def flush(self) -> None:
        if not self.out or self.closed:
            self.out = []
            return
        data = self.out[0] if len(self.out) == 1 else b"".join(self.out)
        self.out = []
        self.tx += len(data)
        if self.ws is not None:
            if self.ws.state is not WsState.OPEN:   # told to go away (shutdown): a late PeerGone is dropped
                return
            self.ws.send_binary(data)
            self.transport.writelines(self.ws.data_to_send())
        else:
            self.transport.write(data)
        conn = self.conn
        if conn is not None and self.paused_since is None:
            conn.pong_pending = False  # written (a paused transport keeps it pending until it drains)

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

    # ---- closing ----------------------------------------------------------------------------------------
    def abort(self, reason: str) -> None:
        """Close with a reason: reset for garbage, stalled writes and slow frames, else a graceful close."""
        if self.closed:
            return
        if not self.reason:
            self.reason = reason
        log.debug("closing %s:%s: %s", self.ip, self.port, reason)
        self._end(hard=reason.startswith(_HARD))

    def _end(self, hard: bool) -> None:
        """Forget the connection now (unregistered, per-IP slot freed); a graceful close that has not drained
        within the write timeout is reset, so a client that never reads cannot keep it."""
        self.closed = True
        self.mode = "done"
        self._forget()
        if self.transport is None:
            return
        if hard:
            self.transport.abort()
            return
        self.transport.close()
        opts = self.server.options
        limit = (opts.mesh_write_timeout if self.is_mesh else opts.write_timeout) or type(opts).write_timeout
        self.timer = asyncio.get_running_loop().call_later(limit, self._close_timeout)

    def _close_timeout(self) -> None:
        self.timer = None
        self.server.http_counters["close_timeouts"] += 1
        self.transport.abort()

    def _forget(self) -> None:
        if self.timer:
            self.timer.cancel()
            self.timer = None
        if self.ip_slot:
            self.ip_slot = False
            per_ip = self.server.per_ip
            left = per_ip.get(self.ip, 1) - 1
            if left > 0:
                per_ip[self.ip] = left
            else:
                per_ip.pop(self.ip, None)
        if self.conn is not None and not self.conn.closed:
            log_session(self, "disconnected")
            self.server.apply(self.relay.unregister(self.conn))

    def _take_ip_slot(self) -> bool:
        cap = self.server.options.max_conns_per_ip
        per_ip = self.server.per_ip
        count = per_ip.get(self.ip, 0)
        if cap and count >= cap:
            return False
        per_ip[self.ip] = count + 1
        self.ip_slot = True
        return True


def log_session(c: HttpConn, event: str) -> None:
    """`client connected key=abcd1234 addr=198.51.100.7:41641 transport=tls`, and at the end the same with
    `home=yes|no duration=12.3s rx=... tx=... reason="..."` (bytes on the connection, framing included)."""
    if not log.isEnabledFor(logging.INFO):
        return
    conn = c.conn
    assert conn is not None
    key = "nodekey:" + conn.key.hex() if log.isEnabledFor(logging.DEBUG) else short(conn.key)
    host = f"[{c.ip}]" if ":" in c.ip else c.ip
    transport = "quic" if c.is_quic else \
        ("tls" if c.server.ssl is not None else "http") + ("+websocket" if c.ws is not None else "")
    kind = " mesh=yes" if conn.is_mesh else (" prober=yes" if conn.is_prober else "")
    if event == "connected":
        log.info("client connected key=%s addr=%s:%d transport=%s%s", key, host, c.port, transport, kind)
        return
    log.info('client disconnected key=%s addr=%s:%d transport=%s%s home=%s duration=%.1fs rx=%d tx=%d reason="%s"',
             key, host, c.port, transport, kind, "yes" if conn.preferred else "no", c.server.clock() - c.since,
             c.rx, c.tx, c.reason.replace('"', "'") or "closed")


__all__ = ["HttpConn", "log_session"]
