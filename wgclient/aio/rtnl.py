"""Raw rtnetlink messages sent in batches: routes (RTM_NEWROUTE/RTM_DELROUTE) and policy rules
(RTM_NEWRULE/RTM_DELRULE), each acknowledged, on one netlink socket; and `off_loop()` for pyroute2.

pyroute2 spends ~3 ms of Python per route message, which made a 1000-peer `up` take seconds; a batch of
hand-packed messages takes a few milliseconds. Rules are packed here too so that they carry exactly
what `ip rule add` sends (no priority: the kernel picks it as it does for wg-quick).
"""
from __future__ import annotations

import asyncio
import socket
import struct
import threading
from ipaddress import IPv4Network, IPv6Network
from typing import Callable, TypeVar

Network = IPv4Network | IPv6Network
T = TypeVar("T")

# linux/netlink.h, linux/rtnetlink.h, linux/fib_rules.h
RTM_NEWROUTE, RTM_DELROUTE, RTM_NEWRULE, RTM_DELRULE, NLMSG_ERROR = 24, 25, 32, 33, 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
RTA_DST, RTA_OIF, RTA_TABLE = 1, 4, 15
RTPROT_BOOT, RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_NOWHERE, RTN_UNICAST = 3, 0, 253, 255, 1
RT_TABLE_UNSPEC, RT_TABLE_MAIN = 0, 254
FRA_PRIORITY, FRA_FWMARK, FRA_SUPPRESS_PREFIXLEN, FRA_TABLE = 6, 10, 14, 15
FR_ACT_TO_TBL, FIB_RULE_INVERT = 1, 0x2
_NLMSGHDR = struct.Struct("=IHHII")
_RTMSG = struct.Struct("=BBBBBBBBI")
_FIB_RULE_HDR = struct.Struct("=BBBBBBBBI")
_BATCH = 64            # messages per send: each ack costs ~1 KiB of the receive buffer until read
SOL_NETLINK = 270
_NETLINK_CAP_ACK = 10  # error acks without a copy of the request


def rta(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + bytes((4 - length % 4) % 4)


def _u32(kind: int, value: int) -> bytes:
    return rta(kind, struct.pack("=I", value))


def _message(op: int, flags: int, body: bytes, seq: int) -> bytes:
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), op, flags, seq, 0) + body


def route_message(op: int, net: Network, oif: int, table: int, seq: int) -> bytes:
    """One RTM_NEWROUTE (create, fail if present) or RTM_DELROUTE message for `net dev oif table T`."""
    family = socket.AF_INET if net.version == 4 else socket.AF_INET6
    if op == RTM_NEWROUTE:
        flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
        scope = RT_SCOPE_LINK if net.version == 4 else RT_SCOPE_UNIVERSE
    else:
        flags, scope = NLM_F_REQUEST | NLM_F_ACK, RT_SCOPE_NOWHERE
    body = _RTMSG.pack(family, net.prefixlen, 0, 0, table if table < 256 else RT_TABLE_UNSPEC, RTPROT_BOOT,
                       scope, RTN_UNICAST, 0)
    body += rta(RTA_DST, net.network_address.packed) + _u32(RTA_OIF, oif) + _u32(RTA_TABLE, table)
    return _message(op, flags, body, seq)


def rule_message(op: int, family: int, table: int, seq: int, *, not_fwmark: int | None = None,
                 suppress_prefixlength: int | None = None, priority: int | None = None) -> bytes:
    """`ip rule add|del [not fwmark M] table T [suppress_prefixlength N] [pref P]` as one message."""
    flags = NLM_F_REQUEST | NLM_F_ACK | (NLM_F_CREATE | NLM_F_EXCL if op == RTM_NEWRULE else 0)
    body = _FIB_RULE_HDR.pack(family, 0, 0, 0, table if table < 256 else RT_TABLE_UNSPEC, 0, 0, FR_ACT_TO_TBL,
                              FIB_RULE_INVERT if not_fwmark is not None else 0)
    body += _u32(FRA_TABLE, table)
    if not_fwmark is not None:
        body += _u32(FRA_FWMARK, not_fwmark)
    if suppress_prefixlength is not None:
        body += _u32(FRA_SUPPRESS_PREFIXLEN, suppress_prefixlength)
    if priority is not None:
        body += _u32(FRA_PRIORITY, priority)
    return _message(op, flags, body, seq)


def batch(messages: list[bytes]) -> list[int]:
    """Send the messages (their sequence numbers must be 1..n in order) in batches; each one's errno."""
    results = [0] * len(messages)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.setsockopt(SOL_NETLINK, _NETLINK_CAP_ACK, 1)
        sock.bind((0, 0))
        start = 0
        while start < len(messages):
            end = min(start + _BATCH, len(messages))
            sock.sendall(b"".join(messages[start:end]))
            pending = set(range(start + 1, end + 1))
            while pending:
                data = sock.recv(1 << 16)
                off = 0
                while off + _NLMSGHDR.size <= len(data):
                    length, kind, _, seq, _ = _NLMSGHDR.unpack_from(data, off)
                    if length < _NLMSGHDR.size:
                        break
                    if kind == NLMSG_ERROR and seq in pending:
                        results[seq - 1] = -struct.unpack_from("=i", data, off + _NLMSGHDR.size)[0]
                        pending.discard(seq)
                    off += (length + 3) & ~3
            start = end
    return results


def route_batch(op: int, nets: list[Network], oif: int, table: int) -> list[int]:
    """One route message per prefix; returns each one's errno (0 = done)."""
    return batch([route_message(op, net, oif, table, seq=i + 1) for i, net in enumerate(nets)])


def off_loop(fn: Callable[[], T]) -> T:
    """Run fn here, or in a helper thread if this thread runs an asyncio loop (pyroute2's sync API needs its own)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn()
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["result"] = fn()
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    t = threading.Thread(target=run, name="wgc-netconf")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]
