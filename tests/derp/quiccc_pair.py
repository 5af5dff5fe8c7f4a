"""An in-memory aioquic client/server pair over an emulated link, in virtual time (no sockets, no clock).

`Link` is one direction: seeded random loss, a fixed delay and optionally a bottleneck (rate in bytes/s
and a drop-tail buffer in bytes). `QuicPair` makes a DERP-over-QUIC-configured client and server
(``derp.aio.quiccc.configure``; the algorithm may be overridden) joined by two links, and `run` steps
both connections until a virtual deadline, calling ``source(now)`` before every send so a test or the
benchmark can queue datagrams. Used by tests/derp/test_quiccc_queue.py and tools/bench/quic.py.
"""
from __future__ import annotations

import heapq
import random

from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from derp.aio.certs import make_cert
from derp.aio.quiccc import configure

ALPN = "wgc-derp/1"
CLIENT_ADDR = ("192.0.2.1", 40000)
SERVER_ADDR = ("192.0.2.2", 443)
_CERT = None


class Link:
    def __init__(self, *, delay: float, loss: float = 0.0, seed: int = 1, rate: float | None = None,
                 buffer: int = 1 << 30) -> None:
        self.delay, self.loss, self.rate, self.buffer = delay, loss, rate, buffer
        self.rng = random.Random(seed)
        self.queue: list[tuple[float, int, bytes]] = []
        self.free_at = 0.0        # when the bottleneck finishes serialising what it holds
        self.seq = 0
        self.sent = self.dropped = self.overflowed = 0

    def send(self, now: float, data: bytes) -> None:
        self.sent += 1
        if self.loss and self.rng.random() < self.loss:
            self.dropped += 1
            return
        at = now
        if self.rate:
            start = max(now, self.free_at)
            if (start - now) * self.rate + len(data) > self.buffer:
                self.overflowed += 1
                return
            self.free_at = at = start + len(data) / self.rate
        self.seq += 1
        heapq.heappush(self.queue, (at + self.delay, self.seq, data))

    def next_time(self) -> float | None:
        return self.queue[0][0] if self.queue else None

    def due(self, now: float) -> list[bytes]:
        out = []
        while self.queue and self.queue[0][0] <= now:
            out.append(heapq.heappop(self.queue)[2])
        return out


def certificate() -> tuple[bytes, bytes]:
    global _CERT
    if _CERT is None:
        pair = make_cert(["relay.test"])
        _CERT = (pair.cert_pem, pair.key_pem)
    return _CERT


def configurations(algorithm: str | None = None, quic_logger=None) -> tuple[QuicConfiguration, QuicConfiguration]:
    cert_pem, key_pem = certificate()
    server = configure(QuicConfiguration(is_client=False, alpn_protocols=[ALPN], quic_logger=quic_logger))
    server.certificate = x509.load_pem_x509_certificate(cert_pem)
    server.private_key = serialization.load_pem_private_key(key_pem, None)
    client = configure(QuicConfiguration(is_client=True, alpn_protocols=[ALPN], server_name="relay.test",
                                         quic_logger=quic_logger))
    client.cadata = cert_pem
    if algorithm is not None:
        server.congestion_control_algorithm = client.congestion_control_algorithm = algorithm
    return client, server


class QuicPair:
    def __init__(self, up: Link, down: Link, *, algorithm: str | None = None, quic_logger=None,
                 connection_class=None) -> None:
        client_conf, server_conf = configurations(algorithm, quic_logger)
        cls = connection_class or QuicConnection
        self.client = cls(configuration=client_conf)
        self.server = cls(configuration=server_conf, original_destination_connection_id=
                          self.client._original_destination_connection_id)
        self.up, self.down = up, down            # client -> server, server -> client
        self.now = 0.0
        self.received: list[bytes] = []          # datagrams the server got, in order
        self.client_received: list[bytes] = []
        self.client.connect(SERVER_ADDR, now=self.now)

    def handshake(self, limit: float = 5.0) -> None:
        self.run(self.now + limit, until=lambda: self.client._handshake_complete and self.server._handshake_complete)

    def _flush(self, conn: QuicConnection, link: Link) -> None:
        if not conn._network_paths:              # a server before its first datagram
            return
        for data, _ in conn.datagrams_to_send(self.now):
            link.send(self.now, data)

    def _drain(self, conn: QuicConnection, sink: list[bytes]) -> None:
        event = conn.next_event()
        while event is not None:
            if isinstance(event, events.DatagramFrameReceived):
                sink.append(event.data)
            event = conn.next_event()

    def run(self, deadline: float, source=None, until=None) -> None:
        client, server = self.client, self.server
        while self.now < deadline:
            if source is not None:
                source(self.now)
            self._flush(client, self.up)
            self._flush(server, self.down)
            if until is not None and until():
                return
            times = [t for t in (self.up.next_time(), self.down.next_time(), client.get_timer(),
                                 server.get_timer()) if t is not None]
            # A timer due now that the flush above left armed (aioquic paces an ACK whose ack_at is
            # exactly now instead of sending it) needs time to move on: step 1 µs.
            step = min(times) if times else deadline
            self.now = min(step if step > self.now else self.now + 1e-6, deadline)
            for data in self.up.due(self.now):
                server.receive_datagram(data, CLIENT_ADDR, self.now)
            for data in self.down.due(self.now):
                client.receive_datagram(data, SERVER_ADDR, self.now)
            for conn in (client, server):
                timer = conn.get_timer()
                if timer is not None and timer <= self.now:
                    conn.handle_timer(self.now)
            self._drain(server, self.received)
            self._drain(client, self.client_received)
