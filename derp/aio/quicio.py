"""Small I/O pieces both ends of DERP over QUIC share (derp.aio.quic_client, derp.aio.quic_server): the
clock aioquic is given, UDP socket buffers, how much of a stream aioquic still holds unacknowledged, and
the handshake buffers a connection no longer needs."""
from __future__ import annotations

import socket
import time
from typing import Any

clock = time.monotonic   # aioquic's `now`: uvloop's loop.time() moves in millisecond steps


def socket_buffers(sock: socket.socket, size: int) -> None:
    """Large UDP buffers, so a burst from one peer does not drop another's ACKs in the kernel: beyond
    net.core.rmem_max when we may (SO_*BUFFORCE needs CAP_NET_ADMIN), else as far as it allows."""
    for force, plain in ((getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF),
                         (getattr(socket, "SO_SNDBUFFORCE", 32), socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            try:
                sock.setsockopt(socket.SOL_SOCKET, plain, size)
            except OSError:
                pass


def stream_unacked(quic: Any, stream_id: int) -> int:
    """Bytes written on `stream_id` of an aioquic QuicConnection and not yet acknowledged by the peer."""
    stream = quic._streams.get(stream_id)
    if stream is None:
        return 0
    sender = stream.sender
    return sender._buffer_stop - sender._buffer_start


def shed_handshake_buffers(quic: Any) -> None:
    """Once the handshake is complete, aioquic writes no TLS message of the Initial and Handshake epochs
    again, nor of the 1-RTT one here (our server sends no session tickets, our client has no certificate
    to send), yet keeps a 16 KiB buffer for each: replaced by empty ones (48 KiB less a connection).
    (A write into one would raise inside aioquic; the adapters count that datagram as garbage.)"""
    from aioquic.buffer import Buffer
    from aioquic.tls import Epoch
    buffers = getattr(quic, "_crypto_buffers", None)
    if buffers is None:
        return
    for epoch in (Epoch.INITIAL, Epoch.HANDSHAKE, Epoch.ONE_RTT):
        if epoch in buffers and buffers[epoch].tell() == 0:
            buffers[epoch] = Buffer(capacity=0)
