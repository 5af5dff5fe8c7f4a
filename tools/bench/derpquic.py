"""DERP over QUIC vs DERP over TCP (`python3 -m tools.bench derpquic`): in the NAT lab, in one run, TCP
throughput inside the tunnel (iperf3) and relayed ping p50/p99 between two peers behind symmetric NATs
(no direct path: every packet is relayed by one `wgc derper`), over DERP/TCP (TLS) and over DERP/QUIC, at
each asked loss on the relay link (default 0, 1 and 3 %), with a fixed added round trip on that link.

Four clients, all behind symmetric NATs: peers 1-2 get a DERP map without `WgcQUICPort` (so they relay
over TCP), peers 3-4 the same map with it (QUIC). The pairs take turns (never both at once); the loss is
changed between rounds with `NatLab.set_loss`, whose drops hit each direction of the relay's link, so a
relayed packet (client -> relay -> client) crosses the lossy link twice. Interface MTU 1280 in every peer
(a WireGuard packet then always fits one QUIC datagram, docs/derp-quic.md). Every lab namespace uses one
TCP congestion control (`--cc`, default the host's) for the TCP inside the tunnel and DERP's own TCP
connections alike (the outer TCP's reaction to loss is what DERP/TCP's figure depends on; a namespace may
pick only what the host allows, e.g. reno or bbr, not cubic, when the host's default is bbr). The transport each pair used
is read from `wgc status` before and after every figure; one that changed is flagged. Per figure also:
the packets the link dropped, the packets the relay dropped (by reason, from its /debug/vars), and the CPU seconds the relay and the two peers spent per GB received (where
the time goes when a figure is low). Needs root, iperf3, nft, ping. Traffic stays inside the lab.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

from tests.integration.quiclab import QUIC, QuicLab
from tools.bench.wg import IPERF_PORT, cpu_seconds, iperf, missing_prerequisites
from tools.natlab.lab import RegionSpec

TRANSPORTS = (("tcp", "DERP/TCP (TLS)", "upgrade"), ("quic", "DERP/QUIC", QUIC))
DEBUG_VARS = ("import ssl, sys, urllib.request; ctx = ssl._create_unverified_context(); "
              "sys.stdout.write(urllib.request.urlopen('https://127.0.0.1:443/debug/vars', context=ctx, timeout=5)"
              ".read().decode())")


@dataclass
class Figure:
    transport: str
    loss_pct: float
    bps: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    ping_loss: float = 1.0
    link_dropped: int = 0
    link_offered: int = 0
    cpu_relay: float | None = None      # CPU seconds per GB received
    cpu_peers: float | None = None
    used: list[str] = field(default_factory=list)   # transports seen (before, after)
    relay_drops: dict[str, int] = field(default_factory=dict)   # packets the relay dropped, by reason
    udp_bps: float | None = None        # UDP inside the tunnel at --udp-rate: delivered ...
    udp_lost: float | None = None       # ... and the fraction lost
    error: str = ""
    repeats: list[str] = field(default_factory=list)   # why an iperf3 run had to be run again


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python3 -m tools.bench derpquic", description=__doc__.split("\n\n")[0])
    ap.add_argument("--time", type=int, default=5, help="whole seconds per iperf3 run (default 5)")
    ap.add_argument("--repeat", type=int, default=1, help="iperf3 runs per figure; the median (default 1)")
    ap.add_argument("--loss", default="0,1,3", help="comma-separated loss %% on the relay link (default 0,1,3)")
    ap.add_argument("--rtt", type=float, default=10.0, help="round trip added on the relay link, ms (default 10)")
    ap.add_argument("--pings", type=int, default=200, help="relayed pings per figure, 20 ms apart (default 200)")
    ap.add_argument("--udp-rate", default="20M", metavar="RATE",
                    help="also offer UDP inside the tunnel at this iperf3 -b rate, 1200-byte datagrams, for "
                         "--time s: what the relayed path carries without TCP's reaction ('0': skip; default 20M)")
    ap.add_argument("--transports", default="tcp,quic", help="which of tcp,quic to measure (default both)")
    ap.add_argument("--profile-relay", default="", metavar="FILE",
                    help="run the relay under cProfile, save its profile to FILE and print the top functions")
    ap.add_argument("--cc", default="host",
                    help="TCP congestion control in every lab namespace: the TCP inside the tunnel and DERP's own "
                         "TCP connections; one of the host's tcp_allowed_congestion_control (a namespace may "
                         "choose no other), default 'host': the host's default")
    opts = ap.parse_args(argv)
    try:
        opts.losses = [float(x) for x in opts.loss.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--loss takes numbers, e.g. 0,1,3 (got {opts.loss!r})")
    if not opts.losses or not all(0 <= x <= 50 for x in opts.losses):
        ap.error("--loss values are 0-50 %")
    if not 1 <= opts.time <= 600 or not 1 <= opts.repeat <= 20 or not 5 <= opts.pings <= 10000:
        ap.error("--time is 1-600 s, --repeat 1-20, --pings 5-10000")
    if not 0 <= opts.rtt <= 1000:
        ap.error("--rtt is 0-1000 ms")
    opts.keys = [k.strip() for k in opts.transports.split(",") if k.strip()]
    if not opts.keys or not set(opts.keys) <= {key for key, _, _ in TRANSPORTS}:
        ap.error("--transports takes tcp, quic or tcp,quic")
    allowed = allowed_cc()
    if opts.cc != "host" and opts.cc not in allowed:
        ap.error(f"--cc {opts.cc}: a lab namespace may use only {' '.join(allowed) or '?'} "
                 "(net.ipv4.tcp_allowed_congestion_control) or 'host'")
    return opts


def allowed_cc() -> list[str]:
    try:
        with open("/proc/sys/net/ipv4/tcp_allowed_congestion_control") as fh:
            return fh.read().split()
    except OSError:
        return []


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def relayed_ping(a, b, count: int) -> tuple[float | None, float | None, float]:
    """p50, p99 (ms) of the replies and the fraction lost, `count` pings 20 ms apart."""
    res = a.ns.run("ping", "-n", "-c", str(count), "-i", "0.02", "-W", "2", b.ip, check=False,
                   timeout=count * 0.05 + 30)
    times = [float(t) for t in re.findall(r"time=([\d.]+) ms", res.stdout)]
    return percentile(times, 0.5), percentile(times, 0.99), 1 - len(times) / count


def iperf_again(ns, server: str, args: list[str], seconds: int, fig: Figure, attempts: int = 4) -> dict:
    """iperf3, run again (up to `attempts` times in all) when a run fails: the server may still finish a test whose client
    gave up ("busy", after a UDP run under heavy loss), or a short run's control connection, itself TCP
    inside the lossy tunnel, may not survive (a loaded machine makes that likelier). A figure comes only
    from a run that completed; the repeats are counted on the figure and shown under the table."""
    for attempt in range(attempts):
        try:
            return iperf(ns, server, args, seconds)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            if attempt == attempts - 1:
                raise
            fig.repeats.append(str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__)
            time.sleep(2 if "busy" in str(exc) else 1)
    raise AssertionError("unreachable")


def relay_drops(pl: QuicLab) -> dict[str, int]:
    """The relay's packet drops so far by reason (its /debug/vars, asked from its own loopback)."""
    st = json.loads(pl.lab.run("region1", sys.executable, "-c", DEBUG_VARS, timeout=15).stdout)
    drops = dict(st["relay"]["drops"])
    for key, value in st.get("quic", {}).items():   # its queue_full is in the relay's drops already
        if key.startswith("dropped_") and key != "dropped_queue_full" and value:
            drops["quic_" + key[len("dropped_"):]] = value
    return drops


