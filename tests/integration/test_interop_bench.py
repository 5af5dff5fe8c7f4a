"""The WireGuard benchmarks (`python3 -m tools.bench wg` and `flood`) run and report sane figures.

Smoke runs, not measurements: one second per iperf3 run over a bare veth and the wireguard-go pair,
checking that every figure is present and positive (CPU per GB only for tunnels), the reference pair's
ratios are 1.00x, and the JSON report matches; one second of pings under a slow flood for both flood
pairs, checking that the flood reached wgc (its status counts cookie replies) and the report's shape.
Plus the flooder's messages passing mac1, and the command line's handling of mistakes.
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


@pytest.mark.netns
@pytest.mark.timeout(150)
def test_bench_flood_smoke(tmp_path) -> None:
    require_root()
    require_binary("wireguard-go", "wg", "ping")
    report = tmp_path / "flood.json"
    res = run("flood", "--seconds", "1", "--interval", "0.05", "--rate", "20000", "--warmup", "0.5",
              "--json", str(report), timeout=140)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split()[:3] == ["pair", "ping", "loss"]
    assert any(line.startswith("wgc loss / wireguard-go loss: ") for line in lines), res.stdout
    results = {r["pair"]: r for r in json.loads(report.read_text())["results"]}
    assert set(results) == {"wggo", "wgc"}
    for r in results.values():
        assert r["error"] is None and 0 <= r["loss_pct"] <= 100 and r["flood_rate"] > 0, r
    # The flood reached wgc's gate: it went under load and answered with cookies (wgc status --json).
    assert results["wgc"]["drops"].get("under load: cookie sent", 0) > 0, results["wgc"]
    assert results["wggo"]["drops"] == {}


def test_flooder_messages_pass_the_victims_mac1_check_only() -> None:
    from tools.bench.flooder import initiations
    from wgclient.noise import crypto
    from wgclient.noise.cookie import CookieChecker
    from wgclient.noise.messages import message_type

    victim = crypto.public_key(bytes(range(32)))
    pool = initiations(victim, 50)
    assert len(set(pool)) == 50 and {message_type(m) for m in pool} == {1}
    assert all(CookieChecker(victim, bytes).check_mac1(m) for m in pool)
    assert not any(CookieChecker(crypto.public_key(bytes(32 * [7])), bytes).check_mac1(m) for m in pool)


@pytest.mark.parametrize("args, message", [
    ((), "usage: python3 -m tools.bench"),
    (("nosuch",), "unknown benchmark 'nosuch'"),
    (("wg", "--pairs", "veth,nosuch"), "unknown pair(s) nosuch"),
    (("wg", "--time", "0"), "--time must be between 1 and 600"),
    (("wg", "--repeat", "0"), "--repeat must be between 1 and 20"),
    (("flood", "--pairs", "wgc,nosuch"), "unknown pair(s) nosuch"),
    (("flood", "--seconds", "0"), "--seconds 0.5-600"),
    (("flood", "--sources", "0"), "--sources between 1 and 200"),
])
def test_bench_usage_errors(args, message: str) -> None:
    res = run(*args)
    assert res.returncode == 2
    assert message in res.stderr
    assert "Traceback" not in res.stderr
