"""`wgc derper`: the self-hostable DERP relay's command line (flags named as Tailscale's derper where it has
them), startup (key, certificates, access list, STUN, mesh, metrics) and signals (SIGTERM graceful
shutdown, SIGHUP reload of the allowed keys, DERP map and manual certificate files).

Everything read from flags and files is checked before any port is bound; then the DERP, HTTP, STUN and
metrics listeners are bound in turn (`derp.aio.derper_listen`) and a failure closes the ones already bound;
only then do the certificate file watch and ACME orders start (`derp.aio.certstore`, `derp.aio.acme`).
A user mistake is one line `wgc: ...` on stderr and exit 2; a port that cannot be bound is one line
`wgc: cannot listen on <addr> (<what>): <reason>` and exit 1. The node key (`-c`) is never logged; a key or
token file that other users may read gets a one-line warning.

On start it prints one line to stdout: `derper ready addr=<host:port> metrics=<host:port|off>
key=nodekey:<hex> tls=<yes|no> [http=<port>] [stun=<port>]` so scripts and tests can find ephemeral ports.
"""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import math
import os
import random
import signal
import sys
from typing import Any

from derp.aio.derper_listen import ListenError, os_reason, show_addr, start_listeners
from derp.aio.acme import CHALLENGES, LETSENCRYPT
from derp.aio.certstore import WATCH_INTERVAL
from derp.aio.client import DialTarget
from derp.aio.server import DerpServer, ServerOptions
from derp.constants import MAX_CONNS_PER_IP
from derp.derpmap import parse_derpmap
from derp.duration import parse_duration
from derp.errors import Error, ParseError, UsageError
from derp.keys import parse_private_key, private_key_from_random, privkey_text, public_key_of
from derp.renewal import parse_renew_before
from derp.server import AccessList, Relay, ServerConfig, parse_allowed_keys

log = logging.getLogger("derper")
TOKEN_ENV = "WGC_DERPER_METRICS_TOKEN"
PROG = "wgc"


