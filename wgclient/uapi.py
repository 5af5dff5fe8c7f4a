"""The cross-platform WireGuard configuration protocol (UAPI, protocol/wireguard.md §11), sans-I/O.

One `UapiConnection` per client connection turns request bytes into reply bytes, applying `set=1`
lines to a `UapiTarget` (the device adapter) and rendering `get=1` from its `DeviceState`. Behaviour
follows wireguard-go's device/uapi.go:

* A connection carries requests in sequence; an unknown request line closes it without a reply;
  `get=1` must be followed immediately by an empty line (else errno EINVAL, then close).
* `set=1` lines are applied in order as they arrive; the first error stops applying, the rest of
  the request up to its empty line is read and ignored, and the reply is ``errno=-N``.
* Device keys (private_key, listen_port, fwmark, replace_peers) are only valid before the first
  public_key. A public_key equal to the device's own is accepted but its lines have no effect (a
  "dummy" peer), as are the lines after `remove=true` or after `update_only=true` undid a creation.
  Values are still validated for dummy peers.
* Errors: unparsable line EPROTO, bad value or unknown key EINVAL, listen port or fwmark the target
  could not apply (OSError) EADDRINUSE, anything else the target raised -55; all sent negative.
"""
from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from typing import Protocol

from wgclient import keys
from wgclient.errors import ParseError

log = logging.getLogger(__name__)

Network = IPv4Network | IPv6Network

# Linux errno values, sent negated as wireguard-go does (protocol/wireguard.md §11.4).
EIO = 5
EPROTO = 71
EINVAL = 22
EADDRINUSE = 98
EUNKNOWN = 55
MAX_LINE = 4096  # longer request lines close the connection (real ones are < 100 bytes)
_DIGITS = re.compile(r"[0-9]{1,20}")


@dataclass
class PeerState:
    public_key: bytes
    preshared_key: bytes | None = field(default=None, repr=False)
    endpoint: tuple[str, int] | None = None
    last_handshake_ns: int = 0  # Unix time in nanoseconds, 0 = never
    tx_bytes: int = 0
    rx_bytes: int = 0
    persistent_keepalive: int = 0
    allowed_ips: list[Network] = field(default_factory=list)


@dataclass
class DeviceState:
    private_key: bytes | None = field(default=None, repr=False)
    listen_port: int = 0
    fwmark: int = 0
    peers: list[PeerState] = field(default_factory=list)


class UapiTarget(Protocol):
    def uapi_get(self) -> DeviceState: ...
    def uapi_set_private_key(self, key: bytes | None) -> None: ...
    def uapi_set_listen_port(self, port: int) -> None: ...
    def uapi_set_fwmark(self, mark: int) -> None: ...
    def uapi_remove_all_peers(self) -> None: ...
    def uapi_has_peer(self, public_key: bytes) -> bool: ...
    def uapi_add_peer(self, public_key: bytes) -> None: ...
    def uapi_remove_peer(self, public_key: bytes) -> None: ...
    def uapi_set_preshared_key(self, public_key: bytes, psk: bytes | None) -> None: ...
    def uapi_set_endpoint(self, public_key: bytes, host: str, port: int) -> None: ...
    def uapi_set_persistent_keepalive(self, public_key: bytes, seconds: int) -> None: ...
    def uapi_clear_allowed_ips(self, public_key: bytes) -> None: ...
    def uapi_add_allowed_ip(self, public_key: bytes, network: Network) -> None: ...
    def uapi_remove_allowed_ip(self, public_key: bytes, network: Network) -> None: ...


