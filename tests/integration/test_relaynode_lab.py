"""Issue 11 in the NAT lab: a wgc relay node on the public side (client 3, no NAT) and spokes that can't
punch (clients 1 and 2, symmetric NATs), two DERP regions. 50 MiB through the relay node both ways,
sha256-intact, counted by the relay node, none of it through DERP; the relay node killed mid-transfer (the
transfer completes over DERP) and back (used again); a designated relayed host (clients 4 and 5, cone NATs,
which could go direct) never goes direct until the designation is removed (SIGHUP reload); a stock
wireguard-go spoke (client 6, symmetric NAT) configured hub-and-spoke reaches a wgc spoke through the relay
node."""
from __future__ import annotations

import re
import time

import pytest

from tests.integration.pathlab import PathLab, Timeline
from tests.integration.peers import WgGoPeer, genkey, ping, start_transfer, transfer
from tests.integration.relaylab import RELAY_PORT, RelayLabPeer, derp_bytes, forwarded, wait_for
from tests.support.prereq import require_binary, require_root
from tools.natlab.lab import RegionSpec

pytestmark = [pytest.mark.netns]
SIZE = 50 * 1024 * 1024
WG_GO_IP = "100.90.0.9"


@pytest.fixture(scope="module")
def pl():
    require_root()
    require_binary("nft", "ip", "ping", "wireguard-go", "wg")
    # two regions: netcheck then sees that the symmetric NATs map ports per destination (the reason shown)
    with PathLab(["symmetric", "symmetric", "none", "cone", "cone", "symmetric"],
                 regions=[RegionSpec(10), RegionSpec(40)]) as lab:
        yield lab


@pytest.fixture(scope="module")
def hub(pl, request):
    """Relay node r (client 3) with spokes a, b (symmetric) and c, d (cone), and a wireguard-go spoke w
    (its key only: started by its test). Every spoke lists r as RelayNode and the other spokes; c pins d
    to the relay node (a designated relayed host); a lists w pinned to the relay node (w can't punch)."""
    failed_before = request.session.testsfailed
    w_key = genkey()
    from tests.integration.peers import pubkey
    r = RelayLabPeer(pl, 3, relay=True)
    spokes = {k: RelayLabPeer(pl, k) for k in (1, 2, 4, 5)}
    for s in spokes.values():
        r.know(s)
        s.know_relay(r)
    r.know_key("wggo", pubkey(w_key), f"{WG_GO_IP}/32", ("Path = direct",))
    for k, s in spokes.items():
        for j, t in spokes.items():
            if j != k:
                s.know(t, extra=["Path = relay-node"] if (k, j) == (4, 5) else [])
    spokes[1].know_key("wggo", pubkey(w_key), f"{WG_GO_IP}/32", ("Path = relay-node",))
    pl.peers.extend([r, *spokes.values()])
    r.start()
    for s in spokes.values():
        s.start()
    for p in (r, *spokes.values()):
        pl.wait_home(p)
    yield r, spokes, w_key
    if request.session.testsfailed > failed_before:
        print(pl.report())


def path_of(pl, p, other) -> str:
    return pl.peer_status(p, other, fast=True)["path"]


def wait_relay_node(pl, pairs, timeout: float = 20.0) -> bool:
    """Traffic through the tunnel, until each (p, other) is on the relay node and the relay node's own
    paths to them are direct (else it would forward over DERP)."""
    r = pairs[0][2]

    def ready():
        for p, other, _ in pairs:
            pl.ping_tunnel(p, other, count=1, deadline=2)
            if path_of(pl, p, other) != "relay-node" or path_of(pl, r, p) != "direct":
                return False
        return True
    return wait_for(ready, timeout, 0.3)


@pytest.mark.timeout(240)
def test_symmetric_spokes_move_50_mib_both_ways_through_the_relay_node_not_derp(pl, hub) -> None:
    r, spokes, _ = hub
    a, b = spokes[1], spokes[2]
    assert wait_relay_node(pl, [(a, b, r), (b, a, r)]), (pl.peer_status(a, b), pl.peer_status(r, a))
    before_derp = derp_bytes(pl, 1) + derp_bytes(pl, 2)
    before = forwarded(pl, r)
    rates = {}
    for src, dst in ((a, b), (b, a)):
        t0 = time.monotonic()
        (sent, h1), (got, h2) = transfer(src.ns, dst.ns, dst.ip, SIZE, port=5301, timeout=150)
        rates[f"{src.peer_name}->{dst.peer_name}"] = round(SIZE * 8 / (time.monotonic() - t0) / 1e6)
        assert sent == got == SIZE and h1 == h2, "sha256 of what arrived differs"
    derp = derp_bytes(pl, 1) + derp_bytes(pl, 2) - before_derp
    after = forwarded(pl, r)
    for pair in (("peer1", "peer2"), ("peer2", "peer1")):
        assert after.get(pair, 0) - before.get(pair, 0) >= SIZE, (pair, before, after)
    assert derp < SIZE // 50, f"DERP carried {derp} bytes during the transfers"
    assert path_of(pl, a, b) == "relay-node" and path_of(pl, b, a) == "relay-node"
    # what the user sees
    text = pl.wgc(a, "status", a.name).stdout
    row = next(line for line in text.splitlines() if line.startswith("peer2 "))
    assert "relay-node peer3" in row, text
    assert re.search(r"^peer2 \(\S+\): relay-node peer3: both NATs map ports per destination; relay node peer3 "
                     r"reachable$", text, re.M), text
    why = pl.wgc(a, "status", a.name, "--why", "peer2").stdout
    assert "Rule: direct, then a relay node" in why and "relay-node: peer3 reachable, chosen" in why, why
    res = pl.wgc_ping(a, "peer2", count=2, interval=0.3)
    assert res.returncode == 0, res.stdout + res.stderr
    assert all(re.fullmatch(r"pong from peer2 \(100\.90\.0\.2\) via relay-node peer3 in [\d.]+ms", line)
               for line in res.stdout.splitlines()), res.stdout
    rtext = pl.wgc(r, "status", r.name).stdout
    assert re.search(r"  peer1 -> peer2: \d+ packets, \d+\.\d\d MiB", rtext), rtext
    print(f"through the relay node: {rates} Mbit/s; DERP bytes meanwhile {derp}; relay counters {after}")


