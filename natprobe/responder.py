"""Sans-I/O STUN Binding responder: decides the answer to one datagram and counts what it drops, by reason.

Answers every standard Binding request: RFC 5389/8489 requests (magic cookie; FINGERPRINT verified when
present) with XOR-MAPPED-ADDRESS, RFC 3489 requests (no cookie) with MAPPED-ADDRESS. Unknown attributes
are ignored. Everything else (responses, indications, garbage, bad fingerprints) is dropped silently and
counted; nothing raises.
"""
from __future__ import annotations

from collections import Counter

from natprobe import constants as C
from natprobe import stun
from natprobe.errors import ParseError


class StunResponder:
    """Stateless apart from counters: `answer(datagram, source) -> bytes | None`."""

    def __init__(self, *, software: bytes | None = None) -> None:
        self.software = software
        self.requests = 0
        self.drops: Counter[str] = Counter()

    @property
    def dropped(self) -> int:
        return sum(self.drops.values())

    def answer(self, data: bytes, source: stun.Addr) -> bytes | None:
        """The response datagram for `data` received from `source`, or None (dropped and counted)."""
        if len(data) < C.HEADER_LEN or data[0] & 0xC0:
            self.drops["not-stun"] += 1
            return None
        if data[0] != 0 or data[1] != 0x01:
            self.drops["not-binding-request"] += 1
            return None
        try:
            msg = stun.parse_message(data, allow_classic=True)
        except ParseError:
            self.drops["malformed"] += 1
            return None
        self.requests += 1
        return stun.binding_success(msg, (source[0], source[1]), software=self.software)
