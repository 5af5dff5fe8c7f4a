"""The relay-node keys of wgclient.config: `[Interface] Relay`, `[Peer] RelayNode`, `Path`, `AvoidPath`
(docs/relaynode.md): values, errors naming line and key, round trips, garbage raising only ConfigError."""
from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, strategies as st

from tests.wgclient.test_config import PRIV, PUB, PUB2, configs
from wgclient.config import PATH_KINDS, format_config, parse_config
from wgclient.errors import ConfigError

BASE = f"[Interface]\nPrivateKey = {PRIV}\n{{iface}}\n[Peer]\nPublicKey = {PUB}\n{{hub}}\n" \
       f"[Peer]\nPublicKey = {PUB2}\n{{spoke}}\n"


def parse(iface: str = "", hub: str = "", spoke: str = ""):
    return parse_config(BASE.format(iface=iface, hub=hub, spoke=spoke), "wg0.conf")


def test_keys_parse() -> None:
    cfg = parse("Relay = true\nPath = relay-node", "RelayNode = TRUE\nAvoidPath = derp",
                "Path = direct\nAvoidPath = relay-node, derp")
    hub, spoke = cfg.peers
    assert cfg.relay and cfg.pin == "relay-node" and cfg.avoid == ()
    assert hub.relay_node and hub.pin is None and hub.avoid == ("derp",)
    assert not spoke.relay_node and spoke.pin == "direct" and spoke.avoid == ("relay-node", "derp")
    plain = parse()
    assert not plain.relay and plain.pin is None and not plain.peers[0].relay_node
    assert parse(spoke="Path = auto").peers[1].pin is None


@pytest.mark.parametrize("iface, hub, spoke, line, key, fragment", [
    ("Relay = yes", "", "", 3, "Relay", "is neither true nor false"),
    ("", "RelayNode = 1", "", 6, "RelayNode", "is neither true nor false"),
    ("", "", "Path = tunnel", 9, "Path", "is not auto, direct, relay-node, derp"),
    ("", "", "AvoidPath = direct, udp", 9, "AvoidPath", "'udp' is not one of"),
    ("", "", "Path = derp\nAvoidPath = derp", 10, "AvoidPath", "also the pinned Path"),
    ("", "", "AvoidPath = direct, relay-node, derp", 9, "AvoidPath", "avoids every kind"),
    ("", "", "Path = relay-node", 9, "Path", "no [Peer] has RelayNode = true"),
    ("Path = relay-node", "", "", 3, "Path", "no [Peer] has RelayNode = true"),
    ("", "RelayNode = true\nPath = relay-node", "", 7, "Path", "a relay node is not reached through"),
])
def test_errors_name_line_and_key(iface, hub, spoke, line, key, fragment) -> None:
    with pytest.raises(ConfigError) as exc:
        parse(iface, hub, spoke)
    assert exc.value.line == line and exc.value.key == key and fragment in str(exc.value), str(exc.value)


@given(configs(), st.booleans(), st.data())
def test_round_trip_with_relay_keys(cfg, relay, data) -> None:
    kinds = st.one_of(st.none(), st.sampled_from(PATH_KINDS))
    peers = []
    for p in cfg.peers:
        pin = data.draw(kinds)
        avoid = tuple(k for k in data.draw(st.lists(st.sampled_from(PATH_KINDS), unique=True, max_size=2))
                      if k != pin)
        peers.append(replace(p, relay_node=data.draw(st.booleans()), pin=pin if pin != "relay-node" else None,
                             avoid=avoid))
    cfg = replace(cfg, relay=relay, peers=tuple(peers), avoid=tuple(data.draw(st.lists(
        st.sampled_from(("direct", "derp")), unique=True, max_size=1))))
    assert parse_config(format_config(cfg), cfg.path) == cfg


LINES = ["Relay = true", "RelayNode = true", "Path = relay-node", "Path = direct", "AvoidPath = derp",
         "AvoidPath = direct, relay-node, derp", "Path = x", "RelayNode = maybe", "[Peer]", f"PublicKey = {PUB}",
         "[Interface]", f"PrivateKey = {PRIV}"]


@given(st.lists(st.one_of(st.sampled_from(LINES), st.text(max_size=30)), max_size=12))
def test_garbage_raises_only_config_error(lines) -> None:
    try:
        parse_config("\n".join(lines), "wg0.conf")
    except ConfigError:
        pass
