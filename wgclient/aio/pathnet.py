"""What the path adapter (wgclient/aio/paths.py) learns about the network: netcheck and local addresses.

- netcheck runs through the WireGuard port itself (natprobe's SharedSocket: `stun_send`, and STUN answers
  come back through the path adapter's demux to `stun_receive`), so the STUN-mapped address is that port's
  mapping: once before the interface is ready (bounded), every 20-26 s (`WGC_NETCHECK_INTERVAL`), at once
  when the local addresses change, and as a full report (every region measured) after the DERP map changed;
  one that fails or takes over 5 s is tried again 3 s later (full if it was to be full);
- the host's unicast addresses (not loopback or link-local, not our own TUN), polled every 5 s, are the
  path manager's local candidate endpoints;
- each report goes to the path manager (`on_netcheck`) and is kept for `wgc status` (`summary`); what it
  says of UDP per region (STUN answered or not, wgclient/relayudp.py) goes to the DERP clients.
"""
from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from typing import TYPE_CHECKING, Callable

from natprobe.aio.netcheck import NetcheckOptions, run_netcheck
from natprobe.home import History

from ..path.inputs import NetInfo
from ..relayudp import udp_by_region

if TYPE_CHECKING:  # pragma: no cover
    from .paths import Paths

log = logging.getLogger("wgc.paths")

NETCHECK_INTERVAL = 23.0       # Tailscale: 20-26 s while active
NETCHECK_TIMEOUT = 5.0         # one netcheck in the loop; one that takes longer is dropped ...
NETCHECK_RETRY = 3.0           # ... or fails: the next comes this soon (a full one if that was asked)
ADDRESS_POLL_INTERVAL = 5.0    # local addresses are compared this often (a change runs netcheck at once)


def local_addresses(exclude_ifaces: set[str]) -> list[str]:
    """Unicast addresses of this host's interfaces (not loopback, not link-local, not our own TUN)."""
    import ipaddress

    import netifaces
    found = []
    for name in netifaces.interfaces():
        if name in exclude_ifaces or name == "lo":
            continue
        addrs = netifaces.ifaddresses(name)
        for family in (netifaces.AF_INET, netifaces.AF_INET6):
            for entry in addrs.get(family, []):
                text = entry.get("addr", "").split("%")[0]
                try:
                    ip = ipaddress.ip_address(text)
                except ValueError:
                    continue
                if ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified:
                    continue
                found.append(str(ip))
    return sorted(set(found))


class NetWatch:
    """netcheck and local addresses for one Paths; see the module docstring."""

    def __init__(self, paths: "Paths", interval: float | None = None) -> None:
        self.paths = paths
        if interval is None:
            interval = float(os.environ.get("WGC_NETCHECK_INTERVAL", NETCHECK_INTERVAL))
        self.interval = interval
        self.history = History()
        self.report = None
        self.addresses: list[str] = []
        self.stun_receive: Callable[[bytes, tuple], None] | None = None
        self._now = asyncio.Event()
        self._full = False
        self._rng = random.Random()

    def soon(self, full: bool = False) -> None:
        """Run netcheck now (`full`: measure every region, e.g. after the DERP map changed)."""
        self._full = self._full or full
        self._now.set()

    async def start(self, now: float, timeout: float) -> None:
        self._set_addresses(local_addresses({self.paths.interface}), now)
        try:
            await asyncio.wait_for(self.run(), timeout)
        except asyncio.TimeoutError:
            log.warning("first netcheck took longer than %.1f s; going on without it", timeout)
        except Exception:  # a probe failing must not stop the interface; the loop tries again
            log.exception("first netcheck failed; going on without it")

    async def run(self) -> None:
        paths = self.paths
        options = NetcheckOptions(portmap=False, captive_portal=False, force_full=self._full,
                                  fwmark=lambda: paths.runner.udp.fwmark)
        self._full = False
        dm = paths.derpmap
        scores = dict(dm.home_params.region_score or {}) if dm.home_params else None
        report = await run_netcheck(paths.regions, history=self.history, options=options, scores=scores,
                                    shared=self, derp_heard=dict(paths.derp_heard))
        self.report = report
        full = bool(self.history.entries) and self.history.entries[-1].full
        measured = [r.region_id for r in paths.regions if r.measurable]
        paths.set_relay_udp(udp_by_region(report, measured, paths.relay_udp, full))
        log.info("netcheck: UDP %s, v4 %s, v6 %s, mapping varies by destination %s, home %s",
                 "yes" if report.udp else "no", report.global_v4 or "-", report.global_v6 or "-",
                 report.mapping_varies_by_dest_ip, report.preferred_derp)
        paths._apply(paths.pm.on_netcheck(NetInfo.from_report(report), time.monotonic()))

    async def netcheck_loop(self) -> None:
        failed = False
        while not self.paths._closing:
            interval = NETCHECK_RETRY if failed else self.interval * self._rng.uniform(0.87, 1.13)
            try:
                await asyncio.wait_for(self._now.wait(), interval)
            except asyncio.TimeoutError:
                pass
            self._now.clear()
            full = self._full
            failed = True
            try:
                await asyncio.wait_for(self.run(), NETCHECK_TIMEOUT)
                failed = False
            except asyncio.TimeoutError:
                log.debug("netcheck timed out")
            except Exception:  # a probe failing must never end the loop
                log.exception("netcheck failed")
            if failed:          # a full report that was asked for (a new DERP map) is still owed: soon
                self._full = self._full or full

    async def address_loop(self) -> None:
        while not self.paths._closing:
            await asyncio.sleep(ADDRESS_POLL_INTERVAL)
            try:
                addresses = local_addresses({self.paths.interface})
            except Exception:  # netifaces hiccup: try again next round
                continue
            if addresses != self.addresses:
                log.info("local addresses changed: %s", ", ".join(addresses) or "none")
                self._set_addresses(addresses, time.monotonic())
                self.soon()

    def _set_addresses(self, addresses: list[str], now: float) -> None:
        paths = self.paths
        self.addresses = addresses
        paths._apply(paths.pm.set_local_endpoints([(a, paths.runner.udp.port) for a in addresses], now))

    # SharedSocket (natprobe.aio.netcheck): STUN through the WireGuard port.
    def stun_send(self, data: bytes, dest: tuple, family: int) -> bool:
        udp = self.paths.runner.udp
        sock = udp.v4 if family == 4 else udp.v6
        if sock is None:
            return False
        try:
            sock.sendto(data, dest)
            return True
        except OSError as exc:
            log.debug("STUN send to %s failed: %s", dest, exc)
            return False

    def stun_attach(self, receive: Callable[[bytes, tuple], None] | None) -> None:
        self.stun_receive = receive

    def summary(self) -> dict | None:
        """The last report for `wgc status` (latencies by region code), or None before the first."""
        r = self.report
        if r is None:
            return None
        codes = {reg.region_id: reg.code for reg in self.paths.regions}
        return {"udp": bool(r.udp), "ipv4": r.global_v4 or None, "ipv6": r.global_v6 or None,
                "mapping_varies_by_dest_ip": r.mapping_varies_by_dest_ip,
                "preferred_region": r.preferred_derp,
                "latency_ms": {codes.get(rid, str(rid)): round(lat * 1e3, 1)
                               for rid, lat in sorted(r.region_latency.items(), key=lambda kv: kv[1])},
                "at": r.now or None}


__all__ = ["NetWatch", "local_addresses", "NETCHECK_INTERVAL"]
