"""Issue 5 in the NAT lab, two peers behind cone NATs (one region, 10 ms): relayed at once then direct;
a 50 MiB transfer across the relay-to-direct upgrade and across a direct-to-relay fallback; roaming to a
new NAT mapping. Real `wgc up --derpmap` processes, `wgc derper`, `wgc status`/`wgc ping`; one lab for
the module, fresh interfaces per test."""
from __future__ import annotations

import re
import signal
import time

import pytest

from tests.integration.pathlab import PathLab, Timeline
from tests.integration.peers import start_transfer
from tests.support.patterns import DURATION, seconds
from tests.support.prereq import require_binary, require_root
from tools.natlab.lab import RegionSpec

pytestmark = [pytest.mark.netns]
SIZE = 50 * 1024 * 1024
RATE = 6 * 1024 * 1024          # bytes/s: the transfer spans ~8 s, so the path changes mid-transfer


@pytest.fixture(scope="module")
def pl():
    require_root()
    require_binary("nft", "ip", "ping")
    with PathLab(["cone", "cone"], regions=[RegionSpec(10)], netcheck_interval=2) as lab:
        yield lab


@pytest.fixture
def peers(pl, request):
    """Fresh peers for one test; their logs are printed when the test fails. UDP is restored after."""
    started: list = []
    failed_before = request.session.testsfailed
    yield started
    if request.session.testsfailed > failed_before:
        print(pl.report())
    for p in started:
        pl.stop_peer(p)
    for k in (1, 2):
        pl.lab.restore_udp(k)


def _first_ping_sent(line: str, arrived: float, timeout: float) -> float:
    """When `wgc ping` sent the ping its first output line reports (a pong after its round trip, or a
    timeout line `timeout` seconds later)."""
    return arrived - (seconds(line.rsplit(" in ", 1)[1]) if line.startswith("pong ") else timeout)


def _start(pl: PathLab, peers: list):
    a, b = pl.start_peers()
    peers += [a, b]
    return a, b


@pytest.mark.timeout(60)
def test_relayed_at_once_then_direct(pl, peers) -> None:
    """UDP between the NATs is cut while the peers start (as behind a captive portal): the tunnel works
    at once over DERP and both statuses say relay; when UDP opens, `wgc ping --until-direct` goes from
    `via DERP(r1)` to `via 198.19.2.2:41641` (within 5 s of the retry that carries the new address)."""
    tl = Timeline()
    pl.lab.cut_udp(2)
    a, b = _start(pl, peers)
    tl.note("peers up")
    ok, loss = pl.ping_tunnel(a, b, count=3, deadline=5)
    assert ok and loss == 0, f"the tunnel must work at once over DERP (loss {loss:.0%})"
    for x, y in ((a, b), (b, a)):
        entry = pl.peer_status(x, y)
        assert entry["path"] == "relay" and entry["relay"]["code"] == "r1", entry
        assert entry["rx_bytes"] > 0 and entry["last_handshake"], entry
    assert pl.status(a)["home_region"]["code"] == "r1"
    res = pl.wgc_ping(a, "peer2", count=2)
    assert res.returncode == 0 and re.fullmatch(rf"(pong from peer2 \(100\.90\.0\.2\) via DERP\(r1\) in {DURATION}\n){{2}}",
                                                res.stdout), res.stdout + res.stderr
    pl.lab.restore_udp(2)
    t0 = time.monotonic()
    res = pl.wgc_ping(a, "peer2", count=24, until_direct=True, interval=0.5)
    took = (res.line_times[-1] if res.line_times else time.monotonic()) - t0   # until the direct pong came
    tl.note(f"until-direct exit {res.returncode} after {took:.1f}s:\n{res.stdout}")
    lines = res.stdout.splitlines()
    assert res.returncode == 0, str(tl)
    assert lines[-1].startswith("pong from peer2 (100.90.0.2) via 198.19.2.2:41641 in "), str(tl)
    # The peer behind the cut router learns its public address at its next netcheck (2 s here) and
    # announces it at once in a CallMeMaybe: 2.8-4 s measured (wgc ping's start included).
    assert took < 8.0, f"direct only after {took:.1f} s: {tl}"
    entry = pl.wait_path(a, b, ("direct",), 3)
    assert entry["path"] == "direct" and entry["direct"] == "198.19.2.2:41641", entry
    print(f"relay -> direct {took:.1f} s after UDP opened; until-direct output:\n{res.stdout}")


