"""The relay-node keys of a running interface's config (docs/relaynode.md): applied at start, and again
when the daemon gets SIGHUP (the config file is re-read; `Relay`, `RelayNode`, `Path` and `AvoidPath` of
the peers it still has take effect at once, nothing else changes).

A peer pinned `Path = direct` is plain WireGuard (not managed by the path manager: no disco, no DERP, no
relay node), so it suits a peer that is not wgc; moving a peer into or out of that pin needs a restart.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from ..config import InterfaceConfig, load_config
from ..errors import UsageError
from ..path.relaychoice import DIRECT, peer_policy

if TYPE_CHECKING:  # pragma: no cover
    from .runner import Runner

log = logging.getLogger("wgc.relaykeys")


def managed(config: InterfaceConfig, pc) -> bool:
    """Is the peer reached through the path manager (everything but a `Path = direct` pin)?"""
    return peer_policy(config, pc).pin != DIRECT


def reload(runner: "Runner", path: str) -> None:
    """SIGHUP: re-read the config file and apply its relay keys; a bad file is logged and ignored."""
    try:
        # Endpoints are not re-applied: host names are not resolved (no blocking DNS in the loop).
        config = load_config(path, resolve=lambda host, port: ("0.0.0.0", port))
    except UsageError as e:
        log.warning("reload: %s (nothing changed)", e)
        return
    apply(runner, config)
    runner.flush()


def apply(runner: "Runner", config: InterfaceConfig) -> None:
    dev = runner.device
    if (dev.forwarder is not None) != config.relay:
        log.info("reload: relay role %s", "on" if config.relay else "off")
        dev.enable_relay(config.relay)
    paths = runner.paths
    if paths is None:
        return
    pm = paths.pm
    now = time.monotonic()
    for pc in config.peers:
        p = pm.peers.get(pc.public_key)
        if p is None:
            if pc.public_key in dev.peers and managed(config, pc):
                log.warning("reload: peer %s: a change from Path = direct needs a restart", pc.name or "?")
            continue
        if not managed(config, pc):
            log.warning("reload: peer %s: a change to Path = direct needs a restart", pc.name or "?")
            continue
        policy = peer_policy(config, pc)
        if pc.relay_node != p.is_relay_node:
            log.info("reload: %s is %s a relay node", pc.name or "peer", "now" if pc.relay_node else "no longer")
            paths.apply(pm.set_relay_node(pc.public_key, pc.relay_node, now))
        if policy != p.policy:
            log.info("reload: %s: Path %s, AvoidPath %s", pc.name or "peer", policy.pin or "auto",
                     ", ".join(sorted(policy.avoid)) or "none")
            paths.apply(pm.set_policy(pc.public_key, policy, now))
