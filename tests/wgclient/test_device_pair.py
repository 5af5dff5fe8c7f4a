"""Two device cores talking over an in-memory wire: handshakes, data both ways, and what must be dropped."""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.pair import (EP_A, EP_B, INITIATION, RESPONSE, TRANSPORT, Pair, Seeded, ipv4_packet,
                                ipv6_packet)
from wgclient.constants import DEFAULT_MTU
from wgclient.device import Device, DeviceConfig
from wgclient.keypair import Keypair, KeypairSlots
from wgclient.noise import crypto
from wgclient.noise.messages import message_type
from wgclient.outputs import HandshakeCompleted

EP_A2 = ("198.51.100.7", 40000)


def established(initiator: str = "a", **kw) -> Pair:
    p = Pair(**kw)
    p.handshake(initiator)
    assert p.pa.keypairs.current is not None and p.pb.keypairs.current is not None
    return p


def counter_of(message: bytes) -> int:
    return struct.unpack_from("<Q", message, 8)[0]


def receiver_of(message: bytes) -> int:
    return struct.unpack_from("<I", message, 4)[0]


# -- handshakes ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("initiator", ["a", "b"])
def test_handshake_from_either_side_then_data_both_ways(initiator: str) -> None:
    p = Pair()
    p.handshake(initiator)
    responder = "b" if initiator == "a" else "a"
    for name in ("a", "b"):
        assert [type(e) for e in p.events[name]] == [HandshakeCompleted]
    # The initiator's session is current at once; the responder's was confirmed by the keepalive.
    assert p.peer(initiator).keypairs.current.is_initiator
    assert not p.peer(responder).keypairs.current.is_initiator
    assert p.peer(responder).keypairs.next is None
    assert [message_type(d) for _, _, d, _ in p.sent] == [INITIATION, RESPONSE, TRANSPORT]
    pkt_a = p.ping("a", b"hello from a")
    pkt_b = p.ping("b", b"hello from b")
    p.deliver()
    assert p.tun["b"] == [pkt_a] and p.tun["a"] == [pkt_b]
    assert p.a.drops == {} and p.b.drops == {}


def test_sending_data_starts_the_handshake_and_delivers_the_staged_packet() -> None:
    p = Pair()
    pkt = p.ping("a", b"first")
    assert [message_type(d) for _, d, _ in p.wire] == [INITIATION]
    assert list(p.pa.staged) == [pkt]
    p.deliver()
    assert p.tun["b"] == [pkt]
    assert not p.pa.staged


def test_responder_without_endpoint_learns_it_from_the_initiation() -> None:
    p = Pair(b_endpoint_known=False)
    assert p.pb.endpoint is None
    pkt = p.ping("b")  # b cannot even start: no endpoint
    assert p.b.drops["no endpoint"] == 1 and not p.wire
    p.handshake("a")
    assert p.pb.endpoint == EP_A
    p.deliver()
    # The staged packet went out once b had a session, and a got it.
    assert p.tun["a"] == [pkt]


def test_ipv6_inner_packets_both_ways() -> None:
    p = established()
    a6 = p.ping("a", b"six" * 100, v6=True)
    b6 = p.ping("b", b"", v6=True)
    p.deliver()
    assert p.tun["b"] == [a6] and p.tun["a"] == [b6]


def test_preshared_key_on_both_sides_works() -> None:
    p = established(psk=b"\x42" * 32)
    pkt = p.ping("a")
    p.deliver()
    assert p.tun["b"] == [pkt]


@pytest.mark.parametrize("psk_b", [b"\x43" * 32, None])
def test_mismatched_preshared_key_fails(psk_b) -> None:
    p = Pair(psk=b"\x42" * 32, psk_b=psk_b)
    p.ping("a")
    p.deliver()
    assert p.pa.keypairs.current is None
    assert p.pb.keypairs.current is None  # b's parked session is never confirmed
    assert p.tun["b"] == []
    assert sum(n for reason, n in p.a.drops.items() if reason.startswith("handshake:")) == 1
    assert not p.events["a"] and not p.events["b"]


def test_batch_of_packets_sealed_with_sequential_counters() -> None:
    p = established()
    packets = [ipv4_packet("10.0.0.1", "10.0.0.2", bytes([i]) * i) for i in range(10)]
    p.send("a", packets)
    assert [counter_of(d) for _, d, _ in p.wire] == list(range(1, 11))  # 0 went to the keepalive
    p.deliver()
    assert p.tun["b"] == packets


