"""Issue 10 §4-§5 in the NAT lab: a DERP map that changes under a running pair, and client metrics.

Two regions (901 "r1" 40 ms, 902 "r2" 10 ms), each with `wgc derper`. Peers a and b sit behind symmetric
NATs (always relayed); a reloads its map file every second, b only on SIGHUP.
- a region added (the map grows from r1 to r1+r2): both measure it and make it home (it is nearer);
- a region removed (r1 leaves while a ping and a TCP transfer run): its connections close, the peers move
  to r2, the ping keeps answering and the transfer completes intact (the WireGuard session is kept);
- every source down at start: a restarts with two dead sources and comes up from its cached map;
- a cone pair (c, d) with `--metrics-addr`: scraped over loopback, the metrics show the direct path and
  the relay -> direct upgrade counted.
"""
from __future__ import annotations

import os
import re
import signal
import time

import pytest

from tests.integration.pathlab import PathLab, Timeline
from tests.integration.peers import start_transfer
from tests.support.prereq import require_binary, require_root
from tools.natlab.lab import RegionSpec

pytestmark = [pytest.mark.netns]
METRICS_PORT = 9586


@pytest.fixture(scope="module")
def pl():
    require_root()
    require_binary("nft", "ip", "ping", "curl")
    with PathLab(["symmetric", "symmetric", "cone", "cone"], regions=[RegionSpec(40), RegionSpec(10)]) as lab:
        yield lab


def home_id(pl: PathLab, p) -> int | None:
    home = pl.status_raw(p)["home_region"]
    return home["id"] if home else None


def wait_until(what: str, fn, timeout: float, timeline: Timeline):
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            timeline.note(what)
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}\n{timeline}")
        time.sleep(0.1)


def connected_regions(pl: PathLab, p) -> set[int]:
    return {r["id"] for r in pl.status_raw(p)["regions"] if r["connected"]}


@pytest.mark.timeout(240)
def test_map_changes_under_a_running_pair_and_start_from_cache(pl, on_failure) -> None:
    t = Timeline()
    live = pl.write_derpmap("live.json", only=(1,))
    a, b = pl.peer(1, derpmap_file=live), pl.peer(2, derpmap_file=live)
    a.extra_args = ["--derpmap-refresh", "1s"]
    b.extra_args = ["--derpmap-refresh", "0"]          # SIGHUP only
    a.know(b)
    b.know(a)
    a.start()
    b.start()
    for p in (a, b):
        pl.wait_home(p)
    assert pl.ping_tunnel(a, b, count=3, deadline=10)[0], "relayed through r1"
    assert home_id(pl, a) == home_id(pl, b) == 901
    t.note("up, relayed through r1 (901)")

    # a region is added: a picks it up by itself, b on SIGHUP; both measure it and make it home
    pl.write_derpmap("live.json", only=(1, 2))
    os.killpg(b.proc.pid, signal.SIGHUP)
    t.note("map: r1 + r2; SIGHUP to b")
    for p in (a, b):
        wait_until(f"{p.name}: home r2 (902), connected", lambda p=p: home_id(pl, p) == 902
                   and 902 in connected_regions(pl, p), 20, t)
    assert pl.ping_tunnel(a, b, count=3, deadline=10)[0]

    # a region is removed while traffic runs: the peers move to r2 without the tunnel dropping
    xfer = start_transfer(a.ns, b.ns, b.ip, 8 * 1024 * 1024, rate=1024 * 1024, port=5301, timeout=90)
    pinger = a.ns.popen("ping", "-n", "-i", "0.2", "-c", "60", b.ip, text=True)
    time.sleep(2.0)
    pl.write_derpmap("live.json", only=(2,))
    os.killpg(b.proc.pid, signal.SIGHUP)
    t.note("map: r2 only; SIGHUP to b")
    for p in (a, b):
        wait_until(f"{p.name}: r1 closed", lambda p=p: 901 not in {r["id"] for r in pl.status_raw(p)["regions"]}, 10, t)
    for x, y in ((a, b), (b, a)):
        entry = pl.peer_status(x, y, fast=True)
        assert entry["path"] == "relay" and entry["relay"]["id"] == 902, entry
    out, _ = pinger.communicate(timeout=30)
    (sent, h1), (got, h2) = xfer.result()
    t.note(f"transfer done: {got} bytes")
    assert sent == got == 8 * 1024 * 1024 and h1 == h2, "the TCP transfer completes intact"
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    lost = int(m.group(1)) - int(m.group(2))
    print(f"ping across the removal: {m.group(0)}; {t}")
    assert lost <= 10, f"the ping keeps answering ({m.group(0)})"
    log_a = a.log_tail(200000)
    assert "DERP map from" in log_a and "removed 901 (r1)" in log_a
    assert "got SIGHUP: reloading the DERP map" in b.log_tail(200000)

    # every source down at start: a comes up from the map it cached (r2 only)
    a.stop_process()
    a.derpmap_file = "http://127.0.0.1:1/derpmap/default"
    a.extra_args = ["--derpmap", os.path.join(pl.tmp, "missing.json")]
    a.start()
    pl.wait_home(a)
    assert home_id(pl, a) == 902
    assert pl.ping_tunnel(a, b, count=3, deadline=15)[0], "up from the cached map"
    assert "starting from the cached map" in a.log_tail(200000)
    assert os.path.exists(os.path.join(pl.state_dir, f"{a.name}.derpmap.json"))


def scrape(pl: PathLab, p) -> str:
    res = p.ns.run("curl", "-s", "--max-time", "5", f"http://127.0.0.1:{METRICS_PORT}/metrics", check=False,
                   timeout=15)
    assert res.returncode == 0, res.stderr
    return res.stdout


def sample(text: str, metric: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(metric + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.timeout(120)
def test_metrics_show_the_direct_path_and_the_upgrade(pl, on_failure) -> None:
    c, d = pl.peer(3), pl.peer(4)
    for p in (c, d):
        p.extra_args = ["--metrics-addr", str(METRICS_PORT)]
    c.know(d)
    d.know(c)
    c.start()
    d.start()
    for p in (c, d):
        pl.wait_home(p)
    entry = pl.wait_direct(c, d, timeout=15)
    assert entry["path"] == "direct", entry
    text = scrape(pl, c)
    peer = dict(name="peer4", interface=c.name)
    assert sample(text, "wgc_peer_path", path="direct", **peer) == 1, text
    assert sample(text, "wgc_peer_upgrades_total", **peer) >= 1
    assert sample(text, "wgc_peer_rx_bytes_total", **peer) > 0
    assert sample(text, "wgc_peer_handshake_age_seconds", **peer) is not None
    assert sample(text, "wgc_derp_region_connected", home="true", interface=c.name) == 1
    assert sample(text, "wgc_derpmap_regions", interface=c.name) == 2
    # loopback only: the metrics port is not reachable on the client's own LAN address
    res = c.ns.run("curl", "-s", "--max-time", "3", f"http://{pl.lab.client_ip(3)}:{METRICS_PORT}/metrics",
                   check=False, timeout=10)
    assert res.returncode != 0
