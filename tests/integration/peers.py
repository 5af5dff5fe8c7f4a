"""Peer factories for interop tests and benchmarks: a WireGuard interface in a network namespace.

`WgGoPeer` runs Debian's wireguard-go; `WgcPeer` runs `wgc up CONFIG --foreground`. Both share one
contract so the same test drives either as the device under test (DUT):

    peer = WgGoPeer(ns, name, private_key, listen_port, address_cidrs, mtu=1420)
    peer.start(); peer.add_peer(public_key, allowed_ips, endpoint=None, psk=None, keepalive=0)
    peer.show() -> DeviceDump     # `wg show NAME dump`, parsed
    peer.stop()

Both are configured after start with the stock `wg` tool over the UAPI socket
`/var/run/wireguard/NAME.sock`. That directory is shared by all namespaces, so names must be unique
(use `tools.natlab.netns.unique_name`). Keys are base64 strings as `wg genkey` prints them; files holding
keys are written 0600 into a private work directory that `stop()` removes.

`WGC_INTEROP_DUT` (`wgc` or `wireguard-go`) picks the class `dut_class()` returns. Also here: helpers to
make keys, ping, and move a sha256-checked stream of bytes over TCP between namespaces.
"""
from __future__ import annotations

import base64
import contextlib
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tools.natlab.netns import Lab, Namespace, link, unique_name

RUN_DIR = os.environ.get("WGC_RUN_DIR", "/var/run/wireguard")
# The device under test until wgc's data path lands; the lead flips this to "wgc".
DEFAULT_DUT = "wgc"
START_TIMEOUT = 10.0


class PeerError(RuntimeError):
    """A peer process failed to start or a `wg` command against it failed."""


# ---------------------------------------------------------------------------------------------- keys
def genkey() -> str:
    """A fresh private key, base64, clamped the way `wg genkey` clamps it."""
    raw = bytearray(os.urandom(32))
    raw[0] &= 248
    raw[31] = (raw[31] & 127) | 64
    return base64.b64encode(bytes(raw)).decode()


