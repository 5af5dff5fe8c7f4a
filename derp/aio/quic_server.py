"""DERP over QUIC, the server side (docs/derp-quic.md): the UDP listener at the DERP port, the dispatch of
datagrams to aioquic connections by connection ID, and per connection a stream-transport adapter under
which the existing `derp.aio.session.HttpConn` runs unchanged on stream 0.

Listener (`QuicListener`): one UDP socket per address as the TCP listener binds (all addresses: one
dual-stack IPv6 socket), read with `loop.add_reader` and `recvfrom` in batches of QUIC_RECV_BATCH; after a
batch the relay's writes are flushed once (`DerpServer.flush`) and every connection it touched sends what
it has (UDP GSO runs, `derp.aio.quicio.DatagramWriter`). Connections are `derp.aio.quicfast`'s class
(aioquic's, with a leaner send path) with `derp.aio.quiccc`'s pacer. A short-header packet is routed by
its destination connection ID without parsing more; a long header is parsed (aioquic's
`pull_quic_header`): an unsupported version gets a Version Negotiation packet, an Initial of at least
1200 bytes for an unknown ID creates a connection, unless QUIC_MAX_HALF_OPEN are still in their handshake
or the listener is closing; anything else is dropped and counted statelessly.
A first Initial that gets no answer (it did not decrypt) keeps no connection; a handshake not done within
HANDSHAKE_TIMEOUT is closed.
TLS: the relay's certificate (`cert_source()` gives the PEM pair; a new one is used by new connections),
ALPN `wgc-derp/1` only (aioquic refuses others with `no_application_protocol`).

Per connection (`QuicSession`): on HandshakeCompleted an `HttpConn` subclass is made with the session as
its transport, so the HTTP head, admission (ACL, webhook, TOFU, -verify-clients), per-IP limits, the rate
bucket, fairness, log_session (transport=quic) and graceful shutdown are those of TCP. Stream 0 bytes go
to `data_received` (held while it paused reading: at most QUIC_STREAM_HOLD_LIMIT, beyond that the session
is cut, since QUIC's flow control in aioquic grows without bound). Other streams are reset. A SendPacket
DATAGRAM goes to `relay.send_packet` like a stream frame (charged to the same byte bucket; over it, or
before the session is registered, or malformed: dropped and counted). Outbound, a RecvPacket the relay
core built is put in a datagram when the client negotiated DATAGRAM and it fits, else on the stream
(counted); the datagram queue is bounded (`derp.quiccc.queue_limit`, drops counted). A graceful close sends FIN
after what is written, waits for it to be acknowledged, then closes the connection with error 0.
"""
from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any, Callable

from aioquic.buffer import Buffer
from aioquic.quic import events as E
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicPacketType, encode_quic_version_negotiation, pull_quic_header

from derp import quicwire as W
from derp.aio.quicfast import connection_class   # aioquic's, with a leaner send path
from derp.aio.quiccc import attach, configure, queue_limit   # the tunnel congestion controller, packet size, DATAGRAM, pacer
from derp.aio.quicio import (DatagramWriter, QuicTimer, clock as _clock, shed_handshake_buffers, socket_buffers,
                             stream_unacked)
from derp.aio.session import HttpConn
from derp.constants import (HANDSHAKE_TIMEOUT, QUIC_CID_LEN, QUIC_DATAGRAM_QUEUE, QUIC_IDLE_TIMEOUT,
                            QUIC_MAX_HALF_OPEN, QUIC_MIN_INITIAL, QUIC_PACKET_SIZE,
                            QUIC_RECV_BATCH, QUIC_STREAM_HOLD_LIMIT)
from derp.errors import ParseError
from derp.server import Deliver

log = logging.getLogger(__name__)
_NO_APP_PROTOCOL = 0x100 + 120    # RFC 9001 §4.8: CRYPTO_ERROR of the TLS alert no_application_protocol
_STREAM_REFUSED = 0x1             # our application error code for streams other than the DERP one
_RECV_OVERHEAD = 5 + 32
DROP_REASONS = ("garbage", "unknown_connection", "half_open_limit", "bad_datagram", "not_registered",
                "rate_limited", "queue_full", "refused_alpn")


def server_configuration(cert_pem: bytes, key_pem: bytes) -> QuicConfiguration:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from cryptography.x509 import load_pem_x509_certificates

    certs = load_pem_x509_certificates(cert_pem)
    cfg = configure(QuicConfiguration(is_client=False, alpn_protocols=[W.ALPN], connection_id_length=QUIC_CID_LEN),
                    max_datagram_size=QUIC_PACKET_SIZE, idle_timeout=QUIC_IDLE_TIMEOUT)
    cfg.certificate, cfg.certificate_chain = certs[0], certs[1:]
    cfg.private_key = load_pem_private_key(key_pem, None)
    return cfg


