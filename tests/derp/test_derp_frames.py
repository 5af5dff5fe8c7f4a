"""DERP frame codec: byte vectors from derp.md, RFC 7748 key vector, round trips, garbage and stream splitting."""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, strategies as st

from derp import frames as F
from derp.constants import MAGIC, MAX_PACKET_SIZE, FrameType, PeerGoneReason, is_disco, server_frame_limits
from derp.errors import ParseError
from derp.keys import clamp, parse_private_key, parse_public_key, public_key_of

K1 = bytes(range(32))
K2 = bytes(range(32, 64))


def test_magic_and_header_layout() -> None:
    assert MAGIC == bytes.fromhex("44455250f09f9491")
    assert F.frame(0x04, b"abc") == b"\x04\x00\x00\x00\x03abc"
    assert F.ServerKey(K1).encode() == b"\x01\x00\x00\x00\x28" + MAGIC + K1


@pytest.mark.parametrize("fr, raw", [
    (F.SendPacket(K1, b"x"), b"\x04\x00\x00\x00\x21" + K1 + b"x"),
    (F.RecvPacket(K2, b""), b"\x05\x00\x00\x00\x20" + K2),
    (F.KeepAlive(), b"\x06\x00\x00\x00\x00"),
    (F.NotePreferred(True), b"\x07\x00\x00\x00\x01\x01"),
    (F.NotePreferred(False), b"\x07\x00\x00\x00\x01\x00"),
    (F.PeerGone(K1, PeerGoneReason.NOT_HERE), b"\x08\x00\x00\x00\x21" + K1 + b"\x01"),
    (F.PeerPresent(K1, "192.0.2.7", 41641, 1),
     b"\x09\x00\x00\x00\x33" + K1 + bytes(10) + b"\xff\xff\xc0\x00\x02\x07\xa2\xa9\x01"),
    (F.ForwardPacket(K1, K2, b"zz"), b"\x0a\x00\x00\x00\x42" + K1 + K2 + b"zz"),
    (F.WatchConns(), b"\x10\x00\x00\x00\x00"),
    (F.ClosePeer(K2), b"\x11\x00\x00\x00\x20" + K2),
    (F.Ping(b"12345678"), b"\x12\x00\x00\x00\x0812345678"),
    (F.Pong(b"12345678"), b"\x13\x00\x00\x00\x0812345678"),
    (F.Health("disk full"), b"\x14\x00\x00\x00\x09disk full"),
    (F.Restarting(1500, 30000), b"\x15\x00\x00\x00\x08\x00\x00\x05\xdc\x00\x00\x75\x30"),
])
def test_frame_vectors(fr, raw: bytes) -> None:
    assert fr.encode() == raw
    [(ftype, payload)] = F.FrameDecoder().feed(raw)
    assert F.parse_frame(ftype, payload) == fr


def test_tolerated_legacy_and_extended_forms() -> None:
    assert F.parse_frame(FrameType.PEER_GONE, K1) == F.PeerGone(K1, 0)  # old servers: no reason byte
    assert F.parse_frame(FrameType.PEER_PRESENT, K1) == F.PeerPresent(K1)  # 32-byte form
    fifty = K1 + bytes(10) + b"\xff\xff" + bytes([10, 0, 0, 1]) + b"\x00\x50"
    assert F.parse_frame(FrameType.PEER_PRESENT, fifty) == F.PeerPresent(K1, "10.0.0.1", 80, 0)
    assert F.parse_frame(FrameType.PEER_PRESENT, fifty + b"\x02extra").flags == 2
    v6 = F.PeerPresent(K1, "2001:db8::5", 443, 4)
    assert F.parse_frame(FrameType.PEER_PRESENT, v6.encode()[5:]) == v6
    assert F.parse_frame(FrameType.SERVER_KEY, MAGIC + K1 + b"future") == F.ServerKey(K1)
    assert F.parse_frame(0x7F, b"new") == F.UnknownFrame(0x7F, b"new")
    assert F.parse_frame(FrameType.PING, b"12345678" + b"x" * 100) == F.Ping(b"12345678")


