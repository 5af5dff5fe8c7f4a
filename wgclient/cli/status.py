"""`wgc status [NAME] [--json] [--why PEER]`: what a running interface is doing, read over its control socket.

Text like `tailscale status`: the node's home region and netcheck summary, then one row per peer (name,
tunnel addresses, short key, path, latency, last handshake, bytes in/out). NAME may be left out when exactly
one interface runs. `--json` prints the daemon's snapshot as it came (schema in docs/control.md); `--why
PEER` explains that peer's path. A user mistake is one line on stderr and exit 1.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Sequence

from ..aio.control_server import ControlClient, choose_interface
from ..control import format_status, format_why, select_peer
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


def run(argv: Sequence[str]) -> int:
    args = parser().parse_args(list(argv))
    status = asyncio.run(fetch_status(args.name))
    if args.json:
        json.dump(status, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif args.why is not None:
        sys.stdout.write(format_why(select_peer(status["peers"], args.why)))
    else:
        sys.stdout.write(format_status(status, time.time()))
    return 0


def main(argv: Sequence[str]) -> int:
    try:
        return run(argv)
    except Error as e:   # UsageError from the user or the daemon, ParseError from a garbled reply
        print(f"wgc: {e}", file=sys.stderr)
        return 1
