"""Sans-I/O STUN codec (RFC 8489/5389, Binding only): requests, success/error responses, address attributes.

Owns the bytes: `is_stun` (cheap check), `parse_message` (header + attributes, FINGERPRINT verified when
present, unknown attributes kept raw and otherwise ignored), `binding_request` (the exact 40-byte request
Tailscale's derper insists on: SOFTWARE "tailnode" then FINGERPRINT), `binding_success`/`binding_error`
for servers and `parse_binding_response` for clients (XOR-MAPPED-ADDRESS 0x0020 or 0x8020, else
MAPPED-ADDRESS; IPv4-mapped IPv6 answers unmapped). Garbage raises only `natprobe.errors.ParseError`.
RFC 3489 ("classic") requests, which lack the magic cookie, are parsed when `allow_classic=True` so a
server can answer old clients with MAPPED-ADDRESS.
"""
from __future__ import annotations

import binascii
import ipaddress
import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

from natprobe import constants as C
from natprobe.errors import ParseError, UsageError

_HDR = struct.Struct("!HH4s12s")
_ATTR = struct.Struct("!HH")

Addr = tuple[str, int]


class Attribute(NamedTuple):
    """One TLV attribute; `value` is unpadded."""

    type: int
    value: bytes


@dataclass(frozen=True)
class Message:
    """A parsed STUN message. `cookie` is the 4 bytes after the length (the magic cookie for RFC 5389+)."""

    msg_type: int
    txid: bytes
    attributes: tuple[Attribute, ...] = ()
    cookie: bytes = C.MAGIC_COOKIE_BYTES

    @property
    def classic(self) -> bool:
        """True for an RFC 3489 message (no magic cookie; its transaction id is cookie + txid)."""
        return self.cookie != C.MAGIC_COOKIE_BYTES

    def get(self, attr_type: int) -> bytes | None:
        """The value of the first attribute of that type, or None."""
        for attr in self.attributes:
            if attr.type == attr_type:
                return attr.value
        return None

    def encode(self, *, fingerprint: bool = False) -> bytes:
        """The wire form; with `fingerprint=True` a FINGERPRINT attribute is appended (RFC 8489 §14.7)."""
        if len(self.txid) != C.TXID_LEN or len(self.cookie) != 4:
            raise UsageError("a STUN transaction id is 12 bytes and the cookie 4")
        body = bytearray()
        for attr in self.attributes:
            if len(attr.value) > 0xFFFF - 4:
                raise UsageError(f"STUN attribute 0x{attr.type:04x} too long")
            body += _ATTR.pack(attr.type, len(attr.value)) + attr.value
            body += b"\x00" * (-len(attr.value) % 4)
        if fingerprint:
            length = len(body) + 8
            head = _HDR.pack(self.msg_type, length, self.cookie, self.txid)
            crc = fingerprint_of(head + bytes(body))
            body += _ATTR.pack(C.ATTR_FINGERPRINT, 4) + crc.to_bytes(4, "big")
        if len(body) > 0xFFFF:
            raise UsageError("STUN message too long")
        return _HDR.pack(self.msg_type, len(body), self.cookie, self.txid) + bytes(body)


@dataclass(frozen=True)
class BindingResponse:
    """What a client learns from a Binding response: the mapped address or the error."""

    txid: bytes
    mapped: Addr | None
    error_code: int | None = None
    reason: str = ""
    software: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_code is None and self.mapped is not None


def fingerprint_of(data: bytes) -> int:
    """RFC 8489 §14.7: CRC-32 of everything before the FINGERPRINT attribute, XOR 0x5354554E."""
    return (binascii.crc32(data) & 0xFFFFFFFF) ^ C.FINGERPRINT_XOR


def is_stun(data: bytes) -> bool:
    """Cheap check (no parse): length >= 20, top two bits zero, magic cookie in place."""
    return len(data) >= C.HEADER_LEN and data[0] & 0xC0 == 0 and data[4:8] == C.MAGIC_COOKIE_BYTES


def is_binding_response(data: bytes) -> bool:
    """Cheap check for a Binding success or error response (what a client demultiplexes to STUN)."""
    return is_stun(data) and data[0] & 0x01 == 0x01 and data[1] in (0x01, 0x11)


