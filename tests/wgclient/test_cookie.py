"""mac1/mac2 and cookie replies: the primitives against the spec, and the exchange between two devices under load."""
from __future__ import annotations

import hashlib

import nacl.bindings as sodium
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.pair import COOKIE_REPLY, EP_A, INITIATION, RESPONSE, Pair, Seeded
from wgclient.constants import COOKIE_REFRESH_TIME
from wgclient.device import DeviceConfig
from wgclient.noise import crypto
from wgclient.noise import handshake as noise
from wgclient.noise.cookie import CookieChecker, CookieGenerator, source_bytes
from wgclient.noise.messages import CookieReply, parse_cookie_reply

RESPONDER_PRIV = bytes(range(32))
RESPONDER_PUB = crypto.public_key(RESPONDER_PRIV)
SRC = source_bytes(("192.0.2.1", 51820), bytes([192, 0, 2, 1]))


def blake2s(data: bytes, key: bytes = b"", size: int = 32) -> bytes:
    return hashlib.blake2s(data, key=key, digest_size=size).digest()


def message(size: int = 148, fill: int = 0x11) -> bytearray:
    return bytearray([1 if size == 148 else 2, 0, 0, 0]) + bytearray([fill]) * (size - 4)


# -- the primitives ----------------------------------------------------------------------------------------------

def test_source_bytes_ip_then_little_endian_port() -> None:
    assert source_bytes(("192.0.2.1", 0x1234), bytes([192, 0, 2, 1])) == bytes([192, 0, 2, 1, 0x34, 0x12])
    v6 = bytes(15) + b"\x01"
    assert source_bytes(("::1", 51820), v6) == v6 + (51820).to_bytes(2, "little")


@pytest.mark.parametrize("size", [148, 92])
def test_mac1_is_keyed_blake2s_of_the_message_under_the_recipients_key(size: int) -> None:
    gen = CookieGenerator(RESPONDER_PUB)
    msg = message(size)
    gen.add_macs(msg, now=0.0)
    o1 = size - 32
    assert msg[o1:o1 + 16] == blake2s(bytes(msg[:o1]), key=blake2s(b"mac1----" + RESPONDER_PUB), size=16)
    assert msg[o1 + 16:] == bytes(16)  # no cookie yet: mac2 is zero
    checker = CookieChecker(RESPONDER_PUB, Seeded(1))
    assert checker.check_mac1(msg)
    assert not CookieChecker(crypto.public_key(b"\x01" * 32), Seeded(1)).check_mac1(msg)


@settings(max_examples=50)
@given(st.integers(0, 131), st.integers(1, 255))
def test_mac1_covers_every_byte_before_it(offset: int, flip: int) -> None:
    msg = message()
    CookieGenerator(RESPONDER_PUB).add_macs(msg, now=0.0)
    msg[offset] ^= flip
    assert not CookieChecker(RESPONDER_PUB, Seeded(1)).check_mac1(msg)


def make_reply(now: float = 10.0, source: bytes = SRC):
    checker = CookieChecker(RESPONDER_PUB, Seeded(7))
    gen = CookieGenerator(RESPONDER_PUB)
    msg = message()
    gen.add_macs(msg, now=now)
    reply = checker.create_reply(msg, sender_index=0xABCD, source=source, now=now)
    return checker, gen, msg, reply


def test_cookie_reply_is_xchacha_sealed_under_the_cookie_label_key_with_mac1_as_ad() -> None:
    checker, gen, msg, reply = make_reply()
    data = reply.encode()
    assert len(data) == 64 and parse_cookie_reply(data) == reply and reply.receiver == 0xABCD
    key = blake2s(b"cookie--" + RESPONDER_PUB)
    cookie = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(reply.encrypted_cookie, bytes(msg[116:132]),
                                                              reply.nonce, key)
    assert len(cookie) == 16
    assert cookie == blake2s(SRC, key=checker._secret, size=16)  # MAC(R, source)


def test_cookie_then_mac2_round_trip() -> None:
    checker, gen, _, reply = make_reply(now=10.0)
    assert gen.consume_reply(reply, now=10.5)
    msg = message(fill=0x22)
    gen.add_macs(msg, now=15.0)
    assert msg[132:] == blake2s(bytes(msg[:132]), key=gen.cookie, size=16)
    assert checker.check_mac2(msg, SRC, now=15.0)
    other_port = source_bytes(("192.0.2.1", 51821), bytes([192, 0, 2, 1]))
    other_ip = source_bytes(("192.0.2.9", 51820), bytes([192, 0, 2, 9]))
    assert not checker.check_mac2(msg, other_port, now=15.0)
    assert not checker.check_mac2(msg, other_ip, now=15.0)
    tampered = bytearray(msg)
    tampered[140] ^= 1
    assert not checker.check_mac2(tampered, SRC, now=15.0)


def test_cookie_expires_after_120s_on_both_sides() -> None:
    checker, gen, _, reply = make_reply(now=10.0)
    gen.consume_reply(reply, now=10.0)
    msg = message()
    gen.add_macs(msg, now=10.0 + COOKIE_REFRESH_TIME + 0.1)
    assert msg[132:] == bytes(16)  # the generator no longer uses a stale cookie
    msg = message()
    gen.add_macs(msg, now=129.0)
    assert checker.check_mac2(msg, SRC, now=129.0)
    assert not checker.check_mac2(msg, SRC, now=10.0 + COOKIE_REFRESH_TIME + 0.1)  # secret too old


