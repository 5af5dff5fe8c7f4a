"""derp.aio.atomicfile: the one writer every replaced file goes through."""
from __future__ import annotations

import os
import stat

import pytest

from derp.aio import atomicfile
from derp.aio.atomicfile import write_atomic


def test_replaces_whole_with_the_mode_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "key"
    target.write_text("old")
    write_atomic(target, "new secret", 0o600)
    assert target.read_text() == "new secret"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["key"]


def test_bytes_and_missing_directories(tmp_path):
    target = tmp_path / "a" / "b" / "map.json"
    write_atomic(str(target), b"{}\n", 0o644, make_dirs=0o755)
    assert target.read_bytes() == b"{}\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) & 0o755 == 0o755


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path, monkeypatch):
    target = tmp_path / "conf"
    target.write_text("old")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(atomicfile.os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_atomic(target, "new")
    assert target.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["conf"]


def test_the_temporary_is_never_readable_by_others(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace

    def spying_replace(src, dst):
        seen.append(stat.S_IMODE(os.stat(src).st_mode))
        real_replace(src, dst)
    monkeypatch.setattr(atomicfile.os, "replace", spying_replace)
    write_atomic(tmp_path / "k", "secret", 0o600)
    assert seen == [0o600]
