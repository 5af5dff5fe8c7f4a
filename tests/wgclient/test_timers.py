"""WireGuard's timers, by stepping a pair's clock (Pair.advance): nothing here sleeps.

Covers retransmission and giving up, key wiping, rekeying on time and message counts, key expiry on send
and receive, passive and persistent keepalives and the silence-triggered handshake (wireguard.md §6).
"""
from __future__ import annotations

import pytest

from tests.support.pair import INITIATION, TRANSPORT, Pair, ipv4_packet
from wgclient.constants import (KEY_ZERO_AFTER, REJECT_AFTER_MESSAGES, REKEY_AFTER_MESSAGES,
                                REKEY_TIMEOUT_JITTER_MAX)
from wgclient.noise.messages import message_type
from wgclient.timers import PeerTimers, Timer

JMAX = REKEY_TIMEOUT_JITTER_MAX  # 0.334: the jitter is uniform in [0, 0.333]


def established(**kw) -> tuple[Pair, float]:
    """A pair with a fresh session, its clock 6 s past the handshake (so a new one is not rate limited)."""
    p = Pair(**kw)
    p.handshake("a")
    t0 = p.now
    p.advance(6.0, deliver=True)
    assert p.sent[-1][0] == t0  # nothing was due meanwhile
    return p, t0


def kinds(p: Pair, frm: str, since: float) -> list[int]:
    """Message types `frm` emitted since a time, sorted (within one input the order is not meaningful)."""
    return sorted(message_type(d) for t, f, d, _ in p.sent if f == frm and t >= since)


# -- handshake retransmission ---------------------------------------------------------------------------------

def test_retransmit_every_5s_plus_jitter_then_give_up_after_20_and_drop_staged() -> None:
    p = Pair()
    start = p.now
    p.ping("a", b"will be dropped")
    assert len(p.pa.staged) == 1
    for _ in range(60):  # the wire to b is cut: every initiation is lost
        p.advance(2.5)
        p.drop_all()
    times = [t for t, _ in p.sent_of(INITIATION, "a")]
    assert len(times) == 20 and times[0] == start
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(5.0 <= g <= 5.0 + JMAX for g in gaps), gaps
    assert len(set(round(g, 3) for g in gaps)) > 1  # jitter really varies
    assert 95.0 <= times[-1] - start <= 19 * (5 + JMAX)
    assert not p.pa.staged  # given up: staged packets dropped
    assert p.pa.timers.retransmit_handshake is None
    # No session ever existed: keys (the handshake state) are wiped 540 s after giving up.
    give_up = times[-1]
    assert give_up + 5.0 + KEY_ZERO_AFTER <= p.pa.timers.zero_key_material <= give_up + 5.0 + JMAX + KEY_ZERO_AFTER
    p.advance(KEY_ZERO_AFTER)
    assert p.pa.timers.zero_key_material is None and p.pa.handshake.local_index == 0
    assert len(p.sent_of(INITIATION, "a")) == 20  # and it stayed quiet


def test_handshake_completing_on_a_retry_stops_retransmission() -> None:
    p = Pair()
    pkt = p.ping("a")
    p.drop_all()  # the first initiation is lost
    p.advance(5.0 + JMAX, deliver=True)  # the retry gets through
    assert p.tun["b"] == [pkt]
    assert p.pa.timers.retransmit_handshake is None and p.pa.timers.handshake_attempts == 0
    p.advance(60, deliver=True)
    assert len(p.sent_of(INITIATION, "a")) == 2


