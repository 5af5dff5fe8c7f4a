"""Handshake-flood benchmark: `python3 -m tools.bench flood [--rate N] [--seconds S] [--pairs wggo,wgc]`.

For each pair (wireguard-go <-> wireguard-go as the reference, wgc <-> wgc), in one run: an established
tunnel between namespaces a and b, a third namespace joined to b by its own veth, and in it a flooder
(tools/bench/flooder.py) sending handshake initiations with a correct mac1 for b's public key, from one
address (or `--sources N`), to b's UDP port. While it floods, a pings b through the tunnel; the benchmark prints each pair's
ping loss, the flood rate reached, b's CPU use, and wgc's loss as a ratio of wireguard-go's (the target of
issue 9: no worse than wireguard-go in the same run), and for wgc the drop counters of `wgc status`.

All traffic stays inside namespaces this process makes and removes. Needs root, wireguard-go, wg, ping.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

from tests.integration.peers import PORT_B, WgcPeer, WgGoPeer, peer_pair, ping
from tools.bench.wg import brief, cpu_seconds, missing_prerequisites, parse_pairs
from tools.natlab.netns import link

PAIRS = {"wggo": ("wireguard-go <-> wireguard-go", WgGoPeer), "wgc": ("wgc <-> wgc", WgcPeer)}
REFERENCE = "wggo"
VICTIM_ADDR = "10.97.0.254"


def flooder_addresses(n: int) -> list[str]:
    return [f"10.97.0.{i}" for i in range(1, n + 1)]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass
class Result:
    pair: str
    loss_pct: float | None = None      # of the pings through the tunnel during the flood
    rtt_ms: float | None = None        # their average round trip
    flood_rate: float | None = None    # initiations per second the flooder sent
    victim_cpu_pct: float | None = None  # b's CPU use (100 = one core) while the pings ran
    drops: dict = field(default_factory=dict)  # b's drop counters (wgc only: `wgc status --json`)
    under_load: bool | None = None
    error: str | None = None


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))


def start_flooder(ns, victim_public: str, opts: argparse.Namespace, seconds: float) -> subprocess.Popen:
    return ns.popen(sys.executable, "-m", "tools.bench.flooder", VICTIM_ADDR, str(PORT_B), victim_public,
                    "--rate", str(opts.rate), "--seconds", f"{seconds:.1f}",
                    "--bind", ",".join(flooder_addresses(opts.sources)),
                    env=_env(), text=True)


def ping_loss(ns, address: str, opts: argparse.Namespace) -> tuple[float, float | None]:
    """(loss %, average round trip ms) of `count` pings at `interval`."""
    count = max(1, round(opts.seconds / opts.interval))
    res = ns.run("ping", "-n", "-q", "-c", str(count), "-i", str(opts.interval), "-W", "1", address,
                 check=False, timeout=opts.seconds * 3 + 30)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", res.stdout)
    if not m:
        raise RuntimeError(f"ping printed no summary: {(res.stderr or res.stdout).strip()[-200:]}")
    sent, got = int(m.group(1)), int(m.group(2))
    rtt = re.search(r"= [\d.]+/([\d.]+)/", res.stdout)
    return 100.0 * (sent - got) / sent, float(rtt.group(1)) if rtt else None


def wgc_status(name: str) -> dict:
    res = subprocess.run([sys.executable, "-m", "wgclient.cli", "status", name, "--json"], env=_env(),
                         capture_output=True, text=True, timeout=20)
    if res.returncode != 0:
        raise RuntimeError(f"wgc status failed: {res.stderr.strip()[-200:]}")
    return json.loads(res.stdout)


def measure(pair: str, opts: argparse.Namespace) -> Result:
    result = Result(pair)
    cls = PAIRS[pair][1]
    try:
        with peer_pair(cls, cls) as p:
            fns = p.lab.namespace("fld")
            link(fns, [f"{a}/24" for a in flooder_addresses(opts.sources)], p.ns_b, [f"{VICTIM_ADDR}/24"])
            target = p.b.address(4)
            if not ping(p.ns_a, target, count=2, deadline=10):
                raise RuntimeError(f"no ping through the tunnel to {target}")
            flooder = start_flooder(fns, p.b.public_key, opts, opts.seconds + opts.warmup + 5)
            try:
                time.sleep(opts.warmup)
                if flooder.poll() is not None:
                    raise RuntimeError(f"flooder exited: {flooder.stderr.read().strip()[-300:]}")
                cpu0, t0 = cpu_seconds([p.b.proc.pid]), time.monotonic()
                result.loss_pct, result.rtt_ms = ping_loss(p.ns_a, target, opts)
                result.victim_cpu_pct = 100 * (cpu_seconds([p.b.proc.pid]) - cpu0) / (time.monotonic() - t0)
                if cls is WgcPeer:
                    status = wgc_status(p.b.name)
                    result.drops, result.under_load = status.get("drops", {}), status.get("under_load")
            finally:
                flooder.terminate()
                out, err = flooder.communicate(timeout=10)
            lines = out.strip().splitlines()
            if not lines:
                raise RuntimeError(f"flooder printed nothing: {err.strip()[-300:]}")
            result.flood_rate = json.loads(lines[-1])["rate"]
    except Exception as exc:  # report the pair as failed, measure the others
        result.error = brief(exc)
    return result


def combine(pair: str, runs: list[Result]) -> Result:
    """The median of each figure over the runs of one pair (the last run's counters)."""
    good = [r for r in runs if not r.error]
    if not good:
        return runs[-1]

    def med(attr):
        values = [getattr(r, attr) for r in good if getattr(r, attr) is not None]
        return statistics.median(values) if values else None
    return Result(pair, med("loss_pct"), med("rtt_ms"), med("flood_rate"), med("victim_cpu_pct"),
                  good[-1].drops, good[-1].under_load)


def render(results: list[Result], runs: dict[str, list[Result]]) -> str:
    rows = [["pair", "ping loss", "ping rtt", "flood rate", "victim CPU", "runs (loss %)"]]
    for r in results:
        if r.error:
            rows.append([PAIRS[r.pair][0], f"failed: {r.error}"])
            continue
        rows.append([PAIRS[r.pair][0], f"{r.loss_pct:.2f} %", f"{r.rtt_ms:.2f} ms" if r.rtt_ms else "-",
                     f"{r.flood_rate / 1e3:.0f} k/s" if r.flood_rate else "-",
                     f"{r.victim_cpu_pct:.0f} %" if r.victim_cpu_pct is not None else "-",
                     " ".join(f"{x.loss_pct:.1f}" if not x.error else "failed" for x in runs[r.pair])])
    widths = [max(len(row[i]) for row in rows if len(row) > 2) for i in range(len(rows[0]))]
    lines = [f"{row[0]:<{widths[0]}}  {row[1]}" if len(row) == 2 else
             "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    by = {r.pair: r for r in results if not r.error}
    if "wgc" in by and REFERENCE in by:
        wgc, ref = by["wgc"].loss_pct, by[REFERENCE].loss_pct
        ratio = f"{wgc / ref:.2f}x" if ref else ("1.00x (both 0)" if not wgc else "inf (reference lost none)")
        verdict = "met" if wgc <= ref else "NOT met"
        lines.append(f"wgc loss / wireguard-go loss: {ratio}; target (no worse than wireguard-go): {verdict}")
    for r in results:
        if r.drops:
            top = ", ".join(f"{n} {reason}" for reason, n in list(r.drops.items())[:6])
            lines.append(f"{PAIRS[r.pair][0]}, victim's drops: {top}")
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python3 -m tools.bench flood", description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", default=",".join(PAIRS), help=f"comma-separated, from {', '.join(PAIRS)}")
    ap.add_argument("--rate", type=float, default=100_000,
                    help="initiations per second the flooder aims at; 0 = as fast as it can (default 100000)")
    ap.add_argument("--seconds", type=float, default=10.0, help="seconds of pinging under the flood (default 10)")
    ap.add_argument("--interval", type=float, default=0.01, help="seconds between pings (default 0.01)")
    ap.add_argument("--sources", type=int, default=1,
                    help="flooding addresses, used in turn (default 1, as in issue 9)")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds of flood before the pings (default 1)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per pair, alternating; medians shown")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    opts = ap.parse_args(argv)
    opts.pair_list = parse_pairs(ap, opts.pairs, PAIRS)
    if not 0.5 <= opts.seconds <= 600 or not 0.002 <= opts.interval <= 1 or opts.rate < 0 or opts.warmup < 0:
        ap.error("--seconds 0.5-600, --interval 0.002-1, --rate >= 0, --warmup >= 0")
    if not 1 <= opts.repeat <= 20 or not 1 <= opts.sources <= 200:
        ap.error("--repeat must be between 1 and 20, --sources between 1 and 200")
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    problem = missing_prerequisites("flood", ["ping", "ip", "wireguard-go", "wg"])
    if problem:
        print(problem, file=sys.stderr)
        return 2
    runs: dict[str, list[Result]] = {pair: [] for pair in opts.pair_list}
    for i in range(opts.repeat):
        for pair in opts.pair_list:
            print(f"flooding {PAIRS[pair][0]} (run {i + 1}/{opts.repeat}, {opts.seconds:g} s of pings)...",
                  file=sys.stderr, flush=True)
            runs[pair].append(measure(pair, opts))
    results = [combine(pair, runs[pair]) for pair in opts.pair_list]
    print(render(results, runs))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"results": [asdict(r) for r in results],
                       "runs": {k: [asdict(r) for r in v] for k, v in runs.items()}}, f, indent=1)
    return 1 if any(r.error for r in results) else 0