def split_addr(addr: str, default_port: int) -> tuple[str | None, int]:
    """`:443`, `ip:port`, `[v6]:port`, `host` → (host or None for all addresses, port)."""
    if addr.startswith("["):
        host, _, rest = addr[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif addr.count(":") == 1:
        host, port = addr.split(":")
    elif addr.count(":") > 1:
        host, port = addr, ""
    else:
        host, port = addr, ""
    try:
        number = int(port) if port else default_port
    except ValueError:
        raise UsageError(f"bad port in address {addr!r}") from None
    if not 0 <= number <= 65535:
        raise UsageError(f"port out of range in address {addr!r}")
    return (host or None), number


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one clean line, like every other user mistake
        raise UsageError(f"{message} (see '{self.prog} --help')")


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help already says it or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text, default = action.help or "", action.default
        if ("%(default)" in text or not action.option_strings or default is None or default is False
                or default == "" or default is argparse.SUPPRESS):
            return text
        return text + " (default: %(default)s)"


def _number(kind: type, low: float, high: float = math.inf, what: str = ""):
    """An argparse type: a finite `kind` in [low, high]."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not (math.isfinite(value) and low <= value <= high):
            bound = f"{low:g}..{high:g}" if high != math.inf else f">= {low:g}"
            raise argparse.ArgumentTypeError(f"{text} is out of range ({what or bound})")
        return value
    return parse


def _hostname(text: str) -> str:
    if not text or "/" in text or any(c.isspace() for c in text):
        raise argparse.ArgumentTypeError(f"not a host name or IP address: {text!r}")
    return text


def _typed(parse):
    """An argparse type from a parser that raises UsageError (durations, --acme-renew-before)."""
    def typed(text: str):
        try:
            return parse(text)
        except UsageError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return typed


PORT = _number(int, 0, 65535)
SECONDS = _number(float, 0)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="wgc derper", description="Tailscale-compatible DERP relay server.",
                formatter_class=_HelpFormatter)
    p.add_argument("-a", "--addr", default=":443", metavar="ADDR",
                   help="DERP listen address: :port (all addresses), ip:port or [ip]:port")
    p.add_argument("--hostname", default="localhost", type=_hostname,
                   help="this server's name: the certificate name (manual: <certdir>/<hostname>.crt) and the "
                        "HostName of the map node that selfsigned logs")
    p.add_argument("--certmode", default="manual", choices=["manual", "selfsigned", "letsencrypt", "none"],
                   help="manual: <certdir>/<hostname>.crt/.key, re-read when they change; selfsigned: generated "
                        "once into --certdir and kept; letsencrypt: ACME (--acme-*); none: plain HTTP")
    p.add_argument("--certdir", default=os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                     os.path.expanduser("~/.cache"), "wgc", "derper-certs"),
                   metavar="DIR", help="certificate directory: <hostname>.crt and .key (manual, selfsigned), "
                                       "the acme-* files (letsencrypt)")
    p.add_argument("--cert-watch-interval", type=_typed(parse_duration), default=f"{WATCH_INTERVAL:g}s",
                   metavar="DURATION", help="--certmode manual: look for changed certificate files this often "
                                            "(0: only on SIGHUP)")
    p.add_argument("-c", "--config", default="", metavar="FILE",
                   help='node key file (JSON {"PrivateKey": "privkey:<hex>"}, created mode 0600 if missing; '
                        "default: a fresh key each start)")
    p.add_argument("--http-port", type=_number(int, -1, 65535), default=80, metavar="PORT",
                   help="plain-HTTP port beside a TLS relay (/generate_204, ACME HTTP-01, redirects to https); "
                        "-1 disables")
    p.add_argument("--stun", action=argparse.BooleanOptionalAction, default=True,
                   help="run the STUN server on --stun-port (UDP, same address as --addr)")
    p.add_argument("--stun-port", type=PORT, default=3478, metavar="PORT", help="UDP port of the STUN server")
    p.add_argument("--mesh-with", default="", metavar="LIST",
                   help="comma list of mesh peers: host[:port] or host/dialhost (default: no mesh)")
    p.add_argument("--mesh-psk-file", default="", metavar="FILE",
                   help="file with the 64-hex-character mesh key (needed by --mesh-with)")
    p.add_argument("--mesh-ca-file", default=None, metavar="FILE",
                   help="extra CA file to verify mesh peers (default: the system CAs)")
    p.add_argument("--allowed-keys-file", default="", metavar="FILE",
                   help="one base64 WireGuard public key a line (# comments); re-read on SIGHUP "
                        "(without it, --open-relay is needed)")
    p.add_argument("--open-relay", action="store_true", help="let any key use this relay")
    p.add_argument("--max-clients", type=_number(int, 0), default=0, metavar="N",
                   help="refuse clients beyond this many (0: no limit)")
    p.add_argument("--conn-rate", type=SECONDS, default=5.0, metavar="N",
                   help="new connections per second per source IP (0: no limit)")
    p.add_argument("--conn-burst", type=SECONDS, default=10.0, metavar="N",
                   help="burst of the per-IP connection rate")
    p.add_argument("--trust-proxy", action="store_true",
                   help="behind a proxy (Fly, nginx, a CDN): take the client IP from the entry the proxy added "
                        "to --trust-proxy-header")
    p.add_argument("--trust-proxy-header", default="X-Forwarded-For", metavar="NAME",
                   help="header the trusted proxy sets (X-Forwarded-For, or Fly-Client-IP / X-Real-IP when named)")
    p.add_argument("--trust-proxy-hops", type=_number(int, 1), default=1, metavar="N",
                   help="take the X-Forwarded-For entry this many from the right (1: the rightmost, added by "
                        "the last proxy)")
    p.add_argument("--max-conns-per-ip", type=_number(int, 0), default=MAX_CONNS_PER_IP, metavar="N",
                   help="concurrent DERP connections per client IP (0: no limit)")
    p.add_argument("--read-header-timeout", type=SECONDS, default=5.0, metavar="SECONDS",
                   help="time a client has to send its HTTP request head")
    p.add_argument("--tcp-write-timeout", type=SECONDS, default=2.0, metavar="SECONDS",
                   help="per-client write stall limit (0: none)")
    p.add_argument("--send-queue-depth", type=_number(int, 1), default=32, metavar="N",
                   help="packets queued per client beyond the socket buffer before drops")
    p.add_argument("--metrics-addr", default="127.0.0.1:9090", metavar="ADDR",
                   help="Prometheus /metrics listener ('off' disables; ':port' is loopback)")
    p.add_argument("--metrics-token", default=None, metavar="TOKEN",
                   help=f"bearer token for detailed /healthz and remote /debug/; visible in ps, prefer "
                        f"--metrics-token-file or ${TOKEN_ENV} (default: ${TOKEN_ENV}, else none)")
    p.add_argument("--metrics-token-file", default="", metavar="FILE",
                   help="read the bearer token from FILE (surrounding whitespace ignored)")
    p.add_argument("--derpmap-file", default="", metavar="FILE",
                   help="DERP map served at /derpmap/default; re-read on SIGHUP (default: none, 404)")
    p.add_argument("--shutdown-timeout", type=SECONDS, default=30.0, metavar="SECONDS",
                   help="on SIGTERM, drain clients for at most this long")
    p.add_argument("--keepalive-interval", type=_number(float, 0.1), default=60.0, metavar="SECONDS",
                   help="DERP keepalive frame interval")
    p.add_argument("--no-uvloop", action="store_true", help="use the default asyncio event loop")
    p.add_argument("--tls-engine", default="lean", choices=["lean", "asyncio"],
                   help="lean: non-blocking SSL sockets (less memory per client); asyncio: the loop's SSL")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_acme_flags(p)
    return p


def add_acme_flags(p: argparse.ArgumentParser) -> None:
    """The flags of --certmode letsencrypt, in a group of their own in --help."""
    g = p.add_argument_group("--certmode letsencrypt (ACME)")
    g.add_argument("--acme-email", default="", metavar="ADDR",
                   help="contact address for the ACME account (default: none)")
    g.add_argument("--acme-directory", default=LETSENCRYPT, metavar="URL",
                   help="ACME directory URL (https://; the default is Let's Encrypt's)")
    g.add_argument("--acme-ca-file", default=None, metavar="FILE",
                   help="CA bundle that verifies the ACME directory's HTTPS (default: the system CAs)")
    g.add_argument("--acme-challenge", default="tls-alpn-01", choices=CHALLENGES,
                   help="tls-alpn-01 on the DERP port (as Tailscale's derper) or http-01 on --http-port")
    g.add_argument("--acme-renew-before", type=_typed(parse_renew_before), default="33%",
                   metavar="PCT|DURATION",
                   help="renew when less than this share of the lifetime (e.g. 33%%) or this long (e.g. 720h) "
                        "remains")
    g.add_argument("--acme-retry", type=_typed(parse_duration), default="1m", metavar="DURATION",
                   help="first retry after a failed order; doubles up to 1h")


def _read(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path!r}: {os_reason(exc)}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{what} {path!r} is not UTF-8 text") from None


def warn_if_exposed(path: str, what: str) -> None:
    """One warning line when a secret's file can be read (or written) by users other than its owner."""
    try:
        mode = os.stat(path).st_mode & 0o777
    except OSError:
        return
    if mode & 0o077:
        log.warning("%s %s has mode %04o: other users can read it (chmod 600 it)", what, path, mode)


def load_server_key(path: str) -> bytes:
    """The node private key from `path` (created 0600 with a fresh key when missing), or a fresh key when
    no path is given. Error messages never quote the file's contents."""
    if not path:
        return private_key_from_random(os.urandom(32))
    if os.path.exists(path):
        text = _read(path, "key file")
        try:
            key = parse_private_key(json.loads(text)["PrivateKey"])
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError, ParseError):
            raise UsageError(f"key file {path!r} is not {{\"PrivateKey\": \"privkey:<64 hex>\"}}") from None
        warn_if_exposed(path, "key file")
        return key
    key = private_key_from_random(os.urandom(32))
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"PrivateKey": privkey_text(key)}, fh)
    except OSError as exc:
        raise UsageError(f"cannot create key file {path!r}: {os_reason(exc)}") from None
    return key


