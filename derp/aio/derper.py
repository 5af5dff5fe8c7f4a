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
key=nodekey:<hex> tls=<yes|no> [http=<port>] [stun=<port>] [quic=<port>]` so scripts and tests can find
ephemeral ports. DERP over QUIC (`derp.aio.quic_server`) is on by default with TLS (--no-quic, --quic-port).
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

from derp.admission import parse_rate_config
from derp.aio import admission
from derp.aio.bootstrap_dns import BootstrapDNS, parse_names
from derp.aio.derper_listen import ListenError, os_reason, show_addr, start_listeners
from derp.aio.acme import CHALLENGES, LETSENCRYPT
from derp.aio.certstore import WATCH_INTERVAL
from derp.aio.client import DialTarget
from derp.aio.server import DerpServer, ServerOptions
from derp.constants import MAX_CONNS_PER_IP
from derp.derpmap import parse_derpmap
from derp.errors import Error, ParseError, UsageError
from derp.aio.derper_args import (DURATION, PORT, SECONDS, HelpFormatter, Parser, duration, hostname,
                                  loopback_port, number, parse_command_line, rate, size, typed, version)
from derp.keys import parse_private_key, private_key_from_random, privkey_text, public_key_of
from derp.renewal import parse_renew_before
from derp.server import AccessList, Relay, ServerConfig, parse_allowed_keys

log = logging.getLogger("derper")
TOKEN_ENV = "WGC_DERPER_METRICS_TOKEN"
NEFIA_TOKEN_ENV = "NEFIA_DERP_METRICS_TOKEN"
PROG = "wgc"
BOOL = argparse.BooleanOptionalAction


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
        value = int(port) if port else default_port
    except ValueError:
        raise UsageError(f"bad port in address {addr!r}") from None
    if not 0 <= value <= 65535:
        raise UsageError(f"port out of range in address {addr!r}")
    return (host or None), value




def build_parser() -> argparse.ArgumentParser:
    """Flags named as Tailscale's derper has them (Go syntax too, see derp.goflags), nefia-derp's names as
    aliases, and wgc's own; every one can also come from $WGC_DERPER_<NAME> (docs/derp.md)."""
    p = Parser(prog="wgc derper", description="Tailscale-compatible DERP relay server.",
               formatter_class=HelpFormatter)
    p.add_argument("-a", "--addr", default=":443", metavar="ADDR",
                   help="DERP listen address: :port (all addresses), ip:port or [ip]:port")
    p.add_argument("--hostname", default="localhost", type=hostname,
                   help="this server's name: the certificate name (manual: <certdir>/<hostname>.crt) and the "
                        "HostName of the map node that selfsigned logs")
    p.add_argument("--certmode", default=None, choices=["manual", "selfsigned", "letsencrypt", "none"],
                   help="manual: <certdir>/<hostname>.crt/.key, re-read when they change; selfsigned: generated "
                        "once into --certdir and kept; letsencrypt: ACME (--acme-*); none: plain HTTP; as "
                        "derper, TLS only on port 443 unless named (default: manual when the DERP port is 443, "
                        "else none)")
    p.add_argument("--certdir", default=os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                     os.path.expanduser("~/.cache"), "wgc", "derper-certs"),
                   metavar="DIR", help="certificate directory: <hostname>.crt and .key (manual, selfsigned), "
                                       "the acme-* files (letsencrypt)")
    p.add_argument("--cert-watch-interval", type=DURATION, default=f"{WATCH_INTERVAL:g}s",
                   metavar="DURATION", help="--certmode manual: look for changed certificate files this often "
                                            "(0: only on SIGHUP)")
    p.add_argument("-c", "--config", default="", metavar="FILE",
                   help='node key file (JSON {"PrivateKey": "privkey:<hex>"}, created mode 0600 if missing; '
                        "default: a fresh key each start)")
    p.add_argument("--http-port", type=number(int, -1, 65535), default=80, metavar="PORT",
                   help="plain-HTTP port beside a TLS relay (/generate_204, ACME HTTP-01, redirects to https); "
                        "-1 disables")
    p.add_argument("--stun", action=BOOL, default=True,
                   help="run the STUN server on --stun-port (UDP, same address as --addr)")
    p.add_argument("--stun-port", type=PORT, default=3478, metavar="PORT", help="UDP port of the STUN server")
    p.add_argument("--quic", action=BOOL, default=True,
                   help="also serve DERP over QUIC (docs/derp-quic.md) on UDP at the DERP port, with the same "
                        "certificate; only with TLS")
    p.add_argument("--quic-port", type=PORT, default=None, metavar="PORT",
                   help="UDP port of DERP over QUIC (default: the DERP port's number)")
    p.add_argument("--derp", dest="run_derp", action=BOOL, default=True,
                   help="serve DERP at /derp (derper: false keeps only the other endpoints, e.g. /bootstrap-dns)")
    p.add_argument("--home", default="", metavar="WHAT",
                   help="what / serves: empty for the default page, 'blank', or an http(s) URL to redirect to")
    p.add_argument("--mesh-with", default="", metavar="LIST",
                   help="comma list of mesh peers: host[:port] or host/dialhost (default: no mesh)")
    p.add_argument("--mesh-psk-file", default="", metavar="FILE",
                   help="file with the 64-hex-character mesh key (needed by --mesh-with)")
    p.add_argument("--mesh-ca-file", default=None, metavar="FILE",
                   help="extra CA file to verify mesh peers (default: the system CAs)")
    p.add_argument("--bootstrap-dns-names", default="", metavar="LIST",
                   help="comma list of host names whose addresses /bootstrap-dns serves")
    p.add_argument("--unpublished-bootstrap-dns-names", default="", metavar="LIST",
                   help="comma list of host names /bootstrap-dns answers only when asked (?q=name)")
    p.add_argument("--allowed-keys-file", default="", metavar="FILE",
                   help="one base64 WireGuard public key a line (# comments); re-read on SIGHUP "
                        "(without it or another admission check, --open-relay is needed)")
    p.add_argument("--open-relay", action=BOOL, default=False, help="let any key use this relay")
    p.add_argument("--verify-clients", action=BOOL, default=False,
                   help="admit only the keys of the `wgc up` interface on this host and its peers (read "
                        "through its control socket, kept current)")
    p.add_argument("--verify-clients-interface", default="", metavar="NAME",
                   help="the interface -verify-clients reads (default: the only one running)")
    p.add_argument("--socket", default="", metavar="PATH",
                   help="the control socket -verify-clients reads (default: that of the interface)")
    p.add_argument("--verify-clients-interval", type=duration(0.1), default="2s", metavar="DURATION",
                   help="how often -verify-clients re-reads the interface's peers")
    p.add_argument("--verify-client-url", default="", metavar="URL",
                   help="admission webhook: POST {\"NodePublic\", \"Source\"}, answer {\"Allow\": bool} "
                        "(Tailscale's DERPAdmitClientRequest)")
    p.add_argument("--verify-client-url-fail-open", action=BOOL, default=True,
                   help="admit clients while the webhook cannot be reached")
    p.add_argument("--verify-client-url-timeout", type=DURATION, default="5s", metavar="DURATION",
                   help="time the webhook has to answer")
    p.add_argument("--verify-client-url-cache", type=DURATION, default="30s", metavar="DURATION",
                   help="how long a webhook answer is kept per key and address (0: ask every time)")
    p.add_argument("--bindings-file", default="", metavar="FILE",
                   help="TOFU: bind each client identity to the first key seen for it, kept in FILE "
                        "(re-read on SIGHUP); a later other key for it is refused")
    p.add_argument("--bindings-identity", default="ip", metavar="ip|header:NAME",
                   help="what identifies a client for --bindings-file: its address, or a request header")
    p.add_argument("--max-clients", type=number(int, 0), default=0, metavar="N",
                   help="refuse clients beyond this many (0: no limit)")
    p.add_argument("--conn-rate", type=SECONDS, default=5.0, metavar="N",
                   help="new connections per second per source IP (0: no limit)")
    p.add_argument("--conn-burst", type=SECONDS, default=10.0, metavar="N",
                   help="burst of the per-IP connection rate")
    p.add_argument("--accept-connection-limit", type=rate, default="inf", metavar="N",
                   help="new connections per second on the DERP port, all clients together (inf: no limit)")
    p.add_argument("--accept-connection-burst", type=number(int, 1), default=(1 << 63) - 1, metavar="N",
                   help="burst of --accept-connection-limit")
    p.add_argument("--rate-config", default="", metavar="FILE",
                   help='per-client byte rate as derper: JSON {"PerClientRateLimitBytesPerSec": N, '
                        '"PerClientRateBurstBytes": M}; re-read on SIGHUP')
    p.add_argument("--client-rate-limit", type=size, default="0", metavar="BYTES",
                   help="bytes a second each client may send, e.g. 1MB (0: no limit); beyond it reading "
                        "waits (nothing is dropped); mesh peers are exempt")
    p.add_argument("--client-rate-burst", type=size, default="0", metavar="BYTES",
                   help="burst of --client-rate-limit (at least one packet, 65568 bytes)")
    p.add_argument("--trust-proxy", action=BOOL, default=False,
                   help="behind a proxy (Fly, nginx, a CDN): take the client IP from the entry the proxy added "
                        "to --trust-proxy-header")
    p.add_argument("--trust-proxy-header", default="X-Forwarded-For", metavar="NAME",
                   help="header the trusted proxy sets (X-Forwarded-For, or Fly-Client-IP / X-Real-IP when named)")
    p.add_argument("--trust-proxy-hops", type=number(int, 1), default=1, metavar="N",
                   help="take the X-Forwarded-For entry this many from the right (1: the rightmost, added by "
                        "the last proxy)")
    p.add_argument("--max-conns-per-ip", type=number(int, 0), default=MAX_CONNS_PER_IP, metavar="N",
                   help="concurrent DERP connections per client IP (0: no limit)")
    p.add_argument("--read-header-timeout", type=DURATION, default="5s", metavar="DURATION",
                   help="time a client has to send its HTTP request head")
    p.add_argument("--tcp-write-timeout", type=DURATION, default="2s", metavar="DURATION",
                   help="per-client write stall limit (0: none)")
    p.add_argument("--tcp-keepalive-time", type=DURATION, default="10m", metavar="DURATION",
                   help="TCP keepalive idle time and probe interval of client connections (0: off)")
    p.add_argument("--tcp-user-timeout", type=DURATION, default="15s", metavar="DURATION",
                   help="TCP user timeout: unacknowledged data older than this drops the connection (0: the "
                        "kernel's)")
    p.add_argument("--send-queue-depth", type=number(int, 1), default=32, metavar="N",
                   help="packets queued per client beyond the socket buffer before drops")
    p.add_argument("--metrics-addr", default="127.0.0.1:9090", metavar="ADDR",
                   help="Prometheus /metrics listener ('off' disables; ':port' is loopback)")
    p.add_argument("--metrics-port", dest="metrics_addr", type=loopback_port, default=argparse.SUPPRESS,
                   metavar="PORT", help="nefia-derp's form: --metrics-addr 127.0.0.1:PORT")
    p.add_argument("--metrics-token", default=None, metavar="TOKEN",
                   help=f"bearer token for detailed /healthz and remote /debug/; visible in ps, prefer "
                        f"--metrics-token-file or ${TOKEN_ENV} (default: ${TOKEN_ENV}, else "
                        f"${NEFIA_TOKEN_ENV}, else none)")
    p.add_argument("--metrics-token-file", default="", metavar="FILE",
                   help="read the bearer token from FILE (surrounding whitespace ignored)")
    p.add_argument("--derpmap-file", default="", metavar="FILE",
                   help="DERP map served at /derpmap/default; re-read on SIGHUP (default: none, 404)")
    p.add_argument("--shutdown-timeout", type=DURATION, default="30s", metavar="DURATION",
                   help="on SIGTERM, drain clients for at most this long")
    p.add_argument("--keepalive-interval", "--ping-interval", type=duration(0.1), default="60s", metavar="DURATION",
                   help="DERP keepalive frame interval (at least 100ms)")
    p.add_argument("--uvloop", action=BOOL, default=True, help="use uvloop's event loop when installed")
    p.add_argument("--tls-engine", default="lean", choices=["lean", "asyncio"],
                   help="lean: non-blocking SSL sockets (less memory per client); asyncio: the loop's SSL")
    p.add_argument("-v", "--verbose", action=BOOL, default=False, help="debug logging")
    p.add_argument("--version", action=BOOL, default=False, help="print the version and exit")
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
    g.add_argument("--acme-renew-before", type=typed(parse_renew_before), default="33%",
                   metavar="PCT|DURATION",
                   help="renew when less than this share of the lifetime (e.g. 33%%) or this long (e.g. 720h) "
                        "remains")
    g.add_argument("--acme-retry", type=DURATION, default="1m", metavar="DURATION",
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
    """--metrics-token, else --metrics-token-file, else $WGC_DERPER_METRICS_TOKEN, else
    $NEFIA_DERP_METRICS_TOKEN (nefia-derp's), else none."""
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
    return os.environ.get(TOKEN_ENV) or os.environ.get(NEFIA_TOKEN_ENV, "")


def load_acl(args: argparse.Namespace) -> AccessList:
    if args.allowed_keys_file:
        try:
            return AccessList(parse_allowed_keys(_read(args.allowed_keys_file, "allowed keys file")))
        except ParseError as exc:
            raise UsageError(f"{args.allowed_keys_file}: {exc}") from None
    if args.open_relay or args.verify_clients or args.verify_client_url:
        return AccessList(None)
    raise UsageError("refusing to start an open relay by accident: give --allowed-keys-file FILE "
                     "(one WireGuard public key a line), -verify-clients or -verify-client-url URL, "
                     "or say --open-relay")


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
                    stun_port: int | None, quic_port: int | None = None) -> dict:
    """The DERP map node (derpmap.md §5) a client needs to use this relay with its self-signed certificate
    (with `WgcQUICPort` when DERP over QUIC is on, docs/derp-quic.md)."""
    node: dict[str, Any] = {"Name": "900a", "RegionID": 900, "HostName": args.hostname,
                            "CertName": "sha256-raw:" + pin, "DERPPort": derp_port,
                            "STUNPort": -1 if stun_port is None else stun_port}
    if _is_ip(args.hostname):  # an IP literal has no DNS records: pin it and switch the other family off
        v4 = ipaddress.ip_address(args.hostname.split("%", 1)[0]).version == 4
        node["IPv4"], node["IPv6"] = (args.hostname, "none") if v4 else ("none", args.hostname)
    if http_port == 80:
        node["CanPort80"] = True
    if quic_port:
        node["WgcQUICPort"] = quic_port
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
    implicit_plain = args.certmode is None and port != 443
    if args.certmode is None:   # derper serves TLS on port 443 (or with -certmode=manual), else plain HTTP
        args.certmode = "manual" if port == 443 else "none"
    certs, pin = tls_context(args)
    ssl_ctx = certs.current if certs is not None else None
    targets = mesh_targets(args.mesh_with, ssl_ctx is not None)
    config = ServerConfig(max_clients=args.max_clients, open_relay=args.open_relay,
                          keepalive_interval=args.keepalive_interval)
    relay = Relay(private, config, acl, random.random, mesh_key)
    server = DerpServer(relay, server_options(args), ssl_ctx)
    server.certs = certs
    await admission.configure(args, server)
    server.bootstrap = BootstrapDNS(parse_names(args.bootstrap_dns_names, "-bootstrap-dns-names"),
                                    parse_names(args.unpublished_bootstrap_dns_names,
                                                "-unpublished-bootstrap-dns-names"))
    up = await start_listeners(args, server, host, port, metrics_at)
    if certs is not None:   # only now: nothing to stop when a bind fails
        certs.start(args.cert_watch_interval)
    if implicit_plain:
        log.info("serving plain HTTP: no --certmode and the DERP port is not 443 (as derper; a TLS proxy in "
                 "front, or --certmode manual / selfsigned / letsencrypt)")
    server.bootstrap.start()
    if server.local_peers is not None:
        server.local_peers.start()
    extras = [f"http={up.http_port}"] if up.http_port is not None else []
    if up.stun is not None:
        extras.append(f"stun={up.stun.port}")
    if up.quic is not None:
        extras.append(f"quic={up.quic.port}")
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
        node = selfsigned_node(args, pin, up.derp_port, up.http_port, up.stun and up.stun.port,
                               up.quic and up.quic.port)
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
    """SIGHUP: re-read the allowed keys (allowed clients stay, removed ones are closed), the DERP map, the
    rate config and the bindings file; keep the old settings if a new file is bad. Also re-reads --certmode
    manual certificates."""
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
        if args.rate_config:
            rate, burst = server.set_client_rate(*client_rate(args))
            log.info("rate config applied: client-rate=%d bytes/sec, client-burst=%d bytes", rate, burst)
        admission.reload(args, server)
    except UsageError as exc:
        log.error("reload failed, keeping the previous settings: %s", exc)


def server_options(args: argparse.Namespace) -> ServerOptions:
    rate, burst = client_rate(args)
    limit = args.accept_connection_limit
    return ServerOptions(read_header_timeout=args.read_header_timeout, write_timeout=args.tcp_write_timeout,
                         conn_rate=args.conn_rate, conn_burst=args.conn_burst, trust_proxy=args.trust_proxy,
                         trust_proxy_header=args.trust_proxy_header, trust_proxy_hops=args.trust_proxy_hops,
                         max_conns_per_ip=args.max_conns_per_ip,
                         metrics_token=args.metrics_token, derpmap_json=load_derpmap_bytes(args.derpmap_file),
                         send_queue_depth=args.send_queue_depth, tls_engine=args.tls_engine,
                         run_derp=args.run_derp, home=home_page(args.home),
                         accept_limit=0.0 if math.isinf(limit) else limit, accept_burst=args.accept_connection_burst,
                         tcp_keepalive=args.tcp_keepalive_time, tcp_user_timeout=args.tcp_user_timeout,
                         client_rate=rate, client_burst=burst)


def client_rate(args: argparse.Namespace) -> tuple[int, int]:
    """(bytes/s, burst) from -rate-config FILE or --client-rate-limit/--client-rate-burst."""
    if args.rate_config:
        if args.client_rate_limit or args.client_rate_burst:
            raise UsageError("give -rate-config or --client-rate-limit/--client-rate-burst, not both")
        try:
            return parse_rate_config(_read(args.rate_config, "rate config").encode())
        except ParseError as exc:
            raise UsageError(f"{args.rate_config}: {exc}") from None
    return args.client_rate_limit, args.client_rate_burst


def home_page(value: str) -> str:
    if value in ("", "blank") or value.startswith(("http://", "https://")):
        return value
    raise UsageError(f"unknown --home value {value!r} (empty, 'blank' or an http(s) URL)")


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
        args = parse_command_line(build_parser(), sys.argv[1:] if argv is None else list(argv))
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    if args.version:
        print(f"wgc derper {version()}")
        return 0
    _raise_nofile()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    if args.uvloop:
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
