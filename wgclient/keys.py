"""WireGuard key helpers: generate, clamp, derive public keys and convert between bytes, base64 and hex.

Byte-for-byte compatible with wireguard-tools: `key_from_base64` accepts exactly what `wg` accepts
(44 characters, standard alphabet, a final '=', and the unused low bits of the last symbol zero), and
`pubkey_from_stream` mirrors `wg pubkey` (the key must be the first 44 bytes of the input; only
whitespace and NUL bytes may follow it). Randomness is injected (`genkey(random)`), so this module does
no I/O; the CLI passes `os.urandom`.
"""
from __future__ import annotations

import base64
import binascii
from typing import Callable

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from wgclient.errors import ParseError

KEY_LEN = 32
KEY_LEN_BASE64 = 44
KEY_LEN_HEX = 64
_B64_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
# What wireguard-tools' char_is_space() accepts after a key (plus NUL, which `wg pubkey` also skips).
_TRAILING_OK = frozenset(b"\t\n\v\f\r \0")

BAD_KEY = "Key is not the correct length or format"
TRAILING = "Trailing characters found after key"


def clamp(key: bytes) -> bytes:
    """The Curve25519 secret-key clamping `wg genkey` applies (RFC 7748 §5)."""
    if len(key) != KEY_LEN:
        raise ParseError(f"a key is {KEY_LEN} bytes, got {len(key)}")
    b = bytearray(key)
    b[0] &= 248
    b[31] = (b[31] & 127) | 64
    return bytes(b)


def genkey(random: Callable[[int], bytes]) -> bytes:
    """A new clamped private key from `random(32)`."""
    return clamp(random(KEY_LEN))


def public_key(private_key: bytes) -> bytes:
    """X25519 public key of a private key (the scalar is clamped as part of X25519, as `wg pubkey` does)."""
    if len(private_key) != KEY_LEN:
        raise ParseError(f"a key is {KEY_LEN} bytes, got {len(private_key)}")
    return X25519PrivateKey.from_private_bytes(private_key).public_key().public_bytes_raw()


def key_to_base64(key: bytes) -> str:
    if len(key) != KEY_LEN:
        raise ParseError(f"a key is {KEY_LEN} bytes, got {len(key)}")
    return base64.b64encode(key).decode("ascii")


def key_from_base64(text: str | bytes) -> bytes:
    """Decode a base64 key exactly as wireguard-tools does; anything else raises ParseError."""
    raw = text.encode("latin-1", "replace") if isinstance(text, str) else bytes(text)
    if len(raw) != KEY_LEN_BASE64 or raw[43] != ord("=") or not _B64_ALPHABET.issuperset(raw[:43]):
        raise ParseError(f"not a valid base64 key of {KEY_LEN} bytes")
    key = binascii.a2b_base64(raw)
    # The last symbol carries 6 bits of which only the top 4 are used; wg requires the rest to be zero.
    if len(key) != KEY_LEN or base64.b64encode(key) != raw:
        raise ParseError(f"not a valid base64 key of {KEY_LEN} bytes")
    return key


def key_to_hex(key: bytes) -> str:
    if len(key) != KEY_LEN:
        raise ParseError(f"a key is {KEY_LEN} bytes, got {len(key)}")
    return key.hex()


def key_from_hex(text: str) -> bytes:
    """Decode a 64-character hex key (either case, as wireguard-tools accepts); anything else raises ParseError."""
    if len(text) != KEY_LEN_HEX or not all(c in "0123456789abcdefABCDEF" for c in text):
        raise ParseError(f"not a valid hex key of {KEY_LEN} bytes")
    return bytes.fromhex(text)


def is_zero(key: bytes) -> bool:
    return key == bytes(KEY_LEN)


def short(key: bytes) -> str:
    """A key as logs show it: the first 8 base64 characters (never used for private keys)."""
    return base64.b64encode(key).decode("ascii")[:8]


def is_trailing_ok(data: bytes) -> bool:
    """True if data may follow a key on `wg pubkey`'s stdin (whitespace and NUL only)."""
    return _TRAILING_OK.issuperset(data)


def pubkey_from_stream(data: bytes) -> bytes:
    """What `wg pubkey` does with its whole stdin: returns the public key or raises ParseError(wg's message)."""
    if len(data) < KEY_LEN_BASE64:
        raise ParseError(BAD_KEY)
    if not _TRAILING_OK.issuperset(data[KEY_LEN_BASE64:]):
        raise ParseError(TRAILING)
    try:
        private = key_from_base64(data[:KEY_LEN_BASE64])
    except ParseError:
        raise ParseError(BAD_KEY) from None
    return public_key(private)
