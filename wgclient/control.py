"""The control socket's protocol (`wgc status`, `wgc ping`), without I/O: request/response lines, the status
schema check, choosing a peer from what the user typed, and the text the two commands print.

Protocol (docs/control.md): one JSON object per line, UTF-8, at most MAX_LINE bytes. Requests are
``{"cmd": "status"}``, ``{"cmd": "ping", "key": "<base64>", "timeout": 5}`` and ``{"cmd": "derpmap"}``; the
daemon answers ``{"ok": true, "status": {...}}``, ``{"ok": true, "pong": {...} | null}``,
``{"ok": true, "derpmap": {...}, "source": {...}}`` or ``{"ok": false, "error": "..."}``.
Every parser here raises only ParseError on garbage; a user's mistake (unknown or ambiguous peer) is a
UsageError. The module reads no clock: times to render ("12s ago") are computed from a `now` passed in.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
from typing import Any, Union

from .errors import ParseError, UsageError
from .keys import KEY_LEN_BASE64, key_from_base64, key_to_base64

MAX_LINE = 64 * 1024            # a request or an error line; status replies may be larger (MAX_REPLY)
MAX_REPLY = 16 * 1024 * 1024    # a status of a few thousand peers stays far below this
DEFAULT_PING_TIMEOUT = 5.0
MAX_PING_TIMEOUT = 60.0
PATHS = ("direct", "relay", "lapsing", "none", "relay-node")

JSON = Any


@dataclasses.dataclass(frozen=True)
class StatusRequest:
    def encode(self) -> bytes:
        return b'{"cmd": "status"}\n'


@dataclasses.dataclass(frozen=True)
class PingRequest:
    key: bytes
    timeout: float = DEFAULT_PING_TIMEOUT

    def encode(self) -> bytes:
        return _line({"cmd": "ping", "key": key_to_base64(self.key), "timeout": self.timeout})


@dataclasses.dataclass(frozen=True)
class DerpMapRequest:
    """The DERP map the interface uses now (`wgc derpmap show`)."""

    def encode(self) -> bytes:
        return b'{"cmd": "derpmap"}\n'


Request = Union[StatusRequest, PingRequest, DerpMapRequest]


def _line(obj: JSON) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode() + b"\n"


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _loads(data: bytes, limit: int) -> JSON:
    if len(data) > limit:
        raise ParseError(f"line longer than {limit} bytes")
    try:
        text = bytes(data).decode("utf-8")
        return json.loads(text, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ParseError(f"not a JSON line: {type(e).__name__}") from None


def _integer(v: JSON) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and -(1 << 63) <= v < (1 << 63)


def _number(v: JSON) -> bool:
    return _integer(v) or (isinstance(v, float) and math.isfinite(v))


def parse_request(data: bytes) -> Request:
    """One request line (trailing newline optional) -> StatusRequest or PingRequest; else ParseError."""
    obj = _loads(data, MAX_LINE)
    if not isinstance(obj, dict):
        raise ParseError("a request is a JSON object")
    cmd = obj.get("cmd")
    if cmd == "status":
        return StatusRequest()
    if cmd == "derpmap":
        return DerpMapRequest()
    if cmd == "ping":
        key = obj.get("key")
        if not isinstance(key, str):
            raise ParseError("ping needs \"key\": the peer's base64 public key")
        key_bytes = key_from_base64(key)
        timeout = obj.get("timeout", DEFAULT_PING_TIMEOUT)
        if not _number(timeout) or not 0 < timeout <= MAX_PING_TIMEOUT:
            raise ParseError(f"ping \"timeout\" is a number of seconds in (0, {MAX_PING_TIMEOUT:g}]")
        return PingRequest(key_bytes, float(timeout))
    raise ParseError("unknown \"cmd\" (status, ping or derpmap)" if isinstance(cmd, str) else "a request needs \"cmd\"")


# --- responses ----------------------------------------------------------------------------------------


def encode_status(status: dict) -> bytes:
    return _line({"ok": True, "status": status})


def encode_pong(pong: dict | None) -> bytes:
    return _line({"ok": True, "pong": pong})


def encode_derpmap(derpmap: dict, source: dict | None) -> bytes:
    return _line({"ok": True, "derpmap": derpmap, "source": source})


def encode_error(message: str) -> bytes:
    return _line({"ok": False, "error": message[:4096]})


def parse_reply(data: bytes) -> dict:
    """A daemon's reply line -> its payload object; {"ok": false} becomes a UsageError with its text."""
    obj = _loads(data, MAX_REPLY)
    if not isinstance(obj, dict) or not isinstance(obj.get("ok"), bool):
        raise ParseError("a reply is a JSON object with \"ok\"")
    if not obj["ok"]:
        err = obj.get("error")
        if not isinstance(err, str):
            raise ParseError("an error reply needs \"error\"")
        raise UsageError(err)
    return obj


