"""wgclient.aio.control_server over real Unix sockets in a private WGC_CONTROL_DIR, against a scripted target:
modes, stale/live sockets, status and ping, timeouts, garbage, slow and many clients, cleanup."""
from __future__ import annotations

import asyncio
import json
import os
import socket
import stat

import pytest

from tests.support.control_target import ScriptedTarget, b64, derp_pong, direct_pong, key, sample_status
from wgclient.aio.control_server import ControlClient, choose_interface, running_interfaces, start_control_server
from wgclient.errors import UsageError

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
def ctl_dir(tmp_path, monkeypatch):
    d = tmp_path / "run" / "wgc"
    monkeypatch.setenv("WGC_CONTROL_DIR", str(d))
    return d


async def raw(path: str, data: bytes, *, eof: bool = False, timeout: float = 5) -> list[dict]:
    """Send data, read reply lines until the server closes (or, without eof, until one line came)."""
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(data)
        if eof:
            writer.write_eof()
        await writer.drain()
        if not eof:
            return [json.loads(await asyncio.wait_for(reader.readline(), timeout))]
        text = await asyncio.wait_for(reader.read(), timeout)
        return [json.loads(line) for line in text.splitlines()]
    finally:
        writer.close()


def run(coro):
    return asyncio.run(coro)


def test_modes_status_and_cleanup(ctl_dir):
    async def main():
        target = ScriptedTarget()
        server = await start_control_server("wgt0", target)
        path = ctl_dir / "wgt0.ctl"
        try:
            assert server.path == str(path)
            assert stat.S_ISSOCK(os.stat(path).st_mode)
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            assert stat.S_IMODE(os.stat(ctl_dir).st_mode) == 0o700
            client = await ControlClient.connect("wgt0")
            try:
                assert await client.status() == sample_status()
                assert await client.status() == sample_status()     # several requests on one connection
            finally:
                client.close()
            assert [c[0] for c in target.calls] == ["status", "status"]
            assert server.counters == {"request: StatusRequest": 2}
        finally:
            server.close()
        assert not path.exists()
        with pytest.raises(UsageError, match="wgc interface 'wgt0' is not running"):
            await ControlClient.connect("wgt0")
    run(main())


def test_ping_replies(ctl_dir):
    async def main():
        target = ScriptedTarget(pongs={key(2): [derp_pong(), direct_pong()], key(3): [None],
                                       key(4): [UsageError("wgc ping uses disco, which needs --derpmap")],
                                       key(5): [RuntimeError("bug")]})
        server = await start_control_server("wgt0", target)
        try:
            client = await ControlClient.connect("wgt0")
            try:
                assert await client.ping(key(2), 2) == derp_pong()
                assert await client.ping(key(2), 2) == direct_pong()
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                assert await client.ping(key(3), 0.3) is None                  # no pong within the timeout
                assert 0.25 < loop.time() - t0 < 2
                with pytest.raises(UsageError, match="needs --derpmap"):
                    await client.ping(key(4), 1)
                with pytest.raises(UsageError, match="no such peer"):
                    await client.ping(key(9), 1)
                with pytest.raises(UsageError, match="internal error in the daemon: RuntimeError"):
                    await client.ping(key(5), 1)
                assert await client.ping(key(2), 2) == direct_pong()          # the connection still works
            finally:
                client.close()
            assert ("ping", key(3), 0.3) in target.calls
            assert server.counters["refused by target"] == 2 and server.counters["internal error"] == 1
        finally:
            server.close()
    run(main())


def test_a_target_that_never_answers_is_bounded(ctl_dir):
    class Hanging(ScriptedTarget):
        async def ping(self, peer_key, timeout):
            await asyncio.sleep(3600)

    async def main():
        server = await start_control_server("wgt0", Hanging())
        try:
            client = await ControlClient.connect("wgt0")
            try:
                t0 = asyncio.get_running_loop().time()
                assert await client.ping(key(2), 0.2) is None
                assert asyncio.get_running_loop().time() - t0 < 2.5
            finally:
                client.close()
        finally:
            server.close()
    run(main())


