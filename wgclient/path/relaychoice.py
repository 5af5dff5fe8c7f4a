"""Which kind of path a peer's packets take: the selection rule of docs/relaynode.md, as pure functions.

The rule (Nexodus's, generalised): **direct**, then a configured **relay node**, then the operator's own
**DERP** regions (region ids >= 900, or those of the configured map), then any other DERP region.

- *direct* counts while the path manager has a direct address for the peer (DIRECT, or LAPSING: a
  trusted address whose trust lapsed is still sent to, beside DERP, while it is re-checked);
- a *relay node* counts when it is reachable: the path manager trusts a direct path to it (a pong within
  the trust window). Relay nodes are tried in config order; a relay node is never reached through
  another one, nor through itself;
- *DERP* counts when the manager has a region for the peer; `derp_order` puts own regions first.

Per peer a kind can be pinned (`Path = KIND`: only that kind, nothing when it is not available) or
avoided (`AvoidPath = KIND, ...`). A peer (or the whole interface) pinned to `relay-node` is a Netmaker
"designated relayed host": it never goes direct, even when a direct path would work.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

DIRECT, RELAY_NODE, DERP = "direct", "relay-node", "derp"
KINDS = (DIRECT, RELAY_NODE, DERP)
OWN_REGION_MIN = 900        # region ids from 900 up are the operator's own (Tailscale leaves them free)


@dataclass(frozen=True)
class Policy:
    """A peer's `Path` pin and `AvoidPath` set (validated by the config parser)."""

    pin: str | None = None
    avoid: frozenset = frozenset()

    def allowed(self, kind: str) -> bool:
        return kind == self.pin if self.pin else kind not in self.avoid

    @property
    def no_direct(self) -> bool:
        return not self.allowed(DIRECT)


AUTO = Policy()


@dataclass(frozen=True)
class RelayNode:
    """A configured relay node as the rule sees it."""

    key: bytes
    name: str
    reachable: bool


@dataclass(frozen=True)
class Choice:
    kind: str | None                       # DIRECT, RELAY_NODE, DERP, or None: no allowed path now
    relay_node: bytes | None = None        # the relay node's key when kind is RELAY_NODE
    region: int = 0                        # the DERP region when kind is DERP
    skipped: tuple = field(default=(), compare=False)   # (kind, why not) for each kind passed over


def choose(*, direct: bool, relay_nodes: Sequence[RelayNode], region: int, policy: Policy = AUTO) -> Choice:
    """Apply the rule to one peer. `direct`: the manager has a direct address; `relay_nodes`: the
    configured relay nodes other than the peer, in config order; `region`: the manager's DERP region
    for the peer (0: none)."""
    skipped = []
    for kind in KINDS:
        if not policy.allowed(kind):
            skipped.append((kind, "pinned to " + policy.pin if policy.pin else "avoided (AvoidPath)"))
            continue
        if kind == DIRECT:
            if direct:
                return Choice(DIRECT, skipped=tuple(skipped))
            skipped.append((kind, "no working direct path"))
        elif kind == RELAY_NODE:
            node = next((n for n in relay_nodes if n.reachable), None)
            if node is not None:
                return Choice(RELAY_NODE, relay_node=node.key, skipped=tuple(skipped))
            skipped.append((kind, "no relay node reachable" if relay_nodes else "no relay node configured"))
        else:
            if region:
                return Choice(DERP, region=region, skipped=tuple(skipped))
            skipped.append((kind, "no DERP region usable"))
    return Choice(None, skipped=tuple(skipped))


def is_own_region(region: int, own_regions: Iterable[int] = ()) -> bool:
    return region >= OWN_REGION_MIN or region in own_regions


def derp_order(regions: Sequence[int], own_regions: Iterable[int] = ()) -> list[int]:
    """Regions in the rule's DERP order: the operator's own first, then the others, each group keeping
    the order it came in (home first, then by latency, as the home tracker lists them)."""
    own = set(own_regions)
    return [r for r in regions if is_own_region(r, own)] + [r for r in regions if not is_own_region(r, own)]


def peer_policy(interface, peer) -> Policy:
    """A peer's effective policy from its config (`Path`/`AvoidPath` as `pin`/`avoid` attributes): its
    own keys, else the interface's (which do not apply to relay nodes)."""
    if peer.pin or peer.avoid:
        return Policy(peer.pin, frozenset(peer.avoid))
    if peer.relay_node:
        return AUTO
    return Policy(interface.pin, frozenset(interface.avoid))
