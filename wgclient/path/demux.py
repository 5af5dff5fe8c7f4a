"""Sorts a datagram from the shared UDP socket (or DERP) into WireGuard, STUN or disco by cheap byte checks,
never by parsing (ARCHITECTURE rule 4, disco.md §4.1):

- STUN (RFC 5389 §6): at least 20 bytes, top two bits of byte 0 zero, magic cookie 0x2112A442 at offset 4,
  and the header's length field equal to the rest of the datagram (this last check also keeps a
  WireGuard message whose sender index happens to spell the cookie out of the STUN bucket);
- disco: at least the 62-byte header and the magic "TS💬" at offset 0;
- WireGuard: first byte 1-4 then three zero bytes (whitepaper §5.4), at least 4 bytes long;
- anything else is OTHER (dropped and counted by the caller).
"""
from __future__ import annotations

import struct

from . import constants as C

OTHER, WIREGUARD, STUN, DISCO = 0, 1, 2, 3
NAMES = {OTHER: "other", WIREGUARD: "wireguard", STUN: "stun", DISCO: "disco"}

_COOKIE = b"\x21\x12\xa4\x42"
_u32le = struct.Struct("<I").unpack_from


def classify(data) -> int:
    """One of WIREGUARD, STUN, DISCO, OTHER for a datagram payload (bytes, bytearray or memoryview)."""
    n = len(data)
    if n < 4:
        return OTHER
    if 1 <= _u32le(data)[0] <= 4:  # type 1-4 then three zero bytes, in one little-endian word
        return WIREGUARD
    b0 = data[0]
    if b0 == 0x54:  # 'T': the disco magic's first byte
        return DISCO if n >= C.HEADER_LEN and data[:C.MAGIC_LEN] == C.MAGIC else OTHER
    if (n >= 20 and b0 & 0xC0 == 0 and data[4:8] == _COOKIE
            and (data[2] << 8 | data[3]) == n - 20):
        return STUN
    return OTHER