class QuicHttpConn(HttpConn):
    """HttpConn on a QUIC session: Deliver goes in a datagram when it can, log lines say transport=quic."""

    __slots__ = ("session",)
    is_quic = True

    def deliver(self, data: bytes, disco: bool) -> None:
        s = self.session
        if s.datagrams and not self.closed and len(data) <= s.datagram_limit:
            stats = s.listener.stats
            if len(s.pending) >= QUIC_DATAGRAM_QUEUE:
                s.transmit(False)   # a big read batch for one receiver: send what its window takes now
            if len(s.pending) >= QUIC_DATAGRAM_QUEUE and len(s.pending) >= queue_limit(s.quic):
                stats["dropped_queue_full"] += 1
                relay = self.relay
                relay.drops["queue_full"] = relay.drops.get("queue_full", 0) + 1
                return
            s.quic.send_datagram_frame(data)
            self.tx += len(data)
            stats["datagrams_relayed"] += 1
            counters = self.relay.counters
            counters["packets_relayed"] += 1
            counters["bytes_relayed"] += len(data) - _RECV_OVERHEAD
            s.touch()
            return
        if not self.closed:
            s.listener.stats["stream_packets"] += 1
        HttpConn.deliver(self, data, disco)

    def going_away(self, restarting: bytes) -> None:
        """Restarting on the stream, then the connection is closed once it is acknowledged (the session
        stays registered until then, as a TCP client stays until it leaves)."""
        HttpConn.going_away(self, restarting)
        if not self.closed:
            self.session.close()


