"""The full tunnel's host changes, compared as text with what Debian's wg-quick makes for wireguard-go from
the same file: `ip rule`/`ip -6 rule` and the mark's table while up, everything as before after `down`,
also after the daemon was killed (the next `down` or `up` removes the stale rules), the mark chosen as
wg-quick chooses it, and every socket wgc opens carrying it."""
from __future__ import annotations

import os
import re
import signal
import sys
import time

import pytest

from tests.support.prereq import require_binary, require_root
from tools.natlab.netns import Lab, unique_name
from wgclient import keys

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def b64(k: bytes) -> str:
    return keys.key_to_base64(k)


def conf_text(**extra: str) -> str:
    peer = b64(keys.public_key(keys.genkey(os.urandom)))
    lines = ["[Interface]", f"PrivateKey = {b64(keys.genkey(os.urandom))}",
             "Address = 10.68.0.2/32, fd68::2/128", "MTU = 1420", *(f"{k} = {v}" for k, v in extra.items()),
             "", "[Peer]", "# Name = exit", f"PublicKey = {peer}",
             "AllowedIPs = 0.0.0.0/0, ::/0, 10.69.0.0/16", "Endpoint = 192.0.2.2:51820", ""]
    return "\n".join(lines)


def host_state(ns) -> dict[str, str]:
    """What `down` must leave as it found: policy rules, all routing tables, nftables tables."""
    return {"rule4": ns.run("ip", "-4", "rule").stdout, "rule6": ns.run("ip", "-6", "rule").stdout,
            "route4": ns.run("ip", "-4", "route", "show", "table", "all").stdout,
            "route6": ns.run("ip", "-6", "route", "show", "table", "all").stdout,
            "nft": ns.run("nft", "list", "tables").stdout}


