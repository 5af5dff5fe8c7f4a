"""Sans-I/O ICMPv4 echo for netcheck's latency fallback (netcheck.md §6; RFC 792): build an Echo Request
carrying the node name as payload, and recognise its Echo Reply (with or without the IPv4 header in front,
as raw and datagram ICMP sockets deliver them).
"""
from __future__ import annotations

import struct

from natprobe.errors import UsageError

ECHO_REQUEST, ECHO_REPLY = 8, 0


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int, payload: bytes) -> bytes:
    if not (0 <= ident <= 0xFFFF and 0 <= seq <= 0xFFFF) or len(payload) > 1400:
        raise UsageError("ICMP echo id/seq are 16-bit and the payload at most 1400 bytes")
    head = struct.pack("!BBHHH", ECHO_REQUEST, 0, 0, ident, seq)
    return struct.pack("!BBHHH", ECHO_REQUEST, 0, checksum(head + payload), ident, seq) + payload


def is_echo_reply(data: bytes, seq: int, payload: bytes, *, ident: int | None = None) -> bool:
    """True if `data` (ICMP message, or IPv4 packet holding one) is the reply to our request."""
    if len(data) >= 20 and data[0] >> 4 == 4:          # raw socket: skip the IPv4 header
        data = data[(data[0] & 0x0F) * 4:]
    if len(data) < 8 or data[0] != ECHO_REPLY or data[1] != 0:
        return False
    got_ident, got_seq = struct.unpack_from("!HH", data, 4)
    return got_seq == seq and data[8:] == payload and (ident is None or got_ident == ident)