# -- transport packets that must be dropped or accepted ------------------------------------------------------

def test_replayed_transport_packet_is_dropped_and_counted() -> None:
    p = established()
    pkt = p.ping("a")
    (msg,) = p.take(TRANSPORT, to="b")
    p.receive("b", msg)
    p.receive("b", msg)
    assert p.tun["b"] == [pkt]
    assert p.b.drops["transport: replayed or too old"] == 1


def test_reordered_packets_within_the_window_are_accepted() -> None:
    p = established()
    packets = [ipv4_packet("10.0.0.1", "10.0.0.2", bytes([i]) * 8) for i in range(50)]
    p.send("a", packets)
    msgs = p.take(TRANSPORT, to="b")
    order = list(reversed(msgs[:25])) + msgs[40:] + msgs[25:40]
    for m in order:
        p.receive("b", m)
    assert sorted(p.tun["b"]) == sorted(packets) and len(p.tun["b"]) == 50
    assert p.b.drops == {}


def test_packet_older_than_the_window_is_dropped() -> None:
    p = established()
    p.ping("a")
    (old,) = p.take(TRANSPORT, to="b")
    p.pa.keypairs.current.send_counter = 10_000
    p.ping("a")
    p.deliver()
    p.receive("b", old)  # counter 1, now 9999 behind the highest
    assert len(p.tun["b"]) == 1
    assert p.b.drops["transport: replayed or too old"] == 1


@pytest.mark.parametrize("where", [4, 8, 16, 40, -1])
def test_tampered_transport_packet_is_dropped_and_counted(where: int) -> None:
    p = established()
    p.ping("a", b"x" * 40)
    (msg,) = p.take(TRANSPORT, to="b")
    bad = bytearray(msg)
    bad[where] ^= 0x01
    p.receive("b", bytes(bad))
    assert p.tun["b"] == []
    dropped = p.b.drops["transport: authentication failed"] + p.b.drops["transport: unknown receiver index"]
    assert dropped == 1
    p.receive("b", msg)  # the genuine one still gets through
    assert len(p.tun["b"]) == 1


def test_inner_source_not_in_allowed_ips_is_dropped() -> None:
    p = established()
    # b has a second peer owning 10.0.0.3: a may not send from it, nor from an address nobody owns.
    other = p.b.add_peer(crypto.public_key(b"\x09" * 32))
    p.b.allowed_ips.insert("10.0.0.3/32", other)
    p.send("a", [ipv4_packet("10.0.0.3", "10.0.0.2", b"spoof"), ipv4_packet("10.9.9.9", "10.0.0.2", b"spoof"),
                 ipv6_packet("fd00::99", "fd00::2", b"spoof")])
    p.deliver()
    assert p.tun["b"] == []
    assert p.b.drops["transport: source address not allowed for peer"] == 3


def test_malformed_inner_packets_are_dropped() -> None:
    p = established()
    good = ipv4_packet("10.0.0.1", "10.0.0.2", b"ok")
    too_long = bytearray(good)
    too_long[2:4] = (1000).to_bytes(2, "big")  # IPv4 total length beyond what arrived
    v6_too_long = bytearray(ipv6_packet("fd00::1", "fd00::2", b"ok"))
    v6_too_long[4:6] = (500).to_bytes(2, "big")
    p.send("a", [bytes(too_long), bytes(v6_too_long), good])
    p.deliver()
    assert p.tun["b"] == [good]
    assert p.b.drops["transport: bad IPv4 length"] == 1 and p.b.drops["transport: bad IPv6 length"] == 1


def test_padding_is_stripped_on_receive() -> None:
    p = established()
    pkt = ipv4_packet("10.0.0.1", "10.0.0.2", b"abc")  # 23 bytes, padded to 32 on the wire
    p.send("a", [pkt])
    (msg,) = [d for _, d, _ in p.wire]
    assert len(msg) == 32 + 32
    p.deliver()
    assert p.tun["b"] == [pkt]


def test_unknown_receiver_index_is_dropped() -> None:
    p = established()
    p.ping("a")
    (msg,) = p.take(TRANSPORT, to="b")
    bad = bytearray(msg)
    bad[4:8] = (receiver_of(msg) ^ 0x5A5A5A5A).to_bytes(4, "little")
    p.receive("b", bytes(bad))
    assert p.b.drops["transport: unknown receiver index"] == 1


