"""The NAT-lab pieces the path tests rely on, checked on their own with real processes in namespaces:
`cut_udp`/`restore_udp` and `remap` on a client's NAT router (as seen by a UDP echo server in a region),
and the WebSocket-only proxy in front of `wgc derper` (Upgrade: DERP refused with 426, the DERP client
falls back to WebSocket through it and exchanges packets with a client connected directly)."""
from __future__ import annotations

import sys

import pytest

from tests.integration.pathlab import ROOT, WS_PORT, PathLab
from tests.support.prereq import require_binary, require_root

pytestmark = [pytest.mark.netns]

ECHO_SERVER = r"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('198.18.1.2', 5000))
t = socket.create_server(('198.18.1.2', 5001))
print('ready', flush=True)
import threading
def tcp():
    while True:
        c, a = t.accept(); c.sendall(repr(a[0]).encode()); c.close()
threading.Thread(target=tcp, daemon=True).start()
while True:
    d, a = s.recvfrom(100); s.sendto(f'{a[0]}:{a[1]}'.encode(), a)
"""

# What the client sees: its public UDP mapping as the server saw it (or "none"), and whether TCP works.
# (Two tries of 1.5 s each: a loaded machine's echo through the lab takes far longer than an idle one's.)
ECHO_CLIENT = r"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 41641)); s.settimeout(1.5)
udp = 'none'
for _ in range(2):
    s.sendto(b'x', ('198.18.1.2', 5000))
    try:
        udp = s.recvfrom(100)[0].decode(); break
    except OSError:
        pass
try:
    c = socket.create_connection(('198.18.1.2', 5001), timeout=3); tcp = c.recv(100).decode()
except OSError:
    tcp = 'none'
print(udp, tcp)
"""


def _probe(pl: PathLab, k: int) -> tuple[str, str]:
    udp, tcp = pl.lab.run(f"client{k}", sys.executable, "-c", ECHO_CLIENT, timeout=20).stdout.split()
    return udp, tcp


@pytest.mark.timeout(60)
def test_cut_restore_and_remap() -> None:
    require_root()
    require_binary("nft", "ip")
    with PathLab(["cone", "symmetric"], regions=1, relays=False) as pl:
        lab = pl.lab
        lab.popen("region1", sys.executable, "-c", ECHO_SERVER, text=True).stdout.readline()
        udp, tcp = _probe(pl, 1)
        assert udp == "198.19.1.2:41641" and tcp == "'198.19.1.2'", "a cone NAT keeps the port"
        lab.cut_udp(1)
        assert lab.udp_cut(1)
        assert _probe(pl, 1) == ("none", "'198.19.1.2'"), "UDP must be cut and TCP still pass"
        lab.restore_udp(1)
        assert not lab.udp_cut(1)
        assert _probe(pl, 1)[0] == "198.19.1.2:41641", "the old mapping is back after restore"
        assert lab.remap(1) == "198.19.1.3" == lab.public_address(1)
        assert _probe(pl, 1) == ("198.19.1.3:41641", "'198.19.1.3'"), "new address, port still kept (cone)"
        # symmetric: a new address and the port is still randomised
        udp2 = _probe(pl, 2)[0]
        assert udp2.startswith("198.19.2.2:") and udp2 != "198.19.2.2:41641"
        assert lab.remap(2) == "198.19.2.3"
        assert _probe(pl, 2)[0].startswith("198.19.2.3:")


DERP_PAIR = r"""
import asyncio, os, sys
from derp.aio.client import DerpClient
from derp.aio.targets import targets_for_url
from derp.keys import private_key_from_random, public_key_of

async def main(url_a, url_b):
    ka, kb = private_key_from_random(os.urandom(32)), private_key_from_random(os.urandom(32))
    a = DerpClient(ka, targets_for_url(url_a, insecure=True), reconnect=False)
    b = DerpClient(kb, targets_for_url(url_b, insecure=True), reconnect=False)
    await a.start(timeout=10); await b.start(timeout=10)
    a.send_packet(public_key_of(kb), b'through-the-proxy')
    got = await b.recv_packet(timeout=5)
    b.send_packet(public_key_of(ka), b'and-back')
    back = await a.recv_packet(timeout=5)
    print(got.data.decode(), back.data.decode(), 'websocket' if a.stream.websocket else 'upgrade',
          a.websocket_fallbacks, 'websocket' if b.stream.websocket else 'upgrade')
    await a.close(); await b.close()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""

RAW_UPGRADE = r"""
import socket, ssl, sys
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
s = ctx.wrap_socket(socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5))
s.sendall(b'GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n')
print(s.recv(200).split(b'\r\n')[0].decode())
"""

GARBAGE = r"""
import socket, ssl, sys
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
s = ctx.wrap_socket(socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5))
try:
    s.sendall(sys.argv[3].encode()); s.shutdown(socket.SHUT_WR); s.recv(100)
except OSError:
    pass
"""


@pytest.mark.timeout(60)
def test_websocket_only_proxy() -> None:
    require_root()
    require_binary("nft", "ip")
    with PathLab(["cone", "cone"], regions=1, ws_proxy=True) as pl:
        status = pl.lab.run("client1", sys.executable, "-c", RAW_UPGRADE, "198.18.1.3", str(WS_PORT),
                            timeout=20).stdout.strip()
        assert status == "HTTP/1.1 426 Upgrade Required"
        res = pl.lab.run("client1", sys.executable, "-c", DERP_PAIR, f"https://198.18.1.3:{WS_PORT}/derp",
                         "https://198.18.1.2/derp", timeout=30, check=False, env=pl.env, cwd=ROOT)
        assert res.returncode == 0, res.stderr[-2000:]
        # a (through the proxy) fell back to WebSocket after one refusal; b (direct) upgraded
        assert res.stdout.split() == ["through-the-proxy", "and-back", "websocket", "1", "upgrade"]
        # garbage (no request head, an oversized head) is counted and the proxy keeps serving
        for junk in ("x" * 100, "GET / HTTP/1.1\r\nX: " + "y" * 20000):
            pl.lab.run("client1", sys.executable, "-c", GARBAGE, "198.18.1.3", str(WS_PORT), junk, timeout=20)
        counts = pl.proxy_counts(1)
        assert counts == {"refused": 2, "passed": 1, "bad": 2}, counts
        res = pl.lab.run("client1", sys.executable, "-c", DERP_PAIR, f"https://198.18.1.3:{WS_PORT}/derp",
                         "https://198.18.1.2/derp", timeout=30, check=False, env=pl.env, cwd=ROOT)
        assert res.returncode == 0 and res.stdout.split()[2] == "websocket", res.stderr[-2000:]


def test_remap_refuses_a_client_without_nat() -> None:
    from tools.natlab.lab import ClientSpec, LabError, NatLab
    lab = NatLab.__new__(NatLab)
    lab.clients = [ClientSpec("none")]
    with pytest.raises(LabError, match="no NAT router"):
        lab.router(1)
