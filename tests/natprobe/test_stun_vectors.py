"""RFC 5769 test vectors and the exact Tailscale request bytes (netcheck.md §2.1)."""
from __future__ import annotations

import binascii
import hashlib
import hmac

import pytest

from natprobe import constants as C
from natprobe import stun
from natprobe.errors import ParseError

TXID = bytes.fromhex("b7e7a701bc34d686fa87dfae")

# RFC 5769 §2.1 sample request (password "VOkJxbRl1RmTxUk/WvJxBt").
REQ = bytes.fromhex(
    "000100582112a442b7e7a701bc34d686fa87dfae"
    "802200105354554e20746573742063 6c69656e74"
    "002400046e0001ff"
    "80290008932ff9b151263b36"
    "000600096576746a3a68367659202020"
    "000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2"
    "80280004e57a3bcf".replace(" ", ""))
# §2.2 sample IPv4 response: 192.0.2.1:32853.
RESP4 = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000080001a147e112a643"
    "000800142b91f599fd9e90c38c7489f92af9ba53f06be7d7"
    "80280004c07d4c96")
# §2.3 sample IPv6 response: [2001:db8:1234:5678:11:2233:4455:6677]:32853.
RESP6 = bytes.fromhex(
    "010100482112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d9"
    "00080014a382954e4be67bf11784c97c8292c275bfe3ed41"
    "80280004c8fb0b4c")
PASSWORD = b"VOkJxbRl1RmTxUk/WvJxBt"


def _integrity_ok(data: bytes) -> bool:
    """RFC 5389 §15.4 short-term MESSAGE-INTEGRITY check, to prove the transcribed vectors are intact."""
    msg = stun.parse_message(data)
    off = C.HEADER_LEN
    for attr in msg.attributes:
        if attr.type == C.ATTR_MESSAGE_INTEGRITY:
            head = bytearray(data[:off])
            head[2:4] = (off - C.HEADER_LEN + 24).to_bytes(2, "big")
            return hmac.compare_digest(hmac.new(PASSWORD, bytes(head), hashlib.sha1).digest(), attr.value)
        off += 4 + len(attr.value) + (-len(attr.value) % 4)
    return False


@pytest.mark.parametrize("vector", [REQ, RESP4, RESP6])
def test_vectors_are_intact(vector: bytes) -> None:
    assert _integrity_ok(vector)


def test_rfc5769_request() -> None:
    msg = stun.parse_message(REQ)
    assert msg.msg_type == C.BINDING_REQUEST and msg.txid == TXID and not msg.classic
    assert msg.get(C.ATTR_SOFTWARE) == b"STUN test client"
    assert msg.get(C.ATTR_USERNAME) == b"evtj:h6vY"
    assert msg.get(0x0024) == bytes.fromhex("6e0001ff")  # PRIORITY kept raw, otherwise ignored
    assert msg.get(C.ATTR_FINGERPRINT) == bytes.fromhex("e57a3bcf")
    assert stun.is_stun(REQ) and not stun.is_binding_response(REQ)


def test_rfc5769_ipv4_response() -> None:
    resp = stun.parse_binding_response(RESP4)
    assert resp.ok and resp.mapped == ("192.0.2.1", 32853) and resp.txid == TXID
    assert resp.software == "test vector"
    assert stun.is_binding_response(RESP4)


def test_rfc5769_ipv6_response() -> None:
    resp = stun.parse_binding_response(RESP6)
    assert resp.mapped == ("2001:db8:1234:5678:11:2233:4455:6677", 32853)


@pytest.mark.parametrize("vector", [REQ, RESP4, RESP6])
def test_corrupted_fingerprint_is_rejected(vector: bytes) -> None:
    bad = bytearray(vector)
    bad[-1] ^= 0x01
    with pytest.raises(ParseError, match="FINGERPRINT"):
        stun.parse_message(bytes(bad))


