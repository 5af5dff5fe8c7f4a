"""`wgc derper`: the self-hostable DERP relay's command line (flags named as Tailscale's derper where it has
them), startup (key, certificates, access list, STUN, mesh, metrics) and signals (SIGTERM graceful
shutdown, SIGHUP reload of the allowed keys, DERP map and manual certificate files).

On start it prints one line to stdout: `derper ready addr=<host:port> metrics=<host:port|off>
key=nodekey:<hex> tls=<yes|no>` so scripts and tests can find ephemeral ports.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import signal
import sys

from derp.aio import acme, certstore
from derp.aio.client import DialTarget
from derp.aio.server import DerpServer, ServerOptions
from derp.derpmap import parse_derpmap
from derp.duration import parse_duration
from derp.errors import Error, ParseError, UsageError
from derp.keys import parse_private_key, private_key_from_random, privkey_text, public_key_of
from derp.server import AccessList, Relay, ServerConfig, parse_allowed_keys

log = logging.getLogger("derper")
TOKEN_ENV = "WGC_DERPER_METRICS_TOKEN"


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wgc derper", description="Tailscale-compatible DERP relay server.")
    p.add_argument("-a", "--addr", default=":443", help="listen address (:port, ip:port, [ip]:port); default :443")
    p.add_argument("--hostname", default="localhost", help="TLS name of this server (certificate name)")
    p.add_argument("--certmode", default="manual", choices=["manual", "selfsigned", "letsencrypt", "none"],
                   help="manual: <certdir>/<hostname>.crt/.key, re-read when they change; selfsigned: generated "
                        "once into certdir; letsencrypt: ACME (--acme-*); none: plain HTTP")
    p.add_argument("--certdir", default=os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                     os.path.expanduser("~/.cache"), "wgc", "derper-certs"))
    p.add_argument("-c", "--config", default="", help="server key file (JSON, created if missing); "
                                                      "default: a fresh key each start")
    p.add_argument("--http-port", type=int, default=80,
                   help="plain-HTTP port beside a TLS relay (/generate_204, redirects to https); -1 disables")
    p.add_argument("--stun", action=argparse.BooleanOptionalAction, default=True, help="run the STUN server")
    p.add_argument("--stun-port", type=int, default=3478)
    p.add_argument("--mesh-with", default="", help="comma list of mesh peers: host[:port] or host/dialhost")
    p.add_argument("--mesh-psk-file", default="", help="file with the 64-hex-character mesh key")
    p.add_argument("--mesh-ca-file", default=None, help="extra CA file to verify mesh peers")
    p.add_argument("--allowed-keys-file", default="", help="one base64 WireGuard public key a line (# comments)")
    p.add_argument("--open-relay", action="store_true", help="let any key use this relay")
    p.add_argument("--max-clients", type=int, default=0, help="refuse clients beyond this many (0: no limit)")
    p.add_argument("--conn-rate", type=float, default=5.0, help="new connections per second per source IP")
    p.add_argument("--conn-burst", type=float, default=10.0, help="burst of the per-IP connection rate")
    p.add_argument("--trust-proxy", action="store_true", help="take the client IP from X-Forwarded-For")
    p.add_argument("--read-header-timeout", type=float, default=5.0)
    p.add_argument("--tcp-write-timeout", type=float, default=2.0, help="per-client write stall limit (0: none)")
    p.add_argument("--send-queue-depth", type=int, default=32)
    p.add_argument("--metrics-addr", default="127.0.0.1:9090", help="Prometheus /metrics listener ('off' to disable)")
    p.add_argument("--metrics-token", default=os.environ.get(TOKEN_ENV, ""),
                   help=f"bearer token for detailed /healthz and remote /debug/ (or ${TOKEN_ENV})")
    p.add_argument("--derpmap-file", default="", help="DERP map served at /derpmap/default")
    p.add_argument("--shutdown-timeout", type=float, default=30.0)
    p.add_argument("--keepalive-interval", type=float, default=60.0)
    p.add_argument("--no-uvloop", action="store_true", help="use the default asyncio event loop")
    p.add_argument("--tls-engine", default="lean", choices=["lean", "asyncio"],
                   help="lean: non-blocking SSL sockets (less memory per client); asyncio: the loop's SSL")
    p.add_argument("-v", "--verbose", action="store_true")
    certstore.add_flags(p)
    acme.add_flags(p)
    return p


def _read(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {what} {path!r}: {getattr(exc, 'strerror', None) or exc}") from None


def load_server_key(path: str) -> bytes:
    if not path:
        return private_key_from_random(os.urandom(32))
    if os.path.exists(path):
        try:
            obj = json.loads(_read(path, "key file"))
            return parse_private_key(obj["PrivateKey"])
        except (ValueError, KeyError, TypeError, ParseError):
            raise UsageError(f"key file {path!r} is not {{\"PrivateKey\": \"privkey:<64 hex>\"}}") from None
    key = private_key_from_random(os.urandom(32))
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"PrivateKey": privkey_text(key)}, fh)
    except OSError as exc:
        raise UsageError(f"cannot create key file {path!r}: {exc.strerror}") from None
    return key


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


def tls_context(args: argparse.Namespace):
    """The relay's CertStore (None for --certmode none): manual files (watched), the self-signed pair kept in
    --certdir, or an ACME manager (started with the listeners)."""
    if args.certmode == "none":
        return None
    from derp.aio.certstore import CertStore, leaf_sha256, selfsigned_files
    store = CertStore(args.hostname)
    if args.certmode == "letsencrypt":
        from derp.aio.acme import AcmeManager, config_from_args
        manager = AcmeManager(config_from_args(args), store)
        manager.load_cached()
        store.on_start.append(manager.start)
        store.on_hup = manager.renew_now
        return store
    if args.certmode == "manual":
        crt = os.path.join(args.certdir, args.hostname + ".crt")
        key = os.path.join(args.certdir, args.hostname + ".key")
        for path in (crt, key):
            if not os.path.exists(path):
                raise UsageError(f"--certmode manual needs {path} (certificate and key named after --hostname)")
        try:
            store.watch_files(crt, key)
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot load {crt} / {key}: {exc}") from None
        return store
    try:
        crt, key = selfsigned_files(args.certdir, args.hostname)
        store.load_files(crt, key)
    except (OSError, ValueError) as exc:
        raise UsageError(f"self-signed certificate in {args.certdir}: {getattr(exc, 'strerror', None) or exc}") from None
    node = {"Name": "custom", "RegionID": 900, "HostName": args.hostname,
            "CertName": "sha256-raw:" + leaf_sha256(crt)}
    log.info("self-signed certificate; DERP map node: %s", json.dumps(node))
    return store


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
    from derp.aio.metrics import serve_metrics

    private = load_server_key(args.config)
    acl = load_acl(args)
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
    watch_interval = parse_duration(args.cert_watch_interval)
    certs = tls_context(args)
    ssl_ctx = certs.current if certs is not None else None
    config = ServerConfig(max_clients=args.max_clients, open_relay=args.open_relay,
                          keepalive_interval=args.keepalive_interval)
    relay = Relay(private, config, acl, random.random, mesh_key)
    options = ServerOptions(read_header_timeout=args.read_header_timeout, write_timeout=args.tcp_write_timeout,
                            conn_rate=args.conn_rate, conn_burst=args.conn_burst, trust_proxy=args.trust_proxy,
                            metrics_token=args.metrics_token, derpmap_json=load_derpmap_bytes(args.derpmap_file),
                            send_queue_depth=args.send_queue_depth, tls_engine=args.tls_engine)
    server = DerpServer(relay, options, ssl_ctx)
    server.certs = certs
    bound = await server.listen(host, port)
    extras = []
    if ssl_ctx is not None and args.http_port >= 0:
        try:
            extras.append(f"http={await server.listen_port80(host, args.http_port)}")
        except OSError as exc:
            raise UsageError(f"cannot listen on HTTP port {args.http_port}: {exc.strerror} "
                             "(--http-port -1 disables it)") from None
    if certs is not None:
        certs.start(watch_interval)
    stun = None
    if args.stun:
        try:
            from natprobe.aio.server import start_stun_server
        except ImportError:
            raise UsageError("the STUN server (natprobe) is not available; run with --no-stun") from None
        try:
            stun = await start_stun_server(host or "::", args.stun_port)  # "::" answers IPv4 and IPv6
        except OSError as exc:
            raise UsageError(f"cannot start STUN on UDP port {args.stun_port}: {exc.strerror}") from None
        extras.append(f"stun={stun.port}")
    metrics_desc = "off"
    if args.metrics_addr != "off":
        mhost, mport = split_addr(args.metrics_addr, 9090)
        msrv = await serve_metrics(server, mhost or "127.0.0.1", mport)
        sock = msrv.sockets[0].getsockname()
        metrics_desc = f"{sock[0]}:{sock[1]}"
    for target in mesh_targets(args.mesh_with, ssl_ctx is not None):
        link = MeshLink(relay, target, mesh_key.hex(), args.mesh_ca_file,
                        apply=lambda outs: (server.apply(outs), server.flush()))
        server.mesh_links.append(link)
        await link.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: reload(args, server))
    shown = f"[{host}]" if host and ":" in host else (host or "0.0.0.0")
    print(f"derper ready addr={shown}:{bound} metrics={metrics_desc} key=nodekey:{public_key_of(private).hex()} "
          f"tls={'yes' if ssl_ctx else 'no'} {' '.join(extras)}".rstrip(), flush=True)
    await stop.wait()
    log.info("shutting down: draining for at most %g s", args.shutdown_timeout)
    await server.shutdown(args.shutdown_timeout)
    if stun is not None:
        stun.close()
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
    args = build_parser().parse_args(argv)
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
    except (UsageError, Error) as exc:
        print(f"wgc derper: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"wgc derper: {exc.strerror or exc} ({args.addr})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
