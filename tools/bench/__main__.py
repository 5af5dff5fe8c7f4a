"""Benchmark entry point: `python3 -m tools.bench wg|derp|flood|relay|quic|derpquic [options]`.

Dispatches to tools/bench/wg.py (WireGuard data plane), tools/bench/derp.py (DERP relay),
tools/bench/flood.py (tunnel loss under a handshake flood), tools/bench/relay.py (relay node vs DERP),
tools/bench/quic.py (DERP-over-QUIC datagrams: congestion controllers, aioquic CPU cost) or
tools/bench/derpquic.py (DERP over QUIC vs TCP under loss in the NAT lab), each imported only when asked for so one
benchmark's prerequisites never block another.
"""
from __future__ import annotations

import importlib
import sys

BENCHES = {"wg": "WireGuard data plane: veth, wireguard-go and wgc pairs (iperf3)",
           "derp": "DERP relay throughput and latency",
           "flood": "ping loss through a tunnel under a handshake flood: wgc vs wireguard-go",
           "relay": "two symmetric-NAT peers: through a wgc relay node vs through wgc derper (NAT lab)",
           "quic": "DERP-over-QUIC datagrams on an emulated lossy link: controllers' goodput, aioquic CPU cost",
           "derpquic": "two symmetric-NAT peers relayed over DERP/TCP vs DERP/QUIC at 0/1/3 % loss (NAT lab)"}


def usage() -> str:
    lines = [f"usage: python3 -m tools.bench {{{','.join(BENCHES)}}} [options]   (--help after a name for its options)"]
    lines += [f"  {name:<8} {text}" for name, text in BENCHES.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in BENCHES:
        print(f"tools.bench: unknown benchmark {name!r}\n{usage()}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(f"tools.bench.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"tools.bench.{name}":
            raise
        print(f"tools.bench: the {name} benchmark is not available yet", file=sys.stderr)
        return 2
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
