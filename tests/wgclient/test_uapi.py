"""wgclient.uapi: get/set semantics of wireguard-go's UAPI against an in-memory target, and garbage properties."""
from __future__ import annotations

import ipaddress

from hypothesis import given, strategies as st

from tests.support.uapi_target import MemoryTarget
from wgclient import keys
from wgclient.uapi import DeviceState, PeerState, UapiConnection, format_get

PRIV = keys.clamp(bytes(range(32)))
OWN = keys.public_key(PRIV)
A = bytes([0xAA]) * 32
B = bytes([0xBB]) * 32
PSK = bytes([0x11]) * 32
net = ipaddress.ip_network


def run(target, *requests: str, chunk: int | None = None) -> tuple[bytes, bool]:
    conn = UapiConnection(target)
    data = "".join(requests).encode()
    out, closed = b"", False
    pieces = [data] if chunk is None else [data[i:i + chunk] for i in range(0, len(data), chunk)]
    for piece in pieces:
        reply, closed = conn.feed(piece)
        out += reply
        if closed:
            break
    return out, closed


def set_req(*lines: str) -> str:
    return "set=1\n" + "".join(line + "\n" for line in lines) + "\n"


def test_get_format_matches_protocol_example():
    state = DeviceState(
        private_key=bytes.fromhex("702e0eb7577c39c68f619b422437e35b4a1a3aee54f55572b3da1158a5066775"),
        listen_port=51820,
        peers=[PeerState(public_key=bytes.fromhex("54ef3ec47cc0af28b82ffdf201219eeeebc6c9b2edee4f398b6d3a8fa92447fd"),
                         endpoint=("198.51.100.9", 51820), last_handshake_ns=1755879000_123456789,
                         tx_bytes=38333, rx_bytes=2224, persistent_keepalive=25,
                         allowed_ips=[net("10.0.0.2/32")])])
    assert format_get(state) == b"""\
private_key=702e0eb7577c39c68f619b422437e35b4a1a3aee54f55572b3da1158a5066775
listen_port=51820
public_key=54ef3ec47cc0af28b82ffdf201219eeeebc6c9b2edee4f398b6d3a8fa92447fd
preshared_key=0000000000000000000000000000000000000000000000000000000000000000
protocol_version=1
endpoint=198.51.100.9:51820
last_handshake_time_sec=1755879000
last_handshake_time_nsec=123456789
tx_bytes=38333
rx_bytes=2224
persistent_keepalive_interval=25
allowed_ip=10.0.0.2/32
errno=0

"""


def test_get_empty_device_and_ipv6_endpoint():
    t = MemoryTarget()
    assert run(t, "get=1\n\n") == (b"errno=0\n\n", False)
    t.state.peers.append(PeerState(public_key=A, endpoint=("2001:db8::1", 7)))
    out, _ = run(t, "get=1\n\n")
    assert b"endpoint=[2001:db8::1]:7\n" in out


def test_set_full_then_get_round_trip():
    t = MemoryTarget()
    out, closed = run(t, set_req(
        f"private_key={PRIV.hex()}", "listen_port=51820", "fwmark=7", "replace_peers=true",
        f"public_key={A.hex()}", f"preshared_key={PSK.hex()}", "endpoint=192.0.2.1:5", "persistent_keepalive_interval=25",
        "replace_allowed_ips=true", "allowed_ip=10.0.0.0/24", "allowed_ip=fd00::1/64", "protocol_version=1",
        f"public_key={B.hex().upper()}", "endpoint=[::1]:6", "allowed_ip=10.1.0.5/16"), "get=1\n\n")
    assert closed is False
    first, second = out.split(b"errno=0\n\n")[:2]
    assert first == b""
    assert t.state.private_key == PRIV and t.state.listen_port == 51820 and t.state.fwmark == 7
    pa, pb = t.state.peers
    assert (pa.public_key, pa.preshared_key, pa.endpoint, pa.persistent_keepalive) == (A, PSK, ("192.0.2.1", 5), 25)
    assert pa.allowed_ips == [net("10.0.0.0/24"), net("fd00::/64")]
    assert (pb.public_key, pb.endpoint, pb.allowed_ips) == (B, ("::1", 6), [net("10.1.0.0/16")])
    assert second.startswith(f"private_key={PRIV.hex()}\nlisten_port=51820\nfwmark=7\npublic_key={A.hex()}\n".encode())
    assert f"preshared_key={PSK.hex()}\n".encode() in second