def parse_status_reply(data: bytes) -> dict:
    obj = parse_reply(data)
    if "status" not in obj:
        raise ParseError("a status reply needs \"status\"")
    return check_status(obj["status"])


def parse_derpmap_reply(data: bytes) -> dict:
    """{"derpmap": <the map's JSON object>, "source": <where it came from> | None}."""
    obj = parse_reply(data)
    if not isinstance(obj.get("derpmap"), dict) or not isinstance(obj.get("source"), (dict, type(None))):
        raise ParseError("a derpmap reply needs \"derpmap\" (an object) and \"source\"")
    return obj


def parse_pong_reply(data: bytes) -> dict | None:
    obj = parse_reply(data)
    if "pong" not in obj:
        raise ParseError("a ping reply needs \"pong\"")
    return check_pong(obj["pong"])


# --- schema checks (the daemon's JSON is checked before it is rendered) ---------------------------------

_STR, _OSTR, _NUM, _ONUM, _INT, _OINT, _BOOL, _OBOOL = "s", "s?", "n", "n?", "i", "i?", "b", "b?"
_CHECKS = {
    "s": lambda v: isinstance(v, str), "n": _number, "i": _integer, "b": lambda v: isinstance(v, bool),
}


def _fields(obj: JSON, spec: dict[str, str], where: str) -> dict:
    if not isinstance(obj, dict):
        raise ParseError(f"{where} is not an object")
    for key, kind in spec.items():
        if key not in obj:
            raise ParseError(f"{where} lacks {key!r}")
        value = obj[key]
        if kind.endswith("?") and value is None:
            continue
        if not _CHECKS[kind[0]](value):
            raise ParseError(f"{where}.{key} has the wrong type")
    return obj


_REGION = {"id": _INT, "code": _OSTR}
_NETCHECK = {"udp": _BOOL, "ipv4": _OSTR, "ipv6": _OSTR, "mapping_varies_by_dest_ip": _OBOOL,
             "preferred_region": _OINT, "at": _ONUM}
_REGION_ROW = {"id": _INT, "code": _OSTR, "connected": _BOOL, "home": _BOOL, "transport": _OSTR}
_PEER = {"public_key": _STR, "short": _STR, "name": _OSTR, "path": _STR, "direct": _OSTR,
         "latency_ms": _ONUM, "last_handshake": _ONUM, "rx_bytes": _INT, "tx_bytes": _INT, "why": _STR}
_STATUS = {"interface": _STR, "public_key": _OSTR, "listen_port": _OINT}
_NODE = {"name": _STR, "short": _STR}            # a peer's relay node (docs/relaynode.md)
_FORWARD = {"from": _STR, "to": _STR, "packets": _INT, "bytes": _INT}   # what a relay node forwarded


def _list(obj: JSON, where: str) -> list:
    if not isinstance(obj, list):
        raise ParseError(f"{where} is not a list")
    return obj


