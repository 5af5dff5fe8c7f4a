"""The sans-I/O cores with time passed in: the client state machine against the server handshake and
relay core, wired together in memory (no sockets)."""
from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings, strategies as st

from derp import frames as F
from derp import protocol as P
from derp.constants import MAGIC, FrameType, PeerGoneReason, PeerPresentFlags
from derp.errors import ParseError
from derp.keys import clamp, public_key_of
from derp.server import (AccessList, CloseConn, Conn, Deliver, Forward, Rejected, Relay, ServerConfig,
                         ServerHandshake, Write, parse_allowed_keys)

_counter = itertools.count(1)


def rnd(n: int) -> bytes:
    return bytes([next(_counter) % 256]) * n


def key(i: int) -> bytes:
    return clamp(bytes([i]) * 32)


SERVER = key(200)
DISCO = b"TS\xf0\x9f\x92\xac" + bytes(60)


def handshake(client_priv: bytes, now: float = 0.0, config: P.ClientConfig = P.ClientConfig(),
              relay: Relay | None = None):
    """Run a client core through the server handshake; returns (client, key, info)."""
    c = P.ClientConnection(client_priv, rnd, now, config)
    hs = ServerHandshake(SERVER, now, ServerConfig())
    assert c.start(now) == []
    outs = c.receive_data(hs.greeting(), now)
    assert c.state == P.ClientState.AWAIT_SERVER_INFO
    [tx] = outs
    got = None
    for i in range(len(tx.data)):  # the server copes with ClientInfo arriving a byte at a time
        got = hs.receive_data(tx.data[i:i + 1])
        assert (got is None) == (i < len(tx.data) - 1)
    k, info, rest = got
    assert k == c.public_key and rest == b""
    return c, k, info


def test_handshake_and_server_info() -> None:
    c, k, info = handshake(key(1))
    assert info == F.ClientInfo(version=2, can_ack_pings=True)
    outs = c.receive_data(F.server_info_frame(SERVER, k, rnd(24), F.ServerInfo()), 1.0)
    assert outs == [P.Connected(public_key_of(SERVER), F.ServerInfo())]
    assert c.state == P.ClientState.CONNECTED


def test_fast_start_ignores_server_key() -> None:
    c = P.ClientConnection(key(1), rnd, 0.0, server_key=public_key_of(SERVER))
    [tx] = c.start(0.0)
    assert tx.data[0] == FrameType.CLIENT_INFO
    assert c.receive_data(F.ServerKey(public_key_of(SERVER)).encode(), 0.1) == []
    outs = c.receive_data(F.server_info_frame(SERVER, c.public_key, rnd(24), F.ServerInfo()), 0.2)
    assert isinstance(outs[0], P.Connected)


def test_client_events_and_skips_unknown() -> None:
    c, k, _ = handshake(key(1))
    c.receive_data(F.server_info_frame(SERVER, k, rnd(24), F.ServerInfo()), 0)
    stream = b"".join([
        F.frame(0x7E, b"future frame"), F.RecvPacket(key(2), b"data").encode(), F.KeepAlive().encode(),
        F.Ping(b"abcdefgh").encode(), F.PeerGone(key(2)).encode()[:-1].replace(b"\x21", b"\x20", 1),
        F.PeerPresent(key(3), "10.0.0.2", 7, 1).encode(), F.Health("overloaded").encode(),
        F.Health("").encode(), F.Restarting(250, 4000).encode(), F.frame(FrameType.RECV_PACKET, b"short")])
    outs = c.receive_data(stream, 5)
    assert outs == [
        P.PacketReceived(key(2), b"data"), P.Transmit(F.Pong(b"abcdefgh").encode()),
        P.PeerGoneReceived(key(2), 0), P.PeerPresentReceived(key(3), "10.0.0.2", 7, 1),
        P.HealthChanged("overloaded"), P.HealthChanged(""), P.RestartingReceived(0.25, 4.0)]
    assert c.dropped_short == 1 and c.state == P.ClientState.CONNECTED


def test_client_read_timeout_and_ping_timer() -> None:
    c, k, _ = handshake(key(1), now=100.0, config=P.ClientConfig(keepalive_interval=0))  # derp.md's 120 s only
    assert c.next_deadline() == 220.0
    data, frame = c.ping(110.0)
    assert frame == F.Ping(data).encode() and c.next_deadline() == 115.0
    assert c.on_timer(114.9) == []
    assert c.on_timer(115.0) == [P.PingTimedOut(data)]
    data2, _ = c.ping(116.0)
    assert c.receive_data(F.Pong(data2).encode(), 116.25) == [P.PongReceived(data2, 0.25)]
    assert c.receive_data(F.Pong(b"unknown!").encode(), 117) == []
    assert c.next_deadline() == 237.0  # last frame at 117
    outs = c.on_timer(237.0)
    assert len(outs) == 1 and isinstance(outs[0], P.Closed) and c.state == P.ClientState.CLOSED
    assert c.receive_data(F.KeepAlive().encode(), 238) == [] and c.next_deadline() is None