def metrics_token(args: argparse.Namespace) -> str:
    """--metrics-token, else --metrics-token-file, else $WGC_DERPER_METRICS_TOKEN, else none."""
    if args.metrics_token is not None and args.metrics_token_file:
        raise UsageError("give --metrics-token or --metrics-token-file, not both")
    if args.metrics_token is not None:
        return args.metrics_token
    if args.metrics_token_file:
        path = args.metrics_token_file
        token = _read(path, "metrics token file").strip()
        if not token:
            raise UsageError(f"metrics token file {path!r} is empty")
        warn_if_exposed(path, "metrics token file")
        return token
    return os.environ.get(TOKEN_ENV, "")


def load_acl(args: argparse.Namespace) -> AccessList:
    if args.allowed_keys_file:
        try:
            return AccessList(parse_allowed_keys(_read(args.allowed_keys_file, "allowed keys file")))
        except ParseError as exc:
            raise UsageError(f"{args.allowed_keys_file}: {exc}") from None
    if args.open_relay:
        return AccessList(None)
    raise UsageError("refusing to start an open relay by accident: give --allowed-keys-file FILE "
                     "(one WireGuard public key a line) or say --open-relay")


def load_derpmap_bytes(path: str) -> bytes | None:
    if not path:
        return None
    text = _read(path, "DERP map file")
    try:
        parse_derpmap(text)
    except ParseError as exc:
        raise UsageError(f"{path}: {exc}") from None
    return text.encode()


