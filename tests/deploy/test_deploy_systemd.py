"""deploy/systemd: `systemd-analyze verify` passes without a warning (ExecStart pointed at this venv's wgc),
`systemd-analyze security` rates both units well hardened, each gets only the one capability it needs, and
both run as declared under tests/deploy/fake_systemctl.py (dynamic user, credentials, read-only system,
MemoryDenyWriteExecute) on the image's venv: the relay answers and reloads its allowed keys, `wgc@wg0` brings
up wg0."""
from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.prereq import missing as prereq_missing

from deploy_paths import DEPLOY, need_sandbox
from derp.aio.certs import make_ca, make_cert, write_pair
from sandbox import Sandbox

pytestmark = [pytest.mark.timeout(600), pytest.mark.netns]
UNITS = DEPLOY / "systemd"
WGC = Path(sys.executable).parent / "wgc"
CAP_NET_BIND_SERVICE, CAP_NET_ADMIN = 1 << 10, 1 << 12


def local_copy(tmp_path: Path, name: str) -> Path:
    """The unit with ExecStart's /opt/wgc/bin/wgc pointed at this venv's wgc, so verify can resolve it."""
    text = (UNITS / name).read_text().replace("/opt/wgc/bin/wgc", str(WGC))
    path = tmp_path / name
    path.write_text(text)
    return path


def analyze(*args: str) -> subprocess.CompletedProcess:
    if shutil.which("systemd-analyze") is None:
        prereq_missing("systemd-analyze is not installed (Debian's systemd package)")
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name,instance", [("wgc-derper.service", "wgc-derper.service"),
                                           ("wgc@.service", "wgc@wg0.service")])
def test_units_verify_cleanly(tmp_path, name, instance) -> None:
    local_copy(tmp_path, name)
    done = analyze("verify", str(tmp_path / instance))
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr


@pytest.mark.parametrize("name,instance", [("wgc-derper.service", "wgc-derper.service"),
                                           ("wgc@.service", "wgc@wg0.service")])
def test_units_are_hardened(tmp_path, name, instance) -> None:
    local_copy(tmp_path, name)
    done = analyze("security", "--offline=true", "--threshold=25", "--no-pager", str(tmp_path / instance))
    score = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", done.stdout).group(1))
    assert score <= 2.5, done.stdout   # systemd's scale: 0 (locked down) .. 10 (exposed); 2.5 and less is "OK"


