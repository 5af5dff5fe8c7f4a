"""Issue 5 in the NAT lab where no direct path exists: two peers behind symmetric NATs and one behind a
router that drops all UDP (its partner, client 4, is behind a cone NAT); two regions (10 ms and 40 ms),
each with `wgc derper`, region 1 also behind a WebSocket-only proxy. Relayed traffic and `status --why`;
relayed over TCP and over WebSocket; the relay never sees the tunnel's plaintext (tcpdump on its
interface); a 50 MiB transfer across a relay restart; home region failover. One lab for the module; the
symmetric pair is shared by the tests that only need traffic relayed (failover, which stops a region for
good, runs last)."""
from __future__ import annotations

import os
import re
import signal
import sys
import time

import pytest

from tests.integration.pathlab import PathLab
from tests.integration.peers import start_transfer
from tests.support.capture import check_no_plaintext, send_markers, start_tcpdump, wait_captured
from tests.support.patterns import DURATION
from tests.support.prereq import require_binary, require_root
from tools.natlab.lab import RegionSpec

pytestmark = [pytest.mark.netns]
SIZE = 50 * 1024 * 1024
RATE = 6 * 1024 * 1024


@pytest.fixture(scope="module")
def pl():
    require_root()
    require_binary("nft", "ip", "ping", "tcpdump")
    with PathLab(["symmetric", "symmetric", "udp-blocked", "cone"], regions=[RegionSpec(10), RegionSpec(40)],
                 ws_proxy=True) as lab:
        yield lab


@pytest.fixture(scope="module")
def pair(pl, request):
    """Peers in client1 and client2 (symmetric NATs), up for the whole module."""
    failed_before = request.session.testsfailed
    a, b = pl.start_peers((1, 2))
    yield a, b
    if request.session.testsfailed > failed_before:
        print(pl.report())


@pytest.mark.timeout(60)
def test_symmetric_relayed_and_why(pl, pair, on_failure) -> None:
    a, b = pair
    ok, loss = pl.ping_tunnel(a, b, count=10, interval=0.1, deadline=5)
    assert ok and loss == 0, f"relayed traffic must flow without loss ({loss:.0%})"
    time.sleep(1.5)   # discovery tried (and failed) by now
    for x, y in ((a, b), (b, a)):
        st = pl.status(x)
        assert st["netcheck"]["mapping_varies_by_dest_ip"] is True, st["netcheck"]
        entry = pl.peer_status(x, y)
        assert entry["path"] == "relay" and entry["relay"]["code"] == "r1" and entry["direct"] is None, entry
    why = pl.wgc(a, "status", a.name, "--why", "peer2")
    assert why.returncode == 0
    assert "per destination" in why.stdout and "hard NAT" in why.stdout, why.stdout
    res = pl.wgc_ping(a, "peer2", count=2, interval=0.3)
    assert res.returncode == 0 and all(re.fullmatch(rf"pong from peer2 \(100\.90\.0\.2\) via DERP\(r1\) in {DURATION}", line)
                                       for line in res.stdout.splitlines()), res.stdout
    res = pl.wgc_ping(a, "peer2", count=2, interval=0.3, until_direct=True)
    assert res.returncode == 1, "no direct path exists: --until-direct must fail"
    assert pl.ping_tunnel(a, b, count=5, interval=0.1, deadline=5) == (True, 0.0), "still working"
    print(f"why: {why.stdout.strip()}")


@pytest.mark.timeout(60)
def test_udp_blocked_relayed_over_tcp_then_websocket(pl, on_failure) -> None:
    """Client 3's router drops all UDP: relayed over DERP (TCP, Upgrade). Then the same peer with the
    DERP map that reaches region 1 only through the WebSocket-only proxy: relayed over WebSocket."""
    for derpmap, transport in ((pl.derpmap_file, "upgrade"), (pl.ws_derpmap_file, "websocket")):
        c, a = pl.start_peers((3, 4), derpmap_files={3: derpmap}, region="r1")
        try:
            ok, loss = pl.ping_tunnel(c, a, count=5, interval=0.1, deadline=5)
            assert ok and loss == 0, f"relayed over {transport}: loss {loss:.0%}"
            st = pl.status(c)
            assert st["netcheck"]["udp"] is False, st["netcheck"]
            entry = pl.peer_status(c, a)
            assert entry["path"] == "relay" and "UDP is blocked" in entry["why"], entry
            regions = {r["code"]: r for r in st["regions"]}
            assert regions["r1"]["connected"] and regions["r1"]["transport"] == transport, regions
        finally:
            pl.stop_peer(c)
            pl.stop_peer(a)
    counts = pl.proxy_counts(1)
    assert counts["refused"] >= 1 and counts["passed"] >= 1, counts


