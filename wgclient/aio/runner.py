"""The runner: drives the device core from the TUN device, the UDP port and one timer, on asyncio.

Readers are registered with `loop.add_reader` (no task per packet): when the TUN or a socket is readable,
the runner drains a batch, feeds it to the core in one call, carries out the outputs (GSO sends, TUN
writes) and re-arms the single timer at the core's next deadline. `serve()` builds the whole interface
from an InterfaceConfig and tears it down again, whatever happens.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import functools
import random
import time
from typing import Callable

from ..config import InterfaceConfig
from ..constants import REKEY_TIMEOUT_JITTER_MAX
from ..device import Device, DeviceConfig
from ..errors import UsageError
from ..path.relaychoice import peer_policy
from ..tcpgro import VNET_HDR_LEN, TcpCoalescer
from . import relaykeys
from .udp import UdpPort
from .uapi_target import DeviceTarget

log = logging.getLogger("wgc.runner")

TUN_BATCH = 64
PACKET_SLOT = 65536


class Runner:
    """Moves packets between a TUN fd, a UdpPort and a Device core."""

    def __init__(self, device: Device, udp: UdpPort, tun_fd: int, *, tun_headroom: int = 0) -> None:
        self.device = device
        self.udp = udp
        self.tun_fd = tun_fd
        self.tun_headroom = tun_headroom
        self.loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        # One 64 KiB slot per packet of a batch, each with its readv vector made once: reading a batch
        # allocates nothing but the views handed to the core.
        self._tun_buf = bytearray(PACKET_SLOT * TUN_BATCH)
        view = memoryview(self._tun_buf)
        self._tun_slots = [view[i * PACKET_SLOT:(i + 1) * PACKET_SLOT] for i in range(TUN_BATCH)]
        self._tun_iovs = [[slot] for slot in self._tun_slots]
        self.tun_write_errors = 0
        # With a virtio-net header on the TUN, received TCP segments are merged before writing.
        self.coalescer = TcpCoalescer() if tun_headroom == VNET_HDR_LEN else None
        self.device.wall_offset = time.time() - time.monotonic()
        self.paths = None  # a paths.Paths when a DERP map is configured (`wgc up --derpmap`)

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        self.loop.add_reader(self.tun_fd, self._on_tun)
        self._watch_udp()
        self.rearm()

    def _watch_udp(self) -> None:
        for sock in self.udp.sockets():
            self.loop.add_reader(sock.fileno(), self._on_udp, sock)

    def _unwatch_udp(self) -> None:
        for sock in self.udp.sockets():
            self.loop.remove_reader(sock.fileno())

    def rebind(self, port: int) -> None:
        self._unwatch_udp()
        try:
            self.udp.bind(port)
        finally:
            self._watch_udp()

    def stop(self) -> None:
        self.loop.remove_reader(self.tun_fd)
        self._unwatch_udp()
        if self._timer:
            self._timer.cancel()
            self._timer = None

    # -- inputs --------------------------------------------------------------------------------------------
    def _on_tun(self) -> None:
        fd = self.tun_fd
        headroom = self.tun_headroom
        packets = []
        readv = os.readv
        slots = self._tun_slots
        for i, iov in enumerate(self._tun_iovs):
            try:
                n = readv(fd, iov)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno == errno.EBADFD:
                    self.loop.remove_reader(fd)
                    return
                log.debug("tun read failed: %s", exc)
                break
            if n > headroom:
                packets.append(slots[i][headroom:n])
        if packets:
            self.device.send_packets(packets, time.monotonic())
            self.flush()

    def _on_udp(self, sock) -> None:
        batch = self.udp.read_batch(sock)
        if batch:
            self.device.receive_datagrams(batch, time.monotonic())
            self.flush()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.device.on_timer(time.monotonic())
        self.flush(full_rearm=True)

    # -- outputs -------------------------------------------------------------------------------------------
    def flush(self, full_rearm: bool = False) -> None:
        out = self.device.out
        udp = self.udp
        paths = self.paths
        if paths is None:
            for endpoint, data in out.datagrams:
                udp.send(data, endpoint)
            if out.sealed:
                udp.send_sealed(out.send_buf, out.sealed)
        else:
            # Managed peers: where packets go is the path manager's choice (direct UDP and/or DERP).
            now = time.monotonic()
            if out.heard:
                paths.on_heard(out.heard, now)
            if out.via:
                paths.on_via(out.via, now)
            if out.foreign:
                paths.on_foreign(out.foreign, now)
            for endpoint, data in out.datagrams:
                paths.send_datagram(endpoint, data, now)
            if out.sealed:
                udp.send_sealed(out.send_buf, paths.route_sealed(out.send_buf, out.sealed, now))
        if out.tun:
            fd = self.tun_fd
            if self.coalescer is not None:
                writev = os.writev
                for iov in self.coalescer.iovecs(out.recv_buf, out.tun):
                    try:
                        writev(fd, iov)
                    except OSError:
                        self.tun_write_errors += 1
            else:
                with memoryview(out.recv_buf) as mv:
                    for start, end in out.tun:
                        try:
                            os.write(fd, mv[start:end])
                        except OSError:
                            self.tun_write_errors += 1
        out.clear()
        if full_rearm:
            self.rearm()
        else:
            # After packets, only peers that armed a timer can have moved the next deadline earlier;
            # asking just them keeps a batch O(peers touched) with thousands of peers configured.
            deadline = self.device.armed_deadline()
            if deadline is not None and (self._timer_at is None or deadline < self._timer_at):
                self._arm(deadline)

    def rearm(self) -> None:
        """Re-arm the one timer at the core's next deadline (a full scan of the peers)."""
        deadline = self.device.next_deadline()
        if deadline != self._timer_at:
            self._arm(deadline)

    def _arm(self, deadline: float | None) -> None:
        if self._timer:
            self._timer.cancel()
        self._timer_at = deadline
        if deadline is None:
            self._timer = None
        else:
            # The core's clock is time.monotonic(); the loop's may differ (uvloop counts milliseconds).
            self._timer = self.loop.call_later(max(0.0, deadline - time.monotonic()), self._on_timer)


