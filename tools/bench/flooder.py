"""A handshake flooder for the flood benchmark: `python3 -m tools.bench.flooder HOST PORT PUBKEY [options]`.

Sends WireGuard handshake initiations that pass the victim's cheap check (type, size and a correct mac1
for the victim's public key, whitepaper §5.4.4) but hold random ephemeral, static and timestamp fields,
from one UDP socket (one source address and port; `--bind` several addresses for one socket each, used
in turn), as fast as it can or at `--rate` per second, for `--seconds`. A pool of distinct messages is made up front so the loop does nothing but send. At the end
it prints one JSON line: {"sent": N, "errors": N, "seconds": S, "rate": N/S}. Only for addresses inside
the benchmark's own namespaces; needs nothing but the standard library.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import signal
import socket
import sys
import time

CHUNK = 256  # sends between two looks at the clock


def initiations(victim_public: bytes, n: int, random_bytes=os.urandom) -> list[bytes]:
    """n initiations (148 bytes) with a valid mac1 for the victim, random otherwise, mac2 zero."""
    key = hashlib.blake2s(b"mac1----" + victim_public).digest()
    out = []
    for _ in range(n):
        body = b"\x01\0\0\0" + random_bytes(112)
        out.append(body + hashlib.blake2s(body, key=key, digest_size=16).digest() + bytes(16))
    return out


def flood(socks: list[socket.socket], target: tuple[str, int], pool: list[bytes], rate: float,
          seconds: float) -> dict:
    sent = errors = 0
    sends = [s.sendto for s in socks]
    n_socks = len(sends)
    start = time.monotonic()
    stop = start + seconds
    stopped = []
    signal.signal(signal.SIGTERM, lambda *_: stopped.append(True))
    size = len(pool)
    i = 0
    while not stopped:
        for _ in range(CHUNK):
            try:
                sends[i % n_socks](pool[i], target)
                sent += 1
            except (BlockingIOError, ConnectionRefusedError):  # full buffer; ICMP errors from the victim
                errors += 1
            i = i + 1 if i + 1 < size else 0
        now = time.monotonic()
        if now >= stop:
            break
        if rate:
            ahead = sent / rate - (now - start)
            if ahead > 0:
                time.sleep(ahead)
    elapsed = time.monotonic() - start
    return {"sent": sent, "errors": errors, "seconds": round(elapsed, 3), "rate": round(sent / elapsed)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m tools.bench.flooder", description=__doc__.split("\n\n")[0])
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("pubkey", help="the victim's public key, base64")
    ap.add_argument("--rate", type=float, default=100_000, help="initiations per second; 0 = as fast as it can")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--bind", default="", help="source address(es) to send from, comma-separated")
    ap.add_argument("--pool", type=int, default=4096, help="distinct messages to cycle through")
    opts = ap.parse_args(argv)
    try:
        victim = base64.b64decode(opts.pubkey, validate=True)
    except ValueError:
        victim = b""
    if len(victim) != 32:
        ap.error("PUBKEY must be a base64 key of 32 bytes")
    family = socket.AF_INET6 if ":" in opts.host else socket.AF_INET
    socks = []
    try:
        for address in opts.bind.split(","):
            socks.append(socket.socket(family, socket.SOCK_DGRAM))
            socks[-1].bind((address, 0))
            socks[-1].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        result = flood(socks, (opts.host, opts.port), initiations(victim, opts.pool), opts.rate, opts.seconds)
    finally:
        for sock in socks:
            sock.close()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
