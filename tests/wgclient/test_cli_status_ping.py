"""`wgc status` and `wgc ping` end to end: `python -m wgclient.cli.main` subprocesses against a control server
run by the test (a scripted target in a background event loop): output lines, exit codes, one-line errors."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from tests.support.control_target import ScriptedTarget, derp_pong, direct_pong, key, peer, sample_status
from tests.support.prereq import require_root
from wgclient.aio.control_server import start_control_server
from wgclient.errors import UsageError

pytestmark = pytest.mark.timeout(30)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Daemons:
    """Control servers on an event loop in a background thread, as a running daemon would have them."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servers = []

    def start(self, name: str, target: ScriptedTarget):
        server = asyncio.run_coroutine_threadsafe(start_control_server(name, target), self.loop).result(5)
        self.servers.append(server)
        return server

    def close(self) -> None:
        async def shutdown():
            for s in self.servers:
                s.close()
        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(5)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()


@pytest.fixture
def env(tmp_path, monkeypatch):
    ctl = tmp_path / "wgc"
    monkeypatch.setenv("WGC_CONTROL_DIR", str(ctl))
    env = dict(os.environ, PYTHONPATH=ROOT, WGC_CONTROL_DIR=str(ctl))
    return env


@pytest.fixture
def daemons(env):
    d = Daemons()
    try:
        yield d
    finally:
        d.close()


def wgc(env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wgclient.cli.main", *args], env=env, capture_output=True,
                          text=True, timeout=20)


def one_line_error(proc, pattern: str) -> None:
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("wgc: "), proc.stderr
    assert pattern in lines[0], lines[0]


def pinging() -> ScriptedTarget:
    return ScriptedTarget(pongs={key(2): [derp_pong(0.0124), derp_pong(0.011), direct_pong(0.0031)],
                                 key(3): [derp_pong(0.025)], key(4): [None],
                                 key(5): [UsageError("wgc ping uses disco, which needs the interface started with --derpmap")]})


def test_status_text_json_and_why(env, daemons):
    daemons.start("wgt0", ScriptedTarget())
    out = wgc(env, "status")
    assert out.returncode == 0 and out.stderr == ""
    lines = out.stdout.splitlines()
    assert lines[1] == 'home region: "fra" (901), connected over TLS'
    assert lines[4] == '  NAT maps ports per destination: yes; nearest region: "fra" 12ms'
    assert lines[6].split() == ["PEER", "ADDRESSES", "KEY", "PATH", "LATENCY", "HANDSHAKE", "RX", "TX"]
    laptop = lines[7].split()
    assert laptop[:5] == ["laptop", "100.64.0.2/32,fd7a::2/128", "AgICAgIC", "direct", "198.51.100.9:41641"]
    assert laptop[-4:] == ["123", "B", "4.36", "MiB"]      # rx, tx
    assert lines[8].split()[:5] == ["phone", "100.64.0.3/32", "AwMDAwMD", "relay", '"fra"']
    assert len(lines) == 11
    assert wgc(env, "status", "wgt0").stdout == out.stdout
    js = wgc(env, "status", "--json")
    assert js.returncode == 0 and json.loads(js.stdout) == sample_status()
    why = wgc(env, "status", "--why", "100.64.0.3")
    assert why.returncode == 0
    assert why.stdout.splitlines() == ['phone (AwMDAwMD): relay "fra"',
                                       'relayed via DERP region "fra": the peer\'s NAT maps ports per destination']
    one_line_error(wgc(env, "status", "--why", "A"), "'A' matches 2 peers by key prefix: laptop (AgICAgIC), phone (AwMDAwMD); be more specific")


def test_status_errors(env, daemons):
    one_line_error(wgc(env, "status"), "wgc: no wgc interface is running")
    daemons.start("wga", ScriptedTarget(sample_status("wga")))
    daemons.start("wgb", ScriptedTarget(sample_status("wgb")))
    one_line_error(wgc(env, "status"), "several wgc interfaces are running (wga, wgb); name one")
    assert wgc(env, "status", "wgb").stdout.startswith("interface wgb: ")
    one_line_error(wgc(env, "status", "wgz"), "wgc interface 'wgz' is not running (no control socket ")
    one_line_error(wgc(env, "status", "--bogus"), "unrecognized arguments: --bogus")


