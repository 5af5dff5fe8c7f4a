"""Listening Unix sockets for the daemon's local servers (UAPI, control): a stale file from a dead daemon
is replaced, a live one refused, the socket is made with a private umask, and on close only our own file
(same device, inode and creation time) is removed.

`UnixStreamServer` also bounds what local clients can hold: at most `max_clients` connections are served at
once (the rest are refused at once, counted), and a client that sends nothing or reads nothing for
`idle_timeout` seconds is cut (subclasses wrap their reads and drains in `_idle`). Counters by reason are in
`server.counters`; one client's failure never reaches the server or another client."""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import stat

from ..errors import UsageError

log = logging.getLogger("wgc.unixsock")


def probe_socket(path: str) -> bool | None:
    """True if something accepts connections on the Unix socket at path, False if nothing does (or it is no
    socket), None if this user may not connect to it (the permission is denied)."""
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return False
    except FileNotFoundError:
        return False
    except PermissionError:
        return None
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(path)
        return True
    except PermissionError:
        return None
    except OSError:
        return False
    finally:
        s.close()


def socket_is_live(path: str) -> bool:
    """True if something accepts connections on the Unix socket at path."""
    return probe_socket(path) is True


def identity(path: str) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_ctime_ns   # inode numbers are reused at once on tmpfs


def remove_if_ours(path: str, ours: tuple[int, int, int]) -> None:
    """Unlink path unless another process has replaced it since we bound it."""
    try:
        if identity(path) == ours:
            os.unlink(path)
    except FileNotFoundError:
        pass


def listen_unix(path: str, *, what: str, live_error: str, dir_mode: int, sock_mode: int | None,
                backlog: int) -> socket.socket:
    """A non-blocking listening socket at path (UsageError naming `what` if that cannot be done)."""
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, mode=dir_mode, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create {directory}: {e.strerror}") from None
    if os.path.lexists(path):
        if socket_is_live(path):
            raise UsageError(live_error)
        log.info("removing stale %s %s", what, path)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o077)
    try:
        sock.bind(path)
        if sock_mode is not None:
            os.chmod(path, sock_mode)
    except OSError as e:
        sock.close()
        code = errno.errorcode.get(e.errno or 0, "")
        raise UsageError(f"cannot bind {what} {path}: {e.strerror or code}") from None
    finally:
        os.umask(old_umask)
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


class UnixStreamServer:
    """What the UAPI and control servers share: the listening socket, the connections they hold (at most
    max_clients, each cut after idle_timeout without progress), and closing all of it (removing our socket
    file only). Subclasses define `_serve(reader, writer)` and may define `_refuse(writer)`."""

    stream_limit = 2 ** 16
    what = "unix socket"      # for logs: "UAPI", "control"

    def __init__(self, path: str, sock: socket.socket, *, max_clients: int, idle_timeout: float) -> None:
        self.path = path
        self.max_clients = max_clients
        self.idle_timeout = idle_timeout
        self.counters: dict[str, int] = {}
        self._sock = sock
        self._identity = identity(path)
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task] = set()

    def _count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1

    async def _start(self) -> None:
        self._server = await asyncio.start_unix_server(self._client, sock=self._sock, limit=self.stream_limit)

    async def _idle(self, aw):
        """Await a read or a drain for at most idle_timeout (TimeoutError after that)."""
        return await asyncio.wait_for(aw, self.idle_timeout)

    def _refuse(self, writer: asyncio.StreamWriter) -> None:
        """What a client over the limit gets before it is closed (nothing, unless a subclass says)."""

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._writers) >= self.max_clients:
            self._count("refused: too many clients")
            self._refuse(writer)
            writer.close()
            return
        task = asyncio.current_task()
        self._writers.add(writer)
        if task is not None:
            self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except TimeoutError:                 # (an OSError too, on 3.11: caught first)
            self._count("timeout: idle client")
            writer.transport.abort()         # close() would wait for the client to read what is queued
        except (ConnectionError, OSError) as e:
            log.debug("%s client went away: %s", self.what, e)
        except asyncio.CancelledError:
            # close() or the loop's shutdown: end quietly (a task that ends cancelled makes asyncio's stream
            # callback log a traceback on Python 3.11)
            return
        except Exception:  # a bug in one client's handling never takes the server down
            self._count("internal error")
            log.exception("%s client handler failed", self.what)
        finally:
            self._writers.discard(writer)
            if task is not None:
                self._tasks.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        else:
            self._sock.close()
        for w in list(self._writers):
            w.transport.abort()      # drop, even with replies queued for a client that does not read
        for t in list(self._tasks):
            t.cancel()
        self._writers.clear()
        self._tasks.clear()
        remove_if_ours(self.path, self._identity)
