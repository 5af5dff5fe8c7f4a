"""Network-namespace primitives: create namespaces and veth links, run commands in them, clean up.

Every namespace this module makes carries a per-process prefix, and a `Lab` registers a namespace's name
before creating it, so `Lab.close()` removes exactly what this process made, even after a failure or a
Ctrl-C at any point of the build. Addresses used are from documentation/benchmark ranges and live only
inside the namespaces; nothing is routed to the host's real network.
"""
from __future__ import annotations

import itertools
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field

_counter = itertools.count()


def _run(args: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, capture_output=True, text=True, **kw)


def _run_to_end(args: list[str]) -> None:
    """Run a short command to its end even when an exception (Ctrl-C) arrives while it runs; the exception
    is raised once the command is done, so whether what it makes exists is settled before anyone cleans up
    (`subprocess.run` would kill it on the way out, and the dying command might still finish its work)."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    interrupted: BaseException | None = None
    while True:
        try:
            proc.wait()
            break
        except BaseException as exc:   # noqa: B036 - re-raised below, once the command has ended
            interrupted = exc
    err = proc.stderr.read()
    proc.stderr.close()
    if interrupted is not None:
        raise interrupted
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, args, "", err)


def unique_name(stem: str) -> str:
    """A namespace/interface-safe name unique to this process (at most 15 characters)."""
    return f"{stem[:5]}{os.getpid() % 10000:04d}{next(_counter) % 1000:03d}"


@dataclass
class Namespace:
    """One network namespace, with loopback up, and the processes started in it."""

    name: str
    procs: list[subprocess.Popen] = field(default_factory=list)

    @classmethod
    def create(cls, stem: str = "ns", *, name: str | None = None) -> "Namespace":
        ns = cls(name or unique_name(stem))
        ns.add()
        return ns

    def add(self) -> None:
        """Create the namespace and bring its loopback up (`ip netns add` is never cut short)."""
        _run_to_end(["ip", "netns", "add", self.name])
        self.run("ip", "link", "set", "lo", "up")

    def argv(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    def run(self, *cmd: str, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        return _run(self.argv(*cmd), check=check, timeout=timeout, **kw)

    def popen(self, *cmd: str, **kw) -> subprocess.Popen:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        proc = subprocess.Popen(self.argv(*cmd), start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    def kill_processes(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        self.procs.clear()
        # Anything else still living in the namespace (daemonized children) goes too.
        pids = _run(["ip", "netns", "pids", self.name], check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass

    def delete(self) -> None:
        self.kill_processes()
        _run(["ip", "netns", "del", self.name], check=False)


def link(a: Namespace, a_addrs: list[str], b: Namespace, b_addrs: list[str], *, mtu: int = 1500) -> tuple[str, str]:
    """A veth pair between two namespaces with the given CIDR addresses; returns the two interface names."""
    ifa, ifb = unique_name("va"), unique_name("vb")
    _run(["ip", "link", "add", ifa, "netns", a.name, "type", "veth", "peer", "name", ifb, "netns", b.name])
    for ns, ifname, addrs in ((a, ifa, a_addrs), (b, ifb, b_addrs)):
        for addr in addrs:
            flags = ["nodad"] if ":" in addr else []
            ns.run("ip", "addr", "add", addr, "dev", ifname, *flags)
        ns.run("ip", "link", "set", ifname, "mtu", str(mtu), "up")
    return ifa, ifb


class Lab:
    """A set of namespaces that is torn down as a whole (use as a context manager)."""

    def __init__(self) -> None:
        self.namespaces: list[Namespace] = []

    def namespace(self, stem: str = "ns", *, name: str | None = None) -> Namespace:
        ns = Namespace(name or unique_name(stem))
        self.namespaces.append(ns)   # known before it exists: an interrupt after `ip netns add` can't orphan it
        ns.add()
        return ns

    def close(self) -> None:
        for ns in reversed(self.namespaces):
            ns.delete()
        self.namespaces.clear()

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