def parse_message(data: bytes, *, allow_classic: bool = False) -> Message:
    """Parse a STUN message; raise ParseError for anything malformed or a FINGERPRINT that does not verify."""
    if not isinstance(data, bytes):
        data = bytes(data)
    if len(data) < C.HEADER_LEN:
        raise ParseError(f"STUN message too short ({len(data)} bytes)")
    msg_type, length, cookie, txid = _HDR.unpack_from(data)
    if msg_type & 0xC000:
        raise ParseError("not STUN: top two bits of the type are set")
    if cookie != C.MAGIC_COOKIE_BYTES and not allow_classic:
        raise ParseError("not STUN: magic cookie missing")
    if length % 4:
        raise ParseError(f"STUN length {length} is not a multiple of 4")
    if C.HEADER_LEN + length > len(data):
        raise ParseError(f"STUN length {length} exceeds the {len(data) - C.HEADER_LEN} bytes present")
    end = C.HEADER_LEN + length
    attrs: list[Attribute] = []
    off = C.HEADER_LEN
    while off < end:
        if end - off < 4:
            raise ParseError("truncated STUN attribute header")
        atype, alen = _ATTR.unpack_from(data, off)
        vstart = off + 4
        if vstart + alen > end:
            raise ParseError(f"STUN attribute 0x{atype:04x} overruns the message")
        if atype == C.ATTR_FINGERPRINT:
            if alen != 4:
                raise ParseError("FINGERPRINT must be 4 bytes")
            if vstart + 4 != end:
                raise ParseError("FINGERPRINT is not the last attribute")
            want = int.from_bytes(data[vstart:vstart + 4], "big")
            if fingerprint_of(data[:off]) != want:
                raise ParseError("FINGERPRINT does not match")
        attrs.append(Attribute(atype, data[vstart:vstart + alen]))
        off = vstart + alen + (-alen % 4)
    return Message(msg_type, txid, tuple(attrs), cookie)


# --- address attributes (RFC 8489 §14.1, §14.2) -------------------------------------------------------

