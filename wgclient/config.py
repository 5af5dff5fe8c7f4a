"""wg-quick style configuration files: parse them into frozen dataclasses, and format them back.

The grammar is the union of what `wg setconf` (wireguard-tools config.c) and wg-quick accept:

* ``[Interface]`` (once) and ``[Peer]`` (any number) sections; section names and keys are matched
  case-insensitively; ``#`` starts a comment; blank lines are ignored.
* ``[Interface]``: PrivateKey (required), Address, ListenPort, MTU (unset: derived at `up` from the route
  to the endpoints, as wg-quick), FwMark, Table, DNS, PreUp/PostUp/PreDown/PostDown (repeatable),
  SaveConfig (``true``/``false``).
* ``[Peer]``: PublicKey (required), PresharedKey, AllowedIPs (repeatable, comma separated),
  Endpoint (``host:port``, ``[v6]:port``), PersistentKeepalive (seconds or ``off``). A comment line
  ``# Name = text`` (or the wgc key ``Name = text``) inside a peer section names that peer (logs,
  `wgc status`, `wgc ping NAME`). The wgc key ``DerpRegion = <region id or code>`` hints in which DERP
  region the peer is connected (used with ``wgc up --derpmap``; checked against the map at start).
* Values of the `wg` keys may contain whitespace anywhere (`wg` removes it); wg-quick keys are trimmed.
  AllowedIPs host bits are masked, as the kernel and wireguard-go do; a bare address means /32 or /128.

`find_config(NAME)` looks a bare interface name up as wg-quick does (`/etc/wireguard/NAME.conf`, then
`/etc/wgc/NAME.conf`; `WGC_CONFIG_DIRS` replaces that list). Every problem raises `ConfigError` naming
the file, the 1-based line and the key. Host names in
Endpoint are resolved through an injected `resolve(host, port) -> (ip, port)` callable (this module does
no network I/O); without one a host name is an error.
"""
from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network
from typing import Callable

from wgclient import keys
from wgclient.errors import ConfigError, ParseError

Resolver = Callable[[str, int], tuple[str, int]]
Network = IPv4Network | IPv6Network
Interface = IPv4Interface | IPv6Interface

DEFAULT_MTU = 1420
CONFIG_DIRS = ("/etc/wireguard", "/etc/wgc")
_NAME_RE = re.compile(r"[A-Za-z0-9_=+.-]{1,15}")
_PEER_NAME_RE = re.compile(r"^\s*#\s*name\s*[=:]\s*(.*?)\s*$", re.IGNORECASE)

# Canonical spelling of every key, by lower-case name.
_INTERFACE_KEYS = {k.lower(): k for k in (
    "PrivateKey", "Address", "ListenPort", "MTU", "FwMark", "Table", "DNS",
    "PreUp", "PostUp", "PreDown", "PostDown", "SaveConfig")}
_PEER_KEYS = {k.lower(): k for k in (
    "PublicKey", "PresharedKey", "AllowedIPs", "Endpoint", "PersistentKeepalive", "Name", "DerpRegion")}
_REGION_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_REPEATABLE = {"Address", "DNS", "PreUp", "PostUp", "PreDown", "PostDown", "AllowedIPs"}
_WG_QUICK_TEXT = {"PreUp", "PostUp", "PreDown", "PostDown", "Name"}


@dataclass(frozen=True)
class PeerConfig:
    public_key: bytes
    preshared_key: bytes | None = field(default=None, repr=False)
    allowed_ips: tuple[Network, ...] = ()
    endpoint: tuple[str, int] | None = None
    endpoint_text: str | None = None
    persistent_keepalive: int = 0
    name: str | None = None
    derp_region: str | None = None   # a region id (digits) or code; resolved against the DERP map
    line: int = field(default=0, compare=False)  # of the [Peer] header; metadata, not compared
    derp_region_line: int = field(default=0, compare=False)

    def __repr__(self) -> str:  # public key as base64, PSK never shown
        psk = "<hidden>" if self.preshared_key else None
        return (f"PeerConfig(public_key={keys.key_to_base64(self.public_key)!r}, preshared_key={psk}, "
                f"allowed_ips={[str(n) for n in self.allowed_ips]}, endpoint={self.endpoint!r}, "
                f"persistent_keepalive={self.persistent_keepalive}, name={self.name!r}, "
                f"derp_region={self.derp_region!r}, line={self.line})")


