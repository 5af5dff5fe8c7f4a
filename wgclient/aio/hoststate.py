"""The host-state journal: what `up` changed outside its own interface, written down before each change so
that `down` (and the next `up`) can undo it after a crash.

Routes and addresses die with the TUN device; policy rules, the nftables table and DNS do not. The
journal `<pid dir>/NAME.host.json` (next to the pid file, see daemon.py) lists them; it is rewritten
atomically after every change and removed once everything is undone.
"""
from __future__ import annotations

import json
import os

from derp.aio.atomicfile import write_atomic

from .daemon import pid_path


def journal_path(name: str) -> str:
    return pid_path(name)[:-len(".pid")] + ".host.json"


def load(name: str) -> dict:
    try:
        with open(journal_path(name), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def store(name: str, state: dict) -> None:
    path = journal_path(name)
    write_atomic(path, json.dumps(state), 0o644, make_dirs=0o755)


def remove(name: str) -> None:
    try:
        os.unlink(journal_path(name))
    except FileNotFoundError:
        pass


def auto_fwmark(name: str) -> int:
    """The firewall mark wgc chose itself for NAME's full tunnel (0: none)."""
    value = load(name).get("auto_fwmark", 0)
    return value if isinstance(value, int) else 0
