"""The client side of one DERP connection as a sans-I/O state machine (derp.md §4, §5.3, §10).

Rules:
  AWAIT_SERVER_KEY --ServerKey--> AWAIT_SERVER_INFO (ClientInfo sent)
  AWAIT_SERVER_INFO --ServerInfo--> CONNECTED (event Connected)
  any --bad frame / read timeout / close()--> CLOSED (event Closed with the reason; sticky)
With a server key known in advance (fast start) ClientInfo goes out in `start()` and the ServerKey that
the server still sends is ignored. Packets may be sent right after ClientInfo (as the Go client does).
Time comes in as `now`; randomness (nonces, ping ids) from the injected `random_bytes(n)`.
Unknown frame types are skipped. Every frame received resets the read timer.
Liveness (CONNECTED): after `keepalive_interval` without any frame the client sends a Ping of its own (a
relay answers with Pong; its own KeepAlive comes only every 60 s); after `keepalive_misses` such silent
intervals (at most `read_timeout`, derp.md §2's 120 s) the connection is declared dead. A relay that
stalls is therefore noticed within ~3 intervals (30 s by default), not after 120 s.
"""
from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from typing import Callable, Union

from derp import frames as F
from derp.constants import (CLIENT_KEEPALIVE_INTERVAL, CLIENT_KEEPALIVE_MISSES, CLIENT_READ_TIMEOUT, KEY_LEN,
                            MAX_CLIENT_FRAME, MAX_PACKET_SIZE, PING_TIMEOUT, RECONNECT_HEALTHY_AFTER,
                            SERVER_KEY_READ_LIMIT, FrameType)
from derp.errors import ParseError, UsageError
from derp.keys import public_key_of, short

log = logging.getLogger(__name__)


class ClientState(enum.Enum):
    AWAIT_SERVER_KEY = "await-server-key"
    AWAIT_SERVER_INFO = "await-server-info"
    CONNECTED = "connected"
    CLOSED = "closed"


@dataclass(frozen=True)
class ClientConfig:
    read_timeout: float = CLIENT_READ_TIMEOUT
    keepalive_interval: float = CLIENT_KEEPALIVE_INTERVAL   # silence before our own Ping; 0 = none
    keepalive_misses: int = CLIENT_KEEPALIVE_MISSES         # silent intervals before the link is dead
    # the asyncio client's (derp.aio.client), not the core's:
    healthy_after: float = RECONNECT_HEALTHY_AFTER  # a link that lasted this long resets the reconnect backoff
    log_interval: float = 30.0                      # a repeated log line (connect failure) at most this often
    ping_timeout: float = PING_TIMEOUT
    mesh_key: str = field(default="", repr=False)   # 64 hex, only for mesh peers / tools
    is_prober: bool = False
    app_name: str = ""
    can_ack_pings: bool = True


# ---- outputs ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Transmit:
    data: bytes


@dataclass(frozen=True)
class Connected:
    server_key: bytes
    info: F.ServerInfo


@dataclass(frozen=True)
class PacketReceived:
    src: bytes
    data: bytes


@dataclass(frozen=True)
class PeerGoneReceived:
    key: bytes
    reason: int


@dataclass(frozen=True)
class PeerPresentReceived:
    key: bytes
    ip: str
    port: int
    flags: int


@dataclass(frozen=True)
class HealthChanged:
    problem: str   # "" = healthy again


@dataclass(frozen=True)
class RestartingReceived:
    reconnect_in: float   # seconds
    try_for: float


@dataclass(frozen=True)
class PongReceived:
    data: bytes
    rtt: float


@dataclass(frozen=True)
class PingTimedOut:
    data: bytes


@dataclass(frozen=True)
class Closed:
    reason: str


Output = Union[Transmit, Connected, PacketReceived, PeerGoneReceived, PeerPresentReceived, HealthChanged,
               RestartingReceived, PongReceived, PingTimedOut, Closed]


