"""Command line of the natprobe package: `python -m natprobe stun-server [--listen ADDR] [--port N]`."""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from natprobe.errors import UsageError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m natprobe", description="natprobe tools")
    sub = parser.add_subparsers(dest="command", required=True)
    srv = sub.add_parser("stun-server", help="answer STUN Binding requests (IPv4 and IPv6)")
    srv.add_argument("--listen", default="::", help="address to bind (default :: = dual-stack)")
    srv.add_argument("--port", type=int, default=3478, help="UDP port (default 3478)")
    srv.add_argument("--verbose", "-v", action="store_true")
    return parser


async def _serve(listen: str, port: int) -> None:
    from natprobe.aio.server import start_stun_server

    server = await start_stun_server(listen, port)
    print(f"natprobe STUN server listening on [{server.host}]:{server.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        server.close()
        print(f"served {server.requests} requests, dropped {server.dropped}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s")
    try:
        asyncio.run(_serve(args.listen, args.port))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
