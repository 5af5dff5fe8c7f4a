"""Packet loss on a NAT-lab link (the delayer): 0 % loses nothing; at 10 % about a tenth of the datagrams
sent to a region are dropped (generous bounds), the delayer's counters say so, the change and its undo
work while the lab runs, and the command line sets it. UDP to one region cut at a client's router
(`cut_udp(k, region=i)`): UDP to that region is dropped, UDP to another region and TCP to it pass."""
from __future__ import annotations

import sys

import pytest

from tests.natprobe.test_natlab import natlab_cli
from tests.support.prereq import require_binary, require_root

pytestmark = [pytest.mark.netns, pytest.mark.timeout(90)]
N = 2000

RECEIVER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind(('198.18.1.2', 9000)); s.settimeout(3)
print('ready', flush=True)
seen = set()
try:
    while True:
        d, _ = s.recvfrom(64)
        seen.add(d)
except OSError:
    pass
print(len(seen), flush=True)
"""

SENDER = ("import socket,sys,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
          "for i in range(int(sys.argv[1])):\n    s.sendto(b'%d' % i, ('198.18.1.2', 9000))\n"
          "    time.sleep(0.0005) if i % 20 == 0 else None\n")


def _send(lab, n: int) -> int:
    """n distinct datagrams from client1 to region 1; how many distinct ones arrived."""
    rx = lab.popen("region1", sys.executable, "-c", RECEIVER, text=True)
    assert rx.stdout.readline().strip() == "ready"
    lab.run("client1", sys.executable, "-c", SENDER, str(n), timeout=60)
    return int(rx.communicate(timeout=30)[0].strip())


def test_loss_rate_counters_and_zero():
    require_root()
    require_binary("nft", "ping")
    from tools.natlab.lab import ClientSpec, LabError, NatLab, RegionSpec

    with NatLab([RegionSpec(2)], [ClientSpec("none")], seed=5) as lab:
        before = lab.link_counts(1)
        assert before["dropped"] == 0
        assert _send(lab, N) == N, "0 % must lose nothing"
        lab.set_loss(1, 10)
        assert lab.regions[0].loss_pct == 10 and lab.regions[0].delay_ms == 2
        counted = lab.link_counts(1)
        got = _send(lab, N)
        after = lab.link_counts(1)
        dropped = after["dropped"] - counted["dropped"]
        assert 0.05 * N <= N - got <= 0.17 * N, f"{N - got} of {N} lost at 10 %"
        assert N - got <= dropped <= N - got + 20, (dropped, got, after)   # + a few other packets on the link
        assert after["offered"] - counted["offered"] >= N
        lab.set_loss(1, 0)
        assert _send(lab, N) == N, "back at 0 %: nothing lost"
        with pytest.raises(LabError, match="loss must be 0-100"):
            lab.set_loss(1, 120)
        with pytest.raises(LabError, match="no region 2"):
            lab.set_loss(2, 1)
    with pytest.raises(LabError, match="loss must be 0-100"):
        RegionSpec(loss_pct=-1)


def test_command_line_loss_and_counts(tmp_path):
    require_root()
    require_binary("nft", "ping")
    import os
    natlab = natlab_cli(tmp_path)
    name = f"l{os.getpid() % 100000}"
    try:
        natlab("up", "--name", name, "--region", "4", "--client", "none", "--client", "cone")
        bad = natlab("cut", name, "1", check=False)
        assert bad.returncode == 2 and "has no NAT router" in bad.stderr and "Traceback" not in bad.stderr
        bad = natlab("cut", name, "2", "--region", "3", check=False)
        assert bad.returncode == 2 and "no region 3" in bad.stderr
        natlab("cut", name, "2", "--region", "1")
        assert "natlab_cut" in natlab("run", name, "nat2", "--", "nft", "list", "tables").stdout
        natlab("restore", name, "2")
        assert "natlab_cut" not in natlab("run", name, "nat2", "--", "nft", "list", "tables").stdout
        natlab("loss", name, "1", "100")
        assert "+4 ms RTT, 100 % loss" in natlab("status", name).stdout
        lost = natlab("run", name, "client1", "--", "ping", "-c2", "-i0.2", "-W1", "198.18.1.2", check=False)
        assert lost.returncode != 0 and "100% packet loss" in lost.stdout
        counts = dict(w.split("=") for w in natlab("counts", name, "1").stdout.split())
        assert int(counts["dropped"]) >= 2 and set(counts) == {"offered", "dropped", "sent", "queued"}
        natlab("loss", name, "1", "0")
        assert "1 received" in natlab("run", name, "client1", "--", "ping", "-c1", "-W2", "198.18.1.2").stdout
        bad = natlab("loss", name, "1", "150", check=False)
        assert bad.returncode == 2 and "loss must be 0-100" in bad.stderr and "Traceback" not in bad.stderr
    finally:
        natlab("down", name, check=False)


PROBE = r"""
import socket, sys
out = []
for host in sys.argv[1:]:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(1)
    u.sendto(b'x', (host, 7001))
    try:
        u.recv(10); out.append('udp')
    except OSError:
        out.append('-')
    try:
        socket.create_connection((host, 7002), timeout=3).close(); out.append('tcp')
    except OSError:
        out.append('-')
print(' '.join(out))
"""

ECHO = r"""
import socket, sys, threading
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind((sys.argv[1], 7001))
t = socket.create_server((sys.argv[1], 7002))
threading.Thread(target=lambda: [t.accept()[0].close() for _ in iter(int, 1)], daemon=True).start()
print('up', flush=True)
while True:
    d, a = u.recvfrom(10); u.sendto(d, a)
"""


def test_cut_udp_to_one_region():
    require_root()
    require_binary("nft")
    from tools.natlab.lab import ClientSpec, NatLab, RegionSpec

    with NatLab([RegionSpec(), RegionSpec()], [ClientSpec("symmetric")]) as lab:
        for i in (1, 2):
            echo = lab.popen(f"region{i}", sys.executable, "-c", ECHO, lab.region_ip(i), text=True)
            assert echo.stdout.readline() == "up\n"

        def probe() -> str:
            return lab.run("client1", sys.executable, "-c", PROBE, lab.region_ip(1), lab.region_ip(2)).stdout.strip()
        assert probe() == "udp tcp udp tcp"
        lab.cut_udp(1, region=1)
        assert lab.udp_cut(1) and probe() == "- tcp udp tcp"
        lab.restore_udp(1)
        assert probe() == "udp tcp udp tcp"
