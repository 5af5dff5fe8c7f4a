"""`wgc netcheck`: probe the network (UDP, public addresses, NAT mapping, relay latencies, port mapping,
captive portal) against the STUN nodes of a DERP map and print a report like `tailscale netcheck`.

Converts the DERP map into natprobe's neutral regions, runs `natprobe.aio.netcheck.run_netcheck`, keeps the
report history (for the home-region hysteresis) in a small JSON state file between runs.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import pathlib
import sys

from derp.aio.derpmap_loader import load_derpmap
from ..derpregions import regions_from_derpmap  # noqa: F401  (kept importable from here)
from derp.errors import Error as DerpError
from natprobe.aio.netcheck import NetcheckOptions, run_netcheck
from natprobe.errors import Error as NatprobeError
from natprobe.errors import ParseError
from natprobe.home import History
from natprobe.report import format_human

DEFAULT_DERPMAP = "https://controlplane.tailscale.com/derpmap/default"


def default_state_file() -> pathlib.Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return pathlib.Path(base) / "wgc" / "netcheck.json"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wgc netcheck", description="Print an analysis of local network conditions.")
    p.add_argument("--derpmap", metavar="URL|FILE",
                   default=os.environ.get("WGC_DERPMAP", DEFAULT_DERPMAP),
                   help="DERP map to probe (default: $WGC_DERPMAP, else Tailscale's default map)")
    p.add_argument("--ca-file", help="CA bundle for fetching the map and for the HTTPS latency fallback")
    p.add_argument("--json", action="store_true", help="print the report as JSON (same as --format=json)")
    p.add_argument("--format", choices=("text", "json", "json-line"), default="text")
    p.add_argument("--verbose", "-v", action="store_true", help="log progress, probe all regions, show IDs")
    p.add_argument("--state", metavar="FILE", default=None,
                   help=f"history file for the nearest-region choice (default {default_state_file()})")
    p.add_argument("--no-state", action="store_true", help="neither read nor write the history file")
    p.add_argument("--no-portmap", action="store_true", help="do not probe UPnP/NAT-PMP/PCP on the gateway")
    p.add_argument("--no-captive-portal", action="store_true", help="skip the captive portal check")
    p.add_argument("--no-icmp", action="store_true", help="no ICMP echo in the UDP-blocked latency fallback")
    p.add_argument("--every", type=float, default=0.0, metavar="SECONDS",
                   help="repeat every SECONDS (later reports are incremental) until interrupted")
    p.add_argument("--bind-address", default=None, help="local address for the STUN sockets")
    p.add_argument("--bind-port", type=int, default=0, help="local UDP port for the STUN sockets")
    return p


def _load_history(path: pathlib.Path | None) -> History:
    if path is None or not path.exists():
        return History()
    try:
        return History.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, ParseError) as exc:
        print(f"warning: ignoring unreadable netcheck history {path}: {exc}", file=sys.stderr)
        return History()


def _save_history(path: pathlib.Path | None, history: History) -> None:
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(history.to_json()))
        os.replace(tmp, path)
    except OSError as exc:
        print(f"warning: cannot save netcheck history {path}: {exc}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.json:
        args.format = "json"
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s: %(message)s")
    if not 0 <= args.bind_port <= 65535:
        print(f"error: --bind-port out of range: {args.bind_port}", file=sys.stderr)
        return 2
    try:
        dm = load_derpmap(args.derpmap, ca_file=args.ca_file, timeout=10.0)
    except DerpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    regions = regions_from_derpmap(dm)
    state = None if args.no_state else pathlib.Path(args.state) if args.state else default_state_file()
    history = _load_history(state)
    options = NetcheckOptions(verbose=args.verbose, portmap=not args.no_portmap,
                              captive_portal=not args.no_captive_portal, icmp=not args.no_icmp,
                              ca_file=args.ca_file,
                              bind_port=args.bind_port)
    if args.bind_address:
        key = "bind_v6" if ":" in args.bind_address else "bind_v4"
        options = dataclasses.replace(options, **{key: args.bind_address})
    scores = dict(dm.home_params.region_score or {}) if dm.home_params else None
    if args.every < 0:
        print("error: --every must be positive", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_loop(args, regions, history, options, scores, state))
    except NatprobeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


async def _loop(args, regions: list, history: History, options: NetcheckOptions,
                scores: dict[int, float] | None, state: pathlib.Path | None) -> int:
    while True:
        report = await run_netcheck(regions, history=history, options=options, scores=scores)
        _save_history(state, history)
        if args.format == "json":
            print(json.dumps(report.to_json(), indent="\t"))
        elif args.format == "json-line":
            print(json.dumps(report.to_json()))
        else:
            print(format_human(report, {r.region_id: r for r in regions}, verbose=args.verbose,
                               portmap_checked=not args.no_portmap), end="")
        sys.stdout.flush()
        if not args.every:
            return 0
        options = dataclasses.replace(options, force_full=False)
        await asyncio.sleep(args.every)


if __name__ == "__main__":
    sys.exit(main())
