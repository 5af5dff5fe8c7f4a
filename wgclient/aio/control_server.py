"""The control socket `<dir>/<name>.ctl` that `wgc status` and `wgc ping` talk to, and their client side.

The directory is $WGC_CONTROL_DIR or /var/run/wgc, created with mode 0700; the socket is bound under
umask 077 and chmod 0600, so only root opens it. A stale socket (nothing accepts on it) is replaced; a live
one is a UsageError. Each connection sends JSON request lines (wgclient/control.py) and gets one reply line
each; a connection is cut when no complete line arrives within REQUEST_TIMEOUT or a line exceeds
MAX_LINE. Garbage gets an error reply and is counted in `server.counters`; nothing a client does reaches
beyond its own connection. At most MAX_CLIENTS connections are served at once, the rest are refused with
an error line (the limit and the idle cut are the shared wgclient/aio/unixsock.py server's). `close()` stops listening, drops open connections and removes the socket if still ours.

The target is the running interface (wgclient/aio/control_target.py):
``status() -> dict``, ``async ping(key, timeout) -> dict | None`` and ``derpmap() -> (map, source)``.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Protocol

from .. import control
from ..errors import Error, ParseError, UsageError
from .unixsock import UnixStreamServer, listen_unix, probe_socket

log = logging.getLogger(__name__)

DEFAULT_CONTROL_DIR = "/var/run/wgc"
SUFFIX = ".ctl"
REQUEST_TIMEOUT = 5.0     # seconds for a client to send a whole request line
MAX_CLIENTS = 64


class ControlTarget(Protocol):
    def status(self) -> dict: ...

    async def ping(self, key: bytes, timeout: float) -> dict | None: ...

    def derpmap(self) -> tuple[dict, dict | None]: ...


def control_dir() -> str:
    return os.environ.get("WGC_CONTROL_DIR") or DEFAULT_CONTROL_DIR


def socket_path(name: str) -> str:
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise UsageError(f"invalid interface name {name!r}")
    return os.path.join(control_dir(), name + SUFFIX)


class ControlServer(UnixStreamServer):
    stream_limit = control.MAX_LINE + 1
    what = "control"

    def __init__(self, path: str, sock: socket.socket, target: ControlTarget, *,
                 request_timeout: float = REQUEST_TIMEOUT, max_clients: int = MAX_CLIENTS) -> None:
        super().__init__(path, sock, max_clients=max_clients, idle_timeout=request_timeout)
        self.target = target

    @property
    def request_timeout(self) -> float:
        return self.idle_timeout

    def _refuse(self, writer: asyncio.StreamWriter) -> None:
        writer.write(control.encode_error("too many control connections; try again"))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = True
        while await self._one(reader, writer, first):
            first = False

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bool) -> bool:
        """Serve one request line; False when the connection is to be closed. An idle connection is cut
        with an error line if it never sent a request, silently after it did (no stray reply line)."""
        try:
            line = await self._idle(reader.readuntil(b"\n"))
        except asyncio.IncompleteReadError as e:
            if not e.partial.strip():
                return False              # a clean end (or a liveness probe)
            line = e.partial              # the last request may omit its newline
        except asyncio.LimitOverrunError:
            self._count("garbage: line too long")
            await self._send(writer, control.encode_error(f"request longer than {control.MAX_LINE} bytes"))
            return False
        except asyncio.TimeoutError:
            if first:
                self._count("timeout: no request line")
                await self._send(writer, control.encode_error(f"no request line within {self.request_timeout:g}s"))
            return False
        try:
            request = control.parse_request(line)
        except ParseError as e:
            self._count("garbage: bad request")
            await self._send(writer, control.encode_error(f"bad request: {e}"))
            return not reader.at_eof()
        self._count(f"request: {type(request).__name__}")
        await self._send(writer, await self._answer(request))
        return not reader.at_eof()

    async def _answer(self, request: control.Request) -> bytes:
        try:
            if isinstance(request, control.PingRequest):
                pong = await asyncio.wait_for(self.target.ping(request.key, request.timeout), request.timeout + 1.0)
                return control.encode_pong(pong)
            if isinstance(request, control.DerpMapRequest):
                return control.encode_derpmap(*self.target.derpmap())
            return control.encode_status(self.target.status())
        except asyncio.TimeoutError:
            return control.encode_pong(None)
        except Error as e:   # the target refused (e.g. ping without a DERP map, unknown peer)
            self._count("refused by target")
            return control.encode_error(str(e))
        except Exception as e:   # a bug in the target (or a snapshot that is not JSON): reported, not fatal
            self._count("internal error")
            log.exception("control request %s failed", type(request).__name__)
            return control.encode_error(f"internal error in the daemon: {type(e).__name__}")

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        await self._idle(writer.drain())



async def start_control_server(name: str, target: ControlTarget, *, request_timeout: float = REQUEST_TIMEOUT,
                               max_clients: int = MAX_CLIENTS) -> ControlServer:
    """Listen on `<control dir>/<name>.ctl` and answer status and ping requests from target.

    request_timeout: seconds a client has for each request line; max_clients: connections served at once.
    """
    path = socket_path(name)
    sock = listen_unix(path, what="control socket", dir_mode=0o700, sock_mode=0o600, backlog=64,
                       live_error=f"interface {name!r} already has a live control socket {path}")
    server = ControlServer(path, sock, target, request_timeout=request_timeout, max_clients=max_clients)
    try:
        await server._start()
    except BaseException:
        server.close()
        raise
    log.info("control socket listening on %s", path)
    return server


# --- the client side (wgc status, wgc ping) -------------------------------------------------------------


def denied(what: str, path: str) -> UsageError:
    return UsageError(f"permission denied: run as root ({what} {path})")


def running_interfaces() -> list[str]:
    """Names of the interfaces with a live control socket in the control directory, sorted. When there are
    control sockets but this user may open none of them, that is said (a UsageError), not "none running"."""
    directory = control_dir()
    try:
        entries = os.listdir(directory)
    except FileNotFoundError:
        return []
    except PermissionError:
        raise denied("control directory", directory) from None
    names, refused = [], []
    for entry in sorted(entries):
        path = os.path.join(directory, entry)
        if entry.endswith(SUFFIX) and len(entry) > len(SUFFIX):
            live = probe_socket(path)
            if live:
                names.append(entry[:-len(SUFFIX)])
            elif live is None:
                refused.append(path)
    if not names and refused:
        raise denied("control socket", ", ".join(refused))
    return names


async def wait_for_interfaces(name: str | None, timeout: float, poll: float = 0.05) -> list[str]:
    """The running interfaces (`[name]` if one is named), waiting up to timeout seconds for a control
    socket to come up (an interface that `wgc up` is still starting); [] if none came."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if name:
            live = probe_socket(socket_path(name))
            if live is None:
                raise denied("control socket", socket_path(name))
            if live:
                return [name]
        elif names := running_interfaces():
            return names
        if loop.time() >= deadline:
            return []
        await asyncio.sleep(min(poll, max(0.0, deadline - loop.time())))