@pytest.mark.parametrize("ftype, payload, words", [
    (FrameType.SERVER_KEY, b"NOTDERP!" + K1, "wrong magic"),
    (FrameType.SERVER_KEY, MAGIC, "at least 40"),
    (FrameType.SEND_PACKET, K1[:31], "at least 32"),
    (FrameType.SEND_PACKET, K1 + bytes(MAX_PACKET_SIZE + 1), "exceeds"),
    (FrameType.NOTE_PREFERRED, b"\x01\x01", "exactly 1"),
    (FrameType.WATCH_CONNS, b"x", "exactly 0"),
    (FrameType.CLOSE_PEER, K1 + b"x", "exactly 32"),
    (FrameType.PING, b"1234567", "at least 8"),
    (FrameType.RESTARTING, b"1234", "at least 8"),
    (FrameType.FORWARD_PACKET, K1 + K2[:5], "at least 64"),
])
def test_bad_payloads(ftype, payload, words) -> None:
    with pytest.raises(ParseError, match=words):
        F.parse_frame(ftype, payload)


def test_decoder_bounds_frames() -> None:
    dec = F.FrameDecoder(max_frame=100)
    with pytest.raises(ParseError, match="exceeds"):
        dec.feed(b"\x04\x00\x00\x00\x65")
    assert F.FrameDecoder(max_frame=101).feed(b"\x04\x00\x00\x00\x65") == []


def test_rfc7748_public_key_and_key_text() -> None:
    alice = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    assert public_key_of(alice).hex() == "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    assert clamp(b"\xff" * 32)[0] == 0xF8 and clamp(b"\xff" * 32)[31] == 0x7F
    pub = public_key_of(alice)
    assert parse_public_key("nodekey:" + pub.hex()) == pub
    import base64
    assert parse_public_key(base64.b64encode(pub).decode()) == pub
    assert parse_private_key("privkey:" + alice.hex()) == alice
    with pytest.raises(ParseError) as info:
        parse_private_key("privkey:" + "zz" * 32)
    assert "zz" not in str(info.value)  # never echoes private key material


def test_client_info_box_round_trip_and_json_names() -> None:
    client, server = clamp(bytes([1] * 32)), clamp(bytes([2] * 32))
    nonce = bytes(range(24))
    info = F.ClientInfo(version=2, can_ack_pings=True, mesh_key="ab" * 32, is_prober=True, app_name="wgc")
    raw = F.client_info_frame(client, public_key_of(client), public_key_of(server), nonce, info)
    [(ftype, payload)] = F.FrameDecoder().feed(raw)
    fr = F.parse_frame(ftype, payload)
    assert isinstance(fr, F.ClientInfoFrame) and fr.key == public_key_of(client)
    assert fr.sealed[:24] == nonce and len(fr.sealed) == 24 + 16 + len(info.to_json())
    plain = F.unseal(server, fr.key, fr.sealed)
    assert plain == (b'{"meshKey":"' + b"ab" * 32 + b'","version":2,"CanAckPings":true,"IsProber":true,'
                     b'"AppName":"wgc"}')
    assert F.parse_client_info(plain) == info
    assert F.ClientInfo().to_json() == b'{"version":2,"CanAckPings":true}'
    assert F.parse_client_info(b'{"VERSION":2,"canackpings":true}') == F.ClientInfo()
    with pytest.raises(ParseError):
        F.unseal(clamp(bytes([3] * 32)), fr.key, fr.sealed)  # wrong key
    with pytest.raises(ParseError):
        F.parse_client_info(b'{"version":"2"}')


def test_server_info() -> None:
    server, client = clamp(bytes([5] * 32)), clamp(bytes([6] * 32))
    raw = F.server_info_frame(server, public_key_of(client), bytes(24), F.ServerInfo())
    fr = F.parse_frame(raw[0], raw[5:])
    assert F.unseal(client, public_key_of(server), fr.sealed) == b'{"version":2}'
    assert F.parse_server_info(b'{"version":2,"TokenBucketBytesPerSecond":5}').token_bucket_bytes_per_second == 5


def test_is_disco() -> None:
    assert is_disco(b"TS\xf0\x9f\x92\xac" + bytes(56))
    assert not is_disco(b"TS\xf0\x9f\x92\xac" + bytes(55))
    assert not is_disco(b"\x04" + bytes(100))


# ---- properties ------------------------------------------------------------------------------------------