def tls_context(args: argparse.Namespace) -> tuple[Any, str | None]:
    """(the relay's CertStore or None for plain HTTP, SHA-256 of the self-signed certificate or None).
    The store serves the manual files (watched), the self-signed pair kept in --certdir, or what an ACME
    manager gets; its watchers and the manager start once the listeners are bound."""
    if args.certmode == "none":
        return None, None
    from derp.aio.certstore import CertStore, leaf_sha256, selfsigned_files
    store = CertStore(args.hostname)
    if args.certmode == "letsencrypt":
        from derp.aio.acme import AcmeManager, config_from_args
        manager = AcmeManager(config_from_args(args), store)
        manager.load_cached()
        store.on_start.append(manager.start)
        store.on_hup = manager.renew_now
        return store, None
    if args.certmode == "manual":
        crt = os.path.join(args.certdir, args.hostname + ".crt")
        key = os.path.join(args.certdir, args.hostname + ".key")
        store.watch_files(crt, key, " (--certmode manual needs <certdir>/<hostname>.crt and .key)")
        return store, None
    try:
        crt, key = selfsigned_files(args.certdir, args.hostname)
    except OSError as exc:
        raise UsageError(f"cannot keep the self-signed certificate in --certdir {args.certdir}: "
                         f"{os_reason(exc)}") from None
    store.load_files(crt, key)
    return store, leaf_sha256(crt)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return False
    return True


def selfsigned_node(args: argparse.Namespace, pin: str, derp_port: int, http_port: int | None,
                    stun_port: int | None) -> dict:
    """The DERP map node (derpmap.md §5) a client needs to use this relay with its self-signed certificate."""
    node: dict[str, Any] = {"Name": "900a", "RegionID": 900, "HostName": args.hostname,
                            "CertName": "sha256-raw:" + pin, "DERPPort": derp_port,
                            "STUNPort": -1 if stun_port is None else stun_port}
    if _is_ip(args.hostname):  # an IP literal has no DNS records: pin it and switch the other family off
        v4 = ipaddress.ip_address(args.hostname.split("%", 1)[0]).version == 4
        node["IPv4"], node["IPv6"] = (args.hostname, "none") if v4 else ("none", args.hostname)
    if http_port == 80:
        node["CanPort80"] = True
    return node


def mesh_targets(spec: str, tls: bool) -> list[DialTarget]:
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, dial = item.partition("/")
        host, port = split_addr(name, 443 if tls else 80)
        dial_host, dial_port = split_addr(dial, port) if dial else (host, port)
        if not host or not dial_host:
            raise UsageError(f"bad --mesh-with entry {item!r}")
        netloc = (f"[{host}]" if ":" in host else host) + f":{port}"
        out.append(DialTarget(dial_host, dial_port, tls, host, False, None, "", netloc))
    return out