def _random_bytes(n: int) -> bytes:
    return os.urandom(n)


_prng = random.Random()


def _jitter() -> float:
    return _prng.uniform(0.0, REKEY_TIMEOUT_JITTER_MAX)


async def _start_control(config: InterfaceConfig, runner: Runner):
    """The control socket for `wgc status` and `wgc ping` (wgclient/aio/control_server.py)."""
    from .control_server import start_control_server
    from .control_target import NodeControl
    server = start_control_server(config.name, NodeControl(runner, config))
    if asyncio.iscoroutine(server):
        server = await server
    return server


async def undo_all(cleanups: list[Callable[[], object]], quiet_errnos: tuple[int, ...] = ()) -> None:
    """Run the undo steps newest first (coroutines awaited); a failing step is logged and the rest go on
    (OSErrors with one of `quiet_errnos`, e.g. a TUN already deleted, are not even logged)."""
    for undo in reversed(cleanups):
        try:
            result = undo()
            if asyncio.iscoroutine(result):
                await result
        except OSError as e:
            if e.errno not in quiet_errnos:
                log.exception("teardown step failed")
        except Exception:  # teardown must go on; say what failed
            log.exception("teardown step failed")


def open_tun_device(name: str, mtu: int, vnet_hdr: bool):
    """The TUN device with a virtio-net header if the kernel allows it, else without; (tun, vnet_hdr)."""
    from .tun import open_tun
    try:
        return open_tun(name, mtu, vnet_hdr=vnet_hdr), vnet_hdr
    except OSError as exc:
        if not vnet_hdr:
            raise UsageError(f"cannot create TUN device {name!r}: {exc.strerror or exc}") from exc
        log.info("TUN with virtio-net header unavailable (%s); without TCP coalescing", exc)
    try:
        return open_tun(name, mtu), False
    except OSError as exc2:
        raise UsageError(f"cannot create TUN device {name!r}: {exc2.strerror or exc2}") from exc2


