"""One DERP connection over QUIC (docs/derp-quic.md) for `derp.aio.client.DerpClient`: the UDP socket, the
aioquic `QuicConnection` (TLS verified as on TCP), the request head and then the DERP frame protocol on
stream 0, and relayed packets as DATAGRAM frames.

`QuicDerpConn` offers what DerpClient uses of `derp.aio.clientconn._Stream` (`core`, `write`, `done`,
`upgraded`, `restarting`, `pings`, `_finish`, `_arm`, `verify_pin`, `websocket`, `transport` with
`get_extra_info("socket")`), plus `write_packet(frame)`: a SendPacket frame in a datagram when the server
negotiated DATAGRAM and the frame fits, else on the stream; `last_rx` (time.monotonic() of the last UDP
datagram from the relay) for a stall watch. `dial_quic(client, target, port)` makes one.

I/O: `loop.add_reader` on a connected non-blocking UDP socket; one readable callback reads every waiting
datagram (at most QUIC_RECV_BATCH), feeds them to aioquic, handles its events, then asks it once for what
to send (UDP GSO runs, `derp.aio.quicio.DatagramWriter`); writes made during a turn of the loop are sent by
one call_soon. One timer follows aioquic's `get_timer()` (whole milliseconds, re-armed only when it moves
earlier), a second one the DERP core's deadline. The connection is `derp.aio.quicfast`'s class with
`derp.aio.quiccc`'s pacer. Datagrams waiting for the congestion window are bounded (`derp.quiccc.queue_limit`:
20 ms at the pacing rate); beyond it a packet is dropped and counted (aioquic's queue has no bound).
No task, and no allocation beyond aioquic's own, per packet.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import ssl
from typing import TYPE_CHECKING, Any

from aioquic.quic import events as E
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from derp import httpwire
from derp import protocol as P
from derp import quicwire as W
from derp.aio.quicfast import connection_class   # aioquic's, with a leaner send path
from derp.aio.quiccc import attach, configure, queue_limit   # the tunnel congestion controller, packet size, DATAGRAM, pacer
from derp.aio.clientconn import WRITE_LIMIT, ConnectError, UpgradeRefused, _Stream
from derp.aio.quicio import (DatagramWriter, QuicTimer, clock as _clock, shed_handshake_buffers, socket_buffers,
                             stream_unacked)
from derp.aio.targets import DialTarget
from derp.constants import (FAST_START_HEADER, IDEAL_NODE_HEADER, QUIC_DATAGRAM_QUEUE, QUIC_IDLE_TIMEOUT,
                            QUIC_PACKET_SIZE, QUIC_RECV_BATCH)
from derp.errors import ParseError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    from derp.aio.client import DerpClient

_CRYPTO_ERROR = range(0x100, 0x200)   # RFC 9001 §4.8: CRYPTO_ERROR carries a TLS alert
_BAD_CERT_ALERTS = (42, 43, 44, 45, 46, 48)   # RFC 8446 §6.2: bad/unsupported/revoked/expired/unknown cert, CA


def quic_stats(client: Any) -> dict[str, int]:
    """The DerpClient's QUIC counters (in ClientStats.extra), created at first use."""
    extra = client.stats.extra
    if "quic_datagrams_sent" not in extra:
        for name in ("quic_datagrams_sent", "quic_datagrams_received", "quic_stream_packets",
                     "quic_dropped_queue_full", "quic_dropped_bad_datagram", "quic_send_errors"):
            extra.setdefault(name, 0)
    return extra


class _SocketInfo:
    """What DerpClient reads through `stream.transport` (get_extra_info("socket") for SO_MARK)."""

    __slots__ = ("conn",)

    def __init__(self, conn: "QuicDerpConn") -> None:
        self.conn = conn

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "socket":
            return self.conn.sock
        if name == "peername":
            return self.conn.addr
        return default

    def is_closing(self) -> bool:
        return self.conn.done.done()

    def close(self) -> None:
        self.conn._finish("closed")


