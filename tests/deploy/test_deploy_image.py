"""deploy/Dockerfile, run as a script: every COPY and RUN builds the image's files in a sandbox (a clean venv
from wheels, the non-root user, the healthcheck), then the image's ENTRYPOINT + CMD starts as that user with
no capability in a namespace of its own, and its HEALTHCHECK sees /healthz answer."""
from __future__ import annotations

import base64
import os
import re

import pytest

from container import Run, script
from deploy_paths import DEPLOY
from sandbox import Sandbox

pytestmark = [pytest.mark.timeout(900), pytest.mark.netns]


def test_dockerfile_shape() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.\d+-slim-bookworm$", text, re.M)
    assert re.search(r"^USER derper$", text, re.M) and "--uid 10001" in text
    assert re.search(r"^HEALTHCHECK .*CMD \[\"wgc-healthcheck\"\]$", text, re.M)
    assert "--only-binary :all:" in text  # no compiler in the image
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("*") + 1:] and "!.venv" not in ignore


def test_image_files(image) -> None:
    img, layer = image
    venv = layer / "opt" / "wgc"
    assert (venv / "bin" / "wgc").exists() and os.access(venv / "bin" / "wgc-healthcheck", os.X_OK)
    assert not (venv / "lib" / "python3.11" / "site-packages" / "wgc.egg-link").exists()  # a real install
    assert "derper:x:10001:10001" in (layer / "etc" / "passwd").read_text()
    state = (layer / "var" / "lib" / "derper").stat()
    assert (state.st_uid, state.st_mode & 0o777) == (10001, 0o700)
    assert img.user == "derper" and img.entrypoint == ["wgc", "derper"]


def test_cmd_starts_and_is_healthy_without_capabilities(image, tmp_path) -> None:
    img, layer = image
    box = Sandbox(tmp_path / "run", layers=(layer,))
    (box.share / "allowed-keys").write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    run = Run(argv=img.cmd, volumes=[("/mnt/allowed-keys", "/etc/derper/allowed-keys", True)],
              sysctls={"net.ipv4.ip_unprivileged_port_start": "0"})
    after = ("grep -E '^(Uid|CapPrm|CapEff|CapAmb):' /proc/$PID/status\n"
             "curl -fsS http://127.0.0.1:9090/metrics | grep -c '^derp_' | sed 's/^/metrics=/'\n"
             "curl -fsS -o /dev/null -w 'port80=%{http_code}\\n' http://127.0.0.1/generate_204\n")
    out = box.check(script(img, run, after), timeout=120)
    assert "HEALTHY" in out
    assert re.search(r"^Uid:\s+10001\s", out, re.M)
    for cap in ("CapPrm", "CapEff", "CapAmb"):
        assert re.search(rf"^{cap}:\s+0+$", out, re.M), out
    assert int(re.search(r"metrics=(\d+)", out).group(1)) > 10
    assert "port80=204" in out


def test_non_root_cmd_needs_the_unprivileged_port_sysctl(image, tmp_path) -> None:
    """What compose.yaml's sysctl is for: without it uid 10001 cannot bind 443, and the healthcheck says so."""
    img, layer = image
    box = Sandbox(tmp_path / "run", layers=(layer,))
    (box.share / "allowed-keys").write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    run = Run(argv=img.cmd, volumes=[("/mnt/allowed-keys", "/etc/derper/allowed-keys", True)])
    done = box.run(script(img, run, "", health_wait=10), timeout=60)
    assert done.returncode == 1 and "UNHEALTHY" in done.stdout
    assert "cannot listen on 0.0.0.0:443 (DERP): permission denied" in done.stdout