def test_requests_split_at_every_byte():
    t = MemoryTarget()
    out, _ = run(t, set_req(f"public_key={A.hex()}", "allowed_ip=10.0.0.1/32"), "get=1\n\n", chunk=1)
    assert out.count(b"errno=0\n\n") == 2 and b"allowed_ip=10.0.0.1/32\n" in out


def test_stop_at_first_error_earlier_lines_stay():
    t = MemoryTarget()
    out, closed = run(t, set_req(f"public_key={A.hex()}", "allowed_ip=10.0.0.1/32", "allowed_ip=bogus",
                                 "allowed_ip=10.0.0.2/32"), "get=1\n\n")
    assert out.startswith(b"errno=-22\n\n") and not closed
    assert t.peer(A).allowed_ips == [net("10.0.0.1/32")]
    assert out.endswith(b"errno=0\n\n")  # the connection goes on serving


def test_errno_values():
    cases = [
        (["no equals sign"], 71),
        (["listen_port=65536"], 22),
        (["listen_port=-1"], 22),
        (["fwmark=4294967296"], 22),
        (["bogus=1"], 22),
        (["private_key=abcd"], 22),
        (["replace_peers=false"], 22),
        ([f"public_key={A.hex()}", "listen_port=5"], 22),       # device key after a peer
        ([f"public_key={A.hex()}", "protocol_version=2"], 22),
        ([f"public_key={A.hex()}", "endpoint=example.com:5"], 22),
        ([f"public_key={A.hex()}", "endpoint=::1:5"], 22),
        ([f"public_key={A.hex()}", "endpoint=[192.0.2.1]:5"], 22),
        ([f"public_key={A.hex()}", "endpoint=192.0.2.1:70000"], 22),
        ([f"public_key={A.hex()}", "allowed_ip=10.0.0.1"], 22),
        ([f"public_key={A.hex()}", "allowed_ip=10.0.0.1/33"], 22),
        ([f"public_key={A.hex()}", "remove=yes"], 22),
        ([f"public_key={A.hex()[:-1]}"], 22),
        (["listen_port=4444"], 98),
    ]
    for lines, errno in cases:
        t = MemoryTarget()
        t.busy_ports.add(4444)
        assert run(t, set_req(*lines)) == (b"errno=-%d\n\n" % errno, False), lines


def test_fwmark_failure_is_eaddrinuse():
    class Target(MemoryTarget):
        def uapi_set_fwmark(self, mark):
            raise PermissionError(1, "Operation not permitted")

    assert run(Target(), set_req("fwmark=1"))[0] == b"errno=-98\n\n"


def test_target_bug_gives_errno_55_not_exception():
    class Target(MemoryTarget):
        def uapi_add_peer(self, public_key):
            raise RuntimeError("boom")

    assert run(Target(), set_req(f"public_key={A.hex()}"), "get=1\n\n")[0] == b"errno=-55\n\nerrno=0\n\n"


def test_remove_peer_and_lines_after_it_ignored():
    t = MemoryTarget()
    run(t, set_req(f"public_key={A.hex()}", "allowed_ip=10.0.0.1/32", f"public_key={B.hex()}"))
    out, _ = run(t, set_req(f"public_key={A.hex()}", "remove=true", "allowed_ip=10.9.9.9/32", "endpoint=1.2.3.4:5"))
    assert out == b"errno=0\n\n"
    assert [p.public_key for p in t.state.peers] == [B]
    # values after remove are still validated
    assert run(t, set_req(f"public_key={A.hex()}", "remove=true", "allowed_ip=junk"))[0] == b"errno=-22\n\n"


