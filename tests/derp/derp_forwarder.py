"""Test-only UDP<->DERP forwarder: WireGuard's endpoint for its peer is this process's UDP socket on
loopback; datagrams from WireGuard go to the peer's DERP key, packets from DERP go back to WireGuard.

usage: derp_forwarder.py DERP_URL PRIVATE_HEX PEER_PUBLIC_HEX LISTEN_PORT WG_PORT
Prints "forwarder ready" once connected to the relay.
"""
from __future__ import annotations

import asyncio
import socket
import sys

from derp.aio.client import DerpClient, targets_for_url


async def main(url: str, priv_hex: str, peer_hex: str, listen: int, wg_port: int) -> None:
    peer = bytes.fromhex(peer_hex)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", listen))
    sock.setblocking(False)
    wg = ("127.0.0.1", wg_port)

    def from_derp(src: bytes, data: bytes) -> None:
        if src == peer:
            try:
                sock.sendto(data, wg)
            except OSError:
                pass

    client = DerpClient(bytes.fromhex(priv_hex), targets_for_url(url), on_packet=from_derp)
    await client.start(timeout=10)
    loop = asyncio.get_running_loop()

    def from_wg() -> None:
        while True:
            try:
                data, _ = sock.recvfrom(65535)
            except BlockingIOError:
                return
            client.send_packet(peer, data)

    loop.add_reader(sock.fileno(), from_wg)
    print("forwarder ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    a = sys.argv[1:]
    asyncio.run(main(a[0], a[1], a[2], int(a[3]), int(a[4])))