def check_status(obj: JSON) -> dict:
    """Check a status snapshot against the schema in docs/control.md; return it, or raise ParseError."""
    _fields(obj, _STATUS, "status")
    for key in ("home_region", "netcheck", "regions", "peers"):
        if key not in obj:
            raise ParseError(f"status lacks {key!r}")
    if obj["home_region"] is not None:
        _fields(obj["home_region"], _REGION, "home_region")
    nc = obj["netcheck"]
    if nc is not None:
        _fields(nc, _NETCHECK, "netcheck")
        lat = nc.get("latency_ms")
        if not isinstance(lat, dict) or not all(_number(v) for v in lat.values()):
            raise ParseError("netcheck.latency_ms is not an object of numbers")
    for i, r in enumerate(_list(obj["regions"], "regions")):
        _fields(r, _REGION_ROW, f"regions[{i}]")
    for i, p in enumerate(_list(obj["peers"], "peers")):
        where = f"peers[{i}]"
        _fields(p, _PEER, where)
        if len(p["public_key"]) != KEY_LEN_BASE64:
            raise ParseError(f"{where}.public_key is not a base64 key")
        key_from_base64(p["public_key"])
        for net in _list(p.get("allowed_ips"), f"{where}.allowed_ips"):
            if not isinstance(net, str):
                raise ParseError(f"{where}.allowed_ips holds a non-string")
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ParseError(f"{where}.allowed_ips holds {net[:60]!r}") from None
        if "relay" not in p:
            raise ParseError(f"{where} lacks 'relay'")
        if p["relay"] is not None:
            _fields(p["relay"], _REGION, f"{where}.relay")
            if not isinstance(p["relay"].get("transport"), (str, type(None))):
                raise ParseError(f"{where}.relay.transport has the wrong type")
        if p["rx_bytes"] < 0 or p["tx_bytes"] < 0:
            raise ParseError(f"{where} has negative byte counts")
        if p.get("relay_node") is not None:
            _fields(p["relay_node"], _NODE, f"{where}.relay_node")
        if not isinstance(p.get("reason", ""), str):
            raise ParseError(f"{where}.reason has the wrong type")
    for i, f in enumerate(_list(obj.get("forwarding", []), "forwarding")):
        _fields(f, _FORWARD, f"forwarding[{i}]")
        if f["packets"] < 0 or f["bytes"] < 0:
            raise ParseError(f"forwarding[{i}] has negative counts")
    _check_load(obj)
    return obj


def _check_load(obj: dict) -> None:
    """The optional load fields: under_load, under_load_episodes, drops ({reason: count})."""
    if not isinstance(obj.get("under_load", False), bool):
        raise ParseError("status.under_load has the wrong type")
    episodes, drops = obj.get("under_load_episodes", 0), obj.get("drops", {})
    if not (_integer(episodes) and episodes >= 0):
        raise ParseError("status.under_load_episodes has the wrong type")
    if not isinstance(drops, dict) or not all(_integer(v) and v >= 0 for v in drops.values()):
        raise ParseError("status.drops is not an object of counts")


_PONG = {"latency": _NUM, "via": _STR, "addr": _OSTR, "region": _OINT, "region_code": _OSTR}
PONG_VIAS = ("direct", "derp", "relay-node")


def check_pong(obj: JSON) -> dict | None:
    if obj is None:
        return None
    _fields(obj, _PONG, "pong")
    if obj["via"] not in PONG_VIAS:
        raise ParseError("pong.via is direct, derp or relay-node")
    if obj["via"] == "relay-node" and not isinstance(obj.get("relay_node"), str):
        raise ParseError("a pong via relay-node names it in \"relay_node\"")
    if obj["latency"] < 0:
        raise ParseError("pong.latency is negative")
    return obj


# --- choosing a peer ------------------------------------------------------------------------------------


class NoSuchPeer(UsageError):
    """What the user typed names no peer (as opposed to naming several)."""


def _label(p: dict) -> str:
    return f"{p['name']} ({p['short']})" if p.get("name") else p["short"]


