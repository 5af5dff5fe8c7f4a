"""The UAPI Unix socket `/var/run/wireguard/<name>.sock` that the stock `wg` tool talks to.

Each accepted connection gets its own sans-I/O `wgclient.uapi.UapiConnection`; this module only moves
bytes. As wireguard-go's ipc/uapi_unix.go: the directory is created with mode 0755, the socket is bound
under umask 077 (so only root may configure the device), a stale socket (nothing accepts on it) is
removed first, and a socket a live daemon still answers on is left alone: that is a UsageError. `close()`
stops listening, drops open connections and removes the socket if it is still ours. The directory can be
moved with the environment variable WGC_RUN_DIR (for tests that are not root).
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import stat

from ..errors import UsageError
from ..uapi import UapiConnection, UapiTarget

log = logging.getLogger(__name__)

DEFAULT_RUN_DIR = "/var/run/wireguard"
READ_SIZE = 65536


def run_dir() -> str:
    return os.environ.get("WGC_RUN_DIR") or DEFAULT_RUN_DIR


def socket_path(name: str) -> str:
    if not name or "/" in name or name in (".", ".."):
        raise UsageError(f"invalid interface name {name!r}")
    return os.path.join(run_dir(), f"{name}.sock")


def socket_is_live(path: str) -> bool:
    """True if something accepts connections on the Unix socket at path."""
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return False
    except FileNotFoundError:
        return False
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def _identity(path: str) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_ctime_ns   # inode numbers are reused at once on tmpfs


class UapiServer:
    def __init__(self, path: str, sock: socket.socket, target: UapiTarget) -> None:
        self.path = path
        self.target = target
        self._sock = sock
        self._identity = _identity(path)
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def _start(self) -> None:
        self._server = await asyncio.start_unix_server(self._client, sock=self._sock)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        conn = UapiConnection(self.target)
        try:
            while True:
                data = await reader.read(READ_SIZE)
                if not data:
                    break
                reply, close = conn.feed(data)
                if reply:
                    writer.write(reply)
                    await writer.drain()
                if close:
                    break
        except (ConnectionError, OSError) as e:
            log.debug("uapi client went away: %s", e)
        except Exception:  # one broken client never takes the server down
            log.exception("uapi client handler failed")
        finally:
            self._writers.discard(writer)
            writer.close()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        else:
            self._sock.close()
        for w in list(self._writers):
            w.close()
        self._writers.clear()
        try:
            if _identity(self.path) == self._identity:
                os.unlink(self.path)
        except FileNotFoundError:
            pass


async def start_uapi_server(name: str, target: UapiTarget) -> UapiServer:
    """Listen on `<run dir>/<name>.sock` and serve the UAPI for target."""
    path = socket_path(name)
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create {directory}: {e.strerror}") from None
    if os.path.lexists(path):
        if socket_is_live(path):
            raise UsageError(f"interface {name!r} is already run by a live daemon (socket {path})")
        log.info("removing stale UAPI socket %s", path)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o077)
    try:
        sock.bind(path)
    except OSError as e:
        sock.close()
        code = errno.errorcode.get(e.errno or 0, "")
        raise UsageError(f"cannot bind UAPI socket {path}: {e.strerror or code}") from None
    finally:
        os.umask(old_umask)
    sock.listen(16)
    sock.setblocking(False)
    server = UapiServer(path, sock, target)
    try:
        await server._start()
    except BaseException:
        server.close()
        raise
    log.info("UAPI listening on %s", path)
    return server
