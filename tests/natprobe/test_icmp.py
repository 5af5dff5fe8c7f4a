"""ICMP echo packets for the latency fallback: checksum vector, round trip, garbage never raises."""
from __future__ import annotations

import struct

from hypothesis import given, strategies as st

from natprobe import icmp


def test_rfc1071_checksum_example():
    # RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum (end-around carry) to ddf2; the checksum is its complement.
    assert icmp.checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0xFFFF - 0xDDF2


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.binary(max_size=64))
def test_echo_request_checksums_to_zero_and_reply_matches(ident, seq, payload):
    req = icmp.echo_request(ident, seq, payload)
    assert req[0] == 8 and icmp.checksum(req) == 0
    reply = bytes([0, 0]) + req[2:]
    assert icmp.is_echo_reply(reply, seq, payload, ident=ident)
    ip_header = bytes([0x45]) + bytes(19)
    assert icmp.is_echo_reply(ip_header + reply, seq, payload)
    assert not icmp.is_echo_reply(req, seq, payload)                      # our own request echoed back
    assert not icmp.is_echo_reply(reply, (seq + 1) & 0xFFFF, payload)
    assert not icmp.is_echo_reply(reply[:8] + payload + b"x", seq, payload)


@given(st.binary(max_size=80))
def test_garbage_is_not_a_reply(data):
    assert icmp.is_echo_reply(data, 1, b"1a") in (True, False)
    if len(data) >= 8 and not (len(data) >= 20 and data[0] >> 4 == 4):
        assert icmp.is_echo_reply(data, 1, b"1a") == (data[:2] == b"\x00\x00" and
                                                     struct.unpack_from("!H", data, 6)[0] == 1 and data[8:] == b"1a")
