"""Interface configuration over netlink (pyroute2): MTU, addresses, link up, routes for AllowedIPs, and undo.

`auto_mtu()` picks the MTU when the config has none, as wg-quick: the route MTU to the endpoints minus 80.

`configure()` does what wg-quick does for a userspace interface, minus its policy routing:

* set the MTU, add each Address (IPv6 ones with NODAD, the tunnel has no neighbours), set the link up;
* for each AllowedIPs prefix, most specific first, add a route via the interface in the chosen table
  (Table = auto/main: the main table; a number: that table; off: no routes), unless a connected route
  of one of the interface's addresses already covers it (`ip route show dev X match P` in wg-quick);
* a default route prefix (0.0.0.0/0, ::/0) is added as its two halves (0.0.0.0/1 + 128.0.0.0/1, ::/1 +
  8000::/1): they win over the host's default route by length without replacing it, so `down` leaves
  the host's routing as it was. There is no policy routing yet, so the peer's endpoint must not be
  inside such a prefix (its packets would loop into the tunnel); a warning says so.

Links and addresses go through pyroute2's IPRoute. Routes, one per AllowedIPs prefix and so possibly
thousands, are sent as batches of RTM_NEWROUTE/RTM_DELROUTE messages on one netlink socket with one
ack each (`RouteBatch`): pyroute2 spends ~3 ms of Python per route message, which made a 1000-peer
`up` take seconds; the batch takes a few milliseconds.

It records exactly what it changed in `Applied` (an address or route that was already there is not
recorded), and `unconfigure(applied)` undoes exactly that (routes, addresses, link up, MTU). Any failure undoes the partial work and
raises UsageError with the netlink reason. pyroute2's synchronous IPRoute runs its own event loop, so
when called from a running asyncio loop the netlink work is done in a short-lived helper thread.
"""
from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import socket
import struct
import threading
from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network
from typing import Callable, Iterable, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..errors import UsageError

log = logging.getLogger(__name__)

Network = IPv4Network | IPv6Network
Interface = IPv4Interface | IPv6Interface
T = TypeVar("T")

MAIN_TABLE = 254
IFA_F_NODAD = 0x02
IFF_UP = 0x1
_DEFAULT_HALVES = {
    ipaddress.ip_network("0.0.0.0/0"): (ipaddress.ip_network("0.0.0.0/1"), ipaddress.ip_network("128.0.0.0/1")),
    ipaddress.ip_network("::/0"): (ipaddress.ip_network("::/1"), ipaddress.ip_network("8000::/1")),
}


@dataclass
class Applied:
    """What configure() added, so that unconfigure() removes exactly that."""

    name: str
    index: int
    table: int | None                                  # None: Table = off, no routes
    old_mtu: int | None = None                         # set back by unconfigure
    set_up: bool = False                               # configure brought the link up
    addresses: list[Interface] = field(default_factory=list)
    routes: list[Network] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def table_number(table: str) -> int | None:
    if table in ("auto", "main"):
        return MAIN_TABLE
    if table == "off":
        return None
    if table.isdigit() and 0 < int(table) < 1 << 32:
        return int(table)
    raise UsageError(f"invalid routing table {table!r}")


def plan_routes(addresses: Iterable[Interface], allowed_ips: Iterable[Network]) -> tuple[list[Network], list[str]]:
    """The routes to add for allowed_ips (most specific first) and the warnings to give. Pure."""
    connected = [a.network for a in addresses]
    routes: list[Network] = []
    planned: set[Network] = set()
    warnings: list[str] = []
    for net in sorted(set(allowed_ips), key=lambda n: (n.version, -n.prefixlen, n)):
        if net in _DEFAULT_HALVES:
            warnings.append(f"AllowedIPs {net} routes all {'IPv4' if net.version == 4 else 'IPv6'} traffic into "
                            "the tunnel; wgc has no policy routing yet, so peer endpoints must not be reachable "
                            "only through it")
            candidates = list(_DEFAULT_HALVES[net])
        else:
            candidates = [net]
        for c in candidates:
            if any(c.version == n.version and c.subnet_of(n) for n in connected):
                continue
            if c not in planned:
                planned.add(c)
                routes.append(c)
    return routes, warnings


def _off_loop(fn: Callable[[], T]) -> T:
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


# ---- batched route messages (linux/rtnetlink.h) ----

