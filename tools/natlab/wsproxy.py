"""A WebSocket-only reverse proxy for the NAT lab: it stands in front of a `wgc derper` the way a corporate
or CDN proxy does that passes WebSocket upgrades but not `Upgrade: DERP`.

    python3 -m tools.natlab.wsproxy --listen 198.18.1.3:443 --upstream 127.0.0.1:443 \
        --hostname 198.18.1.3 [--upstream-tls] [--refuse-status 426] [--mode pass --mode-file FILE]

- TLS on the listening side with a fresh self-signed certificate for `--hostname` (DERP map nodes with
  `InsecureForTests` dial it without checking); `--plain` listens without TLS.
- Each connection's request head (at most 16 KiB, read within 5 s) is inspected: `Upgrade: DERP` gets
  `HTTP/1.1 426 Upgrade Required` (or `--refuse-status 403`) and the connection is closed, so a DERP
  client's automatic WebSocket fallback is exercised; everything else (WebSocket upgrades, /generate_204,
  /derp/probe, latency checks) is passed to the upstream unchanged, with `X-Forwarded-For` added, and the
  two sockets are spliced until either side closes.
- Mode `refuse-derp` (the default) does the above; mode `pass` passes `Upgrade: DERP` too (a path that
  lets DERP through, until its policy changes). With `--mode-file FILE`, SIGHUP re-reads the mode from
  FILE (`pass` or `refuse-derp`); switching to `refuse-derp` also closes the DERP connections it had
  passed, so their clients reconnect and meet the refusal (the way to force a running DERP client from
  TCP to WebSocket). Each switch prints `wsproxy mode MODE closed=N`.
- Prints `wsproxy ready HOST:PORT` on stdout once listening; counters (`refused`, `passed`, `bad`) are
  printed on SIGUSR1 and at exit. Only lab addresses are ever used: it listens where told and dials only
  `--upstream`.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import ssl
import sys
import tempfile

HEAD_LIMIT = 16 * 1024
HEAD_TIMEOUT = 5.0
REASONS = {403: "Forbidden", 426: "Upgrade Required"}
MODES = ("refuse-derp", "pass")


class Proxy:
    def __init__(self, upstream: tuple[str, int], upstream_tls: bool, refuse_status: int,
                 mode: str = "refuse-derp") -> None:
        self.upstream = upstream
        self.mode = mode
        self.derp_conns: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self.upstream_ctx = None
        if upstream_tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["http/1.1"])
            self.upstream_ctx = ctx
        self.refuse_status = refuse_status
        self.counts = {"refused": 0, "passed": 0, "bad": 0}

    def summary(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.counts.items())

    def set_mode(self, mode: str) -> int:
        """Switch mode; to `refuse-derp`, also abort the DERP connections passed so far (returns how many)."""
        self.mode = mode
        closed = 0
        if mode == "refuse-derp":
            for pair in list(self.derp_conns):
                for writer in pair:
                    writer.transport.abort()
                closed += 1
            self.derp_conns.clear()
        return closed

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, OSError,
                ssl.SSLError):
            self.counts["bad"] += 1
            await _close(writer)
            return
        lines = head.decode("latin-1").split("\r\n")
        upgrade = ""
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "upgrade":
                upgrade = value.strip().lower()
        if upgrade == "derp" and self.mode == "refuse-derp":
            self.counts["refused"] += 1
            reason = REASONS.get(self.refuse_status, "Refused")
            body = b"this proxy passes only WebSocket upgrades\n"
            writer.write(f"HTTP/1.1 {self.refuse_status} {reason}\r\nUpgrade: websocket\r\n"
                         f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
            await _close(writer)
            return
        peer = writer.get_extra_info("peername")
        forwarded = f"X-Forwarded-For: {peer[0] if peer else 'unknown'}\r\n".encode()
        head = head[:-2] + forwarded + b"\r\n"
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(*self.upstream, ssl=self.upstream_ctx,
                                        server_hostname=self.upstream[0] if self.upstream_ctx else None),
                HEAD_TIMEOUT)
        except (OSError, asyncio.TimeoutError, ssl.SSLError):
            self.counts["bad"] += 1
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
            await _close(writer)
            return
        self.counts["passed"] += 1
        up_writer.write(head)
        pair = (writer, up_writer)
        if upgrade == "derp":
            self.derp_conns.add(pair)
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            self.derp_conns.discard(pair)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(1 << 16)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
        pass
    finally:
        await _close(writer)


async def _close(writer: asyncio.StreamWriter) -> None:
    try:
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), 2)
    except (OSError, ssl.SSLError, asyncio.TimeoutError):
        pass


def _reload_mode(proxy: Proxy, path: str) -> None:
    try:
        with open(path) as fh:
            mode = fh.read().strip()
    except OSError as exc:
        print(f"wsproxy: mode file: {exc}", file=sys.stderr, flush=True)
        return
    if mode not in MODES:
        print(f"wsproxy: mode file says {mode!r}; expected one of {', '.join(MODES)}", file=sys.stderr, flush=True)
        return
    closed = proxy.set_mode(mode)
    print(f"wsproxy mode {mode} closed={closed}", flush=True)


def _split(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise SystemExit(f"wsproxy: address must be HOST:PORT, got {addr!r}")
    return host.strip("[]"), int(port)


def _server_context(hostname: str) -> ssl.SSLContext:
    from derp.aio.certs import make_cert, server_context, write_pair
    pair = make_cert([hostname])
    with tempfile.TemporaryDirectory(prefix="wsproxy-") as tmp:
        cert, key = os.path.join(tmp, "c.pem"), os.path.join(tmp, "k.pem")
        write_pair(pair, cert, key)
        return server_context(cert, key)


async def serve(args: argparse.Namespace) -> None:
    host, port = _split(args.listen)
    proxy = Proxy(_split(args.upstream), args.upstream_tls, args.refuse_status, args.mode)
    ctx = None if args.plain else _server_context(args.hostname or host)
    server = await asyncio.start_server(proxy.handle, host, port, ssl=ctx, limit=HEAD_LIMIT)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, lambda: print(f"wsproxy {proxy.summary()}", flush=True))
    if args.mode_file:
        loop.add_signal_handler(signal.SIGHUP, lambda: _reload_mode(proxy, args.mode_file))
    print(f"wsproxy ready {host}:{port}", flush=True)
    async with server:
        await stop.wait()
    print(f"wsproxy {proxy.summary()}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m tools.natlab.wsproxy", description=__doc__.split("\n")[0])
    p.add_argument("--listen", required=True, help="HOST:PORT to listen on (a lab address)")
    p.add_argument("--upstream", required=True, help="HOST:PORT of the derper")
    p.add_argument("--upstream-tls", action="store_true", help="dial the derper with TLS (not verified)")
    p.add_argument("--hostname", default="", help="name in the self-signed certificate (default: listen host)")
    p.add_argument("--plain", action="store_true", help="listen without TLS")
    p.add_argument("--refuse-status", type=int, default=426, choices=sorted(REASONS))
    p.add_argument("--mode", default="refuse-derp", choices=MODES, help="refuse Upgrade: DERP (default) or pass it")
    p.add_argument("--mode-file", default="", help="re-read the mode from this file on SIGHUP")
    args = p.parse_args(argv)
    try:
        asyncio.run(serve(args))
    except OSError as exc:
        print(f"wsproxy: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