def test_client_pings_a_silent_relay_and_gives_it_up_after_three_intervals() -> None:
    """A relay that sends nothing (not even KeepAlive) is dead after 3 keepalive intervals, not 120 s."""
    c, k, _ = handshake(key(1), now=100.0, config=P.ClientConfig(keepalive_interval=2.0))
    c.receive_data(F.server_info_frame(SERVER, k, rnd(24), F.ServerInfo()), 100.0)
    assert c.silence_limit() == 6.0 and c.next_deadline() == 102.0
    assert c.on_timer(101.9) == []
    [ping] = c.on_timer(102.0)
    assert isinstance(ping, P.Transmit) and ping.data[0] == FrameType.PING and c.next_deadline() == 104.0
    assert c.receive_data(F.Pong(ping.data[5:]).encode(), 103.0) == []   # our keepalive's Pong: not an event
    assert c.next_deadline() == 105.0                                    # silence counts from the Pong
    [ping2] = c.on_timer(105.0)
    [ping3] = c.on_timer(107.0)
    assert ping2.data[0] == ping3.data[0] == FrameType.PING and c.keepalive_pings == 3
    assert c.next_deadline() == 109.0 and c.state == P.ClientState.CONNECTED
    [closed] = c.on_timer(109.0)
    assert isinstance(closed, P.Closed) and "6 s" in closed.reason and c.state == P.ClientState.CLOSED


def test_traffic_means_no_keepalive_ping() -> None:
    c, k, _ = handshake(key(1), now=0.0, config=P.ClientConfig(keepalive_interval=2.0))
    c.receive_data(F.server_info_frame(SERVER, k, rnd(24), F.ServerInfo()), 0.0)
    for t in range(1, 20):
        c.receive_data(F.RecvPacket(key(2), b"x").encode(), float(t))
        assert c.on_timer(float(t) + 0.5) == []
    assert c.keepalive_pings == 0


@pytest.mark.parametrize("stream, words", [
    (F.KeepAlive().encode(), "expected ServerKey"),
    (F.frame(FrameType.SERVER_KEY, b"NOTDERP!" + bytes(32)), "magic"),
    (b"\x05\x00\x20\x00\x01", "exceeds"),
])
def test_client_closes_on_bad_server(stream, words) -> None:
    c = P.ClientConnection(key(1), rnd, 0.0)
    [closed] = c.receive_data(stream, 0)
    assert isinstance(closed, P.Closed) and words in closed.reason


def test_server_info_that_does_not_open_closes() -> None:
    c, k, _ = handshake(key(1))
    [closed] = c.receive_data(F.server_info_frame(key(9), k, rnd(24), F.ServerInfo()), 1)
    assert isinstance(closed, P.Closed) and "does not open" in closed.reason


@settings(max_examples=150)
@given(st.binary(max_size=300))
def test_client_core_never_raises_on_garbage(blob) -> None:
    c = P.ClientConnection(key(1), rnd, 0.0)
    c.receive_data(MAGIC[:0] + F.ServerKey(public_key_of(SERVER)).encode(), 0)
    c.receive_data(blob, 1)  # must return outputs, never raise


@settings(max_examples=150)
@given(st.binary(max_size=300))
def test_server_handshake_raises_only_parse_error(blob) -> None:
    try:
        ServerHandshake(SERVER, 0, ServerConfig()).receive_data(blob)
    except ParseError:
        pass


# ---- relay core ---------------------------------------------------------------------------------------------

class Sink:
    pass


def relay(**kw) -> Relay:
    acl = kw.pop("acl", AccessList(None))
    mesh = kw.pop("mesh_key", None)
    return Relay(SERVER, ServerConfig(**kw), acl, lambda: 0.5, mesh)


def conn(r: Relay, k: bytes, now: float = 0.0, mesh: bool = False, ip: str = "10.0.0.1") -> tuple[Conn, list]:
    c = Conn(public_key_of(k), ip, 1000 + k[1], mesh, Sink())
    return c, r.register(c, now)


def send(src: Conn, dst: Conn | bytes, data: bytes) -> bytes:
    d = dst if isinstance(dst, bytes) else dst.key
    return d + data


