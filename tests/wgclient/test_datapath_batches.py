"""The batched data path (wgclient.datapath) against simple references: whatever the order, duplicates and
batch boundaries of transport messages, a device delivers exactly the packets a lone ReplayFilter accepts,
in arrival order, with the byte counters of the packets it authenticated; sealing many packets in one
batch gives the same wire messages as sealing them one by one."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.pair import Pair, ipv4_packet
from wgclient.replay import ReplayFilter

N = 300  # messages: spans several 64-counter blocks of the replay ring


def sealed_messages(p: Pair, n: int) -> list[bytes]:
    packets = [ipv4_packet("10.0.0.1", "10.0.0.2", i.to_bytes(2, "big") * (1 + i % 7)) for i in range(n)]
    p.a.send_packets(packets, p.now)
    messages = [data for _, data in p.a.out.sealed_bytes()]
    p.a.out.clear()
    return messages


@settings(max_examples=60, deadline=None)
@given(order=st.lists(st.integers(0, N - 1), max_size=400),
       cuts=st.lists(st.integers(0, 400), max_size=8))
def test_any_arrival_order_delivers_what_the_replay_window_accepts(order: list[int], cuts: list[int]) -> None:
    p = Pair()
    p.handshake("a")
    p.tun["b"].clear()
    messages = sealed_messages(p, N)
    # The counters come from the wire; those before them (the handshake's keepalive) count as seen.
    counters = [int.from_bytes(m[8:16], "little") for m in messages]
    reference = ReplayFilter()
    for c in range(counters[0]):
        reference.validate(c)
    expected = [i for i in order if reference.validate(counters[i])]
    rx_before = p.pb.rx_bytes
    bounds = sorted({0, len(order), *[c for c in cuts if c <= len(order)]})
    for lo, hi in zip(bounds, bounds[1:]):
        p.b.receive_datagrams([(messages[i], ("192.0.2.1", 51820)) for i in order[lo:hi]], p.now)
        p.collect("b")
    delivered = [int.from_bytes(pkt[20:22], "big") for pkt in p.tun["b"]]
    assert delivered == expected
    assert p.pb.rx_bytes - rx_before == sum(len(messages[i]) for i in expected)
    assert p.b.drops.get("transport: replayed or too old", 0) == len(order) - len(expected)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(20, 1400), min_size=1, max_size=80))
def test_sealing_a_batch_equals_sealing_one_by_one(sizes: list[int]) -> None:
    packets = [ipv4_packet("10.0.0.1", "10.0.0.2", bytes([n % 251]) * (n - 20)) for n in sizes]
    batch, single = Pair(seed=3), Pair(seed=3)
    for p in (batch, single):
        p.handshake("a")
        p.wire.clear()
    batch.send("a", packets)
    for pkt in packets:
        single.send("a", [pkt])
    assert [d for _, d, _ in batch.wire] == [d for _, d, _ in single.wire]
    assert batch.pa.tx_bytes == single.pa.tx_bytes
    assert batch.pa.keypairs.current.send_counter == single.pa.keypairs.current.send_counter
