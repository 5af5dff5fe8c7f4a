"""DERP over QUIC, the pure part (docs/derp-quic.md): which DERP frames a QUIC DATAGRAM may carry and how
one is checked, how much a datagram can hold on a path, and the rule that puts a packet in a datagram or
on the DERP stream.

Sans-I/O: no sockets, no clock, no aioquic. A DATAGRAM frame (RFC 9221) carries exactly one whole DERP
frame, SendPacket (client to server) or RecvPacket (server to client), its 5-byte header included, the
header's length equal to the datagram's length minus 5. Anything else is a ParseError (the adapters drop
and count it; it never closes a connection).
"""
from __future__ import annotations

import struct

from derp.constants import (FRAME_HEADER_LEN, KEY_LEN, MAX_PACKET_SIZE, QUIC_AEAD_TAG_LEN, QUIC_ALPN,
                            QUIC_CID_LEN, QUIC_PACKET_SIZE, QUIC_PN_MAX_LEN, QUIC_SHORT_HEADER_FIXED,
                            FrameType)
from derp.errors import ParseError

ALPN = QUIC_ALPN
SEND, RECV = FrameType.SEND_PACKET, FrameType.RECV_PACKET
_HDR = struct.Struct(">BI")
_MIN_FRAME = FRAME_HEADER_LEN + KEY_LEN
_MAX_FRAME = FRAME_HEADER_LEN + KEY_LEN + MAX_PACKET_SIZE


def varint_len(n: int) -> int:
    """RFC 9000 §16: bytes of a variable-length integer."""
    if n < 0 or n >= 1 << 62:
        raise ValueError(f"{n} cannot be a QUIC varint")
    return 1 if n < 1 << 6 else 2 if n < 1 << 14 else 4 if n < 1 << 30 else 8


def datagram_frame_size(n: int) -> int:
    """The DATAGRAM frame (type, Length, data) around `n` bytes of data: what max_datagram_frame_size bounds."""
    return 1 + varint_len(n) + n


def datagram_payload_limit(packet_size: int = QUIC_PACKET_SIZE, cid_len: int = QUIC_CID_LEN) -> int:
    """The most data one DATAGRAM frame can carry alone in a 1-RTT packet of `packet_size` bytes whose
    destination connection ID is `cid_len` bytes (short header, packet number at its longest, AEAD tag)."""
    room = packet_size - QUIC_SHORT_HEADER_FIXED - cid_len - QUIC_PN_MAX_LEN - QUIC_AEAD_TAG_LEN
    n = room - 1 - 1   # the frame type; a 1-byte Length first
    while n > 0 and datagram_frame_size(n) > room:
        n -= 1
    return max(0, n)


def datagram_limit(packet_size: int, cid_len: int, peer_max_frame: int | None) -> int:
    """The largest DERP frame a connection puts in a datagram: what fits the path's packet and the peer's
    max_datagram_frame_size (0 when the peer did not negotiate DATAGRAM)."""
    if not peer_max_frame:
        return 0
    n = min(datagram_payload_limit(packet_size, cid_len), peer_max_frame)
    while n > 0 and datagram_frame_size(n) > peer_max_frame:
        n -= 1
    return n


def use_datagram(frame_len: int, peer_max_frame: int | None, payload_limit: int) -> bool:
    """Does a SendPacket/RecvPacket frame of `frame_len` bytes go in a datagram? Only when the peer
    advertised max_datagram_frame_size (None: it did not, so everything goes on the stream), the frame
    fits that and the path's datagram payload. Otherwise it goes on the DERP stream, never split."""
    if not peer_max_frame:
        return False
    return frame_len <= payload_limit and datagram_frame_size(frame_len) <= peer_max_frame


def parse_datagram(data: bytes | memoryview, expect: int) -> memoryview:
    """A datagram's DERP frame of type `expect` (SendPacket at the server, RecvPacket at the client):
    returns its payload (the 32-byte key, then the packet). ParseError for anything else."""
    n = len(data)
    if n < _MIN_FRAME:
        raise ParseError(f"datagram of {n} bytes is too short for a DERP packet frame")
    if n > _MAX_FRAME:
        raise ParseError(f"datagram of {n} bytes exceeds the largest DERP packet frame")
    ftype, length = _HDR.unpack_from(data, 0)
    if ftype != expect:
        raise ParseError(f"datagram carries DERP frame type 0x{ftype:02x}, not 0x{expect:02x}")
    if length != n - FRAME_HEADER_LEN:
        raise ParseError(f"datagram's DERP frame length {length} does not match its {n - FRAME_HEADER_LEN} bytes")
    return memoryview(data)[FRAME_HEADER_LEN:]


def packet_frame(ftype: int, key: bytes, packet: bytes) -> bytes:
    """A SendPacket (key: destination) or RecvPacket (key: source) frame, as a datagram carries it."""
    if ftype not in (SEND, RECV) or len(key) != KEY_LEN or len(packet) > MAX_PACKET_SIZE:
        raise ValueError("a packet frame is SendPacket/RecvPacket, a 32-byte key and at most 64 KiB")
    return _HDR.pack(ftype, KEY_LEN + len(packet)) + key + packet
