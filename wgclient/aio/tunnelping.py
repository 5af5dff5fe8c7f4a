"""An ICMP echo through the tunnel, for `wgc ping` to a peer reached through a relay node (disco pings do
not cross a relay node: it forwards IP packets, not disco). The daemon sends an echo request from the
interface's own address to the peer's tunnel address through the kernel (so it takes the TUN, the core's
cryptokey route and the relay node, like any packet) and waits for the matching reply on a raw ICMP
socket (the daemon runs as root). IPv4 only; one socket per ping, closed at once. The ICMP messages are
natprobe's (natprobe/icmp.py). Unlike every other socket of wgc it carries no fwmark: its packets must
take the tunnel, also under a full tunnel's policy rules.
"""
from __future__ import annotations

import asyncio
import os
import socket
import time

from natprobe.icmp import echo_request, is_echo_reply

PAYLOAD = b"wgc ping via relay node"


def is_reply(packet: bytes, source: str, ident: int, seq: int) -> bool:
    """Is this raw IPv4 packet (header included) the echo reply from `source` to our request?"""
    if len(packet) < 20 or packet[0] >> 4 != 4 or socket.inet_ntoa(packet[12:16]) != source:
        return False
    return is_echo_reply(packet, seq, PAYLOAD, ident=ident)


async def icmp_echo(src: str, dst: str, timeout: float) -> float | None:
    """Round-trip seconds of one ICMP echo from src to dst, or None when no reply came in time."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    sock.setblocking(False)
    try:
        sock.bind((src, 0))
        ident, seq = int.from_bytes(os.urandom(2), "big"), 1
        started = time.monotonic()
        sock.sendto(echo_request(ident, seq, PAYLOAD), (dst, 0))  # (uvloop has no sock_sendto)
        deadline = started + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                packet = await asyncio.wait_for(loop.sock_recv(sock, 2048), left)
            except asyncio.TimeoutError:
                return None
            if is_reply(packet, dst, ident, seq):
                return time.monotonic() - started
    finally:
        sock.close()