class QuicSession:
    """One aioquic connection and the transport HttpConn writes to (stream 0)."""

    def __init__(self, listener: "QuicListener", sock: socket.socket, addr: tuple, quic: QuicConnection) -> None:
        self.listener = listener
        self.loop = listener.loop
        self.sock = sock
        self.writer = listener.writers[sock]
        self.addr = addr
        self.quic = quic
        self.pending = quic._datagrams_pending   # aioquic's unbounded queue: bounded by our checks
        self.cids: set[bytes] = set()
        self.http: QuicHttpConn | None = None
        self.established = False
        self.answered = False    # sent something: its first Initial was a real one
        self.datagrams = False
        self.datagram_limit = 0
        self.timer = QuicTimer(self.loop, self._on_timer, _clock)   # aioquic's get_timer()
        self.dirty = False
        self.paused = False
        self.held: list[bytes] = []
        self.held_bytes = 0
        self.closing = False     # graceful: FIN sent, close when acknowledged
        self.gone = False
        self.stream_id = 0
        self.high = 256 << 10
        self.write_paused = False

    # ---- events from aioquic ------------------------------------------------------------------------
    def events(self) -> None:
        quic = self.quic
        ev = quic.next_event()
        while ev is not None:
            kind = type(ev)
            if kind is E.DatagramFrameReceived:
                self.listener.datagram(self, ev.data)
            elif kind is E.StreamDataReceived:
                self._stream_data(ev)
            elif kind is E.HandshakeCompleted:
                self._established()
            elif kind is E.ConnectionIdIssued:
                self.listener.add_cid(ev.connection_id, self)
            elif kind is E.ConnectionIdRetired:
                self.listener.drop_cid(ev.connection_id, self)
            elif kind is E.ConnectionTerminated:
                self._terminated(ev)
                return
            elif kind is E.StreamReset and ev.stream_id == self.stream_id and self.http is not None:
                self.http.abort("the client reset the DERP stream")
            ev = quic.next_event()

    def _established(self) -> None:
        self.established = True
        shed_handshake_buffers(self.quic)
        self.listener.half_open -= 1
        remote = self.quic._remote_max_datagram_frame_size
        self.datagrams = bool(remote)
        self.datagram_limit = W.datagram_limit(QUIC_PACKET_SIZE, len(self.quic._peer_cid.cid), remote)
        http = QuicHttpConn(self.listener.server)
        http.session = self
        self.http = http
        http.connection_made(self)

    def _stream_data(self, ev: E.StreamDataReceived) -> None:
        http = self.http
        if ev.stream_id != self.stream_id or http is None:
            self._refuse_stream(ev.stream_id)
            return
        if ev.data:
            if self.paused or self.held:
                self.held.append(ev.data)
                self.held_bytes += len(ev.data)
                if self.held_bytes > QUIC_STREAM_HOLD_LIMIT:
                    http.abort("bad input: stream data beyond the hold limit while paused")
                return
            http.data_received(ev.data)
        if ev.end_stream and not http.closed:
            http.abort("closed by the client")

    def _refuse_stream(self, stream_id: int) -> None:
        quic = self.quic
        self.listener.stats["streams_refused"] += 1
        try:
            quic.stop_stream(stream_id, _STREAM_REFUSED)
            if stream_id % 4 == 0:   # client-initiated bidirectional: our sending side too
                quic.reset_stream(stream_id, _STREAM_REFUSED)
        except Exception:   # aioquic refuses some stream states (already finished): nothing to refuse
            pass

    def _terminated(self, ev: E.ConnectionTerminated) -> None:
        if self.gone:
            return
        self.gone = True
        if not self.established:
            self.listener.half_open -= 1
            if ev.error_code == _NO_APP_PROTOCOL:
                self.listener.stats["dropped_refused_alpn"] += 1
        self.timer.cancel()
        self.listener.forget(self)
        if self.http is not None:
            self.http.connection_lost(None)

    # ---- sending ------------------------------------------------------------------------------------
    def touch(self) -> None:
        """Something to send: sent at the end of this read batch, or by one call_soon of the listener."""
        if not self.dirty:
            self.dirty = True
            self.listener.touch(self)

    def transmit(self, handle_events: bool = True) -> int:
        """Send what aioquic has (one datagrams_to_send), follow its timer; returns the datagrams sent.
        Without `handle_events` (a send in the middle of another session's events) its events wait."""
        self.dirty = False
        if self.gone:
            return 0
        quic = self.quic
        if self.closing and self.buffered() == 0:
            self.closing = False
            quic.close()
        out = quic.datagrams_to_send(_clock())
        if out:
            errors = self.writer.send(out)
            if errors:
                self.listener.stats["send_errors"] += errors
        http = self.http
        if http is not None and not http.closed:
            size = self.buffered()
            if not self.write_paused and size > self.high:
                self.write_paused = True
                http.pause_writing()
            elif self.write_paused and size <= self.high // 4:
                self.write_paused = False
                http.resume_writing()
        self.timer.arm(quic.get_timer())
        if handle_events:
            self.events()   # closing produces ConnectionTerminated once drained
        else:
            self.touch()    # they are handled at the end of the batch
        return len(out)

    def _on_timer(self, now: float) -> None:
        if self.gone:
            return
        self.quic.handle_timer(now)
        self.events()
        self.transmit()

    def buffered(self) -> int:
        return stream_unacked(self.quic, self.stream_id)

    # ---- the transport HttpConn sees -----------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.gone or self.closing:
            return
        self.quic.send_stream_data(self.stream_id, bytes(data))
        self.touch()

    def writelines(self, chunks) -> None:
        self.write(b"".join(chunks))

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False
        if self.held:
            self.loop.call_soon(self._release)

    def _release(self) -> None:
        http = self.http
        while self.held and not self.paused and http is not None and not http.closed:
            data = self.held.pop(0)
            self.held_bytes -= len(data)
            http.data_received(data)
        if http is not None and http.closed:
            self.held.clear()
            self.held_bytes = 0

    def get_write_buffer_size(self) -> int:
        return self.buffered()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high:
            self.high = high

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self.addr
        if name == "sockname":
            return self.sock.getsockname()
        return default

    def is_closing(self) -> bool:
        return self.gone or self.closing

    def close(self) -> None:
        """Graceful: FIN after what is written; the connection closes (error 0) once it is acknowledged."""
        if self.gone or self.closing:
            return
        self.closing = True
        try:
            self.quic.send_stream_data(self.stream_id, b"", end_stream=True)
        except Exception:   # the stream was already finished or reset
            pass
        self.touch()

    def abort(self) -> None:
        if self.gone:
            return
        self.closing = False
        self.quic.close(error_code=0)
        self.transmit()