RTM_NEWROUTE, RTM_DELROUTE, NLMSG_ERROR = 24, 25, 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
RTA_DST, RTA_OIF, RTA_TABLE = 1, 4, 15
RTPROT_STATIC, RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_NOWHERE, RTN_UNICAST = 4, 0, 253, 255, 1
RT_TABLE_UNSPEC = 0
_NLMSGHDR = struct.Struct("=IHHII")
_RTMSG = struct.Struct("=BBBBBBBBI")
_BATCH = 64            # messages per send: each ack costs ~1 KiB of the receive buffer until read
SOL_NETLINK = 270
_NETLINK_CAP_ACK = 10  # error acks without a copy of the request


def _rta(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + bytes((4 - length % 4) % 4)


def route_message(op: int, net: Network, oif: int, table: int, seq: int) -> bytes:
    """One RTM_NEWROUTE (create, fail if present) or RTM_DELROUTE message for `net dev oif table T`."""
    family = socket.AF_INET if net.version == 4 else socket.AF_INET6
    if op == RTM_NEWROUTE:
        flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
        scope = RT_SCOPE_LINK if net.version == 4 else RT_SCOPE_UNIVERSE
    else:
        flags, scope = NLM_F_REQUEST | NLM_F_ACK, RT_SCOPE_NOWHERE
    body = _RTMSG.pack(family, net.prefixlen, 0, 0, table if table < 256 else RT_TABLE_UNSPEC, RTPROT_STATIC,
                       scope, RTN_UNICAST, 0)
    body += _rta(RTA_DST, net.network_address.packed) + _rta(RTA_OIF, struct.pack("=I", oif))
    body += _rta(RTA_TABLE, struct.pack("=I", table))
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), op, flags, seq, 0) + body


def route_batch(op: int, nets: list[Network], oif: int, table: int) -> list[int]:
    """Send one route message per prefix in batches; returns each one's errno (0 = done)."""
    results = [0] * len(nets)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.setsockopt(SOL_NETLINK, _NETLINK_CAP_ACK, 1)
        sock.bind((0, 0))
        start = 0
        while start < len(nets):
            end = min(start + _BATCH, len(nets))
            sock.sendall(b"".join(route_message(op, nets[i], oif, table, seq=i + 1) for i in range(start, end)))
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


# ---- MTU ----

WG_OVERHEAD = 80       # what wg-quick subtracts: IPv6 header 40 + UDP 8 + WireGuard 32
FALLBACK_MTU = 1500


def plan_mtu(path_mtus: Iterable[int], default_route_mtu: int | None) -> int:
    """wg-quick's rule: the largest path MTU to an endpoint, else the default route's, else 1500; minus 80."""
    best = max((m for m in path_mtus if m > 0), default=0) or default_route_mtu or FALLBACK_MTU
    return best - WG_OVERHEAD


def _route_mtu(ipr: IPRoute, msg) -> int | None:
    metrics = msg.get_attr("RTA_METRICS")
    for name, value in (metrics or {}).get("attrs", []):
        if name == "RTAX_MTU" and value:
            return value
    oif = msg.get_attr("RTA_OIF")
    if oif:
        return ipr.link("get", index=oif)[0].get_attr("IFLA_MTU")
    return None


def auto_mtu(endpoints: Iterable[str]) -> int:
    """The MTU for an interface without `MTU =`: `ip route get` each endpoint (a route's or a cached path
    MTU, else its device's), else the default route (`ip route show default`), as wg-quick's set_mtu_up."""
    def run() -> int:
        found: list[int] = []
        with IPRoute() as ipr:
            for ip in dict.fromkeys(endpoints):
                try:
                    found += [m for msg in ipr.route("get", dst=ip)[:1] if (m := _route_mtu(ipr, msg))]
                except NetlinkError:
                    continue        # unreachable now: as wg-quick, it simply does not count
            default = None
            if not found:
                for family in (socket.AF_INET, socket.AF_INET6):
                    routes = [r for r in ipr.route("dump", family=family, table=MAIN_TABLE) if r["dst_len"] == 0]
                    if routes and (default := _route_mtu(ipr, routes[0])):
                        break
        return plan_mtu(found, default)
    return _off_loop(run)


def _reason(e: NetlinkError) -> str:
    return f"{errno.errorcode.get(e.code, e.code)}: {e.args[1] if len(e.args) > 1 else e}"


