"""Interface configuration over netlink (pyroute2): MTU, addresses, link up, routes for AllowedIPs, and undo.

`configure()` does what wg-quick does for a userspace interface, minus its policy routing:

* set the MTU, add each Address (IPv6 ones with NODAD, the tunnel has no neighbours), set the link up;
* for each AllowedIPs prefix, most specific first, add a route via the interface in the chosen table
  (Table = auto/main: the main table; a number: that table; off: no routes), unless a connected route
  of one of the interface's addresses already covers it (`ip route show dev X match P` in wg-quick);
* a default route prefix (0.0.0.0/0, ::/0) is added as its two halves (0.0.0.0/1 + 128.0.0.0/1, ::/1 +
  8000::/1): they win over the host's default route by length without replacing it, so `down` leaves
  the host's routing as it was. There is no policy routing yet, so the peer's endpoint must not be
  inside such a prefix (its packets would loop into the tunnel); a warning says so.

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
            if c not in routes:
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
            for net in routes:
                step = f"adding route {net}"
                if _add(lambda: ipr.route("add", dst=str(net), oif=applied.index, table=table_id)):
                    applied.routes.append(net)
                else:
                    applied.warnings.append(f"route {net} already exists in table {table_id}; not touched")
        except NetlinkError as e:
            _unconfigure(ipr, applied)
            raise UsageError(f"configuring {name}: {step} failed: {_reason(e)}") from None
    for w in applied.warnings:
        log.warning("%s: %s", name, w)
    log.info("%s: mtu %d, addresses %s, routes %s", name, mtu, [str(a) for a in applied.addresses],
             [str(r) for r in applied.routes])
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
    for net in reversed(applied.routes):
        _remove(lambda: ipr.route("del", dst=str(net), oif=applied.index, table=applied.table), f"route {net}")
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
