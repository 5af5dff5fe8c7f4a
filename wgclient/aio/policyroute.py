"""The full tunnel (`AllowedIPs = 0.0.0.0/0, ::/0` with Table = auto), set up as wg-quick's add_default does.

* A firewall mark M: `FwMark` if set, else the first table number from 51820 up that holds no route
  (`free_table`). Every socket wgc opens carries it (SO_MARK: WireGuard UDP, DERP, netcheck probes).
* The default routes go into table M (netconf.py); per address family with a /0, two policy rules, sent
  as `ip rule add` sends them, the kernel picking their priority:
  `not fwmark M table M` (unmarked traffic goes to the tunnel) and `table main suppress_prefixlength 0`
  (the main table's routes still win, but not its default route). So the tunnel's own packets, being
  marked, follow the main table to the endpoint, DERP relay and STUN servers, wherever they are.
* The nftables table `wgc-NAME` (ip and ip6), wg-quick's rules: packets to the interface's addresses that
  arrive on another interface from a non-local source are dropped; a connection whose packets leave with
  mark M has it saved in conntrack and restored on its replies. wg-quick does that for UDP only; wgc also
  for its TCP (DERP) and ICMP (netcheck), so a strict rp_filter (with src_valid_mark=1, set as wg-quick
  sets it) accepts every reply. Without `nft` a warning says so and the rest still works.

`add()` records each rule (with the priority the kernel gave it) and the nftables table in the
journal before and after making it; `remove()`/`remove_json()` delete exactly those, so `down` and a
stale-journal cleanup leave `ip rule` as it was. Nothing here touches rules wgc did not add.
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
import socket
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

from pyroute2 import IPRoute

from ..config import InterfaceConfig
from ..errors import UsageError
from .rtnl import RT_TABLE_MAIN, RTM_DELRULE, RTM_NEWRULE, batch, off_loop, rule_message

log = logging.getLogger("wgc.policyroute")

FIRST_TABLE = 51820
NFT_TIMEOUT = 15.0
SRC_VALID_MARK = "/proc/sys/net/ipv4/conf/all/src_valid_mark"
_AF = {4: socket.AF_INET, 6: socket.AF_INET6}


def full_tunnel_families(config: InterfaceConfig) -> list[int]:
    """The IP versions whose /0 is in AllowedIPs, when Table = auto (empty: no full tunnel)."""
    if config.table != "auto":
        return []
    return sorted({n.version for p in config.peers for n in p.allowed_ips if n.prefixlen == 0})


def free_table() -> int:
    """wg-quick's choice of table (and mark): the first from 51820 up with no IPv4 or IPv6 route in it."""
    def run() -> int:
        with IPRoute() as ipr:
            used = {r.get_attr("RTA_TABLE") for family in _AF.values() for r in ipr.route("dump", family=family)}
        table = FIRST_TABLE
        while table in used:
            table += 1
        return table
    return off_loop(run)


@dataclass
class Rule:
    family: int                 # 4 or 6
    kind: str                   # "mark": not fwmark M table M; "suppress": table main suppress_prefixlength 0
    table: int
    priority: int | None = None

    def message(self, op: int, seq: int) -> bytes:
        kw = {"not_fwmark": self.table} if self.kind == "mark" else {"suppress_prefixlength": 0}
        return rule_message(op, _AF[self.family], self.table, seq, priority=self.priority, **kw)

    def matches(self, msg) -> bool:
        if msg.get_attr("FRA_TABLE") != self.table:
            return False
        if self.kind == "mark":
            return bool(msg["flags"] & 0x2) and msg.get_attr("FRA_FWMARK") == self.table
        return msg.get_attr("FRA_SUPPRESS_PREFIXLEN") == 0 and not msg.get_attr("FRA_FWMARK")


@dataclass
class Policy:
    """What add() made: rules (with their priorities) and the nftables table's families."""

    name: str
    mark: int
    rules: list[Rule] = field(default_factory=list)
    nft_families: list[int] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"mark": self.mark, "rules": [asdict(r) for r in self.rules], "nft": self.nft_families}


def _priorities(ipr: IPRoute, rule: Rule) -> set[int]:
    return {m.get_attr("FRA_PRIORITY") or 0 for m in ipr.get_rules(family=_AF[rule.family]) if rule.matches(m)}


def _add_rule(rule: Rule) -> None:
    """Add one rule as `ip rule add` does and learn the priority the kernel gave it."""
    def run() -> None:
        with IPRoute() as ipr:
            before = _priorities(ipr, rule)
            code = batch([rule.message(RTM_NEWRULE, 1)])[0]
            if code:
                raise UsageError(f"adding policy rule {rule.kind} (IPv{rule.family}, table {rule.table}) failed: "
                                 f"{os.strerror(code)}")
            new = _priorities(ipr, rule) - before
            rule.priority = min(new) if new else None
    off_loop(run)