def measure(pl: QuicLab, pair, fig: Figure, opts) -> None:
    a, b = pair
    fig.used.append(pl.transport(a, 1) or "-")
    drops0 = relay_drops(pl)
    counts0 = pl.lab.link_counts(1)
    relay_pid = pl.relays[1].proc.pid
    peers = [a.proc.pid, b.proc.pid]
    cpu0 = cpu_seconds([relay_pid]), cpu_seconds(peers)
    args: list[str] = []
    runs, received = [], 0
    for _ in range(opts.repeat):
        report = iperf_again(a.ns, b.ip, args, opts.time, fig)["end"]["sum_received"]
        runs.append(report["bits_per_second"])
        received += report["bytes"]
    fig.bps = statistics.median(runs)
    if received:
        gb = received / 1e9
        fig.cpu_relay = (cpu_seconds([relay_pid]) - cpu0[0]) / gb
        fig.cpu_peers = (cpu_seconds(peers) - cpu0[1]) / gb
    counts1 = pl.lab.link_counts(1)
    fig.link_dropped = counts1["dropped"] - counts0["dropped"]
    fig.link_offered = counts1["offered"] - counts0["offered"]
    if opts.udp_rate != "0":
        try:
            udp = iperf_again(a.ns, b.ip, ["-u", "-b", opts.udp_rate, "-l", "1200"], opts.time, fig,
                              attempts=2)["end"]["sum_received"]
            fig.udp_bps, fig.udp_lost = udp["bits_per_second"], udp["lost_percent"] / 100
        except (RuntimeError, subprocess.TimeoutExpired):   # its control connection may not survive heavy loss
            pass
    fig.p50_ms, fig.p99_ms, fig.ping_loss = relayed_ping(a, b, opts.pings)
    fig.used.append(pl.transport(a, 1) or "-")
    fig.relay_drops = {k: v - drops0.get(k, 0) for k, v in relay_drops(pl).items() if v > drops0.get(k, 0)}


