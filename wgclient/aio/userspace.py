"""wgc as a wireguard-go-style userspace device, for `wg-quick` (WG_QUICK_USERSPACE_IMPLEMENTATION).

`serve_userspace()` makes what wireguard-go makes and nothing more: the TUN device (or adopts the one in
`tun_fd`, wireguard-go's WG_TUN_FD), the WireGuard port, the UAPI socket (and wgc's control socket). It
starts with no private key and no peers; `wg setconf`, `wg set` and `ip` (run by wg-quick) do the rest:
addresses, MTU, routes, the firewall mark and policy rules are wg-quick's. The interface's MTU is
followed as `ip link set mtu` changes it. The process ends when the interface is deleted (`wg-quick
down` runs `ip link delete`), as wireguard-go does, or on SIGTERM.

With a DERP map (WGC_DERPMAP) the path manager starts once the private key arrives over the UAPI (the
disco key is derived from it), and every peer is reached through DERP at once and directly when hole
punching works. `wg set NAME fwmark M` (wg-quick's full tunnel) marks the DERP connections as well, and
the map's refreshes (`derpmap_source`, as for `wgc up`).
"""
from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import struct
from dataclasses import replace
from typing import Callable

from ..constants import DEFAULT_MTU
from ..device import Device, DeviceConfig
from ..errors import UsageError
from ..tcpgro import VNET_HDR_LEN
from .uapi_target import DeviceTarget

log = logging.getLogger("wgc.userspace")

TUNGETIFF = 0x800454D2
IFF_VNET_HDR = 0x4000
WATCH_INTERVAL = 0.25      # how often the interface's existence and MTU are checked


class AdoptedTun:
    """A TUN device opened by someone else (WG_TUN_FD): its fd, name and whether it has a vnet header."""

    def __init__(self, fd: int) -> None:
        try:
            ifr = fcntl.ioctl(fd, TUNGETIFF, bytes(40))
        except OSError as e:
            raise UsageError(f"WG_TUN_FD={fd} is not a TUN device: {e.strerror or e}") from None
        self.fd = fd
        self.name = ifr[:16].split(b"\0", 1)[0].decode()
        self.vnet_hdr = bool(struct.unpack_from("=H", ifr, 16)[0] & IFF_VNET_HDR)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class UserspaceTarget(DeviceTarget):
    """The UAPI target of a userspace device: starts the path manager when the private key is set."""

    def __init__(self, runner, name: str, derpmap=None, ca_file: str | None = None, source=None) -> None:
        super().__init__(runner)
        self.name, self.derpmap, self.ca_file, self.source = name, derpmap, ca_file, source
        self.tasks: set[asyncio.Task] = set()

    def uapi_set_private_key(self, key: bytes | None) -> None:
        runner = self.runner
        if runner.paths is not None and key != runner.device.identity.private_key:
            raise UsageError("with WGC_DERPMAP the private key cannot change while the device runs")
        super().uapi_set_private_key(key)
        if key is not None and self.derpmap is not None and runner.paths is None:
            from .paths import Paths
            runner.paths = Paths(runner, self.derpmap, interface=self.name, ca_file=self.ca_file,
                                 source=self.source)
            task = asyncio.ensure_future(runner.paths.start())
            self.tasks.add(task)
            task.add_done_callback(self._started)

    def _started(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("the path manager failed to start: %r", task.exception())


def _sysfs(name: str, what: str) -> str | None:
    try:
        with open(f"/sys/class/net/{name}/{what}") as f:
            return f.read().strip()
    except OSError:
        return None


async def _watch(name: str, device: Device) -> None:
    """Return when the interface is gone (or replaced); keep the device's MTU equal to the link's."""
    index = _sysfs(name, "ifindex")
    while True:
        await asyncio.sleep(WATCH_INTERVAL)
        if _sysfs(name, "ifindex") != index:
            log.info("%s: the interface was deleted; stopping", name)
            return
        mtu = _sysfs(name, "mtu")
        if mtu and mtu.isdigit() and int(mtu) != device.config.mtu:
            log.info("%s: MTU %s", name, mtu)
            device.config = replace(device.config, mtu=int(mtu))


async def serve_userspace(config, *, on_ready: Callable[[], None] = lambda: None, derpmap=None,
                          derp_ca_file: str | None = None, derpmap_source=None, tun_fd: int | None = None,
                          log_level: int | None = None) -> None:
    """Run the userspace device `config.name` until the interface is deleted or the task is cancelled."""
    from .runner import Runner, _jitter, _random_bytes, _start_control, open_tun_device, undo_all
    from .uapi_server import start_uapi_server
    from .udp import UdpPort

    if log_level is not None:
        logging.getLogger().setLevel(log_level)
    name = config.name
    cleanups: list[Callable[[], object]] = []
    try:
        if tun_fd is not None:
            tun = AdoptedTun(tun_fd)
            if tun.name != name:
                raise UsageError(f"WG_TUN_FD={tun_fd} is the TUN device {tun.name!r}, not {name!r}")
            vnet_hdr = tun.vnet_hdr
        else:
            tun, vnet_hdr = open_tun_device(name, DEFAULT_MTU, os.environ.get("WGC_TUN_VNET_HDR", "1") != "0")
        cleanups.append(tun.close)
        headroom = VNET_HDR_LEN if vnet_hdr else 0
        mtu = int(_sysfs(name, "mtu") or DEFAULT_MTU)
        device = Device(None, random_bytes=_random_bytes, jitter=_jitter,
                        config=DeviceConfig(mtu=mtu, tun_headroom=headroom))
        try:
            udp = UdpPort(0)
        except OSError as exc:
            raise UsageError(f"cannot open a UDP port: {exc.strerror or exc}") from exc
        cleanups.append(udp.close)
        runner = Runner(device, udp, tun.fd, tun_headroom=headroom)
        runner.start()
        cleanups.append(runner.stop)
        target = UserspaceTarget(runner, name, derpmap, derp_ca_file, derpmap_source)

        async def close_paths() -> None:
            for task in list(target.tasks):
                task.cancel()
            if runner.paths is not None:
                await runner.paths.close()
        cleanups.append(close_paths)
        uapi = await start_uapi_server(name, target)
        cleanups.append(uapi.close)
        control = await _start_control(config, runner)
        if control is not None:
            cleanups.append(control.close)
        log.info("userspace device %s up: UDP port %d, TUN %s, %s", name, udp.port,
                 "with virtio-net header" if vnet_hdr else "plain",
                 f"DERP map with {len(derpmap.regions)} regions" if derpmap is not None else "no DERP map")
        on_ready()
        await _watch(name, device)
    finally:
        await undo_all(cleanups, (errno.EBADF, errno.EBADFD, errno.ENODEV))   # the link may be gone already
