"""The asyncio DERP client: dials a node (QUIC, docs/derp-quic.md; TLS or plain HTTP with Upgrade: DERP,
with automatic fallback to WebSocket), runs the `derp.protocol.ClientConnection` core on the link, and
keeps the connection up (reconnect with backoff and jitter, honouring Restarting by moving to the same or
the next node).

One connection on the wire (upgrade, frames, read budget) is `derp.aio.clientconn`; one over QUIC is
`derp.aio.quic_client`; which of them to dial, when to try QUIC again and when a QUIC link has stalled is
the pure `derp.transport_choice`, carried out by `derp.aio.linkswitch` (QUIC first or in the background,
make-before-break swaps, the stall watch). `transport`: "auto" (that choice), or "quic", "upgrade",
"websocket" to force one (tests, users behind odd networks). `set_udp` passes netcheck's word on UDP to the
region (STUN answered or not).
Targets come from a DERP map region/node (HostName, IPv4/IPv6, DERPPort, InsecureForTests, CertName pins)
or a URL. TLS uses the system CA store plus an optional `ca_file`, ALPN http/1.1 only. `fwmark` (and
`set_fwmark`) puts SO_MARK on the connection's socket, so a full tunnel's policy rules send it past the tunnel.
Packets arrive through `on_packet(src, data)` (fast path), other events (Connected, Disconnected,
PeerGoneReceived, PeerPresentReceived, HealthChanged, RestartingReceived) through `on_event`; whatever has
no callback goes to the bounded `events` queue (`recv`), which exists only then.

Robustness (the knobs are `ClientConfig` fields):
* the reconnect backoff starts over only after a link that lasted `healthy_after` seconds: a relay that
  completes the handshake and hangs up at once is redialed ever more slowly (up to 5 s), not 70 times a
  second;
* a connect failure is a WARNING naming the target and the reason ("DERP region 1 (derp1.example): TLS
  certificate verify failed: self-signed certificate"), at most once per `log_interval` per reason;
* a stalled relay is given up after a few keepalive intervals (the core's own Pings, derp.protocol);
* one read callback feeds the core at most READ_BUDGET bytes (derp.aio.clientconn), so a relay flooding
  frames cannot starve the UDP data path.
"""
from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
from dataclasses import dataclass, field
from typing import Any, Callable

from derp import protocol as P
from derp import transport_choice as TC
from derp.aio.clientconn import ConnectError, UpgradeRefused, _Stream, describe_error  # noqa: F401
from derp.aio.linkswitch import LinkSwitch, TransportChanged
from derp.aio.targets import (DialTarget, backoff_delay, cert_matches, make_ssl_context,  # noqa: F401
                               targets_for_node, targets_for_region, targets_for_url)
from derp.errors import UsageError
from derp.keys import short
from derp.ratelog import RateLimitedLog

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Disconnected:
    reason: str
    transport: str = ""        # of the link that ended: "quic" | "upgrade" | "websocket" ("": none yet)


@dataclass
class ClientStats:
    sent: int = 0
    received: int = 0
    dropped_not_connected: int = 0
    dropped_backpressure: int = 0
    dropped_queue_full: int = 0
    connects: int = 0
    failures: int = 0          # dials that did not connect
    short_lived: int = 0       # connections that ended before `healthy_after`
    transport: str = ""        # of the link now: "quic" | "upgrade" | "websocket" ("" while not connected)
    quic_fallbacks: int = 0    # QUIC dials that failed, and QUIC links that stalled or broke, before TCP
    quic_retries: int = 0      # background QUIC attempts while on TCP/WebSocket
    quic_swaps: int = 0        # ... that connected and replaced the TCP/WebSocket link
    quic_stalls: int = 0       # QUIC links dropped by the stall watch
    extra: dict[str, int] = field(default_factory=dict)