@dataclass(frozen=True)
class InterfaceConfig:
    name: str
    path: str
    private_key: bytes = field(repr=False)
    addresses: tuple[Interface, ...] = ()
    listen_port: int | None = None
    mtu: int | None = None                 # None: chosen at `up` (route MTU to the endpoints minus 80)
    fwmark: int = 0
    table: str = "auto"
    save_config: bool = False
    pre_up: tuple[str, ...] = ()
    post_up: tuple[str, ...] = ()
    pre_down: tuple[str, ...] = ()
    post_down: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()
    peers: tuple[PeerConfig, ...] = ()

    def __repr__(self) -> str:  # never the private key
        return (f"InterfaceConfig(name={self.name!r}, path={self.path!r}, private_key=<hidden>, "
                f"addresses={[str(a) for a in self.addresses]}, listen_port={self.listen_port}, "
                f"mtu={self.mtu}, fwmark={self.fwmark}, table={self.table!r}, dns={list(self.dns)}, "
                f"peers={list(self.peers)!r})")

    @property
    def public_key(self) -> bytes:
        return keys.public_key(self.private_key)


def valid_interface_name(name: str) -> bool:
    """wg-quick's rule for interface names: 1-15 characters of A-Z a-z 0-9 _ = + . -"""
    return bool(_NAME_RE.fullmatch(name))


def interface_name_from_path(path: str) -> str:
    """The interface name wg-quick derives from a config path (the file stem), validated."""
    base = os.path.basename(path)
    stem = base[:-5] if base.endswith(".conf") else base.rsplit(".", 1)[0] if "." in base[1:] else base
    if not _NAME_RE.fullmatch(stem):
        raise ConfigError(path, None, None, f"interface name {stem!r} (from the file name) must be 1-15 "
                          "characters of A-Z a-z 0-9 _ = + . -")
    return stem


def config_dirs() -> tuple[str, ...]:
    """Where a bare interface name is looked up, in order (wg-quick: /etc/wireguard only)."""
    env = os.environ.get("WGC_CONFIG_DIRS")
    return tuple(d for d in env.split(":") if d) if env else CONFIG_DIRS


def find_config(arg: str) -> str:
    """The config file `wgc up/down/save/strip ARG` means: ARG itself when it is a path (it has a '/' or
    ends in .conf), else NAME.conf in the first of `config_dirs()` that has it (ConfigError if none)."""
    if "/" in arg or arg.endswith(".conf") or not _NAME_RE.fullmatch(arg):
        return arg
    tried = [os.path.join(d, f"{arg}.conf") for d in config_dirs()]
    for path in tried:
        if os.path.exists(path):
            return path
    where = f"{tried[0]} does not exist" if len(tried) == 1 else f"neither {' nor '.join(tried)} exists"
    raise ConfigError(arg, None, None, f"no such interface config: {where}")


