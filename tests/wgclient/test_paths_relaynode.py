"""The path adapter and the config reload with relay nodes, on a real device core (no TUN, no sockets): the
manager's choice steers the core (Device.route_through), packets sent through a relay node keep the peer
active for discovery, removing the relay node (`wg set ... remove`) routes its peers to themselves at once,
a SIGHUP reload of the relay keys marks or unmarks a relay node and changes a designation, and the daemon's
one SIGHUP handler does both the map refresh and that reload."""
from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import replace
from types import SimpleNamespace

from tests.support.pair import Seeded, ipv4_packet
from wgclient import keys
from wgclient.aio import relaykeys
from wgclient.aio.paths import Paths
from wgclient.config import parse_config
from wgclient.device import Device
from wgclient.path.relaychoice import RELAY_NODE, peer_policy

from tests.wgclient.test_paths_derp_input import DERPMAP

PRIV = keys.genkey(Seeded(5))
R_PRIV, X_PRIV = keys.genkey(Seeded(6)), keys.genkey(Seeded(7))
R, X = keys.public_key(R_PRIV), keys.public_key(X_PRIV)
CONFIG = f"""[Interface]
PrivateKey = {keys.key_to_base64(PRIV)}
Address = 100.90.0.1/32

[Peer]
# Name = hub
PublicKey = {keys.key_to_base64(R)}
AllowedIPs = 100.90.0.3/32
Endpoint = 198.51.100.3:41641
RelayNode = true

[Peer]
# Name = server
PublicKey = {keys.key_to_base64(X)}
AllowedIPs = 100.90.0.2/32
"""


def setup():
    config = parse_config(CONFIG, "wgt0.conf")
    dev = Device(PRIV, random_bytes=Seeded(9))
    for pc in config.peers:
        peer = dev.add_peer(pc.public_key)
        for net in pc.allowed_ips:
            dev.allowed_ips.insert(net, peer)
    runner = SimpleNamespace(device=dev, flush=lambda: None, paths=None, udp=SimpleNamespace(fwmark=0))
    paths = runner.paths = Paths(runner, DERPMAP, interface="wgt0")
    for pc in config.peers:
        paths.add_peer(pc.public_key, name=pc.name, endpoint=pc.endpoint, relay_node=pc.relay_node,
                       policy=peer_policy(config, pc))
    now = time.monotonic()
    paths.apply(paths.pm.set_regions({901: "fra"}, now))
    return config, dev, paths


def trust(paths: Paths, key: bytes) -> None:
    """As if the relay node had answered a disco ping over UDP."""
    p = paths.pm.peers[key]
    p.best, p.trust_until = ("198.51.100.3", 41641), time.monotonic() + 60
    paths.apply(paths.pm.refresh(time.monotonic()))


def test_the_choice_steers_the_core_and_relayed_sends_keep_the_peer_active() -> None:
    async def main():
        config, dev, paths = setup()
        x, r = dev.peers[X], dev.peers[R]
        assert x.send_to is x
        trust(paths, R)
        assert paths.pm.peers[X].choice.kind == RELAY_NODE and x.send_to is r
        dev.send_packets([ipv4_packet("100.90.0.1", "100.90.0.2", b"hi")], time.monotonic())
        assert dev.out.via == [x]
        paths.on_via(dev.out.via, time.monotonic())
        assert paths.pm.peers[X].last_send is not None, "discovery keeps running for the relayed peer"
        dev.out.clear()
        # `wg set wgt0 peer HUB remove`: the UAPI removes it from the device, then from the paths
        dev.remove_peer(R)
        paths.remove_peer(R)
        assert x.send_to is x and paths.pm.peers[X].via is None
        await paths.close()
    asyncio.run(main())


def test_reload_unmarks_and_marks_a_relay_node_and_changes_a_designation() -> None:
    async def main():
        config, dev, paths = setup()
        runner = paths.runner
        trust(paths, R)
        x = dev.peers[X]
        hub, server = config.peers
        relaykeys.apply(runner, replace(config, peers=(replace(hub, relay_node=False), server)))
        assert x.send_to is x and not paths.pm.peers[R].is_relay_node
        relaykeys.apply(runner, config)
        assert x.send_to is dev.peers[R]
        relaykeys.apply(runner, replace(config, peers=(hub, replace(server, pin="derp"))))
        assert x.send_to is x and paths.pm.peers[X].policy.pin == "derp"
        relaykeys.apply(runner, replace(config, relay=True))
        assert dev.forwarder is not None
        await paths.close()
    asyncio.run(main())


def test_reload_of_a_bad_file_changes_nothing(tmp_path, caplog) -> None:
    async def main():
        config, dev, paths = setup()
        bad = tmp_path / "wgt0.conf"
        bad.write_text("[Interface]\nPrivateKey = nope\n")
        relaykeys.reload(paths.runner, str(bad))
        assert any("nothing changed" in r.getMessage() for r in caplog.records)
        assert paths.pm.peers[R].is_relay_node
        await paths.close()
    asyncio.run(main())


def test_one_sighup_handler_refreshes_the_map_and_rereads_the_relay_keys(caplog) -> None:
    """The daemon's SIGHUP handler is the only one: serve() hands it the relay-key reload (it installs no
    handler of its own, which would replace the daemon's map refresh)."""
    from wgclient.aio import daemon

    class Source:
        asked = 0

        def request_refresh(self) -> None:
            self.asked += 1

    config = parse_config(CONFIG, "wgt0.conf")
    src, reread = Source(), []

    async def serve(config, *, on_ready, derpmap_source=None, reloads=None):
        done = asyncio.Event()
        reloads.append(lambda: (reread.append(True), done.set()))
        on_ready()
        os.kill(os.getpid(), signal.SIGHUP)
        await asyncio.wait_for(done.wait(), 5)

    with caplog.at_level("INFO", logger="wgclient.daemon"):
        asyncio.run(daemon._main(config, lambda: None, {"derpmap_source": src}, serve))
    assert src.asked == 1 and reread == [True]
    assert "wgt0: got SIGHUP: reloading the DERP map and the relay keys of the config" in caplog.messages
