"""Small I/O pieces both ends of DERP over QUIC share (derp.aio.quic_client, derp.aio.quic_server): the
clock aioquic is given, UDP socket buffers, sending aioquic's datagrams (UDP GSO), how much of a stream
aioquic still holds unacknowledged, the handshake buffers a connection no longer needs, and the loop
timer that serves a connection's `get_timer()` (QuicTimer)."""
from __future__ import annotations

import errno
import math
import socket
import struct
import time
from typing import Any, Callable

clock = time.monotonic   # aioquic's `now`: uvloop's loop.time() moves in millisecond steps
TIMER_STEP = 0.001       # the loop's timer granularity (uvloop/libuv: whole milliseconds)


def timer_delay(deadline: float, now: float) -> float:
    """The delay to give ``loop.call_later`` for aioquic's timer ``deadline``: rounded up to whole
    milliseconds (at least one). uvloop rounds a delay to the nearest millisecond and libuv counts it from
    the millisecond time cached at the start of the loop turn, so a plain delay fired up to a millisecond
    before the deadline; aioquic then had nothing due, and re-arming for the rest (0 ms) spun the loop
    until the deadline came (at 2k relayed packets/s: more timer callbacks than packets, 80 % of them
    early). A timer that still fires early waits again (the adapters check), so deadlines are met up to
    about a millisecond late: an ACK within 2 ms of the packet (we advertise max_ack_delay 25 ms; the
    frame's ACK delay field says how late it is), a loss or PTO deadline a millisecond late."""
    return max(1, math.ceil((deadline - now) * 1000)) * TIMER_STEP


class QuicTimer:
    """The one loop timer of an aioquic connection. `arm(quic.get_timer())` after every transmit re-arms it
    only when the deadline moves earlier (aioquic's loss/ACK deadlines move later with nearly every packet:
    a timer armed for an earlier one fires early, and the transmit after it arms the real one); a wake
    before the deadline (see timer_delay) waits again instead of running aioquic; when it is due,
    `fire(now)` runs (handle_timer, events, transmit)."""

    __slots__ = ("loop", "fire", "clock", "handle", "deadline")

    def __init__(self, loop: Any, fire: Callable[[float], None], clock: Callable[[], float] = clock) -> None:
        self.loop, self.fire, self.clock = loop, fire, clock
        self.handle: Any = None
        self.deadline: float | None = None

    def arm(self, deadline: float | None) -> None:
        if deadline is not None and (self.deadline is None or deadline < self.deadline):
            if self.handle is not None:
                self.handle.cancel()
            self.deadline = deadline
            self.handle = self.loop.call_later(timer_delay(deadline, self.clock()), self._wake)

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        self.deadline = None

    def _wake(self) -> None:
        self.handle = None
        deadline, self.deadline = self.deadline, None
        now = self.clock()
        if deadline is not None and now < deadline:   # early (a loop turn that ran long, uvloop's rounding)
            self.deadline = deadline
            self.handle = self.loop.call_later(timer_delay(deadline, now), self._wake)
            return
        self.fire(now)


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


SOL_UDP = getattr(socket, "SOL_UDP", 17)
UDP_SEGMENT = 103              # linux/udp.h: the GSO segment size of one sendmsg
GSO_MAX_SEGMENTS = 64          # the kernel's UDP_MAX_SEGMENTS (64 before Linux 5.x raised it to 128)
GSO_MAX_BYTES = 65000          # one UDP payload (less the headers) at most
_GSO_UNAVAILABLE = (errno.EIO, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOPROTOOPT)
_u16 = struct.Struct("=H")


class DatagramWriter:
    """Sends what ``QuicConnection.datagrams_to_send`` returns on one UDP socket. A run of consecutive
    datagrams of one size to one address (the last may be shorter) goes out as one ``sendmsg`` with
    UDP_SEGMENT (GSO): the kernel cuts it into the same datagrams on the wire, one syscall for up to
    GSO_MAX_SEGMENTS. Where GSO is refused (EIO: no checksum offload on the route, EINVAL: a segment over
    the device MTU, an old kernel) the writer sends one datagram per call from then on. ``connected``: the
    socket is connected (the client's), so no address is passed. Errors are counted, never raised (QUIC's
    loss recovery resends what matters)."""

    __slots__ = ("sock", "connected", "gso", "errors", "gso_calls")

    def __init__(self, sock: socket.socket, connected: bool = False) -> None:
        self.sock = sock
        self.connected = connected
        self.gso = True
        self.errors = 0
        self.gso_calls = 0

    def send(self, out: list[tuple[bytes, Any]]) -> int:
        """Send every (data, addr) of ``out``, in order; returns how many failed."""
        errors = self.errors
        n = len(out)
        i = 0
        while i < n:
            data, addr = out[i]
            j = i + 1
            if self.gso and j < n:
                size = len(data)
                total = size
                limit = min(n, i + GSO_MAX_SEGMENTS)
                while j < limit:
                    d2, a2 = out[j]
                    s2 = len(d2)
                    if s2 > size or a2 != addr or total + s2 > GSO_MAX_BYTES:
                        break
                    total += s2
                    j += 1
                    if s2 < size:
                        break          # a shorter datagram may only end a run
                if j - i > 1:
                    self._send_run(out, i, j, size, addr)
                    i = j
                    continue
            self._send_one(data, addr)
            i = j
        return self.errors - errors

    def _send_one(self, data: bytes, addr: Any) -> None:
        try:
            if self.connected:
                self.sock.send(data)
            else:
                self.sock.sendto(data, addr)
        except OSError:    # a full buffer (BlockingIOError), ICMP errors: a lost datagram
            self.errors += 1

    def _send_run(self, out: list[tuple[bytes, Any]], i: int, j: int, size: int, addr: Any) -> None:
        run = b"".join([data for data, _ in out[i:j]])
        try:
            if self.connected:
                self.sock.sendmsg([run], [(SOL_UDP, UDP_SEGMENT, _u16.pack(size))])
            else:
                self.sock.sendmsg([run], [(SOL_UDP, UDP_SEGMENT, _u16.pack(size))], 0, addr)
            self.gso_calls += 1
        except OSError as exc:
            if exc.errno not in _GSO_UNAVAILABLE:
                self.errors += j - i
                return
            self.gso = False
            for data, _ in out[i:j]:
                self._send_one(data, addr)


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
