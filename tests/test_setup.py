"""tools/setup.sh installs into a project virtual environment made with the system's python3, whatever
`python3`/`pip` come first on PATH (pyenv, or a Debian Python that refuses `pip install`, PEP 668), and
the test run itself uses such a venv."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from tests.support.prereq import missing, require_root

ROOT = pathlib.Path(__file__).resolve().parents[1]
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


@pytest.mark.timeout(300)
def test_setup_builds_a_venv_with_the_system_python_only(tmp_path) -> None:
    require_root()  # setup.sh may apt-get install
    if not os.path.exists("/usr/bin/python3"):
        missing("no system python3 at /usr/bin/python3")
    fake = tmp_path / "bin"
    fake.mkdir()
    marker = tmp_path / "wrong-python-used"
    for name in ("python3", "python", "pip", "pip3"):
        (fake / name).write_text(f"#!/bin/sh\ntouch {marker}\necho 'externally-managed-environment' >&2\nexit 1\n")
        (fake / name).chmod(0o755)
    venv = tmp_path / "venv"
    env = {"PATH": f"{fake}:{SYSTEM_PATH}", "HOME": os.environ.get("HOME", "/root"), "WGC_VENV": str(venv)}
    proc = subprocess.run(["bash", str(ROOT / "tools" / "setup.sh")], env=env, capture_output=True, text=True,
                          timeout=280)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert not marker.exists(), "setup.sh ran the python3/pip first on PATH"
    out = subprocess.run([str(venv / "bin" / "python"), "-c",
                          "import sys, wgclient; print(sys.base_prefix); print(wgclient.__file__)"],
                         capture_output=True, text=True, check=True, timeout=60).stdout.split()
    assert out[0] == "/usr" and out[1].startswith(str(ROOT)), out
    keys = subprocess.run([str(venv / "bin" / "wgc"), "genkey"], capture_output=True, text=True, timeout=60)
    assert keys.returncode == 0 and len(keys.stdout.strip()) == 44
    assert f"wgc is {venv}/bin/wgc" in proc.stdout


def test_suite_runs_in_the_project_venv() -> None:
    if os.environ.get("CI") != "true":
        pytest.skip("only CI promises the venv made by tools/test.sh")
    assert sys.prefix != sys.base_prefix, "tests run outside a virtual environment"
    assert pathlib.Path(sys.prefix).resolve() == (ROOT / ".venv").resolve()
    assert ".venv/" in (ROOT / ".gitignore").read_text().split()