async def serve(config: InterfaceConfig, *, on_ready: Callable[[], None] = lambda: None,
                vnet_hdr: bool | None = None, derpmap=None, derp_ca_file: str | None = None,
                derpmap_source=None, metrics_addr: str | None = None,
                reloads: list[Callable[[], None]] | None = None, derp_transport: str = "auto") -> None:
    """Bring up the interface described by config, run until cancelled, then undo everything.

    vnet_hdr (default: on unless WGC_TUN_VNET_HDR=0) opens the TUN with a virtio-net header so received
    TCP segments can be merged (tcpgro.py); without it every packet is written on its own.
    derpmap (a parsed derp.derpmap.DerpMap): every peer is reached through the path manager (DERP at
    once, direct UDP when disco hole punching works; wgclient/aio/paths.py); derpmap_source (a
    wgclient.aio.derpmap_source.DerpMapSource) keeps it current while up; derp_transport forces one way to
    reach the relays (quic, upgrade, websocket; docs/derp-quic.md). metrics_addr: Prometheus
    metrics there (wgclient/aio/metrics.py). reloads: the daemon's list of what its SIGHUP handler calls;
    serve adds the relay-key reload to it while up.
    """
    if vnet_hdr is None:
        vnet_hdr = os.environ.get("WGC_TUN_VNET_HDR", "1") != "0"
    from . import hostsetup, netconf
    from .uapi_server import start_uapi_server

    cleanups: list[Callable[[], object]] = []
    mtu = config.mtu or netconf.auto_mtu([pc.endpoint[0] for pc in config.peers if pc.endpoint])
    fwmark, auto_fwmark = hostsetup.choose_fwmark(config)   # on every socket: a full tunnel's rules skip them
    try:
        tun, vnet_hdr = open_tun_device(config.name, mtu, vnet_hdr)
        cleanups.append(tun.close)
        headroom = VNET_HDR_LEN if vnet_hdr else 0
        device = Device(config.private_key, random_bytes=_random_bytes, jitter=_jitter,
                        config=DeviceConfig(mtu=mtu, tun_headroom=headroom))
        device.enable_relay(config.relay)   # `Relay = true`: forward between the peers (relaynode.py)
        now = time.monotonic()
        for pc in config.peers:
            peer = device.add_peer(pc.public_key)
            device.set_preshared_key(peer, pc.preshared_key)
            if pc.endpoint:
                device.set_endpoint(peer, pc.endpoint)
            for net in pc.allowed_ips:
                device.allowed_ips.insert(net, peer)
        try:
            udp = UdpPort(config.listen_port or 0, fwmark)
        except OSError as exc:
            raise UsageError(f"cannot listen on UDP port {config.listen_port}: {exc.strerror}") from exc
        cleanups.append(udp.close)
        runner = Runner(device, udp, tun.fd, tun_headroom=headroom)
        paths = None
        if derpmap is not None:
            from ..derpregions import region_hints
            from .paths import Paths
            hints = region_hints(config, derpmap)
            paths = runner.paths = Paths(runner, derpmap, interface=config.name, ca_file=derp_ca_file,
                                         source=derpmap_source, transport=derp_transport)
            for pc in config.peers:
                if relaykeys.managed(config, pc):   # `Path = direct`: plain WireGuard (docs/relaynode.md)
                    paths.add_peer(pc.public_key, psk=pc.preshared_key, name=pc.name,
                                   region_hint=hints.get(pc.public_key, 0), endpoint=pc.endpoint,
                                   relay_node=pc.relay_node, policy=peer_policy(config, pc))
        host = hostsetup.setup(config, mtu=mtu, fwmark=fwmark, auto_fwmark=auto_fwmark)  # routes, rules, DNS
        cleanups.append(lambda: hostsetup.teardown(host))
        runner.start()
        cleanups.append(runner.stop)
        if paths is not None:
            cleanups.append(paths.close)
            await paths.start()
        if reloads is not None and (paths is not None or config.relay):
            # the daemon's one SIGHUP handler also re-reads the relay keys of the config (relaykeys.py)
            reload = functools.partial(relaykeys.reload, runner, config.path)
            reloads.append(reload)
            cleanups.append(lambda: reloads.remove(reload))
        # The UAPI socket appears last: whoever waits for it finds addresses and routes in place.
        uapi = await start_uapi_server(config.name, DeviceTarget(runner))
        cleanups.append(uapi.close)
        control = await _start_control(config, runner)
        if control is not None:
            cleanups.append(control.close)
        if metrics_addr:
            from .metrics import start_metrics
            cleanups.append((await start_metrics(runner, config, metrics_addr)).close)
        for pc in config.peers:
            if pc.persistent_keepalive:
                device.set_persistent_keepalive(device.peers[pc.public_key], pc.persistent_keepalive, now)
        runner.flush()
        log.info("interface %s up: UDP port %d, %d peers, TUN %s, %s loop, %s", config.name, udp.port,
                 len(config.peers), "with virtio-net header (TCP merging)" if vnet_hdr else "plain",
                 type(asyncio.get_running_loop()).__module__.split(".")[0],
                 f"DERP map with {len(derpmap.regions)} regions" if derpmap is not None else "no DERP map")
        on_ready()
        await asyncio.Event().wait()
    finally:
        await undo_all(cleanups)