def test_encoding_reproduces_the_vector_bytes() -> None:
    # Our FINGERPRINT and XOR-MAPPED-ADDRESS encoders give the vectors' exact bytes.
    assert stun.fingerprint_of(REQ[:-8]) == 0xE57A3BCF
    assert stun.fingerprint_of(RESP4[:-8]) == 0xC07D4C96
    value = stun.encode_address("192.0.2.1", 32853, xor_txid=TXID)
    assert value == bytes.fromhex("0001a147e112a643")
    value6 = stun.encode_address("2001:db8:1234:5678:11:2233:4455:6677", 32853, xor_txid=TXID)
    assert value6 == bytes.fromhex("0002a1470113a9faa5d3f179bc25f4b5bed2b9d9")


def test_tailscale_request_is_exactly_40_bytes() -> None:
    txid = bytes(range(1, 13))
    req = stun.binding_request(txid)
    assert len(req) == 40
    assert req[:8] == bytes.fromhex("000100142112a442")
    assert req[8:20] == txid
    assert req[20:32] == bytes.fromhex("80220008") + b"tailnode"
    assert req[32:36] == bytes.fromhex("80280004")
    crc = (binascii.crc32(req[:32]) & 0xFFFFFFFF) ^ 0x5354554E
    assert req[36:40] == crc.to_bytes(4, "big")


def test_ipv4_mapped_answer_is_unmapped() -> None:
    # derper on a dual-stack socket answers IPv4 clients with family 2 and ::ffff:a.b.c.d (netcheck.md §2.2).
    txid = bytes(12)
    value = stun.encode_address("::ffff:203.0.113.7", 41641, xor_txid=txid)
    assert len(value) == 20
    msg = stun.Message(C.BINDING_SUCCESS, txid, (stun.Attribute(C.ATTR_XOR_MAPPED_ADDRESS, value),))
    assert stun.parse_binding_response(msg.encode()).mapped == ("203.0.113.7", 41641)


def test_alternate_xor_code_and_mapped_address_fallback() -> None:
    txid = b"\x07" * 12
    alt = stun.Message(C.BINDING_SUCCESS, txid, (
        stun.Attribute(C.ATTR_MAPPED_ADDRESS, stun.encode_address("10.0.0.1", 1)),
        stun.Attribute(C.ATTR_XOR_MAPPED_ADDRESS_ALT, stun.encode_address("198.51.100.2", 3478, xor_txid=txid)),
    ))
    assert stun.parse_binding_response(alt.encode()).mapped == ("198.51.100.2", 3478)
    only_mapped = stun.Message(C.BINDING_SUCCESS, txid, (
        stun.Attribute(C.ATTR_MAPPED_ADDRESS, stun.encode_address("198.51.100.3", 9)),))
    assert stun.parse_binding_response(only_mapped.encode()).mapped == ("198.51.100.3", 9)


def test_error_response_round_trip() -> None:
    req = stun.parse_message(stun.binding_request(b"\x01" * 12))
    resp = stun.parse_binding_response(stun.binding_error(req, 420, "Unknown Attribute"))
    assert not resp.ok and resp.error_code == 420 and resp.reason == "Unknown Attribute"


@pytest.mark.parametrize("data,msg", [
    (b"\x00\x01\x00\x00\x21\x12\xa4", "too short"),
    (bytes.fromhex("c0010000") + C.MAGIC_COOKIE_BYTES + bytes(12), "top two bits"),
    (bytes.fromhex("00010000") + b"abcd" + bytes(12), "cookie"),
    (bytes.fromhex("00010003") + C.MAGIC_COOKIE_BYTES + bytes(12) + b"xyz\x00", "multiple of 4"),
    (bytes.fromhex("00010008") + C.MAGIC_COOKIE_BYTES + bytes(12) + b"abcd", "exceeds"),
    (bytes.fromhex("00010004") + C.MAGIC_COOKIE_BYTES + bytes(12) + bytes.fromhex("80220010"), "overruns"),
    (bytes.fromhex("0101000c") + C.MAGIC_COOKIE_BYTES + bytes(12) + bytes.fromhex("0020000800030001") + bytes(4),
     "family"),
])
def test_malformed_messages_raise_parse_error(data: bytes, msg: str) -> None:
    with pytest.raises(ParseError, match=msg):
        stun.parse_binding_response(data)


def test_trailing_bytes_after_declared_length_are_ignored() -> None:
    assert stun.parse_binding_response(RESP4 + b"junk").mapped == ("192.0.2.1", 32853)
