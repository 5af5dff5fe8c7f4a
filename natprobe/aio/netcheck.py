"""asyncio netcheck runner: resolves the nodes, drives the sans-I/O `NetcheckRun` on real UDP sockets and,
in parallel, the port-mapping probe, the captive-portal check and (when no STUN answer has come) the HTTPS
and ICMP latency fallback; then picks the home region from the history.

Timing (kept inside the issue's 3 s budget, tighter than Tailscale's 3 s STUN + 5 s overall): STUN phase at
most `stun_timeout` (2 s); the HTTPS/ICMP fallback starts as soon as the STUN phase ended without any answer or
`https_after` (1 s) passed without one; everything still running at `overall_timeout` (2.8 s) is dropped.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Protocol

from natprobe import constants as C
from natprobe.aio import interfaces
from natprobe.aio.captive import detect_captive_portal
from natprobe.aio.https_probe import region_https_latency
from natprobe.aio.icmp_probe import icmp_latency
from natprobe.aio.portmap import probe_portmap
from natprobe.aio.sockmark import mark
from natprobe.errors import UsageError
from natprobe.home import History, select_home
from natprobe.netcheck import (NetcheckConfig, NetcheckRun, SendStun, State, apply_fallback, make_full_plan,
                               make_incremental_plan)
from natprobe.regions import Node, Region
from natprobe.report import Report

log = logging.getLogger("natprobe.netcheck")


@dataclass(frozen=True)
class NetcheckOptions:
    verbose: bool = False
    portmap: bool = True
    captive_portal: bool = True
    icmp: bool = True
    force_full: bool = True           # the CLI always makes a full report, like `tailscale netcheck`
    bind_v4: str = "0.0.0.0"
    bind_v6: str = "::"
    bind_port: int = 0
    stun_timeout: float = 2.0
    https_after: float = 1.0
    overall_timeout: float = 2.8
    dns_timeout: float = 1.0
    ca_file: str | None = None
    # SO_MARK on every probe socket (a full tunnel's owner probing past it); a callable is asked each time
    # a socket is opened, so a mark set while a run is under way (wg-quick's `wg set fwmark`) applies
    fwmark: int | Callable[[], int] = 0


async def _resolve_node(node: Node, timeout: float) -> Node:
    loop = asyncio.get_running_loop()
    found: dict[str, str] = {}
    for family, key, af in ((4, "ipv4", socket.AF_INET), (6, "ipv6", socket.AF_INET6)):
        if not node.needs_dns(family):
            continue
        try:
            infos = await asyncio.wait_for(loop.getaddrinfo(node.host_name, None, family=af,
                                                            type=socket.SOCK_DGRAM), timeout)
            found[key] = infos[0][4][0]
        except (OSError, asyncio.TimeoutError, IndexError) as exc:
            log.debug("no IPv%d address for %s (%s): %s", family, node.name, node.host_name, exc)
    return dataclasses.replace(node, **found) if found else node


async def resolve_regions(regions: list[Region], timeout: float) -> list[Region]:
    """Fill in the IP addresses of nodes that only have a host name (concurrently, bounded in time)."""
    async def one(region: Region) -> Region:
        nodes = await asyncio.gather(*(_resolve_node(n, timeout) for n in region.nodes))
        return dataclasses.replace(region, nodes=tuple(nodes))
    return list(await asyncio.gather(*(one(r) for r in regions)))


class SharedSocket(Protocol):
    """A UDP port owned by someone else (wgc's WireGuard port) that netcheck may probe through, so the
    STUN-mapped address is that port's mapping. The owner hands STUN answers to the attached callback."""

    def stun_send(self, data: bytes, dest: tuple, family: int) -> bool: ...

    def stun_attach(self, receive: Callable[[bytes, tuple], None] | None) -> None: ...


class _StunDriver:
    """Carries out a NetcheckRun's outputs on one socket per family (or a shared port) and re-arms its
    single timer."""

    def __init__(self, run: NetcheckRun, socks: dict[int, socket.socket],
                 shared: SharedSocket | None = None) -> None:
        self.run, self.socks, self.shared = run, socks, shared
        self.loop = asyncio.get_running_loop()
        self.done = asyncio.Event()
        self.first_answer = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._buf = bytearray(2048)
        for sock in socks.values():
            self.loop.add_reader(sock.fileno(), self._on_readable, sock)
        if shared is not None:
            shared.stun_attach(self.on_datagram)
        self._step(self.run.on_timer(self.loop.time()))

    def on_datagram(self, data: bytes, source: tuple) -> None:
        """A datagram from the shared port (STUN answers; anything else is counted by the run)."""
        self.run.on_datagram(bytes(data), source[:2], self.loop.time())
        self._step([])

    def _send(self, send: SendStun) -> bool:
        if self.shared is not None:
            return self.shared.stun_send(send.data, send.probe.dest, send.probe.family)
        sock = self.socks.get(send.probe.family)
        if sock is None:
            return False
        try:
            sock.sendto(send.data, send.probe.dest)
            return True
        except OSError as exc:
            log.debug("STUN send to %s failed: %s", send.probe.dest, exc)
            return False

    def _step(self, sends: list[SendStun]) -> None:
        for send in sends:
            self.run.on_sent(send.txid, self._send(send))
        if self.run.report.udp:
            self.first_answer.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.run.state is State.DONE:
            self.done.set()
            return
        deadline = self.run.next_deadline()
        if deadline is not None:
            self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._step(self.run.on_timer(self.loop.time()))

    def _on_readable(self, sock: socket.socket) -> None:
        for _ in range(64):
            try:
                n, source = sock.recvfrom_into(self._buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue
            self.run.on_datagram(bytes(self._buf[:n]), source[:2], self.loop.time())
        self._step([])

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.shared is not None:
            self.shared.stun_attach(None)
        for sock in self.socks.values():
            self.loop.remove_reader(sock.fileno())
            sock.close()


def _fwmark(options: NetcheckOptions) -> int:
    return options.fwmark() if callable(options.fwmark) else options.fwmark


def _open_socket(family: int, options: NetcheckOptions) -> socket.socket | None:
    """The probe socket of a family; None if the system cannot (no IPv6), UsageError for a bad explicit bind."""
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    host = options.bind_v4 if family == 4 else options.bind_v6
    explicit = options.bind_port != 0 or host not in ("0.0.0.0", "::")
    sock = socket.socket(af, socket.SOCK_DGRAM)
    try:
        mark(sock, _fwmark(options))
        if af == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setblocking(False)
        sock.bind((host, options.bind_port))
        return sock
    except OSError as exc:
        sock.close()
        if explicit:
            raise UsageError(f"cannot bind the IPv{family} probe socket to {host} port {options.bind_port}: "
                             f"{exc.strerror or exc}") from exc
        log.debug("cannot bind the IPv%d probe socket: %s", family, exc)
        return None


async def run_netcheck(regions: list[Region], *, history: History | None = None,
                       options: NetcheckOptions = NetcheckOptions(),
                       scores: dict[int, float] | None = None, shared: SharedSocket | None = None,
                       derp_heard: Mapping[int, float] | None = None) -> Report:
    """Make one report. `history` (if given) is updated and decides the preferred region.

    `shared`: probe through that port instead of sockets of our own. `derp_heard`: region id -> loop
    time of the last DERP frame from it (keeps a home region that still answers, netcheck.md §8).
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + options.overall_timeout
    wall = time.time()
    regions = await resolve_regions(regions, options.dns_timeout)
    by_id = {r.region_id: r for r in regions}
    has6 = interfaces.os_has_ipv6()
    dests = {f: [n.addr(f) for r in regions if r.measurable for n in r.nodes if n.addr(f)] for f in (4, 6)}
    have = {4: any(interfaces.routable(ip) for ip in dests[4]),
            6: has6 and any(interfaces.routable(ip) for ip in dests[6])}
    history = history if history is not None else History()
    last_full = history.last_full_at()
    full = options.force_full or last_full is None or wall - last_full > C.FULL_REPORT_INTERVAL
    config = NetcheckConfig(stun_timeout=options.stun_timeout,
                            enough_regions=100 if options.verbose else C.ENOUGH_REGIONS)
    if full:
        plan = make_full_plan(regions, have_v4=have[4], have_v6=have[6], config=config)
    else:
        last = history.last or (Report(region_latency=history.entries[-1].latency) if history.entries else Report())
        plan = make_incremental_plan(regions, last, have_v4=have[4], have_v6=have[6],
                                     home=history.preferred, config=config)
    families = {p.family for s in plan for p in s}
    socks = {} if shared is not None else \
        {f: s for f in families if (s := _open_socket(f, options)) is not None}
    run = NetcheckRun(plan, loop.time(), wall, os.urandom, full=full, config=config)
    driver = _StunDriver(run, socks, shared)
    tasks: dict[str, asyncio.Task] = {}
    try:
        gateway = interfaces.default_gateway_v4() if options.portmap else None
        if gateway is not None:
            tasks["portmap"] = asyncio.create_task(probe_portmap(*gateway))
        if full and options.captive_portal:
            tasks["captive"] = asyncio.create_task(_captive(regions, history.preferred, driver, options))
        await _wait_first(driver, options, start)
        if not run.report.udp:
            tasks["fallback"] = asyncio.create_task(_fallback(regions, run.report, options))
        await _wait_until(driver.done.wait(), deadline)
        if tasks:
            await asyncio.wait(tasks.values(), timeout=max(0.0, deadline - loop.time()))
    finally:
        driver.close()
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
    report = run.report
    report.os_has_ipv6 = has6
    _merge(report, tasks, options)
    history.add(report, full)
    history.preferred = report.preferred_derp = select_home(history, report, scores=scores,
                                                            derp_heard=derp_heard, now=loop.time(),
                                                            report_start=start)
    log.debug("netcheck done in %.0f ms (STUN phase: %s)", (loop.time() - start) * 1e3, run.done_reason)
    return report


async def _wait_until(aw, deadline: float) -> None:
    try:
        await asyncio.wait_for(aw, max(0.0, deadline - asyncio.get_running_loop().time()))
    except asyncio.TimeoutError:
        pass


async def _wait_first(driver: _StunDriver, options: NetcheckOptions, start: float) -> None:
    """Until the first STUN answer, the end of the STUN phase, or `https_after`."""
    waits = [asyncio.ensure_future(driver.done.wait()), asyncio.ensure_future(driver.first_answer.wait())]
    try:
        await asyncio.wait(waits, timeout=max(0.0, start + options.https_after - driver.loop.time()),
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


async def _captive(regions: list[Region], home: int, driver: _StunDriver, options: NetcheckOptions):
    await asyncio.sleep(0.2)
    if driver.run.report.udp and not options.verbose:
        return None
    ordered = sorted(regions, key=lambda r: r.region_id != home)
    nodes = [n for r in ordered if r.measurable and not r.avoid for n in r.nodes]
    return await detect_captive_portal(nodes)


async def _nothing() -> None:
    return None


async def _fallback(regions: list[Region], report: Report, options: NetcheckOptions):
    """§6: HTTPS and ICMP latency, in parallel, for every region STUN did not measure."""
    todo = [r for r in regions if r.measurable and not r.avoid and r.region_id not in report.region_latency]

    async def one(region: Region):
        first = region.nodes[0]
        icmp_ok = options.icmp and first.ipv4 is not None and first.stun_port is not None
        return await asyncio.gather(
            region_https_latency(region, ca_file=options.ca_file, fwmark=_fwmark(options))
            if region.https_nodes else _nothing(),
            icmp_latency(first.ipv4, first.name.encode(), fwmark=_fwmark(options)) if icmp_ok else _nothing())
    results = await asyncio.gather(*(one(r) for r in todo))
    return {r.region_id: res for r, res in zip(todo, results)}


def _merge(report: Report, tasks: dict[str, asyncio.Task], options: NetcheckOptions) -> None:
    def result(name: str):
        task = tasks.get(name)
        if task is None or not task.done() or task.cancelled() or task.exception() is not None:
            if task is not None and task.done() and not task.cancelled() and task.exception() is not None:
                log.warning("netcheck %s probe failed: %r", name, task.exception())
            return None
        return task.result()
    pm = result("portmap")
    if "portmap" in tasks:
        report.upnp, report.pmp, report.pcp = (pm.upnp, pm.pmp, pm.pcp) if pm else (False, False, False)
    report.captive_portal = result("captive")
    apply_fallback(report, result("fallback") or {})