def test_unknown_peers_initiation_is_dropped() -> None:
    p = Pair()
    stranger = Device(b"\x07" * 32, random_bytes=Seeded(99), wall_offset=1.7e9)
    peer = stranger.add_peer(p.b.public_key)
    stranger.set_endpoint(peer, EP_B)
    out = stranger.initiate(peer, p.now)
    ((_, init),) = out.datagrams
    p.receive("b", init, source=("203.0.113.9", 1))
    assert p.b.drops["initiation from unknown peer"] == 1
    assert p.wire == [] and p.pb.endpoint == EP_A


def test_handshake_with_bad_mac1_is_dropped() -> None:
    p = Pair()
    p.a.initiate(p.pa, p.now)
    p.collect("a")
    (init,) = p.take(INITIATION)
    bad = bytearray(init)
    bad[120] ^= 1
    p.receive("b", bytes(bad))
    assert p.b.drops["bad mac1"] == 1 and p.wire == []
    p.receive("b", init)
    assert len(p.take(RESPONSE)) == 1


def test_replayed_initiation_is_rejected() -> None:
    p = Pair()
    p.a.initiate(p.pa, p.now)
    p.collect("a")
    (init,) = p.take(INITIATION)
    p.receive("b", init)
    assert len(p.take(RESPONSE)) == 1
    p.now += 1.0  # well past the flood limit: only the timestamp can refuse it
    p.receive("b", init, source=("203.0.113.5", 9))
    assert p.wire == []
    assert p.b.drops["handshake: replayed initiation (timestamp not newer)"] == 1
    assert p.pb.endpoint == EP_A  # a replay does not move the endpoint


def test_initiation_flood_is_rejected() -> None:
    p = Pair()
    inits = []
    for _ in range(2):  # two genuine initiations from a, 6 s apart on a's clock
        p.a.initiate(p.pa, p.now)
        p.collect("a")
        inits += p.take(INITIATION)
        p.now += 6.0
    p.receive("b", inits[0])
    assert len(p.take(RESPONSE)) == 1
    p.now += 0.010  # the second one arrives 10 ms after the first: a flood
    p.receive("b", inits[1])
    assert p.wire == [] and p.b.drops["handshake: initiation flood"] == 1
    p.now += 0.015  # 25 ms after the first accepted one: fine
    p.receive("b", inits[1])
    assert len(p.take(RESPONSE)) == 1
    p.receive("a", p.sent[-1][2])  # a completes with the response to its latest initiation
    assert p.pa.keypairs.current is not None


@settings(max_examples=150)
@given(st.lists(st.one_of(st.binary(max_size=200),
                          st.tuples(st.sampled_from([1, 2, 3, 4]), st.binary(max_size=160)).map(
                              lambda t: bytes([t[0], 0, 0, 0]) + t[1]),
                          st.tuples(st.sampled_from([(1, 148), (2, 92), (3, 64), (4, 32), (4, 48)]),
                                    st.randoms(use_true_random=False)).map(
                              lambda t: bytes([t[0][0], 0, 0, 0]) + t[1].randbytes(t[0][1] - 4))),
                max_size=8))
def test_garbage_datagrams_are_dropped_and_counted_never_raised(garbage: list[bytes]) -> None:
    p = established()
    before = sum(p.b.drops.values())
    p.b.receive_datagrams([(g, ("203.0.113.1", 4)) for g in garbage], p.now)
    p.collect("b")
    assert p.tun["b"] == []
    assert sum(p.b.drops.values()) - before >= len(garbage) - len(p.wire)  # cookie replies aside
    assert p.pb.endpoint == EP_A  # nothing unauthenticated moves the endpoint
    p.wire.clear()
    pkt = p.ping("a")
    p.deliver()
    assert p.tun["b"] == [pkt]  # and the session still works


