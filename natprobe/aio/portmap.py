"""Asks the default gateway which port-mapping services it speaks: NAT-PMP, PCP and UPnP IGD (SSDP).

From one ephemeral UDPv4 socket, within 250 ms: NAT-PMP and PCP ANNOUNCE to gateway:5351, SSDP M-SEARCH
to gateway:1900 and to 239.255.255.250:1900; after the first reply, wait 50 ms more (netcheck.md §7).
"""
from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass

from natprobe import constants as C
from natprobe import portmap

log = logging.getLogger("natprobe.portmap")


@dataclass
class PortmapResult:
    upnp: bool = False
    pmp: bool = False
    pcp: bool = False


async def probe_portmap(gateway: str, self_ip: str, *, window: float = C.PORTMAP_WINDOW,
                        extra_wait: float = C.PORTMAP_EXTRA_WAIT, multicast: bool = True) -> PortmapResult:
    loop = asyncio.get_running_loop()
    result = PortmapResult()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    first = asyncio.Event()

    def on_readable() -> None:
        for _ in range(32):
            try:
                data, (_, port) = sock.recvfrom(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            service = portmap.classify_reply(data, port)
            if service is None:
                continue
            setattr(result, {portmap.Service.UPNP: "upnp", portmap.Service.PMP: "pmp",
                             portmap.Service.PCP: "pcp"}[service], True)
            first.set()

    try:
        sock.bind((self_ip, 0))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 2)
        loop.add_reader(sock.fileno(), on_readable)
        sends = [(portmap.natpmp_request(), (gateway, C.NATPMP_PORT)),
                 (portmap.pcp_announce(self_ip), (gateway, C.PCP_PORT)),
                 (portmap.ssdp_search(portmap.SSDP_ALL), (gateway, C.SSDP_PORT))]
        if multicast:
            sends += [(portmap.ssdp_search(portmap.SSDP_ALL), (C.SSDP_MULTICAST, C.SSDP_PORT)),
                      (portmap.ssdp_search(portmap.SSDP_IGD), (C.SSDP_MULTICAST, C.SSDP_PORT))]
        for data, dest in sends:
            try:
                sock.sendto(data, dest)
            except OSError as exc:
                log.debug("port-mapping probe to %s:%d failed: %s", dest[0], dest[1], exc)
        try:
            await asyncio.wait_for(first.wait(), window)
            await asyncio.sleep(extra_wait)
        except asyncio.TimeoutError:
            pass
    except OSError as exc:
        log.debug("port-mapping probe failed: %s", exc)
    finally:
        try:
            loop.remove_reader(sock.fileno())
        except (ValueError, OSError):
            pass
        sock.close()
    return result
