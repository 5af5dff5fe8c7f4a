"""derp.aio.quicfast against aioquic's own code: the same datagrams on the wire in a lossy run of stream
data and DATAGRAM frames against an unmodified peer, and "nothing to send" only when aioquic agrees."""
from __future__ import annotations

import pytest
from aioquic.quic.connection import QuicConnection

import tests.derp.quiccc_pair as QP
from derp.aio import quicfast
from derp.aio.quiccc import DatagramSender
from tests.derp.quiccc_pair import Link, QuicPair

pytestmark = pytest.mark.skipif(quicfast.connection_class is QuicConnection,
                                reason="aioquic version without the lean path")


class Recording(Link):
    """A link that records what it carries once `on` (after the handshake: an ECDSA signature's length
    varies from run to run, so handshake datagrams do)."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.on = False
        self.wire: list[tuple[float, int, int]] = []   # (time, length, first byte's form bit)

    def send(self, now, data) -> None:
        if self.on:
            self.wire.append((round(now, 9), len(data), data[0] & 0x80))
        super().send(now, data)


class Checked(quicfast.DerpQuicConnection):
    """Every "nothing to send" answer is checked with aioquic's own datagrams_to_send."""
    idle_answers = 0

    def datagrams_to_send(self, now):
        if self._idle(now):
            type(self).idle_answers += 1
            assert QuicConnection.datagrams_to_send(self, now) == [], "idle, but aioquic had something to send"
            self._pacing_at = None
            return []
        return QuicConnection.datagrams_to_send(self, now)


def scenario(monkeypatch, client_cls, server_cls, loss: float = 0.03, seconds: float = 2.0):
    made = []

    def factory(**kw):
        cls = server_cls if "original_destination_connection_id" in kw else client_cls
        conn = cls(**kw)
        made.append(conn)
        return conn
    monkeypatch.setattr(QP, "QuicConnection", factory)
    up = Recording(delay=0.01, loss=loss, seed=3)
    down = Recording(delay=0.012, loss=loss, seed=4)
    p = QuicPair(up, down)
    p.handshake()
    p.run(p.now + 0.2)    # the handshake's last packets and ACKs
    up.on = down.on = True
    sender, back = DatagramSender(p.client), DatagramSender(p.server)
    sid = p.client.get_next_available_stream_id()
    state = {"n": 0, "next": p.now, "sent": []}

    def source(now):
        # datagrams both ways, some too small to fill a packet; stream data both ways now and then
        # (MAX_STREAM_DATA/MAX_DATA updates, retransmissions after loss)
        while now >= state["next"]:
            n = state["n"] = state["n"] + 1
            state["next"] += 0.0005
            sender.send(bytes([n % 251]) * (1200 if n % 3 else 90))
            if n % 4 == 0:
                back.send(bytes([n % 13]) * 300)
            if n % 40 == 0:
                p.client.send_stream_data(sid, bytes([n % 7]) * 20000)
                state["sent"].append(bytes([n % 7]) * 20000)
            if n % 50 == 0 and sid in p.server._streams:
                p.server.send_stream_data(sid, b"pong" * 500)
    p.run(p.now + seconds, source)
    p.client.send_stream_data(sid, b"", end_stream=True)
    p.run(p.now + 3.0)
    got = b"".join(ev.data for ev in _stream_events(p))
    assert got == b"".join(state["sent"]) and len(got) >= 20000 * 50, "the stream did not arrive whole"
    return up.wire, down.wire, len(p.received), len(p.client_received), got, made


def _stream_events(p):
    return p.stream_events


@pytest.fixture(autouse=True)
def keep_stream_events(monkeypatch):
    """QuicPair only keeps datagrams: keep the server's stream data too."""
    from aioquic.quic import events
    orig = QuicPair._drain

    def drain(self, conn, sink):
        if not hasattr(self, "stream_events"):
            self.stream_events = []
        event = conn.next_event()
        while event is not None:
            if isinstance(event, events.DatagramFrameReceived):
                sink.append(event.data)
            elif isinstance(event, events.StreamDataReceived) and conn is self.server:
                self.stream_events.append(event)
            event = conn.next_event()
    monkeypatch.setattr(QuicPair, "_drain", drain)
    yield orig


