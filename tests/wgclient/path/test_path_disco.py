"""Disco codec: Tailscale's published marshal vectors, byte layouts from disco.md, sealed-packet sizes,
pairwise key derivation, and properties (round trips; garbage raises only ParseError)."""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, strategies as st
from nacl import bindings
from nacl.public import Box, PrivateKey, PublicKey

from wgclient import keys
from wgclient.errors import ParseError, UsageError
from wgclient.path import constants as C
from wgclient.path import disco
from wgclient.path.discokeys import derive_pair

TXID = bytes(range(1, 13))
NODE_KEY = bytes(32)[:1] + b"\x01\x02" + bytes(27) + b"\x1e\x1f"


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


# Tailscale disco/disco_test.go TestMarshalAndParse (published expected encodings).
VECTORS = [
    (disco.Ping(TXID), "01 00 01 02 03 04 05 06 07 08 09 0a 0b 0c"),
    (disco.Ping(TXID, NODE_KEY), "01 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 00 01 02" + " 00" * 27 + " 1e 1f"),
    (disco.Ping(TXID, None, 3), "01 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 00 00 00"),
    (disco.Ping(TXID, NODE_KEY, 3),
     "01 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 00 01 02" + " 00" * 27 + " 1e 1f 00 00 00"),
    (disco.Pong(TXID, ("2.3.4.5", 1234)),
     "02 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 00 00 00 00 00 00 00 00 00 00 ff ff 02 03 04 05 04 d2"),
    (disco.Pong(TXID, ("fed0::12", 6666)),
     "02 00 01 02 03 04 05 06 07 08 09 0a 0b 0c fe d0 00 00 00 00 00 00 00 00 00 00 00 00 00 12 1a 0a"),
    (disco.CallMeMaybe(()), "03 00"),
    (disco.CallMeMaybe((("1.2.3.4", 567), ("2001::3456", 789))),
     "03 00 00 00 00 00 00 00 00 00 00 00 ff ff 01 02 03 04 02 37"
     " 20 01 00 00 00 00 00 00 00 00 00 00 00 00 34 56 03 15"),
]


@pytest.mark.parametrize("message,wire", VECTORS)
def test_tailscale_vectors(message, wire):
    assert message.encode() == h(wire)
    assert disco.parse_message(h(wire)) == message


def test_layouts_from_spec():
    # Ping body: TxID(12) ‖ node key(32) ‖ padding; type 0x01, version 0.
    ping = disco.Ping(b"T" * 12, b"K" * 32, 5).encode()
    assert ping == b"\x01\x00" + b"T" * 12 + b"K" * 32 + bytes(5)
    # Pong: TxID ‖ 16-byte IPv4-mapped IP ‖ port, 30-byte body.
    pong = disco.Pong(b"T" * 12, ("198.51.100.7", 41641)).encode()
    assert pong == b"\x02\x00" + b"T" * 12 + bytes(10) + b"\xff\xff" + bytes([198, 51, 100, 7]) + struct.pack("!H", 41641)
    # NodeInfo extension: home region u32 ‖ flags u8.
    assert disco.NodeInfo(900, 5).encode() == b"\xf0\x00" + struct.pack("!IB", 900, 5)


def test_parse_rules():
    # A ping without its node key (very old clients) and one with a partial key: the key is absent.
    assert disco.parse_message(b"\x01\x00" + TXID + b"\x09" * 31) == disco.Ping(TXID, None, 31)
    with pytest.raises(ParseError):
        disco.parse_message(b"\x01\x00" + TXID[:11])
    with pytest.raises(ParseError):
        disco.parse_message(b"\x02\x00" + bytes(29))
    # CallMeMaybe: wrong version, ragged length -> an empty list, not an error.
    assert disco.parse_message(b"\x03\x01" + bytes(18)) == disco.CallMeMaybe(())
    assert disco.parse_message(b"\x03\x00" + bytes(19)) == disco.CallMeMaybe(())
    # Unknown types (peer-relay 0x04-0x09, anything newer) are returned for the caller to ignore.
    assert disco.parse_message(b"\x07\x00abc") == disco.Unknown(7, 0, b"abc")
    with pytest.raises(ParseError):
        disco.parse_message(b"\x01")
    # Trailing bytes after a pong are ignored.
    assert disco.parse_message(VECTORS[4][0].encode() + b"xx") == VECTORS[4][0]


def pair():
    a = keys.clamp(bytes(range(32)))
    b = keys.clamp(bytes(range(100, 132)))
    return a, b, keys.public_key(a), keys.public_key(b)


