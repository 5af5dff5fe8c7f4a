"""Who may use the relay, beyond the allowed-keys file: the pure decisions and wire formats of admission.

The checks a client passes, in this order (the server core's `Relay.admit`, then the adapter):
  1. a client holding the mesh key is admitted at once (none of the rest applies to mesh peers);
  2. `--allowed-keys-file`: its key is in the file;
  3. `-verify-clients`: its key is the local `wgc up` interface's own or one of its peers (the adapter
     polls the interface's control socket and replaces the set; `keys_from_status` reads a reply);
  4. `-verify-client-url`: the admission webhook says `{"Allow": true}` (Tailscale's
     DERPAdmitClientRequest/Response: POST `{"NodePublic": "nodekey:<hex>", "Source": "<ip>"}`); answers
     are kept in a `VerdictCache`; an unreachable webhook admits (`-verify-client-url-fail-open`, the
     default) or refuses; any other failure refuses;
  5. `--bindings-file` (TOFU): the client's identity is bound to the first key seen for it; a later
     different key for that identity is refused (`Bindings`);
  6. `--max-clients`.
Every refusal is counted by reason (`derp_admission_refused_total{reason}`).
"""
from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Callable

from derp.constants import KEY_LEN, MAX_PACKET_SIZE
from derp.errors import ParseError

MAX_BINDINGS = 100_000
MAX_IDENTITY = 256
MAX_WEBHOOK_BODY = 4 << 10
MIN_RATE_BURST = MAX_PACKET_SIZE + KEY_LEN   # a client's bucket holds at least one whole SendPacket


# ---- TOFU bindings ---------------------------------------------------------------------------------------

def identity_of(mode: str, header: Callable[[str], str], ip: str) -> str | None:
    """The identity a TOFU binding is kept for: `ip` -> "ip:<address>"; `header:NAME` -> the header's
    value (None when absent or empty: such a client is not bound)."""
    if mode == "ip":
        return "ip:" + ip if ip else None
    value = header(mode[len("header:"):]).strip()
    return value[:MAX_IDENTITY] or None


def check_identity_mode(mode: str) -> str:
    if mode == "ip" or (mode.startswith("header:") and len(mode) > len("header:")):
        return mode
    raise ParseError(f"identity must be 'ip' or 'header:NAME', not {mode!r}")


class Bindings:
    """identity -> (key, since: UNIX seconds). `check` binds a new identity, accepts its bound key and
    refuses any other; `dirty` says the table changed since the last `encode`. At most `max_entries`
    identities are bound; beyond that new identities are admitted unbound (and counted), so a flood of
    identities cannot lock legitimate newcomers out for good."""

    NEW, SAME, CONFLICT, FULL = "new", "same", "conflict", "full"

    def __init__(self, entries: dict[str, tuple[bytes, int]] | None = None, max_entries: int = MAX_BINDINGS) -> None:
        self.entries: dict[str, tuple[bytes, int]] = dict(entries or {})
        self.max_entries = max_entries
        self.dirty = False

    def check(self, identity: str, key: bytes, wall_now: float) -> str:
        bound = self.entries.get(identity)
        if bound is not None:
            return self.SAME if bound[0] == key else self.CONFLICT
        if len(self.entries) >= self.max_entries:
            return self.FULL
        self.entries[identity] = (key, int(wall_now))
        self.dirty = True
        return self.NEW

    def encode(self) -> bytes:
        self.dirty = False
        body = {ident: {"key": base64.b64encode(k).decode(), "since": since}
                for ident, (k, since) in sorted(self.entries.items())}
        return json.dumps({"version": 1, "bindings": body}, indent=1).encode() + b"\n"


