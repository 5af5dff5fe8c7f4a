"""A tiny misbehaving DERP relay on loopback for client robustness tests: it completes the real handshake
(Upgrade: DERP, ServerKey, ClientInfo, sealed ServerInfo) and then, by mode,
  close  - hangs up at once (or after `hold` seconds);
  stall  - keeps the connection open and sends nothing, not even KeepAlive;
  flood  - sends RecvPacket frames of garbage as fast as the socket takes them.
In-process (`async with BadRelay(mode) as relay`) or as its own process (`python -m tests.derp.badrelay
flood [--tls]`, prints "port N"), so a flood does not compete for the event loop of the client under test.
"""
from __future__ import annotations

import asyncio
import os
import ssl
import sys

from derp import frames as F
from derp.keys import private_key_from_random
from derp.server import ServerConfig, ServerHandshake

GARBAGE = F.RecvPacket(b"\x07" * 32, b"\xee" * 4).encode()   # 41 bytes: a packet that is no WireGuard


class BadRelay:
    def __init__(self, mode: str, ssl_ctx: ssl.SSLContext | None = None, hold: float = 0.0) -> None:
        assert mode in ("close", "stall", "flood")
        self.mode = mode
        self.hold = hold
        self.ssl_ctx = ssl_ctx
        self.private = private_key_from_random(os.urandom(32))
        self.accepted = 0
        self.handshakes = 0
        self.server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_ctx else 'http'}://127.0.0.1:{self.port}/derp"

    async def __aenter__(self) -> "BadRelay":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_ctx)
        return self

    async def __aexit__(self, *exc) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self._writers):
            w.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.add(writer)
        try:
            if await self._handshake(reader, writer):
                self.handshakes += 1
                await getattr(self, "_" + self.mode)(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n")
        hs = ServerHandshake(self.private, 0.0, ServerConfig())
        writer.write(hs.greeting())
        got = None
        while got is None:
            data = await reader.read(4096)
            if not data:
                return False
            got = hs.receive_data(data)
        key, _, _ = got
        writer.write(F.server_info_frame(self.private, key, os.urandom(24), F.ServerInfo()))
        await writer.drain()
        return True

    async def _close(self, reader, writer) -> None:
        await asyncio.sleep(self.hold)

    async def _stall(self, reader, writer) -> None:
        while await reader.read(65536):   # read (and ignore) pings; never answer
            pass

    async def _flood(self, reader, writer) -> None:
        chunk = GARBAGE * 4096
        while True:
            writer.write(chunk)
            await writer.drain()


def self_signed_context(tmpdir: str) -> ssl.SSLContext:
    """A server context with a fresh self-signed certificate for 127.0.0.1."""
    from derp.aio.certs import make_cert, write_pair
    crt, key = os.path.join(tmpdir, "relay.crt"), os.path.join(tmpdir, "relay.key")
    write_pair(make_cert(["127.0.0.1"]), crt, key)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(crt, key)
    return ctx


async def _main(mode: str, tls: bool) -> None:
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        async with BadRelay(mode, self_signed_context(tmp) if tls else None) as relay:
            print(f"port {relay.port}", flush=True)
            await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1], "--tls" in sys.argv))
