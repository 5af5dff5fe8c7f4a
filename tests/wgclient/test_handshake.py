"""Noise_IKpsk2 handshake (wgclient.noise.handshake) against an independent from-the-spec computation.

The reference below is written straight from shared/protocol/wireguard.md §3 with hashlib, hmac, PyNaCl and
`cryptography` only (no wgclient code), so a slip in the core's chain of hashes and keys shows as a byte
mismatch; the rest checks the state machine: tampering, wrong keys, PSK, timestamp replay and flooding.
"""
from __future__ import annotations

import hashlib
import hmac
import random
import struct

import nacl.bindings as sodium
import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from wgclient.errors import ParseError
from wgclient.noise import handshake as noise
from wgclient.noise.cookie import CookieGenerator
from wgclient.noise.messages import Initiation, Response, parse_initiation, parse_response
from wgclient.noise.tai64n import tai64n

# -- the reference ------------------------------------------------------------------------------------------


def HASH(*parts: bytes) -> bytes:
    return hashlib.blake2s(b"".join(parts)).digest()


def HMAC(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2s).digest()


def KDF(key: bytes, data: bytes, n: int) -> list[bytes]:
    t0 = HMAC(key, data)
    out, prev = [], b""
    for i in range(1, n + 1):
        prev = HMAC(t0, prev + bytes([i]))
        out.append(prev)
    return out


def AEAD(key: bytes, counter: int, pt: bytes, ad: bytes) -> bytes:
    return ChaCha20Poly1305(key).encrypt(b"\0\0\0\0" + struct.pack("<Q", counter), pt, ad)


def CLAMP(k: bytes) -> bytes:
    b = bytearray(k)
    b[0] &= 248
    b[31] = (b[31] & 127) | 64
    return bytes(b)


def PUB(k: bytes) -> bytes:
    return sodium.crypto_scalarmult_base(CLAMP(k))


def DH(k: bytes, p: bytes) -> bytes:
    return sodium.crypto_scalarmult(CLAMP(k), p)


