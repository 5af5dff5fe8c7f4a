"""A leaner send path for aioquic's QuicConnection on DERP-over-QUIC connections (relay and client).

A DERP connection, once established, sends almost nothing but DATAGRAM frames and ACKs. aioquic's
``_write_application`` checks a dozen kinds of pending frames for every packet it builds (path
challenges, connection IDs, limits, every stream, pings, crypto) and ``datagrams_to_send`` builds a
packet builder even when nothing is due. ``DerpQuicConnection`` changes neither what is sent nor any state
aioquic keeps: packets are still built by aioquic's builder, numbered, recorded for loss detection and
congestion accounting by ``_flush_builder``, ACKs written by ``_write_ack_frame``, datagrams by
``_write_datagram_frame``, pacing applied as aioquic does. It only skips work when nothing but datagrams
and ACKs can be pending:

- ``_quiet(network_path)``: the handshake is confirmed on a validated path, and none of the frames
  ``_write_application`` writes besides ACK and DATAGRAM is pending (the conditions are aioquic's own,
  read without changing anything; anything unusual answers False and aioquic's path runs).
- ``_write_application``: when quiet, a loop of packets holding only the due ACK and datagrams.
- ``datagrams_to_send``: when quiet with no datagram queued and no ACK due, returns [] at once (aioquic
  would build nothing; its pacing deadline is cleared as it would be before a pacer check).
- DATAGRAM frames (without a qlog) are written straight into the packet being built after the checks
  ``QuicPacketBuilder.start_frame`` makes (room in the packet and in the congestion window; its minimum
  for a first frame is never more than a DATAGRAM frame's 2 bytes), with the same bytes ``_write_datagram_frame`` writes and
  the same marks on the packet (ack-eliciting, in flight): a relayed packet no longer pays two method
  calls and, for the datagram that does not fit, an exception.

The conditions follow aioquic 1.7.2's ``_write_application`` (the version this project pins); for any
other version the plain QuicConnection is used (``connection_class``). tests/derp/test_derp_quicfast.py
checks that a lossy run of stream data and datagrams sends exactly the same datagrams as aioquic's own
code against an unmodified peer, and that every "nothing to send" answer is one aioquic agrees with.
"""
from __future__ import annotations

import aioquic
from aioquic import tls
from aioquic.quic.connection import QuicConnection, QuicConnectionState
from aioquic.quic.packet import QuicFrameType, QuicPacketType
from aioquic.buffer import size_uint_var
from aioquic.quic.packet_builder import PACKET_NUMBER_MAX_SIZE, PACKET_NUMBER_SEND_SIZE, QuicPacketBuilderStop

_ONE_RTT = tls.Epoch.ONE_RTT
_CONNECTED = QuicConnectionState.CONNECTED
_SHORT = QuicPacketType.ONE_RTT
_DATAGRAM = QuicFrameType.DATAGRAM_WITH_LENGTH
SUPPORTED_VERSIONS = ("1.7.2",)
# start_frame's minimum for a packet's first frame (room for header protection's sample): a DATAGRAM frame
# is never shorter (type and length are 2 bytes), so _put_datagrams need not check it
_FIRST_FRAME_RULE_HOLDS = PACKET_NUMBER_MAX_SIZE - PACKET_NUMBER_SEND_SIZE <= 2


def _put_datagrams(builder, pending) -> None:
    """As many queued datagrams as fit into the builder's current packet, as DATAGRAM frames with a
    length (0x31), oldest first; the checks and marks of QuicPacketBuilder.start_frame."""
    buf = builder._buffer
    room = min(builder._buffer_capacity, builder._flight_capacity) - builder._packet_crypto.aead_tag_size
    wrote = False
    while pending:
        data = pending[0]
        n = len(data)
        size = 1 + size_uint_var(n) + n
        if room - buf.tell() < size:
            break
        buf.push_uint_var(_DATAGRAM)
        buf.push_uint_var(n)
        buf.push_bytes(data)
        wrote = True
        pending.popleft()
    if wrote:
        packet = builder._packet
        packet.is_ack_eliciting = True
        packet.in_flight = True


class LeanQuicConnection(QuicConnection):
    """``_write_application`` without the per-packet checks while only ACKs and datagrams can be due."""

    def _quiet(self, network_path) -> bool:
        if not (self._handshake_complete and network_path.is_validated) or self._handshake_done_pending \
                or network_path.remote_challenges or self._retire_connection_ids \
                or self._streams_blocked_pending or self._ping_pending or self._probe_pending:
            return False
        if not self._cryptos[_ONE_RTT].send.is_valid() or not self._crypto_streams[_ONE_RTT].sender.buffer_is_empty:
            return False
        for cid in self._host_cids:
            if not cid.was_sent:
                return False
        max_data = self._local_max_data
        if max_data.used * 2 > max_data.value or max_data.value != max_data.sent \
                or self._local_max_streams_bidi.value != self._local_max_streams_bidi.sent \
                or self._local_max_streams_uni.value != self._local_max_streams_uni.sent:
            return False
        for stream in self._streams.values():
            local = stream.max_stream_data_local
            if (local and stream.receiver.highest_offset * 2 > local) or stream.max_stream_data_local_sent != local \
                    or stream.is_finished or stream.receiver.stop_pending or stream.sender.reset_pending \
                    or not stream.sender.buffer_is_empty:
                return False
        return True

    def _write_application(self, builder, network_path, now: float) -> None:
        if not self._quiet(network_path):
            return QuicConnection._write_application(self, builder, network_path, now)
        crypto = self._cryptos[_ONE_RTT]
        space = self._spaces[_ONE_RTT]
        pacer = self._loss._pacer
        pending = self._datagrams_pending
        write = self._write_datagram_frame
        logged = self._quic_logger is not None   # a qlog wants each frame logged: aioquic's own writer
        while True:
            if space.ack_at is None or space.ack_at >= now:   # pacing, except with an ACK to send
                self._pacing_at = pacer.next_send_time(now=now)
                if self._pacing_at is not None:
                    break
            builder.start_packet(_SHORT, crypto)
            if space.ack_at is not None and space.ack_at <= now:
                self._write_ack_frame(builder=builder, space=space, now=now)
            if logged:
                while pending:
                    try:
                        write(builder=builder, data=pending[0], frame_type=_DATAGRAM)
                    except QuicPacketBuilderStop:
                        break
                    pending.popleft()
            elif pending:
                _put_datagrams(builder, pending)
            if builder.packet_is_empty:
                break
            pacer.update_after_send(now=now)


class DerpQuicConnection(LeanQuicConnection):
    """LeanQuicConnection whose ``datagrams_to_send`` returns at once when nothing can be due."""

    def _idle(self, now: float) -> bool:
        if self._datagrams_pending or self._state is not _CONNECTED or self._close_pending \
                or not self._handshake_confirmed or len(self._network_paths) != 1 \
                or (self._is_client and self._remote_preferred_address is not None):
            return False
        ack_at = self._spaces[_ONE_RTT].ack_at
        return (ack_at is None or ack_at > now) and self._quiet(self._network_paths[0])

    def datagrams_to_send(self, now: float):
        if self._idle(now):
            self._pacing_at = None
            return []
        return QuicConnection.datagrams_to_send(self, now)


connection_class = DerpQuicConnection if aioquic.__version__ in SUPPORTED_VERSIONS and _FIRST_FRAME_RULE_HOLDS \
    else QuicConnection

__all__ = ["DerpQuicConnection", "LeanQuicConnection", "connection_class"]
