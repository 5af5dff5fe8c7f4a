"""`SaveConfig` and `wgc save`/`wgc strip`: a config file's text rewritten from the running interface, and the
part of it that `wg setconf` accepts. Pure (text in, text out).

wg-quick's `save` replaces the whole [Interface] with what it reads back and every peer with
`wg showconf`, losing comments. `save_text` edits the file instead, line by line, so comments, blank
lines, key spelling and wgc's own keys (`Name`, `DerpRegion`, `# Name =`) stay where they were:

* [Interface]: PrivateKey, ListenPort (written even when the file had none, as wg-quick does), FwMark
  (not when it is the mark wgc chose itself for a full tunnel), Address (the interface's addresses now)
  and MTU (only when the file sets one, as wg-quick) are updated in place when they differ; DNS, Table,
  hooks and SaveConfig are kept as written.
* peers still running keep their section, with AllowedIPs, PresharedKey, PersistentKeepalive and
  Endpoint updated when they differ; an Endpoint given as a host name is kept (never replaced by the
  address it resolved or roamed to), and none is removed while the peer has no address (relayed);
* peers removed with `wg set ... remove` lose their section; peers added with `wg set` are appended.

`strip_text` is `wg-quick strip`: the lines with wg-quick's and wgc's own keys removed, each line trimmed,
comments kept, output byte for byte as wg-quick prints it.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv6Interface

from . import keys
from .config import format_endpoint, parse_config
from .uapi import DeviceState, PeerState

Interface = IPv4Interface | IPv6Interface

# [Interface] keys that wg-quick handles itself (and `strip` drops); wgc's own [Peer] keys.
WG_QUICK_KEYS = {"address", "mtu", "dns", "table", "preup", "postup", "predown", "postdown", "saveconfig"}
WGC_PEER_KEYS = {"name", "derpregion"}
_CANONICAL = {k.lower(): k for k in ("PrivateKey", "ListenPort", "FwMark", "Address", "MTU", "PublicKey",
                                     "PresharedKey", "AllowedIPs", "Endpoint", "PersistentKeepalive")}


@dataclass(frozen=True)
class Running:
    """What the interface looks like now: its UAPI state, addresses and MTU."""

    device: DeviceState
    addresses: tuple[Interface, ...] = ()
    mtu: int | None = None
    auto_fwmark: int = 0          # the mark wgc picked for a full tunnel: not the user's, not saved


@dataclass
class _Line:
    text: str
    key: str | None = None        # lower-case key of a `Key = Value` line, None for others


@dataclass
class _Section:
    kind: str                     # "", "interface" or "peer"
    lines: list[_Line] = field(default_factory=list)


def _key_of(raw: str) -> str | None:
    line = raw.split("#", 1)[0]
    if "=" not in line or line.strip().startswith("["):
        return None
    return "".join(line.split("=", 1)[0].split()).lower()


def _sections(text: str) -> list[_Section]:
    out = [_Section("")]
    for raw in text.splitlines():
        head = "".join(raw.split("#", 1)[0].split()).lower()
        if head in ("[interface]", "[peer]"):
            out.append(_Section(head[1:-1]))
        out[-1].lines.append(_Line(raw, _key_of(raw)))
    return out


def strip_text(text: str) -> str:
    """`wg-quick strip`: what `wg setconf` reads (wg-quick's and wgc's own keys removed)."""
    out = []
    for sec in _sections(text):
        drop = WG_QUICK_KEYS if sec.kind == "interface" else WGC_PEER_KEYS if sec.kind == "peer" else set()
        out += [ln.text.strip(" \t") for ln in sec.lines if ln.key not in drop]
    return "".join(line + "\n" for line in out) + "\n"


def _set(sec: _Section, key: str, value: str | None, *, after: tuple[str, ...] = ()) -> None:
    """Make `key` appear once with `value` (at its first line, else after the last of `after`, else at the
    section's end); None removes it."""
    idx = [i for i, ln in enumerate(sec.lines) if ln.key == key]
    new = None if value is None else _Line(f"{_CANONICAL[key]} = {value}", key)
    if idx:
        for i in reversed(idx[1:]):
            del sec.lines[i]
        if new is None:
            del sec.lines[idx[0]]
        else:
            sec.lines[idx[0]] = new
        return
    if new is None:
        return
    anchors = [i for i, ln in enumerate(sec.lines) if ln.key in after]
    if anchors:
        pos = anchors[-1] + 1
    else:  # before the trailing blank lines of the section
        pos = len(sec.lines)
        while pos > 1 and not sec.lines[pos - 1].text.strip():
            pos -= 1
    sec.lines.insert(pos, new)


def _peer_lines(p: PeerState) -> list[_Line]:
    sec = _Section("peer", [_Line("[Peer]")])
    _update_peer(sec, None, p)
    return sec.lines


def _update_peer(sec: _Section, old, p: PeerState) -> None:
    if old is None:
        _set(sec, "publickey", keys.key_to_base64(p.public_key))
    if (old.preshared_key if old else None) != p.preshared_key:
        _set(sec, "presharedkey", keys.key_to_base64(p.preshared_key) if p.preshared_key else None,
             after=("publickey",))
    if old is None or set(old.allowed_ips) != set(p.allowed_ips):
        _set(sec, "allowedips", ", ".join(str(n) for n in p.allowed_ips) or None,
             after=("publickey", "presharedkey"))
    if p.endpoint is not None and (old is None or _endpoint_changed(old, p.endpoint)):
        _set(sec, "endpoint", format_endpoint(*p.endpoint), after=("publickey", "presharedkey", "allowedips"))
    if (old.persistent_keepalive if old else 0) != p.persistent_keepalive:
        _set(sec, "persistentkeepalive", str(p.persistent_keepalive) if p.persistent_keepalive else None)


def _endpoint_changed(old, endpoint: tuple[str, int]) -> bool:
    if old.endpoint is None:
        return True
    try:  # a host name in the file stays (our resolver below leaves it unresolved)
        ipaddress.ip_address(old.endpoint[0])
    except ValueError:
        return False
    return (ipaddress.ip_address(old.endpoint[0]), old.endpoint[1]) != \
        (ipaddress.ip_address(endpoint[0]), endpoint[1])


def save_text(text: str, path: str, running: Running) -> str:
    """The file's text with the running state written into it (see the module docstring)."""
    cfg = parse_config(text, path, resolve=lambda host, port: (host, port))
    sections = _sections(text)
    iface = next(s for s in sections if s.kind == "interface")
    dev = running.device
    after = ("privatekey",)
    if dev.private_key is not None and dev.private_key != cfg.private_key:
        _set(iface, "privatekey", keys.key_to_base64(dev.private_key))
    if dev.listen_port and dev.listen_port != cfg.listen_port:
        _set(iface, "listenport", str(dev.listen_port), after=after)
    if dev.fwmark != cfg.fwmark and not (running.auto_fwmark and dev.fwmark == running.auto_fwmark):
        _set(iface, "fwmark", f"{dev.fwmark:#x}" if dev.fwmark else None, after=after + ("listenport",))
    if set(running.addresses) != set(cfg.addresses):
        _set(iface, "address", ", ".join(str(a) for a in running.addresses) or None, after=after)
    if cfg.mtu is not None and running.mtu is not None and running.mtu != cfg.mtu:
        _set(iface, "mtu", str(running.mtu))
    old_peers = {p.public_key: p for p in cfg.peers}
    running_peers = {p.public_key: p for p in dev.peers}
    kept: list[_Section] = []
    for sec in sections:
        if sec.kind != "peer":
            kept.append(sec)
            continue
        pub = next((keys.key_from_base64("".join(ln.text.split("#", 1)[0].split("=", 1)[1].split()))
                    for ln in sec.lines if ln.key == "publickey"), None)
        if pub in running_peers:
            _update_peer(sec, old_peers[pub], running_peers[pub])
            kept.append(sec)
    for p in dev.peers:
        if p.public_key not in old_peers:
            last = kept[-1].lines
            if last and last[-1].text.strip():
                last.append(_Line(""))
            kept.append(_Section("peer", _peer_lines(p)))
    out = "\n".join(ln.text for sec in kept for ln in sec.lines)
    return out + "\n" if out and (text.endswith("\n") or not text) else out
