"""The Noise_IKpsk2 handshake of one peer (whitepaper §5.4.2-5.4.5, wireguard-go noise-protocol.go).

State machine (one per peer; `Handshake.state` changes only in this module):

    ZEROED --create_initiation--> INITIATION_CREATED --consume_response--> (keys derived) ZEROED
    ZEROED --consume_initiation--> INITIATION_CONSUMED --create_response--> (keys derived) ZEROED

`derive_keys` returns the transport keys and wipes chaining key, hash and ephemeral key. Messages come
in parsed and go out without MACs; cookie.py adds and checks those. The caller supplies wall-clock time
(for TAI64N) and random bytes.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Callable

from ..constants import CONSTRUCTION, IDENTIFIER
from . import crypto
from .messages import Initiation, Response
from .tai64n import after, tai64n

_C0 = crypto.hash_(CONSTRUCTION)
_H0 = crypto.hash_(_C0, IDENTIFIER)
_ZERO_PSK = bytes(32)


class HandshakeState(enum.Enum):
    ZEROED = 0
    INITIATION_CREATED = 1
    INITIATION_CONSUMED = 2


@dataclass
class Identity:
    """The device's static key pair."""

    private_key: bytes = field(repr=False)
    public_key: bytes = b""

    def __post_init__(self) -> None:
        self.private_key = crypto.clamp(self.private_key)
        self.public_key = crypto.public_key(self.private_key)


@dataclass
class Handshake:
    remote_static: bytes
    preshared_key: bytes = field(default=_ZERO_PSK, repr=False)
    precomputed_ss: bytes = field(default=b"", repr=False)  # DH(S_local, S_remote)
    state: HandshakeState = HandshakeState.ZEROED
    chain_key: bytes = field(default=b"", repr=False)
    hash: bytes = field(default=b"", repr=False)
    local_ephemeral: bytes = field(default=b"", repr=False)
    remote_ephemeral: bytes = b""
    local_index: int = 0
    remote_index: int = 0
    latest_timestamp: bytes = bytes(12)
    last_initiation_consumed: float | None = None

    def precompute(self, identity: Identity) -> None:
        try:
            self.precomputed_ss = crypto.dh(identity.private_key, self.remote_static)
        except crypto.CryptoError:
            self.precomputed_ss = bytes(32)

    def clear(self) -> None:
        self.state = HandshakeState.ZEROED
        self.chain_key = self.hash = self.local_ephemeral = self.remote_ephemeral = b""
        self.local_index = self.remote_index = 0


def create_initiation(identity: Identity, hs: Handshake, *, wall_time: float, local_index: int,
                      random_bytes: Callable[[int], bytes]) -> Initiation:
    if hs.precomputed_ss == bytes(32):
        raise crypto.CryptoError("peer public key gives an all-zero static-static DH")
    h = crypto.hash_(_H0, hs.remote_static)
    ephemeral_private = crypto.clamp(random_bytes(32))
    ephemeral_public = crypto.public_key(ephemeral_private)
    (c,) = crypto.kdf(_C0, ephemeral_public, 1)
    h = crypto.hash_(h, ephemeral_public)
    c, k = crypto.kdf(c, crypto.dh(ephemeral_private, hs.remote_static), 2)
    encrypted_static = crypto.aead_encrypt(k, 0, identity.public_key, h)
    h = crypto.hash_(h, encrypted_static)
    c, k = crypto.kdf(c, hs.precomputed_ss, 2)
    encrypted_timestamp = crypto.aead_encrypt(k, 0, tai64n(wall_time), h)
    h = crypto.hash_(h, encrypted_timestamp)
    hs.chain_key, hs.hash, hs.local_ephemeral = c, h, ephemeral_private
    hs.local_index = local_index
    hs.state = HandshakeState.INITIATION_CREATED
    return Initiation(local_index, ephemeral_public, encrypted_static, encrypted_timestamp)


@dataclass
class _Decoded:
    remote_static: bytes
    chain_key: bytes
    hash: bytes
    timestamp: bytes


