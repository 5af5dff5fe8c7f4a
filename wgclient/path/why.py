"""`wgc status --why PEER`: a peer's path explained in words a user can act on; also the status column
(`direct ip:port` / `relay "code"`) and a JSON-ready per-peer summary for `wgc status --json`.

Pure: reads the manager's facts (our netcheck, the peer's announced NodeInfo or what its pings revealed,
ping/pong counters) and returns one paragraph. The first matching reason wins, most fundamental first.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from . import disco
from .peerstate import FROM_CMM, FROM_CONFIG, PathState, PeerPath

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


def explain(m: "PathManager", p: PeerPath, now: float) -> str:
    if p.state is PathState.DIRECT and p.best is not None:
        return (f"direct {_fmt(p.best)} ({p.best_latency * 1000:.1f} ms), confirmed by a pong "
                f"{max(0.0, now - (p.trust_until - m.config.trust_duration)):.1f} s ago")
    head = _relay_text(m, p)
    if p.state is PathState.LAPSING and p.best is not None:
        return (f"{head} and {_fmt(p.best)} at once: the direct path stopped answering pings "
                "(trust expired); re-checking it")
    if p.active(now, m.config.session_active_timeout):
        return f"{head}: {_reason(m, p, now)}. Direct-path attempts continue every few seconds."
    return f"{head}: {_reason(m, p, now)}. Direct-path attempts start when traffic goes to the peer."


def path_text(m: "PathManager", p: PeerPath, now: float) -> str:
    """The path column of `wgc status`: `direct 198.51.100.7:41641` or `relay "fra"` (disco.md §11)."""
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
    }
