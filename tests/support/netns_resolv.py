"""A namespace's own resolv.conf and a recording resolvconf, for DNS tests that never touch the host's.

`ip netns exec NS` bind-mounts /etc/netns/NS/resolv.conf over /etc/resolv.conf when that file exists,
so every process started in NS (and a daemon it forks) sees it. `NetnsResolv` writes that file, puts a
fake `resolvconf` first on PATH for the environment it returns, and removes what it made on `close()`;
the fake refuses to write unless /etc/resolv.conf is that namespace's file. It records each call
(`argv ...` and `stdin ...` lines in `calls()`) and rebuilds resolv.conf from the interfaces' entries
plus the file as it was at its first call, as openresolv does. `host_resolv_unchanged()` is the check
that the host's own file was left alone.
"""
from __future__ import annotations

import os
import shutil

NETNS_ETC = "/etc/netns"
ORIGINAL = "# the namespace's own resolver\nnameserver 192.0.2.53\noptions edns0\n"

FAKE_RESOLVCONF = r"""#!/bin/sh
set -e
d="$FAKE_RESOLVCONF_DIR"
printf 'argv %s\n' "$*" >> "$d/calls"
[ "$(stat -L -c %d:%i /etc/resolv.conf)" = "$(stat -L -c %d:%i "$FAKE_RESOLVCONF_NETNS_FILE")" ] || {
    echo "fake resolvconf: /etc/resolv.conf is not the test namespace's own; not touching it" >&2; exit 1; }
mkdir -p "$d/ifaces"
[ -f "$d/base" ] || cp /etc/resolv.conf "$d/base"
case "$1" in
  -a) cat > "$d/ifaces/$2"; printf 'stdin %s\n' "$(tr '\n' '|' < "$d/ifaces/$2")" >> "$d/calls" ;;
  -d) rm -f "$d/ifaces/$2" ;;
  *) exit 2 ;;
esac
cat "$d"/ifaces/* "$d/base" 2>/dev/null > /etc/resolv.conf
"""


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class NetnsResolv:
    """/etc/netns/<ns>/resolv.conf (ORIGINAL) and a recording resolvconf in `workdir`."""

    def __init__(self, ns_name: str, workdir: str, env: dict) -> None:
        self.created_etc = not os.path.isdir(NETNS_ETC)
        self.dir = os.path.join(NETNS_ETC, ns_name)
        os.makedirs(self.dir, exist_ok=True)
        self.file = os.path.join(self.dir, "resolv.conf")
        with open(self.file, "w") as f:
            f.write(ORIGINAL)
        self.state = os.path.join(workdir, f"resolvconf-{ns_name}")
        bindir = os.path.join(self.state, "bin")
        os.makedirs(bindir)
        with open(os.path.join(bindir, "resolvconf"), "w") as f:
            f.write(FAKE_RESOLVCONF)
        os.chmod(os.path.join(bindir, "resolvconf"), 0o755)
        self.env = dict(env, PATH=f"{bindir}:{env.get('PATH', os.environ['PATH'])}", FAKE_RESOLVCONF_DIR=self.state,
                        FAKE_RESOLVCONF_NETNS_FILE=self.file)

    def text(self) -> str:
        return _read(self.file).decode()

    def calls(self, name: str = "") -> list[str]:
        try:
            text = _read(os.path.join(self.state, "calls")).decode()
        except FileNotFoundError:
            return []
        return (text.replace(name, "NAME") if name else text).splitlines()

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.created_etc:
            try:
                os.rmdir(NETNS_ETC)
            except OSError:
                pass


def host_resolv() -> bytes:
    return _read("/etc/resolv.conf")
