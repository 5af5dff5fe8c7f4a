"""DERP frame codec: encoders for every frame type, typed parsers, and an incremental stream decoder.

Pure. `FrameDecoder.feed(data)` splits a byte stream into `(type, payload)` pairs however the bytes arrive
(one at a time or many frames at once), raises ParseError for a frame over its type's size bound as soon as
its header arrives, and can hand frames out in budgets (the server's fair share per event-loop turn).
`parse_frame(type, payload)` turns a pair into a typed frame (unknown types become `UnknownFrame`, which
callers skip, derp.md §3). The sealed ClientInfo/ServerInfo bodies use a NaCl box; the nonce comes from
the caller (randomness is injected, never read here).
"""
from __future__ import annotations

import ipaddress
import json
import struct
from dataclasses import dataclass, field
from typing import Any, Union

from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey

from derp.constants import (FRAME_HEADER_LEN, KEY_LEN, MAGIC, MAX_CLIENT_FRAME, MAX_PACKET_SIZE, NONCE_LEN,
                            FrameType, PeerGoneReason, PeerPresentFlags)
from derp.errors import ParseError

_HDR = struct.Struct(">BI")
_U32X2 = struct.Struct(">II")


def frame(ftype: int, payload: bytes = b"") -> bytes:
    """One frame: type byte, big-endian u32 payload length, payload."""
    return _HDR.pack(ftype, len(payload)) + payload


# ---- typed frames ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ServerKey:
    key: bytes

    def encode(self) -> bytes:
        return frame(FrameType.SERVER_KEY, MAGIC + self.key)


@dataclass(frozen=True)
class ClientInfoFrame:
    """ClientInfo as on the wire: the client's key and the sealed JSON (opened with open_client_info)."""

    key: bytes
    sealed: bytes = field(repr=False)

    def encode(self) -> bytes:
        return frame(FrameType.CLIENT_INFO, self.key + self.sealed)


@dataclass(frozen=True)
class ServerInfoFrame:
    sealed: bytes = field(repr=False)

    def encode(self) -> bytes:
        return frame(FrameType.SERVER_INFO, self.sealed)


@dataclass(frozen=True)
class SendPacket:
    dst: bytes
    data: bytes

    def encode(self) -> bytes:
        return frame(FrameType.SEND_PACKET, self.dst + self.data)


@dataclass(frozen=True)
class RecvPacket:
    src: bytes
    data: bytes

    def encode(self) -> bytes:
        return frame(FrameType.RECV_PACKET, self.src + self.data)


@dataclass(frozen=True)
class ForwardPacket:
    src: bytes
    dst: bytes
    data: bytes

    def encode(self) -> bytes:
        return frame(FrameType.FORWARD_PACKET, self.src + self.dst + self.data)


@dataclass(frozen=True)
class KeepAlive:
    def encode(self) -> bytes:
        return frame(FrameType.KEEP_ALIVE)


@dataclass(frozen=True)
class NotePreferred:
    preferred: bool

    def encode(self) -> bytes:
        return frame(FrameType.NOTE_PREFERRED, b"\x01" if self.preferred else b"\x00")


@dataclass(frozen=True)
class PeerGone:
    key: bytes
    reason: int = PeerGoneReason.DISCONNECTED

    def encode(self) -> bytes:
        return frame(FrameType.PEER_GONE, self.key + bytes([self.reason]))


@dataclass(frozen=True)
class PeerPresent:
    key: bytes
    ip: str = ""            # "" when the sender used the 32-byte form
    port: int = 0
    flags: int = PeerPresentFlags.NONE

    def encode(self) -> bytes:
        ip = ipaddress.ip_address(self.ip or "::")
        raw = ip.packed if ip.version == 6 else b"\x00" * 10 + b"\xff\xff" + ip.packed
        return frame(FrameType.PEER_PRESENT, self.key + raw + struct.pack(">HB", self.port, self.flags))


@dataclass(frozen=True)
class WatchConns:
    def encode(self) -> bytes:
        return frame(FrameType.WATCH_CONNS)


@dataclass(frozen=True)
class ClosePeer:
    key: bytes

    def encode(self) -> bytes:
        return frame(FrameType.CLOSE_PEER, self.key)


