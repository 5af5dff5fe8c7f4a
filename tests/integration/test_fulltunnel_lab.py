"""issue 12's full tunnel in the NAT lab: a client with `AllowedIPs = 0.0.0.0/0, ::/0` whose server endpoint,
DERP relay and STUN server all sit inside those prefixes.

client1 (behind a cone NAT, rp_filter strict) runs the full tunnel to a server in client2 (public address
198.19.2.2), which forwards and masquerades for it and has a LAN host 172.30.0.2 behind it; the relay
(`wgc derper`, TLS + STUN) is 198.18.1.2. Checked with wgc (relayed with UDP cut, then direct) and, as
the reference, with wireguard-go configured by Debian's wg-quick from the same file (direct; it has no
DERP): ping and a 20 MiB sha256-checked transfer to the LAN host; a ping to the lab's "internet"
(198.18.1.3) answers while a capture on the client's uplink sees no ICMP, only WireGuard, STUN and DERP;
`ip rule` while up is the same text for both; after `down` the rules, every routing table, the
nftables tables and the namespace's resolv.conf are exactly as before (`DNS =` is in the file)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pytest

from tests.integration.pathlab import PathLab, PathPeer, Timeline
from tests.integration.peers import genkey, pubkey, start_transfer
from tests.support.netns_resolv import ORIGINAL, NetnsResolv, host_resolv
from tests.support.prereq import require_binary, require_root
from tools.natlab.lab import RegionSpec
from tools.natlab.netns import Lab, link, unique_name

pytestmark = [pytest.mark.netns]
SIZE = 20 * 1024 * 1024
LAN_HOST = "172.30.0.2"
INTERNET_HOST = "198.18.1.3"       # region 1's second address: reachable only by routing through the lab
CLIENT_IP, SERVER_IP = "100.90.0.1", "100.90.0.2"
CLIENT_IP6, SERVER_IP6 = "fd7a:90::1", "fd7a:90::2"
PORT = 41641
RESULTS: dict[str, dict] = {}


class TunnelPeer(PathPeer):
    """A PathPeer whose whole config text is given (the full tunnel's peer section)."""

    def __init__(self, pl, client, text_of, *, name: str | None = None, private_key: str | None = None):
        super().__init__(pl, client, pl.derpmap_file)
        if name:
            self.name = name
        if private_key:
            self.private_key, self.public_key = private_key, pubkey(private_key)
        self.text_of = text_of
        self.address_cidrs = (f"{CLIENT_IP if client == 1 else SERVER_IP}/32",)

    def config_text(self) -> str:
        return self.text_of(self)


def host_state(ns) -> dict[str, str]:
    """As text, exactly: the policy rules, every routing table, the nftables tables."""
    return {"rule4": ns.run("ip", "-4", "rule").stdout, "rule6": ns.run("ip", "-6", "rule").stdout,
            "route4": ns.run("ip", "-4", "route", "show", "table", "all").stdout,
            "route6": ns.run("ip", "-6", "route", "show", "table", "all").stdout,
            "nft": ns.run("nft", "list", "tables").stdout}


def client_text(private_key: str, server_pub: str) -> str:
    return (f"[Interface]\nPrivateKey = {private_key}\nAddress = {CLIENT_IP}/32, {CLIENT_IP6}/128\n"
            f"ListenPort = {PORT}\nMTU = 1280\nDNS = {SERVER_IP}, lab.internal\n\n"
            f"[Peer]\n# Name = server\nPublicKey = {server_pub}\nAllowedIPs = 0.0.0.0/0, ::/0\n"
            f"Endpoint = 198.19.2.2:{PORT}\nPersistentKeepalive = 5\n")


@pytest.fixture(scope="module")
def lab():
    require_root()
    require_binary("nft", "ip", "ping", "tcpdump", "wg-quick", "wireguard-go", "wg")
    host_before = host_resolv()
    extra = Lab()
    resolv = None
    with PathLab(["cone", "none"], regions=[RegionSpec(0)], ipv6=True, netcheck_interval=2) as pl:
        try:
            client, server = pl.lab.ns("client1"), pl.lab.ns("client2")
            client.run("sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1", "net.ipv4.conf.default.rp_filter=1")
            # the server: forwards for the tunnel, masquerades it to the lab, and has a LAN host behind it
            lan = extra.namespace("lan")
            link(server, ["172.30.0.1/24"], lan, [f"{LAN_HOST}/24"])
            lan.run("ip", "route", "add", "default", "via", "172.30.0.1")
            server.run("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
            uplink = next(f.split()[1] for f in server.run("ip", "-o", "-4", "addr").stdout.splitlines()
                          if "198.19.2.2/" in f)
            server.run("nft", "-f", "-", input=(
                "table ip ftnat {\n chain post {\n  type nat hook postrouting priority srcnat;\n"
                f'  ip saddr 100.90.0.0/24 oifname "{uplink}" masquerade\n }}\n}}\n'))
            resolv = NetnsResolv(client.name, pl.tmp, pl.env)
            pl.env.update(resolv.env)
            pl.resolv, pl.client_ns, pl.lan = resolv, client, lan
            pl.client_uplink = next(f.split()[1].split("@")[0] for f in client.run("ip", "-o", "-4", "addr")
                                    .stdout.splitlines() if "10.1.0.2/" in f)
            pl.client_key = genkey()
            server_peer = TunnelPeer(pl, 2, lambda p: (
                f"[Interface]\nPrivateKey = {p.private_key}\nAddress = {SERVER_IP}/32, {SERVER_IP6}/128\n"
                f"ListenPort = {PORT}\nMTU = 1280\n\n[Peer]\n# Name = laptop\nPublicKey = {pubkey(pl.client_key)}\n"
                f"AllowedIPs = {CLIENT_IP}/32, {CLIENT_IP6}/128\n"))
            pl.peers.append(server_peer)
            server_peer.start()
            pl.wait_home(server_peer)
            pl.server = server_peer
            yield pl
            if any(r.get("failed") for r in RESULTS.values()):
                print(pl.report())
        finally:
            extra.close()
            if resolv is not None:
                resolv.close()
    assert host_resolv() == host_before, "the host's /etc/resolv.conf changed"


def ping(ns, address: str, count: int = 3, deadline: int = 10) -> bool:
    return ns.run("ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-w", str(deadline), address, check=False,
                  timeout=deadline + 5).returncode == 0


def transfer_ok(pl) -> None:
    xfer = start_transfer(pl.client_ns, pl.lan, LAN_HOST, SIZE, timeout=90)
    sent, received = xfer.result()
    assert sent == received and sent[0] == SIZE


def uplink_capture_while(pl, action) -> list[str]:
    """tcpdump on the client's uplink (to its NAT router) while `action()` runs: the IP lines seen."""
    cap = pl.client_ns.popen("tcpdump", "-i", pl.client_uplink, "-n", "-l", "-q", "-U", "ip or ip6",
                             text=True, stderr=subprocess.PIPE)
    try:
        time.sleep(1.0)                      # tcpdump needs a moment before it captures
        action()
        time.sleep(0.5)
    finally:
        os.killpg(cap.pid, signal.SIGINT)
        out, _ = cap.communicate(timeout=10)
    return [line for line in out.splitlines() if line.strip()]


def not_tunnel_traffic(lines: list[str]) -> list[str]:
    """The captured lines that are none of wgc's own traffic: WireGuard and disco (UDP port 41641),
    the relay's DERP (TCP 443), STUN (UDP 3478) and netcheck's ICMP probe to the relay, IPv6 neighbour
    discovery."""
    relay = r"198\.18\.1\.2"
    allowed = (re.compile(rf"\.{PORT} > \S+: UDP"), re.compile(rf" > \S+\.{PORT}: UDP"),
               re.compile(rf"{relay}\.(443|3478)\b"), re.compile(rf"(> {relay}|{relay} > \S+): ICMP echo"),
               re.compile(r"ICMP6, (neighbor|router)"))
    return [line for line in lines if not any(p.search(line) for p in allowed)]


def check_tunnel(pl, name: str, tl: Timeline) -> None:
    assert ping(pl.client_ns, LAN_HOST), f"no ping to the LAN host behind the server: {tl}"
    tl.note(f"{name}: ping to the LAN host")
    transfer_ok(pl)
    tl.note(f"{name}: 20 MiB to the LAN host")
    lines = uplink_capture_while(pl, lambda: ping(pl.client_ns, INTERNET_HOST, count=4) or
                                 pytest.fail(f"no ping to the lab internet through the tunnel: {tl}"))
    assert any(f".{PORT} > " in line for line in lines), f"the capture missed the tunnel itself: {lines}"
    assert not any(INTERNET_HOST in line for line in lines), [ln for ln in lines if INTERNET_HOST in ln]
    assert not_tunnel_traffic(lines) == [], lines


@pytest.mark.timeout(240)
def test_wgc_full_tunnel_relayed_then_direct(lab):
    pl = lab
    tl = Timeline()
    RESULTS["wgc"] = {"failed": True}
    before = host_state(pl.client_ns)
    pl.lab.cut_udp(1)
    client = TunnelPeer(pl, 1, lambda p: client_text(p.private_key, pl.server.public_key),
                        name=unique_name("wgft"), private_key=pl.client_key)
    pl.peers.append(client)
    client.address_cidrs = (f"{CLIENT_IP}/32", f"{CLIENT_IP6}/128")
    try:
        client.start()
        pl.wait_home(client)
        tl.note("client up, UDP cut")
        during = host_state(pl.client_ns)
        assert "not from all fwmark 0xca6c lookup 51820" in during["rule4"] and "lookup 51820" in during["rule6"]
        sockets = pl.client_ns.run("ss", "-tuanep").stdout
        own = [ln for ln in sockets.splitlines() if "python" in ln and ("198.18.1.2" in ln or f":{PORT}" in ln)]
        assert own and all("fwmark:0xca6c" in ln for ln in own), sockets
        assert pl.resolv.text().startswith(f"nameserver {SERVER_IP}\nsearch lab.internal\n")
        assert pl.peer_status(client, pl.server)["path"] == "relay"
        check_tunnel(pl, "relayed", tl)
        assert pl.peer_status(client, pl.server)["path"] == "relay", "UDP is cut: it must have stayed relayed"
        tl.note("relayed checked")
        pl.lab.restore_udp(1)
        entry = pl.wait_direct(client, pl.server, timeout=15)
        # the server's public IPv4 or IPv6 address: both are inside the tunnel's prefixes too
        assert entry["path"] == "direct" and entry["direct"].startswith(("198.19.2.2:", "[2001:db8:19:2::2]:")), \
            f"{entry} {tl}"
        tl.note("direct")
        check_tunnel(pl, "direct", tl)
        assert pl.peer_status(client, pl.server, fast=True)["path"] == "direct"
        assert ping(pl.client_ns, SERVER_IP6), "no IPv6 through the tunnel"
        RESULTS["wgc"] = {"rule4": during["rule4"], "rule6": during["rule6"]}
        print(tl)
    finally:
        pl.lab.restore_udp(1)
        pl.stop_peer(client)
    assert host_state(pl.client_ns) == before
    assert pl.resolv.text() == ORIGINAL


@pytest.mark.timeout(120)
def test_reference_wireguard_go_by_wg_quick_same_file(lab, tmp_path):
    pl = lab
    tl = Timeline()
    RESULTS["wg-quick"] = {"failed": True}
    name = unique_name("wgfq")
    conf = tmp_path / f"{name}.conf"
    conf.write_text(client_text(pl.client_key, pl.server.public_key))
    os.chmod(conf, 0o600)
    before = host_state(pl.client_ns)
    env = dict(pl.env, WG_QUICK_USERSPACE_IMPLEMENTATION="wireguard-go")
    res = pl.client_ns.run("wg-quick", "up", str(conf), check=False, timeout=30, env=env)
    assert res.returncode == 0, res.stderr
    try:
        during = host_state(pl.client_ns)
        assert pl.resolv.text().startswith(f"nameserver {SERVER_IP}\nsearch lab.internal\n")
        check_tunnel(pl, "wg-quick", tl)
        RESULTS["wg-quick"] = {"rule4": during["rule4"], "rule6": during["rule6"]}
    finally:
        pl.client_ns.run("wg-quick", "down", str(conf), check=False, timeout=30, env=env)
    assert host_state(pl.client_ns) == before
    assert pl.resolv.text() == ORIGINAL
    if "rule4" in RESULTS.get("wgc", {}):
        assert RESULTS["wg-quick"] == RESULTS["wgc"], "wgc's policy rules differ from wg-quick's"
