"""The UDP side of the data path: a v4 and a v6 socket on one port, batched reads, GSO sends.

Reads use `recvmsg_into` on non-blocking sockets driven by `loop.add_reader` (5x faster than asyncio's
DatagramProtocol on this machine, MEASUREMENTS.md), with UDP GRO so the kernel hands over many
datagrams of one flow per call. Sends group consecutive equal-size messages to one endpoint into one
`sendmsg` with UDP_SEGMENT (GSO): one syscall for up to 64 transport messages.
"""
from __future__ import annotations

import errno
import logging
import socket
import struct
from itertools import repeat

from derp.aio.quicio import socket_buffers

log = logging.getLogger("wgc.udp")

SOL_UDP = getattr(socket, "SOL_UDP", 17)
UDP_SEGMENT = 103
UDP_GRO = 104
MAX_GSO_SEGMENTS = 64
MAX_GSO_BYTES = 65000
SOCKET_BUFFER = 4 << 20
RECV_BUFFER = 32 * 65536  # room for 32 GRO reads of up to 64 KiB each
_u16 = struct.Struct("=H")
_i32 = struct.Struct("=i")


class UdpPort:
    """Two sockets (IPv4 and IPv6) bound to one port, with batched receive and GSO send."""

    def __init__(self, port: int = 0, fwmark: int = 0) -> None:
        self.v4: socket.socket | None = None
        self.v6: socket.socket | None = None
        self.gso = True
        self.gro = True
        self.send_errors = 0
        self.fwmark = fwmark          # SO_MARK of both sockets, kept across rebinds (full-tunnel policy rules)
        self.bind(port)
        self._buf = bytearray(RECV_BUFFER)
        self._view = memoryview(self._buf)
        self._anc = socket.CMSG_SPACE(4)

    @property
    def port(self) -> int:
        return (self.v4 or self.v6).getsockname()[1]

    def sockets(self) -> list[socket.socket]:
        return [s for s in (self.v4, self.v6) if s is not None]

    def bind(self, port: int) -> None:
        """(Re)bind both sockets to port (0 = any free port), marked with `fwmark`; OSError(EADDRINUSE) if taken."""
        fwmark = self.fwmark
        old = self.sockets()
        v4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        v6 = None
        try:
            v4.bind(("0.0.0.0", port))
            bound = v4.getsockname()[1]
            if socket.has_ipv6:
                v6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
                v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    v6.bind(("::", bound))
                except OSError as exc:
                    v6.close()
                    v6 = None
                    if exc.errno == errno.EADDRINUSE and port == 0:
                        raise
                    if exc.errno not in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                        raise
        except OSError:
            v4.close()
            raise
        for s in (v4, v6):
            if s is None:
                continue
            s.setblocking(False)
            socket_buffers(s, SOCKET_BUFFER)   # beyond rmem_max when CAP_NET_ADMIN allows
            if fwmark:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, fwmark)
            try:
                s.setsockopt(SOL_UDP, UDP_GRO, 1)
            except OSError:
                self.gro = False
        for s in old:
            s.close()
        self.v4, self.v6 = v4, v6

    def set_fwmark(self, mark: int) -> None:
        for s in self.sockets():
            s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        self.fwmark = mark

    def close(self) -> None:
        for s in self.sockets():
            s.close()
        self.v4 = self.v6 = None

    # -- receive -------------------------------------------------------------------------------------------
    def read_batch(self, sock: socket.socket, max_calls: int = 32) -> list[tuple[memoryview, tuple]]:
        """Drain up to max_calls reads; GRO super-datagrams are split at their segment size.

        The views point into one buffer per call batch and are valid until the next read_batch.
        """
        batch: list[tuple[memoryview, tuple]] = []
        buf = self._buf
        view = self._view
        offset = 0
        anc = self._anc
        for _ in range(max_calls):
            if len(buf) - offset < 65536:
                break
            try:
                n, ancdata, _flags, addr = sock.recvmsg_into([view[offset:]], anc)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. ICMP port unreachable reported on the socket
                log.debug("udp receive error: %s", exc)
                continue
            seg = n
            for level, kind, data in ancdata:
                if level == SOL_UDP and kind == UDP_GRO:
                    seg = _i32.unpack_from(data)[0] if len(data) >= 4 else _u16.unpack_from(data)[0]
            end = offset + n
            if seg <= 0 or seg >= n:
                batch.append((view[offset:end], addr))
            else:
                # The full-size segments as (view, addr) pairs made in C (map/zip), then a shorter last one.
                full = end - n % seg
                batch.extend(zip(map(view.__getitem__, map(slice, range(offset, full, seg),
                                                            range(offset + seg, full + seg, seg))),
                                 repeat(addr)))
                if full < end:
                    batch.append((view[full:end], addr))
            offset = end
        return batch

    # -- send ----------------------------------------------------------------------------------------------
    def _sock_for(self, endpoint: tuple) -> socket.socket | None:
        return self.v6 if len(endpoint) == 4 or ":" in endpoint[0] else self.v4

    def send(self, data, endpoint: tuple) -> None:
        sock = self._sock_for(endpoint)
        if sock is None:
            self.send_errors += 1
            return
        try:
            sock.sendto(data, endpoint)
        except OSError as exc:
            self.send_errors += 1
            log.debug("udp send to %s failed: %s", endpoint, exc)

    def send_sealed(self, buf: bytearray, sealed: list[tuple[tuple, int, int]]) -> None:
        """Send transport messages from buf, as GSO runs where consecutive ones share endpoint and size."""
        if not sealed:
            return
        with memoryview(buf) as mv:
            i, n = 0, len(sealed)
            while i < n:
                endpoint, start, end = sealed[i]
                size = end - start
                j = i + 1
                if self.gso:
                    limit = min(n, i + MAX_GSO_SEGMENTS)
                    stop = end
                    while j < limit:
                        ep2, s2, e2 = sealed[j]
                        if ep2 != endpoint or s2 != stop or e2 - s2 > size or stop + size - start > MAX_GSO_BYTES:
                            break
                        stop = e2
                        j += 1
                        if e2 - s2 < size:
                            break  # a shorter message may only end a run
                    if j - i > 1:
                        self._send_gso(mv[start:stop], size, endpoint)
                        i = j
                        continue
                self.send(mv[start:end], endpoint)
                i += 1

    def _send_gso(self, data: memoryview, segment: int, endpoint: tuple) -> None:
        sock = self._sock_for(endpoint)
        if sock is None:
            self.send_errors += 1
            return
        try:
            sock.sendmsg([data], [(SOL_UDP, UDP_SEGMENT, _u16.pack(segment))], 0, endpoint)
        except (BlockingIOError, InterruptedError):
            self.send_errors += 1
        except OSError as exc:
            if exc.errno in (errno.EIO, errno.EINVAL, errno.EOPNOTSUPP):
                log.info("UDP GSO unavailable (%s); sending one datagram at a time", exc)
                self.gso = False
                for s in range(0, len(data), segment):
                    self.send(data[s:s + segment], endpoint)
            else:
                self.send_errors += 1
                log.debug("udp send to %s failed: %s", endpoint, exc)