def test_update_only():
    t = MemoryTarget()
    assert run(t, set_req(f"public_key={A.hex()}", "update_only=true", "allowed_ip=10.0.0.1/32"))[0] == b"errno=0\n\n"
    assert t.state.peers == []
    run(t, set_req(f"public_key={A.hex()}"))
    run(t, set_req(f"public_key={A.hex()}", "update_only=true", "allowed_ip=10.0.0.1/32"))
    assert t.peer(A).allowed_ips == [net("10.0.0.1/32")]


def test_own_public_key_is_ignored():
    t = MemoryTarget(private_key=PRIV)
    out, _ = run(t, set_req(f"public_key={OWN.hex()}", "allowed_ip=10.0.0.1/32", "endpoint=1.2.3.4:5"))
    assert out == b"errno=0\n\n" and t.state.peers == []
    # the key set in the same request counts
    t = MemoryTarget()
    run(t, set_req(f"private_key={PRIV.hex()}", f"public_key={OWN.hex()}", "allowed_ip=10.0.0.1/32"))
    assert t.state.peers == []


def test_zero_keys_mean_none():
    t = MemoryTarget(private_key=PRIV)
    run(t, set_req(f"private_key={'0' * 64}", f"public_key={A.hex()}", f"preshared_key={PSK.hex()}"))
    run(t, set_req(f"public_key={A.hex()}", f"preshared_key={'0' * 64}"))
    assert t.state.private_key is None and t.peer(A).preshared_key is None
    assert b"private_key" not in run(t, "get=1\n\n")[0]


def test_allowed_ip_removal_and_replace():
    t = MemoryTarget()
    run(t, set_req(f"public_key={A.hex()}", "allowed_ip=10.0.0.1/32", "allowed_ip=10.0.0.2/32", "allowed_ip=fd00::/8"))
    run(t, set_req(f"public_key={A.hex()}", "allowed_ip=-10.0.0.1/32"))
    assert t.peer(A).allowed_ips == [net("10.0.0.2/32"), net("fd00::/8")]
    run(t, set_req(f"public_key={A.hex()}", "replace_allowed_ips=true", "allowed_ip=10.5.0.0/16"))
    assert t.peer(A).allowed_ips == [net("10.5.0.0/16")]
    # an existing prefix moves to the peer that inserts it
    run(t, set_req(f"public_key={B.hex()}", "allowed_ip=10.5.0.0/16"))
    assert t.peer(A).allowed_ips == [] and t.peer(B).allowed_ips == [net("10.5.0.0/16")]


def test_replace_peers():
    t = MemoryTarget()
    run(t, set_req(f"public_key={A.hex()}", f"public_key={B.hex()}"))
    run(t, set_req("replace_peers=true", f"public_key={B.hex()}"))
    assert [p.public_key for p in t.state.peers] == [B]


def test_protocol_errors_close_connection():
    assert run(MemoryTarget(), "hello=1\n") == (b"", True)
    assert run(MemoryTarget(), "get=1\nx") == (b"errno=-22\n\n", True)
    assert run(MemoryTarget(), "get=2\n\n") == (b"", True)
    # a line that never ends is bounded
    conn = UapiConnection(MemoryTarget())
    assert conn.feed(b"set=1\n" + b"a" * 5000) == (b"", True)
    assert conn.feed(b"\n") == (b"", True)


def test_crlf_inside_set_is_tolerated_like_go_scanner():
    t = MemoryTarget()
    assert run(t, f"set=1\npublic_key={A.hex()}\r\nallowed_ip=10.0.0.1/32\r\n\r\n")[0] == b"errno=0\n\n"
    assert t.peer(A).allowed_ips == [net("10.0.0.1/32")]


# ---- properties ----