def test_sealed_sizes_and_independent_open():
    a, b, A, B = pair()
    ka = derive_pair(a, B)
    nonce = bytes(range(24))
    ping = ka.box.seal(disco.Ping(TXID, A).encode(), nonce)
    assert len(ping) == 124  # disco.md §3: 6+32+24+16+2+44
    assert ping[:6] == C.MAGIC and ping[6:38] == ka.my_public and ping[38:62] == nonce
    assert len(ka.box.seal(disco.Pong(TXID, ("1.2.3.4", 5)).encode(), nonce)) == 110
    assert len(ka.box.seal(disco.CallMeMaybe((("1.2.3.4", 5),) * 3).encode(), nonce)) == 80 + 18 * 3
    # An independent NaCl box with the other side's derived keys opens it.
    kb = derive_pair(b, A)
    # Recompute b's disco private key from the documented derivation to open with plain PyNaCl.
    import hashlib
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
    shared = X25519PrivateKey.from_private_bytes(b).exchange(X25519PublicKey.from_public_bytes(A))
    prk = hashlib.blake2s(shared + bytes(32), key=b"wgc disco v1", digest_size=32).digest()
    b_disco = keys.clamp(hashlib.blake2s(b"sender" + B, key=prk, digest_size=32).digest())
    assert bytes(PrivateKey(b_disco).public_key) == kb.my_public == ka.peer_public
    plain = Box(PrivateKey(b_disco), PublicKey(ping[6:38])).decrypt(ping[38:])
    assert disco.parse_message(plain) == disco.Ping(TXID, A)
    # And literally as disco.md §2 says: crypto_box_beforenm(their_pub, my_priv), then open_afternm.
    shared_key = bindings.crypto_box_beforenm(ping[6:38], b_disco)
    assert bindings.crypto_box_open_afternm(ping[62:], ping[38:62], shared_key) == plain
    assert disco.parse_message(kb.box.open(ping)) == disco.Ping(TXID, A)


def test_pair_keys_symmetric_distinct_and_psk_bound():
    a, b, A, B = pair()
    ka, kb = derive_pair(a, B), derive_pair(b, A)
    assert ka.my_public == kb.peer_public and kb.my_public == ka.peer_public
    assert ka.my_public != kb.my_public
    assert ka.my_public not in (A, B)  # never the WireGuard key on the wire
    psk = bytes(range(32))
    kp = derive_pair(a, B, psk)
    assert kp.my_public != ka.my_public
    packet = kp.box.seal(b"\x01\x00" + TXID, bytes(24))
    with pytest.raises(ParseError):  # the peer without the PSK cannot open it (nor claim that key)
        kb.box.open(packet)
    assert derive_pair(b, A, psk).box.open(packet) == b"\x01\x00" + TXID
    # A third party's pair with B has a different key: B cannot be fooled into taking it for A's.
    c = keys.clamp(bytes(range(50, 82)))
    assert derive_pair(c, B).my_public != ka.my_public
    with pytest.raises(UsageError):
        derive_pair(a, A)
    with pytest.raises(UsageError):
        derive_pair(a, bytes(32))  # low-order point
    assert "box" not in repr(ka) and a.hex() not in repr(ka.box)


def test_open_rejects_tamper_and_other_keys():
    a, b, A, B = pair()
    ka, kb = derive_pair(a, B), derive_pair(b, A)
    packet = bytearray(ka.box.seal(b"\x01\x00" + TXID, bytes(24)))
    for i in (6, 40, 70, len(packet) - 1):
        bad = bytearray(packet)
        bad[i] ^= 1
        with pytest.raises(ParseError):
            kb.box.open(bytes(bad))
    with pytest.raises(ParseError):
        ka.box.open(bytes(packet))  # our own packet reflected back: wrong sender key
    with pytest.raises(UsageError):
        ka.box.seal(b"x", bytes(23))


def test_is_disco():
    assert disco.is_disco(C.MAGIC + bytes(56))
    assert not disco.is_disco(C.MAGIC + bytes(55))
    assert not disco.is_disco(b"TS\xf0\x9f\x92\xad" + bytes(60))


addrs = st.one_of(
    st.tuples(st.ip_addresses(v=4).map(str), st.integers(0, 65535)),
    st.tuples(st.ip_addresses(v=6).filter(lambda ip: ip.ipv4_mapped is None).map(str), st.integers(0, 65535)),
)
messages = st.one_of(
    # Without a node key, 32+ bytes of padding would read as a key (the format cannot tell them apart).
    st.builds(disco.Ping, st.binary(min_size=12, max_size=12), st.none(), st.integers(0, 31)),
    st.builds(disco.Ping, st.binary(min_size=12, max_size=12), st.binary(min_size=32, max_size=32),
              st.integers(0, 200)),
    st.builds(disco.Pong, st.binary(min_size=12, max_size=12), addrs),
    st.builds(disco.CallMeMaybe, st.lists(addrs, max_size=8).map(tuple)),
    st.builds(disco.NodeInfo, st.integers(0, 2**32 - 1), st.integers(0, 255)),
)


@given(messages)
def test_round_trip(message):
    assert disco.parse_message(message.encode()) == message


@given(messages, st.binary(min_size=24, max_size=24))
def test_sealed_round_trip(message, nonce):
    a, b, A, B = pair()
    packet = derive_pair(a, B).box.seal(message.encode(), nonce)
    assert disco.is_disco(packet)
    assert disco.parse_message(derive_pair(b, A).box.open(packet)) == message


@given(st.binary(max_size=300))
def test_garbage_payload_raises_only_parse_error(data):
    try:
        disco.parse_message(data)
    except ParseError:
        pass


@given(st.binary(max_size=300), st.booleans())
def test_garbage_packet_raises_only_parse_error(data, with_magic):
    a, b, A, B = pair()
    if with_magic:
        data = C.MAGIC + derive_pair(a, B).my_public + data
    with pytest.raises(ParseError):
        derive_pair(b, A).box.open(data)