class DerpClient:
    """A self-healing connection to one DERP region/URL."""

    def __init__(self, private_key: bytes, targets: list[DialTarget], *, ca_file: str | None = None,
                 transport: str = "auto", config: P.ClientConfig = P.ClientConfig(),
                 on_packet: Callable[[bytes, bytes], None] | None = None,
                 on_event: Callable[[Any], None] | None = None, reconnect: bool = True,
                 connect_timeout: float = 10.0, node_timeout: float = 1.5, preferred: bool = False,
                 watch_conns: bool = False, label: str = "", fwmark: int = 0,
                 rng: random.Random | None = None, queue_size: int = 4096, udp: TC.UDP = TC.UDP.UNKNOWN,
                 choice: TC.ChoiceConfig = TC.ChoiceConfig()) -> None:
        if not targets:
            raise UsageError("no DERP node to connect to (all nodes STUN-only or disabled?)")
        if transport not in TC.TRANSPORTS:
            raise UsageError(f"transport must be auto, quic, upgrade or websocket, not {transport!r}")
        if transport == TC.QUIC and not any(t.quic_port for t in targets):
            raise UsageError("transport quic needs a DERP node that speaks QUIC (WgcQUICPort in the DERP map)")
        self.private_key = private_key
        self.targets = targets
        self.ca_file = ca_file
        self.transport = transport
        self.config = config
        self.on_packet = on_packet
        self.on_event = on_event
        self.reconnect = reconnect
        self.connect_timeout = connect_timeout   # TCP + TLS + upgrade + DERP handshake (derp.md §7.1)
        self.node_timeout = node_timeout         # TCP connect to one address before trying the next
        self.preferred = preferred
        self.watch_conns = watch_conns
        self.rng = rng or random.Random()
        self.label = label                       # "region 1": how log lines name this client
        # a queue only for what has no callback: nobody would read it otherwise
        self.events: asyncio.Queue | None = None if on_packet and on_event else asyncio.Queue(queue_size)
        self._log = RateLimitedLog(log, config.log_interval)
        self.stats = ClientStats()
        self.stream: _Stream | None = None
        self.target_index = 0
        self._task: asyncio.Task | None = None
        self._connected = asyncio.Event()
        self._closing = False
        self.websocket_fallbacks = 0
        self.backoff_step = 0   # failed or short-lived connections in a row: the reconnect delay grows with it
        self._ssl_contexts: dict[tuple, ssl.SSLContext] = {}
        self.fwmark = fwmark                      # SO_MARK of every socket dialed (a full tunnel's policy rules)
        self._dialing: set[socket.socket] = set()
        self.switch = LinkSwitch(self, TC.TransportChoice(any(t.quic_port for t in targets),
                                                         None if transport == "auto" else transport, udp, choice))
        self._write_packet: Callable[[bytes], bool] | None = None   # the link's: stream or QUIC datagram
        self._held_connected: P.Connected | None = None    # a dial's Connected, until its link is installed

    @property
    def link(self) -> str:
        """The transport of the current link: "quic", "upgrade", "websocket", or "" while not connected."""
        return self.stats.transport

    def set_udp(self, udp: TC.UDP) -> None:
        """What netcheck says of UDP to this region (STUN answered: WORKS; measured, unanswered: BLOCKED)."""
        self.switch.set_udp(udp)

    def set_fwmark(self, mark: int) -> None:
        """Mark the sockets from now on, and the ones open or being dialed now."""
        self.fwmark = mark
        live = self.stream.transport.get_extra_info("socket") if self.stream and self.stream.transport else None
        for sock in [s for s in (live, *self._dialing) if s is not None]:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
            except OSError as exc:
                log.warning("%r: cannot set the firewall mark: %s", self, exc)

    def __repr__(self) -> str:
        return f"<DerpClient {short(P.public_key_of(self.private_key))}>"

    # ---- lifecycle -------------------------------------------------------------------------------------
    async def start(self, wait: bool = True, timeout: float | None = None) -> None:
        """Start the connection keeper; with `wait`, return once connected (ConnectError on timeout)."""
        self._task = asyncio.create_task(self._run())
        if wait:
            try:
                await asyncio.wait_for(self._connected.wait(), timeout or self.connect_timeout)
            except asyncio.TimeoutError:
                raise ConnectError(f"could not connect to {self.targets[0].url()}") from None

    async def wait_connected(self, timeout: float) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def close(self) -> None:
        self._closing = True
        self.switch.stop()
        if self.stream is not None:
            self.stream._finish("closed by the caller")
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        self.backoff_step = 0
        fallback: tuple[str, str] | None = None   # (transport, reason) of a QUIC link that just broke
        while not self._closing:
            try:
                stream = await self.connect_once(replacing=fallback is not None)
            except (ConnectError, UsageError) as exc:
                if fallback is not None:      # not even TCP after QUIC broke: now the relay is down
                    self._event(Disconnected(fallback[1], fallback[0]))
                    fallback = None
                if isinstance(exc, UsageError) or not self.reconnect:
                    self._event(Disconnected(str(exc)))
                    return
                self.backoff_step += 1
                self.stats.failures += 1
                await asyncio.sleep(backoff_delay(self.backoff_step, self.rng))
                continue
            if fallback is not None:          # QUIC broke, TCP took over: a change of transport, not an outage
                self._event(TransportChanged(self.link, fallback[0], fallback[1]))
                fallback = None
            since = loop.time()
            while True:
                reason = await stream.done
                if self.stream is None or self.stream is stream:
                    break
                stream, since = self.stream, loop.time()   # replaced by a QUIC link (make-before-break)
            link = self.link
            self.stream = None
            self._write_packet = None
            self.stats.transport = ""
            self._connected.clear()
            if self.switch.link_down(stream, link, loop.time()) and self.reconnect and not self._closing:
                fallback = (link, reason)     # a QUIC link stalled or broke: TCP at once (QUIC backs off)
                self.backoff_step = 0
                continue
            self._event(Disconnected(reason, link))
            if not self.reconnect or self._closing:
                return
            if stream.restarting is not None:
                self.backoff_step = 0
                await asyncio.sleep(stream.restarting.reconnect_in)
                continue
            if loop.time() - since >= self.config.healthy_after:
                self.backoff_step = 1     # it worked for a while: come back quickly
            else:                         # a handshake alone proves nothing: keep backing off
                self.backoff_step += 1
                self.stats.short_lived += 1
            await asyncio.sleep(backoff_delay(self.backoff_step, self.rng))

    def _name(self, target: DialTarget) -> str:
        host = target.server_name or target.host
        return f"{self.label} ({host})" if self.label else f"{host}:{target.port}"

    def _dial_failed(self, target: DialTarget, exc: BaseException, errors: list[str]) -> None:
        what = describe_error(exc)
        errors.append(f"{target.host}:{target.port}: {what}")
        self._log.log(logging.WARNING, (target.host, target.port, type(exc).__name__),
                      asyncio.get_running_loop().time(), "DERP %s: %s", self._name(target), what)

    async def connect_once(self, replacing: bool = False) -> _Stream:
        """One pass over the targets starting at the current one; the first that completes wins. Per target
        the transports are dialed in the order `derp.transport_choice` gives (QUIC first when it may).
        `replacing`: the link replaces a QUIC one that just broke (no Connected event: TransportChanged)."""
        errors: list[str] = []
        n = len(self.targets)
        loop = asyncio.get_running_loop()
        for i in range(n):
            index = (self.target_index + i) % n
            target = self.targets[index]
            modes = [m for m in self.switch.choice.order(loop.time()) if m != TC.QUIC or target.quic_port]
            for k, mode in enumerate(modes):
                try:
                    if mode == TC.QUIC:
                        stream = await self.switch.dial_quic(target)
                    else:
                        stream = await asyncio.wait_for(self._dial(target, mode == TC.WEBSOCKET),
                                                        self.connect_timeout)
                except UpgradeRefused as exc:
                    if mode == TC.UPGRADE and TC.WEBSOCKET in modes[k + 1:]:
                        self.websocket_fallbacks += 1   # expected behind proxies: no warning yet
                        errors.append(f"{target.host}:{target.port}: {exc}")
                    else:
                        self._dial_failed(target, exc, errors)
                    continue
                except (ConnectError, OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
                    if mode == TC.QUIC:
                        self.switch.quic_failed(target, exc, errors, fallback=k + 1 < len(modes))
                        continue   # TCP to the same node may well work
                    self._dial_failed(target, exc, errors)
                    break  # a transport failure: WebSocket on the same target would not help
                if self._closing:
                    stream._finish("closed while connecting")
                    raise ConnectError("client closed")
                self.target_index = index
                self._install(stream, mode, swap=replacing)
                self._connected.set()
                return stream
        raise ConnectError("; ".join(errors) or "no targets")

    def _install(self, stream: Any, mode: str, swap: bool = False) -> None:
        """Make `stream` the link: counters, NotePreferred/WatchConns, the transport's packet writer, and
        what runs beside it (the stall watch on QUIC, a background QUIC attempt on TCP). Its Connected
        event goes out now, unless it replaces a live link (`swap`: the switch says TransportChanged)."""
        self.stream = stream
        self.stats.connects += 1
        self.stats.transport = mode
        self._write_packet = stream.write_packet if mode == TC.QUIC else stream.write
        if self.preferred:
            stream.write(stream.core.note_preferred(True))
        if self.watch_conns:
            stream.write(stream.core.watch_conns())
        self.switch.link_up(stream, mode, asyncio.get_running_loop().time())
        held, self._held_connected = self._held_connected, None
        if held is not None and not swap:
            self._deliver(held)

    async def _dial(self, target: DialTarget, websocket: bool) -> _Stream:
        loop = asyncio.get_running_loop()
        ctx = None
        if target.tls:  # loading the system CA store costs ~20 ms: one context per kind of target
            ident = (target.insecure or target.pin is not None, bool(target.cert_name), self.ca_file)
            ctx = self._ssl_contexts.get(ident)
            if ctx is None:
                ctx = self._ssl_contexts[ident] = make_ssl_context(target, self.ca_file)
        stream = _Stream(self, target, websocket)
        sni = target.server_name or target.host
        raw = None
        try:
            raw = await asyncio.wait_for(self._tcp_connect(target), self.node_timeout)
            transport, _ = await loop.create_connection(lambda: stream, sock=raw, ssl=ctx,
                                                        server_hostname=sni if ctx is not None else None)
            sock = transport.get_extra_info("socket")
            if sock is not None:  # the server's KeepAlive frames reset the read timer; TCP keepalive as well
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                except OSError:
                    pass
            stream.verify_pin()
            await stream.upgraded
        except BaseException:
            stream._finish("dial failed")
            raise
        finally:  # until here set_fwmark finds the socket among those being dialed
            self._dialing.discard(raw)
        return stream

    async def _tcp_connect(self, target: DialTarget) -> socket.socket:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        last: Exception = ConnectError(f"no address for {target.host}")
        for family, kind, proto, _, addr in infos:
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            self._dialing.add(sock)
            try:
                if self.fwmark:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.fwmark)
                await loop.sock_connect(sock, addr)
                return sock
            except OSError as exc:
                self._dialing.discard(sock)
                sock.close()
                last = exc
            except BaseException:
                self._dialing.discard(sock)
                sock.close()
                raise
        raise last

    # ---- sending ------------------------------------------------------------------------------------------
    def send_packet(self, dst: bytes, data: bytes) -> bool:
        stream = self.stream
        if stream is None or stream.core is None or not stream.core.can_send() or self._write_packet is None:
            self.stats.dropped_not_connected += 1
            return False
        if not self._write_packet(stream.core.send_packet(dst, data)):
            self.stats.dropped_backpressure += 1
            return False
        self.stats.sent += 1
        return True

    def send_packets(self, items: list[tuple[bytes, bytes]]) -> int:
        """Several (dst, data) SendPacket frames in one write; returns how many were accepted."""
        stream = self.stream
        if stream is None or stream.core is None or not stream.core.can_send() or self._write_packet is None:
            self.stats.dropped_not_connected += len(items)
            return 0
        core = stream.core
        if self.stats.transport == TC.QUIC:   # one datagram per packet: a lost one is only that packet
            write = self._write_packet
            sent = 0
            for dst, data in items:
                if write(core.send_packet(dst, data)):
                    sent += 1
            self.stats.sent += sent
            self.stats.dropped_backpressure += len(items) - sent
            return sent
        if not stream.write(b"".join([core.send_packet(dst, data) for dst, data in items])):
            self.stats.dropped_backpressure += len(items)
            return 0
        self.stats.sent += len(items)
        return len(items)

    def note_preferred(self, preferred: bool) -> None:
        self.preferred = preferred
        if self.stream is not None and self.stream.core is not None:
            self.stream.write(self.stream.core.note_preferred(preferred))

    def write_raw(self, data: bytes) -> bool:
        """Write already-encoded frames (mesh ForwardPacket, tests)."""
        return self.stream is not None and self.stream.write(data)

    async def ping(self, timeout: float = 5.0) -> float:
        """Round-trip time of a DERP Ping to the server, in seconds."""
        stream = self.stream
        if stream is None or stream.core is None:
            raise ConnectError("not connected")
        loop = asyncio.get_running_loop()
        data, frame = stream.core.ping(loop.time())
        fut = loop.create_future()
        stream.pings[data] = fut
        stream.write(frame)
        stream._arm()
        return await asyncio.wait_for(fut, timeout)

    # ---- receiving ----------------------------------------------------------------------------------
    def _packet(self, src: bytes, data: bytes) -> None:
        self.stats.received += 1
        if self.on_packet is not None:
            self.on_packet(src, data)
            return
        self._event(P.PacketReceived(src, data))

    def _event(self, ev: Any) -> None:
        if type(ev) is P.Connected:   # said once the link is installed (`link` names its transport then)
            self._held_connected = ev
            return
        self._deliver(ev)

    def _deliver(self, ev: Any) -> None:
        if self.on_event is not None and type(ev) is not P.PacketReceived:
            self.on_event(ev)
            return
        if self.events is None:
            return
        try:
            self.events.put_nowait(ev)
        except asyncio.QueueFull:
            self.stats.dropped_queue_full += 1

    def _queue(self) -> asyncio.Queue:
        if self.events is None:
            raise UsageError("this DERP client hands everything to its callbacks; it has no event queue")
        return self.events

    async def recv(self, timeout: float | None = None) -> Any:
        return await asyncio.wait_for(self._queue().get(), timeout)

    async def recv_packet(self, timeout: float | None = None) -> P.PacketReceived:
        """The next packet, skipping other events."""
        loop = asyncio.get_running_loop()
        queue = self._queue()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - loop.time())
            ev = await asyncio.wait_for(queue.get(), left)
            if type(ev) is P.PacketReceived:
                return ev
