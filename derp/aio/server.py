"""The asyncio DERP server: the HTTP(S) listener(s) carrying `/derp` (Upgrade: DERP or WebSocket) and the
small HTTP endpoints, the options, housekeeping (keepalives, write stalls, slow frames) and graceful
shutdown; it carries out the pure relay core's (`derp.server`) outputs. Each accepted connection is a
`derp.aio.session.HttpConn`.
"""
from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable

from derp import frames as F
from derp.aio.session import HttpConn
from derp.constants import FRAME_READ_TIMEOUT, MAX_CONNS_PER_IP, SEND_QUEUE_DEPTH, server_frame_limits
from derp.errors import UsageError
from derp.admission import effective_rate
from derp.ratelimit import PerKeyLimiter, TokenBucket
from derp.server import CloseConn, Deliver, Forward, Relay, Write


@dataclass
class ServerOptions:
    read_header_timeout: float = 5.0
    write_timeout: float = 2.0      # also how long a closing connection may take to drain
    mesh_write_timeout: float = 30.0
    conn_rate: float = 5.0
    conn_burst: float = 10.0
    trust_proxy: bool = False
    trust_proxy_header: str = "X-Forwarded-For"   # the header the trusted proxy sets or appends to
    trust_proxy_hops: int = 1                     # take the entry this far from the right (1: rightmost)
    max_conns_per_ip: int = MAX_CONNS_PER_IP      # concurrent DERP sessions per client address (0: no limit)
    frame_timeout: float = FRAME_READ_TIMEOUT     # a started frame must be complete within this
    metrics_token: str = ""
    derpmap_json: bytes | None = None
    send_queue_depth: int = SEND_QUEUE_DEPTH
    restart_reconnect_ms: int = 500
    restart_try_for_ms: int = 5000
    tls_engine: str = "lean"      # "lean": derp.aio.tlstransport; "asyncio": the event loop's SSL protocol
    run_derp: bool = True         # derper's -derp=false: /derp answers 404 (the other endpoints stay)
    home: str = ""                # derper's -home: "" (a default page), "blank", or a URL to redirect to
    accept_limit: float = 0.0     # new connections a second on the DERP port, all clients together (0: none)
    accept_burst: int = 0
    tcp_keepalive: float = 600.0  # TCP keepalive idle time and probe interval of accepted sockets (0: off)
    tcp_user_timeout: float = 15.0   # TCP_USER_TIMEOUT of accepted sockets (0: the kernel's)
    client_rate: int = 0          # bytes/s each client may send (0: no limit); burst at least one frame
    client_burst: int = 0

    def __post_init__(self) -> None:
        if self.trust_proxy_hops < 1:
            raise UsageError(f"--trust-proxy-hops must be 1 or more, got {self.trust_proxy_hops}")
        if self.max_conns_per_ip < 0:
            raise UsageError(f"--max-conns-per-ip must be 0 (no limit) or more, got {self.max_conns_per_ip}")


