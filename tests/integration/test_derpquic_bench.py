"""The DERP-over-QUIC benchmark (`python3 -m tools.bench derpquic`) runs and prints its table: a tiny run
(1 s iperf3, 10 pings, 0 and 3 % loss) checking that every transport and loss gets a row of numbers, the
ratio line names each loss, and no lab namespace is left; not a speed check. Bad options: one line."""
from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

from tests.support.prereq import require_binary, require_root

ROOT = pathlib.Path(__file__).resolve().parents[2]
NUM = r"\d+(?:\.\d+)?"


def run(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    proc = subprocess.Popen([sys.executable, "-m", "tools.bench", "derpquic", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    res = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    res.pid = proc.pid
    return res


@pytest.mark.netns
@pytest.mark.timeout(240)
def test_bench_derpquic_smoke() -> None:
    require_root()
    require_binary("iperf3", "nft", "ping")
    res = run("--time", "1", "--pings", "10", "--loss", "0,3", "--udp-rate", "5M", timeout=230)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert "relay link +10 ms RTT" in out and "MTU 1280" in out, out
    for loss in ("0", "3"):
        for name in (r"DERP/TCP \(TLS\)", "DERP/QUIC"):
            row = rf"^ +{loss}%  {name}\*? +{NUM} Mbit/s +(?:{NUM} Mbit/s +{NUM}%|- +-) +{NUM} ms +{NUM} ms +{NUM}% +{NUM}% +\d+ +{NUM} +{NUM}$"
            assert re.search(row, out, re.M), (loss, name, out)
    assert re.search(rf"^ratio QUIC / TCP throughput +0 %: {NUM}x +3 %: {NUM}x$", out, re.M), out
    assert re.search(rf"^ratio TCP / QUIC ping p99 +0 %: {NUM}x +3 %: {NUM}x$", out, re.M), out
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"natlab-{res.pid}x" not in namespaces, "the bench left its lab behind"


@pytest.mark.parametrize("args, message", [(["--loss", "x"], "--loss takes numbers"),
                                           (["--loss", "60"], "--loss values are 0-50 %"),
                                           (["--time", "0"], "--time is 1-600 s")])
def test_bench_derpquic_bad_arguments(args, message) -> None:
    res = run(*args)
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr, res.stderr
