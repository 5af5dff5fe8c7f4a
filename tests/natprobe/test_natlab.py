"""The NAT lab itself: delays, reachability per NAT type, teardown after errors, and its command line."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.support.prereq import require_binary, require_root

pytestmark = [pytest.mark.netns, pytest.mark.timeout(60)]
SLACK_MS = 30     # what a loaded machine may add to the best of three pings through the lab's delayer


def _natlab_namespaces(prefix: str = "natlab-") -> set[str]:
    """Lab namespaces whose names start with `prefix` (labs of other processes are left out of the checks)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith(prefix)}


def _rtt_ms(lab, node: str, ip: str) -> float:
    """The best of three round trips: the lab's added delay plus the least a loaded machine adds to it."""
    out = lab.run(node, "ping", "-c3", "-i0.2", "-W2", ip).stdout
    return float(re.search(r"= ([\d.]+)/[\d.]+/", out).group(1))


def natlab_cli(state_dir):
    """`python3 -m tools.natlab ARGS` with its state in `state_dir` (a test's own labs only)."""
    env = {"NATLAB_STATE_DIR": str(state_dir), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}

    def natlab(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tools.natlab", *args], capture_output=True, text=True,
                              env=env, timeout=30, check=check)
    return natlab


def test_delays_nat_types_and_teardown():
    require_root()
    require_binary("nft", "ping")
    from tools.natlab.lab import ClientSpec, NatLab, RegionSpec

    with NatLab([RegionSpec(10), RegionSpec(40)],
                [ClientSpec("none"), ClientSpec("udp-blocked"), ClientSpec("cgnat")]) as lab:
        mine = f"natlab-{lab.name}-"
        assert len(_natlab_namespaces(mine)) == len(lab.nodes) == 9
        near, far = _rtt_ms(lab, "client1", lab.region_ip(1)), _rtt_ms(lab, "client1", lab.region_ip(2))
        assert 10 <= near < 10 + SLACK_MS and 40 <= far < 40 + SLACK_MS and near < far, (near, far)
        lab.set_delay(1, 70)
        assert 70 <= _rtt_ms(lab, "client1", lab.region_ip(1)) < 70 + SLACK_MS
        # udp-blocked: TCP goes out, UDP does not.
        server = lab.popen("region2", sys.executable, "-c",
                           "import socket,sys\n"
                           "t=socket.create_server(('0.0.0.0',8080)); u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
                           "u.bind(('0.0.0.0',8081)); print('up',flush=True)\n"
                           "c,a=t.accept(); c.sendall(a[0].encode()); c.close()\n", text=True)
        assert server.stdout.readline() == "up\n"
        probe = ("import socket\n"
                 "print(socket.create_connection(('198.18.2.2',8080),timeout=3).recv(64).decode())\n"
                 "u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); u.settimeout(0.5)\n"
                 "u.sendto(b'x',('198.18.2.2',8081))\n"
                 "try:\n    u.recv(10); print('udp answered')\nexcept OSError as e: print('udp', type(e).__name__)\n")
        out = lab.run("client2", sys.executable, "-c", probe).stdout.split()
        assert out[0] == lab.public_ip(2)            # TCP went out through the router's NAT
        assert out[1:] == ["udp", "timeout"] or out[1:] == ["udp", "TimeoutError"]
        # cgnat: the client reaches the internet through two NATs, seen as the carrier's address.
        assert lab.run("client3", "ping", "-c1", "-W2", lab.region_ip(1)).returncode == 0
        assert lab.client_ip(3) == "10.3.0.2" and lab.public_ip(3) == "198.19.3.2"
    assert _natlab_namespaces(mine) == set()


def test_failed_build_and_errors_inside_the_block_leave_nothing_behind():
    require_root()
    require_binary("nft", "ping")
    from tools.natlab.lab import ClientSpec, LabError, NatLab, RegionSpec

    import os
    mine = f"natlab-{os.getpid()}x"
    before = _natlab_namespaces(mine)
    with pytest.raises(LabError, match="unknown NAT type"):
        NatLab([RegionSpec(1)], [ClientSpec("full-cone-magic")])
    with pytest.raises(RuntimeError):
        with NatLab([RegionSpec(1)], [ClientSpec("cone")]) as lab:
            assert lab.run("client1", "ping", "-c1", "-W2", lab.region_ip(1)).returncode == 0
            raise RuntimeError("test failure inside the lab")
    assert _natlab_namespaces(mine) == before


