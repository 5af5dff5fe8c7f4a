"""Userspace link impairment for the NAT lab (this kernel has no netem): forwards packets between TUN
devices' two directions after a fixed delay, dropping a chosen fraction of them.

Run inside the lab's "internet" namespace: `python3 -m tools.natlab.delayer CONFIG.json`. The config maps
TUN device names to a one-way delay in milliseconds (a number) or to `{"delay_ms": D, "loss_pct": P,
"seed": S}`; the process creates the devices (they vanish when it exits), prints "ready" and then, for
every packet the kernel routes into a device, drops it with probability P % (a seeded generator: the same
seed drops the same packets) or writes it back into the same device D ms later (policy routing then sends
it on its way). Both directions of a region's traffic cross its device, so P applies to each direction.
The decisions live in the pure `tools.natlab.impair.Link`; this module only does the I/O.

Signals: SIGHUP re-reads the config (delay and loss change while the lab runs; order within a device is
kept). SIGUSR1 writes the counters (per device: offered, dropped, sent, queued) to CONFIG.counts.json,
replaced whole, with a `generation` that grows by one per write (a reader waits for the next one); they
are written at exit too.
"""
from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import struct
import sys
import time

from tools.natlab.impair import Link, parse_config

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
BATCH = 256          # packets read from one device before the others get a turn


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def counts_path(config_path: str) -> str:
    return config_path + ".counts.json"


def load(config_path: str) -> dict:
    with open(config_path) as fh:
        return {name: parse_config(entry) for name, entry in json.load(fh).items()}


class Delayer:
    def __init__(self, config_path: str) -> None:
        self.config_path = config_path
        self.links = {name: Link(name, cfg) for name, cfg in load(config_path).items()}
        self.fds = {open_tun(name): link for name, link in self.links.items()}
        self.generation = 0
        self.flags = {"reload": False, "dump": False}

    def reload(self) -> None:
        try:
            configs = load(self.config_path)
        except (OSError, ValueError) as exc:     # keep the old settings
            print(f"delayer: config not reloaded: {exc}", file=sys.stderr, flush=True)
            return
        for name, cfg in configs.items():
            if name in self.links:
                self.links[name].configure(cfg)

    def dump(self) -> None:
        self.generation += 1
        data = {"generation": self.generation, "links": {n: link.counts() for n, link in self.links.items()}}
        path = counts_path(self.config_path)
        with open(path + ".tmp", "w") as fh:
            json.dump(data, fh)
        os.replace(path + ".tmp", path)

    def flush(self, now: float) -> float | None:
        """Write every due packet; returns the time until the next is due (None: nothing queued)."""
        timeout = None
        for fd, link in self.fds.items():
            for packet in link.due(now):
                try:
                    os.write(fd, packet)
                except OSError:
                    pass
            deadline = link.next_deadline()
            if deadline is not None:
                wait = deadline - now
                timeout = wait if timeout is None else min(timeout, wait)
        return timeout

    def run(self) -> None:
        def on_signal(signum, _frame):
            self.flags["reload" if signum == signal.SIGHUP else "dump"] = True
        signal.signal(signal.SIGHUP, on_signal)
        signal.signal(signal.SIGUSR1, on_signal)
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)  # a signal wakes select() at once
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        print("ready", flush=True)
        try:
            self._loop(wake_r)
        finally:
            self.dump()

    def _loop(self, wake_r: int) -> None:
        fds = [*self.fds, wake_r]
        while True:
            if self.flags["reload"]:
                self.flags["reload"] = False
                self.reload()
            if self.flags["dump"]:
                self.flags["dump"] = False
                self.dump()
            timeout = self.flush(time.monotonic())
            try:
                readable, _, _ = select.select(fds, [], [], timeout)
            except InterruptedError:
                continue
            if wake_r in readable:
                try:
                    os.read(wake_r, 512)
                except BlockingIOError:
                    pass
                continue
            now = time.monotonic()
            for fd in readable:
                link = self.fds[fd]
                for _ in range(BATCH):
                    try:
                        packet = os.read(fd, 65536)
                    except BlockingIOError:
                        break
                    link.offer(packet, now)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python3 -m tools.natlab.delayer CONFIG.json", file=sys.stderr)
        return 2
    try:
        delayer = Delayer(argv[0])
    except (OSError, ValueError) as exc:
        print(f"delayer: {exc}", file=sys.stderr)
        return 1
    delayer.run()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(0)
