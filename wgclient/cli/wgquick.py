"""`wgc strip` and `wgc save`, as `wg-quick strip/save`: the argument is a config file or an interface name
(looked up like `wgc up NAME`, wgclient.config.find_config).

`strip` prints what `wg setconf` reads (wg-quick's and wgc's own keys removed); `save` writes the running
interface back into its file, keeping comments and wgc's keys (wgclient/configsave.py).
"""
from __future__ import annotations

import sys
from typing import Sequence

from ..config import find_config, interface_name_from_path, load_config
from ..configsave import strip_text
from ..errors import UsageError


def _read(path: str) -> str:
    load_config(path, resolve=lambda host, port: (host, port))     # one-line errors for a bad file
    with open(path, encoding="utf-8") as f:
        return f.read()


def _one_argument(cmd: str, argv: Sequence[str]) -> str:
    if len(argv) != 1 or argv[0].startswith("-"):
        raise UsageError(f"usage: wgc {cmd} CONFIG_FILE|INTERFACE")
    return find_config(argv[0])


def cmd_strip(argv: Sequence[str]) -> int:
    sys.stdout.write(strip_text(_read(_one_argument("strip", argv))))
    return 0


def cmd_save(argv: Sequence[str]) -> int:
    from ..aio import hoststate, saveconf

    path = _one_argument("save", argv)
    _read(path)
    name = interface_name_from_path(path)
    saveconf.save_running(name, path, auto_fwmark=hoststate.auto_fwmark(name))
    return 0
