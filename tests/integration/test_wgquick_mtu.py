"""MTU without `MTU =`: wgc picks what Debian's wg-quick picks for wireguard-go from the same file (the route
MTU to the endpoints minus 80, else the default route's, else 1500 - 80), each in a namespace of its own."""
from __future__ import annotations

import json
import os
import sys

import pytest

from tests.support.prereq import require_binary, require_root
from tools.natlab.netns import Lab, unique_name
from wgclient import keys
from wgclient.aio import netconf

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def b64key() -> str:
    return keys.key_to_base64(keys.genkey(os.urandom))


def pub() -> str:
    return keys.key_to_base64(keys.public_key(keys.genkey(os.urandom)))


def uplink(ns, *, dev_mtu: int, routes: list[list[str]]) -> None:
    """A veth uplink 192.0.2.1/24 with the given MTU and routes (its peer end stays in the namespace)."""
    ns.run("ip", "link", "add", "up0", "type", "veth", "peer", "name", "up0p")
    ns.run("ip", "link", "set", "up0", "mtu", str(dev_mtu), "up")
    ns.run("ip", "link", "set", "up0p", "up")
    ns.run("ip", "addr", "add", "192.0.2.1/24", "dev", "up0")
    for r in routes:
        ns.run("ip", "route", "add", *r)


def link_mtu(ns, name: str) -> int:
    return json.loads(ns.run("ip", "-j", "link", "show", "dev", name).stdout)[0]["mtu"]


CASES = {  # routes in the namespace, endpoints of the config -> the MTU wg-quick gives wireguard-go
    "endpoint route with mtu": ([["198.51.100.0/24", "via", "192.0.2.2", "mtu", "1300"],
                                 ["default", "via", "192.0.2.3"]], ["198.51.100.7:51820"], 1220),
    "largest of two endpoints": ([["198.51.100.0/24", "via", "192.0.2.2", "mtu", "1300"],
                                  ["203.0.113.0/24", "via", "192.0.2.2", "mtu", "1360"]],
                                 ["198.51.100.7:51820", "203.0.113.9:1"], 1280),
    "endpoint on the device": ([["default", "via", "192.0.2.3"]], ["192.0.2.77:51820"], 1320),
    "no endpoint: default route": ([["default", "via", "192.0.2.3"]], [], 1320),
    "no route at all": ([], [], 1420),
}


def conf_text(endpoints: list[str]) -> str:
    text = f"[Interface]\nPrivateKey = {b64key()}\nAddress = 10.66.0.1/24\n"
    for ep in endpoints:
        text += f"\n[Peer]\nPublicKey = {pub()}\nAllowedIPs = 10.66.{len(text) % 200}.0/24\nEndpoint = {ep}\n"
    return text


@pytest.mark.parametrize("case", list(CASES))
def test_auto_mtu_same_as_wg_quick(tmp_path, case):
    require_root()
    require_binary("wg-quick", "wireguard-go", "wg")
    routes, endpoints, expected = CASES[case]
    env = dict(os.environ, PYTHONPATH=ROOT, WGC_PID_DIR=str(tmp_path / "pid"), WGC_LOG_DIR=str(tmp_path / "log"))
    with Lab() as lab:
        results = {}
        for kind in ("wg-quick", "wgc"):
            ns = lab.namespace("mtu")
            if routes:
                uplink(ns, dev_mtu=1400, routes=routes)
            name = unique_name("wgm")
            path = tmp_path / f"{name}.conf"
            path.write_text(conf_text(endpoints))
            os.chmod(path, 0o600)
            if kind == "wg-quick":
                res = ns.run("wg-quick", "up", str(path), check=False, timeout=30)
                assert res.returncode == 0, res.stderr
                results[kind] = link_mtu(ns, name)
                ns.run("wg-quick", "down", str(path), check=False, timeout=30)
            else:
                res = ns.run(sys.executable, "-m", "wgclient.cli", "up", str(path), check=False, timeout=30, env=env)
                assert res.returncode == 0, res.stderr
                results[kind] = link_mtu(ns, name)
                res = ns.run(sys.executable, "-m", "wgclient.cli", "down", name, check=False, timeout=30, env=env)
                assert res.returncode == 0, res.stderr
    assert results == {"wg-quick": expected, "wgc": expected}


def test_plan_mtu():
    assert netconf.plan_mtu([1300, 1500], 1400) == 1420
    assert netconf.plan_mtu([], 9000) == 8920
    assert netconf.plan_mtu([], None) == 1420
    assert netconf.plan_mtu([0], None) == 1420
