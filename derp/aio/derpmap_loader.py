"""Loading a DERP map from a file path or an http(s) URL (synchronous, bounded by a timeout).

Unreadable files, unreachable URLs, TLS failures and non-200 answers raise `derp.errors.UsageError` with a
message naming the source; a body that is not a valid map raises `derp.errors.ParseError` from the parser.
"""
from __future__ import annotations

import ssl
import urllib.error
import urllib.request

from derp.derpmap import DerpMap, parse_derpmap
from derp.errors import UsageError

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


def _fetch_url(url: str, ca_file: str | None, timeout: float, insecure: bool) -> bytes:
    ctx = _ssl_context(ca_file, insecure) if url.lower().startswith("https:") else None
    request = urllib.request.Request(url, headers={"User-Agent": "wgc-derp"})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=ctx) as resp:
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


def load_derpmap(source: str, *, ca_file: str | None = None, timeout: float = 5.0,
                 insecure: bool = False) -> DerpMap:
    """Load and parse a DERP map from a file path or an http(s) URL."""
    if not source:
        raise UsageError("no DERP map source given (a file path or an http(s) URL)")
    lowered = source.lower()
    if lowered.startswith(("http://", "https://")):
        data = _fetch_url(source, ca_file, timeout, insecure)
    else:
        try:
            with open(source, "rb") as fh:
                data = fh.read(MAX_MAP_BYTES + 1)
        except OSError as exc:
            raise UsageError(f"cannot read DERP map file {source!r}: {exc.strerror or exc}") from None
        if len(data) > MAX_MAP_BYTES:
            raise UsageError(f"DERP map file {source!r} is larger than {MAX_MAP_BYTES} bytes")
    return parse_derpmap(data)
