"""The WireGuard benchmark (`python3 -m tools.bench wg`) runs and reports sane figures.

A smoke run, not a measurement: one second per iperf3 run over a bare veth and the wireguard-go pair,
checking that every figure is present and positive (CPU per GB only for tunnels), the reference pair's
ratios are 1.00x, and the JSON report matches. Plus the command line's handling of mistakes.
"""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from tests.support.prereq import require_binary, require_root

ROOT = pathlib.Path(__file__).resolve().parents[2]
BENCH = [sys.executable, "-m", "tools.bench"]


def run(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([*BENCH, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.mark.netns
@pytest.mark.timeout(120)
def test_bench_wg_smoke(tmp_path) -> None:
    require_root()
    require_binary("wireguard-go", "wg", "ping", "iperf3")
    report = tmp_path / "bench.json"
    res = run("wg", "--pairs", "veth,wggo", "--time", "1", "--json", str(report), timeout=100)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split()[:2] == ["pair", "TCP"]
    wggo = next(line for line in lines if line.startswith("wireguard-go <-> wireguard-go"))
    assert wggo.count("(1.00x)") == 6, wggo
    results = {r["pair"]: r for r in json.loads(report.read_text())}
    assert set(results) == {"veth", "wggo"}
    for r in results.values():
        assert r["error"] is None
        for key in ("tcp_ab_bps", "tcp_ba_bps", "udp_ab_pps", "udp_ba_pps", "rtt_ms"):
            assert r[key] > 0, (r["pair"], key)
    # CPU per GB is reported for the tunnel processes only (a bare veth has none).
    assert results["veth"]["cpu_s_per_gb"] is None
    assert 0 < results["wggo"]["cpu_s_per_gb"] < 1000, results["wggo"]
    # A bare veth is far faster than any userspace tunnel.
    assert results["veth"]["tcp_ab_bps"] > 2 * results["wggo"]["tcp_ab_bps"]


@pytest.mark.parametrize("args, message", [
    ((), "usage: python3 -m tools.bench"),
    (("nosuch",), "unknown benchmark 'nosuch'"),
    (("wg", "--pairs", "veth,nosuch"), "unknown pair(s) nosuch"),
    (("wg", "--time", "0"), "--time must be between 1 and 600"),
    (("wg", "--repeat", "0"), "--repeat must be between 1 and 20"),
])
def test_bench_usage_errors(args, message: str) -> None:
    res = run(*args)
    assert res.returncode == 2
    assert message in res.stderr
    assert "Traceback" not in res.stderr