def _pick(found: list[dict], text: str, how: str) -> dict:
    if len(found) == 1:
        return found[0]
    names = ", ".join(sorted(_label(p) for p in found))
    raise UsageError(f"{text!r} matches {len(found)} peers by {how}: {names}; be more specific")


def select_peer(peers: list[dict], text: str) -> dict:
    """The peer the user meant by `text`, tried in this order: a whole base64 key; a name (exact, then
    ignoring case); a tunnel IP (longest AllowedIPs prefix holding it, as routing chooses); a unique
    prefix of the base64 key. No match or several is a UsageError naming the candidates."""
    text = text.strip()
    if not text:
        raise UsageError("name a peer: its name, a tunnel IP or the start of its public key")
    for found, how in ((lambda: [p for p in peers if p["public_key"] == text], "key"),
                       (lambda: [p for p in peers if p.get("name") == text], "name"),
                       (lambda: [p for p in peers if p.get("name") and p["name"].casefold() == text.casefold()],
                        "name")):
        matches = found()
        if matches:
            return _pick(matches, text, how)
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        ip = None
    if ip is not None:
        best, best_len = [], -1
        for p in peers:
            lengths = [net.prefixlen for net in map(_network, p["allowed_ips"]) if ip in net]
            if lengths and max(lengths) >= best_len:
                if max(lengths) > best_len:
                    best, best_len = [], max(lengths)
                best.append(p)
        if best:
            return _pick(best, text, "tunnel IP")
        raise NoSuchPeer(f"no peer has {text} in its AllowedIPs")
    matches = [p for p in peers if p["public_key"].startswith(text)]
    if matches:
        return _pick(matches, text, "key prefix")
    known = ", ".join(sorted(_label(p) for p in peers)[:20]) or "none"
    raise NoSuchPeer(f"no peer matches {text!r} by name, tunnel IP or key prefix (peers: {known})")


def select_interface_peer(statuses: dict[str, dict], text: str, name_one: str) -> tuple[str, dict]:
    """(interface, peer) for what the user typed when several interfaces run and none was named: the one
    interface that has such a peer. Several that have it, or one where it is ambiguous, is a UsageError
    naming them (`name_one` tells how to pick an interface, e.g. "-i NAME"); none is a NoSuchPeer."""
    if len(statuses) == 1:
        (name, status), = statuses.items()
        return name, select_peer(status["peers"], text)
    found: dict[str, dict] = {}
    ambiguous: dict[str, UsageError] = {}
    for name in sorted(statuses):
        try:
            found[name] = select_peer(statuses[name]["peers"], text)
        except NoSuchPeer:
            continue
        except UsageError as e:
            if not text.strip():
                raise
            ambiguous[name] = e
    having = sorted(set(found) | set(ambiguous))
    if len(having) > 1:
        which = ", ".join(f"{n}: {_label(printable(found[n]))}" if n in found else f"{n}: several" for n in having)
        raise UsageError(f"{text.strip()!r} is a peer on {len(having)} interfaces ({which}); name one with {name_one}")
    if ambiguous:
        name, error = next(iter(ambiguous.items()))
        raise UsageError(f"on interface {name}: {error}")
    if found:
        return next(iter(found.items()))
    raise NoSuchPeer(f"no peer matches {text.strip()!r} on the running interfaces ({', '.join(sorted(statuses))})")


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text, strict=False)


def tunnel_ip(peer: dict) -> str | None:
    """The address `ping` shows for a peer: its first host route (/32, /128), else its first AllowedIP."""
    nets = [_network(n) for n in peer["allowed_ips"]]
    for net in nets:
        if net.num_addresses == 1:
            return str(net.network_address)
    return str(nets[0].network_address) if nets else None


# --- text output ----------------------------------------------------------------------------------------