class UapiError(Exception):
    """A set line failed; `errno` is the positive Linux errno (sent negated)."""

    def __init__(self, errno: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno


# ---- value parsing (each raises UapiError(EINVAL) on a bad value) ----

def parse_number(value: str, bits: int) -> int:
    if not _DIGITS.fullmatch(value) or int(value) >= 1 << bits:
        raise UapiError(EINVAL, f"not a {bits}-bit number: {value!r}")
    return int(value)


def parse_hex_key(value: str) -> bytes:
    try:
        return keys.key_from_hex(value)
    except ParseError as e:
        raise UapiError(EINVAL, str(e)) from None


def parse_true(value: str) -> None:
    if value != "true":
        raise UapiError(EINVAL, f"expected 'true', got {value!r}")


def parse_endpoint(value: str) -> tuple[str, int]:
    """`ip:port` or `[ipv6]:port`, numeric only (netip.ParseAddrPort); returns (ip text, port)."""
    host, sep, port = value.rpartition(":")
    if not sep:
        raise UapiError(EINVAL, f"endpoint without port: {value!r}")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise UapiError(EINVAL, f"endpoint is not a numeric address: {value!r}") from None
    if bracketed != (ip.version == 6):
        raise UapiError(EINVAL, f"IPv6 endpoints need brackets, IPv4 must not have them: {value!r}")
    return str(ip), parse_number(port, 16)


def parse_prefix(value: str) -> Network:
    """`ip/bits` (bits required, host bits allowed and masked, as netip.ParsePrefix + Insert)."""
    addr, sep, bits = value.partition("/")
    try:
        ip = ipaddress.ip_address(addr)
        if not sep or not _DIGITS.fullmatch(bits) or int(bits) > ip.max_prefixlen or "%" in addr:
            raise ValueError
        return ipaddress.ip_network(f"{ip}/{int(bits)}", strict=False)
    except ValueError:
        raise UapiError(EINVAL, f"not an ip/bits prefix: {value!r}") from None


def format_endpoint(endpoint: tuple[str, int]) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def format_get(state: DeviceState) -> bytes:
    """The body of a get reply, ending with ``errno=0`` and the empty line."""
    out: list[str] = []
    if state.private_key is not None:
        out.append(f"private_key={state.private_key.hex()}")
    if state.listen_port:
        out.append(f"listen_port={state.listen_port}")
    if state.fwmark:
        out.append(f"fwmark={state.fwmark}")
    for p in state.peers:
        out.append(f"public_key={p.public_key.hex()}")
        out.append(f"preshared_key={(p.preshared_key or bytes(32)).hex()}")
        out.append("protocol_version=1")
        if p.endpoint is not None:
            out.append(f"endpoint={format_endpoint(p.endpoint)}")
        sec, nsec = divmod(p.last_handshake_ns, 1_000_000_000)
        out.append(f"last_handshake_time_sec={sec}")
        out.append(f"last_handshake_time_nsec={nsec}")
        out.append(f"tx_bytes={p.tx_bytes}")
        out.append(f"rx_bytes={p.rx_bytes}")
        out.append(f"persistent_keepalive_interval={p.persistent_keepalive}")
        out.extend(f"allowed_ip={n}" for n in p.allowed_ips)
    out.append("errno=0")
    return ("\n".join(out) + "\n\n").encode("ascii")


class SetOperation:
    """The state of one `set=1` request: applies lines to the target until the first error."""

    def __init__(self, target: UapiTarget) -> None:
        self.target = target
        self.device_keys = True
        self.peer: bytes | None = None   # the selected peer's public key
        self.dummy = False               # lines for the selected peer have no effect
        self.created = False             # the selected peer was created by its public_key line
        self._own: bytes | None = None
        self._own_known = False

    def own_public_key(self) -> bytes | None:
        if not self._own_known:
            priv = self.target.uapi_get().private_key
            self._own = None if priv is None else keys.public_key(priv)
            self._own_known = True
        return self._own

    def apply(self, line: str) -> None:
        key, sep, value = line.partition("=")
        if not sep:
            raise UapiError(EPROTO, "failed to parse a line without '='")
        if key == "public_key":
            self.select_peer(parse_hex_key(value))
        elif self.device_keys:
            self.device_line(key, value)
        else:
            self.peer_line(key, value)

    def device_line(self, key: str, value: str) -> None:
        t = self.target
        if key == "private_key":
            k = parse_hex_key(value)
            t.uapi_set_private_key(None if keys.is_zero(k) else k)
            self._own_known = False
        elif key == "listen_port":
            port = parse_number(value, 16)
            try:
                t.uapi_set_listen_port(port)
            except OSError as e:
                raise UapiError(EADDRINUSE, f"failed to set listen_port: {e}") from None
        elif key == "fwmark":
            mark = parse_number(value, 32)
            try:
                t.uapi_set_fwmark(mark)
            except OSError as e:
                raise UapiError(EADDRINUSE, f"failed to update fwmark: {e}") from None
        elif key == "replace_peers":
            parse_true(value)
            t.uapi_remove_all_peers()
        else:
            raise UapiError(EINVAL, f"invalid UAPI device key: {key!r}")

    def select_peer(self, public_key: bytes) -> None:
        self.device_keys = False
        self.peer = public_key
        self.dummy = public_key == self.own_public_key()
        self.created = False
        if not self.dummy and not self.target.uapi_has_peer(public_key):
            self.target.uapi_add_peer(public_key)
            self.created = True

    def peer_line(self, key: str, value: str) -> None:
        t, pk = self.target, self.peer
        assert pk is not None
        if key == "update_only":
            parse_true(value)
            if self.created and not self.dummy:
                t.uapi_remove_peer(pk)
                self.dummy = True
        elif key == "remove":
            parse_true(value)
            if not self.dummy:
                t.uapi_remove_peer(pk)
            self.dummy = True
        elif key == "preshared_key":
            psk = parse_hex_key(value)
            if not self.dummy:
                t.uapi_set_preshared_key(pk, None if keys.is_zero(psk) else psk)
        elif key == "endpoint":
            host, port = parse_endpoint(value)
            if not self.dummy:
                t.uapi_set_endpoint(pk, host, port)
        elif key == "persistent_keepalive_interval":
            seconds = parse_number(value, 16)
            if not self.dummy:
                t.uapi_set_persistent_keepalive(pk, seconds)
        elif key == "replace_allowed_ips":
            parse_true(value)
            if not self.dummy:
                t.uapi_clear_allowed_ips(pk)
        elif key == "allowed_ip":
            remove = value.startswith("-")
            net = parse_prefix(value[1:] if remove else value)
            if not self.dummy:
                (t.uapi_remove_allowed_ip if remove else t.uapi_add_allowed_ip)(pk, net)
        elif key == "protocol_version":
            if value != "1":
                raise UapiError(EINVAL, f"invalid protocol version: {value!r}")
        else:
            raise UapiError(EINVAL, f"invalid UAPI peer key: {key!r}")


class UapiConnection:
    """Sans-I/O state of one client connection: `feed(bytes) -> (reply bytes, close?)`."""

    def __init__(self, target: UapiTarget) -> None:
        self.target = target
        self.buffer = bytearray()
        self.closed = False
        self.op: SetOperation | None = None   # inside a set request
        self.failed: UapiError | None = None  # set request stopped at this error
        self.awaiting_get_newline = False

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        if self.closed:
            return b"", True
        self.buffer += data
        reply = bytearray()
        while not self.closed:
            if self.awaiting_get_newline:
                if not self.buffer:
                    break
                self.awaiting_get_newline = False
                if self.buffer[0] != 0x0A:
                    reply += b"errno=-%d\n\n" % EINVAL
                    self.closed = True
                    break
                del self.buffer[0]
                reply += self._get()
                continue
            end = self.buffer.find(b"\n")
            if end < 0:
                if len(self.buffer) > MAX_LINE:
                    self.closed = True
                break
            line = bytes(self.buffer[:end]).decode("latin-1")
            del self.buffer[:end + 1]
            reply += self._line(line)
        return bytes(reply), self.closed

    def _line(self, line: str) -> bytes:
        if self.op is None:
            if line == "get=1":
                self.awaiting_get_newline = True
            elif line == "set=1":
                self.op, self.failed = SetOperation(self.target), None
            else:
                self.closed = True
            return b""
        if line.endswith("\r"):
            line = line[:-1]
        if line == "":
            self.op = None
            if self.failed is None:
                return b"errno=0\n\n"
            log.info("uapi set failed: %s", self.failed)
            return b"errno=-%d\n\n" % self.failed.errno
        if self.failed is None:
            try:
                self.op.apply(line)
            except UapiError as e:
                self.failed = e
            except Exception as e:  # a bug in the target must not kill the connection's owner
                log.exception("uapi target failed on a set line")
                self.failed = UapiError(EUNKNOWN, f"other UAPI error: {e}")
        return b""

    def _get(self) -> bytes:
        try:
            return format_get(self.target.uapi_get())
        except Exception:
            log.exception("uapi target failed on get")
            return b"errno=-%d\n\n" % EUNKNOWN


def parse_get(text: str) -> DeviceState:
    """A get reply (what `format_get` or wireguard-go sends) read back; ParseError on garbage or errno != 0."""
    state = DeviceState()
    peer: PeerState | None = None
    errno = None
    try:
        for line in text.splitlines():
            if not line:
                continue
            key, sep, value = line.partition("=")
            if not sep:
                raise ParseError(f"UAPI reply line without '=': {line[:40]!r}")
            if key == "errno":
                errno = int(value)
            elif key == "public_key":
                peer = PeerState(public_key=keys.key_from_hex(value))
                state.peers.append(peer)
            elif peer is None:
                if key == "private_key":
                    state.private_key = keys.key_from_hex(value)
                elif key == "listen_port":
                    state.listen_port = int(value)
                elif key == "fwmark":
                    state.fwmark = int(value)
            elif key == "preshared_key":
                psk = keys.key_from_hex(value)
                peer.preshared_key = None if keys.is_zero(psk) else psk
            elif key == "endpoint":
                peer.endpoint = parse_endpoint(value)
            elif key == "persistent_keepalive_interval":
                peer.persistent_keepalive = int(value)
            elif key == "allowed_ip":
                peer.allowed_ips.append(parse_prefix(value))
            elif key == "last_handshake_time_sec":
                peer.last_handshake_ns += int(value) * 1_000_000_000
            elif key == "last_handshake_time_nsec":
                peer.last_handshake_ns += int(value)
            elif key in ("tx_bytes", "rx_bytes"):
                setattr(peer, key, int(value))
    except (ValueError, UapiError) as e:
        raise ParseError(f"bad UAPI reply: {e}") from None
    if errno != 0:
        raise ParseError(f"UAPI get failed (errno={errno})")
    return state
