"""Minimal HTTP/1.1 framing for the DERP server and client: request/response heads, built and parsed.

Pure. Only what DERP needs: one request head per connection (no bodies), bounded in size, and the
response head of an Upgrade. ParseError for anything malformed. `client_address` picks the client's
address out of a trusted proxy's header (the entry the proxy added, never one the client could forge).
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from derp.errors import ParseError

MAX_HEAD = 16 << 10
_TOKEN = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
REASONS = {101: "Switching Protocols", 200: "OK", 204: "No Content", 302: "Found", 400: "Bad Request",
           401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
           408: "Request Timeout", 426: "Upgrade Required", 429: "Too Many Requests",
           431: "Request Header Fields Too Large", 503: "Service Unavailable"}


@dataclass(frozen=True)
class Head:
    """A request (method, target) or a response (status) head; header names lower-cased."""

    first: tuple[str, str, str]
    headers: dict[str, str] = field(default_factory=dict)

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)

    @property
    def method(self) -> str:
        return self.first[0]

    @property
    def path(self) -> str:
        return self.first[1].split("?", 1)[0]

    @property
    def query(self) -> str:
        parts = self.first[1].split("?", 1)
        return parts[1] if len(parts) == 2 else ""

    @property
    def status(self) -> int:
        return int(self.first[1])


def find_head_end(buf: bytes | bytearray) -> int:
    """Index just past the blank line ending the head, -1 if not there yet; ParseError if too long."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > MAX_HEAD:
            raise ParseError("HTTP head too large")
        return -1
    if end + 4 > MAX_HEAD:
        raise ParseError("HTTP head too large")
    return end + 4


def _parse_headers(lines: list[bytes]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.match(name):
            raise ParseError(f"malformed HTTP header line {line[:40]!r}")
        key = name.decode("ascii").lower()
        text = value.strip().decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return headers


def parse_request(head: bytes) -> Head:
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1.") or not _TOKEN.match(parts[0]):
        raise ParseError(f"malformed HTTP request line {lines[0][:60]!r}")
    try:
        target = parts[1].decode("ascii")
    except UnicodeDecodeError:
        raise ParseError("non-ASCII request target") from None
    return Head((parts[0].decode("ascii"), target, parts[2].decode("ascii")), _parse_headers(lines[1:]))


def parse_response(head: bytes) -> Head:
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit() or len(parts[1]) != 3:
        raise ParseError(f"malformed HTTP status line {lines[0][:60]!r}")
    reason = parts[2].decode("latin-1") if len(parts) == 3 else ""
    return Head((parts[0].decode("ascii"), parts[1].decode("ascii"), reason), _parse_headers(lines[1:]))


def response(status: int, headers: dict[str, str] | None = None, body: bytes = b"",
             close: bool = True, head_only: bool = False) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}"]
    hdrs = dict(headers or {})
    if status != 101:
        hdrs.setdefault("Content-Length", str(len(body)))
        if close:
            hdrs.setdefault("Connection", "close")
    lines.extend(f"{k}: {v}" for k, v in hdrs.items())
    out = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return out if head_only else out + body


def request(method: str, path: str, host: str, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines.extend(f"{k}: {v}" for k, v in (headers or {}).items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _address(entry: str) -> str | None:
    """An IP address from one forwarding-header entry (`ip`, `ip:port`, `[v6]` or `[v6]:port`), normalized
    (IPv4-mapped IPv6 as IPv4); None when it is not one."""
    entry = entry.strip()
    if entry.startswith("["):
        entry = entry[1:].partition("]")[0]
    elif entry.count(":") == 1:
        entry = entry.partition(":")[0]
    try:
        ip = ipaddress.ip_address(entry)
    except ValueError:
        return None
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip)


def client_address(req: Head, peer: str, header: str = "X-Forwarded-For", hops: int = 1) -> str:
    """The client address a trusted proxy reported in `header`: the `hops`-th entry from the right (1: the
    one the last proxy appended; each proxy appends the address it was connected from, so entries further
    left may be anything the client sent). With fewer entries than `hops`, the leftmost, which a trusted
    proxy still added. No header, or an entry that is not an address: `peer` (the proxy itself)."""
    value = req.header(header)
    if not value:
        return peer
    entries = value.split(",")
    return _address(entries[max(0, len(entries) - max(1, hops))]) or peer
