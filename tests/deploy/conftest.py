"""Fixtures for the deployment-kit tests: skips where the tools are missing, and the container image built
once per session in a sandbox (tests/deploy/sandbox.py) from deploy/Dockerfile's own instructions."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dockerfile import Image, parse
from sandbox import Sandbox, copy_checkout

from deploy_paths import DEPLOY, ROOT, need_sandbox

@pytest.fixture
def sandbox(tmp_path):
    need_sandbox()
    box = Sandbox(tmp_path / "box", hosts={"relay.example.net": "127.0.0.1"})
    yield box
    box.cleanup()


@pytest.fixture(scope="session")
def image(tmp_path_factory) -> tuple[Image, Path]:
    """(the Dockerfile's run-time settings, the directory of the image's files) after running every COPY and
    RUN of deploy/Dockerfile in a sandbox (with the network: pip fetches wheels)."""
    need_sandbox()
    root = tmp_path_factory.mktemp("image")
    box = Sandbox(root / "build")
    copy_checkout(ROOT, box.share / "context")
    img = parse((DEPLOY / "Dockerfile").read_text(), "/mnt/context")
    box.check(img.build_script, timeout=600, network=True)
    shutil.rmtree(box.share / "context")
    yield img, box.up
    box.cleanup()
