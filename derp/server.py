"""The DERP server core: the per-connection handshake and the relay (registry, routing, mesh, watchers).

Pure and single-threaded; the asyncio adapter feeds it and carries out its outputs.
Handshake (derp.md §4.1): send ServerKey, wait (<= 10 s) for ClientInfo, open the box, check admission
(mesh key, allowed keys / open relay, max clients), then the relay registers the connection and the
adapter sends ServerInfo.
Relay rules (§5, §6):
  * several connections per key; the most recently connected, then most recently sending, is active;
  * SendPacket to a local key => RecvPacket to its active connection; to a key a mesh link announced =>
    ForwardPacket on that link; otherwise dropped, and for disco payloads PeerGone(NotHere) at most
    1/s (burst 3) per sending connection;
  * ForwardPacket, WatchConns and ClosePeer need the mesh key; forwarded packets are never re-forwarded;
  * watchers get PeerPresent for every client on WatchConns and on each new connection, PeerGone when a
    key's last connection leaves (or a mesh route to it goes away); clients a departing key sent packets to get PeerGone(Disconnected);
  * KeepAlive to each connection every 60 s + per-connection jitter; Ping is answered with Pong, but only
    one Pong may be pending per connection: Pings arriving while one is are ignored (§5.3; the adapter
    clears `pong_pending` once the Pong is written);
  * refused admissions are counted in `refused` by reason; packets are counted relayed by the adapter once
    it really queued or wrote them (drops by reason in `drops`), forwarded by the mesh link that wrote them;
  * any frame breaking its type's rules closes only that connection, with a reason.
"""
from __future__ import annotations

import hmac
import heapq
import itertools
import logging
import struct
from dataclasses import dataclass
from typing import Any, Callable, Union

from derp import frames as F
from derp.constants import (DISCO_MAGIC, DISCO_MIN_LEN, HANDSHAKE_TIMEOUT, KEEPALIVE_INTERVAL, KEEPALIVE_JITTER, KEY_LEN,
                            MAX_CLIENT_INFO_FRAME, MAX_PACKET_SIZE, MIN_CLIENT_INFO_LEN, NOT_HERE_BURST,
                            NOT_HERE_RATE, PING_MAX_LEN, PING_MIN_LEN, FrameType, PeerGoneReason,
                            PeerPresentFlags, is_disco)
from derp.errors import ParseError
from derp.keys import public_key_of, short

log = logging.getLogger(__name__)
_HDR = struct.Struct(">BI")
_RECV = FrameType.RECV_PACKET
_FWD = FrameType.FORWARD_PACKET


@dataclass(frozen=True)
class ServerConfig:
    keepalive_interval: float = KEEPALIVE_INTERVAL
    keepalive_jitter: float = KEEPALIVE_JITTER
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    max_clients: int = 0            # 0 = unlimited (mesh peers never count)
    open_relay: bool = False        # admit any key when no allowed-keys set is given


class AccessList:
    """The keys allowed to use the relay: `allowed` (the allowed-keys file; None = any key) and `local`
    (-verify-clients: the local interface's own key and its peers; None = not used). A key must be in both
    sets that are given. Each set is replaced wholesale (SIGHUP, a change of the interface's peers)."""

    def __init__(self, allowed: frozenset[bytes] | None, local: frozenset[bytes] | None = None) -> None:
        self.allowed = allowed
        self.local = local

    def allows(self, key: bytes) -> bool:
        return (self.allowed is None or key in self.allowed) and (self.local is None or key in self.local)

    def refusal(self, key: bytes) -> "Rejected | None":
        if self.allowed is not None and key not in self.allowed:
            return Rejected(f"key {short(key)} is not in the allowed keys", "acl")
        if self.local is not None and key not in self.local:
            return Rejected(f"key {short(key)} is not a peer of the local interface (-verify-clients)",
                            "verify_clients")
        return None


def parse_allowed_keys(text: str) -> frozenset[bytes]:
    """One base64 (or nodekey:/hex) public key per line; `#` starts a comment. ParseError names the line."""
    from derp.keys import parse_public_key
    keys = set()
    for number, line in enumerate(text.splitlines(), 1):
        body = line.split("#", 1)[0].strip()
        if not body:
            continue
        try:
            keys.add(parse_public_key(body))
        except ParseError as exc:
            raise ParseError(f"line {number}: {exc}") from None
    return frozenset(keys)


