"""The README's first command (tools/demo.sh, relay -> direct) runs end to end and leaves nothing behind.

Runs it with `--skip-setup` and a small file, and checks what it promises: status relayed, `wgc ping
--until-direct` lines going from `via DERP(lab)` to `via 198.19.2.2:41641`, status direct, matching
sha256 on both ends, and the lab's namespaces, UAPI/control sockets and temp dir gone afterwards.
"""
from __future__ import annotations

import os
import pathlib
import re
import subprocess

import pytest

from tests.support.patterns import DURATION
from tests.support.prereq import require_binary, require_root

ROOT = pathlib.Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_demo_relay_then_direct_and_cleanup() -> None:
    require_root()
    require_binary("nft", "ping", "bash", "sha256sum")
    proc = subprocess.Popen(["bash", str(ROOT / "tools" / "demo.sh"), "--skip-setup", "--size", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=100)
    finally:
        if proc.poll() is None:  # SIGTERM makes the demo's trap clean up
            os.killpg(proc.pid, 15)
            proc.communicate(timeout=30)
    assert proc.returncode == 0, out[-4000:]
    lab = re.search(r"natlab up --name (wgcdemo(\d+))", out)
    assert lab, out[-3000:]
    name, tag = lab.group(1), lab.group(2)
    assert "3 packets transmitted, 3 received" in out
    relayed, direct = out.split("wgc keeps trying", 1)
    assert re.search(r'^bob +100\.90\.0\.2/32 +\S+ +relay "lab" ', relayed, re.M), relayed[-2000:]
    pongs = re.findall(rf"^pong from bob \(100\.90\.0\.2\) via (\S+) in {DURATION}$", direct, re.M)
    assert pongs and pongs[-1] == "198.19.2.2:41641" and set(pongs[:-1]) <= {"DERP(lab)"}, direct[:3000]
    assert re.search(r"^bob +100\.90\.0\.2/32 +\S+ +direct 198\.19\.2\.2:41641 ", direct, re.M), direct[:3000]
    sums = re.findall(r"sha256 ([0-9a-f]{64})", out)
    assert len(sums) == 2 and sums[0] == sums[1], out[-3000:]
    assert "demo finished" in out
    assert not {n for n in _namespaces() if n.startswith(f"natlab-{name}-")}, "demo left namespaces behind"
    temp = re.search(r"DERP map \((/tmp/wgc-demo\.\w+)/derpmap\.json\)", out)
    assert temp and not os.path.exists(temp.group(1)), "demo left its temp dir behind"
    for who in ("alice", "bob"):
        assert not os.path.exists(f"/var/run/wireguard/{who}{tag}.sock")
        assert not os.path.exists(f"/var/run/wgc/{who}{tag}.ctl")
        assert not os.path.exists(f"/var/lib/wgc/{who}{tag}.derpmap.json"), "demo left a cached DERP map behind"