keys = st.binary(min_size=32, max_size=32)
frames = st.one_of(
    st.builds(F.SendPacket, keys, st.binary(max_size=300)),
    st.builds(F.RecvPacket, keys, st.binary(max_size=300)),
    st.builds(F.ForwardPacket, keys, keys, st.binary(max_size=300)),
    st.builds(F.KeepAlive), st.builds(F.WatchConns),
    st.builds(F.NotePreferred, st.booleans()),
    st.builds(F.PeerGone, keys, st.integers(0, 255)),
    st.builds(F.PeerPresent, keys, st.sampled_from(["10.1.2.3", "2001:db8::1", "::"]),
              st.integers(0, 65535), st.integers(0, 255)),
    st.builds(F.ClosePeer, keys),
    st.builds(F.Ping, st.binary(min_size=8, max_size=8)), st.builds(F.Pong, st.binary(min_size=8, max_size=8)),
    st.builds(F.Health, st.text(max_size=40)),
    st.builds(F.Restarting, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    st.builds(F.ServerKey, keys),
    st.builds(F.UnknownFrame, st.sampled_from([0x0B, 0x0F, 0x16, 0x7F, 0xFF]), st.binary(max_size=50)),
)


@given(frames)
def test_encode_parse_round_trip(fr) -> None:
    [(ftype, payload)] = F.FrameDecoder().feed(fr.encode())
    assert F.parse_frame(ftype, payload) == fr


@given(st.lists(frames, max_size=8), st.data())
def test_stream_split_anywhere_gives_same_frames(frs, data) -> None:
    stream = b"".join(f.encode() for f in frs)
    whole = F.FrameDecoder().feed(stream)
    one = F.FrameDecoder()
    bytewise = [pair for i in range(len(stream)) for pair in one.feed(stream[i:i + 1])]
    assert bytewise == whole and one.pending() == 0
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    chunked = F.FrameDecoder()
    pieces, last = [], 0
    for cut in cuts + [len(stream)]:
        pieces.extend(chunked.feed(stream[last:cut]))
        last = cut
    assert pieces == whole
    assert [F.parse_frame(t, p) for t, p in whole] == frs


@given(st.integers(0, 255), st.binary(max_size=200))
def test_garbage_payload_raises_only_parse_error(ftype, payload) -> None:
    try:
        F.parse_frame(ftype, payload)
    except ParseError:
        pass


@given(st.binary(max_size=400))
def test_garbage_stream_raises_only_parse_error(blob) -> None:
    try:
        for ftype, payload in F.FrameDecoder(max_frame=1000).feed(blob):
            F.parse_frame(ftype, payload)
    except ParseError:
        pass


@given(st.binary(max_size=300))
def test_garbage_info_raises_only_parse_error(blob) -> None:
    for fn in (F.parse_client_info, F.parse_server_info):
        try:
            fn(blob)
        except ParseError:
            pass
    try:
        F.unseal(bytes(32), bytes(32), blob)
    except ParseError:
        pass


# ---- the server's limits: per frame type at the header, and a budget per call -----------------------------

SERVER_LIMITS = server_frame_limits()


@pytest.mark.parametrize("ftype, biggest", [
    (FrameType.SEND_PACKET, 65568), (FrameType.FORWARD_PACKET, 65600), (FrameType.PING, 1000),
    (FrameType.PONG, 1000), (FrameType.NOTE_PREFERRED, 1), (FrameType.CLOSE_PEER, 32), (FrameType.WATCH_CONNS, 0),
    (0x7F, 65600)])
def test_server_frame_limit_is_checked_at_the_header(ftype, biggest) -> None:
    if biggest:
        dec = F.FrameDecoder(limits=SERVER_LIMITS)
        assert dec.feed(struct.pack(">BI", ftype, biggest) + b"x" * (biggest - 1)) == []  # allowed: waits for more
        assert dec.partial() and dec.pending() == 5 + biggest - 1
    with pytest.raises(ParseError, match="exceeds"):  # one byte more: refused before any payload arrives
        F.FrameDecoder(limits=SERVER_LIMITS).feed(struct.pack(">BI", ftype, biggest + 1))


@given(st.lists(frames, max_size=12), st.integers(1, 5), st.integers(1, 400), st.data())
def test_budgeted_feeds_give_the_same_frames_in_order(frs, max_frames, max_bytes, data) -> None:
    stream = b"".join(f.encode() for f in frs)
    whole = F.FrameDecoder().feed(stream)
    dec = F.FrameDecoder()
    got, last = [], 0
    for cut in sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=4))) + [len(stream)]:
        batch = dec.feed(stream[last:cut], max_frames, max_bytes)
        last = cut
        assert len(batch) <= max_frames and sum(len(p) for _, p in batch[:-1]) < max_bytes
        got.extend(batch)
        while dec.ready():  # the frames beyond the budget wait for later calls
            batch = dec.feed(b"", max_frames, max_bytes)
            assert batch and len(batch) <= max_frames
            got.extend(batch)
    assert got == whole and not dec.ready() and dec.pending() == 0