def test_ping_until_direct(env, daemons):
    target = pinging()
    daemons.start("wgt0", target)
    out = wgc(env, "ping", "laptop", "--until-direct", "--interval", "0.05")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["pong from laptop (100.64.0.2) via DERP(fra) in 12ms",
                                       "pong from laptop (100.64.0.2) via DERP(fra) in 11ms",
                                       "pong from laptop (100.64.0.2) via 198.51.100.9:41641 in 3ms"]
    assert [c for c in target.calls if c[0] == "ping"] == [("ping", key(2), 5.0)] * 3   # stopped at direct


def test_ping_count_timeouts_and_exit_codes(env, daemons):
    daemons.start("wgt0", pinging())
    out = wgc(env, "ping", "100.64.0.3", "-c", "3", "--interval", "0.05")
    assert out.returncode == 0
    assert out.stdout.splitlines() == ["pong from phone (100.64.0.3) via DERP(fra) in 25ms"] * 3
    relayed = wgc(env, "ping", "phone", "-c", "2", "--until-direct", "--interval", "0.05")
    assert relayed.returncode == 1 and len(relayed.stdout.splitlines()) == 2
    assert relayed.stderr == "wgc: no direct path to phone after 2 pings (pongs came through DERP)\n"
    lost = wgc(env, "ping", "BAQE", "-c", "2", "--timeout", "0.2", "--interval", "0.05")
    assert lost.returncode == 1 and lost.stderr == ""
    assert lost.stdout.splitlines() == ["timeout waiting for pong from BAQEBAQE (100.64.0.4) (0.2s)"] * 2


def test_ping_user_mistakes(env, daemons):
    one_line_error(wgc(env, "ping", "laptop", "--timeout", "0.2"), "no wgc interface is running")
    daemons.start("wgt0", pinging())
    one_line_error(wgc(env, "ping", "A"), "'A' matches 2 peers by key prefix: laptop (AgICAgIC), phone (AwMDAwMD)")
    one_line_error(wgc(env, "ping", "192.0.2.1"), "no peer has 192.0.2.1 in its AllowedIPs")
    one_line_error(wgc(env, "ping", "nobody"), "no peer matches 'nobody'")
    one_line_error(wgc(env, "ping", "office", "-c", "1"), "wgc ping uses disco, which needs the interface")
    one_line_error(wgc(env, "ping", "laptop", "-c", "0"), "-c/--count must be at least 1")
    one_line_error(wgc(env, "ping", "laptop", "--timeout", "0"), "must be in (0, 60]")
    one_line_error(wgc(env, "ping"), "the following arguments are required: peer")
    one_line_error(wgc(env, "ping", "laptop", "-i", "wgz", "--timeout", "0.2"), "wgc interface 'wgz' is not running")


def two_interfaces(daemons) -> None:
    """wga: the sample peers (laptop, phone, ...); wgb: desk and another peer also called laptop."""
    daemons.start("wga", pinging())
    other = sample_status("wgb")
    other["peers"] = [peer(6, "desk", ["100.65.0.6/32"], "direct", direct="192.0.2.6:41641"),
                      peer(7, "laptop", ["100.65.0.7/32"], "relay", relay=(901, "fra"))]
    daemons.start("wgb", ScriptedTarget(other, pongs={key(6): [direct_pong(0.002, "192.0.2.6:41641")]}))


