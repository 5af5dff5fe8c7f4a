"""derp/aio/quiccc.py on a real aioquic client/server pair exchanging packets in memory (virtual time):
the datagram bound, the bounded pending queue, configure() and the registered controller."""
from __future__ import annotations

from types import SimpleNamespace

from aioquic.quic.configuration import QuicConfiguration

from derp.aio.quiccc import (ALGORITHM, MAX_DATAGRAM_FRAME_SIZE, DatagramSender, TunnelCongestionControl,
                             configure, datagram_payload_limit)
from tests.derp.quiccc_pair import Link, QuicPair
from tools.bench.quic import goodput as bench_goodput


def pair(**kw) -> QuicPair:
    p = QuicPair(Link(delay=0.01, **kw), Link(delay=0.01))
    p.handshake()
    return p


def test_aioquic_alone_lets_a_too_big_datagram_block_every_later_one():
    # The fault DatagramSender exists for (if aioquic fixes it, this test says so).
    p = pair()
    p.client.send_datagram_frame(b"x" * 1500)
    for i in range(5):
        p.client.send_datagram_frame(b"later %d" % i)
    p.run(p.now + 1.0)
    assert p.received == []


def test_a_too_big_datagram_is_refused_and_later_ones_still_go():
    p = pair()
    sender = DatagramSender(p.client)
    assert sender.send(b"x" * 1500) is False           # the caller puts this frame on the stream
    assert all(sender.send(b"later %d" % i) for i in range(5))
    p.run(p.now + 1.0)
    assert p.received == [b"later %d" % i for i in range(5)]
    assert (sender.too_big, sender.queued, sender.dropped_full) == (1, 5, 0)


def test_the_payload_limit_fits_a_packet():
    p = pair()
    limit = datagram_payload_limit(p.client)
    # derp.quicwire's rule: short header with an 8-byte CID and the longest packet number, tag, frame head
    assert limit == 1452 - (1 + 8 + 4) - 16 - 3
    sender = DatagramSender(p.client)
    assert sender.send(b"a" * limit)
    assert not sender.send(b"b" * (limit + 1))
    assert sender.send(b"c")
    p.run(p.now + 1.0)
    assert p.received == [b"a" * limit, b"c"]


def test_the_pending_queue_is_bounded_dropping_the_oldest():
    p = pair()
    sender = DatagramSender(p.client, limit=64)
    for i in range(1000):                                # far more than the window lets out at once
        assert sender.send(b"%06d" % i)
        assert len(sender.pending) <= 64
    assert (sender.queued, sender.dropped_full) == (1000, 936)
    p.run(p.now + 2.0)
    assert p.received == [b"%06d" % i for i in range(936, 1000)]


def test_a_peer_without_datagram_support_gets_everything_on_the_stream():
    client_conf = configure(QuicConfiguration(is_client=True))
    assert client_conf.max_datagram_frame_size == MAX_DATAGRAM_FRAME_SIZE
    p = QuicPair(Link(delay=0.01), Link(delay=0.01))
    p.server._configuration.max_datagram_frame_size = None      # the server does not offer DATAGRAM
    p.handshake()
    assert p.client._remote_max_datagram_frame_size is None
    assert DatagramSender(p.client).send(b"small") is False


def test_before_the_handshake_nothing_is_known_and_the_stream_is_used():
    p = QuicPair(Link(delay=0.01), Link(delay=0.01))
    sender = DatagramSender(p.client)
    assert sender.send(b"early") is False
    p.handshake()
    assert sender.send(b"now") is True


def test_configure_selects_the_tunnel_controller_for_both_ends():
    conf = configure(QuicConfiguration(is_client=False))
    assert (conf.congestion_control_algorithm, conf.max_datagram_size) == (ALGORITHM, 1452)
    p = pair()
    assert isinstance(p.client._loss._cc, TunnelCongestionControl)
    assert isinstance(p.server._loss._cc, TunnelCongestionControl)


def test_datagrams_cross_a_lossy_link_with_the_tunnel_controller():
    p = pair(loss=0.05, seed=3)
    sender = DatagramSender(p.client)
    sent = 0

    def source(now):
        nonlocal sent
        while len(sender.pending) < 16 and sent < 3000:
            sender.send(b"%06d" % sent + bytes(1294))
            sent += 1

    p.run(p.now + 5.0, source)
    got = len(p.received)
    assert sent == 3000 and 0.85 * 3000 < got < 3000      # about 5 % lost, the rest through
    assert p.client._loss._cc.core.congestion_events == 0


def goodput(algorithm: str, loss: float) -> float:
    """Share of a 10 Mbit/s, 40 ms RTT bottleneck (1 BDP of buffer) a saturating sender fills, in
    virtual time, after one second of warm-up (the benchmark's own run, smaller)."""
    opts = SimpleNamespace(rate=10.0, delay=20.0, buffer=1.0, size=1300, time=2.0, seed=5)
    return bench_goodput(algorithm, loss, opts)[0] / opts.rate


def test_random_loss_throttles_reno_not_the_tunnel_controller():
    for loss in (0.01, 0.03):
        ours, reno = goodput(ALGORITHM, loss), goodput("reno", loss)
        assert ours > 0.9 and reno < 0.5, (loss, ours, reno)


def test_the_queue_limit_is_twenty_ms_at_the_pacing_rate_within_bounds():
    from derp.constants import QUIC_DATAGRAM_QUEUE, QUIC_DATAGRAM_QUEUE_MAX, QUIC_DATAGRAM_QUEUE_TIME
    from derp.quiccc import queue_limit as pure_limit
    assert pure_limit(1.0) == QUIC_DATAGRAM_QUEUE                      # a slow path: the floor
    assert pure_limit(QUIC_DATAGRAM_QUEUE_TIME / 1000) == 1000         # 1000 packets in 20 ms
    assert pure_limit(1e-9) == pure_limit(0.0) == QUIC_DATAGRAM_QUEUE_MAX
    limits = [pure_limit(t) for t in (1e-2, 1e-3, 1e-4, 1e-5, 1e-6)]
    assert limits == sorted(limits), "a faster pacer never gets a shorter queue"