C0 = HASH(b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s")
H0 = HASH(C0, b"WireGuard v1 zx2c4 Jason@zx2c4.com")


def reference_initiation(s_i: bytes, s_r_pub: bytes, e_i: bytes, sender: int, timestamp: bytes):
    h = HASH(H0, s_r_pub)
    e_pub = PUB(e_i)
    (c,) = KDF(C0, e_pub, 1)
    h = HASH(h, e_pub)
    c, k = KDF(c, DH(e_i, s_r_pub), 2)
    enc_static = AEAD(k, 0, PUB(s_i), h)
    h = HASH(h, enc_static)
    c, k = KDF(c, DH(s_i, s_r_pub), 2)
    enc_ts = AEAD(k, 0, timestamp, h)
    h = HASH(h, enc_ts)
    body = struct.pack("<II", 1, sender) + e_pub + enc_static + enc_ts
    mac1 = hashlib.blake2s(body, key=HASH(b"mac1----", s_r_pub), digest_size=16).digest()
    return body + mac1 + bytes(16), c, h


def reference_response(c: bytes, h: bytes, s_i_pub: bytes, e_i_pub: bytes, e_r: bytes, psk: bytes,
                       sender: int, receiver: int):
    e_pub = PUB(e_r)
    (c,) = KDF(c, e_pub, 1)
    h = HASH(h, e_pub)
    (c,) = KDF(c, DH(e_r, e_i_pub), 1)
    (c,) = KDF(c, DH(e_r, s_i_pub), 1)
    c, tau, k = KDF(c, psk, 3)
    h = HASH(h, tau)
    empty = AEAD(k, 0, b"", h)
    body = struct.pack("<III", 2, sender, receiver) + e_pub + empty
    mac1 = hashlib.blake2s(body, key=HASH(b"mac1----", s_i_pub), digest_size=16).digest()
    t1, t2 = KDF(c, b"", 2)
    return body + mac1 + bytes(16), t1, t2


# -- helpers ------------------------------------------------------------------------------------------------

class Scripted:
    """random_bytes that hands out pre-chosen values (and records them)."""

    def __init__(self, *values: bytes) -> None:
        self.values = list(values)

    def __call__(self, n: int) -> bytes:
        v = self.values.pop(0)
        assert len(v) == n
        return v


def keys(seed: int, n: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(32) for _ in range(n)]


def setup(seed: int = 1, psk_i: bytes = bytes(32), psk_r: bytes = bytes(32)):
    s_i, s_r = keys(seed, 2)
    ident_i, ident_r = noise.Identity(s_i), noise.Identity(s_r)
    hs_i = noise.Handshake(remote_static=ident_r.public_key, preshared_key=psk_i)
    hs_i.precompute(ident_i)
    hs_r = noise.Handshake(remote_static=ident_i.public_key, preshared_key=psk_r)
    hs_r.precompute(ident_r)
    return ident_i, ident_r, hs_i, hs_r


def run(ident_i, ident_r, hs_i, hs_r, *, wall=1.7e9, now=100.0, seed=5):
    e_i, e_r = keys(seed, 2)
    init = noise.create_initiation(ident_i, hs_i, wall_time=wall, local_index=0x11223344,
                                   random_bytes=Scripted(e_i))
    decoded = noise.open_initiation(ident_r, init)
    noise.consume_initiation(decoded, hs_r, init, now=now, flood_interval=0.02)
    resp = noise.create_response(ident_r, hs_r, local_index=0x55667788, random_bytes=Scripted(e_r))
    noise.consume_response(ident_i, hs_i, resp)
    return init, resp, decoded


# -- tests --------------------------------------------------------------------------------------------------

@settings(max_examples=25)
@given(st.integers(0, 2**32 - 1), st.binary(min_size=32, max_size=32), st.floats(1e9, 4e9))
def test_messages_and_keys_match_the_reference(seed: int, psk: bytes, wall: float) -> None:
    s_i, s_r, e_i, e_r = keys(seed, 4)
    ident_i, ident_r = noise.Identity(s_i), noise.Identity(s_r)
    hs_i = noise.Handshake(remote_static=ident_r.public_key, preshared_key=psk)
    hs_i.precompute(ident_i)
    hs_r = noise.Handshake(remote_static=ident_i.public_key, preshared_key=psk)
    hs_r.precompute(ident_r)

    init = noise.create_initiation(ident_i, hs_i, wall_time=wall, local_index=seed, random_bytes=Scripted(e_i))
    wire = bytearray(init.encode())
    CookieGenerator(ident_r.public_key).add_macs(wire, 0.0)
    expected, c, h = reference_initiation(s_i, ident_r.public_key, e_i, seed, tai64n(wall))
    assert bytes(wire) == expected

    decoded = noise.open_initiation(ident_r, parse_initiation(bytes(wire)))
    assert decoded.remote_static == ident_i.public_key
    noise.consume_initiation(decoded, hs_r, parse_initiation(bytes(wire)), now=1.0, flood_interval=0.02)
    assert hs_r.latest_timestamp == tai64n(wall)
    resp = noise.create_response(ident_r, hs_r, local_index=seed ^ 0xFFFF, random_bytes=Scripted(e_r))
    wire_r = bytearray(resp.encode())
    CookieGenerator(ident_i.public_key).add_macs(wire_r, 0.0)
    expected_r, t1, t2 = reference_response(c, h, ident_i.public_key, PUB(e_i), e_r, psk, seed ^ 0xFFFF, seed)
    assert bytes(wire_r) == expected_r

    noise.consume_response(ident_i, hs_i, parse_response(bytes(wire_r)))
    assert noise.derive_keys(hs_i, initiator=True) == (t1, t2)
    assert noise.derive_keys(hs_r, initiator=False) == (t2, t1)


def test_derive_keys_wipes_secrets_and_resets_state() -> None:
    ident_i, ident_r, hs_i, hs_r = setup()
    run(ident_i, ident_r, hs_i, hs_r)
    assert hs_i.remote_index == 0x55667788 and hs_r.remote_index == 0x11223344
    send_i, recv_i = noise.derive_keys(hs_i, initiator=True)
    send_r, recv_r = noise.derive_keys(hs_r, initiator=False)
    assert (send_i, recv_i) == (recv_r, send_r) and send_i != recv_i
    for hs in (hs_i, hs_r):
        assert hs.state is noise.HandshakeState.ZEROED
        assert hs.chain_key == hs.hash == hs.local_ephemeral == b""


def test_secrets_hidden_from_repr() -> None:
    ident_i, ident_r, hs_i, hs_r = setup()
    noise.create_initiation(ident_i, hs_i, wall_time=1.7e9, local_index=1, random_bytes=Scripted(bytes(range(32))))
    for obj, secrets in ((ident_i, [ident_i.private_key]),
                         (hs_i, [hs_i.chain_key, hs_i.local_ephemeral, hs_i.precomputed_ss])):
        text = repr(obj)
        for secret in secrets:
            assert secret and secret.hex() not in text and repr(secret) not in text


@settings(max_examples=60)
@given(st.integers(8, 115), st.integers(1, 255))
def test_tampered_initiation_is_refused(offset: int, flip: int) -> None:
    ident_i, ident_r, hs_i, hs_r = setup()
    init = noise.create_initiation(ident_i, hs_i, wall_time=1.7e9, local_index=7,
                                   random_bytes=Scripted(keys(3, 1)[0]))
    data = bytearray(init.encode())
    data[offset] ^= flip
    msg = parse_initiation(bytes(data))
    with pytest.raises(ParseError):
        decoded = noise.open_initiation(ident_r, msg)
        noise.consume_initiation(decoded, hs_r, msg, now=1.0, flood_interval=0.02)
    assert hs_r.state is noise.HandshakeState.ZEROED


@settings(max_examples=40)
@given(st.integers(12, 59), st.integers(1, 255))
def test_tampered_response_is_refused(offset: int, flip: int) -> None:
    ident_i, ident_r, hs_i, hs_r = setup()
    e_i, e_r = keys(9, 2)
    init = noise.create_initiation(ident_i, hs_i, wall_time=1.7e9, local_index=7, random_bytes=Scripted(e_i))
    noise.consume_initiation(noise.open_initiation(ident_r, init), hs_r, init, now=1.0, flood_interval=0.02)
    resp = noise.create_response(ident_r, hs_r, local_index=9, random_bytes=Scripted(e_r))
    data = bytearray(resp.encode())
    data[offset] ^= flip
    with pytest.raises(ParseError):
        noise.consume_response(ident_i, hs_i, parse_response(bytes(data)))
    assert hs_i.state is noise.HandshakeState.INITIATION_CREATED  # still waiting for the real one
    noise.consume_response(ident_i, hs_i, resp)


def test_initiation_for_another_responder_is_refused() -> None:
    ident_i, ident_r, hs_i, _ = setup()
    stranger = noise.Identity(keys(77, 1)[0])
    init = noise.create_initiation(ident_i, hs_i, wall_time=1.7e9, local_index=7, random_bytes=Scripted(keys(3, 1)[0]))
    with pytest.raises(ParseError):
        noise.open_initiation(stranger, init)


def test_psk_mismatch_fails_at_the_initiator() -> None:
    ident_i, ident_r, hs_i, hs_r = setup(psk_i=b"\x01" * 32, psk_r=b"\x02" * 32)
    with pytest.raises(ParseError):
        run(ident_i, ident_r, hs_i, hs_r)
    # The responder cannot tell (the PSK enters after the initiation), the initiator refuses the response.
    assert hs_r.state is noise.HandshakeState.INITIATION_CONSUMED


def test_psk_one_side_only_fails() -> None:
    ident_i, ident_r, hs_i, hs_r = setup(psk_i=b"\x01" * 32)
    with pytest.raises(ParseError):
        run(ident_i, ident_r, hs_i, hs_r)


def test_same_psk_succeeds_and_changes_keys() -> None:
    with_psk = setup(psk_i=b"\x05" * 32, psk_r=b"\x05" * 32)
    run(*with_psk)
    without = setup()
    run(*without)
    assert noise.derive_keys(with_psk[2], initiator=True) != noise.derive_keys(without[2], initiator=True)


def test_replayed_initiation_timestamp_is_refused() -> None:
    ident_i, ident_r, hs_i, hs_r = setup()
    init, _, _ = run(ident_i, ident_r, hs_i, hs_r, now=100.0)
    with pytest.raises(ParseError, match="replayed"):
        noise.consume_initiation(noise.open_initiation(ident_r, init), hs_r, init, now=200.0, flood_interval=0.02)
    # An older timestamp is refused too; a newer one is accepted.
    for wall, ok in ((1.7e9 - 1, False), (1.7e9 + 1, True)):
        hs_i.state = noise.HandshakeState.ZEROED
        msg = noise.create_initiation(ident_i, hs_i, wall_time=wall, local_index=8, random_bytes=Scripted(keys(4, 1)[0]))
        decoded = noise.open_initiation(ident_r, msg)
        if ok:
            noise.consume_initiation(decoded, hs_r, msg, now=300.0, flood_interval=0.02)
        else:
            with pytest.raises(ParseError):
                noise.consume_initiation(decoded, hs_r, msg, now=300.0, flood_interval=0.02)


def test_initiation_flood_is_refused() -> None:
    ident_i, ident_r, hs_i, hs_r = setup()
    run(ident_i, ident_r, hs_i, hs_r, now=100.0, wall=1.7e9)
    for now, wall, ok in ((100.019, 1.7e9 + 1, False), (100.020, 1.7e9 + 2, False), (100.021, 1.7e9 + 3, True)):
        msg = noise.create_initiation(ident_i, hs_i, wall_time=wall, local_index=8,
                                      random_bytes=Scripted(keys(int(wall), 1)[0]))
        decoded = noise.open_initiation(ident_r, msg)
        if ok:
            noise.consume_initiation(decoded, hs_r, msg, now=now, flood_interval=0.02)
        else:
            with pytest.raises(ParseError, match="flood"):
                noise.consume_initiation(decoded, hs_r, msg, now=now, flood_interval=0.02)


def test_response_needs_an_initiation_and_the_right_index() -> None:
    ident_i, ident_r, hs_i, hs_r = setup()
    e_i, e_r = keys(11, 2)
    with pytest.raises(ParseError):
        noise.create_response(ident_r, hs_r, local_index=1, random_bytes=Scripted(e_r))
    init = noise.create_initiation(ident_i, hs_i, wall_time=1.7e9, local_index=7, random_bytes=Scripted(e_i))
    noise.consume_initiation(noise.open_initiation(ident_r, init), hs_r, init, now=1.0, flood_interval=0.02)
    resp = noise.create_response(ident_r, hs_r, local_index=9, random_bytes=Scripted(e_r))
    wrong = Response(resp.sender, resp.receiver + 1, resp.ephemeral, resp.encrypted_nothing)
    with pytest.raises(ParseError):
        noise.consume_response(ident_i, hs_i, wrong)
    fresh = noise.Handshake(remote_static=ident_r.public_key)
    fresh.precompute(ident_i)
    with pytest.raises(ParseError):  # no initiation outstanding
        noise.consume_response(ident_i, fresh, resp)


def test_low_order_ephemeral_is_refused() -> None:
    _, ident_r, _, _ = setup()
    msg = Initiation(1, bytes(32), bytes(48), bytes(28))
    with pytest.raises(ParseError):
        noise.open_initiation(ident_r, msg)


def test_peer_key_giving_zero_static_dh_cannot_initiate() -> None:
    ident_i = noise.Identity(keys(1, 1)[0])
    hs = noise.Handshake(remote_static=bytes(32))
    hs.precompute(ident_i)
    assert hs.precomputed_ss == bytes(32)
    with pytest.raises(ParseError):
        noise.create_initiation(ident_i, hs, wall_time=1.7e9, local_index=1, random_bytes=Scripted(bytes(32)))
