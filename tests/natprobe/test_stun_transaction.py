"""The STUN transaction core with hand-stepped time, and the asyncio client against real sockets."""
from __future__ import annotations

import asyncio
import itertools
import socket

import pytest
from hypothesis import given, strategies as st

from natprobe import stun
from natprobe.aio.client import StunClient, StunError, StunTimeout, stun_binding
from natprobe.aio.server import start_stun_server
from natprobe.errors import UsageError
from natprobe.responder import StunResponder
from natprobe.transaction import (BindingFailed, BindingSucceeded, RetransmitConfig, SendDatagram,
                                  Transactions)

DEST = ("192.0.2.10", 3478)


def counter_rand():
    counter = itertools.count(1)
    return lambda n: next(counter).to_bytes(n, "big")


def test_retransmission_schedule_follows_rfc8489():
    core = Transactions(counter_rand(), RetransmitConfig(rto=0.5, rc=7, rm=16))
    txid, out = core.start(DEST, 100.0)
    assert out == [SendDatagram(DEST, stun.binding_request(txid))]
    sends, now = [100.0], 100.0
    while True:
        now = core.next_deadline()
        outs = core.on_timer(now)
        if outs and isinstance(outs[0], BindingFailed):
            assert outs == [BindingFailed(txid, DEST, "timeout")]
            break
        assert [type(o) for o in outs] == [SendDatagram]
        sends.append(now)
    assert [round(s - 100.0, 6) for s in sends] == [0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert round(now - 100.0, 6) == 39.5  # Rm x RTO after the last send
    assert core.next_deadline() is None and len(core) == 0


def test_timer_before_deadline_does_nothing():
    core = Transactions(counter_rand(), RetransmitConfig(rto=1.0, rc=2, rm=4))
    core.start(DEST, 0.0)
    assert core.on_timer(0.999) == []
    assert len(core.on_timer(1.0)) == 1


def test_single_shot_config_times_out_after_rm_rto():
    core = Transactions(counter_rand(), RetransmitConfig(rto=0.1, rc=1, rm=10))
    txid, _ = core.start(DEST, 5.0)
    assert core.next_deadline() == pytest.approx(6.0)
    assert core.on_timer(6.0) == [BindingFailed(txid, DEST, "timeout")]


def test_response_matching_rtt_and_drops():
    core = Transactions(counter_rand())
    txid, out = core.start(DEST, 10.0)
    request = stun.parse_message(out[0].data)
    answer = stun.binding_success(request, ("203.0.113.5", 41641))
    assert core.on_datagram(b"garbage", DEST, 10.1) == []
    assert core.on_datagram(answer, ("192.0.2.99", 3478), 10.1) == []          # wrong source
    other = stun.binding_success(stun.parse_message(stun.binding_request(b"z" * 12)), ("1.2.3.4", 1))
    assert core.on_datagram(other, DEST, 10.1) == []                          # unknown id
    got = core.on_datagram(answer, ("::ffff:192.0.2.10", 3478), 10.25)        # mapped source is fine
    assert got == [BindingSucceeded(txid, DEST, ("203.0.113.5", 41641), pytest.approx(0.25), False)]
    assert core.on_datagram(answer, DEST, 10.3) == []                         # duplicate: gone
    assert dict(core.drops) == {"not-stun-response": 1, "wrong-source": 1, "unknown-transaction": 2}


def test_retransmitted_flag_and_error_response():
    core = Transactions(counter_rand(), RetransmitConfig(rto=0.5, rc=3, rm=2))
    txid, out = core.start(DEST, 0.0)
    core.on_timer(0.5)
    request = stun.parse_message(out[0].data)
    ok = core.on_datagram(stun.binding_success(request, ("198.51.100.1", 7)), DEST, 0.6)
    assert ok[0].retransmitted is True
    txid2, out2 = core.start(DEST, 1.0)
    err = stun.binding_error(stun.parse_message(out2[0].data), 400, "Bad Request")
    assert core.on_datagram(err, DEST, 1.1) == [BindingFailed(txid2, DEST, "error 400 Bad Request")]


def test_bad_config_and_repeated_ids_are_usage_errors():
    with pytest.raises(UsageError):
        RetransmitConfig(rto=0)
    core = Transactions(lambda n: b"\x00" * n)
    core.start(DEST, 0.0)
    with pytest.raises(UsageError):
        core.start(DEST, 0.0)


@given(st.lists(st.tuples(st.binary(max_size=64), st.booleans()), max_size=20))
def test_arbitrary_datagrams_never_raise(datagrams):
    core = Transactions(counter_rand())
    txid, out = core.start(DEST, 0.0)
    for data, from_dest in datagrams:
        # Splice the live transaction id into some inputs so deeper parsing is exercised.
        if len(data) >= 20 and from_dest:
            data = data[:8] + txid + data[20:]
        for event in core.on_datagram(data, DEST if from_dest else ("192.0.2.1", 1), 0.1):
            assert isinstance(event, (BindingSucceeded, BindingFailed))


@pytest.mark.timeout(20)
def test_asyncio_client_against_the_server_and_a_silent_port():
    async def main():
        server = await start_stun_server("127.0.0.1", 0)
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        silent.bind(("127.0.0.1", 0))
        try:
            result = await stun_binding("127.0.0.1", server.port, local=("127.0.0.1", 0))
            assert result.mapped[0] == "127.0.0.1" and 0 <= result.rtt < 2   # a loopback round trip, even loaded
            client = await StunClient.open(local=("127.0.0.1", 0), config=RetransmitConfig(rto=0.05, rc=3, rm=2))
            try:
                got = await asyncio.gather(*(client.binding(("127.0.0.1", server.port)) for _ in range(5)))
                assert {g.mapped for g in got} == {client.local_address}
                loop = asyncio.get_running_loop()
                start = loop.time()
                with pytest.raises(StunTimeout):
                    await client.binding(silent.getsockname())
                elapsed = loop.time() - start
                # sends at 0, 50, 150 ms; fails 100 ms later (with the default RTO of 0.5 s that would be 2.5 s)
                assert 0.05 + 0.1 + 0.1 <= elapsed < 2.0
                assert silent.recv(100) and silent.recv(100) and silent.recv(100)
            finally:
                client.close()
        finally:
            server.close()
            silent.close()
    asyncio.run(main())


@pytest.mark.timeout(20)
def test_asyncio_client_reports_error_responses():
    async def main():
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)

        def reply():
            data, src = sock.recvfrom(2048)
            sock.sendto(stun.binding_error(stun.parse_message(data), 438, "Stale Nonce"), src)
        loop.add_reader(sock.fileno(), reply)
        try:
            with pytest.raises(StunError, match="438 Stale Nonce"):
                await stun_binding(*sock.getsockname(), local=("127.0.0.1", 0))
        finally:
            loop.remove_reader(sock.fileno())
            sock.close()
    asyncio.run(main())


def test_responder_counts_are_per_reason():
    responder = StunResponder()
    assert responder.answer(stun.binding_success(stun.parse_message(stun.binding_request(b"a" * 12)),
                                                 ("1.2.3.4", 5)), ("1.2.3.4", 5)) is None
    assert responder.drops == {"not-binding-request": 1}
