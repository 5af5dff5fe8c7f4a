"""Fixtures for the path tests (issue 5): the NAT lab with a `wgc derper` (TLS + STUN) in every region, a
DERP map file, and `wgc up --derpmap` peers behind chosen NATs; `wgc status`/`wgc ping` run against them.

    with PathLab(["cone", "cone"], regions=1) as pl:
        a, b = pl.start_peers()                   # wgc in client1 and client2, each knowing the other
        pl.ping_tunnel(a, b)                      # ICMP through the tunnel
        pl.status(a)["peers"][0]["path"]          # `wgc status NAME --json` in a's namespace
        pl.wgc_ping(a, b.name, until_direct=True) # `wgc ping NAME -i IFACE --until-direct`
        pl.stop_derper(1); pl.start_derper(1)     # a relay restart
        pl.lab.cut_udp(1); pl.lab.remap(2)        # lab events (tools/natlab/lab.py)
        pl.launch(a, b); pl.wait_up([a, b])       # start peers at the same moment; when both were up

Everything made here (namespaces, derpers, proxies, wgc processes, control sockets, temp files) is
removed by `close()`, also after a failure; a failing test gets the peers' logs printed (`report()`).
Interface names are unique per process (the UAPI and control socket directories are shared by all
namespaces), and the control socket directory is a private temp dir (WGC_CONTROL_DIR).
"""
from __future__ import annotations

import json
import os
import signal
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from tests.integration.peers import WgcPeer, genkey
from tools.natlab.lab import ClientSpec, LabError, NatLab, RegionSpec
from tools.natlab.netns import unique_name

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WGC_MAIN = "import sys; from wgclient.cli.main import main; sys.exit(main(sys.argv[1:]))"
DERP_PORT = 443
STUN_PORT = 3478
WS_PORT = 8443          # the WebSocket-only proxy, on the region's second address (198.18.i.3)


def tunnel_ip(k: int) -> str:
    return f"100.90.0.{k}"


def _env(**extra: str) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    env.update(extra)
    return env


def _wait_line(proc: subprocess.Popen, prefix: str, timeout: float, what: str) -> str:
    """Read stdout lines until one starts with `prefix` (bounded in time; the process's stderr on failure)."""
    import select
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith(prefix):
            return line.strip()
    proc.kill()
    err = proc.stderr.read() if proc.stderr else ""
    raise LabError(f"{what} did not start: {err.strip()[-1500:]}")


@dataclass
class Relay:
    """One region's `wgc derper` process (and an optional WebSocket-only proxy in front of it)."""

    index: int
    proc: subprocess.Popen | None = None
    proxy: subprocess.Popen | None = None
    log: str = ""


