"""Relay nodes in the path manager: which peers are relay nodes, each peer's Path/AvoidPath policy, and
the selection rule's choice per peer (relaychoice.py; docs/relaynode.md).

Rules:
- a relay node is *reachable* while the manager trusts a direct path to it (a pong within the trust
  window); relay nodes are probed always (their heartbeat never stops), so that is known before a peer
  needs one, and a dead one stops being used when its last pong's trust runs out (6.5 s after it);
- every refresh of a peer applies the rule; a change of relay node is logged and returned as a
  `RelayNodeChanged` output, which the adapter turns into `Device.route_through`;
- marking a peer as a relay node, or changing a policy, takes effect at once (runtime changes: `wg set`
  removing a relay node, a reload of the config's relay keys).

A mixin of `PathManager` (manager.py), which owns the peers, `_finish` and every path state change.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from wgclient.keys import short

from .peerstate import PeerPath, RelayNodeChanged
from .relaychoice import Policy, RelayNode, choose
from .why import choice_reason

if TYPE_CHECKING:  # pragma: no cover
    from .inputs import PathConfig

log = logging.getLogger("wgclient.path")


class RelayNodes:
    config: "PathConfig"
    peers: dict
    relay_nodes: list
    _out: list

    def _peer(self, key: bytes) -> PeerPath:  # pragma: no cover - the manager's
        raise NotImplementedError

    def _finish(self, now: float) -> list:  # pragma: no cover - the manager's
        raise NotImplementedError

    def set_relay_node(self, key: bytes, on: bool, now: float) -> list:
        """Mark or unmark a peer as a relay node at runtime: affected peers switch at once."""
        p = self._peer(key)
        p.is_relay_node = on
        if on and key not in self.relay_nodes:
            self.relay_nodes.append(key)
        elif not on and key in self.relay_nodes:
            self.relay_nodes.remove(key)
        return self._finish(now)

    def set_policy(self, key: bytes, policy: Policy, now: float) -> list:
        """A peer's Path pin / AvoidPath at runtime (a designation added or removed)."""
        p = self._peer(key)
        p.policy = policy
        if policy.no_direct:
            p.best, p.trust_until = None, float("-inf")
        else:
            p.last_cmm_sent = None   # tell the peer our endpoints again: it may go direct now
            if p.active(now, self.config.session_active_timeout):
                self._discover(p, now)
                self._start_punching(p, now)
        return self._finish(now)

    def reason(self, key: bytes, now: float) -> str:
        """Why the rule chose the peer's current path, now (`wgc status` shows it beside relay-node NAME)."""
        return choice_reason(self, self._peer(key), now)

    def _probe_relay_nodes(self, now: float) -> None:
        for key in self.relay_nodes:
            p = self.peers[key]
            if p.next_heartbeat is None:
                p.next_heartbeat = now

    def _choose(self, p: PeerPath, region: int, now: float) -> None:
        """The selection rule (relaychoice.py) for p; a change of relay node is logged and announced."""
        nodes = [] if p.is_relay_node else \
            [RelayNode(k, self.peers[k].name or short(k), self.peers[k].trusted(now)) for k in self.relay_nodes
             if k != p.key]
        choice = choose(direct=p.best is not None, relay_nodes=nodes, region=region, policy=p.policy)
        if choice.kind != p.choice.kind or choice.relay_node != p.choice.relay_node:
            previous = p.choice
            p.choice = choice
            reason = choice_reason(self, p, now)
            if choice.relay_node is not None or previous.relay_node is not None:
                log.info("[peer:%s] relay node %s (%s)", short(p.key),
                         self._node_name(choice.relay_node) if choice.relay_node else "none", reason)
                self._out.append(RelayNodeChanged(p.key, choice.relay_node, reason))
        else:
            p.choice = choice

    def _node_name(self, key: bytes) -> str:
        node = self.peers.get(key)
        return (node.name if node is not None and node.name else None) or short(key)