@pytest.mark.parametrize("lean_side", ["client", "server", "both"])
def test_the_lean_send_path_puts_the_same_datagrams_on_the_wire(monkeypatch, lean_side):
    base = scenario(monkeypatch, QuicConnection, QuicConnection)
    lean = quicfast.LeanQuicConnection
    cls = {"client": (lean, QuicConnection), "server": (QuicConnection, lean), "both": (lean, lean)}[lean_side]
    fast = scenario(monkeypatch, *cls)
    assert base[0] and base[1] and base[2] > 1000 and base[3] > 300
    assert fast[0] == base[0] and fast[1] == base[1], "the lean path sent other datagrams than aioquic's"
    assert fast[2:5] == base[2:5]


def test_the_lean_path_was_taken(monkeypatch):
    calls = {"lean": 0}
    orig = quicfast.LeanQuicConnection._quiet

    def quiet(self, path):
        answer = orig(self, path)
        calls["lean"] += answer
        return answer
    monkeypatch.setattr(quicfast.LeanQuicConnection, "_quiet", quiet)
    scenario(monkeypatch, quicfast.LeanQuicConnection, QuicConnection)
    assert calls["lean"] > 500


def test_nothing_to_send_only_when_aioquic_agrees(monkeypatch):
    Checked.idle_answers = 0
    out = scenario(monkeypatch, Checked, Checked)
    assert Checked.idle_answers > 200
    base = scenario(monkeypatch, QuicConnection, QuicConnection)
    assert out[4] == base[4] and out[2] > 1000   # the stream whole, the datagrams through


def _build(sizes, flight, put):
    """Packets built from datagrams of these sizes, ACK-free, with `flight` bytes of congestion window
    (None: unlimited): each packet filled by `put(builder, pending)`. Returns (datagrams, per-packet
    (number, sent_bytes, ack-eliciting, in flight), what is left)."""
    from collections import deque

    from aioquic.quic.crypto import CryptoPair
    from aioquic.quic.packet import QuicPacketType, QuicProtocolVersion
    from aioquic.quic.packet_builder import QuicPacketBuilder
    crypto = CryptoPair()
    crypto.setup_initial(cid=b"\x08" * 8, is_client=True, version=QuicProtocolVersion.VERSION_1)
    builder = QuicPacketBuilder(host_cid=b"\x01" * 8, peer_cid=b"\x02" * 8, version=QuicProtocolVersion.VERSION_1,
                                is_client=True, max_datagram_size=1452)
    builder.max_flight_bytes = flight
    pending = deque(bytes([i % 251]) * n for i, n in enumerate(sizes))
    while pending:
        builder.start_packet(QuicPacketType.ONE_RTT, crypto)
        put(builder, pending)
        if builder.packet_is_empty:
            break
    datagrams, packets = builder.flush()
    return datagrams, [(p.packet_number, p.sent_bytes, p.is_ack_eliciting, p.in_flight) for p in packets], list(pending)


def _aioquic_put(builder, pending):
    from types import SimpleNamespace

    from aioquic.quic.packet_builder import QuicPacketBuilderStop
    me = SimpleNamespace(_quic_logger=None)
    while pending:
        try:
            QuicConnection._write_datagram_frame(me, builder=builder, data=pending[0], frame_type=quicfast._DATAGRAM)
        except QuicPacketBuilderStop:
            break
        pending.popleft()


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 1450), min_size=1, max_size=40),
       st.one_of(st.none(), st.integers(0, 20000)))
def test_datagrams_written_inline_are_the_bytes_and_packets_aioquic_writes(sizes, flight):
    """Any mix of sizes (empty, tiny, just fitting, never fitting) and any congestion window: the inline
    writer builds the same datagrams, the same packets with the same marks, and leaves the same queue."""
    assert _build(sizes, flight, quicfast._put_datagrams) == _build(sizes, flight, _aioquic_put)
