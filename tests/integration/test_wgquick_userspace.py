"""wgc under Debian's wg-quick: `WG_QUICK_USERSPACE_IMPLEMENTATION=wgc-userspace wg-quick up FILE` (this
kernel has no WireGuard module, so wg-quick runs the userspace implementation, then `wg setconf` and `ip`).

Against a wireguard-go peer: ping, a 20 MiB sha256-checked transfer, `wg show`, and `wg-quick down`
leaving no process, socket, interface, rule or route behind; wireguard-go itself under the same wg-quick
and file is the reference. With WGC_DERPMAP set, in the NAT lab with all UDP between the peers cut, the
same kind of file (a full tunnel, `AllowedIPs = 0.0.0.0/0`, the relay inside it) connects to a
`wgc up --derpmap` peer through DERP."""
from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import time

import pytest

from tests.integration.pathlab import PathLab, PathPeer
from tests.integration.peers import WgGoPeer, genkey, peer_pair, pubkey, transfer
from tests.support.prereq import require_binary, require_root
from tools.natlab.lab import RegionSpec
from tools.natlab.netns import unique_name

pytestmark = [pytest.mark.netns]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZE = 20 * 1024 * 1024


def impl_wrapper(tmp_path) -> str:
    """`wgc-userspace` from this tree (the console script an install puts on PATH runs the same main)."""
    path = tmp_path / "bin" / "wgc-userspace"
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"#!/bin/sh\nexec {sys.executable} -m wgclient.cli.userspace \"$@\"\n")
    os.chmod(path, 0o755)
    return str(path)


def host_state(ns) -> dict[str, str]:
    return {"rule4": ns.run("ip", "-4", "rule").stdout, "rule6": ns.run("ip", "-6", "rule").stdout,
            "route4": ns.run("ip", "-4", "route", "show", "table", "all").stdout,
            "links": re.sub(r"^\d+: ", "", ns.run("ip", "-o", "link").stdout, flags=re.M)}


def wait_gone(ns, name: str, timeout: float = 15.0) -> None:
    """After `wg-quick down` deleted the link, the implementation exits and removes its UAPI socket."""
    deadline = time.monotonic() + timeout
    sock = f"/var/run/wireguard/{name}.sock"
    while time.monotonic() < deadline:
        if not os.path.exists(sock) and not _procs_named(name):
            return
        time.sleep(0.05)
    raise AssertionError(f"{name}: implementation still running or socket left: {os.path.exists(sock)} "
                         f"{_procs_named(name)}")