# ---- handshake --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Admission:
    key: bytes
    info: F.ClientInfo
    is_mesh: bool
    rest: bytes           # bytes received after ClientInfo (already the frame protocol)


class Rejected(Exception):
    """The client completed the handshake but may not use this relay (closed without ServerInfo)."""

    def __init__(self, reason: str, counter: str) -> None:
        super().__init__(reason)
        self.counter = counter


class ServerHandshake:
    """Reads ClientInfo from a fresh connection; ParseError for garbage, Rejected for refused keys."""

    def __init__(self, server_private: bytes, now: float, config: ServerConfig) -> None:
        self._private = server_private
        self.deadline = now + config.handshake_timeout
        self._buf = bytearray()

    def greeting(self) -> bytes:
        return F.ServerKey(public_key_of(self._private)).encode()

    def receive_data(self, data: bytes) -> tuple[bytes, F.ClientInfo, bytes] | None:
        """(client key, info, rest) once a whole ClientInfo frame arrived, else None."""
        self._buf += data
        if len(self._buf) < 5:
            return None
        ftype, length = _HDR.unpack_from(self._buf)
        if ftype != FrameType.CLIENT_INFO:
            raise ParseError(f"expected ClientInfo, got frame type 0x{ftype:02x}")
        if not MIN_CLIENT_INFO_LEN <= length <= MAX_CLIENT_INFO_FRAME:
            raise ParseError(f"ClientInfo of {length} bytes is out of bounds")
        if len(self._buf) < 5 + length:
            return None
        payload = bytes(self._buf[5:5 + length])
        rest = bytes(self._buf[5 + length:])
        key = payload[:KEY_LEN]
        info = F.parse_client_info(F.unseal(self._private, key, payload[KEY_LEN:]))
        return key, info, rest


# ---- relay -------------------------------------------------------------------------------------------------

class Conn:
    """A registered client connection as the relay sees it; `sink` is the adapter's object for it."""

    __slots__ = ("id", "key", "ip", "port", "is_mesh", "is_prober", "not_ideal", "sink", "preferred",
                 "watcher", "nh_tokens", "nh_time", "next_keepalive", "closed", "can_ack_pings", "pong_pending")

    def __init__(self, key: bytes, ip: str, port: int, is_mesh: bool, sink: Any, is_prober: bool = False,
                 not_ideal: bool = False, can_ack_pings: bool = False) -> None:
        self.id = 0
        self.key, self.ip, self.port, self.sink = key, ip, port, sink
        self.is_mesh, self.is_prober, self.not_ideal = is_mesh, is_prober, not_ideal
        self.can_ack_pings = can_ack_pings
        self.preferred = False
        self.watcher = False
        self.nh_tokens = float(NOT_HERE_BURST)
        self.nh_time = 0.0
        self.next_keepalive = 0.0
        self.closed = False
        self.pong_pending = False

    def __repr__(self) -> str:
        return f"<Conn #{self.id} {short(self.key)} {self.ip}:{self.port}>"

    def flags(self) -> int:
        f = PeerPresentFlags.MESH_PEER if self.is_mesh else PeerPresentFlags.REGULAR
        if self.is_prober:
            f |= PeerPresentFlags.PROBER
        if self.not_ideal:
            f |= PeerPresentFlags.NOT_IDEAL
        return int(f)


class _Out:
    """Relay outputs: plain slotted objects (built per packet, so cheaper than frozen dataclasses)."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and all(getattr(self, f) == getattr(other, f) for f in self.__slots__)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(repr(getattr(self, f)) for f in self.__slots__)})"


class Write(_Out):
    """Write a control frame to a connection (never dropped by queue limits)."""

    __slots__ = ("conn", "data")

    def __init__(self, conn: Conn, data: bytes) -> None:
        self.conn, self.data = conn, data


class Deliver(_Out):
    """A RecvPacket frame for a connection's bounded packet queue."""

    __slots__ = ("conn", "data", "disco")

    def __init__(self, conn: Conn, data: bytes, disco: bool) -> None:
        self.conn, self.data, self.disco = conn, data, disco


