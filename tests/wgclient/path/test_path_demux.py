"""Datagram demux: real WireGuard, STUN (natprobe's encoder) and disco packets land in their buckets; the
checks are the cheap ones of ARCHITECTURE rule 4, and no input makes classify() raise."""
from __future__ import annotations

import struct

from hypothesis import given, strategies as st

from natprobe import stun
from wgclient import keys
from wgclient.path import demux, disco
from wgclient.path.discokeys import derive_pair


def wg(msg_type: int, size: int, index: int = 7) -> bytes:
    return struct.pack("<II", msg_type, index) + bytes(size - 8)


def test_wireguard_messages():
    for msg_type, size in ((1, 148), (2, 92), (3, 64), (4, 32), (4, 1500)):
        assert demux.classify(wg(msg_type, size)) == demux.WIREGUARD
    assert demux.classify(wg(5, 148)) == demux.OTHER
    assert demux.classify(b"\x01\x00\x00\x01" + bytes(144)) == demux.OTHER


def test_wireguard_index_spelling_the_stun_cookie_stays_wireguard():
    index = int.from_bytes(b"\x21\x12\xa4\x42", "little")
    for msg_type, size in ((1, 148), (2, 92), (4, 32)):
        packet = wg(msg_type, size, index)
        assert packet[4:8] == b"\x21\x12\xa4\x42"
        assert demux.classify(packet) == demux.WIREGUARD


def test_stun_messages():
    request = stun.binding_request(bytes(range(12)))
    assert demux.classify(request) == demux.STUN
    response = stun.binding_success(stun.parse_message(request), ("198.51.100.7", 41641))
    assert demux.classify(response) == demux.STUN
    assert demux.classify(memoryview(response)) == demux.STUN
    assert demux.classify(response + b"\x00") == demux.OTHER  # length field disagrees
    bad = bytearray(response)
    bad[4] ^= 1  # cookie
    assert demux.classify(bytes(bad)) == demux.OTHER


def test_disco_packets():
    a, b = keys.clamp(bytes(range(32))), keys.clamp(bytes(range(1, 33)))
    packet = derive_pair(a, keys.public_key(b)).box.seal(disco.Ping(bytes(12)).encode(), bytes(24))
    assert demux.classify(packet) == demux.DISCO
    assert demux.classify(bytearray(packet)) == demux.DISCO
    assert demux.classify(packet[:61]) == demux.OTHER
    assert demux.classify(b"TS" + bytes(70)) == demux.OTHER


@given(st.binary(max_size=200))
def test_classify_total_and_consistent(data):
    kind = demux.classify(data)
    assert kind in demux.NAMES
    if kind == demux.DISCO:
        assert disco.is_disco(data)
    elif kind == demux.WIREGUARD:
        assert 1 <= data[0] <= 4 and data[1:4] == b"\0\0\0"
    elif kind == demux.STUN:
        assert data[0] & 0xC0 == 0 and data[4:8] == b"\x21\x12\xa4\x42" and len(data) >= 20
    else:
        assert not disco.is_disco(data)