class QuicListener:
    """The UDP sockets of DERP over QUIC and their connections (see the module docstring)."""

    def __init__(self, server: Any, cert_source: Callable[[], tuple[bytes, bytes] | None]) -> None:
        self.server = server
        self.cert_source = cert_source
        self.loop = asyncio.get_running_loop()
        self.socks: list[socket.socket] = []
        self.writers: dict[socket.socket, DatagramWriter] = {}
        self.cids: dict[bytes, QuicSession] = {}
        self.sessions: set[QuicSession] = set()
        self.touched: set[QuicSession] = set()
        self.flush_scheduled = False
        self.half_open = 0
        self.accepting = True
        self._config: QuicConfiguration | None = None
        self._config_pem: Any = None
        self.stats = {"datagrams_relayed": 0, "datagrams_received": 0, "stream_packets": 0, "send_errors": 0,
                      "connections": 0, "streams_refused": 0,
                      "handshake_timeouts": 0, **{f"dropped_{r}": 0 for r in DROP_REASONS}}

    # ---- sockets ------------------------------------------------------------------------------------
    def bind(self, host: str | None, port: int) -> int:
        """Bind like the TCP listener (all addresses: one dual-stack socket); OSError as the OS says."""
        if host is None and socket.has_dualstack_ipv6():
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            try:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                sock.bind(("::", port))
            except BaseException:
                sock.close()
                raise
        else:
            infos = socket.getaddrinfo(host or "0.0.0.0", port, type=socket.SOCK_DGRAM)
            sock = socket.socket(infos[0][0], socket.SOCK_DGRAM)
            try:
                sock.bind(infos[0][4][:2])
            except BaseException:
                sock.close()
                raise
        sock.setblocking(False)
        socket_buffers(sock, 4 << 20)
        self.socks.append(sock)
        self.writers[sock] = DatagramWriter(sock)
        self.loop.add_reader(sock.fileno(), self._readable, sock)
        return sock.getsockname()[1]

    def close(self) -> None:
        """Stop taking new connections (DerpServer.shutdown): existing ones still get Restarting."""
        self.accepting = False

    def close_all(self) -> None:
        """Close every connection at once and the sockets (after the server's shutdown)."""
        self.accepting = False
        for session in list(self.sessions):
            session.abort()   # CONNECTION_CLOSE now; no draining period: the sockets go too
            session._terminated(E.ConnectionTerminated(error_code=0, frame_type=None, reason_phrase="closed"))
        for sock in self.socks:
            self.loop.remove_reader(sock.fileno())
            sock.close()
        self.socks = []

    # ---- datagrams in -------------------------------------------------------------------------------
    def _readable(self, sock: socket.socket) -> None:
        cids = self.cids
        now = _clock()
        touched = self.touched
        stats = self.stats
        for _ in range(QUIC_RECV_BATCH):
            try:
                data, addr = sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:   # an ICMP error for an earlier send: not for anyone in particular
                continue
            if not data:
                stats["dropped_garbage"] += 1
                continue
            if data[0] & 0x80 == 0:   # short header: the destination CID right after the first byte
                session = cids.get(data[1:1 + QUIC_CID_LEN])
                if session is None:
                    stats["dropped_unknown_connection"] += 1
                    continue
            else:
                session = self._long_header(sock, data, addr, now)
                if session is None:
                    continue
                if not session.established and not session.answered:
                    self._first_packet(session, data, addr, now)
                    continue
            try:
                # the time of this datagram, not of the batch: a batch takes milliseconds on a loaded
                # machine, and an ACK timed at the batch's start makes RTT samples too small (min_rtt
                # too small shrinks the congestion window's cap below the path's BDP, derp/quiccc.py)
                session.quic.receive_datagram(data, addr, _clock())
            except Exception:   # aioquic drops what it cannot parse; anything it raises is garbage too
                stats["dropped_garbage"] += 1
                continue
            touched.add(session)
        for session in list(touched):
            session.dirty = True   # it received: its acknowledgements at least
            session.events()
        self.server.flush()
        self.flush_touched()

    def _first_packet(self, session: QuicSession, data: bytes, addr: tuple, now: float) -> None:
        """A new connection's first Initial: one that gets no answer (not even an ACK) could not be
        decrypted, so the connection is forgotten at once: spoofed garbage cannot fill the half-open slots."""
        try:
            session.quic.receive_datagram(data, addr, now)
        except Exception:
            pass
        if session.transmit():
            session.answered = True
            return
        self.stats["dropped_garbage"] += 1
        self._drop_half_open(session)

    def _handshake_timeout(self, session: QuicSession) -> None:
        """A connection still in its handshake after HANDSHAKE_TIMEOUT is closed and forgotten."""
        if session.established or session.gone:
            return
        self.stats["handshake_timeouts"] += 1
        session.quic.close(error_code=0)
        session.transmit()
        if not session.gone:
            self._drop_half_open(session)

    def _drop_half_open(self, session: QuicSession) -> None:
        self.half_open -= 1
        session.gone = True
        session.timer.cancel()
        self.forget(session)

    def touch(self, session: QuicSession) -> None:
        self.touched.add(session)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush_touched)

    def flush_touched(self) -> None:
        """Every session with something to send sends it: one datagrams_to_send each per batch."""
        self.flush_scheduled = False
        while self.touched:
            touched, self.touched = self.touched, set()
            for session in touched:
                if session.dirty:
                    session.transmit()

    def _long_header(self, sock: socket.socket, data: bytes, addr: tuple, now: float) -> QuicSession | None:
        stats = self.stats
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=QUIC_CID_LEN)
        except ValueError:
            stats["dropped_garbage"] += 1
            return None
        session = self.cids.get(header.destination_cid)
        if session is not None:
            return session
        cfg = self._configuration()
        if header.packet_type == QuicPacketType.VERSION_NEGOTIATION:
            stats["dropped_garbage"] += 1
            return None
        if header.version is not None and cfg is not None and header.version not in cfg.supported_versions:
            try:
                sock.sendto(encode_quic_version_negotiation(source_cid=header.destination_cid,
                                                            destination_cid=header.source_cid,
                                                            supported_versions=cfg.supported_versions), addr)
            except OSError:
                stats["send_errors"] += 1
            return None
        if header.packet_type != QuicPacketType.INITIAL or len(data) < QUIC_MIN_INITIAL:
            stats["dropped_unknown_connection"] += 1
            return None
        if not self.accepting or cfg is None or self.half_open >= QUIC_MAX_HALF_OPEN:
            stats["dropped_half_open_limit"] += 1
            return None
        quic = attach(connection_class(configuration=cfg, original_destination_connection_id=header.destination_cid))
        session = QuicSession(self, sock, addr, quic)
        self.half_open += 1
        self.loop.call_later(HANDSHAKE_TIMEOUT, self._handshake_timeout, session)
        stats["connections"] += 1
        self.sessions.add(session)
        self.add_cid(header.destination_cid, session)
        self.add_cid(quic.host_cid, session)
        return session

    def _configuration(self) -> QuicConfiguration | None:
        """The server configuration of the relay's current certificate (rebuilt when it changes)."""
        pem = self.cert_source()
        if pem is None:
            return None
        if pem is not self._config_pem:
            try:
                self._config = server_configuration(*pem)
            except (ValueError, TypeError) as exc:
                log.error("QUIC: cannot use the certificate: %s", exc)
                return self._config
            self._config_pem = pem
        return self._config

    def add_cid(self, cid: bytes, session: QuicSession) -> None:
        self.cids[cid] = session
        session.cids.add(cid)

    def drop_cid(self, cid: bytes, session: QuicSession) -> None:
        if self.cids.get(cid) is session:
            del self.cids[cid]
        session.cids.discard(cid)

    def forget(self, session: QuicSession) -> None:
        for cid in session.cids:
            if self.cids.get(cid) is session:
                del self.cids[cid]
        session.cids.clear()
        self.sessions.discard(session)
        self.touched.discard(session)

    # ---- a SendPacket datagram ------------------------------------------------------------------------
    def datagram(self, session: QuicSession, data: bytes) -> None:
        stats = self.stats
        try:
            payload = W.parse_datagram(data, W.SEND)
        except ParseError:
            stats["dropped_bad_datagram"] += 1
            return
        http = session.http
        conn = http.conn if http is not None else None
        if conn is None or http.closed:
            stats["dropped_not_registered"] += 1
            return
        server = self.server
        now = server.clock()
        bucket = http.bucket
        if bucket is not None:
            if bucket.refill(now) < len(payload):
                stats["dropped_rate_limited"] += 1
                return
            bucket.spend(len(payload))
        stats["datagrams_received"] += 1
        http.rx += len(data)
        out = server.relay.send_packet(conn, bytes(payload), now)
        if out is None:
            return
        if type(out) is Deliver:
            out.conn.sink.deliver(out.data, out.disco)
        else:
            server.apply((out,))

    # ---- metrics ------------------------------------------------------------------------------------
    def clients(self) -> int:
        return sum(1 for s in self.sessions if s.http is not None and s.http.conn is not None
                   and not s.http.closed)


async def start_quic(server: Any, host: str | None, port: int,
                     cert_source: Callable[[], tuple[bytes, bytes] | None]) -> QuicListener:
    """The QUIC listener of `server` at UDP `port` (OSError when it cannot bind)."""
    listener = QuicListener(server, cert_source)
    listener.port = listener.bind(host, port)
    server.quic = listener
    server.servers.append(listener)
    return listener


__all__ = ["QuicHttpConn", "QuicListener", "QuicSession", "server_configuration", "start_quic"]
