"""A real TUN device and netlink configuration inside a network namespace this test creates.

The test process enters the namespace (pyroute2 pushns) only around each test body, so the TUN device,
sockets and netlink calls all live in it; everything disappears with the namespace.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import select
import socket
import struct
import subprocess

import pytest

from natprobe.icmp import checksum  # the RFC 1071 Internet checksum
from tests.support.prereq import require_root
from tools.natlab.netns import Lab
from wgclient.aio import netconf
from wgclient.aio.tun import VNET_HDR_LEN, open_tun
from wgclient.errors import UsageError

pytestmark = [pytest.mark.netns, pytest.mark.timeout(30)]
net = ipaddress.ip_network
iface = ipaddress.ip_interface


@pytest.fixture
def ns():
    require_root()
    from pyroute2 import netns
    lab = Lab()
    try:
        namespace = lab.namespace("tun")
        netns.pushns(namespace.name)
        try:
            yield namespace
        finally:
            netns.popns()
    finally:
        lab.close()


def ip_json(*args: str) -> list:
    # (ip exits 2 for an empty table that does not exist yet: that is an empty list)
    proc = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, timeout=10)
    return json.loads(proc.stdout) if proc.returncode == 0 and proc.stdout.strip() else []


def addresses(name: str) -> set[str]:
    return {f"{a['local']}/{a['prefixlen']}" for link in ip_json("addr", "show", "dev", name)
            for a in link.get("addr_info", []) if not a["local"].startswith("fe80")}


def routes(name: str | None = None, table: str = "main") -> set[str]:
    dev = ["dev", name] if name else []
    out = set()
    for family in ("-4", "-6"):
        for r in ip_json(family, "route", "show", "table", table, *dev):
            if r["dst"].startswith("fe80") or r.get("type") in ("local", "broadcast", "multicast"):
                continue
            out.add(f"{r['dst']} {r.get('dev', name or '')}")
    return out


def udp_packet(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    length = 8 + len(payload)
    if s.version == 4:
        udp = struct.pack("!HHHH", sport, dport, length, 0) + payload  # checksum 0 = none (IPv4 only)
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, 0, 0, 64, 17, 0, s.packed, d.packed)
        return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:] + udp
    pseudo = s.packed + d.packed + struct.pack("!IxxxB", length, 17)
    udp = struct.pack("!HHHH", sport, dport, length, 0) + payload
    csum = checksum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
    return struct.pack("!IHBB16s16s", 0x60000000, length, 17, 64, s.packed, d.packed) + udp


def read_packet(fd: int, timeout: float = 3.0) -> bytes:
    r, _, _ = select.select([fd], [], [], timeout)
    assert r, "no packet arrived on the TUN fd"
    return os.read(fd, 65536)


def read_udp_to(fd: int, dst: str, timeout: float = 3.0) -> bytes:
    """Read packets until a UDP one to dst shows up (the kernel also sends e.g. IPv6 router solicitations)."""
    want = ipaddress.ip_address(dst)
    for _ in range(20):
        pkt = read_packet(fd, timeout)
        if pkt[0] >> 4 == 4 and pkt[9] == 17 and pkt[16:20] == want.packed:
            return pkt
        if pkt[0] >> 4 == 6 and pkt[6] == 17 and pkt[24:40] == want.packed:
            return pkt
    raise AssertionError(f"no UDP packet to {dst}")


def test_open_tun_flags_mtu_nonblocking(ns):
    with open_tun("wgt0", 1380) as tun:
        link = ip_json("-d", "link", "show", "dev", "wgt0")[0]
        assert tun.name == "wgt0" and link["mtu"] == 1380 and tun.mtu == 1380
        info = link["linkinfo"]["info_data"]
        assert (info["type"], info["pi"], info["vnet_hdr"]) == ("tun", False, False)
        with pytest.raises(BlockingIOError):
            os.read(tun.fd, 2000)
    assert not any(link["ifname"] == "wgt0" for link in ip_json("link"))   # gone with the fd


def test_vnet_hdr_device(ns):
    with open_tun("wgt1", 1420, vnet_hdr=True) as tun:
        info = ip_json("-d", "link", "show", "dev", "wgt1")[0]["linkinfo"]["info_data"]
        assert info["vnet_hdr"] is True and tun.vnet_hdr
        netconf.configure("wgt1", [iface("10.61.0.1/24")], 1420, [net("10.62.0.0/16")])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"hello-vnet", ("10.62.0.9", 5000))
            pkt = read_udp_to_vnet(tun.fd, "10.62.0.9")
        assert pkt[VNET_HDR_LEN:][-10:] == b"hello-vnet"


def read_udp_to_vnet(fd: int, dst: str) -> bytes:
    want = ipaddress.ip_address(dst).packed
    for _ in range(20):
        pkt = read_packet(fd)
        inner = pkt[VNET_HDR_LEN:]
        if inner[0] >> 4 == 4 and inner[16:20] == want:
            return pkt
    raise AssertionError("no packet")


@pytest.mark.parametrize("local,remote,addr,allowed", [
    ("10.51.0.1", "10.52.0.7", "10.51.0.1/24", "10.52.0.0/16"),
    ("fd51::1", "fd52::7", "fd51::1/64", "fd52::/48"),
])
def test_packets_both_ways_through_the_fd(ns, local, remote, addr, allowed):
    with open_tun("wgt2", 1420) as tun:
        applied = netconf.configure("wgt2", [iface(addr)], 1420, [net(allowed)])
        assert addresses("wgt2") == {addr}
        assert ip_json("link", "show", "dev", "wgt2")[0]["operstate"] in ("UNKNOWN", "UP")
        family = socket.AF_INET if ":" not in local else socket.AF_INET6
        with socket.socket(family, socket.SOCK_DGRAM) as rx:
            rx.bind((local, 0))
            rx.settimeout(3)
            port = rx.getsockname()[1]
            # out: a socket in the namespace sends to a prefix routed into the TUN, we read it from the fd
            rx.sendto(b"outbound-payload", (remote, 4000))
            pkt = read_udp_to(tun.fd, remote)
            assert pkt.endswith(b"outbound-payload")
            # in: we write a packet to the fd, the kernel delivers it to the socket
            os.write(tun.fd, udp_packet(remote, local, 4000, port, b"inbound-payload"))
            data, src = rx.recvfrom(100)
            assert data == b"inbound-payload" and src[0] == remote
        netconf.unconfigure(applied)
        assert addresses("wgt2") == set() and routes("wgt2") == set()


def test_unconfigure_removes_exactly_what_was_added(ns):
    ns.run("ip", "link", "add", "dum0", "type", "veth", "peer", "name", "dum0p")
    ns.run("ip", "addr", "add", "10.70.0.1/24", "dev", "dum0")
    ns.run("ip", "link", "set", "dum0", "up")
    ns.run("ip", "link", "set", "dum0p", "up")
    with open_tun("wgt3", 1420) as tun:
        ns.run("ip", "addr", "add", "10.71.0.1/24", "dev", "wgt3")           # present before configure
        before_addrs, before_routes = addresses("wgt3"), routes()
        applied = netconf.configure(
            "wgt3", [iface("10.71.0.1/24"), iface("10.72.0.1/32"), iface("fd72::1/64")], 1400,
            [net("10.71.0.0/25"),            # inside a connected prefix: no route (as wg-quick)
             net("10.73.0.0/16"), net("10.73.5.0/24"), net("fd73::/64"), net("10.72.0.1/32"),
             net("10.74.0.0/16"), net("10.74.0.0/16")])
        assert applied.addresses == [iface("10.72.0.1/32"), iface("fd72::1/64")]
        assert applied.routes == [net("10.73.5.0/24"), net("10.73.0.0/16"), net("10.74.0.0/16"), net("fd73::/64")]
        assert addresses("wgt3") == {"10.71.0.1/24", "10.72.0.1/32", "fd72::1/64"}
        assert {"10.73.0.0/16 wgt3", "10.73.5.0/24 wgt3", "10.74.0.0/16 wgt3", "fd73::/64 wgt3"} <= routes()
        assert ip_json("link", "show", "dev", "wgt3")[0]["mtu"] == 1400
        netconf.unconfigure(applied)
        assert addresses("wgt3") == before_addrs == {"10.71.0.1/24"}
        assert routes() == before_routes
        assert "10.70.0.0/24 dum0" in routes()
        link = ip_json("link", "show", "dev", "wgt3")[0]
        assert link["mtu"] == 1420 and "UP" not in link["flags"]    # MTU and down state restored


def test_default_routes_go_to_the_full_tunnel_table(ns):
    """Table = auto with a /0: the default routes go into the mark's table (policy rules are
    policyroute.py's), the other prefixes into main, as wg-quick; no /1 halves any more."""
    with open_tun("wgt4", 1420):
        before_main, before_t = routes(), routes(table="51820")
        applied = netconf.configure("wgt4", [iface("10.80.0.2/32"), iface("fd80::2/128")], 1420,
                                    [net("0.0.0.0/0"), net("::/0"), net("10.81.0.0/16")], default_table=51820)
        for family in ("-4", "-6"):
            assert [(r["dst"], r["dev"]) for r in ip_json(family, "route", "show", "table", "51820")] == \
                [("default", "wgt4")]
        assert "10.81.0.0/16 wgt4" in routes()
        assert not any(r.split()[0] in ("default", "0.0.0.0/1", "128.0.0.0/1", "::/1", "8000::/1") for r in routes())
        assert applied.default_routes == [net("0.0.0.0/0"), net("::/0")] and not applied.warnings
        netconf.unconfigure(applied)
        assert routes() == before_main and routes(table="51820") == before_t == set()


