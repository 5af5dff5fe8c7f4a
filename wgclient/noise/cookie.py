"""mac1, mac2 and cookie replies: WireGuard's DoS protection (whitepaper §5.4.4, §5.4.7; wireguard-go cookie.go).

`CookieChecker` is the receiving side of one device: it checks mac1 (always) and mac2 (under load) and
makes cookie replies. `CookieGenerator` is the sending side toward one peer: it writes mac1/mac2 into our
handshake messages and takes in the cookie replies that peer sends us. Randomness comes in as a callable.
"""
from __future__ import annotations

import hmac
from typing import Callable

from ..constants import COOKIE_REFRESH_TIME, LABEL_COOKIE, LABEL_MAC1
from . import crypto
from .messages import CookieReply

RandomBytes = Callable[[int], bytes]


def mac1_offset(message: bytes | bytearray) -> int:
    return len(message) - 32


def source_bytes(address: tuple[str, int], packed_ip: bytes) -> bytes:
    """What the cookie is a MAC of: the source IP then the port (little-endian, as wireguard-go)."""
    return packed_ip + address[1].to_bytes(2, "little")


class CookieChecker:
    def __init__(self, own_public: bytes, random_bytes: RandomBytes) -> None:
        self._random = random_bytes
        self.mac1_key = crypto.hash_(LABEL_MAC1, own_public)
        self.cookie_key = crypto.hash_(LABEL_COOKIE, own_public)
        self._secret = b""
        self._secret_time: float | None = None

    def check_mac1(self, message: bytes | bytearray | memoryview) -> bool:
        o1 = len(message) - 32
        expected = crypto.mac(self.mac1_key, bytes(message[:o1]))
        return hmac.compare_digest(expected, bytes(message[o1:o1 + 16]))

    def _cookie(self, source: bytes) -> bytes:
        return crypto.mac(self._secret, source)

    def check_mac2(self, message: bytes | bytearray | memoryview, source: bytes, now: float) -> bool:
        if self._secret_time is None or now - self._secret_time > COOKIE_REFRESH_TIME:
            return False
        o2 = len(message) - 16
        expected = crypto.mac(self._cookie(source), bytes(message[:o2]))
        return hmac.compare_digest(expected, bytes(message[o2:]))

    def create_reply(self, message: bytes | bytearray | memoryview, sender_index: int, source: bytes,
                     now: float) -> CookieReply:
        if self._secret_time is None or now - self._secret_time > COOKIE_REFRESH_TIME:
            self._secret = self._random(32)
            self._secret_time = now
        o1 = len(message) - 32
        nonce = self._random(24)
        sealed = crypto.xaead_encrypt(self.cookie_key, nonce, self._cookie(source), bytes(message[o1:o1 + 16]))
        return CookieReply(sender_index, nonce, sealed)


class CookieGenerator:
    def __init__(self, peer_public: bytes) -> None:
        self.mac1_key = crypto.hash_(LABEL_MAC1, peer_public)
        self.cookie_key = crypto.hash_(LABEL_COOKIE, peer_public)
        self.cookie: bytes | None = None
        self.cookie_time = 0.0
        self.last_mac1: bytes | None = None

    def add_macs(self, message: bytearray, now: float) -> None:
        """Fill in mac1 and (if we hold a fresh cookie) mac2 of a handshake message we are about to send."""
        o1 = len(message) - 32
        mac1 = crypto.mac(self.mac1_key, bytes(message[:o1]))
        message[o1:o1 + 16] = mac1
        self.last_mac1 = mac1
        if self.cookie is not None and now - self.cookie_time < COOKIE_REFRESH_TIME:
            message[o1 + 16:o1 + 32] = crypto.mac(self.cookie, bytes(message[:o1 + 16]))
        else:
            message[o1 + 16:o1 + 32] = bytes(16)

    def consume_reply(self, reply: CookieReply, now: float) -> bool:
        if self.last_mac1 is None:
            return False
        try:
            cookie = crypto.xaead_decrypt(self.cookie_key, reply.nonce, reply.encrypted_cookie, self.last_mac1)
        except crypto.CryptoError:
            return False
        self.cookie = cookie
        self.cookie_time = now
        return True
