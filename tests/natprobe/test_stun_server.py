"""The asyncio STUN server on real loopback sockets, with natprobe requests and Debian's/coturn's clients."""
from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import time

import pytest

from natprobe import stun
from natprobe.aio.server import start_stun_server
from natprobe.errors import UsageError
from tests.support.prereq import require_binary, require_root

pytestmark = pytest.mark.timeout(30)


def _query(family: int, host: str, port: int, payload: bytes, *, timeout: float = 2.0):
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.bind((host, 0))
        sock.sendto(payload, (host, port))
        data, _ = sock.recvfrom(2048)
        return data, sock.getsockname()[:2]


async def _aquery(family, host, port, payload):
    return await asyncio.to_thread(_query, family, host, port, payload)


@pytest.mark.parametrize("family,host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_answers_tailscale_request_with_the_source_address(family, host):
    async def main():
        server = await start_stun_server(host, 0)
        try:
            txid = bytes(range(12))
            data, me = await _aquery(family, host, server.port, stun.binding_request(txid))
            resp = stun.parse_binding_response(data)
            assert resp.txid == txid and resp.mapped == (me[0], me[1])
            assert server.requests == 1 and server.dropped == 0
        finally:
            server.close()
    asyncio.run(main())


def test_garbage_is_dropped_and_counted_and_service_continues():
    async def main():
        server = await start_stun_server("127.0.0.1", 0)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as junk:
                bad_fp = bytearray(stun.binding_request(b"\x01" * 12))
                bad_fp[-1] ^= 1
                for payload in (b"", b"hello", bytes(100), bytes(bad_fp),
                                stun.binding_request(b"\x02" * 12)[:30]):
                    junk.sendto(payload, ("127.0.0.1", server.port))
            data, me = await _aquery(socket.AF_INET, "127.0.0.1", server.port, stun.binding_request(b"\x03" * 12))
            assert stun.parse_binding_response(data).mapped == tuple(me)
            assert server.requests == 1
            assert server.dropped == 5, server.responder.drops
        finally:
            server.close()
    asyncio.run(main())


def test_bad_listen_address_is_a_usage_error():
    async def main():
        with pytest.raises(UsageError, match="IP address"):
            await start_stun_server("not-an-ip", 0)
        with pytest.raises(UsageError, match="port"):
            await start_stun_server("127.0.0.1", 70000)
    asyncio.run(main())


def _run_client(argv: list[str], server_port: int, host: str = "127.0.0.1") -> tuple[str, int, int]:
    async def main():
        server = await start_stun_server(host, server_port)
        try:
            proc = await asyncio.create_subprocess_exec(
                *[a.replace("PORT", str(server.port)) for a in argv],
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            try:
                out, _ = await asyncio.wait_for(proc.communicate(), 10)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            return out.decode(errors="replace"), proc.returncode, server.requests
        finally:
            server.close()
    return asyncio.run(main())


def test_debian_stun_client_gets_its_mapped_address():
    require_binary("stun")
    out, _rc, requests = _run_client(["stun", "127.0.0.1:PORT", "1", "-v"], 0)
    match = re.search(r"MappedAddress = 127\.0\.0\.1:(\d+)", out)
    assert match and 0 < int(match.group(1)) < 65536, out
    assert requests >= 1


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_coturn_stunclient_gets_its_reflexive_address(host):
    require_binary("turnutils_stunclient")
    out, rc, requests = _run_client(["turnutils_stunclient", "-p", "PORT", host], 0, host)
    assert rc == 0 and requests >= 1, out
    family = "IPv6" if ":" in host else "IPv4"
    assert re.search(rf"{family}\. UDP reflexive addr: {re.escape(host)}:\d+", out), out


def test_cli_dual_stack_server_in_a_namespace_answers_both_families():
    require_root()
    from tools.natlab.netns import Lab

    with Lab() as lab:
        ns = lab.namespace("stun")
        proc = ns.popen(sys.executable, "-m", "natprobe", "stun-server", "--port", "3478", text=True)
        line = proc.stdout.readline()
        assert "listening on [::]:3478" in line, line + proc.stderr.read() if proc.poll() is not None else line
        probe = (
            "import socket,sys\n"
            "from natprobe import stun\n"
            "for fam,host in ((socket.AF_INET,'127.0.0.1'),(socket.AF_INET6,'::1')):\n"
            "    s=socket.socket(fam,socket.SOCK_DGRAM); s.settimeout(2); s.bind((host,0))\n"
            "    s.sendto(stun.binding_request(b'x'*12),(host,3478))\n"
            "    r=stun.parse_binding_response(s.recv(2048))\n"
            "    print(r.mapped[0], r.mapped[1]==s.getsockname()[1])\n")
        out = ns.run(sys.executable, "-c", probe, cwd=str(_root()), timeout=10).stdout.split("\n")
        assert out[:2] == ["127.0.0.1 True", "::1 True"], out


def _root():
    import pathlib
    return pathlib.Path(__file__).resolve().parents[2]


def test_cli_reports_a_busy_port_clearly():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        proc = subprocess.run([sys.executable, "-m", "natprobe", "stun-server", "--listen", "127.0.0.1", "--port",
                               str(busy.getsockname()[1])], capture_output=True, text=True, timeout=10)
    assert proc.returncode == 2 and proc.stderr.startswith("error: cannot listen for STUN on [127.0.0.1]:")
    assert "Traceback" not in proc.stderr
