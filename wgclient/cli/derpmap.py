"""`wgc derpmap write | validate | show`, and the DERP map flags of `wgc up`.

- `write`: a map for one or more relays from flags, in order: `--region ID` starts a region (then `--code`,
  `--name`, `--no-measure-no-home`), `--host NAME` starts a node in it (then `--ipv4`, `--ipv6`,
  `--derp-port`, `--stun-port`, `--quic-port`, `--cert-name`, `--stun-only`, `--can-port80`, `--node-name`). The result
  is checked by the parser, so a mistake is named as in any map (`region 900 node '900a': DERPPort ...`);
  `--policy` wraps it as a Tailscale policy file's `{"derpMap": ...}`. To stdout or `-o FILE` (atomic).
- `validate SOURCE...`: each file or URL loaded and checked; a summary per source (naming the nodes that
  speak DERP over QUIC, `WgcQUICPort`), warnings for fields nobody reads, exit 1 when one is unusable (the error names the region, node and field).
- `show [NAME]`: the map a running interface uses, read through its control socket (as
  `tailscale debug derp-map`; wgc's own `WgcQUICPort` is printed where a node has it); `--source` prints where it came from instead.
`wgc up` takes several `--derpmap` sources (tried in order), `--derpmap-cache FILE|off`,
`--derpmap-refresh DURATION`, `--derp-transport auto|quic|upgrade|websocket` (docs/derp-quic.md; auto
unless forced) and `--metrics-addr ADDR`; `up_serve_kwargs` turns them into serve() arguments.
"""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import re
import sys
from typing import Any, Sequence

from derp.aio.atomicfile import write_atomic
from derp.derpmap import DerpMap, parse_derpmap
from derp.errors import Error as DerpError

from ..errors import Error, UsageError
from .status import ArgParser

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(text: str) -> float:
    """Seconds from `300`, `30s`, `5m`, `1m30s`, `1h` (Go's duration form); `0` or `off` disables."""
    text = text.strip().lower()
    if text in ("off", "0"):
        return 0.0
    try:
        return float(text)
    except ValueError:
        pass
    if not text or _DURATION.sub("", text):
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 300, 30s, 5m, 1h)")
    return sum(float(n) * _UNIT[u] for n, u in _DURATION.findall(text))


# -- wgc up ------------------------------------------------------------------------------------------------

def add_up_arguments(up: argparse.ArgumentParser) -> None:
    up.add_argument("--derpmap", metavar="URL|FILE", action="append",
                    help="DERP map (Tailscale JSON or a policy file's derpMap): peers are relayed through DERP "
                         "until a direct path works; give it several times for fallback sources, tried in order")
    up.add_argument("--derpmap-cache", metavar="FILE|off",
                    help="where the last good map is kept, to start from when every source is down "
                         "(default: $WGC_STATE_DIR/NAME.derpmap.json, WGC_STATE_DIR=/var/lib/wgc)")
    up.add_argument("--derpmap-refresh", metavar="DURATION", type=parse_duration, default=None,
                    help="reload the map this often (default 5m; 0: only on SIGHUP)")
    up.add_argument("--derp-transport", metavar="MODE", choices=("auto", "quic", "upgrade", "websocket"),
                    help="how DERP relays are reached: auto (QUIC where the map's node has WgcQUICPort and UDP "
                         "works, else TLS, then WebSocket; the default), or only quic, upgrade (TLS) or websocket")
    up.add_argument("--metrics-addr", metavar="ADDR",
                    help="serve Prometheus metrics at http://ADDR/metrics (PORT or :PORT is loopback; "
                         "default: off)")


def up_serve_kwargs(args: argparse.Namespace, config: Any) -> dict:
    """serve() keyword arguments for the DERP map and metrics flags; loads the map (UsageError if none)."""
    kwargs: dict = {}
    if args.metrics_addr:
        from ..aio.metrics import parse_metrics_addr
        parse_metrics_addr(args.metrics_addr)   # a bad address is refused before anything is created
        kwargs["metrics_addr"] = args.metrics_addr
    if not args.derpmap:
        if args.derpmap_cache or args.derpmap_refresh is not None or args.derp_transport:
            raise UsageError("--derpmap-cache, --derpmap-refresh and --derp-transport need --derpmap")
        return kwargs
    if args.derp_transport and args.derp_transport != "auto":
        kwargs["derp_transport"] = args.derp_transport
    from ..aio.derpmap_source import DEFAULT_INTERVAL, DerpMapSource, default_cache_path
    from ..aio.hostsetup import choose_fwmark
    from ..derpregions import region_hints
    cache = args.derpmap_cache or default_cache_path(config.name)
    source = DerpMapSource(args.derpmap, cache_path=None if cache == "off" else cache, ca_file=args.derp_ca_file,
                           interval=DEFAULT_INTERVAL if args.derpmap_refresh is None else args.derpmap_refresh,
                           fwmark=choose_fwmark(config)[0])   # marked like the interface's sockets will be
    derpmap = source.load_initial()        # loaded and checked before anything is created (and before forking)
    if source.cache_warning():
        print(f"wgc: warning: {source.cache_warning()}", file=sys.stderr)
    region_hints(config, derpmap)
    kwargs.update(derpmap=derpmap, derpmap_source=source)
    if args.derp_ca_file:
        kwargs["derp_ca_file"] = args.derp_ca_file
    return kwargs