def test_relay_routes_and_tracks_senders() -> None:
    r = relay()
    a, _ = conn(r, key(1))
    b, _ = conn(r, key(2))
    out = r.send_packet(a, send(a, b, b"hi"), 1.0)
    assert out == Deliver(b, F.RecvPacket(a.key, b"hi").encode(), False)
    assert r.counters["packets_relayed"] == 0  # counted by the adapter once it really queued the packet
    assert r.send_packet(a, send(a, public_key_of(key(9)), b"x"), 1.0) is None
    assert r.drops == {"unknown_dest": 1}
    assert r.unregister(a) == [Write(b, F.PeerGone(a.key, PeerGoneReason.DISCONNECTED).encode())]
    assert r.unregister(a) == [] and r.stats()["clients"] == 1


def test_not_here_for_disco_is_rate_limited() -> None:
    r = relay()
    a, _ = conn(r, key(1))
    nobody = public_key_of(key(9))
    gone = Write(a, F.PeerGone(nobody, PeerGoneReason.NOT_HERE).encode())
    outs = [r.send_packet(a, nobody + DISCO, 10.0) for _ in range(5)]
    assert outs == [gone, gone, gone, None, None]  # burst 3
    assert r.send_packet(a, nobody + DISCO, 10.5) is None
    assert r.send_packet(a, nobody + DISCO, 11.1) == gone  # 1/s refill
    assert r.send_packet(a, nobody + b"not disco", 20.0) is None


def test_duplicate_keys_last_sender_is_active() -> None:
    r = relay()
    a1, _ = conn(r, key(1))
    a2, _ = conn(r, key(1))
    b, _ = conn(r, key(2))
    assert r.send_packet(b, send(b, a1, b"1"), 0).conn is a2  # most recently connected
    r.send_packet(a1, send(a1, b, b"x"), 0)  # a1 sends: becomes active
    assert r.send_packet(b, send(b, a1, b"2"), 0).conn is a1
    assert r.unregister(a1) == []  # a2 still connected: no PeerGone
    assert r.send_packet(b, send(b, a2, b"3"), 0).conn is a2


def test_admission() -> None:
    allowed = public_key_of(key(1))
    r = relay(acl=AccessList(frozenset({allowed})), max_clients=1, mesh_key=bytes(range(32)))
    assert r.admit(allowed, F.ClientInfo()) is False
    with pytest.raises(Rejected, match="not in the allowed keys"):
        r.admit(public_key_of(key(2)), F.ClientInfo())
    assert r.admit(public_key_of(key(3)), F.ClientInfo(mesh_key=bytes(range(32)).hex())) is True
    with pytest.raises(Rejected, match="wrong mesh key"):
        r.admit(public_key_of(key(3)), F.ClientInfo(mesh_key="00" * 32))
    conn(r, key(1))
    with pytest.raises(Rejected, match="full"):
        r.admit(allowed, F.ClientInfo())
    conn(r, key(4), mesh=True)  # mesh peers don't count
    assert r.stats()["clients"] == 1 and r.stats()["mesh_peers"] == 1


def test_allowed_keys_file_format() -> None:
    import base64
    k = public_key_of(key(1))
    text = f"# team\n{base64.b64encode(k).decode()}  # alice\n\n   \nnodekey:{public_key_of(key(2)).hex()}\n"
    assert parse_allowed_keys(text) == {k, public_key_of(key(2))}
    with pytest.raises(ParseError, match="line 2"):
        parse_allowed_keys("# ok\nnot-a-key\n")


def test_mesh_frames_need_mesh_key() -> None:
    r = relay()
    a, _ = conn(r, key(1))
    for ftype, payload in ((FrameType.WATCH_CONNS, b""), (FrameType.CLOSE_PEER, a.key),
                           (FrameType.FORWARD_PACKET, a.key + a.key + b"x")):
        with pytest.raises(ParseError, match="insufficient permissions"):
            r.handle_frame(a, ftype, payload, 0)


def test_watchers_forwarding_and_close_peer() -> None:
    r = relay()
    a, _ = conn(r, key(1), ip="192.0.2.1")
    m, _ = conn(r, key(50), mesh=True)
    outs = r.handle_frame(m, FrameType.WATCH_CONNS, b"", 0)
    assert outs == [Write(m, F.PeerPresent(a.key, "192.0.2.1", a.port, PeerPresentFlags.REGULAR).encode())]
    b, outs = conn(r, key(2), ip="192.0.2.2")
    assert outs == [Write(m, F.PeerPresent(b.key, "192.0.2.2", b.port, 1).encode())]
    # a packet forwarded by the mesh peer for b
    src = public_key_of(key(77))
    [out] = r.handle_frame(m, FrameType.FORWARD_PACKET, src + b.key + b"fw", 0)
    assert out == Deliver(b, F.RecvPacket(src, b"fw").encode(), False)
    # a route learned from a mesh link
    link = object()
    r.add_route(src, link)
    r.add_route(src, object())  # first claim wins
    out = r.send_packet(a, src + b"to-remote", 0)
    assert out == Forward(link, F.ForwardPacket(a.key, src, b"to-remote").encode())
    # the remote key sent to b (forwarded above); when its route goes, b hears PeerGone
    assert r.remove_link(link) == [Write(b, F.PeerGone(src, 0).encode())]
    assert r.send_packet(a, src + b"x", 0) is None
    assert r.remove_route(src, link) == []
    # b leaves: the watcher hears PeerGone; ClosePeer closes every connection of a key
    assert Write(m, F.PeerGone(b.key, 0).encode()) in r.unregister(b)
    a2, outs = conn(r, key(1))
    assert outs == [Write(m, F.PeerPresent(a2.key, a2.ip, a2.port, 1).encode())]  # every connection announced
    assert r.handle_frame(m, FrameType.CLOSE_PEER, a.key, 0) == [CloseConn(a, "closed by ClosePeer"),
                                                                   CloseConn(a2, "closed by ClosePeer")]