def test_garbage_is_answered_and_counted(ctl_dir):
    async def main():
        server = await start_control_server("wgt0", ScriptedTarget())
        try:
            replies = await raw(server.path, b"\xff\x00garbage\n{\"cmd\": \"reboot\"}\n{\"cmd\":\"status\"}", eof=True)
            assert [r["ok"] for r in replies] == [False, False, True]
            assert replies[0]["error"].startswith("bad request: not a JSON line")
            assert replies[1]["error"] == 'bad request: unknown "cmd" (status, ping or derpmap)'
            assert replies[2]["status"]["interface"] == "wgt0"   # the last request may omit its newline
            long = await raw(server.path, b"[" * 200_000, eof=True)
            assert long == [{"ok": False, "error": "request longer than 65536 bytes"}]
            assert server.counters["garbage: bad request"] == 2
            assert server.counters["garbage: line too long"] == 1
            # a status the target cannot encode is an error reply, not a dead server
            server.target.snapshot = {"interface": object()}
            assert (await raw(server.path, b'{"cmd":"status"}\n'))[0] == {
                "ok": False, "error": "internal error in the daemon: TypeError"}
            server.target.snapshot = sample_status()
            assert (await raw(server.path, b'{"cmd":"status"}\n'))[0]["ok"] is True
        finally:
            server.close()
    run(main())


def test_silent_client_is_cut_and_does_not_block_others(ctl_dir):
    async def main():
        # The slow ping takes 1.5 s and the silent client is cut after 1 s: a status answered before
        # either of them ended was held up by neither (an ordering, true at any machine speed).
        target = ScriptedTarget(pongs={key(2): [direct_pong()]}, delay=1.5)
        server = await start_control_server("wgt0", target, request_timeout=1.0)
        try:
            silent_r, silent_w = await asyncio.open_unix_connection(server.path)
            silent_w.write(b'{"cmd": "sta')                       # half a line, then nothing
            await silent_w.drain()
            slow = asyncio.create_task(raw(server.path, b'{"cmd":"ping","key":"%s","timeout":3}\n' % b64(2).encode()))
            assert (await raw(server.path, b'{"cmd":"status"}\n'))[0]["ok"] is True
            assert not slow.done() and "timeout: no request line" not in server.counters
            assert (await slow)[0]["pong"] == direct_pong()
            line = await asyncio.wait_for(silent_r.readline(), 5)
            assert json.loads(line) == {"ok": False, "error": "no request line within 1s"}
            assert await asyncio.wait_for(silent_r.read(), 2) == b""   # and the connection is closed
            silent_w.close()
            assert server.counters["timeout: no request line"] == 1
            # an idle connection that did make a request is closed without a stray line
            r, w = await asyncio.open_unix_connection(server.path)
            w.write(b'{"cmd":"status"}\n')
            assert json.loads(await r.readline())["ok"] is True
            assert await asyncio.wait_for(r.read(), 5) == b""
            w.close()
        finally:
            server.close()
    run(main())


def test_client_that_never_reads_is_cut(ctl_dir):
    """Status requests flooded by a client that reads no reply: the stalled drain is cut after the timeout
    and the queued replies are dropped; other clients are served meanwhile."""
    async def main():
        # 1 s: the other client's request must not meet the timeout while the flood keeps the loop busy
        server = await start_control_server("wgt0", ScriptedTarget(), request_timeout=1.0)
        try:
            r, w = await asyncio.open_unix_connection(server.path)

            async def flood():
                try:
                    while True:
                        w.write(b'{"cmd":"status"}\n' * 256)
                        await w.drain()
                except (ConnectionError, OSError):
                    return
            task = asyncio.create_task(flood())
            await asyncio.sleep(0.1)
            assert (await raw(server.path, b'{"cmd":"status"}\n'))[0]["ok"] is True
            await asyncio.wait_for(task, 10)
            assert server.counters["timeout: idle client"] == 1 and not server._writers
            w.close()
        finally:
            server.close()
    run(main())


