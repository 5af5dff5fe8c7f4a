"""WireGuard message encoding/parsing: round trips, exact layouts, classification, garbage raises only ParseError."""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wgclient.errors import ParseError
from wgclient.noise.messages import (CookieReply, Initiation, Response, TransportHeader, message_type,
                                     parse_cookie_reply, parse_initiation, parse_response,
                                     parse_transport_header)

u32 = st.integers(0, 2**32 - 1)


def blob(n: int):
    return st.binary(min_size=n, max_size=n)


initiations = st.builds(Initiation, u32, blob(32), blob(48), blob(28), blob(16), blob(16))
responses = st.builds(Response, u32, u32, blob(32), blob(16), blob(16), blob(16))
cookie_replies = st.builds(CookieReply, u32, blob(24), blob(32))
headers = st.builds(TransportHeader, u32, st.integers(0, 2**64 - 1))


@settings(max_examples=100)
@given(initiations)
def test_initiation_round_trip_and_layout(msg: Initiation) -> None:
    data = msg.encode()
    assert len(data) == 148 and data[:4] == b"\x01\0\0\0"
    assert struct.unpack_from("<I", data, 4)[0] == msg.sender
    assert data[8:40] == msg.ephemeral and data[116:132] == msg.mac1 and data[132:] == msg.mac2
    assert message_type(data) == 1
    assert parse_initiation(data) == msg
    assert parse_initiation(bytearray(data)) == msg
    assert parse_initiation(memoryview(data)) == msg


@settings(max_examples=100)
@given(responses)
def test_response_round_trip_and_layout(msg: Response) -> None:
    data = msg.encode()
    assert len(data) == 92 and data[:4] == b"\x02\0\0\0"
    assert struct.unpack_from("<II", data, 4) == (msg.sender, msg.receiver)
    assert data[12:44] == msg.ephemeral and data[44:60] == msg.encrypted_nothing and data[60:76] == msg.mac1
    assert message_type(data) == 2
    assert parse_response(data) == msg


@settings(max_examples=100)
@given(cookie_replies)
def test_cookie_reply_round_trip_and_layout(msg: CookieReply) -> None:
    data = msg.encode()
    assert len(data) == 64 and data[:4] == b"\x03\0\0\0"
    assert struct.unpack_from("<I", data, 4)[0] == msg.receiver
    assert data[8:32] == msg.nonce and data[32:] == msg.encrypted_cookie
    assert message_type(data) == 3
    assert parse_cookie_reply(data) == msg


@settings(max_examples=100)
@given(headers, st.binary(min_size=16, max_size=200))
def test_transport_header_round_trip(hdr: TransportHeader, body: bytes) -> None:
    data = hdr.encode() + body
    assert data[:4] == b"\x04\0\0\0" and struct.unpack_from("<Q", data, 8)[0] == hdr.counter
    assert message_type(data) == 4
    assert parse_transport_header(data) == hdr


def test_message_type_sizes_and_reserved_bytes() -> None:
    assert message_type(b"") == 0
    assert message_type(b"\x01\0\0") == 0
    for kind, size in ((1, 148), (2, 92), (3, 64)):
        good = bytes([kind, 0, 0, 0]) + bytes(size - 4)
        assert message_type(good) == kind
        assert message_type(good + b"\0") == 0 and message_type(good[:-1]) == 0
        for i in (1, 2, 3):  # the three reserved bytes must be zero
            bad = bytearray(good)
            bad[i] = 1
            assert message_type(bytes(bad)) == 0
    assert message_type(b"\x04\0\0\0" + bytes(28)) == 4  # a keepalive: exactly 32 bytes
    assert message_type(b"\x04\0\0\0" + bytes(27)) == 0
    assert message_type(b"\x04\0\0\0" + bytes(65000)) == 4
    for kind in (0, 5, 255):
        assert message_type(bytes([kind, 0, 0, 0]) + bytes(144)) == 0


PARSERS = [parse_initiation, parse_response, parse_cookie_reply, parse_transport_header]


@pytest.mark.parametrize("parse", PARSERS, ids=lambda p: p.__name__)
@given(data=st.binary(max_size=300))
def test_garbage_raises_only_parse_error(parse, data: bytes) -> None:
    try:
        parse(data)
    except ParseError:
        pass


@pytest.mark.parametrize("parse,kind", list(zip(PARSERS, (1, 2, 3, 4))), ids=lambda p: getattr(p, "__name__", p))
@given(data=st.binary(max_size=300))
def test_parsers_accept_exactly_what_message_type_classifies(parse, kind: int, data: bytes) -> None:
    if message_type(data) == kind:
        parse(data)
    else:
        with pytest.raises(ParseError):
            parse(data)


@given(kind=st.sampled_from([1, 2, 3, 4]), body=st.binary(max_size=200))
def test_parsers_on_right_type_wrong_size(kind: int, body: bytes) -> None:
    data = bytes([kind, 0, 0, 0]) + body
    parse = PARSERS[kind - 1]
    sizes = {1: 148, 2: 92, 3: 64}
    ok = len(data) >= 32 if kind == 4 else len(data) == sizes[kind]
    if ok:
        parse(data)
    else:
        with pytest.raises(ParseError):
            parse(data)


def test_wrong_type_is_refused() -> None:
    with pytest.raises(ParseError):
        parse_response(Initiation(1, bytes(32), bytes(48), bytes(28)).encode())
    with pytest.raises(ParseError):
        parse_initiation(Response(1, 2, bytes(32), bytes(16)).encode())
