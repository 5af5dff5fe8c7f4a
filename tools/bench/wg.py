"""WireGuard data-plane benchmark: `python3 -m tools.bench wg [--pairs ...] [--time S]`.

In one run, over each selected pair of network namespaces, it measures with iperf3:
TCP throughput both ways, the rate of small UDP packets received both ways (`-u -l 64` at a high
`-b`), the ping round trip, and the CPU time (user + system) both tunnel processes spent per GB of TCP
received: a figure that stays comparable when other jobs load the machine, where throughput does not. Pairs: a bare veth (`veth`), wireguard-go <-> wireguard-go (`wggo`),
wgc <-> wireguard-go (`wgc-wggo`) and wgc <-> wgc (`wgc`). It prints a table with each figure as a
ratio of the wireguard-go pair measured in the same run (absolute figures move ±15 % between runs).

The tunnels are built with the interop harness's peer factories (tests/integration/peers.py); all
traffic stays inside namespaces this process makes and removes. Needs root, iperf3, wireguard-go, wg.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass

from tests.integration.peers import WgcPeer, WgGoPeer, peer_pair, ping
from tools.natlab.netns import Lab, Namespace, link

PAIRS = {
    "veth": ("bare veth", None),
    "wggo": ("wireguard-go <-> wireguard-go", (WgGoPeer, WgGoPeer)),
    "wgc-wggo": ("wgc <-> wireguard-go", (WgcPeer, WgGoPeer)),
    "wgc": ("wgc <-> wgc", (WgcPeer, WgcPeer)),
}
REFERENCE = "wggo"
IPERF_PORT = 5201


@dataclass
class Result:
    pair: str
    tcp_ab_bps: float | None = None  # side a sends
    tcp_ba_bps: float | None = None
    udp_ab_pps: float | None = None  # packets/s received by side b
    udp_ba_pps: float | None = None
    rtt_ms: float | None = None
    cpu_s_per_gb: float | None = None  # both tunnel processes, over the TCP runs (median)
    error: str | None = None


@contextlib.contextmanager
def topology(pair: str, mtu: int):
    """Yield (ns_a, ns_b, address of a, address of b, pids of the tunnel processes) for the pair; everything
    is removed on exit."""
    classes = PAIRS[pair][1]
    if classes is None:
        with Lab() as lab:
            ns_a, ns_b = lab.namespace("bna"), lab.namespace("bnb")
            link(ns_a, ["10.98.0.1/24"], ns_b, ["10.98.0.2/24"])
            yield ns_a, ns_b, "10.98.0.1", "10.98.0.2", []
    else:
        with peer_pair(*classes, mtu=mtu) as p:
            yield p.ns_a, p.ns_b, p.a.address(4), p.b.address(4), [p.a.proc.pid, p.b.proc.pid]


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of the processes so far (/proc/PID/stat fields 14 and 15)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def iperf(ns: Namespace, server: str, args: list[str], seconds: int) -> dict:
    """Run an iperf3 client against `server` and return its parsed JSON report."""
    argv = ["iperf3", "-c", server, "-p", str(IPERF_PORT), "-J", "-t", str(seconds), *args]
    for attempt in range(3):
        res = ns.run(*argv, check=False, timeout=seconds + 30)
        try:
            report = json.loads(res.stdout)
        except json.JSONDecodeError:
            report = {"error": (res.stderr or res.stdout).strip()[-300:] or f"exit {res.returncode}"}
        if "error" not in report:
            return report
        if "connect" not in report["error"] or attempt == 2:  # the server may still be starting
            raise RuntimeError(f"iperf3 {' '.join(args)}: {report['error']}")
        time.sleep(0.5)
    raise AssertionError("unreachable")


def udp_pps(report: dict) -> float:
    received = report["end"]["sum_received"]
    seconds = report["end"]["sum_sent"]["seconds"] or received["seconds"]
    return (received["packets"] - received["lost_packets"]) / seconds


def median_of(n: int, run) -> float:
    return statistics.median(run() for _ in range(n))


def rtt(ns: Namespace, address: str) -> float | None:
    res = ns.run("ping", "-n", "-q", "-c", "20", "-i", "0.05", address, check=False, timeout=20)
    m = re.search(r"= [\d.]+/([\d.]+)/", res.stdout)
    return float(m.group(1)) if m else None


def measure(pair: str, opts: argparse.Namespace) -> Result:
    result = Result(pair)
    try:
        with topology(pair, opts.mtu) as (ns_a, ns_b, addr_a, addr_b, pids):
            ns_b.popen("iperf3", "-s", "-B", addr_b, "-p", str(IPERF_PORT))
            if not ping(ns_a, addr_b, count=2, deadline=10):
                raise RuntimeError(f"no ping from {addr_a} to {addr_b}")
            result.rtt_ms = rtt(ns_a, addr_b)
            t, n = opts.time, opts.repeat
            cpu_per_gb: list[float] = []

            def tcp(args: list[str]) -> float:
                before = cpu_seconds(pids)
                received = iperf(ns_a, addr_b, args, t)["end"]["sum_received"]
                if pids and received["bytes"]:
                    cpu_per_gb.append((cpu_seconds(pids) - before) / (received["bytes"] / 1e9))
                return received["bits_per_second"]

            udp = ["-u", "-l", str(opts.udp_length), "-b", opts.udp_bitrate]
            result.tcp_ab_bps = median_of(n, lambda: tcp([]))
            result.tcp_ba_bps = median_of(n, lambda: tcp(["-R"]))
            if cpu_per_gb:
                result.cpu_s_per_gb = statistics.median(cpu_per_gb)
            result.udp_ab_pps = median_of(n, lambda: udp_pps(iperf(ns_a, addr_b, udp, t)))
            result.udp_ba_pps = median_of(n, lambda: udp_pps(iperf(ns_a, addr_b, udp + ["-R"], t)))
    except Exception as exc:  # one failing pair (e.g. wgc not starting) must not stop the others
        result.error = brief(exc)
    return result


def brief(exc: Exception) -> str:
    """One line for a failure: the message's first line and, for a logged traceback, its last."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if len(lines) > 1:
        text += f" ... {lines[-1]}"
    return f"{type(exc).__name__}: {text}"[:200]


