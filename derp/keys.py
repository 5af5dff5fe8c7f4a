"""DERP identities: X25519 key pairs, their text forms (nodekey:/privkey:/base64) and log-safe short names.

Pure: key generation takes the 32 random bytes from the caller.
"""
from __future__ import annotations

import base64
import binascii

from nacl.bindings import crypto_scalarmult_base

from derp.errors import ParseError


def clamp(raw: bytes) -> bytes:
    """X25519 clamping (derp.md §1)."""
    k = bytearray(raw)
    k[0] &= 248
    k[31] = (k[31] & 127) | 64
    return bytes(k)


def private_key_from_random(random32: bytes) -> bytes:
    if len(random32) != 32:
        raise ValueError("need 32 random bytes")
    return clamp(random32)


def public_key_of(private_key: bytes) -> bytes:
    return crypto_scalarmult_base(private_key)


def short(key: bytes) -> str:
    """A log-safe short form of a PUBLIC key: the first 8 base64 characters."""
    return base64.b64encode(key).decode()[:8]


def parse_public_key(text: str) -> bytes:
    """A public key from `nodekey:<hex>`, 64 bare hex characters, or standard base64 (WireGuard's form)."""
    return _parse_key(text.strip(), "nodekey:")


def parse_private_key(text: str) -> bytes:
    return _parse_key(text.strip(), "privkey:")


def _parse_key(text: str, prefix: str) -> bytes:
    body = text[len(prefix):] if text.startswith(prefix) else text
    raw: bytes | None = None
    if len(body) == 64:
        try:
            raw = bytes.fromhex(body)
        except ValueError:
            raw = None
    if raw is None and len(body) == 44:
        try:
            raw = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raw = None
    if raw is None or len(raw) != 32:
        shown = f": {text[:12]!r}..." if prefix == "nodekey:" else ""  # never echo private key material
        raise ParseError(f"not a 32-byte key (want {prefix}<64 hex>, 64 hex or base64){shown}")
    return raw


def nodekey_text(public_key: bytes) -> str:
    return "nodekey:" + public_key.hex()


def privkey_text(private_key: bytes) -> str:
    return "privkey:" + private_key.hex()


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()
