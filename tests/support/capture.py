"""tcpdump for tests, synchronised on what it has written instead of on sleeps: it is attached once the
file header is there (tcpdump activates the capture before it opens the file, and -U writes the header at
once), and a packet is captured once its bytes are in the file (-U writes every packet as it comes).
Also the pieces of the "relay never sees the plaintext" tests: marker datagrams sent through a tunnel
(`send_markers`) and the captured payload bytes per lab client network (`payload_per_network`)."""
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


# -- "the relay never sees the plaintext": marker datagrams through a tunnel, bytes per client network ------
_MARKER_RX = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 9999)); s.settimeout(8)
print('ready', flush=True)
n = 0
try:
    while n < int(sys.argv[2]):
        d, _ = s.recvfrom(2048); n += sys.argv[3].encode() in d
except OSError:
    pass
print(n, flush=True)
"""
_MARKER_TX = ("import socket,time,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
              "for i in range(int(sys.argv[3])):\n"
              "    s.sendto((sys.argv[2]*8).encode(),(sys.argv[1],9999)); time.sleep(0.05)\n")


def send_markers(src_ns, dst_ns, dst_ip: str, marker: str, count: int = 20) -> int:
    """`count` UDP datagrams holding `marker` 8 times, from src_ns to dst_ip:9999 in dst_ns (through a
    tunnel); returns how many arrived."""
    import sys
    rx = dst_ns.popen(sys.executable, "-c", _MARKER_RX, dst_ip, str(count), marker, text=True)
    assert rx.stdout.readline().strip() == "ready"
    src_ns.run(sys.executable, "-c", _MARKER_TX, dst_ip, marker, str(count), timeout=20)
    return int(rx.communicate(timeout=15)[0].strip() or 0)


def payload_per_network(pcap: str, expr: str) -> dict[str, int]:
    """Payload bytes of the captured packets matching the tcpdump filter `expr`, per source network of the
    NAT lab's clients (198.19.k), from `tcpdump -q` lines (TCP and UDP alike)."""
    import re
    summary = subprocess.run(["tcpdump", "-r", pcap, "-n", "-q", expr], capture_output=True, text=True,
                             timeout=30).stdout
    per_src: dict[str, int] = {}
    for line in summary.splitlines():
        m = re.search(r"IP (198\.19\.\d+)\.\d+\.\d+ > .* (?:tcp|UDP, length) (\d+)", line)
        if m:
            per_src[m.group(1)] = per_src.get(m.group(1), 0) + int(m.group(2))
    return per_src


def check_no_plaintext(pcap: str, expr: str, marker: str, control: str, count: int = 20) -> dict[str, int]:
    """The verdict of a plaintext capture: the sender's network (198.19.1) sent at least the markers'
    volume in packets matching `expr` (so the relayed traffic was captured), the control string sent in
    clear is in the file (the capture sees payloads), and the marker is not. Returns the payload bytes per
    client network."""
    with open(pcap, "rb") as fh:
        captured = fh.read()
    per_src = payload_per_network(pcap, expr)
    assert per_src.get("198.19.1", 0) > count * 8 * len(marker), per_src
    assert control.encode() in captured, "the capture misses bytes sent in clear: it would prove nothing"
    assert marker.encode() not in captured, "the relay's interface saw the tunnel's plaintext"
    return per_src
