"""wg-quick's config handling, for real: `wgc up NAME` finds /etc/wireguard/NAME.conf, `wgc strip NAME`,
`wgc save`, and `SaveConfig = true` writing the running interface back on `down` with comments and wgc's
own keys kept.

/etc/wireguard is never touched: the test's own directory is bind-mounted over it in a private mount
namespace (`unshare -m`), inside which `ip netns exec` starts the daemon; the daemon stays in that mount
namespace, so its SaveConfig lands in the test's directory."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.prereq import require_binary, require_root
from tools.natlab.netns import Lab, unique_name
from wgclient import keys
from wgclient.config import parse_config

pytestmark = [pytest.mark.netns, pytest.mark.timeout(90)]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def keypair() -> tuple[str, str]:
    priv = keys.genkey(os.urandom)
    return keys.key_to_base64(priv), keys.key_to_base64(keys.public_key(priv))


@pytest.fixture
def lab(tmp_path):
    require_root()
    require_binary("wg", "unshare", "mount")
    with Lab() as lab:
        lab.tmp = tmp_path
        lab.env = dict(os.environ, PYTHONPATH=ROOT, WGC_PID_DIR=str(tmp_path / "pid"),
                       WGC_LOG_DIR=str(tmp_path / "log"))
        for var in ("WGC_RUN_DIR", "WGC_CONFIG_DIRS"):
            lab.env.pop(var, None)
        yield lab


def wgc(lab, ns, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    res = ns.run(sys.executable, "-m", "wgclient.cli", *args, check=False, timeout=40, env=env or lab.env)
    return res


def up_from_etc_wireguard(lab, ns, confdir: str, name: str) -> subprocess.CompletedProcess:
    """`wgc up NAME` with confdir mounted on /etc/wireguard, in a mount namespace of its own."""
    script = f"mount --bind {confdir} /etc/wireguard && exec {' '.join(ns.argv(sys.executable, '-m', 'wgclient.cli', 'up', name))}"
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=40, env=lab.env)


def test_up_by_name_strip_save_and_save_config_on_down(lab):
    ns = lab.namespace("wgq")
    name = unique_name("wgq")
    confdir = lab.tmp / "etc-wireguard"
    confdir.mkdir(mode=0o700)
    priv, _ = keypair()
    (_, pa), (_, pb), (_, pc) = keypair(), keypair(), keypair()
    text = (f"# office tunnel, keep this comment\n[Interface]\nPrivateKey = {priv}\n"
            f"Address = 10.71.0.1/24\nListenPort = 41071\nSaveConfig = true\nPostUp = true %i\n\n"
            f"[Peer]\n# Name = alpha\nPublicKey = {pa}\nAllowedIPs = 10.71.0.2/32\nEndpoint = 127.0.0.1:41072\n\n"
            f"# beta goes away\n[Peer]\nName = beta\nPublicKey = {pb}\nAllowedIPs = 10.71.0.3/32\n")
    conf = confdir / f"{name}.conf"
    conf.write_text(text)
    os.chmod(conf, 0o600)

    res = up_from_etc_wireguard(lab, ns, str(confdir), name)
    assert res.returncode == 0, res.stderr
    try:
        strip = wgc(lab, ns, "strip", name, env=dict(lab.env, WGC_CONFIG_DIRS=str(confdir)))
        assert strip.returncode == 0 and "Address" not in strip.stdout and "Name = beta" not in strip.stdout
        assert "# Name = alpha" in strip.stdout and f"PublicKey = {pb}" in strip.stdout
        # changes made with `wg set`, then `wgc save`
        ns.run("wg", "set", name, "peer", pc, "allowed-ips", "10.71.0.4/32,10.72.0.0/16", "endpoint", "127.0.0.1:41074")
        ns.run("wg", "set", name, "peer", pb, "remove")
        res = wgc(lab, ns, "save", str(conf))
        assert res.returncode == 0, res.stderr
        saved = conf.read_text()
        assert f"PublicKey = {pc}\nAllowedIPs = 10.71.0.4/32, 10.72.0.0/16\nEndpoint = 127.0.0.1:41074\n" in saved
        assert pb not in saved and "Name = beta" not in saved, saved
        assert oct(os.stat(conf).st_mode & 0o777) == "0o600"
        ns.run("wg", "set", name, "peer", pa, "allowed-ips", "10.71.0.2/32,10.73.0.0/16")
    finally:
        down = wgc(lab, ns, "down", name)
    assert down.returncode == 0, down.stderr
    final = conf.read_text()
    cfg = parse_config(final, str(conf))
    assert [keys.key_to_base64(p.public_key) for p in cfg.peers] == [pa, pc]
    assert [str(n) for n in cfg.peers[0].allowed_ips] == ["10.71.0.2/32", "10.73.0.0/16"]
    assert cfg.peers[0].name == "alpha" and cfg.save_config and cfg.post_up == ("true %i",)
    assert final.startswith("# office tunnel, keep this comment\n[Interface]\n")
    assert f"PrivateKey = {priv}\nAddress = 10.71.0.1/24\nListenPort = 41071\n" in final


def test_up_by_unknown_name_is_one_line(lab):
    ns = lab.namespace("wgq")
    res = wgc(lab, ns, "up", "wgnosuch7", env=dict(lab.env, WGC_CONFIG_DIRS=str(lab.tmp)))
    assert res.returncode == 1
    assert res.stderr == f"wgc: wgnosuch7: no such interface config: {lab.tmp}/wgnosuch7.conf does not exist\n"
