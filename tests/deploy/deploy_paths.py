"""Where the deployment kit lives and the check that the sandbox's tools are here (shared by conftest.py and
the tests; a plain module, since `conftest` names clash between test folders)."""
from __future__ import annotations

import os
from pathlib import Path

from tests.support.prereq import missing as prereq_missing

from sandbox import have_tools

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def need_sandbox() -> None:
    if os.geteuid() != 0:
        prereq_missing("needs root (mount and network namespaces)")
    missing = have_tools("unshare", "setpriv", "mount", "ip", "curl", "systemd-analyze")
    if missing:
        prereq_missing(f"missing tools: {', '.join(missing)} (tools/setup.sh installs them)")