def parse_bindings(data: bytes) -> dict[str, tuple[bytes, int]]:
    """A bindings file (what `Bindings.encode` writes) -> entries; ParseError naming what is wrong."""
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ParseError("not a JSON bindings file") from None
    if not isinstance(obj, dict) or obj.get("version") != 1 or not isinstance(obj.get("bindings"), dict):
        raise ParseError('not a bindings file: want {"version": 1, "bindings": {...}}')
    out: dict[str, tuple[bytes, int]] = {}
    for ident, entry in obj["bindings"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
            raise ParseError(f"binding {ident[:60]!r}: want {{\"key\": \"<base64>\", \"since\": <seconds>}}")
        key = _b64_key(entry["key"], f"binding {ident[:60]!r}")
        since = entry.get("since", 0)
        if not isinstance(since, int) or isinstance(since, bool):
            raise ParseError(f"binding {ident[:60]!r}: since is not an integer")
        out[ident[:MAX_IDENTITY]] = (key, since)
    return out


def _b64_key(text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_LEN:
        raise ParseError(f"{where}: not a base64 key of 32 bytes")
    return key


# ---- the admission webhook (-verify-client-url) -------------------------------------------------------------

@dataclass(frozen=True)
class Verdict:
    allow: bool
    reason: str = ""        # why it refused (for the log)
    counter: str = ""       # refused_total reason


def encode_admit_request(key: bytes, ip: str) -> bytes:
    """Tailscale's tailcfg.DERPAdmitClientRequest as JSON."""
    return json.dumps({"NodePublic": "nodekey:" + key.hex(), "Source": ip}).encode()


def parse_admit_response(body: bytes) -> bool:
    """A DERPAdmitClientResponse body -> Allow. Like Go's decoder: the first JSON value must be an object;
    field names match case-insensitively; a missing Allow is false; an Allow that is not a boolean, or a
    body that is not JSON, is a ParseError."""
    try:
        text = body[:MAX_WEBHOOK_BODY].decode("utf-8").lstrip()
        obj, _ = json.JSONDecoder().raw_decode(text)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ParseError("the admission controller's answer is not JSON") from None
    if not isinstance(obj, dict):
        raise ParseError("the admission controller's answer is not a JSON object")
    allow = next((v for k, v in obj.items() if k.lower() == "allow"), False)
    if not isinstance(allow, bool):
        raise ParseError("the admission controller's Allow is not true or false")
    return allow


class VerdictCache:
    """Webhook answers per (key, source IP) for `ttl` seconds (0: no cache), at most `max_entries`."""

    def __init__(self, ttl: float, max_entries: int = 100_000) -> None:
        self.ttl, self.max_entries = ttl, max_entries
        self.entries: dict[tuple[bytes, str], tuple[float, bool]] = {}
        self.hits = 0

    def get(self, key: bytes, ip: str, now: float) -> bool | None:
        entry = self.entries.get((key, ip))
        if entry is None:
            return None
        if now >= entry[0]:
            del self.entries[(key, ip)]
            return None
        self.hits += 1
        return entry[1]

    def put(self, key: bytes, ip: str, allow: bool, now: float) -> None:
        if self.ttl <= 0:
            return
        if len(self.entries) >= self.max_entries:
            self.prune(now)
            while len(self.entries) >= self.max_entries:
                del self.entries[next(iter(self.entries))]   # the oldest
        self.entries.pop((key, ip), None)
        self.entries[(key, ip)] = (now + self.ttl, allow)

    def prune(self, now: float) -> None:
        for k in [k for k, (until, _) in self.entries.items() if now >= until]:
            del self.entries[k]


# ---- -verify-clients: the local interface's keys ------------------------------------------------------------

def keys_from_status(line: bytes) -> frozenset[bytes]:
    """A `wgc up` control socket's status reply (docs/control.md) -> the interface's own key and its
    peers' keys. ParseError for anything else, including an error reply."""
    try:
        obj: Any = json.loads(bytes(line).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ParseError("the control socket's reply is not a JSON line") from None
    if not isinstance(obj, dict) or obj.get("ok") is not True or not isinstance(obj.get("status"), dict):
        error = obj.get("error") if isinstance(obj, dict) else None
        raise ParseError(f"the interface answered an error: {str(error)[:200]}" if isinstance(error, str)
                         else "the control socket's reply has no status")
    status = obj["status"]
    keys = set()
    if isinstance(status.get("public_key"), str):
        keys.add(_b64_key(status["public_key"], "status.public_key"))
    peers = status.get("peers")
    if not isinstance(peers, list):
        raise ParseError("status.peers is not a list")
    for i, peer in enumerate(peers):
        if not isinstance(peer, dict) or not isinstance(peer.get("public_key"), str):
            raise ParseError(f"status.peers[{i}] has no public_key")
        keys.add(_b64_key(peer["public_key"], f"status.peers[{i}].public_key"))
    return frozenset(keys)


# ---- the per-client byte rate (-rate-config) ----------------------------------------------------------------

def parse_rate_config(data: bytes) -> tuple[int, int]:
    """derper's -rate-config JSON -> (bytes/s, burst bytes): {"PerClientRateLimitBytesPerSec": N,
    "PerClientRateBurstBytes": M}; both optional (0: no limit). ParseError for anything else."""
    try:
        obj = json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ParseError("not JSON") from None
    if not isinstance(obj, dict):
        raise ParseError("not a JSON object")
    values = []
    for name in ("PerClientRateLimitBytesPerSec", "PerClientRateBurstBytes"):
        value = next((v for k, v in obj.items() if k.lower() == name.lower()), 0)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 63:
            raise ParseError(f"{name} is not a byte count")
        values.append(value)
    return values[0], values[1]


def effective_rate(rate: int, burst: int) -> tuple[int, int]:
    """As derper: no rate means no limit; a burst below one whole SendPacket is raised to it."""
    if rate <= 0:
        return 0, 0
    return rate, max(burst, MIN_RATE_BURST)