@pytest.mark.timeout(60)
def test_relay_never_sees_the_plaintext(pl, pair, on_failure, tmp_path) -> None:
    """tcpdump on region 1's interface while 20 datagrams holding a marker cross the (relayed) tunnel:
    all arrive, the capture holds the relayed TLS bytes of both peers, a control string sent in clear to
    the relay's address is in the capture, and the marker is not."""
    a, b = pair
    assert pl.peer_status(a, b)["path"] == "relay"
    marker = "TUNNEL-MARKER-" + os.urandom(6).hex()
    control = "CAPTURE-CONTROL-" + os.urandom(6).hex()
    iface = pl.lab.interface("region1", "198.18.1.2")
    pcap = str(tmp_path / "relay.pcap")
    dump = start_tcpdump(pl.lab.ns("region1"), pcap, "-i", iface, "-n", "-s", "0", "tcp", text=True)
    try:
        got = send_markers(a.ns, b.ns, b.ip, marker)
        # the positive control: bytes in clear from client 1 to the relay's address (port 443 too)
        a.ns.run(sys.executable, "-c", "import socket,sys; c=socket.create_connection(('198.18.1.2',443),3);"
                 " c.sendall(sys.argv[1].encode()); c.close()", control, timeout=10)
        # tcpdump drops what the kernel still buffers when it is stopped: wait until the control (sent
        # last, so everything before it was written too) is in the file
        wait_captured(pcap, control.encode())
    finally:
        dump.send_signal(signal.SIGINT)
        dump.communicate(timeout=10)
    assert got == 20, f"only {got}/20 marker datagrams crossed the tunnel"
    assert pl.peer_status(a, b)["path"] == "relay", "the marker must have been relayed"
    per_src = check_no_plaintext(pcap, "tcp port 443", marker, control)
    print(f"capture: {os.path.getsize(pcap)} bytes, TLS payload bytes per client network {per_src}")


@pytest.mark.timeout(120)
def test_transfer_across_relay_restart(pl, pair, on_failure) -> None:
    """50 MiB relayed through the peers' relay region; mid-transfer its derper is restarted twice: once
    with SIGTERM (clients get a Restarting frame) and once with SIGKILL (connections just drop), each
    time started again at once (a new process: ~1.5 s down). Every byte arrives (sha256)."""
    a, b = pair
    entry = pl.peer_status(a, b)
    assert entry["path"] == "relay"
    region = entry["relay"]["id"] - 900
    xfer = start_transfer(a.ns, b.ns, b.ip, SIZE, rate=RATE, port=5202, timeout=100)
    downs = []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        time.sleep(2.0)
        t0 = time.monotonic()
        pl.stop_derper(region, sig)
        pl.start_derper(region)
        downs.append(round(time.monotonic() - t0, 1))
    mid_transfer = xfer.sender.poll() is None
    (sent, h1), (got, h2) = xfer.result()
    assert mid_transfer, "the restarts must happen while the transfer runs"
    assert sent == got == SIZE and h1 == h2
    assert pl.ping_tunnel(a, b, count=3, deadline=8)[0]
    print(f"derper r{region} restarted (SIGTERM, SIGKILL), down {downs} s, mid-transfer; 50 MiB intact")


@pytest.mark.timeout(60)
def test_home_region_failover(pl, pair, on_failure) -> None:
    """The home region of peer 1 goes down for good (derper killed): within 5 s its home (and peer 2's,
    when it was the same) moves to the other region, and relayed pings between them continue. Runs last:
    the region stays down. (Homes are read first: the relay-restart test may already have moved one.)"""
    a, b = pair
    ok, _ = pl.ping_tunnel(a, b, count=3, deadline=8)
    assert ok
    homes = {p.name: pl.status(p)["home_region"]["code"] for p in (a, b)}
    dead = homes[a.name]
    other = "r2" if dead == "r1" else "r1"
    pinger = a.ns.popen("ping", "-n", "-q", "-i", "0.2", b.ip, text=True)
    time.sleep(1)
    t0 = time.monotonic()
    pl.stop_derper(int(dead[1:]), signal.SIGKILL)
    moving = [p for p in (a, b) if homes[p.name] == dead]
    moved: dict[str, float] = {}
    while time.monotonic() - t0 < 8 and len(moved) < len(moving):
        for p in moving:
            if p.name not in moved and (pl.status_raw(p)["home_region"] or {}).get("code") == other:
                moved[p.name] = time.monotonic() - t0
        time.sleep(0.1)
    time.sleep(1)
    pinger.send_signal(signal.SIGINT)
    out, _ = pinger.communicate(timeout=10)
    assert len(moved) == len(moving) and max(moved.values()) < 5.0, f"home moved after {moved} (limit 5 s)"
    ok, loss = pl.ping_tunnel(a, b, count=5, interval=0.1, deadline=5)
    assert ok and loss == 0, "traffic continues over the other region"
    assert pl.peer_status(a, b)["relay"]["code"] == other
    summary = [line for line in out.splitlines() if "packet loss" in line]
    print(f"homes {homes}; {dead} killed; home -> {other} after {moved}; pings (every 0.2 s) across: {summary}")
