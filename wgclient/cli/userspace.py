"""`wgc-userspace [-f|--foreground] INTERFACE`: wgc with wireguard-go's command line, so Debian's wg-quick
runs it when the kernel has no WireGuard (`WG_QUICK_USERSPACE_IMPLEMENTATION=wgc-userspace wg-quick up wg0`,
or in wg-quick@.service).

As wireguard-go: without -f (or WG_PROCESS_FOREGROUND=1) it daemonizes and exits 0 once the UAPI socket
answers, so wg-quick's `wg setconf` finds it; the device has no key, address or peer until wg-quick sets
them; deleting the interface stops it. Environment, as wireguard-go where it applies:

* LOG_LEVEL = verbose|debug|error|silent (default error) — in the daemon's log /var/log/wgc/NAME.log;
* WG_TUN_FD: a TUN device already opened for this interface, used instead of creating one;
* WGC_DERPMAP = URL|FILE, or several separated by spaces (wgc's own; WGC_DERP_CA_FILE for its CA): peers
  are reached through DERP at once and directly when hole punching works, as with `wgc up --derpmap`
  (the same sources in order, cache in $WGC_STATE_DIR/NAME.derpmap.json, refresh every 5 minutes and on
  SIGHUP, fetched with the interface's firewall mark once wg-quick sets it).
WG_UAPI_FD (wireguard-go's hand-over from its own parent) is not used: wgc makes its UAPI socket itself.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Sequence

from ..config import InterfaceConfig, valid_interface_name
from ..errors import UsageError

PROG = "wgc-userspace"
LEVELS = {"verbose": logging.DEBUG, "debug": logging.DEBUG, "error": logging.ERROR,
          "silent": logging.CRITICAL + 1}


def _usage() -> int:
    print(f"Usage: {PROG} [-f/--foreground] INTERFACE-NAME", file=sys.stderr)
    return 1


def _options(name: str) -> dict:
    kwargs: dict = {"log_level": LEVELS.get(os.environ.get("LOG_LEVEL", "error"), logging.ERROR)}
    if os.environ.get("WG_TUN_FD"):
        if not os.environ["WG_TUN_FD"].isdigit():
            raise UsageError(f"WG_TUN_FD={os.environ['WG_TUN_FD']!r} is not a file descriptor number")
        kwargs["tun_fd"] = int(os.environ["WG_TUN_FD"])
    sources = (os.environ.get("WGC_DERPMAP") or "").split()
    if sources:
        from ..aio.derpmap_source import DerpMapSource, default_cache_path
        ca_file = os.environ.get("WGC_DERP_CA_FILE") or None
        # as `wgc up --derpmap`: sources in order, the last good map cached, refreshed while up, SIGHUP
        # reloads; fetches carry the UDP port's firewall mark once wg-quick has set it (`wg set fwmark`)
        source = DerpMapSource(sources, cache_path=default_cache_path(name), ca_file=ca_file)
        try:
            kwargs["derpmap"] = source.load_initial()
        except UsageError as exc:
            raise UsageError(f"WGC_DERPMAP: {exc}") from None
        if source.cache_warning():
            print(f"{PROG}: warning: {source.cache_warning()}", file=sys.stderr)
        kwargs["derpmap_source"] = source
        kwargs["derp_ca_file"] = ca_file
    return kwargs


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args in (["--version"], ["-v"]):
        print(f"{PROG} (wgc) — a userspace WireGuard device with wireguard-go's command line")
        return 0
    foreground = os.environ.get("WG_PROCESS_FOREGROUND") == "1"
    if len(args) == 2 and args[0] in ("-f", "--foreground"):
        foreground, args = True, args[1:]
    if len(args) != 1 or args[0].startswith("-"):
        return _usage()
    name = args[0]
    try:
        if not valid_interface_name(name):
            raise UsageError(f"invalid interface name {name!r}")
        from ..aio import daemon
        from ..aio.userspace import serve_userspace
        kwargs = _options(name)
        # No file: the key and peers arrive over the UAPI (`wg setconf`); the config only names the device.
        config = InterfaceConfig(name=name, path="", private_key=bytes(32))
        if foreground:
            daemon.run_foreground(config, kwargs, serve=serve_userspace)
        else:
            daemon.run_daemon(config, kwargs, serve=serve_userspace)
        return 0
    except UsageError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