def printable(obj: JSON) -> JSON:
    """A copy of obj whose strings hold no control or line-breaking characters (shown as \\xNN escapes),
    so a name or reason text can neither move the terminal's cursor nor split a table row."""
    if isinstance(obj, str):
        return obj if obj.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in obj)
    if isinstance(obj, dict):
        return {printable(k): printable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [printable(v) for v in obj]
    return obj


def format_ms(ms: float) -> str:
    """12ms, 3ms, 0.4ms, <0.1ms: whole milliseconds from 1 ms up, one decimal below."""
    if ms < 0.05:
        return "<0.1ms"
    return f"{ms:.1f}ms" if ms < 0.95 else f"{round(ms)}ms"


def format_ago(then: float | None, now: float) -> str:
    if then is None:
        return "never"
    s = max(0, int(now - then))
    if s < 120:
        return f"{s}s ago"
    if s < 7200:
        return f"{s // 60}m ago"
    if s < 2 * 86400:
        return f"{s // 3600}h ago"
    return f"{s // 86400}d ago"


def human_bytes(n: int) -> str:
    """Bytes in binary units as `wg show` writes them: 512 B, 1.50 KiB, 3.20 MiB."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.2f} {unit}"


def format_path(peer: dict) -> str:
    relay = peer.get("relay")
    code = f'"{relay["code"] or relay["id"]}"' if relay else None
    path = peer["path"]
    if path == "relay-node" and peer.get("relay_node"):
        return f"relay-node {peer['relay_node']['name']}"
    if path == "direct" and peer["direct"]:
        return f"direct {peer['direct']}"
    if path == "relay":
        return f"relay {code}" if code else "relay (region not known yet)"
    if path == "lapsing":
        return f"direct {peer['direct']} (lapsing" + (f", also relay {code})" if code else ")")
    return "none" if path in ("none", "direct") else path


# How a DERP region is reached, in words: the status's "transport" names the DERP client's dial mode, and
# wgc always dials DERP nodes over TLS (derp.aio.targets), so "upgrade" is DERP's HTTP Upgrade inside TLS;
# "quic" is DERP over QUIC (docs/derp-quic.md), TLS 1.3 inside QUIC.
TRANSPORT_WORDS = {"quic": "QUIC", "upgrade": "TLS", "websocket": "WebSocket (TLS)"}


def transport_words(transport: str) -> str:
    return TRANSPORT_WORDS.get(transport, transport)


def _yes_no(v: bool | None) -> str:
    return "unknown" if v is None else ("yes" if v else "no")


def format_header(status: dict, now: float) -> list[str]:
    lines = [f"interface {status['interface']}: public key {status['public_key'] or '(none)'}, "
             f"UDP port {status['listen_port'] if status['listen_port'] is not None else '-'}"]
    home = status["home_region"]
    if home is None:
        lines.append("home region: none (no DERP map: wgc up --derpmap)" if not status["regions"]
                     else "home region: none yet")
    else:
        row = next((r for r in status["regions"] if r["id"] == home["id"]), None)
        how = ("connected" + (f" over {transport_words(row['transport'])}" if row["transport"] else "")
               if row and row["connected"] else "not connected")
        lines.append(f'home region: "{home["code"] or home["id"]}" ({home["id"]}), {how}')
    others = [f'"{r["code"] or r["id"]}"' + (f" over {transport_words(r['transport'])}"
                                             if r["connected"] and r["transport"] else "")
              for r in status["regions"] if not r["home"]]
    if others:
        lines.append("other regions: " + ", ".join(others))
    nc = status["netcheck"]
    if nc is not None:
        lat = nc["latency_ms"]
        nearest = "none reachable"
        if lat:
            code, ms = min(lat.items(), key=lambda kv: kv[1])
            nearest = f'"{code}" {format_ms(ms)}'
        when = f" ({format_ago(nc['at'], now)})" if nc["at"] is not None else ""
        lines.append(f"netcheck{when}: UDP {_yes_no(nc['udp'])}, "
                     f"IPv4 {nc['ipv4'] or 'no'}, IPv6 {nc['ipv6'] or 'no'}")
        lines.append(f"  NAT maps ports per destination: {_yes_no(nc['mapping_varies_by_dest_ip'])}; "
                     f"nearest region: {nearest}")
    return lines + format_load(status)


def format_load(status: dict) -> list[str]:
    """The handshake-load line (only once the device has been under load) and the drop counters."""
    lines = []
    episodes = status.get("under_load_episodes", 0)
    if status.get("under_load") or episodes:
        state = "under load now (cookies demanded, handshakes limited per source)" if status.get("under_load") \
            else "normal"
        lines.append(f"handshake load: {state}; {episodes} episode{'' if episodes == 1 else 's'} "
                     "under load since start")
    drops = status.get("drops") or {}
    if drops:
        lines.append("drops: " + ", ".join(f"{n} {reason}" for reason, n in drops.items()))
    return lines


PEER_COLUMNS = ("PEER", "ADDRESSES", "KEY", "PATH", "LATENCY", "HANDSHAKE", "RX", "TX")


def peer_row(p: dict, now: float) -> tuple[str, ...]:
    return (p.get("name") or "-", ",".join(p["allowed_ips"]) or "-", p["short"], format_path(p),
            format_ms(p["latency_ms"]) if p["latency_ms"] is not None else "-",
            format_ago(p["last_handshake"], now), human_bytes(p["rx_bytes"]), human_bytes(p["tx_bytes"]))


def format_status(status: dict, now: float) -> str:
    """The text `wgc status` prints: the node's header lines, then an aligned table of peers."""
    status = printable(status)
    lines = format_header(status, now)
    rows = [PEER_COLUMNS] + [peer_row(p, now) for p in status["peers"]]
    if len(rows) == 1:
        return "\n".join(lines + ["", "no peers"]) + "\n"
    widths = [max(len(r[i]) for r in rows) for i in range(len(PEER_COLUMNS))]
    lines.append("")
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines + format_relay_lines(status)) + "\n"