def _delete_rules(rules: Iterable[Rule]) -> None:
    rules = list(rules)
    if not rules:
        return
    codes = off_loop(lambda: batch([r.message(RTM_DELRULE, i + 1) for i, r in enumerate(rules)]))
    for rule, code in zip(rules, codes):
        if code not in (0, errno.ENOENT, errno.ESRCH):
            log.warning("could not remove policy rule %s: %s", rule, os.strerror(code))


def _nft(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True, timeout=NFT_TIMEOUT)


def nft_script(name: str, mark: int, family: int, addresses: Iterable[str]) -> str:
    """wg-quick's nftables rules for one family (connmark for every protocol, see the docstring). Pure."""
    pf = "ip" if family == 4 else "ip6"
    t = f"{pf} wgc-{name}"
    lines = [f"add table {t}",
             f"add chain {t} preraw {{ type filter hook prerouting priority -300; }}",
             f"add chain {t} premangle {{ type filter hook prerouting priority -150; }}",
             f"add chain {t} postmangle {{ type filter hook postrouting priority -150; }}"]
    lines += [f'add rule {t} preraw iifname != "{name}" {pf} daddr {a} fib saddr type != local drop' for a in addresses]
    lines += [f"add rule {t} postmangle meta mark {mark} ct mark set meta mark",
              f"add rule {t} premangle ct mark {mark} meta mark set ct mark"]
    return "".join(line + "\n" for line in lines)


def _remove_nft(name: str, families: Iterable[int]) -> None:
    families = list(families)
    if not families or shutil.which("nft") is None:
        return
    listed = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, timeout=NFT_TIMEOUT).stdout
    have = {line.strip() for line in listed.splitlines()}
    script = "".join(f"delete table {pf} wgc-{name}\n" for pf in ("ip" if f == 4 else "ip6" for f in families)
                     if f"table {pf} wgc-{name}" in have)
    if script:
        res = _nft(script)
        if res.returncode:
            log.warning("could not remove the nftables table wgc-%s: %s", name, res.stderr.strip())


def _set_src_valid_mark() -> None:
    try:
        with open(SRC_VALID_MARK, "r+") as f:
            if f.read().strip() != "1":
                f.seek(0)
                f.write("1\n")
    except OSError as e:
        log.warning("could not set net.ipv4.conf.all.src_valid_mark=1: %s", e.strerror or e)


def add(name: str, mark: int, families: list[int], addresses: dict[int, list[str]],
        record: Callable[[Policy], None]) -> Policy:
    """Rules for each family, then the nftables table; `record(policy)` is called before and after each
    change (the journal). UsageError after undoing what was made."""
    policy = Policy(name, mark)
    try:
        for family in families:
            for kind in ("mark", "suppress"):
                rule = Rule(family, kind, mark if kind == "mark" else RT_TABLE_MAIN)
                policy.rules.append(rule)
                record(policy)
                _add_rule(rule)
                record(policy)
        if 4 in families:
            _set_src_valid_mark()
        if shutil.which("nft") is None:
            log.warning("%s: no nft: the anti-spoofing and connmark rules wg-quick adds are missing; with a strict "
                        "rp_filter the replies to wgc's own traffic may be dropped", name)
            return policy
        policy.nft_families = list(families)
        record(policy)
        script = "".join(nft_script(name, mark, f, addresses.get(f, [])) for f in families)
        res = _nft(script)
        if res.returncode:
            why = res.stderr.strip().splitlines()
            raise UsageError(f"nftables rules for {name} failed: {why[0] if why else f'exit code {res.returncode}'}")
    except BaseException:
        remove(policy)
        raise
    log.info("%s: full tunnel: fwmark %#x, table %d, %d policy rules (priorities %s)%s", name, mark, mark,
             len(policy.rules), [r.priority for r in policy.rules],
             ", nftables table wgc-" + name if policy.nft_families else "")
    return policy


def remove(policy: Policy) -> None:
    """Delete the rules (newest first) and the nftables table add() made."""
    _remove_nft(policy.name, policy.nft_families)
    _delete_rules(reversed(policy.rules))
    policy.rules.clear()
    policy.nft_families = []


def remove_json(name: str, data: dict) -> None:
    """Undo a Policy recorded in the journal (after a crash)."""
    rules = [Rule(int(r["family"]), str(r["kind"]), int(r["table"]), r.get("priority"))
             for r in data.get("rules", []) if isinstance(r, dict)]
    remove(Policy(name, int(data.get("mark", 0)), rules, [int(f) for f in data.get("nft", [])]))