def test_self_watch_ignored_ping_and_preferred() -> None:
    r = relay()
    me = Conn(public_key_of(SERVER), "127.0.0.1", 1, True, Sink())
    r.register(me, 0)
    assert r.handle_frame(me, FrameType.WATCH_CONNS, b"", 0) == [] and r.watchers == {}
    a, _ = conn(r, key(1))
    assert r.handle_frame(a, FrameType.PING, b"12345678" + b"x" * 10, 0) == [Write(a, F.Pong(b"12345678").encode())]
    with pytest.raises(ParseError):
        r.handle_frame(a, FrameType.PING, b"x" * 1001, 0)
    r.handle_frame(a, FrameType.NOTE_PREFERRED, b"\x01", 0)
    assert r.counters["home_clients"] == 1
    with pytest.raises(ParseError):
        r.handle_frame(a, FrameType.NOTE_PREFERRED, b"\x01\x01", 0)
    r.unregister(a)
    assert r.counters["home_clients"] == 0
    assert r.handle_frame(me, 0x7F, b"unknown", 0) == []


def test_keepalive_timer() -> None:
    r = relay(keepalive_interval=60.0, keepalive_jitter=5.0)   # jitter source returns 0.5 => +2.5 s
    a, _ = conn(r, key(1), now=0.0)
    b, _ = conn(r, key(2), now=10.0)
    assert r.next_deadline() == 62.5
    assert r.on_timer(62.0) == []
    ka = F.KeepAlive().encode()
    assert r.on_timer(62.5) == [Write(a, ka)]
    assert r.next_deadline() == 72.5
    r.unregister(b)
    assert r.next_deadline() == 122.5
    assert r.on_timer(200) == [Write(a, ka)]


@settings(max_examples=150)
@given(st.integers(0, 255), st.binary(max_size=120))
def test_relay_frames_raise_only_parse_error(ftype, payload) -> None:
    r = relay()
    a, _ = conn(r, key(1))
    m, _ = conn(r, key(50), mesh=True)
    for c in (a, m):
        try:
            if ftype == FrameType.SEND_PACKET:
                r.send_packet(c, payload, 0)
            else:
                r.handle_frame(c, ftype, payload, 0)
        except ParseError:
            pass


def test_revoke_disallowed_after_acl_change() -> None:
    r = relay()
    a, _ = conn(r, key(1))
    b, _ = conn(r, key(2))
    m, _ = conn(r, key(50), mesh=True)
    r.acl.allowed = frozenset({b.key})
    assert r.revoke_disallowed() == [CloseConn(a, "key no longer allowed")]


def test_one_pong_pending_further_pings_ignored() -> None:
    r = relay()
    a, _ = conn(r, key(1))
    pong = Write(a, F.Pong(b"ping0001").encode())
    assert r.handle_frame(a, FrameType.PING, b"ping0001", 0) == [pong]
    for _ in range(100):  # a flood while that Pong is not yet written: ignored, not answered
        assert r.handle_frame(a, FrameType.PING, b"ping0002", 0) == []
    a.pong_pending = False  # the adapter wrote the Pong
    assert r.handle_frame(a, FrameType.PING, b"ping0003", 0) == [Write(a, F.Pong(b"ping0003").encode())]
    assert r.counters["got_ping"] == 102 and r.counters["sent_pong"] == 2


def test_refusals_are_counted_as_refused_admissions_not_packet_drops() -> None:
    r = relay(acl=AccessList(frozenset()), max_clients=1, mesh_key=bytes(range(32)))
    for info in (F.ClientInfo(), F.ClientInfo(mesh_key="00" * 32)):
        with pytest.raises(Rejected):
            r.admit(public_key_of(key(1)), info)
    assert r.refused == {"acl": 1, "bad_mesh_key": 1} and r.drops == {}
    assert r.stats()["refused"] == {"acl": 1, "bad_mesh_key": 1}
