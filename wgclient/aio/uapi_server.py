"""The UAPI Unix socket `/var/run/wireguard/<name>.sock` that the stock `wg` tool talks to.

Each accepted connection gets its own sans-I/O `wgclient.uapi.UapiConnection`; this module only moves
bytes. As wireguard-go's ipc/uapi_unix.go: the directory is created with mode 0755, the socket is bound
under umask 077 (so only root may configure the device), a stale socket (nothing accepts on it) is
removed first, and a socket a live daemon still answers on is left alone: that is a UsageError. `close()`
stops listening, drops open connections and removes the socket if it is still ours. The directory can be
moved with the environment variable WGC_RUN_DIR (for tests that are not root). Unlike wireguard-go, at most
MAX_CLIENTS connections are served at once and one that neither sends nor reads for IDLE_TIMEOUT seconds
is closed (wgclient/aio/unixsock.py), so a stuck local client cannot pile up connections in the daemon.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket

from ..errors import UsageError
from ..uapi import UapiConnection, UapiTarget
from .unixsock import UnixStreamServer, listen_unix

log = logging.getLogger(__name__)

DEFAULT_RUN_DIR = "/var/run/wireguard"
READ_SIZE = 65536
MAX_CLIENTS = 32
IDLE_TIMEOUT = 30.0     # seconds; `wg` writes its request at once and reads the answer at once


def run_dir() -> str:
    return os.environ.get("WGC_RUN_DIR") or DEFAULT_RUN_DIR


def socket_path(name: str) -> str:
    if not name or "/" in name or name in (".", ".."):
        raise UsageError(f"invalid interface name {name!r}")
    return os.path.join(run_dir(), f"{name}.sock")


class UapiServer(UnixStreamServer):
    what = "UAPI"

    def __init__(self, path: str, sock: socket.socket, target: UapiTarget, *, max_clients: int = MAX_CLIENTS,
                 idle_timeout: float = IDLE_TIMEOUT) -> None:
        super().__init__(path, sock, max_clients=max_clients, idle_timeout=idle_timeout)
        self.target = target

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = UapiConnection(self.target)
        while True:
            data = await self._idle(reader.read(READ_SIZE))
            if not data:
                break
            reply, close = conn.feed(data)
            if reply:
                writer.write(reply)
                await self._idle(writer.drain())
            if close:
                break


async def start_uapi_server(name: str, target: UapiTarget, *, max_clients: int = MAX_CLIENTS,
                            idle_timeout: float = IDLE_TIMEOUT) -> UapiServer:
    """Listen on `<run dir>/<name>.sock` and serve the UAPI for target (at most max_clients connections at
    once, each closed after idle_timeout seconds without progress)."""
    path = socket_path(name)
    sock = listen_unix(path, what="UAPI socket", dir_mode=0o755, sock_mode=None, backlog=16,
                       live_error=f"interface {name!r} is already run by a live daemon (socket {path})")
    server = UapiServer(path, sock, target, max_clients=max_clients, idle_timeout=idle_timeout)
    try:
        await server._start()
    except BaseException:
        server.close()
        raise
    log.info("UAPI listening on %s", path)
    return server