def test_many_clients_at_once_and_the_limit(ctl_dir):
    async def main():
        target = ScriptedTarget(pongs={key(2): [direct_pong()]}, delay=0.3)
        server = await start_control_server("wgt0", target, max_clients=40)
        try:
            async def ping():
                client = await ControlClient.connect("wgt0")
                try:
                    return await client.ping(key(2), 2)
                finally:
                    client.close()
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            results = await asyncio.gather(*(ping() for _ in range(40)))
            assert results == [direct_pong()] * 40
            assert loop.time() - t0 < 40 * 0.3 / 2                  # concurrent, not 40 x 0.3 s
            # beyond the limit a connection gets one error line; the others are unaffected
            held = [await asyncio.open_unix_connection(server.path) for _ in range(40)]
            for r, w in held:                  # answered: each is being served (and stays for 5 s)
                w.write(b'{"cmd":"status"}\n')
                assert json.loads(await asyncio.wait_for(r.readline(), 5))["ok"] is True
            extra = await raw(server.path, b"", eof=True)
            assert extra == [{"ok": False, "error": "too many control connections; try again"}]
            for _, w in held:
                w.close()
            deadline = loop.time() + 5         # until the server has seen them go
            while (reply := (await raw(server.path, b'{"cmd":"status"}\n'))[0])["ok"] is not True:
                assert loop.time() < deadline, reply
                await asyncio.sleep(0.05)
        finally:
            server.close()
    run(main())


def test_stale_socket_replaced_live_one_refused(ctl_dir):
    async def main():
        ctl_dir.mkdir(parents=True)
        os.chmod(ctl_dir, 0o755)                   # an existing directory is left as it is
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(str(ctl_dir / "wgt1.ctl"))
        stale.close()                              # the file stays, nothing listens: a dead daemon's
        server = await start_control_server("wgt1", ScriptedTarget(sample_status("wgt1")))
        try:
            assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o600
            assert (await raw(server.path, b'{"cmd":"status"}\n'))[0]["status"]["interface"] == "wgt1"
            with pytest.raises(UsageError, match="already has a live control socket"):
                await start_control_server("wgt1", ScriptedTarget())
            assert (await raw(server.path, b'{"cmd":"status"}\n'))[0]["ok"] is True
        finally:
            server.close()
        assert not (ctl_dir / "wgt1.ctl").exists()
        with pytest.raises(UsageError, match="invalid interface name"):
            await start_control_server("../x", ScriptedTarget())
    run(main())


def test_close_drops_open_connections(ctl_dir):
    async def main():
        errors = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
        target = ScriptedTarget(pongs={key(2): [None]})
        server = await start_control_server("wgt0", target)
        client = await ControlClient.connect("wgt0")
        idle_r, idle_w = await asyncio.open_unix_connection(server.path)    # waiting for its first line
        pending = asyncio.create_task(client.ping(key(2), 10))
        await asyncio.sleep(0.2)
        server.close()
        with pytest.raises(UsageError, match="closed the control connection"):
            await asyncio.wait_for(pending, 3)
        assert await asyncio.wait_for(idle_r.read(), 3) == b""
        client.close()
        idle_w.close()
        await asyncio.sleep(0.05)
        assert not os.path.exists(server.path)
        assert errors == []          # the cancelled handlers ended quietly
    run(main())


def test_choosing_the_interface(ctl_dir):
    async def main():
        with pytest.raises(UsageError, match="^no wgc interface is running$"):
            choose_interface(None)
        a = await start_control_server("wga", ScriptedTarget())
        try:
            stale = socket.socket(socket.AF_UNIX)
            stale.bind(str(ctl_dir / "dead.ctl"))
            stale.close()
            (ctl_dir / "notes.txt").write_text("not a socket")
            assert await asyncio.to_thread(running_interfaces) == ["wga"]
            assert await asyncio.to_thread(choose_interface, None) == "wga"
            b = await start_control_server("wgb", ScriptedTarget())
            try:
                with pytest.raises(UsageError, match=r"several wgc interfaces are running \(wga, wgb\); name one"):
                    await asyncio.to_thread(choose_interface, None)
                assert choose_interface("wgb") == "wgb"
            finally:
                b.close()
        finally:
            a.close()
    run(main())
