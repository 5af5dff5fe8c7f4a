"""Disco keys without a control server: derived per peer pair from what a wg-quick config already holds.

Tailscale hands every node's disco public key out through its control server. wgc has none, so both ends
of a configured peer pair derive the pair's disco keys from their WireGuard static keys (docs/path.md
gives the security reasoning):

    ss   = X25519(my_static_private, peer_static_public)          (= X25519(peer_private, my_public))
    prk  = BLAKE2s(key="wgc disco v1", ss ‖ psk-or-32-zero-bytes)
    d(X) = clamp(BLAKE2s(key=prk, "sender" ‖ X_static_public))     disco private key X uses toward Y

Each side seals with d(me) and opens with the public key of d(peer); the peer's disco private key is
computed and dropped at once. Only the two holders of the static private keys can compute `ss`, so a
disco message whose box opens under the pair key comes from the configured peer, and a packet whose
sender key is no peer's derived key is dropped. Keys are never shown in repr or logs.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from wgclient import keys
from wgclient.errors import UsageError

from .disco import DiscoBox

LABEL = b"wgc disco v1"


def _sender_private(prk: bytes, static_public: bytes) -> bytes:
    return keys.clamp(hashlib.blake2s(b"sender" + static_public, key=prk, digest_size=32).digest())


@dataclass(frozen=True)
class PairKeys:
    """The disco keys of one (me, peer) pair."""

    my_public: bytes                        # my disco public key toward this peer (sent in every packet)
    peer_public: bytes                      # the peer's disco public key toward me (what we accept)
    box: DiscoBox = field(repr=False, compare=False)


def derive_pair(my_static_private: bytes, peer_static_public: bytes, psk: bytes | None = None) -> PairKeys:
    """The pair's disco keys; the same two public keys on both sides, with the roles swapped."""
    if len(my_static_private) != 32 or len(peer_static_public) != 32 or (psk is not None and len(psk) != 32):
        raise UsageError("WireGuard keys are 32 bytes")
    me = X25519PrivateKey.from_private_bytes(my_static_private)
    my_static_public = me.public_key().public_bytes_raw()
    if my_static_public == peer_static_public:
        raise UsageError("a peer cannot have our own public key")
    try:
        ss = me.exchange(X25519PublicKey.from_public_bytes(peer_static_public))
    except ValueError as exc:  # low-order point: X25519 output is all zero
        raise UsageError("peer public key is a low-order point") from exc
    prk = hashlib.blake2s(ss + (psk or bytes(32)), key=LABEL, digest_size=32).digest()
    mine = _sender_private(prk, my_static_public)
    theirs = keys.public_key(_sender_private(prk, peer_static_public))
    box = DiscoBox(mine, theirs)
    return PairKeys(box.my_public, theirs, box)