@pytest.mark.timeout(240)
def test_relay_node_killed_mid_transfer_then_back(pl, hub) -> None:
    r, spokes, _ = hub
    a, b = spokes[1], spokes[2]
    assert wait_relay_node(pl, [(a, b, r), (b, a, r)])
    tl = Timeline()
    xfer = start_transfer(a.ns, b.ns, b.ip, 30 * 1024 * 1024, rate=3 * 1024 * 1024, port=5302, timeout=200)
    time.sleep(2.0)
    r.kill()
    tl.note("relay node killed")
    fell = wait_for(lambda: path_of(pl, a, b) == "relay" and path_of(pl, b, a) == "relay", 20.0)
    tl.note(f"both on DERP: {fell}")
    mid_transfer = xfer.sender.poll() is None
    (sent, h1), (got, h2) = xfer.result()
    tl.note("transfer done")
    assert fell, f"no fallback to DERP:\n{tl}"
    assert mid_transfer, "the kill must happen while the transfer runs"
    assert sent == got and h1 == h2, "the transfer must complete intact over DERP"
    r.launch()
    r._wait_for_socket("relay node restart")
    pl.wait_home(r)
    tl.note("relay node back")
    assert wait_relay_node(pl, [(a, b, r), (b, a, r)], timeout=40), f"relay node not used again:\n{tl}"
    tl.note("relay node used again")
    before = forwarded(pl, r).get(("peer1", "peer2"), 0)
    (sent, h1), (got, h2) = transfer(a.ns, b.ns, b.ip, 5 * 1024 * 1024, port=5303, timeout=60)
    assert sent == got and h1 == h2
    assert forwarded(pl, r).get(("peer1", "peer2"), 0) - before >= 5 * 1024 * 1024
    print(tl)


@pytest.mark.timeout(180)
def test_designated_relayed_host_never_goes_direct_until_released(pl, hub) -> None:
    r, spokes, _ = hub
    c, d = spokes[4], spokes[5]
    seen = set()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:          # traffic for 15 s: discovery would have found direct
        pl.ping_tunnel(c, d, count=2, interval=0.2, deadline=2)
        seen |= {path_of(pl, c, d), path_of(pl, d, c)}
    assert "direct" not in seen and path_of(pl, c, d) == "relay-node" and path_of(pl, d, c) == "relay-node", seen
    assert "pinned to relay-node" in pl.peer_status(c, d)["why"]
    c.rewrite(lambda text: text.replace("Path = relay-node\n", "").replace("Path = relay-node", ""))
    t0 = time.monotonic()
    up = wait_for(lambda: pl.ping_tunnel(c, d, count=1, deadline=2)[0] and path_of(pl, c, d) == "direct"
                  and path_of(pl, d, c) == "direct", 30.0)
    assert up, (pl.peer_status(c, d), pl.peer_status(d, c))
    assert pl.ping_tunnel(c, d, count=5, interval=0.1, deadline=5) == (True, 0.0)
    print(f"designation removed: both direct after {time.monotonic() - t0:.1f} s")


@pytest.mark.timeout(120)
def test_wireguard_go_hub_and_spoke_spoke_reaches_a_wgc_spoke(pl, hub) -> None:
    """wireguard-go behind client 6's symmetric NAT, configured as wg-quick does for hub-and-spoke: its
    one peer is the relay node, with the AllowedIPs of the whole network."""
    r, spokes, w_key = hub
    a = spokes[1]
    w = WgGoPeer(pl.lab.ns("client6"), "wggo" + str(int(time.time()) % 10000), w_key, 51999, [f"{WG_GO_IP}/32"])
    try:
        w.start()
        w.add_peer(r.public_key, "100.90.0.0/24", endpoint=(pl.lab.public_ip(3), RELAY_PORT), keepalive=5)
        w.ns.run("ip", "route", "add", "100.90.0.0/24", "dev", w.name)
        assert ping(w.ns, r.ip, count=2, deadline=10), "wireguard-go -> relay node itself"
        assert ping(w.ns, a.ip, count=3, deadline=15), "wireguard-go -> wgc spoke through the relay node"
        assert ping(a.ns, WG_GO_IP, count=3, deadline=10), "wgc spoke -> wireguard-go through the relay node"
        assert pl.peer_status(a, type("W", (), {"public_key": w.public_key})())["path"] == "relay-node"
        (sent, h1), (got, h2) = transfer(w.ns, a.ns, a.ip, 5 * 1024 * 1024, port=5304, timeout=60)
        assert sent == got and h1 == h2
        assert forwarded(pl, r).get(("wggo", "peer1"), 0) >= 5 * 1024 * 1024
    finally:
        w.stop()
