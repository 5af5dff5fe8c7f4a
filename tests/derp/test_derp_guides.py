"""`wgc derper` started with the command lines of the self-hosting guides, unchanged but for paths and the
test CA: derper's systemd `ExecStart` and compose `command:` (Go flag syntax, `-verify-clients`) and
nefia-derp's compose `command:` list with its token variable. Each runs in a network namespace of its own
(they bind :443, :80, :3478, :8443 and 127.0.0.1:9090 there) and relays between two DERP clients inside it.
The systemd line runs with `-certmode=manual` and a test CA's certificate beside a REAL `wgc up --foreground`
interface in the same namespace (key K0, one peer K1): K1 is admitted and relays to K0, an unknown K2 is
refused until the stock `wg set IFACE peer K2 ...` adds it over the UAPI socket, and `wg set IFACE peer K1
remove` gets K1 disconnected and refused (the relay re-reads the interface's control socket every 2 s). The
`-certmode=letsencrypt` lines run against pebble (tests/derp/pebble_lab.py) beside a scripted control socket
(tests/support/control_target.py)."""
from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time

import pytest

from derp.aio.certs import make_ca, make_cert, write_pair
from derp.keys import private_key_from_random, public_key_of
from tests.derp.pebble_lab import PebbleLab
from tools.acmelab import DIRECTORY, ENV, HOST, readline as _readline
from tests.support.control_target import ScriptedTarget, peer, sample_status
from tests.support.prereq import require_binary, require_root
from tools.natlab.netns import Namespace, unique_name
from wgclient.aio.control_server import start_control_server

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Tailscale's derper as a systemd unit runs it (ExecStart=), in Go's flag syntax.
DERPER_EXECSTART = ("/usr/local/bin/derper -a=:443 -stun -hostname=derp.wgc.test -certmode=letsencrypt "
                    "-certdir=/var/lib/derper/certs -c=/var/lib/derper/derper.key -verify-clients")
# derper in a compose file: `command:` as a list.
DERPER_COMPOSE = ["--hostname=derp.wgc.test", "--certmode=letsencrypt", "--certdir=/var/lib/derper/certs",
                  "--stun", "--verify-clients", "-a=:443"]
# nefia-derp's deployment guide: compose `command:` and `environment: NEFIA_DERP_METRICS_TOKEN: "${DERP_METRICS_TOKEN}"`.
NEFIA_COMPOSE = ["--addr=:8443", "--max-clients=10000", "--metrics-port=9090",
                 "--allowed-keys-file=/etc/nefia/allowed-keys.txt"]


def wgc_derper(argv: list[str], tmp_path) -> list[str]:
    """The guide's arguments for `wgc derper`, its paths moved into the test's directory."""
    out = []
    for arg in argv:
        for old, new in (("/var/lib/derper", str(tmp_path / "derper")), ("/etc/nefia", str(tmp_path / "nefia"))):
            arg = arg.replace(old, new)
        out.append(arg)
    return [sys.executable, "-m", "wgclient.cli", "derper", *out]


class Interface:
    """A `wgc up` interface's control socket (scripted) on an event loop of its own, as a daemon has it."""

    def __init__(self, control_dir: str, own: bytes, peers: list[bytes]) -> None:
        self._saved = os.environ.get("WGC_CONTROL_DIR")   # start_control_server reads it; restored by close()
        os.environ["WGC_CONTROL_DIR"] = control_dir
        snap = sample_status("wg0")
        snap["public_key"] = _b64(own)
        snap["peers"] = [peer(0, None, ["100.64.0.9/32"], "none") | {"public_key": _b64(p), "short": _b64(p)[:8]}
                         for p in peers]
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(start_control_server("wg0", ScriptedTarget(snap)),
                                                       self.loop).result(5)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()
        if self._saved is None:
            os.environ.pop("WGC_CONTROL_DIR", None)
        else:
            os.environ["WGC_CONTROL_DIR"] = self._saved


