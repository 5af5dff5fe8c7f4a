"""The `wgc` command line: genkey, pubkey, up, down, strip, save, and the status/ping/netcheck/derper/derpmap
entry points.

`genkey` and `pubkey` behave byte for byte like `wg genkey`/`wg pubkey` (same output, same acceptance
of input, same exit codes). `up CONFIG` parses the wg-quick style file before anything is created,
warns when the file is readable by group or others, then runs the interface in the foreground or as a
daemon (wgclient.aio.daemon). `down NAME` stops it. As with wg-quick, CONFIG may be a bare interface
name, found as /etc/wireguard/NAME.conf or /etc/wgc/NAME.conf; `strip`/`save` are in cli/wgquick.py.
`--version` prints the version of the installed package (its metadata, i.e. pyproject.toml). A user
mistake (UsageError, ConfigError) is one line on stderr and exit code 1, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import socket
import stat
import sys
from dataclasses import replace
from typing import Sequence

from .. import keys
from ..config import find_config, interface_name_from_path, load_config, valid_interface_name
from ..errors import ParseError, UsageError

PROG = "wgc"
DIST = "wgc"        # the distribution name in pyproject.toml


def version() -> str:
    """The installed package's version (from its metadata, which pyproject.toml sets)."""
    try:
        return importlib.metadata.version(DIST)
    except importlib.metadata.PackageNotFoundError:
        return "unknown (the wgc package is not installed: pip install .)"


def resolve_endpoint(host: str, port: int) -> tuple[str, int]:
    """Resolve a host name as `wg` does: getaddrinfo for UDP, first answer."""
    infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    if not infos:
        raise OSError(0, "no address")
    addr = infos[0][4]
    return addr[0], addr[1]


def cmd_genkey(argv: Sequence[str]) -> int:
    if argv:
        print(f"Usage: {PROG} genkey", file=sys.stderr)
        return 1
    try:
        st = os.fstat(sys.stdout.fileno())
        if stat.S_ISREG(st.st_mode) and st.st_mode & stat.S_IRWXO:
            sys.stderr.write("Warning: writing to world accessible file.\n"
                             "Consider setting the umask to 077 and trying again.\n")
    except (OSError, ValueError):
        pass
    print(keys.key_to_base64(keys.genkey(os.urandom)))
    return 0


