"""asyncio STUN client: one UDP socket, the `Transactions` core, a single re-armed timer.

`StunClient.open(family)` binds an ephemeral socket (with SO_MARK `fwmark` if given); `await client.binding(dest)` returns a
`BindingSucceeded` (mapped address and RTT) or raises `StunTimeout`/`StunError`. `stun_binding(host, port)`
is the one-shot form. Received datagrams are read with `loop.add_reader` + `recvfrom_into`.
"""
from __future__ import annotations

import asyncio
import os
import socket

from natprobe import stun
from natprobe.aio.sockmark import mark
from natprobe.errors import Error, UsageError
from natprobe.transaction import (BindingFailed, BindingSucceeded, RetransmitConfig, SendDatagram,
                                  Transactions)


class StunTimeout(Error):
    """No response arrived before the retransmissions ran out."""


class StunError(Error):
    """The server answered with an error response."""


class StunClient:
    """A STUN client bound to one local UDP socket."""

    def __init__(self, sock: socket.socket, config: RetransmitConfig = RetransmitConfig()) -> None:
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self.core = Transactions(os.urandom, config)
        self._waiters: dict[bytes, asyncio.Future] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._buf = bytearray(2048)
        self.send_errors = 0
        self._loop.add_reader(sock.fileno(), self._on_readable)

    @classmethod
    async def open(cls, family: int = socket.AF_INET, *, local: stun.Addr | None = None,
                   config: RetransmitConfig = RetransmitConfig(), fwmark: int = 0) -> "StunClient":
        sock = mark(socket.socket(family, socket.SOCK_DGRAM), fwmark)
        sock.setblocking(False)
        try:
            sock.bind(local or ("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        except OSError as exc:
            sock.close()
            raise UsageError(f"cannot bind a STUN client socket: {exc.strerror or exc}") from exc
        return cls(sock, config)

    @property
    def local_address(self) -> stun.Addr:
        return self._sock.getsockname()[:2]

    async def binding(self, dest: stun.Addr) -> BindingSucceeded:
        txid, outputs = self.core.start(dest, self._loop.time())
        fut = self._loop.create_future()
        self._waiters[txid] = fut
        self._execute(outputs)
        try:
            return await fut
        finally:
            self._waiters.pop(txid, None)
            self.core.cancel(txid)

    def _execute(self, outputs) -> None:
        for out in outputs:
            if isinstance(out, SendDatagram):
                try:
                    self._sock.sendto(out.data, out.dest)
                except OSError:
                    self.send_errors += 1
            else:
                fut = self._waiters.get(out.txid)
                if fut is None or fut.done():
                    continue
                if isinstance(out, BindingSucceeded):
                    fut.set_result(out)
                elif isinstance(out, BindingFailed):
                    exc = StunTimeout if out.reason == "timeout" else StunError
                    fut.set_exception(exc(f"STUN to {out.dest[0]}:{out.dest[1]}: {out.reason}"))
        self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.core.next_deadline()
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._execute(self.core.on_timer(self._loop.time()))

    def _on_readable(self) -> None:
        for _ in range(64):
            try:
                n, source = self._sock.recvfrom_into(self._buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ICMP port unreachable and friends: the retransmission timer handles it
                continue
            self._execute(self.core.on_datagram(bytes(self._buf[:n]), source, self._loop.time()))

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._sock.fileno() >= 0:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(StunTimeout("client closed"))


async def stun_binding(host: str, port: int, *, local: stun.Addr | None = None,
                       config: RetransmitConfig = RetransmitConfig()) -> BindingSucceeded:
    """One Binding transaction to an IP literal `host` from a fresh ephemeral socket (bound to `local`)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    client = await StunClient.open(family, local=local, config=config)
    try:
        return await client.binding((host, port))
    finally:
        client.close()