# -- wgc derpmap write ---------------------------------------------------------------------------------------

REGION_FIELDS = {"code": "RegionCode", "name": "RegionName", "no_measure_no_home": "NoMeasureNoHome"}
NODE_FIELDS = {"ipv4": "IPv4", "ipv6": "IPv6", "derp_port": "DERPPort", "stun_port": "STUNPort",
               "quic_port": "WgcQUICPort", "cert_name": "CertName", "stun_only": "STUNOnly", "can_port80": "CanPort80", "node_name": "Name"}


class _InOrder(argparse.Action):
    """Records (flag, value) in the order given: what a value applies to depends on where it stands."""

    def __call__(self, parser, namespace, values, option_string=None):
        if not hasattr(namespace, "ordered") or namespace.ordered is None:
            namespace.ordered = []
        namespace.ordered.append((self.dest, True if self.const is not None and values == [] else values))


def _address(version: int):
    def check(text: str) -> str:
        if text.lower() == "none":
            return "none"
        try:
            if ipaddress.ip_address(text).version == version:
                return text
        except ValueError:
            pass
        raise argparse.ArgumentTypeError(f"not an IPv{version} address (or 'none' to disable IPv{version}): {text!r}")
    return check


def _port(low: int):
    def check(text: str) -> int:
        if not re.fullmatch(r"-?\d+", text) or not low <= int(text) <= 65535:
            raise argparse.ArgumentTypeError(f"not a port ({low}-65535): {text!r}")
        return int(text)
    return check


