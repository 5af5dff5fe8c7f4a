"""`wgc ping PEER [-c N] [--until-direct] [--timeout S] [-i NAME]`: disco pings through a running interface.

PEER is a name, a tunnel IP or the start of a base64 key (wgclient.control.select_peer); without -i it is
looked up on every running interface and the one that has it is used. An interface that is still coming up
(no control socket yet) is waited for up to --timeout. Each ping goes
over the daemon's control socket, which sends one disco ping over the peer's current path (DERP and/or
direct) and reports the first pong: `pong from laptop (100.64.0.2) via DERP(fra) in 12ms` or `... via
198.51.100.7:41641 in 3ms`. Pings are about --interval (1 s) apart; with --until-direct it stops at the
first direct pong. Exit status 0 when a pong came (with --until-direct: a direct one), else 1.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Sequence

from ..aio.control_server import ControlClient
from ..control import MAX_PING_TIMEOUT, format_pong, format_timeout, printable
from ..errors import Error, UsageError
from ..keys import key_from_base64
from .status import ArgParser, find_peer


def _positive(limit: float):
    def check(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not 0 < value <= limit:
            raise argparse.ArgumentTypeError(f"must be in (0, {limit:g}]")
        return value
    return check


def parser() -> ArgParser:
    p = ArgParser(prog="wgc ping", description="Send disco pings to a peer and report the path each pong "
                                               "took (DERP region or direct address) and its latency.")
    p.add_argument("peer", help="a peer's name, tunnel IP or the start of its public key")
    p.add_argument("-c", "--count", type=int, default=10, help="pings to send (default 10)")
    p.add_argument("--until-direct", action="store_true",
                   help="stop at the first direct pong; exit 0 only if one came")
    p.add_argument("--timeout", type=_positive(MAX_PING_TIMEOUT), default=5.0,
                   help="seconds to wait for each pong, and for the interface's control socket if it is "
                        "still coming up (default 5)")
    p.add_argument("--interval", type=_positive(60.0), default=1.0, help="seconds between pings (default 1)")
    p.add_argument("-i", "--interface", metavar="NAME",
                   help="interface (default: the one running interface that has PEER)")
    return p


async def ping_once(name: str, key: bytes, timeout: float) -> dict | None:
    """One ping on its own connection (the daemon cuts connections idle for a few seconds)."""
    client = await ControlClient.connect(name)
    try:
        return await client.ping(key, timeout)
    finally:
        client.close()


async def ping_loop(args) -> int:
    name, peer = await find_peer(args.interface, args.peer, "-i NAME", wait=args.timeout)
    key = key_from_base64(peer["public_key"])
    loop = asyncio.get_running_loop()
    got = direct = False
    for i in range(args.count):
        started = loop.time()
        pong = await ping_once(name, key, args.timeout)
        if pong is None:
            print(format_timeout(peer, args.timeout), flush=True)
        else:
            got = True
            direct = direct or pong["via"] == "direct"
            print(format_pong(peer, pong), flush=True)
            if args.until_direct and direct:
                break
        if i + 1 < args.count:
            await asyncio.sleep(max(0.0, args.interval - (loop.time() - started)))
    if args.until_direct and not direct:
        print(f"wgc: no direct path to {printable(peer.get('name') or peer['short'])} after {args.count} pings"
              + (" (pongs came through DERP)" if got else ""), file=sys.stderr)
        return 1
    return 0 if got else 1


def main(argv: Sequence[str]) -> int:
    try:
        args = parser().parse_args(list(argv))
        if args.count < 1:
            raise UsageError("-c/--count must be at least 1")
        return asyncio.run(ping_loop(args))
    except Error as e:
        print(f"wgc: {e}", file=sys.stderr)
        return 1
