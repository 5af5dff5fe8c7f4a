"""Prerequisite checks for tests that need real parts (root, TUN, binaries).

Outside CI a missing prerequisite skips the test; with CI=true it fails, so a
broken install step can never turn into a silently green run.
"""
from __future__ import annotations

import os
import shutil

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def missing(reason: str) -> None:
    if in_ci():
        pytest.fail(f"prerequisite missing under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


def require_root() -> None:
    if os.geteuid() != 0:
        missing("needs root")
    if not os.path.exists("/dev/net/tun"):
        missing("needs /dev/net/tun")
    if shutil.which("ip") is None:
        missing("needs iproute2 (ip)")


def require_binary(*names: str) -> None:
    for name in names:
        if shutil.which(name) is None:
            missing(f"needs the program {name!r} on PATH")