def run(opts) -> list[Figure]:
    figures: list[Figure] = []
    with QuicLab(["symmetric"] * 4, regions=[RegionSpec(opts.rtt)]) as pl:
        if opts.cc != "host":
            for node in pl.lab.nodes:
                pl.lab.run(node, "sysctl", "-qw", f"net.ipv4.tcp_congestion_control={opts.cc}")
        if opts.profile_relay:
            pl.derper_python_args = ["-m", "cProfile", "-o", os.path.abspath(opts.profile_relay)]
        if opts.cc != "host" or opts.profile_relay:
            pl.stop_derper(1)        # its listening socket was made before: start it again under the new one
            pl.start_derper(1)
        opts.cc_used = pl.lab.run("client1", "sysctl", "-n", "net.ipv4.tcp_congestion_control").stdout.strip()
        pairs = {}
        for (key, _label, want), clients in zip(TRANSPORTS, ((1, 2), (3, 4))):
            if key not in opts.keys:
                continue
            dm = pl.tcp_derpmap if key == "tcp" else pl.quic_derpmap
            pairs[key] = pl.start_peers(clients, derpmap_files={k: dm for k in clients})
            for p in pairs[key]:
                pl.wait_transport(p, 1, want, timeout=30)
            for x, y in (pairs[key], pairs[key][::-1]):
                if not pl.ping_tunnel(x, y, count=3, deadline=10)[0]:
                    raise RuntimeError(f"no relayed ping between the {key} peers")
            b = pairs[key][1]
            b.ns.popen("iperf3", "-s", "-B", b.ip, "-p", str(IPERF_PORT))
        for pct in opts.losses:
            pl.lab.set_loss(1, pct)
            for key, label, _want in TRANSPORTS:
                if key not in opts.keys:
                    continue
                print(f"{label}, {pct:g} % loss ...", file=sys.stderr, flush=True)
                fig = Figure(key, pct)
                try:
                    measure(pl, pairs[key], fig, opts)
                except Exception as exc:   # one failed figure must not lose the others
                    fig.error = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
                figures.append(fig)
        pl.lab.set_loss(1, 0)
        if opts.profile_relay:
            pl.stop_derper(1)        # SIGTERM: the derper exits and cProfile writes its file
    return figures


def profile_summary(path: str, top: int = 15) -> str:
    import io
    import pstats
    out = io.StringIO()
    pstats.Stats(path, stream=out).sort_stats("tottime").print_stats(top)
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    return "\n".join([f"relay profile ({path}, top {top} by own time):"] + lines[start - 1 if start else 0:])


def _ms(v: float | None) -> str:
    return f"{v:.1f} ms" if v is not None else "-"


