"""The NAT lab: an "internet" of network namespaces with relay regions (each with its own delay) and
clients behind routers whose NAT type is chosen per client.

    with NatLab(regions=[RegionSpec(delay_ms=20), RegionSpec(delay_ms=60)],
                clients=[ClientSpec(nat="cone"), ClientSpec(nat="symmetric")]) as lab:
        lab.run("client1", "ping", "-c1", lab.region_ip(1))

Topology (all addresses exist only inside the lab's namespaces; nothing is routed to the host):
- `inet`: the core router. Region i hangs off it on 198.18.i.0/24 + 2001:db8:18:i::/64 (node .2 / ::2;
  .3 is a second address for servers that want two, like RFC 3489 STUN servers).
  Every packet to or from region i passes through a TUN device served by `tools.natlab.delayer`, which
  holds it for half the region's `delay_ms`, so `delay_ms` is added to every round trip (netem is not
  available on this kernel; the delayer works wherever /dev/net/tun does), and drops `loss_pct` % of
  the packets each way (seeded by the lab's `seed`: a run repeats). `set_delay`/`set_loss` change them
  while the lab runs; `link_counts(i)` reads the delayer's counters (offered, dropped, sent, queued).
- client k: public link 198.19.k.0/24 (+ 2001:db8:19:k::/64); the public address is 198.19.k.2.
  nat "none": the client holds it itself. "cone" (endpoint-independent mapping: masquerade, ports kept;
  filtering is Linux conntrack's address-and-port-dependent one, i.e. a port-restricted cone, so hole
  punching needs packets from both sides), "symmetric" (address-and-port-dependent mapping: masquerade with
  random ports per connection) and
  "udp-blocked" (only TCP/ICMP forwarded, v4 and v6): a router `natk` holds it and the client sits on
  10.k.0.2/24 (+ 2001:db8:1:k::2/64, routed, not NATed). "cgnat": client 10.k.0.2 -> home router `natk`
  (100.64.k.2) -> carrier router `cgnatk` (198.19.k.2), both masquerading; IPv4 only.
Everything is torn down by `close()` (also on errors while building, and on Ctrl-C in a `with` block).
"""
from __future__ import annotations

import itertools
import json
import os
import pathlib
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace

from tools.natlab.netns import Lab, Namespace, link

ROOT = pathlib.Path(__file__).resolve().parents[2]
NAT_TYPES = ("none", "cone", "symmetric", "udp-blocked", "cgnat")
STATE_DIR = pathlib.Path(os.environ.get("NATLAB_STATE_DIR", "/run/natlab"))
_lab_counter = itertools.count()


class LabError(Exception):
    """The lab could not be built or used as asked."""


@dataclass(frozen=True)
class RegionSpec:
    delay_ms: float = 0.0       # added round-trip time
    region_id: int = 0          # 0: 900 + index
    code: str = ""
    name: str = ""
    loss_pct: float = 0.0       # chance (%) that a packet to or from the region is dropped, each direction

    def __post_init__(self) -> None:
        if not 0 <= self.loss_pct <= 100:
            raise LabError(f"loss must be 0-100 %, not {self.loss_pct!r}")
        if not 0 <= self.delay_ms <= 60_000:
            raise LabError(f"delay must be 0-60000 ms, not {self.delay_ms!r}")


@dataclass(frozen=True)
class ClientSpec:
    nat: str = "cone"

    def __post_init__(self) -> None:
        if self.nat not in NAT_TYPES:
            raise LabError(f"unknown NAT type {self.nat!r}; choose one of {', '.join(NAT_TYPES)}")


def _rules_nat(wan: str, random: bool) -> str:
    # Unsolicited UDP arriving at the router itself is dropped before its conntrack entry is confirmed,
    # as a home router's firewall does. Without this, a peer's early hole-punching packet leaves an entry
    # that makes masquerade pick another port for our own outgoing packet (simultaneous open fails).
    return ("table ip natlab {\n  chain postnat {\n    type nat hook postrouting priority srcnat; policy accept;\n"
            f'    oifname "{wan}" masquerade{" random" if random else ""}\n  }}\n'
            "  chain wanin {\n    type filter hook input priority filter; policy accept;\n"
            f'    iifname "{wan}" meta l4proto udp ct state new drop\n  }}\n}}\n')


