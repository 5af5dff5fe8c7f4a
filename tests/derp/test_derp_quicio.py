"""The I/O pieces of DERP over QUIC's data path: GSO sends of aioquic's datagrams (derp.aio.quicio) and the
one aioquic timer per connection that is re-armed only when its deadline moves earlier."""
from __future__ import annotations

import errno
import socket
from collections import deque

from derp.aio import quicio
from derp.aio.quic_server import QuicSession
from derp.aio.quicio import DatagramWriter, timer_delay


class RecordingSocket:
    """What a DatagramWriter calls, recorded: ("sendto", data, addr) / ("sendmsg", data, segment, addr)."""

    def __init__(self, fail_gso: int | None = None) -> None:
        self.calls: list[tuple] = []
        self.fail_gso = fail_gso

    def sendto(self, data, addr):
        self.calls.append(("sendto", bytes(data), addr))

    def send(self, data):
        self.calls.append(("send", bytes(data)))

    def sendmsg(self, buffers, ancdata, flags=0, addr=None):
        if self.fail_gso is not None:
            raise OSError(self.fail_gso, "refused")
        (level, kind, value), = ancdata
        assert (level, kind) == (quicio.SOL_UDP, quicio.UDP_SEGMENT)
        self.calls.append(("sendmsg", b"".join(buffers), int.from_bytes(value, "little"), addr))


A, B = ("192.0.2.1", 1), ("192.0.2.2", 2)


def test_runs_of_one_size_to_one_address_go_in_one_gso_sendmsg():
    sock = RecordingSocket()
    out = [(b"a" * 100, A)] * 5 + [(b"b" * 40, A)] + [(b"c" * 100, A)] + [(b"d" * 100, B)] * 2 + [(b"e" * 10, B)]
    assert DatagramWriter(sock).send(out) == 0
    assert sock.calls == [
        ("sendmsg", b"a" * 500 + b"b" * 40, 100, A),   # a shorter datagram ends a run
        ("sendto", b"c" * 100, A),                     # a run of one: a plain send
        ("sendmsg", b"d" * 200 + b"e" * 10, 100, B),
    ]


def test_a_run_is_cut_at_the_kernels_segment_and_byte_limits():
    sock = RecordingSocket()
    DatagramWriter(sock).send([(b"x" * 10, A)] * (quicio.GSO_MAX_SEGMENTS + 3))
    assert [c[0] for c in sock.calls] == ["sendmsg", "sendmsg"]
    assert len(sock.calls[0][1]) == 10 * quicio.GSO_MAX_SEGMENTS and len(sock.calls[1][1]) == 30
    sock = RecordingSocket()
    DatagramWriter(sock).send([(b"y" * 1400, A)] * 50)
    assert all(len(c[1]) <= quicio.GSO_MAX_BYTES for c in sock.calls)
    assert b"".join(c[1] for c in sock.calls) == b"y" * 1400 * 50


def test_a_connected_socket_gets_no_address():
    sock = RecordingSocket()
    DatagramWriter(sock, connected=True).send([(b"z" * 8, A)] * 3 + [(b"q", A)])
    assert sock.calls == [("sendmsg", b"z" * 24 + b"q", 8, None)]


def test_refused_gso_falls_back_to_one_datagram_a_call_for_good():
    sock = RecordingSocket(fail_gso=errno.EIO)
    w = DatagramWriter(sock)
    assert w.send([(b"a" * 10, A)] * 3) == 0
    assert sock.calls == [("sendto", b"a" * 10, A)] * 3 and not w.gso
    sock.calls.clear()
    w.send([(b"b" * 10, A)] * 2)
    assert sock.calls == [("sendto", b"b" * 10, A)] * 2


def test_other_send_errors_are_counted_not_raised():
    sock = RecordingSocket(fail_gso=errno.EAGAIN)
    w = DatagramWriter(sock)
    assert w.send([(b"a" * 10, A)] * 4) == 4 and w.gso and w.errors == 4


def test_gso_on_loopback_delivers_the_same_datagrams_in_order():
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(2)
        addr = rx.getsockname()
        out = [(bytes([i]) * 1300, addr) for i in range(20)] + [(b"end", addr)]
        w = DatagramWriter(tx)
        assert w.send(out) == 0
        got = [rx.recv(65536) for _ in out]
        assert got == [d for d, _ in out]
        assert w.gso_calls == 1 or not w.gso   # a kernel without UDP GSO: one datagram a call
    finally:
        rx.close()
        tx.close()


# ---- the aioquic timer --------------------------------------------------------------------------------

class FakeQuic:
    def __init__(self) -> None:
        self._datagrams_pending = deque()
        self._streams = {}
        self.timer = 10.0
        self.handled: list[float] = []

    def datagrams_to_send(self, now):
        return []

    def get_timer(self):
        return self.timer

    def handle_timer(self, now):
        self.handled.append(now)

    def next_event(self):
        return None


class FakeHandle:
    def __init__(self, loop, delay, cb) -> None:
        self.loop, self.delay, self.cb, self.cancelled = loop, delay, cb, False

    def cancel(self):
        self.cancelled = True


class FakeLoop:
    def __init__(self) -> None:
        self.armed: list[FakeHandle] = []

    def call_later(self, delay, cb):
        h = FakeHandle(self, delay, cb)
        self.armed.append(h)
        return h


class FakeListener:
    def __init__(self, sock) -> None:
        self.loop = FakeLoop()
        self.writers = {sock: DatagramWriter(sock)}
        self.stats = {"send_errors": 0}

    def touch(self, session):
        pass


