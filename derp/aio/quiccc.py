"""aioquic glue for DERP over QUIC: the tunnel congestion controller, the configuration both ends use,
and a bounded datagram queue.

- ``configure(configuration)`` sets what every DERP-over-QUIC connection shares (the controller below,
  packet size 1452, ``max_datagram_frame_size`` 65535, idle timeout); call it on the
  ``QuicConfiguration`` of the server and of the client before creating connections.
- ``TunnelCongestionControl`` is registered with aioquic as ``"wgc-tunnel"``; its rules are the pure core
  ``derp.quiccc.TunnelWindow`` (why: that module's docstring).
- ``TimerPacer`` replaces aioquic's pacer on each connection (``attach(connection)``): the same pacing
  rate (window / smoothed RTT), with a bucket of at least PACER_BURST seconds of it. aioquic's bucket holds
  at most 16 packets, sized for timers precise to microseconds; the adapters' loop timers move in whole
  milliseconds (derp.aio.quicio.timer_delay), so a pacer woken once a millisecond released at most 16
  packets a millisecond: 16k datagrams/s (190 Mbit/s of tunnel packets) whatever the window. Two
  milliseconds of the pacing rate per burst is what Linux TCP allows too (TSO autosizing sends about 1 ms
  of the pacing rate in one burst); bursts stay bounded by the window and the rate (RFC 9002 §7.7).
- ``DatagramSender`` (for the in-memory pair of the tests and ``tools.bench quic``; the relay and the client
  apply the same rules inline on their hot paths) fixes two faults of aioquic 1.x's ``send_datagram_frame``: its pending deque is
  unbounded (a relay that receives faster than the window lets it send would queue without end, adding
  delay to every tunnelled packet), and a datagram too large for one packet stays at the head of that deque
  for ever, blocking every later one (``_write_application`` breaks out of its datagram loop on
  ``QuicPacketBuilderStop`` and retries the same head next time). ``send(data)`` refuses what can never fit
  (returns False: send that frame on the stream instead) and drops the oldest pending datagram when the
  queue is full (RFC 9221 §5.4 lets a sender drop a datagram it cannot send), counting both.
"""
from __future__ import annotations

from collections.abc import Iterable

from aioquic.quic.congestion.base import QuicCongestionControl, register_congestion_control
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet_builder import QuicSentPacket
from aioquic.quic.recovery import QuicPacketPacer

from derp import quicwire as W
from derp.constants import QUIC_IDLE_TIMEOUT, QUIC_MAX_DATAGRAM_FRAME_SIZE, QUIC_PACKET_SIZE
from derp.quiccc import DEFAULT_CONFIG, TunnelCCConfig, TunnelWindow, queue_limit as _queue_limit

ALGORITHM = "wgc-tunnel"
MAX_DATAGRAM_SIZE = QUIC_PACKET_SIZE                  # docs/derp-quic.md: 1452 on a 1500-byte path (IPv6+UDP)
MAX_DATAGRAM_FRAME_SIZE = QUIC_MAX_DATAGRAM_FRAME_SIZE  # the transport parameter both sides send
IDLE_TIMEOUT = QUIC_IDLE_TIMEOUT                      # the DERP read timeout
PACER_BURST = 0.002                # seconds of the pacing rate one burst may carry: two loop timer steps
PENDING_LIMIT = 128                # datagrams waiting for the window: about 180 KB, a few ms at 1 Gbit/s


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


class TimerPacer(QuicPacketPacer):
    """aioquic's pacer with a bucket of at least PACER_BURST seconds (see the module docstring)."""

    def update_rate(self, congestion_window: int, smoothed_rtt: float) -> None:
        QuicPacketPacer.update_rate(self, congestion_window, smoothed_rtt)
        if self.bucket_max < PACER_BURST:
            self.bucket_max = PACER_BURST


def attach(connection: QuicConnection) -> QuicConnection:
    """Give a new connection (before it sends anything) the TimerPacer; returns it."""
    connection._loss._pacer = TimerPacer(max_datagram_size=connection._max_datagram_size)
    return connection


def configure(configuration: QuicConfiguration, *, max_datagram_size: int = MAX_DATAGRAM_SIZE,
              idle_timeout: float = IDLE_TIMEOUT) -> QuicConfiguration:
    """Set the DERP-over-QUIC transport choices on ``configuration`` (server or client) and return it."""
    configuration.congestion_control_algorithm = ALGORITHM
    configuration.max_datagram_size = max_datagram_size
    configuration.max_datagram_frame_size = MAX_DATAGRAM_FRAME_SIZE
    configuration.idle_timeout = idle_timeout
    return configuration


def queue_limit(connection: QuicConnection) -> int:
    """How many datagrams may wait on ``connection`` (derp.quiccc.queue_limit, from its pacing rate)."""
    return _queue_limit(connection._loss._pacer.packet_time)


def datagram_payload_limit(connection: QuicConnection) -> int:
    """The largest DATAGRAM payload a 1-RTT packet of ``connection`` carries (derp.quicwire's rule, from
    the connection's packet size, the peer's CID and its max_datagram_frame_size); 0 when the peer did not
    advertise DATAGRAM (then every packet goes on the stream)."""
    return W.datagram_limit(connection._max_datagram_size, len(connection._peer_cid.cid),
                            connection._remote_max_datagram_frame_size)


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