def load_config(path: str, *, resolve: Resolver | None = None) -> InterfaceConfig:
    """Read and parse a config file; unreadable files raise ConfigError too."""
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
    except OSError as e:
        raise ConfigError(path, None, None, f"cannot read: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(path, None, None, "not UTF-8 text") from None
    return parse_config(text, path, resolve=resolve)


def parse_config(text: str, path: str, *, resolve: Resolver | None = None) -> InterfaceConfig:
    """Parse the text of a config file; `path` gives the interface name and the error messages."""
    return _Parser(path, resolve).parse(text)


class _Section:
    def __init__(self, kind: str, line: int) -> None:
        self.kind = kind
        self.line = line
        self.values: dict[str, list[tuple[int, str]]] = {}
        self.name: str | None = None


class _Parser:
    def __init__(self, path: str, resolve: Resolver | None) -> None:
        self.path = path
        self.resolve = resolve

    def error(self, line: int | None, key: str | None, message: str) -> ConfigError:
        return ConfigError(self.path, line, key, message)

    def parse(self, text: str) -> InterfaceConfig:
        name = interface_name_from_path(self.path)
        sections = self.split(text)
        interfaces = [s for s in sections if s.kind == "Interface"]
        if not interfaces:
            raise self.error(None, None, "no [Interface] section")
        if len(interfaces) > 1:
            raise self.error(interfaces[1].line, None, "a second [Interface] section")
        iface = self.interface(name, interfaces[0])
        own = keys.public_key(iface.private_key)
        peers: list[PeerConfig] = []
        seen: dict[bytes, int] = {}
        for s in sections:
            if s.kind != "Peer":
                continue
            peer = self.peer(s)
            if peer.public_key in seen:
                raise self.error(self.first(s, "PublicKey")[0], "PublicKey",
                                 f"duplicate peer (first at line {seen[peer.public_key]})")
            if peer.public_key == own:
                raise self.error(self.first(s, "PublicKey")[0], "PublicKey", "this is the interface's own public key")
            seen[peer.public_key] = s.line
            peers.append(peer)
        return replace(iface, peers=tuple(peers))

    def split(self, text: str) -> list[_Section]:
        sections: list[_Section] = []
        current: _Section | None = None
        for lineno, raw in enumerate(text.splitlines(), 1):
            m = _PEER_NAME_RE.match(raw)
            if m and current is not None and current.kind == "Peer":
                current.name = m.group(1) or None
                continue
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            if line.startswith("["):
                kind = {"[interface]": "Interface", "[peer]": "Peer"}.get("".join(line.split()).lower())
                if kind is None:
                    raise self.error(lineno, None, f"unknown section {line!r}")
                current = _Section(kind, lineno)
                sections.append(current)
                continue
            if "=" not in line:
                raise self.error(lineno, None, f"expected 'Key = Value', got {line!r}")
            key_text, value = line.split("=", 1)
            key_text = "".join(key_text.split())
            if current is None:
                raise self.error(lineno, key_text, "outside of an [Interface] or [Peer] section")
            table = _INTERFACE_KEYS if current.kind == "Interface" else _PEER_KEYS
            key = table.get(key_text.lower())
            if key is None:
                raise self.error(lineno, key_text, f"unknown key in [{current.kind}]")
            if key in current.values and key not in _REPEATABLE:
                raise self.error(lineno, key, f"given twice (first at line {current.values[key][0][0]})")
            value = value.strip() if key in _WG_QUICK_TEXT else "".join(value.split())
            current.values.setdefault(key, []).append((lineno, value))
        return sections

    @staticmethod
    def first(s: _Section, key: str) -> tuple[int, str]:
        return s.values[key][0]

    def items(self, s: _Section, key: str) -> list[tuple[int, str]]:
        """Comma-separated values of a repeatable key, each with its line; empty items are skipped."""
        return [(ln, item) for ln, v in s.values.get(key, []) for item in v.split(",") if item]

    def interface(self, name: str, s: _Section) -> InterfaceConfig:
        if "PrivateKey" not in s.values:
            raise self.error(s.line, "PrivateKey", "missing in [Interface]")
        ln, v = self.first(s, "PrivateKey")
        private_key = self.key(ln, "PrivateKey", v)
        addresses: list[Interface] = []
        for ln, item in self.items(s, "Address"):
            try:
                addr = ipaddress.ip_interface(item)
            except ValueError:
                raise self.error(ln, "Address", f"{item!r} is not an IP address with an optional /prefix") from None
            if addr not in addresses:
                addresses.append(addr)
        listen_port = None
        if "ListenPort" in s.values:
            ln, v = self.first(s, "ListenPort")
            listen_port = self.number(ln, "ListenPort", v, 0, 65535)
        mtu = None
        if "MTU" in s.values:
            ln, v = self.first(s, "MTU")
            mtu = self.number(ln, "MTU", v, 576, 65535)
            if mtu < 1280 and any(a.version == 6 for a in addresses):
                raise self.error(ln, "MTU", "must be at least 1280 with an IPv6 address")
        fwmark = 0
        if "FwMark" in s.values:
            ln, v = self.first(s, "FwMark")
            fwmark = 0 if v.lower() == "off" else self.number(ln, "FwMark", v, 0, 0xFFFFFFFF, base=0)
        table = "auto"
        if "Table" in s.values:
            ln, table = self.first(s, "Table")
            if table.lower() in ("off", "auto", "main"):
                table = table.lower()
            elif not table.isdigit() or not 0 < int(table) < 1 << 32:
                raise self.error(ln, "Table", "must be off, auto, main or a table number")
        save_config = False
        if "SaveConfig" in s.values:
            ln, v = self.first(s, "SaveConfig")
            if v.lower() not in ("true", "false"):
                raise self.error(ln, "SaveConfig", f"{v!r} is neither true nor false")
            save_config = v.lower() == "true"
        return InterfaceConfig(
            name=name, path=self.path, private_key=private_key, addresses=tuple(addresses),
            listen_port=listen_port, mtu=mtu, fwmark=fwmark, table=table, save_config=save_config,
            pre_up=self.texts(s, "PreUp"), post_up=self.texts(s, "PostUp"),
            pre_down=self.texts(s, "PreDown"), post_down=self.texts(s, "PostDown"),
            dns=tuple(item for _, item in self.items(s, "DNS")))

    @staticmethod
    def texts(s: _Section, key: str) -> tuple[str, ...]:
        return tuple(v for _, v in s.values.get(key, []))

    def peer(self, s: _Section) -> PeerConfig:
        if "PublicKey" not in s.values:
            raise self.error(s.line, "PublicKey", "missing in [Peer]")
        ln, v = self.first(s, "PublicKey")
        public_key = self.key(ln, "PublicKey", v)
        psk = None
        if "PresharedKey" in s.values:
            ln, v = self.first(s, "PresharedKey")
            psk = self.key(ln, "PresharedKey", v)
            psk = None if keys.is_zero(psk) else psk
        allowed: list[Network] = []
        for ln, item in self.items(s, "AllowedIPs"):
            net = self.network(ln, item)
            if net not in allowed:
                allowed.append(net)
        endpoint = endpoint_text = None
        if "Endpoint" in s.values:
            ln, endpoint_text = self.first(s, "Endpoint")
            endpoint = self.endpoint(ln, endpoint_text)
        keepalive = 0
        if "PersistentKeepalive" in s.values:
            ln, v = self.first(s, "PersistentKeepalive")
            keepalive = 0 if v.lower() == "off" else self.number(ln, "PersistentKeepalive", v, 0, 65535)
        name = s.name
        if "Name" in s.values:
            ln, name = self.first(s, "Name")
            name = name.strip() or None
        region = None
        region_line = 0
        if "DerpRegion" in s.values:
            region_line, region = self.first(s, "DerpRegion")
            region = region.strip()
            if not _REGION_RE.fullmatch(region):
                raise self.error(region_line, "DerpRegion", f"{region!r} is not a DERP region id or code")
        return PeerConfig(public_key=public_key, preshared_key=psk, allowed_ips=tuple(allowed),
                          endpoint=endpoint, endpoint_text=endpoint_text, persistent_keepalive=keepalive,
                          name=name, derp_region=region, line=s.line, derp_region_line=region_line)

    def key(self, ln: int, key: str, value: str) -> bytes:
        try:
            return keys.key_from_base64(value)
        except ParseError:
            raise self.error(ln, key, f"not a valid base64 key of {keys.KEY_LEN} bytes") from None

    def number(self, ln: int, key: str, value: str, lo: int, hi: int, base: int = 10) -> int:
        try:
            if base == 10 and not value.isdigit():
                raise ValueError
            n = int(value, base)
        except ValueError:
            raise self.error(ln, key, f"{value!r} is not a number") from None
        if not lo <= n <= hi:
            raise self.error(ln, key, f"{n} is out of range {lo}..{hi}")
        return n

    def network(self, ln: int, item: str) -> Network:
        try:
            addr, _, plen = item.partition("/")
            ip = ipaddress.ip_address(addr)
            if plen and not plen.isdigit():
                raise ValueError
            return ipaddress.ip_network(f"{ip}/{plen or ip.max_prefixlen}", strict=False)
        except ValueError:
            raise self.error(ln, "AllowedIPs", f"{item!r} is not a valid CIDR prefix") from None

    def endpoint(self, ln: int, text: str) -> tuple[str, int]:
        try:
            host, port_text = split_host_port(text)
        except ValueError as e:
            raise self.error(ln, "Endpoint", str(e)) from None
        port = self.number(ln, "Endpoint", port_text, 1, 65535)
        try:
            return str(ipaddress.ip_address(host)), port
        except ValueError:
            pass
        if self.resolve is None:
            raise self.error(ln, "Endpoint", f"host name {host!r} given but no resolver available")
        try:
            ip, rport = self.resolve(host, port)
        except OSError as e:
            raise self.error(ln, "Endpoint", f"cannot resolve {host!r}: {e.strerror or e}") from None
        return ip, rport


def split_host_port(text: str) -> tuple[str, str]:
    """Split ``host:port`` / ``[v6]:port`` the way `wg` does (the last colon separates the port)."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1:end + 2] != ":":
            raise ValueError(f"{text!r} is not [IPv6]:port")
        host, port = text[1:end], text[end + 2:]
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError(f"{text!r} is not host:port")
    if not host or not port:
        raise ValueError(f"{text!r} is not host:port")
    return host, port


def format_endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def format_config(cfg: InterfaceConfig) -> str:
    """The config as wg-quick text; `parse_config(format_config(c), c.path)` gives back `c`."""
    out = ["[Interface]", f"PrivateKey = {keys.key_to_base64(cfg.private_key)}"]
    if cfg.addresses:
        out.append("Address = " + ", ".join(str(a) for a in cfg.addresses))
    if cfg.listen_port is not None:
        out.append(f"ListenPort = {cfg.listen_port}")
    if cfg.mtu is not None:
        out.append(f"MTU = {cfg.mtu}")
    if cfg.fwmark:
        out.append(f"FwMark = {cfg.fwmark:#x}")
    if cfg.table != "auto":
        out.append(f"Table = {cfg.table}")
    if cfg.dns:
        out.append("DNS = " + ", ".join(cfg.dns))
    if cfg.save_config:
        out.append("SaveConfig = true")
    for key, cmds in (("PreUp", cfg.pre_up), ("PostUp", cfg.post_up), ("PreDown", cfg.pre_down),
                      ("PostDown", cfg.post_down)):
        out.extend(f"{key} = {c}" for c in cmds)
    for p in cfg.peers:
        out += ["", "[Peer]"]
        if p.name:
            out.append(f"# Name = {p.name}")
        out.append(f"PublicKey = {keys.key_to_base64(p.public_key)}")
        if p.preshared_key:
            out.append(f"PresharedKey = {keys.key_to_base64(p.preshared_key)}")
        if p.allowed_ips:
            out.append("AllowedIPs = " + ", ".join(str(n) for n in p.allowed_ips))
        if p.endpoint:
            out.append("Endpoint = " + (p.endpoint_text or format_endpoint(*p.endpoint)))
        if p.persistent_keepalive:
            out.append(f"PersistentKeepalive = {p.persistent_keepalive}")
        if p.derp_region:
            out.append(f"DerpRegion = {p.derp_region}")
    return "\n".join(out) + "\n"
