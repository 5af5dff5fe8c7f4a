"""Fixtures shared by the NAT-lab path tests (each module defines its own `pl`, a PathLab)."""
from __future__ import annotations

import pytest


@pytest.fixture
def on_failure(pl, request):
    """Print the lab's logs (peers and relays) when the test using it fails."""
    failed_before = request.session.testsfailed
    pl.stopped_reports.clear()   # only the peers this test stops
    yield
    if request.session.testsfailed > failed_before:
        print(pl.report())
