"""Helpers for the admission tests: a DERP handshake with chosen request headers (admitted or refused), a
tiny HTTP server playing the admission webhook, and `wgc derper` runs that must fail with one line."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

from derp import protocol as P

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


async def handshake(port: int, priv: bytes, headers: dict[str, str] | None = None,
                    timeout: float = 5.0) -> tuple[bool, asyncio.StreamWriter | None]:
    """(True, writer) when the relay sends ServerInfo (admitted; the caller closes the writer), (False, None)
    when it closes the connection instead (refused)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    writer.write(f"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n{extra}\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    assert head.startswith(b"HTTP/1.1 101"), head
    core = P.ClientConnection(priv, os.urandom, 0.0)
    try:
        while core.state != P.ClientState.CONNECTED:
            data = await asyncio.wait_for(reader.read(65536), timeout)
            if not data:
                writer.close()
                return False, None
            for out in core.receive_data(data, 0.0):
                if isinstance(out, P.Transmit):
                    writer.write(out.data)
    except ConnectionError:
        writer.close()
        return False, None
    return True, writer


async def admitted(port: int, priv: bytes, headers: dict[str, str] | None = None) -> bool:
    ok, writer = await handshake(port, priv, headers)
    if writer is not None:
        writer.close()
    return ok


class Webhook:
    """An admission controller on 127.0.0.1: answers each POST by `self.answer(request) -> (status, body)`
    (default: allow the keys in `self.allow`), after `self.delay` seconds; requests are kept in `self.seen`."""

    def __init__(self) -> None:
        self.allow: set[str] = set()
        self.delay = 0.0
        self.seen: list[dict] = []
        self.paths: list[str] = []
        self.answer = lambda req: (200, json.dumps({"Allow": req["NodePublic"] in self.allow}).encode())
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def start(self) -> "Webhook":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/admit?from=derper"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            first, *lines = head.split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines if ln)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            request = json.loads(body)
            self.seen.append({"line": first, "headers": headers, "json": request})
            await asyncio.sleep(self.delay)
            status, answer = self.answer(request)
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: "
                         f"{len(answer)}\r\nConnection: close\r\n\r\n".encode() + answer)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


QUIET = ("-a", "127.0.0.1:0", "--certmode=none", "--no-stun", "--metrics-addr=off")


def derper_fails(*args: str, open_relay: bool = True, env: dict | None = None, timeout: float = 30) -> str:
    """Run `wgc derper ARGS` (on an ephemeral loopback port, plain HTTP, no STUN or metrics, an open relay
    unless told not), which must exit by itself with one `wgc: ...` line; returns that line."""
    argv = [*QUIET, *(["--open-relay"] if open_relay else []), *args]
    proc = subprocess.run([sys.executable, "-m", "wgclient.cli", "derper", *argv], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout, env={**os.environ, **(env or {})})
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert "derper ready" not in proc.stdout and len(lines) == 1 and lines[0].startswith("wgc: "), proc.stderr
    return lines[0]
