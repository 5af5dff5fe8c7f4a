"""The relay never sees plaintext: WireGuard (wireguard-go) in two namespaces whose peer endpoints are
UDP<->DERP forwarders, relayed by `wgc derper` in a third namespace over plain HTTP (so the capture holds
every DERP byte in the clear). A marker sent through the tunnel arrives at the far end and appears
nowhere in what the relay's interfaces received."""
from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading
import time

import pytest

from derp.keys import private_key_from_random, public_key_of
from tools.natlab.netns import Lab, link
from tests.support.capture import start_tcpdump, wait_captured
from tests.support.prereq import require_binary, require_root

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, PYTHONPATH=ROOT, WG_PROCESS_FOREGROUND="1", LOG_LEVEL="error")


def _readline(proc: subprocess.Popen, timeout: float) -> str:
    out: list[str] = []
    t = threading.Thread(target=lambda: out.append(proc.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    return out[0] if out else ""


def _wireguard(ns, name: str, priv: bytes, port: int, addr: str, peer_pub: bytes, peer_ip: str,
               endpoint_port: int, workdir) -> None:
    ns.popen("wireguard-go", "-f", name, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    keyfile = workdir / f"{name}.key"
    fd = os.open(keyfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(base64.b64encode(priv).decode() + "\n")
    deadline = time.monotonic() + 10
    while ns.run("wg", "show", name, check=False).returncode != 0:
        assert time.monotonic() < deadline, "wireguard-go did not come up"
        time.sleep(0.05)
    ns.run("wg", "set", name, "listen-port", str(port), "private-key", str(keyfile), "peer",
           base64.b64encode(peer_pub).decode(), "allowed-ips", f"{peer_ip}/32",
           "endpoint", f"127.0.0.1:{endpoint_port}", "persistent-keepalive", "1")
    ns.run("ip", "address", "add", f"{addr}/24", "dev", name)
    ns.run("ip", "link", "set", name, "mtu", "1280", "up")


@pytest.mark.netns
@pytest.mark.timeout(90)
def test_relay_never_sees_plaintext(tmp_path) -> None:
    require_root()
    require_binary("wireguard-go", "wg", "tcpdump", "ip")
    marker = b"PLAINTEXT-MARKER-" + os.urandom(8).hex().encode()
    control = b"CONTROL-IN-CLEAR-" + os.urandom(8).hex().encode()
    with Lab() as lab:
        na, nb, nr = lab.namespace("dpa"), lab.namespace("dpb"), lab.namespace("dpr")
        ra, _ = link(nr, ["10.201.1.1/24"], na, ["10.201.1.2/24"])
        rb, _ = link(nr, ["10.201.2.1/24"], nb, ["10.201.2.2/24"])
        pcap = tmp_path / "relay.pcap"
        start_tcpdump(nr, str(pcap), "-i", "any", "--immediate-mode", "-n", "-s", "0", "tcp", stderr=subprocess.PIPE)
        srv = nr.popen(sys.executable, "-m", "derp", "-a", ":3340", "--certmode", "none", "--no-stun",
                       "--open-relay", "--metrics-addr", "off", env=ENV, cwd=ROOT, text=True)
        assert _readline(srv, 15).startswith("derper ready")
        ka, kb = private_key_from_random(os.urandom(32)), private_key_from_random(os.urandom(32))
        pa, pb = public_key_of(ka), public_key_of(kb)
        fwd = {}
        for ns, url, me, peer in ((na, "http://10.201.1.1:3340/derp", ka, pb),
                                  (nb, "http://10.201.2.1:3340/derp", kb, pa)):
            fwd[ns.name] = ns.popen(sys.executable, os.path.join(ROOT, "tests/derp/derp_forwarder.py"), url,
                                    me.hex(), peer.hex(), "40000", "51820", env=ENV, cwd=ROOT, text=True)
            assert _readline(fwd[ns.name], 15).startswith("forwarder ready")
        _wireguard(na, "wgdpa", ka, 51820, "10.99.0.1", pb, "10.99.0.2", 40000, tmp_path)
        _wireguard(nb, "wgdpb", kb, 51820, "10.99.0.2", pa, "10.99.0.1", 40000, tmp_path)
        listener = nb.popen(sys.executable, "-c",
                            "import socket,sys; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); "
                            "s.bind(('10.99.0.2',9999)); print('up',flush=True); d,_=s.recvfrom(4096); "
                            "sys.stdout.write(d.decode()+'\\n'); sys.stdout.flush()", text=True)
        assert _readline(listener, 10).startswith("up")
        got = ""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not got:
            na.run("python3", "-c", "import socket,sys; socket.socket(socket.AF_INET,socket.SOCK_DGRAM)"
                   f".sendto({marker!r}, ('10.99.0.2', 9999))", check=False)
            got = _readline(listener, 0.5)
        assert marker.decode() in got, "the marker did not cross the tunnel"
        # control: bytes handed to the forwarder directly (not through WireGuard) ARE seen by the relay
        na.run("python3", "-c", "import socket; socket.socket(socket.AF_INET,socket.SOCK_DGRAM)"
               f".sendto({control!r}, ('127.0.0.1', 40000))")
        wait_captured(str(pcap), control)   # relayed last: everything before it is in the file too
        nr.kill_processes()  # stops tcpdump (flushes), the server
        captured = pcap.read_bytes()
    assert b"Upgrade: DERP" in captured, "the capture holds no DERP traffic: it would prove nothing"
    assert control in captured, "the capture misses relayed payloads: it would prove nothing"
    assert marker not in captured, "the relay received the plaintext marker"