class PathPeer(WgcPeer):
    """`wgc up NAME.conf --foreground --derpmap FILE` with [Peer] sections written into the config."""

    def __init__(self, pl: "PathLab", client: int, derpmap_file: str, *, mtu: int = 1280) -> None:
        self.client = client
        super().__init__(pl.lab.ns(f"client{client}"), unique_name("wgp"), genkey(), 41641,
                         [f"{tunnel_ip(client)}/32"], mtu)
        self.pl = pl
        self.derpmap_file = derpmap_file
        self.peer_sections: list[str] = []
        self.peer_name = f"peer{client}"
        self.extra_args: list[str] = []         # more `wgc up` flags (--derpmap SOURCE, --metrics-addr ...)

    @property
    def ip(self) -> str:
        return tunnel_ip(self.client)

    def know(self, other: "PathPeer", *, region: str | int | None = None, endpoint: str | None = None,
             keepalive: int = 0) -> None:
        lines = ["[Peer]", f"# Name = {other.peer_name}", f"PublicKey = {other.public_key}",
                 f"AllowedIPs = {other.ip}/32"]
        if region is not None:
            lines.append(f"DerpRegion = {region}")
        if endpoint:
            lines.append(f"Endpoint = {endpoint}")
        if keepalive:
            lines.append(f"PersistentKeepalive = {keepalive}")
        self.peer_sections.append("\n".join(lines))

    def config_text(self) -> str:
        return super().config_text() + "\n" + "\n\n".join(self.peer_sections) + "\n"

    def launch(self) -> "PathPeer":
        """Write the config and start `wgc up`, without waiting for it (PathLab.wait_up waits)."""
        path = os.path.join(self.workdir, f"{self.name}.conf")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.config_text())
        with self._log() as log:
            self.proc = self.ns.popen(sys.executable, "-c", WGC_MAIN, "up", path, "--foreground", "--derpmap",
                                      self.derpmap_file, *self.extra_args, "-v", env=self.pl.env, cwd=ROOT,
                                      stdout=log, stderr=subprocess.STDOUT)
        return self

    def start(self) -> "PathPeer":
        self.launch()
        self._wait_for_socket("wgc up --derpmap")
        self._wait_for_addresses()
        return self

    def stop_process(self) -> None:
        """Stop `wgc up` but keep the work dir and its log, to start it again (e.g. with other flags)."""
        from tests.integration.peers import _terminate
        if self.proc is not None:
            _terminate(self.proc)
        for path in (self.sock_path, os.path.join(self.pl.control_dir, f"{self.name}.ctl")):
            if os.path.exists(path):
                os.unlink(path)

    def report(self) -> str:
        """The base report plus the log's lines above DEBUG from the start (the tail is mostly disco)."""
        try:
            with open(self.log_path, errors="replace") as f:
                key = [line.rstrip() for line in f if " DEBUG " not in line]
        except OSError:
            key = []
        return super().report() + f"\n--- {self!r}: log lines above DEBUG\n" + "\n".join(key[-60:])

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            ctl = os.path.join(self.pl.control_dir, f"{self.name}.ctl")
            if os.path.exists(ctl):
                os.unlink(ctl)


