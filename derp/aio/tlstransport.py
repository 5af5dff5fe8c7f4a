"""A lean TLS listener and transport for the derper: non-blocking `ssl.SSLSocket`s driven by
`loop.add_reader`/`add_writer`, instead of asyncio's memory-BIO SSL protocol.

Why: OpenSSL reads and writes the socket itself (no memory BIOs, no 256 KiB per-connection read buffer),
which roughly halves the memory of an idle TLS client and saves copies on the relay's hot path. It speaks
to the same `asyncio.Protocol` interface (connection_made, data_received, pause/resume_writing,
connection_lost), so `HttpConn` does not know which TLS engine carries it.
Reads drain every record available (into one shared buffer) before one `data_received`; writes go out
at once when possible, else queue (the first queued chunk is retried unchanged, as SSL_write requires).
"""
from __future__ import annotations

import asyncio
import collections
import errno
import logging
import socket
import ssl
from typing import Any, Callable

log = logging.getLogger(__name__)
READ_CHUNK = 256 << 10
_RBUF = bytearray(READ_CHUNK)          # shared: the event loop is single-threaded
_RVIEW = memoryview(_RBUF)


class TlsListener:
    """Accepts TCP connections on a listening socket and runs the TLS handshake before the protocol."""

    def __init__(self, loop: asyncio.AbstractEventLoop, lsock: socket.socket, ctx: ssl.SSLContext,
                 protocol_factory: Callable[[], asyncio.Protocol], handshake_timeout: float = 10.0,
                 accept_filter: Callable[[], bool] | None = None) -> None:
        self.loop, self.lsock, self.ctx = loop, lsock, ctx
        self.accept_filter = accept_filter   # False: close the new connection at once, before any TLS
        self.factory = protocol_factory
        self.handshake_timeout = handshake_timeout
        self.handshake_failures = 0
        lsock.setblocking(False)
        loop.add_reader(lsock.fileno(), self._accept)
        self.closed = False

    @property
    def sockets(self) -> list[socket.socket]:
        return [self.lsock]

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.lsock.fileno())
            self.lsock.close()

    def _accept(self) -> None:
        for _ in range(64):
            try:
                sock, addr = self.lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: keep serving the others
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("accept failed: %s", exc)
                    return
                raise
            if self.accept_filter is not None and not self.accept_filter():
                sock.close()
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            router = getattr(self.ctx, "hello_router", None)   # derp.aio.certstore: ACME TLS-ALPN-01
            if router is not None and router.wants_hello():
                from derp.aio.hellopeek import HelloPeek
                HelloPeek(self, sock, addr, router)
                continue
            self.start_tls(sock, addr, self.ctx)

    def start_tls(self, sock: socket.socket, addr: Any, ctx: ssl.SSLContext) -> None:
        try:
            tls = ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        except (ssl.SSLError, OSError):
            sock.close()
            return
        TlsTransport(self, tls, addr)


