"""The TUN device: create it (layer 3, no packet-info header), hand out a non-blocking fd, close it.

python-pytun creates the device: it is the project's declared dependency for TUN, wraps the
open("/dev/net/tun") + TUNSETIFF dance with the right struct layout, reports failures as OSError
subclasses and sets the MTU. What it lacks is done here with fcntl: O_NONBLOCK on the fd (the runner
reads it with `loop.add_reader`), and for `vnet_hdr=True` the virtio-net header size, so every packet
read or written is preceded by a 10-byte `virtio_net_hdr` and writes may be 64 KiB TCP super-packets
(wgc's userspace GRO, tcpgro.py). `offloads` (TUNSETOFFLOAD flags, e.g. TUN_F_CSUM | TUN_F_TSO4 |
TUN_F_TSO6) would also let the kernel hand over unsegmented TCP with partial checksums; the runner keeps
it 0 because finishing those checksums in Python costs more than the reads it saves (see README).
The device lives as long as the fd: `close()` makes it disappear with its addresses and routes.
"""
from __future__ import annotations

import errno
import fcntl
import os
import struct

import pytun

# linux/if_tun.h
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
VNET_HDR_LEN = 10  # sizeof(struct virtio_net_hdr)
MAX_NAME = 15      # IFNAMSIZ - 1


class TunDevice:
    """An open TUN device: `.name`, `.fd` (non-blocking), `.mtu`, `.vnet_hdr`, `.close()`."""

    def __init__(self, dev: "pytun.TunTapDevice", vnet_hdr: bool) -> None:
        self._dev = dev
        self.name: str = dev.name if isinstance(dev.name, str) else dev.name.decode()
        self.fd: int = dev.fileno()
        self.vnet_hdr = vnet_hdr
        self.closed = False

    @property
    def mtu(self) -> int:
        return self._dev.mtu

    def read(self, size: int = 65536) -> bytes:
        """One packet (raises BlockingIOError when none is waiting)."""
        return os.read(self.fd, size)

    def write(self, packet: bytes) -> int:
        return os.write(self.fd, packet)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._dev.close()

    def __enter__(self) -> "TunDevice":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TunDevice(name={self.name!r}, fd={self.fd}, vnet_hdr={self.vnet_hdr})"


def _explain(e: OSError, name: str) -> OSError:
    reasons = {
        errno.EBUSY: f"interface {name!r} exists and is in use by another process",
        errno.EINVAL: f"interface {name!r} exists and is not a TUN device (or the name is invalid)",
        errno.EPERM: "creating a TUN device needs root (CAP_NET_ADMIN)",
        errno.ENOENT: "/dev/net/tun is missing (is the tun module loaded?)",
    }
    code = e.errno if isinstance(e.errno, int) else (e.args[0] if e.args and isinstance(e.args[0], int) else 0)
    text = reasons.get(code) or e.strerror or str(e)
    return OSError(code, text)


def open_tun(name: str, mtu: int, *, vnet_hdr: bool = False, offloads: int = 0) -> TunDevice:
    """Create (or attach to an unused persistent) TUN device `name` with IFF_TUN|IFF_NO_PI and set its MTU."""
    if not name or len(name) > MAX_NAME or "/" in name or any(c.isspace() for c in name):
        raise OSError(errno.EINVAL, f"invalid interface name {name!r} (1-{MAX_NAME} characters, no '/' or spaces)")
    flags = pytun.IFF_TUN | pytun.IFF_NO_PI | (pytun.IFF_VNET_HDR if vnet_hdr else 0)
    try:
        dev = pytun.TunTapDevice(name=name, flags=flags)
    except OSError as e:
        raise _explain(e, name) from None
    tun = TunDevice(dev, vnet_hdr)
    step = "setting up the virtio-net header and offloads"
    try:
        if vnet_hdr:
            fcntl.ioctl(tun.fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
            fcntl.ioctl(tun.fd, TUNSETOFFLOAD, offloads)
        step = "making the fd non-blocking"
        fl = fcntl.fcntl(tun.fd, fcntl.F_GETFL)
        fcntl.fcntl(tun.fd, fcntl.F_SETFL, fl | os.O_NONBLOCK)
        step = f"setting MTU {mtu}"
        dev.mtu = mtu
    except OSError as e:
        tun.close()
        raise OSError(e.errno, f"{step} on {name}: {e.strerror or e}") from None
    return tun