class QuicDerpConn:
    """One QUIC connection to a DERP node (see the module docstring)."""

    websocket = False

    def __init__(self, client: "DerpClient", target: DialTarget, sock: socket.socket, addr: tuple,
                 quic: QuicConnection) -> None:
        self.client = client
        self.target = target
        self.sock = sock
        self.writer = DatagramWriter(sock, connected=True)
        self.addr = addr
        self.quic = quic
        self.loop = asyncio.get_running_loop()
        self.transport = _SocketInfo(self)
        self.handshake: asyncio.Future = self.loop.create_future()
        self.upgraded: asyncio.Future = self.loop.create_future()
        self.done: asyncio.Future = self.loop.create_future()
        self.core: P.ClientConnection | None = None
        self.restarting: P.RestartingReceived | None = None
        self.pings: dict[bytes, asyncio.Future] = {}
        self.stream_id = -1
        self.head = b""   # the start of the DERP stream while it might be an HTTP refusal
        self.last_rx = _clock()   # time.monotonic() of the last UDP datagram from the relay (stall watch)
        self.timer: asyncio.TimerHandle | None = None        # the DERP core's
        self.quic_timer = QuicTimer(self.loop, self._on_quic_timer, _clock)   # aioquic's get_timer()
        self.flush_pending = False
        self.stats = quic_stats(client)
        self.datagram_limit = 0   # set once the server's connection ID is known (begin)
        self._pending = quic._datagrams_pending   # aioquic's datagram queue (unbounded: we bound it)
        self.loop.add_reader(sock.fileno(), self._readable)

    # ---- I/O ------------------------------------------------------------------------------------------
    def _readable(self) -> None:
        sock, quic, addr = self.sock, self.quic, self.addr
        self.last_rx = _clock()
        for _ in range(QUIC_RECV_BATCH):
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:   # e.g. ICMP port unreachable: nothing listens there
                self._fail(f"connection lost: {exc.strerror or exc}")
                return
            try:
                quic.receive_datagram(data, addr, _clock())   # this datagram's time (quic_server.py: why)
            except Exception:   # aioquic drops what it cannot parse; anything it raises is garbage too
                self.stats["quic_dropped_bad_datagram"] += 1
        self._events()
        self._transmit()

    def _events(self) -> None:
        quic = self.quic
        client = self.client
        ev = quic.next_event()
        while ev is not None:
            kind = type(ev)
            if kind is E.DatagramFrameReceived:
                try:
                    payload = W.parse_datagram(ev.data, W.RECV)
                except ParseError:
                    self.stats["quic_dropped_bad_datagram"] += 1
                else:
                    if self.core is not None and self.core.state == P.ClientState.CONNECTED:
                        self.stats["quic_datagrams_received"] += 1
                        client._packet(bytes(payload[:32]), bytes(payload[32:]))
                    else:
                        self.stats["quic_dropped_bad_datagram"] += 1
            elif kind is E.StreamDataReceived:
                if ev.stream_id == self.stream_id and self.core is not None:
                    if ev.data and not self.upgraded.done() and self._refused(ev.data):
                        return
                    if ev.data:
                        self._carry(self.core.receive_data(ev.data, self.loop.time()))
                    if ev.end_stream and not self.done.done():
                        self._fail("connection closed by the server")
            elif kind is E.HandshakeCompleted:
                shed_handshake_buffers(quic)
                if not self.handshake.done():
                    self.handshake.set_result(ev)
            elif kind is E.ConnectionTerminated:
                self._fail(_close_reason(ev))
            elif kind is E.StreamReset and ev.stream_id == self.stream_id:
                self._fail("the server reset the DERP stream")
            if self.done.done():
                return
            ev = quic.next_event()

    def _refused(self, data: bytes) -> bool:
        """Instead of the ServerKey frame, an HTTP answer (429 per-IP limit, 503 shutting down, ...):
        the dial fails with UpgradeRefused, as on TCP."""
        self.head += data
        if not self.head.startswith(b"HTTP/"[:len(self.head)]):
            self.head = b""
            return False
        if len(self.head) < 5:
            return True
        end = httpwire.find_head_end(self.head)
        if end < 0 and len(self.head) < 4096:
            return True
        try:
            status = int(httpwire.parse_response(self.head[:end] if end >= 0 else self.head).first[1])
        except (ParseError, ValueError):
            status = 400
        exc = UpgradeRefused(status)
        for fut in (self.handshake, self.upgraded):
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()
        self._finish(str(exc))
        return True

    def _transmit(self) -> None:
        self.flush_pending = False
        out = self.quic.datagrams_to_send(_clock())
        if out:
            errors = self.writer.send(out)   # QUIC's loss recovery resends what matters
            if errors:
                self.stats["quic_send_errors"] += errors
        self.quic_timer.arm(self.quic.get_timer())

    def _on_quic_timer(self, now: float) -> None:
        if self.done.done():
            return
        self.quic.handle_timer(now)
        self._events()
        self._transmit()

    def _soon(self) -> None:
        if not self.flush_pending:
            self.flush_pending = True
            self.loop.call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        if self.flush_pending and not self.done.done():
            self._transmit()

    # ---- DERP -----------------------------------------------------------------------------------------
    def begin(self) -> None:
        """Once the handshake is verified: the request head on stream 0, then the DERP core."""
        t = self.target
        hdrs = {"Upgrade": "DERP", "Connection": "Upgrade", FAST_START_HEADER: "1"}
        if t.ideal_node:
            hdrs[IDEAL_NODE_HEADER] = t.ideal_node
        self.datagram_limit = W.datagram_limit(QUIC_PACKET_SIZE, len(self.quic._peer_cid.cid),
                                               self.quic._remote_max_datagram_frame_size)
        self.stream_id = self.quic.get_next_available_stream_id()
        self.quic.send_stream_data(self.stream_id, httpwire.request("GET", "/derp", t.host_header, hdrs))
        c = self.client
        now = self.loop.time()
        self.core = P.ClientConnection(c.private_key, os.urandom, now, c.config)
        self._carry(self.core.start(now))
        self._arm()
        self._transmit()

    # the DERP core's timer and outputs are handled exactly as on TCP (they use core, upgraded, done, pings,
    # restarting, client, write and _finish, which this class has too)
    _arm = _Stream._arm
    _on_timer = _Stream._on_timer
    _carry = _Stream._carry

    # ---- writes ---------------------------------------------------------------------------------------
    def buffered(self) -> int:
        """Stream bytes written and not yet acknowledged by the server."""
        return stream_unacked(self.quic, self.stream_id)

    def write(self, data: bytes) -> bool:
        """Frames on the DERP stream (False: closed, or over WRITE_LIMIT unacknowledged)."""
        if self.done.done() or self.stream_id < 0 or self.buffered() > WRITE_LIMIT:
            return False
        self.quic.send_stream_data(self.stream_id, data)
        self._soon()
        return True

    def write_packet(self, frame: bytes) -> bool:
        """A SendPacket frame: in a datagram when the server takes DATAGRAM and it fits, else on the stream.
        False when closed or over a bound (datagram queue, stream buffer); counted."""
        if self.done.done():
            return False
        quic = self.quic
        if len(frame) <= self.datagram_limit:
            if len(self._pending) >= QUIC_DATAGRAM_QUEUE:
                self._transmit()   # a burst: send what the window takes now, then queue
            if len(self._pending) >= QUIC_DATAGRAM_QUEUE and len(self._pending) >= queue_limit(quic):
                self.stats["quic_dropped_queue_full"] += 1
                return False
            quic.send_datagram_frame(frame)
            self.stats["quic_datagrams_sent"] += 1
            self._soon()
            return True
        self.stats["quic_stream_packets"] += 1
        return self.write(frame)

    # ---- closing --------------------------------------------------------------------------------------
    def _fail(self, reason: str) -> None:
        for fut in (self.handshake, self.upgraded):
            if not fut.done():
                fut.set_exception(ConnectError(reason))
                fut.exception()   # retrieved: the dial awaits at most one of them
        self._finish(reason)

    def _finish(self, reason: str) -> None:
        if self.timer:
            self.timer.cancel()
            self.timer = None
        for fut in self.pings.values():
            if not fut.done():
                fut.set_exception(ConnectionError(reason))
        for fut in (self.handshake, self.upgraded):
            if not fut.done():
                fut.set_exception(ConnectError(reason))
                fut.exception()   # retrieved: nobody may be waiting any more
        if self.done.done():
            return
        self.done.set_result(reason)
        try:
            self.quic.close(reason_phrase=reason[:100])
            self._transmit()   # the CONNECTION_CLOSE, once
        except OSError:
            pass
        self.quic_timer.cancel()
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()

    # ---- TLS ------------------------------------------------------------------------------------------
    def verify_pin(self) -> None:
        """After the handshake: the CertName pin (sha256-raw of the leaf) or name, as the TCP dial checks."""
        t = self.target
        cert = self.quic.tls._peer_certificate
        if t.pin is not None:
            from cryptography.hazmat.primitives.serialization import Encoding
            der = cert.public_bytes(Encoding.DER) if cert is not None else None
            if der is None or hashlib.sha256(der).digest() != t.pin:
                raise ConnectError("server certificate does not match the pinned sha256-raw CertName")
            return
        if t.cert_name and not t.insecure:
            from aioquic.tls import verify_certificate
            try:
                verify_certificate(cert, self.quic.tls._peer_certificate_chain, server_name=t.cert_name,
                                   **_ca_locations(self.client.ca_file))
            except Exception as exc:   # aioquic's alert classes
                raise ConnectError(f"server certificate is not valid for CertName {t.cert_name!r}: {exc}") from None