class DerpServer:
    """Owns the listener(s), all connections, housekeeping timers and graceful shutdown."""

    def __init__(self, relay: Relay, options: ServerOptions, ssl_context: Any = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.relay = relay
        self.options = options
        self.ssl = ssl_context
        self.clock = clock
        self.limiter = PerKeyLimiter(options.conn_rate, options.conn_burst)
        self.per_ip: dict[str, int] = {}
        self.frame_limits = server_frame_limits()
        self.conns: set[HttpConn] = set()
        self.dirty: list[HttpConn] = []
        self.servers: list[asyncio.base_events.Server] = []
        self.http_counters = {"requests": 0, "rate_limited": 0, "header_timeouts": 0, "bad_requests": 0,
                              "rejected": 0, "handshake_failures": 0, "bad_frames": 0, "write_timeouts": 0,
                              "ws_sessions": 0, "per_ip_limited": 0, "frame_timeouts": 0, "close_timeouts": 0,
                              "accept_limited": 0, "rate_limit_waits": 0, "bootstrap_dns_requests": 0}
        self.accept_bucket = (TokenBucket(options.accept_limit, max(1, options.accept_burst), clock())
                              if options.accept_limit > 0 else None)
        self.client_rate = effective_rate(options.client_rate, options.client_burst)
        self.webhook: Any = None             # derp.aio.admission.Webhook (-verify-client-url)
        self.bindings_identity: str | None = None   # "ip" or "header:NAME" with --bindings-file
        self.bindings_file: Any = None       # derp.aio.admission.BindingsFile
        self.local_peers: Any = None         # derp.aio.admission.LocalPeers (-verify-clients)
        self.bootstrap: Any = None           # derp.aio.bootstrap_dns.BootstrapDNS
        self.started = time.time()
        self.closing = False
        self._tick: asyncio.Task | None = None
        self.mesh_links: list[Any] = []
        self.certs: Any = None        # derp.aio.certstore.CertStore of a TLS relay (ACME HTTP-01, metrics)
        self.quic: Any = None         # derp.aio.quic_server.QuicListener (DERP over QUIC), when on

    # ---- lifecycle ----------------------------------------------------------------------------------
    async def listen(self, host: str | None, port: int) -> int:
        loop = asyncio.get_running_loop()
        if self.ssl is not None and self.options.tls_engine == "lean":
            from derp.aio.tlstransport import TlsListener
            if host is None and socket.has_dualstack_ipv6():
                lsock = socket.create_server(("", port), family=socket.AF_INET6, backlog=4096,
                                             dualstack_ipv6=True)
            else:
                infos = socket.getaddrinfo(host or "0.0.0.0", port, type=socket.SOCK_STREAM)
                lsock = socket.create_server(infos[0][4][:2], family=infos[0][0], backlog=4096)
            listener = TlsListener(loop, lsock, self.ssl, lambda: HttpConn(self, limited=False),
                                   handshake_timeout=max(1.0, self.options.read_header_timeout),
                                   accept_filter=self.accept_allowed)
            self.servers.append(listener)
            if self._tick is None:
                self._tick = asyncio.create_task(self._housekeeping())
            return lsock.getsockname()[1]
        timeout = max(1.0, self.options.read_header_timeout)
        server = await loop.create_server(lambda: HttpConn(self), host, port, ssl=self.ssl, backlog=4096,
                                          ssl_handshake_timeout=timeout if self.ssl else None, reuse_address=True)
        self.servers.append(server)
        if self._tick is None:
            self._tick = asyncio.create_task(self._housekeeping())
        return server.sockets[0].getsockname()[1]

    async def listen_port80(self, host: str | None, port: int) -> int:
        """The plain-HTTP companion of a TLS relay (derper's -http-port): /generate_204 for captive-portal
        checks; other GET/HEAD requests are redirected to https, other methods refused."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: HttpConn(self, port80=True), host, port, backlog=1024,
                                          reuse_address=True)
        self.servers.append(server)
        return server.sockets[0].getsockname()[1]

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = self.clock()
            self.apply(self.relay.on_timer(now))
            frame_timeout = self.options.frame_timeout
            for conn in list(self.conns):
                if conn.paused_since is not None:
                    limit = self.options.mesh_write_timeout if conn.is_mesh else self.options.write_timeout
                    if limit and now - conn.paused_since > limit:
                        self.http_counters["write_timeouts"] += 1
                        conn.abort("write timed out")
                if conn.partial_since is not None and now - conn.partial_since > frame_timeout:
                    self.http_counters["frame_timeouts"] += 1
                    conn.abort(f"frame timed out: not complete within {frame_timeout:g} s")
            self.limiter.prune(now)
            self.flush()
            if self.bindings_file is not None:
                await self.bindings_file.save()

    # ---- per-connection policy ----------------------------------------------------------------------
    def accept_allowed(self) -> bool:
        """derper's -accept-connection-limit: False (and counted) when a new connection is over it."""
        bucket = self.accept_bucket
        if bucket is None or bucket.allow(self.clock()):
            return True
        self.http_counters["accept_limited"] += 1
        return False

    def tune_socket(self, transport: Any) -> None:
        """derper's -tcp-keepalive-time and -tcp-user-timeout on an accepted socket."""
        sock = transport.get_extra_info("socket")
        opts = self.options
        if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
            return
        try:
            if opts.tcp_keepalive > 0:
                idle = max(1, int(opts.tcp_keepalive))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, idle)
            if opts.tcp_user_timeout > 0:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, max(1, int(opts.tcp_user_timeout * 1000)))
        except OSError:
            pass

    def set_client_rate(self, rate: int, burst: int) -> tuple[int, int]:
        """Apply a new per-client byte rate to every client now connected (SIGHUP of -rate-config)."""
        self.client_rate = effective_rate(rate, burst)
        rate, burst = self.client_rate
        now = self.clock()
        for conn in self.conns:
            if conn.conn is not None and not conn.is_mesh:
                conn.bucket = TokenBucket(rate, burst, now) if rate else None
        return self.client_rate

    async def shutdown(self, timeout: float) -> None:
        """Stop accepting, tell DERP clients we are restarting, drain for at most `timeout` seconds."""
        self.closing = True
        for server in self.servers:
            server.close()
        restarting = F.Restarting(self.options.restart_reconnect_ms, self.options.restart_try_for_ms).encode()
        for conn in list(self.conns):
            conn.going_away(restarting)
        self.flush()
        for link in self.mesh_links:
            link.stop()
        if self.local_peers is not None:
            self.local_peers.stop()
        if self.bootstrap is not None:
            self.bootstrap.stop()
        deadline = self.clock() + timeout
        while self.conns and self.clock() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.conns):
            conn.abort("shutdown")
        if self._tick:
            self._tick.cancel()
        if self.bindings_file is not None:
            await self.bindings_file.save()
        await asyncio.sleep(0)

    # ---- carrying out relay outputs -----------------------------------------------------------------
    def apply(self, outs: list) -> None:
        for out in outs:
            kind = type(out)
            if kind is Write:
                out.conn.sink.write_control(out.data)
            elif kind is Deliver:
                out.conn.sink.deliver(out.data, out.disco)
            elif kind is Forward:
                out.link.forward(out.data)
            elif kind is CloseConn:
                out.conn.sink.abort(out.reason)

    def flush(self) -> None:
        dirty, self.dirty = self.dirty, []
        for conn in dirty:
            conn.flush()


__all__ = ["DerpServer", "HttpConn", "ServerOptions"]
