"""Fixtures for the DERP-over-QUIC lab tests and benchmark (docs/derp-quic.md): a PathLab whose derpers
also speak QUIC (UDP at the DERP port, the default), DERP map files with and without `WgcQUICPort`, and
in front of every derper a switchable proxy (tools/natlab/wsproxy.py in mode `pass`), so a running peer
can be forced from QUIC to TCP (`lab.cut_udp(k, region=i)`) and from TCP to WebSocket (`refuse_derp`).

    with QuicLab(["symmetric", "symmetric"], regions=[RegionSpec(10)]) as ql:
        a, b = ql.start_peers(derpmap_files={1: ql.switch_derpmap, 2: ql.switch_derpmap})
        ql.transport(a, 1)                   # "quic" | "upgrade" | "websocket" | None (not connected)
        ql.lab.cut_udp(1, region=1)          # UDP from client 1 to region 1 dropped: QUIC stalls
        ql.refuse_derp(1)                    # region 1's proxy refuses Upgrade: DERP (and closes those)
        ql.wait_transport(a, 1, "websocket", timeout=20)

DERP map files: `tcp_derpmap` (no WgcQUICPort: TCP, then WebSocket), `quic_derpmap` (WgcQUICPort = the
DERP port on the derper's address) and `switch_derpmap` (TCP/WebSocket through the proxy, which listens
on the derper's address at WS_PORT; QUIC and STUN straight to the derper). One address for all: a
derper's UDP sockets are bound to the wildcard address, so an answer to a datagram sent to the region's
second address would leave from the first, and the client's NAT would drop it.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time

from tests.integration.pathlab import DERP_PORT, WS_PORT, PathLab, PathPeer, _wait_line
from tools.natlab.lab import LabError

QUIC = "quic"            # the `transport` word of a region in `wgc status --json`
WORDS = {"quic": "QUIC", "upgrade": "TLS", "websocket": "WebSocket (TLS)"}   # ... and in `wgc status`


class QuicLab(PathLab):
    def __init__(self, clients: list[str], *, regions, netcheck_interval: float | None = 2, **kw) -> None:
        super().__init__(clients, regions=regions, netcheck_interval=netcheck_interval, **kw)
        try:
            for i in self.relays:
                self.start_switch_proxy(i)
            self.tcp_derpmap = self.derpmap_file
            self.quic_derpmap = self._with_quic(self.write_derpmap("derpmap-quic.json"))
            self.switch_derpmap = self._with_quic(self.write_derpmap("derpmap-switch.json"), derp_port=WS_PORT)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _with_quic(path: str, derp_port: int = DERP_PORT) -> str:
        with open(path) as fh:
            dm = json.load(fh)
        for region in dm["Regions"].values():
            for node in region["Nodes"]:
                node.update(WgcQUICPort=DERP_PORT, DERPPort=derp_port)
        with open(path + ".tmp", "w") as fh:
            json.dump(dm, fh, indent=1)
        os.replace(path + ".tmp", path)
        return path

    # -- the switchable proxy ---------------------------------------------------------------------------
    def _mode_file(self, i: int) -> str:
        return os.path.join(self.tmp, f"proxy{i}.mode")

    def start_switch_proxy(self, i: int) -> None:
        """wsproxy on the region's address at WS_PORT in mode `pass` (Upgrade: DERP reaches the derper)."""
        relay = self.relays[i]
        host = self.lab.region_ip(i)
        with open(self._mode_file(i), "w") as fh:
            fh.write("pass\n")
        relay.proxy = self.lab.popen(
            f"region{i}", sys.executable, "-m", "tools.natlab.wsproxy",
            "--listen", f"{host}:{WS_PORT}", "--upstream", f"127.0.0.1:{DERP_PORT}", "--upstream-tls",
            "--hostname", host, "--mode", "pass", "--mode-file", self._mode_file(i), env=self.env, text=True)
        _wait_line(relay.proxy, "wsproxy ready", 15, f"wsproxy in region {i}")

    def refuse_derp(self, i: int, refuse: bool = True) -> int:
        """Region i's proxy refuses `Upgrade: DERP` (closing the DERP connections it passed; returns how
        many), or with refuse=False passes it again."""
        mode = "refuse-derp" if refuse else "pass"
        with open(self._mode_file(i), "w") as fh:
            fh.write(mode + "\n")
        os.kill(self.relays[i].proxy.pid, signal.SIGHUP)
        line = _wait_line(self.relays[i].proxy, f"wsproxy mode {mode}", 5, "wsproxy mode switch")
        return int(line.rsplit("closed=", 1)[1])

    # -- transports -------------------------------------------------------------------------------------
    def transport(self, p: PathPeer, i: int) -> str | None:
        """Region i's transport in p's status ("quic", "upgrade", "websocket"; None: not connected)."""
        rid = self.lab.region_id(i)
        for r in self.status_raw(p)["regions"]:
            if r["id"] == rid:
                return r["transport"] if r["connected"] else None
        raise LabError(f"{p.name}'s status has no region {rid}")

    def wait_transport(self, p: PathPeer, i: int, want: str, timeout: float) -> float:
        """Poll until region i's transport is `want`; returns the seconds it took (LabError after timeout)."""
        t0 = time.monotonic()
        while True:
            got = self.transport(p, i)
            if got == want:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise LabError(f"{p.name}: region {i} transport is {got!r}, not {want!r}, after {timeout} s")
            time.sleep(0.1)
