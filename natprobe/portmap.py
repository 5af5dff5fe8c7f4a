"""Sans-I/O port-mapping service discovery probes (netcheck.md §7): the NAT-PMP, PCP and SSDP requests and
the classification of replies.

- NAT-PMP (RFC 6886 §3.2): external-address request `00 00`; a reply is version 0, opcode 128, result 0.
- PCP (RFC 6887 §7.1, §14.1): ANNOUNCE, 24 bytes: version 2, opcode 0, lifetime 0, client IP (IPv4-mapped)
  at offset 8; a reply is version 2, opcode 0x80 (response bit + ANNOUNCE), result SUCCESS, >= 24 bytes
  (a PCP server answering NOT_AUTHORIZED or ADDRESS_MISMATCH cannot map ports for us: not counted).
- UPnP IGD (SSDP, UPnP Device Architecture 1.1 §1.3.2): `M-SEARCH *`; a reply is any datagram (from any
  port but 5351, as some routers answer from another port) mentioning ":InternetGatewayDevice:".
Replies that match nothing are ignored (returned as None), never raised.
"""
from __future__ import annotations

import enum
import ipaddress
import struct

from natprobe import constants as C
from natprobe.errors import UsageError

SSDP_ALL = "ssdp:all"
SSDP_IGD = "urn:schemas-upnp-org:device:InternetGatewayDevice:1"


class Service(enum.Enum):
    UPNP = "UPnP"
    PMP = "NAT-PMP"
    PCP = "PCP"


def natpmp_request() -> bytes:
    return b"\x00\x00"


def pcp_announce(client_ip: str) -> bytes:
    try:
        ip = ipaddress.ip_address(client_ip)
    except ValueError as exc:
        raise UsageError(f"PCP needs the client's IP address, not {client_ip!r}") from exc
    raw = ip.packed if ip.version == 6 else b"\x00" * 10 + b"\xff\xff" + ip.packed
    return struct.pack("!BBHI", 2, 0, 0, 0) + raw


def ssdp_search(st: str) -> bytes:
    return ("M-SEARCH * HTTP/1.1\r\n"
            f"HOST: {C.SSDP_MULTICAST}:{C.SSDP_PORT}\r\n"
            f"ST: {st}\r\n"
            'MAN: "ssdp:discover"\r\n'
            "MX: 2\r\n\r\n").encode()


def classify_reply(data: bytes, source_port: int) -> Service | None:
    """Which service a datagram received on the probe socket proves present, if any."""
    if source_port != C.NATPMP_PORT:
        return Service.UPNP if b":InternetGatewayDevice:" in data[:4096] else None
    if len(data) < 4:
        return None
    if data[0] == 2 and data[1] == 0x80 and len(data) >= 24:
        return Service.PCP if data[3] == 0 else None
    if data[0] == 0 and data[1] == 128 and len(data) >= 12 and data[2:4] == b"\x00\x00":
        return Service.PMP
    return None