def test_checker_secret_rotates_after_120s() -> None:
    checker, gen, msg, reply = make_reply(now=10.0)
    first = checker._secret
    checker.create_reply(msg, 1, SRC, now=100.0)
    assert checker._secret == first
    checker.create_reply(msg, 1, SRC, now=10.0 + COOKIE_REFRESH_TIME + 1)
    assert checker._secret != first


def test_reply_with_wrong_ad_or_no_message_sent_is_refused() -> None:
    _, gen, _, reply = make_reply()
    gen.add_macs(message(fill=0x33), now=11.0)  # a newer message: its mac1 is the AD now
    assert not gen.consume_reply(reply, now=11.0)
    assert gen.cookie is None
    assert not CookieGenerator(RESPONDER_PUB).consume_reply(reply, now=11.0)
    _, gen, _, reply = make_reply()
    bad = CookieReply(reply.receiver, reply.nonce, bytes(32))
    assert not gen.consume_reply(bad, now=11.0)


# -- between two devices ---------------------------------------------------------------------------------------

UNDER_LOAD = DeviceConfig(under_load_threshold=1)


def test_cookie_exchange_under_load_then_the_retry_succeeds() -> None:
    p = Pair(config_b=UNDER_LOAD)
    pkt = p.ping("a")
    p.deliver(limit=1)  # b is under load and the initiation has no mac2: b answers with a cookie
    assert p.b.drops["under load: cookie sent"] == 1
    assert [(to, d[0]) for to, d, _ in p.wire] == [("a", COOKIE_REPLY)]
    assert p.pb.handshake.state is noise.HandshakeState.ZEROED
    p.deliver()
    assert p.pa.cookie.cookie is not None and p.a.drops == {}
    assert p.wire == []  # no immediate resend
    p.advance(5.0 + 0.334, deliver=True)  # the retransmitted initiation carries mac2
    inits = p.sent_of(INITIATION, "a")
    assert len(inits) == 2
    first, second = inits[0][1], inits[1][1]
    assert first[132:] == bytes(16) and second[132:] != bytes(16)
    assert p.b.cookie_checker.check_mac2(second, source_bytes(EP_A, bytes([192, 0, 2, 1])), p.now)
    assert len(p.sent_of(RESPONSE, "b")) == 1
    assert p.pa.keypairs.current is not None and p.pb.keypairs.current is not None
    assert p.tun["b"] == [pkt]
    assert p.b.drops["under load: cookie sent"] == 1


def test_under_load_data_keeps_flowing() -> None:
    p = Pair(config_b=UNDER_LOAD)
    p.ping("a")
    p.deliver()
    p.advance(5.4, deliver=True)
    assert p.pb.keypairs.current is not None
    for i in range(5):
        p.ping("a", bytes([i]))
    p.deliver()
    assert len(p.tun["b"]) == 6


def test_mac2_for_another_source_gets_another_cookie_reply() -> None:
    p = Pair(config_b=UNDER_LOAD)
    p.ping("a")
    p.deliver()
    p.advance(5.4)
    (init,) = p.take(INITIATION)
    p.receive("b", init, source=("192.0.2.99", 51820))  # the cookie was for EP_A
    assert [d[0] for to, d, _ in p.wire] == [COOKIE_REPLY]
    assert p.b.drops["under load: cookie sent"] == 2


def test_under_load_valid_mac2_is_rate_limited_per_source() -> None:
    p = Pair(config_b=UNDER_LOAD)
    p.ping("a")
    p.deliver()  # a now holds a cookie for EP_A
    inits = []
    for i in range(7):  # seven genuine initiations with mac2, newer timestamps each
        msg = noise.create_initiation(p.a.identity, p.pa.handshake, wall_time=p.now + 1.7e9 + i,
                                      local_index=100 + i, random_bytes=Seeded(i))
        buf = bytearray(msg.encode())
        p.pa.cookie.add_macs(buf, p.now)
        inits.append(bytes(buf))
    p.now += 1.0
    for msg in inits:  # all at once: the burst is 5
        p.receive("b", msg)
    assert p.b.drops["under load: rate limited"] == 2
    assert p.b.drops["handshake: initiation flood"] == 4  # passed the limiter, then refused as a flood
    assert len(p.take(RESPONSE)) == 1


def test_under_load_threshold_counts_handshakes_per_second() -> None:
    p = Pair(config_b=DeviceConfig(under_load_threshold=2))
    p.a.initiate(p.pa, p.now)
    p.collect("a")
    (first,) = p.take(INITIATION)
    p.receive("b", first)
    assert [d[0] for d in p.take()] == [RESPONSE]  # one a second: not under load
    p.now += 0.5
    p.receive("b", first)  # a second handshake message within the second: now under load
    assert [d[0] for d in p.take()] == [COOKIE_REPLY]
    p.now += 0.9  # still within 1 s of becoming loaded
    p.receive("b", first)
    assert [d[0] for d in p.take()] == [COOKIE_REPLY]


def test_bad_cookie_replies_are_dropped_and_counted() -> None:
    p = Pair(config_b=UNDER_LOAD)
    p.ping("a")
    p.deliver(limit=1)
    (reply,) = p.take(COOKIE_REPLY)
    bad = bytearray(reply)
    bad[40] ^= 1
    p.receive("a", bytes(bad))
    unknown = bytearray(reply)
    unknown[4:8] = b"\xee\xee\xee\xee"
    p.receive("a", bytes(unknown))
    assert p.a.drops["bad cookie reply"] == 2 and p.pa.cookie.cookie is None
    p.receive("a", reply)
    assert p.pa.cookie.cookie is not None and p.a.drops["bad cookie reply"] == 2

