"""wgclient.aio.udp.UdpPort over real loopback sockets: batched reads split GRO super-datagrams exactly at
their segment size (a shorter last segment included), plain datagrams pass whole, GSO sends arrive as the
same messages."""
from __future__ import annotations

import select
import socket
import struct

import pytest

from wgclient.aio.udp import SOL_UDP, UDP_SEGMENT, UdpPort


@pytest.fixture
def port():
    p = UdpPort(0)
    try:
        yield p
    finally:
        p.close()


def read_all(p: UdpPort, want: int, timeout: float = 2.0) -> list[tuple[bytes, tuple]]:
    got: list[tuple[bytes, tuple]] = []
    while len(got) < want:
        ready, _, _ = select.select([p.v4], [], [], timeout)
        if not ready:
            break
        got += [(bytes(v), a) for v, a in p.read_batch(p.v4)]
    return got


def messages(sizes: list[int]) -> list[bytes]:
    return [bytes([i % 251]) * n for i, n in enumerate(sizes)]


@pytest.mark.timeout(10)
@pytest.mark.parametrize("sizes", [[1452] * 44, [1452] * 7 + [100], [1000, 1000, 1], [300]])
def test_gso_burst_reads_back_as_the_same_messages(port: UdpPort, sizes: list[int]) -> None:
    msgs = messages(sizes)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        tx.bind(("127.0.0.1", 0))
        data = b"".join(msgs)
        if len(msgs) > 1:
            tx.sendmsg([data], [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", sizes[0]))], 0,
                       ("127.0.0.1", port.port))
        else:
            tx.sendto(data, ("127.0.0.1", port.port))
        got = read_all(port, len(msgs))
        assert [m for m, _ in got] == msgs
        assert {a for _, a in got} == {tx.getsockname()}


@pytest.mark.timeout(10)
def test_plain_datagrams_and_send_sealed_runs(port: UdpPort) -> None:
    """send_sealed groups equal-size neighbours into GSO runs; what arrives is every message in order."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(2)
        dest = rx.getsockname()
        sizes = [200] * 5 + [150] + [200] * 3 + [64]
        msgs = messages(sizes)
        buf = bytearray(b"".join(msgs))
        sealed, o = [], 0
        for n in sizes:
            sealed.append((dest, o, o + n))
            o += n
        port.send_sealed(buf, sealed)
        assert [rx.recv(4096) for _ in msgs] == msgs
        assert port.send_errors == 0
