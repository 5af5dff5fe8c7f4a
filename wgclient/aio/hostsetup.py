"""Everything `wgc up` changes on the host around its interface, in wg-quick's order, and the undo.

`setup()`: addresses, MTU, link up and AllowedIPs routes (netconf.py), then DNS (dns.py). Whatever
outlives the process (DNS) is written to the host-state journal (hoststate.py) before it is changed.
`teardown()` undoes it in reverse and removes the journal; `cleanup_stale(name)` undoes what a journal
left by a crashed wgc lists (the daemon calls it once it holds the pid lock, `down` when no daemon is
left). A failure in `setup()` undoes the partial work and raises UsageError.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ..config import InterfaceConfig
from . import dns, hoststate, netconf

log = logging.getLogger("wgc.hostsetup")


@dataclass
class Host:
    name: str
    applied: netconf.Applied | None = None
    dns: dns.DnsPlan | None = None
    journal: dict = field(default_factory=dict)


def setup(config: InterfaceConfig, *, mtu: int) -> Host:
    host = Host(config.name)
    host.applied = netconf.configure(config.name, config.addresses, mtu,
                                     [n for p in config.peers for n in p.allowed_ips], table=config.table)
    try:
        plan = dns.choose(config.name, config.dns)
        if plan is not None:
            host.journal["dns"] = dns.to_json(plan)
            hoststate.store(config.name, host.journal)
            dns.apply(plan)
            host.dns = plan
    except BaseException:
        host.journal.pop("dns", None)
        teardown(host)
        raise
    return host


def teardown(host: Host) -> None:
    """Undo setup(): DNS, then routes, addresses, link state and MTU; the journal goes last."""
    if host.dns is not None:
        dns.undo(host.dns)
        host.dns = None
    if host.applied is not None:
        netconf.unconfigure(host.applied)
        host.applied = None
    hoststate.remove(host.name)


def cleanup_stale(name: str) -> list[str]:
    """Undo what the journal of a wgc that died without cleaning up lists; returns what was undone."""
    state = hoststate.load(name)
    done = []
    if isinstance(state.get("dns"), dict):
        log.warning("%s: restoring DNS left by a wgc that did not shut down", name)
        dns.undo_json(state["dns"])
        done.append("DNS")
    hoststate.remove(name)
    return done
