"""Published test vectors for WireGuard's primitives, run through wgclient.noise.crypto and tai64n."""
from __future__ import annotations

import hashlib
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given
from hypothesis import strategies as st

from wgclient.constants import CONSTRUCTION, IDENTIFIER
from wgclient.errors import ParseError
from wgclient.noise import crypto
from wgclient.noise.tai64n import after, tai64n

h = bytes.fromhex

# -- X25519: RFC 7748 -------------------------------------------------------------------------------------


@pytest.mark.parametrize("scalar,u,out", [
    # §5.2, first and second test vectors (the second u has its top bit set: it must be masked).
    ("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
     "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
     "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"),
    ("4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
     "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
     "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957"),
])
def test_x25519_rfc7748_5_2(scalar: str, u: str, out: str) -> None:
    assert crypto.dh(h(scalar), h(u)) == h(out)


def test_x25519_rfc7748_5_2_iterated() -> None:
    k = u = bytes([9]) + bytes(31)
    for i in range(1000):
        k, u = crypto.dh(k, u), k
        if i == 0:
            assert k == h("422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079")
    assert k == h("684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51")


def test_x25519_rfc7748_6_1() -> None:
    alice = h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    bob = h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    alice_pub = h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    bob_pub = h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    shared = h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    assert crypto.public_key(alice) == alice_pub
    assert crypto.public_key(bob) == bob_pub
    assert crypto.dh(alice, bob_pub) == shared
    assert crypto.dh(bob, alice_pub) == shared


@pytest.mark.parametrize("point", [bytes(32), bytes([1]) + bytes(31),
                                   # a point of order 8 (libsodium's blocklist)
                                   h("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")])