def test_table_number_and_off(ns):
    with open_tun("wgt5", 1420):
        applied = netconf.configure("wgt5", [iface("10.90.0.1/24")], 1420, [net("10.91.0.0/16")], table="1234")
        assert routes("wgt5", table="1234") == {"10.91.0.0/16 wgt5"}
        assert "10.91.0.0/16 wgt5" not in routes()
        netconf.unconfigure(applied)
        assert routes("wgt5", table="1234") == set()
        applied = netconf.configure("wgt5", [iface("10.90.0.1/24")], 1420, [net("10.91.0.0/16")], table="off")
        assert applied.routes == [] and "10.91.0.0/16 wgt5" not in routes()
        netconf.unconfigure(applied)


def test_failure_undoes_partial_work(ns):
    with open_tun("wgt6", 1000):
        # the kernel refuses IPv6 on a link with MTU < 1280: the IPv4 address added before must go again
        with pytest.raises(UsageError, match=r"configuring wgt6: adding address fd98::1/64 failed: EINVAL"):
            netconf.configure("wgt6", [iface("10.98.0.1/24"), iface("fd98::1/64")], 1000, [net("10.99.0.0/16")])
        assert addresses("wgt6") == set() and routes("wgt6") == set()


def test_route_failure_undoes_routes_addresses_and_link_state(ns):
    with open_tun("wgt6", 1000):
        # no IPv6 on a link with MTU < 1280: the IPv6 route fails in the middle of the batch
        with pytest.raises(UsageError, match=r"configuring wgt6: adding route fd02::/64 failed: ENODEV"):
            netconf.configure("wgt6", [iface("10.1.0.1/24")], 1000,
                              [net("10.2.0.0/16"), net("fd02::/64"), net("10.3.0.0/16")])
        assert addresses("wgt6") == set() and routes("wgt6") == set()
        assert "UP" not in ip_json("link", "show", "dev", "wgt6")[0]["flags"]