def _procs_named(name: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if name.encode() in argv and any(b"wireguard-go" in a or b"wgclient.cli.userspace" in a for a in argv):
            found.append(int(pid))
    return found


@pytest.mark.timeout(150)
@pytest.mark.parametrize("impl", ["wireguard-go", "wgc-userspace"])
def test_wg_quick_up_against_wireguard_go(tmp_path, impl):
    require_root()
    require_binary("wg-quick", "wireguard-go", "wg", "ping")
    program = "wireguard-go" if impl == "wireguard-go" else impl_wrapper(tmp_path)
    # (no LOG_LEVEL: a daemonized wireguard-go would keep the captured stdout open and wg-quick never "ends")
    env = dict(os.environ, PYTHONPATH=ROOT, WG_QUICK_USERSPACE_IMPLEMENTATION=program,
               WGC_PID_DIR=str(tmp_path / "pid"), WGC_LOG_DIR=str(tmp_path / "log"))
    with peer_pair(WgGoPeer, WgGoPeer, endpoints="") as pair:
        ns, peer = pair.ns_a, pair.b            # pair.a is replaced: its namespace hosts the wg-quick side
        pair.a.stop()
        name = unique_name("wgqu")
        priv = genkey()
        conf = tmp_path / f"{name}.conf"
        conf.write_text(f"[Interface]\nPrivateKey = {priv}\nAddress = 10.99.0.1/24\nListenPort = 51820\n\n"
                        f"[Peer]\n# Name = b\nPublicKey = {peer.public_key}\nAllowedIPs = 10.99.0.2/32\n"
                        f"Endpoint = {pair.outer_b}:{peer.listen_port}\n")
        os.chmod(conf, 0o600)
        peer.remove_peer(pair.a.public_key)
        peer.add_peer(pubkey(priv), ["10.99.0.1/32"])
        before = host_state(ns)
        res = ns.run("wg-quick", "up", str(conf), check=False, timeout=60, env=env)
        assert res.returncode == 0, res.stderr
        assert f"[#] {program} {name}" in res.stderr
        try:
            assert ns.run("ping", "-c", "3", "-i", "0.2", "-w", "10", "10.99.0.2", check=False).returncode == 0
            (sent, received) = transfer(ns, pair.ns_b, "10.99.0.2", SIZE, timeout=90)
            assert sent == received and sent[0] == SIZE
            show = ns.run("wg", "show", name).stdout
            assert f"peer: {peer.public_key}" in show and "latest handshake" in show and "transfer:" in show
            dump = ns.run("wg", "show", name, "dump").stdout.splitlines()
            assert dump[0].split("\t")[2] == "51820" and dump[1].split("\t")[2] == f"{pair.outer_b}:{peer.listen_port}"
            mtu = ns.run("ip", "-o", "link", "show", name).stdout
            assert "mtu 1420" in mtu                 # wg-quick's choice (1500 - 80) reached the device
        finally:
            down = ns.run("wg-quick", "down", str(conf), check=False, timeout=60, env=env)
        assert down.returncode == 0, down.stderr
        wait_gone(ns, name)
        assert host_state(ns) == before
        assert not os.path.exists(tmp_path / "pid" / f"{name}.pid")


@pytest.mark.timeout(150)
def test_wg_quick_userspace_full_tunnel_through_derp_with_udp_cut(tmp_path):
    require_root()
    require_binary("wg-quick", "wg", "ping", "nft")
    with PathLab(["cone", "cone"], regions=[RegionSpec(0)], netcheck_interval=2) as pl:
        other = PathPeer(pl, 2, pl.derpmap_file)
        pl.peers.append(other)
        name = unique_name("wgqd")
        priv = genkey()
        other.peer_sections.append(f"[Peer]\n# Name = a\nPublicKey = {pubkey(priv)}\nAllowedIPs = 100.90.0.1/32")
        other.start()
        pl.wait_home(other)
        pl.lab.cut_udp(1)
        pl.lab.cut_udp(2)
        ns = pl.lab.ns("client1")
        conf = tmp_path / f"{name}.conf"
        conf.write_text(f"[Interface]\nPrivateKey = {priv}\nAddress = 100.90.0.1/32\nMTU = 1280\n\n"
                        f"[Peer]\nPublicKey = {other.public_key}\nAllowedIPs = 0.0.0.0/0\n"
                        f"Endpoint = 198.19.2.2:41641\n")
        os.chmod(conf, 0o600)
        env = dict(pl.env, WG_QUICK_USERSPACE_IMPLEMENTATION=impl_wrapper(tmp_path), LOG_LEVEL="verbose",
                   WGC_DERPMAP=pl.derpmap_file, WGC_PID_DIR=str(tmp_path / "pid"), WGC_LOG_DIR=str(tmp_path / "log"),
                   WGC_STATE_DIR=str(tmp_path / "state"))
        before = host_state(ns)
        res = ns.run("wg-quick", "up", str(conf), check=False, timeout=60, env=env)
        assert res.returncode == 0, res.stderr
        try:
            assert "wg set" in res.stderr and "fwmark 51820" in res.stderr   # wg-quick's own full tunnel
            ok = ns.run("ping", "-c", "3", "-i", "0.3", "-w", "15", other.ip, check=False)
            log = (tmp_path / "log" / f"{name}.log").read_text() if (tmp_path / "log" / f"{name}.log").exists() else ""
            assert ok.returncode == 0, f"{ok.stdout}\n{log[-3000:]}\n{pl.report()}"
            status = pl.wgc(other, "status", other.name, "--json")
            assert '"path": "relay"' in status.stdout, status.stdout
            # the DERP connection carrying the tunnel is marked (opened before wg-quick set the mark)
            sockets = ns.run("ss", "-tnep", "state", "established").stdout
            derp = [ln for ln in sockets.splitlines() if "198.18.1.2:443" in ln]
            assert derp and all("fwmark:0xca6c" in ln for ln in derp), sockets
            # the map's source runs as under `wgc up`: the map it started with is cached in WGC_STATE_DIR
            # (written once the path manager's first netcheck is over, which waits for STUN: UDP is cut)
            cache = pathlib.Path(env["WGC_STATE_DIR"]) / f"{name}.derpmap.json"
            deadline = time.monotonic() + 30
            while not cache.exists() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert cache.exists() and '"RegionID"' in cache.read_text(), (tmp_path / "log" / f"{name}.log").read_text()[-4000:]
        finally:
            down = ns.run("wg-quick", "down", str(conf), check=False, timeout=60, env=env)
        assert down.returncode == 0, down.stderr
        wait_gone(ns, name)
        assert host_state(ns) == before


_ADOPT = r"""
import os, sys
from wgclient.aio.tun import open_tun
tun = open_tun(sys.argv[1], 1420)
os.set_inheritable(tun.fd, True)
os.environ["WG_TUN_FD"] = str(tun.fd)
os.execv(sys.executable, [sys.executable, "-m", "wgclient.cli.userspace", "-f", sys.argv[1]])
"""


@pytest.mark.timeout(60)
def test_wg_tun_fd_is_adopted_and_foreground_stops_on_sigterm(tmp_path):
    require_root()
    require_binary("wg")
    from tools.natlab.netns import Lab
    with Lab() as lab:
        ns = lab.namespace("wgtf")
        name = unique_name("wgtf")
        env = dict(os.environ, PYTHONPATH=ROOT, WGC_PID_DIR=str(tmp_path / "pid"), LOG_LEVEL="verbose")
        with open(tmp_path / "log", "w") as log:
            proc = ns.popen(sys.executable, "-c", _ADOPT, name, env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + 15
        while ns.run("wg", "show", name, check=False).returncode != 0:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "log").read_text()
            time.sleep(0.05)
        ns.run("wg", "set", name, "listen-port", "41999", "private-key", "/dev/stdin", input=genkey() + "\n")
        assert "listening port: 41999" in ns.run("wg", "show", name).stdout
        assert len([ln for ln in ns.run("ip", "-o", "link").stdout.splitlines() if f": {name}:" in ln]) == 1
        proc.terminate()
        assert proc.wait(15) == 0
        assert not os.path.exists(f"/var/run/wireguard/{name}.sock")


def test_userspace_cli_mistakes_are_one_line(tmp_path):
    def run(*args, **env):
        return subprocess.run([sys.executable, "-m", "wgclient.cli.userspace", *args], capture_output=True, text=True,
                              timeout=30, env=dict(os.environ, PYTHONPATH=ROOT, WGC_PID_DIR=str(tmp_path), **env))
    assert run().stderr == "Usage: wgc-userspace [-f/--foreground] INTERFACE-NAME\n"
    assert run("-x", "wg0").returncode == 1
    assert run("--version").returncode == 0
    bad = run("-f", "bad/name")
    assert bad.returncode == 1 and bad.stderr == "wgc-userspace: invalid interface name 'bad/name'\n"
    res = run("-f", "wgx0", WGC_DERPMAP=str(tmp_path / "missing.json"))
    assert res.returncode == 1 and res.stderr.startswith("wgc-userspace: WGC_DERPMAP: cannot read DERP map file")
    res = run("-f", "wgx0", WG_TUN_FD="x")
    assert res.stderr == "wgc-userspace: WG_TUN_FD='x' is not a file descriptor number\n"
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        assert 'wgc-userspace = "wgclient.cli.userspace:main"' in f.read()
