"""tcpdump for tests, synchronised on what it has written instead of on sleeps: it is attached once the
file header is there (tcpdump activates the capture before it opens the file, and -U writes the header at
once), and a packet is captured once its bytes are in the file (-U writes every packet as it comes)."""
from __future__ import annotations

import os
import subprocess
import time

PCAP_HEADER = 24


def start_tcpdump(ns, pcap: str, *args: str, timeout: float = 10.0, **kw) -> subprocess.Popen:
    """`tcpdump -U -w pcap ARGS` in namespace `ns`, returned once the capture is attached."""
    kw.setdefault("stdout", subprocess.DEVNULL)
    proc = ns.popen("tcpdump", "-U", "-w", str(pcap), *args, **kw)
    deadline = time.monotonic() + timeout
    while not (os.path.exists(pcap) and os.path.getsize(pcap) >= PCAP_HEADER):
        if proc.poll() is not None or time.monotonic() > deadline:
            err = proc.stderr.read() if proc.stderr and proc.poll() is not None else b"still starting"
            raise AssertionError(f"tcpdump did not attach within {timeout} s: {err!r}")
        time.sleep(0.02)
    return proc


def wait_captured(pcap: str, needle: bytes, timeout: float = 10.0) -> bool:
    """True once `needle` is in the capture file (False after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        with open(pcap, "rb") as fh:
            if needle in fh.read():
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
