"""The stock `wg` tool (wireguard-tools) against wgc's UAPI server and an in-memory target, over the real socket.

`wg` only looks in /var/run/wireguard, so these tests need root; each uses its own interface name.
"""
from __future__ import annotations

import asyncio
import ipaddress
import os

import pytest

from tests.support.prereq import missing, require_binary
from tests.support.uapi_target import MemoryTarget
from tools.natlab.netns import unique_name
from wgclient import keys
from wgclient.aio.uapi_server import start_uapi_server
from wgclient.uapi import PeerState

pytestmark = pytest.mark.timeout(30)

PRIV = keys.clamp(bytes(range(1, 33)))
PEER = keys.public_key(keys.clamp(bytes(range(2, 34))))
PEER2 = keys.public_key(keys.clamp(bytes(range(3, 35))))
PSK = bytes([7]) * 32
b64 = keys.key_to_base64
net = ipaddress.ip_network


@pytest.fixture
def env(monkeypatch):
    require_binary("wg")
    if os.geteuid() != 0:
        missing("the wg tool only looks in /var/run/wireguard: needs root")
    monkeypatch.delenv("WGC_RUN_DIR", raising=False)
    return unique_name("wgu")


async def wg(*args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        "wg", *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin), 10)
    return proc.returncode, out.decode(), err.decode()


def serve(name: str, target: MemoryTarget, body):
    async def main():
        server = await start_uapi_server(name, target)
        try:
            await body(server)
        finally:
            server.close()
        assert not os.path.exists(server.path)
    asyncio.run(main())


def populated() -> MemoryTarget:
    t = MemoryTarget(private_key=PRIV, listen_port=51820)
    t.state.fwmark = 0x42
    t.state.peers.append(PeerState(public_key=PEER, preshared_key=PSK, endpoint=("127.0.0.1", 51821),
                                   last_handshake_ns=1_700_000_000_500_000_000, tx_bytes=1234, rx_bytes=5678,
                                   persistent_keepalive=25, allowed_ips=[net("10.0.0.2/32"), net("fd00::2/128")]))
    t.state.peers.append(PeerState(public_key=PEER2, endpoint=("::1", 9)))
    return t


def test_wg_show_dump_and_interfaces(env):
    async def body(server):
        rc, out, err = await wg("show", env, "dump")
        assert rc == 0, err
        lines = [line.split("\t") for line in out.splitlines()]
        assert lines[0] == [b64(PRIV), b64(keys.public_key(PRIV)), "51820", "0x42"]
        assert lines[1] == [b64(PEER), b64(PSK), "127.0.0.1:51821", "10.0.0.2/32,fd00::2/128", "1700000000",
                            "5678", "1234", "25"]
        assert lines[2] == [b64(PEER2), "(none)", "[::1]:9", "(none)", "0", "0", "0", "off"]
        rc, out, _ = await wg("show", "interfaces")
        assert rc == 0 and env in out.split()
        rc, out, _ = await wg("show", env)
        assert f"interface: {env}" in out and "listening port: 51820" in out
        assert "transfer: 5.54 KiB received, 1.21 KiB sent" in out and "persistent keepalive: every 25 seconds" in out
    serve(env, populated(), body)


def test_wg_showconf(env):
    async def body(server):
        rc, out, err = await wg("showconf", env)
        assert rc == 0, err
        assert out == (f"[Interface]\nListenPort = 51820\nFwMark = 0x42\nPrivateKey = {b64(PRIV)}\n\n"
                       f"[Peer]\nPublicKey = {b64(PEER)}\nPresharedKey = {b64(PSK)}\n"
                       "AllowedIPs = 10.0.0.2/32, fd00::2/128\nEndpoint = 127.0.0.1:51821\nPersistentKeepalive = 25\n\n"
                       f"[Peer]\nPublicKey = {b64(PEER2)}\nEndpoint = [::1]:9\n")
    serve(env, populated(), body)