@dataclass(frozen=True)
class Ping:
    data: bytes

    def encode(self) -> bytes:
        return frame(FrameType.PING, self.data)


@dataclass(frozen=True)
class Pong:
    data: bytes

    def encode(self) -> bytes:
        return frame(FrameType.PONG, self.data)


@dataclass(frozen=True)
class Health:
    problem: str

    def encode(self) -> bytes:
        return frame(FrameType.HEALTH, self.problem.encode())


@dataclass(frozen=True)
class Restarting:
    reconnect_in_ms: int
    try_for_ms: int

    def encode(self) -> bytes:
        return frame(FrameType.RESTARTING, _U32X2.pack(self.reconnect_in_ms, self.try_for_ms))


@dataclass(frozen=True)
class UnknownFrame:
    ftype: int
    payload: bytes

    def encode(self) -> bytes:
        return frame(self.ftype, self.payload)


Frame = Union[ServerKey, ClientInfoFrame, ServerInfoFrame, SendPacket, RecvPacket, ForwardPacket, KeepAlive,
              NotePreferred, PeerGone, PeerPresent, WatchConns, ClosePeer, Ping, Pong, Health, Restarting,
              UnknownFrame]


def _need(ftype: FrameType, payload: bytes, minimum: int, exact: bool = False) -> None:
    if len(payload) < minimum or (exact and len(payload) != minimum):
        want = f"exactly {minimum}" if exact else f"at least {minimum}"
        raise ParseError(f"{ftype.name} frame needs {want} bytes, got {len(payload)}")


def _packet(ftype: FrameType, data: bytes) -> bytes:
    if len(data) > MAX_PACKET_SIZE:
        raise ParseError(f"{ftype.name} packet of {len(data)} bytes exceeds {MAX_PACKET_SIZE}")
    return data


def _parse_peer_present(payload: bytes) -> PeerPresent:
    key = payload[:KEY_LEN]
    if len(payload) < KEY_LEN + 18:  # oldest form: key only (derp.md §6)
        return PeerPresent(key)
    ip = ipaddress.IPv6Address(payload[32:48])
    text = str(ip.ipv4_mapped) if ip.ipv4_mapped else str(ip)
    port = struct.unpack_from(">H", payload, 48)[0]
    flags = payload[50] if len(payload) > 50 else 0
    return PeerPresent(key, text, port, flags)


def parse_frame(ftype: int, payload: bytes) -> Frame:
    """A typed frame from one (type, payload) pair; ParseError when the payload breaks its type's rules."""
    payload = bytes(payload)
    if ftype == FrameType.SEND_PACKET or ftype == FrameType.RECV_PACKET:
        t = FrameType(ftype)
        _need(t, payload, KEY_LEN)
        data = _packet(t, payload[KEY_LEN:])
        return (SendPacket if ftype == FrameType.SEND_PACKET else RecvPacket)(payload[:KEY_LEN], data)
    if ftype == FrameType.FORWARD_PACKET:
        _need(FrameType.FORWARD_PACKET, payload, 2 * KEY_LEN)
        return ForwardPacket(payload[:32], payload[32:64], _packet(FrameType.FORWARD_PACKET, payload[64:]))
    if ftype == FrameType.SERVER_KEY:
        _need(FrameType.SERVER_KEY, payload, len(MAGIC) + KEY_LEN)
        if payload[:8] != MAGIC:
            raise ParseError("ServerKey frame has the wrong magic")
        return ServerKey(payload[8:40])
    if ftype == FrameType.CLIENT_INFO:
        _need(FrameType.CLIENT_INFO, payload, KEY_LEN + NONCE_LEN)
        return ClientInfoFrame(payload[:KEY_LEN], payload[KEY_LEN:])
    if ftype == FrameType.SERVER_INFO:
        _need(FrameType.SERVER_INFO, payload, NONCE_LEN)
        return ServerInfoFrame(payload)
    if ftype == FrameType.KEEP_ALIVE:
        return KeepAlive()
    if ftype == FrameType.NOTE_PREFERRED:
        _need(FrameType.NOTE_PREFERRED, payload, 1, exact=True)
        return NotePreferred(payload[0] != 0)
    if ftype == FrameType.PEER_GONE:
        _need(FrameType.PEER_GONE, payload, KEY_LEN)
        return PeerGone(payload[:KEY_LEN], payload[KEY_LEN] if len(payload) > KEY_LEN else 0)
    if ftype == FrameType.PEER_PRESENT:
        _need(FrameType.PEER_PRESENT, payload, KEY_LEN)
        return _parse_peer_present(payload)
    if ftype == FrameType.WATCH_CONNS:
        _need(FrameType.WATCH_CONNS, payload, 0, exact=True)
        return WatchConns()
    if ftype == FrameType.CLOSE_PEER:
        _need(FrameType.CLOSE_PEER, payload, KEY_LEN, exact=True)
        return ClosePeer(payload)
    if ftype == FrameType.PING or ftype == FrameType.PONG:
        t = FrameType(ftype)
        _need(t, payload, 8)
        return (Ping if ftype == FrameType.PING else Pong)(payload[:8])
    if ftype == FrameType.HEALTH:
        return Health(payload.decode("utf-8", "replace"))
    if ftype == FrameType.RESTARTING:
        _need(FrameType.RESTARTING, payload, 8)
        return Restarting(*_U32X2.unpack_from(payload))
    return UnknownFrame(ftype, payload)


