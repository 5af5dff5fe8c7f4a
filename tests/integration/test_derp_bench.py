"""The DERP benchmark's certificate comparison (`python3 -m tools.bench derp --compare-acme`) runs end to
end: the relay gets a certificate from pebble, both certificate kinds get a row and a ratio line, and the
bench leaves neither its namespace nor its temporary directory behind. A smoke run, not a measurement:
no figure is checked beyond being a number.
"""
from __future__ import annotations

import glob
import os
import pathlib
import re
import subprocess
import sys

import pytest

from tests.support.prereq import require_binary, require_root

ROOT = pathlib.Path(__file__).resolve().parents[2]
NUM = r"\d+(?:\.\d+)?"


@pytest.mark.netns
@pytest.mark.timeout(150)
def test_bench_derp_compare_acme_smoke(tmp_path) -> None:
    require_root()
    require_binary("pebble", "pebble-challtestsrv", "ip")
    proc = subprocess.Popen([sys.executable, "-m", "tools.bench", "derp", "--seconds", "0.5", "--pings", "50",
                             "--skip", "throughput,latency,idle", "--compare-acme", "--acme-rounds", "1"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, TMPDIR=str(tmp_path)))
    try:
        out, err = proc.communicate(timeout=140)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out + err
    row = rf"\s+{NUM} Mbit/s\s+{NUM} packets/s\s+{NUM} µs\s+{NUM} µs$"
    assert re.search(r"^manual \(test CA, 127\.0\.0\.1\)" + row, out, re.M), out
    assert re.search(r"^ACME \(pebble, derp\.wgc\.test\)" + row, out, re.M), out
    assert re.search(rf"^ratio ACME / manual(\s+{NUM}x){{4}}$", out, re.M), out
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"acme{proc.pid % 10000:04d}" not in namespaces, namespaces
    assert not glob.glob(str(tmp_path / "derp-bench-*")), "the bench left its temporary directory"
