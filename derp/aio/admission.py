"""The I/O of admission (the decisions are derp.admission's): the `-verify-client-url` webhook client, the
`-verify-clients` poller of the local `wgc up` interface's control socket, and the TOFU bindings file.

Webhook: one HTTP/1.1 POST per (key, source IP) not in the cache, at most MAX_INFLIGHT at once (beyond that
a client is refused as `webhook_busy` and retries), concurrent checks of the same pair share one request.
Within `timeout` (5 s, as derper) the answer must be `200` with `{"Allow": ...}`. A webhook that cannot
be reached (connect error, TLS error, no answer in time) admits the client with fail-open (derper's
default) and refuses it without; a non-200 status or a body that is not such JSON refuses it. Only real
answers are cached.

Verify-clients: the control socket `<$WGC_CONTROL_DIR or /var/run/wgc>/<interface>.ctl` (docs/control.md:
one `{"cmd": "status"}` line, one JSON reply line) is read at start (no interface: the relay refuses to
start) and every `interval`; a changed set replaces the relay's and the connections of keys no longer in
it are closed. While the interface cannot be read the last set stays (logged once per outage).

Bindings file: read at start (a bad file stops the start), written atomically (temporary file, fsync,
rename; mode 0600) at most once a second while bindings change, and at shutdown.
"""
from __future__ import annotations

import asyncio
import glob
import logging
import os
import socket
import ssl
import time
import urllib.parse
from typing import Any, Callable

from derp import httpwire
from derp.admission import (MAX_WEBHOOK_BODY, Bindings, Verdict, VerdictCache, check_identity_mode,
                            encode_admit_request, keys_from_status, parse_admit_response, parse_bindings)
from derp.aio.atomicfile import write_atomic
from derp.errors import ParseError, UsageError
from derp.keys import short

log = logging.getLogger("derper.admission")
MAX_INFLIGHT = 64
DEFAULT_CONTROL_DIR = "/var/run/wgc"      # wgclient.aio.control_server's, which derp may not import
CONTROL_SUFFIX = ".ctl"
MAX_STATUS_REPLY = 16 << 20
NOT_RUNNING_HINT = ("start one with 'wgc up', or admit clients with --allowed-keys-file FILE or "
                    "-verify-client-url URL instead")


class Unreachable(Exception):
    """The webhook could not be asked (fail-open applies)."""


# ---- the webhook --------------------------------------------------------------------------------------------

class Webhook:
    def __init__(self, url: str, timeout: float, fail_open: bool, cache: VerdictCache,
                 clock: Callable[[], float] = time.monotonic, ca_file: str | None = None) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"-verify-client-url must be an http:// or https:// URL, not {url!r}")
        try:
            self.port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise UsageError(f"bad port in -verify-client-url {url!r}") from None
        self.host = parts.hostname
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.netloc = parts.netloc.rpartition("@")[2]
        self.ssl = ssl.create_default_context(cafile=ca_file) if parts.scheme == "https" else None
        self.timeout, self.fail_open, self.cache, self.clock = timeout, fail_open, cache, clock
        self.inflight: dict[tuple[bytes, str], asyncio.Future] = {}
        self.counters = {"requests": 0, "allowed": 0, "denied": 0, "errors": 0, "unreachable": 0,
                         "failed_open": 0, "busy": 0}

    def cached(self, key: bytes, ip: str) -> Verdict | None:
        allow = self.cache.get(key, ip, self.clock())
        if allow is None:
            return None
        return Verdict(True) if allow else _denied(key, ip)

    async def check(self, key: bytes, ip: str) -> Verdict:
        """The webhook's verdict for `key` from `ip` (never raises)."""
        pending = self.inflight.get((key, ip))
        if pending is not None:
            return await asyncio.shield(pending)
        if len(self.inflight) >= MAX_INFLIGHT:
            self.counters["busy"] += 1
            return Verdict(False, "admission controller busy (too many checks at once)", "webhook_busy")
        future = asyncio.get_running_loop().create_future()
        self.inflight[(key, ip)] = future
        verdict = Verdict(False, "admission check interrupted", "webhook_error")
        try:
            verdict = await self._ask(key, ip)
        except Exception:   # a bug here must refuse one client, not kill the server
            log.exception("admission webhook check failed")
            self.counters["errors"] += 1
            verdict = Verdict(False, "admission check failed", "webhook_error")
        finally:
            del self.inflight[(key, ip)]
            future.set_result(verdict)
        return verdict

    async def _ask(self, key: bytes, ip: str) -> Verdict:
        self.counters["requests"] += 1
        try:
            status, body = await asyncio.wait_for(self._post(encode_admit_request(key, ip)), self.timeout)
        except Unreachable as exc:
            return self._unreachable(key, str(exc))
        except asyncio.TimeoutError:
            return self._unreachable(key, f"no answer within {self.timeout:g} s")
        except ParseError as exc:
            self.counters["errors"] += 1
            return Verdict(False, f"admission controller: {exc}", "webhook_error")
        if status != 200:
            self.counters["errors"] += 1
            return Verdict(False, f"admission controller answered HTTP {status}", "webhook_error")
        try:
            allow = parse_admit_response(body)
        except ParseError as exc:
            self.counters["errors"] += 1
            return Verdict(False, str(exc), "webhook_error")
        self.cache.put(key, ip, allow, self.clock())
        self.counters["allowed" if allow else "denied"] += 1
        return Verdict(True) if allow else _denied(key, ip)

    def _unreachable(self, key: bytes, why: str) -> Verdict:
        self.counters["unreachable"] += 1
        if self.fail_open:
            self.counters["failed_open"] += 1
            log.warning("admission controller unreachable (%s); allowing client %s (fail-open)", why, short(key))
            return Verdict(True)
        return Verdict(False, f"admission controller unreachable: {why}", "webhook_unreachable")

    async def _post(self, body: bytes) -> tuple[int, bytes]:
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port, ssl=self.ssl,
                                                           server_hostname=self.host if self.ssl else None)
        except (OSError, ssl.SSLError) as exc:
            raise Unreachable(getattr(exc, "strerror", None) or str(exc) or type(exc).__name__) from None
        try:
            head = httpwire.request("POST", self.target, self.netloc, {
                "User-Agent": "wgc-derper", "Content-Type": "application/json",
                "Content-Length": str(len(body)), "Connection": "close"})
            writer.write(head + body)
            try:
                raw = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError) as exc:
                raise Unreachable(f"no HTTP answer ({type(exc).__name__})") from None
            resp = httpwire.parse_response(raw)
            return resp.status, await _read_body(reader, resp)
        finally:
            writer.close()


