"""Reads the server name (SNI) and the offered ALPN protocols out of a TLS ClientHello (RFC 8446 4.1.2,
RFC 6066 3, RFC 7301 3.1), from bytes peeked off a socket before any TLS library sees them.

Why: an ACME TLS-ALPN-01 validation (RFC 8737) is a handshake that offers only `acme-tls/1` and must be
answered with the validation certificate, but Python's `ssl` picks the certificate before it shows the
server the client's ALPN list. The derper peeks at the ClientHello while a validation is pending and
hands such a handshake the validation context.

`parse_client_hello(data)` returns None while the first record is incomplete, a `ClientHello` once it is
there, and raises `ParseError` for anything that is not a ClientHello contained in one record.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from derp.errors import ParseError

RECORD_HANDSHAKE = 22
HANDSHAKE_CLIENT_HELLO = 1
EXT_SERVER_NAME = 0
EXT_ALPN = 16
MAX_RECORD = 16384 + 2048   # TLSPlaintext.length bound (RFC 8446 5.1), with the ciphertext slack
ACME_TLS_ALPN = b"acme-tls/1"


@dataclass(frozen=True)
class ClientHello:
    server_name: str | None
    alpn: tuple[bytes, ...]

    @property
    def is_acme_validation(self) -> bool:
        """RFC 8737 3: the validation handshake offers `acme-tls/1` (and only it)."""
        return self.alpn == (ACME_TLS_ALPN,)


class _Reader:
    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, pos: int, end: int) -> None:
        self.data, self.pos, self.end = data, pos, end

    def take(self, n: int) -> bytes:
        if self.pos + n > self.end:
            raise ParseError("ClientHello field runs past its end")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack("!H", self.take(2))[0]

    def vector(self, len_bytes: int) -> "_Reader":
        n = self.u8() if len_bytes == 1 else self.u16()
        if self.pos + n > self.end:
            raise ParseError("ClientHello vector runs past its end")
        sub = _Reader(self.data, self.pos, self.pos + n)
        self.pos += n
        return sub

    def done(self) -> bool:
        return self.pos >= self.end


def parse_client_hello(data: bytes) -> ClientHello | None:
    """SNI host name and ALPN list of the ClientHello at the start of `data` (see the module docstring)."""
    if len(data) < 5:
        if data and data[0] != RECORD_HANDSHAKE:
            raise ParseError("not a TLS handshake record")
        return None
    rtype, _version, rlen = struct.unpack_from("!BHH", data, 0)
    if rtype != RECORD_HANDSHAKE:
        raise ParseError("not a TLS handshake record")
    if rlen < 4 or rlen > MAX_RECORD:
        raise ParseError(f"TLS record length {rlen} out of range")
    if len(data) < 5 + rlen:
        return None
    data = bytes(data[:5 + rlen])
    if data[5] != HANDSHAKE_CLIENT_HELLO:
        raise ParseError("first handshake message is not a ClientHello")
    hlen = int.from_bytes(data[6:9], "big")
    if hlen > rlen - 4:
        raise ParseError("ClientHello spans more than one record")
    body = _Reader(data, 9, 9 + hlen)
    body.take(2 + 32)          # legacy_version, random
    body.vector(1)             # legacy_session_id
    body.vector(2)             # cipher_suites
    body.vector(1)             # legacy_compression_methods
    if body.done():
        return ClientHello(None, ())
    name: str | None = None
    alpn: tuple[bytes, ...] = ()
    exts = body.vector(2)
    while not exts.done():
        etype = exts.u16()
        ext = exts.vector(2)
        if etype == EXT_SERVER_NAME:
            names = ext.vector(2)
            while not names.done():
                kind = names.u8()
                value = names.vector(2)
                if kind == 0 and name is None:
                    try:
                        name = value.take(value.end - value.pos).decode("ascii")
                    except UnicodeDecodeError:
                        raise ParseError("SNI host name is not ASCII") from None
        elif etype == EXT_ALPN:
            protos = ext.vector(2)
            found = []
            while not protos.done():
                proto = protos.vector(1)
                found.append(proto.take(proto.end - proto.pos))
            alpn = tuple(found)
    return ClientHello(name, alpn)
