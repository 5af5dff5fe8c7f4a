"""Tailscale's disco wire format (shared/protocol/disco.md §2-§3): the packet header, the NaCl box, and the
Ping, Pong and CallMeMaybe messages, plus wgc's NodeInfo extension (type 0xF0, see docs/path.md).

Packet: magic(6) ‖ sender disco public key(32) ‖ nonce(24) ‖ box(payload) where box is
XSalsa20-Poly1305 under `crypto_box_beforenm(peer_pub, my_priv)` (PyNaCl `Box`). Payload:
type(1) ‖ version(1) ‖ body. Addresses travel as 16-byte IPs (IPv4 mapped) + big-endian port and are
unmapped on parse; an address here is the tuple `(ip_text, port)`.

`parse_message(payload)` returns a message or `Unknown` (a type this side ignores) and raises
`ParseError` on a truncated known message; `encode()` is its inverse. `is_disco` is the cheap check the
demux and DERP servers use. Randomness (nonces) comes from the caller.
"""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey

from wgclient.errors import ParseError, UsageError

from . import constants as C

Addr = tuple  # (ip_text, port)
_port = struct.Struct("!H")
_node_info = struct.Struct("!IB")
_V4_PREFIX = bytes(10) + b"\xff\xff"


def is_disco(data) -> bool:
    """True when `data` looks like a disco packet: at least the 62-byte header and the magic first."""
    return len(data) >= C.HEADER_LEN and data[:C.MAGIC_LEN] == C.MAGIC


# --- addresses -------------------------------------------------------------------------------------


def encode_addr(addr: Addr) -> bytes:
    """The 18-byte AddrPort form: 16-byte IP (IPv4 as ::ffff:a.b.c.d) then the port, big-endian."""
    try:
        ip = ipaddress.ip_address(addr[0])
        port = int(addr[1])
        if not 0 <= port <= 0xFFFF:
            raise ValueError("port out of range")
    except (ValueError, TypeError, IndexError) as exc:
        raise UsageError(f"not an ip:port address: {addr!r}") from exc
    raw = _V4_PREFIX + ip.packed if ip.version == 4 else ip.packed
    return raw + _port.pack(port)


def parse_addr(data, offset: int = 0) -> Addr:
    """Inverse of encode_addr; IPv4-mapped addresses come back as plain IPv4 text."""
    if len(data) - offset < C.ADDR_PORT_LEN:
        raise ParseError("address truncated")
    raw = bytes(data[offset:offset + 16])
    ip = ipaddress.IPv4Address(raw[12:]) if raw[:12] == _V4_PREFIX else ipaddress.IPv6Address(raw)
    return (str(ip), _port.unpack_from(data, offset + 16)[0])