RULES_BLOCK_UDP = ("table inet natlab_filter {\n  chain blockudp {\n"
                   "    type filter hook forward priority filter; policy accept;\n"
                   "    meta l4proto udp drop\n  }\n}\n")


@dataclass
class _State:
    name: str
    namespaces: dict[str, str]
    regions: list[dict]
    clients: list[dict]
    delay_config: str = ""
    delayer_pid: int = 0
    tmpdir: str = ""
    extra: dict = field(default_factory=dict)


class NatLab:
    """Build the lab (in the constructor) and tear it down with `close()` or a `with` block."""

    def __init__(self, regions: list[RegionSpec] = (), clients: list[ClientSpec] = (), *,
                 name: str | None = None, seed: int = 0) -> None:
        self.name = name or f"{os.getpid()}x{next(_lab_counter)}"
        self.seed = seed                # of the link-loss generators
        self.regions = list(regions)
        self.clients = list(clients)
        self.nodes: dict[str, Namespace] = {}
        self._lab = Lab()
        self._tmp = tempfile.mkdtemp(prefix=f"natlab-{self.name}-")
        self._delay_config = os.path.join(self._tmp, "delays.json")
        self._delayer: subprocess.Popen | None = None
        self._delayer_pid = 0
        self._attached = False
        previous = signal.getsignal(signal.SIGTERM)
        try:
            if threading_main():
                signal.signal(signal.SIGTERM, signal.default_int_handler)
            self._build()
        except BaseException:
            self.close()
            raise
        finally:
            if threading_main():
                signal.signal(signal.SIGTERM, previous)

    # -- addresses --------------------------------------------------------------------------------------
    def region_id(self, index: int) -> int:
        spec = self.regions[index - 1]
        return spec.region_id or 900 + index

    @staticmethod
    def region_ip(index: int, family: int = 4) -> str:
        return f"198.18.{index}.2" if family == 4 else f"2001:db8:18:{index}::2"

    @staticmethod
    def public_ip(client: int) -> str:
        return f"198.19.{client}.2"

    def client_ip(self, client: int, family: int = 4) -> str:
        nat = self.clients[client - 1].nat
        if family == 6:
            if nat == "cgnat":
                raise LabError("cgnat clients have no IPv6")
            return f"2001:db8:19:{client}::2" if nat == "none" else f"2001:db8:1:{client}::2"
        return self.public_ip(client) if nat == "none" else f"10.{client}.0.2"

    def gateway_ip(self, client: int) -> str:
        nat = self.clients[client - 1].nat
        return f"198.19.{client}.1" if nat == "none" else f"10.{client}.0.1"

    # -- running things ---------------------------------------------------------------------------------
    def ns(self, node: str) -> Namespace:
        try:
            return self.nodes[node]
        except KeyError:
            raise LabError(f"no lab node {node!r}; nodes are {', '.join(self.nodes)}") from None

    def argv(self, node: str, *cmd: str) -> list[str]:
        return self.ns(node).argv(*cmd)

    def run(self, node: str, *cmd: str, check: bool = True, timeout: float = 60, **kw
            ) -> subprocess.CompletedProcess:
        kw.setdefault("cwd", str(ROOT))
        return self.ns(node).run(*cmd, check=check, timeout=timeout, **kw)

    def popen(self, node: str, *cmd: str, **kw) -> subprocess.Popen:
        kw.setdefault("cwd", str(ROOT))
        return self.ns(node).popen(*cmd, **kw)

    def _check_region(self, index: int) -> None:
        if not 1 <= index <= len(self.regions):
            raise LabError(f"no region {index}; this lab has regions 1..{len(self.regions)}")

    def _link_entry(self, spec: RegionSpec) -> dict:
        return {"delay_ms": spec.delay_ms / 2, "loss_pct": spec.loss_pct, "seed": self.seed}

    def _impair(self, index: int, spec: RegionSpec) -> None:
        """Give region `index` the delay and loss of `spec` (the delayer re-reads its config on SIGHUP)."""
        with open(self._delay_config) as fh:
            links = json.load(fh)
        links[f"dly{index}"] = self._link_entry(spec)
        tmp = self._delay_config + ".new"
        with open(tmp, "w") as fh:
            json.dump(links, fh)
        os.replace(tmp, self._delay_config)
        os.kill(self._delayer_pid, signal.SIGHUP)
        self.regions[index - 1] = spec

    def set_delay(self, index: int, delay_ms: float) -> None:
        """Change region `index`'s added round-trip time while the lab runs."""
        self._check_region(index)
        self._impair(index, replace(self.regions[index - 1], delay_ms=delay_ms))

    def set_loss(self, index: int, loss_pct: float) -> None:
        """Drop `loss_pct` % of the packets to and from region `index` (each direction; 0: none) while the
        lab runs. The drops come from a generator seeded by the lab's `seed` and the region, so a run
        repeats."""
        self._check_region(index)
        self._impair(index, replace(self.regions[index - 1], loss_pct=loss_pct))

    def link_counts(self, index: int, timeout: float = 5.0) -> dict[str, int]:
        """Region `index`'s link counters from the delayer: packets offered, dropped, sent, queued (both
        directions together, since the lab started)."""
        self._check_region(index)
        path = self._delay_config + ".counts.json"

        def generation() -> int:
            try:
                with open(path) as fh:
                    return json.load(fh)["generation"]
            except (OSError, ValueError, KeyError):
                return 0
        before = generation()
        os.kill(self._delayer_pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while generation() <= before:
            if time.monotonic() > deadline:
                raise LabError(f"the delayer wrote no counters within {timeout} s")
            time.sleep(0.01)
        with open(path) as fh:
            return json.load(fh)["links"][f"dly{index}"]

    def derpmap(self, *, stun_port: int = 3478, derp_port: int = 443, can_port80: bool = False,
                ipv6: bool = True) -> dict:
        """A DERP map (Tailscale JSON) whose region i is lab region i."""
        regions = {}
        for i, spec in enumerate(self.regions, 1):
            rid = self.region_id(i)
            node = {"Name": f"{rid}a", "RegionID": rid, "HostName": self.region_ip(i),
                    "IPv4": self.region_ip(i), "IPv6": self.region_ip(i, 6) if ipv6 else "none",
                    "STUNPort": stun_port, "DERPPort": derp_port, "InsecureForTests": True}
            if can_port80:
                node["CanPort80"] = True
            regions[str(rid)] = {"RegionID": rid, "RegionCode": spec.code or f"r{i}",
                                 "RegionName": spec.name or f"Lab region {i}", "Nodes": [node]}
        return {"Regions": regions}

    # -- building ---------------------------------------------------------------------------------------
    def _node(self, node: str) -> Namespace:
        ns = self._lab.namespace(node, name=f"natlab-{self.name}-{node}")
        self.nodes[node] = ns
        # No duplicate address detection: IPv6 works the moment a link is up (addresses are unique here).
        ns.run("sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
        return ns

    @staticmethod
    def _routes(ns: Namespace, v4: str | None, v6: str | None) -> None:
        if v4:
            ns.run("ip", "route", "add", "default", "via", v4)
        if v6:
            ns.run("ip", "-6", "route", "add", "default", "via", v6)

    @staticmethod
    def _forwarding(ns: Namespace) -> None:
        ns.run("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
               "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0")

    def _build(self) -> None:
        inet = self._node("inet")
        self._forwarding(inet)
        region_ifs = []
        for i, _spec in enumerate(self.regions, 1):
            reg = self._node(f"region{i}")
            ifa, _ = link(inet, [f"198.18.{i}.1/24", f"2001:db8:18:{i}::1/64"],
                          reg, [f"198.18.{i}.2/24", f"198.18.{i}.3/24", f"2001:db8:18:{i}::2/64"])
            self._routes(reg, f"198.18.{i}.1", f"2001:db8:18:{i}::1")
            region_ifs.append(ifa)
        if self.regions:
            self._start_delayer(inet, region_ifs)
        for k, spec in enumerate(self.clients, 1):
            self._build_client(inet, k, spec.nat)

    def _start_delayer(self, inet: Namespace, region_ifs: list[str]) -> None:
        with open(self._delay_config, "w") as fh:
            json.dump({f"dly{i}": self._link_entry(spec) for i, spec in enumerate(self.regions, 1)}, fh)
        self._delayer = inet.popen(sys.executable, "-m", "tools.natlab.delayer", self._delay_config,
                                   cwd=str(ROOT), text=True)
        self._delayer_pid = self._delayer.pid
        ready, _, _ = select.select([self._delayer.stdout], [], [], 10)
        if not ready or self._delayer.stdout.readline().strip() != "ready":
            raise LabError(f"the delayer did not start: {self._delayer.stderr.read() if self._delayer.poll() is not None else 'timeout'}")
        for i, ifa in enumerate(region_ifs, 1):
            dev, table = f"dly{i}", str(100 + i)
            inet.run("ip", "link", "set", dev, "up")
            for fam, prefix in (("-4", f"198.18.{i}.0/24"), ("-6", f"2001:db8:18:{i}::/64")):
                inet.run("ip", fam, "rule", "add", "pref", "100", "iif", dev, "lookup", "main")
                inet.run("ip", fam, "rule", "add", "pref", "200", "to", prefix, "lookup", table)
                inet.run("ip", fam, "rule", "add", "pref", "200", "iif", ifa, "lookup", table)
                inet.run("ip", fam, "route", "add", "default", "dev", dev, "table", table)

    def _build_client(self, inet: Namespace, k: int, nat: str) -> None:
        inet_side = [f"198.19.{k}.1/24", f"2001:db8:19:{k}::1/64"]
        public = [f"198.19.{k}.2/24", f"2001:db8:19:{k}::2/64"]
        if nat == "none":
            client = self._node(f"client{k}")
            link(inet, inet_side, client, public)
            self._routes(client, f"198.19.{k}.1", f"2001:db8:19:{k}::1")
            return
        if nat == "cgnat":
            carrier = self._node(f"cgnat{k}")
            home = self._node(f"nat{k}")
            client = self._node(f"client{k}")
            _, carrier_wan = link(inet, inet_side[:1], carrier, public[:1])
            _, home_wan = link(carrier, [f"100.64.{k}.1/24"], home, [f"100.64.{k}.2/24"])
            link(home, [f"10.{k}.0.1/24"], client, [f"10.{k}.0.2/24"])
            for router, wan, gw in ((carrier, carrier_wan, f"198.19.{k}.1"), (home, home_wan, f"100.64.{k}.1")):
                self._forwarding(router)
                self._routes(router, gw, None)
                router.run("nft", "-f", "-", input=_rules_nat(wan, random=False))
            self._routes(client, f"10.{k}.0.1", None)
            return
        router = self._node(f"nat{k}")
        client = self._node(f"client{k}")
        _, wan = link(inet, inet_side, router, public)
        inet.run("ip", "-6", "route", "add", f"2001:db8:1:{k}::/64", "via", f"2001:db8:19:{k}::2")
        link(router, [f"10.{k}.0.1/24", f"2001:db8:1:{k}::1/64"], client, [f"10.{k}.0.2/24", f"2001:db8:1:{k}::2/64"])
        self._forwarding(router)
        self._routes(router, f"198.19.{k}.1", f"2001:db8:19:{k}::1")
        self._routes(client, f"10.{k}.0.1", f"2001:db8:1:{k}::1")
        rules = _rules_nat(wan, random=(nat == "symmetric"))
        if nat == "udp-blocked":
            rules += RULES_BLOCK_UDP
        router.run("nft", "-f", "-", input=rules)

    # -- events during a run: UDP cut, NAT re-mapping ---------------------------------------------------
    def interface(self, node: str, prefix: str) -> str:
        """The name of `node`'s interface holding an IPv4 address that starts with `prefix`."""
        for line in self.run(node, "ip", "-o", "-4", "address", "show").stdout.splitlines():
            fields = line.split()
            if len(fields) > 3 and fields[3].startswith(prefix):
                return fields[1].split("@")[0]
        raise LabError(f"{node} has no interface with an address {prefix}...")

    def router(self, client: int) -> str:
        """The lab node that NATs `client` to the internet (the carrier router for cgnat)."""
        nat = self.clients[client - 1].nat
        if nat == "none":
            raise LabError(f"client{client} has no NAT router (nat none)")
        return f"cgnat{client}" if nat == "cgnat" else f"nat{client}"

    def _wan(self, client: int) -> str:
        """The router's interface on the internet side (the one holding the client's public address)."""
        return self.interface(self.router(client), f"198.19.{client}.")

    def cut_udp(self, client: int, only_net: str | None = None, *, region: int | None = None) -> None:
        """Drop every UDP packet the client's router forwards, both ways, v4 and v6 (TCP still passes);
        with `only_net` (an IPv4 CIDR, e.g. another client's public 198.19.2.0/24) only UDP to and from
        that network, so STUN to the relays still works (a firewall between two sites); with `region`
        only UDP to and from that lab region (v4 and v6: STUN and QUIC to its relay; TCP to it passes).
        Calls add up (two regions, or a region and a network); `restore_udp` lifts them all.

        Existing conntrack entries stay, so `restore_udp` brings the old mappings back."""
        nets = []
        if region is not None:
            self._check_region(region)
            nets += [("ip", f"198.18.{region}.0/24"), ("ip6", f"2001:db8:18:{region}::/64")]
        if only_net:
            nets.append(("ip6" if ":" in only_net else "ip", only_net))
        match = "".join(f"    {fam} daddr {net} meta l4proto udp drop\n    {fam} saddr {net} meta l4proto udp drop\n"
                        for fam, net in nets) or "    meta l4proto udp drop\n"
        rules = ("table inet natlab_cut {\n  chain cut {\n"
                 "    type filter hook forward priority -10; policy accept;\n"
                 f"{match}  }}\n}}\n")
        self.run(self.router(client), "nft", "-f", "-", input=rules)

    def restore_udp(self, client: int) -> None:
        """Undo `cut_udp` (no error when UDP was not cut)."""
        self.run(self.router(client), "nft", "delete", "table", "inet", "natlab_cut", check=False)

    def udp_cut(self, client: int) -> bool:
        out = self.run(self.router(client), "nft", "list", "tables", check=False).stdout
        return "natlab_cut" in out

    def remap(self, client: int) -> str:
        """Give the client a new NAT mapping, as when a laptop moves to another network: the router
        takes a new public IPv4 address (198.19.k.3, .4, ... on its WAN link), masquerades to it (same
        NAT type as before) and forgets its UDP conntrack entries. Returns the new public address."""
        router, wan = self.router(client), self._wan(client)
        out = self.run(router, "ip", "-o", "-4", "address", "show", "dev", wan).stdout
        used = {int(f.split()[3].split("/")[0].rsplit(".", 1)[1]) for f in out.splitlines() if len(f.split()) > 3}
        host = max(used) + 1
        if host > 250:
            raise LabError(f"client{client} was remapped too often")
        address = f"198.19.{client}.{host}"
        self.run(router, "ip", "address", "add", f"{address}/24", "dev", wan)
        random = " random" if self.clients[client - 1].nat == "symmetric" else ""
        self.run(router, "nft", "-f", "-", input=(
            "flush chain ip natlab postnat\n"
            f'add rule ip natlab postnat oifname "{wan}" snat ip to {address}{random}\n'))
        flush_conntrack(self.ns(router).name)
        return address

    def public_address(self, client: int) -> str:
        """The client's current public IPv4 address (after `remap`, the newest one)."""
        nat = self.clients[client - 1].nat
        if nat == "none":
            return self.public_ip(client)
        out = self.run(self.router(client), "nft", "list", "chain", "ip", "natlab", "postnat").stdout
        for word in out.split():
            if word.startswith(f"198.19.{client}."):
                return word
        return self.public_ip(client)

    # -- state for the CLI ------------------------------------------------------------------------------
    def state(self) -> dict:
        return asdict(_State(self.name, {n: ns.name for n, ns in self.nodes.items()},
                             [asdict(r) for r in self.regions], [asdict(c) for c in self.clients],
                             self._delay_config, self._delayer_pid, self._tmp, {"seed": self.seed}))

    @classmethod
    def attach(cls, state: dict) -> "NatLab":
        """A handle on a lab built by another process (from `state()`); `close()` tears it down."""
        lab = cls.__new__(cls)
        st = _State(**state)
        lab.name, lab._tmp, lab._delay_config = st.name, st.tmpdir, st.delay_config
        lab.seed = st.extra.get("seed", 0)
        lab.regions = [RegionSpec(**r) for r in st.regions]
        lab.clients = [ClientSpec(**c) for c in st.clients]
        lab.nodes = {n: Namespace(ns) for n, ns in st.namespaces.items()}
        lab._lab = Lab()
        lab._lab.namespaces = list(lab.nodes.values())
        lab._delayer, lab._delayer_pid, lab._attached = None, st.delayer_pid, True
        return lab

    def close(self) -> None:
        self._lab.close()
        self.nodes.clear()
        try:
            for entry in pathlib.Path(self._tmp).glob("*"):
                entry.unlink()
            os.rmdir(self._tmp)
        except OSError:
            pass

    def __enter__(self) -> "NatLab":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def threading_main() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


_STALE_NAME = re.compile(r"natlab-(\d+)x\d+-")


def _gone(pid: int) -> bool:
    """True when process `pid` has exited (no longer exists, or is a zombie nobody reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _netns_names() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.split()]


def _stop_stale_workers() -> None:
    """SIGKILL every process whose command line names a namespace of a lab whose owner is gone, and wait
    until they have exited. Such a process is e.g. an `ip netns add` the owner had started just before it
    was killed: left running, it would create its namespace after `clean_stale` had listed them."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read().decode(errors="replace")
        except OSError:
            continue
        if any(_gone(int(owner)) for owner in _STALE_NAME.findall(cmdline)):
            try:
                os.kill(int(entry), signal.SIGKILL)
                pids.append(int(entry))
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 10
    while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.01)


def clean_stale() -> list[str]:
    """Delete the namespaces of labs whose building process is gone (names `natlab-<pid>x<n>-<node>`).

    What still works for such a lab is stopped first, so no namespace of it can appear after the listing;
    the list is then taken again until it shows none (a few rounds at most)."""
    removed: list[str] = []
    for _ in range(5):
        _stop_stale_workers()
        stale = [name for name in _netns_names()
                 if (match := _STALE_NAME.match(name)) and _gone(int(match.group(1)))]
        if not stale:
            break
        for name in stale:
            Namespace(name).delete()
            removed.append(name)
    return removed


def flush_conntrack(netns: str) -> int:
    """Delete the UDP conntrack entries of a namespace (netlink, via pyroute2); returns how many."""
    code = ("import socket; from pyroute2 import Conntrack\n"
            "ct = Conntrack(); n = 0\n"
            "entries = [e for e in ct.dump_entries() if e.tuple_orig.proto == socket.IPPROTO_UDP]\n"
            "for e in entries:\n"
            "    ct.delete(e); n += 1\n"
            "print(n)\n")
    res = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", code], capture_output=True,
                         text=True, timeout=30, check=False)
    if res.returncode != 0:
        raise LabError(f"could not flush conntrack in {netns}: {res.stderr.strip()[-500:]}")
    return int(res.stdout.strip() or 0)