class FrameDecoder:
    """Incremental splitter of a DERP byte stream into (type, payload) pairs.

    Every frame is bounded by `limits[type]` (default: `max_frame` for every type), checked as soon as its
    header arrives, so a partial frame never holds more than its type's maximum. `feed` may be given a
    budget (`max_frames`, `max_bytes` of payload): complete frames beyond it stay here, without a copy,
    until the next call (`ready()` says some wait); `feed()` with no data then continues."""

    __slots__ = ("_buf", "_need", "_rest", "_pos", "max_frame", "limits")

    def __init__(self, max_frame: int = MAX_CLIENT_FRAME, limits: list[int] | None = None) -> None:
        self._buf = bytearray()   # an incomplete frame (only ever that)
        self._need = 0            # bytes that frame needs in all (0: header incomplete)
        self._rest: bytes | None = None   # data holding complete frames deferred by the budget ...
        self._pos = 0                     # ... from this offset
        self.max_frame = max_frame
        self.limits = list(limits) if limits is not None else [max_frame] * 256

    def feed(self, data: bytes = b"", max_frames: int = 0, max_bytes: int = 0) -> list[tuple[int, bytes]]:
        pos = 0
        rest = self._rest
        if rest is not None:
            self._rest = None
            if data:
                data = rest[self._pos:] + bytes(data)
            else:
                data, pos = rest, self._pos
        else:
            buf = self._buf
            if buf:
                buf += data
                if len(buf) < self._need:  # still inside one large frame: no re-copy
                    return []
                data = bytes(buf)
                buf.clear()
            elif type(data) is not bytes:
                data = bytes(data)
        max_frames = max_frames or 1 << 62
        max_bytes = max_bytes or 1 << 62
        taken = 0
        out: list[tuple[int, bytes]] = []
        end = len(data)
        unpack = _HDR.unpack_from
        limits = self.limits
        while end - pos >= FRAME_HEADER_LEN:
            ftype, length = unpack(data, pos)
            if length > limits[ftype]:
                raise ParseError(f"frame type 0x{ftype:02x} of {length} bytes exceeds the {limits[ftype]}-byte "
                                 "limit")
            stop = pos + FRAME_HEADER_LEN + length
            if stop > end:
                break
            if len(out) >= max_frames or taken >= max_bytes:  # budget spent: the rest waits, uncopied
                self._rest, self._pos = data, pos
                return out
            out.append((ftype, data[pos + FRAME_HEADER_LEN:stop]))
            taken += length
            pos = stop
        if pos < end:
            self._buf += memoryview(data)[pos:]
            self._need = FRAME_HEADER_LEN + unpack(data, pos)[1] if end - pos >= FRAME_HEADER_LEN else 0
        return out

    def ready(self) -> bool:
        """Complete frames are waiting (the budget of the last `feed` stopped before them)."""
        return self._rest is not None

    def partial(self) -> bool:
        """The start of a frame has arrived but not all of it."""
        return bool(self._buf)

    def pending(self) -> int:
        """Bytes held that were not yet returned as frames."""
        return len(self._buf) + (len(self._rest) - self._pos if self._rest is not None else 0)


