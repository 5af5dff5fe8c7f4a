"""Writing a file so that a reader (or a crash) sees the old or the new content, never a mix.

One piece for every file the project replaces: certificates and keys, TOFU bindings, DERP map caches and
outputs, netcheck history, saved WireGuard configurations, the host-state journal. The data goes to a
temporary file in the same directory (created with its final mode, so a secret is never readable by
others, not even for a moment), is flushed and fsynced, renamed over the target, and the directory is
synced so the rename survives a crash. Errors are OSError; the caller words them for its user.
"""
from __future__ import annotations

import os
import tempfile


def write_atomic(path: str | os.PathLike, data: bytes | str, mode: int = 0o644,
                 make_dirs: int | None = None) -> None:
    """Replace `path` with `data` (str is UTF-8 encoded) with permissions `mode`; with `make_dirs`, the
    missing parent directories are created with that mode first."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if make_dirs is not None:
        os.makedirs(directory, mode=make_dirs, exist_ok=True)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-" + os.path.basename(path) + "-")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    sync_directory(directory)


def sync_directory(directory: str) -> None:
    """fsync a directory (best effort: some filesystems refuse it)."""
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)
