"""Issue 13 in the NAT lab: two peers behind symmetric NATs (no direct path), relayed by one region's
`wgc derper` (+10 ms) over DERP-over-QUIC. 50 MiB sha256-intact over QUIC; the relay's interface never
sees the tunnel's plaintext over QUIC (tcpdump); then, without restarting wgc and with a TCP stream
flowing through the tunnel the whole time: UDP to the relay blocked -> TCP (TLS), the path's proxy
refusing `Upgrade: DERP` -> WebSocket, UDP restored -> QUIC again, every byte intact. One lab and one
pair for the module (the fallback test, which changes the path, runs last)."""
from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from tests.integration.peers import _RECEIVER, _SENDER, start_transfer
from tests.integration.quiclab import QUIC, WORDS, QuicLab
from tests.support.capture import check_no_plaintext, send_markers, start_tcpdump, wait_captured
from tests.support.prereq import require_binary, require_root
from tools.natlab.lab import RegionSpec

pytestmark = [pytest.mark.netns]
SIZE = 50 * 1024 * 1024
FALLBACK_S = 30          # generous bound for each transport change (the design's timers are seconds)


@pytest.fixture(scope="module")
def pl():
    require_root()
    require_binary("nft", "ip", "ping", "tcpdump")
    with QuicLab(["symmetric", "symmetric"], regions=[RegionSpec(10)]) as lab:
        yield lab


@pytest.fixture(scope="module")
def pair(pl):
    a, b = pl.start_peers((1, 2), derpmap_files={1: pl.switch_derpmap, 2: pl.switch_derpmap})
    for p in (a, b):
        pl.wait_transport(p, 1, QUIC, timeout=FALLBACK_S)
    yield a, b


def _region(st: dict, code: str = "r1") -> dict:
    return {r["code"]: r for r in st["regions"]}[code]


@pytest.mark.timeout(150)
def test_symmetric_pair_relayed_over_quic_50mib(pl, pair, on_failure) -> None:
    a, b = pair
    ok, loss = pl.ping_tunnel(a, b, count=10, interval=0.1, deadline=5)
    assert ok and loss == 0, f"relayed over QUIC: loss {loss:.0%}"
    for x, y in ((a, b), (b, a)):
        st = pl.status(x)                                  # `wgc status NAME --json`
        assert _region(st)["connected"] and _region(st)["transport"] == QUIC, st["regions"]
        entry = pl.peer_status(x, y)
        assert entry["path"] == "relay" and entry["relay"]["code"] == "r1", entry
    text = pl.wgc(a, "status", a.name)
    assert text.returncode == 0 and f"connected over {WORDS[QUIC]}" in text.stdout, text.stdout
    t0 = time.monotonic()
    xfer = start_transfer(a.ns, b.ns, b.ip, SIZE, port=5301, timeout=120)
    (sent, h1), (got, h2) = xfer.result()
    took = time.monotonic() - t0
    assert sent == got == SIZE and h1 == h2, "50 MiB must arrive intact"
    assert pl.transport(a, 1) == QUIC and pl.transport(b, 1) == QUIC, "still on QUIC"
    print(f"50 MiB over DERP/QUIC in {took:.1f} s ({SIZE * 8 / took / 1e6:.0f} Mbit/s), sha256 intact")