def test_wg_set_add_change_remove_peer(env, tmp_path):
    target = MemoryTarget(private_key=PRIV, listen_port=51820)
    psk_file = tmp_path / "psk"
    psk_file.write_text(b64(PSK) + "\n")

    async def body(server):
        rc, _, err = await wg("set", env, "peer", b64(PEER), "allowed-ips", "10.0.0.0/24,fd00::/64",
                              "endpoint", "127.0.0.1:51821", "persistent-keepalive", "25",
                              "preshared-key", str(psk_file))
        assert rc == 0, err
        p = target.peer(PEER)
        assert p.allowed_ips == [net("10.0.0.0/24"), net("fd00::/64")]
        assert (p.endpoint, p.persistent_keepalive, p.preshared_key) == (("127.0.0.1", 51821), 25, PSK)
        # change the allowed IPs (wg sends replace_allowed_ips) and the endpoint, by name resolution of ::1
        rc, _, err = await wg("set", env, "peer", b64(PEER), "allowed-ips", "10.9.0.0/16", "endpoint", "[::1]:4")
        assert rc == 0, err
        assert (p.allowed_ips, p.endpoint) == ([net("10.9.0.0/16")], ("::1", 4))
        rc, _, err = await wg("set", env, "peer", b64(PEER2), "allowed-ips", "10.9.0.0/16")
        assert rc == 0, err
        assert p.allowed_ips == [] and target.peer(PEER2).allowed_ips == [net("10.9.0.0/16")]
        rc, _, err = await wg("set", env, "peer", b64(PEER), "remove")
        assert rc == 0, err
        assert [x.public_key for x in target.state.peers] == [PEER2]
        rc, out, _ = await wg("show", env, "peers")
        assert out.split() == [b64(PEER2)]
    serve(env, target, body)


def test_wg_set_device_fields_and_errors(env, tmp_path):
    target = MemoryTarget()
    target.busy_ports.add(4444)
    new_priv = tmp_path / "key"
    new_priv.write_text(b64(PRIV) + "\n")

    async def body(server):
        rc, _, err = await wg("set", env, "private-key", str(new_priv), "listen-port", "5555", "fwmark", "0x10")
        assert rc == 0, err
        assert (target.state.private_key, target.state.listen_port, target.state.fwmark) == (PRIV, 5555, 16)
        rc, out, _ = await wg("show", env, "public-key")
        assert out.strip() == b64(keys.public_key(PRIV))
        rc, _, err = await wg("set", env, "listen-port", "4444")
        assert rc != 0 and "Address already in use" in err
        assert target.state.listen_port == 5555
    serve(env, target, body)


def test_wg_setconf_then_showconf_round_trip(env, tmp_path):
    conf = (f"[Interface]\nListenPort = 40001\nPrivateKey = {b64(PRIV)}\n\n"
            f"[Peer]\nPublicKey = {b64(PEER)}\nPresharedKey = {b64(PSK)}\nAllowedIPs = 10.0.0.2/32, fd00::2/128\n"
            "Endpoint = 127.0.0.1:51821\nPersistentKeepalive = 25\n")
    path = tmp_path / "x.conf"
    path.write_text(conf)
    target = populated()

    async def body(server):
        rc, _, err = await wg("setconf", env, str(path))
        assert rc == 0, err
        rc, out, _ = await wg("showconf", env)
        assert out == conf                # setconf also cleared the fwmark (it sends fwmark=0)
        assert ("fwmark", 0) in target.calls
        assert [p.public_key for p in target.state.peers] == [PEER]   # setconf replaced the peers
    serve(env, target, body)


def test_wg_syncconf_changes_only_the_difference(env, tmp_path):
    conf = (f"[Interface]\nListenPort = 51820\nPrivateKey = {b64(PRIV)}\n\n"
            f"[Peer]\nPublicKey = {b64(PEER)}\nAllowedIPs = 10.0.0.9/32\nEndpoint = 127.0.0.1:51821\n")
    path = tmp_path / "y.conf"
    path.write_text(conf)
    target = populated()

    async def body(server):
        rc, _, err = await wg("syncconf", env, str(path))
        assert rc == 0, err
        assert [p.public_key for p in target.state.peers] == [PEER]          # PEER2 removed
        p = target.peer(PEER)
        assert p.allowed_ips == [net("10.0.0.9/32")] and p.endpoint == ("127.0.0.1", 51821)
        assert ("remove_peer", PEER2) in target.calls and ("add_peer", PEER) not in target.calls
    serve(env, target, body)