def _denied(key: bytes, ip: str) -> Verdict:
    return Verdict(False, f"admission controller: {short(key)}/{ip} not allowed", "webhook_denied")


async def _read_body(reader: asyncio.StreamReader, resp: httpwire.Head) -> bytes:
    """At most MAX_WEBHOOK_BODY bytes of a response body: Content-Length, chunked, or up to EOF."""
    try:
        if "chunked" in resp.header("transfer-encoding").lower():
            out = bytearray()
            while len(out) < MAX_WEBHOOK_BODY:
                size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
                if size <= 0:
                    break
                out += await reader.readexactly(min(size, MAX_WEBHOOK_BODY - len(out) + 1))
                await reader.readline()
            return bytes(out)
        length = resp.header("content-length")
        if length:
            return await reader.readexactly(min(int(length), MAX_WEBHOOK_BODY))
        return await reader.read(MAX_WEBHOOK_BODY)
    except (ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
        raise ParseError("the admission controller's answer was cut short") from None


# ---- -verify-clients ----------------------------------------------------------------------------------------

def control_dir() -> str:
    return os.environ.get("WGC_CONTROL_DIR") or DEFAULT_CONTROL_DIR


def _live(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(path)
        except OSError:
            return False
    return True


def find_control_socket(interface: str, path: str) -> str:
    """The control socket -verify-clients reads: `path` (-socket), else the named interface's, else the
    only live one in the control directory. None running, or several and none named: a UsageError."""
    if path:
        if not _live(path):
            raise UsageError(f"-verify-clients: nothing answers on the control socket {path}; {NOT_RUNNING_HINT}")
        return path
    directory = control_dir()
    if interface:
        if "/" in interface or interface in (".", ".."):
            raise UsageError(f"invalid interface name {interface!r}")
        path = os.path.join(directory, interface + CONTROL_SUFFIX)
        if not _live(path):
            raise UsageError(f"-verify-clients: wgc interface {interface!r} is not running on this host "
                             f"(no control socket {path}); {NOT_RUNNING_HINT}")
        return path
    live = [p for p in sorted(glob.glob(os.path.join(glob.escape(directory), "*" + CONTROL_SUFFIX))) if _live(p)]
    if not live:
        raise UsageError(f"-verify-clients: no wgc interface is running on this host (no control socket in "
                         f"{directory}); {NOT_RUNNING_HINT}")
    if len(live) > 1:
        names = ", ".join(os.path.basename(p)[:-len(CONTROL_SUFFIX)] for p in live)
        raise UsageError(f"-verify-clients: several wgc interfaces are running ({names}); name one with "
                         "--verify-clients-interface NAME")
    return live[0]


async def read_local_keys(path: str, timeout: float = 5.0) -> frozenset[bytes]:
    """The interface's own key and its peers', from one status request on its control socket."""
    async def ask() -> bytes:
        reader, writer = await asyncio.open_unix_connection(path, limit=MAX_STATUS_REPLY + 1)
        try:
            writer.write(b'{"cmd": "status"}\n')
            return await reader.readuntil(b"\n")
        finally:
            writer.close()
    try:
        line = await asyncio.wait_for(ask(), timeout)
    except asyncio.TimeoutError:
        raise UsageError(f"the interface did not answer on {path} within {timeout:g} s") from None
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        raise UsageError(f"cannot read the interface's status from {path}: {type(exc).__name__}") from None
    try:
        return keys_from_status(line)
    except ParseError as exc:
        raise UsageError(f"{path}: {exc}") from None


class LocalPeers:
    """Keeps `server.relay.acl.local` equal to the interface's keys, polling every `interval` seconds."""

    def __init__(self, server: Any, path: str, interval: float) -> None:
        self.server, self.path, self.interval = server, path, interval
        self.failing = False
        self.polls = self.failures = 0
        self.task: asyncio.Task | None = None

    def apply(self, keys: frozenset[bytes]) -> None:
        acl = self.server.relay.acl
        old = acl.local
        if keys == old:
            return
        acl.local = keys
        revoked = self.server.relay.revoke_disallowed()
        self.server.apply(revoked)
        self.server.flush()
        added = len(keys - old) if old is not None else len(keys)
        removed = len(old - keys) if old is not None else 0
        log.info("verify-clients: %d keys from %s (%d added, %d removed); closed %d connections",
                 len(keys), self.path, added, removed, len(revoked))

    async def poll_once(self) -> None:
        self.polls += 1
        try:
            keys = await read_local_keys(self.path)
        except UsageError as exc:
            self.failures += 1
            if not self.failing:
                log.warning("verify-clients: %s; keeping the last %d keys", exc,
                            len(self.server.relay.acl.local or ()))
            self.failing = True
            return
        if self.failing:
            log.info("verify-clients: reading %s again", self.path)
        self.failing = False
        self.apply(keys)

    def start(self) -> None:
        async def loop() -> None:
            while True:
                await asyncio.sleep(self.interval)
                await self.poll_once()
        self.task = asyncio.create_task(loop())

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()


# ---- TOFU bindings file -------------------------------------------------------------------------------------

def load_bindings(path: str) -> Bindings:
    """The bindings kept in `path` (a missing file: none yet). A bad file is a UsageError naming it."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return Bindings()
    except OSError as exc:
        raise UsageError(f"cannot read bindings file {path!r}: {exc.strerror or exc}") from None
    try:
        return Bindings(parse_bindings(data))
    except ParseError as exc:
        raise UsageError(f"{path}: {exc}") from None


class BindingsFile:
    """Writes the relay's bindings to `path` when they changed (called from housekeeping, once a second)."""

    def __init__(self, bindings: Bindings, path: str) -> None:
        self.bindings, self.path = bindings, path
        self.writes = self.failures = 0
        self.busy = False

    async def save(self) -> None:
        if not self.bindings.dirty or self.busy:
            return
        self.busy = True
        data = self.bindings.encode()
        try:
            await asyncio.get_running_loop().run_in_executor(None, write_atomic, self.path, data, 0o600)
            self.writes += 1
        except OSError as exc:
            self.failures += 1
            self.bindings.dirty = True
            log.error("cannot write bindings file %s: %s", self.path, exc.strerror or exc)
        finally:
            self.busy = False


# ---- wiring (wgc derper's start and SIGHUP) ------------------------------------------------------------------

async def configure(args: Any, server: Any) -> None:
    """Set up -verify-clients (its first read included), -verify-client-url and --bindings-file on a
    server that is not listening yet; a mistake is a UsageError."""
    relay = server.relay
    if args.verify_clients:
        path = find_control_socket(args.verify_clients_interface, args.socket)
        relay.acl.local = await read_local_keys(path)
        server.local_peers = LocalPeers(server, path, args.verify_clients_interval)
        log.info("verify-clients: admitting the %d keys of %s (re-read every %g s)", len(relay.acl.local), path,
                 args.verify_clients_interval)
    elif args.verify_clients_interface or args.socket:
        raise UsageError("--verify-clients-interface and -socket go with -verify-clients")
    if args.verify_client_url:
        server.webhook = Webhook(args.verify_client_url, args.verify_client_url_timeout,
                                 args.verify_client_url_fail_open, VerdictCache(args.verify_client_url_cache),
                                 server.clock)
    if args.bindings_file:
        try:
            mode = check_identity_mode(args.bindings_identity)
        except ParseError as exc:
            raise UsageError(f"--bindings-identity: {exc}") from None
        bindings = load_bindings(args.bindings_file)
        try:   # a file that cannot be written should stop the start, not the first binding
            write_atomic(args.bindings_file, bindings.encode(), 0o600)
        except OSError as exc:
            raise UsageError(f"cannot write bindings file {args.bindings_file!r}: "
                             f"{(exc.strerror or str(exc)).lower()}") from None
        relay.bindings = bindings
        server.bindings_identity = mode
        server.bindings_file = BindingsFile(bindings, args.bindings_file)
        log.info("bindings: %d identities bound (%s) in %s", len(bindings.entries), mode, args.bindings_file)


def reload(args: Any, server: Any) -> None:
    """SIGHUP: re-read the bindings file (edit it to unbind an identity); UsageError keeps the old ones."""
    if server.bindings_file is not None:
        fresh = load_bindings(args.bindings_file)
        server.relay.bindings.entries = fresh.entries
        server.relay.bindings.dirty = False
        log.info("reloaded %d bindings from %s", len(fresh.entries), args.bindings_file)
