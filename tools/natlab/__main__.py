"""Command line of the NAT lab: `python3 -m tools.natlab up|run|status|delay|loss|counts|cut|restore|derpmap|down ...` (needs root).

    python3 -m tools.natlab up --name demo --region 20 --region 60 --client cone --client symmetric
    python3 -m tools.natlab run demo client1 -- ping -c1 198.18.1.2
    python3 -m tools.natlab delay demo 1 80
    python3 -m tools.natlab loss demo 1 2.5    # drop 2.5 % of region 1's packets, each direction
    python3 -m tools.natlab counts demo 1      # region 1's link: offered=... dropped=... sent=... queued=...
    python3 -m tools.natlab cut demo 2 --region 1   # client 2's router drops UDP to/from region 1 (QUIC, STUN)
    python3 -m tools.natlab restore demo 2     # ... lets UDP through again
    python3 -m tools.natlab down demo          # or: down --all
    python3 -m tools.natlab clean              # namespaces of lab processes that were killed
A lab built by `up` outlives the command; its description is kept in /run/natlab/<name>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from tools.natlab.lab import NAT_TYPES, STATE_DIR, ClientSpec, LabError, NatLab, RegionSpec, clean_stale


def _state_path(name: str):
    return STATE_DIR / f"{name}.json"


def _load(name: str) -> NatLab:
    try:
        with open(_state_path(name)) as fh:
            return NatLab.attach(json.load(fh))
    except FileNotFoundError:
        raise LabError(f"no lab named {name!r} is up (start one with: python3 -m tools.natlab up --name {name})")


def _describe(lab: NatLab) -> str:
    lines = [f"lab {lab.name}:"]
    for i, spec in enumerate(lab.regions, 1):
        lines.append(f"  region{i}: id {lab.region_id(i)}, {lab.region_ip(i)} / {lab.region_ip(i, 6)}, "
                     f"+{spec.delay_ms:g} ms RTT, {spec.loss_pct:g} % loss")
    for k, spec in enumerate(lab.clients, 1):
        lines.append(f"  client{k}: nat {spec.nat}, address {lab.client_ip(k)}, public {lab.public_ip(k)}")
    lines.append(f"  nodes: {' '.join(lab.nodes)}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m tools.natlab", description="NAT lab of network namespaces")
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="build a lab and leave it running")
    up.add_argument("--name", default="lab")
    up.add_argument("--region", type=float, action="append", default=[], metavar="DELAY_MS",
                    help="add a region with this added round-trip time (repeat)")
    up.add_argument("--client", action="append", default=[], choices=NAT_TYPES,
                    help="add a client behind this kind of NAT (repeat)")
    up.add_argument("--stun", action="store_true", help="start a natprobe STUN server in every region")
    run = sub.add_parser("run", help="run a command on a lab node")
    run.add_argument("name")
    run.add_argument("node")
    run.add_argument("command", nargs=argparse.REMAINDER)
    st = sub.add_parser("status", help="describe a running lab")
    st.add_argument("name")
    dl = sub.add_parser("delay", help="change a region's added round-trip time")
    dl.add_argument("name")
    dl.add_argument("region", type=int)
    dl.add_argument("delay_ms", type=float)
    ls = sub.add_parser("loss", help="change the share of a region's packets dropped (each direction)")
    ls.add_argument("name")
    ls.add_argument("region", type=int)
    ls.add_argument("loss_pct", type=float)
    ct = sub.add_parser("counts", help="a region link's packet counters (offered, dropped, sent, queued)")
    ct.add_argument("name")
    ct.add_argument("region", type=int)
    cu = sub.add_parser("cut", help="drop UDP at a client's NAT router (all of it, or to/from one region)")
    cu.add_argument("name")
    cu.add_argument("client", type=int)
    cu.add_argument("--region", type=int, help="only UDP to and from this region")
    rs = sub.add_parser("restore", help="lift every UDP cut of a client's router")
    rs.add_argument("name")
    rs.add_argument("client", type=int)
    dm = sub.add_parser("derpmap", help="print a DERP map of the lab's regions")
    dm.add_argument("name")
    dm.add_argument("--stun-port", type=int, default=3478)
    dm.add_argument("--derp-port", type=int, default=443)
    down = sub.add_parser("down", help="tear a lab down")
    down.add_argument("name", nargs="?")
    down.add_argument("--all", action="store_true")
    sub.add_parser("clean", help="remove namespaces left by lab-building processes that died (e.g. SIGKILL)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if os.geteuid() != 0:
        print("error: the NAT lab needs root (network namespaces)", file=sys.stderr)
        return 2
    try:
        return _dispatch(args)
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as exc:
        print(f"error: {' '.join(exc.cmd)} failed: {(exc.stderr or '').strip()}", file=sys.stderr)
        return 1


def _dispatch(args) -> int:
    if args.cmd == "up":
        if _state_path(args.name).exists():
            raise LabError(f"lab {args.name!r} is already up (python3 -m tools.natlab down {args.name})")
        lab = NatLab([RegionSpec(d) for d in args.region], [ClientSpec(c) for c in args.client], name=args.name)
        try:
            if args.stun:
                for i in range(1, len(lab.regions) + 1):
                    lab.popen(f"region{i}", sys.executable, "-m", "natprobe", "stun-server",
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            STATE_DIR.mkdir(parents=True, exist_ok=True)
            _state_path(args.name).write_text(json.dumps(lab.state()))
        except BaseException:
            lab.close()
            raise
        print(_describe(lab))
        return 0
    if args.cmd == "clean":
        for name in clean_stale():
            print(f"removed stale namespace {name}")
        return 0
    if args.cmd == "down":
        names = [p.stem for p in STATE_DIR.glob("*.json")] if args.all else [args.name] if args.name else []
        if not names:
            raise LabError("say which lab to tear down, or --all")
        for name in names:
            _load(name).close()
            _state_path(name).unlink(missing_ok=True)
            print(f"lab {name} is down")
        return 0
    lab = _load(args.name)
    if args.cmd == "status":
        print(_describe(lab))
    elif args.cmd in ("delay", "loss"):
        if not 1 <= args.region <= len(lab.regions):
            raise LabError(f"lab {args.name} has regions 1..{len(lab.regions)}")
        if args.cmd == "delay":
            lab.set_delay(args.region, args.delay_ms)
        else:
            lab.set_loss(args.region, args.loss_pct)
        _state_path(args.name).write_text(json.dumps(lab.state()))
    elif args.cmd in ("cut", "restore"):
        if not 1 <= args.client <= len(lab.clients):
            raise LabError(f"lab {args.name} has clients 1..{len(lab.clients)}")
        if args.cmd == "cut":
            lab.cut_udp(args.client, region=args.region)
        else:
            lab.restore_udp(args.client)
    elif args.cmd == "counts":
        counts = lab.link_counts(args.region)
        print(" ".join(f"{k}={v}" for k, v in counts.items()))
    elif args.cmd == "derpmap":
        print(json.dumps(lab.derpmap(stun_port=args.stun_port, derp_port=args.derp_port), indent=2))
    elif args.cmd == "run":
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not command:
            raise LabError("no command given (python3 -m tools.natlab run NAME NODE -- CMD ...)")
        argv = lab.argv(args.node, *command)
        os.execvp(argv[0], argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