def test_peer_picks_the_one_interface_that_has_it(env, daemons):
    two_interfaces(daemons)
    out = wgc(env, "ping", "desk", "-c", "1")
    assert (out.returncode, out.stderr) == (0, ""), out.stderr
    assert out.stdout == "pong from desk (100.65.0.6) via 192.0.2.6:41641 in 2ms\n"
    assert wgc(env, "ping", "100.64.0.3", "-c", "1").stdout == "pong from phone (100.64.0.3) via DERP(fra) in 25ms\n"
    why = wgc(env, "status", "--why", "desk")
    assert (why.returncode, why.stdout) == (0, "desk (BgYGBgYG): direct 192.0.2.6:41641\ndirect (scripted)\n")
    assert wgc(env, "status", "--why", "phone").stdout.startswith('phone (AwMDAwMD): relay "fra"\n')
    # several interfaces have it: say so and name them
    one_line_error(wgc(env, "ping", "laptop", "-c", "1"),
                   "'laptop' is a peer on 2 interfaces (wga: laptop (AgICAgIC), wgb: laptop (BwcHBwcH)); "
                   "name one with -i NAME")
    one_line_error(wgc(env, "status", "--why", "laptop"),
                   "'laptop' is a peer on 2 interfaces (wga: laptop (AgICAgIC), wgb: laptop (BwcHBwcH)); "
                   "name one with wgc status NAME --why PEER")
    assert wgc(env, "status", "wgb", "--why", "laptop").stdout.startswith('laptop (BwcHBwcH): relay "fra"\n')
    one_line_error(wgc(env, "ping", "A", "-c", "1"), "on interface wga: 'A' matches 2 peers by key prefix")
    one_line_error(wgc(env, "ping", "nobody", "-c", "1"), "no peer matches 'nobody' on the running interfaces (wga, wgb)")
    one_line_error(wgc(env, "status"), "several wgc interfaces are running (wga, wgb); name one")


def test_ping_waits_for_an_interface_that_is_coming_up(env, daemons):
    """`wgc ping` started before the daemon's control socket exists waits for it (within --timeout)."""
    for args in (("laptop",), ("laptop", "-i", "wgt0")):
        proc = subprocess.Popen([sys.executable, "-m", "wgclient.cli.main", "ping", *args, "-c", "1",
                                 "--timeout", "20"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            time.sleep(0.5)
            assert proc.poll() is None, proc.communicate()        # still waiting, not failed
            server = daemons.start("wgt0", pinging())
            out, err = proc.communicate(timeout=25)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert (proc.returncode, err) == (0, ""), err
        assert out == "pong from laptop (100.64.0.2) via DERP(fra) in 12ms\n"
        asyncio.run_coroutine_threadsafe(_close(server), daemons.loop).result(5)
        daemons.servers.remove(server)


async def _close(server) -> None:
    server.close()


def test_not_root_gets_a_permission_error(daemons, monkeypatch):
    """The control socket is mode 0600 in a 0700 (or 0755) directory: another user is told to run as root,
    naming the socket, in one line (never "no wgc interface is running")."""
    require_root()
    import wgclient.cli.ping  # noqa: F401  (loaded before the fork: the child cannot read /root's files)
    import wgclient.cli.status  # noqa: F401
    from wgclient.cli.main import main

    base = tempfile.mkdtemp(prefix="wgc-ctl-")
    try:
        os.chmod(base, 0o755)
        ctl = os.path.join(base, "wgc")
        monkeypatch.setenv("WGC_CONTROL_DIR", ctl)
        daemons.start("wgt0", ScriptedTarget())

        def as_nobody(*args: str) -> tuple[int, str]:
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:   # pragma: no cover (child)
                code = 99
                try:
                    sys.stderr = sys.stdout = os.fdopen(w, "w")
                    os.setgroups([])
                    os.setgid(65534)
                    os.setuid(65534)
                    code = main(list(args))
                    sys.stderr.flush()
                finally:
                    os._exit(code)
            os.close(w)
            with os.fdopen(r) as f:
                err = f.read()
            return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), err

        assert os.stat(ctl).st_mode & 0o777 == 0o700
        sock = f"{ctl}/wgt0.ctl"
        code, err = as_nobody("status")
        assert (code, err) == (1, f"wgc: permission denied: run as root (control directory {ctl})\n")
        code, err = as_nobody("ping", "laptop", "-i", "wgt0")
        assert (code, err) == (1, f"wgc: permission denied: run as root (control socket {sock})\n")
        os.chmod(ctl, 0o755)                    # a readable directory: the socket itself says no
        for args in (("status",), ("status", "wgt0"), ("status", "--why", "laptop"), ("ping", "laptop")):
            code, err = as_nobody(*args)
            assert (code, err) == (1, f"wgc: permission denied: run as root (control socket {sock})\n"), args
    finally:
        shutil.rmtree(base, ignore_errors=True)
