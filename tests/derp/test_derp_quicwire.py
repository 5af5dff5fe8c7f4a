"""derp.quicwire: datagram <-> DERP frame checks, datagram payload limits, the datagram-or-stream rule."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from derp import quicwire as W
from derp.constants import MAX_PACKET_SIZE, QUIC_MAX_DATAGRAM_FRAME_SIZE, FrameType
from derp.errors import ParseError

keys = st.binary(min_size=32, max_size=32)
packets = st.binary(max_size=2000)


@given(st.binary(max_size=3000), st.sampled_from([W.SEND, W.RECV]))
def test_garbage_raises_only_parse_error(data, expect) -> None:
    try:
        payload = W.parse_datagram(data, expect)
    except ParseError:
        return
    assert data[0] == expect and len(payload) == len(data) - 5 >= 32


@given(st.sampled_from([W.SEND, W.RECV]), keys, packets)
def test_round_trip(ftype, key, packet) -> None:
    payload = W.parse_datagram(W.packet_frame(ftype, key, packet), ftype)
    assert bytes(payload[:32]) == key and bytes(payload[32:]) == packet


@given(keys, packets, st.integers(0, 255))
def test_wrong_type_or_length_is_refused(key, packet, other) -> None:
    frame = bytearray(W.packet_frame(W.SEND, key, packet))
    with pytest.raises(ParseError):
        W.parse_datagram(bytes(frame), W.RECV)          # a client never gets SendPacket
    with pytest.raises(ParseError):
        W.parse_datagram(bytes(frame) + b"x", W.SEND)   # header length != datagram length - 5
    if other not in (W.SEND, W.RECV):
        frame[0] = other
        with pytest.raises(ParseError):
            W.parse_datagram(bytes(frame), W.SEND)


def test_bounds() -> None:
    with pytest.raises(ParseError):
        W.parse_datagram(W.packet_frame(W.SEND, bytes(32), b"")[:-1], W.SEND)   # no whole key
    big = bytes([FrameType.SEND_PACKET]) + (32 + MAX_PACKET_SIZE + 1).to_bytes(4, "big")
    with pytest.raises(ParseError):
        W.parse_datagram(big + bytes(32 + MAX_PACKET_SIZE + 1), W.SEND)
    with pytest.raises(ValueError):
        W.packet_frame(FrameType.PING, bytes(32), b"")


@given(st.integers(1200, 65527), st.integers(0, 20))
def test_payload_limit_fits_the_packet(size, cid) -> None:
    n = W.datagram_payload_limit(size, cid)
    overhead = 1 + cid + 4 + 16
    assert overhead + W.datagram_frame_size(n) <= size
    assert overhead + W.datagram_frame_size(n + 1) > size     # and it is the largest


def test_payload_limit_defaults() -> None:
    # 1452-byte packets, 8-byte CIDs: a 1420-byte frame, i.e. a WireGuard packet of 1383 bytes
    assert W.datagram_payload_limit() == 1420
    assert W.datagram_limit(1452, 8, None) == 0 and W.datagram_limit(1452, 8, 0) == 0
    assert W.datagram_limit(1452, 8, QUIC_MAX_DATAGRAM_FRAME_SIZE) == 1420
    assert W.datagram_limit(1452, 8, 500) == 497


@given(st.integers(37, 70000), st.one_of(st.none(), st.integers(0, 70000)), st.integers(0, 1500))
def test_datagram_or_stream(frame_len, peer_max, limit) -> None:
    use = W.use_datagram(frame_len, peer_max, limit)
    assert use == bool(peer_max and frame_len <= limit and W.datagram_frame_size(frame_len) <= peer_max)
    if peer_max:
        assert W.use_datagram(frame_len, peer_max, W.datagram_limit(1452, 8, peer_max)) == \
            (frame_len <= W.datagram_limit(1452, 8, peer_max))
