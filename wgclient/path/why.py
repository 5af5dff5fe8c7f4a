"""`wgc status --why PEER`: a peer's path explained in words a user can act on; also the status column
(`direct ip:port` / `relay "code"` / `relay-node NAME`) and a JSON-ready per-peer summary for `wgc status
--json`. With relay nodes configured (or a Path/AvoidPath policy) the choice is also explained against the
selection rule of relaychoice.py, kind by kind.

Pure: reads the manager's facts (our netcheck, the peer's announced NodeInfo or what its pings revealed,
ping/pong counters) and returns one paragraph. The first matching reason wins, most fundamental first.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

from wgclient.keys import short as key_short

from . import disco
from .peerstate import FROM_CMM, FROM_CONFIG, PathState, PeerPath
from .relaychoice import DERP, DIRECT, RELAY_NODE, is_own_region

if TYPE_CHECKING:  # pragma: no cover
    from .manager import PathManager


def _fmt(addr) -> str:
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"


def _relay_text(m: "PathManager", p: PeerPath) -> str:
    if not p.relay:
        return "no DERP region is usable (is a --derpmap given, and can this host reach a relay?)"
    return f'relayed via DERP region "{m.home.code(p.relay)}"'


def _reason(m: "PathManager", p: PeerPath, now: float) -> str:
    ours_hard = m.netinfo.mapping_varies is True
    flags = p.peer_flags
    peer_udp_blocked = flags is not None and not flags & disco.NI_UDP
    peer_hard = p.inferred_hard_nat or (flags is not None and bool(flags & disco.NI_MAPPING_KNOWN)
                                        and bool(flags & disco.NI_HARD_NAT))
    if not m.netinfo.udp:
        return ("UDP is blocked on this network (netcheck got no STUN answer); allow outbound UDP "
                "to get a direct path")
    if peer_udp_blocked:
        return "the peer's network blocks UDP; allow outbound UDP there to get a direct path"
    if ours_hard and peer_hard:
        return ("both NATs map ports per destination (hard NAT), so hole punching cannot work; forward a UDP "
                "port (or enable UPnP/NAT-PMP) on one side")
    if p.udp_pongs == 0 and p.udp_pings_sent:
        if peer_hard:
            return ("peer's NAT maps ports per destination (hard NAT) and ours filters unknown senders; "
                    "forward a UDP port on either side")
        if ours_hard:
            return ("our NAT maps ports per destination (hard NAT) and the peer's filters unknown senders; "
                    "forward a UDP port on either side")
    if p.last_send is None:
        return "nothing has been sent to the peer yet, so no hole punching is running"
    if not p.active(now, m.config.session_active_timeout):
        return "no traffic to the peer in the last 45 s, so no hole punching is running"
    if not p.candidates:
        if not p.cmm_received:
            return ("no direct address of the peer is known yet: it has sent no CallMeMaybe over DERP "
                    "and the config has no Endpoint for it")
        return "the peer advertised no usable direct address"
    n = len(p.candidates)
    listed = sum(1 for c in p.candidates.values() if c.sources & {FROM_CMM, FROM_CONFIG})
    return (f"{p.udp_pings_sent} disco pings to {n} candidate address{'es' if n != 1 else ''} "
            f"({listed} advertised) got no answer: a firewall may drop UDP between you")


def _short(text: str) -> str:
    """The gist of a reason, for one status line: parenthesised asides dropped, cut before the advice
    ('both NATs map ports per destination (hard NAT), so ...' -> 'both NATs map ports per destination')."""
    text = re.sub(r" \([^)]*\)", "", text)
    cut = min((i for i in (text.find(";"), text.find(", so"), text.find(":")) if i > 0), default=len(text))
    return text[:cut]


def _node_name(m: "PathManager", key: bytes) -> str:
    node = m.peers.get(key)
    return (node.name if node is not None and node.name else None) or key_short(key)


def choice_reason(m: "PathManager", p: PeerPath, now: float) -> str:
    """Why the selection rule chose what it chose for p, in one clause ('status' shows it)."""
    c = p.choice
    if c.kind == DIRECT:
        return "the direct path works"
    pinned = p.policy.pin
    if c.kind == RELAY_NODE:
        before = f"pinned to relay-node (Path = {pinned})" if pinned else _short(_reason(m, p, now))
        return f"{before}; relay node {_node_name(m, c.relay_node)} reachable"
    skipped = dict(c.skipped)
    if c.kind == DERP:
        return f"{_short(_reason(m, p, now))}; {skipped.get(RELAY_NODE, 'relay nodes avoided')}" \
            if m.relay_nodes else _short(_reason(m, p, now))
    return "no allowed path now: " + "; ".join(f"{k} {why}" for k, why in c.skipped)


def rule_text(m: "PathManager", p: PeerPath) -> str:
    """The choice against the rule, kind by kind: what was passed over and why, and what was taken."""
    c = p.choice
    steps = [f"{kind}: {why}" for kind, why in c.skipped]
    if c.kind == RELAY_NODE:
        steps.append(f"relay-node: {_node_name(m, c.relay_node)} reachable, chosen")
    elif c.kind == DERP:
        steps.append(f'derp: region "{m.home.code(c.region)}" ({"own" if is_own_region(c.region, m.own_regions) else "other"}), chosen')
    elif c.kind == DIRECT:
        steps.append("direct: chosen")
    return ("Rule: direct, then a relay node, then the operator's own DERP regions, then other DERP regions. "
            + "; ".join(steps) + ".")


def explain(m: "PathManager", p: PeerPath, now: float) -> str:
    if p.is_relay_node and p.choice.kind == DIRECT and p.best is not None:
        return f"relay node, {_direct_text(m, p, now)}"
    if p.choice.kind == RELAY_NODE:
        return f'relay-node "{_node_name(m, p.choice.relay_node)}": {choice_reason(m, p, now)}. {rule_text(m, p)}'
    if p.choice.kind is None and (p.policy.pin or p.policy.avoid):
        return f"no path: {choice_reason(m, p, now)}. {rule_text(m, p)}"
    text = _explain_plain(m, p, now)
    if m.relay_nodes or p.policy.pin or p.policy.avoid:
        text += " " + rule_text(m, p)
    return text


def _direct_text(m: "PathManager", p: PeerPath, now: float) -> str:
    return (f"direct {_fmt(p.best)} ({p.best_latency * 1000:.1f} ms), confirmed by a pong "
            f"{max(0.0, now - (p.trust_until - m.config.trust_duration)):.1f} s ago")


def _explain_plain(m: "PathManager", p: PeerPath, now: float) -> str:
    if p.state is PathState.DIRECT and p.best is not None:
        return _direct_text(m, p, now)
    head = _relay_text(m, p)
    if p.state is PathState.LAPSING and p.best is not None:
        return (f"{head} and {_fmt(p.best)} at once: the direct path stopped answering pings "
                "(trust expired); re-checking it")
    if p.active(now, m.config.session_active_timeout):
        return f"{head}: {_reason(m, p, now)}. Direct-path attempts continue every few seconds."
    return f"{head}: {_reason(m, p, now)}. Direct-path attempts start when traffic goes to the peer."


def path_text(m: "PathManager", p: PeerPath, now: float) -> str:
    """The path column of `wgc status`: `direct 198.51.100.7:41641`, `relay "fra"` (disco.md §11) or
    `relay-node hub`."""
    if p.via is not None:
        return f"relay-node {_node_name(m, p.via)}"
    if p.trusted(now):
        return f"direct {_fmt(p.best)}"
    if p.relay:
        return f'relay "{m.home.code(p.relay)}"'
    return "no path"


def describe(m: "PathManager", p: PeerPath, now: float) -> dict:
    """A JSON-ready summary of one peer's path for `wgc status --json` (times are seconds ago)."""
    return {
        "Path": path_text(m, p, now),
        "State": p.state.value,
        "CurAddr": _fmt(p.best) if p.trusted(now) else "",
        "Relay": m.home.code(p.relay) if p.relay else "",
        "LatencySeconds": p.best_latency if p.best is not None else None,
        "Active": p.active(now, m.config.session_active_timeout),
        "Addrs": sorted(_fmt(a) for a in p.candidates),
        "Why": explain(m, p, now),
        "RelayNode": _node_name(m, p.via) if p.via is not None else "",
    }