def _region_id(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 2**53:
        raise argparse.ArgumentTypeError(f"not a region id (1 or more; 900-999 are for your own relays): {text!r}")
    return int(text)


def build_map(ordered: list[tuple[str, Any]], omit_default_regions: bool = True) -> DerpMap:
    """The map the ordered flags describe, checked by the map parser (UsageError naming what is wrong)."""
    regions: dict[str, dict] = {}
    region: dict | None = None
    node: dict | None = None
    for flag, value in ordered:
        if flag == "region":
            if str(value) in regions:
                raise UsageError(f"--region {value} is given twice")
            region = regions[str(value)] = {"RegionID": value, "RegionCode": "", "RegionName": "", "Nodes": []}
            node = None
        elif region is None:
            raise UsageError(f"--{flag.replace('_', '-')} comes before any --region")
        elif flag == "host":
            node = {"Name": f"{region['RegionID']}{_letter(len(region['Nodes']))}", "RegionID": region["RegionID"],
                    "HostName": value}
            region["Nodes"].append(node)
        elif flag in REGION_FIELDS:
            region[REGION_FIELDS[flag]] = value
        elif node is None:
            raise UsageError(f"--{flag.replace('_', '-')} comes before any --host of region {region['RegionID']}")
        else:
            node[NODE_FIELDS[flag]] = value
    if not regions:
        raise UsageError("give at least one --region ID --host NAME")
    for rid, reg in regions.items():
        if not reg["Nodes"]:
            raise UsageError(f"region {rid} has no --host")
        reg["RegionCode"] = reg["RegionCode"] or f"r{rid}"
    try:
        return parse_derpmap(json.dumps({"Regions": regions, "omitDefaultRegions": omit_default_regions}))
    except DerpError as exc:
        raise UsageError(str(exc)) from None


def _letter(i: int) -> str:
    return chr(ord("a") + i) if i < 26 else f"n{i}"


def write_parser() -> ArgParser:
    p = ArgParser(prog="wgc derpmap write", description="Write a DERP map for your relays. Flags apply to the "
                  "--region (and --host) before them: --region 900 --code fra --host derp.example.net "
                  "--ipv4 203.0.113.10 --region 901 ...")
    order = {"action": _InOrder, "default": None}
    p.add_argument("--region", type=_region_id, metavar="ID", help="start a region (900-999: your own relays)",
                   **order)
    p.add_argument("--code", metavar="CODE", help="the region's short code (shown by status and ping)", **order)
    p.add_argument("--name", metavar="TEXT", help="the region's long name", **order)
    p.add_argument("--no-measure-no-home", nargs=0, const=True, help="never measured, never home", **order)
    p.add_argument("--host", metavar="NAME", help="start a node of the region: its DNS name (or IP)", **order)
    p.add_argument("--ipv4", type=_address(4), metavar="ADDR", help="the node's IPv4 ('none': no IPv4)", **order)
    p.add_argument("--ipv6", type=_address(6), metavar="ADDR", help="the node's IPv6 ('none': no IPv6)", **order)
    p.add_argument("--derp-port", type=_port(0), metavar="PORT", help="DERP (HTTPS) port (default 443)", **order)
    p.add_argument("--stun-port", type=_port(-1), metavar="PORT", help="STUN port (default 3478; -1: none)",
                   **order)
    p.add_argument("--quic-port", type=_port(0), metavar="PORT", help="UDP port of DERP over QUIC "
                   "(WgcQUICPort, wgc clients only; default: none)", **order)
    p.add_argument("--cert-name", metavar="NAME", help="certificate name, or sha256-raw:<hex> to pin a "
                   "self-signed one (wgc derper prints it)", **order)
    p.add_argument("--stun-only", nargs=0, const=True, help="the node only answers STUN", **order)
    p.add_argument("--can-port80", nargs=0, const=True, help="the node serves plain HTTP on port 80", **order)
    p.add_argument("--node-name", metavar="NAME", help="the node's name (default: region id + letter)", **order)
    p.add_argument("--keep-default-regions", action="store_true",
                   help="leave omitDefaultRegions unset (Tailscale would add its own regions)")
    p.add_argument("--policy", action="store_true", help='wrap as a Tailscale policy file: {"derpMap": ...}')
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE (atomically) instead of stdout")
    return p


def cmd_write(argv: Sequence[str]) -> int:
    args = write_parser().parse_args(list(argv))
    dm = build_map(getattr(args, "ordered", None) or [], omit_default_regions=not args.keep_default_regions)
    doc = {"derpMap": dm.to_dict()} if args.policy else dm.to_dict()
    text = json.dumps(doc, indent=2) + "\n"
    if not args.output:
        sys.stdout.write(text)
        return 0
    try:
        write_atomic(args.output, text, 0o644)
    except OSError as exc:
        raise UsageError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    return 0


# -- wgc derpmap validate / show -------------------------------------------------------------------------------

def summary(dm: DerpMap) -> str:
    parts = []
    for rid, reg in sorted(dm.regions.items()):
        n = len(reg.nodes)
        quic = sum(1 for node in reg.derp_nodes() if node.wgc_quic_port)
        also = "" if not quic else (", QUIC" if quic == n else f", {quic} with QUIC")
        parts.append(f'{rid} "{reg.region_code or rid}" ({n} node{"" if n == 1 else "s"}{also})')
    flags = ", omitDefaultRegions" if dm.omit_default_regions else ""
    count = len(dm.regions)
    return f"{count} region{'' if count == 1 else 's'}{flags}: " + ", ".join(parts) if parts else "no regions"


def cmd_validate(argv: Sequence[str]) -> int:
    p = ArgParser(prog="wgc derpmap validate", description="Load DERP map files or URLs and check them; "
                  "errors and warnings name the region, node and field.")
    p.add_argument("sources", nargs="+", metavar="FILE|URL")
    p.add_argument("--derp-ca-file", metavar="FILE", help="extra CA certificates for https URLs")
    args = p.parse_args(list(argv))
    from derp.aio.derpmap_loader import load_derpmap

    from ..aio.derpmap_source import problem
    bad = 0
    for source in args.sources:
        warnings: list[str] = []
        try:
            dm = load_derpmap(source, ca_file=args.derp_ca_file, timeout=10.0, warnings=warnings)
        except DerpError as exc:
            print(f"{source}: error: {exc}")
            bad += 1
            continue
        for line in warnings:
            print(f"{source}: warning: {line}")
        why = problem(dm)
        if why is not None:
            print(f"{source}: error: the DERP map {why}")
            bad += 1
            continue
        for rid, reg in sorted(dm.regions.items()):
            if not reg.derp_nodes():
                print(f"{source}: warning: region {rid} has only STUN nodes (never dialed for DERP)")
        print(f"{source}: ok, {summary(dm)}")
    return 1 if bad else 0


def cmd_show(argv: Sequence[str]) -> int:
    p = ArgParser(prog="wgc derpmap show", description="Print the DERP map a running interface uses "
                  "(Tailscale's JSON, as `tailscale debug derp-map`).")
    p.add_argument("name", nargs="?", help="interface (default: the only one running)")
    p.add_argument("--source", action="store_true", help="print where the map came from (JSON) instead")
    args = p.parse_args(list(argv))
    from ..aio.control_server import ControlClient, choose_interface

    async def fetch() -> dict:
        client = await ControlClient.connect(choose_interface(args.name))
        try:
            return await client.derpmap()
        finally:
            client.close()

    reply = asyncio.run(fetch())
    json.dump(reply["source"] if args.source else reply["derpmap"], sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


COMMANDS = {"write": cmd_write, "validate": cmd_validate, "show": cmd_show}
USAGE = ("usage: wgc derpmap write --region ID [--code C] --host NAME [node flags] ... [-o FILE]\n"
         "       wgc derpmap validate FILE|URL...\n"
         "       wgc derpmap show [NAME] [--source]\n")


def main(argv: Sequence[str]) -> int:
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        sys.stderr.write(USAGE)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"wgc: unknown derpmap command {argv[0]!r} (write, validate or show)", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 1
    try:
        return COMMANDS[argv[0]](argv[1:])
    except Error as e:   # UsageError from the user or the daemon, ParseError from a garbled reply
        print(f"wgc: {e}", file=sys.stderr)
        return 1