class WgcUp:
    """A real `wgc up CONF --foreground` in the guide's namespace: [Interface] key `own`, one [Peer] `peer`.
    `env` points its control, pid and log directories into the test's directory (the derper gets the same,
    so -verify-clients finds the control socket); the UAPI socket stays in /var/run/wireguard, where `wg`
    looks, under a name unique to this test."""

    def __init__(self, ns: Namespace, tmp_path, own: bytes, peer: bytes) -> None:
        self.ns, self.name = ns, unique_name("wgv")
        self.env = {"WGC_CONTROL_DIR": str(tmp_path / "ctl"), "WGC_PID_DIR": str(tmp_path / "pid"),
                    "WGC_LOG_DIR": str(tmp_path / "log")}
        self.conf = tmp_path / f"{self.name}.conf"
        fd = os.open(self.conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"[Interface]\nPrivateKey = {_b64(own)}\n\n[Peer]\nPublicKey = {_b64(peer)}\n"
                     "AllowedIPs = 10.9.0.1/32\n")
        self.uapi = f"/var/run/wireguard/{self.name}.sock"
        self.control = os.path.join(self.env["WGC_CONTROL_DIR"], self.name + ".ctl")
        self.log_path = tmp_path / f"{self.name}.stderr"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {k: v for k, v in ENV.items() if k != "WGC_RUN_DIR"} | self.env
        with open(self.log_path, "wb") as log:
            self.proc = self.ns.popen(sys.executable, "-m", "wgclient.cli", "up", str(self.conf), "--foreground",
                                      env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 30
        while not (os.path.exists(self.uapi) and os.path.exists(self.control)):
            assert self.proc.poll() is None, f"wgc up exited: {self.log_path.read_text()}"
            assert time.monotonic() < deadline, f"wgc up: no UAPI/control socket in 30 s: {self.log_path.read_text()}"
            time.sleep(0.05)

    def wg_set(self, *args: str) -> None:
        """The stock `wg set IFACE ARGS` (wireguard-tools) over the UAPI socket."""
        res = self.ns.run("wg", "set", self.name, *args, check=False, timeout=10)
        assert res.returncode == 0, f"wg set {' '.join(args)}: {res.stderr.strip()}"

    def stop(self) -> None:
        """SIGTERM (its own clean shutdown), SIGKILL after 15 s; a UAPI socket left behind is removed."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(15)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if os.path.exists(self.uapi):
            os.unlink(self.uapi)     # the name is unique to this test, so the socket was ours


def _b64(key: bytes) -> str:
    import base64
    return base64.b64encode(key).decode()


class Guide:
    """One namespace with `wgc derper` and the netns agent (tests/derp/netns_agent.py) that holds clients."""

    def __init__(self, tmp_path, ns: Namespace | None = None) -> None:
        self.tmp, self.own_ns = tmp_path, ns is None
        self.ns = ns or Namespace.create("guide")
        self.agent = self.ns.popen(sys.executable, os.path.join(ROOT, "tests", "derp", "netns_agent.py"),
                                   env=ENV, cwd=ROOT, stdin=subprocess.PIPE, text=True)
        assert '"ready"' in _readline(self.agent.stdout, 20), "the netns agent did not start"
        self.proc: subprocess.Popen | None = None

    def start(self, argv: list[str], env: dict[str, str]) -> str:
        self.log_path = self.tmp / "derper.log"
        self.proc = self.ns.popen(*argv, env={**ENV, **env}, cwd=ROOT, stderr=open(self.log_path, "wb"), text=True)
        line = _readline(self.proc.stdout, 30)
        assert line.startswith("derper ready"), f"{line!r} {self.log_path.read_text()}"
        return line

    def call(self, op: str, **kw) -> dict:
        self.agent.stdin.write(json.dumps(dict(kw, op=op)) + "\n")
        self.agent.stdin.flush()
        line = _readline(self.agent.stdout, 60)
        assert line, f"the netns agent did not answer {op}"
        return json.loads(line)

    def close(self) -> None:
        try:
            self.agent.stdin.close()
        except OSError:
            pass
        if self.own_ns:
            self.ns.delete()
        elif self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)


def keys(n: int) -> list[tuple[bytes, bytes]]:
    out = []
    for _ in range(n):
        priv = private_key_from_random(os.urandom(32))
        out.append((priv, public_key_of(priv)))
    return out


def derpmap(tmp_path) -> str:
    node = {"Name": "900a", "RegionID": 900, "HostName": HOST, "IPv4": "127.0.0.1", "IPv6": "none"}
    path = tmp_path / "derpmap.json"
    path.write_text(json.dumps({"Regions": {"900": {"RegionID": 900, "RegionCode": "guide", "Nodes": [node]}}}))
    return str(path)


def check_verify_clients(guide: Guide, mapfile: str, ca: str, allowed: list[tuple[bytes, bytes]],
                         stranger: tuple[bytes, bytes]) -> None:
    out = guide.call("connect", map=mapfile, ca=ca, name="peers", keys=[k.hex() for k, _ in allowed])
    assert out.get("relayed"), out
    out = guide.call("admitted", map=mapfile, ca=ca, key=stranger[0].hex())
    assert out == {"admitted": False, "why": out.get("why")}, out


@pytest.fixture
def netns():
    require_root()
    require_binary("ip")


def wait_admitted(guide: Guide, mapfile: str, ca: str, key: bytes, want: bool, within: float = 20) -> None:
    """Until the relay admits (or refuses) `key`: the derper re-reads the interface every 2 s."""
    deadline = time.monotonic() + within
    while True:
        out = guide.call("admitted", map=mapfile, ca=ca, key=key.hex())
        if out.get("admitted") is want:
            return
        assert time.monotonic() < deadline, f"admitted is not {want} after {within} s: {out}"
        time.sleep(0.2)


def test_derpers_systemd_line_with_manual_certificates(netns, tmp_path) -> None:
    require_binary("wg")
    (k0, p0), (k1, p1), (k2, p2) = keys(3)
    certdir = tmp_path / "derper" / "certs"
    certdir.mkdir(parents=True)
    ca = make_ca("guide test CA")
    cafile = str(tmp_path / "ca.pem")
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    write_pair(make_cert([HOST], ca), str(certdir / f"{HOST}.crt"), str(certdir / f"{HOST}.key"))
    argv = wgc_derper(shlex.split(DERPER_EXECSTART)[1:], tmp_path)
    argv[argv.index("-certmode=letsencrypt")] = "-certmode=manual"
    guide = Guide(tmp_path)
    iface = WgcUp(guide.ns, tmp_path, k0, p1)
    try:
        iface.start()
        ready = guide.start(argv, iface.env)
        assert "addr=0.0.0.0:443" in ready and "tls=yes" in ready and "http=80" in ready and "stun=3478" in ready
        mapfile = derpmap(tmp_path)
        # the peer K1 is admitted and relays both ways with K0, the interface's own key; a stranger is not
        out = guide.call("connect", map=mapfile, ca=cafile, name="peers", keys=[k1.hex(), k0.hex()])
        assert out.get("relayed"), out
        out = guide.call("admitted", map=mapfile, ca=cafile, key=k2.hex())
        assert out == {"admitted": False, "why": out.get("why")}, out
        # a peer added at runtime with the stock tool is admitted at the next poll
        iface.wg_set("peer", _b64(p2), "allowed-ips", "10.9.9.9/32")
        wait_admitted(guide, mapfile, cafile, k2, True)
        # a peer removed: refused, and its open connection closed (the kept pair no longer relays)
        iface.wg_set("peer", _b64(p1), "remove")
        wait_admitted(guide, mapfile, cafile, k1, False)
        out = guide.call("relay", name="peers")
        assert "relayed" not in out and "not relayed" in out.get("error", ""), out
        assert (tmp_path / "derper" / "derper.key").exists()         # -c: the node key is kept
    finally:
        iface.stop()
        guide.close()


@pytest.fixture
def lab(tmp_path):
    require_root()
    require_binary("pebble", "pebble-challtestsrv", "ip")
    lab = PebbleLab(tmp_path)
    yield lab
    lab.close()


@pytest.mark.parametrize("line", ["execstart", "compose"])
def test_derpers_letsencrypt_lines_against_pebble(lab, tmp_path, line) -> None:
    (own, pown), a, b, stranger = keys(4)
    args = shlex.split(DERPER_EXECSTART)[1:] if line == "execstart" else DERPER_COMPOSE
    # the only additions: where pebble is (instead of Let's Encrypt) and the CA its HTTPS answers with
    argv = wgc_derper(args, tmp_path) + [f"--acme-directory={DIRECTORY}", f"--acme-ca-file={lab.wfe_ca}"]
    iface = Interface(str(tmp_path / "ctl"), pown, [a[1], b[1]])
    guide = Guide(tmp_path, lab.ns)
    try:
        ready = guide.start(argv, {"WGC_CONTROL_DIR": str(tmp_path / "ctl")})
        assert "addr=0.0.0.0:443" in ready and "tls=yes" in ready and "stun=3478" in ready
        lab.wait_for("a certificate issued",
                     lambda: lab.metrics().get('derp_acme_orders_total{result="ok"}', 0) >= 1, 90)
        check_verify_clients(guide, lab.derpmap, lab.root_ca, [a, b], stranger)
    finally:
        guide.close()
        iface.close()


def test_nefias_compose_command_list_with_its_token_variable(netns, tmp_path) -> None:
    a, b, stranger = keys(3)
    (tmp_path / "nefia").mkdir()
    (tmp_path / "nefia" / "allowed-keys.txt").write_text(f"{_b64(a[1])}\n{_b64(b[1])}\n")
    guide = Guide(tmp_path)
    try:
        ready = guide.start(wgc_derper(NEFIA_COMPOSE, tmp_path), {"NEFIA_DERP_METRICS_TOKEN": "compose-s3cret"})
        assert "addr=0.0.0.0:8443" in ready and "metrics=127.0.0.1:9090" in ready and "tls=no" in ready
        url = "http://127.0.0.1:8443/derp"            # no certmode on :8443: plain HTTP, as derper
        out = guide.call("connect", url=url, name="pair", keys=[a[0].hex(), b[0].hex()])
        assert out.get("relayed"), out
        assert guide.call("admitted", url=url, key=stranger[0].hex())["admitted"] is False
        health = guide.call("get", url="http://127.0.0.1:8443/healthz",
                            headers={"Authorization": "Bearer compose-s3cret"})
        assert health["status"] == 200 and json.loads(health["body"])["clients"] == 2
        metrics = guide.call("get", url="http://127.0.0.1:9090/metrics")
        assert metrics["status"] == 200 and 'derp_admission_refused_total{reason="acl"} 1.0' in metrics["body"]
    finally:
        guide.close()