class TlsTransport(asyncio.Transport):
    """asyncio.Transport over one non-blocking SSLSocket (handshake first, then the protocol)."""

    def __init__(self, listener: TlsListener, sock: ssl.SSLSocket, addr: Any) -> None:
        super().__init__()
        self.listener = listener
        self.loop = listener.loop
        self.sock = sock
        self.fd = sock.fileno()
        self.addr = addr
        self.protocol: Any = None
        self.pending: collections.deque[bytes] = collections.deque()
        self.pending_size = 0
        self.high, self.low = 256 << 10, 64 << 10
        self.paused = False
        self.closing = False
        self.dead = False
        self.reading = False
        self.writing = False
        self.read_paused = False
        self.timer = self.loop.call_later(listener.handshake_timeout, self._handshake_timeout)
        self._handshake()

    # ---- handshake --------------------------------------------------------------------------------
    def _handshake(self) -> None:
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._want(read=True, write=False, cb=self._handshake)
            return
        except ssl.SSLWantWriteError:
            self._want(read=False, write=True, cb=self._handshake)
            return
        except (ssl.SSLError, OSError):
            self.listener.handshake_failures += 1
            self._kill()
            return
        self.timer.cancel()
        self._want(read=False, write=False, cb=None)
        self.protocol = self.listener.factory()
        self.protocol.connection_made(self)
        if not self.dead:
            self._want(read=True, write=bool(self.pending), cb=None)

    def _handshake_timeout(self) -> None:
        if self.protocol is None:
            self.listener.handshake_failures += 1
            self._kill()

    def _want(self, read: bool, write: bool, cb: Callable[[], None] | None) -> None:
        loop, fd = self.loop, self.fd
        r = cb if cb is not None else self._on_readable
        w = cb if cb is not None else self._on_writable
        if read:
            loop.add_reader(fd, r)
        elif self.reading:
            loop.remove_reader(fd)
        if write:
            loop.add_writer(fd, w)
        elif self.writing:
            loop.remove_writer(fd)
        self.reading, self.writing = read, write

    # ---- reading ------------------------------------------------------------------------------------
    def _on_readable(self) -> None:
        sock = self.sock
        got = 0
        eof = False
        try:
            while got < READ_CHUNK:
                n = sock.recv_into(_RVIEW[got:])
                if n == 0:
                    eof = True
                    break
                got += n
        except (ssl.SSLWantReadError, BlockingIOError):
            pass
        except ssl.SSLWantWriteError:
            self.loop.add_writer(self.fd, self._on_writable)
            self.writing = True
        except (ssl.SSLError, OSError) as exc:
            if got:
                self.protocol.data_received(bytes(_RBUF[:got]))
            self._lost(exc)
            return
        if got:
            self.protocol.data_received(bytes(_RBUF[:got]))
        if eof and not self.dead:
            self._lost(None)

    # ---- writing ------------------------------------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.dead or self.closing or not data:
            return
        if not self.pending:
            try:
                n = self.sock.send(data)
                if n == len(data):
                    return
                data = data[n:]  # partial writes only happen when the mode allows them
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                pass
            except (ssl.SSLError, OSError) as exc:
                self._lost(exc)
                return
            self.pending.append(bytes(data))
            self.pending_size += len(data)
            self.loop.add_writer(self.fd, self._on_writable)
            self.writing = True
        else:
            self.pending.append(bytes(data))
            self.pending_size += len(data)
        self._check_high()

    def writelines(self, chunks) -> None:
        self.write(b"".join(chunks))

    def _on_writable(self) -> None:
        pending = self.pending
        try:
            while pending:
                first = pending[0]
                n = self.sock.send(first)
                if n < len(first):
                    # SSL_write requires the retry to carry the same bytes: keep the rest as the head
                    pending[0] = first[n:]
                    self.pending_size -= n
                    continue
                pending.popleft()
                self.pending_size -= n
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
            return
        except (ssl.SSLError, OSError) as exc:
            self._lost(exc)
            return
        self.loop.remove_writer(self.fd)
        self.writing = False
        if self.paused and self.pending_size <= self.low:
            self.paused = False
            self.protocol.resume_writing()
        if self.closing:
            self._kill()
            self._notify(None)

    def _check_high(self) -> None:
        if not self.paused and self.pending_size > self.high:
            self.paused = True
            self.protocol.pause_writing()

    # ---- transport API ----------------------------------------------------------------------------
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self.addr
        if name == "ssl_object":
            return self.sock
        if name == "socket":
            return self.sock
        return default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.high = high if high is not None else self.high
        self.low = low if low is not None else self.high // 4

    def get_write_buffer_size(self) -> int:
        return self.pending_size

    def pause_reading(self) -> None:
        if self.reading and not self.read_paused:
            self.read_paused = True
            self.loop.remove_reader(self.fd)
            self.reading = False

    def resume_reading(self) -> None:
        if self.read_paused and not (self.dead or self.closing):
            self.read_paused = False
            self.loop.add_reader(self.fd, self._on_readable)
            self.reading = True
            self.loop.call_soon(self._drain_pending)  # OpenSSL may hold records the socket no longer signals

    def is_reading(self) -> bool:
        return self.reading

    def _drain_pending(self) -> None:
        if self.reading and not self.dead and self.sock.pending():
            self._on_readable()

    def is_closing(self) -> bool:
        return self.closing or self.dead

    def close(self) -> None:
        if self.dead or self.closing:
            return
        self.closing = True
        if self.reading:
            self.loop.remove_reader(self.fd)
            self.reading = False
        if not self.pending:
            self._kill()
            self._notify(None)

    def abort(self) -> None:
        if not self.dead:
            self._kill()
            self._notify(None)

    def _lost(self, exc: BaseException | None) -> None:
        self._kill()
        self._notify(exc if isinstance(exc, Exception) else None)

    def _notify(self, exc: Exception | None) -> None:
        proto, self.protocol = self.protocol, None
        if proto is not None:
            self.loop.call_soon(proto.connection_lost, exc)

    def _kill(self) -> None:
        if self.dead:
            return
        self.dead = True
        self.timer.cancel()
        if self.reading:
            self.loop.remove_reader(self.fd)
        if self.writing:
            self.loop.remove_writer(self.fd)
        self.reading = self.writing = False
        self.pending.clear()
        self.pending_size = 0
        try:
            self.sock.close()
        except OSError:
            pass