def make_ns(lab):
    ns = lab.namespace("ftr")
    # no DAD: link-local addresses (and their routes) exist at once, so "before" is settled
    ns.run("sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
    ns.run("ip", "link", "add", "up0", "type", "veth", "peer", "name", "up0p")
    ns.run("ip", "link", "set", "up0p", "up")
    ns.run("ip", "link", "set", "up0", "up")
    ns.run("ip", "addr", "add", "192.0.2.1/24", "dev", "up0")
    ns.run("ip", "-6", "addr", "add", "2001:db8:68::1/64", "dev", "up0", "nodad")
    ns.run("ip", "route", "add", "default", "via", "192.0.2.254")
    ns.run("ip", "-6", "route", "add", "default", "via", "2001:db8:68::fe")
    return ns


@pytest.fixture
def lab(tmp_path):
    require_root()
    require_binary("wg-quick", "wireguard-go", "wg", "nft", "ss")
    with Lab() as lab:
        lab.tmp = tmp_path
        lab.env = dict(os.environ, PYTHONPATH=ROOT, WGC_PID_DIR=str(tmp_path / "pid"),
                       WGC_LOG_DIR=str(tmp_path / "log"))
        yield lab


def write(lab, name: str, text: str) -> str:
    path = lab.tmp / f"{name}.conf"
    path.write_text(text)
    os.chmod(path, 0o600)
    return str(path)


def wgc(lab, ns, *args):
    res = ns.run(sys.executable, "-m", "wgclient.cli", *args, check=False, timeout=40, env=lab.env)
    assert res.returncode == 0, res.stderr
    return res


def normalized(state: dict[str, str], name: str) -> dict[str, str]:
    out = {k: v.replace(name, "IFACE") for k, v in state.items() if k != "nft"}
    # wireguard-go's TUN gets a link-local address, wgc's does not (no neighbours): not policy routing
    out["route6"] = "\n".join(line for line in out["route6"].splitlines() if not line.startswith(("fe80", "local fe80",
                                                                                                   "multicast")))
    return out


def test_rules_and_tables_as_wg_quick_and_down_restores_everything(lab):
    text = conf_text()
    during = {}
    for kind in ("wg-quick", "wgc"):
        ns = make_ns(lab)
        name = unique_name("wgf")
        conf = write(lab, name, text)
        before = host_state(ns)
        if kind == "wg-quick":
            res = ns.run("wg-quick", "up", conf, check=False, timeout=30)
            assert res.returncode == 0, res.stderr
        else:
            wgc(lab, ns, "up", conf)
        state = host_state(ns)
        during[kind] = normalized(state, name)
        assert ns.run("wg", "show", name, "fwmark").stdout.strip() == "0xca6c"
        assert ns.run("sysctl", "-n", "net.ipv4.conf.all.src_valid_mark").stdout.strip() == "1"
        if kind == "wgc":
            assert f"table ip wgc-{name}" in state["nft"] and f"table ip6 wgc-{name}" in state["nft"]
            sockets = ns.run("ss", "-uanep").stdout
            own = [line for line in sockets.splitlines() if "python" in line]
            assert own and all("fwmark:0xca6c" in line for line in own), sockets
            wgc(lab, ns, "down", name)
        else:
            ns.run("wg-quick", "down", conf, timeout=30)
        assert host_state(ns) == before
    assert during["wgc"] == during["wg-quick"]
    rules = during["wgc"]["rule4"]
    assert "32764:\tfrom all lookup main suppress_prefixlength 0\n32765:\tnot from all fwmark 0xca6c lookup 51820\n" \
        in rules
    assert "default dev IFACE table 51820" in during["wgc"]["route4"]
    assert "10.69.0.0/16 dev IFACE" in during["wgc"]["route4"]       # the other prefixes stay in main
    assert not re.search(r"(0\.0\.0\.0|128\.0\.0\.0)/1", during["wgc"]["route4"])


def kill_daemon(lab, name: str) -> None:
    pid = int((lab.tmp / "pid" / f"{name}.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)


def test_stale_rules_after_a_crash_go_with_the_next_down_or_up(lab):
    ns = make_ns(lab)
    name = unique_name("wgf")
    conf = write(lab, name, conf_text())
    before = host_state(ns)
    wgc(lab, ns, "up", conf)
    up_state = host_state(ns)
    kill_daemon(lab, name)
    left = host_state(ns)
    assert "lookup 51820" in left["rule4"] and "lookup 51820" in left["rule6"] and f"wgc-{name}" in left["nft"]
    wgc(lab, ns, "down", name)                       # no daemon: the journal's rules are removed
    assert host_state(ns) == before
    wgc(lab, ns, "up", conf)
    kill_daemon(lab, name)
    wgc(lab, ns, "up", conf)                         # the next up cleans first: no second set of rules
    def settled(state):  # each new TUN gets a random link-local address
        return {k: [ln for ln in v.splitlines() if not (ln.startswith("local fe80") and name in ln)]
                for k, v in state.items()}
    assert settled(host_state(ns)) == settled(up_state)
    wgc(lab, ns, "down", name)
    assert host_state(ns) == before


def test_mark_choice_explicit_fwmark_and_table_off(lab):
    ns = make_ns(lab)
    ns.run("ip", "route", "add", "203.0.113.0/24", "dev", "up0", "table", "51820")   # 51820 is in use
    name = unique_name("wgf")
    before = host_state(ns)
    wgc(lab, ns, "up", write(lab, name, conf_text()))
    assert "not from all fwmark 0xca6d lookup 51821" in ns.run("ip", "rule").stdout
    assert ns.run("wg", "show", name, "fwmark").stdout.strip() == "0xca6d"
    wgc(lab, ns, "down", name)
    name2 = unique_name("wgf")
    wgc(lab, ns, "up", write(lab, name2, conf_text(FwMark="0x1234")))
    assert "not from all fwmark 0x1234 lookup 4660" in ns.run("ip", "rule").stdout
    wgc(lab, ns, "down", name2)
    name3 = unique_name("wgf")
    wgc(lab, ns, "up", write(lab, name3, conf_text(Table="off")))
    assert ns.run("ip", "rule").stdout == before["rule4"]
    routes = ns.run("ip", "route", "show", "table", "all").stdout + ns.run("ip", "-6", "route", "show", "table", "all").stdout
    assert [ln for ln in routes.splitlines() if name3 in ln and "proto kernel" not in ln] == []   # no routes of ours
    wgc(lab, ns, "down", name3)
    assert host_state(ns) == before


def test_saved_config_does_not_keep_the_auto_mark(lab):
    ns = make_ns(lab)
    name = unique_name("wgf")
    conf = write(lab, name, conf_text())
    wgc(lab, ns, "up", conf)
    try:
        wgc(lab, ns, "save", conf)
    finally:
        wgc(lab, ns, "down", name)
    text = open(conf).read()
    assert "FwMark" not in text and "ListenPort = " in text