def test_command_line_up_run_down(tmp_path):
    require_root()
    require_binary("nft", "ping")
    natlab = natlab_cli(tmp_path)
    name = f"t{__import__('os').getpid() % 100000}"
    mine = f"natlab-{name}-"
    try:
        up = natlab("up", "--name", name, "--region", "5", "--client", "symmetric")
        assert "client1: nat symmetric, address 10.1.0.2, public 198.19.1.2" in up.stdout
        assert natlab("up", "--name", name, check=False).returncode == 2
        ran = natlab("run", name, "client1", "--", "ping", "-c1", "-W2", "198.18.1.2")
        assert "1 received" in ran.stdout
        bad = natlab("run", name, "nosuchnode", "--", "true", check=False)
        assert bad.returncode == 2 and "no lab node 'nosuchnode'" in bad.stderr and "Traceback" not in bad.stderr
        assert len(_natlab_namespaces(mine)) == 4
    finally:
        natlab("down", name, check=False)
    assert _natlab_namespaces(mine) == set()
    gone = natlab("status", name, check=False)
    assert gone.returncode == 2 and "no lab named" in gone.stderr


# Stands in for `ip` in a lab-building child: passes everything to the real one, except `ip netns add` of
# the node nat3, around which it does what $NATLAB_TEST_ACT says (the signals go to the child, its parent):
#   after-int: create it, then Ctrl-C the owner (the interrupt lands the moment the namespace exists);
#   kill-then-create: SIGKILL the owner, then create it once $NATLAB_TEST_GO exists (the creation outlives
#   its owner and ends after `clean` has listed the namespaces).
FAKE_IP = """#!/bin/sh
case "$1 $2 $3" in
  "netns add natlab-"*-nat3)
    case "$NATLAB_TEST_ACT" in
      after-int) "$NATLAB_TEST_IP" "$@"; rc=$?; kill -INT $PPID; exit $rc ;;
      kill-then-create)
        kill -KILL $PPID
        i=0
        while [ ! -e "$NATLAB_TEST_GO" ] && [ $i -lt 2000 ]; do sleep 0.01; i=$((i + 1)); done ;;
    esac ;;
esac
exec "$NATLAB_TEST_IP" "$@"
"""


def _mentioning(text: str) -> list[int]:
    """Live processes whose command line contains `text`."""
    import os
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                if text.encode() in fh.read():
                    pids.append(int(entry))
        except (OSError, ValueError):
            pass
    return pids


def _natlab_clean() -> str:
    return subprocess.run([sys.executable, "-m", "tools.natlab", "clean"], capture_output=True, text=True,
                          timeout=30, check=True).stdout


def test_interrupted_build_and_killed_owner_leave_nothing_behind(tmp_path):
    require_root()
    require_binary("nft")
    import os
    import shutil
    import signal
    import time

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "ip").write_text(FAKE_IP)
    (fake / "ip").chmod(0o755)
    go = tmp_path / "go"
    code = ("from tools.natlab.lab import NatLab, RegionSpec, ClientSpec\n"
            "import sys, time\n"
            "lab = NatLab([RegionSpec(5)], [ClientSpec('cone')] * int(sys.argv[1]))\n"
            "print('built', flush=True); time.sleep(60)\n")

    def owner(clients: int, act: str = "") -> subprocess.Popen:
        env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}", NATLAB_TEST_ACT=act,
                   NATLAB_TEST_IP=shutil.which("ip"), NATLAB_TEST_GO=str(go))
        return subprocess.Popen([sys.executable, "-c", code, str(clients)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)

    # Ctrl-C the moment a namespace exists, before the builder has gone on: the partial lab is removed.
    proc = owner(3, "after-int")
    out, err = proc.communicate(timeout=30)
    assert "built" not in out and "KeyboardInterrupt" in err, err[-2000:]
    assert _natlab_namespaces(f"natlab-{proc.pid}x") == set()
    # The owner is SIGKILLed while nat3 is being created, and the creation ends after `clean` looked.
    proc = owner(3, "kill-then-create")
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    mine = f"natlab-{proc.pid}x"
    assert len(_natlab_namespaces(mine)) == 6                       # inet, region1, nat/client 1 and 2
    try:
        _natlab_clean()
    finally:
        go.touch()
    deadline = time.monotonic() + 30      # until nothing runs any more for the dead owner's lab
    while _mentioning(mine) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _mentioning(mine)
    assert _natlab_namespaces(mine) == set()
    # A lab whose owner was SIGKILLed after it was built is found and removed by `clean`.
    proc = owner(1)
    assert proc.stdout.readline() == "built\n"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    left = _natlab_namespaces(f"natlab-{proc.pid}x")
    assert len(left) == 4
    out = _natlab_clean()
    assert all(f"removed stale namespace {name}" in out for name in left)
    assert _natlab_namespaces(f"natlab-{proc.pid}x") == set()
