"""A flood of handshake initiations against the device core, with stepped time (issue 9): the data of a batch
goes first, handshake work per batch is bounded, the rest is dropped and counted, a flooded device demands
cookies, and going under load and back is logged once each."""
from __future__ import annotations

import json
import logging
import random
import time

import pytest

from tests.support.pair import COOKIE_REPLY, EP_A, INITIATION, RESPONSE, Pair
from tools.bench.flooder import initiations
from wgclient.constants import HANDSHAKE_BUDGET, HANDSHAKE_BUDGET_UNDER_LOAD, UNDER_LOAD_AFTER
from wgclient.device import DeviceConfig
from wgclient.errors import ParseError
from wgclient.handshake_gate import COOKIE_SENT, OVER_BUDGET, OVER_SHARE
from wgclient.noise import handshake as noise
from wgclient.noise.messages import message_type

FLOODER = ("198.51.100.66", 40000)


def flood(victim_public: bytes, n: int, seed: int = 5) -> list[bytes]:
    """Initiations that pass the victim's mac1 check but hold random ephemeral/static/timestamp fields (the
    benchmark's flooder's messages, from a seeded generator)."""
    return initiations(victim_public, n, random.Random(seed).randbytes)


class Counting:
    """Wraps a device's cookie checker to count mac1 checks: every handshake message that gets any work."""

    def __init__(self, checker) -> None:
        self.checker, self.mac1_checks = checker, 0

    def check_mac1(self, message) -> bool:
        self.mac1_checks += 1
        return self.checker.check_mac1(message)

    def __getattr__(self, name):
        return getattr(self.checker, name)


def established() -> Pair:
    p = Pair()
    p.handshake()
    assert p.pb.keypairs.current is not None
    return p