def open_initiation(identity: Identity, msg: Initiation) -> _Decoded:
    """First half of consuming an initiation: learn who sent it (before we know the peer)."""
    h = crypto.hash_(_H0, identity.public_key)
    (c,) = crypto.kdf(_C0, msg.ephemeral, 1)
    h = crypto.hash_(h, msg.ephemeral)
    c, k = crypto.kdf(c, crypto.dh(identity.private_key, msg.ephemeral), 2)
    remote_static = crypto.aead_decrypt(k, 0, msg.encrypted_static, h)
    h = crypto.hash_(h, msg.encrypted_static)
    return _Decoded(remote_static, c, h, b"")


def consume_initiation(decoded: _Decoded, hs: Handshake, msg: Initiation, *, now: float,
                       flood_interval: float) -> None:
    """Second half: with the peer's handshake state, check timestamp replay and flooding, then store."""
    if hs.precomputed_ss == bytes(32):
        raise crypto.CryptoError("all-zero static-static DH")
    c, k = crypto.kdf(decoded.chain_key, hs.precomputed_ss, 2)
    timestamp = crypto.aead_decrypt(k, 0, msg.encrypted_timestamp, decoded.hash)
    h = crypto.hash_(decoded.hash, msg.encrypted_timestamp)
    if not after(timestamp, hs.latest_timestamp):
        raise crypto.CryptoError("replayed initiation (timestamp not newer)")
    if hs.last_initiation_consumed is not None and now - hs.last_initiation_consumed <= flood_interval:
        raise crypto.CryptoError("initiation flood")
    hs.latest_timestamp = timestamp
    hs.last_initiation_consumed = now
    hs.chain_key, hs.hash = c, h
    hs.remote_ephemeral = msg.ephemeral
    hs.remote_index = msg.sender
    hs.state = HandshakeState.INITIATION_CONSUMED


def create_response(identity: Identity, hs: Handshake, *, local_index: int,
                    random_bytes: Callable[[int], bytes]) -> Response:
    if hs.state is not HandshakeState.INITIATION_CONSUMED:
        raise crypto.CryptoError("no initiation to answer")
    ephemeral_private = crypto.clamp(random_bytes(32))
    ephemeral_public = crypto.public_key(ephemeral_private)
    (c,) = crypto.kdf(hs.chain_key, ephemeral_public, 1)
    h = crypto.hash_(hs.hash, ephemeral_public)
    (c,) = crypto.kdf(c, crypto.dh(ephemeral_private, hs.remote_ephemeral), 1)
    (c,) = crypto.kdf(c, crypto.dh(ephemeral_private, hs.remote_static), 1)
    c, tau, k = crypto.kdf(c, hs.preshared_key, 3)
    h = crypto.hash_(h, tau)
    encrypted_nothing = crypto.aead_encrypt(k, 0, b"", h)
    h = crypto.hash_(h, encrypted_nothing)
    hs.chain_key, hs.hash, hs.local_ephemeral = c, h, ephemeral_private
    hs.local_index = local_index
    return Response(local_index, hs.remote_index, ephemeral_public, encrypted_nothing)


def consume_response(identity: Identity, hs: Handshake, msg: Response) -> None:
    if hs.state is not HandshakeState.INITIATION_CREATED or msg.receiver != hs.local_index:
        raise crypto.CryptoError("unexpected response")
    (c,) = crypto.kdf(hs.chain_key, msg.ephemeral, 1)
    h = crypto.hash_(hs.hash, msg.ephemeral)
    (c,) = crypto.kdf(c, crypto.dh(hs.local_ephemeral, msg.ephemeral), 1)
    (c,) = crypto.kdf(c, crypto.dh(identity.private_key, msg.ephemeral), 1)
    c, tau, k = crypto.kdf(c, hs.preshared_key, 3)
    h = crypto.hash_(h, tau)
    crypto.aead_decrypt(k, 0, msg.encrypted_nothing, h)
    h = crypto.hash_(h, msg.encrypted_nothing)
    hs.chain_key, hs.hash = c, h
    hs.remote_index = msg.sender
    hs.remote_ephemeral = msg.ephemeral


def derive_keys(hs: Handshake, *, initiator: bool) -> tuple[bytes, bytes]:
    """(send key, receive key) from the final chaining key; wipes the handshake secrets."""
    t1, t2 = crypto.kdf(hs.chain_key, b"", 2)
    send, recv = (t1, t2) if initiator else (t2, t1)
    hs.state = HandshakeState.ZEROED
    hs.chain_key = hs.hash = hs.local_ephemeral = b""
    return send, recv
