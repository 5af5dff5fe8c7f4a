"""The cryptographic primitives of WireGuard (whitepaper §5.4): DH, HASH, MAC, HMAC, KDF, AEAD, XAEAD.

Libraries: `cryptography` for ChaCha20-Poly1305 (3x faster than PyNaCl per MEASUREMENTS.md, and it has
`encrypt_into`/`decrypt_into` for the zero-copy data path), PyNaCl for X25519 on raw bytes and for
XChaCha20-Poly1305 (which `cryptography` lacks), `hashlib`/`hmac` for BLAKE2s.
"""
from __future__ import annotations

import hashlib
import hmac
import struct

import nacl.bindings as _nacl
import nacl.exceptions
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from ..errors import ParseError
from ..keys import clamp, public_key  # noqa: F401  (one definition, re-exported for the noise code)

_ZERO32 = bytes(32)
_nonce = struct.Struct("<4xQ").pack


class CryptoError(ParseError):
    """Authentication failed or a DH result was all zeros."""


def dh(private_key: bytes, peer_public: bytes) -> bytes:
    """X25519; an all-zero result (a low-order point) is rejected as the protocol requires."""
    try:
        shared = _nacl.crypto_scalarmult(clamp(private_key), peer_public)
    except nacl.exceptions.RuntimeError as exc:  # libsodium refuses low-order points itself
        raise CryptoError("invalid public key") from exc
    if shared == _ZERO32:
        raise CryptoError("invalid public key")
    return shared


def hash_(*parts: bytes) -> bytes:
    h = hashlib.blake2s(digest_size=32)
    for p in parts:
        h.update(p)
    return h.digest()


def mac(key: bytes, data: bytes) -> bytes:
    return hashlib.blake2s(data, key=key, digest_size=16).digest()


def hmac_(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2s).digest()


def kdf(key: bytes, data: bytes, n: int) -> tuple[bytes, ...]:
    t0 = hmac_(key, data)
    out = []
    prev = b""
    for i in range(1, n + 1):
        prev = hmac_(t0, prev + bytes([i]))
        out.append(prev)
    return tuple(out)


def nonce(counter: int) -> bytes:
    return _nonce(counter)


def aead_encrypt(key: bytes, counter: int, plaintext: bytes, ad: bytes) -> bytes:
    return ChaCha20Poly1305(key).encrypt(_nonce(counter), plaintext, ad)


def aead_decrypt(key: bytes, counter: int, ciphertext: bytes, ad: bytes) -> bytes:
    try:
        return ChaCha20Poly1305(key).decrypt(_nonce(counter), ciphertext, ad)
    except InvalidTag as exc:
        raise CryptoError("authentication failed") from exc


def xaead_encrypt(key: bytes, nonce24: bytes, plaintext: bytes, ad: bytes) -> bytes:
    return _nacl.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, ad, nonce24, key)


def xaead_decrypt(key: bytes, nonce24: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    try:
        return _nacl.crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, ad, nonce24, key)
    except nacl.exceptions.CryptoError as exc:
        raise CryptoError("authentication failed") from exc
