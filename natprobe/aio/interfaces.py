"""What the local network stack offers netcheck: IPv6 support, routable families, the default gateway.

All checks are local (bind/connect on UDP sockets and /proc/net/route); nothing is sent.
"""
from __future__ import annotations

import socket
import struct


def os_has_ipv6() -> bool:
    """A UDP socket can be bound to [::1]:0 (netcheck.md §1 OSHasIPv6)."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


def routable(ip: str) -> bool:
    """The kernel has a route to `ip` (a UDP connect succeeds; no packet is sent)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((ip, 9))
        return True
    except OSError:
        return False


def default_gateway_v4(route_file: str = "/proc/net/route") -> tuple[str, str] | None:
    """(gateway IPv4, our source address toward it) from the main routing table, or None."""
    try:
        with open(route_file) as fh:
            lines = fh.read().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) < 4 or fields[1] != "00000000" or not int(fields[3], 16) & 0x2:
            continue
        gateway = socket.inet_ntoa(struct.pack("<I", int(fields[2], 16)))
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.connect((gateway, 9))
                return gateway, sock.getsockname()[0]
        except OSError:
            return None
    return None