def test_many_routes_in_batches(ns):
    nets = [net(f"10.{100 + i // 250}.{i % 250}.0/24") for i in range(1500)] + \
           [net(f"fd99:{i:x}::/64") for i in range(500)]
    with open_tun("wgt10", 1420):
        applied = netconf.configure("wgt10", [iface("10.99.0.1/16"), iface("fd98::1/64")], 1420, nets)
        assert len(applied.routes) == 2000
        assert len(routes("wgt10")) == 2000 + 2           # plus the two connected routes
        netconf.unconfigure(applied)
        assert routes("wgt10") == set()


def test_bad_mtu_is_usage_error_and_nothing_stays(ns):
    with open_tun("wgt7", 1420):
        with pytest.raises(UsageError, match="setting the MTU failed"):
            netconf.configure("wgt7", [iface("10.97.0.1/24")], 70000, [net("10.96.0.0/16")])
        assert addresses("wgt7") == set() and routes("wgt7") == set()


def test_missing_interface_and_bad_table(ns):
    with pytest.raises(UsageError, match="no interface named 'nope0'"):
        netconf.configure("nope0", [], 1420, [])
    with pytest.raises(UsageError, match="invalid routing table"):
        netconf.configure("nope0", [], 1420, [], table="bogus")


def test_configure_from_a_running_event_loop(ns):
    async def main():
        with open_tun("wgt8", 1420):
            applied = netconf.configure("wgt8", [iface("10.95.0.1/24")], 1420, [net("10.94.0.0/16")])
            assert addresses("wgt8") == {"10.95.0.1/24"} and "10.94.0.0/16 wgt8" in routes()
            netconf.unconfigure(applied)
            assert addresses("wgt8") == set()
    asyncio.run(main())


