"""The daemon's log: rotated at a size bound with stdout/stderr following the current file, and a second
`up` of a running interface refused in its own process without touching the running daemon's log."""
from __future__ import annotations

import logging
import os
import stat
from types import SimpleNamespace

import pytest

from wgclient.aio import daemon
from wgclient.errors import UsageError


def test_log_is_rotated_at_its_size_bound_and_stderr_follows(tmp_path) -> None:
    path = tmp_path / "wg0.log"
    stderr_copy = os.open(os.devnull, os.O_WRONLY)   # stands in for fd 2 (pytest owns the real one)
    handler = daemon.DaemonLogHandler(str(path), max_bytes=10_000, backups=2, follow=(stderr_copy,))
    logger = logging.getLogger("t.daemonlog")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        for i in range(2000):
            logger.info("line %05d %s", i, "x" * 80)
        os.write(stderr_copy, b"a traceback written to stderr\n")
    finally:
        logger.removeHandler(handler)
        handler.close()
        os.close(stderr_copy)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["wg0.log", "wg0.log.1", "wg0.log.2"]
    assert all((tmp_path / f).stat().st_size <= 10_000 for f in files)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    current = path.read_text()
    assert "line 01999" in current and current.endswith("a traceback written to stderr\n")


def test_second_up_fails_in_its_own_process_and_leaves_the_log_alone(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("WGC_PID_DIR", str(tmp_path / "pid"))
    monkeypatch.setenv("WGC_LOG_DIR", str(tmp_path / "log"))
    running = daemon.PidFile("wgt0")
    running.acquire()             # the daemon that is up
    os.makedirs(tmp_path / "log")
    (tmp_path / "log" / "wgt0.log").write_text("the running daemon's log\n")
    def no_fork():
        raise AssertionError("forked a daemon although wgt0 is up")
    monkeypatch.setattr(os, "fork", no_fork)   # refused here, before any daemon could write to the log
    try:
        with pytest.raises(UsageError, match=rf"^wgt0 is already up \(pid {os.getpid()}\)$"):
            daemon.run_daemon(SimpleNamespace(name="wgt0"), {})
    finally:
        running.release()
    assert (tmp_path / "log" / "wgt0.log").read_text() == "the running daemon's log\n"
