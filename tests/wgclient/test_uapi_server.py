"""wgclient.aio.uapi_server over a real Unix socket (in a private WGC_RUN_DIR): modes, stale/live sockets, clients."""
from __future__ import annotations

import asyncio
import os
import socket
import stat

import pytest

from tests.support.uapi_target import MemoryTarget
from wgclient.aio.uapi_server import start_uapi_server
from wgclient.errors import UsageError

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    d = tmp_path / "run" / "wireguard"
    monkeypatch.setenv("WGC_RUN_DIR", str(d))
    return d


async def request(path: str, data: bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.readuntil(b"\n\n"), 5)
    finally:
        writer.close()


def test_socket_modes_and_close(run_dir):
    async def main():
        server = await start_uapi_server("wgt0", MemoryTarget())
        try:
            path = run_dir / "wgt0.sock"
            assert server.path == str(path)
            assert stat.S_ISSOCK(os.stat(path).st_mode)
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
            assert stat.S_IMODE(os.stat(run_dir).st_mode) == 0o755
            assert await request(str(path), b"get=1\n\n") == b"errno=0\n\n"
        finally:
            server.close()
        assert not path.exists()
    asyncio.run(main())


def test_stale_socket_is_replaced_and_live_one_refused(run_dir):
    async def main():
        run_dir.mkdir(parents=True)
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(str(run_dir / "wgt1.sock"))
        stale.close()                       # the file stays, nothing listens: stale
        server = await start_uapi_server("wgt1", MemoryTarget(listen_port=7))
        try:
            assert await request(server.path, b"get=1\n\n") == b"listen_port=7\nerrno=0\n\n"
            with pytest.raises(UsageError, match="already run by a live daemon"):
                await start_uapi_server("wgt1", MemoryTarget())
            assert os.path.exists(server.path)   # the refused start did not remove the live socket
            assert await request(server.path, b"get=1\n\n") == b"listen_port=7\nerrno=0\n\n"
        finally:
            server.close()
    asyncio.run(main())


def test_close_does_not_remove_a_successors_socket(run_dir):
    async def main():
        first = await start_uapi_server("wgt2", MemoryTarget())
        first._server.close()
        os.unlink(first.path)
        second = await start_uapi_server("wgt2", MemoryTarget(listen_port=9))
        first.close()
        try:
            assert await request(second.path, b"get=1\n\n") == b"listen_port=9\nerrno=0\n\n"
        finally:
            second.close()
    asyncio.run(main())


@pytest.mark.parametrize("name", ["", "a/b", ".."])
def test_bad_names(run_dir, name):
    with pytest.raises(UsageError):
        asyncio.run(start_uapi_server(name, MemoryTarget()))


def test_unwritable_run_dir_is_usage_error(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("WGC_RUN_DIR", str(blocker / "sub"))
    with pytest.raises(UsageError, match="cannot create"):
        asyncio.run(start_uapi_server("wgt3", MemoryTarget()))


def test_bad_clients_do_not_hurt_others(run_dir):
    async def main():
        target = MemoryTarget()
        server = await start_uapi_server("wgt4", target)
        try:
            # one client that never finishes its line, one that sends garbage, one half-open set
            r1, w1 = await asyncio.open_unix_connection(server.path)
            w1.write(b"set=1\npublic_key=")
            r2, w2 = await asyncio.open_unix_connection(server.path)
            w2.write(os.urandom(3000) + b"\n")
            r3, w3 = await asyncio.open_unix_connection(server.path)
            w3.write(b"\xff" * 10000)
            await asyncio.gather(w1.drain(), w2.drain(), w3.drain())
            assert await asyncio.wait_for(r2.read(), 5) == b""      # garbage: closed without reply
            assert await asyncio.wait_for(r3.read(), 5) == b""      # over-long line: closed
            pk = (b"\x01" * 32).hex().encode()
            assert await request(server.path, b"set=1\npublic_key=" + pk + b"\nallowed_ip=10.0.0.1/32\n\n") == b"errno=0\n\n"
            assert target.uapi_has_peer(b"\x01" * 32)
            # several requests on one connection
            reader, writer = await asyncio.open_unix_connection(server.path)
            writer.write(b"get=1\n\nset=1\nfwmark=3\n\nget=1\n\n")
            replies = [await asyncio.wait_for(reader.readuntil(b"\n\n"), 5) for _ in range(3)]
            assert replies[1] == b"errno=0\n\n" and b"fwmark=3\n" in replies[2] and b"fwmark" not in replies[0]
            writer.close()
            w1.close()
        finally:
            server.close()
        assert not os.path.exists(server.path)
    asyncio.run(main())


def test_connection_limit(run_dir):
    """Beyond max_clients a connection is closed at once; the held ones and later ones still work."""
    async def main():
        server = await start_uapi_server("wgt5", MemoryTarget(listen_port=5), max_clients=4)
        try:
            held = [await asyncio.open_unix_connection(server.path) for _ in range(4)]
            await asyncio.sleep(0.1)
            r, w = await asyncio.open_unix_connection(server.path)
            assert await asyncio.wait_for(r.read(), 5) == b""          # refused: closed without a reply
            w.close()
            assert server.counters["refused: too many clients"] == 1
            hr, hw = held[0]
            hw.write(b"get=1\n\n")
            assert await asyncio.wait_for(hr.readuntil(b"\n\n"), 5) == b"listen_port=5\nerrno=0\n\n"
            for _, hw in held:
                hw.close()
            await asyncio.sleep(0.1)
            assert await request(server.path, b"get=1\n\n") == b"listen_port=5\nerrno=0\n\n"
        finally:
            server.close()
    asyncio.run(main())


def test_idle_clients_are_cut(run_dir):
    """A client that stops sending mid-request, or stops reading its replies, is closed after idle_timeout;
    a busy client beside them is served throughout."""
    async def main():
        server = await start_uapi_server("wgt6", MemoryTarget(listen_port=6), idle_timeout=0.3)
        try:
            loop = asyncio.get_running_loop()
            silent_r, silent_w = await asyncio.open_unix_connection(server.path)
            silent_w.write(b"set=1\nfwmark=")                          # half a request, then nothing
            # a client that floods requests and never reads: its replies fill the socket, the drain stalls
            deaf_r, deaf_w = await asyncio.open_unix_connection(server.path)
            flood = asyncio.create_task(_write_until_closed(deaf_w, b"get=1\n\n" * 4096))
            t0 = loop.time()
            assert await asyncio.wait_for(silent_r.read(), 10) == b""   # closed by the server
            assert loop.time() - t0 >= 0.25
            assert await request(server.path, b"get=1\n\n") == b"listen_port=6\nerrno=0\n\n"
            await asyncio.wait_for(flood, 10)                           # the server closed it too
            assert server.counters["timeout: idle client"] == 2
            assert len(server._writers) == 0
            silent_w.close()
            deaf_w.close()
        finally:
            server.close()
    asyncio.run(main())


async def _write_until_closed(writer: asyncio.StreamWriter, chunk: bytes) -> None:
    try:
        while True:
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        return
