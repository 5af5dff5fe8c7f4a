"""`DNS =`: the interface's name servers and search domains handed to the system resolver, and taken back.

As wg-quick: an entry that is an IPv4 address (digits and dots) or contains a colon is a server, anything
else a search domain. With systemd-resolved running (its varlink socket exists and `resolvectl` is on
PATH) they are set on the link with `resolvectl dns/domain` (`~.` first, so every query goes to the
tunnel's servers, which is what wg-quick's `resolvconf -x` means under systemd) and `resolvectl revert`
undoes them. Otherwise `resolvconf` gets exactly wg-quick's input: `resolvconf -a [prefix.]NAME -m 0 -x`
with `nameserver`/`search` lines on stdin, and `resolvconf -d [prefix.]NAME -f` on down (the prefix
from /etc/resolvconf/interface-order, as wg-quick's resolvconf_iface_prefix). Neither one: `up` fails
before anything is changed, since the tunnel would otherwise leak queries to the old servers.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Callable

from ..errors import UsageError

log = logging.getLogger("wgc.dns")

RESOLVED_SOCKET = "/run/systemd/resolve/io.systemd.Resolve"
INTERFACE_ORDER = "/etc/resolvconf/interface-order"
COMMAND_TIMEOUT = 15.0
_SERVER = re.compile(r"^[0-9.]+$|^.*:.*$")


def split_entries(entries: tuple[str, ...] | list[str]) -> tuple[list[str], list[str]]:
    """wg-quick's split of `DNS =` entries into (servers, search domains)."""
    servers = [e for e in entries if _SERVER.match(e)]
    return servers, [e for e in entries if not _SERVER.match(e)]


def resolved_running() -> bool:
    return os.path.exists(RESOLVED_SOCKET) and shutil.which("resolvectl") is not None


def iface_prefix(order_file: str = INTERFACE_ORDER) -> str:
    """The first `NAME*` pattern of resolvconf's interface-order as `NAME.` (wg-quick's rule), else ''."""
    try:
        with open(order_file, encoding="utf-8", errors="replace") as f:
            for line in f:
                m = re.fullmatch(r"([A-Za-z0-9-]+)\*", line.strip())
                if m:
                    return m.group(1) + "."
    except OSError:
        pass
    return ""


@dataclass(frozen=True)
class DnsPlan:
    """The commands (argv, stdin) that set and that undo an interface's DNS."""

    backend: str
    apply: tuple[tuple[tuple[str, ...], str | None], ...]
    undo: tuple[tuple[tuple[str, ...], str | None], ...]


def plan(name: str, entries: tuple[str, ...], *, resolved: bool, prefix: str = "") -> DnsPlan | None:
    """What to run for `DNS = entries` on interface `name` (None: no DNS servers, nothing to do). Pure."""
    servers, search = split_entries(entries)
    if not servers:
        return None
    if resolved:
        return DnsPlan("resolvectl",
                       ((("resolvectl", "dns", name, *servers), None),
                        (("resolvectl", "domain", name, "~.", *search), None)),
                       ((("resolvectl", "revert", name), None),))
    text = "".join(f"nameserver {s}\n" for s in servers) + (f"search {' '.join(search)}\n" if search else "")
    iface = prefix + name
    return DnsPlan("resolvconf", ((("resolvconf", "-a", iface, "-m", "0", "-x"), text),),
                   ((("resolvconf", "-d", iface, "-f"), None),))


def _run(argv: tuple[str, ...], stdin: str | None) -> None:
    log.info("[#] %s", " ".join(argv))
    try:
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    except FileNotFoundError:
        raise UsageError(f"DNS: {argv[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise UsageError(f"DNS: {' '.join(argv)} did not finish within {COMMAND_TIMEOUT:.0f} s") from None
    if proc.returncode != 0:
        why = (proc.stderr or proc.stdout).strip().splitlines()
        raise UsageError(f"DNS: {' '.join(argv)} failed with exit code {proc.returncode}"
                         + (f": {why[-1]}" if why else ""))


def choose(name: str, entries: tuple[str, ...], *,
           resolved: Callable[[], bool] = resolved_running) -> DnsPlan | None:
    """The plan for this host; UsageError when DNS servers are given and no resolver manager is found."""
    is_resolved = resolved()
    p = plan(name, entries, resolved=is_resolved, prefix="" if is_resolved else iface_prefix())
    if p is not None and not is_resolved and shutil.which("resolvconf") is None:
        raise UsageError(f"DNS = {', '.join(entries)} needs resolvconf or systemd-resolved (resolvectl); "
                         "neither was found (install resolvconf, or remove DNS =)")
    return p


def apply(p: DnsPlan) -> None:
    """Run the plan's commands; on a failure, undo what may have been set and raise UsageError."""
    try:
        for argv, stdin in p.apply:
            _run(argv, stdin)
    except UsageError:
        undo(p)
        raise


def undo(p: DnsPlan) -> None:
    """Run the plan's undo commands; failures are logged, never raised (teardown goes on)."""
    for argv, stdin in p.undo:
        try:
            _run(argv, stdin)
        except UsageError as e:
            log.warning("%s", e)


def to_json(p: DnsPlan) -> dict:
    return {"backend": p.backend, "undo": [[list(argv), stdin] for argv, stdin in p.undo]}


def undo_json(data: dict) -> None:
    """Undo a plan recorded by `to_json` (the host-state journal, after a crash)."""
    steps = tuple((tuple(str(a) for a in argv), stdin) for argv, stdin in data.get("undo", []))
    undo(DnsPlan(str(data.get("backend", "")), (), steps))
