"""Reading a running interface back and writing it into its config file (`wgc save`, `SaveConfig = true`).

The device state comes over the interface's UAPI socket (`get=1`, what `wg showconf` reads), so this
works for any process serving it; addresses (global scope, as configured) and MTU come from netlink.
`save_running()` merges them into the file with `configsave.save_text` and replaces the file atomically
(a temporary file in the same directory, mode 0600 as wg-quick's umask 077, fsync, rename).
"""
from __future__ import annotations

import ipaddress
import socket

from pyroute2 import IPRoute

from derp.aio.atomicfile import write_atomic

from ..configsave import Running, save_text
from ..errors import ParseError, UsageError
from ..uapi import DeviceState, parse_get
from .uapi_server import socket_path

UAPI_TIMEOUT = 5.0
MAX_REPLY = 16 << 20


def uapi_get(name: str, timeout: float = UAPI_TIMEOUT) -> DeviceState:
    """The device state of `name` from its UAPI socket; UsageError when it cannot be read."""
    path = socket_path(name)
    data = b""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
            s.sendall(b"get=1\n\n")
            while not data.endswith(b"\n\n") and len(data) < MAX_REPLY:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError as e:
        raise UsageError(f"{name} is not running (cannot read {path}: {e.strerror or e})") from None
    try:
        return parse_get(data.decode("ascii", "replace"))
    except ParseError as e:
        raise UsageError(f"{name}: {e}") from None


def link_state(name: str) -> tuple[tuple, int | None]:
    """The interface's global addresses (as CIDRs, in kernel order) and its MTU."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            raise UsageError(f"no interface named {name!r}")
        mtu = ipr.link("get", index=found[0])[0].get_attr("IFLA_MTU")
        addrs = []
        for msg in ipr.get_addr(index=found[0]):
            if msg["scope"] != 0:       # link-local and host addresses are not configuration
                continue
            ip = msg.get_attr("IFA_ADDRESS") if msg["family"] == socket.AF_INET6 else msg.get_attr("IFA_LOCAL")
            addrs.append(ipaddress.ip_interface(f"{ip}/{msg['prefixlen']}"))
    return tuple(addrs), mtu


def running_state(name: str, auto_fwmark: int = 0) -> Running:
    addresses, mtu = link_state(name)
    return Running(device=uapi_get(name), addresses=addresses, mtu=mtu, auto_fwmark=auto_fwmark)


def save_running(name: str, path: str, auto_fwmark: int = 0) -> None:
    """Write the running configuration of `name` into `path` (UsageError/ConfigError on failure)."""
    running = running_state(name, auto_fwmark)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(1 << 20)
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    write_atomically(path, save_text(text, path, running))


def write_atomically(path: str, text: str) -> None:
    """The configuration file is replaced whole and stays 0600 (it holds the private key)."""
    try:
        write_atomic(path, text, 0o600)
    except OSError as e:
        raise UsageError(f"could not write configuration file {path}: {e.strerror or e}") from None