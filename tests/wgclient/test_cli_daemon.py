"""`wgc up` / `wgc down` for real, as root in network namespaces: daemon and foreground lifecycles.

Each test makes its own namespaces and interface names, points the pid and log directories at a
temporary directory, and leaves the UAPI socket in /var/run/wireguard so the stock `wg` tool can see it.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.support.prereq import require_binary, require_root
from tools.natlab.netns import Lab, link, unique_name
from wgclient import keys

pytestmark = [pytest.mark.netns, pytest.mark.timeout(60)]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def lab(tmp_path):
    require_root()
    require_binary("wg", "ping")
    with Lab() as lab:
        lab.tmp = tmp_path
        lab.env = dict(os.environ, PYTHONPATH=ROOT, WGC_PID_DIR=str(tmp_path / "pid"),
                       WGC_LOG_DIR=str(tmp_path / "log"))
        lab.env.pop("WGC_RUN_DIR", None)
        yield lab


def wgc(lab, ns, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return ns.run(sys.executable, "-m", "wgclient.cli", *args, check=False, timeout=timeout, env=lab.env)


def write_conf(lab, name: str, text: str, mode: int = 0o600) -> str:
    path = lab.tmp / f"{name}.conf"
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


def keypair() -> tuple[str, str]:
    priv = keys.genkey(os.urandom)
    return keys.key_to_base64(priv), keys.key_to_base64(keys.public_key(priv))


def links(ns) -> list[str]:
    return [line.split(":")[1].strip().split("@")[0] for line in ns.run("ip", "-o", "link").stdout.splitlines()]


def running(pid: int) -> bool:
    """True unless pid has exited (a zombie waiting for whoever adopted the daemon counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def gone(lab, ns, name: str) -> None:
    assert name not in links(ns)
    assert not os.path.exists(f"/var/run/wireguard/{name}.sock")
    assert not (lab.tmp / "pid" / f"{name}.pid").exists()


def test_up_daemon_wg_show_down(lab):
    ns = lab.namespace("cli")
    name = unique_name("wgd")
    priv, _ = keypair()
    _, peer = keypair()
    conf = write_conf(lab, name, f"[Interface]\nPrivateKey = {priv}\nAddress = 10.61.0.1/24, fd61::1/64\n"
                                 f"ListenPort = 41001\nMTU = 1400\nPostUp = touch {lab.tmp}/post-up-%i\n"
                                 f"PreDown = ip link show %i > {lab.tmp}/pre-down-%i\n"
                                 f"PostDown = touch {lab.tmp}/post-down-%i\n\n"
                                 f"[Peer]\nPublicKey = {peer}\nAllowedIPs = 10.62.0.0/16\nEndpoint = 127.0.0.1:41002\n")
    started = time.monotonic()
    up = wgc(lab, ns, "up", conf)
    assert up.returncode == 0, up.stderr
    assert f"{name} is up" in up.stderr and time.monotonic() - started < 10
    assert name in links(ns)
    addrs = ns.run("ip", "-o", "addr", "show", "dev", name).stdout
    assert "10.61.0.1/24" in addrs and "fd61::1/64" in addrs and "mtu 1400" in ns.run("ip", "link", "show", name).stdout
    assert "10.62.0.0/16 dev " + name in ns.run("ip", "route").stdout
    show = ns.run("wg", "show", name, "dump").stdout.splitlines()
    assert show[0].split("\t")[2] == "41001" and show[1].split("\t")[:1] == [peer]
    assert show[1].split("\t")[2:4] == ["127.0.0.1:41002", "10.62.0.0/16"]
    pid = int((lab.tmp / "pid" / f"{name}.pid").read_text())
    assert running(pid)
    deadline = time.monotonic() + 10
    while not (lab.tmp / f"post-up-{name}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (lab.tmp / f"post-up-{name}").exists()
    # a second up of the same interface is refused in one line, and does not disturb the first (nor its log)
    log_before = (lab.tmp / "log" / f"{name}.log").read_text()
    again = wgc(lab, ns, "up", conf)
    assert again.returncode == 1 and again.stderr == f"wgc: {name} is already up (pid {pid})\n"
    assert (lab.tmp / "log" / f"{name}.log").read_text() == log_before
    assert name in links(ns)
    down = wgc(lab, ns, "down", name)
    assert down.returncode == 0, down.stderr
    gone(lab, ns, name)
    assert not running(pid)
    assert (lab.tmp / f"post-down-{name}").exists()
    assert name in (lab.tmp / f"pre-down-{name}").read_text()    # PreDown ran while the interface existed
    log = (lab.tmp / "log" / f"{name}.log").read_text()
    assert "got SIGTERM" in log and priv not in log
    again = wgc(lab, ns, "down", name)
    assert again.returncode == 1 and f"{name} is not up" in again.stderr


def test_start_failure_is_reported_and_undone(lab):
    ns = lab.namespace("cli")
    name = unique_name("wgf")
    priv, _ = keypair()
    blocker = ns.popen(sys.executable, "-c",
                       "import socket,time; s=socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); "
                       "s.bind(('::', 41010)); print('bound', flush=True); time.sleep(30)")
    assert blocker.stdout.readline().strip() == b"bound"
    conf = write_conf(lab, name, f"[Interface]\nPrivateKey = {priv}\nAddress = 10.63.0.1/24\nListenPort = 41010\n")
    up = wgc(lab, ns, "up", conf)
    assert up.returncode == 1
    assert up.stderr.count("\n") == 1 and "41010" in up.stderr, up.stderr
    gone(lab, ns, name)


def test_failing_pre_up_creates_nothing(lab):
    ns = lab.namespace("cli")
    name = unique_name("wgp")
    priv, _ = keypair()
    conf = write_conf(lab, name, f"[Interface]\nPrivateKey = {priv}\nPreUp = exit 3\n")
    up = wgc(lab, ns, "up", conf)
    assert up.returncode == 1 and "PreUp command failed with exit code 3" in up.stderr
    gone(lab, ns, name)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_foreground_stops_cleanly_on_signal(lab, signum):
    ns = lab.namespace("cli")
    name = unique_name("wgg")
    priv, _ = keypair()
    conf = write_conf(lab, name, f"[Interface]\nPrivateKey = {priv}\nAddress = 10.64.0.1/24\n", mode=0o644)
    proc = ns.popen(sys.executable, "-m", "wgclient.cli", "up", conf, "--foreground", env=lab.env)
    deadline = time.monotonic() + 15
    while not os.path.exists(f"/var/run/wireguard/{name}.sock") and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    assert name in links(ns)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    err = err.decode()
    assert "readable by group or others" in err.splitlines()[0]   # the 0644 config file
    assert f"got {signal.Signals(signum).name}" in err and "Traceback" not in err and priv not in err
    gone(lab, ns, name)


def test_two_wgc_daemons_ping_through_the_tunnel(lab):
    a, b = lab.namespace("cla"), lab.namespace("clb")
    link(a, ["10.65.0.1/24"], b, ["10.65.0.2/24"])
    (pa, ka), (pb, kb) = keypair(), keypair()
    na, nb = unique_name("wga"), unique_name("wgb")
    ca = write_conf(lab, na, f"[Interface]\nPrivateKey = {pa}\nAddress = 10.66.0.1/24\nListenPort = 41021\n"
                             f"[Peer]\nPublicKey = {kb}\nAllowedIPs = 10.66.0.2/32\nEndpoint = 10.65.0.2:41022\n")
    cb = write_conf(lab, nb, f"[Interface]\nPrivateKey = {pb}\nAddress = 10.66.0.2/24\nListenPort = 41022\n"
                             f"[Peer]\nPublicKey = {ka}\nAllowedIPs = 10.66.0.1/32\n")
    try:
        assert wgc(lab, a, "up", ca).returncode == 0
        assert wgc(lab, b, "up", cb).returncode == 0
        ping = a.run("ping", "-c", "3", "-i", "0.2", "-W", "2", "10.66.0.2", check=False)
        assert ping.returncode == 0, ping.stdout
        dump = b.run("wg", "show", nb, "dump").stdout.splitlines()[1].split("\t")
        assert dump[2] == "10.65.0.1:41021" and int(dump[4]) > 0   # roamed-to endpoint, a handshake happened
    finally:
        wgc(lab, a, "down", na)
        wgc(lab, b, "down", nb)
    gone(lab, a, na)
    gone(lab, b, nb)