def canonical_addr(addr: Addr) -> Addr:
    """(ip, port) with the IP in its canonical text form (IPv4-mapped IPv6 unmapped)."""
    ip = ipaddress.ip_address(addr[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (str(ip), int(addr[1]))


# --- messages --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ping:
    tx_id: bytes
    node_key: bytes | None = None   # sender's WireGuard public key; None for very old clients
    padding: int = 0                # zero bytes appended (path-MTU probes)

    def encode(self) -> bytes:
        if len(self.tx_id) != C.TXID_LEN:
            raise UsageError("a disco TxID is 12 bytes")
        if self.node_key is not None and len(self.node_key) != C.KEY_LEN:
            raise UsageError("a node key is 32 bytes")
        if self.padding < 0:
            raise UsageError("padding must not be negative")
        return (bytes((C.TYPE_PING, C.VERSION)) + self.tx_id + (self.node_key or b"")
                + bytes(self.padding))


@dataclass(frozen=True)
class Pong:
    tx_id: bytes
    src: Addr                       # the ping's source address as the responder saw it

    def encode(self) -> bytes:
        if len(self.tx_id) != C.TXID_LEN:
            raise UsageError("a disco TxID is 12 bytes")
        return bytes((C.TYPE_PONG, C.VERSION)) + self.tx_id + encode_addr(self.src)


@dataclass(frozen=True)
class CallMeMaybe:
    endpoints: tuple[Addr, ...] = ()

    def encode(self) -> bytes:
        return bytes((C.TYPE_CALL_ME_MAYBE, C.VERSION)) + b"".join(encode_addr(a) for a in self.endpoints)


# NodeInfo flags.
NI_UDP = 0x01            # our netcheck found working UDP
NI_MAPPING_KNOWN = 0x02  # the next bit is meaningful
NI_HARD_NAT = 0x04       # our NAT maps ports per destination (MappingVariesByDestIP)


@dataclass(frozen=True)
class NodeInfo:
    """wgc extension (type 0xF0): what a control server would tell peers. Body: home region(u32) ‖ flags(u8)."""

    home_region: int = 0
    flags: int = 0

    def encode(self) -> bytes:
        if not 0 <= self.home_region <= 0xFFFFFFFF or not 0 <= self.flags <= 0xFF:
            raise UsageError("NodeInfo field out of range")
        return bytes((C.TYPE_WGC_NODE_INFO, C.VERSION)) + _node_info.pack(self.home_region, self.flags)


@dataclass(frozen=True)
class Unknown:
    """A message type (or version) this side does not understand: ignored silently, as Tailscale does."""

    type: int
    version: int
    body: bytes = field(default=b"", repr=False)


Message = Ping | Pong | CallMeMaybe | NodeInfo | Unknown


def parse_message(payload) -> Message:
    """Parse an opened disco payload. ParseError only for a known type with a truncated body."""
    if len(payload) < 2:
        raise ParseError("disco payload shorter than its 2-byte header")
    mtype, version = payload[0], payload[1]
    body = bytes(payload[2:])
    if mtype == C.TYPE_PING:
        if len(body) < C.PING_MIN_BODY:
            raise ParseError("disco ping shorter than its TxID")
        if len(body) >= C.PING_KEY_BODY:
            return Ping(body[:C.TXID_LEN], body[C.TXID_LEN:C.PING_KEY_BODY], len(body) - C.PING_KEY_BODY)
        return Ping(body[:C.TXID_LEN], None, len(body) - C.TXID_LEN)
    if mtype == C.TYPE_PONG:
        if len(body) < C.PONG_BODY:
            raise ParseError("disco pong shorter than 30 bytes")
        return Pong(body[:C.TXID_LEN], parse_addr(body, C.TXID_LEN))
    if mtype == C.TYPE_CALL_ME_MAYBE:
        if version != 0 or not body or len(body) % C.ADDR_PORT_LEN:
            return CallMeMaybe(())
        return CallMeMaybe(tuple(parse_addr(body, i) for i in range(0, len(body), C.ADDR_PORT_LEN)))
    if mtype == C.TYPE_WGC_NODE_INFO and version == 0:
        if len(body) < _node_info.size:
            raise ParseError("wgc NodeInfo shorter than 5 bytes")
        return NodeInfo(*_node_info.unpack_from(body))
    return Unknown(mtype, version, body)


# --- packets ---------------------------------------------------------------------------------------


def parse_header(packet) -> tuple[bytes, memoryview]:
    """(sender disco public key, nonce ‖ box) of a disco packet; ParseError when it is not one."""
    if not is_disco(packet):
        raise ParseError("not a disco packet (short or no magic)")
    if len(packet) < C.MIN_PACKET_LEN:
        raise ParseError("disco packet too short for a sealed message")
    if len(packet) > C.MAX_PACKET_LEN:
        raise ParseError("disco packet too long")
    view = memoryview(packet)
    return bytes(view[C.MAGIC_LEN:C.MAGIC_LEN + C.KEY_LEN]), view[C.MAGIC_LEN + C.KEY_LEN:]


class DiscoBox:
    """The NaCl box between our disco private key and one peer's disco public key (shared key precomputed)."""

    __slots__ = ("_box", "my_public", "peer_public")

    def __init__(self, my_private: bytes, peer_public: bytes) -> None:
        if len(my_private) != C.KEY_LEN or len(peer_public) != C.KEY_LEN:
            raise UsageError("disco keys are 32 bytes")
        priv = PrivateKey(my_private)
        self.my_public = bytes(priv.public_key)
        self.peer_public = peer_public
        self._box = Box(priv, PublicKey(peer_public))

    def __repr__(self) -> str:
        return f"DiscoBox(me=d:{self.my_public[:8].hex()}, peer=d:{self.peer_public[:8].hex()})"

    def seal(self, payload: bytes, nonce: bytes) -> bytes:
        """The whole disco packet carrying `payload` (a message's encode()), with a caller-chosen random nonce."""
        if len(nonce) != C.NONCE_LEN:
            raise UsageError("a disco nonce is 24 bytes")
        return C.MAGIC + self.my_public + bytes(self._box.encrypt(payload, nonce))

    def open(self, packet) -> bytes:
        """The payload of a packet from this peer. ParseError when it is not disco, not from this peer's key,
        or the box does not open (tampered, or sealed for another key)."""
        sender, sealed = parse_header(packet)
        if sender != self.peer_public:
            raise ParseError("disco packet from another sender key")
        try:
            return self._box.decrypt(bytes(sealed))
        except CryptoError as exc:
            raise ParseError("disco box did not open") from exc


def seal_message(box: DiscoBox, message: Message, nonce: bytes) -> bytes:
    return box.seal(message.encode(), nonce)
