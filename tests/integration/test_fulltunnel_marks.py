"""Every kind of socket wgc opens carries the firewall mark it is given: in a namespace where a rule makes all
unmarked traffic unreachable (`ip rule add not fwmark 0x77 unreachable`), the DERP client (TLS), the DERP
map fetch (also through `wgc up`'s map sources and their refreshes), netcheck's STUN socket, its HTTPS
connect and its ICMP echo reach a server in the next namespace with the mark, and fail without it (the
control that shows the rule bites)."""
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from derp.aio.client import ConnectError, DerpClient
from derp.aio.derpmap_loader import load_derpmap
from derp.aio.targets import targets_for_url
from derp.errors import UsageError as DerpUsageError
from natprobe.aio import sockmark
from natprobe.aio.icmp_probe import icmp_latency
from natprobe.aio.netcheck import NetcheckOptions, _open_socket
from natprobe.aio.client import StunClient
from tests.support.prereq import require_root
from tools.natlab.netns import Lab, link
from wgclient.aio.derpmap_source import DerpMapSource
from wgclient.aio.udp import UdpPort

pytestmark = [pytest.mark.netns, pytest.mark.timeout(90)]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MARK = 0x77
SERVER = "192.0.2.2"


@pytest.fixture
def marked_lab(tmp_path):
    """Namespace `client` (where the test body runs) can reach `server` only with mark 0x77."""
    require_root()
    from pyroute2 import netns
    lab = Lab()
    procs = []
    try:
        client, server = lab.namespace("mkc"), lab.namespace("mks")
        link(client, ["192.0.2.1/24"], server, ["192.0.2.2/24"])
        client.run("ip", "rule", "add", "pref", "10", "not", "fwmark", hex(MARK), "unreachable")
        env = dict(os.environ, PYTHONPATH=ROOT)
        (tmp_path / "map.json").write_text(json.dumps({"Regions": {"1": {
            "RegionID": 1, "RegionCode": "m", "Nodes": [{"Name": "1a", "RegionID": 1, "HostName": SERVER}]}}}))
        procs.append(server.popen(sys.executable, "-m", "http.server", "8080", "--bind", SERVER,
                                  "--directory", str(tmp_path), env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL))
        derper = server.popen(sys.executable, "-m", "derp", "-a", f"{SERVER}:8443", "--hostname", SERVER,
                              "--certmode", "selfsigned", "--certdir", str(tmp_path / "certs"), "--open-relay",
                              "--stun", "--stun-port", "3478", "--http-port", "-1", "--metrics-addr", "off",
                              env=env, cwd=ROOT, text=True)
        procs.append(derper)
        line = derper.stdout.readline()
        assert line.startswith("derper ready"), line + (derper.stderr.read() if derper.poll() is not None else "")
        for port in (8080,):
            deadline = time.monotonic() + 10
            while server.run("ss", "-ltn", f"sport = :{port}").stdout.count("LISTEN") == 0:
                assert time.monotonic() < deadline, f"nothing listens on {port}"
                time.sleep(0.05)
        netns.pushns(client.name)
        try:
            yield tmp_path
        finally:
            netns.popns()
    finally:
        lab.close()


def test_derp_client_and_map_fetch_are_marked(marked_lab):
    url = f"http://{SERVER}:8080/map.json"
    assert load_derpmap(url, fwmark=MARK).regions[1].region_code == "m"
    with pytest.raises(DerpUsageError, match="unreachable"):
        load_derpmap(url)
    # `wgc up --derpmap A --derpmap B`: every source is fetched with the mark, refreshes with the current one
    missing = f"http://{SERVER}:8080/missing.json"
    source = DerpMapSource([missing, url], cache_path=None, fwmark=MARK)
    assert source.load_initial().regions[1].region_code == "m" and source.current.source == url
    source.follow_fwmark(lambda: 0)
    assert asyncio.run(source.refresh()) is None and "unreachable" in source.last_error

    async def derp(mark: int) -> bool:
        key = os.urandom(32)
        client = DerpClient(key, targets_for_url(f"https://{SERVER}:8443/derp", insecure=True), fwmark=mark,
                            reconnect=False, connect_timeout=3)
        try:
            await client.start(wait=True, timeout=3)
            sock = client.stream.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == MARK
            client.set_fwmark(MARK + 1)                      # `wg set NAME fwmark`: the live socket follows
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == MARK + 1
            return True
        except ConnectError:
            return False
        finally:
            await client.close()
    assert asyncio.run(derp(MARK)) is True
    assert asyncio.run(derp(0)) is False


def test_netcheck_probe_sockets_are_marked(marked_lab):
    async def probes(mark: int):
        sock = _open_socket(4, NetcheckOptions(fwmark=mark))
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == mark
        sock.close()
        stun = await StunClient.open(fwmark=mark)
        try:
            stun_ok = (await asyncio.wait_for(stun.binding((SERVER, 3478)), 3)).mapped[0] == "192.0.2.1"
        except Exception:
            stun_ok = False
        finally:
            stun.close()
        try:
            tcp = await asyncio.wait_for(sockmark.connect_tcp(SERVER, 8443, mark), 3)
            tcp.close()
            tcp_ok = True
        except OSError:
            tcp_ok = False
        icmp = await icmp_latency(SERVER, b"mark", fwmark=mark)
        return stun_ok, tcp_ok, icmp is not None
    assert asyncio.run(probes(MARK)) == (True, True, True)
    assert asyncio.run(probes(0)) == (False, False, False)


def test_wireguard_udp_port_keeps_its_mark_across_rebinds(marked_lab):
    port = UdpPort(0, MARK)
    try:
        port.bind(0)                                         # `wg set NAME listen-port`: new sockets
        assert all(s.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == MARK for s in port.sockets())
        port.set_fwmark(5)
        port.bind(0)
        assert all(s.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == 5 for s in port.sockets())
    finally:
        port.close()
