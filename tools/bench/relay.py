"""Relay-node benchmark (`python3 -m tools.bench relay`): TCP throughput between two wgc peers behind
symmetric NATs in the NAT lab (no direct path), first through a wgc relay node on the public side
(`Relay = true`, UDP), then through `wgc derper` (TLS over TCP) in the same run, printed as a ratio.

The same lab, peers and iperf3 server serve both: the relay node is switched off for the spokes between
the two by a SIGHUP reload that unmarks it (`RelayNode = false`), so their peers fall back to DERP.
Each figure is the median of --repeat iperf3 runs of --time seconds, both directions. Needs root, iperf3,
nft. Traffic stays inside the lab's namespaces. Not part of the test suite (docs/relaynode.md).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

from tests.integration.pathlab import PathLab
from tests.integration.relaylab import RelayLabPeer, derp_bytes, forwarded, wait_for
from tools.bench.wg import IPERF_PORT, iperf, missing_prerequisites
from tools.natlab.lab import RegionSpec


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python3 -m tools.bench relay", description=__doc__.split("\n\n")[0])
    ap.add_argument("--time", type=int, default=5, help="whole seconds per iperf3 run (default 5)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure; the median is shown (default 3)")
    opts = ap.parse_args(argv)
    if not 1 <= opts.time <= 600 or not 1 <= opts.repeat <= 20:
        ap.error("--time is 1-600 s and --repeat 1-20")
    return opts


def path(pl: PathLab, p, other) -> str:
    return pl.peer_status(p, other, fast=True)["path"]


def settle(pl: PathLab, a, b, want: str, relay=None) -> None:
    def ready() -> bool:
        pl.ping_tunnel(a, b, count=1, deadline=2)
        pl.ping_tunnel(b, a, count=1, deadline=2)
        ok = path(pl, a, b) == want and path(pl, b, a) == want
        return ok and (relay is None or (path(pl, relay, a) == "direct" and path(pl, relay, b) == "direct"))
    if not wait_for(ready, 30.0, 0.3):
        raise RuntimeError(f"peers not on {want}: {pl.peer_status(a, b)['why']}")


def measure(pl: PathLab, a, b, opts) -> tuple[float, float]:
    runs = {"a->b": [], "b->a": []}
    for _ in range(opts.repeat):
        for name, args in (("a->b", []), ("b->a", ["-R"])):
            for attempt in range(3):   # an iperf3 control connection is now and then reset: run it again
                try:
                    report = iperf(a.ns, b.ip, args, opts.time)
                    break
                except RuntimeError as exc:
                    if attempt == 2:
                        raise
                    print(f"  {name}: {exc}; again", file=sys.stderr, flush=True)
            runs[name].append(report["end"]["sum_received"]["bits_per_second"])
    return statistics.median(runs["a->b"]), statistics.median(runs["b->a"])


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    problem = missing_prerequisites("relay", ["iperf3", "ping", "ip", "nft"])
    if problem:
        print(problem, file=sys.stderr)
        return 2
    with PathLab(["symmetric", "symmetric", "none"], regions=[RegionSpec(0)]) as pl:
        r = RelayLabPeer(pl, 3, relay=True)
        a, b = RelayLabPeer(pl, 1), RelayLabPeer(pl, 2)
        for s, t in ((a, b), (b, a)):
            r.know(s)
            s.know_relay(r)
            s.know(t)
        pl.peers.extend([r, a, b])
        for p in (r, a, b):
            p.start()
        for p in (r, a, b):
            pl.wait_home(p)
        b.ns.popen("iperf3", "-s", "-B", b.ip, "-p", str(IPERF_PORT))
        print(f"relay node ({opts.repeat} x {opts.time} s per figure)...", file=sys.stderr, flush=True)
        settle(pl, a, b, "relay-node", r)
        before = derp_bytes(pl, 1)
        node = measure(pl, a, b, opts)
        node_derp = derp_bytes(pl, 1) - before
        counted = sum(forwarded(pl, r).values())
        for s in (a, b):
            s.rewrite(lambda text: text.replace("RelayNode = true", "RelayNode = false"))
        print("DERP (wgc derper, TLS)...", file=sys.stderr, flush=True)
        settle(pl, a, b, "relay")
        time.sleep(0.5)
        derp = measure(pl, a, b, opts)
    rows = [("relay node (UDP)", node), ("wgc derper (TLS)", derp)]
    print(f"{'path between two symmetric-NAT peers':<40} {'TCP a->b':>12} {'TCP b->a':>12}")
    for name, (ab, ba) in rows:
        print(f"{name:<40} {ab / 1e6:>7.0f} Mbit/s {ba / 1e6:>7.0f} Mbit/s")
    print(f"{'ratio relay node / DERP':<40} {node[0] / derp[0]:>11.2f}x {node[1] / derp[1]:>11.2f}x")
    print(f"(during the relay-node runs DERP moved {node_derp} bytes; the relay node forwarded {counted})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