def _close_reason(ev: E.ConnectionTerminated) -> str:
    code, phrase = ev.error_code, ev.reason_phrase or ""
    if code in _CRYPTO_ERROR:
        alert = code - 0x100
        if alert in _BAD_CERT_ALERTS or "certificate" in phrase.lower():
            return f"TLS certificate verify failed: {phrase or f'alert {alert}'}"
        return f"TLS handshake failed: {phrase or f'alert {alert}'}"
    if code == 0 and not phrase:
        return "connection closed by the server"
    return f"QUIC connection closed (error 0x{code:x}{': ' + phrase if phrase else ''})"


def _ca_locations(ca_file: str | None) -> dict[str, str | None]:
    """The system CA store plus the client's extra CA file, as the TCP dial's ssl context loads them."""
    paths = ssl.get_default_verify_paths()
    capath = paths.capath if paths.capath and os.path.isdir(paths.capath) else None
    cafile = ca_file or (paths.cafile if paths.cafile and os.path.exists(paths.cafile) else None)
    if ca_file is None and cafile is None and capath is None:
        return {}
    return {"cafile": cafile, "capath": capath}


def quic_configuration(target: DialTarget, ca_file: str | None) -> QuicConfiguration:
    """The client side: ALPN wgc-derp/1, DATAGRAM, our packet size, and certificate checks like
    derp.aio.targets.make_ssl_context (insecure or pinned: none during the handshake, the pin after;
    CertName: the chain and that name after; otherwise the chain and the SNI name during it)."""
    sni = target.server_name or target.host
    cfg = configure(QuicConfiguration(is_client=True, alpn_protocols=[W.ALPN], server_name=sni),
                    max_datagram_size=QUIC_PACKET_SIZE, idle_timeout=QUIC_IDLE_TIMEOUT)
    if target.insecure or target.pin is not None or target.cert_name:
        cfg.verify_mode = ssl.CERT_NONE
        return cfg
    cfg.verify_mode = ssl.CERT_REQUIRED
    if ca_file:   # checked here as the TCP dial's context checks it (aioquic would only fail mid-handshake)
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=ca_file)   # not the system store
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(f"cannot load CA file {ca_file!r}: {exc}") from None
    for name, value in _ca_locations(ca_file).items():
        setattr(cfg, name, value)
    return cfg


