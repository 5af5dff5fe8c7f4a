"""Binding `wgc derper`'s listeners: DERP, QUIC, plain HTTP, STUN and metrics in turn, all or none.

`start_listeners` binds them one after the other; when one fails it closes those already bound and raises
`ListenError` with one line naming the address and the OS's reason, e.g. `cannot listen on 0.0.0.0:3478
(STUN): address already in use`.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any

from derp.aio.server import DerpServer
from derp.errors import Error, UsageError


class ListenError(Error):
    """A listener could not be bound (port in use, address not local, no permission)."""


def os_reason(exc: OSError) -> str:
    """The OS's reason for `exc`, lower-cased as in `address already in use` (asyncio and socket wrap the
    bare strerror in longer text; the errno gives it back; resolver errors have negative ones)."""
    if exc.errno and exc.errno > 0:
        text = os.strerror(exc.errno)
    else:
        text = exc.strerror or str(exc)
    return text[:1].lower() + text[1:]


def show_addr(host: str | None, port: int) -> str:
    """`host:port` as a user would type it; None (all addresses) shows as 0.0.0.0."""
    host = host or "0.0.0.0"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class Listening:
    """What `start_listeners` bound."""
    derp_port: int = 0
    http_port: int | None = None
    stun: Any = None
    metrics: Any = None
    quic: Any = None    # derp.aio.quic_server.QuicListener (DERP over QUIC on UDP), when on

    @property
    def metrics_desc(self) -> str:
        if self.metrics is None:
            return "off"
        sock = self.metrics.sockets[0].getsockname()
        return show_addr(sock[0], sock[1])

    def close_side_listeners(self) -> None:
        """STUN, metrics and the QUIC sockets (the DERP and HTTP listeners go with `DerpServer.shutdown`,
        which also tells QUIC clients Restarting)."""
        if self.quic is not None:
            self.quic.close_all()
        if self.stun is not None:
            self.stun.close()
        if self.metrics is not None:
            self.metrics.close()


async def _bind(what: str, host: str | None, port: int, start) -> Any:
    try:
        return await start
    except OSError as exc:
        raise ListenError(f"cannot listen on {show_addr(host, port)} ({what}): {os_reason(exc)}") from None


async def _start_stun(host: str | None, port: int) -> Any:
    try:
        from natprobe.aio.server import start_stun_server
        from natprobe.errors import Error as StunError
    except ImportError:
        raise UsageError("the STUN server (natprobe) is not available; run with --no-stun") from None
    try:
        return await start_stun_server(host or "::", port)  # "::" answers IPv4 and IPv6
    except StunError as exc:
        if isinstance(exc.__cause__, OSError):
            raise exc.__cause__ from None
        raise UsageError(f"{exc} (or --no-stun)") from None


async def start_listeners(args: argparse.Namespace, server: DerpServer, host: str | None, port: int,
                          metrics_at: tuple[str, int] | None) -> Listening:
    """Bind the DERP, HTTP, STUN and metrics listeners in turn. When one fails, close the ones already bound
    and raise ListenError naming the address."""
    from derp.aio.metrics import serve_metrics

    done = Listening()
    try:
        done.derp_port = await _bind("DERP", host, port, server.listen(host, port))
        if server.ssl is not None and getattr(args, "quic", False) and server.certs is not None:
            from derp.aio.quic_server import start_quic
            qport = done.derp_port if args.quic_port is None else args.quic_port
            certs = server.certs
            done.quic = await _bind("QUIC", host, qport, start_quic(server, host, qport, lambda: certs.pem))
        if server.ssl is not None and args.http_port >= 0:
            done.http_port = await _bind("HTTP", host, args.http_port, server.listen_port80(host, args.http_port))
        if args.stun:
            done.stun = await _bind("STUN", host, args.stun_port, _start_stun(host, args.stun_port))
        if metrics_at is not None:
            done.metrics = await _bind("metrics", *metrics_at, serve_metrics(server, *metrics_at))
    except BaseException:
        await server.shutdown(0)
        done.close_side_listeners()
        raise
    return done
