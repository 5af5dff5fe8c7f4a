"""Loading a DERP map from a file path or an http(s) URL (synchronous, bounded by a timeout), and the
on-disk copy of the last good map (`save_cached_map` / `load_cached_map`).

Unreadable files, unreachable URLs, TLS failures and non-200 answers raise `derp.errors.UsageError` with a
message naming the source; a body that is not a valid map raises `derp.errors.ParseError` from the parser.
The cache is the map's canonical JSON (itself a valid `--derpmap` file), written atomically (a temporary
file in the same directory, fsync, rename), so a crash leaves the old copy or the new one, never half.
"""
from __future__ import annotations

import http.client
import os
import socket
import ssl
import urllib.error
import urllib.request

from derp.aio.atomicfile import write_atomic
from derp.derpmap import DerpMap, parse_derpmap
from derp.errors import ParseError, UsageError

MAX_MAP_BYTES = 8 << 20


def _ssl_context(ca_file: str | None, insecure: bool) -> ssl.SSLContext:
    if insecure:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    ctx = ssl.create_default_context()
    if ca_file:
        try:
            ctx.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(f"cannot load CA file {ca_file!r}: {exc}") from None
    return ctx


def _marked_opener(ctx: ssl.SSLContext | None, fwmark: int) -> urllib.request.OpenerDirector:
    """urllib whose connections put SO_MARK on their socket before connecting."""
    def create(address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None, *_):
        last: OSError = OSError(f"no address for {address[0]}")
        for family, kind, proto, _, addr in socket.getaddrinfo(address[0], address[1], 0, socket.SOCK_STREAM):
            sock = socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, fwmark)
                if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
                    sock.settimeout(timeout)
                sock.connect(addr)
                return sock
            except OSError as exc:
                sock.close()
                last = exc
        raise last

    def marked(cls):
        class Marked(cls):
            def __init__(self, *args, **kwargs) -> None:
                super().__init__(*args, **kwargs)
                self._create_connection = create
        return Marked

    class Http(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(marked(http.client.HTTPConnection), req)

    class Https(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(marked(http.client.HTTPSConnection), req, context=ctx)
    return urllib.request.build_opener(Http, Https)


def _fetch_url(url: str, ca_file: str | None, timeout: float, insecure: bool, fwmark: int = 0) -> bytes:
    ctx = _ssl_context(ca_file, insecure) if url.lower().startswith("https:") else None
    request = urllib.request.Request(url, headers={"User-Agent": "wgc-derp"})
    open_url = _marked_opener(ctx, fwmark).open if fwmark else \
        (lambda req, timeout: urllib.request.urlopen(req, timeout=timeout, context=ctx))
    try:
        with open_url(request, timeout=timeout) as resp:
            if resp.status != 200:
                raise UsageError(f"DERP map URL {url} answered HTTP {resp.status}")
            body = resp.read(MAX_MAP_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise UsageError(f"DERP map URL {url} answered HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise UsageError(f"cannot fetch DERP map from {url}: {exc.reason}") from None
    except (OSError, ValueError) as exc:  # timeouts, resets, malformed URLs
        raise UsageError(f"cannot fetch DERP map from {url}: {exc}") from None
    if len(body) > MAX_MAP_BYTES:
        raise UsageError(f"DERP map at {url} is larger than {MAX_MAP_BYTES} bytes")
    return body


def read_source(source: str, *, ca_file: str | None = None, timeout: float = 5.0, insecure: bool = False,
                fwmark: int = 0) -> bytes:
    """The bytes of a DERP map source: a file path or an http(s) URL (UsageError naming it on failure),
    a URL fetched on a socket with SO_MARK `fwmark`, when given, like every socket of a full tunnel's owner."""
    if not source:
        raise UsageError("no DERP map source given (a file path or an http(s) URL)")
    if source.lower().startswith(("http://", "https://")):
        return _fetch_url(source, ca_file, timeout, insecure, fwmark)
    try:
        with open(source, "rb") as fh:
            data = fh.read(MAX_MAP_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"cannot read DERP map file {source!r}: {exc.strerror or exc}") from None
    if len(data) > MAX_MAP_BYTES:
        raise UsageError(f"DERP map file {source!r} is larger than {MAX_MAP_BYTES} bytes")
    return data


def load_derpmap(source: str, *, ca_file: str | None = None, timeout: float = 5.0,
                 insecure: bool = False, fwmark: int = 0, warnings: list[str] | None = None) -> DerpMap:
    """Load and parse a DERP map from a file path or an http(s) URL (see `read_source` for `fwmark`)."""
    data = read_source(source, ca_file=ca_file, timeout=timeout, insecure=insecure, fwmark=fwmark)
    return parse_derpmap(data, warnings)


def save_cached_map(path: str, dm: DerpMap) -> None:
    """Write `dm` to `path` atomically (directories made 0755, file 0644: a map holds no secret)."""
    try:
        write_atomic(path, dm.to_json() + "\n", 0o644, make_dirs=0o755)
    except OSError as exc:
        raise UsageError(f"cannot write the DERP map cache {path}: {exc.strerror or exc}") from None


def load_cached_map(path: str) -> DerpMap | None:
    """The cached map, or None when there is none; a damaged copy raises ParseError naming the file."""
    try:
        data = read_source(path)
    except UsageError:
        if not os.path.exists(path):
            return None
        raise
    try:
        return parse_derpmap(data)
    except ParseError as exc:
        raise ParseError(f"the DERP map cache {path} is damaged: {exc}") from None
