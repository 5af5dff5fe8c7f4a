"""Device core with a path-managed peer: authenticated sources are reported instead of roamed to, the
endpoint token is kept, and datagrams that are not WireGuard are handed over for the disco/STUN demux."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.pair import EP_A, EP_B, Pair
from wgclient.noise.messages import message_type

TOKEN_B = object()  # what a path manager stores as a's endpoint for b


def managed_pair() -> tuple[Pair, dict]:
    p = Pair()
    seen = {"heard": [], "foreign": []}
    original = p.collect

    def collect(name: str) -> None:
        out = p.dev(name).out
        seen["heard"].extend((name, peer, src) for peer, src in out.heard)
        seen["foreign"].extend((name, data, src) for data, src in out.foreign)
        original(name)

    p.collect = collect
    p.pa.managed = True
    p.pa.endpoint = TOKEN_B
    p.a.collect_foreign = True
    return p, seen


def test_managed_peer_keeps_its_token_and_reports_sources() -> None:
    p, seen = managed_pair()
    p.handshake("a")
    pkt = p.ping("b", b"to a")
    p.deliver()
    assert p.tun["a"] == [pkt]
    assert p.pa.endpoint is TOKEN_B            # never roamed
    # a heard b from b's UDP source: for the handshake response and for the transport packets
    assert {(n, src) for n, peer, src in seen["heard"]} == {("a", EP_B)}
    assert all(peer is p.pa for _, peer, _ in seen["heard"])
    # every datagram a sent was addressed to the token
    assert {ep for _, name, _, ep in p.sent if name == "a"} == {TOKEN_B}
    # the unmanaged side roams as before
    assert p.pb.endpoint == EP_A


def test_source_from_derp_is_reported_like_any_other() -> None:
    p, seen = managed_pair()
    p.source["b"] = ("127.3.3.40", 901)     # b's packets arrive over DERP region 901
    p.handshake("b")
    assert ("a", p.pa, ("127.3.3.40", 901)) in seen["heard"]
    assert p.pa.endpoint is TOKEN_B


def test_unmanaged_device_drops_foreign_datagrams() -> None:
    p, seen = managed_pair()
    p.b.receive_datagram(b"TS\xf0\x9f\x92\xac" + bytes(60), EP_A, p.now)
    p.collect("b")
    assert p.b.drops["not wireguard"] == 1 and not seen["foreign"]


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=200),
                 st.tuples(st.integers(1, 4), st.binary(max_size=200)).map(lambda t: bytes([t[0], 0, 0, 0]) + t[1])))
def test_foreign_datagrams_are_collected_not_parsed(data: bytes) -> None:
    p, seen = managed_pair()
    p.a.receive_datagram(data, EP_B, p.now)
    p.collect("a")
    if message_type(data) != 0 or (len(data) >= 32 and data[:4] == b"\x04\x00\x00\x00"):
        assert not seen["foreign"]             # WireGuard-shaped: the core handles (and counts) it
    else:
        assert seen["foreign"] == [("a", data, EP_B)]
        assert p.a.drops.get("not wireguard", 0) == 0


def test_resend_handshake_when_the_path_changes_before_an_answer() -> None:
    p, _ = managed_pair()
    p.ping("a", b"first")                        # initiation goes out, nobody answers (lost at a relay)
    assert len(p.take()) == 1
    p.now += 0.5
    p.a.resend_handshake(p.pa, p.now)            # well inside REKEY_TIMEOUT: sent again at once
    p.collect("a")
    assert len(p.wire) == 1
    p.deliver()
    assert p.tun["b"] and p.pa.keypairs.current is not None
    p.now += 0.5
    p.a.resend_handshake(p.pa, p.now)            # with a session there is nothing to resend
    p.collect("a")
    assert not p.wire


def test_resend_is_the_same_initiation_byte_for_byte() -> None:
    p, _ = managed_pair()
    p.ping("a", b"first")
    (first,) = p.take()
    p.now += 0.3
    p.a.resend_handshake(p.pa, p.now)
    p.collect("a")
    assert [data for _, data, _ in p.wire] == [first]


def test_resend_right_after_the_first_still_completes_when_both_arrive() -> None:
    """The initiation went by the old route *and* arrived, and the path changed 5 ms later (inside the
    responder's 20 ms flood limit): b takes one copy, drops the other as a replay, answers once, and that
    answer completes a's handshake (a new initiation instead would leave both sides waiting 5 s)."""
    p, _ = managed_pair()
    p.ping("a", b"first")
    p.now += 0.005
    p.a.resend_handshake(p.pa, p.now)
    p.collect("a")
    assert len(p.wire) == 2
    p.deliver()
    assert p.pa.keypairs.current is not None, "a's handshake completed"
    assert p.tun["b"], "the staged packet reached b"
    assert len(p.sent_of(2, frm="b")) == 1, "b answered once"
    assert sum(p.b.drops.values()) >= 1, "the duplicate was dropped and counted"


def test_resend_after_answering_the_peer_sends_nothing_stale() -> None:
    """a initiated, then b's own initiation reached a first and a answered it: a's old initiation is no
    longer its state, so a resend must not put it on the wire again."""
    p, _ = managed_pair()
    p.ping("a", b"first")
    p.take()                                     # a's initiation is lost
    p.now += 0.1
    p.ping("b", b"from b")                       # b initiates; a answers it (the answer still in flight)
    assert p.deliver(limit=1) == 1
    assert [message_type(d) for _, d, _ in p.wire] == [2]
    assert p.pa.pending_initiation is None and p.pa.keypairs.current is None
    before = len(p.sent)
    p.a.resend_handshake(p.pa, p.now)
    p.collect("a")
    assert all(message_type(d) != 1 for _, _, d, _ in p.sent[before:]), "no stale initiation resent"