class Forward(_Out):
    """A ForwardPacket frame for a mesh link (the adapter's object, registered with add_route)."""

    __slots__ = ("link", "data")

    def __init__(self, link: Any, data: bytes) -> None:
        self.link, self.data = link, data


class CloseConn(_Out):
    __slots__ = ("conn", "reason")

    def __init__(self, conn: Conn, reason: str) -> None:
        self.conn, self.reason = conn, reason


Out = Union[Write, Deliver, Forward, CloseConn]


class Relay:
    def __init__(self, server_private: bytes, config: ServerConfig, acl: AccessList,
                 random_float: Callable[[], float], mesh_key: bytes | None = None) -> None:
        self.private_key = server_private
        self.public_key = public_key_of(server_private)
        self.config = config
        self.acl = acl
        self.bindings: Any = None    # derp.admission.Bindings with --bindings-file
        self.mesh_key = mesh_key
        self._random = random_float
        self.clients: dict[bytes, list[Conn]] = {}
        self.watchers: dict[int, Conn] = {}
        self.mesh_routes: dict[bytes, Any] = {}
        self.sent_to: dict[bytes, set[bytes]] = {}
        self.counters: dict[str, int] = {
            "accepted": 0, "packets_relayed": 0, "bytes_relayed": 0, "packets_forwarded_out": 0,
            "packets_forwarded_in": 0, "home_clients": 0, "got_ping": 0, "sent_pong": 0, "bindings_full": 0}
        self.drops: dict[str, int] = {}
        self.refused: dict[str, int] = {}
        self._ids = itertools.count(1)
        self._heap: list[tuple[float, int, Conn]] = []
        self.n_regular = 0
        self.n_mesh = 0

    # ---- admission & registry ---------------------------------------------------------------------
    def admit(self, key: bytes, info: F.ClientInfo) -> bool:
        """True if the client holds the mesh key; raises Rejected (counted in `refused`) when it may not
        connect."""
        try:
            return self._admit(key, info)
        except Rejected as exc:
            self.refused[exc.counter] = self.refused.get(exc.counter, 0) + 1
            raise

    def _admit(self, key: bytes, info: F.ClientInfo) -> bool:
        if info.mesh_key and self.mesh_key is not None:
            try:
                given = bytes.fromhex(info.mesh_key.strip())
            except ValueError:
                given = b""
            if hmac.compare_digest(given, self.mesh_key):
                return True
            raise Rejected("wrong mesh key", "bad_mesh_key")
        refused = self.acl.refusal(key)
        if refused is not None:
            raise refused
        self._check_full()
        return False

    def _check_full(self) -> None:
        if self.config.max_clients and self.n_regular >= self.config.max_clients:
            raise Rejected(f"server is full ({self.config.max_clients} clients)", "max_clients")

    def refuse(self, exc: "Rejected") -> "Rejected":
        """Count a refusal decided outside `admit` (the admission webhook); returns it for raising."""
        self.refused[exc.counter] = self.refused.get(exc.counter, 0) + 1
        return exc

    def finish_admission(self, key: bytes, identity: str | None, wall_now: float) -> None:
        """The checks after any asynchronous one (derp.admission, 5 and 6): the TOFU binding of `identity`
        (None: not bound) and, again, max clients (others may have registered meanwhile). Raises Rejected,
        counted; `wall_now` (UNIX seconds) is recorded with a new binding."""
        if self.bindings is not None and identity is not None:
            verdict = self.bindings.check(identity, key, wall_now)
            if verdict == "conflict":
                raise self.refuse(Rejected(f"identity {identity[:64]!r} is bound to another key (TOFU)",
                                           "binding_conflict"))
            if verdict == "full":
                self.counters["bindings_full"] += 1
        try:
            self._check_full()
        except Rejected as exc:
            raise self.refuse(exc) from None

    def register(self, conn: Conn, now: float) -> list[Out]:
        conn.id = next(self._ids)
        conns = self.clients.setdefault(conn.key, [])
        first = not conns
        conns.append(conn)
        if conn.is_mesh:
            self.n_mesh += 1
        else:
            self.n_regular += 1
        self.counters["accepted"] += 1
        conn.next_keepalive = now + self.config.keepalive_interval + self._random() * self.config.keepalive_jitter
        heapq.heappush(self._heap, (conn.next_keepalive, conn.id, conn))
        log.debug("register %r%s", conn, "" if first else " (another connection for this key)")
        frame = F.PeerPresent(conn.key, conn.ip, conn.port, conn.flags()).encode()
        return [Write(w, frame) for w in self.watchers.values() if w is not conn]

    def unregister(self, conn: Conn) -> list[Out]:
        if conn.closed:
            return []
        conn.closed = True
        if conn.is_mesh:
            self.n_mesh -= 1
        else:
            self.n_regular -= 1
        if conn.preferred:
            self.counters["home_clients"] -= 1
        self.watchers.pop(conn.id, None)
        conns = self.clients.get(conn.key, [])
        if conn in conns:
            conns.remove(conn)
        out: list[Out] = []
        if conns:
            return out
        self.clients.pop(conn.key, None)
        gone = F.PeerGone(conn.key, PeerGoneReason.DISCONNECTED).encode()
        out.extend(Write(w, gone) for w in self.watchers.values())
        for dst in self.sent_to.pop(conn.key, ()):
            for peer in self.clients.get(dst, ())[-1:]:
                out.append(Write(peer, gone))
        return out

    def revoke_disallowed(self) -> list[Out]:
        """After the access list changed: close the connections of keys it no longer allows (mesh exempt)."""
        return [CloseConn(c, "key no longer allowed") for conns in self.clients.values() for c in conns
                if not c.is_mesh and not self.acl.allows(c.key)]

    def active(self, key: bytes) -> Conn | None:
        conns = self.clients.get(key)
        return conns[-1] if conns else None

    def add_route(self, key: bytes, link: Any) -> None:
        """A mesh link announced `key` (PeerPresent); the first link to claim a key wins."""
        self.mesh_routes.setdefault(key, link)

    def remove_route(self, key: bytes, link: Any) -> list[Out]:
        """The mesh link says `key` left its node: if it is not here either, the local clients it sent
        packets to hear PeerGone(Disconnected), as from a local departure (derp.md §5.5)."""
        if self.mesh_routes.get(key) is not link:
            return []
        del self.mesh_routes[key]
        if key in self.clients:
            return []
        gone = F.PeerGone(key, PeerGoneReason.DISCONNECTED).encode()
        return [Write(peer, gone) for dst in self.sent_to.pop(key, ()) for peer in self.clients.get(dst, ())[-1:]]

    def remove_link(self, link: Any) -> list[Out]:
        """A mesh link broke: forget every route it taught (and tell the clients those keys talked to)."""
        out: list[Out] = []
        for key in [k for k, v in self.mesh_routes.items() if v is link]:
            out.extend(self.remove_route(key, link))
        return out

    def _drop(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1

    # ---- hot path ---------------------------------------------------------------------------------------
    def send_packet(self, conn: Conn, payload: bytes, now: float) -> Out | None:
        """A SendPacket payload (dst || data) from `conn`: what to do with it (None = dropped)."""
        n = len(payload)
        if n < KEY_LEN or n - KEY_LEN > MAX_PACKET_SIZE:
            raise ParseError(f"SendPacket of {n} bytes is out of bounds")
        dst = payload[:KEY_LEN]
        conns = self.clients.get(conn.key)
        if conns and conns[-1] is not conn and conn in conns:  # last sender becomes active (§5.4)
            conns.remove(conn)
            conns.append(conn)
        targets = self.clients.get(dst)
        if targets:
            target = targets[-1]
            seen = self.sent_to.get(conn.key)
            if seen is None:
                self.sent_to[conn.key] = seen = set()
            if dst not in seen:
                seen.add(dst)
            disco = n >= KEY_LEN + DISCO_MIN_LEN and payload[KEY_LEN:KEY_LEN + 6] == DISCO_MAGIC
            return Deliver(target, b"".join((_HDR.pack(_RECV, n), conn.key, memoryview(payload)[KEY_LEN:])), disco)
        link = self.mesh_routes.get(dst)
        if link is not None:
            return Forward(link, _HDR.pack(_FWD, n + KEY_LEN) + conn.key + payload)
        return self._not_here(conn, dst, payload[KEY_LEN:], now, "unknown_dest")

    def _not_here(self, conn: Conn, dst: bytes, data: bytes, now: float, reason: str) -> Out | None:
        self._drop(reason)
        if not is_disco(data):
            return None
        conn.nh_tokens = min(float(NOT_HERE_BURST), conn.nh_tokens + (now - conn.nh_time) * NOT_HERE_RATE)
        conn.nh_time = now
        if conn.nh_tokens < 1:
            return None
        conn.nh_tokens -= 1
        return Write(conn, F.PeerGone(dst, PeerGoneReason.NOT_HERE).encode())

    # ---- other frames ----------------------------------------------------------------------------------
    def handle_frame(self, conn: Conn, ftype: int, payload: bytes, now: float) -> list[Out]:
        """Every frame but SendPacket; ParseError closes only this connection (the adapter's job)."""
        if ftype == FrameType.FORWARD_PACKET:
            self._need_mesh(conn, "ForwardPacket")
            fp = F.parse_frame(ftype, payload)
            assert isinstance(fp, F.ForwardPacket)
            target = self.active(fp.dst)
            if target is None:
                out = self._not_here(conn, fp.dst, fp.data, now, "unknown_dest_on_fwd")
                return [out] if out else []
            self.counters["packets_forwarded_in"] += 1
            self.sent_to.setdefault(fp.src, set()).add(fp.dst)
            return [Deliver(target, F.RecvPacket(fp.src, fp.data).encode(), is_disco(fp.data))]
        if ftype == FrameType.PING:
            if not PING_MIN_LEN <= len(payload) <= PING_MAX_LEN:
                raise ParseError(f"Ping of {len(payload)} bytes (want 8..1000)")
            self.counters["got_ping"] += 1
            if conn.pong_pending:
                return []  # pinging faster than it reads the Pongs: ignored (§5.3)
            conn.pong_pending = True
            self.counters["sent_pong"] += 1
            return [Write(conn, F.Pong(payload[:8]).encode())]
        if ftype == FrameType.NOTE_PREFERRED:
            pref = F.parse_frame(ftype, payload)
            assert isinstance(pref, F.NotePreferred)
            if pref.preferred != conn.preferred:
                self.counters["home_clients"] += 1 if pref.preferred else -1
                conn.preferred = pref.preferred
            return []
        if ftype == FrameType.WATCH_CONNS:
            self._need_mesh(conn, "WatchConns")
            F.parse_frame(ftype, payload)
            if conn.key == self.public_key:
                return []  # our own mesh dialer reached us: ignore (§6)
            self.watchers[conn.id] = conn
            conn.watcher = True
            out: list[Out] = []
            for key, conns in self.clients.items():
                c = conns[-1]
                if c is not conn:
                    out.append(Write(conn, F.PeerPresent(key, c.ip, c.port, c.flags()).encode()))
            return out
        if ftype == FrameType.CLOSE_PEER:
            self._need_mesh(conn, "ClosePeer")
            cp = F.parse_frame(ftype, payload)
            assert isinstance(cp, F.ClosePeer)
            return [CloseConn(c, "closed by ClosePeer") for c in list(self.clients.get(cp.key, ()))]
        if ftype in (FrameType.CLIENT_INFO, FrameType.PONG, FrameType.KEEP_ALIVE):
            return []  # harmless: a late ClientInfo, a Pong to nothing, a client keepalive
        return []  # unknown types (and server-to-client types) are skipped (§5.8)

    def _need_mesh(self, conn: Conn, what: str) -> None:
        if not conn.is_mesh:
            raise ParseError(f"{what} needs the mesh key: insufficient permissions")

    # ---- time ---------------------------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        while self._heap and self._heap[0][2].closed:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def on_timer(self, now: float) -> list[Out]:
        """KeepAlive frames for every connection whose keepalive time has come."""
        out: list[Out] = []
        keepalive = F.KeepAlive().encode()
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, conn = heapq.heappop(heap)
            if conn.closed:
                continue
            out.append(Write(conn, keepalive))
            conn.next_keepalive = now + self.config.keepalive_interval
            heapq.heappush(heap, (conn.next_keepalive, conn.id, conn))
        return out

    # ---- stats ----------------------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        return {"clients": self.n_regular, "mesh_peers": self.n_mesh, "keys": len(self.clients),
                "watchers": len(self.watchers), "mesh_routes": len(self.mesh_routes), **self.counters,
                "drops": dict(self.drops), "refused": dict(self.refused)}
