"""Encoding and parsing of the four WireGuard messages (whitepaper §5.4, shared/protocol/wireguard.md §2).

`message_type(data)` is the cheap classifier: type 1-4 followed by three zero bytes, of a valid size.
Parsers check the exact size before touching a field and raise only `ParseError`.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from ..constants import (COOKIE_REPLY_SIZE, INITIATION_SIZE, MSG_COOKIE_REPLY, MSG_INITIATION, MSG_RESPONSE,
                         MSG_TRANSPORT, RESPONSE_SIZE, TRANSPORT_HEADER_SIZE, TRANSPORT_MIN_SIZE)
from ..errors import ParseError

_U32 = struct.Struct("<I")
_TRANSPORT_HEADER = struct.Struct("<IIQ")
_SIZES = {MSG_INITIATION: INITIATION_SIZE, MSG_RESPONSE: RESPONSE_SIZE, MSG_COOKIE_REPLY: COOKIE_REPLY_SIZE}


def message_type(data: bytes | bytearray | memoryview) -> int:
    """The message type if data looks like a WireGuard message of a valid size, else 0."""
    if len(data) < 4:
        return 0
    t = _U32.unpack_from(data)[0]
    if t == MSG_TRANSPORT:
        return t if len(data) >= TRANSPORT_MIN_SIZE else 0
    size = _SIZES.get(t)
    return t if size == len(data) else 0


def _check(data: bytes, kind: int) -> None:
    if message_type(data) != kind:
        raise ParseError(f"not a type {kind} WireGuard message of the right size ({len(data)} bytes)")


@dataclass(frozen=True)
class Initiation:
    sender: int
    ephemeral: bytes
    encrypted_static: bytes
    encrypted_timestamp: bytes
    mac1: bytes = bytes(16)
    mac2: bytes = bytes(16)

    MAC1_OFFSET = 116

    def encode(self) -> bytes:
        return (_U32.pack(MSG_INITIATION) + _U32.pack(self.sender) + self.ephemeral + self.encrypted_static
                + self.encrypted_timestamp + self.mac1 + self.mac2)


def parse_initiation(data: bytes) -> Initiation:
    _check(data, MSG_INITIATION)
    data = bytes(data)
    return Initiation(_U32.unpack_from(data, 4)[0], data[8:40], data[40:88], data[88:116], data[116:132],
                      data[132:148])


@dataclass(frozen=True)
class Response:
    sender: int
    receiver: int
    ephemeral: bytes
    encrypted_nothing: bytes
    mac1: bytes = bytes(16)
    mac2: bytes = bytes(16)

    MAC1_OFFSET = 60

    def encode(self) -> bytes:
        return (_U32.pack(MSG_RESPONSE) + _U32.pack(self.sender) + _U32.pack(self.receiver) + self.ephemeral
                + self.encrypted_nothing + self.mac1 + self.mac2)


def parse_response(data: bytes) -> Response:
    _check(data, MSG_RESPONSE)
    data = bytes(data)
    return Response(_U32.unpack_from(data, 4)[0], _U32.unpack_from(data, 8)[0], data[12:44], data[44:60],
                    data[60:76], data[76:92])


@dataclass(frozen=True)
class CookieReply:
    receiver: int
    nonce: bytes
    encrypted_cookie: bytes

    def encode(self) -> bytes:
        return _U32.pack(MSG_COOKIE_REPLY) + _U32.pack(self.receiver) + self.nonce + self.encrypted_cookie


def parse_cookie_reply(data: bytes) -> CookieReply:
    _check(data, MSG_COOKIE_REPLY)
    data = bytes(data)
    return CookieReply(_U32.unpack_from(data, 4)[0], data[8:32], data[32:64])


@dataclass(frozen=True)
class TransportHeader:
    receiver: int
    counter: int

    def encode(self) -> bytes:
        return _TRANSPORT_HEADER.pack(MSG_TRANSPORT, self.receiver, self.counter)


def parse_transport_header(data: bytes) -> TransportHeader:
    _check(data, MSG_TRANSPORT)
    _, receiver, counter = _TRANSPORT_HEADER.unpack_from(data)
    return TransportHeader(receiver, counter)


pack_transport_header_into = _TRANSPORT_HEADER.pack_into
unpack_transport_header_from = _TRANSPORT_HEADER.unpack_from
TRANSPORT_HEADER = TRANSPORT_HEADER_SIZE