# ---- sealed info messages --------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClientInfo:
    """The JSON a client seals into ClientInfo (derp.md §4.1)."""

    version: int = 2
    can_ack_pings: bool = True
    mesh_key: str = field(default="", repr=False)
    is_prober: bool = False
    app_name: str = ""

    def to_json(self) -> bytes:
        obj: dict[str, Any] = {}
        if self.mesh_key:
            obj["meshKey"] = self.mesh_key
        if self.version:
            obj["version"] = self.version
        obj["CanAckPings"] = self.can_ack_pings
        if self.is_prober:
            obj["IsProber"] = True
        if self.app_name:
            obj["AppName"] = self.app_name
        return json.dumps(obj, separators=(",", ":")).encode()


@dataclass(frozen=True)
class ServerInfo:
    version: int = 2
    token_bucket_bytes_per_second: int = 0
    token_bucket_bytes_burst: int = 0

    def to_json(self) -> bytes:
        obj: dict[str, Any] = {"version": self.version}
        if self.token_bucket_bytes_per_second:
            obj["TokenBucketBytesPerSecond"] = self.token_bucket_bytes_per_second
        if self.token_bucket_bytes_burst:
            obj["TokenBucketBytesBurst"] = self.token_bucket_bytes_burst
        return json.dumps(obj, separators=(",", ":")).encode()


def seal(my_private: bytes, their_public: bytes, nonce: bytes, message: bytes) -> bytes:
    """nonce(24) || NaCl box of message, as DERP puts it on the wire (derp.md §1)."""
    box = Box(PrivateKey(my_private), PublicKey(their_public))
    return bytes(box.encrypt(message, nonce))


def unseal(my_private: bytes, their_public: bytes, sealed: bytes) -> bytes:
    if len(sealed) < NONCE_LEN + 16:
        raise ParseError("sealed message too short")
    try:
        return Box(PrivateKey(my_private), PublicKey(their_public)).decrypt(sealed)
    except (CryptoError, ValueError, TypeError):
        raise ParseError("sealed message does not open with these keys") from None


def _json_object(plain: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(plain)
    except (ValueError, RecursionError):
        raise ParseError(f"{what} is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ParseError(f"{what} is not a JSON object")
    return {k.lower(): v for k, v in obj.items()}  # Go decodes keys case-insensitively


def _field(obj: dict[str, Any], key: str, kind: type, default: Any, what: str) -> Any:
    value = obj.get(key.lower(), default)
    if value is None:
        return default
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ParseError(f"{what}: {key} must be an integer")
    if kind is not int and not isinstance(value, kind):
        raise ParseError(f"{what}: {key} must be {kind.__name__}")
    return value


def parse_client_info(plain: bytes) -> ClientInfo:
    obj = _json_object(plain, "ClientInfo")
    w = "ClientInfo"
    return ClientInfo(version=_field(obj, "version", int, 0, w),
                      can_ack_pings=_field(obj, "CanAckPings", bool, False, w),
                      mesh_key=_field(obj, "meshKey", str, "", w), is_prober=_field(obj, "IsProber", bool, False, w),
                      app_name=_field(obj, "AppName", str, "", w))


def parse_server_info(plain: bytes) -> ServerInfo:
    obj = _json_object(plain, "ServerInfo")
    w = "ServerInfo"
    return ServerInfo(version=_field(obj, "version", int, 0, w),
                      token_bucket_bytes_per_second=_field(obj, "TokenBucketBytesPerSecond", int, 0, w),
                      token_bucket_bytes_burst=_field(obj, "TokenBucketBytesBurst", int, 0, w))


def client_info_frame(client_private: bytes, client_public: bytes, server_public: bytes, nonce: bytes,
                      info: ClientInfo) -> bytes:
    return ClientInfoFrame(client_public, seal(client_private, server_public, nonce, info.to_json())).encode()


def server_info_frame(server_private: bytes, client_public: bytes, nonce: bytes, info: ServerInfo) -> bytes:
    return ServerInfoFrame(seal(server_private, client_public, nonce, info.to_json())).encode()