@settings(max_examples=50)
@given(st.integers(0, 91), st.integers(1, 255))
def test_mutated_handshake_messages_never_raise(offset: int, flip: int) -> None:
    p = Pair()
    p.a.initiate(p.pa, p.now)
    p.collect("a")
    (init,) = p.take(INITIATION)
    p.receive("b", init)
    (resp,) = p.take(RESPONSE)
    for msg, to in ((init, "b"), (resp, "a")):
        bad = bytearray(msg)
        bad[offset] ^= flip
        p.now += 1.0
        p.receive(to, bytes(bad))
    # Every flipped bit before mac2 is refused; mac2 itself is ignored when the device is not under load.
    assert (p.pa.keypairs.current is not None) == (offset >= 76)
    assert p.pb.keypairs.current is None and sum(p.b.drops.values()) == 1


# -- key confirmation ------------------------------------------------------------------------------------------

def test_responder_waits_for_key_confirmation_before_sending() -> None:
    p = Pair()
    p.a.initiate(p.pa, p.now)
    p.collect("a")
    p.deliver(limit=1)  # b consumes the initiation and answers
    assert p.pb.keypairs.next is not None and p.pb.keypairs.current is None
    pkt = p.ping("b", b"early")
    assert p.take(TRANSPORT) == [] and list(p.pb.staged) == [pkt]  # staged, not sent under unconfirmed keys
    assert p.take(INITIATION) == []  # nor does b start its own handshake within 5 s of its response
    p.deliver(limit=1)  # a gets the response, completes, and sends a keepalive
    assert p.pa.keypairs.current is not None
    p.deliver(limit=1)  # b gets the keepalive: confirmed, staged packet flushed
    assert p.pb.keypairs.current is not None and p.pb.keypairs.next is None
    assert not p.pb.staged
    p.deliver()
    assert p.tun["a"] == [pkt]


def test_responder_keeps_old_session_until_new_one_is_confirmed() -> None:
    p = established()
    old_remote = p.pb.keypairs.current.remote_index
    p.now += 10
    p.a.initiate(p.pa, p.now)  # a rekeys
    p.collect("a")
    p.deliver(limit=1)  # b answers; a has not confirmed yet
    assert p.pb.keypairs.next is not None
    p.ping("b", b"during rekey")
    (msg,) = p.take(TRANSPORT, to="a")
    assert receiver_of(msg) == old_remote  # still under the old keys
    p.wire.insert(0, ("a", msg, EP_B))
    p.deliver()  # the response completes a's side; a's keepalive confirms b's
    new_remote = p.pb.keypairs.current.remote_index
    assert new_remote != old_remote and p.pb.keypairs.previous is not None
    assert len(p.tun["a"]) == 1  # the packet under the old keys still decrypted at a (its previous keypair)
    p.ping("b", b"after")
    (msg,) = p.take(TRANSPORT, to="a")
    assert receiver_of(msg) == new_remote


# -- roaming ---------------------------------------------------------------------------------------------------

def test_roaming_moves_the_endpoint_to_the_latest_authenticated_source() -> None:
    p = established()
    p.source["a"] = EP_A2  # a's NAT mapping changed
    p.ping("a")
    p.deliver()
    assert p.pb.endpoint == EP_A2
    p.b.send_packets([ipv4_packet("10.0.0.2", "10.0.0.1", b"reply")], p.now)
    assert [ep for ep, _, _ in p.b.out.sealed] == [EP_A2]
    p.collect("b")


def test_handshake_from_a_new_address_moves_the_endpoint() -> None:
    p = Pair()
    p.source["a"] = EP_A2
    p.handshake("a")
    assert p.pb.endpoint == EP_A2
    assert [ep for _, f, _, ep in p.sent if f == "b"] == [EP_A2]

def test_in_a_batch_the_last_authenticated_source_wins() -> None:
    p = established()
    p.send("a", [ipv4_packet("10.0.0.1", "10.0.0.2", bytes([i])) for i in range(3)])
    m0, m1, m2 = p.take(TRANSPORT)
    forged = bytearray(m2)
    forged[-1] ^= 1
    batch = [(m0, ("198.51.100.1", 1)), (m1, ("198.51.100.2", 2)), (m2, ("198.51.100.3", 3)),
             (bytes(forged), ("198.51.100.4", 4)), (m0, ("198.51.100.5", 5))]  # a forgery, then a replay
    p.b.receive_datagrams(batch, p.now)
    p.collect("b")
    assert len(p.tun["b"]) == 3
    assert p.pb.endpoint == ("198.51.100.3", 3)
    assert p.b.drops["transport: authentication failed"] == 1 and p.b.drops["transport: replayed or too old"] == 1