def cmd_pubkey(argv: Sequence[str]) -> int:
    if argv:
        print(f"Usage: {PROG} pubkey", file=sys.stderr)
        return 1
    # As wg: the first 44 bytes are the key, then only whitespace until EOF (read in bounded chunks).
    stdin = sys.stdin.buffer
    head = b""
    while len(head) < keys.KEY_LEN_BASE64:
        chunk = stdin.read(keys.KEY_LEN_BASE64 - len(head))
        if not chunk:
            break
        head += chunk
    try:
        if len(head) == keys.KEY_LEN_BASE64:
            while chunk := stdin.read1(1 << 16):
                if not keys.is_trailing_ok(chunk):
                    raise ParseError(keys.TRAILING)
        pub = keys.pubkey_from_stream(head)
    except ParseError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    print(keys.key_to_base64(pub))
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one clean line and exit 1, like every other user mistake
        raise UsageError(f"{message} (see '{self.prog} --help')")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Userspace WireGuard client with DERP relay fallback.")
    p.add_argument("--version", action="store_true", help="print the version of wgc and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("genkey", help="print a new private key (like `wg genkey`)")
    sub.add_parser("pubkey", help="read a private key on stdin, print its public key (like `wg pubkey`)")
    up = sub.add_parser("up", help="bring up the interface described by a wg-quick style file")
    up.add_argument("config", help="path to NAME.conf, or NAME for /etc/wireguard/NAME.conf or /etc/wgc/NAME.conf")
    up.add_argument("--foreground", action="store_true", help="stay in the foreground and log to stderr")
    from .derpmap import add_up_arguments
    add_up_arguments(up)
    up.add_argument("--derp-ca-file", metavar="FILE",
                    help="extra CA certificates for the DERP servers and for fetching the map")
    up.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    down = sub.add_parser("down", help="stop the interface NAME started by `wgc up`")
    down.add_argument("name", help="NAME, or its config file")
    sub.add_parser("strip", help="print CONFIG|NAME without wg-quick's and wgc's own keys (like wg-quick strip)",
                   add_help=False)
    sub.add_parser("save", help="write the running interface into its config file (like wg-quick save)",
                   add_help=False)
    sub.add_parser("status", help="show the path, latency and traffic of each peer of a running interface",
                   add_help=False)
    sub.add_parser("ping", help="disco-ping a peer through the running interface (DERP or direct)",
                   add_help=False)
    sub.add_parser("netcheck", help="report NAT type, STUN-mapped addresses and DERP latencies", add_help=False)
    sub.add_parser("derper", help="run a DERP relay server", add_help=False)
    sub.add_parser("derpmap", help="write, validate or show a DERP map", add_help=False)
    return p


def cmd_up(args: argparse.Namespace) -> int:
    from ..aio import daemon

    args.config = find_config(args.config)
    config = load_config(args.config, resolve=resolve_endpoint)
    config = replace(config, path=os.path.abspath(args.config))   # the daemon works from /; SaveConfig writes here
    try:
        if os.stat(args.config).st_mode & 0o077:
            print(f"{PROG}: warning: {args.config} holds a private key and is readable by group or others "
                  f"(chmod 600 {args.config})", file=sys.stderr)
    except OSError:
        pass
    if config.dns:  # no resolver manager: refused before anything is created
        from ..aio import dns
        dns.choose(config.name, config.dns)
    from .derpmap import up_serve_kwargs
    serve_kwargs = up_serve_kwargs(args, config)   # the DERP map is loaded and checked here, before forking
    if not args.derpmap and any(p.derp_region for p in config.peers):
        print(f"{PROG}: warning: DerpRegion is ignored without --derpmap", file=sys.stderr)
    if args.foreground:
        daemon.run_foreground(config, serve_kwargs, verbose=args.verbose)
        return 0
    pid = daemon.run_daemon(config, serve_kwargs, verbose=args.verbose)
    print(f"{PROG}: {config.name} is up (pid {pid}, log {daemon.log_path(config.name)})", file=sys.stderr)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from ..aio import daemon

    name = args.name
    if name.endswith(".conf"):
        name = interface_name_from_path(name)
    if not valid_interface_name(name):
        raise UsageError(f"invalid interface name {name!r}")
    daemon.stop(name)
    return 0


def dispatch(module: str, argv: Sequence[str], what: str) -> int:
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or not module.startswith(e.name):
            raise
        raise UsageError(f"{what} is not available in this build of wgc") from None
    return mod.main(list(argv)) or 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "genkey":
            return cmd_genkey(argv[1:])
        if argv and argv[0] == "pubkey":
            return cmd_pubkey(argv[1:])
        if argv and argv[0] in ("status", "ping"):
            return dispatch(f"wgclient.cli.{argv[0]}", argv[1:], argv[0])
        if argv and argv[0] == "netcheck":
            return dispatch("wgclient.cli.netcheck", argv[1:], "netcheck")
        if argv and argv[0] in ("strip", "save"):
            from . import wgquick
            return (wgquick.cmd_strip if argv[0] == "strip" else wgquick.cmd_save)(argv[1:])
        if argv and argv[0] == "derper":
            return dispatch("derp.aio.derper", argv[1:], "derper")
        if argv and argv[0] == "derpmap":
            return dispatch("wgclient.cli.derpmap", argv[1:], "derpmap")
        args = parser().parse_args(argv)
        if args.version:
            print(f"{PROG} {version()}")
            return 0
        if args.command == "up":
            return cmd_up(args)
        if args.command == "down":
            return cmd_down(args)
        parser().print_help(sys.stderr)
        return 1
    except UsageError as e:   # includes ConfigError
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
