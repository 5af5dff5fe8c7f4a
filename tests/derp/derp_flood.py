"""Test-only DERP attacker: one plain-HTTP connection to a relay on loopback that floods one frame type
as fast as the relay takes it, reading (and discarding) whatever the relay sends back.

usage: derp_flood.py PORT MODE SECONDS [CA]  MODE: ping (Pings, Pongs read) | unknown (SendPacket to a
                                              key nobody holds); with CA (a PEM file) over TLS
Prints "connected" once connected, then waits for a line on stdin (so several attackers start together)
and floods for SECONDS.
"""
from __future__ import annotations

import os
import socket
import ssl
import sys
import threading
import time

from derp import frames as F
from derp import protocol as P
from derp.keys import private_key_from_random


def connect(port: int, ca: str | None) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    if ca:
        sock = ssl.create_default_context(cafile=ca).wrap_socket(sock, server_hostname="127.0.0.1")
    sock.sendall(b"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n")
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise SystemExit("relay closed during the upgrade")
        buf += chunk
    rest = buf.split(b"\r\n\r\n", 1)[1]
    core = P.ClientConnection(private_key_from_random(os.urandom(32)), os.urandom, 0.0)
    data = rest
    while core.state != P.ClientState.CONNECTED:
        for out in core.receive_data(data, 0.0):
            if isinstance(out, P.Transmit):
                sock.sendall(out.data)
        if core.state == P.ClientState.CONNECTED:
            break
        data = sock.recv(65536)
        if not data:
            raise SystemExit("relay closed during the handshake")
    sock.settimeout(None)
    return sock


def drain(sock: socket.socket) -> None:
    try:
        while sock.recv(1 << 20):
            pass
    except OSError:
        pass


def main(port: int, mode: str, seconds: float, ca: str | None = None) -> None:
    sock = connect(port, ca)
    threading.Thread(target=drain, args=(sock,), daemon=True).start()
    if mode == "ping":
        batch = F.Ping(b"floodme!").encode() * 4096
    elif mode == "unknown":
        batch = F.SendPacket(os.urandom(32), b"").encode() * 4096
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print("connected", flush=True)
    sys.stdin.readline()
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            sock.sendall(batch)
    except OSError:
        pass
    sock.close()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), *sys.argv[4:5])