def test_flood_batch_with_data_mixed_in_delivers_all_data_and_bounds_handshake_work() -> None:
    p = established()
    p.b.cookie_checker = counting = Counting(p.b.cookie_checker)
    pings = []
    for i in range(20):
        pings.append(p.ping("a", b"ping %d" % i))
    data = [d for _, d, _ in p.wire]
    p.wire.clear()
    sources = [("198.51.100.%d" % (i % 40), 40000 + i % 40) for i in range(1000)]  # 40 flooding addresses
    batch = [(m, src) for m, src in zip(flood(p.b.public_key, 1000), sources)]
    for i, d in enumerate(data):  # one data packet every 50 flood messages, the first at the very start
        batch.insert(i * 51, (d, EP_A))
    p.b.receive_datagrams(batch, p.now)
    out = p.b.out
    assert out.tun_packets() == pings  # every data packet, in order
    replies = [d for _, d in out.datagrams]
    budget = HANDSHAKE_BUDGET_UNDER_LOAD  # a batch over the budget puts the device under load at once
    assert counting.mac1_checks == budget  # handshake work: the budget, not the flood
    assert len(replies) == budget and {message_type(r) for r in replies} == {COOKIE_REPLY}
    assert sorted({ep for ep, _ in out.datagrams}) == sorted(set(sources[:budget]))
    drops = p.b.drops
    assert drops[COOKIE_SENT] == budget
    # The first message of each of the first `budget` sources was processed; the rest of those sources'
    # messages were over their share, everything from the other sources over the budget.
    assert drops[OVER_SHARE] == budget * (1000 // 40 - 1)
    assert drops[OVER_BUDGET] == (40 - budget) * (1000 // 40)
    assert drops[OVER_SHARE] + drops[OVER_BUDGET] + drops[COOKIE_SENT] == 1000
    assert p.b.gate.under_load(p.now) and p.b.gate.episodes == 1
    assert p.pb.keypairs.current is not None and p.pb.rx_data_packets == 20


def test_small_handshake_batches_are_processed_in_full_when_not_under_load() -> None:
    p = established()
    batch = [(m, ("198.51.100.%d" % i, 1)) for i, m in enumerate(flood(p.b.public_key, HANDSHAKE_BUDGET))]
    p.b.receive_datagrams(batch, p.now)
    assert not p.b.gate.under_load(p.now) and p.b.out.datagrams == []  # no cookies demanded
    assert p.b.drops["handshake: authentication failed"] == HANDSHAKE_BUDGET  # each one opened (DH) and refused


def test_peer_initiation_ahead_of_a_flood_in_one_batch_gets_a_cookie_reply_not_a_response() -> None:
    """The load is judged on the whole batch before any of it is processed: the first message of a flooded
    batch is already under load, and a source without a valid cookie is asked for one."""
    p = Pair()
    p.a.initiate(p.pa, p.now)
    p.collect("a")
    (init,) = p.take(INITIATION)
    batch = [(init, EP_A)] + [(m, FLOODER) for m in flood(p.b.public_key, 200)]
    p.b.receive_datagrams(batch, p.now)
    p.collect("b")
    to_a = [d for to, d, _ in p.wire if to == "a"]
    assert [message_type(d) for d in to_a] == [COOKIE_REPLY, COOKIE_REPLY]  # to a and to the flooder
    assert p.sent_of(RESPONSE, "b") == []
    assert p.pb.handshake.state is noise.HandshakeState.ZEROED and p.pb.keypairs.current is None
    # a takes the cookie; its retry carries mac2 and gets through while the flood goes on.
    p.deliver(limit=1)
    assert p.pa.cookie.cookie is not None
    p.wire.clear()
    p.advance(0.9)
    p.b.receive_datagrams([(m, FLOODER) for m in flood(p.b.public_key, 200, seed=6)], p.now)
    p.b.out.clear()
    p.advance(5.0 - 0.9 + 0.334)
    (retry,) = p.take(INITIATION)
    assert retry[132:] != bytes(16)
    p.b.receive_datagrams([(m, FLOODER) for m in flood(p.b.public_key, 100, seed=7)] + [(retry, EP_A)], p.now)
    p.collect("b")
    assert p.b.gate.under_load(p.now)
    assert [message_type(d) for to, d, _ in p.wire if to == "a"] == [COOKIE_REPLY, RESPONSE]
    p.deliver()
    assert p.pa.keypairs.current is not None and p.pb.keypairs.current is not None


def test_a_source_without_a_cookie_gets_a_cookie_reply_while_under_load() -> None:
    p = established()
    p.b.receive_datagrams([(m, FLOODER) for m in flood(p.b.public_key, 100)], p.now)
    p.b.out.clear()
    p.now += UNDER_LOAD_AFTER / 2
    p.a.initiate(p.pa, p.now + 10)  # a rekey from a, in a later batch of its own
    p.collect("a")
    (init,) = p.take(INITIATION)
    p.receive("b", init)
    assert [message_type(d) for d in p.take()] == [COOKIE_REPLY]
    p.now += UNDER_LOAD_AFTER  # the flood stopped a second ago: no longer under load
    p.b.on_timer(p.now)
    assert not p.b.gate.under_load(p.now)


def test_under_load_is_logged_once_on_entering_and_once_on_leaving(caplog) -> None:
    p = Pair(config_b=DeviceConfig(load_log_interval=60.0))
    p.b.next_deadline()
    caplog.set_level(logging.INFO, logger="wgc.device")
    messages = flood(p.b.public_key, 300)
    start = p.now
    for i in range(30):  # 3 s of flood, a batch every 0.1 s
        p.b.receive_datagrams([(m, FLOODER) for m in messages[i * 10:i * 10 + 10] * 4], p.now)
        if i == 0:
            assert p.b.armed_deadline() == p.now + UNDER_LOAD_AFTER  # the runner learns the episode's end
        p.b.out.clear()
        p.advance(0.1)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith("under load: 40 handshake messages in one batch")
    assert caplog.records[0].levelno == logging.WARNING
    assert p.b.next_deadline() == p.b.gate.deadline() == p.now - 0.1 + UNDER_LOAD_AFTER
    p.advance(UNDER_LOAD_AFTER)  # the deadline fires: the end is logged when it happens
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and lines[1].startswith("no longer under load: meanwhile 0 handshake messages "
                                                  "dropped over the batch budget, 1170 over a source's share, "
                                                  "30 answered with a cookie")
    assert p.b.next_deadline() is None and p.now - start < 4.2
    # A second and a third episode within a minute: not logged, but counted and mentioned later.
    for _ in range(2):
        p.b.receive_datagrams([(m, FLOODER) for m in messages[:40]], p.now)
        p.b.out.clear()
        p.advance(UNDER_LOAD_AFTER + 0.5)
    assert len(caplog.records) == 2 and p.b.gate.episodes == 3
    p.now = start + 61.0
    p.b.receive_datagrams([(m, FLOODER) for m in messages[:40]], p.now)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and lines[2].endswith("; 2 shorter episodes since the last message")


# -- the counters in `wgc status` ---------------------------------------------------------------------------------

class _Udp:
    port, send_errors = 51821, 2


class _Runner:
    def __init__(self, device) -> None:
        self.device, self.udp, self.paths, self.tun_write_errors = device, _Udp(), None, 0


class _Config:
    name, peers = "wgf0", []


def test_status_shows_the_drop_counters_and_the_load_as_text_and_json() -> None:
    from wgclient import control
    from wgclient.aio.control_target import NodeControl

    p = established()
    p.b.receive_datagrams([(m, FLOODER) for m in flood(p.b.public_key, 50)], time.monotonic())
    status = NodeControl(_Runner(p.b), _Config()).status()
    assert control.check_status(json.loads(json.dumps(status))) == status  # what --json prints, as it is
    assert status["under_load"] is True and status["under_load_episodes"] == 1
    assert status["drops"] == {OVER_SHARE: 49, COOKIE_SENT: 1, "udp: send errors": 2}
    header = control.format_header(status, 0.0)
    assert header[-2:] == [
        "handshake load: under load now (cookies demanded, handshakes limited per source); 1 episode under "
        "load since start",
        f"drops: 49 {OVER_SHARE}, 2 udp: send errors, 1 {COOKIE_SENT}"]
    for bad in ({"x": -1}, [], {"x": 1.5}):
        with pytest.raises(ParseError):
            control.check_status(dict(status, drops=bad))
    with pytest.raises(ParseError):
        control.check_status(dict(status, under_load="yes"))


# -- sources relayed by DERP --------------------------------------------------------------------------------------

def derp_source(key: bytes, region: int = 901) -> tuple:
    return ("127.3.3.40", region, key)     # wgclient/aio/paths.py: (DERP_MAGIC_IP, region, sender key)


def test_a_peer_relayed_by_derp_is_not_crowded_out_by_a_flooder_on_the_same_relay() -> None:
    """Every packet a relay brings has the same pseudo-address; under load each sender key is its own
    source: a's initiation gets a cookie reply addressed to a's key through the relay (a flooding DERP
    client in the same batch gets its own), a's retry with mac2 gets through while the flood goes on, and
    the unmanaged peer does not roam to the relay's pseudo-address."""
    p = Pair()
    a_pub = p.pb.public_key
    via_derp = derp_source(a_pub)
    p.source["a"] = via_derp
    flooder = derp_source(b"\x66" * 32)
    p.a.initiate(p.pa, p.now)
    p.collect("a")
    (init,) = p.take(INITIATION)
    batch = [(m, flooder) for m in flood(p.b.public_key, 100)] + [(init, via_derp)]
    p.b.receive_datagrams(batch, p.now)
    p.collect("b")
    cookies = [(ep, d) for _, name, d, ep in p.sent if name == "b" and message_type(d) == COOKIE_REPLY]
    assert sorted(ep[2] for ep, _ in cookies) == sorted([a_pub, b"\x66" * 32]), "one cookie each, to each key"
    assert p.b.drops[OVER_SHARE] == 99                   # the flooder's other 99 (one share per key)
    cookie_for_a = next(d for ep, d in cookies if ep[2] == a_pub)
    p.wire = [("a", cookie_for_a, p.source["b"])]      # what the relay brings a (the flooder's goes elsewhere)
    p.deliver()
    assert p.pa.cookie.cookie is not None
    p.advance(5.0 + 0.334)
    (retry,) = p.take(INITIATION)
    assert retry[132:] != bytes(16)
    assert p.b.cookie_checker.check_mac2(retry, p.b.gate.cookie_source(via_derp), p.now)
    assert not p.b.cookie_checker.check_mac2(retry, p.b.gate.cookie_source(flooder), p.now), "the cookie is a's own"
    p.b.receive_datagrams([(m, flooder) for m in flood(p.b.public_key, 100, seed=7)] + [(retry, via_derp)], p.now)
    p.collect("b")
    assert p.b.gate.under_load(p.now)
    assert [message_type(d) for to, d, _ in p.wire if to == "a"][-1] == RESPONSE
    p.wire = [w for w in p.wire if w[0] == "a" and message_type(w[1]) == RESPONSE]
    p.deliver()
    assert p.pa.keypairs.current is not None and p.pb.keypairs.current is not None
    assert p.pb.endpoint == EP_A, "no roaming to the relay's pseudo-address"
