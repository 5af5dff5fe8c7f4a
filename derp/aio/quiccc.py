"""aioquic glue for DERP over QUIC: the tunnel congestion controller, the configuration both ends use,
and a bounded datagram queue.

- ``configure(configuration)`` sets what every DERP-over-QUIC connection shares (the controller below,
  packet size 1452, ``max_datagram_frame_size`` 65535, idle timeout); call it on the
  ``QuicConfiguration`` of the server and of the client before creating connections.
- ``TunnelCongestionControl`` is registered with aioquic as ``"wgc-tunnel"``; its rules are the pure core
  ``derp.quiccc.TunnelWindow`` (why: that module's docstring).
- ``DatagramSender`` fixes two faults of aioquic 1.x's ``send_datagram_frame``: its pending deque is
  unbounded (a relay that receives faster than the window lets it send would queue without end, adding
  delay to every tunnelled packet), and a datagram too large for one packet stays at the head of that deque
  for ever, blocking every later one (``_write_application`` breaks out of its datagram loop on
  ``QuicPacketBuilderStop`` and retries the same head next time). ``send(data)`` refuses what can never fit
  (returns False: send that frame on the stream instead) and drops the oldest pending datagram when the
  queue is full (RFC 9221 §5.4 lets a sender drop a datagram it cannot send), counting both.
"""
from __future__ import annotations

from collections.abc import Iterable

from aioquic.buffer import size_uint_var
from aioquic.quic.congestion.base import QuicCongestionControl, register_congestion_control
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet_builder import QuicSentPacket

from derp.quiccc import DEFAULT_CONFIG, TunnelCCConfig, TunnelWindow

ALGORITHM = "wgc-tunnel"
MAX_DATAGRAM_SIZE = 1452           # docs/derp-quic.md: the QUIC packet size on a 1500-byte path (IPv6+UDP)
MAX_DATAGRAM_FRAME_SIZE = 65535    # docs/derp-quic.md: the transport parameter both sides send
IDLE_TIMEOUT = 75.0                # above the server's longest KeepAlive gap (60 s + 5 s jitter)
PENDING_LIMIT = 128                # datagrams waiting for the window: about 180 KB, a few ms at 1 Gbit/s
AEAD_TAG_SIZE = 16                 # every QUIC v1 AEAD (RFC 9001 §5.3)
SHORT_HEADER_FIXED = 3             # first byte + the 2-byte packet number aioquic always sends


class TunnelCongestionControl(QuicCongestionControl):
    """aioquic's controller interface over ``TunnelWindow``."""

    ssthresh = None

    def __init__(self, *, max_datagram_size: int, config: TunnelCCConfig = DEFAULT_CONFIG) -> None:
        self.core = TunnelWindow(max_datagram_size, config)

    @property
    def congestion_window(self) -> int:
        return self.core.window

    @property
    def bytes_in_flight(self) -> int:
        return self.core.in_flight

    def on_packet_acked(self, *, now: float, packet: QuicSentPacket) -> None:
        self.core.on_acked(now, packet.sent_time, packet.sent_bytes)

    def on_packet_sent(self, *, packet: QuicSentPacket) -> None:
        self.core.in_flight += packet.sent_bytes

    def on_packets_expired(self, *, packets: Iterable[QuicSentPacket]) -> None:
        for packet in packets:
            self.core.on_expired(packet.sent_bytes)

    def on_packets_lost(self, *, now: float, packets: Iterable[QuicSentPacket]) -> None:
        for packet in packets:
            self.core.on_lost(now, packet.sent_bytes)

    def on_persistent_congestion(self) -> None:
        self.core.on_persistent_congestion()

    def on_rtt_measurement(self, *, now: float, rtt: float) -> None:
        self.core.on_rtt(now, rtt)


register_congestion_control(ALGORITHM, TunnelCongestionControl)


def configure(configuration: QuicConfiguration, *, max_datagram_size: int = MAX_DATAGRAM_SIZE,
              idle_timeout: float = IDLE_TIMEOUT) -> QuicConfiguration:
    """Set the DERP-over-QUIC transport choices on ``configuration`` (server or client) and return it."""
    configuration.congestion_control_algorithm = ALGORITHM
    configuration.max_datagram_size = max_datagram_size
    configuration.max_datagram_frame_size = MAX_DATAGRAM_FRAME_SIZE
    configuration.idle_timeout = idle_timeout
    return configuration


def datagram_payload_limit(connection: QuicConnection) -> int:
    """The largest DATAGRAM payload a 1-RTT packet of ``connection`` can carry now; 0 when the peer did
    not advertise ``max_datagram_frame_size`` (then every packet goes on the stream)."""
    remote = connection._remote_max_datagram_frame_size
    if not remote:
        return 0
    room = (connection._max_datagram_size - SHORT_HEADER_FIXED - len(connection._peer_cid.cid)
            - AEAD_TAG_SIZE - 1)                       # the frame type byte
    payload = room - size_uint_var(room)
    return max(0, min(payload, remote - 1 - size_uint_var(remote)))


class DatagramSender:
    """Queue datagrams on one connection with a bound; counters for the metrics."""

    __slots__ = ("connection", "limit", "pending", "max_payload", "queued", "dropped_full", "too_big")

    def __init__(self, connection: QuicConnection, limit: int = PENDING_LIMIT) -> None:
        self.connection = connection
        self.limit = limit
        self.pending = connection._datagrams_pending     # aioquic 1.x's deque, drained by datagrams_to_send
        self.max_payload = -1                            # known once the handshake gave the peer's CID
        self.queued = self.dropped_full = self.too_big = 0

    def refresh(self) -> int:
        """Recompute the payload bound; it stays unknown (-1) until the peer's transport parameters came."""
        limit = datagram_payload_limit(self.connection)
        self.max_payload = limit if limit > 0 else -1
        return limit

    def send(self, data: bytes) -> bool:
        """Queue ``data`` as one DATAGRAM frame; False when it can never fit one (send it on the stream)."""
        if len(data) > (self.max_payload if self.max_payload >= 0 else self.refresh()):
            self.too_big += 1
            return False
        pending = self.pending
        if len(pending) >= self.limit:
            pending.popleft()
            self.dropped_full += 1
        pending.append(data)
        self.queued += 1
        return True


def queue_datagram(connection: QuicConnection, data: bytes, limit: int = PENDING_LIMIT) -> bool:
    """One-shot form of ``DatagramSender.send`` (no counters kept): False means use the stream."""
    return DatagramSender(connection, limit).send(data)