COLUMNS = [
    ("TCP a->b", "tcp_ab_bps", lambda v: f"{v / 1e9:.2f} Gbit/s"),
    ("TCP b->a", "tcp_ba_bps", lambda v: f"{v / 1e9:.2f} Gbit/s"),
    ("UDP64 a->b", "udp_ab_pps", lambda v: f"{v / 1e3:.0f} kpps"),
    ("UDP64 b->a", "udp_ba_pps", lambda v: f"{v / 1e3:.0f} kpps"),
    ("ping", "rtt_ms", lambda v: f"{v:.3f} ms"),
    ("CPU/GB", "cpu_s_per_gb", lambda v: f"{v:.1f} s"),
]


def render(results: list[Result]) -> str:
    ref = next((r for r in results if r.pair == REFERENCE and not r.error), None)
    header = ["pair"] + [c[0] for c in COLUMNS]
    rows = [header]
    for r in results:
        if r.error:
            rows.append([PAIRS[r.pair][0], f"failed: {r.error}"])
            continue
        row = [PAIRS[r.pair][0]]
        for _, attr, fmt in COLUMNS:
            value = getattr(r, attr)
            cell = "-" if value is None else fmt(value)
            base = getattr(ref, attr) if ref else None
            if value is not None and base:
                cell += f" ({value / base:.2f}x)"
            row.append(cell)
        rows.append(row)
    widths = [max(len(row[i]) for row in rows if i < len(row) and len(row) > 2) for i in range(len(header))]
    lines = []
    for row in rows:
        if len(row) == 2:  # a failed pair spans the table
            lines.append(f"{row[0]:<{widths[0]}}  {row[1]}")
        else:
            lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    note = (f"ratios are to {PAIRS[REFERENCE][0]} in this run; a = first peer named, ping is round trip, "
            "CPU/GB = CPU seconds of both tunnel processes per GB of TCP received"
            if ref else "no reference pair measured: figures are absolute")
    return "\n".join(lines) + "\n" + note


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python3 -m tools.bench wg", description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", default=",".join(PAIRS),
                    help=f"comma-separated pairs to measure, from {', '.join(PAIRS)} (default: all)")
    ap.add_argument("--time", type=int, default=5, help="whole seconds per iperf3 run (default 5)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per figure, the median is shown (default 1)")
    ap.add_argument("--mtu", type=int, default=1420, help="tunnel MTU (default 1420)")
    ap.add_argument("--udp-length", type=int, default=64, help="UDP payload bytes (default 64)")
    ap.add_argument("--udp-bitrate", default="1G", help="iperf3 -b for the UDP runs (default 1G)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    opts = ap.parse_args(argv)
    opts.pair_list = parse_pairs(ap, opts.pairs, PAIRS)
    if not 1 <= opts.time <= 600:  # iperf3 takes whole seconds; -t 0 would mean "forever"
        ap.error("--time must be between 1 and 600 seconds")
    if not 1 <= opts.repeat <= 20:
        ap.error("--repeat must be between 1 and 20")
    return opts


def parse_pairs(ap: argparse.ArgumentParser, text: str, pairs: dict) -> list[str]:
    """The comma-separated pair names of --pairs, each one of `pairs` (else a usage error)."""
    chosen = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in chosen if p not in pairs]
    if unknown or not chosen:
        ap.error(f"unknown pair(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(pairs)}")
    return chosen


def missing_prerequisites(bench: str, programs: list[str]) -> str | None:
    """None when running as root with every program on PATH, else the one line that says what is missing."""
    if os.geteuid() != 0:
        return f"tools.bench {bench}: needs root (network namespaces, TUN devices)"
    missing = [b for b in programs if shutil.which(b) is None]
    if missing:
        return f"tools.bench {bench}: missing programs {', '.join(missing)} (run tools/setup.sh)"
    return None


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    need = ["iperf3", "ping", "ip"] + (["wireguard-go", "wg"] if opts.pair_list != ["veth"] else [])
    problem = missing_prerequisites("wg", need)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    results = []
    for pair in opts.pair_list:
        print(f"measuring {PAIRS[pair][0]} ({opts.repeat} x {opts.time:g} s per figure)...", file=sys.stderr,
              flush=True)
        results.append(measure(pair, opts))
    print(render(results))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump([asdict(r) for r in results], f, indent=1)
    return 1 if any(r.error for r in results) else 0
