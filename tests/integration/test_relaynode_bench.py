"""The relay-node benchmark (`python3 -m tools.bench relay`) runs and reports its figures: a smoke run of one
second per iperf3 run, checking the table's shape and that every figure is positive (not a speed bound),
and the command line's handling of mistakes."""
from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

from tests.support.prereq import require_binary, require_root

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.bench", "relay", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.mark.netns
@pytest.mark.timeout(180)
def test_bench_relay_smoke() -> None:
    require_root()
    require_binary("iperf3", "nft", "ping")
    res = run("--time", "1", "--repeat", "1", timeout=170)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    rows = {line[:40].strip(): re.findall(r"([\d.]+) Mbit/s", line) for line in lines[1:3]}
    assert set(rows) == {"relay node (UDP)", "wgc derper (TLS)"}, res.stdout
    assert all(len(v) == 2 and all(float(x) > 0 for x in v) for v in rows.values()), res.stdout
    assert re.fullmatch(r"ratio relay node / DERP\s+[\d.]+x\s+[\d.]+x", lines[3]), res.stdout


def test_bench_relay_bad_arguments() -> None:
    res = run("--time", "0")
    assert res.returncode == 2 and "--time is 1-600" in res.stderr