def test_open_tun_errors(ns):
    with pytest.raises(OSError, match="invalid interface name"):
        open_tun("x" * 16, 1420)
    ns.run("ip", "link", "add", "dum1", "type", "veth", "peer", "name", "dum1p")
    with pytest.raises(OSError, match="not a TUN device"):
        open_tun("dum1", 1420)
    with open_tun("wgt9", 1420):
        with pytest.raises(OSError, match="in use by another process"):
            open_tun("wgt9", 1420)
    with pytest.raises(OSError, match="setting MTU 70000 on wgt11"):
        open_tun("wgt11", 70000)
    assert not any(link["ifname"] == "wgt11" for link in ip_json("link"))


# ---- the pure route planning, as a property (no namespace needed) ----

from hypothesis import given, strategies as st  # noqa: E402

_v4 = st.builds(lambda a, n: ipaddress.ip_network(f"{ipaddress.IPv4Address(a)}/{n}", strict=False),
                st.integers(0, 2**32 - 1), st.integers(0, 32))
_v6 = st.builds(lambda a, n: ipaddress.ip_network(f"{ipaddress.IPv6Address(a)}/{n}", strict=False),
                st.integers(0, 2**128 - 1), st.integers(0, 128))
_ifaces = st.builds(lambda n, host: ipaddress.ip_interface(f"{n.network_address + (host % n.num_addresses)}/{n.prefixlen}"),
                    st.one_of(_v4, _v6), st.integers(0, 2**64))


@given(st.lists(_ifaces, max_size=3), st.lists(st.one_of(_v4, _v6, st.sampled_from([net("0.0.0.0/0"), net("::/0")])),
                                               max_size=12), st.booleans())
def test_plan_routes_covers_every_prefix_once(addrs, allowed, full):
    planned, defaults = netconf.plan_routes(addrs, allowed, full_tunnel=full)
    connected = [a.network for a in addrs]
    assert len(planned) == len(set(planned))
    assert defaults == ([n for n in sorted(set(allowed), key=lambda n: n.version) if n.prefixlen == 0] if full else [])
    for n in allowed:
        assert n in planned or n in defaults or any(n.version == c.version and n.subnet_of(c) for c in connected)
    for r in planned:   # nothing planned that was not asked for, nothing already connected
        assert r in allowed and not any(r.version == c.version and r.subnet_of(c) for c in connected)
    for a, b in zip(planned, planned[1:]):   # most specific first, as wg-quick sorts them
        assert a.version < b.version or (a.version == b.version and a.prefixlen >= b.prefixlen)