def test_a_batch_confirming_new_keys_and_carrying_old_ones_delivers_all() -> None:
    p = established()
    p.ping("a", b"old")
    (old,) = p.take(TRANSPORT)
    p.now += 6
    p.b.initiate(p.pb, p.now)  # b rekeys as initiator; a answers as responder and waits for confirmation
    p.collect("b")
    p.deliver(limit=1)
    (resp,) = p.take(RESPONSE)
    p.receive("b", resp)  # b completes; its keepalive would confirm a's new session
    (keepalive,) = p.take(TRANSPORT)
    new_pkt = p.ping("b", b"new")
    (new,) = p.take(TRANSPORT)
    p.a.receive_datagrams([(keepalive, EP_B), (new, EP_B)], p.now)
    p.collect("a")
    p.b.receive_datagrams([(old, EP_A)], p.now)  # a's packet under the previous keys, late
    p.collect("b")
    assert p.tun["a"] == [new_pkt] and len(p.tun["b"]) == 1
    assert p.pa.keypairs.next is None and not p.pa.keypairs.current.is_initiator

def test_unauthenticated_packet_does_not_move_the_endpoint() -> None:
    p = established()
    p.ping("a")
    (msg,) = p.take(TRANSPORT)
    bad = bytearray(msg)
    bad[-1] ^= 1
    p.receive("b", bytes(bad), source=EP_A2)
    p.receive("b", msg, source=EP_A)
    p.receive("b", msg, source=EP_A2)  # a replay from elsewhere
    assert p.pb.endpoint == EP_A


def test_staged_packets_flushed_on_confirmation_go_to_the_new_endpoint() -> None:
    p = Pair()
    p.a.initiate(p.pa, p.now)
    p.collect("a")
    p.deliver(limit=1)  # b answers
    pkt = p.ping("b", b"staged")  # staged until a confirms
    p.source["a"] = EP_A2  # a moves before its response reaches it, so its keepalive comes from EP_A2
    p.deliver(limit=1)
    n = len(p.sent)
    p.deliver(limit=1)  # b: keepalive from EP_A2 confirms the session and flushes the staged packet
    assert p.pb.endpoint == EP_A2
    flushed = [(message_type(d), ep) for _, frm, d, ep in p.sent[n:] if frm == "b"]
    assert flushed == [(TRANSPORT, EP_A2)]
    p.deliver()
    assert p.tun["a"] == [pkt]


# -- sizes and counters -------------------------------------------------------------------------------------------

