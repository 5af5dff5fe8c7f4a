"""Everything `wgc up` changes on the host around its interface, in wg-quick's order, and the undo.

`setup()`: addresses, MTU, link up and AllowedIPs routes (netconf.py; a full tunnel's default routes in
the mark's own table), the full tunnel's policy rules and nftables table (policyroute.py), then DNS
(dns.py). Whatever outlives the process (rules, nftables, DNS) is written to the host-state journal
(hoststate.py) before it is changed. `teardown()` undoes it in reverse and removes the journal;
`cleanup_stale(name)` undoes what a journal left by a crashed wgc lists (the daemon calls it once it
holds the pid lock, `down` when no daemon is left). A failure in `setup()` undoes the partial work and
raises UsageError.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ..config import InterfaceConfig
from . import dns, hoststate, netconf, policyroute

log = logging.getLogger("wgc.hostsetup")


@dataclass
class Host:
    name: str
    applied: netconf.Applied | None = None
    policy: policyroute.Policy | None = None
    dns: dns.DnsPlan | None = None
    journal: dict = field(default_factory=dict)

    def record(self, key: str, value) -> None:
        self.journal[key] = value
        hoststate.store(self.name, self.journal)


def choose_fwmark(config: InterfaceConfig) -> tuple[int, bool]:
    """(the firewall mark, whether wgc chose it): FwMark if set, else for a full tunnel the first free
    table from 51820 up (wg-quick's rule), else none."""
    if config.fwmark or not policyroute.full_tunnel_families(config):
        return config.fwmark, False
    return policyroute.free_table(), True


def setup(config: InterfaceConfig, *, mtu: int, fwmark: int = 0, auto_fwmark: bool = False) -> Host:
    host = Host(config.name)
    families = policyroute.full_tunnel_families(config)
    try:
        if auto_fwmark:
            host.record("auto_fwmark", fwmark)
        host.applied = netconf.configure(config.name, config.addresses, mtu,
                                         [n for p in config.peers for n in p.allowed_ips], table=config.table,
                                         default_table=fwmark if families else None)
        if families:
            addresses = {v: [str(a.ip) for a in config.addresses if a.version == v] for v in (4, 6)}
            host.policy = policyroute.add(config.name, fwmark, families, addresses,
                                          record=lambda p: host.record("policy", p.to_json()))
        plan = dns.choose(config.name, config.dns)
        if plan is not None:
            host.record("dns", dns.to_json(plan))
            dns.apply(plan)
            host.dns = plan
    except BaseException:
        host.journal.pop("dns", None)
        teardown(host)
        raise
    return host


def teardown(host: Host) -> None:
    """Undo setup(): DNS, policy rules and nftables, then routes, addresses, link state and MTU; the
    journal goes last."""
    if host.dns is not None:
        dns.undo(host.dns)
        host.dns = None
    if host.policy is not None:
        policyroute.remove(host.policy)
        host.policy = None
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
    if isinstance(state.get("policy"), dict):
        log.warning("%s: removing policy rules left by a wgc that did not shut down", name)
        policyroute.remove_json(name, state["policy"])
        done.append("policy rules")
    hoststate.remove(name)
    return done
