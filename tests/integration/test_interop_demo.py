"""The plain-tunnel demo (tools/demo_veth.sh; tools/demo.sh is the relay -> direct one) runs end to end
and leaves nothing behind.

Runs it with `--skip-setup` (the test run already did the setup) and a small file, for wgc and for
wireguard-go, and checks the ping, the matching sha256 on both ends, the `wg show` output and the
cleanup of namespaces, UAPI sockets and the temp dir.
"""
from __future__ import annotations

import os
import pathlib
import re
import subprocess

import pytest

from tests.support.prereq import require_binary, require_root

ROOT = pathlib.Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.netns, pytest.mark.timeout(90)]


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


@pytest.mark.parametrize("dut", ["wgc", "wireguard-go"])
def test_demo_runs_and_cleans_up(dut: str) -> None:
    require_root()
    require_binary("wireguard-go", "wg", "ping", "bash")
    proc = subprocess.Popen(["bash", str(ROOT / "tools" / "demo_veth.sh"), "--skip-setup", "--size", "2", "--dut", dut],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # SIGTERM makes the demo's trap clean up
            os.killpg(proc.pid, 15)
            proc.communicate(timeout=15)
    assert proc.returncode == 0, out[-3000:]
    tag = re.search(r"namespaces: (wgcdemo-a-\d+), (wgcdemo-b-\d+)", out)
    assert tag, out[-3000:]
    assert "3 packets transmitted, 3 received" in out
    sums = re.findall(r"sha256 ([0-9a-f]{64})", out)
    assert len(sums) == 2 and sums[0] == sums[1], out[-3000:]
    assert out.count("latest handshake:") == 2 and "interface: wgda" in out and "interface: wgdb" in out
    assert not {tag.group(1), tag.group(2)} & _namespaces(), "demo left its namespaces behind"
    temp = re.search(r"\(in (/tmp/wgc-demo\.\w+);", out)
    assert temp and not os.path.exists(temp.group(1)), "demo left its temp dir behind"
    number = tag.group(1).rsplit("-", 1)[1]
    for side in "ab":
        assert not os.path.exists(f"/var/run/wireguard/wgd{side}{number}.sock")