def configure(name: str, addresses: Iterable[Interface], mtu: int, allowed_ips: Iterable[Network],
              table: str = "auto") -> Applied:
    """Configure interface `name`; returns what was added. Raises UsageError (after undoing) on failure."""
    addresses = list(dict.fromkeys(addresses))
    table_id = table_number(table)
    routes, warnings = plan_routes(addresses, allowed_ips) if table_id is not None else ([], [])
    return _off_loop(lambda: _configure(name, addresses, mtu, routes, table_id, warnings))


def _configure(name: str, addresses: list[Interface], mtu: int, routes: list[Network], table_id: int | None,
               warnings: list[str]) -> Applied:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            raise UsageError(f"no interface named {name!r}")
        applied = Applied(name=name, index=found[0], table=table_id, warnings=list(warnings))
        link = ipr.link("get", index=applied.index)[0]
        step = "setting the MTU"
        try:
            old_mtu = link.get_attr("IFLA_MTU")
            if old_mtu != mtu:
                ipr.link("set", index=applied.index, mtu=mtu)
                applied.old_mtu = old_mtu
            for addr in addresses:
                step = f"adding address {addr}"
                if _add(lambda: ipr.addr("add", index=applied.index, address=str(addr.ip),
                                         prefixlen=addr.network.prefixlen,
                                         **({"flags": IFA_F_NODAD} if addr.version == 6 else {}))):
                    applied.addresses.append(addr)
                else:
                    log.warning("%s: address %s was already present; it will be left in place", name, addr)
            step = "setting the link up"
            if not link["flags"] & IFF_UP:
                ipr.link("set", index=applied.index, state="up")
                applied.set_up = True
            if routes:
                assert table_id is not None
                codes = route_batch(RTM_NEWROUTE, routes, applied.index, table_id)
                applied.routes = [net for net, code in zip(routes, codes) if code == 0]
                for net, code in zip(routes, codes):
                    if code == errno.EEXIST:
                        applied.warnings.append(f"route {net} already exists in table {table_id}; not touched")
                    elif code:
                        step = f"adding route {net}"
                        raise NetlinkError(code, os.strerror(code))
        except NetlinkError as e:
            _unconfigure(ipr, applied)
            raise UsageError(f"configuring {name}: {step} failed: {_reason(e)}") from None
        except OSError as e:
            _unconfigure(ipr, applied)
            raise UsageError(f"configuring {name}: {step} failed: {e.strerror or e}") from None
    for w in applied.warnings:
        log.warning("%s: %s", name, w)
    shown = ", ".join(str(r) for r in applied.routes[:8]) + (", ..." if len(applied.routes) > 8 else "")
    log.info("%s: mtu %d, addresses %s, %d routes (%s)", name, mtu, [str(a) for a in applied.addresses],
             len(applied.routes), shown)
    return applied


def _add(call: Callable[[], object]) -> bool:
    """Do a netlink add; False if the object already existed."""
    try:
        call()
        return True
    except NetlinkError as e:
        if e.code == errno.EEXIST:
            return False
        raise


def unconfigure(applied: Applied) -> None:
    """Remove exactly the routes and addresses configure() added (gone interfaces are fine)."""
    def run() -> None:
        with IPRoute() as ipr:
            _unconfigure(ipr, applied)
    _off_loop(run)


def _unconfigure(ipr: IPRoute, applied: Applied) -> None:
    if applied.routes and applied.table is not None:
        codes = route_batch(RTM_DELROUTE, applied.routes[::-1], applied.index, applied.table)
        for net, code in zip(applied.routes[::-1], codes):
            if code not in (0, errno.ENODEV, errno.ESRCH, errno.ENOENT):
                log.warning("could not remove route %s: %s", net, os.strerror(code))
    for addr in reversed(applied.addresses):
        _remove(lambda: ipr.addr("del", index=applied.index, address=str(addr.ip), prefixlen=addr.network.prefixlen),
                f"address {addr}")
    if applied.set_up:
        _remove(lambda: ipr.link("set", index=applied.index, state="down"), "the link's up state")
    if applied.old_mtu is not None:
        _remove(lambda: ipr.link("set", index=applied.index, mtu=applied.old_mtu), "the MTU change")
    applied.routes.clear()
    applied.addresses.clear()
    applied.set_up, applied.old_mtu = False, None


def _remove(call: Callable[[], object], what: str) -> None:
    try:
        call()
    except NetlinkError as e:
        if e.code not in (errno.ENODEV, errno.ESRCH, errno.EADDRNOTAVAIL, errno.ENOENT):
            log.warning("could not remove %s: %s", what, _reason(e))