@pytest.mark.timeout(60)
def test_direct_within_5s_of_start(pl, peers) -> None:
    """No obstacle: once the second peer is up, `wgc ping --until-direct` (no other traffic: the ping
    itself asks for hole punching, as `tailscale ping` does) reports a direct pong within 5 s."""
    a = pl.peer(1)
    b = pl.peer(2)
    a.know(b)
    b.know(a)
    peers += [a, b]
    a.start()
    assert pl.peer_status(a, b)["path"] == "relay", "before the peer exists, DERP is the only path"
    t_start = time.monotonic()
    b.start()
    pl.wait_home(b)
    t0 = time.monotonic()     # b is up (`wgc up` returned) and on its relay
    res = pl.wgc_ping(a, "peer2", count=10, until_direct=True, interval=0.5)
    lines = res.stdout.splitlines()
    assert res.returncode == 0 and lines and "via 198.19.2.2:41641" in lines[-1], res.stdout + res.stderr
    # Timed from wgc's first ping (it asks for hole punching), not from starting the CLI, whose
    # interpreter start-up is no part of the path: the first line came one round trip after that ping.
    first = _first_ping_sent(lines[0], res.line_times[0], timeout=2.0)
    took = res.line_times[-1] - first
    assert took < 5.0, f"direct {took:.1f} s after the first ping ({first - t0:.1f} s after the peer was up)"
    assert pl.ping_tunnel(a, b, count=3, interval=0.2, deadline=3) == (True, 0.0)
    # b answered a's pings; its own path turns direct once it sends (the tunnel replies just did)
    assert pl.wait_path(b, a, ("direct",), 5)["direct"] == "198.19.1.2:41641"
    print(f"first ping -> direct pong: {took:.1f} s (first ping {first - t0:.1f} s after the peer was up, "
          f"{t0 - t_start:.1f} s to start it); wgc ping output:\n"
          f"{res.stdout}")


@pytest.mark.timeout(90)
def test_transfer_across_upgrade(pl, peers) -> None:
    """50 MiB sent while relayed (UDP cut); UDP opens mid-transfer and the path goes direct; every byte
    arrives (sha256)."""
    pl.lab.cut_udp(1)
    a, b = _start(pl, peers)
    assert pl.peer_status(a, b)["path"] == "relay"
    xfer = start_transfer(a.ns, b.ns, b.ip, SIZE, rate=RATE, timeout=60)
    time.sleep(2.0)
    pl.lab.restore_udp(1)
    entry = pl.wait_path(a, b, ("direct",), 8)
    mid_transfer = xfer.sender.poll() is None
    (sent, h1), (got, h2) = xfer.result()
    assert entry["path"] == "direct", entry
    assert mid_transfer, "the upgrade must happen while the transfer runs"
    assert sent == got == SIZE and h1 == h2


@pytest.mark.timeout(120)
def test_transfer_across_fallback(pl, peers) -> None:
    """50 MiB over the direct path; UDP is cut on a NAT router mid-transfer; the path falls back to DERP
    and every byte arrives (sha256)."""
    a, b = _start(pl, peers)
    assert pl.wait_direct(a, b)["path"] == "direct"
    xfer = start_transfer(a.ns, b.ns, b.ip, SIZE, rate=RATE, timeout=90)
    time.sleep(2.0)
    t_cut = time.monotonic()
    pl.lab.cut_udp(2)
    entry = pl.wait_path(a, b, ("relay",), 15)
    fell_back = time.monotonic() - t_cut
    mid_transfer = xfer.sender.poll() is None
    (sent, h1), (got, h2) = xfer.result()
    assert entry["path"] == "relay", entry
    assert mid_transfer, "the fallback must happen while the transfer runs"
    assert sent == got == SIZE and h1 == h2
    print(f"UDP cut -> relay after {fell_back:.1f} s; transfer intact")


@pytest.mark.timeout(90)
def test_roaming_to_a_new_mapping(pl, peers) -> None:
    """Peer 1's NAT takes a new public address (a new mapping): the direct path comes back on the new
    address and pings through the tunnel keep working (some loss while the old path lapses)."""
    a, b = _start(pl, peers)
    assert pl.wait_direct(b, a)["direct"] == "198.19.1.2:41641"
    pinger = b.ns.popen("ping", "-n", "-q", "-i", "0.2", "-w", "50", a.ip, text=True)
    time.sleep(1)
    t0 = time.monotonic()
    new = pl.lab.remap(1)
    deadline = time.monotonic() + 40     # 5.2-5.7 s idle; 14 s seen with both cores loaded
    entry = {}
    while time.monotonic() < deadline:
        entry = pl.peer_status(b, a, fast=True)
        if entry["path"] == "direct" and entry["direct"] == f"{new}:41641":
            break
        time.sleep(0.3)
    took = time.monotonic() - t0
    assert entry.get("direct") == f"{new}:41641", entry
    assert pl.ping_tunnel(b, a, count=3, deadline=5)[0]
    pinger.send_signal(signal.SIGINT)   # ping prints its summary on SIGINT
    out, _ = pinger.communicate(timeout=10)
    summary = [line for line in out.splitlines() if "packet loss" in line]
    assert summary, out
    received = int(summary[0].split(",")[1].split()[0])
    assert received > 0, summary
    print(f"remap -> direct on {new} after {took:.1f} s; pings (every 0.2 s) during: {summary[0]}")
