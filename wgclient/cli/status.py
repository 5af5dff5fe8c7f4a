"""`wgc status [NAME] [--json] [--why PEER]`: what a running interface is doing, read over its control socket.

Text like `tailscale status`: the node's home region and netcheck summary, then one row per peer (name,
tunnel addresses, short key, path, latency, last handshake, bytes in/out). NAME may be left out when exactly
one interface runs. `--json` prints the daemon's snapshot as it came (schema in docs/control.md); `--why
PEER` explains that peer's path (without NAME: on the one running interface that has PEER, `find_peer`,
which `wgc ping` uses too). A user mistake is one line on stderr and exit 1.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Sequence

from ..aio.control_server import ControlClient, choose_interface, running_interfaces, wait_for_interfaces
from ..control import format_status, format_why, select_interface_peer
from ..errors import Error, UsageError


class ArgParser(argparse.ArgumentParser):
    def error(self, message: str):  # one clean line and exit 1, like every other user mistake
        raise UsageError(f"{message} (see '{self.prog} --help')")


def parser() -> argparse.ArgumentParser:
    p = ArgParser(prog="wgc status", description="Show the path, latency and traffic of every peer of a "
                                                 "running wgc interface.")
    p.add_argument("name", nargs="?", help="interface (default: the only one running)")
    p.add_argument("--json", action="store_true", help="print the daemon's status snapshot as JSON")
    p.add_argument("--why", metavar="PEER", help="explain why PEER is direct or relayed "
                                                 "(a name, a tunnel IP or the start of its key)")
    return p


async def fetch_status(name: str | None) -> dict:
    client = await ControlClient.connect(choose_interface(name))
    try:
        return await client.status()
    finally:
        client.close()


async def find_peer(name: str | None, text: str, name_one: str, wait: float = 0.0) -> tuple[str, dict]:
    """(interface, peer) for PEER as the user typed it: on interface `name`, else on the one running
    interface that has such a peer. With `wait`, wait up to that many seconds for a control socket to come
    up (an interface still starting). `name_one` says how to name an interface when several have PEER."""
    if wait:
        names = await wait_for_interfaces(name, wait)
    else:
        names = [name] if name else running_interfaces()
    if name and not names:
        names = [name]                 # connecting says why it is not there
    if not names:
        raise UsageError("no wgc interface is running")
    statuses = await asyncio.gather(*(fetch_status(n) for n in names))
    return select_interface_peer(dict(zip(names, statuses)), text, name_one)


def run(argv: Sequence[str]) -> int:
    args = parser().parse_args(list(argv))
    if args.why is not None and not args.json:
        _, peer = asyncio.run(find_peer(args.name, args.why, "wgc status NAME --why PEER"))
        sys.stdout.write(format_why(peer))
        return 0
    status = asyncio.run(fetch_status(args.name))
    if args.json:
        json.dump(status, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_status(status, time.time()))
    return 0


def main(argv: Sequence[str]) -> int:
    try:
        return run(argv)
    except Error as e:   # UsageError from the user or the daemon, ParseError from a garbled reply
        print(f"wgc: {e}", file=sys.stderr)
        return 1