def pubkey(private_key: str) -> str:
    priv = X25519PrivateKey.from_private_bytes(base64.b64decode(private_key))
    return base64.b64encode(priv.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def format_endpoint(endpoint: tuple[str, int] | str) -> str:
    if isinstance(endpoint, str):
        return endpoint
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ---------------------------------------------------------------------------------------- wg show dump
@dataclass(frozen=True)
class PeerDump:
    public_key: str
    preshared_key: str | None
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    latest_handshake: int
    rx_bytes: int
    tx_bytes: int
    persistent_keepalive: int


@dataclass(frozen=True)
class DeviceDump:
    private_key: str | None
    public_key: str | None
    listen_port: int
    fwmark: int
    peers: dict[str, PeerDump] = field(default_factory=dict)

    def __repr__(self) -> str:  # never print the private key
        return f"DeviceDump(public_key={self.public_key!r}, listen_port={self.listen_port}, peers={self.peers!r})"


def _none(value: str) -> str | None:
    return None if value in ("(none)", "off", "") else value


def parse_dump(text: str) -> DeviceDump:
    """Parse `wg show NAME dump`: one device line, then one tab-separated line per peer."""
    lines = [line for line in text.splitlines() if line]
    if not lines:
        raise PeerError("empty `wg show dump` output")
    dev = lines[0].split("\t")
    if len(dev) != 4:
        raise PeerError(f"unexpected device line in dump: {lines[0]!r}")
    peers = {}
    for line in lines[1:]:
        f = line.split("\t")
        if len(f) != 8:
            raise PeerError(f"unexpected peer line in dump: {line!r}")
        allowed = tuple(sorted(a for a in f[3].split(",") if a and a != "(none)"))
        peers[f[0]] = PeerDump(f[0], _none(f[1]), _none(f[2]), allowed, int(f[4]), int(f[5]), int(f[6]),
                               0 if f[7] == "off" else int(f[7]))
    return DeviceDump(_none(dev[0]), _none(dev[1]), int(dev[2]), 0 if dev[3] == "off" else int(dev[3], 0),
                      peers)


# ------------------------------------------------------------------------------------------- the peers
def _terminate(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(5)
    for stream in (proc.stdout, proc.stderr):
        if stream:
            stream.close()


class _Peer:
    """What both implementations share: key files, `wg set`/`wg show`, addresses, stopping."""

    kind = "?"

    def __init__(self, ns: Namespace, name: str, private_key: str, listen_port: int,
                 address_cidrs: list[str] | tuple[str, ...], mtu: int = 1420, *, workdir: str | None = None):
        if len(name) > 15:
            raise ValueError(f"interface name {name!r} longer than 15 characters")
        self.ns, self.name, self.private_key = ns, name, private_key
        self.public_key = pubkey(private_key)
        self.listen_port, self.mtu = listen_port, mtu
        self.address_cidrs = tuple(address_cidrs)
        self._own_workdir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix=f"wgc-{name}-")
        os.chmod(self.workdir, 0o700)
        self.proc: subprocess.Popen | None = None
        self._files = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r} in {self.ns.name}, port {self.listen_port})"

    @property
    def sock_path(self) -> str:
        return os.path.join(RUN_DIR, f"{self.name}.sock")

    @property
    def addresses(self) -> list[str]:
        """The interface addresses without prefix length, IPv4 first."""
        return [str(ipaddress.ip_interface(a).ip) for a in self.address_cidrs]

    def address(self, version: int = 4) -> str:
        return next(a for a in self.addresses if ipaddress.ip_address(a).version == version)

    def secret_file(self, content: str) -> str:
        self._files += 1
        path = os.path.join(self.workdir, f"secret{self._files}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(content + "\n")
        return path

    # -- `wg`
    def wg(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run `wg ARGS` in the peer's namespace (the UAPI socket is reached by path)."""
        res = self.ns.run("wg", *args, check=False, timeout=10)
        if check and res.returncode != 0:
            raise PeerError(f"wg {' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}")
        return res

    def wg_set(self, *args: str) -> None:
        self.wg("set", self.name, *args)

    def add_peer(self, public_key: str, allowed_ips: list[str] | tuple[str, ...] | str,
                 endpoint: tuple[str, int] | str | None = None, psk: str | None = None,
                 keepalive: int = 0) -> None:
        if not isinstance(allowed_ips, str):
            allowed_ips = ",".join(allowed_ips)
        args = ["peer", public_key, "allowed-ips", allowed_ips]
        if endpoint is not None:
            args += ["endpoint", format_endpoint(endpoint)]
        if psk is not None:
            args += ["preshared-key", self.secret_file(psk)]
        if keepalive:
            args += ["persistent-keepalive", str(keepalive)]
        self.wg_set(*args)

    def remove_peer(self, public_key: str) -> None:
        self.wg_set("peer", public_key, "remove")

    def show(self) -> DeviceDump:
        return parse_dump(self.wg("show", self.name, "dump").stdout)

    # -- lifecycle
    @property
    def log_path(self) -> str:
        return os.path.join(self.workdir, f"{self.name}.log")

    def _log(self):
        """The process's output goes to a file (a pipe nobody reads would fill and stall it)."""
        return open(self.log_path, "a")

    def log_tail(self, n: int = 2000) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-n:]
        except OSError:
            return ""

    def report(self) -> str:
        """What to look at after a failure: the device as `wg show` sees it and the end of the log."""
        shown = self.wg("show", self.name, check=False) if self.proc and self.proc.poll() is None else None
        state = (shown.stdout or shown.stderr).strip() if shown else "(process not running)"
        state = "\n".join(line for line in state.splitlines() if "private key" not in line)
        return f"--- {self!r}: wg show\n{state}\n--- {self!r}: log tail\n{self.log_tail(3000).rstrip()}"

    def _wait_for_socket(self, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise PeerError(f"{what} for {self.name} exited with {self.proc.returncode}: "
                                f"{self.log_tail().strip()}")
            if os.path.exists(self.sock_path) and self.wg("show", self.name, "dump", check=False).returncode == 0:
                return
            time.sleep(0.02)
        raise PeerError(f"{what} for {self.name}: no UAPI socket {self.sock_path} after {START_TIMEOUT} s")

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL), remove a socket it left behind and the work dir."""
        try:
            if self.proc is not None:
                _terminate(self.proc)
                if os.path.exists(self.sock_path):
                    os.unlink(self.sock_path)  # the name is unique to this peer, so the socket was ours
        finally:
            if self._own_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class WgGoPeer(_Peer):
    """wireguard-go in the foreground; addresses, MTU and link state set with `ip`, keys with `wg set`."""

    kind = "wireguard-go"

    def start(self) -> "WgGoPeer":
        env = dict(os.environ, WG_PROCESS_FOREGROUND="1", LOG_LEVEL=os.environ.get("WG_GO_LOG", "error"))
        with self._log() as log:
            self.proc = self.ns.popen("wireguard-go", "-f", self.name, env=env, stdout=log,
                                      stderr=subprocess.STDOUT)
        self._wait_for_socket("wireguard-go")
        self.wg_set("listen-port", str(self.listen_port), "private-key", self.secret_file(self.private_key))
        for cidr in self.address_cidrs:
            extra = ["nodad"] if ":" in cidr else []
            self.ns.run("ip", "address", "add", cidr, "dev", self.name, *extra)
        self.ns.run("ip", "link", "set", self.name, "mtu", str(self.mtu), "up")
        return self


# `wgc` from this source tree (an installed console script could belong to another checkout).
_WGC_MAIN = "import sys; from wgclient.cli.main import main; sys.exit(main(sys.argv[1:]))"


class WgcPeer(_Peer):
    """`wgc up <workdir>/<name>.conf --foreground` (a wg-quick style file without peers)."""

    kind = "wgc"

    def config_text(self) -> str:
        lines = ["[Interface]", f"PrivateKey = {self.private_key}", f"ListenPort = {self.listen_port}",
                 f"MTU = {self.mtu}"]
        lines += [f"Address = {cidr}" for cidr in self.address_cidrs]
        return "\n".join(lines) + "\n"

    def start(self) -> "WgcPeer":
        path = os.path.join(self.workdir, f"{self.name}.conf")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.config_text())
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        with self._log() as log:
            self.proc = self.ns.popen(sys.executable, "-c", _WGC_MAIN, "up", path, "--foreground",
                                      env=env, stdout=log, stderr=subprocess.STDOUT)
        self._wait_for_socket("wgc up")
        self._wait_for_addresses()
        return self

    def _wait_for_addresses(self) -> None:
        """The UAPI socket may come up before the addresses are set; wait for those too."""
        want = set(self.addresses)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            out = self.ns.run("ip", "-o", "address", "show", "dev", self.name, check=False).stdout
            have = {ipaddress.ip_interface(f.split()[3]).ip.compressed for f in out.splitlines()
                    if len(f.split()) > 3 and f.split()[2] in ("inet", "inet6")}
            if want <= have:
                return
            if time.monotonic() > deadline or (self.proc is not None and self.proc.poll() is not None):
                raise PeerError(f"wgc up for {self.name}: addresses {sorted(want - have)} never appeared: "
                                f"{self.log_tail().strip()}")
            time.sleep(0.02)


def dut_kind() -> str:
    kind = os.environ.get("WGC_INTEROP_DUT", DEFAULT_DUT)
    if kind not in PEER_CLASSES:
        raise ValueError(f"WGC_INTEROP_DUT={kind!r}: expected one of {sorted(PEER_CLASSES)}")
    return kind


def dut_class() -> type[_Peer]:
    """The device-under-test class picked by WGC_INTEROP_DUT."""
    return PEER_CLASSES[dut_kind()]


PEER_CLASSES: dict[str, type[_Peer]] = {"wireguard-go": WgGoPeer, "wgc": WgcPeer}


# ------------------------------------------------------------------------------------ a peer pair
OUTER = {4: ("192.0.2.1", "192.0.2.2", 24), 6: ("2001:db8:77::1", "2001:db8:77::2", 64)}
INNER_A, INNER_B = ("10.99.0.1/24", "fd99::1/64"), ("10.99.0.2/24", "fd99::2/64")
PORT_A, PORT_B = 51820, 51821


@dataclass
class Pair:
    """Two namespaces joined by a veth, a WireGuard peer in each, each knowing the other.

    `a` sits in `ns_a` on the veth `veth_a` with outer address `outer_a`; likewise `b`."""

    lab: Lab
    ns_a: Namespace
    ns_b: Namespace
    veth_a: str
    veth_b: str
    outer_a: str
    outer_b: str
    a: _Peer
    b: _Peer
    psk: str | None

    def endpoint_of(self, side: str) -> tuple[str, int]:
        return (self.outer_a, self.a.listen_port) if side == "a" else (self.outer_b, self.b.listen_port)


@contextlib.contextmanager
def peer_pair(a_cls: type[_Peer], b_cls: type[_Peer], *, outer: int = 4, endpoints: str = "ab",
              psk: str | None = None, mtu: int = 1420, keepalive: int = 0, report: bool = False):
    """Yield a `Pair`; `endpoints` says which sides are told the other's endpoint ("ab", "a", "b", "").

    A side not told the endpoint can only answer a handshake, never start one. Everything made here
    (processes, namespaces, key files) is removed on exit, also after a failure. With `report`, the
    peers' final `wg show` and log tails are printed at exit (pytest shows them for failed tests)."""
    lab = Lab()
    peers: list[_Peer] = []
    try:
        ns_a, ns_b = lab.namespace("wga"), lab.namespace("wgb")
        oa, ob, plen = OUTER[outer]
        veth_a, veth_b = link(ns_a, [f"{oa}/{plen}"], ns_b, [f"{ob}/{plen}"])
        a = a_cls(ns_a, unique_name("wga"), genkey(), PORT_A, INNER_A, mtu)
        peers.append(a)
        b = b_cls(ns_b, unique_name("wgb"), genkey(), PORT_B, INNER_B, mtu)
        peers.append(b)
        a.start()
        b.start()
        a.add_peer(b.public_key, host_routes(INNER_B), (ob, PORT_B) if "a" in endpoints else None, psk, keepalive)
        b.add_peer(a.public_key, host_routes(INNER_A), (oa, PORT_A) if "b" in endpoints else None, psk, keepalive)
        yield Pair(lab, ns_a, ns_b, veth_a, veth_b, oa, ob, a, b, psk)
    finally:
        if report:
            for peer in peers:
                print(peer.report())
        failures = []
        for peer in reversed(peers):
            try:
                peer.stop()
            except Exception as exc:  # stop the others and remove the namespaces regardless
                failures.append(exc)
        lab.close()
        if failures:
            raise failures[0]


def host_routes(cidrs) -> list[str]:
    """The single-host prefixes (/32, /128) of interface addresses given as CIDRs."""
    return [str(ipaddress.ip_network(ipaddress.ip_interface(c).ip)) for c in cidrs]


# ------------------------------------------------------------------------------------------ traffic
def ping(ns: Namespace, address: str, count: int = 3, deadline: float = 10.0) -> bool:
    """True when `count` echo replies arrive before `deadline` seconds (ping keeps retrying until then)."""
    res = ns.run("ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-w", str(int(deadline)), address,
                 check=False, timeout=deadline + 5)
    return res.returncode == 0


_RECEIVER = r"""
import hashlib, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ':' in host else socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port)); s.listen(1)
print('ready', flush=True)
c, _ = s.accept()
h, n, buf = hashlib.sha256(), 0, bytearray(1 << 16)
while True:
    k = c.recv_into(buf)
    if not k:
        break
    h.update(memoryview(buf)[:k]); n += k
print(n, h.hexdigest(), flush=True)
"""

# The sender of start_transfer and of streams that run until told to stop: `size` random bytes, or with
# size 0 until SIGUSR1; paced to `rate` bytes/s when given; prints 'sending' once connected, then the
# byte count and sha256 of what it sent.
_SENDER = r"""
import hashlib, os, signal, socket, sys, time
host, port, size, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
stop = []
signal.signal(signal.SIGUSR1, lambda *_: stop.append(1))
deadline = time.monotonic() + 10
while True:
    try:
        s = socket.create_connection((host, port), timeout=2)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.1)
s.settimeout(None)
print('sending', flush=True)
h, sent, chunk, t0 = hashlib.sha256(), 0, 1 << 16, time.monotonic()
while (sent < size) if size > 0 else not stop:
    block = os.urandom(min(chunk, size - sent) if size > 0 else chunk)
    h.update(block); s.sendall(block); sent += len(block)
    if rate > 0:
        ahead = sent / rate - (time.monotonic() - t0)
        if ahead > 0:
            time.sleep(ahead)
s.shutdown(socket.SHUT_WR)
s.recv(1)
print(sent, h.hexdigest(), flush=True)
"""


@dataclass
class Transfer:
    """A running TCP transfer of random bytes; `result()` gives both sides' (bytes, sha256)."""

    receiver: subprocess.Popen
    sender: subprocess.Popen
    timeout: float

    def result(self) -> tuple[tuple[int, str], tuple[int, str]]:
        deadline = time.monotonic() + self.timeout
        outs = []
        for name, proc in (("sender", self.sender), ("receiver", self.receiver)):
            try:
                out, err = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise PeerError(f"TCP transfer {name} did not finish within {self.timeout} s") from None
            if proc.returncode != 0:
                raise PeerError(f"TCP transfer {name} failed ({proc.returncode}): {err.strip()[-1000:]}")
            n, digest = out.split()[-2:]
            outs.append((int(n), digest))
        return outs[0], outs[1]


def start_transfer(sender_ns: Namespace, receiver_ns: Namespace, address: str, size: int, *,
                   port: int = 5201, rate: float = 0, timeout: float = 30) -> Transfer:
    """Start a receiver listening on `address` in `receiver_ns` and a sender of `size` random bytes
    (paced to `rate` bytes/s when given) in `sender_ns`."""
    receiver = receiver_ns.popen(sys.executable, "-c", _RECEIVER, address, str(port), text=True)
    line = receiver.stdout.readline()
    if line.strip() != "ready":
        receiver.kill()
        _, err = receiver.communicate()
        raise PeerError(f"TCP receiver failed to listen on {address}:{port}: {err.strip()[-1000:]}")
    sender = sender_ns.popen(sys.executable, "-c", _SENDER, address, str(port), str(size), str(rate), text=True)
    return Transfer(receiver, sender, timeout)


def transfer(sender_ns: Namespace, receiver_ns: Namespace, address: str, size: int, **kw):
    """Run a transfer to completion; returns ((sent bytes, sha256), (received bytes, sha256))."""
    return start_transfer(sender_ns, receiver_ns, address, size, **kw).result()