def test_x25519_low_order_point_rejected(point: bytes) -> None:
    with pytest.raises(crypto.CryptoError):
        crypto.dh(h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"), point)
    assert issubclass(crypto.CryptoError, ParseError)


def test_clamp() -> None:
    k = crypto.clamp(b"\xff" * 32)
    assert k[0] == 0xF8 and k[31] == 0x7F and k[1:31] == b"\xff" * 30
    assert crypto.clamp(bytes(32))[31] == 0x40
    assert crypto.clamp(k) == k


# -- ChaCha20-Poly1305: RFC 8439 ---------------------------------------------------------------------------

SUNSCREEN = (b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, "
             b"sunscreen would be it.")
KEY_80 = bytes(range(0x80, 0xA0))
AAD_8439 = h("50515253c0c1c2c3c4c5c6c7")
CT_8439 = h("d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca9671282fafb69da92728b"
            "1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
            "3ff4def08e4b7a9de576d26586cec64b6116")
TAG_8439 = h("1ae10b594f09e26a7e902ecbd0600691")


def test_chacha20poly1305_rfc8439_2_8_2() -> None:
    # The RFC's nonce has a non-zero 32-bit prefix (07 00 00 00), which WireGuard's counter nonce never
    # has: the vector checks the AEAD the data path uses, A.5 below checks our nonce layout.
    aead = ChaCha20Poly1305(KEY_80)
    nonce = h("070000004041424344454647")
    assert aead.encrypt(nonce, SUNSCREEN, AAD_8439) == CT_8439 + TAG_8439
    assert aead.decrypt(nonce, CT_8439 + TAG_8439, AAD_8439) == SUNSCREEN


A5_KEY = h("1c9240a5eb55d38af333888604f6b5f0473917c1402b80099dca5cbc207075c0")
A5_AAD = h("f33388860000000000004e91")
A5_CT = h("64a0861575861af460f062c79be643bd5e805cfd345cf389f108670ac76c8cb24c6cfc18755d43eea09ee94e382d26b0"
          "bdb7b73c321b0100d4f03b7f355894cf332f830e710b97ce98c8a84abd0b948114ad176e008d33bd60f982b1ff37c855"
          "9797a06ef4f0ef61c186324e2b3506383606907b6a7c02b0f9f6157b53c867e4b9166c767b804d46a59b5216cde7a4e9"
          "9040c5a40433225ee282a1b0a06c523eaf4534d7f83fa1155b0047718cbc546a0d072b04b3564eea1b422273f548271a"
          "0bb2316053fa76991955ebd63159434ecebb4e466dae5a1073a6727627097a1049e617d91d361094fa68f0ff77987130"
          "305beaba2eda04df997b714d6c6f2c29a6ad5cb4022b02709b")
A5_TAG = h("eead9d67890cbb22392336fea1851f38")
A5_PT = (b"Internet-Drafts are draft documents valid for a maximum of six months and may be updated, replaced, "
         b"or obsoleted by other documents at any time. It is inappropriate to use Internet-Drafts as reference "
         b"material or to cite them other than as /\xe2\x80\x9cwork in progress./\xe2\x80\x9d")


def test_chacha20poly1305_rfc8439_a5_through_counter_nonce() -> None:
    # A.5's nonce 00000000 0102030405060708 is exactly WireGuard's layout: 4 zero bytes, then the
    # 64-bit counter little-endian.
    counter = int.from_bytes(h("0102030405060708"), "little")
    assert crypto.nonce(counter) == h("000000000102030405060708")
    assert crypto.aead_decrypt(A5_KEY, counter, A5_CT + A5_TAG, A5_AAD) == A5_PT
    assert crypto.aead_encrypt(A5_KEY, counter, A5_PT, A5_AAD) == A5_CT + A5_TAG


def test_aead_rejects_tampering_with_crypto_error() -> None:
    counter = int.from_bytes(h("0102030405060708"), "little")
    sealed = bytearray(A5_CT + A5_TAG)
    sealed[10] ^= 1
    with pytest.raises(crypto.CryptoError):
        crypto.aead_decrypt(A5_KEY, counter, bytes(sealed), A5_AAD)
    with pytest.raises(crypto.CryptoError):
        crypto.aead_decrypt(A5_KEY, counter + 1, A5_CT + A5_TAG, A5_AAD)
    with pytest.raises(crypto.CryptoError):
        crypto.aead_decrypt(A5_KEY, counter, A5_CT + A5_TAG, b"")


@given(st.integers(0, 2**64 - 1))
def test_nonce_layout(counter: int) -> None:
    n = crypto.nonce(counter)
    assert len(n) == 12 and n[:4] == bytes(4) and struct.unpack("<Q", n[4:])[0] == counter


# -- XChaCha20-Poly1305: draft-irtf-cfrg-xchacha A.3.1 -----------------------------------------------------

XNONCE = h("404142434445464748494a4b4c4d4e4f5051525354555657")
XCT = h("bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb731c7f1b0b4aa6440bf3a82f4eda7e39"
        "ae64c6708c54c216cb96b72e1213b4522f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9"
        "21f9664c97637da9768812f615c68b13b52e")
XTAG = h("c0875924c1c7987947deafd8780acf49")


def test_xchacha20poly1305_draft_a_3_1() -> None:
    assert crypto.xaead_encrypt(KEY_80, XNONCE, SUNSCREEN, AAD_8439) == XCT + XTAG
    assert crypto.xaead_decrypt(KEY_80, XNONCE, XCT + XTAG, AAD_8439) == SUNSCREEN
    with pytest.raises(crypto.CryptoError):
        crypto.xaead_decrypt(KEY_80, XNONCE, XCT + XTAG, b"other ad")
    tampered = bytearray(XCT + XTAG)
    tampered[-1] ^= 0x80
    with pytest.raises(crypto.CryptoError):
        crypto.xaead_decrypt(KEY_80, XNONCE, bytes(tampered), AAD_8439)


# -- BLAKE2s: RFC 7693 Appendix B; HMAC and KDF ------------------------------------------------------------

def test_blake2s_rfc7693_abc() -> None:
    assert crypto.hash_(b"abc") == h("508c5e8c327c14e2e1a72ba34eeb452f37458b209ed63a294d999b4c86675982")
    assert crypto.hash_(b"a", b"bc") == crypto.hash_(b"abc")  # parts are concatenated


def test_wireguard_initial_chaining_key_and_hash() -> None:
    # The widely published constants every WireGuard implementation starts from.
    c0 = crypto.hash_(CONSTRUCTION)
    assert c0 == h("60e26daef327efc02ec335e2a025d2d016eb4206f87277f52d38d1988b78cd36")
    assert crypto.hash_(c0, IDENTIFIER) == h("2211b361081ac566691243db458ad5322d9c6c662293e8b70ee19c65ba079ef3")


def test_mac_is_keyed_blake2s_128() -> None:
    key = bytes(range(32))
    assert crypto.mac(key, b"abc") == hashlib.blake2s(b"abc", key=key, digest_size=16).digest()
    assert len(crypto.mac(key, b"")) == 16
    assert crypto.mac(key, b"abc") != crypto.mac(bytes(32), b"abc")


def _reference_hmac_blake2s(key: bytes, data: bytes) -> bytes:
    """RFC 2104 written out: 64-byte block, ipad 0x36, opad 0x5c, keys longer than a block hashed first."""
    if len(key) > 64:
        key = hashlib.blake2s(key).digest()
    key = key.ljust(64, b"\0")
    inner = hashlib.blake2s(bytes(b ^ 0x36 for b in key) + data).digest()
    return hashlib.blake2s(bytes(b ^ 0x5C for b in key) + inner).digest()


@given(st.binary(max_size=100), st.binary(max_size=200))
def test_hmac_blake2s_matches_rfc2104(key: bytes, data: bytes) -> None:
    assert crypto.hmac_(key, data) == _reference_hmac_blake2s(key, data)


@given(st.binary(min_size=32, max_size=32), st.binary(max_size=64))
def test_kdf_matches_the_protocol_definition(key: bytes, data: bytes) -> None:
    t0 = _reference_hmac_blake2s(key, data)
    t1 = _reference_hmac_blake2s(t0, b"\x01")
    t2 = _reference_hmac_blake2s(t0, t1 + b"\x02")
    t3 = _reference_hmac_blake2s(t0, t2 + b"\x03")
    assert crypto.kdf(key, data, 1) == (t1,)
    assert crypto.kdf(key, data, 2) == (t1, t2)
    assert crypto.kdf(key, data, 3) == (t1, t2, t3)


# -- TAI64N ------------------------------------------------------------------------------------------------

def test_tai64n_encoding() -> None:
    assert tai64n(0.0) == h("400000000000000a00000000")
    # 2^62 + 10 + 1_700_000_000 seconds, big-endian; nanoseconds with the low 24 bits cleared.
    assert tai64n(1_700_000_000.5) == struct.pack(">QI", (1 << 62) + 10 + 1_700_000_000, 500_000_000 & ~0xFFFFFF)
    assert tai64n(1_700_000_000.5)[8:] == h("1d000000")
    assert tai64n(1.0 - 1e-12)[:8] == struct.pack(">Q", (1 << 62) + 11)  # rounding up carries into seconds


@given(st.floats(0, 4e9), st.floats(0.017, 1e6))
def test_tai64n_orders_like_time(t: float, dt: float) -> None:
    # Later by more than the 16.8 ms whitening step means strictly later as bytes.
    assert after(tai64n(t + dt), tai64n(t))
    assert not after(tai64n(t), tai64n(t + dt))
    assert not after(tai64n(t), tai64n(t))
    assert len(tai64n(t)) == 12 and int.from_bytes(tai64n(t)[8:], "big") < 1_000_000_000