class PathLab:
    """A NatLab with relays and helpers to run wgc peers in it; see the module docstring."""

    def __init__(self, clients: list[str], *, regions: int | list[RegionSpec] = 1, ws_proxy: bool = False,
                 netcheck_interval: float | None = None, ipv6: bool = False, relays: bool = True) -> None:
        specs = [RegionSpec() for _ in range(regions)] if isinstance(regions, int) else list(regions)
        self.tmp = tempfile.mkdtemp(prefix="pathlab-")
        os.chmod(self.tmp, 0o700)
        self.control_dir = os.path.join(self.tmp, "ctl")
        os.mkdir(self.control_dir, 0o700)
        self.state_dir = os.path.join(self.tmp, "state")     # the DERP map caches (WGC_STATE_DIR)
        extra = {"WGC_CONTROL_DIR": self.control_dir, "WGC_STATE_DIR": self.state_dir}
        if netcheck_interval is not None:
            extra["WGC_NETCHECK_INTERVAL"] = str(netcheck_interval)
        self.env = _env(**extra)
        self.relays: dict[int, Relay] = {}
        self.derper_python_args: list[str] = []    # before `-m derp` (e.g. -m cProfile -o FILE)
        self.peers: list[PathPeer] = []
        self.stopped_reports: list[str] = []     # reports of peers stopped by stop_peer (the last six)
        self.lab: NatLab | None = None
        try:
            self.lab = NatLab(specs, [ClientSpec(c) for c in clients])
            if not ipv6:  # the lab's client IPv6 is routed, not NATed: it would make every pair direct
                for k in range(1, len(clients) + 1):
                    self.lab.run(f"client{k}", "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                                 "net.ipv6.conf.default.disable_ipv6=1")
            for i in range(1, len(specs) + 1 if relays else 1):
                self.relays[i] = Relay(i, log=os.path.join(self.tmp, f"derper{i}.log"))
                self.start_derper(i)
                if ws_proxy:
                    self.start_proxy(i)
            self.derpmap_file = self.write_derpmap("derpmap.json")
            self.ws_derpmap_file = self.write_derpmap("derpmap-ws.json", via_proxy=True) if ws_proxy else ""
        except BaseException:
            self.close()
            raise

    # -- relays ---------------------------------------------------------------------------------------------
    def start_derper(self, i: int) -> None:
        relay = self.relays[i]
        if relay.proc is not None and relay.proc.poll() is None:
            raise LabError(f"region {i}'s derper is already running")
        keyfile = os.path.join(self.tmp, f"derper{i}.key")   # the same server key across restarts
        log = open(relay.log, "a")
        relay.proc = self.lab.popen(
            f"region{i}", sys.executable, *self.derper_python_args, "-m", "derp", "-a", f":{DERP_PORT}", "--hostname",
            self.lab.region_ip(i), "--certmode", "selfsigned", "--certdir", os.path.join(self.tmp, f"certs{i}"),
            "-c", keyfile, "--open-relay", "--stun", "--stun-port", str(STUN_PORT), "--http-port", "-1",
            "--metrics-addr", "off", "--shutdown-timeout", "1", "--conn-rate", "100", "--conn-burst", "100",
            env=self.env, cwd=ROOT, text=True, stderr=log)
        log.close()
        _wait_line(relay.proc, "derper ready", 20, f"wgc derper in region {i}")

    def stop_derper(self, i: int, sig: int = signal.SIGTERM) -> None:
        """Stop region i's derper (SIGTERM: Restarting frames then exit; SIGKILL: connections just drop)."""
        proc = self.relays[i].proc
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        proc.stdout.close()

    def start_proxy(self, i: int) -> None:
        """The WebSocket-only proxy on 198.18.i.3:WS_PORT in front of region i's derper."""
        relay = self.relays[i]
        host = f"198.18.{i}.3"
        relay.proxy = self.lab.popen(
            f"region{i}", sys.executable, "-m", "tools.natlab.wsproxy", "--listen", f"{host}:{WS_PORT}",
            "--upstream", f"127.0.0.1:{DERP_PORT}", "--upstream-tls", "--hostname", host,
            env=self.env, cwd=ROOT, text=True)
        _wait_line(relay.proxy, "wsproxy ready", 15, f"wsproxy in region {i}")

    def proxy_counts(self, i: int) -> dict[str, int]:
        """The proxy's counters (it prints them on SIGUSR1)."""
        proc = self.relays[i].proxy
        os.kill(proc.pid, signal.SIGUSR1)
        line = _wait_line(proc, "wsproxy refused=", 5, "wsproxy counters")
        return {k: int(v) for k, v in (w.split("=") for w in line.split()[1:])}

    def write_derpmap(self, filename: str, *, via_proxy: bool = False, only: tuple[int, ...] | None = None) -> str:
        """The lab's DERP map as a file in the lab's temp dir (`only`: just these region indexes)."""
        dm = self.lab.derpmap(stun_port=STUN_PORT, derp_port=DERP_PORT, ipv6=False)
        if only is not None:
            keep = {str(self.lab.region_id(i)) for i in only}
            dm["Regions"] = {k: v for k, v in dm["Regions"].items() if k in keep}
        if via_proxy:
            for i, region in enumerate(dm["Regions"].values(), 1):
                for node in region["Nodes"]:
                    node.update(HostName=f"198.18.{i}.3", IPv4=f"198.18.{i}.3", DERPPort=WS_PORT)
        path = os.path.join(self.tmp, filename)
        with open(path + ".tmp", "w") as fh:   # replaced whole: a peer reloading it never reads half a file
            json.dump(dm, fh, indent=1)
        os.replace(path + ".tmp", path)
        return path

    # -- peers ----------------------------------------------------------------------------------------------
    def peer(self, client: int, *, derpmap_file: str = "") -> PathPeer:
        p = PathPeer(self, client, derpmap_file or self.derpmap_file)
        self.peers.append(p)
        return p

    def start_peers(self, clients: tuple[int, ...] = (1, 2), *, derpmap_files: dict[int, str] | None = None,
                    region: str | int | None = None) -> list[PathPeer]:
        """A wgc peer in each of `clients`, every one knowing every other (no Endpoint: DERP first)."""
        peers = [self.peer(k, derpmap_file=(derpmap_files or {}).get(k, "")) for k in clients]
        for p in peers:
            for q in peers:
                if q is not p:
                    p.know(q, region=region)
        for p in peers:
            p.start()
        for p in peers:
            self.wait_home(p)
        return peers

    def launch(self, *peers: PathPeer) -> None:
        """Start `wgc up` for each peer back to back (a few ms apart), without waiting."""
        for p in peers:
            p.launch()

    def home_connected(self, p: PathPeer) -> bool:
        """Does p's control socket answer, with its home DERP region connected?"""
        try:
            st = self.status_raw(p)
        except (OSError, ValueError, LabError):
            return False  # not listening (or not answering) yet
        home = st["home_region"]
        return bool(home) and any(r["id"] == home["id"] and r["connected"] for r in st["regions"])

    def wait_up(self, peers: list[PathPeer], timeout: float = 20.0, on_up=None) -> dict[str, float]:
        """Poll launched peers until each one's control socket answers with its home region connected;
        `on_up(p)` runs as each comes up. Returns name -> monotonic time taken just before the status
        request that first saw it up: no later than the truth, so intervals measured from the latest of
        these are never shorter than the real ones, however slowly a loaded machine answers."""
        up: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        while len(up) < len(peers):
            for p in peers:
                if p.name in up:
                    continue
                if p.proc is not None and p.proc.poll() is not None:
                    raise LabError(f"wgc up for {p.name} exited with {p.proc.returncode}: {p.log_tail()}")
                asked = time.monotonic()
                if self.home_connected(p):
                    up[p.name] = asked
                    if on_up is not None:
                        on_up(p)
            if time.monotonic() > deadline:
                raise LabError(f"not up after {timeout} s: {sorted(set(q.name for q in peers) - set(up))}")
            time.sleep(0.02)
        return up

    def wait_home(self, p: PathPeer, timeout: float = 20.0) -> dict:
        """Wait until the peer's home DERP region is connected (packets sent to a peer that is not yet on
        its relay are dropped by the relay, and WireGuard retries a handshake only after 5 s)."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.status_raw(p)
            home = st["home_region"]
            if home and any(r["id"] == home["id"] and r["connected"] for r in st["regions"]):
                return st
            if time.monotonic() > deadline:
                raise LabError(f"{p.name}: home DERP region not connected after {timeout} s: {st['regions']}")
            time.sleep(0.1)

    def stop_peer(self, p: PathPeer) -> None:
        """Stop a peer; its report (device and log tail) is kept for `report`, since stopping removes
        its work dir and a test stops its peers in `finally`, before a failure is reported."""
        try:
            self.stopped_reports.append(p.report())
            del self.stopped_reports[:-6]
        except Exception as exc:  # the report is a diagnostic: never let it keep the peer running
            self.stopped_reports.append(f"--- {p!r}: no report ({exc})")
        p.stop()
        if p in self.peers:
            self.peers.remove(p)

    def wgc(self, p: PathPeer, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run `wgc ARGS` in the peer's namespace (control socket dir of this lab)."""
        return p.ns.run(sys.executable, "-c", WGC_MAIN, *args, check=False, timeout=timeout, env=self.env,
                        cwd=ROOT)

    def status(self, p: PathPeer) -> dict:
        res = self.wgc(p, "status", p.name, "--json", timeout=15)
        if res.returncode != 0:
            raise LabError(f"wgc status {p.name} --json failed ({res.returncode}): {res.stderr.strip()}")
        return json.loads(res.stdout)

    def status_raw(self, p: PathPeer) -> dict:
        """The status straight from the control socket (no `wgc` process: cheap enough to poll)."""
        import socket
        path = os.path.join(self.control_dir, f"{p.name}.ctl")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(path)
            sock.sendall(b'{"cmd": "status"}\n')
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
        reply = json.loads(buf)
        if not reply.get("ok"):
            raise LabError(f"status of {p.name}: {reply}")
        return reply["status"]

    def peer_status(self, p: PathPeer, other: PathPeer, *, fast: bool = False) -> dict:
        for entry in (self.status_raw(p) if fast else self.status(p))["peers"]:
            if entry["public_key"] == other.public_key:
                return entry
        raise LabError(f"{p.name}'s status has no peer {other.public_key}")

    def wait_path(self, p: PathPeer, other: PathPeer, paths: tuple[str, ...], timeout: float) -> dict:
        """Poll `wgc status` until p's path to `other` is one of `paths`; returns that peer entry."""
        deadline = time.monotonic() + timeout
        while True:
            entry = self.peer_status(p, other, fast=True)
            if entry["path"] in paths or time.monotonic() > deadline:
                return entry
            time.sleep(0.1)

    def wait_direct(self, p: PathPeer, other: PathPeer, timeout: float = 15.0) -> dict:
        """Tunnel traffic (discovery runs while a peer is active, as in Tailscale), then wait for the
        direct path; returns p's status entry for `other`."""
        self.ping_tunnel(p, other, count=2, deadline=3, interval=0.2)
        return self.wait_path(p, other, ("direct",), timeout)

    def wgc_ping(self, p: PathPeer, target: str, *, count: int = 5, until_direct: bool = False,
                 timeout: float = 2.0, interval: float = 1.0) -> subprocess.CompletedProcess:
        """`wgc ping`; the result also has `line_times`, the time.monotonic() at which each stdout line
        came (wgc ping flushes every line), so a test can time pongs without the CLI's start-up and exit."""
        import select
        args = ["ping", target, "-i", p.name, "-c", str(count), "--timeout", str(timeout),
                "--interval", str(interval)]
        if until_direct:
            args.append("--until-direct")
        limit = count * (timeout + 1.5) + 10
        proc = p.ns.popen(sys.executable, "-c", WGC_MAIN, *args, env=self.env, cwd=ROOT, text=True)
        lines: list[str] = []
        times: list[float] = []
        deadline = time.monotonic() + limit
        try:
            while select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))[0]:
                line = proc.stdout.readline()
                if not line:
                    break
                times.append(time.monotonic())
                lines.append(line)
            else:
                raise subprocess.TimeoutExpired(proc.args, limit)
            err = proc.stderr.read()
            proc.wait(max(1.0, deadline - time.monotonic()))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
            proc.stderr.close()
        res = subprocess.CompletedProcess(proc.args, proc.returncode, "".join(lines), err)
        res.line_times = times
        return res

    def ping_tunnel(self, src: PathPeer, dst: PathPeer, count: int = 3, deadline: float = 10.0,
                    interval: float = 0.2) -> tuple[bool, float]:
        """ICMP through the tunnel; (all `count` replies came, loss fraction)."""
        res = src.ns.run("ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-w", str(int(deadline)),
                         dst.ip, check=False, timeout=deadline + 5)
        loss = 1.0
        for line in res.stdout.splitlines():
            if "packet loss" in line:
                loss = float(line.split("%")[0].split()[-1]) / 100
        return res.returncode == 0, loss

    def report(self) -> str:
        parts = [p.report() for p in self.peers]
        parts += [f"(stopped during the test)\n{r}" for r in self.stopped_reports]
        for i, relay in self.relays.items():
            try:
                with open(relay.log, errors="replace") as fh:
                    parts.append(f"--- derper {i} log tail\n{fh.read()[-1500:].rstrip()}")
            except OSError:
                pass
        return "\n".join(parts)

    # -- teardown -------------------------------------------------------------------------------------------
    def close(self) -> None:
        try:
            for p in list(self.peers):
                try:
                    p.stop()
                except Exception:  # stop the others and tear the lab down regardless
                    pass
            self.peers.clear()
            if self.lab is not None:
                self.lab.close()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "PathLab":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class Timeline:
    """Timestamped observations of a scenario, printed when a test fails (what happened when)."""

    t0: float = field(default_factory=time.monotonic)
    events: list[str] = field(default_factory=list)

    def note(self, what: str) -> None:
        self.events.append(f"{time.monotonic() - self.t0:7.2f}s {what}")

    def __str__(self) -> str:
        return "\n".join(self.events)