async def serve(args: argparse.Namespace) -> int:
    from derp.aio.mesh import MeshLink

    # Everything that reads flags and files first: a mistake stops us before any port is bound.
    private = load_server_key(args.config)
    acl = load_acl(args)
    args.metrics_token = metrics_token(args)
    mesh_key = None
    if args.mesh_psk_file:
        text = _read(args.mesh_psk_file, "mesh key file").strip()
        try:
            mesh_key = bytes.fromhex(text)
        except ValueError:
            mesh_key = None
        if mesh_key is None or len(mesh_key) != 32:
            raise UsageError(f"{args.mesh_psk_file}: the mesh key must be 64 hex characters")
    if args.mesh_with and mesh_key is None:
        raise UsageError("--mesh-with needs --mesh-psk-file")
    host, port = split_addr(args.addr, 443)
    if args.stun and host is not None and not _is_ip(host):
        raise UsageError(f"STUN listens on the --addr address, which must be an IP, not {host!r} (or --no-stun)")
    metrics_at = None
    if args.metrics_addr != "off":
        mhost, mport = split_addr(args.metrics_addr, 9090)
        metrics_at = (mhost or "127.0.0.1", mport)
    certs, pin = tls_context(args)
    ssl_ctx = certs.current if certs is not None else None
    targets = mesh_targets(args.mesh_with, ssl_ctx is not None)
    config = ServerConfig(max_clients=args.max_clients, open_relay=args.open_relay,
                          keepalive_interval=args.keepalive_interval)
    relay = Relay(private, config, acl, random.random, mesh_key)
    options = ServerOptions(read_header_timeout=args.read_header_timeout, write_timeout=args.tcp_write_timeout,
                            conn_rate=args.conn_rate, conn_burst=args.conn_burst, trust_proxy=args.trust_proxy,
                            trust_proxy_header=args.trust_proxy_header, trust_proxy_hops=args.trust_proxy_hops,
                            max_conns_per_ip=args.max_conns_per_ip,
                            metrics_token=args.metrics_token, derpmap_json=load_derpmap_bytes(args.derpmap_file),
                            send_queue_depth=args.send_queue_depth, tls_engine=args.tls_engine)
    server = DerpServer(relay, options, ssl_ctx)
    server.certs = certs
    up = await start_listeners(args, server, host, port, metrics_at)
    if certs is not None:   # only now: nothing to stop when a bind fails
        certs.start(args.cert_watch_interval)
    extras = [f"http={up.http_port}"] if up.http_port is not None else []
    if up.stun is not None:
        extras.append(f"stun={up.stun.port}")
    for target in targets:
        link = MeshLink(relay, target, mesh_key.hex(), args.mesh_ca_file,
                        apply=lambda outs: (server.apply(outs), server.flush()))
        server.mesh_links.append(link)
        await link.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: reload(args, server))
    if pin is not None:
        node = selfsigned_node(args, pin, up.derp_port, up.http_port, up.stun and up.stun.port)
        log.info("self-signed certificate; DERP map node: %s", json.dumps(node))
    print(f"derper ready addr={show_addr(host, up.derp_port)} metrics={up.metrics_desc} "
          f"key=nodekey:{public_key_of(private).hex()} tls={'yes' if ssl_ctx else 'no'} {' '.join(extras)}".rstrip(),
          flush=True)
    await stop.wait()
    log.info("shutting down: draining for at most %g s", args.shutdown_timeout)
    await server.shutdown(args.shutdown_timeout)
    up.close_side_listeners()
    return 0


def reload(args: argparse.Namespace, server: DerpServer) -> None:
    """SIGHUP: re-read the allowed keys (allowed clients stay, removed ones are closed) and the DERP map;
    keep the old settings if a new file is bad. Also re-reads --certmode manual certificates."""
    if server.certs is not None:
        server.certs.reload()
    try:
        if args.allowed_keys_file:
            server.relay.acl.allowed = load_acl(args).allowed
            revoked = server.relay.revoke_disallowed()
            server.apply(revoked)
            log.info("reloaded %d allowed keys; closed %d connections of removed keys",
                     len(server.relay.acl.allowed or ()), len(revoked))
        if args.derpmap_file:
            server.options.derpmap_json = load_derpmap_bytes(args.derpmap_file)
    except UsageError as exc:
        log.error("reload failed, keeping the previous settings: %s", exc)


def _raise_nofile() -> None:
    """Idle clients are cheap but each is a file descriptor: lift the soft limit to the hard one."""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    _raise_nofile()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    if not args.no_uvloop:
        try:
            import uvloop
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            pass
    try:
        return asyncio.run(serve(args))
    except ListenError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except Error as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # last resort: still one line
        print(f"{PROG}: {os_reason(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
