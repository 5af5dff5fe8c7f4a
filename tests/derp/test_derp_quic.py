"""DERP over QUIC end to end on loopback (docs/derp-quic.md): real UDP sockets, real TLS, in-process relay."""
from __future__ import annotations

import asyncio

import pytest

from derp_support import client, new_key
from quic_support import close_all, quic_client, quic_relay, send_datagram

pytestmark = pytest.mark.timeout(60)


def run(coro, timeout: float = 45.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def recv_data(c, timeout: float = 3.0) -> bytes:
    return (await c.recv_packet(timeout)).data


def test_quic_clients_exchange_packets_as_datagrams(pki) -> None:
    async def main():
        async with quic_relay(pki) as (server, port):
            (pa, ka), (pb, kb) = new_key(), new_key()
            a = await quic_client(pa, port, pki["ca"])
            b = await quic_client(pb, port, pki["ca"])
            try:
                for i in range(20):
                    assert send_datagram(a, kb, b"a->b %d" % i)
                    assert await recv_data(b) == b"a->b %d" % i
                    assert send_datagram(b, ka, b"b->a %d" % i)
                    assert await recv_data(a) == b"b->a %d" % i
                stats = server.quic.stats
                assert stats["datagrams_received"] >= 40 and stats["datagrams_relayed"] >= 40
                assert stats["stream_packets"] == 0
                assert a.stats.extra["quic_datagrams_sent"] == 20
                assert b.stats.extra["quic_datagrams_received"] == 20
                assert server.quic.clients() == 2
            finally:
                await close_all(a, b)
    run(main())


def test_oversize_packet_goes_on_the_stream_both_ways(pki) -> None:
    async def main():
        async with quic_relay(pki) as (server, port):
            (pa, ka), (pb, kb) = new_key(), new_key()
            a = await quic_client(pa, port, pki["ca"])
            b = await quic_client(pb, port, pki["ca"])
            try:
                big = bytes(range(256)) * 16   # 4 KiB: no datagram holds it
                assert send_datagram(a, kb, big)
                assert await recv_data(b) == big
                assert a.stats.extra["quic_stream_packets"] == 1 and a.stats.extra["quic_datagrams_sent"] == 0
                assert server.quic.stats["stream_packets"] == 1
                limit = a.stream.datagram_limit
                edge = b"x" * (limit - 37)         # the largest packet a datagram carries
                assert send_datagram(a, kb, edge)
                assert await recv_data(b) == edge
                assert a.stats.extra["quic_datagrams_sent"] == 1
                assert server.quic.stats["datagrams_relayed"] == 1
                assert send_datagram(a, kb, edge + b"y")   # one byte more: the stream
                assert await recv_data(b) == edge + b"y"
                assert a.stats.extra["quic_stream_packets"] == 2
            finally:
                await close_all(a, b)
    run(main())


def test_quic_and_tcp_clients_reach_each_other(pki) -> None:
    async def main():
        async with quic_relay(pki) as (server, port):
            (pq, kq), (pt, kt) = new_key(), new_key()
            q = await quic_client(pq, port, pki["ca"])
            t = client(f"https://127.0.0.1:{port}/derp", pt, pki["ca"], transport="upgrade")
            await t.start(timeout=5)
            try:
                for i in range(5):
                    assert send_datagram(q, kt, b"q->t %d" % i)
                    assert await recv_data(t) == b"q->t %d" % i
                    assert t.send_packet(kq, b"t->q %d" % i)
                    assert await recv_data(q) == b"t->q %d" % i
                assert server.quic.stats["datagrams_relayed"] == 5   # TCP -> QUIC went as datagrams
            finally:
                await close_all(q, t)
    run(main())