def test_keys_zeroed_540s_after_the_session_was_derived() -> None:
    p, t0 = established()
    assert p.pa.timers.zero_key_material == t0 + KEY_ZERO_AFTER
    p.ping("a")
    for _ in range(int(KEY_ZERO_AFTER // 10) - 2):  # b went away: nothing reaches it
        p.advance(10)
        p.drop_all()
    assert p.now < t0 + KEY_ZERO_AFTER
    assert p.pa.keypairs.current is not None  # still held (though too old to use)
    assert len(p.sent_of(INITIATION, "a")) == 1 + 20  # the silence handshake, retried and given up
    p.advance(t0 + KEY_ZERO_AFTER - p.now + 0.001)
    p.drop_all()
    assert p.pa.keypairs.all() == [] and p.a.keypair_indices == {}
    assert p.pb.keypairs.all() == [] and p.b.keypair_indices == {}


# -- rekeying ----------------------------------------------------------------------------------------------------

def test_rekey_after_120s_on_send_initiator_only() -> None:
    p, t0 = established()
    p.advance(t0 + 119.5 - p.now, deliver=True)
    p.ping("a")
    assert kinds(p, "a", p.now) == [TRANSPORT]
    p.deliver()
    p.advance(1.0, deliver=True)  # 120.5 s: past REKEY_AFTER_TIME
    p.ping("b")
    assert kinds(p, "b", p.now) == [TRANSPORT]  # b is the responder: it does not rekey on time
    p.ping("a")
    assert kinds(p, "a", p.now) == [INITIATION, TRANSPORT]
    p.deliver()
    assert p.pa.keypairs.current.created == p.now


def test_rekey_on_receive_after_165s_once() -> None:
    p, t0 = established()
    p.advance(t0 + 164.5 - p.now, deliver=True)
    p.ping("b")
    p.deliver(limit=1)
    assert kinds(p, "a", p.now) == []  # 164.5 s: not yet
    p.advance(1.0)
    p.drop_all()  # a's passive keepalive
    p.ping("b")
    p.deliver(limit=1)
    assert kinds(p, "a", p.now) == [INITIATION]  # past 165 s: a (the initiator) starts a handshake
    assert p.pa.timers.sent_last_minute_handshake
    p.ping("a")
    p.deliver()  # and b, the responder, never does
    assert len(p.sent_of(INITIATION, "b")) == 0
    assert p.pa.keypairs.current.created == p.now and not p.pa.timers.sent_last_minute_handshake


def test_sending_with_a_keypair_180s_old_stages_and_handshakes() -> None:
    p, t0 = established()
    p.advance(t0 + 180.0 - p.now, deliver=True)
    pkt = p.ping("a")
    assert kinds(p, "a", p.now) == [INITIATION]
    assert list(p.pa.staged) == [pkt]
    p.deliver()
    assert p.tun["b"] == [pkt] and not p.pa.staged


def test_receiving_under_a_keypair_180s_old_is_dropped() -> None:
    p, t0 = established()
    p.advance(t0 + 179.9 - p.now, deliver=True)
    p.ping("b", b"late")
    p.now = t0 + 180.0
    p.deliver()
    assert p.tun["a"] == []
    assert p.a.drops["transport: keypair expired"] == 1


@pytest.mark.parametrize("side", ["a", "b"])
def test_rekey_after_messages(side: str) -> None:
    p, _ = established()
    kp = p.peer(side).keypairs.current
    kp.send_counter = REKEY_AFTER_MESSAGES - 1
    p.ping(side)  # sent with counter 2^60 - 1: not past the limit yet
    assert kinds(p, side, p.now) == [TRANSPORT]
    p.deliver()
    p.ping(side)  # counter now 2^60 + 1 > REKEY_AFTER_MESSAGES: both roles rekey
    assert kinds(p, side, p.now) == [INITIATION, TRANSPORT, TRANSPORT]
    p.deliver()
    assert len(p.tun["b" if side == "a" else "a"]) == 2
    assert p.peer(side).keypairs.current is not kp


@pytest.mark.timeout(20)
def test_reject_after_messages_stages_the_rest_and_handshakes() -> None:
    p, _ = established()
    kp = p.pa.keypairs.current
    kp.send_counter = REJECT_AFTER_MESSAGES - 1
    packets = [ipv4_packet("10.0.0.1", "10.0.0.2", bytes([i]) * 4) for i in range(3)]
    p.send("a", packets)
    # The last usable counter carries the first packet; the others wait for new keys.
    assert kinds(p, "a", p.now) == [INITIATION, TRANSPORT]
    assert list(p.pa.staged) == packets[1:]
    p.deliver()
    assert p.tun["b"] == packets
    assert p.pa.keypairs.current is not kp


@pytest.mark.timeout(20)
def test_staged_packets_flushed_into_a_keypair_at_its_limit_do_not_hang() -> None:
    p, _ = established()
    kp = p.pa.keypairs.current
    kp.send_counter = REJECT_AFTER_MESSAGES - 1
    staged = [ipv4_packet("10.0.0.1", "10.0.0.2", bytes([i]) * 4) for i in range(3)]
    p.pa.staged.extend(staged)
    p.a.set_persistent_keepalive(p.pa, 25, p.now)  # flushes the staged queue with the old keypair
    p.collect("a")
    assert kinds(p, "a", p.now) == [INITIATION, TRANSPORT]
    assert kp.send_counter == REJECT_AFTER_MESSAGES
    assert list(p.pa.staged) == staged[1:]  # still in order
    p.deliver()
    assert p.tun["b"] == staged


# -- keepalives and the silence handshake -------------------------------------------------------------------------

def test_passive_keepalive_10s_after_receiving_data() -> None:
    p, _ = established()
    p.ping("a")
    p.deliver()
    received = p.now
    p.advance(9.9)
    assert kinds(p, "b", received) == []
    p.advance(0.1)
    assert kinds(p, "b", received) == [TRANSPORT]
    assert len(p.sent[-1][2]) == 32 and p.sent[-1][0] == received + 10.0
    p.deliver()
    p.advance(30, deliver=True)
    assert kinds(p, "b", received) == [TRANSPORT]  # just the one


def test_passive_keepalive_cancelled_when_we_send() -> None:
    p, _ = established()
    p.ping("a")
    p.deliver()
    received = p.now
    p.advance(5, deliver=True)
    p.ping("b", b"reply")
    p.deliver()
    p.advance(20, deliver=True)
    assert [len(d) for t, f, d, _ in p.sent if f == "b" and t >= received] == [64]  # the reply only


def test_another_keepalive_when_more_data_arrived_meanwhile() -> None:
    p, _ = established()
    first = p.now
    p.ping("a")
    p.deliver()
    p.advance(3)
    p.ping("a")
    p.deliver()
    p.drop_all()
    p.advance(30)
    times = [t for t, f, d, _ in p.sent if f == "b" and t >= first]
    assert times == [first + 10.0, first + 20.0]


def test_new_handshake_15s_plus_jitter_after_unanswered_data() -> None:
    p, _ = established()
    sent = p.now
    p.ping("a")
    p.drop_all()  # nothing comes back
    p.advance(14.99)
    assert p.sent_of(INITIATION, "a", since=sent) == []
    p.advance(JMAX)
    ((when, _),) = p.sent_of(INITIATION, "a", since=sent)
    assert 15.0 <= when - sent <= 15.0 + JMAX


def test_new_handshake_timer_cancelled_by_any_authenticated_reply() -> None:
    p, _ = established()
    sent = p.now
    p.ping("a")
    p.deliver()
    p.advance(60, deliver=True)  # b's passive keepalive at +10 answers it
    assert p.sent_of(INITIATION, since=sent) == []
    assert kinds(p, "b", sent) == [TRANSPORT]


def test_persistent_keepalive_interval_and_turning_it_on_sends_one_at_once() -> None:
    p, _ = established()
    on = p.now
    p.a.set_persistent_keepalive(p.pa, 25, p.now)
    p.collect("a")
    assert [(t - on, len(d)) for t, f, d, _ in p.sent if f == "a" and t >= on] == [(0.0, 32)]
    p.advance(100, deliver=True)
    times = [t - on for t, f, d, _ in p.sent if f == "a" and t >= on]
    assert times == [0.0, 25.0, 50.0, 75.0, 100.0]
    p.ping("a")  # any authenticated packet sent or received re-arms it: b's passive keepalive comes at 110
    p.deliver()
    p.advance(40, deliver=True)
    after = [(t - on, message_type(d), len(d)) for t, f, d, _ in p.sent if f == "a" and t > on + 100]
    # The keepalive at 135 s is also the first packet sent with a session older than 120 s: a rekeys.
    assert after[:2] == [(135.0, INITIATION, 148), (135.0, TRANSPORT, 32)]
    p.a.set_persistent_keepalive(p.pa, 0, p.now)  # off
    n = len(p.sent)
    p.advance(100, deliver=True)
    assert [f for _, f, _, _ in p.sent[n:]] == []


def test_persistent_keepalive_without_a_session_starts_a_handshake() -> None:
    p = Pair()
    p.a.set_persistent_keepalive(p.pa, 25, p.now)
    p.collect("a")
    assert [message_type(d) for _, d, _ in p.wire] == [INITIATION]
    p.deliver()
    assert p.pa.keypairs.current is not None and p.pb.keypairs.current is not None


def test_persistent_keepalive_rearmed_by_received_packets_too() -> None:
    p, _ = established()
    p.b.set_persistent_keepalive(p.pb, 10, p.now)
    p.collect("b")
    p.deliver()
    start = p.now
    p.advance(7, deliver=True)
    p.a.set_persistent_keepalive(p.pa, 100, p.now)  # a sends one keepalive (not data: no passive reply)
    p.collect("a")
    p.deliver()  # b receives at +7: its keepalive moves to +17
    p.advance(12, deliver=True)
    assert [round(t - start, 3) for t, f, d, _ in p.sent if f == "b" and t > start] == [17.0]


# -- the timer table itself -----------------------------------------------------------------------------------------

def test_peer_timers_expired_clears_and_orders() -> None:
    t = PeerTimers(lambda: 0.25)
    assert t.next_deadline() is None and t.expired(1e9) == []
    t.on_handshake_initiated(100.0)
    t.on_data_sent(100.0)
    t.on_data_received(100.0)
    t.on_session_derived(100.0)
    t.persistent_keepalive_interval = 3
    t.on_any_authenticated_packet_traversal(100.0)
    assert t.next_deadline() == 103.0
    assert t.expired(104.0) == [Timer.PERSISTENT_KEEPALIVE]
    assert t.next_deadline() == 105.25
    assert t.expired(120.0) == [Timer.RETRANSMIT_HANDSHAKE, Timer.SEND_KEEPALIVE, Timer.NEW_HANDSHAKE]
    assert t.expired(120.0) == []
    assert t.next_deadline() == 100.0 + KEY_ZERO_AFTER
    t.on_data_received(120.0)
    t.on_data_received(121.0)  # already armed: only remembers another is needed
    assert t.send_keepalive == 130.0 and t.need_another_keepalive
    t.on_any_authenticated_packet_sent()
    assert t.send_keepalive is None
    t.on_data_sent(121.0)
    t.on_any_authenticated_packet_received()
    assert t.new_handshake is None
    t.stop()
    assert t.next_deadline() is None


def test_passive_and_persistent_keepalive_due_together_send_one() -> None:
    # b receives data with a 10 s persistent interval: both keepalive timers come due at the same instant.
    # The first keepalive sent re-arms the persistent one, so it must not send a second.
    p, _ = established()
    p.b.set_persistent_keepalive(p.pb, 10, p.now)
    p.collect("b")
    p.deliver()
    p.ping("a")
    p.deliver()
    received = p.now
    p.advance(10.0)
    assert [(t - received, len(d)) for t, f, d, _ in p.sent if f == "b" and t > received] == [(10.0, 32)]
    assert p.pb.timers.persistent_keepalive == received + 20.0