@settings(max_examples=60)
@given(st.integers(0, DEFAULT_MTU - 20))
def test_sealed_size_is_header_plus_padded_length(payload: int) -> None:
    p = established()
    pkt = ipv4_packet("10.0.0.1", "10.0.0.2", bytes(payload))
    p.a.send_packets([pkt], p.now)
    ((_, msg),) = p.a.out.sealed_bytes()
    n = len(pkt)
    assert len(msg) == 32 + min((n + 15) // 16 * 16, DEFAULT_MTU)
    assert (len(msg) - 32) % 16 == 0 or len(msg) - 32 == DEFAULT_MTU
    p.collect("a")
    p.deliver()
    assert p.tun["b"] == [pkt]


@pytest.mark.parametrize("mtu,n,wire", [(1420, 1419, 1452), (1420, 1420, 1452), (1420, 1409, 1452),
                                        (1420, 1408, 1440), (1420, 1393, 1440), (1280, 1279, 1312), (1000, 20, 64)])
def test_padding_capped_at_mtu(mtu: int, n: int, wire: int) -> None:
    p = established(config=DeviceConfig(mtu=mtu))
    pkt = ipv4_packet("10.0.0.1", "10.0.0.2", bytes(n - 20))
    p.send("a", [pkt])
    (msg,) = [d for _, d, _ in p.wire]
    assert len(msg) == wire
    p.deliver()
    assert p.tun["b"] == [pkt]


def test_keepalive_is_32_bytes() -> None:
    p = Pair()
    p.handshake("a")
    keepalive = p.sent[2][2]
    assert message_type(keepalive) == TRANSPORT and len(keepalive) == 32
    assert p.tun["b"] == []  # a keepalive writes nothing to the TUN


def test_byte_counters() -> None:
    p = established()
    assert p.pa.tx_bytes == 148 + 32 and p.pa.rx_bytes == 92
    assert p.pb.rx_bytes == 148 + 32 and p.pb.tx_bytes == 92
    p.ping("a", bytes(100))  # 120 bytes -> padded 128 -> 160 on the wire
    p.deliver()
    assert p.pa.tx_bytes == 148 + 32 + 160 and p.pb.rx_bytes == 148 + 32 + 160
    assert p.pb.rx_data_packets == 1


def test_headroom_is_left_before_decrypted_packets() -> None:
    p = established(config=DeviceConfig(tun_headroom=10))
    pkt = p.ping("a", b"room")
    p.b.receive_datagrams([(d, s) for _, d, s in p.wire], p.now)
    ((start, end),) = p.b.out.tun
    assert end - start == 10 + len(pkt)
    assert p.b.out.tun_packets(10) == [pkt]
    p.wire.clear()
    p.b.out.clear()


# -- sessions over time, several peers, configuration changes ---------------------------------------------------

def test_simultaneous_initiations_from_both_sides_resolve_on_the_retry() -> None:
    # Each side answers the other's initiation, which replaces its own: both responses then name an
    # initiation nobody waits for and are dropped (wireguard-go behaves the same). The first
    # retransmission, 5 s + jitter later, settles it.
    p = Pair()
    start = p.now
    p.a.initiate(p.pa, p.now)
    p.collect("a")
    p.b.initiate(p.pb, p.now)
    p.collect("b")
    p.deliver()
    assert p.a.drops["response to unknown index"] == 1 and p.b.drops["response to unknown index"] == 1
    pkt_a, pkt_b = p.ping("a", b"x"), p.ping("b", b"y")  # staged on both sides
    p.advance(5.0 + 0.334, deliver=True)
    assert p.tun["b"] == [pkt_a] and p.tun["a"] == [pkt_b]
    assert p.pa.keypairs.current is not None and p.pb.keypairs.current is not None
    assert len(p.sent_of(INITIATION, since=start + 1)) == 1  # one retry did it


def test_repeated_rekeys_keep_at_most_three_keypairs_and_no_stale_indices() -> None:
    p = established()
    for i in range(12):
        p.now += 6.0
        initiator = "a" if i % 3 else "b"
        p.handshake(initiator)
        p.ping("a", bytes([i]))
        p.ping("b", bytes([i]))
        p.deliver()
        for dev, peer in ((p.a, p.pa), (p.b, p.pb)):
            live = {kp.local_index for kp in peer.keypairs.all()}
            assert set(dev.keypair_indices) == live and len(live) <= 3
            assert len(dev.handshake_indices) <= 1
    assert len(p.tun["a"]) == 12 and len(p.tun["b"]) == 12
    assert p.a.drops == {} and p.b.drops == {}


def test_previous_session_still_decrypts_packets_in_flight_during_rekey() -> None:
    p = established()
    p.ping("b", b"old keys")
    (in_flight,) = p.take(TRANSPORT, to="a")
    p.now += 6.0
    p.handshake("a")
    p.receive("a", in_flight)
    assert p.tun["a"][-1] == ipv4_packet("10.0.0.2", "10.0.0.1", b"old keys")


def test_routing_between_two_peers_by_allowed_ips() -> None:
    p = Pair()
    c = Device(b"\x0c" * 32, random_bytes=Seeded(50), wall_offset=1.7e9)
    pc_a = p.a.add_peer(c.public_key)  # a's view of c
    p.a.allowed_ips.insert("10.0.0.0/24", pc_a)  # c is a's route for the rest of the /24
    p.a.set_endpoint(pc_a, ("192.0.2.3", 51822))
    c_pa = c.add_peer(p.a.public_key)
    c.allowed_ips.insert("10.0.0.1/32", c_pa)
    p.a.send_packets([ipv4_packet("10.0.0.1", "10.0.0.2", b"to b"), ipv4_packet("10.0.0.1", "10.0.0.7", b"to c")],
                     p.now)
    sent = p.a.out.datagrams
    assert sorted(ep for ep, _ in sent) == [EP_B, ("192.0.2.3", 51822)]  # one initiation to each
    init_c = next(d for ep, d in sent if ep != EP_B)
    p.a.out.clear()
    out = c.receive_datagram(init_c, EP_A, p.now)
    ((_, resp),) = out.datagrams
    out.clear()
    p.a.receive_datagram(resp, ("192.0.2.3", 51822), p.now)
    sealed = p.a.out.sealed_bytes()  # the staged packet for c, and a keepalive
    p.a.out.clear()
    got = []
    for ep, data in sealed:
        assert ep == ("192.0.2.3", 51822)
        c.receive_datagram(data, EP_A, p.now)
        got += c.out.tun_packets()
        c.out.clear()
    assert got == [ipv4_packet("10.0.0.1", "10.0.0.7", b"to c")]
    assert list(p.pa.staged) == [ipv4_packet("10.0.0.1", "10.0.0.2", b"to b")]  # b's still waits


def test_no_route_is_dropped_and_counted() -> None:
    p = established()
    p.send("a", [ipv4_packet("10.0.0.1", "10.9.9.9"), ipv6_packet("fd00::1", "fd00::99"), b"\x45" + bytes(10),
                 b"\x75" + bytes(40)])
    assert p.wire == []
    assert p.a.drops["tun: no peer for destination"] == 2
    assert p.a.drops["tun: short packet"] == 1 and p.a.drops["tun: not IPv4/IPv6"] == 1


def test_removing_the_peer_forgets_its_sessions_routes_and_indices() -> None:
    p = established()
    p.ping("a")
    (msg,) = p.take(TRANSPORT)
    p.b.remove_peer(p.pb.public_key)
    assert p.b.keypair_indices == {} and p.b.handshake_indices == {}
    assert p.b.allowed_ips.lookup_ip("10.0.0.1") is None
    p.receive("b", msg)
    assert p.b.drops["transport: unknown receiver index"] == 1
    p.now += 6
    p.handshake("a")
    assert p.b.drops["initiation from unknown peer"] == 1


def test_changing_the_private_key_expires_sessions() -> None:
    p = established()
    p.b.set_private_key(b"\x0d" * 32)
    assert p.pb.keypairs.all() == [] and p.b.keypair_indices == {}
    p.ping("a")
    p.deliver()
    assert p.tun["b"] == []  # a's session is with b's old key
    p.now += 6
    p.a.initiate(p.pa, p.now)
    p.collect("a")
    p.deliver()
    assert p.b.drops["bad mac1"] == 1  # a still addresses b's old public key


def test_device_without_a_private_key_drops_handshakes() -> None:
    p = Pair()
    p.b.set_private_key(None)
    p.handshake("a")
    assert p.b.drops["no private key"] == 1 and p.pa.keypairs.current is None


# -- a lossy, reordering, duplicating network with time passing: invariants and recovery ----------------------

_ops = st.lists(st.one_of(
    st.tuples(st.just("send"), st.sampled_from("ab"), st.integers(1, 4)),
    st.tuples(st.just("deliver"), st.integers(1, 6)),
    st.tuples(st.just("drop"), st.integers(0, 50)),
    st.tuples(st.just("dup"), st.integers(0, 50)),
    st.tuples(st.just("swap"), st.integers(0, 50)),
    st.tuples(st.just("advance"), st.sampled_from([0.01, 1.0, 5.5, 10.0, 15.5, 60.0, 130.0, 200.0])),
    st.tuples(st.just("initiate"), st.sampled_from("ab")),
    st.tuples(st.just("roam"), st.sampled_from("ab")),
), max_size=40)


def _check_invariants(p: Pair, sent: dict) -> None:
    for name in ("a", "b"):
        dev, peer = p.dev(name), p.peer(name)
        assert set(dev.keypair_indices) == {kp.local_index for kp in peer.keypairs.all()}
        assert all(kp.peer is peer for kp in dev.keypair_indices.values())
        assert set(dev.handshake_indices) <= {peer.handshake.local_index}
        got = p.tun[name]
        assert len(got) == len(set(got))  # never delivered twice
        assert set(got) <= sent["b" if name == "a" else "a"]  # only what the other side sent, intact


@settings(max_examples=200)
@given(_ops)
def test_any_schedule_keeps_invariants_and_recovers(ops) -> None:
    p = Pair()
    sent: dict[str, set[bytes]] = {"a": set(), "b": set()}
    serial = 0
    for op in ops:
        kind = op[0]
        if kind == "send":
            for _ in range(op[2]):
                serial += 1
                sent[op[1]].add(p.ping(op[1], serial.to_bytes(4, "big")))
        elif kind == "deliver":
            p.deliver(limit=op[1])
        elif kind == "drop" and p.wire:
            p.wire.pop(op[1] % len(p.wire))
        elif kind == "dup" and p.wire:
            p.wire.append(p.wire[op[1] % len(p.wire)])
        elif kind == "swap" and len(p.wire) > 1:
            i = op[1] % len(p.wire)
            p.wire.append(p.wire.pop(i))
        elif kind == "advance":
            p.advance(op[1])
        elif kind == "initiate":
            p.dev(op[1]).initiate(p.peer(op[1]), p.now)
            p.collect(op[1])
        elif kind == "roam":
            host, port = p.source[op[1]]
            p.source[op[1]] = (host, port + 1)
        _check_invariants(p, sent)
    # Heal the network: whatever state the schedule left, traffic gets through again within a few tries.
    p.deliver()
    heal: dict[str, set[bytes]] = {"a": set(), "b": set()}
    for attempt in range(4):
        for name in ("a", "b"):
            serial += 1
            pkt = p.ping(name, serial.to_bytes(4, "big"))
            sent[name].add(pkt)
            heal[name].add(pkt)
        p.advance(6.0, deliver=True)
        p.deliver()
        _check_invariants(p, sent)
    assert heal["a"] & set(p.tun["b"]) and heal["b"] & set(p.tun["a"])


# -- logs -----------------------------------------------------------------------------------------------------------

def test_logs_name_the_peer_and_never_show_secrets(caplog) -> None:
    import base64
    import logging
    caplog.set_level(logging.DEBUG, logger="wgc")
    psk = b"\x5a" * 32
    p = Pair(psk=psk)
    p.ping("a")
    p.deliver()
    p.advance(200, deliver=True)  # timers fire and log too
    p.b.remove_peer(p.pb.public_key)
    records = [r for r in caplog.records if r.name.startswith("wgc")]
    assert any("handshake complete" in r.getMessage() for r in records)
    secrets = [p.key_a, p.key_b, crypto.clamp(p.key_a), crypto.clamp(p.key_b), psk]
    forms = [f(s) for s in secrets for f in (bytes.hex, lambda b: base64.b64encode(b).decode(), repr)]
    for r in records:
        text = r.getMessage()
        assert not any(form in text for form in forms), text
        if r.name == "wgc.peer":
            assert text.startswith("[peer:") and ("[peer:" + p.pa.short + "]" in text
                                                  or "[peer:" + p.pb.short + "]" in text), text
    for obj in (p.a, p.pa, p.pa.handshake, p.pa.keypairs.current, p.a.identity):
        assert not any(form in repr(obj) for form in forms)


# -- keypair slots (wireguard-go BeginSymmetricSession / ReceivedWithKeypair) --------------------------------------

def test_keypair_slot_transitions() -> None:
    def kp(initiator: bool) -> Keypair:
        return Keypair(bytes(32), bytes(32), local_index=0, remote_index=0, created=0.0, is_initiator=initiator,
                       peer=None)

    s = KeypairSlots()
    c1 = kp(True)
    assert s.install(c1) == [] and (s.previous, s.current, s.next) == (None, c1, None)
    c2 = kp(True)
    assert s.install(c2) == [] and (s.previous, s.current, s.next) == (c1, c2, None)
    c3 = kp(True)
    assert s.install(c3) == [c1] and (s.previous, s.current, s.next) == (c2, c3, None)
    # As responder: parked as next, previous dropped, current kept for sending.
    n1 = kp(False)
    assert s.install(n1) == [c2] and (s.previous, s.current, s.next) == (None, c3, n1)
    assert s.received_with(c3) == (False, [])
    # Initiating while a responder session is unconfirmed: next becomes previous, current goes.
    c4 = kp(True)
    assert s.install(c4) == [c3] and (s.previous, s.current, s.next) == (n1, c4, None)
    n2 = kp(False)
    assert s.install(n2) == [n1] and (s.previous, s.current, s.next) == (None, c4, n2)
    # Confirmation: next becomes current, current becomes previous.
    assert s.received_with(n2) == (True, []) and (s.previous, s.current, s.next) == (c4, n2, None)
    n3 = kp(False)
    s.install(n3)
    assert s.received_with(n3) == (True, []) and (s.previous, s.current, s.next) == (n2, n3, None)
    assert s.clear() == [n2, n3] and s.all() == []