def session(monkeypatch, timer: float):
    """A QuicSession on a fake aioquic connection whose get_timer() is `timer`, a fake loop and clock:
    returns (session, quic, loop, now) where now[0] is the clock."""
    now = [0.0]
    monkeypatch.setattr("derp.aio.quic_server._clock", lambda: now[0])
    sock = RecordingSocket()
    listener = FakeListener(sock)
    quic = FakeQuic()
    quic.timer = timer
    return QuicSession(listener, sock, A, quic), quic, listener.loop, now


def test_the_timer_is_rearmed_only_when_the_deadline_moves_earlier(monkeypatch):
    s, quic, loop, now = session(monkeypatch, 10.0)
    s.transmit()
    assert len(loop.armed) == 1 and loop.armed[0].delay == timer_delay(10.0, 0.0)
    for later in (10.5, 11.0, 12.0, 30.0):   # aioquic's loss deadline moving later packet by packet
        quic.timer = later
        s.transmit()
    assert len(loop.armed) == 1, "a later deadline re-armed the timer"
    quic.timer = 4.0                          # an earlier one (an ACK due): re-armed
    s.transmit()
    assert len(loop.armed) == 2 and loop.armed[0].cancelled and loop.armed[1].delay == timer_delay(4.0, 0.0)
    # it fires; aioquic's deadline is now later: nothing due, and the real deadline is armed
    quic.timer = 30.0
    now[0] = 4.0
    loop.armed[1].cb()
    assert quic.handled == [4.0]
    assert len(loop.armed) == 3 and loop.armed[2].delay == timer_delay(30.0, 4.0)


def test_the_timer_never_fires_before_its_deadline_in_loop_milliseconds():
    # uvloop rounds a delay to the nearest millisecond: it is rounded up to whole milliseconds instead,
    # at least one, never less than the time left
    for left in (0.0, 1e-6, 0.0004, 0.001, 0.0015, 0.025, 1.0):
        d = timer_delay(100.0 + left, 100.0)
        assert d >= left - 1e-9 and d >= 0.001 and d <= left + 0.001 + 1e-9
        assert abs(d * 1000 - round(d * 1000)) < 1e-6
    assert timer_delay(1.0, 2.0) == 0.001   # overdue: at the next millisecond


def test_an_early_timer_does_not_run_aioquic_and_waits_for_the_deadline(monkeypatch):
    s, quic, loop, now = session(monkeypatch, 0.0105)
    s.transmit()
    now[0] = 0.0101          # the loop woke it early: nothing happens but a new wait for the rest
    loop.armed[-1].cb()
    assert quic.handled == [] and len(loop.armed) == 2
    assert loop.armed[-1].delay == timer_delay(0.0105, 0.0101)
    now[0] = 0.0106
    loop.armed[-1].cb()
    assert quic.handled == [0.0106]


# ---- the pacer --------------------------------------------------------------------------------------

def _sent_per_wake(pacer, wakes: int = 200, step: float = 0.001) -> float:
    """Packets the pacer lets out when the connection is woken once every `step` seconds."""
    sent = 0
    for i in range(1, wakes + 1):
        now = i * step
        while pacer.next_send_time(now) is None:
            pacer.update_after_send(now)
            sent += 1
            if sent > 10**6:
                raise AssertionError("the pacer never holds back")
    return sent / wakes


def test_the_pacer_keeps_its_rate_when_woken_once_a_millisecond():
    from aioquic.quic.recovery import QuicPacketPacer

    from derp.aio.quiccc import TimerPacer
    mss = 1452
    window, srtt = 400 * mss, 0.010          # 40k packets/s (465 Mbit/s): 40 packets a millisecond
    ours, theirs = TimerPacer(max_datagram_size=mss), QuicPacketPacer(max_datagram_size=mss)
    for p in (ours, theirs):
        p.update_rate(window, srtt)
    assert _sent_per_wake(theirs) <= 17      # aioquic's bucket: 16 packets whatever the rate
    assert 38 <= _sent_per_wake(ours) <= 42  # ours: the rate, in bursts of a millisecond's worth
    for window, srtt in ((10 * mss, 0.050), (64 * mss, 0.100)):   # aioquic's bucket is 2 ms or more: same
        ours, theirs = TimerPacer(max_datagram_size=mss), QuicPacketPacer(max_datagram_size=mss)
        for p in (ours, theirs):
            p.update_rate(window, srtt)
        assert ours.bucket_max == theirs.bucket_max and ours.packet_time == theirs.packet_time


def test_relay_and_client_connections_get_the_timer_pacer_and_send_through_the_writer(pki):
    import asyncio

    from aioquic.quic.recovery import QuicPacketPacer

    from derp.aio.quiccc import TimerPacer
    from quic_support import quic_pair, quic_relay, send_datagram

    async def main():
        async with quic_relay(pki) as (server, port):
            async with quic_pair(port, pki["ca"]) as (a, ka, b, kb):
                for i in range(30):
                    assert send_datagram(a, kb, b"%d" % i * 100)
                    assert (await b.recv_packet(3)).data == b"%d" % i * 100
                conns = [a.stream, b.stream] + list(server.quic.sessions)
                for conn in conns:
                    pacer = conn.quic._loss._pacer
                    assert type(pacer) is TimerPacer and type(pacer) is not QuicPacketPacer
                    assert pacer.packet_time is not None          # fed by aioquic's RTT samples
                    assert isinstance(conn.writer, DatagramWriter) and conn.writer.errors == 0
    asyncio.run(asyncio.wait_for(main(), 30))