def table(figures: list[Figure], opts) -> str:
    cc = getattr(opts, "cc_used", "?") + (" (the host's default)" if opts.cc == "host" else "")
    lines = [f"two symmetric-NAT peers relayed by one wgc derper; relay link +{opts.rtt:g} ms RTT, loss on each "
             f"direction of it (a relayed packet crosses it twice); MTU 1280; iperf3 {opts.repeat} x {opts.time} s "
             f"(UDP: {opts.udp_rate}bit/s offered), "
             f"TCP congestion control (tunnel and DERP): {cc}; {opts.pings} pings 20 ms apart",
             f"{'loss':>5}  {'transport':<15} {'TCP a->b':>13} {'UDP a->b':>13} {'lost':>5} {'ping p50':>9} {'p99':>9} "
             f"{'ping lost':>9} "
             f"{'link drops':>10} {'relay drops':>11} {'CPU s/GB relay':>14} {'peers':>6}"]
    labels = {key: label for key, label, _ in TRANSPORTS}
    wants = {key: want for key, _, want in TRANSPORTS}
    for f in figures:
        name = labels[f.transport] + ("" if set(f.used) == {wants[f.transport]} else "*")
        if f.error:
            lines.append(f"{f.loss_pct:>4g}%  {name:<15} error: {f.error}")
            continue
        drops = f"{f.link_dropped / f.link_offered:.1%}" if f.link_offered else "-"
        cpu_r = f"{f.cpu_relay:.1f}" if f.cpu_relay is not None else "-"
        cpu_p = f"{f.cpu_peers:.1f}" if f.cpu_peers is not None else "-"
        udp = f"{f.udp_bps / 1e6:>6.1f} Mbit/s" if f.udp_bps is not None else "-"
        lost = f"{f.udp_lost:.0%}" if f.udp_lost is not None else "-"
        lines.append(f"{f.loss_pct:>4g}%  {name:<15} {f.bps / 1e6:>8.1f} Mbit/s {udp:>13} {lost:>5} {_ms(f.p50_ms):>9} "
                     f"{_ms(f.p99_ms):>9} {f.ping_loss:>9.0%} {drops:>10} {sum(f.relay_drops.values()):>11} "
                     f"{cpu_r:>14} {cpu_p:>6}")
    ratios, p99s = [], []
    for pct in opts.losses:
        by = {f.transport: f for f in figures if f.loss_pct == pct and not f.error}
        tcp, quic = by.get("tcp"), by.get("quic")
        ratios.append(f"{pct:g} %: {quic.bps / tcp.bps:.2f}x" if tcp and quic and tcp.bps > 0 else f"{pct:g} %: -")
        p99s.append(f"{pct:g} %: {tcp.p99_ms / quic.p99_ms:.2f}x" if tcp and quic and tcp.p99_ms and quic.p99_ms
                    else f"{pct:g} %: -")
    reasons = [f"{labels[f.transport]} at {f.loss_pct:g} %: " + ", ".join(f"{k} {v}" for k, v in sorted(f.relay_drops.items()))
               for f in figures if f.relay_drops]
    if reasons:
        lines.append("relay drops by reason: " + "; ".join(reasons))
    repeated = [f"{labels[f.transport]} at {f.loss_pct:g} %: {len(f.repeats)} ({f.repeats[-1]})"
                for f in figures if f.repeats]
    if repeated:
        lines.append("iperf3 runs repeated after a failed run: " + "; ".join(repeated))
    if len(opts.keys) == 2:
        lines.append("ratio QUIC / TCP throughput   " + "   ".join(ratios))
        lines.append("ratio TCP / QUIC ping p99     " + "   ".join(p99s))
    if any(set(f.used) != {wants[f.transport]} for f in figures if not f.error):
        lines.append("* the pair's transport changed during the figure: " +
                     "; ".join(f"{labels[f.transport]} at {f.loss_pct:g} %: {' -> '.join(f.used)}"
                               for f in figures if not f.error and set(f.used) != {wants[f.transport]}))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    problem = missing_prerequisites("derpquic", ["iperf3", "ping", "ip", "nft"])
    if problem:
        print(problem, file=sys.stderr)
        return 2
    try:
        figures = run(opts)
    except Exception as exc:
        print(f"tools.bench derpquic: the lab did not come up: {str(exc).splitlines()[0] if str(exc) else exc!r}",
              file=sys.stderr)
        return 1
    print(table(figures, opts))
    if opts.profile_relay:
        print(profile_summary(opts.profile_relay))
    return 0 if not any(f.error for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
