"""Interface configuration over netlink (pyroute2): MTU, addresses, link up, routes for AllowedIPs, and undo.

`auto_mtu()` picks the MTU when the config has none, as wg-quick: the route MTU to the endpoints minus 80.

`configure()` does what wg-quick does for a userspace interface:

* set the MTU, add each Address (IPv6 ones with NODAD, the tunnel has no neighbours), set the link up;
* for each AllowedIPs prefix, most specific first, add a route via the interface in the chosen table
  (Table = auto/main: the main table; a number: that table; off: no routes), unless a connected route
  of one of the interface's addresses already covers it (`ip route show dev X match P` in wg-quick);
* with Table = auto, a default route prefix (0.0.0.0/0, ::/0) goes into the full-tunnel table instead
  (`default_table`, the firewall mark's number, as wg-quick's add_default); the policy rules that send
  unmarked traffic there are policyroute.py's.

Routes, one per AllowedIPs prefix and so possibly thousands, are sent as batches of netlink messages
(rtnl.py); links and addresses go through pyroute2's IPRoute.

It records exactly what it changed in `Applied` (an address or route that was already there is not
recorded), and `unconfigure(applied)` undoes exactly that (routes, addresses, link up, MTU). Any failure undoes the partial work and
raises UsageError with the netlink reason. pyroute2's synchronous IPRoute runs its own event loop, so
when called from a running asyncio loop the netlink work is done in a short-lived helper thread
(`rtnl.off_loop`).
"""
from __future__ import annotations

import errno
import logging
import os
import socket
from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network
from typing import Callable, Iterable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..errors import UsageError
from .rtnl import RTM_DELROUTE, RTM_NEWROUTE, off_loop, route_batch

log = logging.getLogger(__name__)

Network = IPv4Network | IPv6Network
Interface = IPv4Interface | IPv6Interface

MAIN_TABLE = 254
IFA_F_NODAD = 0x02
IFF_UP = 0x1


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
    default_table: int | None = None                   # the full-tunnel table of the default routes
    default_routes: list[Network] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def table_number(table: str) -> int | None:
    if table in ("auto", "main"):
        return MAIN_TABLE
    if table == "off":
        return None
    if table.isdigit() and 0 < int(table) < 1 << 32:
        return int(table)
    raise UsageError(f"invalid routing table {table!r}")


def plan_routes(addresses: Iterable[Interface], allowed_ips: Iterable[Network], *,
                full_tunnel: bool = False) -> tuple[list[Network], list[Network]]:
    """(routes for the interface's table, default routes for the full-tunnel table), most specific first.

    A prefix inside a connected subnet of an address gets no route; with `full_tunnel` the /0 prefixes
    are the second list, else they are routes like any other. Pure."""
    connected = [a.network for a in addresses]
    routes: list[Network] = []
    defaults: list[Network] = []
    for net in sorted(set(allowed_ips), key=lambda n: (n.version, -n.prefixlen, n)):
        if full_tunnel and net.prefixlen == 0:
            defaults.append(net)
        elif not any(net.version == n.version and net.subnet_of(n) for n in connected):
            routes.append(net)
    return routes, defaults


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
    return off_loop(run)


def _reason(e: NetlinkError) -> str:
    return f"{errno.errorcode.get(e.code, e.code)}: {e.args[1] if len(e.args) > 1 else e}"


def configure(name: str, addresses: Iterable[Interface], mtu: int, allowed_ips: Iterable[Network],
              table: str = "auto", default_table: int | None = None) -> Applied:
    """Configure interface `name`; returns what was added. Raises UsageError (after undoing) on failure.

    `default_table` (with Table = auto): the full tunnel's table, where the /0 prefixes are routed."""
    addresses = list(dict.fromkeys(addresses))
    table_id = table_number(table)
    full = table == "auto" and default_table is not None
    routes, defaults = plan_routes(addresses, allowed_ips, full_tunnel=full) if table_id is not None else ([], [])
    return off_loop(lambda: _configure(name, addresses, mtu, routes, table_id, defaults,
                                       default_table if full else None))


def _configure(name: str, addresses: list[Interface], mtu: int, routes: list[Network], table_id: int | None,
               defaults: list[Network], default_table: int | None) -> Applied:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            raise UsageError(f"no interface named {name!r}")
        applied = Applied(name=name, index=found[0], table=table_id, default_table=default_table)
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
            for nets, tid, done in ((routes, table_id, applied.routes),
                                    (defaults, default_table, applied.default_routes)):
                if not nets:
                    continue
                assert tid is not None
                codes = route_batch(RTM_NEWROUTE, nets, applied.index, tid)
                done += [net for net, code in zip(nets, codes) if code == 0]
                for net, code in zip(nets, codes):
                    if code == errno.EEXIST:
                        applied.warnings.append(f"route {net} already exists in table {tid}; not touched")
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
    extra = (f"; {', '.join(map(str, applied.default_routes))} in table {default_table}"
             if applied.default_routes else "")
    log.info("%s: mtu %d, addresses %s, %d routes (%s)%s", name, mtu, [str(a) for a in applied.addresses],
             len(applied.routes), shown, extra)
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
    off_loop(run)


def _unconfigure(ipr: IPRoute, applied: Applied) -> None:
    for nets, tid in ((applied.default_routes, applied.default_table), (applied.routes, applied.table)):
        if nets and tid is not None:
            codes = route_batch(RTM_DELROUTE, nets[::-1], applied.index, tid)
            for net, code in zip(nets[::-1], codes):
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
    applied.default_routes.clear()
    applied.addresses.clear()
    applied.set_up, applied.old_mtu = False, None


def _remove(call: Callable[[], object], what: str) -> None:
    try:
        call()
    except NetlinkError as e:
        if e.code not in (errno.ENODEV, errno.ESRCH, errno.EADDRNOTAVAIL, errno.ENOENT):
            log.warning("could not remove %s: %s", what, _reason(e))
