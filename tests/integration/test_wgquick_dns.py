"""`DNS =` applied through resolvconf and restored on `down` (also after the daemon was killed), with the
same resolvconf calls wg-quick makes for the same file.

The resolv.conf changed is the namespace's own (/etc/netns/NS/resolv.conf, bind-mounted by `ip netns
exec`), through a recording resolvconf first on PATH that refuses any other file
(tests/support/netns_resolv.py). The host's /etc/resolv.conf is checked unchanged at the end."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.support.netns_resolv import ORIGINAL, NetnsResolv, host_resolv
from tests.support.prereq import require_binary, require_root
from tools.natlab.netns import Lab, unique_name
from wgclient import keys

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def key() -> str:
    return keys.key_to_base64(keys.genkey(os.urandom))


@pytest.fixture
def dnslab(tmp_path):
    require_root()
    require_binary("wg-quick", "wireguard-go", "wg", "stat")
    host_before = host_resolv()
    lab = Lab()
    made: list[NetnsResolv] = []
    try:
        lab.tmp = tmp_path

        def namespace():
            ns = lab.namespace("dns")
            ns.resolv = NetnsResolv(ns.name, str(tmp_path), dict(
                os.environ, PYTHONPATH=ROOT, WGC_PID_DIR=str(tmp_path / "pid"), WGC_LOG_DIR=str(tmp_path / "log")))
            made.append(ns.resolv)
            ns.env = ns.resolv.env
            return ns
        lab.make = namespace
        yield lab
    finally:
        lab.close()
        for r in made:
            r.close()
        assert host_resolv() == host_before, "the host's /etc/resolv.conf changed"


def write_conf(lab, name: str, dns: str) -> str:
    path = lab.tmp / f"{name}.conf"
    path.write_text(f"[Interface]\nPrivateKey = {key()}\nAddress = 10.67.0.1/24\nDNS = {dns}\nMTU = 1420\n")
    os.chmod(path, 0o600)
    return str(path)


def wgc(ns, *args):
    return ns.run(sys.executable, "-m", "wgclient.cli", *args, check=False, timeout=40, env=ns.env)


DNS = "10.67.0.53, fd67::53, corp.example, lab.internal"
EXPECTED_UP = ["argv -a NAME -m 0 -x", "stdin nameserver 10.67.0.53|nameserver fd67::53|search corp.example lab.internal|"]


def test_dns_applied_and_restored_like_wg_quick(dnslab):
    results = {}
    for kind in ("wg-quick", "wgc"):
        ns = dnslab.make()
        name = unique_name("wgn")
        conf = write_conf(dnslab, name, DNS)
        if kind == "wg-quick":
            res = ns.run("wg-quick", "up", conf, check=False, timeout=30, env=ns.env)
        else:
            res = wgc(ns, "up", conf)
        assert res.returncode == 0, res.stderr
        during = ns.resolv.text()
        up_calls = ns.resolv.calls(name)
        res = ns.run("wg-quick", "down", conf, check=False, timeout=30, env=ns.env) if kind == "wg-quick" \
            else wgc(ns, "down", name)
        assert res.returncode == 0, res.stderr
        results[kind] = (up_calls, during, ns.resolv.calls(name)[len(up_calls):], ns.resolv.text())
    assert results["wgc"] == results["wg-quick"]
    up_calls, during, down_calls, after = results["wgc"]
    assert up_calls == EXPECTED_UP
    assert during.startswith("nameserver 10.67.0.53\nnameserver fd67::53\nsearch corp.example lab.internal\n")
    assert down_calls == ["argv -d NAME -f"] and after == ORIGINAL


def test_killed_daemon_dns_restored_by_down_and_by_next_up(dnslab):
    ns = dnslab.make()
    name = unique_name("wgn")
    conf = write_conf(dnslab, name, "10.67.0.53")
    for cleaner in ("down", "up"):
        assert wgc(ns, "up", conf).returncode == 0
        assert "nameserver 10.67.0.53" in ns.resolv.text()
        pid = int((dnslab.tmp / "pid" / f"{name}.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "nameserver 10.67.0.53" in ns.resolv.text()        # nothing undid it
        res = wgc(ns, cleaner, name if cleaner == "down" else conf)
        assert res.returncode == 0, res.stderr
        if cleaner == "up":
            assert ns.resolv.calls(name)[-3:] == ["argv -d NAME -f"] + EXPECTED_UP[:1] + [
                "stdin nameserver 10.67.0.53|"]
            assert wgc(ns, "down", name).returncode == 0
        assert ns.resolv.text() == ORIGINAL
    assert wgc(ns, "down", name).stderr.startswith(f"wgc: {name} is not up")


def test_dns_without_resolvconf_fails_before_anything_is_made(dnslab):
    ns = dnslab.make()
    ns.env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
    if shutil.which("resolvconf", path=ns.env["PATH"]) or os.path.exists("/run/systemd/resolve/io.systemd.Resolve"):
        pytest.skip("this host has a real resolvconf/systemd-resolved")
    name = unique_name("wgn")
    res = wgc(ns, "up", write_conf(dnslab, name, "10.67.0.53"))
    assert res.returncode == 1
    assert res.stderr == ("wgc: DNS = 10.67.0.53 needs resolvconf or systemd-resolved (resolvectl); neither was "
                          "found (install resolvconf, or remove DNS =)\n")
    assert name not in ns.run("ip", "link").stdout and not (dnslab.tmp / "pid" / f"{name}.pid").exists()
    assert ns.resolv.text() == ORIGINAL and ns.resolv.calls() == []


def test_plans_for_both_backends():
    from wgclient.aio import dns
    assert dns.split_entries(["1.1.1.1", "fd00::1", "example.com", "10.0.0.0.x"]) == (
        ["1.1.1.1", "fd00::1"], ["example.com", "10.0.0.0.x"])
    p = dns.plan("wg0", ("1.1.1.1", "fd00::1", "corp.example"), resolved=True)
    assert p.apply == ((("resolvectl", "dns", "wg0", "1.1.1.1", "fd00::1"), None),
                       (("resolvectl", "domain", "wg0", "~.", "corp.example"), None))
    assert p.undo == ((("resolvectl", "revert", "wg0"), None),)
    p = dns.plan("wg0", ("1.1.1.1",), resolved=False, prefix="tun.")
    assert p.apply == ((("resolvconf", "-a", "tun.wg0", "-m", "0", "-x"), "nameserver 1.1.1.1\n"),)
    assert p.undo == ((("resolvconf", "-d", "tun.wg0", "-f"), None),)
    assert dns.plan("wg0", ("only.search.example",), resolved=False) is None   # as wg-quick: no server, no call


def test_interface_order_prefix(tmp_path):
    from wgclient.aio import dns
    order = tmp_path / "interface-order"
    order.write_text("lo.inet*\nlo.dnsmasq\ntun*\ntap*\nhso*\nwg*\n*\n")
    assert dns.iface_prefix(str(order)) == "tun."
    assert dns.iface_prefix(str(tmp_path / "missing")) == ""


def test_dns_through_resolvectl_when_systemd_resolved_runs(dnslab):
    """systemd-resolved is made to look present in a private mount namespace (a tmpfs on /run/systemd
    holding its varlink socket's name); a recording `resolvectl` first on PATH. The host's /run/systemd
    is not touched."""
    require_binary("unshare", "mount")
    if not os.path.isdir("/run/systemd"):
        pytest.skip("no /run/systemd to mount a tmpfs on")
    ns = dnslab.make()
    name = unique_name("wgn")
    conf = write_conf(dnslab, name, DNS)
    bindir = dnslab.tmp / "rbin"
    bindir.mkdir()
    calls = dnslab.tmp / "resolvectl.calls"
    (bindir / "resolvectl").write_text(f"#!/bin/sh\nprintf '%s\\n' \"$*\" >> {calls}\n")
    os.chmod(bindir / "resolvectl", 0o755)
    env = dict(ns.env, PATH=f"{bindir}:{ns.env['PATH']}")
    up = " ".join(ns.argv(sys.executable, "-m", "wgclient.cli", "up", conf))
    script = ("mount -t tmpfs wgctest /run/systemd && mkdir /run/systemd/resolve && "
              f"touch /run/systemd/resolve/io.systemd.Resolve && exec {up}")
    res = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                         capture_output=True, text=True, timeout=40, env=env)
    assert res.returncode == 0, res.stderr
    assert calls.read_text().replace(name, "NAME").splitlines() == [
        "dns NAME 10.67.0.53 fd67::53", "domain NAME ~. corp.example lab.internal"]
    assert wgc(ns, "down", name).returncode == 0
    assert calls.read_text().replace(name, "NAME").splitlines()[2:] == ["revert NAME"]
    assert ns.resolv.calls() == [] and ns.resolv.text() == ORIGINAL     # resolvconf was not used
    assert not os.path.exists("/run/systemd/resolve/io.systemd.Resolve")
