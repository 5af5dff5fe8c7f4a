"""Sans-I/O STUN client transactions: send, retransmit (RFC 8489 §6.2.1) and match responses, time passed in.

Rules:
- `start(dest, now)` makes a fresh 12-byte transaction id (from the injected `rand`), returns the request.
- A request is retransmitted after RTO, 2*RTO, 4*RTO, ... until `rc` requests went out; the transaction then
  fails with "timeout" `rm` x RTO after the last send. `rc=1` sends once (netcheck's probes: retries there
  are separate probes with new ids, netcheck.md §2.1).
- A response is matched by transaction id and source address (IPv4-mapped forms compared unmapped);
  anything else is dropped and counted by reason, never raised. Error responses fail the transaction.
- The round-trip time is measured from the first send; `retransmitted` tells when it is ambiguous
  (Karn's rule: callers should not use such samples as latency).
"""
from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass
from typing import Callable

from natprobe import constants as C
from natprobe import stun
from natprobe.errors import ParseError, UsageError


@dataclass(frozen=True)
class RetransmitConfig:
    rto: float = C.DEFAULT_RTO
    rc: int = C.DEFAULT_RC
    rm: int = C.DEFAULT_RM

    def __post_init__(self) -> None:
        if self.rto <= 0 or self.rc < 1 or self.rm < 1:
            raise UsageError("STUN retransmission needs rto > 0, rc >= 1 and rm >= 1")


@dataclass(frozen=True)
class SendDatagram:
    dest: stun.Addr
    data: bytes


@dataclass(frozen=True)
class BindingSucceeded:
    txid: bytes
    dest: stun.Addr
    mapped: stun.Addr
    rtt: float
    retransmitted: bool


@dataclass(frozen=True)
class BindingFailed:
    txid: bytes
    dest: stun.Addr
    reason: str


Event = BindingSucceeded | BindingFailed


@dataclass
class _Pending:
    dest: stun.Addr
    request: bytes
    first_sent: float
    next_at: float
    interval: float
    sends: int


def _norm(addr: stun.Addr) -> stun.Addr:
    host = addr[0].split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host, addr[1]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip), addr[1]


class Transactions:
    """Outstanding Binding transactions of one client socket."""

    def __init__(self, rand: Callable[[int], bytes], config: RetransmitConfig = RetransmitConfig()) -> None:
        self._rand = rand
        self.config = config
        self._pending: dict[bytes, _Pending] = {}
        self.drops: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._pending)

    def start(self, dest: stun.Addr, now: float, *, software: bytes | None = C.TAILSCALE_SOFTWARE
              ) -> tuple[bytes, list[SendDatagram]]:
        txid = self._rand(C.TXID_LEN)
        if len(txid) != C.TXID_LEN or txid in self._pending:
            raise UsageError("the random source gave a bad or repeated transaction id")
        request = stun.binding_request(txid, software=software)
        dest = _norm(dest)
        rto = self.config.rto
        last = self.config.rc == 1
        self._pending[txid] = _Pending(dest, request, now, now + (rto * self.config.rm if last else rto), rto, 1)
        return txid, [SendDatagram(dest, request)]

    def cancel(self, txid: bytes) -> None:
        self._pending.pop(txid, None)

    def next_deadline(self) -> float | None:
        return min((p.next_at for p in self._pending.values()), default=None)

    def on_timer(self, now: float) -> list[SendDatagram | BindingFailed]:
        out: list[SendDatagram | BindingFailed] = []
        for txid, p in list(self._pending.items()):
            if p.next_at > now:
                continue
            if p.sends >= self.config.rc:
                del self._pending[txid]
                out.append(BindingFailed(txid, p.dest, "timeout"))
                continue
            p.sends += 1
            p.interval *= 2
            if p.sends >= self.config.rc:
                p.next_at = now + self.config.rto * self.config.rm
            else:
                p.next_at = now + p.interval
            out.append(SendDatagram(p.dest, p.request))
        return out

    def on_datagram(self, data: bytes, source: stun.Addr, now: float) -> list[Event]:
        """Feed one received datagram; returns the finished transaction, if it was a matching response."""
        if not stun.is_binding_response(data):
            self.drops["not-stun-response"] += 1
            return []
        txid = bytes(data[8:20])
        pending = self._pending.get(txid)
        if pending is None:
            self.drops["unknown-transaction"] += 1
            return []
        if _norm(source) != pending.dest:
            self.drops["wrong-source"] += 1
            return []
        try:
            resp = stun.parse_binding_response(data)
        except ParseError:
            self.drops["malformed"] += 1
            return []
        del self._pending[txid]
        if resp.error_code is not None:
            return [BindingFailed(txid, pending.dest, f"error {resp.error_code} {resp.reason}".strip())]
        assert resp.mapped is not None
        return [BindingSucceeded(txid, pending.dest, resp.mapped, now - pending.first_sent, pending.sends > 1)]