def format_relay_lines(status: dict) -> list[str]:
    """After the table: each peer reached through a relay node with the reason, and on a relay node what
    it forwarded per pair (docs/relaynode.md)."""
    lines = []
    relayed = [p for p in status["peers"] if p["path"] == "relay-node" and p.get("relay_node")]
    if relayed:
        lines.append("")
        lines += [f"{_label(p)}: relay-node {p['relay_node']['name']}: {p.get('reason') or '-'}" for p in relayed]
    forwarding = status.get("forwarding")
    if forwarding is not None:
        lines += ["", f"forwarding (relay node): {len(forwarding)} pair{'' if len(forwarding) == 1 else 's'}"]
        lines += [f"  {f['from']} -> {f['to']}: {f['packets']} packets, {human_bytes(f['bytes'])}" for f in forwarding]
    return lines


def format_why(peer: dict) -> str:
    """Two lines: the peer's path (with the transport its relay is reached over, when relayed), the reason."""
    peer = printable(peer)
    relay = peer.get("relay") or {}
    over = f" over {transport_words(relay['transport'])}" if relay.get("transport") and \
        peer["path"] in ("relay", "lapsing") else ""
    return f"{_label(peer)}: {format_path(peer)}{over}\n{peer['why']}\n"


def peer_title(peer: dict) -> str:
    """`laptop (100.64.0.2)`: what a ping line calls the peer (its short key when it has no name)."""
    ip = tunnel_ip(peer)
    who = peer.get("name") or peer["short"]
    return f"{who} ({ip})" if ip else who


def format_pong(peer: dict, pong: dict) -> str:
    peer, pong = printable(peer), printable(pong)
    if pong["via"] == "direct":
        via = pong["addr"] or "direct"
    elif pong["via"] == "relay-node":
        via = f"relay-node {pong['relay_node']}"
    else:
        via = f"DERP({pong['region_code'] or pong['region'] or '?'})"
    return f"pong from {peer_title(peer)} via {via} in {format_ms(pong['latency'] * 1e3)}"


def format_timeout(peer: dict, timeout: float) -> str:
    peer = printable(peer)
    return f"timeout waiting for pong from {peer_title(peer)} ({timeout:g}s)"