def choose_interface(name: str | None) -> str:
    """The interface to talk to: `name` if given, else the only one running (a UsageError otherwise)."""
    if name:
        return name
    names = running_interfaces()
    if not names:
        raise UsageError("no wgc interface is running")
    if len(names) > 1:
        raise UsageError(f"several wgc interfaces are running ({', '.join(names)}); name one")
    return names[0]


class ControlClient:
    """One connection to a daemon's control socket; requests are answered in order."""

    def __init__(self, name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.name = name
        self._reader = reader
        self._writer = writer

    @classmethod
    async def connect(cls, name: str, timeout: float = 5.0) -> "ControlClient":
        path = socket_path(name)
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(path, limit=control.MAX_REPLY + 1), timeout)
        except PermissionError:
            raise denied("control socket", path) from None
        except (FileNotFoundError, ConnectionRefusedError):
            raise UsageError(f"wgc interface {name!r} is not running (no control socket {path})") from None
        except asyncio.TimeoutError:
            raise UsageError(f"the daemon of {name!r} does not answer on {path}") from None
        except OSError as e:
            raise UsageError(f"cannot open {path}: {e.strerror or e}") from None
        return cls(name, reader, writer)

    async def _call(self, request: control.Request, timeout: float) -> bytes:
        try:
            self._writer.write(request.encode())
            await self._writer.drain()
            return await asyncio.wait_for(self._reader.readuntil(b"\n"), timeout)
        except asyncio.TimeoutError:
            raise UsageError(f"the daemon of {self.name!r} did not answer within {timeout:g}s") from None
        except (asyncio.IncompleteReadError, ConnectionError) as e:
            raise UsageError(f"the daemon of {self.name!r} closed the control connection ({e})") from None
        except asyncio.LimitOverrunError:
            raise ParseError(f"reply longer than {control.MAX_REPLY} bytes") from None

    async def status(self, timeout: float = 10.0) -> dict:
        return control.parse_status_reply(await self._call(control.StatusRequest(), timeout))

    async def ping(self, key: bytes, timeout: float) -> dict | None:
        return control.parse_pong_reply(await self._call(control.PingRequest(key, timeout), timeout + 5.0))

    async def derpmap(self, timeout: float = 10.0) -> dict:
        return control.parse_derpmap_reply(await self._call(control.DerpMapRequest(), timeout))

    def close(self) -> None:
        self._writer.close()


__all__ = ["ControlServer", "ControlClient", "ControlTarget", "start_control_server", "running_interfaces",
           "wait_for_interfaces", "choose_interface", "control_dir", "socket_path"]