class ClientConnection:
    """One client connection's protocol state; the adapter moves bytes and re-arms one timer."""

    def __init__(self, private_key: bytes, random_bytes: Callable[[int], bytes], now: float,
                 config: ClientConfig = ClientConfig(), server_key: bytes | None = None) -> None:
        if len(private_key) != KEY_LEN:
            raise UsageError("a DERP private key is 32 bytes")
        self._private = private_key
        self.public_key = public_key_of(private_key)
        self._random = random_bytes
        self.config = config
        self.server_key = server_key
        self._fast_start = server_key is not None
        self.state = ClientState.AWAIT_SERVER_KEY
        self._decoder = F.FrameDecoder(MAX_CLIENT_FRAME)
        self._last_rx = now
        self._probed = now          # when our last keepalive Ping went out
        self.keepalive_pings = 0
        self._pings: dict[bytes, float] = {}
        self.server_info: F.ServerInfo | None = None
        self.health = ""
        self.close_reason = ""
        self.dropped_short = 0

    def __repr__(self) -> str:
        return f"<ClientConnection {short(self.public_key)} {self.state.value}>"

    def _set_state(self, state: ClientState) -> None:
        if state != self.state:
            log.debug("[derp:%s] %s -> %s", short(self.public_key), self.state.value, state.value)
            self.state = state

    # ---- inputs -----------------------------------------------------------------------------------------
    def start(self, now: float) -> list[Output]:
        """Called once the byte stream is up; with a known server key, ClientInfo is sent at once."""
        self._last_rx = now
        if self._fast_start and self.state == ClientState.AWAIT_SERVER_KEY:
            return [Transmit(self._client_info())]
        return []

    def receive_data(self, data: bytes, now: float) -> list[Output]:
        if self.state == ClientState.CLOSED:
            return []
        try:
            pairs = self._decoder.feed(data)
        except ParseError as exc:
            return self._fail(str(exc))
        if pairs:
            self._last_rx = now
        out: list[Output] = []
        for ftype, payload in pairs:
            if ftype == FrameType.RECV_PACKET:  # hot path first
                if len(payload) < KEY_LEN or len(payload) - KEY_LEN > MAX_PACKET_SIZE:
                    self.dropped_short += 1
                    continue
                out.append(PacketReceived(payload[:KEY_LEN], payload[KEY_LEN:]))
                continue
            try:
                out.extend(self._on_frame(ftype, payload, now))
            except ParseError as exc:
                out.extend(self._fail(str(exc)))
            if self.state == ClientState.CLOSED:
                break
        return out

    def _on_frame(self, ftype: int, payload: bytes, now: float) -> list[Output]:
        if self.state == ClientState.AWAIT_SERVER_KEY and not self._fast_start:
            if ftype != FrameType.SERVER_KEY:
                raise ParseError(f"expected ServerKey first, got frame type 0x{ftype:02x}")
            key = F.parse_frame(ftype, payload[:SERVER_KEY_READ_LIMIT])
            assert isinstance(key, F.ServerKey)
            self.server_key = key.key
            self._set_state(ClientState.AWAIT_SERVER_INFO)
            return [Transmit(self._client_info())]
        if ftype == FrameType.SERVER_KEY:
            if self.state == ClientState.AWAIT_SERVER_KEY:  # fast start: the server still sends it; ignore
                self._set_state(ClientState.AWAIT_SERVER_INFO)
            return []
        fr = F.parse_frame(ftype, payload)
        if isinstance(fr, F.ServerInfoFrame):
            assert self.server_key is not None
            info = F.parse_server_info(F.unseal(self._private, self.server_key, fr.sealed))
            self.server_info = info
            self._set_state(ClientState.CONNECTED)
            return [Connected(self.server_key, info)]
        if isinstance(fr, F.KeepAlive):
            return []
        if isinstance(fr, F.Ping):
            return [Transmit(F.Pong(fr.data).encode())]
        if isinstance(fr, F.Pong):
            sent = self._pings.pop(fr.data, None)
            return [] if sent is None else [PongReceived(fr.data, now - sent)]
        if isinstance(fr, F.PeerGone):
            return [PeerGoneReceived(fr.key, fr.reason)]
        if isinstance(fr, F.PeerPresent):
            return [PeerPresentReceived(fr.key, fr.ip, fr.port, fr.flags)]
        if isinstance(fr, F.Health):
            self.health = fr.problem
            return [HealthChanged(fr.problem)]
        if isinstance(fr, F.Restarting):
            return [RestartingReceived(fr.reconnect_in_ms / 1000, fr.try_for_ms / 1000)]
        return []  # unknown or server-bound types: skipped (derp.md §3)

    def _client_info(self) -> bytes:
        assert self.server_key is not None
        info = F.ClientInfo(version=2, can_ack_pings=self.config.can_ack_pings, mesh_key=self.config.mesh_key,
                            is_prober=self.config.is_prober, app_name=self.config.app_name)
        return F.client_info_frame(self._private, self.public_key, self.server_key, self._random(24), info)

    def _fail(self, reason: str) -> list[Output]:
        if self.state == ClientState.CLOSED:
            return []
        self.close_reason = reason
        self._set_state(ClientState.CLOSED)
        log.info("[derp:%s] connection closed: %s", short(self.public_key), reason)
        return [Closed(reason)]

    def close(self, reason: str = "closed by caller") -> list[Output]:
        return self._fail(reason)

    def connection_lost(self, reason: str = "connection lost") -> list[Output]:
        return self._fail(reason)

    # ---- commands ---------------------------------------------------------------------------------------
    def can_send(self) -> bool:
        return self.state in (ClientState.AWAIT_SERVER_INFO, ClientState.CONNECTED)

    def send_packet(self, dst: bytes, data: bytes) -> bytes:
        """The SendPacket frame for `data` to `dst` (the adapter writes it)."""
        if len(dst) != KEY_LEN:
            raise UsageError("a destination key is 32 bytes")
        if len(data) > MAX_PACKET_SIZE:
            raise UsageError(f"packet of {len(data)} bytes exceeds {MAX_PACKET_SIZE}")
        return F.frame(FrameType.SEND_PACKET, dst + data)

    def forward_packet(self, src: bytes, dst: bytes, data: bytes) -> bytes:
        """ForwardPacket (mesh peers only)."""
        return F.ForwardPacket(src, dst, data).encode()

    def note_preferred(self, preferred: bool) -> bytes:
        return F.NotePreferred(preferred).encode()

    def watch_conns(self) -> bytes:
        return F.WatchConns().encode()

    def close_peer(self, key: bytes) -> bytes:
        return F.ClosePeer(key).encode()

    def ping(self, now: float) -> tuple[bytes, bytes]:
        """Start a Ping: returns (ping data, frame); a PongReceived or PingTimedOut follows."""
        data = self._random(8)
        self._pings[data] = now
        return data, F.Ping(data).encode()

    # ---- time -------------------------------------------------------------------------------------------
    def silence_limit(self) -> float:
        """Seconds without any frame after which the connection is dead."""
        cfg = self.config
        if cfg.keepalive_interval > 0:
            return min(cfg.read_timeout, cfg.keepalive_interval * max(1, cfg.keepalive_misses))
        return cfg.read_timeout

    def _next_probe(self) -> float | None:
        if self.config.keepalive_interval <= 0 or self.state != ClientState.CONNECTED:
            return None
        return max(self._last_rx, self._probed) + self.config.keepalive_interval

    def next_deadline(self) -> float | None:
        if self.state == ClientState.CLOSED:
            return None
        deadline = self._last_rx + self.silence_limit()
        probe = self._next_probe()
        if probe is not None and probe < deadline:
            deadline = probe
        if self._pings:
            deadline = min(deadline, min(self._pings.values()) + self.config.ping_timeout)
        return deadline

    def on_timer(self, now: float) -> list[Output]:
        if self.state == ClientState.CLOSED:
            return []
        out: list[Output] = []
        for data, sent in list(self._pings.items()):
            if now >= sent + self.config.ping_timeout:
                del self._pings[data]
                out.append(PingTimedOut(data))
        limit = self.silence_limit()
        if now >= self._last_rx + limit:
            out.extend(self._fail(f"no frame from the server for {limit:g} s"))
            return out
        probe = self._next_probe()
        if probe is not None and now >= probe:  # silent for an interval: ask for a Pong (not reported)
            self._probed = now
            self.keepalive_pings += 1
            out.append(Transmit(F.Ping(self._random(8)).encode()))
        return out