async def dial_quic(client: "DerpClient", target: DialTarget, port: int) -> QuicDerpConn:
    """One QUIC connection to `target` at UDP `port`, through the DERP handshake (ConnectError, OSError,
    asyncio.TimeoutError on failure; the caller bounds the time)."""
    loop = asyncio.get_running_loop()
    cfg = quic_configuration(target, client.ca_file)
    infos = await loop.getaddrinfo(target.host, port, type=socket.SOCK_DGRAM)
    if not infos:
        raise ConnectError(f"no address for {target.host}")
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    conn = None
    client._dialing.add(sock)
    try:
        sock.setblocking(False)
        if client.fwmark:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, client.fwmark)
        socket_buffers(sock, 1 << 20)
        sock.connect(addr)
        addr = sock.getpeername()
        quic = attach(connection_class(configuration=cfg))
        conn = QuicDerpConn(client, target, sock, addr, quic)
        quic.connect(addr, _clock())
        conn._transmit()
        await conn.handshake
        conn.verify_pin()
        conn.begin()
        await conn.upgraded
    except BaseException:
        if conn is not None:
            conn._finish("dial failed")
        else:
            sock.close()
        raise
    finally:
        client._dialing.discard(sock)
    return conn


__all__ = ["QuicDerpConn", "dial_quic", "quic_configuration", "quic_stats"]
