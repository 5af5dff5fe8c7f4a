"""Relay-node fixtures for the NAT lab (docs/relaynode.md): `wgc up --derpmap` peers whose configs carry the
relay keys, a relay node on the public side, and what tests read from it (DERP bytes, forwarding counters).

    r = RelayLabPeer(pl, 3, relay=True)          # client 3 (NAT "none"): Relay = true, ListenPort 41641
    a = RelayLabPeer(pl, 1); a.know_relay(r)     # RelayNode = true, Endpoint = r's public address
    a.know(b, extra=["Path = relay-node"])       # any [Peer] lines
    derp_bytes(pl, 1)                            # bytes through region 1's interfaces so far
"""
from __future__ import annotations

import os
import signal
import time

from tests.integration.pathlab import PathLab, PathPeer
from tests.integration.peers import WgcPeer

RELAY_PORT = 41641


class RelayLabPeer(PathPeer):
    def __init__(self, pl: PathLab, client: int, *, relay: bool = False, iface: tuple[str, ...] = ()) -> None:
        super().__init__(pl, client, pl.derpmap_file)
        self.iface_lines = list(iface) + (["Relay = true"] if relay else [])
        self.path = os.path.join(self.workdir, f"{self.name}.conf")

    def know(self, other, *, extra: tuple[str, ...] | list[str] = (), allowed: str | None = None, **kw) -> None:
        super().know(other, **kw)
        lines = self.peer_sections[-1].splitlines()
        if allowed:
            lines = [f"AllowedIPs = {allowed}" if line.startswith("AllowedIPs") else line for line in lines]
        self.peer_sections[-1] = "\n".join(lines + list(extra))

    def know_relay(self, relay: "RelayLabPeer", *, extra: tuple[str, ...] = ()) -> None:
        self.know(relay, endpoint=f"{relay.pl.lab.public_ip(relay.client)}:{RELAY_PORT}",
                  extra=("RelayNode = true", *extra))

    def know_key(self, name: str, public_key: str, allowed: str, extra: tuple[str, ...] = ()) -> None:
        """A peer that is no PathPeer (wireguard-go)."""
        self.peer_sections.append("\n".join(["[Peer]", f"# Name = {name}", f"PublicKey = {public_key}",
                                             f"AllowedIPs = {allowed}", *extra]))

    def config_text(self) -> str:
        head = WgcPeer.config_text(self) + "".join(line + "\n" for line in self.iface_lines)
        return head + "\n" + "\n\n".join(self.peer_sections) + "\n"

    def rewrite(self, change) -> None:
        """Edit the written config (`change(text) -> text`) and make the daemon re-read it (SIGHUP)."""
        with open(self.path) as fh:
            text = fh.read()
        with open(self.path, "w") as fh:
            fh.write(change(text))
        os.kill(self.proc.pid, signal.SIGHUP)

    def kill(self) -> None:
        """SIGKILL the daemon (no teardown: the kernel removes its TUN) and its stale sockets."""
        self.proc.kill()
        self.proc.wait(10)
        for path in (self.sock_path, os.path.join(self.pl.control_dir, f"{self.name}.ctl")):
            if os.path.lexists(path):
                os.unlink(path)


def derp_bytes(pl: PathLab, region: int) -> int:
    """Bytes received plus sent by every interface of region i's namespace (its derper's traffic)."""
    total = 0
    for line in pl.lab.run(f"region{region}", "cat", "/proc/net/dev").stdout.splitlines()[2:]:
        name, data = line.split(":", 1)
        if name.strip() == "lo":
            continue
        fields = data.split()
        total += int(fields[0]) + int(fields[8])
    return total


def forwarded(pl: PathLab, relay: PathPeer) -> dict[tuple[str, str], int]:
    """(from, to) -> bytes, from the relay node's status."""
    return {(f["from"], f["to"]): f["bytes"] for f in pl.status_raw(relay).get("forwarding", [])}


def wait_for(check, timeout: float, step: float = 0.2):
    """Poll `check()` until it returns something true (returned) or the time is up (returns the last)."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(step)
