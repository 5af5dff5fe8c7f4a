"""Hypothesis properties of the STUN codec and responder: round trips, and garbage raises only ParseError."""
from __future__ import annotations

import ipaddress

from hypothesis import given, strategies as st

from natprobe import constants as C
from natprobe import stun
from natprobe.errors import ParseError
from natprobe.responder import StunResponder

txids = st.binary(min_size=12, max_size=12)
ports = st.integers(0, 65535)
ipv4 = st.builds(lambda n: str(ipaddress.IPv4Address(n)), st.integers(0, 2**32 - 1))
ipv6 = st.builds(lambda n: str(ipaddress.IPv6Address(n)), st.integers(0, 2**128 - 1)).filter(
    lambda s: ipaddress.IPv6Address(s).ipv4_mapped is None)
ips = ipv4 | ipv6
attrs = st.lists(st.builds(stun.Attribute, st.integers(0, 0xFFFF).filter(lambda t: t != C.ATTR_FINGERPRINT),
                           st.binary(max_size=40)), max_size=6)


@given(txids, ips, ports)
def test_xor_address_round_trip(txid, ip, port):
    assert stun.decode_address(stun.encode_address(ip, port, xor_txid=txid), xor_txid=txid) == (ip, port)
    assert stun.decode_address(stun.encode_address(ip, port)) == (ip, port)


@given(txids, ipv4, ports)
def test_ipv4_mapped_ipv6_is_unmapped(txid, ip, port):
    value = stun.encode_address("::ffff:" + ip, port, xor_txid=txid)
    assert stun.decode_address(value, xor_txid=txid) == (ip, port)


@given(st.sampled_from([C.BINDING_REQUEST, C.BINDING_SUCCESS, C.BINDING_ERROR, C.BINDING_INDICATION]),
       txids, attrs, st.booleans())
def test_message_round_trip(msg_type, txid, attributes, fingerprint):
    msg = stun.Message(msg_type, txid, tuple(attributes))
    data = msg.encode(fingerprint=fingerprint)
    assert stun.is_stun(data)
    parsed = stun.parse_message(data)
    got = parsed.attributes[:-1] if fingerprint else parsed.attributes
    assert (parsed.msg_type, parsed.txid, got) == (msg_type, txid, tuple(attributes))


@given(txids, ips, ports)
def test_request_answer_round_trip(txid, ip, port):
    responder = StunResponder()
    answer = responder.answer(stun.binding_request(txid), (ip, port))
    resp = stun.parse_binding_response(answer)
    assert resp.txid == txid and resp.mapped == (ip, port) and responder.requests == 1


@given(st.binary(max_size=120))
def test_garbage_raises_only_parse_error(data):
    for parse in (stun.parse_message, stun.parse_binding_response):
        try:
            parse(data)
        except ParseError:
            pass
    try:
        stun.parse_message(data, allow_classic=True)
    except ParseError:
        pass


@given(txids, st.integers(0, 39), st.integers(0, 255))
def test_mutated_request_is_either_answered_or_counted(txid, index, byte):
    data = bytearray(stun.binding_request(txid))
    data[index] = byte
    responder = StunResponder()
    answer = responder.answer(bytes(data), ("192.0.2.1", 1))
    if answer is None:
        assert responder.dropped == 1
    else:
        assert stun.parse_binding_response(answer).mapped == ("192.0.2.1", 1)
    # Corrupting the transaction id, SOFTWARE's type or value, or the CRC itself is always caught by the
    # FINGERPRINT. (A corrupted SOFTWARE length can swallow the FINGERPRINT: then there is none to check.)
    if bytes(data) != stun.binding_request(txid) and (8 <= index < 32 or index >= 36) and index not in (22, 23):
        assert answer is None


@given(st.binary(max_size=120), ips, ports)
def test_responder_never_raises(data, ip, port):
    responder = StunResponder()
    answer = responder.answer(data, (ip, port))
    assert (answer is None) == (responder.dropped == 1)
