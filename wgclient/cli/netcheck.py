"""`wgc netcheck`: probe the network (UDP, public addresses, NAT mapping, relay latencies, port mapping,
captive portal) against the STUN nodes of a DERP map and print a report like `tailscale netcheck`.

Converts the DERP map into natprobe's neutral regions, runs `natprobe.aio.netcheck.run_netcheck`, keeps the
report history (for the home-region hysteresis) in a small JSON state file between runs.

Without --derpmap (and $WGC_DERPMAP) it probes Tailscale's public DERP map, and says so in --help and in
the report. Every error is one line, `wgc: ...` on stderr and exit 2; with --json/--format json* it is a
JSON object `{"Error": "..."}` on stdout instead.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import pathlib
import re
import sys

from derp.aio.atomicfile import write_atomic
from derp.aio.derpmap_loader import load_derpmap
from ..derpregions import regions_from_derpmap  # noqa: F401  (kept importable from here)
from derp.errors import Error as DerpError
from derp.errors import ParseError as DerpParseError
from natprobe.aio.netcheck import NetcheckOptions, run_netcheck
from natprobe.errors import Error as NatprobeError
from natprobe.errors import ParseError
from natprobe.home import History
from natprobe.report import format_human

DEFAULT_DERPMAP = "https://controlplane.tailscale.com/derpmap/default"
MAP_HINT = "give --derpmap FILE|URL"


class NetcheckUsage(Exception):
    """A one-line error for the user."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise NetcheckUsage(f"{message} (see '{self.prog} --help')")


def default_state_file() -> pathlib.Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return pathlib.Path(base) / "wgc" / "netcheck.json"


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="wgc netcheck", description="Print an analysis of local network conditions: UDP, public "
                "addresses, NAT mapping, the latency to each DERP region. Without --derpmap it probes "
                "Tailscale's public DERP map.")
    p.add_argument("--derpmap", metavar="URL|FILE", default=None,
                   help=f"DERP map to probe (default: $WGC_DERPMAP, else Tailscale's public map, {DEFAULT_DERPMAP}, "
                        "fetched over the internet)")
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
        write_atomic(path, json.dumps(history.to_json()), 0o644, make_dirs=0o755)
    except OSError as exc:
        print(f"warning: cannot save netcheck history {path}: {exc}", file=sys.stderr)


def _wants_json(argv: list[str]) -> bool:
    for i, arg in enumerate(argv):
        if arg == "--json" or arg.startswith("--format=json") or \
                arg == "--format" and i + 1 < len(argv) and argv[i + 1].startswith("json"):
            return True
    return False


def map_source(args) -> tuple[str, bool]:
    """The DERP map to load and whether it is the built-in default (Tailscale's public map)."""
    if args.derpmap:
        return args.derpmap, False
    env = os.environ.get("WGC_DERPMAP")
    return (env, False) if env else (DEFAULT_DERPMAP, True)


def map_error(source: str, exc: Exception, hint: bool) -> str:
    """One line for a DERP map that cannot be loaded: `cannot fetch the DERP map URL: reason` for a URL."""
    text = str(exc)
    if source.lower().startswith(("http://", "https://")):
        for prefix in (f"cannot fetch DERP map from {source}: ", f"DERP map URL {source} ", f"DERP map at {source} "):
            if text.startswith(prefix):
                text = text[len(prefix):]
                break
        text = re.sub(r"^\[Errno -?\d+\] ", "", text)
        verb = "use" if isinstance(exc, DerpParseError) else "fetch"
        text = f"cannot {verb} the DERP map {source}: {text}"
    return text + (f" ({MAP_HINT})" if hint else "")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = _wants_json(argv)
    try:
        return _run(argv)
    except (NetcheckUsage, NatprobeError) as exc:
        if as_json:
            print(json.dumps({"Error": str(exc)}))
        else:
            print(f"wgc: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.json:
        args.format = "json"
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s: %(message)s")
    if not 0 <= args.bind_port <= 65535:
        raise NetcheckUsage(f"--bind-port out of range: {args.bind_port}")
    if args.every < 0:
        raise NetcheckUsage("--every must be positive")
    source, default = map_source(args)
    try:
        dm = load_derpmap(source, ca_file=args.ca_file, timeout=10.0)
    except DerpError as exc:
        raise NetcheckUsage(map_error(source, exc, hint=not args.derpmap)) from None
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
    return asyncio.run(_loop(args, regions, history, options, scores, state, (source, default)))


def map_line(source: str, default: bool) -> str:
    """The report's line naming the DERP map when it was not chosen by the user."""
    return (f"\t* DERP map: Tailscale's public map, {source} (no --derpmap given)\n" if default else "")


async def _loop(args, regions: list, history: History, options: NetcheckOptions,
                scores: dict[int, float] | None, state: pathlib.Path | None, derpmap: tuple[str, bool]) -> int:
    while True:
        report = await run_netcheck(regions, history=history, options=options, scores=scores)
        _save_history(state, history)
        if args.format in ("json", "json-line"):
            data = dict(report.to_json(), DERPMap=derpmap[0])
            print(json.dumps(data, indent="\t" if args.format == "json" else None))
        else:
            print(format_human(report, {r.region_id: r for r in regions}, verbose=args.verbose,
                               portmap_checked=not args.no_portmap) + map_line(*derpmap), end="")
        sys.stdout.flush()
        if not args.every:
            return 0
        options = dataclasses.replace(options, force_full=False)
        await asyncio.sleep(args.every)


if __name__ == "__main__":
    sys.exit(main())