@pytest.mark.timeout(60)
def test_relay_never_sees_the_plaintext_over_quic(pl, pair, on_failure, tmp_path) -> None:
    """tcpdump (every packet) on region 1's interface while 20 datagrams holding a marker cross the tunnel
    relayed over QUIC: all arrive, the capture holds QUIC datagrams from the sender's network carrying
    at least the marker traffic's volume, a control string sent in clear in a UDP datagram to the
    relay's QUIC port is in the capture, and the marker is not."""
    a, b = pair
    assert pl.transport(a, 1) == QUIC and pl.transport(b, 1) == QUIC
    marker = "QUIC-TUNNEL-MARKER-" + os.urandom(6).hex()
    control = "QUIC-CAPTURE-CONTROL-" + os.urandom(6).hex()
    pcap = str(tmp_path / "relay.pcap")
    dump = start_tcpdump(pl.lab.ns("region1"), pcap, "-i", pl.lab.interface("region1", "198.18.1.2"), "-n",
                         "-s", "0", text=True)
    try:
        got = send_markers(a.ns, b.ns, b.ip, marker)
        a.ns.run(sys.executable, "-c", "import socket,sys; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
                 " s.sendto(sys.argv[1].encode(),('198.18.1.2',443))", control, timeout=10)
        assert wait_captured(pcap, control.encode()), "the control datagram never reached the capture"
    finally:
        dump.send_signal(signal.SIGINT)
        dump.communicate(timeout=10)
    assert got == 20, f"only {got}/20 marker datagrams crossed the tunnel"
    assert pl.transport(a, 1) == QUIC and pl.peer_status(a, b)["path"] == "relay", "relayed over QUIC throughout"
    per_src = check_no_plaintext(pcap, "udp port 443", marker, control)
    print(f"capture: {os.path.getsize(pcap)} bytes, QUIC (UDP 443) payload bytes per client network {per_src}")


@pytest.mark.timeout(240)
def test_fallback_quic_tcp_websocket_and_back_without_restart(pl, pair, on_failure) -> None:
    """With a 1 MiB/s TCP stream through the tunnel the whole time: UDP from both clients to region 1 is
    dropped -> both fall back to TCP (`upgrade`, status `TLS`); the proxy in front of the derper refuses
    Upgrade: DERP (and closes the passed connections) -> WebSocket; UDP restored -> QUIC again. The
    wgc processes are the same throughout; pings cross at every stage; the stream arrives intact."""
    a, b = pair
    pids = (a.proc.pid, b.proc.pid)
    events: list[str] = []
    rx = b.ns.popen(sys.executable, "-c", _RECEIVER, b.ip, "5302", text=True)
    assert rx.stdout.readline().strip() == "ready"
    tx = a.ns.popen(sys.executable, "-c", _SENDER, b.ip, "5302", "0", str(1 << 20), text=True)   # until SIGUSR1
    assert tx.stdout.readline().strip() == "sending"
    try:
        time.sleep(1)
        for k in (1, 2):
            pl.lab.cut_udp(k, region=1)
        events.append(f"UDP cut: TCP after {max(pl.wait_transport(p, 1, 'upgrade', FALLBACK_S) for p in (a, b)):.1f} s")
        assert pl.ping_tunnel(a, b, count=3, deadline=8)[0], "relayed over TCP"
        assert "TLS" in pl.wgc(a, "status", a.name).stdout
        closed = pl.refuse_derp(1)
        assert closed >= 2, f"the proxy closed {closed} DERP connections (one per peer expected)"
        events.append(f"Upgrade refused: WebSocket after {max(pl.wait_transport(p, 1, 'websocket', FALLBACK_S) for p in (a, b)):.1f} s")
        assert pl.ping_tunnel(a, b, count=3, deadline=8)[0], "relayed over WebSocket"
        assert "WebSocket (TLS)" in pl.wgc(a, "status", a.name).stdout
        for k in (1, 2):
            pl.lab.restore_udp(k)
        took = max(pl.wait_transport(p, 1, QUIC, 120) for p in (a, b))
        events.append(f"UDP restored: QUIC after {took:.1f} s")
        assert pl.ping_tunnel(a, b, count=3, deadline=8)[0], "relayed over QUIC again"
        time.sleep(1)
    finally:
        tx.send_signal(signal.SIGUSR1)
        out, _ = tx.communicate(timeout=60)
        got = rx.communicate(timeout=30)[0].split()
        for k in (1, 2):
            pl.lab.restore_udp(k)
        pl.refuse_derp(1, refuse=False)
    sent = out.split()
    assert len(sent) == 2 and sent == got and int(sent[0]) > 0, (sent, got)
    assert (a.proc.pid, b.proc.pid) == pids and a.proc.poll() is None and b.proc.poll() is None, "no restart"
    print("; ".join(events) + f"; {int(sent[0]) / 2**20:.1f} MiB streamed across, sha256 intact")