def settings(name: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_each_unit_has_only_the_capability_it_needs() -> None:
    relay, iface = settings("wgc-derper.service"), settings("wgc@.service")
    assert relay["AmbientCapabilities"] == relay["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert iface["AmbientCapabilities"] == iface["CapabilityBoundingSet"] == ["CAP_NET_ADMIN"]
    for unit in (relay, iface):
        for key in ("DynamicUser", "NoNewPrivileges", "ProtectHome", "PrivateTmp", "MemoryDenyWriteExecute"):
            assert unit[key] == ["yes"], key
        assert unit["ProtectSystem"] == ["strict"]
    assert iface["DeviceAllow"] == ["/dev/net/tun rw"] and iface["DevicePolicy"] == ["closed"]


def _caps(out: str, pid_line: str) -> tuple[int, int]:
    uid = int(re.search(rf"^{pid_line} Uid:\s+(\d+)", out, re.M).group(1))
    eff = int(re.search(rf"^{pid_line} CapEff:\s+([0-9a-f]+)", out, re.M).group(1), 16)
    return uid, eff


def test_relay_unit_runs_as_declared(image, tmp_path) -> None:
    need_sandbox()
    _img, layer = image
    box = Sandbox(tmp_path / "box", layers=(layer,), hosts={"relay.example.net": "127.0.0.1"})
    ca = make_ca()
    (box.share / "ca.crt").write_bytes(ca.cert_pem)
    write_pair(make_cert(["relay.example.net"], ca), str(box.share / "tls.crt"), str(box.share / "tls.key"))
    shutil.copy(UNITS / "wgc-derper.service", box.share)
    shutil.copy(UNITS / "derper.env", box.share)
    keys = [base64.b64encode(os.urandom(32)).decode() for _ in range(2)]
    (box.share / "key1").write_text(keys[0] + "\n")
    (box.share / "key2").write_text(keys[1] + "\n")
    out = box.check(f"""
install -m 0644 wgc-derper.service /etc/systemd/system/
install -d /etc/wgc-derper
install -m 0644 derper.env /etc/wgc-derper/derper.env
install -m 0600 tls.crt tls.key /etc/wgc-derper/
openssl rand -hex 32 > /etc/wgc-derper/metrics-token; chmod 0600 /etc/wgc-derper/metrics-token
install -m 0644 key1 /etc/wgc-derper/allowed-keys
echo '{{"Regions": {{}}}}' > /etc/wgc-derper/derpmap.json
systemctl enable --now wgc-derper
curl -fsS --retry 30 --retry-delay 1 --retry-all-errors --cacert ca.crt https://relay.example.net/healthz
pid=$(cat /run/fake-systemd/wgc-derper.service.pid)
grep -E '^(Uid|CapEff):' /proc/$pid/status | sed 's/^/main /'
curl -fsS -H "Authorization: Bearer $(cat /etc/wgc-derper/metrics-token)" --cacert ca.crt \\
    https://relay.example.net/healthz | grep -q '"status": "ok"' && echo token-ok
cat key2 >> /etc/wgc-derper/allowed-keys
systemctl reload wgc-derper
for i in $(seq 50); do journalctl -u wgc-derper | grep -q 'reloaded 2 allowed keys' && break; sleep 0.2; done
journalctl -u wgc-derper | grep -o 'reloaded 2 allowed keys' || true
ls -l /var/lib/wgc-derper/derper.key | cut -c1-10
systemctl stop wgc-derper
systemctl is-active wgc-derper || true
""", timeout=180)
    assert "ok\n" in out and "token-ok" in out and "reloaded 2 allowed keys" in out
    uid, eff = _caps(out, "main")
    assert uid >= 61184 and eff == CAP_NET_BIND_SERVICE
    assert "-rw-------" in out and out.rstrip().endswith("inactive")


def test_interface_unit_runs_as_declared(image, tmp_path) -> None:
    need_sandbox()
    if shutil.which("wg") is None:
        prereq_missing("wireguard-tools is not installed")
    _img, layer = image
    box = Sandbox(tmp_path / "box", layers=(layer,))
    shutil.copy(UNITS / "wgc@.service", box.share)
    peer = base64.b64encode(os.urandom(32)).decode()
    out = box.check(f"""
install -m 0644 'wgc@.service' /etc/systemd/system/
install -d -m 0700 /etc/wgc
key=$(/opt/wgc/bin/wgc genkey)
cat > /etc/wgc/wg0.conf <<EOF
[Interface]
PrivateKey = $key
Address = 10.99.0.1/24
ListenPort = 51820

[Peer]
PublicKey = {peer}
AllowedIPs = 10.99.0.2/32
EOF
chmod 0600 /etc/wgc/wg0.conf
systemctl enable --now wgc@wg0
for i in $(seq 100); do [ -S /run/wireguard/wg0.sock ] && break; sleep 0.2; done
wg show wg0 listen-port | sed "s/^/listen-port=/"
ip -br addr show wg0
pid=$(cat /run/fake-systemd/wgc@wg0.service.pid)
grep -E '^(Uid|CapEff):' /proc/$pid/status | sed 's/^/main /'
systemctl stop wgc@wg0
ip link show wg0 2>/dev/null || echo wg0-gone
""", timeout=180)
    assert "listen-port=51820" in out and "10.99.0.1/24" in out and "wg0-gone" in out
    uid, eff = _caps(out, "main")
    assert uid >= 61184 and eff == CAP_NET_ADMIN
