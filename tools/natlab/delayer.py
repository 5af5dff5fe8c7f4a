"""Userspace link delay for the NAT lab (this kernel has no netem): forwards packets between TUN devices' two
directions after a fixed delay.

Run inside the lab's "internet" namespace: `python3 -m tools.natlab.delayer CONFIG.json`. The config maps
TUN device names to one-way delays in milliseconds; the process creates the devices (they vanish when it
exits), prints "ready" and then, for every packet the kernel routes into a device, writes it back into the
same device `delay` ms later (policy routing then sends it on its way). SIGHUP re-reads the config, so
delays can change while the lab runs. Order within a device is kept.
"""
from __future__ import annotations

import collections
import fcntl
import json
import os
import select
import signal
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def main(argv: list[str]) -> int:
    config_path = argv[0]

    def load() -> dict[str, float]:
        with open(config_path) as fh:
            return {k: float(v) / 1000.0 for k, v in json.load(fh).items()}

    delays = load()
    fds = {name: open_tun(name) for name in delays}
    names = {fd: name for name, fd in fds.items()}
    queues: dict[int, collections.deque] = {fd: collections.deque() for fd in names}
    reload = False

    def on_hup(*_):
        nonlocal reload
        reload = True
    signal.signal(signal.SIGHUP, on_hup)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)  # a signal wakes select() at once
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)
    while True:
        if reload:
            reload = False
            delays.update({k: v for k, v in load().items() if k in fds})
        now = time.monotonic()
        timeout = None
        for fd, queue in queues.items():
            while queue and queue[0][0] <= now:
                try:
                    os.write(fd, queue.popleft()[1])
                except OSError:
                    pass
            if queue:
                wait = queue[0][0] - now
                timeout = wait if timeout is None else min(timeout, wait)
        try:
            readable, _, _ = select.select([*names, wake_r], [], [], timeout)
        except InterruptedError:
            continue
        if wake_r in readable:
            readable.remove(wake_r)
            try:
                os.read(wake_r, 512)
            except BlockingIOError:
                pass
            continue
        now = time.monotonic()
        for fd in readable:
            queue, delay = queues[fd], delays[names[fd]]
            for _ in range(256):
                try:
                    packet = os.read(fd, 65536)
                except BlockingIOError:
                    break
                due = now + delay
                if queue and queue[-1][0] > due:
                    due = queue[-1][0]
                queue.append((due, packet))


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(0)