SET_LINES = [f"public_key={A.hex()}", f"public_key={B.hex()}", "remove=true", "update_only=true",
             "allowed_ip=10.0.0.0/8", "allowed_ip=-10.0.0.0/8", "replace_allowed_ips=true", "replace_peers=true",
             "endpoint=[::1]:1", f"private_key={PRIV.hex()}", f"public_key={OWN.hex()}", "listen_port=1",
             "fwmark=0", "protocol_version=1", f"preshared_key={PSK.hex()}", "persistent_keepalive_interval=5", ""]
chunks = st.one_of(st.binary(max_size=30), st.sampled_from([b"set=1\n", b"get=1\n\n", b"\n"]),
                   st.sampled_from(SET_LINES).map(lambda s: s.encode() + b"\n"))


@given(st.lists(chunks, max_size=25))
def test_garbage_only_yields_errno_replies(pieces):
    t = MemoryTarget()
    conn = UapiConnection(t)
    for piece in pieces:
        reply, closed = conn.feed(piece)
        assert isinstance(reply, bytes)
        for block in filter(None, reply.split(b"\n\n")):
            assert block.split(b"\n")[-1].split(b"=")[0] == b"errno"
            assert int(block.split(b"errno=")[-1]) in (0, -22, -71, -98)
        if closed:
            assert conn.feed(b"get=1\n\n") == (b"", True)
            break


keys32 = st.binary(min_size=32, max_size=32)
nets = st.one_of(
    st.builds(lambda a, n: ipaddress.ip_network(f"{ipaddress.IPv4Address(a)}/{n}", strict=False),
              st.integers(0, 2**32 - 1), st.integers(0, 32)),
    st.builds(lambda a, n: ipaddress.ip_network(f"{ipaddress.IPv6Address(a)}/{n}", strict=False),
              st.integers(0, 2**128 - 1), st.integers(0, 128)))
endpoints = st.one_of(st.none(),
                      st.builds(lambda a, p: (str(ipaddress.IPv4Address(a)), p), st.integers(0, 2**32 - 1), st.integers(0, 65535)),
                      st.builds(lambda a, p: (str(ipaddress.IPv6Address(a)), p), st.integers(0, 2**128 - 1), st.integers(0, 65535)))


@st.composite
def device_states(draw):
    priv = draw(st.one_of(st.none(), keys32.map(keys.clamp)))
    own = keys.public_key(priv) if priv else None
    seen = set()
    peers = []
    for pk in draw(st.lists(keys32.filter(lambda k: k != own), unique=True, max_size=4)):
        ips = [n for n in dict.fromkeys(draw(st.lists(nets, max_size=4))) if n not in seen]
        seen.update(ips)
        peers.append(PeerState(public_key=pk, preshared_key=draw(st.one_of(st.none(), keys32.filter(any))),
                               endpoint=draw(endpoints), persistent_keepalive=draw(st.integers(0, 65535)),
                               allowed_ips=ips))
    return DeviceState(private_key=priv, listen_port=draw(st.integers(1, 65535)),
                       fwmark=draw(st.integers(0, 2**32 - 1)), peers=peers)


def as_set_request(get_reply: bytes) -> str:
    """What `wg setconf` would send for `wg showconf` of a device: set=1 + replace_peers + the lines."""
    device, peers = [], []
    for line in get_reply.decode().splitlines():
        key = line.split("=")[0]
        if key in ("errno", "last_handshake_time_sec", "last_handshake_time_nsec", "tx_bytes", "rx_bytes", ""):
            continue
        if key == "public_key" or peers:
            peers.append(line)
            if key == "public_key":
                peers.append("replace_allowed_ips=true")
        else:
            device.append(line)
    return set_req(*device, "replace_peers=true", *peers)


@given(device_states())
def test_get_then_set_round_trip(state):
    source = MemoryTarget()
    source.state = state
    reply, _ = run(source, "get=1\n\n")
    copy = MemoryTarget()
    out, closed = run(copy, as_set_request(reply))
    assert (out, closed) == (b"errno=0\n\n", False)
    assert run(copy, "get=1\n\n")[0] == reply
