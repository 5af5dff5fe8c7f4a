"""The control socket's relay-node parts (wgclient/control.py, docs/relaynode.md): a peer reached through a
relay node shows `relay-node NAME` and the reason, a relay node lists what it forwarded per pair, a pong
through a relay node reads `via relay-node NAME in Xms`; bad fields are refused with ParseError. Also the
ICMP echo helpers of wgclient/aio/tunnelping.py."""
from __future__ import annotations

import copy
import socket
import struct

import pytest

from tests.wgclient.test_control import NOW, sample_status
from natprobe.icmp import echo_request
from wgclient import control
from wgclient.aio import tunnelping
from wgclient.errors import ParseError


def relayed_status() -> dict:
    s = sample_status()
    phone = s["peers"][1]
    phone.update(path="relay-node", relay_node={"name": "hub", "short": "BQUFBQUF"}, direct=None, relay=None,
                 reason="both NATs map ports per destination; relay node hub reachable")
    s["forwarding"] = [{"from": "laptop", "to": "phone", "packets": 35200, "bytes": 52555776},
                       {"from": "phone", "to": "laptop", "packets": 17650, "bytes": 1153434}]
    return control.check_status(s)


def test_status_shows_relay_node_with_the_reason_and_the_forwarding_per_pair() -> None:
    text = control.format_status(relayed_status(), NOW)
    lines = text.splitlines()
    row = next(line for line in lines if line.startswith("phone "))
    assert "relay-node hub" in row
    assert "phone (AwMDAwMD): relay-node hub: both NATs map ports per destination; relay node hub reachable" in lines
    i = lines.index("forwarding (relay node): 2 pairs")
    assert lines[i + 1:i + 3] == ["  laptop -> phone: 35200 packets, 50.12 MiB",
                                  "  phone -> laptop: 17650 packets, 1.10 MiB"]


def test_a_relay_node_without_traffic_says_so() -> None:
    s = relayed_status()
    s["forwarding"] = []
    assert "forwarding (relay node): 0 pairs" in control.format_status(s, NOW).splitlines()
    del s["forwarding"]
    assert "forwarding" not in control.format_status(s, NOW)


@pytest.mark.parametrize("change", [
    lambda s: s["forwarding"][0].update(packets=-1),
    lambda s: s["forwarding"][0].pop("to"),
    lambda s: s.update(forwarding={"a": 1}),
    lambda s: s["peers"][1].update(relay_node={"name": 3, "short": "x"}),
    lambda s: s["peers"][1].update(reason=7),
])
def test_bad_relay_fields_are_refused(change) -> None:
    s = copy.deepcopy(relayed_status())
    change(s)
    with pytest.raises(ParseError):
        control.check_status(s)


def test_pong_via_relay_node() -> None:
    peer = relayed_status()["peers"][1]
    pong = control.check_pong({"latency": 0.0042, "via": "relay-node", "relay_node": "hub", "addr": None,
                               "region": None, "region_code": None})
    assert control.format_pong(peer, pong) == "pong from phone (100.64.0.3) via relay-node hub in 4ms"
    with pytest.raises(ParseError):
        control.check_pong({**pong, "relay_node": None})
    with pytest.raises(ParseError):
        control.check_pong({**pong, "via": "carrier-pigeon"})


def test_icmp_echo_reply_matching() -> None:
    req = echo_request(0x1234, 1, tunnelping.PAYLOAD)
    reply = bytearray(req)
    reply[0] = 0
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(reply), 0, 0, 64, 1, 0,
                     socket.inet_aton("100.90.0.3"), socket.inet_aton("100.90.0.2"))
    assert tunnelping.is_reply(ip + bytes(reply), "100.90.0.3", 0x1234, 1)
    assert not tunnelping.is_reply(ip + bytes(reply), "100.90.0.4", 0x1234, 1)
    assert not tunnelping.is_reply(ip + bytes(reply), "100.90.0.3", 0x1235, 1)
    assert not tunnelping.is_reply(ip + req, "100.90.0.3", 0x1234, 1), "our own request is no reply"
    assert not tunnelping.is_reply(b"\x45" + bytes(10), "100.90.0.3", 0x1234, 1)


from hypothesis import given, strategies as st  # noqa: E402

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                        max_size=3), max_leaves=8)


@given(forwarding=json_values, relay_node=json_values, reason=json_values)
def test_property_garbage_relay_fields_raise_only_parse_error(forwarding, relay_node, reason) -> None:
    s = copy.deepcopy(relayed_status())
    s["forwarding"] = forwarding
    s["peers"][1].update(relay_node=relay_node, reason=reason)
    try:
        checked = control.check_status(s)
    except ParseError:
        return
    control.format_status(checked, NOW)   # what passes the check renders