def _unmap(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _xor_key(txid: bytes) -> bytes:
    return C.MAGIC_COOKIE_BYTES + txid


@lru_cache(maxsize=4096)
def _pack_ip(ip: str) -> bytes:
    try:
        return ipaddress.ip_address(ip.split("%", 1)[0]).packed
    except ValueError:
        raise UsageError(f"not an IP address: {ip!r}") from None


def _xor(raw: bytes, txid: bytes) -> bytes:
    if len(raw) == 4:
        return (int.from_bytes(raw, "big") ^ C.MAGIC_COOKIE).to_bytes(4, "big")
    return (int.from_bytes(raw, "big") ^ int.from_bytes(_xor_key(txid), "big")).to_bytes(16, "big")


def encode_address(ip: str, port: int, *, xor_txid: bytes | None = None) -> bytes:
    """MAPPED-ADDRESS value, or XOR-MAPPED-ADDRESS value when `xor_txid` is given."""
    raw = _pack_ip(ip)
    if not 0 <= port <= 0xFFFF:
        raise UsageError(f"port out of range: {port}")
    family = C.FAMILY_IPV4 if len(raw) == 4 else C.FAMILY_IPV6
    if xor_txid is not None:
        port ^= C.MAGIC_COOKIE >> 16
        raw = _xor(raw, xor_txid)
    return struct.pack("!BBH", 0, family, port) + raw


def decode_address(value: bytes, *, xor_txid: bytes | None = None) -> Addr:
    """Inverse of `encode_address`; IPv4-mapped IPv6 addresses come back as IPv4."""
    if len(value) < 4:
        raise ParseError("address attribute too short")
    _, family, port = struct.unpack_from("!BBH", value)
    raw = value[4:]
    if family == C.FAMILY_IPV4:
        if len(raw) != 4:
            raise ParseError(f"IPv4 address attribute has {len(raw)} address bytes")
    elif family == C.FAMILY_IPV6:
        if len(raw) != 16:
            raise ParseError(f"IPv6 address attribute has {len(raw)} address bytes")
    else:
        raise ParseError(f"unknown address family {family}")
    if xor_txid is not None:
        port ^= C.MAGIC_COOKIE >> 16
        raw = _xor(raw, xor_txid)
    ip = ipaddress.IPv4Address(raw) if family == C.FAMILY_IPV4 else ipaddress.IPv6Address(raw)
    return _unmap(ip), port


# --- Binding ---------------------------------------------------------------------------------------------

def binding_request(txid: bytes, *, software: bytes | None = C.TAILSCALE_SOFTWARE,
                    fingerprint: bool = True) -> bytes:
    """A Binding request; the defaults give the exact 40 bytes of netcheck.md §2.1."""
    attrs = (Attribute(C.ATTR_SOFTWARE, software),) if software is not None else ()
    return Message(C.BINDING_REQUEST, txid, attrs).encode(fingerprint=fingerprint)


def binding_success(request: Message, addr: Addr, *, software: bytes | None = None) -> bytes:
    """The success response to `request` reporting `addr`: XOR-MAPPED-ADDRESS, or MAPPED-ADDRESS for RFC 3489."""
    ip, port = addr[0], addr[1]
    if ip.startswith("::ffff:") and "." in ip:      # IPv4 client seen on a dual-stack socket
        ip = ip[7:]
    if request.classic:
        attr = struct.pack("!HH", C.ATTR_MAPPED_ADDRESS, 0) + encode_address(ip, port)
    else:
        attr = struct.pack("!HH", C.ATTR_XOR_MAPPED_ADDRESS, 0) + encode_address(ip, port, xor_txid=request.txid)
    attr = attr[:2] + struct.pack("!H", len(attr) - 4) + attr[4:]
    if software is not None:
        attr += struct.pack("!HH", C.ATTR_SOFTWARE, len(software)) + software + b"\x00" * (-len(software) % 4)
    return _HDR.pack(C.BINDING_SUCCESS, len(attr), request.cookie, request.txid) + attr


def binding_error(request: Message, code: int, reason: str) -> bytes:
    """An error response (RFC 8489 §14.8) to `request`, e.g. 400 Bad Request or 420 Unknown Attribute."""
    if not 300 <= code <= 699:
        raise UsageError(f"STUN error code out of range: {code}")
    value = struct.pack("!HBB", 0, code // 100, code % 100) + reason.encode()[:763]
    return Message(C.BINDING_ERROR, request.txid, (Attribute(C.ATTR_ERROR_CODE, value),), request.cookie).encode()


def parse_error_code(value: bytes) -> tuple[int, str]:
    """ERROR-CODE value -> (code, reason)."""
    if len(value) < 4:
        raise ParseError("ERROR-CODE too short")
    cls, num = value[2] & 0x07, value[3]
    if not 3 <= cls <= 6 or num > 99:
        raise ParseError(f"bad ERROR-CODE {cls}/{num}")
    return cls * 100 + num, value[4:].decode("utf-8", "replace")


def parse_binding_response(data: bytes) -> BindingResponse:
    """Parse a Binding success or error response (client side, netcheck.md §2.3)."""
    msg = parse_message(data)
    software = msg.get(C.ATTR_SOFTWARE)
    sw = software.decode("utf-8", "replace") if software is not None else None
    if msg.msg_type == C.BINDING_ERROR:
        raw = msg.get(C.ATTR_ERROR_CODE)
        code, reason = parse_error_code(raw) if raw is not None else (500, "error response without ERROR-CODE")
        return BindingResponse(msg.txid, None, code, reason, sw)
    if msg.msg_type != C.BINDING_SUCCESS:
        raise ParseError(f"not a Binding response (type 0x{msg.msg_type:04x})")
    mapped = None
    for attr in msg.attributes:
        if attr.type in (C.ATTR_XOR_MAPPED_ADDRESS, C.ATTR_XOR_MAPPED_ADDRESS_ALT):
            mapped = decode_address(attr.value, xor_txid=msg.txid)
            break
    if mapped is None:
        value = msg.get(C.ATTR_MAPPED_ADDRESS)
        if value is not None:
            mapped = decode_address(value)
    if mapped is None:
        raise ParseError("Binding success response carries no mapped address")
    return BindingResponse(msg.txid, mapped, None, "", sw)
